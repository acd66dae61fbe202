//! Bad input gets a clear error naming what is wrong.

mod common;

use std::process::Command;

use common::{hotspare, TempDir};

fn run(args: &[&str]) -> (bool, String) {
    run_with_device(None, args)
}

/// Runs hotspare, optionally with `HOTSPARE_KVM_DEVICE` set.
fn run_with_device(device: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(hotspare());
    if let Some(d) = device {
        c.env("HOTSPARE_KVM_DEVICE", d);
    }
    let out = c.args(args).output().expect("spawn hotspare");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kernel_is_named() {
    if !common::kvm_available() {
        return;
    }
    let (ok, err) = run(&["run", "--kernel", "/nonexistent/guest.elf"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/guest.elf") && err.contains("cannot open"),
        "{err}"
    );
}

#[test]
fn unrecognised_image_is_refused() {
    if !common::kvm_available() {
        return;
    }
    let d = TempDir::new("badimg");
    let p = d.path("junk.bin");
    std::fs::write(&p, vec![0x5au8; 8192]).unwrap();
    let (ok, err) = run(&["run", "--kernel", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not a recognised kernel image"), "{err}");
}

#[test]
fn memory_too_small_for_image_is_refused() {
    if !common::kvm_available() {
        return;
    }
    let d = TempDir::new("bigimg");
    let p = d.path("big.elf");
    // A valid guest padded to 6 MiB does not fit in 4 MiB of RAM.
    let mut img = std::fs::read(hw_tests::guest_path("hello")).unwrap();
    img.resize(6 << 20, 0);
    std::fs::write(&p, img).unwrap();
    let (ok, err) = run(&["run", "--kernel", p.to_str().unwrap(), "--mem-mib", "4"]);
    assert!(!ok);
    assert!(err.contains("--mem-mib"), "{err}");
}

#[test]
fn restore_from_empty_dir_says_so() {
    if !common::kvm_available() {
        return;
    }
    let d = TempDir::new("empty");
    let (ok, err) = run(&["restore", "--checkpoint-dir", d.0.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no complete full checkpoint"), "{err}");
}

/// Writes a few checkpoints of a running guest, then damages one.
fn checkpoint_dir(d: &TempDir) -> std::path::PathBuf {
    let ck = d.path("ck");
    let st = Command::new(hotspare())
        .args(["run", "--kernel"])
        .arg(hw_tests::guest_path("timer"))
        .args([
            "--mem-mib",
            "64",
            "--cmdline",
            "ticks=400 every=100",
            "--console",
            "/dev/null",
        ])
        .arg("--checkpoint-dir")
        .arg(&ck)
        .args(["--checkpoint-interval-ms", "20"])
        .status()
        .unwrap();
    assert!(st.success());
    ck
}

/// The newest checkpoint file (not the end record the finished run left).
fn newest(ck: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(ck)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

#[test]
fn corrupt_checkpoint_is_refused_by_name() {
    if !common::kvm_available() {
        return;
    }
    let d = TempDir::new("corrupt");
    let ck = checkpoint_dir(&d);
    let victim = newest(&ck);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let (ok, err) = run(&[
        "restore",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--console",
        "/dev/null",
    ]);
    assert!(!ok, "a corrupt checkpoint was accepted");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "error does not name the file: {err}");
}

#[test]
fn truncated_checkpoint_is_refused_by_name() {
    if !common::kvm_available() {
        return;
    }
    let d = TempDir::new("trunc");
    let ck = checkpoint_dir(&d);
    let victim = newest(&ck);
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 7]).unwrap();
    let (ok, err) = run(&[
        "restore",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--console",
        "/dev/null",
    ]);
    assert!(!ok, "a truncated checkpoint was accepted");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn run_refuses_a_directory_holding_another_runs_checkpoints() {
    if !common::kvm_available() {
        return;
    }
    let d = TempDir::new("reuse");
    let ck = checkpoint_dir(&d);
    let (ok, err) = run(&[
        "run",
        "--kernel",
        hw_tests::guest_path("hello").to_str().unwrap(),
        "--checkpoint-dir",
        ck.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("already holds checkpoints"), "{err}");
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    // Needs no KVM: it checks the error when the device is absent.
    let guest = hw_tests::guest_path("hello");
    let (ok, err) = run_with_device(
        Some("/nonexistent/kvm"),
        &["run", "--kernel", guest.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/kvm not found") && err.contains("KVM"),
        "{err}"
    );
}

#[test]
fn a_device_that_is_not_kvm_is_refused() {
    let guest = hw_tests::guest_path("hello");
    let (ok, err) = run_with_device(
        Some("/dev/null"),
        &["run", "--kernel", guest.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(err.contains("/dev/null is not a KVM device"), "{err}");
}

#[test]
fn bad_net_options_are_refused_with_the_reason() {
    // A malformed spec, a multicast MAC, and a MAC where the checkpoint's
    // is the one that counts.
    let (ok, err) = run(&["run", "--kernel", "/x.elf", "--net", "tap=hs0,speed=10"]);
    assert!(!ok);
    assert!(err.contains("unknown option \"speed=10\""), "{err}");
    let (ok, err) = run(&[
        "run",
        "--kernel",
        "/x.elf",
        "--net",
        "tap=hs0,mac=01:00:5e:00:00:01",
    ]);
    assert!(!ok);
    assert!(err.contains("multicast"), "{err}");
    let (ok, err) = run(&[
        "restore",
        "--checkpoint-dir",
        "/nonexistent",
        "--net",
        "tap=hs0,mac=52:54:00:12:34:56",
    ]);
    assert!(!ok);
    assert!(err.contains("the MAC comes from the checkpoint"), "{err}");
}

#[test]
fn bad_standby_caps_are_refused_naming_the_option() {
    // Checked before the key file is read: a wrong order would complain
    // about the missing key instead.
    for (args, want) in [
        (
            ["--max-mem-mib", "0"],
            "--max-mem-mib must be between 1 and 17592186044415, got 0",
        ),
        (
            ["--max-mem-mib", "17592186044416"],
            "--max-mem-mib must be between 1 and 17592186044415, got 17592186044416",
        ),
        (
            ["--max-mem-mib", "lots"],
            "invalid value 'lots' for '--max-mem-mib",
        ),
        (
            ["--max-vcpus", "0"],
            "--max-vcpus must be between 1 and 64, got 0",
        ),
        (
            ["--max-vcpus", "65"],
            "--max-vcpus must be between 1 and 64, got 65",
        ),
        (
            ["--max-epoch-mib", "0"],
            "--max-epoch-mib must be at least 1",
        ),
        (
            ["--max-epoch-mib", "18446744073709551615"],
            "--max-epoch-mib 18446744073709551615 is too large",
        ),
    ] {
        refused_standby(&args, want);
    }
}

/// A standby with `args` and a key file that does not exist fails with an
/// error holding `want` (so it was refused before the key was read);
/// returns the error.
fn refused_standby(args: &[&str], want: &str) -> String {
    let mut all = vec![
        "standby",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        "/nonexistent/key",
    ];
    all.extend(args);
    let (ok, err) = run(&all);
    assert!(!ok, "{args:?} was accepted");
    assert!(err.contains(want), "{args:?}: {err}");
    err
}

#[test]
fn a_bad_memory_reservation_is_refused_before_anything_is_reserved() {
    // Refused before the key file is read (it does not exist here), so
    // nothing was populated for a standby that cannot start.
    let cases: [(&[&str], &str); 4] = [
        (
            &["--reserve-mib", "3"],
            "--reserve-mib must be a positive multiple of 2, got 3",
        ),
        (
            &["--reserve-mib", "0"],
            "--reserve-mib must be a positive multiple of 2, got 0",
        ),
        (
            &["--max-mem-mib", "64", "--reserve-mib", "128"],
            "--reserve-mib 128 is more than the largest VM this standby shadows (64 MiB: --max-mem-mib)",
        ),
        (
            &["--reserve-mib", "17592186044414"],
            "is more than the largest VM this standby shadows",
        ),
    ];
    for (args, want) in cases {
        let err = refused_standby(args, want);
        assert!(!err.contains("reserved"), "{args:?}: {err}");
    }
}

/// `--config FILE` (TOML whose keys are long options) works for run and
/// standby; an error names the file's line and key, and nothing starts.
#[test]
fn a_config_file_covers_the_options_and_its_errors_name_the_line() {
    let d = TempDir::new("cfgfile");
    let f = d.path("standby.toml");
    std::fs::write(&f, "listen = \"127.0.0.1:0\"\n\ntimeout-ms = \"soon\"\n").unwrap();
    let (ok, err) = run(&["standby", "--config", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("standby.toml:3: timeout-ms:") && err.contains("soon"),
        "{err}"
    );
    std::fs::write(
        &f,
        "listen = \"127.0.0.1:0\"\nkey-file = \"/nonexistent/key\"\narbiter = \"none\"\n",
    )
    .unwrap();
    // Every option came from the file: the error is about the key file's content.
    let (ok, err) = run(&["standby", "--config", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/key"), "{err}");
    let (ok, err) = run(&["run", "--config", d.path("missing.toml").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}
