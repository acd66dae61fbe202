//! The conformance tests every device runs (crosvm's `suspendable_tests!`
//! is the model).
//!
//! `device_conformance_tests!(name, make, change)` generates a test module:
//! - save, change the device with `change`, restore the first record, save
//!   again: the two records are equal (and the change did change the state,
//!   or the test would prove nothing);
//! - a record with another device's id, a newer version or undecodable
//!   bytes is refused with the matching error, and leaves the device as it
//!   was.
//!
//! `device_conformance_tests!(name, make)` is the form for stateless
//! devices: only the refusals and the identity restore are checked.

macro_rules! device_conformance_tests {
    ($name:ident, $make:expr, $change:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::devices::Device;

            #[test]
            fn save_change_restore_save_gives_the_first_record() {
                let mut dev = $make;
                let first = Device::save(&dev);
                let change: &dyn Fn(&mut _) = &$change;
                change(&mut dev);
                let changed = Device::save(&dev);
                assert_ne!(first, changed, "the change did not alter the saved state");
                Device::restore(&mut dev, &first).expect("restoring its own record");
                assert_eq!(Device::save(&dev), first);
            }

            $crate::devices::conformance::refusals!($make);
        }
    };
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::devices::Device;

            #[test]
            fn restoring_its_own_record_is_the_identity() {
                let mut dev = $make;
                let first = Device::save(&dev);
                Device::restore(&mut dev, &first).expect("restoring its own record");
                assert_eq!(Device::save(&dev), first);
            }

            $crate::devices::conformance::refusals!($make);
        }
    };
}

macro_rules! refusals {
    ($make:expr) => {
        #[test]
        fn foreign_newer_and_garbled_records_are_refused() {
            use $crate::devices::DeviceError;
            let mut dev = $make;
            let first = Device::save(&dev);
            let mut other = first.clone();
            other.id = "no-such.device".into();
            let e = Device::restore(&mut dev, &other).unwrap_err();
            assert!(matches!(e, DeviceError::WrongRecord { .. }), "{e}");
            let mut newer = first.clone();
            newer.version += 1;
            let e = Device::restore(&mut dev, &newer).unwrap_err();
            assert!(matches!(e, DeviceError::NewerVersion { .. }), "{e}");
            assert!(e.to_string().contains(&first.id), "{e}");
            let mut garbled = first.clone();
            garbled.data.extend_from_slice(&[0xff; 3]);
            let e = Device::restore(&mut dev, &garbled).unwrap_err();
            assert!(matches!(e, DeviceError::BadRecord { .. }), "{e}");
            assert_eq!(
                Device::save(&dev),
                first,
                "a refused record changed the device"
            );
        }
    };
}

pub(crate) use device_conformance_tests;
pub(crate) use refusals;
