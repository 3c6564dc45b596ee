//! Per-write page nonces.
//!
//! A 16-bit nonce is drawn for every page write. Drawing from the OS on every
//! write would cost a system call per page, so each process runs a ChaCha
//! generator seeded from the OS. Forked children would inherit the parent's
//! state and repeat its sequence, so the generator reseeds whenever the
//! process id changes.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::kdf::fill_random;
use crate::Result;

pub struct NonceSource {
    pid: u32,
    rng: Option<StdRng>,
}

impl NonceSource {
    pub const fn new() -> Self {
        NonceSource { pid: 0, rng: None }
    }

    pub fn next_u16(&mut self) -> Result<u16> {
        let pid = std::process::id();
        if self.rng.is_none() || self.pid != pid {
            let mut seed = [0u8; 32];
            fill_random(&mut seed)?;
            self.rng = Some(StdRng::from_seed(seed));
            self.pid = pid;
        }
        Ok(self.rng.as_mut().expect("seeded above").random())
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        Self::new()
    }
}
