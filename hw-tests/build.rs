//! Builds the test guests (hw-tests/guests) from source with GNU make/gcc
//! into `$OUT_DIR/guests/<name>.elf`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("guests");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("guests");

    println!("cargo:rerun-if-changed=guests");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GUEST_CC");

    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(&src).arg(format!("O={}", out.display()));
    // Serial build, independent of any jobserver cargo may be running.
    cmd.env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "hw-tests: cannot run `make` to build the test guests in {}: {e}",
            src.display()
        )
    });
    if !output.status.success() {
        panic!(
            "hw-tests: building the test guests failed (`make -C {} O={}`, {}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            src.display(),
            out.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!("cargo:rustc-env=HOTSPARE_GUEST_DIR={}", out.display());
}
