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
    }
    Ok(())
}

/// Writes one byte into every page of `ram`, in address order (guest
/// memory past 3 GiB lies above the MMIO hole).
fn touch(ram: &Ram) -> anyhow::Result<()> {
    for r in ram.layout() {
        let mut gpa = r.guest_addr;
        while gpa < r.guest_addr + r.size {
            ram.write(gpa, &[1])?;
            gpa += PAGE;
        }
    }
    Ok(())
}
