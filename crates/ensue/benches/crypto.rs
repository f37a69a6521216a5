//! AES-256-GCM seal/unseal throughput of Ensue values, in MB/s.
//!
//! `cargo bench -p delibera-ensue --bench crypto`. A plain main (no harness):
//! each size is sealed and unsealed for about half a second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use delibera_ensue::CacheKey;

const KEY: &str =
    "MgCYBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAe0Biojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";
const BUDGET: Duration = Duration::from_millis(500);

/// Runs `work` repeatedly for about [`BUDGET`]; returns MB/s for `bytes` per call.
fn throughput(bytes: usize, mut work: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < BUDGET {
        work();
        calls += 1;
    }
    (calls as f64 * bytes as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn main() -> Result<(), delibera_ensue::Error> {
    let key = CacheKey::from_private_key(KEY)?;
    println!(
        "{:>10}  {:>12}  {:>12}",
        "value", "seal MB/s", "unseal MB/s"
    );
    for size in [64, 1024, 16 * 1024, 256 * 1024, 1024 * 1024] {
        let plaintext = format!("\"{}\"", "x".repeat(size - 2));
        let sealed = key.seal(&plaintext)?;
        let seal = throughput(size, || {
            black_box(key.seal(black_box(&plaintext)).ok());
        });
        let mut unseal_result = Ok(());
        let unseal = throughput(size, || {
            if let Err(error) = key.unseal(black_box(&sealed)) {
                unseal_result = Err(error);
            }
        });
        unseal_result?;
        println!("{size:>9}B  {seal:>12.1}  {unseal:>12.1}");
    }
    Ok(())
}
