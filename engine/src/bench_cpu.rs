//! The engine's steady-state CPU per dirty page: the CPU time between two
//! CPU marks taken after the warm-up (see `engine::cpu::CpuMark`), over the
//! pages of the epochs between them. The whole-run figure beside it also
//! counts the start-up: the initial full sync, the first touch of the
//! shadow's memory and of the delta cache, and the guest writing its whole
//! working set once.

use std::collections::BTreeMap;

use engine::cpu::CpuMark;

/// CPU per dirty page between two marks, µs.
#[derive(Debug, PartialEq)]
pub(crate) struct Steady {
    /// The marks' epochs: the window holds the epochs after `from`, through `to`.
    pub from: u64,
    pub to: u64,
    /// Dirty pages of the window's epochs.
    pub pages: f64,
    /// The primary's accounted threads, by name.
    pub primary: BTreeMap<String, f64>,
    /// The standbys' threads, by name, summed over the standbys; `other` is
    /// what their processes ran outside the accounted threads.
    pub shadow: BTreeMap<String, f64>,
}

impl Steady {
    pub fn primary_total(&self) -> f64 {
        self.primary.values().sum()
    }

    pub fn shadow_total(&self) -> f64 {
        self.shadow.values().sum()
    }
}

/// CPU growth per thread from `a` to `b`, s (a thread absent at `a` had none).
fn growth(a: &CpuMark, b: &CpuMark) -> BTreeMap<String, f64> {
    b.threads_cpu_s
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                (t - a.threads_cpu_s.get(n).unwrap_or(&0.0)).max(0.0),
            )
        })
        .collect()
}

/// The steady-state figures between the first and the last mark that the
/// primary and every standby took within epochs `first..=last` (the
/// measured ones, after the warm-up); `epochs` holds each epoch's number
/// and dirty pages. `None` without two such marks or pages between them.
pub(crate) fn steady(
    primary: &[CpuMark],
    standbys: &[Vec<CpuMark>],
    epochs: &[(u64, f64)],
    (first, last): (u64, u64),
) -> Option<Steady> {
    let at = |marks: &[CpuMark], seq: u64| marks.iter().find(|m| m.through == seq).cloned();
    let common: Vec<u64> = primary
        .iter()
        .map(|m| m.through)
        .filter(|&s| (first..=last).contains(&s))
        .filter(|&s| standbys.iter().all(|marks| at(marks, s).is_some()))
        .collect();
    let (from, to) = (*common.iter().min()?, *common.iter().max()?);
    let pages: f64 = epochs
        .iter()
        .filter(|(s, _)| *s > from && *s <= to)
        .map(|(_, p)| p)
        .sum();
    if from >= to || pages <= 0.0 {
        return None;
    }
    let per_page = |m: BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        m.into_iter().map(|(n, s)| (n, s * 1e6 / pages)).collect()
    };
    let primary = per_page(growth(&at(primary, from)?, &at(primary, to)?));
    let mut shadow = BTreeMap::new();
    for marks in standbys {
        let (a, b) = (at(marks, from)?, at(marks, to)?);
        let threads = growth(&a, &b);
        let other = (b.process_cpu_s - a.process_cpu_s) - threads.values().sum::<f64>();
        for (n, s) in threads
            .into_iter()
            .chain([("other".to_owned(), other.max(0.0))])
        {
            *shadow.entry(n).or_insert(0.0) += s;
        }
    }
    Some(Steady {
        from,
        to,
        pages,
        primary,
        shadow: per_page(shadow),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(through: u64, process: f64, threads: &[(&str, f64)]) -> CpuMark {
        CpuMark {
            through,
            process_cpu_s: process,
            threads_cpu_s: threads.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn the_window_runs_between_the_first_and_last_common_marks() {
        // Marks at 25, 50, 75; the primary's at 25 is before the warm-up's
        // end (first measured epoch 30), the standby has none at 75.
        let primary = vec![
            mark(25, 9.0, &[("hs-encode", 1.0), ("hs-main", 0.5)]),
            mark(50, 9.0, &[("hs-encode", 2.0), ("hs-main", 0.6)]),
            mark(75, 9.0, &[("hs-encode", 3.0), ("hs-main", 0.7)]),
            mark(
                100,
                9.0,
                &[("hs-encode", 4.0), ("hs-main", 0.8), ("hs-send", 0.3)],
            ),
        ];
        let standby = vec![
            mark(25, 1.0, &[("hs-stream", 0.5)]),
            mark(50, 2.0, &[("hs-stream", 1.0)]),
            mark(100, 4.0, &[("hs-stream", 2.0)]),
        ];
        // 1,000 pages in each epoch; the epochs 51..=100 count.
        let epochs: Vec<(u64, f64)> = (1..=120).map(|s| (s, 1000.0)).collect();
        let s = steady(&primary, &[standby], &epochs, (30, 110)).expect("a window");
        assert_eq!((s.from, s.to, s.pages), (50, 100, 50_000.0));
        // 2 s of the encoder over 50,000 pages: 40 µs a page.
        assert!((s.primary["hs-encode"] - 40.0).abs() < 1e-9, "{s:?}");
        assert!((s.primary["hs-main"] - 4.0).abs() < 1e-9);
        // A thread that appeared inside the window counts from zero.
        assert!((s.primary["hs-send"] - 6.0).abs() < 1e-9);
        // The standby: 1 s of its stream thread, 1 s elsewhere in the process.
        assert!((s.shadow["hs-stream"] - 20.0).abs() < 1e-9);
        assert!((s.shadow["other"] - 20.0).abs() < 1e-9);
        assert!((s.shadow_total() - 40.0).abs() < 1e-9);
        assert!((s.primary_total() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn several_standbys_are_summed() {
        let primary = vec![mark(25, 0.0, &[("a", 0.0)]), mark(50, 0.0, &[("a", 1.0)])];
        let one = vec![mark(25, 0.0, &[("s", 0.0)]), mark(50, 1.0, &[("s", 1.0)])];
        let two = vec![mark(25, 0.0, &[("s", 0.0)]), mark(50, 3.0, &[("s", 2.0)])];
        let epochs = vec![(50, 1e6)];
        let s = steady(&primary, &[one, two], &epochs, (0, 60)).unwrap();
        assert!((s.shadow["s"] - 3.0).abs() < 1e-9, "{s:?}");
        assert!((s.shadow["other"] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn no_window_without_two_common_marks_and_pages() {
        let p = vec![mark(25, 0.0, &[]), mark(50, 0.0, &[])];
        let only_one = vec![mark(50, 0.0, &[])];
        let epochs = vec![(40, 100.0)];
        assert_eq!(steady(&p, &[only_one], &epochs, (0, 60)), None);
        let both = vec![mark(25, 0.0, &[]), mark(50, 0.0, &[])];
        // Both marks outside the measured epochs.
        assert_eq!(
            steady(&p, std::slice::from_ref(&both), &epochs, (26, 60)),
            None
        );
        // No pages between them.
        assert_eq!(steady(&p, &[both], &[(60, 5.0)], (0, 60)), None);
    }
}
