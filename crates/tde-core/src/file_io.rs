//! The C library's file I/O functions, for refusing to start a server whose
//! executable imports one that could reach a WAL file around tde's
//! wrappers. A WAL page read through an unwrapped function would reach
//! PostgreSQL encrypted, which it takes for the end of WAL; one written
//! through it would reach the disk in plaintext.

/// Functions that read or write file data, open files or streams, map them,
/// or duplicate descriptors.
pub const FILE_IO: &[&str] = &[
    "open",
    "open64",
    "openat",
    "openat64",
    "__open_2",
    "__open64_2",
    "__openat_2",
    "__openat64_2",
    "creat",
    "creat64",
    "read",
    "__read_chk",
    "pread",
    "pread64",
    "__pread_chk",
    "__pread64_chk",
    "readv",
    "preadv",
    "preadv64",
    "preadv2",
    "preadv64v2",
    "write",
    "pwrite",
    "pwrite64",
    "writev",
    "pwritev",
    "pwritev64",
    "pwritev2",
    "pwritev64v2",
    "ftruncate",
    "ftruncate64",
    "truncate",
    "truncate64",
    "copy_file_range",
    "sendfile",
    "sendfile64",
    "splice",
    "tee",
    "vmsplice",
    "mmap",
    "mmap64",
    "fopen",
    "fopen64",
    "freopen",
    "freopen64",
    "fdopen",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "fcntl64",
    "fread",
    "fread_unlocked",
    "fwrite",
    "fwrite_unlocked",
    "fgets",
    "fgetc",
    "getc",
    "fputc",
    "fputs",
    "putc",
    "fprintf",
    "fscanf",
    "lio_listio",
];

/// Families of asynchronous I/O interfaces.
pub const FILE_IO_PREFIXES: &[&str] = &["io_uring_", "aio_"];

pub fn is_file_io(name: &str) -> bool {
    FILE_IO.contains(&name) || FILE_IO_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The file I/O functions among `imports` that are not in `handled`,
/// sorted.
pub fn unhandled<'a>(imports: impl IntoIterator<Item = &'a str>, handled: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = imports
        .into_iter()
        .filter(|name| is_file_io(name) && !handled.contains(name))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_file_io_that_is_not_handled() {
        let imports = [
            "open",
            "pread",
            "preadv",
            "openat",
            "fsync",
            "malloc",
            "io_uring_submit",
            "pread",
            "__pread_chk",
            "lseek",
        ];
        assert_eq!(
            unhandled(imports, &["open", "pread", "preadv"]),
            vec!["__pread_chk", "io_uring_submit", "openat"]
        );
        assert!(unhandled(["fsync", "lseek", "rename", "unlink"], &[]).is_empty());
    }
}
