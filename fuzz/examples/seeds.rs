//! Writes the seed corpus: `cargo run --manifest-path fuzz/Cargo.toml
//! --example seeds -- fuzz/corpus` (see `hotspare_fuzz::seeds`).

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let n = hotspare_fuzz::seeds::write_all(std::path::Path::new(&dir))
        .unwrap_or_else(|e| panic!("writing the seeds to {dir}: {e}"));
    println!("{n} seeds written to {dir}");
}
