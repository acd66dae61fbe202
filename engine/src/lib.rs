//! hotspare engine: the VMM that runs guests on KVM, local checkpointing and
//! restore, the replication loop and failover.

pub mod boot;
pub mod capture;
pub mod checkpointer;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod etcd;
pub mod events;
pub mod faults;
pub mod memory;
pub mod replication;
pub mod restore;
pub mod runner;
pub mod service;
pub mod snapshot;
pub mod sparse_bitmap;
pub mod staged;
pub mod store;
pub mod store_disks;
pub mod store_end;
pub mod vcpu;
pub mod vm;

pub use error::{EngineError, Result};
