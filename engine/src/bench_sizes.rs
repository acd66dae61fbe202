//! `hotspare bench --sizes 256,1024,4096,8192`: the same bench at several
//! guest sizes, compared in one table and one chart. The guest's working
//! set and dirty rate stay the same at every size, so a figure that grows
//! with the size is a cost of untouched memory (issue #13: only harvesting
//! the dirty log of untouched memory should grow).

use anyhow::Context;
use serde_json::{json, Value};

use crate::bench::{bench, BenchArgs};
use crate::plot::{chart, Series, Style};

/// The figures compared across sizes: (label, path in bench.json, unit).
const FIGURES: [(&str, [&str; 2], &str); 7] = [
    ("pause p50", ["pause_ms", "p50"], "ms"),
    ("pause p99", ["pause_ms", "p99"], "ms"),
    ("stop p50", ["pause_phase_p50_ms", "stop"], "ms"),
    ("harvest p50", ["pause_phase_p50_ms", "harvest"], "ms"),
    ("copy p50", ["pause_phase_p50_ms", "copy"], "ms"),
    (
        "engine CPU per dirty page, primary",
        ["engine_cpu_us_per_dirty_page", "primary"],
        "µs",
    ),
    (
        "engine CPU per dirty page, shadow",
        ["engine_cpu_us_per_dirty_page", "shadow"],
        "µs",
    ),
];

fn get(v: &Value, path: &[&str; 2]) -> f64 {
    v[path[0]][path[1]].as_f64().unwrap_or(0.0)
}

/// Runs the bench once per size and writes the comparison.
pub fn sweep(a: BenchArgs) -> anyhow::Result<i32> {
    if a.sizes.iter().any(|&m| m < 64 || m % 2 != 0) {
        anyhow::bail!("--sizes: give even sizes of at least 64 MiB (e.g. 256,1024,4096,8192)");
    }
    let mut rows = Vec::new();
    for &mib in &a.sizes {
        let out = a.out.join(format!("{mib}mib"));
        let mut one = a.clone();
        one.out = out.clone();
        one.mem_mib = mib;
        one.sizes = Vec::new();
        eprintln!("hotspare bench --sizes: {mib} MiB");
        bench(one)?;
        let path = out.join("bench.json");
        let v: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        rows.push((mib, v));
    }
    // Each figure's label with its unit: the table's columns, the JSON's
    // keys and the chart's legend.
    let labels: Vec<String> = FIGURES
        .iter()
        .map(|(l, _, u)| format!("{l} ({u})"))
        .collect();
    let mut md = String::from("| guest | ");
    md.push_str(&labels.join(" | "));
    md.push_str(" |\n| --- |");
    md.push_str(&" --- |".repeat(FIGURES.len()));
    md.push('\n');
    for (mib, v) in &rows {
        md.push_str(&format!("| {mib} MiB |"));
        for (_, path, _) in FIGURES {
            md.push_str(&format!(" {:.3} |", get(v, &path)));
        }
        md.push('\n');
    }
    let json = json!({
        "sizes": rows.iter().map(|(mib, v)| {
            let mut o = serde_json::Map::new();
            o.insert("mem_mib".into(), json!(mib));
            for ((_, path, _), l) in FIGURES.iter().zip(&labels) {
                o.insert(l.clone(), json!(get(v, path)));
            }
            Value::Object(o)
        }).collect::<Vec<_>>(),
    });
    let colors = [
        "#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let series: Vec<Series> = FIGURES
        .iter()
        .zip(&labels)
        .zip(colors)
        .map(|(((_, path, _), name), color)| Series {
            name,
            color,
            points: rows
                .iter()
                .map(|(mib, v)| (*mib as f64 / 1024.0, get(v, path)))
                .collect(),
        })
        .collect();
    let svg = chart(
        "Per-epoch figures against guest size (same working set and dirty rate)",
        "guest memory (GiB)",
        "ms (pause and its phases) / µs (CPU per dirty page)",
        &series,
        Style::Dots,
    );
    std::fs::write(a.out.join("sizes.svg"), svg)?;
    std::fs::write(a.out.join("sizes.json"), serde_json::to_vec_pretty(&json)?)?;
    std::fs::write(a.out.join("sizes.md"), &md)?;
    println!(
        "\n{md}\nwritten: {0}/sizes.md, {0}/sizes.json, {0}/sizes.svg",
        a.out.display()
    );
    Ok(0)
}
