//! WAL on disk: positions, segment files and pages as stored, the offline
//! `tdectl` tool, `pg_waldump`, archiving and replication progress.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::{quote, Cluster};
use crate::os::{self, Output, COMMAND_TIMEOUT};

/// `XLOG_BLCKSZ`.
pub const PAGE: usize = 8192;
/// `xlp_info` bit of a segment's first page.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// Parses a `pg_lsn` as printed by PostgreSQL (`16/B374D848`).
pub fn parse_lsn(s: &str) -> u64 {
    let s = s.trim();
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|e| panic!("LSN {s:?}: {e}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|e| panic!("LSN {s:?}: {e}"));
    hi << 32 | lo
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Runs a query returning one `pg_lsn` and parses it.
pub fn lsn(c: &Cluster, sql: &str) -> u64 {
    parse_lsn(&c.psql(sql))
}

/// `wal_segment_size` in bytes.
pub fn segment_size(c: &Cluster) -> u64 {
    c.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .parse()
        .expect("wal_segment_size")
}

/// The name of the segment file holding the byte just before `lsn` (as
/// `pg_walfile_name`), on timeline `tli`.
pub fn segment_name_before(tli: u32, lsn: u64, segment_size: u64) -> String {
    let segno = (lsn - 1) / segment_size;
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// Offset in its segment file of the WAL page holding the byte just before
/// `lsn`.
pub fn page_offset_before(lsn: u64, segment_size: u64) -> u64 {
    (lsn - 1) % segment_size / PAGE as u64 * PAGE as u64
}

/// Whether `name` is a WAL segment file name (24 hex digits, optionally
/// `.partial`).
pub fn is_segment_name(name: &str) -> bool {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The segment files in `dir` (a `pg_wal/` or an archive), sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(is_segment_name)
        })
        .collect();
    out.sort();
    out
}

/// `len` bytes of `file` at `offset`, as stored.
pub fn read_at(file: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", file.display()));
    buf
}

/// The whole file, as stored.
pub fn read(file: &Path) -> Vec<u8> {
    std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
}

/// The 4 header padding bytes of a WAL page, where tde keeps the segment
/// salt (zero: plaintext page).
pub fn page_salt(page: &[u8]) -> [u8; 4] {
    page[20..24].try_into().expect("4 bytes")
}

/// `xlp_pageaddr` of a WAL page.
pub fn page_addr(page: &[u8]) -> u64 {
    u64::from_le_bytes(page[8..16].try_into().expect("8 bytes"))
}

/// The header length of a WAL page: 40 for a segment's first page (long
/// header), else 24.
pub fn header_len(page: &[u8]) -> usize {
    if u16::from_le_bytes([page[2], page[3]]) & XLP_LONG_HEADER != 0 {
        40
    } else {
        24
    }
}

/// `(page index, salt)` of every page of a segment image that is not all
/// zeros.
pub fn page_salts(segment: &[u8]) -> Vec<(usize, [u8; 4])> {
    segment
        .chunks_exact(PAGE)
        .enumerate()
        .filter(|(_, p)| p.iter().any(|&b| b != 0))
        .map(|(i, p)| (i, page_salt(p)))
        .collect()
}

/// The WAL position of the first byte of segment file `name` (24 hex
/// digits, optionally `.partial`) of `segment_size` bytes.
pub fn segment_start(name: &str, segment_size: u64) -> u64 {
    let field = |r: std::ops::Range<usize>| {
        u64::from_str_radix(&name[r], 16).unwrap_or_else(|e| panic!("segment name {name}: {e}"))
    };
    (field(8..16) << 32) + field(16..24) * segment_size
}

/// Looks at every page in the segment files of `dir` that holds WAL from
/// `since` on (its `xlp_pageaddr` is its own position, at or after the
/// page of `since`, so neither zeros nor leftovers of a recycled file);
/// returns how many there are and `(file, page index)` of those stored in
/// plaintext.
pub fn plaintext_pages_since(dir: &Path, since: u64) -> (usize, Vec<(String, usize)>) {
    let since_page = since / PAGE as u64 * PAGE as u64;
    let (mut pages, mut plain) = (0, Vec::new());
    for file in segment_files(dir) {
        let bytes = read(&file);
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let start = segment_start(&name, bytes.len() as u64);
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            let at = start + (i * PAGE) as u64;
            if at >= since_page && page_addr(page) == at && page.iter().any(|&b| b != 0) {
                pages += 1;
                if page_salt(page) == [0; 4] {
                    plain.push((name.clone(), i));
                }
            }
        }
    }
    (pages, plain)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A command run as the current user (not the server's), without `PG*`
/// variables from the caller's environment.
fn local_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The `tdectl` binary: `$TDECTL`, else the workspace's release build.
pub fn tdectl() -> PathBuf {
    let path = std::env::var_os("TDECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tdectl"));
    assert!(
        path.is_file(),
        "tdectl not found at {} (build it with `cargo build --release -p tdectl` or set TDECTL)",
        path.display()
    );
    path
}

/// `tdectl wal <direction> --pgdata <data> --key-file <key> src dst` with
/// `cluster`'s keyring and principal key.
pub fn tdectl_wal(direction: &str, cluster: &Cluster, src: &Path, dst: &Path) -> Output {
    let key = cluster
        .key_file()
        .expect("tdectl_wal needs a cluster whose principal key is in a file");
    let mut cmd = local_command(tdectl());
    cmd.args(["wal", direction, "--pgdata"])
        .arg(cluster.data_dir())
        .arg("--key-file")
        .arg(key)
        .arg(src)
        .arg(dst);
    os::run(&mut cmd, None, COMMAND_TIMEOUT)
}

/// Like [`tdectl_wal`], panicking unless it succeeds.
pub fn tdectl_wal_ok(direction: &str, cluster: &Cluster, src: &Path, dst: &Path) {
    let out = tdectl_wal(direction, cluster, src, dst);
    assert!(
        out.success(),
        "tdectl wal {direction} {} {} failed ({}):\n{}",
        src.display(),
        dst.display(),
        out.status,
        out.text()
    );
}

/// `pg_waldump -p <dir> <segment>`.
pub fn pg_waldump(dir: &Path, segment: &str) -> Output {
    let mut cmd = local_command(os::pg_bin().join("pg_waldump"));
    cmd.arg("-p").arg(dir).arg(segment);
    os::run(&mut cmd, None, COMMAND_TIMEOUT)
}

/// Turns on WAL archiving into `archive` with `cp` (takes effect at the
/// next start).
pub fn enable_archiving(c: &Cluster, archive: &Path) {
    c.set("archive_mode", "on");
    c.set(
        "archive_command",
        &quote(&format!("cp %p {}/%f", archive.display())),
    );
}

/// Polls `check` every 100 ms until it returns `Some`, at most `timeout`;
/// panics with `what()` otherwise.
pub fn wait_for<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {}", what());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the archiver has copied `segment` (its `.done` status file
/// exists) into `archive`.
pub fn wait_archived(c: &Cluster, segment: &str, archive: &Path) {
    let done = c
        .data_dir()
        .join("pg_wal/archive_status")
        .join(format!("{segment}.done"));
    let copy = archive.join(segment);
    wait_for(
        Duration::from_secs(60),
        || (done.exists() && copy.exists()).then_some(()),
        || {
            format!(
                "segment {segment} not archived; pg_stat_archiver: {}",
                c.psql("SELECT archived_count, last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver")
            )
        },
    );
}

/// Waits until standby `s` streams from its primary.
pub fn wait_streaming(s: &Cluster) {
    wait_for(
        Duration::from_secs(60),
        || (s.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming").then_some(()),
        || format!("standby {} not streaming:\n{}", s.name(), s.log_text()),
    );
}

/// Waits until standby `s` has replayed WAL up to `lsn`.
pub fn wait_replayed(s: &Cluster, lsn: u64) {
    let sql = format!(
        "SELECT pg_last_wal_replay_lsn() >= {}::pg_lsn",
        quote(&format_lsn(lsn))
    );
    wait_for(
        Duration::from_secs(60),
        || (s.psql(&sql) == "t").then_some(()),
        || {
            format!(
                "standby {} has not replayed up to {}: receive {} replay {}",
                s.name(),
                format_lsn(lsn),
                s.psql("SELECT pg_last_wal_receive_lsn()"),
                s.psql("SELECT pg_last_wal_replay_lsn()")
            )
        },
    );
}

/// Waits until `c` has left recovery (after a promotion).
pub fn wait_promoted(c: &Cluster) {
    wait_for(
        Duration::from_secs(60),
        || (c.try_psql("SELECT pg_is_in_recovery()").ok()?.trim() == "f").then_some(()),
        || {
            format!(
                "{} is still in recovery; server log:\n{}",
                c.name(),
                crate::cluster::tail(&c.log_text(), 4096)
            )
        },
    );
}

/// Every regular file directly in `dir` with its contents (e.g. to show
/// that a refused start left `pg_wal` untouched).
pub fn files_of(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                read(&e.path()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip_and_names() {
        assert_eq!(parse_lsn("16/B374D848"), 0x16_B374_D848);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        let seg = 16 << 20;
        assert_eq!(
            segment_name_before(1, 0x3000028, seg),
            "000000010000000000000003"
        );
        // The byte before a segment boundary belongs to the previous one.
        assert_eq!(
            segment_name_before(1, 0x3000000, seg),
            "000000010000000000000002"
        );
        assert_eq!(
            segment_name_before(2, 0x1_0100_0001, seg),
            "000000020000000100000001"
        );
        assert_eq!(page_offset_before(0x3002001, seg), 0x2000);
        assert_eq!(page_offset_before(0x3002000, seg), 0x0000);
        assert!(is_segment_name("000000010000000000000003.partial"));
        assert!(!is_segment_name("00000002.history"));
        assert_eq!(
            segment_start("000000020000000100000003.partial", seg),
            0x1_0300_0000
        );
    }
}
