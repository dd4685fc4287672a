//! `dtm`: transactions that land one client write atomically on every replica vSSD of
//! a cache device (writep1 on all, then commit; abort on failure).
//!
//! Renders the seed's dtm.c. It must never acknowledge a write before every replica
//! of the device's epoch holds it durably.
//!
//! Its parts: [`replica`] (the seam to one replica vSSD), [`local`] (a replica on
//! this runtime's vSSD), [`peer`] and [`remote`] (a replica on a peer CVA over rpc:
//! its server and its client), [`copy`] (one dirty line copied between replicas at
//! its version), [`dtm`] (the DTM of one device: writes, the loss policy, reads,
//! clean and discard), `lock` (range locks and write slots), `commit` (lazy batched
//! COMMITs), [`resync`] (a returning replica brought up to date), [`recovery`] (the
//! in-doubt trans of every replica resolved at open), [`remote`] (a replica on a
//! peer, over rpc) and [`peer`] (the service that serves it), [`config`] and
//! [`error`].
#![deny(unsafe_op_in_unsafe_fn)]

mod commit;
pub mod config;
pub mod copy;
pub mod dtm;
pub mod error;
pub mod local;
mod lock;
pub mod peer;
pub mod recovery;
pub mod remote;
pub mod replica;
pub mod resync;

pub use config::{Backing, DtmConfig, LossPolicy, TRAN_EPOCH_SHIFT};
pub use copy::{Copied, copy_line};
pub use dtm::{Dtm, DtmStats, LineLock, Written};
pub use error::DtmError;
pub use local::LocalReplica;
pub use peer::{ReplicaService, Vssds};
pub use recovery::{Recovery, recover};
pub use remote::RemoteReplica;
pub use replica::{Forward, InDoubtTran, Replica, ReplicaError, ReplicaErrorKind, ReplicaInfo};
pub use resync::ResyncProgress;
