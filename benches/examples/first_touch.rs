//! What the host charges for guest memory a shadow writes for the first
//! time: fresh `engine::memory::Ram` (a memfd mapping, as a standby builds
//! for the VM it shadows), one byte written per 4 KiB page, against the
//! same writes into memory populated ahead (`Ram::populate`, what
//! `hotspare standby --reserve-mib` does before it listens).
//!
//! Each rep creates new memory, so whether the host hands out pages it
//! touched before ("warm") or pages its own hypervisor must first provide
//! ("cold": on the development machine, a VM whose freed memory is
//! reported back to its host in 8 MiB blocks) varies from rep to rep; the
//! reps show the spread.
//!
//! Then single zero pages of populated memory: a hole punched for each,
//! against zeros written (`Ram::zero_range` below `PUNCH_MIN`).
//!
//! Run: `cargo run --release -p benches --example first_touch [MIB] [REPS]`
//! (default 1024 MiB, 3 reps).

use std::time::Instant;

use engine::memory::Ram;

const PAGE: u64 = 4096;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(Ok(1024), |a| a.parse())?;
    let reps: u32 = args.next().map_or(Ok(3), |a| a.parse())?;
    let bytes = mib << 20;
    let pages = bytes / PAGE;
    println!("{mib} MiB, {pages} pages per rep, {reps} reps");
    for rep in 0..reps {
        // Fresh memory, written page by page: the fault and the host's
        // allocation land on the writer (a shadow applying a live copy).
        let ram = Ram::new(bytes)?;
        let t = Instant::now();
        touch(&ram)?;
        let fresh = t.elapsed().as_secs_f64();
        drop(ram);
        // Populated ahead, then written: the writer pays no fault.
        let ram = Ram::new(bytes)?;
        let t = Instant::now();
        ram.populate()?;
        let populate = t.elapsed().as_secs_f64();
        let t = Instant::now();
        touch(&ram)?;
        let after = t.elapsed().as_secs_f64();
        let us = |s: f64| s * 1e6 / pages as f64;
        println!(
            "rep {rep}: fresh {fresh:.3} s ({:.2} us/page) | populate {populate:.3} s ({:.2} us/page), then written {after:.3} s ({:.3} us/page)",
            us(fresh),
            us(populate),
            us(after)
        );
        // Single zero pages (every fourth page) of that populated memory,
        // as a running guest's epochs bring them: a hole punched for
        // each, against zeros written (what `Ram::zero_range` does below
        // `PUNCH_MIN`).
        let quarter = pages / 4;
        let t = Instant::now();
        zero_every_fourth(&ram, 0)?;
        let punched = t.elapsed().as_secs_f64();
        touch(&ram)?;
        let t = Instant::now();
        zero_every_fourth(&ram, u64::MAX)?;
        let written = t.elapsed().as_secs_f64();
        let per = |s: f64| s * 1e6 / quarter as f64;
        println!(
            "       single zero pages: punched {:.2} us/page, written {:.3} us/page",
            per(punched),
            per(written)
        );
    }
    Ok(())
}

/// Zeroes every fourth page of `ram` one page at a time, punching a hole
/// for each when `punch_min` is a page or less, writing zeros otherwise.
fn zero_every_fourth(ram: &Ram, punch_min: u64) -> anyhow::Result<()> {
    for gpa in pages(ram, 4) {
        ram.zero_by(gpa, PAGE, punch_min)?;
    }
    Ok(())
}

/// Writes one byte into every page of `ram`, in address order.
fn touch(ram: &Ram) -> anyhow::Result<()> {
    for gpa in pages(ram, 1) {
        ram.write(gpa, &[1])?;
    }
    Ok(())
}

/// The address of every `every`-th page of `ram`, region by region, in
/// address order (guest memory past 3 GiB lies above the MMIO hole).
fn pages(ram: &Ram, every: u64) -> impl Iterator<Item = u64> {
    ram.layout()
        .into_iter()
        .flat_map(move |r| (r.guest_addr..r.guest_addr + r.size).step_by((every * PAGE) as usize))
}
