//! Typed errors of the engine library.

use std::path::PathBuf;

/// Everything that can go wrong running, checkpointing or restoring a VM.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The KVM device does not exist.
    #[error("{0} not found: this host has no KVM (load kvm_intel or kvm_amd, or run on a KVM-capable host)")]
    NoKvm(PathBuf),
    /// The KVM device exists but cannot be opened.
    #[error("cannot open {0}: permission denied (run as root or add the user to the 'kvm' group)")]
    KvmPermission(PathBuf),
    /// The device is not a KVM device.
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed)")]
    NotKvm(PathBuf),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// The KVM API version or a required capability is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A configuration value is not acceptable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An internal call broke its contract (a bug in the caller, reported
    /// instead of acting on the wrong data).
    #[error("internal error: {0}")]
    Misuse(&'static str),
    /// The kernel image could not be read or is not a supported format.
    #[error("kernel image {path}: {msg}")]
    Image {
        /// The image path.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A vCPU thread failed or the pause protocol timed out.
    #[error("vCPU: {0}")]
    Vcpu(String),
    /// KVM state capture or restore failed.
    #[error(transparent)]
    State(#[from] checkpoint::kvm_state::StateError),
    /// A checkpoint could not be written, read or verified.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A checkpoint directory problem (no checkpoint, broken chain...).
    #[error("checkpoint directory {dir}: {msg}")]
    Store {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A device could not be created, or a device record was refused.
    #[error(transparent)]
    Devices(#[from] crate::devices::DeviceError),
    /// The primary's disk failed while a shadow holds a committed state:
    /// the process must end without telling the shadow the guest stopped,
    /// so that the shadow takes over (its disk is healthy).
    #[error("the primary's disk failed ({0}); handing the VM over to the shadow")]
    HandOver(String),
    /// The replication stream failed or a peer was refused.
    /// Another copy owns the VM now (the arbiter or the new primary said
    /// so): the guest stops without releasing held output.
    #[error("this primary was superseded ({0}); its guest stops without releasing held output")]
    Superseded(String),

    /// A thread panicked while it held the standby's shadow (applying an
    /// epoch): what the shadow holds may be half-applied.
    #[error("the shadow is poisoned: a thread panicked while it held the shadow (applying an epoch), so its memory, replicas and state may be half-applied; this standby refuses to take over from it and exits")]
    ShadowPoisoned,
    /// A link to a spare ended its work early (the spare or the
    /// encoder is gone).
    #[error("link to a spare: {0}")]
    Link(String),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// Plain I/O error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl EngineError {
    /// Wraps a KVM error with the name of the operation.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> EngineError {
        move |source| EngineError::Kvm { op, source }
    }

    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let context = context.into();
        move |source| EngineError::Io { context, source }
    }
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
