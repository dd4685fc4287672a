//! The `Replica` seam: one replica vSSD of a cache device, as the DTM reaches it.
//!
//! Two implementations: [`crate::local::LocalReplica`] (a `vssd::Vssd` on this
//! runtime) and [`crate::remote::RemoteReplica`] (an rpc client to the peer CVA that
//! serves the vSSD with [`crate::peer::ReplicaService`], PROTOCOL.md's VSSD_*
//! messages). Every method runs in a task of the DTM's runtime and may park; a remote
//! one ends within its call timeout.
//!
//! The fence: a replica is opened at an epoch; once the replica's vSSD has moved to a
//! newer epoch (another primary took the device over), every call on the old opening
//! fails with [`ReplicaErrorKind::StaleEpoch`], so a cut-off primary can never have a
//! write acknowledged by it again.

use taskio::AlignedBuf;
use vssd::TranOutcome;

/// What a replica says of itself when opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Bytes per line (a power of two).
    pub line_size: u32,
    /// Lines the vSSD can hold.
    pub lines: u64,
    /// The membership epoch recorded in the vSSD, and its members.
    pub epoch: u64,
    pub members: Vec<u64>,
    /// Largest number of lines one writep1 may carry there.
    pub tran_lines_max: u64,
}

/// One in-doubt tran of a replica (PREPARE without COMMIT or ABORT), as recovery
/// found it when the vSSD opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubtTran {
    pub tran: u64,
    /// Its first line and how many lines it has.
    pub line: u64,
    pub line_count: u32,
    /// Bytes of payload, all lines together.
    pub payload_len: u32,
    /// Its payload failed its CRC there: commit it only with a copy from a replica
    /// that holds it intact ([`Replica::repair`]), or abort it.
    pub damaged: bool,
}

/// Why a replica call failed. `kind` decides what the DTM does with it.
#[derive(Debug, thiserror::Error)]
#[error("{op} on replica {replica}: {kind}")]
pub struct ReplicaError {
    pub op: &'static str,
    /// The replica's name (peer address and vSSD name, or the local vSSD's path).
    pub replica: String,
    pub kind: ReplicaErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaErrorKind {
    /// The replica moved to a newer epoch than the one it was opened at: this DTM is
    /// fenced off and must stop acknowledging writes.
    #[error("stale epoch: the replica is at epoch {replica_epoch}")]
    StaleEpoch { replica_epoch: u64 },
    /// No such line, or no such prepared tran (`outcome` says what is known of it).
    #[error("not found: {0}")]
    NotFound(String),
    /// The replica did not answer within the call timeout.
    #[error("timed out")]
    Timeout,
    /// The connection to the peer broke, or the replica is closed: it is lost until
    /// reopened.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The replica's disk or vSSD failed the operation.
    #[error("I/O error: {0}")]
    Io(String),
    /// The replica refused the request as invalid (a bug of the caller, or two
    /// deciders disagreeing on a tran): never retried.
    #[error("refused: {0}")]
    Refused(String),
}

impl ReplicaErrorKind {
    /// The replica can no longer be used in this epoch (drop it from the members).
    pub fn is_loss(&self) -> bool {
        matches!(
            self,
            ReplicaErrorKind::Timeout | ReplicaErrorKind::Unreachable(_) | ReplicaErrorKind::Io(_)
        )
    }
}

/// One replica vSSD of a cache device. See the module documentation.
pub trait Replica {
    /// The replica's member id in epochs (unique in its device).
    fn member(&self) -> u64;
    /// For errors and logs.
    fn name(&self) -> &str;
    /// Geometry as of the opening; epoch and members as of the opening, or of the
    /// last `set_epoch` through it (recovery reads the epoch of a replica it
    /// recovered before from here).
    fn info(&self) -> ReplicaInfo;

    /// Phase 1 of `tran` on `line` and the lines after it (whole lines, the last may
    /// be short; at most `tran_lines_max` lines): durable on return.
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError>;
    /// Commits each of `trans` (idempotent for a tran committed already). The
    /// COMMITs need not be durable on return: a tran prepared on every member is
    /// committed by recovery anyway.
    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError>;
    /// Aborts `tran` (idempotent).
    fn abort(&self, tran: u64) -> Result<(), ReplicaError>;
    /// The current version of `line` into `buf` (sized to a line), and that version
    /// (the tran that wrote it); `None` when the line is not held.
    fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<u64>, ReplicaError>;
    /// The payload of in-doubt `tran`, all its lines, CRC-checked (to repair another
    /// replica's damaged copy).
    fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, ReplicaError>;
    /// Commits in-doubt `tran`, whose payload is damaged here, with `payload` from
    /// another replica.
    fn repair(&self, tran: u64, payload: &AlignedBuf) -> Result<(), ReplicaError>;
    /// Writes `data` as the committed version `version` of `line` and the lines after
    /// it (whole lines, the last may be short; at most `tran_lines_max`), durable on
    /// return: a copy of what another replica of the device holds (resync,
    /// reconciliation after recovery: [`crate::copy::copy_line`]). `version` may be a
    /// tran committed here already (another of its lines copied before, or lines it
    /// wrote here and dropped since); refused if it was aborted here, or if a line
    /// holds `version` or newer (a line's versions only grow).
    fn copy_in(&self, version: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError>;
    /// Marks `line` clean if `version` is still its current version (the destage
    /// copied that version to the backing store). Whether it did.
    fn clean(&self, line: u64, version: u64) -> Result<bool, ReplicaError>;
    /// Drops lines `first..first + count` (DISCARD). How many were held.
    fn invalidate(&self, first: u64, count: u64) -> Result<u64, ReplicaError>;
    /// Moves the replica to `epoch` with `members` (durable on return); this opening
    /// then belongs to that epoch.
    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError>;
    /// What the replica knows of `tran`.
    fn outcome(&self, tran: u64) -> Result<TranOutcome, ReplicaError>;
    /// In-doubt trans with ids above `after`, in increasing id order, at most `max`;
    /// `true` when more follow.
    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError>;
    /// Dirty lines from `from` on, in line order, at most `max`: (line, version).
    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError>;
}

/// A replica that wraps another and changes some of its calls (a fault injector, a
/// timer, a test's hook): it names the replica it wraps, overrides the calls it
/// changes, and every other call goes to the inner replica unchanged. Every
/// `Forward` is a [`Replica`] (the blanket impl below), so a wrapper does not copy
/// the forwarding of each method. Implement it by its path (`impl dtm::Forward for
/// X`) without importing it: with both traits in scope, a method called on the
/// wrapper's own type is ambiguous.
pub trait Forward {
    /// The replica this one wraps.
    fn inner(&self) -> &dyn Replica;

    fn member(&self) -> u64 {
        self.inner().member()
    }
    fn name(&self) -> &str {
        self.inner().name()
    }
    fn info(&self) -> ReplicaInfo {
        self.inner().info()
    }
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.inner().writep1(tran, line, data)
    }
    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError> {
        self.inner().commit(trans)
    }
    fn abort(&self, tran: u64) -> Result<(), ReplicaError> {
        self.inner().abort(tran)
    }
    fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<u64>, ReplicaError> {
        self.inner().read(line, buf)
    }
    fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, ReplicaError> {
        self.inner().read_prepared(tran)
    }
    fn repair(&self, tran: u64, payload: &AlignedBuf) -> Result<(), ReplicaError> {
        self.inner().repair(tran, payload)
    }
    fn copy_in(&self, version: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.inner().copy_in(version, line, data)
    }
    fn clean(&self, line: u64, version: u64) -> Result<bool, ReplicaError> {
        self.inner().clean(line, version)
    }
    fn invalidate(&self, first: u64, count: u64) -> Result<u64, ReplicaError> {
        self.inner().invalidate(first, count)
    }
    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        self.inner().set_epoch(epoch, members)
    }
    fn outcome(&self, tran: u64) -> Result<TranOutcome, ReplicaError> {
        self.inner().outcome(tran)
    }
    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError> {
        self.inner().in_doubt(after, max)
    }
    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        self.inner().dirty(from, max)
    }
}

impl<T: Forward> Replica for T {
    fn member(&self) -> u64 {
        Forward::member(self)
    }
    fn name(&self) -> &str {
        Forward::name(self)
    }
    fn info(&self) -> ReplicaInfo {
        Forward::info(self)
    }
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        Forward::writep1(self, tran, line, data)
    }
    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError> {
        Forward::commit(self, trans)
    }
    fn abort(&self, tran: u64) -> Result<(), ReplicaError> {
        Forward::abort(self, tran)
    }
    fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<u64>, ReplicaError> {
        Forward::read(self, line, buf)
    }
    fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, ReplicaError> {
        Forward::read_prepared(self, tran)
    }
    fn repair(&self, tran: u64, payload: &AlignedBuf) -> Result<(), ReplicaError> {
        Forward::repair(self, tran, payload)
    }
    fn copy_in(&self, version: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        Forward::copy_in(self, version, line, data)
    }
    fn clean(&self, line: u64, version: u64) -> Result<bool, ReplicaError> {
        Forward::clean(self, line, version)
    }
    fn invalidate(&self, first: u64, count: u64) -> Result<u64, ReplicaError> {
        Forward::invalidate(self, first, count)
    }
    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        Forward::set_epoch(self, epoch, members)
    }
    fn outcome(&self, tran: u64) -> Result<TranOutcome, ReplicaError> {
        Forward::outcome(self, tran)
    }
    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError> {
        Forward::in_doubt(self, after, max)
    }
    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        Forward::dirty(self, from, max)
    }
}
