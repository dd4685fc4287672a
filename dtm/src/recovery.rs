//! Recovery: the takeover step a primary runs on a cache device before it writes
//! (issue 12, "Recovery" and "Membership and epochs"). [`recover`] runs it, in this
//! order:
//!
//! 1. **The epoch.** The newest epoch among the replicas that opened whose claim
//!    (its members) took effect, and its members (a device never given one, epoch
//!    0, has the configured members). A claim never took effect when one of its
//!    members records that epoch differently (two primaries that both moved from
//!    the epoch before, one of them fenced), or when its first member, which
//!    records every claim last, is at an older epoch (a decider whose own record
//!    failed); no write was made at it, and the replicas holding it are stale,
//!    except a member at the epoch right after the trusted one (no epoch came
//!    between), or further past it if it holds no write of a later epoch. One that
//!    does is refused ([`DtmError::Mismatch`]): an epoch between took effect, and
//!    its writes may be on it only. Claims that still differ: refused too. The
//!    members of that epoch that opened are the *reachable* ones, with those at an
//!    older epoch that listed them (fences or membership changes that failed on
//!    them: every member records an epoch before any write at it, so no epoch
//!    since theirs had a write). Opened replicas
//!    of an older epoch, or not members of the trusted one, are *stale*: they may lack
//!    acknowledged writes and are left to the core's resync. Fewer than
//!    `min_replicas` reachable: refused ([`DtmError::TooFewReplicas`]). The new
//!    epoch is past every one seen (or the refuted claim right after the trusted
//!    epoch again, when it is exactly this recovery's: a retry).
//! 2. **The fence, first.** Every reachable member moves to epoch + 1 with the
//!    reachable members ([`Replica::set_epoch`]), the local replica last (after
//!    every other one recorded it, as the core's epoch changes do). Any member at a newer epoch
//!    already, or moved there meanwhile, means another primary won
//!    ([`DtmError::Fenced`]). Moving before looking at the trans is what makes the
//!    decisions below final: once a member is at the new epoch, the old primary
//!    can neither prepare nor have a prepare acknowledged there
//!    ([`crate::local`]'s fence), so no tran appears or completes behind recovery's
//!    back. A recovery that fails after this step leaves the members at epoch + 1
//!    with their in-doubt trans: the next one resolves them the same way.
//! 3. **The in-doubt trans** of every reachable member ([`Replica::in_doubt`],
//!    paged), each resolved on every member that holds it prepared:
//!    - prepared on *every* reachable member: **committed**. It may have been
//!      acknowledged: the old primary acknowledges once every member of its epoch
//!      prepared it. When a member of the epoch is unreachable, a tran prepared
//!      on all reachable ones may or may not have been acknowledged (it may lack
//!      the missing member's prepare); committing it is safe either way: it is
//!      complete on every survivor, and a write not acknowledged may or may not
//!      appear.
//!    - prepared on some members and committed on another (its COMMIT went out
//!      to some members before the primary died: COMMITs ride lazily): committed.
//!    - prepared on some members and forgotten on another (resolved there before
//!      a checkpoint, or never prepared there): committed if that member's line
//!      holds the tran or a newer version (it committed it), aborted otherwise.
//!    - any other (aborted somewhere, never seen somewhere): **aborted**. It cannot
//!      have been acknowledged: some reachable member never completed its prepare.
//!    - a copy whose payload failed its CRC ([`InDoubtTran::damaged`]) is repaired
//!      with the payload read from a member that holds it intact
//!      ([`Replica::read_prepared`], [`Replica::repair`]). Damaged everywhere it is
//!      prepared, the damaged copies are read again (the mark comes from one read
//!      at the vSSD's open; a transient read fault leaves the disk intact), and the
//!      first that now reads intact repairs them all. Damaged still, it cannot be
//!      committed: it is aborted there, counted
//!      ([`Recovery::damaged_aborted`]) and logged as a warning (a member that
//!      committed it still holds its lines, which the next step copies).
//! 4. **Reconciliation.** The dirty lines of the reachable members, walked together
//!    in line order ([`Replica::dirty`], paged): a member that lacks a line's newest
//!    version, or holds an older one, gets it from one that holds it
//!    ([`copy_line`]). After it every member holds the newest version of every line
//!    dirty on any of them. (A line dirty on one member and clean on another at
//!    the same version, a CLEAN lost in the crash, is left so: the next destage
//!    cleans it again.)
//!
//! Recovery trusts the newest epoch among the replicas it reaches. With
//! `min_replicas` above half the configured members, any two takeovers share a
//! member, which carries the newer epoch; with fewer, a primary that reaches only
//! members cut off earlier (at an older epoch) recovers that old epoch: a split
//! brain, for the operator's policy to allow or not.
//!
//! For the core: this reasoning needs a line destaged only once the COMMIT of its
//! version is durable on every member (a destaged version is then never in doubt
//! anywhere), and recovery must run before any write or destage of the new epoch.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use taskio::AlignedBuf;
use vssd::TranOutcome;

use crate::config::TRAN_EPOCH_SHIFT;
use crate::copy::{Copied, copy_line};
use crate::dtm::record_epoch;
use crate::error::DtmError;
use crate::replica::{InDoubtTran, Replica};

/// In-doubt trans asked of a replica per call.
pub const IN_DOUBT_PAGE: usize = 256;
/// Dirty lines asked of each replica per call while reconciling; lines of one window
/// (at most this many per replica) are compared at a time.
pub const DIRTY_PAGE: usize = 1024;
const _: () = assert!(IN_DOUBT_PAGE > 0 && DIRTY_PAGE > 0);

const OP: &str = "recovery";

/// What [`recover`] did.
pub struct Recovery {
    /// The epoch the device is at now (past every epoch found).
    pub epoch: u64,
    /// Its members, in the order they were given (the local one first if it was
    /// first and is a member).
    pub members: Vec<Rc<dyn Replica>>,
    /// Members of the previous epoch that did not open: out of the new one.
    pub lost: Vec<u64>,
    /// Replicas that opened but were not members of the newest epoch (or were at an
    /// older one): out of the new epoch, for the core to resync.
    pub stale: Vec<u64>,
    /// In-doubt trans committed, and aborted (each counted once, whatever the
    /// number of members that held it).
    pub committed: u64,
    pub aborted: u64,
    /// Damaged copies repaired from an intact one (one per member repaired).
    pub repaired: u64,
    /// Trans aborted because no member held their payload intact.
    pub damaged_aborted: u64,
    /// Lines copied to a member that lacked their newest version (one per member
    /// and line).
    pub reconciled: u64,
}

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members: Vec<u64> = self.members.iter().map(|r| r.member()).collect();
        f.debug_struct("Recovery")
            .field("epoch", &self.epoch)
            .field("members", &members)
            .field("lost", &self.lost)
            .field("stale", &self.stale)
            .field("committed", &self.committed)
            .field("aborted", &self.aborted)
            .field("repaired", &self.repaired)
            .field("damaged_aborted", &self.damaged_aborted)
            .field("reconciled", &self.reconciled)
            .finish()
    }
}

/// Recovers the device whose replicas `opened` are (those that could be opened;
/// the local one first), `configured` its configured member ids (the members of a
/// device never given an epoch), needing `min_replicas` members of the newest
/// epoch reachable. See the module documentation.
pub fn recover(
    opened: &[Rc<dyn Replica>],
    configured: &[u64],
    min_replicas: usize,
) -> Result<Recovery, DtmError> {
    assert!(min_replicas >= 1, "min_replicas of 0");
    for (i, r) in opened.iter().enumerate() {
        assert!(
            opened[..i].iter().all(|o| o.member() != r.member()),
            "member {} opened twice",
            r.member()
        );
    }
    let Trusted {
        epoch,
        members,
        seen,
    } = newest_epoch(opened, configured)?;
    // A member of the trusted epoch still at an older one (recoveries or membership
    // changes that failed while they recorded their epoch on it) missed no write:
    // every member records an epoch before any write is made at it, and each
    // epoch's members come from the epoch it moved from (a joining replica records
    // the new epoch first), so every epoch since its own lists it and had no write.
    // It counts if its own epoch lists it (epoch 0 records no members: the
    // configured ones). A member past the trusted epoch (a refuted claim: no write
    // was made at it) counts too: right after it, no epoch came between, so the last
    // epoch that took effect on it is the trusted one (it recorded it, had it a
    // write) or an older one (the rule above); further past, it holds no write of
    // a later epoch (`newest_epoch` checked), so none had one that it took part in.
    let member = |r: &&Rc<dyn Replica>| {
        let info = r.info();
        let me = r.member();
        members.contains(&me)
            && ((info.epoch == epoch && (epoch == 0 || same_members(&info.members, &members)))
                || (info.epoch < epoch && (info.epoch == 0 || info.members.contains(&me)))
                || info.epoch > epoch)
    };
    let reachable: Vec<&Rc<dyn Replica>> = opened.iter().filter(member).collect();
    let stale: Vec<u64> = opened
        .iter()
        .filter(|r| !member(r))
        .map(|r| r.member())
        .collect();
    let ids: Vec<u64> = reachable.iter().map(|r| r.member()).collect();
    if reachable.len() < min_replicas {
        return Err(DtmError::TooFewReplicas {
            op: OP,
            epoch,
            members,
            reachable: ids,
            min: min_replicas,
        });
    }
    // Past every epoch seen, so that every replica can move to it; the refuted
    // claim of the epoch after the trusted one again, when every replica past the
    // trusted epoch holds exactly the claim this recovery makes (an earlier try of
    // it whose own record failed): retries then do not move the members one epoch
    // further each time.
    let past: Vec<&Rc<dyn Replica>> = opened.iter().filter(|r| r.info().epoch > epoch).collect();
    let new_epoch = if !past.is_empty()
        && past
            .iter()
            .all(|r| r.info().epoch == epoch + 1 && r.info().members == ids)
    {
        epoch + 1
    } else {
        seen + 1
    };
    let mut recovery = Recovery {
        epoch: new_epoch,
        members: reachable.iter().map(|&r| r.clone()).collect(),
        lost: members
            .iter()
            .copied()
            .filter(|m| !ids.contains(m))
            .collect(),
        stale,
        committed: 0,
        aborted: 0,
        repaired: 0,
        damaged_aborted: 0,
        reconciled: 0,
    };
    // The local replica (first, when reachable) last: see `record_epoch`.
    if let Some((_, e)) = record_epoch(&recovery.members, recovery.epoch, &ids)
        .into_iter()
        .next()
    {
        return Err(DtmError::from_replica(e, recovery.epoch));
    }
    let replicas: Vec<&dyn Replica> = reachable.iter().map(|r| &***r).collect();
    resolve_in_doubt(&replicas, &mut recovery).map_err(|e| fenced_at(e, recovery.epoch))?;
    reconcile(&replicas, &mut recovery).map_err(|e| fenced_at(e, recovery.epoch))?;
    Ok(recovery)
}

/// A stale epoch met after the fence: another primary moved past this one.
fn fenced_at(e: DtmError, epoch: u64) -> DtmError {
    match e {
        DtmError::Replica(e) => DtmError::from_replica(e, epoch),
        e => e,
    }
}

/// The epoch recovery trusts: the newest among `opened` whose claim stands, its
/// members (`configured` for epoch 0), and the newest epoch any of them is at (the
/// new epoch goes past it).
///
/// A claim (an epoch and its members) never took effect, and is *refuted*, when
/// - a member of it records that epoch with other members (a replica's record of an
///   epoch never changes), or
/// - its first member is at an older epoch: every claim is recorded on its first
///   member last (`crate::dtm::record_epoch`), after every other member recorded
///   it and before any write at it. A decider whose fence failed on its own
///   replica leaves such claims behind, and a recovery retried after that moves
///   the members it reached one epoch further each time (`tdrv sim dtm` seeds
///   92431, 7579): trusting that epoch would take a lone replica that missed the
///   writes acknowledged since for a member.
///
/// No write was made at a refuted epoch; the trusted one is the newest that stands.
fn newest_epoch(opened: &[Rc<dyn Replica>], configured: &[u64]) -> Result<Trusted, DtmError> {
    let Some(newest) = opened.iter().max_by_key(|r| r.info().epoch) else {
        return Err(DtmError::TooFewReplicas {
            op: OP,
            epoch: 0,
            members: configured.to_vec(),
            reachable: Vec::new(),
            min: 1,
        });
    };
    let seen = newest.info().epoch;
    let standing: Vec<&Rc<dyn Replica>> = opened
        .iter()
        .filter(|r| {
            let info = r.info();
            info.epoch > 0 && !refuted_by(opened, info.epoch, &info.members)
        })
        .collect();
    let Some(trusted) = standing.iter().max_by_key(|r| r.info().epoch) else {
        let members = if seen == 0 {
            configured.to_vec()
        } else {
            // Every claim refuted: none is trusted over another.
            let members = newest.info().members;
            check_agree(newest, seen, &members, opened)?;
            members
        };
        return Ok(Trusted {
            epoch: seen,
            members,
            seen,
        });
    };
    let (epoch, members) = (trusted.info().epoch, trusted.info().members);
    // Every replica past the trusted epoch holds a refuted claim. One epoch past
    // it, no epoch came between: the replica's own last epoch that took effect is
    // the trusted one or older. Further past, an epoch between may have taken
    // effect and had writes; had the replica a part in them, it holds them (dirty
    // or in doubt, their ids of that epoch) unless they were destaged. Refused if
    // it holds any: trusting the older epoch would lose them.
    for far in opened.iter().filter(|r| r.info().epoch > epoch + 1) {
        let newest = newest_write_epoch(far.as_ref())?;
        if newest > epoch {
            return Err(DtmError::Mismatch {
                op: OP,
                replica: far.name().to_string(),
                other: trusted.name().to_string(),
                why: format!(
                    "epoch {} with members {:?} never took effect, and the replica holds writes of epoch {newest}, after the newest that did ({epoch})",
                    far.info().epoch,
                    far.info().members
                ),
            });
        }
    }
    check_agree(trusted, epoch, &members, standing.iter().copied())?;
    Ok(Trusted {
        epoch,
        members,
        seen,
    })
}

/// Refused ([`DtmError::Mismatch`]) if a replica of `at` records `epoch` with other
/// members than `members`: two claims of one epoch that still differ.
fn check_agree<'r>(
    newest: &Rc<dyn Replica>,
    epoch: u64,
    members: &[u64],
    at: impl IntoIterator<Item = &'r Rc<dyn Replica>>,
) -> Result<(), DtmError> {
    let other = at.into_iter().find(|r| {
        let info = r.info();
        info.epoch == epoch && !same_members(&info.members, members)
    });
    if let Some(other) = other {
        return Err(DtmError::Mismatch {
            op: OP,
            replica: other.name().to_string(),
            other: newest.name().to_string(),
            why: format!(
                "epoch {epoch} has members {:?} against {members:?}",
                other.info().members
            ),
        });
    }
    Ok(())
}

/// Whether a replica of `opened` refutes the claim of `epoch` with `claim`'s
/// members (see [`newest_epoch`]).
fn refuted_by(opened: &[Rc<dyn Replica>], epoch: u64, claim: &[u64]) -> bool {
    opened.iter().any(|r| {
        let info = r.info();
        claim.contains(&r.member())
            && ((info.epoch == epoch && !same_members(&info.members, claim))
                || (claim.first() == Some(&r.member()) && info.epoch < epoch))
    })
}

/// The newest epoch of a write `r` holds: the epoch bits of its newest dirty
/// version or in-doubt tran (0: none).
fn newest_write_epoch(r: &dyn Replica) -> Result<u64, DtmError> {
    let mut newest = 0;
    in_doubt_pages(r, IN_DOUBT_PAGE, |page| {
        for d in page {
            newest = newest.max(d.tran >> TRAN_EPOCH_SHIFT);
        }
        Ok(())
    })?;
    let (mut from, mut count) = (0, DirtyCount::default());
    // Bounded: `count` refuses a replica that lists more lines than it has slots.
    loop {
        let page = dirty_page(r, from, DIRTY_PAGE)?;
        count.add(r, page.len() as u64)?;
        for &(_, version) in &page {
            newest = newest.max(version >> TRAN_EPOCH_SHIFT);
        }
        match page.last() {
            Some(&(line, _)) if page.len() >= DIRTY_PAGE => from = line + 1,
            _ => return Ok(newest),
        }
    }
}

/// What [`newest_epoch`] found.
struct Trusted {
    epoch: u64,
    members: Vec<u64>,
    seen: u64,
}

/// Whether two records of an epoch name the same members. The order is each
/// primary's own (itself first): two primaries that raced from the epoch before
/// with one member set each record their own order, and neither won (each move
/// from the old epoch succeeds on one replica only), so no write was made at it.
pub(crate) fn same_members(a: &[u64], b: &[u64]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Every in-doubt tran of `replicas` with the members holding it (index, entry).
type InDoubtMap = BTreeMap<u64, Vec<(usize, InDoubtTran)>>;

fn collect_in_doubt(replicas: &[&dyn Replica]) -> Result<InDoubtMap, DtmError> {
    let mut all: InDoubtMap = BTreeMap::new();
    for (i, r) in replicas.iter().enumerate() {
        in_doubt_pages(*r, IN_DOUBT_PAGE, |page| {
            for d in page {
                all.entry(d.tran).or_default().push((i, d));
            }
            Ok(())
        })?;
    }
    Ok(all)
}

/// Pages through `r`'s in-doubt trans ([`Replica::in_doubt`], `page_max` a call),
/// each page checked and handed to `each` before the next is asked for. Bounded by
/// the ids, which must rise, and by a count: a tran in doubt holds at least one of
/// the replica's `lines` slots, so a replica that lists more is refused
/// ([`DtmError::BadAnswer`]) rather than paged for ever.
pub(crate) fn in_doubt_pages(
    r: &dyn Replica,
    page_max: usize,
    mut each: impl FnMut(Vec<InDoubtTran>) -> Result<(), DtmError>,
) -> Result<(), DtmError> {
    let bad = |why: String| DtmError::BadAnswer {
        op: "in_doubt",
        replica: r.name().to_string(),
        why,
    };
    let slots = r.info().lines;
    let (mut after, mut listed) = (0, 0u64);
    // Bounded: each page lists at least one tran (or is the last), and `listed`
    // stays at most `slots`.
    loop {
        let (page, more) = r.in_doubt(after, page_max)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        if page.first().is_some_and(|d| d.tran <= after)
            || page.windows(2).any(|w| w[0].tran >= w[1].tran)
            || page.len() > page_max
        {
            return Err(bad(format!(
                "trans after {after} listed out of order: {page:?}"
            )));
        }
        after = last.tran;
        listed += page.len() as u64;
        if listed > slots {
            return Err(bad(format!(
                "{listed} trans listed in doubt (up to tran {after}), more than its {slots} slots can hold"
            )));
        }
        each(page)?;
        if !more {
            return Ok(());
        }
    }
}

/// Step 3 of the module documentation.
fn resolve_in_doubt(replicas: &[&dyn Replica], recovery: &mut Recovery) -> Result<(), DtmError> {
    for (tran, holders) in collect_in_doubt(replicas)? {
        let (first, entry) = &holders[0];
        if let Some((i, d)) = holders.iter().find(|(_, d)| {
            (d.line, d.line_count, d.payload_len)
                != (entry.line, entry.line_count, entry.payload_len)
        }) {
            return Err(DtmError::Mismatch {
                op: OP,
                replica: replicas[*i].name().to_string(),
                other: replicas[*first].name().to_string(),
                why: format!("in-doubt tran {tran}: {d:?} against {entry:?}"),
            });
        }
        if decide_commit(replicas, tran, entry.line, &holders)? {
            commit_everywhere(replicas, tran, &holders, recovery)?;
        } else {
            for &(i, _) in &holders {
                replicas[i].abort(tran)?;
            }
            recovery.aborted += 1;
        }
    }
    Ok(())
}

/// Whether in-doubt `tran` (first line `line`), prepared on `holders`, is to be
/// committed: the module documentation's rules.
fn decide_commit(
    replicas: &[&dyn Replica],
    tran: u64,
    line: u64,
    holders: &[(usize, InDoubtTran)],
) -> Result<bool, DtmError> {
    if holders.len() == replicas.len() {
        return Ok(true);
    }
    let mut committed_on = None;
    let mut aborted_on = None;
    let mut forgotten_newer = false;
    for (i, r) in replicas.iter().enumerate() {
        if holders.iter().any(|&(h, _)| h == i) {
            continue;
        }
        match r.outcome(tran)? {
            TranOutcome::Committed => committed_on = Some(i),
            TranOutcome::Aborted => aborted_on = Some(i),
            TranOutcome::Forgotten => {
                let mut buf = AlignedBuf::new(r.info().line_size as usize);
                forgotten_newer |= r.read(line, &mut buf)?.is_some_and(|v| v >= tran);
            }
            // Prepared meanwhile: nothing prepares while the members are fenced.
            TranOutcome::Prepared | TranOutcome::Unknown => {}
        }
    }
    match (committed_on, aborted_on) {
        (Some(c), Some(a)) => Err(DtmError::TranConflict {
            op: OP,
            tran,
            replica: replicas[c].name().to_string(),
            outcome: TranOutcome::Committed,
            other: replicas[a].name().to_string(),
            other_outcome: TranOutcome::Aborted,
        }),
        (Some(_), None) => Ok(true),
        (None, Some(_)) => Ok(false),
        (None, None) => Ok(forgotten_newer),
    }
}

/// Commits `tran` on every holder, a damaged copy repaired from an intact one; with
/// no intact copy, aborts it everywhere.
fn commit_everywhere(
    replicas: &[&dyn Replica],
    tran: u64,
    holders: &[(usize, InDoubtTran)],
    recovery: &mut Recovery,
) -> Result<(), DtmError> {
    let (damaged, intact): (Vec<_>, Vec<_>) = holders.iter().partition(|(_, d)| d.damaged);
    if !damaged.is_empty() {
        // Read before any intact copy is committed: only a prepared one is read.
        // With no copy intact, the damaged ones are read again: a copy is marked
        // damaged by one read at the vSSD's open, and a read fault there (a
        // transient corruption) leaves a payload that is intact on disk.
        let payload = if intact.is_empty() {
            match read_intact(replicas, tran, &damaged) {
                Ok(payload) => payload,
                Err(e) => {
                    tracing::warn!(
                        tran,
                        line = holders[0].1.line,
                        "dtm recovery aborts in-doubt tran {tran}: its payload is damaged on every member that holds it prepared ({}): {e}",
                        names(replicas, holders),
                    );
                    for &(i, _) in holders {
                        replicas[i].abort(tran)?;
                    }
                    recovery.damaged_aborted += 1;
                    return Ok(());
                }
            }
        } else {
            read_intact(replicas, tran, &intact)?
        };
        for &&(i, _) in &damaged {
            replicas[i].repair(tran, &payload)?;
            recovery.repaired += 1;
        }
    }
    for &&(i, _) in &intact {
        replicas[i].commit(&[tran])?;
    }
    recovery.committed += 1;
    Ok(())
}

/// The payload of prepared `tran` from the first of `intact` (or of copies marked
/// damaged, read again) that reads it intact.
fn read_intact(
    replicas: &[&dyn Replica],
    tran: u64,
    intact: &[&(usize, InDoubtTran)],
) -> Result<AlignedBuf, DtmError> {
    let mut failed = None;
    for &&(i, _) in intact {
        match replicas[i].read_prepared(tran) {
            Ok(payload) => return Ok(payload),
            Err(e) => {
                tracing::warn!(tran, "dtm recovery: {e}; trying another copy");
                failed = Some(e);
            }
        }
    }
    Err(failed.expect("at least one intact copy").into())
}

fn names(replicas: &[&dyn Replica], holders: &[(usize, InDoubtTran)]) -> String {
    let names: Vec<&str> = holders.iter().map(|&(i, _)| replicas[i].name()).collect();
    names.join(", ")
}

/// Step 4 of the module documentation: the dirty listings walked in windows of at
/// most [`DIRTY_PAGE`] lines per replica.
fn reconcile(replicas: &[&dyn Replica], recovery: &mut Recovery) -> Result<(), DtmError> {
    let mut from = 0;
    let mut counts = vec![DirtyCount::default(); replicas.len()];
    // Bounded: each window moves `from` past a full page of some replica's lines,
    // or is the last; a replica that lists more lines than it has slots is refused.
    loop {
        let mut pages = Vec::with_capacity(replicas.len());
        for r in replicas {
            pages.push(dirty_page(*r, from, DIRTY_PAGE)?);
        }
        // Lines up to the end of the shortest full page are listed by every replica
        // that holds them dirty.
        let end = pages
            .iter()
            .filter(|p| p.len() >= DIRTY_PAGE)
            .filter_map(|p| p.last().map(|&(line, _)| line))
            .min();
        for ((r, page), count) in replicas.iter().zip(&pages).zip(&mut counts) {
            let window = page.iter().filter(|&&(l, _)| end.is_none_or(|e| l <= e));
            count.add(*r, window.count() as u64)?;
        }
        let mut lines: BTreeMap<u64, Vec<Option<u64>>> = BTreeMap::new();
        for (i, page) in pages.iter().enumerate() {
            for &(line, version) in page.iter().filter(|&&(l, _)| end.is_none_or(|e| l <= e)) {
                lines
                    .entry(line)
                    .or_insert_with(|| vec![None; replicas.len()])[i] = Some(version);
            }
        }
        for (line, versions) in lines {
            reconcile_line(replicas, line, &versions, recovery)?;
        }
        match end {
            Some(e) if e < u64::MAX => from = e + 1,
            _ => return Ok(()),
        }
    }
}

/// One page of `r`'s dirty lines from `from` ([`Replica::dirty`], at most `max`),
/// checked: in increasing line order from `from`, at most `max`.
pub(crate) fn dirty_page(
    r: &dyn Replica,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, u64)>, DtmError> {
    let page = r.dirty(from, max)?;
    if page.first().is_some_and(|&(line, _)| line < from)
        || page.windows(2).any(|w| w[0].0 >= w[1].0)
        || page.len() > max
    {
        return Err(DtmError::BadAnswer {
            op: "dirty",
            replica: r.name().to_string(),
            why: format!("dirty lines from {from} listed out of order: {page:?}"),
        });
    }
    Ok(page)
}

/// The dirty lines a walk over one replica's listing has passed: no more than the
/// replica has slots (a dirty line holds one), so a replica that lists more is
/// refused ([`DtmError::BadAnswer`]) rather than walked for ever.
#[derive(Clone, Copy, Default)]
pub(crate) struct DirtyCount {
    passed: u64,
}

impl DirtyCount {
    /// `n` more of `r`'s lines passed.
    pub(crate) fn add(&mut self, r: &dyn Replica, n: u64) -> Result<(), DtmError> {
        self.passed += n;
        let slots = r.info().lines;
        if self.passed > slots {
            return Err(DtmError::BadAnswer {
                op: "dirty",
                replica: r.name().to_string(),
                why: format!(
                    "{} dirty lines listed, more than its {slots} slots can hold",
                    self.passed
                ),
            });
        }
        Ok(())
    }
}

/// Brings the newest dirty version of `line` (`versions`: each replica's dirty
/// version, if dirty there) to every replica that does not list it. One that holds
/// a newer version, clean (destaged), is the source instead: the older dirty
/// versions are stale.
fn reconcile_line(
    replicas: &[&dyn Replica],
    line: u64,
    versions: &[Option<u64>],
    recovery: &mut Recovery,
) -> Result<(), DtmError> {
    let (mut source, mut newest) = versions
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .max_by_key(|&(_, v)| v)
        .expect("a listed line is dirty somewhere");
    let mut done = vec![false; replicas.len()];
    done[source] = true;
    // Bounded: each pass marks a replica done or moves `newest` up, and restarts
    // only when it moves.
    let mut i = 0;
    while i < replicas.len() {
        if done[i] || versions[i] == Some(newest) {
            done[i] = true;
            i += 1;
            continue;
        }
        match copy_line(replicas[source], replicas[i], line, newest)? {
            Copied::Written | Copied::Committed => recovery.reconciled += 1,
            Copied::Current { version } if version > newest => {
                (source, newest) = (i, version);
                done = vec![false; replicas.len()];
                done[source] = true;
                i = 0;
                continue;
            }
            Copied::Current { .. } => {}
            Copied::Moved { found } => {
                return Err(DtmError::LineMoved {
                    op: OP,
                    line,
                    replica: replicas[source].name().to_string(),
                    version: newest,
                    found,
                });
            }
        }
        done[i] = true;
        i += 1;
    }
    Ok(())
}
