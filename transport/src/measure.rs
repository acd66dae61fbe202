//! The record cipher's cost on this machine, for `hotspare bench`: the
//! time to seal and open full records in memory with the transport's own
//! primitives, so the bench can state what encryption costs per dirty page
//! beside the pipeline's measured CPU.

use std::time::Instant;

use crate::cipher::memory_pair;
use crate::error::{Result, TransportError};
use crate::frame::MAX_PLAINTEXT;

/// Plaintext MiB per second through seal then open of full records (in
/// place, as the transport does), best of three runs of `mib` MiB each.
pub fn seal_open_mib_s(mib: usize) -> Result<f64> {
    let (tx, rx) = memory_pair(&[0x5a; 32], b"")?;
    let plain: Vec<u8> = (0..MAX_PLAINTEXT).map(|k| (k * 131 % 251) as u8).collect();
    let mut rec = plain.clone();
    let records = (mib << 20).div_ceil(MAX_PLAINTEXT).max(1) as u64;
    let mut nonce = 0u64;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..records {
            rec.truncate(MAX_PLAINTEXT);
            let tag = tx.seal_in_place(nonce, &mut rec)?;
            rec.extend_from_slice(&tag);
            rx.open_in_place(nonce, &mut rec)
                .map_err(|_| TransportError::Crypto("a record sealed here did not open".into()))?;
            nonce += 1;
        }
        let bytes = (records as usize * MAX_PLAINTEXT) as f64;
        best = best.max(bytes / t.elapsed().as_secs_f64() / (1 << 20) as f64);
    }
    Ok(best)
}
