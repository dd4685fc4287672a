//! Resync: a stale replica that returns is brought up to date while writes go on,
//! then made a member in a new epoch.
//!
//! A replica that is not a member but at the DTM's epoch or a newer one is refused
//! if its claim lists none of the DTM's members: it is another primary's (a
//! takeover this DTM has not met yet, or a split brain), and its trans would mix
//! with this DTM's. A claim that lists one never took effect (see
//! `another_primarys`); one of a newer epoch is first left behind: every member
//! moves to the epoch after it (`Inner::move_past`).
//!
//! 0. Its in-doubt trans (prepared there before it was lost, never resolved: a
//!    replica cut off keeps its vSSD open) are resolved by what the primary holds:
//!    still the version of one of its lines there -> committed; otherwise aborted
//!    (superseded there, or an id another primary handed out for other lines). A copy whose payload is damaged there (a crash tore a
//!    resync's copy of a line) is repaired with the primary's lines of that
//!    version when the primary still holds every line of the tran at it; aborting
//!    it instead would make the walk's copy of those lines a conflict for ever. The
//!    walk then fixes every line either way.
//! 1. It joins as a *syncing* target (under the membership gate, so no write is in
//!    phase 1 with the old set): from then on every write goes to it too, and its
//!    failure fails no write (it only ends the resync).
//! 2. A walk over the primary's dirty lines and the replica's, in line order, in
//!    batches ([`RESYNC_BATCH_LINES`] of each listing): a line dirty on the primary
//!    at a version the replica does not hold dirty is copied to it at that same
//!    version ([`copy_line`]: a tran's lines one at a time, so a tran whose middle
//!    line was written again since is copied too); a line dirty on the replica that
//!    the primary does not hold dirty is dropped there. Each such line is checked
//!    again, and handled, under its range lock, so no write of it is in flight
//!    meanwhile; lines whose listed versions agree are skipped without one. Every line dirtied after the join was written to the
//!    replica too; every write that began before the join had finished phase 1 and
//!    committed on the primary (the gate), so the walk sees its version.
//! 3. A new epoch (epoch + 1) with the members and the replica, recorded in the
//!    replica first, then in every other member, the primary last
//!    ([`crate::dtm`]'s `record_epoch`); the replica becomes a member. If the
//!    replica's answer fails (it may hold the new epoch all the same), the members
//!    move to epoch + 2 without it before any other write.
//!
//! Progress ([`ResyncProgress`]): lines of the listings examined against the
//! primary's dirty count at the start (a moving target: writes go on).
//!
//! Not handled: an in-doubt tran damaged on the replica of which the primary holds
//! some lines at its version and has overwritten others (aborted there, so the copy
//! of the lines it still holds is refused as a conflict and the resync fails).

use std::collections::BTreeMap;
use std::rc::Rc;

use taskio::AlignedBuf;
use vssd::TranOutcome;
use vssd::map::State;

use crate::config::{MEMBERS_MAX, RESYNC_BATCH_LINES};
use crate::copy::{Copied, copy_line};
use crate::dtm::{Inner, Member, View, record_epoch};
use crate::error::DtmError;
use crate::recovery::{dirty_page, in_doubt_pages, same_members};
use crate::replica::{InDoubtTran, Replica, ReplicaError, ReplicaInfo};

/// How far a resync got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResyncProgress {
    /// The replica's member id.
    pub member: u64,
    /// Lines examined so far, and the primary's dirty lines when it began.
    pub lines_done: u64,
    pub lines_total: u64,
    /// Lines copied to the replica, and dirty lines dropped from it.
    pub lines_copied: u64,
    pub lines_dropped: u64,
    /// The epoch it joined, once it did.
    pub joined_epoch: Option<u64>,
}

/// Why a replica that is not a member, at `info`'s epoch and members, is another
/// primary's, if it is: at the DTM's epoch or a newer one with a claim that lists
/// none of the DTM's members (a takeover this DTM has not met yet, or a split
/// brain: two primaries each degraded to a set of its own). Its trans would mix
/// with this DTM's under one epoch's ids.
///
/// A claim that lists a member of the DTM never took effect, or never will:
/// - of the DTM's epoch: that member records the epoch with the DTM's members, and
///   a replica's record of an epoch never changes (a join whose epoch the primary
///   failed to record, after which a recovery that did not reach the replica gave
///   that epoch number to the DTM's members);
/// - of a newer epoch (a decider whose own record failed left it; each retry of its
///   recovery moves the members it reaches one further: `tdrv sim dtm` seeds 7579,
///   86875): that member is at the DTM's epoch, and the resync first moves every
///   member past the claim (`Inner::move_past`), so that it can never take effect;
///   had it taken effect, that member would be at the newer epoch and the move
///   finds the DTM fenced.
fn another_primarys(info: &ReplicaInfo, view: &View) -> Option<String> {
    let ours = crate::dtm::ids(&view.members);
    let refuted = info.members.iter().any(|m| ours.contains(m))
        && !(info.epoch == view.epoch && same_members(&info.members, &ours));
    (info.epoch >= view.epoch && !refuted).then(|| {
        format!(
            "it is at epoch {} with members {:?}, another primary's (the device is at epoch {} with {:?})",
            info.epoch, info.members, view.epoch, ours
        )
    })
}

impl Inner {
    fn resync_error(&self, replica: &dyn Replica, why: String) -> DtmError {
        DtmError::Resync {
            device: self.device.clone(),
            replica: replica.name().to_string(),
            why,
        }
    }

    fn replica_failed(&self, replica: &dyn Replica, e: ReplicaError) -> DtmError {
        self.resync_error(replica, e.to_string())
    }

    /// Whether `member` is being resynced and has failed nothing so far.
    fn is_syncing(&self, member: u64) -> bool {
        self.view.borrow().syncing.iter().any(|m| m.id() == member)
            && !self.failed_syncing.borrow().contains(&member)
    }

    fn progress(&self, f: impl FnOnce(&mut ResyncProgress)) {
        if let Some(p) = self.resync.borrow_mut().as_mut() {
            f(p);
        }
    }

    pub(crate) fn resync(&self, replica: Rc<dyn Replica>) -> Result<ResyncProgress, DtmError> {
        const OP: &str = "resync";
        self.check_up(OP)?;
        let member = replica.member();
        // Checked and reserved with no park between: one resync at a time, never of
        // a member (its in-doubt trans include writes in flight).
        // Under the membership gate: a change under way has moved the view to an
        // epoch not recorded yet, and `another_primarys` trusts the members' records
        // of the view's epoch (`tdrv sim dtm` seed 50656: a claim judged against
        // such a view passed, and the resync aborted an acknowledged write of the
        // primary that had taken the device over).
        let gate = self.change.read();
        self.check_up(OP)?;
        let why = {
            let view = self.view.borrow();
            if self.resync.borrow().is_some() {
                Some("another resync is running".to_string())
            } else if view
                .members
                .iter()
                .chain(&view.syncing)
                .any(|m| m.id() == member)
            {
                Some(format!("member id {member} is in use"))
            } else if let Some(why) = another_primarys(&replica.info(), &view) {
                Some(why)
            } else if view.members.len() >= MEMBERS_MAX {
                Some(format!("the epoch has {MEMBERS_MAX} members already"))
            } else {
                None
            }
        };
        if let Some(why) = why {
            return Err(DtmError::Unfit {
                op: OP,
                device: self.device.clone(),
                replica: replica.name().to_string(),
                why,
            });
        }
        crate::dtm::check_fit(
            OP,
            &self.device,
            self.line_size,
            self.primary.geometry().lines(),
            replica.as_ref(),
        )?;
        *self.resync.borrow_mut() = Some(ResyncProgress {
            member,
            ..ResyncProgress::default()
        });
        self.failed_syncing.borrow_mut().retain(|&m| m != member);
        drop(gate);
        let joined = self
            .move_past(replica.as_ref())
            .and_then(|()| self.resolve_in_doubt(&replica))
            .and_then(|()| {
                let _gate = self.change.write();
                self.check_up(OP)?;
                let committer = self.start_committer(OP, &replica)?;
                let mut view = self.view.borrow_mut();
                view.syncing.push(Member {
                    replica: replica.clone(),
                    committer: Some(committer),
                });
                view.refresh_tran_lines_max(&self.primary);
                self.progress(|p| p.lines_total = self.primary.dirty_count());
                Ok(())
            });
        if let Err(e) = joined {
            self.resync.borrow_mut().take();
            return Err(e);
        }
        let result = self
            .resync_walk(&replica)
            .and_then(|()| self.resync_join(&replica));
        let progress = self
            .resync
            .borrow_mut()
            .take()
            .expect("the resync's progress");
        if let Err(e) = result {
            let _ = self.lose(&[member], OP);
            return Err(e);
        }
        self.count(|s| {
            s.resyncs += 1;
            s.resync_lines_copied += progress.lines_copied;
            s.resync_lines_dropped += progress.lines_dropped;
        });
        Ok(progress)
    }

    /// Step 0 of the module documentation.
    fn resolve_in_doubt(&self, y: &Rc<dyn Replica>) -> Result<(), DtmError> {
        in_doubt_pages(y.as_ref(), RESYNC_BATCH_LINES, |page| {
            for d in &page {
                // By the lines, not by the outcome of the id alone: an id the
                // primary committed for other lines is another primary's (a cut-off
                // one that handed out ids of the epoch number the takeover chose).
                // A tran whose lines the primary no longer holds at it is superseded
                // there: aborted here, the walk brings what replaced it. Every one
                // of its lines must be held at it or newer, one at it: a line held
                // older (or not at all) never had this tran here, so the id was
                // another primary's for overlapping lines (sim dtm seed 4884).
                let committed_here = match self.primary.tran_outcome(d.tran) {
                    TranOutcome::Prepared | TranOutcome::Aborted => false,
                    _ => {
                        let held = |l: u64| self.primary.lookup(l).map(|e| e.version);
                        let lines = d.line..d.line + u64::from(d.line_count);
                        lines.clone().all(|l| held(l).is_some_and(|v| v >= d.tran))
                            && lines.into_iter().any(|l| held(l) == Some(d.tran))
                    }
                };
                let resolved = match (committed_here, d.damaged) {
                    (true, false) => y.commit(&[d.tran]),
                    (true, true) => match self.payload_of(d)? {
                        Some(payload) => y.repair(d.tran, &payload),
                        None => y.abort(d.tran),
                    },
                    (false, _) => y.abort(d.tran),
                };
                resolved.map_err(|e| self.replica_failed(y.as_ref(), e))?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            DtmError::Replica(e) => self.replica_failed(y.as_ref(), e),
            e => e,
        })
    }

    /// The payload of in-doubt tran `d` rebuilt from the primary's lines, if it holds
    /// every one of them at that version.
    fn payload_of(&self, d: &InDoubtTran) -> Result<Option<AlignedBuf>, DtmError> {
        let line_size = self.line_size as usize;
        let len = d.payload_len as usize;
        if len > d.line_count as usize * line_size {
            return Ok(None);
        }
        let mut payload = AlignedBuf::new(d.line_count as usize * line_size);
        payload.set_len(len);
        let mut buf = AlignedBuf::new(line_size);
        for (i, l) in (d.line..d.line + u64::from(d.line_count)).enumerate() {
            let hit = self
                .primary
                .read_into(l, &mut buf)
                .map_err(|source| DtmError::Vssd {
                    op: "resync",
                    device: self.device.clone(),
                    source: Box::new(source),
                })?;
            if hit.is_none_or(|h| h.version != d.tran) {
                return Ok(None);
            }
            let at = i * line_size;
            let n = buf.len().min(len.saturating_sub(at));
            payload[at..at + n].copy_from_slice(&buf[..n]);
        }
        Ok(Some(payload))
    }

    /// Step 2 of the module documentation.
    fn resync_walk(&self, y: &Rc<dyn Replica>) -> Result<(), DtmError> {
        let primary = self.view.borrow().members[0].replica.clone();
        let primary = primary.as_ref();
        let mut from = 0u64;
        // Bounded: `from` moves forward each round, below the device's lines (what
        // the replica lists beyond them is never walked). No count of the replica's
        // lines: writes go on, so the walk may pass more lines than it has slots.
        while from < self.lines {
            self.check_up("resync")?;
            if !self.is_syncing(y.member()) {
                return Err(self.resync_error(y.as_ref(), "it failed a write".to_string()));
            }
            let ours = self.primary.dirty_range(from, RESYNC_BATCH_LINES);
            let theirs = dirty_page(y.as_ref(), from, RESYNC_BATCH_LINES).map_err(|e| match e {
                DtmError::Replica(e) => self.replica_failed(y.as_ref(), e),
                e => e,
            })?;
            // Up to where both listings are complete.
            let mut end = self.lines;
            for listing in [&ours, &theirs] {
                if listing.len() >= RESYNC_BATCH_LINES {
                    end = end.min(listing.last().expect("a full listing").0 + 1);
                }
            }
            assert!(end > from, "a resync batch that does not move");
            let mut lines: BTreeMap<u64, (Option<u64>, Option<u64>)> = BTreeMap::new();
            for &(line, v) in ours.iter().filter(|(l, _)| *l < end) {
                lines.entry(line).or_default().0 = Some(v);
            }
            for &(line, v) in theirs.iter().filter(|(l, _)| *l < end) {
                lines.entry(line).or_default().1 = Some(v);
            }
            for (line, (ours, theirs)) in lines {
                if ours.is_none() || ours != theirs {
                    self.resync_line(primary, y, line)?;
                }
                self.progress(|p| p.lines_done += 1);
            }
            from = end;
        }
        Ok(())
    }

    /// Under `line`'s range lock: makes the replica agree with the primary on it
    /// (the listings were a hint, taken without the lock).
    fn resync_line(
        &self,
        primary: &dyn Replica,
        y: &Rc<dyn Replica>,
        line: u64,
    ) -> Result<(), DtmError> {
        let _lock = self.lock_range("resync", line, 1)?;
        let ours = self
            .primary
            .lookup(line)
            .filter(|e| e.state == State::Dirty)
            .map(|e| e.version);
        let theirs = y
            .dirty(line, 1)
            .map_err(|e| self.replica_failed(y.as_ref(), e))?
            .first()
            .filter(|&&(l, _)| l == line)
            .map(|&(_, v)| v);
        match ours {
            None if theirs.is_some() => {
                y.invalidate(line, 1)
                    .map_err(|e| self.replica_failed(y.as_ref(), e))?;
                self.progress(|p| p.lines_dropped += 1);
            }
            Some(v) if theirs != Some(v) => {
                let copied = copy_line(primary, y.as_ref(), line, v)
                    .map_err(|e| self.resync_error(y.as_ref(), e.to_string()))?;
                if matches!(copied, Copied::Written | Copied::Committed) {
                    self.progress(|p| p.lines_copied += 1);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Before a replica at a newer epoch than the DTM's (a refuted claim, see
    /// `another_primarys`) is touched: every member moves to the epoch after the
    /// replica's, under the membership gate, as an epoch change of the DTM's own.
    fn move_past(&self, y: &dyn Replica) -> Result<(), DtmError> {
        const OP: &str = "resync";
        let claim = y.info().epoch;
        if claim <= self.view.borrow().epoch {
            return Ok(());
        }
        let gate = self.change.write();
        self.check_up(OP)?;
        // Checked again: a membership change since may have dropped the members the
        // claim lists, and only a move of one of them leaves it behind.
        let refused = another_primarys(&y.info(), &self.view.borrow());
        if let Some(why) = refused {
            return Err(self.resync_error(y, why));
        }
        let epoch = claim + 1;
        let recorded = self.move_members(OP, epoch);
        drop(gate);
        if recorded? {
            return Ok(());
        }
        Err(self.resync_error(
            y,
            format!("members failed epoch {epoch}, past the replica's claim"),
        ))
    }

    /// Step 3 of the module documentation.
    fn resync_join(&self, y: &Rc<dyn Replica>) -> Result<(), DtmError> {
        const OP: &str = "resync";
        let gate = self.change.write();
        self.check_up(OP)?;
        if !self.is_syncing(y.member()) {
            return Err(self.resync_error(y.as_ref(), "it failed a write".to_string()));
        }
        let (members, epoch) = {
            let view = self.view.borrow();
            (view.members.clone(), view.epoch + 1)
        };
        let mut ids: Vec<u64> = members.iter().map(Member::id).collect();
        ids.push(y.member());
        if let Err(e) = y.set_epoch(epoch, &ids) {
            // The replica may hold the new epoch all the same (a timeout or a lost
            // answer says nothing of what it did). The members move past it, without
            // the replica, before they acknowledge another write: a recovery trusts
            // the newest epoch, and would take the replica's over the writes
            // acknowledged since.
            let failed = self.replica_failed(y.as_ref(), e);
            let moved = self.move_members(OP, epoch + 1);
            drop(gate);
            moved?;
            return Err(failed);
        }
        let targets: Vec<Rc<dyn Replica>> = members.iter().map(|m| m.replica.clone()).collect();
        let failures = record_epoch(&targets, epoch, &ids);
        {
            let mut view = self.view.borrow_mut();
            let i = view
                .syncing
                .iter()
                .position(|m| m.id() == y.member())
                .expect("checked syncing above");
            let joined = view.syncing.remove(i);
            view.members.push(joined);
            view.epoch = epoch;
            view.refresh_tran_lines_max(&self.primary);
        }
        self.count(|s| s.epoch_changes += 1);
        self.progress(|p| p.joined_epoch = Some(epoch));
        if !failures.is_empty() {
            tracing::warn!(device = %self.device, ?failures, "members failed the resync's epoch");
        }
        let settled = self.settle_recorded(OP, epoch, &failures);
        drop(gate);
        settled
    }
}
