//! The one error type of `dtm`: each variant names the operation, the object
//! (replica, tran, line, epoch) and the value that was wrong. A plain enum: each part
//! of the DTM adds the variants it needs.

use std::time::Duration;

use vssd::TranOutcome;

use crate::replica::{ReplicaError, ReplicaErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum DtmError {
    /// A replica call failed (its kind says whether the replica is lost).
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// A replica is at a newer epoch than this DTM's: another primary took the device
    /// over, and this one must stop.
    #[error(
        "{op}: replica {replica} is at epoch {replica_epoch}, past this primary's {epoch}: another primary took the device over"
    )]
    Fenced {
        op: &'static str,
        replica: String,
        replica_epoch: u64,
        epoch: u64,
    },
    /// Fewer members of the newest epoch are reachable than the device needs.
    #[error(
        "{op}: {} of the {} members {members:?} of epoch {epoch} reachable ({reachable:?}), at least {min} needed",
        reachable.len(),
        members.len()
    )]
    TooFewReplicas {
        op: &'static str,
        epoch: u64,
        members: Vec<u64>,
        reachable: Vec<u64>,
        min: usize,
    },
    /// Replicas of one epoch that say different things of its membership, or replicas
    /// of one device with different geometry: they are not one device's.
    #[error("{op}: replicas {replica} and {other} differ: {why}")]
    Mismatch {
        op: &'static str,
        replica: String,
        other: String,
        why: String,
    },
    /// Two replicas resolved one tran in opposite ways: a bug, or two deciders.
    #[error(
        "{op} of tran {tran}: {outcome} on replica {replica}, {other_outcome} on replica {other}"
    )]
    TranConflict {
        op: &'static str,
        tran: u64,
        replica: String,
        outcome: TranOutcome,
        other: String,
        other_outcome: TranOutcome,
    },
    /// A replica's answer that breaks the seam's contract (a listing out of order).
    #[error("{op} on replica {replica}: {why}")]
    BadAnswer {
        op: &'static str,
        replica: String,
        why: String,
    },
    /// A line that changed on a replica while nothing may write it.
    #[error(
        "{op} of line {line}: replica {replica} holds version {found:?}, {version} was listed a moment ago"
    )]
    LineMoved {
        op: &'static str,
        line: u64,
        replica: String,
        version: u64,
        found: Option<u64>,
    },
    /// The DTM stopped taking writes: the primary replica failed or was lost, or a
    /// member refused an epoch change.
    #[error("dtm {op} on device {device}: stopped: {why}")]
    Stopped {
        op: &'static str,
        device: String,
        why: String,
    },
    /// The primary vSSD failed a call made on it directly.
    #[error("dtm {op} on device {device}: {source}")]
    Vssd {
        op: &'static str,
        device: String,
        /// Boxed: the vSSD's error is large and rare.
        #[source]
        source: Box<vssd::VssdError>,
    },
    /// A bounded wait ran out (a range lock, a slot for a write in flight).
    #[error("dtm {op} on device {device}: waited {waited:?} for {what} of lines {first}..{end}")]
    Busy {
        op: &'static str,
        device: String,
        what: &'static str,
        first: u64,
        end: u64,
        waited: Duration,
    },
    /// Lines outside the device, or an empty write.
    #[error(
        "dtm {op} on device {device}: lines {first}..{end} (bytes {len}) outside 0..{lines} or empty"
    )]
    Range {
        op: &'static str,
        device: String,
        first: u64,
        end: u64,
        len: usize,
        lines: u64,
    },
    /// The backing store failed a write-through.
    #[error(
        "dtm {op} on device {device}: backing store at offset {offset} ({len} bytes): {source}"
    )]
    Backing {
        op: &'static str,
        device: String,
        offset: u64,
        len: usize,
        /// Boxed: the I/O error is large and rare.
        #[source]
        source: Box<taskio::IoError>,
    },
    /// A replica that does not fit the device (geometry, a member id already used).
    #[error("dtm {op} on device {device}: replica {replica}: {why}")]
    Unfit {
        op: &'static str,
        device: String,
        replica: String,
        why: String,
    },
    /// A resync that could not finish; the replica stays out of the epoch.
    #[error("dtm resync of replica {replica} on device {device}: {why}")]
    Resync {
        device: String,
        replica: String,
        why: String,
    },
    /// The DTM was closed.
    #[error("dtm {op} on device {device}: closed")]
    Closed { op: &'static str, device: String },
}

impl DtmError {
    /// `e` as this DTM at `epoch` sees it: a stale epoch is [`DtmError::Fenced`].
    pub fn from_replica(e: ReplicaError, epoch: u64) -> DtmError {
        match e.kind {
            ReplicaErrorKind::StaleEpoch { replica_epoch } => DtmError::Fenced {
                op: e.op,
                replica: e.replica,
                replica_epoch,
                epoch,
            },
            _ => DtmError::Replica(e),
        }
    }
}
