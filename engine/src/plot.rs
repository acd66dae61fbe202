//! Minimal SVG charts for `hotspare bench`: scatter/line series and
//! histograms with labelled, "nice" axes. Hand-written (about 150 lines)
//! rather than a plotting crate: the charts are three fixed shapes and the
//! plotting crates pull in font rendering and image stacks we do not need.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// One data series.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// How series are drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Dots, one per point.
    Dots,
    /// Bars from 0 to y, centred on x, `width` wide in x units.
    Bars { width_milli: u64 },
}

/// Tick positions covering `[lo, hi]`: 4 to 10 multiples of 1, 2 or 5
/// times a power of ten.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 8.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-9 {
        v.push(t);
        t += step;
    }
    v
}

fn label(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e6) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.2e}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG chart of `series`. Axes start at 0 for y (and for x when all x
/// are non-negative); empty input gives an empty, labelled frame.
pub fn chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series], style: Style) -> String {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if let Style::Bars { width_milli } = style {
        let half = width_milli as f64 / 2000.0;
        (x0, x1) = (x0 - half, x1 + half);
    }
    if x0 > 0.0 {
        x0 = 0.0;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let yt = ticks(0.0, y1 * 1.05);
    let y1 = yt.last().copied().unwrap_or(y1).max(y1);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - y / y1 * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        esc(title)
    );
    for t in &yt {
        let y = sy(*t);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(*t)
        );
    }
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 18.0,
            label(t)
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        LEFT + pw / 2.0,
        H - 12.0,
        esc(xlabel),
        TOP + ph / 2.0,
        esc(ylabel)
    );
    for (i, se) in series.iter().enumerate() {
        for &(x, y) in &se.points {
            match style {
                Style::Dots => {
                    let _ = writeln!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"{}\"/>",
                        sx(x),
                        sy(y),
                        se.color
                    );
                }
                Style::Bars { width_milli } => {
                    let w = width_milli as f64 / 1000.0;
                    let (l, r) = (sx(x - w / 2.0), sx(x + w / 2.0));
                    let _ = writeln!(
                        s,
                        "<rect x=\"{l:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                         fill=\"{}\" fill-opacity=\"0.7\"/>",
                        sy(y),
                        (r - l).max(0.5),
                        (TOP + ph - sy(y)).max(0.0),
                        se.color
                    );
                }
            }
        }
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            W - RIGHT - 190.0,
            ly - 9.0,
            se.color,
            W - RIGHT - 175.0,
            ly,
            esc(se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Counts of `values` in `bins` equal bins over `[0, max]`, as
/// (bin centre, count) points; returns them and the bin width.
pub fn histogram(values: &[f64], bins: usize) -> (Vec<(f64, f64)>, f64) {
    let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let bins = bins.max(1);
    let w = max / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in values {
        let i = ((v / w) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let pts = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| ((i as f64 + 0.5) * w, c as f64))
        .collect();
    (pts, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 0.73);
        assert!(t.len() >= 4 && t.len() <= 9, "{t:?}");
        assert!(*t.last().unwrap() <= 0.73 + 1e-9);
    }

    #[test]
    fn histogram_counts_every_value_once() {
        let (pts, w) = histogram(&[0.1, 0.2, 0.9, 1.0, 1.0], 5);
        assert!((w - 0.2).abs() < 1e-12);
        assert_eq!(pts.iter().map(|p| p.1).sum::<f64>(), 5.0);
        assert_eq!(pts[4].1, 3.0); // 0.9 and both 1.0 land in the last bin
    }

    #[test]
    fn chart_has_one_mark_per_point_and_escapes_text() {
        let svg = chart(
            "a <b>",
            "x",
            "y",
            &[Series {
                name: "s&t",
                color: "#123456",
                points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, 0.5)],
            }],
            Style::Dots,
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("s&amp;t"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
