//! A physical standby of an encrypted primary: streaming replication
//! decrypts on the primary's side, the standby's walreceiver writes its own
//! encrypted WAL, and the standby can be promoted.

use pg_test::scan;
use pg_test::wal::{self, PAGE};
use pg_test::{encrypted_cluster, marker, os, tde, Cluster, TestDir};

fn markers_in_wal(c: &Cluster, markers: &[&str]) -> Vec<scan::Hit> {
    let needles: Vec<&[u8]> = markers.iter().map(|m| m.as_bytes()).collect();
    scan::find_in_tree(&c.data_dir().join("pg_wal"), &needles, &[])
}

#[test]
fn standby_streams_encrypted_wal_and_promotes() {
    let dir = TestDir::new();
    let primary = encrypted_cluster(&dir);
    primary.psql("CREATE TABLE r(id int PRIMARY KEY, v text)");

    let standby = Cluster::from_base_backup(&primary, "standby", &["-X", "stream", "-R"]);
    assert!(
        standby.keyring_path().is_file(),
        "the base backup has no keyring"
    );
    standby.start();
    wal::wait_streaming(&standby);

    // A segment begun while the standby streams, so that the walreceiver
    // creates it; enough rows to fill several pages of it.
    primary.psql("SELECT pg_switch_wal()");
    let since = wal::lsn(&primary, "SELECT pg_current_wal_insert_lsn()");
    let m1 = marker("streamed");
    let m2 = marker("streamed-message");
    primary.psql(&format!(
        "INSERT INTO r SELECT g, '{m1}-' || g FROM generate_series(1, 2000) g;
         SELECT pg_logical_emit_message(true, 'tde-test', '{m2}');"
    ));
    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    assert_eq!(
        standby.psql(&format!("SELECT count(*) FROM r WHERE v LIKE '{m1}-%'")),
        "2000",
        "rows read on the standby"
    );
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");

    let hits = markers_in_wal(&standby, &[&m1, &m2]);
    assert!(hits.is_empty(), "markers in the standby's pg_wal: {hits:?}");
    let hits = markers_in_wal(&primary, &[&m1, &m2]);
    assert!(hits.is_empty(), "markers in the primary's pg_wal: {hits:?}");

    // Both nodes hold the segment encrypted, each under its own salt, and
    // both decrypt to the same WAL.
    let seg_size = wal::segment_size(&primary);
    let segment = wal::segment_name_before(1, lsn, seg_size);
    let offset = wal::page_offset_before(lsn, seg_size) as usize;
    assert!(
        offset >= 4 * PAGE,
        "the workload filled only {} pages",
        offset / PAGE
    );
    let p_seg = wal::read(&primary.data_dir().join("pg_wal").join(&segment));
    let s_seg = wal::read(&standby.data_dir().join("pg_wal").join(&segment));
    let (p_salt, s_salt) = (
        wal::page_salt(&p_seg[offset..offset + PAGE]),
        wal::page_salt(&s_seg[offset..offset + PAGE]),
    );
    eprintln!(
        "{segment} page {:#x}: primary salt {}, standby salt {}",
        offset,
        wal::hex(&p_salt),
        wal::hex(&s_salt)
    );
    assert_ne!(p_salt, [0; 4], "primary's page is plaintext");
    assert_ne!(s_salt, [0; 4], "standby's page is plaintext");
    assert_ne!(
        p_salt, s_salt,
        "the standby wrote the segment with the primary's salt"
    );
    for (node, seg, salt) in [("primary", &p_seg, p_salt), ("standby", &s_seg, s_salt)] {
        for i in 0..=offset / PAGE {
            let page = &seg[i * PAGE..(i + 1) * PAGE];
            assert_eq!(
                wal::page_salt(page),
                salt,
                "{node}: page {i} of {segment} has another salt"
            );
        }
    }
    assert_ne!(
        &p_seg[..offset],
        &s_seg[..offset],
        "identical ciphertext on both nodes"
    );
    let copies = dir.subdir("copies");
    let mut plain = Vec::new();
    for (node, c, seg) in [("primary", &primary, &p_seg), ("standby", &standby, &s_seg)] {
        let src = copies.join(format!("{node}-{segment}"));
        let dst = copies.join(format!("{node}-{segment}.plain"));
        std::fs::write(&src, seg).expect("write copy");
        wal::tdectl_wal_ok("decrypt", c, &src, &dst);
        plain.push(wal::read(&dst));
    }
    assert!(
        plain[0][..offset] == plain[1][..offset],
        "the standby's {segment} decrypts to other WAL than the primary's"
    );
    assert!(
        scan::find(&plain[1][..offset + PAGE], m1.as_bytes()).is_some(),
        "control: the decrypted standby segment lacks the marker"
    );

    // A restart of the standby: the walreceiver streams again from the
    // beginning of the segment (it always does), and the new stream, sealed
    // under a salt of its own, rewrites every page of it up to the end.
    standby.restart();
    primary.psql(&format!(
        "INSERT INTO r SELECT g, '{m1}-' || g FROM generate_series(2001, 2200) g"
    ));
    let lsn2 = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn2);
    assert_eq!(
        wal::segment_name_before(1, lsn2, seg_size),
        segment,
        "the second batch spilled over the segment"
    );
    let s_seg = wal::read(&standby.data_dir().join("pg_wal").join(&segment));
    let last = wal::page_offset_before(lsn2, seg_size) as usize;
    let s_salt = wal::page_salt(&s_seg[..PAGE]);
    for i in 0..=last / PAGE {
        assert_eq!(
            wal::page_salt(&s_seg[i * PAGE..(i + 1) * PAGE]),
            s_salt,
            "standby after restart: page {i} of {segment} has another salt"
        );
    }

    // Promotion: the standby becomes a primary of its own.
    assert_eq!(standby.psql("SELECT pg_promote()"), "t");
    wal::wait_promoted(&standby);
    let m3 = marker("promoted");
    standby.psql(&format!(
        "INSERT INTO r SELECT g, '{m3}-' || g FROM generate_series(2201, 2700) g"
    ));
    let status = tde::status(&standby);
    assert!(
        status.wal_encryption && status.wal_segment_salt.is_some(),
        "promoted standby writes plaintext WAL: {status:?}"
    );
    primary.stop();
    standby.restart();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        standby.psql(&format!(
            "SELECT count(*) FILTER (WHERE v LIKE '{m1}-%') || '|' || count(*) FILTER (WHERE v LIKE '{m3}-%') FROM r"
        )),
        "2200|500",
        "rows on the promoted standby after a restart"
    );
    standby.psql("CHECKPOINT");
    // Every WAL page the standby wrote since it began streaming the new
    // segment, before and after promotion (the new timeline's first
    // segment is a copy of the old one's beginning), is encrypted.
    let (pages, plain) = wal::plaintext_pages_since(&standby.data_dir().join("pg_wal"), since);
    eprintln!(
        "promoted standby: {pages} WAL pages since {} in {:?}",
        wal::format_lsn(since),
        wal::segment_files(&standby.data_dir().join("pg_wal"))
            .iter()
            .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    );
    assert!(
        pages > 0 && plain.is_empty(),
        "standby: {pages} WAL pages since {}, plaintext (file, page): {plain:?}",
        wal::format_lsn(since)
    );
    let hits = markers_in_wal(&standby, &[&m1, &m2, &m3]);
    assert!(
        hits.is_empty(),
        "markers in the promoted standby's pg_wal: {hits:?}"
    );
    standby.stop();
}

/// A standby cloned with `pg_basebackup -X fetch`: its `pg_wal` starts with
/// the segments the backup copied as the primary stored them (disk format,
/// under the primary's salts). It first starts with no primary to stream
/// from, so it can only reach a consistent state (and accept connections)
/// by replaying those copies; then it streams the rest in the stream
/// format. The rows written before the backup, between the backup and the
/// standby's start, and after it reach the standby, and no marker reaches
/// its `pg_wal` in plaintext.
#[test]
fn a_standby_cloned_with_x_fetch_replays_its_copied_segments_then_streams() {
    let dir = TestDir::new();
    let primary = encrypted_cluster(&dir);
    let (before, between, after) = (marker("before"), marker("between"), marker("after"));
    primary.psql(&format!(
        "CREATE TABLE r(id int PRIMARY KEY, v text);
         INSERT INTO r SELECT g, '{before}-' || g FROM generate_series(1, 500) g"
    ));
    let standby = Cluster::from_base_backup(&primary, "standby", &["-X", "fetch"]);
    assert!(
        !wal::segment_files(&standby.data_dir().join("pg_wal")).is_empty(),
        "the backup fetched no WAL segment"
    );
    primary.psql(&format!(
        "INSERT INTO r SELECT g, '{between}-' || g FROM generate_series(501, 1000) g"
    ));
    os::write_file(&standby.data_dir().join("standby.signal"), b"", 0o600);
    standby.start();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        standby.psql(&format!("SELECT count(*) FROM r WHERE v LIKE '{before}-%'")),
        "500",
        "rows of the backup, consistent from the copied WAL alone"
    );
    let log = standby.log_text();
    for trouble in [
        "could not read",
        "invalid magic number",
        "WARNING:  tde",
        "ERROR",
    ] {
        assert!(
            !log.contains(trouble),
            "replaying the copied segments: {trouble}:\n{log}"
        );
    }
    let conninfo = format!(
        "host={} port={} user=postgres",
        primary.socket_dir().display(),
        primary.port()
    );
    standby.set_and_reload("primary_conninfo", &format!("'{conninfo}'"), &conninfo);
    wal::wait_streaming(&standby);
    // Single rows, each its own commit and flush: the walreceiver writes
    // many short pieces of pages.
    for g in 1001..1200 {
        primary.psql(&format!("INSERT INTO r VALUES ({g}, '{after}-{g}')"));
    }
    let lsn = wal::lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    assert_eq!(
        standby.psql(&format!(
            "SELECT count(*) FILTER (WHERE v LIKE '{before}-%') || ',' ||
                    count(*) FILTER (WHERE v LIKE '{between}-%') || ',' ||
                    count(*) FILTER (WHERE v LIKE '{after}-%') FROM r"
        )),
        "500,500,199",
        "rows read on the standby"
    );
    let seg_size = wal::segment_size(&primary);
    let streamed = wal::segment_name_before(1, lsn, seg_size);
    let hits = markers_in_wal(&standby, &[&before, &between, &after]);
    assert!(hits.is_empty(), "markers in the standby's pg_wal: {hits:?}");
    // Control: the segment the stream wrote into holds every row once
    // decrypted.
    let copies = dir.subdir("copies");
    let src = copies.join(&streamed);
    let dst = copies.join(format!("{streamed}.plain"));
    std::fs::copy(standby.data_dir().join("pg_wal").join(&streamed), &src).expect("copy");
    wal::tdectl_wal_ok("decrypt", &standby, &src, &dst);
    let plain = wal::read(&dst);
    for m in [&between, &after] {
        assert!(
            scan::find(&plain, m.as_bytes()).is_some(),
            "control: the decrypted {streamed} lacks {m}"
        );
    }
}
