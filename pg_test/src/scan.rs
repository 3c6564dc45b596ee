//! Looking for byte strings in files, the way an attacker with a copy of
//! the data directory would.

use std::path::{Path, PathBuf};

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut start = 0;
    while start + needle.len() <= haystack.len() {
        let i = start
            + haystack[start..=haystack.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &haystack[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        start = i + 1;
    }
    None
}

/// Every regular file under `root`, recursively, except the subtrees whose
/// path relative to `root` is listed in `exclude` (e.g. `"pg_wal"`).
/// Symbolic links are not followed.
pub fn files_under(root: &Path, exclude: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A temporary directory removed while we walk.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("below root");
            if exclude.iter().any(|x| rel == Path::new(x)) {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One occurrence: which needle was found in which file, at which offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub needle: usize,
    pub file: PathBuf,
    pub offset: usize,
}

/// Searches every file under `root` (except `exclude`) for every needle;
/// returns each needle's first occurrence in each file. Files that vanish
/// while we look (temporary files of a running server) are skipped.
pub fn find_in_tree(root: &Path, needles: &[&[u8]], exclude: &[&str]) -> Vec<Hit> {
    let mut hits = Vec::new();
    for file in files_under(root, exclude) {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot read {}: {e}", file.display()),
        };
        for (i, needle) in needles.iter().enumerate() {
            if let Some(offset) = find(&bytes, needle) {
                hits.push(Hit {
                    needle: i,
                    file: file.clone(),
                    offset,
                });
            }
        }
    }
    hits
}

/// Offset of the first occurrence of `needle` in `file`.
pub fn find_in_file(file: &Path, needle: &[u8]) -> Option<usize> {
    let bytes =
        std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    find(&bytes, needle)
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn finds_at_edges_and_overlaps() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abd", b"abd"), Some(0));
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"xyz", b""), None);
        assert_eq!(find(b"", b"a"), None);
    }
}
