//! The extension's SQL surface, parsed.

use std::collections::BTreeMap;

use crate::cluster::{quote, Cluster};

/// One row of `tde_status()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub attach: String,
    pub server_version: String,
    pub principal_key_fingerprint: String,
    pub data_key_generation: i32,
    pub data_encryption: bool,
    pub wal_encryption: bool,
    /// The WAL segment being written (NULL in recovery).
    pub wal_segment: Option<String>,
    /// Salt of the most recently flushed WAL page as stored, in hex; `None`
    /// when that page is plaintext (or in recovery).
    pub wal_segment_salt: Option<String>,
}

/// Page counts of one fork, as `tde_relation_pages` reads them from disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkPages {
    pub total: i64,
    pub encrypted: i64,
    pub plaintext: i64,
    pub empty: i64,
}

fn int(s: &str, what: &str) -> i64 {
    s.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{what}: cannot parse {s:?}: {e}"))
}

/// `tde_status()`, which needs `CREATE EXTENSION tde` in database postgres.
pub fn status(cluster: &Cluster) -> Status {
    let row = cluster.psql(
        "SELECT attach, server_version, principal_key_fingerprint, data_key_generation, data_encryption,
                wal_encryption, coalesce(wal_segment, '<null>'), coalesce(wal_segment_salt, '<null>')
         FROM tde_status()",
    );
    let cols: Vec<&str> = row.split('|').collect();
    assert_eq!(cols.len(), 8, "tde_status() returned {row:?}");
    let nullable = |s: &str| (s != "<null>").then(|| s.to_string());
    Status {
        attach: cols[0].to_string(),
        server_version: cols[1].to_string(),
        principal_key_fingerprint: cols[2].to_string(),
        data_key_generation: int(cols[3], "data_key_generation") as i32,
        data_encryption: cols[4] == "t",
        wal_encryption: cols[5] == "t",
        wal_segment: nullable(cols[6]),
        wal_segment_salt: nullable(cols[7]),
    }
}

/// `tde_relation_pages(relation)` by fork name (`main`, `fsm`, `vm`,
/// `init`). Reads files on disk: CHECKPOINT first.
pub fn relation_pages(cluster: &Cluster, relation: &str) -> BTreeMap<String, ForkPages> {
    let out = cluster.psql(&format!(
        "SELECT fork, total, encrypted, plaintext, empty FROM tde_relation_pages({}::regclass)",
        quote(relation)
    ));
    parse_pages(&out)
}

/// Parses rows `fork|total|encrypted|plaintext|empty`.
pub fn parse_pages(out: &str) -> BTreeMap<String, ForkPages> {
    let mut forks = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('|').collect();
        assert_eq!(cols.len(), 5, "unexpected tde_relation_pages row {line:?}");
        forks.insert(
            cols[0].to_string(),
            ForkPages {
                total: int(cols[1], "total"),
                encrypted: int(cols[2], "encrypted"),
                plaintext: int(cols[3], "plaintext"),
                empty: int(cols[4], "empty"),
            },
        );
    }
    forks
}

/// The 16-hex-digit words of `text` (principal key fingerprints).
pub fn fingerprints_in(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}
