//! Fake LSNs for pages written with LSN 0 (unlogged and temporary relations,
//! relations built without WAL).
//!
//! One counter in shared memory serves all backends. It starts at a random
//! point of the 2^56-wide fake range at every server start, so two starts
//! (or a primary and a promoted copy of it) only reuse a value if their runs
//! overlap in that range — and then the per-write nonce must also collide.

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use tde_core::page::FAKE_LSN_BASE;

const FAKE_LSN_MASK: u64 = (1 << 56) - 1;

// SAFETY: the name is unique to this extension.
static COUNTER: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"tde_fake_lsn_counter") };

fn random_start() -> AtomicU64 {
    let mut b = [0u8; 8];
    if let Err(e) = tde_core::kdf::fill_random(&mut b) {
        pgrx::error!("tde: {e}");
    }
    AtomicU64::new(u64::from_le_bytes(b) & FAKE_LSN_MASK)
}

pub fn init() {
    pg_shmem_init!(COUNTER = random_start());
}

pub fn next() -> u64 {
    FAKE_LSN_BASE | (COUNTER.get().fetch_add(1, Ordering::Relaxed) & FAKE_LSN_MASK)
}
