//! How a live copy codes each chunk, by what the link and the spare
//! achieve (no I/O, no clock: the sender measures and reports).
//!
//! A live copy sends a running guest's memory in containers of 1 MiB of
//! pages and decides their coding for 4 MiB at a time, a *chunk* here
//! (`livecopy.rs`). Each chunk goes either **plain** (raw pages: no
//! compression, more bytes) or **zstd** (at `livecopy::COPY_ZSTD_LEVEL`:
//! CPU on both ends, fewer bytes). Which is faster depends on where the
//! copy's bottleneck is:
//! - a fast link (loopback, a 10 GbE link between two busy hosts): the CPU
//!   is, and plain wins (1 GiB guest on the development host: 1.7 s to
//!   protected plain against 2.4-2.6 s with zstd);
//! - a slow link (1 GbE: 117 MB/s): the wire is, and zstd wins by its ratio
//!   (the harness's mixed pages: 690 MiB plain against 420 MiB coded).
//!
//! So the sender measures both. For each chunk it reports the guest bytes
//! it held and the seconds from when the socket finished taking the chunk
//! before (or, first in a round, from when this one was ready) until the
//! socket took its last byte: once the socket's buffer is full that is the
//! pace of the whole pipe (the reading and encoding ahead of the socket,
//! the link, and the spare's decoding, whose slowness backs up into the
//! socket). [`CopyCoding`] probes each coding for
//! [`PROBE_CHUNKS`] chunks, the first of which only refills the pipe after
//! the switch and is not counted, then codes [`EXPLOIT_CHUNKS`] chunks the
//! faster way (zstd only when it is faster by [`ZSTD_MARGIN`]) before
//! probing the other again, since a link's pace changes (other traffic,
//! the guest's own load on the CPUs).
//!
//! zstd's pace is capped by the compressor's own rate (the sender's time
//! encoding zstd chunks, [`CopyCoding::compressed`]): a probe shorter than
//! the socket's buffers measures how fast zstd's smaller chunks go into
//! the buffers, not how fast the pipe drains them. And while plain goes
//! faster than the compressor could code, zstd is not probed again: on a
//! fast link (loopback on the development host) each probe cost more
//! than the rest of the copy gained.

/// How one chunk is coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkCoding {
    /// Raw pages (zero pages still as markers).
    Plain,
    /// zstd at the copy's level.
    Zstd,
}

impl ChunkCoding {
    fn index(self) -> usize {
        match self {
            ChunkCoding::Plain => 0,
            ChunkCoding::Zstd => 1,
        }
    }

    fn other(self) -> ChunkCoding {
        match self {
            ChunkCoding::Plain => ChunkCoding::Zstd,
            ChunkCoding::Zstd => ChunkCoding::Plain,
        }
    }
}

/// How much faster zstd's pace must be than plain's for zstd to be chosen.
/// zstd costs CPU on both ends that the sender's pace shows only in part
/// (on a host whose CPUs also run the guest and the spare, compressing and
/// decompressing take CPU from them), so a near tie goes to plain. A link
/// that is the bottleneck shows zstd faster by its ratio (1.6x on the
/// harness's mixed pages), well past this margin.
pub const ZSTD_MARGIN: f64 = 1.25;

/// Chunks in a probe of one coding; the first is not measured.
pub const PROBE_CHUNKS: u32 = 3;
/// Chunks coded the faster way between two probes of the slower one (with
/// the probe, about one chunk in ten goes the slower way).
pub const EXPLOIT_CHUNKS: u32 = 24;

/// The decision; see the module documentation.
#[derive(Clone, Debug)]
pub struct CopyCoding {
    /// Guest bytes per second each coding achieved when last measured
    /// (mean of its last probe, or of the chunks since it was chosen).
    rate: [Option<f64>; 2],
    /// The coding of the next chunk.
    current: ChunkCoding,
    /// Whether `current` is being probed (else exploited).
    probing: bool,
    /// Chunks coded `current` in this phase so far.
    done: u32,
    /// Guest bytes and seconds measured in this phase.
    bytes: u64,
    secs: f64,
    /// Guest bytes per second the sender's compressor itself takes (its
    /// time encoding zstd chunks): zstd's pace can never stay above it.
    compress_rate: Option<f64>,
}

impl Default for CopyCoding {
    fn default() -> Self {
        CopyCoding::new()
    }
}

impl CopyCoding {
    /// Starts by probing plain, then zstd.
    pub fn new() -> CopyCoding {
        CopyCoding {
            rate: [None, None],
            current: ChunkCoding::Plain,
            probing: true,
            done: 0,
            bytes: 0,
            secs: 0.0,
            compress_rate: None,
        }
    }

    /// How to code the next chunk.
    pub fn next(&self) -> ChunkCoding {
        self.current
    }

    /// The guest bytes per second `coding` achieved when last measured.
    pub fn rate(&self, coding: ChunkCoding) -> Option<f64> {
        self.rate[coding.index()]
    }

    /// Reports the time the sender took to encode a zstd chunk of
    /// `guest_bytes`: the compressor's own rate, a ceiling on zstd's pace.
    /// A probe shorter than the socket's buffers sees zstd's smaller
    /// chunks go into the buffers at the sender's pace, not the pipe's;
    /// the ceiling keeps that from passing for a faster link.
    pub fn compressed(&mut self, guest_bytes: u64, secs: f64) {
        let r = guest_bytes as f64 / secs.max(1e-6);
        // A moving mean: each container's rate counts a quarter, so the
        // estimate follows the host's load without jumping at one outlier.
        self.compress_rate = Some(match self.compress_rate {
            None => r,
            Some(old) => 0.75 * old + 0.25 * r,
        });
    }

    /// zstd's pace when last measured, capped by the compressor's rate.
    fn zstd_rate(&self) -> Option<f64> {
        let z = self.rate[ChunkCoding::Zstd.index()]?;
        Some(self.compress_rate.map_or(z, |c| z.min(c)))
    }

    /// Reports a chunk sent coded `coding`: `guest_bytes` of pages (zero
    /// pages included) in `secs`, the pace of the pipe while it went.
    ///
    /// A sender whose reading runs ahead of its socket decides the next
    /// chunk before the last one's report arrives, so a chunk coded the
    /// way the phase before a switch said may be reported after it: such a
    /// report is ignored (it would count for the wrong coding).
    pub fn sent(&mut self, coding: ChunkCoding, guest_bytes: u64, secs: f64) {
        if coding != self.current {
            return;
        }
        self.done += 1;
        // The first chunk of a probe refills the pipe after the switch.
        if !(self.probing && self.done == 1) {
            self.bytes += guest_bytes;
            // A chunk that took no measurable time still counts a little,
            // so a rate is always finite.
            self.secs += secs.max(1e-6);
        }
        let measured = (self.secs > 0.0).then(|| self.bytes as f64 / self.secs);
        if let Some(r) = measured {
            self.rate[self.current.index()] = Some(r);
        }
        let phase_len = if self.probing {
            PROBE_CHUNKS
        } else {
            EXPLOIT_CHUNKS
        };
        if self.done < phase_len {
            return;
        }
        let next = match (self.rate[ChunkCoding::Plain.index()], self.zstd_rate()) {
            // Each coding not measured yet is probed first.
            (None, _) => (ChunkCoding::Plain, true),
            (_, None) => (ChunkCoding::Zstd, true),
            (Some(plain), Some(zstd)) => {
                let faster = if zstd > plain * ZSTD_MARGIN {
                    ChunkCoding::Zstd
                } else {
                    ChunkCoding::Plain
                };
                // A link that takes plain chunks faster than the
                // compressor could code them: zstd cannot win, and is not
                // probed again until plain slows down.
                let zstd_hopeless = self.compress_rate.is_some_and(|c| c <= plain * ZSTD_MARGIN);
                if self.probing {
                    // A probe ended: code the faster way.
                    (faster, false)
                } else if self.current == ChunkCoding::Plain && zstd_hopeless {
                    (ChunkCoding::Plain, false)
                } else {
                    // An exploit ended: probe the other one again.
                    (self.current.other(), true)
                }
            }
        };
        (self.current, self.probing) = next;
        self.done = 0;
        self.bytes = 0;
        self.secs = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 4 << 20;

    /// Runs `chunks` chunks through `c`, each taking the seconds `pace`
    /// gives for its coding and index, and returns the codings used.
    fn run(
        c: &mut CopyCoding,
        chunks: usize,
        pace: impl FnMut(ChunkCoding, usize) -> f64,
    ) -> Vec<ChunkCoding> {
        run_with(c, chunks, None, pace)
    }

    /// [`run`], with each zstd chunk also reported as compressed in
    /// `compress` seconds, when given.
    fn run_with(
        c: &mut CopyCoding,
        chunks: usize,
        compress: Option<f64>,
        mut pace: impl FnMut(ChunkCoding, usize) -> f64,
    ) -> Vec<ChunkCoding> {
        (0..chunks)
            .map(|i| {
                let k = c.next();
                if let (ChunkCoding::Zstd, Some(secs)) = (k, compress) {
                    c.compressed(CHUNK, secs);
                }
                c.sent(k, CHUNK, pace(k, i));
                k
            })
            .collect()
    }

    fn share(codings: &[ChunkCoding], k: ChunkCoding) -> f64 {
        codings.iter().filter(|&&c| c == k).count() as f64 / codings.len() as f64
    }

    #[test]
    fn a_cpu_bound_copy_goes_mostly_plain_and_a_link_bound_one_mostly_zstd() {
        // Loopback on the development host: plain 1.7 s, zstd 2.5 s per GiB.
        let mut c = CopyCoding::new();
        let codings = run(&mut c, 256, |k, _| match k {
            ChunkCoding::Plain => 1.7 / 256.0,
            ChunkCoding::Zstd => 2.5 / 256.0,
        });
        assert!(codings[..3].iter().all(|&k| k == ChunkCoding::Plain));
        assert!(codings[3..6].iter().all(|&k| k == ChunkCoding::Zstd));
        assert!(share(&codings, ChunkCoding::Plain) > 0.85, "{codings:?}");
        // 1 GbE: 4 MiB plain takes 36 ms on the wire, coded (0.6x) 21 ms.
        let mut c = CopyCoding::new();
        let codings = run(&mut c, 256, |k, _| match k {
            ChunkCoding::Plain => 0.036,
            ChunkCoding::Zstd => 0.021,
        });
        assert!(share(&codings, ChunkCoding::Zstd) > 0.85, "{codings:?}");
        assert!(c.rate(ChunkCoding::Zstd).unwrap() > c.rate(ChunkCoding::Plain).unwrap());
    }

    #[test]
    fn both_codings_are_probed_first_and_the_other_again_after_each_exploit() {
        let mut c = CopyCoding::new();
        let codings = run(&mut c, 3 * PROBE_CHUNKS as usize, |k, _| match k {
            ChunkCoding::Plain => 0.01,
            ChunkCoding::Zstd => 0.02,
        });
        let p = PROBE_CHUNKS as usize;
        assert!(codings[..p].iter().all(|&k| k == ChunkCoding::Plain));
        assert!(codings[p..2 * p].iter().all(|&k| k == ChunkCoding::Zstd));
        // Then the faster, for EXPLOIT_CHUNKS, then zstd probed again.
        assert!(codings[2 * p..].iter().all(|&k| k == ChunkCoding::Plain));
        let more = run(&mut c, EXPLOIT_CHUNKS as usize - p + p, |k, _| match k {
            ChunkCoding::Plain => 0.01,
            ChunkCoding::Zstd => 0.02,
        });
        let e = EXPLOIT_CHUNKS as usize - p;
        assert!(more[..e].iter().all(|&k| k == ChunkCoding::Plain));
        assert!(more[e..].iter().all(|&k| k == ChunkCoding::Zstd));
    }

    #[test]
    fn the_first_chunk_of_a_probe_is_not_counted() {
        // Each coding's first chunk after a switch is very fast (the pipe
        // had room) and says nothing of its pace.
        let mut c = CopyCoding::new();
        let mut last = None;
        run(&mut c, 2 * PROBE_CHUNKS as usize, |k, _| {
            let first = last != Some(k);
            last = Some(k);
            match (k, first) {
                (_, true) => 1e-5,
                (ChunkCoding::Plain, false) => 0.01,
                (ChunkCoding::Zstd, false) => 0.02,
            }
        });
        let plain = c.rate(ChunkCoding::Plain).unwrap();
        assert!((plain - CHUNK as f64 / 0.01).abs() < 1.0, "{plain}");
        assert_eq!(c.next(), ChunkCoding::Plain);
    }

    #[test]
    fn a_link_that_slows_down_mid_copy_moves_the_copy_to_zstd() {
        // Plain is faster until chunk 100, then the link is shared and
        // plain takes four times as long; zstd is steady.
        let mut c = CopyCoding::new();
        let codings = run(&mut c, 400, |k, i| match (k, i < 100) {
            (ChunkCoding::Plain, true) => 0.010,
            (ChunkCoding::Plain, false) => 0.040,
            (ChunkCoding::Zstd, _) => 0.015,
        });
        assert!(share(&codings[..100], ChunkCoding::Plain) > 0.8);
        // Within one exploit and a probe of the change, zstd takes over.
        let switch = 100 + (EXPLOIT_CHUNKS + 2 * PROBE_CHUNKS) as usize;
        assert!(
            share(&codings[switch..], ChunkCoding::Zstd) > 0.8,
            "{:?}",
            &codings[100..]
        );
    }

    #[test]
    fn a_chunk_reported_after_the_switch_it_preceded_is_not_counted() {
        // Plain's probe ends; the sender had already coded one more chunk
        // plain, reported after the switch to zstd's probe. It neither
        // counts as a zstd chunk nor moves zstd's probe along.
        let mut c = CopyCoding::new();
        for _ in 0..PROBE_CHUNKS {
            c.sent(ChunkCoding::Plain, CHUNK, 0.01);
        }
        assert_eq!(c.next(), ChunkCoding::Zstd);
        c.sent(ChunkCoding::Plain, CHUNK, 1e-6);
        assert_eq!(c.rate(ChunkCoding::Zstd), None);
        for _ in 0..PROBE_CHUNKS - 1 {
            c.sent(ChunkCoding::Zstd, CHUNK, 0.02);
            assert_eq!(c.next(), ChunkCoding::Zstd);
        }
        c.sent(ChunkCoding::Zstd, CHUNK, 0.02);
        // Both probed: plain was faster (the stale report did not count).
        assert_eq!(c.next(), ChunkCoding::Plain);
        let plain = c.rate(ChunkCoding::Plain).unwrap();
        assert!((plain - CHUNK as f64 / 0.01).abs() < 1.0, "{plain}");
    }

    #[test]
    fn zstd_must_be_clearly_faster_to_be_chosen() {
        // zstd measured 15% faster: within the margin, plain is kept.
        let mut c = CopyCoding::new();
        let codings = run(&mut c, 256, |k, _| match k {
            ChunkCoding::Plain => 0.0115,
            ChunkCoding::Zstd => 0.0100,
        });
        assert!(share(&codings, ChunkCoding::Plain) > 0.85, "{codings:?}");
        // 40% faster: zstd.
        let mut c = CopyCoding::new();
        let codings = run(&mut c, 256, |k, _| match k {
            ChunkCoding::Plain => 0.014,
            ChunkCoding::Zstd => 0.010,
        });
        assert!(share(&codings, ChunkCoding::Zstd) > 0.85, "{codings:?}");
    }

    #[test]
    fn zstd_is_never_faster_than_its_compressor_and_not_probed_past_it() {
        // zstd's chunks seem to go 2x as fast as plain's (they fit the
        // socket's buffers), but the compressor codes only 1.2x plain's
        // pace: plain is chosen, and zstd not probed again.
        let mut c = CopyCoding::new();
        let codings = run_with(&mut c, 200, Some(0.01 / 1.2), |k, _| match k {
            ChunkCoding::Plain => 0.01,
            ChunkCoding::Zstd => 0.005,
        });
        let p = PROBE_CHUNKS as usize;
        assert!(codings[p..2 * p].iter().all(|&k| k == ChunkCoding::Zstd));
        assert!(
            codings[2 * p..].iter().all(|&k| k == ChunkCoding::Plain),
            "{codings:?}"
        );
        // Once plain slows below what the compressor manages, zstd is
        // probed again at the end of the exploit, and wins.
        let later = run_with(&mut c, 100, Some(0.002), |k, _| match k {
            ChunkCoding::Plain => 0.04,
            ChunkCoding::Zstd => 0.02,
        });
        assert!(share(&later[50..], ChunkCoding::Zstd) > 0.8, "{later:?}");
    }

    #[test]
    fn instant_and_zero_length_chunks_keep_the_rates_finite() {
        let mut c = CopyCoding::new();
        run(&mut c, 100, |_, i| if i % 2 == 0 { 0.0 } else { -1.0 });
        for k in [ChunkCoding::Plain, ChunkCoding::Zstd] {
            assert!(c.rate(k).unwrap().is_finite());
        }
        c.sent(c.next(), 0, 0.0);
        assert!(c.rate(c.next()).is_none_or(f64::is_finite));
    }
}
