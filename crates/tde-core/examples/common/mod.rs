//! Shared by the throughput examples.

use std::time::{Duration, Instant};

/// Runs `f` (which processes one 8 KiB page) for `seconds` after a short
/// warm-up and prints `name bytes_per_second`.
pub fn measure(name: &str, seconds: f64, mut f: impl FnMut()) {
    // Warm up caches and CPU frequency.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        f();
    }
    let start = Instant::now();
    let mut pages = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..256 {
            f();
        }
        pages += 256;
    }
    let rate = pages as f64 * 8192.0 / start.elapsed().as_secs_f64();
    println!("{name} {rate:.0}");
}

/// The measurement length in seconds from the first argument (default 2).
pub fn seconds_arg() -> f64 {
    std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}
