//! Builds the bundled demo guests from source (hw-tests/guests) so that
//! `hotspare demo` needs nothing but what this repository builds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("guests");
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"))
        .join("..")
        .join("hw-tests")
        .join("guests");
    println!("cargo:rerun-if-changed={}", src.display());
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("O={}", out.display()))
        .arg("memtest")
        .arg("diskcheck")
        .arg("netcheck")
        .status()
        .expect("running make for the demo guest (needs make, gcc and binutils)");
    assert!(status.success(), "building the demo guest failed");
}
