//! The one codec of an epoch's state sections (Config, Vcpus, Vm, Devices,
//! Console), shared by local checkpoints, the replication stream and
//! restore. Memory sections are the page codec's (`checkpoint::pages`).

use std::io::Write;

use checkpoint::fingerprint::MachineConfig;
use checkpoint::format::{CheckpointWriter, SectionId};
use checkpoint::kvm_state::{VcpuState, VmState};
use checkpoint::{devices, CheckpointError, DeviceRecord};

use crate::error::{EngineError, Result};

/// The non-memory part of a checkpoint.
#[derive(Clone, Debug)]
pub struct EpochState {
    /// vCPU states.
    pub vcpus: Vec<VcpuState>,
    /// In-kernel irqchip, PIT, clock.
    pub vm: VmState,
    /// Every emulated device's record.
    pub devices: Vec<DeviceRecord>,
    /// Console bytes emitted up to this point.
    pub console_pos: u64,
    /// The console bytes of this epoch (ending at `console_pos`) that may
    /// not have been shown yet: a restore emits them again (local
    /// checkpoints; empty on the replication stream, whose `EpochEnd`
    /// carries them).
    pub output: Vec<u8>,
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain data into a growable Vec has no failure mode.
    postcard::to_stdvec(v).expect("postcard encoding into a Vec cannot fail")
}

/// The payload of a Vcpus section.
pub fn encode_vcpus(vcpus: &[VcpuState]) -> Vec<u8> {
    enc(&vcpus)
}

/// The payload of a Vm section.
pub fn encode_vm(vm: &VmState) -> Vec<u8> {
    enc(vm)
}

/// Decodes a whole state section: bytes after the value are refused, as
/// in every other section (`postcard::from_bytes` would ignore them), and
/// so is any payload that is not exactly what the writer produces for the
/// value it decodes to. kvm-bindings decodes a KVM struct from a byte
/// string of any length, zero-padding or truncating it, so without that
/// check a section with a short `kvm_regs` would restore zeroed registers
/// instead of being refused.
fn dec<'a, T: serde::Deserialize<'a> + serde::Serialize>(
    what: &str,
    payload: &'a [u8],
) -> std::result::Result<T, CheckpointError> {
    let (v, rest) = postcard::take_from_bytes(payload).map_err(|e| decode_err(what, e))?;
    if !rest.is_empty() {
        return Err(CheckpointError::Decode(format!(
            "{what} section: {} bytes follow the state",
            rest.len()
        )));
    }
    if enc(&v) != payload {
        return Err(CheckpointError::Decode(format!(
            "{what} section is not in canonical form (a KVM structure of the wrong size, \
             or an integer in more bytes than needed)"
        )));
    }
    Ok(v)
}

/// Decodes a Vcpus section payload; trailing bytes and non-canonical
/// encodings are errors.
pub fn decode_vcpus(payload: &[u8]) -> std::result::Result<Vec<VcpuState>, CheckpointError> {
    dec("Vcpus", payload)
}

/// Decodes a Vm section payload; trailing bytes and non-canonical encodings
/// are errors.
pub fn decode_vm(payload: &[u8]) -> std::result::Result<VmState, CheckpointError> {
    dec("Vm", payload)
}

/// Writes the Config section and the state sections of `state`.
pub fn write_state<W: Write>(
    w: &mut CheckpointWriter<W>,
    machine: &MachineConfig,
    state: &EpochState,
) -> Result<()> {
    w.write_section(SectionId::Config, &machine.encode())?;
    w.write_section(SectionId::Vcpus, &encode_vcpus(&state.vcpus))?;
    w.write_section(SectionId::Vm, &encode_vm(&state.vm))?;
    w.write_section(SectionId::Devices, &devices::encode(&state.devices)?)?;
    let mut console = state.console_pos.to_le_bytes().to_vec();
    console.extend_from_slice(&state.output);
    w.write_section(SectionId::Console, &console)?;
    Ok(())
}

/// Splits a Console payload: the position, then the epoch's output bytes
/// (which end at the position, so there cannot be more of them).
pub fn decode_console(payload: &[u8]) -> std::result::Result<(u64, &[u8]), CheckpointError> {
    if payload.len() < 8 {
        return Err(CheckpointError::Decode(format!(
            "Console section is {} bytes, at least 8 needed",
            payload.len()
        )));
    }
    let pos = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let out = &payload[8..];
    if out.len() as u64 > pos {
        return Err(CheckpointError::Decode(format!(
            "Console section holds {} output bytes ending at byte {pos}",
            out.len()
        )));
    }
    Ok((pos, out))
}

/// The state sections of one checkpoint as they are read.
#[derive(Default)]
pub struct StateSections {
    /// The Config section, if present.
    pub config: Option<MachineConfig>,
    vcpus: Option<Vec<VcpuState>>,
    vm: Option<VmState>,
    devices: Option<Vec<DeviceRecord>>,
    console: Option<(u64, Vec<u8>)>,
}

fn decode_err(what: &str, e: postcard::Error) -> CheckpointError {
    CheckpointError::Decode(format!("{what} section does not decode: {e}"))
}

impl StateSections {
    /// Decodes a state section into `self`. Memory, Disk and End sections
    /// are not state: they are left to the caller, and `false` says so.
    pub fn take(
        &mut self,
        id: SectionId,
        payload: &[u8],
    ) -> std::result::Result<bool, CheckpointError> {
        match id {
            SectionId::Config => self.config = Some(MachineConfig::decode(payload)?),
            SectionId::Vcpus => self.vcpus = Some(decode_vcpus(payload)?),
            SectionId::Vm => self.vm = Some(decode_vm(payload)?),
            SectionId::Devices => self.devices = Some(devices::decode(payload)?),
            SectionId::Console => {
                let (pos, out) = decode_console(payload)?;
                self.console = Some((pos, out.to_vec()));
            }
            SectionId::Memory | SectionId::Disk | SectionId::End => return Ok(false),
        }
        Ok(true)
    }

    /// The complete state; an error names the first missing section (a
    /// memory-only pre-copy container has none).
    pub fn state(&self) -> Result<EpochState> {
        let missing =
            |s: &str| EngineError::Checkpoint(CheckpointError::Decode(format!("no {s} section")));
        Ok(EpochState {
            vcpus: self.vcpus.clone().ok_or_else(|| missing("Vcpus"))?,
            vm: self.vm.clone().ok_or_else(|| missing("Vm"))?,
            devices: self.devices.clone().ok_or_else(|| missing("Devices"))?,
            console_pos: self.console.as_ref().ok_or_else(|| missing("Console"))?.0,
            output: self
                .console
                .as_ref()
                .map(|c| c.1.clone())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(id: u32) -> VcpuState {
        VcpuState {
            id,
            cpuid: vec![Default::default(); 2],
            regs: Default::default(),
            sregs: Default::default(),
            xsave: vec![7; 1024],
            xcrs: Default::default(),
            msrs: vec![(0x10, 1), (0xc000_0080, 0x500)],
            lapic: Default::default(),
            events: Default::default(),
            debugregs: Default::default(),
            mp_state: Default::default(),
        }
    }

    fn vm() -> VmState {
        VmState {
            irqchips: vec![Default::default(); 3],
            pit: Default::default(),
            clock: Default::default(),
        }
    }

    #[test]
    fn state_sections_round_trip_and_refuse_trailing_bytes() {
        let v = encode_vcpus(&[vcpu(0), vcpu(1)]);
        let back = decode_vcpus(&v).unwrap();
        assert_eq!(back.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(encode_vcpus(&back), v);
        let m = encode_vm(&vm());
        assert_eq!(encode_vm(&decode_vm(&m).unwrap()), m);
        // Found while writing the state_codec fuzz target: bytes after the
        // value were silently ignored, unlike in every other section.
        for (what, mut b) in [("Vcpus", v), ("Vm", m)] {
            b.push(0);
            let e = match what {
                "Vcpus" => decode_vcpus(&b).map(|_| ()),
                _ => decode_vm(&b).map(|_| ()),
            }
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(&format!("{what} section: 1 bytes follow")),
                "{e}"
            );
            let mut s = StateSections::default();
            let id = if what == "Vcpus" {
                SectionId::Vcpus
            } else {
                SectionId::Vm
            };
            assert!(s.take(id, &b).is_err());
        }
    }

    /// `VmState` as postcard sees it: every KVM struct is a byte string.
    #[derive(serde::Serialize)]
    struct RawVm {
        irqchips: Vec<Vec<u8>>,
        pit: Vec<u8>,
        clock: Vec<u8>,
    }

    #[test]
    fn kvm_structs_of_the_wrong_size_are_refused() {
        let size = |v: &VmState| {
            (
                encode_vm(v).len(),
                std::mem::size_of::<kvm_bindings::kvm_irqchip>(),
                std::mem::size_of::<kvm_bindings::kvm_pit_state2>(),
                std::mem::size_of::<kvm_bindings::kvm_clock_data>(),
            )
        };
        let (_, chip, pit, clock) = size(&vm());
        let raw = |clock_len: usize| {
            postcard::to_stdvec(&RawVm {
                irqchips: vec![vec![0; chip]; 3],
                pit: vec![0; pit],
                clock: vec![0; clock_len],
            })
            .unwrap()
        };
        assert_eq!(
            raw(clock),
            encode_vm(&vm()),
            "the mirror is VmState's layout"
        );
        // kvm-bindings would zero-pad the short clock and drop the extra
        // byte of the long one: both are refused.
        for n in [1, clock - 1, clock + 1] {
            let e = decode_vm(&raw(n)).unwrap_err().to_string();
            assert!(e.contains("not in canonical form"), "{n}: {e}");
        }
        // So is a count in more bytes than needed (3 as 0x83 0x00).
        let mut b = encode_vm(&vm());
        assert_eq!(b[0], 3);
        b.splice(0..1, [0x83, 0x00]);
        assert!(decode_vm(&b).is_err());
    }
}
