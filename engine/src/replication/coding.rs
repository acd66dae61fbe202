//! How the encoder codes the sparse rewrites of an epoch, by the links'
//! load (no I/O).
//!
//! A page of which a few words changed since the version last sent goes
//! as an `XorRuns` entry: the changed words, XOR-coded (~60 bytes for four
//! words). zstd over an epoch's entries saves under 1% of the wire bytes
//! at the conditions (1,183 against 1,192 bytes per dirty page,
//! `cargo bench -p benches --bench encoder`) for about 0.25 µs of the
//! primary's CPU per dirty page and the shadow's decompression. So the
//! entries go through zstd only while a link is the bottleneck: when, as
//! the encoder starts an epoch, some link has not yet written all of an
//! earlier epoch to its socket. Once every link keeps up again for
//! [`CALM_EPOCHS`] epochs in a row, the entries go plain again.
//!
//! Plain pages (random data, text) are not affected: whether zstd is tried
//! on them stays with the encoder's adaptive skip, since for compressible
//! memory zstd is most of the saving.

/// Epochs in a row with no link behind before zstd is dropped again (one
/// second at 20 ms epochs), so a link that falls behind now and then does
/// not flip the coding every epoch.
pub const CALM_EPOCHS: u32 = 50;

/// The decision; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunsCoding {
    /// Whether the entries go through zstd.
    compress: bool,
    /// Epochs in a row with no link behind, while compressing.
    calm: u32,
}

impl RunsCoding {
    /// The coding of the next epoch: `backlog` is the most bytes of earlier
    /// epochs any link has not yet written to its socket. Returns whether
    /// its sparse rewrites go through zstd.
    pub fn epoch(&mut self, backlog: u64) -> bool {
        if backlog > 0 {
            self.compress = true;
            self.calm = 0;
        } else if self.compress {
            self.calm += 1;
            if self.calm >= CALM_EPOCHS {
                self.compress = false;
                self.calm = 0;
            }
        }
        self.compress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_while_the_links_keep_up_compressed_while_one_is_behind() {
        let mut c = RunsCoding::default();
        for _ in 0..1_000 {
            assert!(!c.epoch(0));
        }
        // A link behind: compressed at once, and for as long as it stays
        // behind.
        for _ in 0..200 {
            assert!(c.epoch(4_096));
        }
        // Caught up: still compressed for CALM_EPOCHS - 1 epochs.
        for i in 1..CALM_EPOCHS {
            assert!(c.epoch(0), "calm epoch {i}");
        }
        assert!(!c.epoch(0));
        assert!(!c.epoch(0));
    }

    #[test]
    fn a_link_behind_now_and_then_keeps_the_coding_steady() {
        let mut c = RunsCoding::default();
        let mut flips = 0;
        let mut last = false;
        // Behind one epoch in 20 (the last one too): compressed throughout,
        // never flipping.
        for e in 0..=2_000u32 {
            let now = c.epoch(u64::from(e % 20 == 0));
            flips += u32::from(now != last);
            last = now;
        }
        assert_eq!(flips, 1, "compressed from the first backlog on");
        assert!(last);
        // The backlog ends: back to plain exactly CALM_EPOCHS epochs later.
        let plain_after = (1..=CALM_EPOCHS + 1).find(|_| !c.epoch(0));
        assert_eq!(plain_after, Some(CALM_EPOCHS));
    }
}
