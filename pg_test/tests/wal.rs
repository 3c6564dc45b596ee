//! WAL encryption (DESIGN §4): what reaches `pg_wal/` and the WAL archive,
//! offline decryption with `tdectl`, switching `tde.wal_encryption`, and
//! the rewrite of a partly filled WAL page.

use std::path::{Path, PathBuf};

use pg_test::scan::{self, Hit};
use pg_test::wal::{self, PAGE};
use pg_test::{encrypted_cluster, marker, random_key_hex, tde, Cluster, ClusterOptions, TestDir};

/// A started cluster with `tde`, archiving into its own directory, and WAL
/// encryption on or off.
fn archiving_cluster(dir: &TestDir, name: &str, wal_encryption: bool) -> (Cluster, PathBuf) {
    let key = dir.key_file(name, &random_key_hex(), 0o600);
    let c = Cluster::new(
        dir,
        name,
        ClusterOptions::with_key_file(&key).checksums(true),
    );
    let archive = dir.subdir(&format!("{name}-archive"));
    wal::enable_archiving(&c, &archive);
    c.set(
        "tde.wal_encryption",
        if wal_encryption { "on" } else { "off" },
    );
    c.start();
    c.psql("CREATE EXTENSION tde");
    (c, archive)
}

/// Markers of every way user data reaches the WAL, all committed, written
/// into a segment of their own (returned) that is then switched away from
/// and archived. Also returns `tde_status()` as it was before the switch.
fn write_markers(
    c: &Cluster,
    archive: &Path,
) -> (Vec<(&'static str, String)>, String, tde::Status) {
    let kinds = ["heap", "index", "toast", "fpi", "update", "message"];
    let markers: Vec<(&'static str, String)> = kinds.iter().map(|&k| (k, marker(k))).collect();
    let m = |k: &str| {
        markers
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, v)| v.clone())
            .expect("kind")
    };
    c.psql("SELECT pg_switch_wal()");
    let segment = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    c.psql(&format!(
        "CREATE TABLE w(id int PRIMARY KEY, v text, big text);
         ALTER TABLE w ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE INDEX w_v ON w(v);
         INSERT INTO w VALUES (1, '{heap}', NULL);
         INSERT INTO w VALUES (2, '{index}', repeat('{toast} ', 600));
         INSERT INTO w VALUES (3, '{fpi}', NULL);
         CHECKPOINT;
         -- The first change of the page after the checkpoint logs a full
         -- page image holding the row with the fpi marker.
         UPDATE w SET v = '{update}' WHERE id = 1;
         SELECT pg_logical_emit_message(true, 'tde-test', '{message}');",
        heap = m("heap"),
        index = m("index"),
        toast = m("toast"),
        fpi = m("fpi"),
        update = m("update"),
        message = m("message"),
    ));
    // Before the switch: afterwards the newest flushed page is the
    // unwritten (zero) tail of the switched segment.
    let status = tde::status(c);
    let end = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert_eq!(end, segment, "the marker workload spilled over a segment");
    wal::wait_archived(c, &segment, archive);
    (markers, segment, status)
}

fn describe(hits: &[Hit], markers: &[(&str, String)]) -> String {
    hits.iter()
        .map(|h| {
            format!(
                "  {} marker in {} at offset {}\n",
                markers[h.needle].0,
                h.file.display(),
                h.offset
            )
        })
        .collect()
}

fn scan_for(root: &Path, markers: &[(&str, String)]) -> Vec<Hit> {
    let needles: Vec<&[u8]> = markers.iter().map(|(_, m)| m.as_bytes()).collect();
    scan::find_in_tree(root, &needles, &[])
}

#[test]
fn markers_never_in_wal_or_archive() {
    let dir = TestDir::new();
    let (enc, enc_archive) = archiving_cluster(&dir, "encrypted", true);
    let (plain, plain_archive) = archiving_cluster(&dir, "plain", false);

    let status = tde::status(&enc);
    assert!(status.wal_encryption, "{status:?}");
    let status = tde::status(&plain);
    assert!(!status.wal_encryption, "{status:?}");

    // Control: without WAL encryption every marker is in pg_wal and in the
    // archive, so the scan below can find each of them.
    let (markers, segment, status) = write_markers(&plain, &plain_archive);
    assert_eq!(status.wal_segment.as_deref(), Some(segment.as_str()));
    assert_eq!(status.wal_segment_salt, None, "{status:?}");
    let wal_dir = plain.data_dir().join("pg_wal");
    for (where_, root) in [("pg_wal", &wal_dir), ("archive", &plain_archive)] {
        let hits = scan_for(root, &markers);
        for (i, (kind, _)) in markers.iter().enumerate() {
            assert!(
                hits.iter().any(|h| h.needle == i),
                "control: {kind} marker not found in the {where_} of a cluster without WAL encryption; found:\n{}",
                describe(&hits, &markers)
            );
        }
    }
    let archived = wal::read(&plain_archive.join(&segment));
    // (PostgreSQL leaves the rest of a switched segment zero.)
    let salts = wal::page_salts(&archived);
    assert!(salts.len() >= 2, "{segment}: {} WAL pages", salts.len());
    assert!(
        salts.iter().all(|(_, s)| *s == [0; 4]),
        "control: pages with a salt in a plaintext segment: {:?}",
        salts.iter().find(|(_, s)| *s != [0; 4])
    );
    plain.stop();

    let (markers, segment, status) = write_markers(&enc, &enc_archive);
    assert_eq!(status.wal_segment.as_deref(), Some(segment.as_str()));
    let wal_dir = enc.data_dir().join("pg_wal");
    let hits = scan_for(&wal_dir, &markers);
    assert!(
        hits.is_empty(),
        "markers in pg_wal of a cluster with WAL encryption:\n{}",
        describe(&hits, &markers)
    );
    let hits = scan_for(&enc_archive, &markers);
    assert!(
        hits.is_empty(),
        "markers in the WAL archive of a cluster with WAL encryption:\n{}",
        describe(&hits, &markers)
    );

    // The archiver copies the segment as stored: byte for byte what
    // pg_wal holds, every page carrying the segment's one salt.
    let archived = wal::read(&enc_archive.join(&segment));
    let stored = wal::read(&wal_dir.join(&segment));
    assert!(
        archived == stored,
        "archived {segment} differs from the one in pg_wal"
    );
    let salts = wal::page_salts(&archived);
    assert!(salts.len() >= 2, "{segment}: {} WAL pages", salts.len());
    let first = salts[0].1;
    assert_ne!(first, [0; 4], "{segment}: first page is plaintext");
    assert_eq!(
        status.wal_segment_salt,
        Some(wal::hex(&first)),
        "tde_status() before the switch"
    );
    assert!(
        salts.iter().all(|(_, s)| *s == first),
        "{segment}: pages with another salt than {}: {:?}",
        wal::hex(&first),
        salts.iter().find(|(_, s)| *s != first)
    );
    enc.stop();
}

/// Counts `pg_waldump` lines of heap INSERT records into `rel`.
fn inserts_into(dump: &str, rel: &str) -> usize {
    dump.lines()
        .filter(|l| l.contains("desc: INSERT") && l.contains(&format!("rel {rel} blk")))
        .count()
}

fn record_count(dump: &str) -> usize {
    dump.lines().filter(|l| l.starts_with("rmgr:")).count()
}

#[test]
fn pg_waldump_reads_wal_only_after_tdectl_decrypt() {
    const ROWS: usize = 300;
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    let m = marker("waldump");
    c.psql("CREATE TABLE d(id int, v text)");
    let rel = c.psql(
        "SELECT reltablespace_or_default || '/' || db.oid || '/' || pg_relation_filenode('d')
         FROM (SELECT CASE WHEN reltablespace = 0 THEN 1663 ELSE reltablespace END AS reltablespace_or_default
               FROM pg_class WHERE relname = 'd') t,
              pg_database db WHERE db.datname = current_database()",
    );
    c.psql("SELECT pg_switch_wal()");
    let segment = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    c.psql(&format!(
        "INSERT INTO d SELECT g, '{m}-' || g FROM generate_series(1, {ROWS}) g"
    ));
    let end = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert_eq!(end, segment);
    let stored = wal::read(&c.data_dir().join("pg_wal").join(&segment));

    let enc_dir = dir.subdir("encrypted-wal");
    let enc_file = enc_dir.join(&segment);
    std::fs::write(&enc_file, &stored).expect("write copy");
    assert_eq!(scan::find(&stored, m.as_bytes()), None, "marker in pg_wal");
    let salt = wal::page_salt(&stored[..PAGE]);
    assert_ne!(salt, [0; 4], "first page of {segment} is plaintext");

    let dec_dir = dir.subdir("decrypted-wal");
    let dec_file = dec_dir.join(&segment);
    wal::tdectl_wal_ok("decrypt", &c, &enc_file, &dec_file);
    let plain = wal::read(&dec_file);
    assert_eq!(plain.len(), stored.len());
    assert!(
        wal::page_salts(&plain).iter().all(|(_, s)| *s == [0; 4]),
        "tdectl left a page with a salt"
    );
    assert!(
        scan::find(&plain, m.as_bytes()).is_some(),
        "the decrypted segment does not hold the marker"
    );

    let enc_dump = wal::pg_waldump(&enc_dir, &segment);
    let dec_dump = wal::pg_waldump(&dec_dir, &segment);
    let (enc_inserts, dec_inserts) = (
        inserts_into(&enc_dump.stdout, &rel),
        inserts_into(&dec_dump.stdout, &rel),
    );
    eprintln!(
        "pg_waldump: encrypted {} ({} records, {enc_inserts} inserts into {rel}): {}; decrypted {} ({} records, {dec_inserts} inserts)",
        enc_dump.status,
        record_count(&enc_dump.stdout),
        enc_dump.stderr.trim(),
        dec_dump.status,
        record_count(&dec_dump.stdout),
    );
    assert!(
        !enc_dump.success() && enc_inserts == 0,
        "pg_waldump read the encrypted segment ({}, {enc_inserts} inserts):\n{}",
        enc_dump.status,
        pg_test::cluster::tail(&enc_dump.text(), 4096)
    );
    assert!(
        dec_dump.success() && dec_dump.stderr.trim().is_empty(),
        "pg_waldump failed on the decrypted segment ({}):\n{}",
        dec_dump.status,
        pg_test::cluster::tail(&dec_dump.text(), 4096)
    );
    assert_eq!(
        dec_inserts, ROWS,
        "inserts into {rel} in the decrypted segment"
    );
    let last = dec_dump.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("desc: SWITCH"),
        "the decrypted segment does not end with the switch record: {last}"
    );

    // tdectl encrypt gives a new ciphertext (fresh salt) of the same WAL.
    let re_dir = dir.subdir("re-encrypted-wal");
    let re_file = re_dir.join(&segment);
    wal::tdectl_wal_ok("encrypt", &c, &dec_file, &re_file);
    let re = wal::read(&re_file);
    let re_salt = wal::page_salt(&re[..PAGE]);
    assert!(
        re_salt != [0; 4] && re_salt != salt,
        "re-encrypted salt {} (server's {})",
        wal::hex(&re_salt),
        wal::hex(&salt)
    );
    assert!(
        wal::page_salts(&re).iter().all(|(_, s)| *s == re_salt),
        "re-encrypted pages with different salts"
    );
    assert_eq!(scan::find(&re, m.as_bytes()), None, "marker after encrypt");
    let re_dump = wal::pg_waldump(&re_dir, &segment);
    assert!(
        !re_dump.success() && inserts_into(&re_dump.stdout, &rel) == 0,
        "pg_waldump read the re-encrypted segment"
    );
    let again_dir = dir.subdir("decrypted-again");
    let again_file = again_dir.join(&segment);
    wal::tdectl_wal_ok("decrypt", &c, &re_file, &again_file);
    assert!(
        wal::read(&again_file) == plain,
        "decrypt(encrypt(plaintext)) differs from the plaintext"
    );
    c.stop();
}

const ROWS_DIGEST: &str =
    "SELECT phase || ':' || count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM tg GROUP BY phase ORDER BY phase";

fn insert_phase(c: &Cluster, phase: &str, m: &str) {
    c.psql(&format!(
        "INSERT INTO tg(phase, v) SELECT '{phase}', '{m}-' || g FROM generate_series(1, 500) g"
    ));
}

fn marker_in_wal(c: &Cluster, m: &str) -> Vec<Hit> {
    marker_in_wal_dir(&c.data_dir().join("pg_wal"), m)
}

fn marker_in_wal_dir(dir: &Path, m: &str) -> Vec<Hit> {
    scan::find_in_tree(dir, &[m.as_bytes()], &[])
}

fn set_wal_encryption(c: &Cluster, on: bool) {
    c.set("tde.wal_encryption", if on { "on" } else { "off" });
}

#[test]
fn wal_encryption_toggled_across_restarts() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql("CREATE TABLE tg(id serial PRIMARY KEY, phase text, v text)");

    // on
    let a = marker("on-a");
    insert_phase(&c, "a", &a);
    let s = tde::status(&c);
    assert!(s.wal_encryption && s.wal_segment_salt.is_some(), "{s:?}");
    assert!(marker_in_wal(&c, &a).is_empty(), "on: marker a in pg_wal");

    // off, after a clean restart
    set_wal_encryption(&c, false);
    c.restart();
    let b = marker("off-b");
    insert_phase(&c, "b", &b);
    let s = tde::status(&c);
    assert!(!s.wal_encryption, "{s:?}");
    assert_eq!(s.wal_segment_salt, None, "off: new WAL page has a salt");
    assert!(
        !marker_in_wal(&c, &b).is_empty(),
        "off: marker b written in plaintext is not found in pg_wal"
    );

    // Crash while off; recover with encryption on (replaying plaintext WAL).
    c.kill9();
    set_wal_encryption(&c, true);
    c.start();
    let s = tde::status(&c);
    assert!(s.wal_encryption, "{s:?}");
    let c_marker = marker("on-c");
    insert_phase(&c, "c", &c_marker);
    let s = tde::status(&c);
    assert!(
        s.wal_segment_salt.is_some(),
        "on again: new WAL page is plaintext: {s:?}"
    );
    assert!(
        marker_in_wal(&c, &c_marker).is_empty(),
        "on again: marker c in pg_wal"
    );
    let digest = c.psql(ROWS_DIGEST);
    assert_eq!(
        digest.lines().count(),
        3,
        "phases before the second crash: {digest}"
    );

    // Crash while on; recover with encryption on.
    c.kill9();
    c.start();
    assert_eq!(c.psql(ROWS_DIGEST), digest, "rows after crash recovery");
    let d = marker("on-d");
    insert_phase(&c, "d", &d);
    let digest = c.psql(ROWS_DIGEST);

    // Crash while on; recover with encryption off (replaying encrypted WAL).
    c.kill9();
    set_wal_encryption(&c, false);
    c.start();
    assert!(!tde::status(&c).wal_encryption);
    assert_eq!(
        c.psql(ROWS_DIGEST),
        digest,
        "rows after crash recovery with encryption off"
    );
    for (phase, m) in [("a", &a), ("b", &b), ("c", &c_marker), ("d", &d)] {
        assert_eq!(
            c.psql(&format!(
                "SELECT count(*) FROM tg WHERE phase = '{phase}' AND v LIKE '{m}-%'"
            )),
            "500",
            "rows of phase {phase}"
        );
    }
    c.stop();
}

/// The units of a WAL page's encrypted region as tde lays them out (see
/// the format notes in tde-core's `wal.rs`): the 24-byte stealing pair at
/// `H..H+24`, then 16-byte blocks from `H+24` to the end of the page.
fn cipher_units(h: usize) -> Vec<std::ops::Range<usize>> {
    let mut units = Vec::with_capacity(PAGE / 16);
    units.push(h..h + 24);
    let mut at = h + 24;
    while at < PAGE {
        units.push(at..at + 16);
        at += 16;
    }
    assert_eq!(at, PAGE);
    units
}

#[test]
fn rewritten_wal_page_exposes_no_keystream() {
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(&dir, "main", ClusterOptions::with_key_file(&key));
    // As little WAL as possible from anyone but this test.
    c.set("wal_level", "minimal");
    c.set("max_wal_senders", "0");
    c.set("autovacuum", "off");
    c.start();
    c.psql("CREATE EXTENSION tde; CREATE TABLE k(id int, v text)");
    let seg_size = wal::segment_size(&c);
    let tli: u32 = c
        .psql("SELECT timeline_id FROM pg_control_checkpoint()")
        .parse()
        .expect("timeline");
    let mut db = c.connect();
    let flush =
        |db: &mut pg_test::Psql| wal::parse_lsn(&db.exec("SELECT pg_current_wal_flush_lsn()"));

    let caps = dir.subdir("captures");
    let mut attempt = 0;
    let (segment, offset, l1, l2, seg1, seg2) = loop {
        attempt += 1;
        assert!(attempt <= 200, "no suitable WAL page position found");
        // A first transaction, committed and flushed: the last WAL page is
        // partly filled, its tail zeros.
        db.exec(&format!(
            "INSERT INTO k VALUES ({attempt}, repeat('a', 150))"
        ));
        let l1 = flush(&mut db);
        let in_page = (l1 - 1) % PAGE as u64 + 1;
        if !(768..=6144).contains(&in_page) {
            continue;
        }
        let segment = wal::segment_name_before(tli, l1, seg_size);
        let file = c.data_dir().join("pg_wal").join(&segment);
        let offset = wal::page_offset_before(l1, seg_size);
        let seg1 = wal::read(&file);
        // A second small transaction fills part of the same page's tail.
        db.exec(&format!("INSERT INTO k VALUES (-{attempt}, 'b')"));
        let l2 = flush(&mut db);
        if (l2 - 1) / PAGE as u64 != (l1 - 1) / PAGE as u64 || l2 <= l1 {
            continue;
        }
        let seg2 = wal::read(&file);
        break (segment, offset, l1, l2, seg1, seg2);
    };
    db.close();
    let off = offset as usize;
    let (s1, s2) = (&seg1[off..off + PAGE], &seg2[off..off + PAGE]);
    let (old_end, new_end) = (
        ((l1 - 1) % PAGE as u64 + 1) as usize,
        ((l2 - 1) % PAGE as u64 + 1) as usize,
    );
    eprintln!(
        "page at {offset:#x} of {segment}: data up to {old_end}, then {new_end} ({} / {})",
        wal::format_lsn(l1),
        wal::format_lsn(l2)
    );

    // Plaintext of both captures, by tdectl.
    let mut plain = Vec::new();
    for (i, seg) in [&seg1, &seg2].into_iter().enumerate() {
        let src = caps.join(format!("{i}-{segment}.stored"));
        let dst = caps.join(format!("{i}-{segment}"));
        std::fs::write(&src, seg).expect("write capture");
        wal::tdectl_wal_ok("decrypt", &c, &src, &dst);
        plain.push(wal::read_at(&dst, offset, PAGE));
    }
    let (d1, d2) = (&plain[0], &plain[1]);
    let h = wal::header_len(s1);

    let salt = wal::page_salt(s1);
    assert_ne!(salt, [0; 4], "the page is stored in plaintext");
    assert_eq!(wal::page_salt(s2), salt, "the page's salt changed");
    assert_eq!(&s1[..20], &s2[..20], "plaintext page header changed");
    assert_eq!(wal::page_addr(d1), wal::page_addr(s1));

    // Preconditions, from the plaintexts: the first capture's tail is
    // zeros, the second holds new data there, the old data is unchanged.
    assert!(
        d1[old_end..].iter().all(|&b| b == 0),
        "first capture: data after its flush position {old_end}"
    );
    assert!(
        d2[old_end..new_end].iter().any(|&b| b != 0),
        "second capture: no data in {old_end}..{new_end}"
    );
    assert_eq!(
        &d1[h..old_end],
        &d2[h..old_end],
        "the page's old records changed"
    );

    // No keystream: over the region that went from zeros to data, the XOR
    // of the two stored versions is not the new plaintext (as it would be
    // with a stream cipher at fixed positions). Chance agreement is about
    // one byte in 256.
    let region = old_end..new_end;
    let same = region.clone().filter(|&i| s1[i] ^ s2[i] == d2[i]).count();
    assert!(
        region.len() >= 16 && same * 8 < region.len(),
        "XOR of the two stored versions equals the new plaintext in {same} of {} bytes ({region:?})",
        region.len()
    );
    assert!(
        s1[region.clone()].iter().any(|&b| b != 0),
        "zeros stored as zeros"
    );

    // Determinism: every cipher unit whose plaintext did not change keeps
    // its stored bytes; the ones whose plaintext changed do not.
    let mut unchanged = 0;
    for u in cipher_units(h) {
        if d1[u.clone()] == d2[u.clone()] {
            assert_eq!(
                &s1[u.clone()],
                &s2[u.clone()],
                "unit {u:?}: same plaintext, different ciphertext"
            );
            if u.end <= old_end {
                unchanged += 1;
            }
        } else {
            assert_ne!(
                &s1[u.clone()],
                &s2[u.clone()],
                "unit {u:?}: plaintext changed, ciphertext did not"
            );
        }
    }
    assert!(
        unchanged >= (old_end - h - 24) / 16,
        "only {unchanged} unchanged units before offset {old_end}"
    );
    c.stop();
}

#[test]
fn wal_written_during_base_backup_is_encrypted() {
    let dir = TestDir::new();
    let (c, archive) = archiving_cluster(&dir, "main", true);
    c.psql("CREATE TABLE pending(v text)");
    let since = wal::lsn(&c, "SELECT pg_current_wal_insert_lsn()");
    // An uncommitted row: its WAL record waits in the WAL buffers, on the
    // partly filled last page, for whichever process flushes next. The
    // base backup's own WAL (switch, checkpoint, backup end) lands on the
    // same page.
    let m = marker("in-flight");
    let mut open = c.connect();
    open.exec(&format!("BEGIN; INSERT INTO pending VALUES ('{m}')"));
    let backup = Cluster::from_base_backup(&c, "backup", &["-X", "fetch"]);
    open.exec("COMMIT");
    open.close();
    let segment = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    wal::wait_archived(&c, &segment, &archive);

    let backup_wal = backup.data_dir().join("pg_wal");
    let mut problems = String::new();
    for (what, root) in [
        ("pg_wal", c.data_dir().join("pg_wal")),
        ("archive", archive.clone()),
        ("backup's pg_wal", backup_wal.clone()),
    ] {
        let (pages, plain) = wal::plaintext_pages_since(&root, since);
        let hits = scan::find_in_tree(&root, &[m.as_bytes()], &[]);
        eprintln!(
            "{what}: {pages} WAL pages since {}, plaintext: {plain:?}; marker: {hits:?}",
            wal::format_lsn(since)
        );
        if !plain.is_empty() || !hits.is_empty() || pages == 0 {
            problems.push_str(&format!(
                "{what}: {pages} pages written since {}, plaintext ones (file, page): {plain:?}; marker found: {:?}\n",
                wal::format_lsn(since),
                hits.iter()
                    .map(|h| format!("{} at {}", h.file.display(), h.offset))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "WAL stored in plaintext around a base backup:\n{problems}"
    );

    // The backup starts from the encrypted WAL it fetched.
    backup.unset("archive_mode");
    backup.unset("archive_command");
    backup.start();
    assert_eq!(backup.psql("SELECT count(*) FROM pending"), "0");
    backup.stop();
    c.stop();
}

/// Settings under which PostgreSQL opens WAL segments with `O_DIRECT`
/// (`wal_sync_method` `open_datasync` and no WAL archiving or streaming):
/// every read and write of a segment must then use aligned buffers.
fn direct_io_wal(c: &Cluster) {
    c.set("wal_level", "minimal");
    c.set("max_wal_senders", "0");
    c.set("wal_sync_method", "open_datasync");
}

#[test]
fn wal_with_direct_io() {
    let dir = TestDir::new();
    // Control: the plain server runs with direct I/O on this file system.
    let plain = Cluster::new(
        &dir,
        "plain",
        ClusterOptions {
            checksums: false,
            key: pg_test::KeySource::None,
            preload: false,
            wal_segment_size_mb: None,
            bin: None,
        },
    );
    direct_io_wal(&plain);
    if let Err(e) = plain.try_start() {
        panic!("control: PostgreSQL without tde does not start with O_DIRECT WAL here: {e}");
    }
    assert_eq!(plain.psql("SHOW wal_sync_method"), "open_datasync");
    plain.stop();

    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(&dir, "main", ClusterOptions::with_key_file(&key));
    direct_io_wal(&c);
    if let Err(e) = c.try_start() {
        panic!("tde with O_DIRECT WAL: {e}");
    }
    let m = marker("direct");
    c.psql(&format!(
        "CREATE EXTENSION tde;
         CREATE TABLE dio(id int, v text);
         INSERT INTO dio SELECT g, '{m}-' || g FROM generate_series(1, 2000) g;"
    ));
    let s = tde::status(&c);
    assert!(s.wal_segment_salt.is_some(), "{s:?}");
    assert!(marker_in_wal(&c, &m).is_empty(), "marker in pg_wal");
    c.kill9();
    c.start();
    assert_eq!(c.psql("SELECT count(*) FROM dio"), "2000");
    c.stop();
}

#[test]
fn small_wal_segments() {
    const ROWS: usize = 20_000;
    let dir = TestDir::new();
    let key = dir.key_file("principal", &random_key_hex(), 0o600);
    let c = Cluster::new(
        &dir,
        "main",
        ClusterOptions::with_key_file(&key)
            .checksums(true)
            .wal_segment_size_mb(1),
    );
    let archive = dir.subdir("archive");
    wal::enable_archiving(&c, &archive);
    c.start();
    c.psql("CREATE EXTENSION tde; CREATE TABLE s(id int, v text)");
    let seg_size = wal::segment_size(&c);
    assert_eq!(seg_size, 1 << 20);
    let since = wal::lsn(&c, "SELECT pg_current_wal_insert_lsn()");
    let m = marker("small-segments");
    c.psql(&format!(
        "INSERT INTO s SELECT g, '{m}-' || g FROM generate_series(1, {ROWS}) g"
    ));
    let first = c.psql(&format!(
        "SELECT pg_walfile_name({}::pg_lsn + 1)",
        pg_test::cluster::quote(&wal::format_lsn(since))
    ));
    let last = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(
        wal::segment_start(&last, seg_size) >= wal::segment_start(&first, seg_size) + 2 * seg_size,
        "the rows took less than three segments: {first} .. {last}"
    );
    wal::wait_archived(&c, &last, &archive);
    for (what, root) in [
        ("pg_wal", c.data_dir().join("pg_wal")),
        ("archive", archive.clone()),
    ] {
        assert!(marker_in_wal_dir(&root, &m).is_empty(), "marker in {what}");
        let (pages, plain) = wal::plaintext_pages_since(&root, since);
        eprintln!(
            "{what}: {pages} WAL pages since {} ({first} .. {last})",
            wal::format_lsn(since)
        );
        assert!(
            pages > 2 * seg_size as usize / PAGE && plain.is_empty(),
            "{what}: {pages} pages since {}, plaintext: {plain:?}",
            wal::format_lsn(since)
        );
    }

    // Offline: a whole archived 1 MB segment decrypts for pg_waldump.
    let middle = wal::segment_files(&archive)
        .into_iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .find(|n| n.as_str() > first.as_str() && n.as_str() < last.as_str())
        .expect("a segment between the first and the last");
    let dec = dir.subdir("decrypted");
    wal::tdectl_wal_ok("decrypt", &c, &archive.join(&middle), &dec.join(&middle));
    let dump = wal::pg_waldump(&dec, &middle);
    assert!(
        dump.success()
            && dump
                .stdout
                .lines()
                .filter(|l| l.contains("desc: INSERT"))
                .count()
                > 1000,
        "pg_waldump of decrypted {middle} ({}):\n{}",
        dump.status,
        pg_test::cluster::tail(&dump.text(), 4096)
    );

    c.kill9();
    c.start();
    assert_eq!(
        c.psql(&format!("SELECT count(*) FROM s WHERE v LIKE '{m}-%'")),
        ROWS.to_string()
    );
    c.stop();
}
