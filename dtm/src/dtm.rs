//! The `Dtm` of one cache device: every client write becomes a tran that lands on
//! every replica vSSD of the device's epoch before it is acknowledged.
//!
//! A write ([`Dtm::write`]): a slot for a write in flight, the range lock of its
//! lines ([`crate::lock`]), a tran id from the primary vSSD (never reused; at least
//! the epoch's floor, [`crate::config::TRAN_EPOCH_SHIFT`]), then
//! `writep1` on every member at once (the primary in the calling task, each other
//! member in a task of its own, joined). All succeeded: the primary commits at once
//! (a read after the acknowledgement sees the write), the other members' COMMITs are
//! queued to their committers ([`crate::commit`]) and the caller may acknowledge.
//! The COMMITs need not be durable: a tran prepared on every member of the epoch is
//! committed by recovery. The range lock and the slot are released when the last
//! member committed.
//!
//! Joined by join handles, not by taskio's `Barrier`: a barrier round fills only if
//! every member task arrives, so one that panicked (a bug of a replica) would leave
//! the writer parked for ever, with no bound and no report; `JoinHandle::join`
//! returns its panic, and waiting for n handles costs the same n wakeups.
//!
//! A write longer than `tran_lines_max` lines is split into trans of at most that
//! many lines, in order: each tran is atomic (after a crash all its lines or none),
//! the write as a whole is not: a crash, or an error returned midway, may leave a
//! prefix of its trans, as a disk may keep part of a large write.
//!
//! Failure: a writep1 failed -> the tran is aborted where it prepared, then
//! - a `StaleEpoch` anywhere: the DTM is fenced (another primary took the device
//!   over); this and every later write fails, none is acknowledged;
//! - a loss ([`crate::ReplicaErrorKind::is_loss`]): the lost members are dropped and
//!   the survivors move to epoch + 1 (`set_epoch` on each, the primary last:
//!   `record_epoch`), then the write is retried
//!   with a new tran on the new set. [`LossPolicy::Degrade`] stops (every write fails)
//!   once fewer than `min_replicas` would be left; [`LossPolicy::WriteThrough`] writes
//!   the backing store synchronously while the device has fewer members than it
//!   started with, then drops the lines from every replica.
//!
//! A slow replica stalls a write no longer than its own call timeout (the
//! RemoteReplica's configuration) before the policy applies.
//!
//! Membership changes (a loss, a resync's new epoch) take the write side of the
//! `change` gate, each write's phase 1 its read side: so a write is acknowledged only
//! by the members of the epoch current while it ran (DESIGN.md invariant 6), and a
//! change waits for the writes in phase 1 (each bounded by the call timeouts).
//!
//! Lock order: slot, then range lock, then the gate. A membership change holds the
//! gate only; a committer takes the gate only to drop its replica; a resync holds
//! one line's range lock (no gate) while it copies that line; a caller holding
//! [`Dtm::lock_lines`] may call [`Dtm::clean`] and [`Dtm::read`], which take no
//! range lock, but no write or discard of those lines.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use taskio::{AlignedBuf, Builder, JoinHandle, Rendez, RwLock, now, spawn, yield_now};
use vssd::{Hit, Vssd};

use crate::commit::Committer;
use crate::config::{DtmConfig, LossPolicy, MEMBERS_MAX, TRAN_EPOCH_SHIFT};
use crate::error::DtmError;
use crate::lock::{RangeLock, RangeLocks, Slot, Slots};
use crate::replica::{Replica, ReplicaError, ReplicaErrorKind};
use crate::resync::ResyncProgress;

/// What a write became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Cached on every member as `tran` (of a split write, its last tran).
    Tran(u64),
    /// Written through to the backing store (the device is short of replicas under
    /// [`LossPolicy::WriteThrough`]) and dropped from the cache.
    Through,
}

impl Written {
    pub fn tran(self) -> Option<u64> {
        match self {
            Written::Tran(t) => Some(t),
            Written::Through => None,
        }
    }
}

/// Counters of one DTM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DtmStats {
    /// Writes acknowledged.
    pub writes: u64,
    /// Trans committed (acknowledged), split writes counting each.
    pub trans: u64,
    /// Writes split into several trans.
    pub splits: u64,
    /// Trans aborted after a writep1 failed.
    pub aborts: u64,
    /// Trans retried after a membership change.
    pub retries: u64,
    /// Trans written through to the backing store.
    pub written_through: u64,
    /// Members dropped after a loss.
    pub members_lost: u64,
    /// Epoch changes made (losses and resyncs).
    pub epoch_changes: u64,
    /// Lazy COMMIT calls and the trans they carried.
    pub commit_calls: u64,
    pub commits_sent: u64,
    /// Range lock requests that had to wait.
    pub lock_waits: u64,
    /// Trans not yet committed on every member, now.
    pub in_flight: u64,
    /// Lines marked clean and discard calls.
    pub cleans: u64,
    pub discards: u64,
    /// Resyncs finished, lines copied and dropped by them.
    pub resyncs: u64,
    pub resync_lines_copied: u64,
    pub resync_lines_dropped: u64,
}

/// Lines held by [`Dtm::lock_lines`]; released when dropped.
pub struct LineLock {
    _lock: RangeLock,
}

/// A replica of the device and its committer (none for the primary: it commits in
/// the writer's task).
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) replica: Rc<dyn Replica>,
    pub(crate) committer: Option<Rc<Committer>>,
}

impl Member {
    pub(crate) fn id(&self) -> u64 {
        self.replica.member()
    }
}

/// The membership: changed only under the write side of the gate.
pub(crate) struct View {
    pub(crate) epoch: u64,
    /// The epoch's members, the primary first.
    pub(crate) members: Vec<Member>,
    /// Replicas being resynced: they receive every write, their failure fails none.
    pub(crate) syncing: Vec<Member>,
    /// The smallest `tran_lines_max` of the members and the syncing replicas.
    pub(crate) tran_lines_max: u64,
}

impl View {
    fn targets(&self) -> Vec<Member> {
        self.members.iter().chain(&self.syncing).cloned().collect()
    }

    pub(crate) fn refresh_tran_lines_max(&mut self, primary: &Vssd) {
        self.tran_lines_max = self
            .members
            .iter()
            .chain(&self.syncing)
            .map(|m| m.replica.info().tran_lines_max)
            .fold(primary.tran_lines_max(), u64::min)
            .max(1);
    }
}

/// Why the DTM stopped taking writes.
#[derive(Clone, Debug)]
enum Down {
    Fenced {
        replica: String,
        replica_epoch: u64,
    },
    TooFew {
        members: Vec<u64>,
        reachable: Vec<u64>,
    },
    Stopped {
        why: String,
    },
    Closed,
}

/// A tran acknowledged and not yet committed on every member.
struct PendingTran {
    left: usize,
    _lock: RangeLock,
    _slot: Slot,
}

pub(crate) struct Inner {
    pub(crate) primary: Vssd,
    pub(crate) device: String,
    pub(crate) line_size: u64,
    /// The device's size in lines ([`DtmConfig::device_lines`]).
    pub(crate) lines: u64,
    pub(crate) config: DtmConfig,
    /// Members at start: short of these, [`LossPolicy::WriteThrough`] writes through.
    replicas_wanted: usize,
    pub(crate) view: RefCell<View>,
    pub(crate) change: RwLock<()>,
    pub(crate) locks: Rc<RangeLocks>,
    slots: Rc<Slots>,
    pending: RefCell<HashMap<u64, PendingTran>>,
    drained: Rendez,
    /// Woken whenever a tran left `pending` ([`Dtm::flush_trans`]).
    committed: Rendez,
    down: RefCell<Option<Down>>,
    pub(crate) stats: Cell<DtmStats>,
    pub(crate) resync: RefCell<Option<ResyncProgress>>,
    /// Replicas being resynced that failed a write or another call, marked before
    /// the membership gate is released (their drop, `lose`, comes after it): a
    /// resync's join, waiting for the gate, must not make one a member in between
    /// (`tdrv sim dtm` seed 69012: a write acknowledged without the replica, which
    /// joined anyway and then lacked it; recovery aborted the write). At most one
    /// entry per member.
    pub(crate) failed_syncing: RefCell<Vec<u64>>,
    /// Itself, for the committer tasks.
    weak: RefCell<Weak<Inner>>,
}

/// The DTM of one cache device, on one taskio runtime. See the module documentation.
#[derive(Clone)]
pub struct Dtm {
    inner: Rc<Inner>,
}

/// Runs `op` on each of `targets` at once: the first in the calling task, each other
/// in a task of its own (inline if no task can be spawned), joined; the results in
/// `targets`' order.
pub(crate) fn fan_out<T: 'static>(
    targets: &[Rc<dyn Replica>],
    op: impl Fn(&dyn Replica) -> Result<T, ReplicaError> + Clone + 'static,
) -> Vec<Result<T, ReplicaError>> {
    enum Run<T> {
        Task(JoinHandle<Result<T, ReplicaError>>),
        Done(Result<T, ReplicaError>),
    }
    let Some((first, rest)) = targets.split_first() else {
        return Vec::new();
    };
    let runs: Vec<Run<T>> = rest
        .iter()
        .map(|r| {
            let (task_r, task_op) = (r.clone(), op.clone());
            match spawn(move || task_op(&*task_r)) {
                Ok(h) => Run::Task(h),
                Err(_) => Run::Done(op(&**r)),
            }
        })
        .collect();
    if runs.iter().any(|r| matches!(r, Run::Task(_))) {
        // The others first: a remote call is on the critical path (a round trip
        // plus the peer's own I/O), the first member's a local one. The first yield
        // lets each task push its request (tasks run in the order they became
        // ready), the second lets the connection's writer, woken by those pushes,
        // send them, gathered with whatever else was queued (a lazy COMMIT); only
        // then does this task start its own I/O. Without it the requests left
        // after the primary's writep1 had submitted its I/O (`tdrv bench dtm`,
        // strace: two io_submit calls, each a VM exit here, before the send).
        yield_now();
        yield_now();
    }
    let mut out = Vec::with_capacity(targets.len());
    out.push(op(&**first));
    for run in runs {
        out.push(match run {
            Run::Task(h) => h
                .join()
                .unwrap_or_else(|e| panic!("a replica call panicked: {e}")),
            Run::Done(r) => r,
        });
    }
    out
}

/// Records `epoch` with members `ids` on `replicas` (the primary first): on every
/// other one at once, then on the primary only if all of them recorded it. The
/// failures, with their member ids (none: recorded everywhere).
///
/// The primary last, so its own vSSD never holds an epoch that another member of it
/// lacks. A primary cut off from its members would otherwise record its next epoch
/// alone, while the primary taking over fences the members it reaches to the same
/// epoch number with other members: two claims of one epoch, and the old primary's
/// vSSD would pass for one of the new epoch (`tdrv sim dtm` seeds 692, 10967, 12574).
/// Recorded on the others first, the claim is on a member that any quorum of the
/// takeover reaches, or it is refused there (the fence) and never recorded.
/// Recovery's fence records so too (its local replica first in `replicas`): a slow
/// member that applies another decider's epoch of the same number after the fence's
/// call timed out leaves the local replica at its old epoch, not holding a second
/// claim that refutes the other (`tdrv sim dtm` seed 12376).
pub(crate) fn record_epoch(
    replicas: &[Rc<dyn Replica>],
    epoch: u64,
    ids: &[u64],
) -> Vec<(u64, ReplicaError)> {
    let Some((primary, others)) = replicas.split_first() else {
        return Vec::new();
    };
    let set_ids = ids.to_vec();
    let mut failures: Vec<(u64, ReplicaError)> = others
        .iter()
        .zip(fan_out(others, move |r| r.set_epoch(epoch, &set_ids)))
        .filter_map(|(r, result)| result.err().map(|e| (r.member(), e)))
        .collect();
    if failures.is_empty()
        && let Err(e) = primary.set_epoch(epoch, ids)
    {
        failures.push((primary.member(), e));
    }
    failures
}

/// `bytes` in a new aligned buffer.
pub(crate) fn aligned_copy(bytes: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::new(bytes.len().next_multiple_of(taskio::ALIGN));
    b.set_len(bytes.len());
    b.copy_from_slice(bytes);
    b
}

fn replicas(members: &[Member]) -> Vec<Rc<dyn Replica>> {
    members.iter().map(|m| m.replica.clone()).collect()
}

pub(crate) fn ids(members: &[Member]) -> Vec<u64> {
    members.iter().map(Member::id).collect()
}

impl Dtm {
    /// Starts the DTM of the device whose primary vSSD is `primary`, with `members`
    /// (the local replica on `primary` first; recovery has run on each) at `epoch`:
    /// records the epoch in every member (`set_epoch`, durable) and starts a
    /// committer task for each member but the primary.
    pub fn start(
        primary: Vssd,
        members: Vec<Rc<dyn Replica>>,
        epoch: u64,
        config: DtmConfig,
    ) -> Result<Dtm, DtmError> {
        const OP: &str = "start";
        assert!(!members.is_empty(), "a device needs its primary replica");
        assert!(config.min_replicas >= 1, "min_replicas 0");
        assert!(config.commit_batch_max >= 1, "commit_batch_max 0");
        let device = primary.superblock().device_id.clone();
        let line_size = u64::from(primary.geometry().line_size());
        let capacity = primary.geometry().lines();
        let lines = config.device_lines.unwrap_or(capacity);
        assert!(lines >= 1, "a device of 0 lines");
        if members.len() > MEMBERS_MAX {
            return Err(DtmError::Unfit {
                op: OP,
                device,
                replica: members[MEMBERS_MAX].name().to_string(),
                why: format!("more than {MEMBERS_MAX} members"),
            });
        }
        for (i, r) in members.iter().enumerate() {
            check_fit(OP, &device, line_size, capacity, r.as_ref())?;
            if members[..i].iter().any(|o| o.member() == r.member()) {
                return Err(DtmError::Unfit {
                    op: OP,
                    device,
                    replica: r.name().to_string(),
                    why: format!("member id {} used twice", r.member()),
                });
            }
        }
        if matches!(config.policy, LossPolicy::Degrade) && members.len() < config.min_replicas {
            let ids: Vec<u64> = members.iter().map(|r| r.member()).collect();
            return Err(DtmError::TooFewReplicas {
                op: OP,
                epoch,
                members: ids.clone(),
                reachable: ids,
                min: config.min_replicas,
            });
        }
        let member_ids: Vec<u64> = members.iter().map(|r| r.member()).collect();
        if let Some((_, e)) = record_epoch(&members, epoch, &member_ids)
            .into_iter()
            .next()
        {
            return Err(DtmError::from_replica(e, epoch));
        }
        let replicas_wanted = members.len();
        let inner = Rc::new(Inner {
            primary,
            device,
            line_size,
            lines,
            slots: Rc::new(Slots::new(config.writes_in_flight_max)),
            config,
            replicas_wanted,
            view: RefCell::new(View {
                epoch,
                members: Vec::new(),
                syncing: Vec::new(),
                tran_lines_max: 1,
            }),
            change: RwLock::new(()),
            locks: Rc::new(RangeLocks::default()),
            pending: RefCell::new(HashMap::new()),
            committed: Rendez::new(),
            drained: Rendez::new(),
            down: RefCell::new(None),
            stats: Cell::new(DtmStats::default()),
            resync: RefCell::new(None),
            failed_syncing: RefCell::new(Vec::new()),
            weak: RefCell::new(Weak::new()),
        });
        *inner.weak.borrow_mut() = Rc::downgrade(&inner);
        for (i, replica) in members.into_iter().enumerate() {
            let committer = if i == 0 {
                None
            } else {
                Some(inner.start_committer(OP, &replica)?)
            };
            inner
                .view
                .borrow_mut()
                .members
                .push(Member { replica, committer });
        }
        inner
            .view
            .borrow_mut()
            .refresh_tran_lines_max(&inner.primary);
        Ok(Dtm { inner })
    }

    /// Writes `data` (whole lines, the last may be short) at `first_line` on every
    /// member; when it returns `Ok` the write may be acknowledged. See the module
    /// documentation.
    pub fn write(&self, first_line: u64, data: &AlignedBuf) -> Result<Written, DtmError> {
        self.inner.write(first_line, data)
    }

    /// Reads `line` from the primary vSSD into `buf` (a line's capacity): its version
    /// and state, or `None` when the cache does not hold it. Refused once fenced
    /// (another primary may have newer data) or closed; a DTM stopped short of
    /// replicas still reads (no write was acknowledged anywhere else).
    pub fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<Hit>, DtmError> {
        self.check_read()?;
        self.inner
            .primary
            .read_into(line, buf)
            .map_err(|source| DtmError::Vssd {
                op: "read",
                device: self.inner.device.clone(),
                source: Box::new(source),
            })
    }

    /// What [`Dtm::read`] checks before it reads: `Err` once fenced (another primary
    /// may have newer data) or closed. A copy of the device's bytes kept above the
    /// DTM (the device's RAM tier) is served only after this check, as a read is.
    pub fn check_read(&self) -> Result<(), DtmError> {
        if matches!(
            *self.inner.down.borrow(),
            Some(Down::Fenced { .. } | Down::Closed)
        ) {
            self.inner.check_up("read")?;
        }
        self.check_not_fenced("read")
    }

    /// Fences the DTM when the primary vSSD moved past the epoch of its opening here:
    /// another primary's recovery took the device over (this DTM's own epoch change
    /// moves the opening first), and the cache may be stale now. A read learns it
    /// so before any write of this DTM would.
    fn check_not_fenced(&self, op: &'static str) -> Result<(), DtmError> {
        let inner = &self.inner;
        let primary_epoch = inner.primary.epoch();
        if primary_epoch <= inner.view.borrow().epoch {
            return Ok(());
        }
        let Some(local) = inner
            .view
            .borrow()
            .members
            .first()
            .map(|m| m.replica.clone())
        else {
            return Ok(());
        };
        if primary_epoch <= local.info().epoch {
            return Ok(()); // this DTM's own epoch change, under way
        }
        Err(inner.fence(&ReplicaError {
            op,
            replica: local.name().to_string(),
            kind: ReplicaErrorKind::StaleEpoch {
                replica_epoch: primary_epoch,
            },
        }))
    }

    /// After a destage copied `version` of `line` to the backing store: marks it
    /// clean on every replica where that is still its version. Whether the primary's
    /// copy is clean now.
    ///
    /// Call it holding the line ([`Dtm::lock_lines`]): that also waits for the lazy
    /// COMMITs of the write being cleaned (a tran holds its lines until they are done
    /// on every member); without it, a member whose COMMIT has not arrived yet
    /// ignores the CLEAN and keeps the line dirty for ever.
    pub fn clean(&self, line: u64, version: u64) -> Result<bool, DtmError> {
        let cleaned = self
            .inner
            .on_all("clean", move |r| r.clean(line, version))?;
        self.inner.count(|s| s.cleans += 1);
        Ok(cleaned)
    }

    /// DISCARD: drops lines `first..first + count` from every replica (under their
    /// range lock, so a write in flight lands on every replica before or after it).
    /// How many the primary held.
    pub fn discard(&self, first: u64, count: u64) -> Result<u64, DtmError> {
        const OP: &str = "discard";
        let inner = &self.inner;
        inner.check_up(OP)?;
        if count == 0 || first >= inner.lines {
            return Err(inner.range_error(OP, first, count, 0));
        }
        let count = count.min(inner.lines - first);
        let _lock = inner.lock_range(OP, first, count)?;
        let held = inner.on_all(OP, move |r| r.invalidate(first, count))?;
        inner.count(|s| s.discards += 1);
        Ok(held)
    }

    /// Holds lines `first..first + count` against writes, discards and resync (waiting
    /// `wait_max` at most): for what reads a line's version in one place and writes
    /// it in another, so no write of those lines lands in between. The destage (read
    /// a dirty version, write it to the backing store, [`Dtm::clean`]): a destage of
    /// an older version landing after a write-through would undo it. The fill of a
    /// miss (read the backing store, `insert_clean`): a fill must not install data
    /// older than a write.
    pub fn lock_lines(&self, first: u64, count: u64) -> Result<LineLock, DtmError> {
        const OP: &str = "lock_lines";
        let inner = &self.inner;
        if count == 0 || first >= inner.lines || count > inner.lines - first {
            return Err(inner.range_error(OP, first, count, 0));
        }
        Ok(LineLock {
            _lock: inner.lock_range(OP, first, count)?,
        })
    }

    /// [`Dtm::lock_lines`] without waiting: `None` when a write, discard, resync or
    /// lock holds any of the lines; it goes ahead of the requests waiting for them.
    /// For a destage, which must not wait behind a write that waits for room in the
    /// cache only a destage can make, nor behind a request waiting for such a write
    /// (that request would keep the lines it waits for from the destage): it takes
    /// the lines nobody holds.
    pub fn try_lock_lines(&self, first: u64, count: u64) -> Result<Option<LineLock>, DtmError> {
        let inner = &self.inner;
        if count == 0 || first >= inner.lines || count > inner.lines - first {
            return Err(inner.range_error("try_lock_lines", first, count, 0));
        }
        Ok(inner
            .locks
            .try_lock(first, count)
            .map(|lock| LineLock { _lock: lock }))
    }

    /// Waits until every acknowledged tran is committed on every member (the lazy
    /// COMMITs sent and answered), at most `wait_max`.
    pub fn quiesce(&self) -> Result<(), DtmError> {
        let inner = &self.inner;
        let deadline = now() + inner.config.wait_max;
        while !inner.pending.borrow().is_empty() {
            if now() >= deadline || !inner.drained.sleep_until(deadline) && now() >= deadline {
                return Err(DtmError::Busy {
                    op: "quiesce",
                    device: inner.device.clone(),
                    what: "the lazy commits",
                    first: 0,
                    end: inner.lines,
                    waited: inner.config.wait_max,
                });
            }
        }
        Ok(())
    }

    /// [`Dtm::quiesce`], then the primary's COMMITs made durable.
    pub fn flush(&self) -> Result<(), DtmError> {
        self.quiesce()?;
        self.sync_primary("flush")
    }

    /// [`Dtm::flush`] for `trans` only: waits until each of them is committed on
    /// every member (at most `wait_max`; trans of other lines may stay pending), then
    /// makes the primary's COMMITs durable. Destage waits so for its own lines'
    /// versions, not for every write in flight.
    pub fn flush_trans(&self, trans: &[u64]) -> Result<(), DtmError> {
        let inner = &self.inner;
        let deadline = now() + inner.config.wait_max;
        let waiting = || {
            let pending = inner.pending.borrow();
            trans.iter().any(|t| pending.contains_key(t))
        };
        // Bounded by the deadline.
        while waiting() {
            if now() >= deadline || !inner.committed.sleep_until(deadline) && now() >= deadline {
                return Err(DtmError::Busy {
                    op: "flush_trans",
                    device: inner.device.clone(),
                    what: "the lazy commits of the trans",
                    first: 0,
                    end: inner.lines,
                    waited: inner.config.wait_max,
                });
            }
        }
        self.sync_primary("flush_trans")
    }

    fn sync_primary(&self, op: &'static str) -> Result<(), DtmError> {
        self.inner.primary.sync().map_err(|source| DtmError::Vssd {
            op,
            device: self.inner.device.clone(),
            source: Box::new(source),
        })
    }

    /// Brings `replica`, a stale replica that returned (recovery has run on it), up
    /// to date while writes go on, then makes it a member in a new epoch. See
    /// [`crate::resync`].
    pub fn resync(&self, replica: Rc<dyn Replica>) -> Result<ResyncProgress, DtmError> {
        self.inner.resync(replica)
    }

    /// The running resync's progress.
    pub fn resync_progress(&self) -> Option<ResyncProgress> {
        self.inner.resync.borrow().clone()
    }

    /// Stops the DTM: every later call fails, the committers stop (trans prepared on
    /// every member are committed by recovery).
    pub fn close(&self) {
        self.inner.go_down(Down::Closed);
        self.inner.close_committers();
    }

    pub fn epoch(&self) -> u64 {
        self.inner.view.borrow().epoch
    }

    /// The member ids of the current epoch, the primary first.
    pub fn members(&self) -> Vec<u64> {
        ids(&self.inner.view.borrow().members)
    }

    /// The replicas being resynced.
    pub fn syncing(&self) -> Vec<u64> {
        ids(&self.inner.view.borrow().syncing)
    }

    /// Whether writes go to the backing store now (short of replicas under
    /// [`LossPolicy::WriteThrough`]).
    pub fn writing_through(&self) -> bool {
        self.inner.short_of_replicas()
    }

    /// The error every write returns now, if the DTM stopped taking writes.
    pub fn down(&self) -> Option<DtmError> {
        self.inner.check_up("write").err()
    }

    pub fn primary(&self) -> &Vssd {
        &self.inner.primary
    }

    pub fn line_size(&self) -> u64 {
        self.inner.line_size
    }

    /// Most lines of one tran now (a longer write is split).
    pub fn tran_lines_max(&self) -> u64 {
        self.inner.view.borrow().tran_lines_max
    }

    pub fn stats(&self) -> DtmStats {
        let mut s = self.inner.stats.get();
        s.lock_waits = self.inner.locks.waits();
        s.in_flight = self.inner.slots.used() as u64;
        s
    }
}

/// Checks that `r` has the primary's geometry.
pub(crate) fn check_fit(
    op: &'static str,
    device: &str,
    line_size: u64,
    lines: u64,
    r: &dyn Replica,
) -> Result<(), DtmError> {
    let info = r.info();
    if u64::from(info.line_size) != line_size || info.lines != lines || info.tran_lines_max == 0 {
        return Err(DtmError::Unfit {
            op,
            device: device.to_string(),
            replica: r.name().to_string(),
            why: format!(
                "{} lines of {} bytes (tran_lines_max {}), the primary has {lines} of {line_size}",
                info.lines, info.line_size, info.tran_lines_max
            ),
        });
    }
    Ok(())
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close_committers();
    }
}

impl Inner {
    pub(crate) fn count(&self, f: impl FnOnce(&mut DtmStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn short_of_replicas(&self) -> bool {
        matches!(self.config.policy, LossPolicy::WriteThrough(_))
            && self.view.borrow().members.len() < self.replicas_wanted
    }

    pub(crate) fn start_committer(
        &self,
        op: &'static str,
        replica: &Rc<dyn Replica>,
    ) -> Result<Rc<Committer>, DtmError> {
        let c = Rc::new(Committer::new(
            replica.clone(),
            self.config.writes_in_flight_max,
        ));
        let (task_c, weak) = (c.clone(), self.weak.borrow().clone());
        let batch_max = self.config.commit_batch_max;
        Builder::new()
            .name(format!("dtm-commit-{}", replica.member()))
            .system(true)
            .spawn(move || committer_loop(&weak, &task_c, batch_max))
            .map_err(|e| DtmError::Stopped {
                op,
                device: self.device.clone(),
                why: format!("cannot start the committer of {}: {e}", replica.name()),
            })?;
        Ok(c)
    }

    fn close_committers(&self) {
        let targets = self.view.borrow().targets();
        for m in &targets {
            self.close_committer(m);
        }
    }

    /// Stops `m`'s committer; the trans it still had count as committed there (its
    /// replica left the epoch, or the DTM stopped).
    pub(crate) fn close_committer(&self, m: &Member) {
        if let Some(c) = &m.committer {
            for tran in c.close() {
                self.commit_done(tran);
            }
        }
    }

    /// One member committed `tran` (or left): the last releases its lock and slot.
    fn commit_done(&self, tran: u64) {
        let finished = {
            let mut pending = self.pending.borrow_mut();
            let Some(p) = pending.get_mut(&tran) else {
                return; // the DTM was dropped with it pending
            };
            p.left -= 1;
            if p.left == 0 {
                pending.remove(&tran)
            } else {
                None
            }
        };
        if finished.is_some() {
            self.committed.wakeup_all();
        }
        drop(finished); // wakes the writers waiting for the lines or a slot
        if self.pending.borrow().is_empty() {
            self.drained.wakeup_all();
        }
    }

    fn go_down(&self, why: Down) {
        let mut down = self.down.borrow_mut();
        if down.is_none() {
            tracing::warn!(device = %self.device, ?why, "dtm stops taking writes");
            *down = Some(why);
        }
    }

    pub(crate) fn check_up(&self, op: &'static str) -> Result<(), DtmError> {
        let Some(down) = self.down.borrow().clone() else {
            return Ok(());
        };
        let device = self.device.clone();
        let epoch = self.view.borrow().epoch;
        Err(match down {
            Down::Fenced {
                replica,
                replica_epoch,
            } => DtmError::Fenced {
                op,
                replica,
                replica_epoch,
                epoch,
            },
            Down::TooFew { members, reachable } => DtmError::TooFewReplicas {
                op,
                epoch,
                members,
                reachable,
                min: self.config.min_replicas,
            },
            Down::Stopped { why } => DtmError::Stopped { op, device, why },
            Down::Closed => DtmError::Closed { op, device },
        })
    }

    fn stop(&self, op: &'static str, why: String) -> DtmError {
        self.go_down(Down::Stopped { why });
        self.check_up(op).expect_err("down")
    }

    fn range_error(&self, op: &'static str, first: u64, count: u64, len: usize) -> DtmError {
        DtmError::Range {
            op,
            device: self.device.clone(),
            first,
            end: first.saturating_add(count),
            len,
            lines: self.lines,
        }
    }

    pub(crate) fn lock_range(
        &self,
        op: &'static str,
        first: u64,
        count: u64,
    ) -> Result<RangeLock, DtmError> {
        let deadline = now() + self.config.wait_max;
        self.locks
            .lock(first, count, deadline)
            .ok_or_else(|| DtmError::Busy {
                op,
                device: self.device.clone(),
                what: "the range lock",
                first,
                end: first + count,
                waited: self.config.wait_max,
            })
    }

    fn write(&self, first: u64, data: &AlignedBuf) -> Result<Written, DtmError> {
        const OP: &str = "write";
        self.check_up(OP)?;
        let ls = self.line_size as usize;
        let n = data.len().div_ceil(ls) as u64;
        if data.is_empty() || first >= self.lines || n > self.lines - first {
            return Err(self.range_error(OP, first, n, data.len()));
        }
        let mut written = None;
        let mut done = 0u64;
        let mut trans = 0u64;
        // Bounded: each round writes at least one line.
        while done < n {
            let max = self.view.borrow().tran_lines_max;
            let take = (n - done).min(max);
            let w = if done == 0 && take == n {
                self.write_tran(first, data)?
            } else {
                let from = done as usize * ls;
                let to = (from + take as usize * ls).min(data.len());
                self.write_tran(first + done, &aligned_copy(&data[from..to]))?
            };
            written = Some(w);
            done += take;
            trans += 1;
        }
        if trans > 1 {
            self.count(|s| s.splits += 1);
        }
        self.count(|s| s.writes += 1);
        Ok(written.expect("a write of at least one line"))
    }

    /// One tran: `data` holds at most `tran_lines_max` lines.
    fn write_tran(&self, first: u64, data: &AlignedBuf) -> Result<Written, DtmError> {
        const OP: &str = "write";
        let n = data.len().div_ceil(self.line_size as usize) as u64;
        let deadline = now() + self.config.wait_max;
        let slot = self.slots.take(deadline).ok_or_else(|| DtmError::Busy {
            op: OP,
            device: self.device.clone(),
            what: "a slot for a write in flight",
            first,
            end: first + n,
            waited: self.config.wait_max,
        })?;
        let lock = self.lock_range(OP, first, n)?;
        let mut shared: Option<Rc<AlignedBuf>> = None;
        // Bounded: each retry follows the loss of at least one member.
        for _ in 0..=MEMBERS_MAX {
            self.check_up(OP)?;
            let gate = self.change.read();
            // Again: a membership change that ran while this write waited for the
            // gate may have taken the DTM down, leaving the view at an epoch it could
            // not record on every member.
            self.check_up(OP)?;
            if self.short_of_replicas() {
                drop(gate);
                return self.write_through(first, n, data);
            }
            let (members, syncing, epoch) = {
                let view = self.view.borrow();
                assert!(n <= view.tran_lines_max, "a tran over tran_lines_max");
                (view.members.clone(), view.syncing.clone(), view.epoch)
            };
            assert!(
                epoch < 1 << (64 - TRAN_EPOCH_SHIFT),
                "epoch {epoch} beyond the tran ids' room"
            );
            let tran = self.tran_id(OP, epoch)?;
            let targets: Vec<Rc<dyn Replica>> = members
                .iter()
                .chain(&syncing)
                .map(|m| m.replica.clone())
                .collect();
            let results = if targets.len() == 1 {
                vec![targets[0].writep1(tran, first, data)]
            } else {
                let buf = shared
                    .get_or_insert_with(|| Rc::new(aligned_copy(data)))
                    .clone();
                fan_out(&targets, move |r| r.writep1(tran, first, &buf))
            };
            self.mark_failed_syncing(
                syncing
                    .iter()
                    .zip(&results[members.len()..])
                    .filter(|(_, r)| r.is_err())
                    .map(|(m, _)| m.id()),
            );
            if results[..members.len()].iter().all(Result::is_ok) {
                let mut left = 0;
                let mut syncing_failed = Vec::new();
                for (m, r) in members[1..].iter().chain(&syncing).zip(results[1..].iter()) {
                    match r {
                        Ok(()) => {
                            m.committer
                                .as_ref()
                                .expect("a member's committer")
                                .push(tran);
                            left += 1;
                        }
                        Err(_) => syncing_failed.push(m.id()),
                    }
                }
                let committed = members[0].replica.commit(&[tran]);
                drop(gate);
                if left > 0 {
                    self.pending.borrow_mut().insert(
                        tran,
                        PendingTran {
                            left,
                            _lock: lock,
                            _slot: slot,
                        },
                    );
                }
                if let Err(e) = committed {
                    return Err(self.stop(OP, format!("commit of tran {tran} on the primary: {e}")));
                }
                if !syncing_failed.is_empty() {
                    // A replica being resynced failed: its resync fails, not the write.
                    let _ = self.lose(&syncing_failed, OP);
                }
                self.count(|s| s.trans += 1);
                return Ok(Written::Tran(tran));
            }
            // Abort wherever phase 1 succeeded (a replica that failed holds nothing
            // prepared, or is lost).
            let prepared: Vec<usize> = (0..targets.len()).filter(|&i| results[i].is_ok()).collect();
            let aborting: Vec<Rc<dyn Replica>> =
                prepared.iter().map(|&i| targets[i].clone()).collect();
            let aborts = fan_out(&aborting, move |r| r.abort(tran));
            drop(gate);
            self.count(|s| s.aborts += 1);
            // A member's failure applies the policy; a syncing replica's ends its
            // resync only.
            let mut failures: Vec<(u64, ReplicaError)> = Vec::new();
            let mut syncing_failed = Vec::new();
            let aborted = prepared.iter().zip(aborts).map(|(&i, r)| (i, r));
            let called = results.into_iter().enumerate();
            for (i, r) in called.chain(aborted) {
                match r {
                    Ok(()) => {}
                    Err(e) if i < members.len() => failures.push((targets[i].member(), e)),
                    Err(_) => syncing_failed.push(targets[i].member()),
                }
            }
            if !syncing_failed.is_empty() {
                let _ = self.lose(&syncing_failed, OP);
            }
            self.settle(OP, failures)?;
            self.count(|s| s.retries += 1);
        }
        unreachable!("a write retried more often than the device had members")
    }

    /// Writes lines `first..first + n` through to the backing store, durably, then
    /// drops them from every replica (a crash between the two leaves the older cached
    /// version, and this write was not acknowledged).
    /// A new tran id of `epoch`: its high bits the epoch ([`TRAN_EPOCH_SHIFT`]), its
    /// low bits the vSSD's counter going on (the first id of a newer epoch moves the
    /// vSSD's ids up to that epoch's range; the outcome table, direct-mapped by the
    /// low bits, keeps the latest resolutions across the jump).
    ///
    /// An id of a newer epoch than this DTM's fences it: the primary vSSD hands out
    /// ids above every one it saw prepared, so it saw a writep1 of a newer epoch, the
    /// write of another primary that took the device over and is resyncing this
    /// vSSD as its replica (its vSSD is not moved to that epoch before the resync
    /// ends, so this DTM's own fence does not see it yet). Going on would hand out
    /// that primary's ids for this DTM's writes: one id for two writes, and a
    /// resync or recovery that trusts a line's version to name one write (`tdrv sim
    /// dtm` seed 36372: a fenced primary's unacknowledged write, left prepared by
    /// its crash, was committed for the acknowledged write of the same id).
    fn tran_id(&self, op: &'static str, epoch: u64) -> Result<u64, DtmError> {
        let next = || {
            self.primary
                .next_tran_id()
                .map_err(|e| self.stop(op, format!("next_tran_id: {e}")))
        };
        let mut tran = next()?;
        if tran >> TRAN_EPOCH_SHIFT < epoch {
            let low = tran & ((1 << TRAN_EPOCH_SHIFT) - 1);
            self.primary
                .raise_tran_ids((epoch << TRAN_EPOCH_SHIFT) | low)
                .map_err(|e| self.stop(op, format!("raise_tran_ids: {e}")))?;
            tran = next()?;
        }
        if tran >> TRAN_EPOCH_SHIFT > epoch {
            return Err(self.fence(&ReplicaError {
                op,
                replica: self.primary.path().display().to_string(),
                kind: ReplicaErrorKind::StaleEpoch {
                    replica_epoch: tran >> TRAN_EPOCH_SHIFT,
                },
            }));
        }
        Ok(tran)
    }

    fn write_through(&self, first: u64, n: u64, data: &AlignedBuf) -> Result<Written, DtmError> {
        const OP: &str = "write through";
        let LossPolicy::WriteThrough(backing) = &self.config.policy else {
            unreachable!("write-through without a backing store")
        };
        let offset = first * self.line_size;
        let backing_error = |source| DtmError::Backing {
            op: OP,
            device: self.device.clone(),
            offset,
            len: data.len(),
            source: Box::new(source),
        };
        backing.write(offset, data).map_err(backing_error)?;
        backing.flush().map_err(backing_error)?;
        self.on_all(OP, move |r| r.invalidate(first, n))?;
        self.count(|s| s.written_through += 1);
        Ok(Written::Through)
    }

    /// Runs `op` on every member and syncing replica at once, applies the policy to
    /// the failures, and returns the primary's result.
    fn on_all<T: 'static>(
        &self,
        op: &'static str,
        f: impl Fn(&dyn Replica) -> Result<T, ReplicaError> + Clone + 'static,
    ) -> Result<T, DtmError> {
        self.check_up(op)?;
        let gate = self.change.read();
        let (targets, n_members) = {
            let view = self.view.borrow();
            (view.targets(), view.members.len())
        };
        let results = fan_out(&replicas(&targets), f);
        self.mark_failed_syncing(
            targets[n_members..]
                .iter()
                .zip(&results[n_members..])
                .filter(|(_, r)| r.is_err())
                .map(|(m, _)| m.id()),
        );
        drop(gate);
        let mut primary = None;
        let mut failures = Vec::new();
        let mut syncing_failed = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) if i == 0 => primary = Some(v),
                Ok(_) => {}
                Err(e) if i < n_members => failures.push((targets[i].id(), e)),
                Err(_) => syncing_failed.push(targets[i].id()),
            }
        }
        if !syncing_failed.is_empty() {
            // A replica being resynced failed: its resync fails, not this call.
            let _ = self.lose(&syncing_failed, op);
        }
        self.settle(op, failures)?;
        Ok(primary.expect("a failure of the primary settles as an error"))
    }

    /// Applies the policy to replica `failures`: a stale epoch fences; losses drop
    /// the lost members (a new epoch); another error is returned. `Ok` when the
    /// survivors may go on (a write is then retried).
    pub(crate) fn settle(
        &self,
        op: &'static str,
        failures: Vec<(u64, ReplicaError)>,
    ) -> Result<(), DtmError> {
        if let Some((_, e)) = failures
            .iter()
            .find(|(_, e)| matches!(e.kind, ReplicaErrorKind::StaleEpoch { .. }))
        {
            return Err(self.fence(e));
        }
        let lost: Vec<u64> = failures
            .iter()
            .filter(|(_, e)| e.kind.is_loss())
            .map(|&(m, _)| m)
            .collect();
        if !lost.is_empty() {
            self.lose(&lost, op)?;
        }
        if let Some((_, source)) = failures.into_iter().find(|(_, e)| !e.kind.is_loss()) {
            // A refusal (a bug of the caller, or two deciders): this call fails, the
            // members stay.
            return Err(DtmError::Replica(source));
        }
        Ok(())
    }

    /// Settles the failures of recording `epoch` (`record_epoch`), the caller still
    /// holding the write side of the membership gate: a stale epoch fences the
    /// DTM, a refusal stops it, losses drop the lost members (a new epoch, as
    /// [`Inner::lose`]). All before any write is let in: the view is at `epoch`
    /// already, and a member whose record failed, refused or timed out, may or may
    /// not hold it, so a write at it could be acknowledged by members of which the
    /// primary never recorded the epoch. That breaks the rule that every member,
    /// the primary last, records an epoch before any write at it, which recovery
    /// relies on (`tdrv sim dtm` seed 11191: a resync's join timed out on a member,
    /// and writes waiting at the gate were acknowledged at the new epoch before the
    /// loss was settled, the primary's vSSD two epochs behind).
    pub(crate) fn settle_recorded(
        &self,
        op: &'static str,
        epoch: u64,
        failures: &[(u64, ReplicaError)],
    ) -> Result<(), DtmError> {
        if let Some((_, e)) = failures
            .iter()
            .find(|(_, e)| matches!(e.kind, ReplicaErrorKind::StaleEpoch { .. }))
        {
            return Err(self.fence(e));
        }
        if let Some((m, e)) = failures.iter().find(|(_, e)| !e.kind.is_loss()) {
            return Err(self.stop(op, format!("epoch {epoch} refused by member {m}: {e}")));
        }
        let lost: Vec<u64> = failures.iter().map(|&(m, _)| m).collect();
        if lost.is_empty() {
            return Ok(());
        }
        self.lose_locked(&lost, op)
    }

    /// Records `epoch` on the members (the primary last) and moves the view to it,
    /// the caller holding the write side of the membership gate; the record's
    /// failures are settled ([`Inner::settle_recorded`]). Whether every member
    /// recorded it.
    pub(crate) fn move_members(&self, op: &'static str, epoch: u64) -> Result<bool, DtmError> {
        let (targets, member_ids) = {
            let view = self.view.borrow();
            (replicas(&view.members), ids(&view.members))
        };
        let failures = record_epoch(&targets, epoch, &member_ids);
        self.view.borrow_mut().epoch = epoch;
        self.count(|s| s.epoch_changes += 1);
        self.settle_recorded(op, epoch, &failures)?;
        Ok(failures.is_empty())
    }

    /// Marks the replicas being resynced `ids` as failed (see `failed_syncing`).
    fn mark_failed_syncing(&self, ids: impl Iterator<Item = u64>) {
        let mut failed = self.failed_syncing.borrow_mut();
        for id in ids {
            if !failed.contains(&id) {
                failed.push(id);
            }
        }
    }

    /// Fences the DTM: replica `e.replica` is at a newer epoch.
    fn fence(&self, e: &ReplicaError) -> DtmError {
        let ReplicaErrorKind::StaleEpoch { replica_epoch } = e.kind else {
            unreachable!("fenced by {e}")
        };
        self.go_down(Down::Fenced {
            replica: e.replica.clone(),
            replica_epoch,
        });
        self.check_up(e.op).expect_err("fenced")
    }

    /// Drops members `lost` (and replicas being resynced among them): the survivors
    /// move to epoch + 1. Errs (and the DTM stops) when the primary is among them or,
    /// under [`LossPolicy::Degrade`], fewer than `min_replicas` would be left.
    pub(crate) fn lose(&self, lost: &[u64], op: &'static str) -> Result<(), DtmError> {
        let _gate = self.change.write();
        self.lose_locked(lost, op)
    }

    /// [`Inner::lose`], the caller holding the write side of the membership gate.
    pub(crate) fn lose_locked(&self, lost: &[u64], op: &'static str) -> Result<(), DtmError> {
        let mut lost = lost.to_vec();
        // Bounded: each round drops at least one member.
        for _ in 0..=MEMBERS_MAX {
            self.check_up(op)?;
            let gone_syncing: Vec<Member> = {
                let mut view = self.view.borrow_mut();
                let (gone, keep) = view.syncing.drain(..).partition(|m| lost.contains(&m.id()));
                view.syncing = keep;
                lost.retain(|&id| view.members.iter().any(|m| m.id() == id));
                gone
            };
            for m in &gone_syncing {
                self.close_committer(m);
            }
            self.failed_syncing
                .borrow_mut()
                .retain(|id| !gone_syncing.iter().any(|m| m.id() == *id));
            if lost.is_empty() {
                return Ok(()); // dropped already, by a write or a committer that saw it first
            }
            let (primary, survivors, epoch) = {
                let view = self.view.borrow();
                let survivors: Vec<Member> = view
                    .members
                    .iter()
                    .filter(|m| !lost.contains(&m.id()))
                    .cloned()
                    .collect();
                (view.members[0].clone(), survivors, view.epoch + 1)
            };
            if lost.contains(&primary.id()) {
                return Err(self.stop(
                    op,
                    format!("the primary replica {} is lost", primary.replica.name()),
                ));
            }
            if matches!(self.config.policy, LossPolicy::Degrade)
                && survivors.len() < self.config.min_replicas
            {
                self.go_down(Down::TooFew {
                    members: ids(&self.view.borrow().members),
                    reachable: ids(&survivors),
                });
                return Err(self.check_up(op).expect_err("down"));
            }
            let removed: Vec<Member> = {
                let mut view = self.view.borrow_mut();
                let (gone, keep) = view.members.drain(..).partition(|m| lost.contains(&m.id()));
                view.members = keep;
                view.epoch = epoch;
                view.refresh_tran_lines_max(&self.primary);
                gone
            };
            for m in &removed {
                tracing::warn!(device = %self.device, replica = m.replica.name(), epoch, "replica dropped");
                self.close_committer(m);
            }
            self.count(|s| {
                s.members_lost += removed.len() as u64;
                s.epoch_changes += 1;
            });
            lost.clear();
            for (m, e) in record_epoch(&replicas(&survivors), epoch, &ids(&survivors)) {
                match e {
                    e if matches!(e.kind, ReplicaErrorKind::StaleEpoch { .. }) => {
                        return Err(self.fence(&e));
                    }
                    e if e.kind.is_loss() => lost.push(m),
                    e => {
                        return Err(self.stop(op, format!("epoch {epoch} refused: {e}")));
                    }
                }
            }
            if lost.is_empty() {
                return Ok(());
            }
        }
        unreachable!("more losses than members")
    }
}

/// The committer task of one replica: sends the queued COMMITs in batches until the
/// committer is closed or the DTM dropped.
fn committer_loop(weak: &Weak<Inner>, c: &Rc<Committer>, batch_max: usize) {
    loop {
        let batch = c.take(batch_max);
        if batch.is_empty() {
            return; // closed
        }
        let result = c.replica.commit(&batch);
        let Some(inner) = weak.upgrade() else {
            return;
        };
        inner.count(|s| {
            s.commit_calls += 1;
            s.commits_sent += batch.len() as u64;
        });
        if let Err(e) = result {
            if matches!(e.kind, ReplicaErrorKind::StaleEpoch { .. }) {
                inner.fence(&e);
            } else {
                // Lost, or it disagrees on a tran every member prepared: either way
                // it can no longer be a member. Dropped before its trans count as
                // committed, so no later writep1 of their lines reaches it.
                tracing::warn!(device = %inner.device, error = %e, "lazy commit failed");
                let _ = inner.lose(&[c.replica.member()], "commit");
            }
        }
        for tran in batch {
            inner.commit_done(tran);
        }
        if c.is_closed() {
            return;
        }
    }
}
