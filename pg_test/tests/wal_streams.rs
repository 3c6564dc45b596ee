//! WAL leaving the server through replication connections is stored
//! encrypted by the stock clients as DBAs run them: `pg_receivewal`, and
//! `pg_basebackup` with its default `-X stream`; tde, `tdectl wal decrypt`
//! and `pg_verifybackup` (on the decrypted copy) read it. Each has a
//! control run on a server without tde that finds the marker, so the scan
//! is shown to work.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use pg_test::{
    encrypted_cluster, marker, os, random_key_hex, scan, wal, Cluster, ClusterOptions, TestDir,
};

const PAGE: usize = 8192;

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one `pg_receivewal` into each of `outs` while 1000 rows holding
/// `m` are inserted in a segment of their own; returns that segment's name.
/// Receivers after the first stream through a physical replication slot.
fn receive(c: &Cluster, outs: &[&Path], m: &str) -> String {
    c.psql("SELECT pg_switch_wal()");
    let mut children: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut cmd = c.client("pg_receivewal");
            if i > 0 {
                let slot = format!("receiver_{i}");
                c.psql(&format!(
                    "SELECT 1 FROM pg_create_physical_replication_slot('{slot}')
                     WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{slot}')"
                ));
                cmd.arg(format!("--slot={slot}"));
            }
            cmd.arg("-D")
                .arg(out)
                .arg("--no-sync")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pg_receivewal")
        })
        .collect();
    let segment = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    for out in outs {
        wait_for_file(&out.join(format!("{segment}.partial")));
    }
    c.psql(&format!(
        "CREATE TABLE IF NOT EXISTS s(id int, v text);
         INSERT INTO s SELECT g, '{m}-' || g FROM generate_series(1, 1000) g"
    ));
    let end = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert_eq!(end, segment);
    for out in outs {
        wait_for_file(&out.join(&segment));
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    segment
}

#[test]
fn pg_receivewal_stores_encrypted_wal() {
    let dir = TestDir::new();
    let m = marker("received");
    let enc = encrypted_cluster(&dir);
    let (out, out2) = (dir.subdir("received"), dir.subdir("received-2"));
    let segment = receive(&enc, &[&out, &out2], &m);
    for o in [&out, &out2] {
        let hits = scan::find_in_tree(o, &[m.as_bytes()], &[]);
        assert!(hits.is_empty(), "marker in pg_receivewal's files: {hits:?}");
    }
    let decrypted = dir.subdir("decrypted");
    let mut plain = Vec::new();
    for (i, o) in [&out, &out2].into_iter().enumerate() {
        let dst = decrypted.join(format!("{segment}.{i}"));
        wal::tdectl_wal_ok("decrypt", &enc, &o.join(&segment), &dst);
        plain.push(wal::read(&dst));
    }
    assert!(
        scan::find(&plain[0], m.as_bytes()).is_some(),
        "tdectl wal decrypt does not give the marker back"
    );
    assert!(
        plain[0] == plain[1],
        "the two copies decrypt to different WAL"
    );
    // Two copies of the same WAL, streamed at the same time: each stream
    // has salts of its own, so no page of one shares a key with the other.
    let (a, b) = (
        wal::read(&out.join(&segment)),
        wal::read(&out2.join(&segment)),
    );
    let mut pages = 0;
    for (pa, pb) in a.chunks_exact(PAGE).zip(b.chunks_exact(PAGE)) {
        if pa[..2] == [0, 0] {
            continue;
        }
        pages += 1;
        assert_ne!(wal::page_salt(pa), [0; 4], "a received page is plaintext");
        assert_ne!(
            wal::page_salt(pa),
            wal::page_salt(pb),
            "two streams, one salt"
        );
        assert_ne!(pa[40..], pb[40..], "two streams, one ciphertext");
    }
    assert!(pages > 10, "only {pages} pages of WAL received");

    let key = dir.key_file("plain", &random_key_hex(), 0o600);
    let mut opts = ClusterOptions::with_key_file(&key);
    opts.preload = false;
    let plain = Cluster::new(&dir, "plain", opts);
    plain.start();
    let plain_out = dir.subdir("plain-received");
    receive(&plain, &[&plain_out], &m);
    let hits = scan::find_in_tree(&plain_out, &[m.as_bytes()], &[]);
    assert!(
        !hits.is_empty(),
        "control: the marker is not in the received WAL"
    );
}

/// `pg_basebackup` with its defaults (`-X stream`, a manifest) into
/// `<name>/data`, slowed down so that rows holding `m` are inserted while
/// it streams the data files: they are in the WAL the backup carries.
fn backup_while_writing(c: &Cluster, name: &str, m: &str) -> Cluster {
    c.psql(
        "CREATE TABLE filler AS SELECT g, repeat('f', 500) AS v FROM generate_series(1, 100000) g",
    );
    c.psql("CREATE TABLE b(id int, v text)");
    let data = c.root().parent().unwrap().join(name).join("data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    os::chown_to_server(data.parent().unwrap());
    let log = std::fs::File::create(data.parent().unwrap().join("pg_basebackup.out")).unwrap();
    let mut child = c
        .client("pg_basebackup")
        .arg("-D")
        .arg(&data)
        .args(["-c", "fast", "--no-sync", "--max-rate=8M"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pg_basebackup");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.psql(
        "SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'streaming database files'",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the backup never reached its data files"
        );
        thread::sleep(Duration::from_millis(20));
    }
    c.psql(&format!(
        "INSERT INTO b SELECT g, '{m}-' || g FROM generate_series(1, 1000) g"
    ));
    let status = child.wait().expect("wait for pg_basebackup");
    assert!(
        status.success(),
        "pg_basebackup failed: {:?}",
        std::fs::read_to_string(data.parent().unwrap().join("pg_basebackup.out"))
    );
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_stat_progress_basebackup"),
        "0"
    );
    Cluster::copy_of(c, name)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn pg_basebackup_with_its_defaults_stores_encrypted_wal() {
    let dir = TestDir::new();
    let m = marker("backup");
    let enc = encrypted_cluster(&dir);
    let backup = backup_while_writing(&enc, "backup", &m);
    let hits = scan::find_in_tree(backup.data_dir(), &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker in the base backup: {hits:?}");

    // The marker is in the WAL the backup carries, sealed: decrypted with
    // tdectl it is there, and pg_verifybackup checks that copy.
    let wal_dir = backup.data_dir().join("pg_wal");
    let decrypted = dir.subdir("backup-wal-decrypted");
    let segs = segments(&wal_dir);
    assert!(!segs.is_empty(), "no WAL in the backup");
    for seg in &segs {
        let out = decrypted.join(seg.file_name().unwrap());
        wal::tdectl_wal_ok("decrypt", &enc, seg, &out);
        os::chown_to_server(&out);
    }
    let found = scan::find_in_tree(&decrypted, &[m.as_bytes()], &[]);
    assert!(
        !found.is_empty(),
        "the rows written during the backup are not in its WAL"
    );
    let verify = |args: &[&str]| {
        let mut cmd = enc.client("pg_verifybackup");
        // The test harness set the copy's port after the backup.
        cmd.args(args)
            .args(["-i", "tde_test.conf"])
            .arg(backup.data_dir());
        os::run(&mut cmd, None, Duration::from_secs(120))
    };
    let out = verify(&["-w", decrypted.to_str().unwrap()]);
    assert!(
        out.success(),
        "pg_verifybackup on the decrypted WAL:\n{}",
        out.text()
    );
    let out = verify(&["-n"]);
    assert!(out.success(), "pg_verifybackup -n:\n{}", out.text());
    // Stock pg_verifybackup cannot parse sealed WAL (its flag is one no
    // PostgreSQL page carries): it fails rather than passing it.
    let out = verify(&[]);
    assert!(
        !out.success(),
        "pg_verifybackup parsed sealed WAL:\n{}",
        out.text()
    );

    // The backup starts, replays its sealed WAL and has the rows.
    backup.start();
    assert_eq!(
        backup.psql(&format!("SELECT count(*) FROM b WHERE v LIKE '{m}-%'")),
        "1000"
    );

    let key = dir.key_file("plain", &random_key_hex(), 0o600);
    let mut opts = ClusterOptions::with_key_file(&key);
    opts.preload = false;
    let plain = Cluster::new(&dir, "plain", opts);
    plain.start();
    let plain_backup = backup_while_writing(&plain, "plain-backup", &m);
    let hits = scan::find_in_tree(
        &plain_backup.data_dir().join("pg_wal"),
        &[m.as_bytes()],
        &[],
    );
    assert!(
        !hits.is_empty(),
        "control: the marker is not in the backup's WAL"
    );
}

/// The generation byte of every page of `segment` as received.
fn stream_generations(segment: &Path) -> Vec<u8> {
    let bytes = wal::read(segment);
    let mut gens: Vec<u8> = bytes
        .chunks_exact(PAGE)
        .filter(|p| p[..2] != [0, 0])
        .map(|p| wal::page_salt(p)[0])
        .collect();
    gens.dedup();
    gens
}

/// Streams are sealed under the oldest generation the keyring holds by
/// default (a standby cloned before a rotation keeps streaming), under the
/// current one with `tde.wal_stream_generation = current`, read at reload;
/// then a standby without the new generation stops replaying, says why, and
/// goes on once the keyring is imported.
#[test]
fn the_stream_generation_follows_the_setting() {
    let dir = TestDir::new();
    let enc = encrypted_cluster(&dir);
    let standby = Cluster::from_base_backup(&enc, "standby", &["-X", "stream", "-R"]);
    standby.start();
    wal::wait_streaming(&standby);
    assert_eq!(enc.psql("SELECT tde_rotate_data_key()"), "2");
    let m = marker("generation");
    let out = dir.subdir("oldest");
    let segment = receive(&enc, &[&out], &m);
    assert_eq!(stream_generations(&out.join(&segment)), [1]);
    let lsn = wal::lsn(&enc, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    assert_eq!(standby.psql("SELECT count(*) FROM s"), "1000");

    enc.set("tde.wal_stream_generation", "current");
    enc.psql("SELECT pg_reload_conf()");
    let out = dir.subdir("current");
    let segment = receive(&enc, &[&out], &m);
    assert_eq!(stream_generations(&out.join(&segment)), [2]);
    let decrypted = dir.subdir("decrypted");
    wal::tdectl_wal_ok(
        "decrypt",
        &enc,
        &out.join(&segment),
        &decrypted.join(&segment),
    );
    assert!(scan::find_in_file(&decrypted.join(&segment), m.as_bytes()).is_some());

    // The standby holds generation 1 only: it stops before that WAL.
    wal::wait_for(
        Duration::from_secs(60),
        || standby.log_text().contains("generation 2").then_some(()),
        || {
            format!(
                "the standby never said it lacks generation 2:\n{}",
                standby.log_text()
            )
        },
    );
    assert_eq!(standby.psql("SELECT count(*) FROM s"), "1000");
    let copy = standby.root().join("primary-keyring.json");
    os::write_file(&copy, &std::fs::read(enc.keyring_path()).unwrap(), 0o600);
    assert_eq!(
        standby.psql(&format!("SELECT tde_import_keyring('{}')", copy.display())),
        "1, 2"
    );
    let lsn = wal::lsn(&enc, "SELECT pg_current_wal_flush_lsn()");
    wal::wait_replayed(&standby, lsn);
    assert_eq!(standby.psql("SELECT count(*) FROM s"), "2000");
}

/// One `pg_receivewal` into `out` (see [`receive`]): no marker in what it
/// stored, and the segment sealed under generation 1.
fn receive_sealed(c: &Cluster, out: &Path, m: &str) {
    let segment = receive(c, &[out], m);
    let hits = scan::find_in_tree(out, &[m.as_bytes()], &[]);
    assert!(hits.is_empty(), "marker in pg_receivewal's files: {hits:?}");
    assert_eq!(stream_generations(&out.join(&segment)), [1]);
}

/// A library loaded after tde that sets its own client authentication hook
/// (`auth_delay`, which calls the previous one): walsenders are still
/// wrapped and what they send is sealed.
#[test]
fn a_later_authentication_hook_keeps_streams_sealed() {
    let dir = TestDir::new();
    let enc = encrypted_cluster(&dir);
    let libdir = enc.psql("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'");
    if !Path::new(&libdir).join("auth_delay.so").exists() {
        eprintln!("SKIPPED: auth_delay is not installed in {libdir} (a contrib module)");
        return;
    }
    enc.set("shared_preload_libraries", "'tde,auth_delay'");
    enc.set("auth_delay.milliseconds", "1");
    enc.restart();
    assert_eq!(enc.psql("SHOW shared_preload_libraries"), "tde,auth_delay");
    let m = marker("auth-delay");
    let out = dir.subdir("received");
    receive_sealed(&enc, &out, &m);
}

/// A child process, killed and reaped when dropped (a failed assertion
/// included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds `fixtures/hook_thief.c` against the server's headers into the
/// test directory, readable by the server's OS user.
fn build_hook_thief(dir: &TestDir) -> PathBuf {
    let pg_config = os::pg_bin().join("pg_config");
    let out = std::process::Command::new(&pg_config)
        .arg("--includedir-server")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", pg_config.display()));
    let include = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = dir.path().join("hook_thief.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hook_thief.c");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("run cc (build-essential)");
    assert!(
        out.status.success(),
        "cc {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    os::chown_to_server(&lib);
    lib
}

/// A library that takes the client authentication hook without calling
/// tde's. Loaded after tde, it is put behind tde's again once every
/// library is loaded, and streams stay sealed. When it takes the hook
/// after that (from its own shared memory start-up), walsenders are not
/// wrapped: they must refuse to send WAL, so `pg_receivewal` gets nothing,
/// ordinary connections keep working, and the server log says why.
#[test]
fn a_hook_that_drops_tdes_never_lets_plaintext_wal_out() {
    let dir = TestDir::new();
    let lib = build_hook_thief(&dir);
    let enc = encrypted_cluster(&dir);
    enc.set(
        "shared_preload_libraries",
        &format!("'tde,{}'", lib.display()),
    );
    enc.set("hook_thief.late", "off");
    enc.restart();
    let m = marker("hook-thief");
    let out = dir.subdir("received-early");
    receive_sealed(&enc, &out, &m);

    enc.set("hook_thief.late", "on");
    enc.restart();
    assert_eq!(enc.psql("SELECT 1"), "1", "an ordinary connection");
    let before = enc.log_text().len();
    enc.psql(&format!(
        "INSERT INTO s SELECT g, '{m}-late-' || g FROM generate_series(1, 1000) g"
    ));
    let out = dir.subdir("received-late");
    let mut child = Killed(
        enc.client("pg_receivewal")
            .arg("-D")
            .arg(&out)
            .args(["--no-sync", "--no-loop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pg_receivewal"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait for pg_receivewal") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pg_receivewal kept streaming from an unwrapped walsender"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "pg_receivewal succeeded");
    let hits = scan::find_in_tree(&out, &[format!("{m}-late").as_bytes()], &[]);
    assert!(hits.is_empty(), "marker in pg_receivewal's files: {hits:?}");
    let log = enc.log_text()[before..].to_string();
    assert!(
        log.contains("does not seal the WAL it sends")
            || log.contains("could not send data to client: Input/output error"),
        "the server log does not say why the stream stopped:\n{log}"
    );
    assert_eq!(enc.psql("SELECT count(*) FROM s"), "2000");
}
