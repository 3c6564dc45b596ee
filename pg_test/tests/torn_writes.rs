//! Torn writes of the pages PostgreSQL rewrites without a full-page image
//! (`docs/format/pages.md`, "Torn writes"): a heap page whose only change is
//! hint bits, a visibility map page whose bits were cleared (PostgreSQL
//! 15), a free space map page whose values changed, and the SP-GiST
//! metapage, whose cache inserts update. For each, the test captures the
//! page's two stored versions from a real cluster (before and after the
//! change), splices them at every 512-byte boundary in both orders (the
//! first sectors new and the rest old, or the other way round), puts each
//! splice on disk in the stopped cluster, crashes and recovers it, and
//! compares what PostgreSQL then reads with the same splice of the two
//! plaintext versions: what a server without tde would read.
//!
//! Without data checksums (and without `wal_log_hints`) the read must be
//! exactly that plaintext splice. With data checksums a splice of two
//! versions fails verification, on a plain server as with tde; the test
//! checks that PostgreSQL reports the failure for every splice whose
//! plaintext would fail, and reads the splice for the others.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pg_test::workload::amcheck;
use pg_test::{random_key_hex, Cluster, ClusterOptions, TestDir};
use tde_core::checksum::{page_checksum, stored_checksum};
use tde_core::page::{classify, original_lsn, PageState, FORMAT_XTS, PAGE_SIZE};

const SECTOR: usize = 512;

type Page = [u8; PAGE_SIZE];

fn cluster(dir: &TestDir, checksums: bool) -> Cluster {
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        dir,
        "main",
        ClusterOptions::with_key_file(&key).checksums(checksums),
    );
    c.set("autovacuum", "off");
    // The point of the test: hint bits without a full-page image.
    c.set("wal_log_hints", "off");
    c.start();
    c.psql("CREATE EXTENSION tde; CREATE EXTENSION pageinspect; CREATE EXTENSION pg_freespacemap");
    assert_eq!(
        c.psql("SHOW data_checksums"),
        if checksums { "on" } else { "off" }
    );
    c
}

/// A page of a relation fork as PostgreSQL reads it (through tde).
fn plain_page(c: &Cluster, relation: &str, fork: &str, block: u32) -> Page {
    let hex = c.psql(&format!(
        "SELECT encode(get_raw_page('{relation}', '{fork}', {block}), 'hex')"
    ));
    let bytes = hex_decode(&hex);
    bytes.try_into().expect("a whole page")
}

fn hex_decode(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn fork_file(c: &Cluster, relation: &str, fork: &str) -> PathBuf {
    let main = c.relation_file(relation);
    match fork {
        "main" => main,
        _ => PathBuf::from(format!("{}_{fork}", main.display())),
    }
}

fn read_stored(path: &Path, block: u32) -> Page {
    let f = std::fs::File::open(path).expect("open relation file");
    let mut page = [0u8; PAGE_SIZE];
    f.read_exact_at(&mut page, block as u64 * PAGE_SIZE as u64)
        .expect("read stored page");
    page
}

fn write_stored(path: &Path, block: u32, page: &Page) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open relation file");
    f.write_all_at(page, block as u64 * PAGE_SIZE as u64)
        .expect("write page");
    f.sync_all().expect("fsync");
}

/// The first `cut` bytes from `first`, the rest from `second`.
fn splice(first: &Page, second: &Page, cut: usize) -> Page {
    let mut out = *second;
    out[..cut].copy_from_slice(&first[..cut]);
    out
}

fn sectors_differing(a: &Page, b: &Page) -> Vec<usize> {
    (0..PAGE_SIZE / SECTOR)
        .filter(|&s| a[s * SECTOR..(s + 1) * SECTOR] != b[s * SECTOR..(s + 1) * SECTOR])
        .collect()
}

/// One page's two versions: as stored and as PostgreSQL reads them.
struct Versions {
    what: &'static str,
    relation: String,
    fork: &'static str,
    block: u32,
    old_stored: Page,
    new_stored: Page,
    old_plain: Page,
    new_plain: Page,
}

impl Versions {
    /// Checks what makes the case a rewrite without a full-page image: the
    /// same LSN, and a change.
    fn check_rewrite(&self) {
        let what = self.what;
        assert_eq!(
            original_lsn(&self.old_stored),
            original_lsn(&self.new_stored),
            "{what}: the LSN changed, so this is not a rewrite without WAL"
        );
        assert_ne!(self.old_plain, self.new_plain, "{what}: nothing changed");
    }

    /// XTS mode under one generation (or a block never written before),
    /// and stored bytes that changed only in the sectors whose plaintext
    /// changed, or that an empty page stored as zeros (they read as zeros
    /// either way).
    fn check_stored_change(&self, checksums: bool) {
        let what = self.what;
        for (i, stored) in [&self.old_stored, &self.new_stored].into_iter().enumerate() {
            match classify(stored) {
                PageState::Encrypted(mark) => assert_eq!(mark.format, FORMAT_XTS, "{what}"),
                // The old version may be a block never written (zeros).
                PageState::Empty if i == 0 => {}
                other => panic!("{what}: stored page is {other:?}"),
            }
        }
        let mut plain_sectors = sectors_differing(&self.old_plain, &self.new_plain);
        if checksums {
            // pd_checksum (sector 0) follows every change.
            plain_sectors.insert(0, 0);
            plain_sectors.dedup();
        }
        let zero = |p: &Page, k: usize| p[k * SECTOR..(k + 1) * SECTOR].iter().all(|&b| b == 0);
        let stored_sectors: Vec<usize> = sectors_differing(&self.old_stored, &self.new_stored)
            .into_iter()
            .filter(|&k| {
                plain_sectors.contains(&k)
                    || !(zero(&self.old_plain, k)
                        && (zero(&self.old_stored, k) || zero(&self.new_stored, k)))
            })
            .collect();
        assert_eq!(
            stored_sectors, plain_sectors,
            "{what}: stored sectors changed that PostgreSQL did not change"
        );
    }

    /// Every splice of the two versions: (description, stored, plaintext).
    fn splices(&self) -> Vec<(String, Page, Page)> {
        let mut out = Vec::new();
        for cut in (SECTOR..PAGE_SIZE).step_by(SECTOR) {
            out.push((
                format!("new first {cut} bytes"),
                splice(&self.new_stored, &self.old_stored, cut),
                splice(&self.new_plain, &self.old_plain, cut),
            ));
            out.push((
                format!("old first {cut} bytes"),
                splice(&self.old_stored, &self.new_stored, cut),
                splice(&self.old_plain, &self.new_plain, cut),
            ));
        }
        out
    }
}

/// Whether a server without tde would accept `plain` when reading it from
/// disk, as `PageIsVerified` decides: all zeros, or a sane header (and,
/// with data checksums, a checksum that holds).
fn plain_server_accepts(plain: &Page, block: u32, checksums: bool) -> bool {
    if plain.iter().all(|&b| b == 0) {
        return true;
    }
    let u16_at = |at: usize| u16::from_le_bytes([plain[at], plain[at + 1]]) as usize;
    let (flags, lower, upper, special) = (u16_at(10), u16_at(12), u16_at(14), u16_at(16));
    let sane = upper != 0
        && flags & !0x7 == 0
        && lower <= upper
        && upper <= special
        && special <= PAGE_SIZE
        && special.is_multiple_of(8);
    sane && (!checksums || page_checksum(plain, block) == stored_checksum(plain))
}

/// Puts each splice on disk, crashes and recovers the cluster, and compares
/// what PostgreSQL reads with what a server without tde would read.
fn check_splices(c: &Cluster, v: &Versions, checksums: bool) {
    let path = fork_file(c, &v.relation, v.fork);
    c.kill9();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for (name, stored, plain) in v.splices() {
        write_stored(&path, v.block, &stored);
        c.start();
        let read = c.try_psql(&format!(
            "SELECT encode(get_raw_page('{}', '{}', {}), 'hex')",
            v.relation, v.fork, v.block
        ));
        let expected_ok = plain_server_accepts(&plain, v.block, checksums);
        match read {
            Ok(hex) if expected_ok => {
                if hex_decode(&hex) != plain {
                    failures.push(format!("{name}: read differs from the plaintext splice"));
                }
                accepted += 1;
            }
            Ok(_) => failures.push(format!(
                "{name}: read a splice that fails verification on a plain server"
            )),
            Err(e) if !expected_ok && e.contains("invalid page") => {}
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        c.kill9();
    }
    write_stored(&path, v.block, &v.new_stored);
    c.start();
    assert!(
        failures.is_empty(),
        "{}: {} of {} splices read back wrong:\n{}",
        v.what,
        failures.len(),
        v.splices().len(),
        failures.join("\n")
    );
    if !checksums {
        // Every splice whose first sector is new has a sane header; those
        // whose first sector is old are read too, unless that sector is
        // zeros (a block not written before) and the new sectors are not.
        let new_first = v.splices().len() / 2;
        assert!(accepted >= new_first, "{}: {accepted} read", v.what);
        if v.old_stored.iter().any(|&b| b != 0) {
            assert_eq!(accepted, v.splices().len(), "{}", v.what);
        }
    }
}

/// A heap page changed only by hint bits (`HEAP_XMIN_COMMITTED` set by the
/// first read after the insert).
fn hint_bits(c: &Cluster) -> Versions {
    c.psql(
        "CREATE TABLE h(id int, v text) WITH (autovacuum_enabled = off);
         INSERT INTO h SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 2000) g;
         CHECKPOINT;",
    );
    let block = 3;
    let path = fork_file(c, "h", "main");
    let old_plain = plain_page(c, "h", "main", block);
    let old_stored = read_stored(&path, block);
    c.psql("SELECT count(*) FROM h; CHECKPOINT;");
    Versions {
        what: "hint bits",
        relation: "h".into(),
        fork: "main",
        block,
        new_plain: plain_page(c, "h", "main", block),
        new_stored: read_stored(&path, block),
        old_plain,
        old_stored,
    }
}

/// A visibility map page whose bits `UPDATE`s cleared, in three sectors:
/// heap blocks 0, 2000 and 4000 map to bytes 24, 524 and 1024 of the page.
fn visibility_map(c: &Cluster) -> Versions {
    c.psql(
        "CREATE TABLE vm(id int, v text) WITH (autovacuum_enabled = off, fillfactor = 10);
         INSERT INTO vm SELECT g, md5(g::text) FROM generate_series(1, 4100 * 13) g;
         VACUUM (FREEZE) vm;
         CHECKPOINT;",
    );
    let pages: u32 = c
        .psql("SELECT pg_relation_size('vm') / 8192")
        .parse()
        .expect("pages");
    assert!(pages > 4000, "the table has {pages} pages");
    let path = fork_file(c, "vm", "vm");
    let old_plain = plain_page(c, "vm", "vm", 0);
    let old_stored = read_stored(&path, 0);
    c.psql(
        "UPDATE vm SET v = 'x' WHERE ctid IN ('(0,1)', '(2000,1)', '(4000,1)');
         CHECKPOINT;",
    );
    Versions {
        what: "visibility map",
        relation: "vm".into(),
        fork: "vm",
        block: 0,
        new_plain: plain_page(c, "vm", "vm", 0),
        new_stored: read_stored(&path, 0),
        old_plain,
        old_stored,
    }
}

/// A free space map leaf page whose values VACUUM changed after deletes.
fn free_space_map(c: &Cluster) -> Versions {
    c.psql(
        "CREATE TABLE f(id int, v text) WITH (autovacuum_enabled = off);
         INSERT INTO f SELECT g, md5(g::text) FROM generate_series(1, 60000) g;
         VACUUM f;
         CHECKPOINT;",
    );
    // The FSM's first leaf page is block 2 (root, one inner, then leaves).
    let block = 2;
    let path = fork_file(c, "f", "fsm");
    let old_plain = plain_page(c, "f", "fsm", block);
    let old_stored = read_stored(&path, block);
    c.psql("DELETE FROM f WHERE id % 3 = 0; VACUUM f; CHECKPOINT;");
    Versions {
        what: "free space map",
        relation: "f".into(),
        fork: "fsm",
        block,
        new_plain: plain_page(c, "f", "fsm", block),
        new_stored: read_stored(&path, block),
        old_plain,
        old_stored,
    }
}

/// The page a server without tde would have written for `page`: in memory
/// PostgreSQL leaves `pd_checksum` as it was read, and sets it only on the
/// copy it writes.
fn as_written(mut page: Page, block: u32, checksums: bool) -> Page {
    if checksums {
        let c = page_checksum(&page, block);
        page[8..10].copy_from_slice(&c.to_le_bytes());
    }
    page
}

/// The SP-GiST metapage, whose cache of last used pages every insert
/// updates without WAL (`SpGistUpdateMetaPage`), with or without data
/// checksums.
fn spgist_metapage(c: &Cluster) -> Versions {
    c.psql(
        "CREATE TABLE sp(p point) WITH (autovacuum_enabled = off);
         INSERT INTO sp SELECT point(g % 100, g / 100) FROM generate_series(1, 20000) g;
         CREATE INDEX sp_idx ON sp USING spgist(p);
         INSERT INTO sp SELECT point(g, g) FROM generate_series(1, 10) g;
         CHECKPOINT;",
    );
    let path = fork_file(c, "sp_idx", "main");
    let old_plain = plain_page(c, "sp_idx", "main", 0);
    let old_stored = read_stored(&path, 0);
    // Inserts into new pages move the cache; the metapage is only dirtied.
    c.psql(
        "INSERT INTO sp SELECT point(1000 + g, -g) FROM generate_series(1, 3000) g;
         CHECKPOINT;",
    );
    Versions {
        what: "SP-GiST metapage",
        relation: "sp_idx".into(),
        fork: "main",
        block: 0,
        new_plain: plain_page(c, "sp_idx", "main", 0),
        new_stored: read_stored(&path, 0),
        old_plain,
        old_stored,
    }
}

fn torn_writes(checksums: bool) {
    let dir = TestDir::new();
    let c = cluster(&dir, checksums);
    let mut cases = vec![spgist_metapage(&c)];
    if !checksums {
        // With data checksums PostgreSQL logs a full-page image before the
        // first hint-style change after a checkpoint, so these are not
        // rewrites without WAL (check_rewrite would see a new LSN).
        cases.push(hint_bits(&c));
        cases.push(free_space_map(&c));
    }
    // Visibility map clears: without WAL in PostgreSQL 15; 17 and 18 log
    // them with the map page (a fix back-patched there), which gives the
    // page a new LSN and a full-page image.
    let vm = visibility_map(&c);
    if original_lsn(&vm.old_stored) == original_lsn(&vm.new_stored) {
        cases.push(vm);
    } else {
        eprintln!(
            "visibility map clears are WAL-logged on this server: covered by full-page images"
        );
        assert!(
            pg_test::os::server_major() >= 17,
            "PostgreSQL 15 logs no visibility map clear"
        );
    }
    for v in &mut cases {
        // A block PostgreSQL never wrote is zeros on disk, whatever the
        // buffer it was read into holds now.
        if v.old_stored.iter().all(|&b| b == 0) {
            v.old_plain = [0; PAGE_SIZE];
        }
        v.old_plain = as_written(v.old_plain, v.block, checksums);
        v.new_plain = as_written(v.new_plain, v.block, checksums);
    }
    for v in &cases {
        v.check_rewrite();
    }
    for v in &cases {
        check_splices(&c, v, checksums);
    }
    for v in &cases {
        v.check_stored_change(checksums);
    }
    for v in &cases {
        if v.what == "free space map" && v.old_stored.iter().all(|&b| b == 0) {
            rewrite_after_torn_first_write(&c, v);
        }
    }
    amcheck(&c);
}

/// A torn first write of a free space map page that kept the old, zero
/// first sector reads as an invalid page; PostgreSQL zeroes such a map
/// page in memory and writes it again under the same LSN (0). That write
/// must be encrypted: the torn version on disk is no plaintext version to
/// keep.
fn rewrite_after_torn_first_write(c: &Cluster, v: &Versions) {
    let path = fork_file(c, &v.relation, v.fork);
    c.kill9();
    let torn = splice(&v.old_stored, &v.new_stored, SECTOR);
    assert!(torn.iter().any(|&b| b != 0), "{}: nothing torn", v.what);
    write_stored(&path, v.block, &torn);
    c.start();
    c.psql(&format!(
        "VACUUM (DISABLE_PAGE_SKIPPING) {}; CHECKPOINT;",
        v.relation
    ));
    let stored = read_stored(&path, v.block);
    assert_ne!(stored, torn, "{}: the map page was not rewritten", v.what);
    match classify(&stored) {
        PageState::Encrypted(mark) => assert_eq!(mark.format, FORMAT_XTS, "{}", v.what),
        other => panic!(
            "{}: rewritten after a torn first write as {other:?}",
            v.what
        ),
    }
    let free = c.psql(&format!(
        "SELECT count(*) FROM pg_freespace('{}') WHERE avail > 0",
        v.relation
    ));
    assert_ne!(free, "0", "{}: the rebuilt map is empty", v.what);
}

#[test]
fn torn_rewrites_read_back_as_old_and_new_sectors_without_checksums() {
    torn_writes(false);
}

#[test]
fn torn_rewrites_fail_verification_as_without_tde_with_checksums() {
    torn_writes(true);
}
