//! Keys never reach a core dump. A backend that crashes with the kernel's
//! `core_pattern = core` would write its memory (shared memory with the data
//! keys, its heap with the keyring key) into the data directory, where base
//! backups copy it. Server processes are therefore not dumpable unless
//! `tde.allow_core_dumps` is on; the control run with it on shows that a
//! crash here does write a core file and that the scan finds the keys in it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pg_test::{os, random_key_hex, scan, Cluster, ClusterOptions, TestDir};
use tde_core::keyring::{open_for_cluster, KeyringFile};
use tde_core::principal::PrincipalKey;

/// The keyring key and every data key, as one holding the principal key
/// could read them from the keyring file.
fn keys_of(c: &Cluster, key_hex: &str) -> Vec<[u8; 32]> {
    let principal = PrincipalKey::parse_hex(key_hex, "test key").expect("principal key");
    let bytes = std::fs::read(c.keyring_path()).expect("read the keyring");
    let file = KeyringFile::parse(&bytes).expect("parse the keyring");
    let sysid = tde_core::control::system_identifier(c.data_dir()).expect("system identifier");
    let ring = open_for_cluster(&file, &principal, sysid).expect("open the keyring");
    let mut keys = vec![*ring.keyring_key().as_bytes()];
    for g in ring.generations() {
        keys.push(*ring.data_key(g).expect("listed generation").as_bytes());
    }
    keys
}

/// The core files a crash left in the data directory (`core`, `core.<pid>`).
fn core_files(c: &Cluster) -> Vec<PathBuf> {
    std::fs::read_dir(c.data_dir())
        .expect("read the data directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "core" || n.starts_with("core."))
        })
        .collect()
}

/// Whether the kernel writes core files into the crashing process's
/// working directory (the data directory, for a backend).
fn cores_go_to_the_working_directory() -> bool {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    !pattern.is_empty() && !pattern.starts_with('|') && !pattern.contains('/')
}

/// The owner of `/proc/<pid>/status`: the kernel gives the files of a
/// process that is not dumpable to root.
fn proc_owner(pid: i32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("stat /proc/{pid}/status: {e}"))
        .uid()
}

/// The postmaster and every server process it forked are not dumpable.
fn assert_not_dumpable(postmaster: i32) {
    assert_eq!(proc_owner(postmaster), 0, "the postmaster is dumpable");
    let children = os::children_of(postmaster);
    assert!(
        !children.is_empty(),
        "no server processes under the postmaster"
    );
    for child in children {
        assert_eq!(proc_owner(child), 0, "server process {child} is dumpable");
    }
}

/// Crashes one backend with SIGSEGV and waits until the server has gone
/// through its crash restart and accepts connections again.
fn crash_a_backend(c: &Cluster) {
    let mut session = c.connect();
    let pid: i32 = session
        .exec("SELECT pg_backend_pid()")
        .trim()
        .parse()
        .expect("pid");
    // The backend has the keys in hand: it has just read an encrypted table.
    session.exec("SELECT count(*) FROM t");
    os::kill(pid, libc::SIGSEGV);
    assert!(
        os::wait_gone(pid, Duration::from_secs(30)),
        "backend {pid} survived SIGSEGV"
    );
    drop(session);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.try_psql("SELECT 1").is_err() {
        assert!(
            Instant::now() < deadline,
            "no crash restart after the backend's SIGSEGV"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        c.log_text().contains("was terminated by signal 11"),
        "the server log does not show the crash"
    );
}

fn cluster(dir: &TestDir, allow_core_dumps: bool) -> (Cluster, String) {
    let key_hex = random_key_hex();
    let key = dir.key_file("principal", &key_hex, 0o600);
    let c = Cluster::new(dir, "main", ClusterOptions::with_key_file(&key));
    c.set(
        "tde.allow_core_dumps",
        if allow_core_dumps { "on" } else { "off" },
    );
    c.try_start_with(&["-c"]).unwrap_or_else(|e| panic!("{e}"));
    c.psql(
        "CREATE TABLE t(id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
         CHECKPOINT;",
    );
    (c, key_hex)
}

fn files_holding(root: &Path, keys: &[[u8; 32]]) -> Vec<String> {
    let needles: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    scan::find_in_tree(root, &needles, &[])
        .into_iter()
        .map(|hit| format!("{hit:?}"))
        .collect()
}

#[test]
fn server_processes_are_not_dumpable_and_a_crash_leaves_no_core() {
    let dir = TestDir::new();
    let (c, key_hex) = cluster(&dir, false);
    let keys = keys_of(&c, &key_hex);
    let postmaster = c.postmaster_pid().expect("postmaster pid");
    assert_not_dumpable(postmaster);
    crash_a_backend(&c);
    // The processes forked by the crash restart inherit it too.
    assert_not_dumpable(postmaster);
    if cores_go_to_the_working_directory() {
        assert_eq!(
            core_files(&c),
            Vec::<PathBuf>::new(),
            "a crash wrote a core file"
        );
    } else {
        eprintln!(
            "core_pattern sends core files elsewhere: only the dumpable attribute was checked"
        );
    }
    c.stop();
    let leaks = files_holding(c.data_dir(), &keys);
    assert!(
        leaks.is_empty(),
        "key bytes in the data directory: {leaks:?}"
    );
}

/// The control run: with tde.allow_core_dumps on, the same crash writes a
/// core file into the data directory and it holds the keys, so the test
/// above would notice a dump.
#[test]
fn with_core_dumps_allowed_a_crash_dumps_the_keys() {
    if !cores_go_to_the_working_directory() {
        eprintln!("core_pattern sends core files elsewhere: the control run cannot look at them");
        return;
    }
    let dir = TestDir::new();
    let (c, key_hex) = cluster(&dir, true);
    assert!(
        c.log_text()
            .contains("core dumps of server processes contain encryption keys"),
        "no warning that core dumps are allowed"
    );
    let keys = keys_of(&c, &key_hex);
    let postmaster = c.postmaster_pid().expect("postmaster pid");
    assert_ne!(proc_owner(postmaster), 0, "the postmaster is not dumpable");
    crash_a_backend(&c);
    let deadline = Instant::now() + Duration::from_secs(30);
    while core_files(&c).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no core file appeared with core dumps allowed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.stop();
    let leaks = files_holding(c.data_dir(), &keys);
    assert!(
        !leaks.is_empty(),
        "the core file holds no key: the scan would miss a leak"
    );
    for core in core_files(&c) {
        std::fs::remove_file(core).expect("remove the core file");
    }
}
