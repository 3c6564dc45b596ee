//! `tdectl verify` on a stopped cluster and `tde_verify()` online.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;
use std::time::Duration;

use pg_test::wal::tdectl;
use pg_test::{encrypted_cluster, os, TestDir};

fn tdectl_verify(data: &std::path::Path, json: bool) -> os::Output {
    let mut cmd = Command::new(tdectl());
    cmd.arg("verify").arg(data).arg("--data-checksums");
    if json {
        cmd.arg("--json");
    }
    os::run(&mut cmd, None, Duration::from_secs(120))
}

fn json_number(json: &str, field: &str) -> u64 {
    let at = json
        .find(&format!("\"{field}\": "))
        .unwrap_or_else(|| panic!("no {field} in {json}"));
    json[at + field.len() + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}

#[test]
fn verify_reports_plaintext_generations_and_damage() {
    let dir = TestDir::new();
    let c = encrypted_cluster(&dir);
    c.psql(
        "CREATE TABLE v(id int, t text);
         INSERT INTO v SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
         CHECKPOINT;",
    );
    // Online: the new table is encrypted, catalogs written by initdb are not.
    let online = c.psql("SELECT encrypted, plaintext, checksum_failures FROM tde_verify()");
    let cols: Vec<u64> = online.split('|').map(|v| v.parse().unwrap()).collect();
    assert!(
        cols[0] > 0 && cols[1] > 0 && cols[2] == 0,
        "tde_verify(): {online}"
    );
    let file = c.relation_file("v");
    c.stop();

    let out = tdectl_verify(c.data_dir(), true);
    assert!(
        !out.success(),
        "plaintext catalog pages must make verify fail"
    );
    let json = out.stdout.clone();
    assert_eq!(json_number(&json, "checksum_failures"), 0, "{json}");
    // The shutdown checkpoint may still have written (and so encrypted) a
    // few pages since the online count.
    let (encrypted, plaintext) = (
        json_number(&json, "encrypted"),
        json_number(&json, "plaintext"),
    );
    assert!(
        encrypted >= cols[0] && plaintext <= cols[1] && plaintext > 0,
        "{json}"
    );
    assert_eq!(
        encrypted + plaintext + json_number(&json, "empty"),
        json_number(&json, "pages"),
        "{json}"
    );
    assert!(json.contains("\"1\": "), "no generation 1 count: {json}");
    assert!(out.stderr.contains("plaintext page(s)"), "{}", out.text());

    // Damage one byte in the middle of the table's second page.
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let at = 8192 + 4000;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        b[0] ^= 0x01;
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&b).unwrap();
    }
    let out = tdectl_verify(c.data_dir(), false);
    assert!(!out.success());
    assert!(
        out.stdout.contains("checksum failures: 1"),
        "{}",
        out.text()
    );
    let rel = file.strip_prefix(c.data_dir()).unwrap();
    assert!(
        out.stdout
            .contains(&format!("checksum failure: {} block 1", rel.display())),
        "{}",
        out.text()
    );
}
