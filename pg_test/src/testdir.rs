//! One working directory per test, removed when the test passes and kept
//! for inspection when it fails.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::os;

/// Where test directories are created: a place the `postgres` user can
/// reach, unlike the build directory of a root-owned checkout.
const PARENT: &str = "/var/tmp";

struct Inner {
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: keeping test directory {} (server logs are in its cluster subdirectories)",
                self.path.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove test directory {}: {e}", self.path.display());
        }
    }
}

/// `/var/tmp/tde-pg-test-<random>`, mode 0700, owned by the server's OS
/// user. Clones share the directory; it is removed when the last clone
/// (including the ones held by clusters) is dropped.
#[derive(Clone)]
pub struct TestDir(Arc<Inner>);

impl TestDir {
    pub fn new() -> TestDir {
        // 12 hex digits: never mistaken for a 16-digit key fingerprint when
        // the path shows up in a server message.
        let path = Path::new(PARENT).join(format!("tde-pg-test-{}", os::random_hex(6)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        os::chown_to_server(&path);
        TestDir(Arc::new(Inner { path }))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// A new subdirectory (mode 0700, owned by the server's OS user).
    pub fn subdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        os::chown_to_server(&path);
        path
    }

    /// Writes a principal key file `<name>.key` holding `contents` with
    /// `mode`, owned by the server's OS user, outside every data directory.
    pub fn key_file(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.path().join(format!("{name}.key"));
        os::write_file(&path, contents.as_bytes(), mode);
        path
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}
