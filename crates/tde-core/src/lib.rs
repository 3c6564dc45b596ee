//! PostgreSQL-free core of `tde`.
//!
//! Everything that decides what bytes land on disk lives here: key material
//! and its derivation, the keyring file format, the page transform and the
//! PostgreSQL page checksum it must keep valid, and the WAL page transform.
//! The extension crate only adapts PostgreSQL's buffers and hooks to these
//! functions, so every transform can be tested against in-memory pages.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod control;
pub mod ephemeral;
pub mod error;
pub mod file_io;
pub mod hctr2;
pub mod kdf;
pub mod keyring;
pub mod keyring_v1;
pub mod page;
pub mod principal;
pub mod provider;
pub mod scan;
pub mod verify;
pub mod wal;
pub mod wal_check;
pub mod wal_scan;
pub mod wal_stream;
pub mod xts;

pub use error::{Error, Result};
