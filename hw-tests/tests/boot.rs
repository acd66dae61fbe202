//! Booting standard PVH images: the exact console output of the hello guest
//! as ELF64 and as ELF32, including a line written with `rep outsb`.

mod common;

use std::process::Command;

fn hello(name: &str) {
    if !common::kvm_available() {
        return;
    }
    let out = Command::new(common::hotspare())
        .args(["run", "--kernel"])
        .arg(hw_tests::guest_path(name))
        .args(["--mem-mib", "64", "--cmdline", "alpha=1 beta"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from pvh guest\nrep outsb: every byte arrived\nhello from ring 3\ncmdline: alpha=1 beta\n"
    );
}

#[test]
fn elf64_pvh_hello() {
    hello("hello");
}

#[test]
fn elf32_pvh_hello() {
    hello("hello32");
}
