//! [`LocalReplica`]: the [`Replica`] seam over a `vssd::Vssd` on this runtime (the
//! primary's own vSSD, and the vSSD a peer's `ReplicaService` serves).
//!
//! # The fence
//!
//! A `LocalReplica` is opened at an epoch. Before every call it compares it with the
//! vSSD's: once the vSSD is at a newer epoch (another opening moved it, i.e. another
//! primary took the device over), the call fails with
//! [`ReplicaErrorKind::StaleEpoch`] and does nothing. [`Replica::set_epoch`] through
//! this opening moves the opening along with the vSSD, from the opening's epoch only
//! (or the vSSD's, when it lags behind the epoch it was opened at)
//! ([`Vssd::set_epoch_from`]): of two primaries moving the vSSD from one epoch, one
//! wins and the other is told `StaleEpoch`, even if both ask for the same members.
//!
//! A writep1 parks for its I/O, so the epoch is checked again when it returns: if it
//! moved meanwhile, this opening aborts the tran it just prepared and fails with
//! `StaleEpoch`. So a writep1 of an old epoch never succeeds after the vSSD's
//! `set_epoch` returned: a new primary that moved every member to its epoch before
//! listing the in-doubt trans (crate::recovery) can be sure no old primary gets a
//! prepare acknowledged behind its back.
//!
//! Such a writep1 still holds its lines until it returns and aborts (its I/O may
//! be slow), and recovery does not list it (it is not in doubt: it will abort). So
//! a writep1 of a newer epoch that finds a line prepared by a tran of an older
//! epoch (tran ids carry their epoch: [`TRAN_EPOCH_SHIFT`]) waits for that tran to
//! let go, up to [`FENCED_PREPARE_WAIT`], before it is refused: the first writes of
//! a primary that took the device over are not refused for an old primary's
//! writep1 that had not returned yet.
//!
//! # In-doubt trans
//!
//! [`Replica::in_doubt`] lists what the vSSD holds prepared ([`Vssd::in_doubt`]),
//! not the list its recovery returned at open: a vSSD that stays open (a peer's)
//! may hold trans prepared since by a primary that died.

use std::cell::RefCell;

use taskio::AlignedBuf;
use vssd::map::MapError;
use vssd::{Payload, Resolution, TranOutcome, Vssd, VssdError};

use crate::config::TRAN_EPOCH_SHIFT;
use crate::replica::{InDoubtTran, Replica, ReplicaError, ReplicaErrorKind, ReplicaInfo};

/// How long a writep1 waits for a line held by a tran of an older epoch to be
/// let go (see the module documentation) before it is refused.
const FENCED_PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One replica vSSD on this runtime. See the module documentation.
pub struct LocalReplica {
    vssd: Vssd,
    member: u64,
    name: String,
    /// The geometry, and the epoch and members as of the opening: kept current by
    /// `set_epoch` through it.
    info: RefCell<ReplicaInfo>,
}

impl LocalReplica {
    /// `vssd` (opened, its recovery's in-doubt trans left unresolved: they are listed
    /// by [`Replica::in_doubt`]) as member `member`, named `name` in errors, opened at
    /// `epoch`: every call fails with `StaleEpoch` once the vSSD is at a newer one.
    pub fn new(vssd: Vssd, member: u64, name: impl Into<String>, epoch: u64) -> LocalReplica {
        let info = ReplicaInfo {
            line_size: vssd.geometry().line_size(),
            lines: vssd.geometry().lines(),
            epoch: vssd.epoch(),
            members: vssd.members(),
            tran_lines_max: vssd.tran_lines_max(),
        };
        LocalReplica {
            vssd,
            member,
            name: name.into(),
            info: RefCell::new(ReplicaInfo { epoch, ..info }),
        }
    }

    /// The vSSD under it.
    pub fn vssd(&self) -> &Vssd {
        &self.vssd
    }

    /// The epoch this opening belongs to.
    pub fn epoch(&self) -> u64 {
        self.info.borrow().epoch
    }

    fn error(&self, op: &'static str, kind: ReplicaErrorKind) -> ReplicaError {
        ReplicaError {
            op,
            replica: self.name.clone(),
            kind,
        }
    }

    /// `StaleEpoch` once the vSSD moved past this opening's epoch.
    fn fence(&self, op: &'static str) -> Result<(), ReplicaError> {
        let replica_epoch = self.vssd.epoch();
        if replica_epoch > self.epoch() {
            return Err(self.error(op, ReplicaErrorKind::StaleEpoch { replica_epoch }));
        }
        Ok(())
    }

    /// Phase 1 of `tran` by `prepare`, fenced before and after: if the epoch moved
    /// while it ran, its primary is fenced off, and the tran must neither look
    /// acknowledged to it nor stay prepared here: it is aborted. (Should the abort
    /// fail, the vSSD failed: recovery finds the tran in doubt on this member only,
    /// and aborts it.)
    fn prepare(
        &self,
        op: &'static str,
        tran: u64,
        prepare: impl FnOnce() -> Result<(), VssdError>,
    ) -> Result<(), ReplicaError> {
        self.fence(op)?;
        prepare().map_err(|e| self.failed(op, e))?;
        if let Err(stale) = self.fence(op) {
            let _ = self.vssd.abort(tran);
            return Err(stale);
        }
        Ok(())
    }

    /// A vSSD error as the DTM sees it.
    fn failed(&self, op: &'static str, e: VssdError) -> ReplicaError {
        let kind = kind_of(&e);
        self.error(op, kind)
    }
}

/// The kind of a vSSD error: closed or failed -> unreachable, disk -> I/O, not
/// prepared here -> not found, a request the vSSD will not honour -> refused (a stale
/// epoch is the fence's to say).
fn kind_of(e: &VssdError) -> ReplicaErrorKind {
    let text = e.to_string();
    match e {
        VssdError::Unusable { .. } => ReplicaErrorKind::Unreachable(text),
        VssdError::Map {
            source: MapError::UnknownTran { .. },
            ..
        } => ReplicaErrorKind::NotFound(text),
        VssdError::Map { .. }
        | VssdError::Epoch { .. }
        | VssdError::Repair { .. }
        | VssdError::Damaged { .. }
        | VssdError::TranBusy { .. }
        | VssdError::TranResolved { .. }
        | VssdError::PayloadLen { .. }
        | VssdError::Refused { .. }
        | VssdError::BadGeometry { .. }
        | VssdError::WrongDevice { .. } => ReplicaErrorKind::Refused(text),
        VssdError::Io { .. }
        | VssdError::Payload { .. }
        | VssdError::Checksum { .. }
        | VssdError::Corrupt { .. }
        | VssdError::NotAVssd { .. }
        | VssdError::Version { .. }
        | VssdError::TooSmall { .. } => ReplicaErrorKind::Io(text),
    }
}

impl Replica for LocalReplica {
    fn member(&self) -> u64 {
        self.member
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> ReplicaInfo {
        self.info.borrow().clone()
    }

    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.prepare("writep1", tran, || {
            let deadline = taskio::now() + FENCED_PREPARE_WAIT;
            // Bounded: each pass waits for one older tran, until the deadline.
            loop {
                match self.vssd.writep1(tran, line, data) {
                    Err(VssdError::Map {
                        source: MapError::LinePrepared { tran_other, .. },
                        ..
                    }) if tran_other >> TRAN_EPOCH_SHIFT < tran >> TRAN_EPOCH_SHIFT
                        && self.vssd.wait_unprepared(tran_other, deadline) => {}
                    r => return r,
                }
            }
        })
    }

    fn copy_in(&self, version: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        const OP: &str = "copy_in";
        self.prepare(OP, version, || self.vssd.writep1_copy(version, line, data))?;
        self.vssd
            .resolve(version, Resolution::Commit)
            .map_err(|e| self.failed(OP, e))
    }

    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError> {
        const OP: &str = "commit";
        self.fence(OP)?;
        for &tran in trans {
            self.vssd.commit(tran).map_err(|e| self.failed(OP, e))?;
        }
        Ok(())
    }

    fn abort(&self, tran: u64) -> Result<(), ReplicaError> {
        const OP: &str = "abort";
        self.fence(OP)?;
        self.vssd.abort(tran).map_err(|e| self.failed(OP, e))?;
        Ok(())
    }

    fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<u64>, ReplicaError> {
        const OP: &str = "read";
        self.fence(OP)?;
        let hit = self
            .vssd
            .read_into(line, buf)
            .map_err(|e| self.failed(OP, e))?;
        Ok(hit.map(|h| h.version))
    }

    fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, ReplicaError> {
        const OP: &str = "read_prepared";
        self.fence(OP)?;
        self.vssd.read_prepared(tran).map_err(|e| match e {
            VssdError::TranResolved { .. } => {
                self.error(OP, ReplicaErrorKind::NotFound(e.to_string()))
            }
            e => self.failed(OP, e),
        })
    }

    fn repair(&self, tran: u64, payload: &AlignedBuf) -> Result<(), ReplicaError> {
        const OP: &str = "repair";
        self.fence(OP)?;
        self.vssd
            .resolve_repaired(tran, payload)
            .map_err(|e| self.failed(OP, e))
    }

    fn clean(&self, line: u64, version: u64) -> Result<bool, ReplicaError> {
        const OP: &str = "clean";
        self.fence(OP)?;
        let (clean, _) = self
            .vssd
            .mark_clean(line, version)
            .map_err(|e| self.failed(OP, e))?;
        Ok(clean)
    }

    fn invalidate(&self, first: u64, count: u64) -> Result<u64, ReplicaError> {
        const OP: &str = "invalidate";
        self.fence(OP)?;
        self.vssd
            .invalidate_range(first, count)
            .map_err(|e| self.failed(OP, e))
    }

    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        const OP: &str = "set_epoch";
        self.fence(OP)?;
        let from = self.epoch();
        if from == epoch && self.vssd.epoch() == epoch && self.vssd.members() == members {
            return Ok(()); // a retry: this opening is there already
        }
        // The opening moves first: the vSSD is at the new epoch as soon as its record
        // is placed, and this opening's calls made while the record becomes durable
        // (a lazy COMMIT) must not find themselves stale.
        self.info.borrow_mut().epoch = epoch.max(from);
        // An opening made at a newer epoch than the vSSD's (a recovering primary
        // opens every member at the newest epoch, and a member whose earlier fences
        // failed lags) moves it from where it is: no epoch since its own had a write
        // there (recovery's rule). Another opening that moved it meanwhile left it
        // past this one's epoch: the fence above, or the refusal below, says so.
        let vssd_from = self.vssd.epoch().min(from);
        if let Err(e) = self.vssd.set_epoch_from(vssd_from, epoch, members) {
            self.info.borrow_mut().epoch = from;
            return Err(match self.fence(OP) {
                Err(stale) => stale, // another opening moved it meanwhile
                Ok(()) => self.failed(OP, e),
            });
        }
        let mut info = self.info.borrow_mut();
        info.epoch = epoch;
        info.members = members.to_vec();
        Ok(())
    }

    fn outcome(&self, tran: u64) -> Result<TranOutcome, ReplicaError> {
        self.fence("outcome")?;
        Ok(self.vssd.tran_outcome(tran))
    }

    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError> {
        self.fence("in_doubt")?;
        let mut listed = self.vssd.in_doubt(after, max.saturating_add(1));
        let more = listed.len() > max;
        listed.truncate(max);
        let trans = listed
            .into_iter()
            .map(|d| InDoubtTran {
                tran: d.tran,
                line: d.line(),
                line_count: d.parts.len() as u32,
                payload_len: d.payload_len() as u32,
                damaged: matches!(d.payload, Payload::Damaged { .. }),
            })
            .collect();
        Ok((trans, more))
    }

    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        self.fence("dirty")?;
        Ok(self.vssd.dirty_range(from, max))
    }
}
