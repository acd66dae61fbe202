//! The platform's stateless ports: ISA debug-exit and the i8042 reset line.

use super::{open_record, record, BusAction, Device, DeviceError, DeviceRecord};

/// ISA debug-exit port: a byte written here ends the run with that status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// i8042 command port; writing 0xfe pulses the CPU reset line.
pub const I8042_CMD_PORT: u16 = 0x64;

/// The ISA debug-exit port (`platform.debug-exit`).
pub struct DebugExit;

/// The i8042's command port, decoding only the reset pulse (`platform.i8042`).
pub struct I8042;

macro_rules! stateless_record {
    () => {
        fn save(&self) -> DeviceRecord {
            record(self.id(), 1, &())
        }

        fn restore(&mut self, rec: &DeviceRecord) -> Result<(), DeviceError> {
            open_record::<()>(self.id(), 1, rec)
        }
    };
}

impl Device for DebugExit {
    fn id(&self) -> &str {
        "platform.debug-exit"
    }

    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _: u64, data: &[u8]) -> BusAction {
        data.first()
            .map_or(BusAction::Continue, |&b| BusAction::Exit(b))
    }

    stateless_record!();
}

impl Device for I8042 {
    fn id(&self) -> &str {
        "platform.i8042"
    }

    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0); // status: nothing pending
    }

    fn write(&mut self, _: u64, data: &[u8]) -> BusAction {
        if data.first() == Some(&0xfe) {
            BusAction::Reset
        } else {
            BusAction::Continue
        }
    }

    stateless_record!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::conformance::device_conformance_tests;

    device_conformance_tests!(debug_exit, DebugExit);
    device_conformance_tests!(i8042, I8042);

    #[test]
    fn exit_and_reset() {
        assert_eq!(DebugExit.write(0, &[7]), BusAction::Exit(7));
        assert_eq!(I8042.write(0, &[0xfe]), BusAction::Reset);
        assert_eq!(I8042.write(0, &[0xfd]), BusAction::Continue);
    }
}
