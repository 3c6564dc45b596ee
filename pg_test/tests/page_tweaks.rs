//! Every page PostgreSQL writes gets a tweak no other page shares
//! (`docs/format/pages.md`, "Why no two plaintexts leak"), read as an
//! attacker with several copies of the data directory would: the test
//! builds every kind of page whose LSN is not a WAL position (GiST builds,
//! sorted and buffered, stamped with `GistBuildLSN`; temporary and unlogged
//! GiST indexes with fake LSNs; SP-GiST, GIN and hash indexes; unlogged
//! relations reset from their init forks after a crash and written again;
//! relations created under `wal_level = minimal`) and copies every
//! relation file at several moments, including while temporary relations
//! exist. Across all copies:
//!
//! - no page is in format 1, temporary and unlogged relations are in wide
//!   mode, everything else in XTS mode;
//! - no two stored pages of different relation files share what their IV
//!   is made of apart from random bits (format 1: generation, fork, LSN and
//!   block; format 2: mode, generation, fork, LSN, block and relfilenumber);
//! - versions of one page under one tweak in XTS mode (decrypted with the
//!   keys) differ only the way PostgreSQL changes pages without WAL: for
//!   tables, hint bits in tuple headers and `PD_ALL_VISIBLE`; a version
//!   under an LSN that is no WAL position (written before its relation's
//!   creating transaction committed) is counted, as the documented residual
//!   case;
//! - every index answers queries as a sequential scan does, and
//!   `pg_amcheck` is clean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pg_test::workload::amcheck;
use pg_test::{random_key_hex, Cluster, ClusterOptions, TestDir};
use tde_core::keyring::{open_for_cluster, KeyringFile};
use tde_core::page::{
    classify, page_lsn, Page, PageCipher, PageState, ReadOutcome, FORMAT_CTR, FORMAT_WIDE,
    FORMAT_XTS, PAGE_SIZE,
};
use tde_core::principal::PrincipalKey;
use tde_core::scan::{parse_relation_path, relation_files};

/// One copy of every relation file: relative path → contents.
type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

fn snapshot(c: &Cluster) -> Snapshot {
    let data = c.data_dir();
    relation_files(data)
        .expect("list relation files")
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            Some((p.strip_prefix(data).expect("inside").to_path_buf(), bytes))
        })
        .collect()
}

fn cipher(c: &Cluster, key_hex: &str) -> PageCipher {
    let principal = PrincipalKey::parse_hex(key_hex, "test key").expect("principal key");
    let bytes = std::fs::read(c.keyring_path()).expect("read the keyring");
    let file = KeyringFile::parse(&bytes).expect("parse the keyring");
    let sysid = tde_core::control::system_identifier(c.data_dir()).expect("system identifier");
    PageCipher::new(&open_for_cluster(&file, &principal, sysid).expect("open the keyring"))
}

/// One stored page and where it was found.
struct Found {
    path: PathBuf,
    relfilenumber: u32,
    block: u32,
    page: Page,
}

/// The inputs of a page's IV other than random bits: (format code,
/// generation, fork, LSN, block, relfilenumber); format 1 takes no
/// relfilenumber (0 here).
type IvInputs = (u8, u8, u8, u64, u32, u32);

/// The relation a file belongs to: directory and relfilenumber.
type Lineage = (PathBuf, u32);

fn iv_inputs(f: &Found, format: u8, generation: u8, fork: u8) -> IvInputs {
    let rel = if format == FORMAT_CTR {
        0
    } else {
        f.relfilenumber
    };
    (format, generation, fork, page_lsn(&f.page), f.block, rel)
}

/// The relation a file belongs to, for telling copies of one file apart
/// from different files (forks and segments of one relation count as one).
fn lineage(path: &Path, relfilenumber: u32) -> Lineage {
    (
        path.parent().expect("in a directory").to_path_buf(),
        relfilenumber,
    )
}

/// Whether two versions of a table page differ only in hint bits of tuple
/// headers (`t_infomask` bits 0x0F00), `PD_ALL_VISIBLE` and `pd_checksum`.
fn differ_only_in_hints(a: &Page, b: &Page) -> bool {
    let mut allowed = vec![0u8; PAGE_SIZE];
    allowed[8] = 0xFF;
    allowed[9] = 0xFF;
    allowed[10] = 0x04;
    let lower = u16::from_le_bytes([a[12], a[13]]) as usize;
    for lp in (24..lower.min(PAGE_SIZE)).step_by(4) {
        let word = u32::from_le_bytes(a[lp..lp + 4].try_into().expect("4 bytes"));
        let (off, flags) = ((word & 0x7FFF) as usize, (word >> 15) & 3);
        if flags == 1 && off + 22 <= PAGE_SIZE {
            allowed[off + 21] = 0x0F;
        }
    }
    a.iter()
        .zip(b)
        .zip(&allowed)
        .all(|((x, y), m)| (x ^ y) & !m == 0)
}

#[derive(Default, Debug)]
struct Findings {
    pages: usize,
    format_1: Vec<String>,
    wrong_mode: Vec<String>,
    shared_across_files: Vec<String>,
    not_hint_only: Vec<String>,
    undecryptable: Vec<String>,
    /// Versions under one tweak: (real WAL position, table) pairs, and
    /// those under an LSN that is no WAL position (the residual case).
    same_tweak_hint_versions: usize,
    same_tweak_other_versions: usize,
    same_tweak_invented_lsn: usize,
    /// Pages of different relations sharing generation, fork, LSN and
    /// block: what format 1 separated by its nonce alone.
    cross_relation_lsn_block: usize,
    wide_versions: usize,
}

fn analyse(snapshots: &[Snapshot], cipher: &PageCipher, first_wal_position: u64) -> Findings {
    let mut f = Findings::default();
    // iv inputs → distinct stored pages, with where they were found.
    let mut by_iv: BTreeMap<IvInputs, Vec<Found>> = BTreeMap::new();
    // (generation, fork, LSN, block) → the relations holding such a page.
    let mut lsn_block: BTreeMap<(u8, u8, u64, u32), BTreeSet<Lineage>> = BTreeMap::new();
    for snap in snapshots {
        for (path, bytes) in snap {
            let rf = parse_relation_path(path).expect("a relation file");
            let unlogged = {
                let init = path.with_file_name(format!("{}_init", rf.relfilenode));
                snap.contains_key(&init) && rf.fork != tde_core::kdf::ForkKind::Init
            };
            for (i, chunk) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
                let page: Page = chunk.try_into().expect("a page");
                let PageState::Encrypted(mark) = classify(&page) else {
                    continue;
                };
                f.pages += 1;
                let found = Found {
                    path: path.clone(),
                    relfilenumber: rf.relfilenode,
                    block: (rf.first_block + i as u64) as u32,
                    page,
                };
                let at = format!("{} block {}", path.display(), found.block);
                if mark.format == FORMAT_CTR {
                    f.format_1.push(at.clone());
                }
                // A page copied from the init fork over the main fork by a
                // crash reset keeps the init fork's mark (and XTS mode).
                let from_init_fork = mark.fork == tde_core::kdf::ForkKind::Init;
                let transient = (rf.temporary || unlogged) && !from_init_fork;
                let want = if transient { FORMAT_WIDE } else { FORMAT_XTS };
                // An unlogged index's pages written while it is built,
                // before its init fork exists, are in XTS mode under the
                // build's LSN (0 or GistBuildLSN): residual case R1.
                let built_before_init_fork =
                    unlogged && mark.format == FORMAT_XTS && page_lsn(&page) < first_wal_position;
                if mark.format != FORMAT_CTR
                    && mark.format != want
                    && !built_before_init_fork
                    && !f.wrong_mode.iter().any(|w| w.starts_with(&at))
                {
                    f.wrong_mode.push(format!(
                        "{at}: format code {} LSN {:X}",
                        mark.format,
                        page_lsn(&page)
                    ));
                }
                lsn_block
                    .entry((
                        mark.generation,
                        mark.fork as u8,
                        page_lsn(&page),
                        found.block,
                    ))
                    .or_default()
                    .insert(lineage(path, rf.relfilenode));
                let key = iv_inputs(&found, mark.format, mark.generation, mark.fork as u8);
                let versions = by_iv.entry(key).or_default();
                if !versions.iter().any(|v| v.page == found.page) {
                    versions.push(found);
                }
            }
        }
    }
    f.cross_relation_lsn_block = lsn_block.values().filter(|s| s.len() > 1).count();
    for ((format, _, fork, lsn, block, _), versions) in &by_iv {
        if versions.len() < 2 {
            continue;
        }
        let lineages: BTreeSet<_> = versions
            .iter()
            .map(|v| lineage(&v.path, v.relfilenumber))
            .collect();
        if lineages.len() > 1 {
            f.shared_across_files.push(format!(
                "format code {format} LSN {lsn:X} block {block}: {lineages:?}"
            ));
            continue;
        }
        if *format == FORMAT_WIDE {
            f.wide_versions += versions.len() - 1;
            continue;
        }
        let plain: Vec<Page> = versions
            .iter()
            .filter_map(|v| {
                let mut p = v.page;
                match cipher.decrypt(&mut p, v.block, v.relfilenumber, false) {
                    Ok(ReadOutcome::Decrypted { .. }) => Some(p),
                    other => {
                        f.undecryptable.push(format!(
                            "{} block {}: {other:?}",
                            v.path.display(),
                            v.block
                        ));
                        None
                    }
                }
            })
            .collect();
        let table_page = *fork == 0
            && plain
                .iter()
                .all(|p| u16::from_le_bytes([p[16], p[17]]) == 8192);
        for pair in plain.windows(2) {
            if *lsn < first_wal_position {
                f.same_tweak_invented_lsn += 1;
            } else if table_page {
                if differ_only_in_hints(&pair[0], &pair[1]) {
                    f.same_tweak_hint_versions += 1;
                } else {
                    f.not_hint_only.push(format!(
                        "{} block {block} LSN {lsn:X}",
                        versions[0].path.display()
                    ));
                }
            } else {
                f.same_tweak_other_versions += 1;
            }
        }
    }
    f
}

const INDEX_QUERIES: &[(&str, &str)] = &[
    (
        "pts",
        "SELECT count(*) FROM pts WHERE p <@ box '((100,100),(180,180))'",
    ),
    (
        "pts",
        "SELECT count(*) FROM pts WHERE p <@ box '((5,5),(9,900))'",
    ),
    ("arr", "SELECT count(*) FROM arr WHERE a @> ARRAY[7]"),
    ("kv", "SELECT count(*) FROM kv WHERE k = 31234"),
];

/// The same query with index scans only and with a sequential scan.
fn check_indexes_answer_like_seqscan(c: &Cluster, tables: &[&str]) {
    for (table, q) in INDEX_QUERIES {
        for prefix in tables {
            let q = q.replacen(table, &format!("{prefix}{table}"), 1);
            let seq = c.psql(&format!(
                "SET enable_indexscan = off; SET enable_bitmapscan = off; {q}"
            ));
            let idx = c.psql(&format!("SET enable_seqscan = off; {q}"));
            assert_eq!(seq, idx, "{q}: index and sequential scans differ");
            assert_ne!(seq, "0", "{q} finds nothing: the test data is wrong");
        }
    }
}

/// Tables and indexes of every access method whose pages carry LSNs that
/// are no WAL position, for `persistence` in "", "UNLOGGED ", "TEMP ",
/// named with `prefix`. GiST is built sorted, buffered and twice more, so
/// that several indexes carry `GistBuildLSN` on the same block numbers.
fn build(c: &mut pg_test::Psql, persistence: &str, prefix: &str) {
    c.exec(&format!(
        "CREATE {persistence}TABLE {prefix}pts(id int, p point);
         INSERT INTO {prefix}pts SELECT g, point(g % 307, g / 307) FROM generate_series(1, 60000) g;
         CREATE INDEX ON {prefix}pts USING gist(p);
         CREATE INDEX ON {prefix}pts USING gist(p) WITH (buffering = on);
         CREATE INDEX ON {prefix}pts USING gist(p);
         CREATE INDEX ON {prefix}pts USING spgist(p);
         CREATE {persistence}TABLE {prefix}arr(id int, a int[]);
         INSERT INTO {prefix}arr SELECT g, ARRAY[g % 97, g % 89] FROM generate_series(1, 30000) g;
         CREATE INDEX ON {prefix}arr USING gin(a);
         CREATE {persistence}TABLE {prefix}kv(k int, v text);
         INSERT INTO {prefix}kv SELECT g, md5(g::text) FROM generate_series(1, 30000) g;
         CREATE INDEX ON {prefix}kv USING hash(k);
         CREATE INDEX ON {prefix}kv (v);"
    ));
}

/// More rows, so that indexes split and pages under old LSNs are written
/// again.
fn grow(c: &mut pg_test::Psql, prefix: &str) {
    c.exec(&format!(
        "INSERT INTO {prefix}pts SELECT g, point(g % 311, (g - 60000) / 50) FROM generate_series(60001, 70000) g;
         INSERT INTO {prefix}arr SELECT g, ARRAY[g % 97, 7] FROM generate_series(30001, 34000) g;
         INSERT INTO {prefix}kv SELECT g, md5(g::text) FROM generate_series(30001, 34000) g;
         SELECT count(*) FROM {prefix}pts; SELECT count(*) FROM {prefix}kv;"
    ));
}

fn run(wal_level: &str) -> Findings {
    let dir = TestDir::new();
    let key_hex = random_key_hex();
    let key = dir.key_file("principal", &key_hex, 0o600);
    let c = Cluster::new(&dir, "main", ClusterOptions::with_key_file(&key));
    c.set("wal_level", wal_level);
    if wal_level == "minimal" {
        c.set("max_wal_senders", "0");
    }
    c.set("autovacuum", "off");
    c.set("temp_buffers", "'800kB'");
    c.start();
    c.psql("CREATE EXTENSION tde");
    let mut snapshots = Vec::new();

    // Logged relations; under wal_level = minimal, created and filled in
    // the same transaction, so written without WAL.
    let mut s = c.connect();
    s.exec("BEGIN");
    build(&mut s, "", "");
    s.exec("COMMIT");
    c.psql("CHECKPOINT");
    snapshots.push(snapshot(&c));

    // Unlogged relations, then a crash resets them from their init forks,
    // and writes after it rewrite pages under the init forks' LSNs.
    build(&mut s, "UNLOGGED ", "u_");
    drop(s);
    c.stop();
    snapshots.push(snapshot(&c));
    c.start();
    c.kill9();
    c.start();
    let mut s = c.connect();
    grow(&mut s, "u_");
    grow(&mut s, "");
    c.psql("CHECKPOINT");
    snapshots.push(snapshot(&c));

    // Temporary relations, several times larger than temp_buffers: copied
    // while the session holds them, twice.
    build(&mut s, "TEMP ", "t_");
    snapshots.push(snapshot(&c));
    grow(&mut s, "t_");
    snapshots.push(snapshot(&c));
    check_indexes_answer_like_seqscan(&c, &["", "u_"]);
    for (table, q) in INDEX_QUERIES {
        let q = q.replacen(table, &format!("t_{table}"), 1);
        let seq = s.exec(&format!(
            "SET enable_indexscan = off; SET enable_bitmapscan = off; {q}; RESET ALL"
        ));
        let idx = s.exec(&format!("SET enable_seqscan = off; {q}; RESET ALL"));
        assert_eq!(seq, idx, "{q}: index and sequential scans differ");
    }
    drop(s);

    // Hint bits and visibility on the logged and unlogged tables.
    c.psql(
        "SELECT count(*) FROM pts; SELECT count(*) FROM kv; SELECT count(*) FROM arr;
         VACUUM; CHECKPOINT",
    );
    c.stop();
    snapshots.push(snapshot(&c));
    c.start();
    amcheck(&c);

    let first_wal_position = 16 << 20;
    let findings = analyse(&snapshots, &cipher(&c, &key_hex), first_wal_position);
    eprintln!("wal_level = {wal_level}: {findings:#?}");
    findings
}

fn check(f: &Findings) {
    assert!(f.pages > 5000, "only {} encrypted pages seen", f.pages);
    assert!(f.format_1.is_empty(), "format 1 pages: {:?}", f.format_1);
    assert!(
        f.wrong_mode.is_empty(),
        "pages in the wrong mode: {:?}",
        f.wrong_mode
    );
    assert!(
        f.shared_across_files.is_empty(),
        "pages of different files share their IV inputs: {:?}",
        f.shared_across_files
    );
    assert!(f.undecryptable.is_empty(), "{:?}", f.undecryptable);
    assert!(
        f.not_hint_only.is_empty(),
        "table page versions under one tweak differ in more than hint bits: {:?}",
        f.not_hint_only
    );
    // The workload really produced what format 1 got wrong: pages of
    // different relations with the same LSN and block.
    assert!(
        f.cross_relation_lsn_block > 100,
        "only {} (LSN, block) pairs shared by different relations",
        f.cross_relation_lsn_block
    );
}

#[test]
fn no_two_relations_share_a_tweak_wal_level_replica() {
    check(&run("replica"));
}

#[test]
fn no_two_relations_share_a_tweak_wal_level_minimal() {
    check(&run("minimal"));
}
