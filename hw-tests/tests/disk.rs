//! virtio-blk on real KVM: the `diskcheck` guest drives the device over
//! virtio-mmio version 2, found through `virtio_mmio.device=` on its command
//! line, polling the used ring; it checks every block it reads against the
//! version its memory recorded. The image persists from one run to the
//! next, survives a SIGKILL of the VMM, and is checked against QEMU's
//! virtio-blk when QEMU is installed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TempDir;

fn image(dir: &TempDir, name: &str, bytes: u64) -> std::path::PathBuf {
    let p = dir.path(name);
    std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
    p
}

fn run(disk: &str, cmdline: &str) -> Output {
    Command::new(common::hotspare())
        .args(["run", "--kernel"])
        .arg(hw_tests::guest_path("diskcheck"))
        .args(["--mem-mib", "64", "--disk", disk, "--cmdline", cmdline])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `digest=` of the line starting with `prefix`.
fn digest(out: &str, prefix: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("digest="))
        .unwrap_or_else(|| panic!("no digest in {line:?}"))
        .to_string()
}

fn ok_run(disk: &Path, cmdline: &str) -> String {
    let o = run(disk.to_str().unwrap(), cmdline);
    let out = text(&o);
    assert!(
        o.status.success() && out.contains("result=ok"),
        "diskcheck failed ({}):\n{out}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn the_guest_drives_virtio_blk_and_the_next_run_verifies_every_block() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk");
    let img = image(&dir, "d.img", 64 << 20);
    let first = ok_run(&img, "blocks=512 ops=3000");
    assert!(
        first.starts_with("diskcheck device base=d0000000 capacity=131072\n"),
        "{first}"
    );
    assert!(
        first.contains("diskcheck scan blocks=512 written=0 "),
        "{first}"
    );
    // The next boot finds the disk exactly as the first run's memory left it.
    let second = ok_run(&img, "blocks=512 ops=1000 seed=2");
    assert!(!second.contains("written=0 "), "{second}");
    assert_eq!(
        digest(&second, "diskcheck scan"),
        digest(&first, "diskcheck done"),
        "the image does not hold what the first run wrote"
    );
    // Sparse stays sparse: 512 blocks of 4 KiB (2 MiB) at most, of 64 MiB.
    let used = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(used <= 4 << 20, "image uses {used} bytes");
}

#[test]
fn a_killed_vmm_leaves_a_disk_whose_every_block_is_whole() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-kill");
    let img = image(&dir, "d.img", 16 << 20);
    let mut rng = common::Rng::from_env("disk-kill");
    for trial in 0..5 {
        let mut child = Command::new(common::hotspare())
            .args(["run", "--kernel"])
            .arg(hw_tests::guest_path("diskcheck"))
            .args(["--mem-mib", "64", "--disk"])
            .arg(&img)
            .args(["--cmdline", "blocks=256 ops=1000000", "--console"])
            .arg(dir.path("console.txt"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
        child.kill().unwrap();
        child.wait().unwrap();
        // A new boot scans every block: each must be a whole version.
        let out = ok_run(&img, "blocks=256 ops=10");
        assert!(
            out.contains("diskcheck scan blocks=256"),
            "trial {trial}: {out}"
        );
    }
}

#[test]
fn a_read_only_disk_refuses_the_guest_writes() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-ro");
    let img = image(&dir, "d.img", 4 << 20);
    let o = run(&format!("{},readonly", img.display()), "ops=5");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    // Reads work (the scan passes); the first write gets VIRTIO_BLK_S_IOERR.
    assert!(out.contains("diskcheck scan blocks=256 written=0"), "{out}");
    assert!(
        out.contains("what=status expected=0000000000000000 got=0000000000000001"),
        "{out}"
    );
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn bad_disk_options_are_clear_errors() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-err");
    let missing = dir.path("missing.img");
    let o = run(missing.to_str().unwrap(), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("virtio-blk.0") && err.contains("missing.img") && err.contains("cannot open"),
        "{err}"
    );
    let odd = dir.path("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let o = run(odd.to_str().unwrap(), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a non-zero multiple of 512"), "{err}");
    let o = run(&format!("{},rw", odd.display()), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown option \"rw\""), "{err}");
}

/// QEMU's microvm with its own virtio-blk-device, if QEMU is installed.
fn qemu(img: &Path, cmdline: &str) -> Option<Output> {
    let mut c = common::qemu_microvm("diskcheck", cmdline)?;
    c.args(["-serial", "stdio", "-drive"])
        .arg(format!(
            "id=d0,file={},format=raw,if=none,cache=writeback",
            img.display()
        ))
        .args(["-device", "virtio-blk-device,drive=d0"]);
    Some(c.output().unwrap())
}

#[test]
fn the_guest_and_the_device_agree_with_qemu() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-qemu");
    let img = image(&dir, "d.img", 16 << 20);
    // QEMU's device writes, hotspare's reads and verifies, and back.
    let Some(q1) = qemu(&img, "blocks=256 ops=500") else {
        return;
    };
    let q1 = text(&q1);
    assert!(
        q1.contains("result=ok"),
        "the guest failed under QEMU:\n{q1}"
    );
    assert!(q1.contains("diskcheck device base=feb0"), "{q1}");
    let ours = ok_run(&img, "blocks=256 ops=500 seed=3");
    assert_eq!(
        digest(&ours, "diskcheck scan"),
        digest(&q1, "diskcheck done")
    );
    let q2 = text(&qemu(&img, "blocks=256 ops=10 seed=4").unwrap());
    assert!(q2.contains("result=ok"), "{q2}");
    assert_eq!(
        digest(&q2, "diskcheck scan"),
        digest(&ours, "diskcheck done")
    );
}

/// Local checkpoints of a VM with a disk: SIGKILL at random moments (the
/// restored process is killed too, every other trial), `hotspare restore`
/// until the guest finishes. The console must continue the reference
/// exactly, the guest checks every block it reads against its memory (a
/// disk restored ahead of or behind its memory fails it), and the image
/// then holds exactly the guest's final versions.
#[test]
fn local_checkpoints_restore_the_disk_with_the_memory() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-local");
    let cmdline = "blocks=256 ops=8000 every=200";
    let ref_img = image(&dir, "ref.img", 8 << 20);
    let mut refspec = common::GuestSpec::new("diskcheck", cmdline);
    refspec.mem_mib = 64;
    refspec.run_extra = vec!["--disk".into(), ref_img.to_string_lossy().into()];
    let (reference, took) = common::reference(&refspec);
    let want = digest(&String::from_utf8_lossy(&reference), "diskcheck done");
    let img = dir.path("vm.img");
    let mut spec = refspec.clone();
    spec.run_extra = vec!["--disk".into(), img.to_string_lossy().into()];
    let mut rng = common::Rng::from_env("disk-local");
    let mut kills = 0;
    for trial in 0..5 {
        // A fresh image for each run of the guest.
        let _ = std::fs::remove_file(&img);
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        // Kills are drawn from the first half of the reference's run time, so
        // they land mid-run even when this run is faster than the reference
        // was (which was measured while other tests ran).
        let t = common::kill_restore_trial(&spec, &reference, took / 2, 20, trial % 2, &mut rng);
        kills += t.kills;
        let out = ok_run(&img, "blocks=256 ops=0");
        assert_eq!(
            digest(&out, "diskcheck scan"),
            want,
            "trial {trial}: the image is out of step"
        );
    }
    assert!(kills >= 3, "only {kills} kills in 5 trials");
}
