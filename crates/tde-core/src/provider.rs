//! Principal key providers: where the key-encryption key comes from.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use zeroize::Zeroizing;

use crate::principal::PrincipalKey;
use crate::{Error, Result};

/// A source of the principal key. Implementations must never log or return
/// key bytes in errors.
pub trait KeyProvider {
    /// Human-readable description for messages ("file /etc/tde/key").
    fn describe(&self) -> String;
    fn fetch(&self) -> Result<PrincipalKey>;
}

/// A file holding 64 hex digits, readable by its owner only.
pub struct KeyFile {
    pub path: PathBuf,
}

/// Largest key file we read; a key is 64 characters plus a newline.
const MAX_KEY_TEXT: u64 = 4096;

impl KeyProvider for KeyFile {
    fn describe(&self) -> String {
        format!("file \"{}\"", self.path.display())
    }

    fn fetch(&self) -> Result<PrincipalKey> {
        let unreadable = |source| Error::KeyFileUnreadable {
            path: self.path.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(Error::KeyFileNotRegular {
                path: self.path.clone(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyFilePermissions {
                path: self.path.clone(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_TEXT)
            .read_to_string(&mut text)
            .map_err(unreadable)?;
        PrincipalKey::parse_hex(&text, &self.describe())
    }
}

/// A shell command that prints the key on standard output, run like
/// PostgreSQL's `ssl_passphrase_command`.
pub struct KeyCommand {
    pub command: String,
}

impl KeyProvider for KeyCommand {
    fn describe(&self) -> String {
        "tde.principal_key_command".to_string()
    }

    fn fetch(&self) -> Result<PrincipalKey> {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(Error::KeyCommandSpawn)?;
        let stdout = Zeroizing::new(out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            let stderr = if stderr.is_empty() {
                String::new()
            } else {
                format!(": {}", stderr.chars().take(200).collect::<String>())
            };
            return Err(Error::KeyCommandFailed {
                status: out.status.to_string(),
                stderr,
            });
        }
        let text = std::str::from_utf8(&stdout).map_err(|_| Error::KeyFormat {
            source_name: self.describe(),
            reason: "output is not text".into(),
        })?;
        PrincipalKey::parse_hex(text, &self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_key(mode: u32, body: &str) -> (PathBuf, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("key");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (path, dir)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let mut r = [0u8; 8];
                getrandom::fill(&mut r).unwrap();
                let p = std::env::temp_dir().join(format!("tde-core-test-{}", hex::encode(r)));
                std::fs::create_dir(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn file_ok() {
        let (path, _d) = temp_key(0o600, &format!("{}\n", "11".repeat(32)));
        let k = KeyFile { path }.fetch().unwrap();
        assert_eq!(k.key().as_bytes(), &[0x11; 32]);
    }

    #[test]
    fn file_group_readable_refused() {
        let (path, _d) = temp_key(0o640, &"11".repeat(32));
        let e = KeyFile { path }.fetch().unwrap_err().to_string();
        assert!(e.contains("mode 0640"), "{e}");
    }

    #[test]
    fn file_missing() {
        let e = KeyFile {
            path: "/nonexistent/tde/key".into(),
        }
        .fetch()
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn file_bad_hex() {
        let (path, _d) = temp_key(0o600, &"g1".repeat(32));
        let e = KeyFile { path }.fetch().unwrap_err().to_string();
        assert!(e.contains("not hexadecimal"), "{e}");
    }

    #[test]
    fn command_ok_and_failures() {
        let k = KeyCommand {
            command: format!("echo {}", "22".repeat(32)),
        }
        .fetch()
        .unwrap();
        assert_eq!(k.key().as_bytes(), &[0x22; 32]);

        let e = KeyCommand {
            command: "echo oops >&2; exit 3".into(),
        }
        .fetch()
        .unwrap_err()
        .to_string();
        assert!(e.contains("exit status: 3") && e.contains("oops"), "{e}");

        let e = KeyCommand {
            command: "echo hello".into(),
        }
        .fetch()
        .unwrap_err()
        .to_string();
        assert!(e.contains("expected 64 hexadecimal digits"), "{e}");
    }
}
