//! The record cipher's cost on this machine, for `hotspare bench`: the
//! time to seal and open full records in memory with the transport's own
//! primitives, so the bench can state what encryption costs per dirty page
//! beside the pipeline's measured CPU.

use std::time::Instant;

use crate::error::{Result, TransportError};
use crate::frame::{MAX_PLAINTEXT, TAG_LEN};
use crate::handshake::builder;

fn crypto(e: snow::Error) -> TransportError {
    TransportError::Crypto(e.to_string())
}

/// Plaintext MiB per second through seal then open of full records, best
/// of three runs of `mib` MiB each.
pub fn seal_open_mib_s(mib: usize) -> Result<f64> {
    let psk = [0x5a; 32];
    let mut i = builder().psk(0, &psk).build_initiator().map_err(crypto)?;
    let mut r = builder().psk(0, &psk).build_responder().map_err(crypto)?;
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m).map_err(crypto)?;
    r.read_message(&m[..n], &mut p).map_err(crypto)?;
    let n = r.write_message(&[], &mut m).map_err(crypto)?;
    i.read_message(&m[..n], &mut p).map_err(crypto)?;
    let tx = i.into_stateless_transport_mode().map_err(crypto)?;
    let rx = r.into_stateless_transport_mode().map_err(crypto)?;

    let plain: Vec<u8> = (0..MAX_PLAINTEXT).map(|k| (k * 131 % 251) as u8).collect();
    let mut sealed = vec![0u8; MAX_PLAINTEXT + TAG_LEN];
    let mut opened = vec![0u8; MAX_PLAINTEXT];
    let records = (mib << 20).div_ceil(MAX_PLAINTEXT).max(1) as u64;
    let mut nonce = 0u64;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..records {
            let n = tx
                .write_message(nonce, &plain, &mut sealed)
                .map_err(crypto)?;
            rx.read_message(nonce, &sealed[..n], &mut opened)
                .map_err(crypto)?;
            nonce += 1;
        }
        let bytes = (records as usize * MAX_PLAINTEXT) as f64;
        best = best.max(bytes / t.elapsed().as_secs_f64() / (1 << 20) as f64);
    }
    Ok(best)
}
