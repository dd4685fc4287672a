//! The one error type of `dtm`: each variant names the operation, the object (device,
//! replica, lines) and the value that was wrong.

use std::time::Duration;

use crate::replica::ReplicaError;

#[derive(Debug, thiserror::Error)]
pub enum DtmError {
    /// A replica moved to a newer epoch than this DTM's: another primary took the
    /// device over. Every later write fails; none is acknowledged.
    #[error(
        "dtm {op} on device {device}: fenced: replica {replica} is at epoch {replica_epoch}, this DTM at {epoch}"
    )]
    Fenced {
        op: &'static str,
        device: String,
        replica: String,
        epoch: u64,
        replica_epoch: u64,
    },
    /// Fewer replicas are left than the device's `min_replicas`: writes stop.
    #[error(
        "dtm {op} on device {device}: {have} replicas left at epoch {epoch}, at least {min} wanted"
    )]
    TooFewReplicas {
        op: &'static str,
        device: String,
        epoch: u64,
        have: usize,
        min: usize,
    },
    /// The DTM stopped taking writes: the primary replica failed or was lost, or a
    /// member refused an epoch change.
    #[error("dtm {op} on device {device}: stopped: {why}")]
    Stopped {
        op: &'static str,
        device: String,
        why: String,
    },
    /// A replica call failed in a way no policy covers (a refusal: a bug of a caller,
    /// or two deciders disagreeing).
    #[error("dtm {op} on device {device}: {source}")]
    Replica {
        op: &'static str,
        device: String,
        #[source]
        source: ReplicaError,
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
