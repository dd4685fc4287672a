//! `dtm`: transactions that land one client write atomically on every replica vSSD of
//! a cache device (writep1 on all, then commit; abort on failure).
//!
//! Renders the seed's dtm.c. It must never acknowledge a write before every replica
//! of the device's epoch holds it durably.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod copy;
pub mod error;
pub mod local;
pub mod peer;
pub mod recovery;
pub mod remote;
pub mod replica;

pub use copy::{Copied, copy_line};
pub use error::DtmError;
pub use local::LocalReplica;
pub use peer::{ReplicaService, Vssds};
pub use recovery::{Recovery, recover};
pub use remote::RemoteReplica;
pub use replica::{InDoubtTran, Replica, ReplicaError, ReplicaErrorKind, ReplicaInfo};
