//! `tdectl`: offline tools for tde clusters (the server need not run).
//!
//! ```text
//! tdectl key generate FILE
//! tdectl keyring show|rewrap|add-key|remove-key|migrate ...
//! tdectl verify PGDATA [--data-checksums] [--json]
//! tdectl wal decrypt  (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) SRC DST
//! tdectl wal encrypt  (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) SRC DST
//! tdectl prepare-upgrade (--pgdata OLD | --keyring FILE) (--key-file F | --key-command CMD) NEW_PGDATA
//! ```
//!
//! `wal decrypt` turns an encrypted WAL segment into the plaintext segment
//! PostgreSQL wrote (for pg_waldump or a plaintext archive); `wal encrypt`
//! does the reverse with a fresh segment salt under the newest data key.
//! `verify` scans every relation file of a stopped cluster and exits with 1
//! when any page is plaintext, (with `--data-checksums`) fails its
//! checksum, or is a format 1 page sharing its counter block with another
//! page of different contents.
#![forbid(unsafe_code)]

mod upgrade;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use tde_core::keyring::{write_atomic, Keyring, KeyringFile};
use tde_core::keyring_v1;
use tde_core::principal::PrincipalKey;
use tde_core::provider::{KeyCommand, KeyFile, KeyProvider};
use tde_core::wal::{SegmentSalt, WalCipher, WAL_PAGE_SIZE};

const USAGE: &str = "usage:
  tdectl key generate FILE
  tdectl keyring show       (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD)
  tdectl keyring rewrap     (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) (--new-key-file F | --new-key-command CMD)
  tdectl keyring add-key    (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) (--new-key-file F | --new-key-command CMD)
  tdectl keyring remove-key (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) --fingerprint FP
  tdectl keyring migrate    (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) [--also-key-file F | --also-key-command CMD]... [--drop-other-keys]
  tdectl verify PGDATA [--data-checksums] [--json]
  tdectl wal decrypt (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) SRC DST
  tdectl wal encrypt (--pgdata DIR | --keyring FILE) (--key-file F | --key-command CMD) SRC DST
  tdectl prepare-upgrade (--pgdata OLD | --keyring FILE) (--key-file F | --key-command CMD) NEW_PGDATA";

fn main() -> ExitCode {
    // tdectl holds principal, keyring and data keys in memory: a core dump
    // of it must not be written anywhere.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("tdectl: cannot keep keys out of core dumps (prctl PR_SET_DUMPABLE): {e}");
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tdectl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["key", "generate", file] => key_generate(file),
        ["verify", rest @ ..] => verify(rest),
        ["keyring", rest @ ..] => keyring_command(rest),
        ["prepare-upgrade", rest @ ..] => {
            upgrade::prepare_upgrade(&parse_options(rest, "prepare-upgrade", &[])?)
        }
        ["wal", "decrypt", rest @ ..] => wal_transform(rest, Direction::Decrypt),
        ["wal", "encrypt", rest @ ..] => wal_transform(rest, Direction::Encrypt),
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unrecognized arguments\n{USAGE}")),
    }
}

fn verify(args: &[&str]) -> Result<(), String> {
    let (mut pgdata, mut checksums, mut json) = (None, false, false);
    for a in args {
        match *a {
            "--data-checksums" => checksums = true,
            "--json" => json = true,
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other if pgdata.is_none() => pgdata = Some(PathBuf::from(other)),
            _ => return Err(format!("unrecognized arguments\n{USAGE}")),
        }
    }
    let pgdata = pgdata.ok_or_else(|| format!("PGDATA is required\n{USAGE}"))?;
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(format!(
            "\"{}\" is not a PostgreSQL data directory",
            pgdata.display()
        ));
    }
    let report = tde_core::verify::verify_data_dir(&pgdata, checksums)
        .map_err(|e| format!("cannot scan \"{}\": {e}", pgdata.display()))?;
    let pg_wal = pgdata.join("pg_wal");
    let wal = match tde_core::wal_scan::detect_segment_size(&pg_wal) {
        Some(size) => tde_core::wal_scan::wal_generations(&pg_wal, size)
            .map_err(|e| format!("cannot scan \"{}\": {e}", pg_wal.display()))?,
        None => Default::default(),
    };
    if json {
        let mut value = serde_json::to_value(&report).expect("report serializes");
        value["wal_segments_by_generation"] =
            serde_json::to_value(&wal).expect("generations serialize");
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("report serializes")
        );
    } else {
        println!("files:             {}", report.files);
        println!("pages:             {}", report.pages);
        println!("encrypted:         {}", report.encrypted);
        for (generation, n) in &report.by_generation {
            println!("  generation {generation:>3}:  {n}");
        }
        for (format, n) in &report.by_format {
            println!("  format {format}:        {n}");
        }
        println!("plaintext:         {}", report.plaintext);
        println!("empty:             {}", report.empty);
        if checksums {
            println!("checksum failures: {}", report.checksum_failures);
        }
        for (file, n) in &report.plaintext_files {
            println!("plaintext pages in {}: {n}", file.display());
        }
        for (file, block) in &report.failed_pages {
            println!("checksum failure: {} block {block}", file.display());
        }
        println!("IV collisions:     {}", report.iv_collisions);
        for (file, block, other, other_block) in &report.collisions {
            println!(
                "IV collision: {} block {block} shares its keystream with {} block {other_block}",
                file.display(),
                other.display()
            );
        }
        for (generation, segments) in &wal {
            println!(
                "WAL segments under generation {generation}: {} ({} … {})",
                segments.len(),
                segments[0],
                segments[segments.len() - 1]
            );
        }
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!(
            "{} plaintext page(s), {} checksum failure(s), {} IV collision(s)",
            report.plaintext, report.checksum_failures, report.iv_collisions
        ))
    }
}

fn key_generate(file: &str) -> Result<(), String> {
    let key = tde_core::kdf::Key256::random().map_err(|e| e.to_string())?;
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("cannot create \"{file}\": {e}"))?;
    f.write_all(format!("{hex}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write \"{file}\": {e}"))?;
    println!("wrote a new principal key to \"{file}\" (mode 0600)");
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Decrypt,
    Encrypt,
}

struct Options {
    keyring: PathBuf,
    provider: Box<dyn KeyProvider>,
    new_provider: Option<Box<dyn KeyProvider>>,
    /// More principal keys (`keyring migrate`).
    also: Vec<Box<dyn KeyProvider>>,
    drop_other_keys: bool,
    fingerprint: Option<String>,
    positional: Vec<PathBuf>,
}

/// Options every command taking a keyring accepts.
const KEYRING_OPTIONS: [&str; 4] = ["--pgdata", "--keyring", "--key-file", "--key-command"];

/// Parses `args` for `command`, which accepts the keyring options and
/// `extra`; any other option is refused rather than ignored.
fn parse_options(args: &[&str], command: &str, extra: &[&str]) -> Result<Options, String> {
    if let Some(bad) = args
        .iter()
        .find(|a| a.starts_with("--") && !KEYRING_OPTIONS.contains(a) && !extra.contains(a))
    {
        return Err(format!("option {bad} does not apply to {command}\n{USAGE}"));
    }
    let (mut keyring, mut provider, mut new_provider, mut fingerprint) = (
        None,
        None::<Box<dyn KeyProvider>>,
        None::<Box<dyn KeyProvider>>,
        None,
    );
    let mut positional = Vec::new();
    let mut also: Vec<Box<dyn KeyProvider>> = Vec::new();
    let mut drop_other_keys = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .map(|v| v.to_string())
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match *a {
            "--pgdata" => keyring = Some(PathBuf::from(value()?).join("pg_tde/keyring.json")),
            "--keyring" => keyring = Some(PathBuf::from(value()?)),
            "--key-file" => {
                provider = Some(Box::new(KeyFile {
                    path: value()?.into(),
                }))
            }
            "--key-command" => provider = Some(Box::new(KeyCommand { command: value()? })),
            "--new-key-file" => {
                new_provider = Some(Box::new(KeyFile {
                    path: value()?.into(),
                }))
            }
            "--new-key-command" => new_provider = Some(Box::new(KeyCommand { command: value()? })),
            "--also-key-file" => also.push(Box::new(KeyFile {
                path: value()?.into(),
            })),
            "--also-key-command" => also.push(Box::new(KeyCommand { command: value()? })),
            "--drop-other-keys" => drop_other_keys = true,
            "--fingerprint" => fingerprint = Some(value()?),
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => positional.push(PathBuf::from(other)),
        }
    }
    Ok(Options {
        keyring: keyring.ok_or("--pgdata or --keyring is required")?,
        provider: provider.ok_or("--key-file or --key-command is required")?,
        new_provider,
        also,
        drop_other_keys,
        fingerprint,
        positional,
    })
}

fn read_keyring(o: &Options) -> Result<KeyringFile, String> {
    let bytes = std::fs::read(&o.keyring)
        .map_err(|e| format!("cannot read keyring \"{}\": {e}", o.keyring.display()))?;
    KeyringFile::parse(&bytes).map_err(|e| e.to_string())
}

/// The keyring file, opened with the principal key of `--key-file` /
/// `--key-command`, and that key's fingerprint.
fn open_keyring(o: &Options) -> Result<(KeyringFile, Keyring, String), String> {
    let file = read_keyring(o)?;
    let principal = o.provider.fetch().map_err(|e| e.to_string())?;
    let ring = file.open(&principal).map_err(|e| e.to_string())?;
    Ok((file, ring, principal.fingerprint()))
}

/// Holds `keyring.lock` beside the keyring, which a running server takes for
/// its own keyring changes, so a change here never overwrites one made
/// online (nor the other way round).
fn lock_keyring(keyring: &std::path::Path) -> Result<std::fs::File, String> {
    let path = keyring.with_file_name("keyring.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open \"{}\": {e}", path.display()))?;
    // Created by root, it must stay usable by the server's OS user.
    if let Ok(owner) = std::fs::metadata(keyring) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid()));
    }
    f.lock()
        .map_err(|e| format!("cannot lock \"{}\": {e}", path.display()))?;
    Ok(f)
}

fn keyring_command(args: &[&str]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or(USAGE)?;
    let extra: &[&str] = match *command {
        "rewrap" | "add-key" => &["--new-key-file", "--new-key-command"],
        "remove-key" => &["--fingerprint"],
        "migrate" => &["--also-key-file", "--also-key-command", "--drop-other-keys"],
        _ => &[],
    };
    let o = parse_options(rest, &format!("keyring {command}"), extra)?;
    let _lock = match *command {
        "show" => None,
        _ => Some(lock_keyring(&o.keyring)?),
    };
    if *command == "migrate" {
        return migrate_keyring(&o);
    }
    let (file, ring, current) = open_keyring(&o)?;
    let new_key = || -> Result<PrincipalKey, String> {
        o.new_provider
            .as_ref()
            .ok_or("--new-key-file or --new-key-command is required")?
            .fetch()
            .map_err(|e| e.to_string())
    };
    let updated = match *command {
        "show" => {
            println!("keyring:           {}", o.keyring.display());
            println!("system identifier: {}", file.system_identifier);
            let generations: Vec<String> = ring.generations().map(|g| g.to_string()).collect();
            println!("data key generations: {}", generations.join(", "));
            for fp in file.fingerprints() {
                let mark = if fp == current {
                    " (the key given)"
                } else {
                    ""
                };
                println!("principal key:     {fp}{mark}");
            }
            return Ok(());
        }
        "rewrap" => file.with_principal_replaced(&ring, &current, &new_key()?),
        "add-key" => file.with_principal_added(&ring, &new_key()?),
        "remove-key" => {
            let fp = o
                .fingerprint
                .as_deref()
                .ok_or("--fingerprint is required")?;
            file.with_principal_removed(fp)
        }
        other => return Err(format!("unknown keyring command {other}\n{USAGE}")),
    }
    .map_err(|e| e.to_string())?;
    write_atomic(&o.keyring, updated.to_json().as_bytes())
        .map_err(|e| format!("cannot write keyring \"{}\": {e}", o.keyring.display()))?;
    println!(
        "keyring \"{}\" now opens with: {}",
        o.keyring.display(),
        updated.fingerprints().join(", ")
    );
    Ok(())
}

/// Rewrites a tde 0.1.0 keyring (format 1) in the current format for the
/// principal keys given (the first is the one the server uses). A principal
/// key that opened the old keyring and is not given is dropped only with
/// `--drop-other-keys`.
fn migrate_keyring(o: &Options) -> Result<(), String> {
    let bytes = std::fs::read(&o.keyring)
        .map_err(|e| format!("cannot read keyring \"{}\": {e}", o.keyring.display()))?;
    if !keyring_v1::is_format_1(&bytes) {
        KeyringFile::parse(&bytes).map_err(|e| e.to_string())?;
        println!(
            "keyring \"{}\" is already in the current format",
            o.keyring.display()
        );
        return Ok(());
    }
    let pgdata = data_dir_of(&o.keyring);
    if pgdata.is_none() {
        eprintln!(
            "tdectl: note: \"{}\" is not the keyring of a data directory (DIR/pg_tde/keyring.json beside DIR/global/pg_control): not checked against a cluster or a running server",
            o.keyring.display()
        );
    }
    if let Some(pid) = pgdata.as_deref().and_then(running_postmaster) {
        return Err(format!(
            "a server (PID {pid}) is running on this data directory; stop it first (tde 0.2.0 and later migrate the keyring themselves when they start)"
        ));
    }
    let cluster = pgdata
        .as_deref()
        .map(tde_core::control::system_identifier)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut principals = vec![o.provider.fetch().map_err(|e| e.to_string())?];
    for p in &o.also {
        principals.push(p.fetch().map_err(|e| e.to_string())?);
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &principals {
        if !seen.insert(p.fingerprint()) {
            return Err(format!("principal key {} is given twice", p.fingerprint()));
        }
    }
    let refs: Vec<&PrincipalKey> = principals.iter().collect();
    let m = keyring_v1::migrate(&bytes, &refs, cluster).map_err(|e| e.to_string())?;
    if !m.not_carried.is_empty() && !o.drop_other_keys {
        return Err(format!(
            "principal keys {} also open this keyring; give each with --also-key-file / --also-key-command, or add --drop-other-keys to keep only the keys given",
            m.not_carried.join(", ")
        ));
    }
    write_atomic(&o.keyring, m.file.to_json().as_bytes())
        .map_err(|e| format!("cannot write keyring \"{}\": {e}", o.keyring.display()))?;
    let generations: Vec<String> = m.ring.generations().map(|g| g.to_string()).collect();
    println!(
        "keyring \"{}\" rewritten in format 2 (data key generations {}); it opens with: {}",
        o.keyring.display(),
        generations.join(", "),
        m.file.fingerprints().join(", ")
    );
    if !m.not_carried.is_empty() {
        eprintln!(
            "tdectl: warning: principal keys {} opened the old keyring and do not open the new one",
            m.not_carried.join(", ")
        );
    }
    Ok(())
}

/// The data directory whose keyring `keyring` is (`<dir>/pg_tde/keyring.json`
/// beside `<dir>/global/pg_control`).
fn data_dir_of(keyring: &std::path::Path) -> Option<PathBuf> {
    let dir = keyring.parent()?.parent()?;
    dir.join("global/pg_control")
        .is_file()
        .then(|| dir.to_path_buf())
}

/// The PID in `postmaster.pid` when that process is alive.
fn running_postmaster(pgdata: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    // A single-user server writes its PID negated.
    let pid = text
        .lines()
        .next()?
        .trim()
        .parse::<i64>()
        .ok()?
        .unsigned_abs();
    let pid = u32::try_from(pid).ok()?;
    std::path::Path::new("/proc")
        .join(pid.to_string())
        .exists()
        .then_some(pid)
}

/// The segment size recorded in the long header of a segment's first page.
fn segment_size(first: &[u8]) -> Result<u32, String> {
    let info = u16::from_le_bytes([first[2], first[3]]);
    if info & 0x0002 == 0 {
        return Err("the first page has no long header; is this a WAL segment?".into());
    }
    let size = u32::from_le_bytes(first[32..36].try_into().expect("4 bytes"));
    if !size.is_power_of_two() || size < WAL_PAGE_SIZE as u32 {
        return Err(format!("implausible segment size {size} in the first page"));
    }
    Ok(size)
}

fn wal_transform(args: &[&str], direction: Direction) -> Result<(), String> {
    let o = parse_options(args, "wal", &[])?;
    let (_, ring, _) = open_keyring(&o)?;
    let [src, dst]: [PathBuf; 2] = o
        .positional
        .clone()
        .try_into()
        .map_err(|_| format!("expected SRC and DST\n{USAGE}"))?;
    let mut data =
        std::fs::read(&src).map_err(|e| format!("cannot read \"{}\": {e}", src.display()))?;
    if data.is_empty() || data.len() % WAL_PAGE_SIZE != 0 {
        return Err(format!(
            "\"{}\" is not a whole number of {WAL_PAGE_SIZE}-byte WAL pages",
            src.display()
        ));
    }
    let mut cipher =
        WalCipher::new(&ring, segment_size(&data[..WAL_PAGE_SIZE])?).map_err(|e| e.to_string())?;
    let salt = SegmentSalt::generate(ring.current_generation()).map_err(|e| e.to_string())?;
    let mut changed = 0usize;
    for (i, page) in data.chunks_exact_mut(WAL_PAGE_SIZE).enumerate() {
        let page: &mut [u8; WAL_PAGE_SIZE] = page.try_into().expect("exact chunk");
        let before = SegmentSalt::from_page(page).is_some();
        let result = match direction {
            Direction::Decrypt => cipher.decrypt_page(page).map(|_| before),
            Direction::Encrypt if before || page.iter().all(|&b| b == 0) => Ok(false),
            Direction::Encrypt => cipher.encrypt_page(page, salt).map(|_| true),
        };
        match result {
            Ok(true) => changed += 1,
            Ok(false) => {}
            Err(e) => return Err(format!("page {i} of \"{}\": {e}", src.display())),
        }
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dst)
        .map_err(|e| format!("cannot create \"{}\": {e}", dst.display()))?;
    out.write_all(&data)
        .and_then(|_| out.sync_all())
        .map_err(|e| format!("cannot write \"{}\": {e}", dst.display()))?;
    let verb = match direction {
        Direction::Decrypt => "decrypted",
        Direction::Encrypt => "encrypted",
    };
    println!(
        "{verb} {changed} of {} pages: \"{}\" -> \"{}\"",
        data.len() / WAL_PAGE_SIZE,
        src.display(),
        dst.display()
    );
    Ok(())
}
