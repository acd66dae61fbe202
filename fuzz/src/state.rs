//! `state_codec`: the state sections (`engine::snapshot`): vCPU and VM
//! state (KVM structs), the machine configuration and the console.
//!
//! Input: a selector byte (which section), then its payload. Checks that
//! whatever decodes is exactly what the writer produces for the decoded
//! value (re-encoding gives the input back, so decoding it again gives the
//! same value), and that `StateSections`, the standby's reader, accepts
//! exactly what the section decoder accepts.

use checkpoint::fingerprint::MachineConfig;
use checkpoint::format::SectionId;
use engine::snapshot::{self, StateSections};

/// The sections, in selector order.
pub const SECTIONS: [SectionId; 4] = [
    SectionId::Vcpus,
    SectionId::Vm,
    SectionId::Config,
    SectionId::Console,
];

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let id = SECTIONS[usize::from(sel) % SECTIONS.len()];
    let ok = match id {
        SectionId::Vcpus => snapshot::decode_vcpus(payload)
            .map(|v| {
                let e = snapshot::encode_vcpus(&v);
                assert_eq!(e, payload, "Vcpus: re-encoding changed the bytes");
                let again = snapshot::decode_vcpus(&e).expect("Vcpus: re-encoded state decodes");
                assert_eq!(snapshot::encode_vcpus(&again), e);
            })
            .is_ok(),
        SectionId::Vm => snapshot::decode_vm(payload)
            .map(|v| {
                let e = snapshot::encode_vm(&v);
                assert_eq!(e, payload, "Vm: re-encoding changed the bytes");
                let again = snapshot::decode_vm(&e).expect("Vm: re-encoded state decodes");
                assert_eq!(snapshot::encode_vm(&again), e);
            })
            .is_ok(),
        SectionId::Config => MachineConfig::decode(payload)
            .map(|c| {
                let e = c.encode();
                assert!(e.len() <= payload.len(), "Config: the encoding grew");
                let again = MachineConfig::decode(&e).expect("Config: re-encoded config decodes");
                assert_eq!(again, c, "Config: round trip changed the value");
                assert_eq!(again.fingerprint(), c.fingerprint());
            })
            .is_ok(),
        _ => snapshot::decode_console(payload)
            .map(|(pos, out)| {
                assert!(
                    out.len() as u64 <= pos,
                    "Console: more output than its position"
                );
                let mut e = pos.to_le_bytes().to_vec();
                e.extend_from_slice(out);
                assert_eq!(e, payload, "Console: re-encoding changed the bytes");
            })
            .is_ok(),
    };
    let mut sections = StateSections::default();
    assert_eq!(
        sections.take(id, payload).is_ok(),
        ok,
        "StateSections disagrees with the {id} decoder"
    );
}
