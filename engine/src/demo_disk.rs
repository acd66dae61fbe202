//! The disk half of `hotspare demo`: a guest with a persistent virtio-blk
//! disk fails over, and its disk is verified afterwards.
//!
//! The bundled `diskcheck` guest checks every block it reads against the
//! version its memory recorded (a disk out of step with memory makes it
//! print FAIL). The demo runs it once unprotected for the reference, then
//! protected with a replica on the standby, SIGKILLs the primary mid-run,
//! lets the standby finish the guest on the replica, and finally boots the
//! replica as a new VM: its full scan must find every block at exactly the
//! version the guest's memory ended with.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::demo::{check_continuity, guest_run, spawn_standby, Child};

/// The bundled disk-checking guest.
pub const GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/diskcheck.elf"));

const CMDLINE: &str = "blocks=1024 ops=20000 every=1000";
const DISK_BYTES: u64 = 64 << 20;

fn image(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(DISK_BYTES))
        .with_context(|| format!("creating {}", path.display()))
}

fn digest<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .find(|l| l.starts_with(prefix))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("digest="))
}

/// Runs the disk failover demo in `dir` with the standby key `key`.
pub fn disk_demo(exe: &Path, dir: &Path, key: &Path, interval_ms: u64) -> anyhow::Result<()> {
    let guest = dir.join("diskcheck.elf");
    std::fs::write(&guest, GUEST).context("writing the disk guest")?;
    let f = |n: &str| dir.join(n);
    for n in [
        "disk-reference.txt",
        "disk-primary.txt",
        "disk-shadow.txt",
        "disk-verify.txt",
    ] {
        let _ = std::fs::remove_file(f(n));
    }
    let run = |disk: &Path, console: &Path, cmdline: &str| {
        let mut c = guest_run(exe, &guest, 64, cmdline, console);
        c.arg("--disk").arg(disk);
        c
    };
    println!(
        "[5/7] disk: reference run of the disk-checking guest on a fresh 64 MiB sparse image..."
    );
    image(&f("reference.img"))?;
    let t = Instant::now();
    let st = run(&f("reference.img"), &f("disk-reference.txt"), CMDLINE).status()?;
    let reference = std::fs::read(f("disk-reference.txt"))?;
    if !st.success() {
        bail!("the disk reference run failed: {st}");
    }
    println!(
        "      {} bytes of output in {:.2?}",
        reference.len(),
        t.elapsed()
    );

    println!(
        "[6/7] disk: protected primary (disk.img) and standby (replica.img); SIGKILL mid-run..."
    );
    image(&f("disk.img"))?;
    image(&f("replica.img"))?;
    let replica = f("replica.img");
    let (mut standby, addr) = spawn_standby(
        exe,
        key,
        &f("disk-shadow.txt"),
        &["--disk".as_ref(), replica.as_os_str()],
    )?;
    let mut primary = Child::spawn(
        run(&f("disk.img"), &f("disk-primary.txt"), CMDLINE)
            .arg("--shadow")
            .arg(&addr)
            .arg("--key-file")
            .arg(key)
            .arg("--arbiter")
            .arg(crate::demo::arbiter_arg(key))
            .arg("--vm-id")
            .arg("demo-disk")
            .arg("--interval-ms")
            .arg(interval_ms.to_string()),
    )?;
    standby.wait_in_sync(Duration::from_secs(30))?;
    // Kill once a third to two thirds of the output has been released.
    let target = reference.len() as u64 * crate::demo::random_ms(33, 67) / 100;
    let end = Instant::now() + Duration::from_secs(60);
    while primary.child.try_wait()?.is_none()
        && std::fs::metadata(f("disk-primary.txt")).map_or(0, |m| m.len()) < target
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    if primary.child.try_wait()?.is_some() {
        bail!("the disk primary finished before the kill");
    }
    primary
        .child
        .kill()
        .context("SIGKILL of the disk primary")?;
    let _ = primary.child.wait();
    let first = std::fs::read(f("disk-primary.txt")).unwrap_or_default();
    println!(
        "      primary killed with {} bytes of output released",
        first.len()
    );
    let end = Instant::now() + Duration::from_secs(120);
    while standby.child.try_wait()?.is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = standby.child.wait()?;
    let take = standby.line("TAKING OVER").unwrap_or_default();
    if !status.success() || standby.took_over_at()?.is_none() {
        bail!(
            "the disk standby did not take over cleanly ({status}):\n{}",
            standby.all()
        );
    }
    println!("      {}", take.trim_start_matches("hotspare: "));
    let second = std::fs::read(f("disk-shadow.txt"))?;
    let repeated = check_continuity(&reference, &first, &second)?;
    let text = String::from_utf8_lossy(&reference).into_owned();
    let want = digest(&text, "diskcheck done").context("no final digest in the reference")?;
    if !String::from_utf8_lossy(&second).contains("result=ok") {
        bail!("the guest found its disk out of step with its memory after the takeover");
    }
    println!(
        "      console continuous ({repeated} bytes repeated at the boundary); every block the guest read matched its memory"
    );

    println!("[7/7] disk: boot the replica as a new VM and verify every block...");
    let st = run(
        &f("replica.img"),
        &f("disk-verify.txt"),
        "blocks=1024 ops=0",
    )
    .status()?;
    let verify = String::from_utf8_lossy(&std::fs::read(f("disk-verify.txt"))?).into_owned();
    let got = digest(&verify, "diskcheck scan").unwrap_or("none");
    if !st.success() || got != want {
        bail!("the replica does not hold the guest's final disk (scan digest {got}, expected {want}):\n{verify}");
    }
    let used = std::fs::metadata(f("replica.img")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    })?;
    println!(
        "      every block verified: scan digest {got} = the guest's final digest; replica uses {:.1} of 64 MiB (sparse)",
        used as f64 / (1 << 20) as f64
    );
    Ok(())
}
