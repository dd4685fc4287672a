//! The vSSD: the cache map, the log and the checkpoints wired to one device.
//!
//! Every operation runs on the tasks of one taskio runtime; a [`Vssd`] is a cheap
//! handle (`Clone`) shared by them. Its background tasks (log writers, checkpoint
//! task) hold no handle while they sleep, so dropping the last handle stops the vSSD
//! as [`Vssd::close`] does, without waiting: [`Vssd::background`] says when they
//! ended and the device's file is closed. The seed's vssd.c, step by step, is
//! [`Vssd::writep1`]: a free slot from the map, the payload written there, a PREPARE
//! appended to the log buffer, a park until the group commit made both durable.
//!
//! # Order of map changes and log records
//!
//! Recovery rebuilds the map from a checkpoint plus the log, so the map must change in
//! the order of the records: every logged operation asks the log where its record
//! would land ([`LogWriter::seq_for`]), applies itself to the map with that seq and
//! appends the record, with no park in between ([`Vssd::logged`]). A checkpoint cuts
//! the log and copies the map in one step too, so it is exact at its seq.
//!
//! Two things are in the map before their record or without one, and a checkpoint
//! leaves them out: a tran in phase 1 whose PREPARE is not appended yet (its payload
//! may not be on disk), and a line being filled by [`Vssd::insert_clean`] (its payload
//! write not done).
//!
//! # Slots in use by I/O
//!
//! A slot is pinned ([`CacheMap::pin`]) while a read or a fill writes or reads it: a
//! commit, eviction or invalidation meanwhile releases it, but it is handed out again
//! only after the I/O ended, so a read never sees another write's bytes and two
//! writes never race on one slot. A prepared slot needs no pin: commit and abort of a
//! tran whose writep1 has not returned are refused ([`VssdError::TranBusy`]).
//!
//! # Durability
//!
//! | call | returns when |
//! | --- | --- |
//! | `writep1` | the payload and PREPARE of each of its lines durable (the log flushes the payloads before it writes their PREPAREs) |
//! | `commit`, `abort`, `mark_clean` | the record is in the log buffer; [`Vssd::wait_durable`] on the returned position waits for it |
//! | `invalidate`, `invalidate_range` | the INVALIDATEs, and every slot release before them, are durable (a DISCARD acknowledged never comes back) |
//! | `insert_clean` | the payload is written; not logged (a crash forgets the fill unless a checkpoint took it) |
//!
//! A COMMIT or ABORT lost in a crash leaves its tran in doubt: [`Vssd::open`] returns
//! it, and the DTM resolves it ([`Vssd::resolve`]).
//!
//! # Backpressure
//!
//! `writep1` without a free slot evicts a clean line (a logged INVALIDATE, the slot
//! free once that is durable), or waits for a release to become durable, or, with
//! nothing clean and nothing freeing, waits for a destage (`mark_clean`), a commit or
//! an abort: it never fails for want of room. A full log makes appenders wait for
//! the checkpoint task, which a log half full wakes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use taskio::file::File;
use taskio::{ALIGN, AlignedBuf, Builder, Rendez};

use crate::background::Background;
use crate::checkpoint::{self, Snapshot};
use crate::epoch::Membership;
use crate::error::VssdError;
use crate::layout::{Geometry, Superblock};
use crate::log::{LogStats, LogWriter, RecordPos};
use crate::map::{CacheMap, Counts, Entry, MapError, State};
use crate::outcome::{Outcomes, TranOutcome};
use crate::record::Record;
use crate::record::TRAN_BYTES_MAX;
use crate::recover::{InDoubt, Payload, Rebuilt, Recovered};
use crate::tran::TranIds;

/// The DTM's decision on an in-doubt tran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Abort,
}

/// A read hit: the version read and its state. The payload is in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The tran that wrote it ([`crate::map::VERSION_CLEAN_INSERT`] for a fill).
    pub version: u64,
    pub state: State,
    pub len: u32,
}

/// Tunables of an open vSSD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The checkpoint task starts a checkpoint when this many log blocks are in use
    /// (default: half the log).
    pub checkpoint_blocks: Option<u64>,
    /// This vSSD holds the only copy of its device's data (no replica to repair from):
    /// recovery aborts an in-doubt tran whose payload is damaged, counts it
    /// ([`VssdStats::damaged_aborted`]) and logs a warning naming it, instead of
    /// returning it to the caller ([`crate::recover::Payload::Damaged`]).
    pub sole_copy: bool,
}

/// Counters of one open vSSD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VssdStats {
    pub writep1: u64,
    pub commits: u64,
    pub aborts: u64,
    pub read_hits: u64,
    pub read_misses: u64,
    pub fills: u64,
    pub fills_skipped: u64,
    pub evictions: u64,
    pub invalidations: u64,
    pub cleaned: u64,
    pub checkpoints: u64,
    /// Times writep1 waited for a slot (eviction durable, destage, commit).
    pub slot_waits: u64,
    /// In-doubt trans recovery aborted for a damaged payload ([`Options::sole_copy`]).
    pub damaged_aborted: u64,
    pub log: LogStats,
    pub map: Counts,
}

struct Inner {
    file: Rc<File>,
    geometry: Geometry,
    superblock: Superblock,
    log: Rc<LogWriter>,
    map: RefCell<CacheMap>,
    /// tran -> how many of its PREPAREs are appended, while its writep1 runs.
    phase1: RefCell<HashMap<u64, u32>>,
    /// The outcomes of the trans resolved lately, for retries and queries.
    outcomes: RefCell<Outcomes>,
    /// line -> the slot a fill is writing.
    filling: RefCell<HashMap<u64, u64>>,
    /// Trans recovery left in doubt with a damaged payload, until resolved: a plain
    /// commit of one is refused.
    damaged: RefCell<HashMap<u64, InDoubt>>,
    trans: TranIds,
    /// The membership epoch, as of the records appended so far.
    membership: RefCell<Membership>,
    /// writep1 waiting for a slot: woken by every release and state change.
    space: Rendez,
    /// The checkpoint task sleeps here (it holds the vSSD only while it works).
    kick: Rc<Rendez>,
    /// Waiters for a change of the dirty lines (destage).
    dirty_changed: Rendez,
    /// Callers of `checkpoint` waiting for the running one.
    ck_done: Rendez,
    ck_running: Cell<bool>,
    /// The region and seq of the newest durable checkpoint.
    ck_which: Cell<Option<u8>>,
    ck_seq: Cell<u64>,
    ck_blocks: u64,
    closed: Cell<bool>,
    failed: RefCell<Option<String>>,
    stats: Cell<VssdStats>,
}

/// One open vSSD. See the module documentation.
#[derive(Clone)]
pub struct Vssd {
    inner: Rc<Inner>,
}

fn round_up(len: usize) -> usize {
    len.next_multiple_of(ALIGN)
}

/// `bytes` in a new buffer writable with O_DIRECT, zero padded to [`ALIGN`].
fn aligned_copy(bytes: &[u8]) -> AlignedBuf {
    let mut copy = AlignedBuf::new(round_up(bytes.len()));
    copy.set_len(round_up(bytes.len()));
    copy[..bytes.len()].copy_from_slice(bytes);
    copy[bytes.len()..].fill(0);
    copy
}

impl Vssd {
    /// Opens the vSSD on `file` (formatted by [`crate::layout::format`]): checks the
    /// superblock (refusing a device that is not a vSSD, of another version, or of
    /// another cache device when `expect_device` names one), loads the newest
    /// checkpoint, replays the log after it, scrubs past its end and starts the log
    /// writer and the checkpoint task (all of it in [`crate::recover`]). The in-doubt
    /// trans are in [`Recovered`]: resolve each with [`Vssd::resolve`]. One whose
    /// payload is damaged ([`Payload::Damaged`]: torn by the crash, or damaged after
    /// its writep1 returned) cannot be committed as it is: commit it with the payload
    /// from another copy ([`Vssd::resolve_repaired`]) or abort it; with
    /// [`Options::sole_copy`] recovery aborts it itself.
    ///
    /// Must run inside a taskio runtime (real or simulated).
    pub fn open(
        file: File,
        expect_device: Option<&str>,
        options: Options,
    ) -> Result<(Vssd, Recovered), VssdError> {
        crate::recover::open(file, expect_device, options)
    }

    /// Starts the vSSD recovery rebuilt: the log writer at the end of the log, the
    /// checkpoint task. Closes it again if the task cannot start.
    pub(crate) fn start(
        file: File,
        superblock: Superblock,
        rebuilt: Rebuilt,
        options: Options,
    ) -> Result<Vssd, VssdError> {
        let geometry = superblock.geometry;
        let path = file.path().to_path_buf();
        let file = Rc::new(file);
        let log = LogWriter::start(
            file.clone(),
            &geometry,
            superblock.crc_seed(),
            rebuilt.seq_end,
            rebuilt.ck_seq,
        );
        let ck_blocks = options
            .checkpoint_blocks
            .unwrap_or(geometry.log_blocks() / 2)
            .clamp(1, geometry.log_blocks() / 2);
        let inner = Rc::new(Inner {
            file,
            geometry,
            superblock,
            log,
            map: RefCell::new(rebuilt.map),
            phase1: RefCell::new(HashMap::new()),
            outcomes: RefCell::new(rebuilt.outcomes),
            filling: RefCell::new(HashMap::new()),
            damaged: RefCell::new(HashMap::new()),
            trans: TranIds::new(rebuilt.tran_high),
            membership: RefCell::new(rebuilt.membership),
            space: Rendez::new(),
            kick: Rc::new(Rendez::new()),
            dirty_changed: Rendez::new(),
            ck_done: Rendez::new(),
            ck_running: Cell::new(false),
            ck_which: Cell::new(rebuilt.ck_which),
            ck_seq: Cell::new(rebuilt.ck_seq),
            ck_blocks,
            closed: Cell::new(false),
            failed: RefCell::new(None),
            stats: Cell::new(VssdStats::default()),
        });
        let vssd = Vssd { inner };
        let task_vssd = Rc::downgrade(&vssd.inner);
        let guard = vssd.inner.log.background().enter();
        let started = Builder::new()
            .name("vssd-checkpoint")
            .system(true)
            .spawn(move || {
                checkpoint_loop(&task_vssd);
                drop(guard);
            });
        if let Err(e) = started {
            vssd.close(); // the log writers stop, the device's lock is released
            return Err(VssdError::Unusable {
                op: "open",
                path,
                why: format!("cannot start the checkpoint task: {e}"),
            });
        }
        Ok(vssd)
    }

    pub fn geometry(&self) -> &Geometry {
        &self.inner.geometry
    }

    pub fn superblock(&self) -> &Superblock {
        &self.inner.superblock
    }

    pub fn path(&self) -> &std::path::Path {
        self.inner.file.path()
    }

    fn path_buf(&self) -> PathBuf {
        self.inner.file.path().to_path_buf()
    }

    fn count(&self, f: impl FnOnce(&mut VssdStats)) {
        let mut s = self.inner.stats.get();
        f(&mut s);
        self.inner.stats.set(s);
    }

    pub fn stats(&self) -> VssdStats {
        let mut s = self.inner.stats.get();
        s.log = self.inner.log.stats();
        s.map = self.inner.map.borrow().counts();
        s
    }

    fn check_usable(&self, op: &'static str) -> Result<(), VssdError> {
        let why = if let Some(why) = &*self.inner.failed.borrow() {
            why.clone()
        } else if self.inner.closed.get() {
            "the vSSD is closed".to_string()
        } else if self.inner.log.is_failed() {
            "its log failed on an I/O error".to_string()
        } else {
            return Ok(());
        };
        Err(VssdError::Unusable {
            op,
            path: self.path_buf(),
            why,
        })
    }

    fn map_error(&self, op: &'static str, source: MapError) -> VssdError {
        VssdError::Map {
            op,
            path: self.path_buf(),
            source,
        }
    }

    /// Slots released by durable records become free.
    fn settle(&self) {
        let end = self.inner.log.durable_end();
        let mut map = self.inner.map.borrow_mut();
        if end - 1 > map.seq_durable() {
            map.durable(end - 1);
        }
    }

    /// Applies a logged operation: waits until a record like `probe` (same length)
    /// can be appended without a park, then runs `op` on the map with the seq the
    /// record gets and appends the record `op` returns (none: nothing to log).
    fn logged<T>(
        &self,
        what: &'static str,
        probe: &Record,
        op: impl FnOnce(&mut CacheMap, u64) -> Result<(T, Option<Record>), VssdError>,
    ) -> Result<(T, Option<RecordPos>), VssdError> {
        let log = &self.inner.log;
        let seq = loop {
            self.check_usable(what)?;
            if let Some(seq) = log.seq_for(probe) {
                break seq;
            }
            log.wait_room()?;
        };
        let (value, record) = op(&mut self.inner.map.borrow_mut(), seq)?;
        let Some(record) = record else {
            return Ok((value, None));
        };
        assert_eq!(record.encoded_len(), probe.encoded_len(), "{what} probe");
        // No park since seq_for: the record goes where the map was told it goes.
        let pos = log.append_at(&record, seq)?;
        if log.blocks_used() >= self.inner.ck_blocks {
            self.inner.kick.wakeup();
        }
        Ok((value, Some(pos)))
    }

    /// Parks until the record at `pos` (and every one before it) is durable.
    pub fn wait_durable(&self, pos: RecordPos) -> Result<(), VssdError> {
        self.inner.log.wait_durable(pos)
    }

    /// Parks until every record appended so far is durable.
    pub fn sync(&self) -> Result<(), VssdError> {
        let log = &self.inner.log;
        let next = log.cut();
        if next > log.durable_end() {
            log.wait_durable(RecordPos {
                seq: next - 1,
                index: 0,
            })?;
        }
        Ok(())
    }

    /// Evicts one clean line (S3-FIFO's choice), logging its INVALIDATE. Whether a
    /// line was evicted.
    fn evict_one(&self) -> Result<bool, VssdError> {
        let (evicted, _) = self.logged("evict", &Record::Invalidate { line: 0 }, |map, seq| {
            Ok(match map.evict(seq) {
                Some(e) => (true, Some(Record::Invalidate { line: e.line })),
                None => (false, None),
            })
        })?;
        if evicted {
            self.count(|s| s.evictions += 1);
        }
        Ok(evicted)
    }

    /// Checks a payload and makes it writable with O_DIRECT: a buffer whose length is
    /// a multiple of [`ALIGN`] (a copy, zero padded, when it is not).
    fn direct_payload<'a>(
        &self,
        op: &'static str,
        line: u64,
        payload: &'a AlignedBuf,
        padded: &'a mut Option<AlignedBuf>,
    ) -> Result<&'a AlignedBuf, VssdError> {
        let max = self.inner.geometry.line_size();
        if payload.is_empty() || payload.len() > max as usize {
            return Err(VssdError::PayloadLen {
                op,
                line,
                len: payload.len(),
                max,
            });
        }
        if payload.len().is_multiple_of(ALIGN) {
            return Ok(payload);
        }
        Ok(padded.insert(aligned_copy(payload)))
    }

    /// The most lines one tran may hold on this vSSD: [`TRAN_BYTES_MAX`] (the
    /// largest write a DTM sends) of this vSSD's lines, and at most half its line
    /// capacity. A writep1 takes all its slots at once or waits holding none, so
    /// writers never deadlock on each other; the half keeps one tran from needing
    /// the whole cache (it would wait for every other line to be destaged and
    /// evicted), leaving the rest to the other writers meanwhile.
    ///
    /// Atomic writes of several lines are this vSSD's promise, not the disk's (no
    /// disk makes a multi-block write atomic): up to this many lines, after a crash
    /// either every line of a tran shows its data or none does.
    pub fn tran_lines_max(&self) -> u64 {
        let by_bytes = u64::from(TRAN_BYTES_MAX / self.inner.geometry.line_size());
        by_bytes.min(self.inner.geometry.lines() / 2).max(1)
    }

    /// Phase 1 of `tran` on `line` and the lines after it: `payload` holds
    /// ⌈len / line size⌉ consecutive lines, at most [`Vssd::tran_lines_max`] (the
    /// last may be short; a one-line payload may be shorter than a line). Each line's
    /// payload goes to a free slot (never the line's current one) and gets a PREPARE
    /// (part `i` of `n`), all durable on return. Waits for room (all slots at once),
    /// never fails for want of it. One tran per line at a time: the DTM serialises
    /// writes to a line ([`MapError::LinePrepared`] otherwise).
    ///
    /// One COMMIT or ABORT resolves the tran's lines together. After a crash either
    /// every line of it is there or none is: recovery keeps a tran only with all its
    /// PREPAREs durable ([`crate::recover::Replay`]), and marks it damaged as a whole
    /// if any of its payloads is ([`Vssd::resolve_repaired`] then takes all of it).
    /// One line costs what it always did: one payload write, one PREPARE.
    pub fn writep1(&self, tran: u64, line: u64, payload: &AlignedBuf) -> Result<(), VssdError> {
        self.prepare(false, tran, line, payload)
    }

    /// [`Vssd::writep1`] of a copy: `tran` is the version another replica of the
    /// device holds for these lines (resync, reconciliation after recovery), and may
    /// be a tran this vSSD committed already (another line of a
    /// multi-line tran copied before, lines the tran wrote here and dropped since),
    /// or aborted (a primary cut off from its replicas aborts its own prepare of a
    /// write that the recovery of the primary taking over committed on the others;
    /// committed once copied: the outcome table keeps the later commit).
    /// A plain writep1 refuses such an id, which would make a retried COMMIT or
    /// ABORT ambiguous: the copier commits at once, and a retried COMMIT of the tran
    /// commits the copy as it should. A line's versions still only grow
    /// ([`MapError::TranOld`]).
    pub fn writep1_copy(
        &self,
        tran: u64,
        line: u64,
        payload: &AlignedBuf,
    ) -> Result<(), VssdError> {
        self.prepare(true, tran, line, payload)
    }

    /// [`Vssd::writep1`], or with `copy` [`Vssd::writep1_copy`].
    fn prepare(
        &self,
        copy: bool,
        tran: u64,
        line: u64,
        payload: &AlignedBuf,
    ) -> Result<(), VssdError> {
        let op = if copy { "writep1_copy" } else { "writep1" };
        self.check_usable(op)?;
        let line_size = self.inner.geometry.line_size() as usize;
        let n = payload.len().div_ceil(line_size);
        let max = self.tran_lines_max();
        if payload.is_empty() || n as u64 > max {
            return Err(VssdError::PayloadLen {
                op,
                line,
                len: payload.len(),
                max: (max * line_size as u64) as u32,
            });
        }
        let chunks: Vec<&[u8]> = payload.chunks(line_size).collect();
        let parts: Vec<(u32, u32)> = chunks
            .iter()
            .map(|c| (c.len() as u32, crc32c::crc32c(c)))
            .collect();
        // One line writes the caller's buffer; several, an aligned copy of each.
        let mut padded = None;
        let copies: Vec<AlignedBuf>;
        let data: Vec<&AlignedBuf> = if n == 1 {
            vec![self.direct_payload(op, line, payload, &mut padded)?]
        } else {
            copies = chunks.iter().map(|c| aligned_copy(c)).collect();
            copies.iter().collect()
        };
        if self.inner.phase1.borrow().contains_key(&tran) {
            return Err(self.map_error(op, MapError::TranPrepared { tran, line }));
        }
        // Tran ids are unique per device: a resolved one again would make a retried
        // COMMIT or ABORT ambiguous (a copy's is meant: see writep1_copy).
        let outcome = self.inner.outcomes.borrow().outcome_unprepared(tran);
        let refused = match outcome {
            // A copy is of a version committed on another replica: it may have been
            // aborted here (a primary cut off aborts its own prepare of a write a
            // takeover's recovery committed elsewhere), and the copy commits it.
            TranOutcome::Committed | TranOutcome::Aborted => !copy,
            _ => false,
        };
        if refused {
            return Err(VssdError::TranResolved { op, tran, outcome });
        }
        self.inner.trans.saw(tran);
        let slots = self
            .alloc(op, |map| map.prepare_lines(tran, line, &parts), true)?
            .expect("writep1 waits for a slot");
        self.inner.phase1.borrow_mut().insert(tran, 0);
        let result = self.writep1_io(tran, line, &slots, &data, &parts);
        let appended = self.inner.phase1.borrow_mut().remove(&tran).unwrap_or(0);
        if let Err(e) = result {
            if appended == 0 {
                // No record names the slots: they are free again at once.
                let _ = self.inner.map.borrow_mut().abort(tran, 0);
                self.inner.space.wakeup_all();
            } else if !self.inner.log.is_failed() {
                // PREPAREs are logged but a payload write failed: abort, so the
                // slots come back once the ABORT is durable. (If the log failed, its
                // state is unknown until recovery, which finds the payload damaged.)
                let _ = self.abort(tran);
            }
            return Err(e);
        }
        self.count(|s| s.writep1 += 1);
        Ok(())
    }

    /// The payloads to their slots and the PREPAREs (part order), then the wait for
    /// the last one's durability, whose flush covers the payloads (log module doc).
    fn writep1_io(
        &self,
        tran: u64,
        first: u64,
        slots: &[u64],
        data: &[&AlignedBuf],
        parts: &[(u32, u32)],
    ) -> Result<(), VssdError> {
        let write_payloads = || -> Result<(), VssdError> {
            for (&slot, buf) in slots.iter().zip(data) {
                let offset = self.inner.geometry.slot_offset(slot);
                self.inner
                    .file
                    .pwrite(buf, offset)
                    .map_err(|source| VssdError::Io {
                        op: "writep1 payload write",
                        path: self.path_buf(),
                        source,
                    })?;
            }
            Ok(())
        };
        // A lone one-line writep1 (the only one in flight) sends its PREPARE's log
        // write and its payload write to the disk together, and the flush waits for
        // both (log module doc): one trip, as a plain write + fdatasync. A crash may
        // keep the PREPARE without its payload: this writep1 has not returned, and
        // recovery finds the payload damaged. With others in flight the group commit
        // already shares each flush, and payload-first spreads the PREPAREs over the
        // log writers as the payloads complete; prepared together, they would all
        // wait for the slowest payload and one flush, in lock step (measured at 32
        // writers: 32 writes per flush and half the rate). Several lines' PREPAREs
        // may park between their appends (log room), so they go payload-first too.
        let alone = slots.len() == 1 && self.inner.phase1.borrow().len() == 1;
        if !alone {
            write_payloads()?;
        }
        let n = slots.len() as u32;
        let mut last = None;
        for (i, (&slot, &(len, crc))) in slots.iter().zip(parts).enumerate() {
            let record = Record::Prepare {
                tran,
                line: first + i as u64,
                slot,
                payload_crc: crc,
                len,
                part: i as u32,
                parts: n,
            };
            // Counted appended where it is placed: a checkpoint cut between two
            // parts keeps the ones before it.
            let ((), pos) = self.logged("writep1", &record, |_, _| {
                *self
                    .inner
                    .phase1
                    .borrow_mut()
                    .get_mut(&tran)
                    .expect("in phase 1") += 1;
                Ok(((), Some(record.clone())))
            })?;
            last = pos;
        }
        let last = last.expect("PREPAREs appended");
        if alone {
            // No park since the append: the PREPARE is still in the filling buffer.
            let payload_write = self.inner.log.payload_write(last);
            let written = write_payloads();
            drop(payload_write);
            written?;
        }
        self.inner.log.wait_durable(last)
    }

    /// A slot (or the slots) from `take`, after making room: evicting clean lines, waiting for
    /// releases to become durable, and (if `wait`) for destage, commits and aborts.
    /// `None` when there is no room and `wait` is false.
    fn alloc<T>(
        &self,
        op: &'static str,
        mut take: impl FnMut(&mut CacheMap) -> Result<T, MapError>,
        wait: bool,
    ) -> Result<Option<T>, VssdError> {
        let mut waited = false;
        loop {
            self.check_usable(op)?;
            self.settle();
            let tried = take(&mut self.inner.map.borrow_mut());
            match tried {
                Ok(slot) => return Ok(Some(slot)),
                Err(MapError::Full {
                    lines_clean,
                    seq_freeing_min,
                    ..
                }) => {
                    if lines_clean > 0 && self.evict_one()? {
                        continue;
                    }
                    if !waited {
                        waited = true;
                        self.count(|s| s.slot_waits += 1);
                    }
                    if let Some(seq) = seq_freeing_min {
                        self.inner.log.wait_durable(RecordPos { seq, index: 0 })?;
                        continue;
                    }
                    if !wait {
                        return Ok(None);
                    }
                    self.inner.space.sleep();
                }
                Err(e) => return Err(self.map_error(op, e)),
            }
        }
    }

    /// A new tran id for a writep1: above every id this vSSD handed out or saw
    /// prepared, across restarts (ids are never reused, so a line's version names one
    /// write only). Costs no log write of its own: the high-water mark is logged
    /// ahead, [`crate::TRAN_IDS_PER_RECORD`] ids at a time; parks only for the first
    /// id after open, or when ids are taken faster than the log writes.
    pub fn next_tran_id(&self) -> Result<u64, VssdError> {
        self.check_usable("next_tran_id")?;
        self.inner.trans.next_id(&self.inner.log)
    }

    /// Makes every later [`Vssd::next_tran_id`] at least `floor`, as durably as the
    /// ids themselves (the first id handed out after it waits for a TRAN_HIGH above
    /// it). A DTM starts each epoch's ids at a floor of that epoch, so that two
    /// primaries of a device (one cut off and not fenced yet) never hand out one id.
    pub fn raise_tran_ids(&self, floor: u64) -> Result<(), VssdError> {
        self.check_usable("raise_tran_ids")?;
        if let Some(below) = floor.checked_sub(1) {
            self.inner.trans.saw(below);
        }
        Ok(())
    }

    /// The membership epoch (0 until the DTM sets one).
    pub fn epoch(&self) -> u64 {
        self.inner.membership.borrow().epoch
    }

    /// The members of the current epoch.
    pub fn members(&self) -> Vec<u64> {
        self.inner.membership.borrow().members.clone()
    }

    /// Moves to membership `epoch` with `members` (an EPOCH record), durable on
    /// return. Refused, changing nothing: an epoch older than the vSSD's, the same
    /// epoch with other members, more than [`crate::record::EPOCH_MEMBERS_MAX`]
    /// members. The same epoch and members again is harmless.
    pub fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), VssdError> {
        self.move_epoch(None, epoch, members)
    }

    /// [`Vssd::set_epoch`] from epoch `from` only: refused, changing nothing, if the
    /// vSSD is at another epoch when the record is placed. Two primaries that both
    /// move a vSSD from `from` to `epoch` with the same members cannot both succeed
    /// (with `set_epoch` the second would be the harmless repeat): the check and
    /// the change are one step, with no park between them.
    pub fn set_epoch_from(&self, from: u64, epoch: u64, members: &[u64]) -> Result<(), VssdError> {
        self.move_epoch(Some(from), epoch, members)
    }

    fn move_epoch(&self, from: Option<u64>, epoch: u64, members: &[u64]) -> Result<(), VssdError> {
        let record = Record::Epoch {
            epoch,
            members: members.to_vec(),
        };
        let refused = |why| VssdError::Epoch {
            path: self.path_buf(),
            epoch,
            why,
        };
        if let Err(fault) = record.validate() {
            return Err(refused(fault.to_string()));
        }
        // Checked and changed where the record is placed: epochs go up in log order.
        let ((), pos) = self.logged("set_epoch", &record, |_, _| {
            let mut membership = self.inner.membership.borrow_mut();
            if let Some(from) = from
                && membership.epoch != from
            {
                return Err(refused(format!(
                    "the vSSD is at epoch {}, not {from}: another opening moved it",
                    membership.epoch
                )));
            }
            let advanced = membership.advance(epoch, members);
            advanced.map_err(refused)?;
            Ok(((), Some(record.clone())))
        })?;
        self.wait_durable(pos.expect("EPOCH appended"))
    }

    /// Commits `tran`: the slot of each of its lines becomes the line's dirty version,
    /// the old versions' slots are released. The COMMIT rides on a later log write;
    /// wait on the returned position for it to be durable. Committing a tran
    /// committed lately (since open or in the log recovery replayed) returns the
    /// position of its COMMIT (a retry); one aborted is an error naming its outcome.
    pub fn commit(&self, tran: u64) -> Result<RecordPos, VssdError> {
        if let Some(d) = self.inner.damaged.borrow().get(&tran)
            && let Payload::Damaged { line, slot, reason } = d.payload
        {
            return Err(VssdError::Damaged {
                op: "commit",
                path: self.path_buf(),
                tran,
                line,
                slot,
                reason,
            });
        }
        self.decide(tran, Resolution::Commit)
    }

    /// Aborts `tran`: its slots are released, its lines keep their current versions.
    /// Idempotent like [`Vssd::commit`].
    pub fn abort(&self, tran: u64) -> Result<RecordPos, VssdError> {
        let pos = self.decide(tran, Resolution::Abort)?;
        self.inner.damaged.borrow_mut().remove(&tran);
        Ok(pos)
    }

    /// COMMIT or ABORT of a prepared tran whose writep1 has returned; of a tran
    /// resolved the same way lately, the position of the record that did it
    /// (idempotent, nothing logged); of one resolved the other way or forgotten, an
    /// error naming its outcome.
    fn decide(&self, tran: u64, decision: Resolution) -> Result<RecordPos, VssdError> {
        let (op, record) = match decision {
            Resolution::Commit => ("commit", Record::Commit { tran }),
            Resolution::Abort => ("abort", Record::Abort { tran }),
        };
        if self.inner.phase1.borrow().contains_key(&tran) {
            return Err(VssdError::TranBusy { op, tran });
        }
        let (done, pos) = self.logged(op, &record, |map, seq| {
            if map.prepared(tran).is_none() {
                let outcomes = self.inner.outcomes.borrow();
                if let Some((done, pos)) = outcomes.get(tran)
                    && done == decision
                {
                    return Ok((Some(pos), None));
                }
                let outcome = outcomes.outcome_unprepared(tran);
                if outcome != TranOutcome::Unknown {
                    return Err(VssdError::TranResolved { op, tran, outcome });
                }
            }
            let applied = match decision {
                Resolution::Commit => map.commit(tran, seq).map(drop),
                Resolution::Abort => map.abort(tran, seq).map(drop),
            };
            applied.map_err(|e| self.map_error(op, e))?;
            Ok((None, Some(record.clone())))
        })?;
        if let Some(pos) = done {
            return Ok(pos);
        }
        let pos = pos.expect("COMMIT or ABORT appended");
        // No park since the map changed: a retry finds the outcome at once.
        self.inner.outcomes.borrow_mut().record(tran, decision, pos);
        self.inner.space.wakeup_all();
        if decision == Resolution::Commit {
            self.inner.dirty_changed.wakeup_all();
        }
        self.count(|s| match decision {
            Resolution::Commit => s.commits += 1,
            Resolution::Abort => s.aborts += 1,
        });
        Ok(pos)
    }

    /// What this vSSD knows of `tran` (for the DTM's recovery): prepared here,
    /// committed or aborted here lately (since open or in the log recovery replayed),
    /// forgotten or unknown ([`TranOutcome`]).
    pub fn tran_outcome(&self, tran: u64) -> TranOutcome {
        if self.inner.phase1.borrow().contains_key(&tran)
            || self.inner.map.borrow().prepared(tran).is_some()
        {
            return TranOutcome::Prepared;
        }
        self.inner.outcomes.borrow().outcome_unprepared(tran)
    }

    /// Parks until `tran` is no longer prepared here (its writep1 failed, or it was
    /// committed or aborted; or it never was), or until `deadline`; returns whether
    /// it is no longer prepared. (Woken by every COMMIT, ABORT and failed writep1.)
    pub fn wait_unprepared(&self, tran: u64, deadline: taskio::Instant) -> bool {
        // Bounded: each pass parks until a wake-up or the deadline.
        loop {
            if self.tran_outcome(tran) != TranOutcome::Prepared {
                return true;
            }
            if taskio::now() >= deadline {
                return false;
            }
            self.inner.space.sleep_until(deadline);
        }
    }

    /// Up to `max` in-doubt trans with ids above `after`, in increasing id order:
    /// prepared here, writep1 returned, neither committed nor aborted. Those recovery
    /// returned at open and those prepared since (a peer's vSSD stays open while the
    /// primary that prepared a tran there dies), each with its lines; the payload is
    /// [`Payload::Damaged`] for one recovery found damaged and not repaired yet,
    /// [`Payload::Intact`] otherwise (not read again: [`Vssd::read_prepared`] checks
    /// it). O(prepared trans) per call.
    pub fn in_doubt(&self, after: u64, max: usize) -> Vec<InDoubt> {
        let map = self.inner.map.borrow();
        let phase1 = self.inner.phase1.borrow();
        let mut trans: Vec<u64> = map
            .prepared_trans()
            .filter(|&t| t > after && !phase1.contains_key(&t))
            .collect();
        trans.sort_unstable();
        trans.truncate(max);
        let damaged = self.inner.damaged.borrow();
        trans
            .into_iter()
            .map(|tran| InDoubt {
                tran,
                parts: map.prepared(tran).expect("listed as prepared").to_vec(),
                payload: damaged.get(&tran).map_or(Payload::Intact, |d| d.payload),
            })
            .collect()
    }

    /// The payload of in-doubt `tran` (prepared, its writep1 returned), all its lines
    /// as writep1 took them, each checked against its PREPARE's CRC32C: the copy a
    /// replica holding it intact gives to repair another's damaged one
    /// ([`Vssd::resolve_repaired`]). A damaged line is [`VssdError::Damaged`], never
    /// data; a tran not prepared here is [`VssdError::TranResolved`] with its outcome.
    pub fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, VssdError> {
        const OP: &str = "read_prepared";
        self.check_usable(OP)?;
        if self.inner.phase1.borrow().contains_key(&tran) {
            return Err(VssdError::TranBusy { op: OP, tran });
        }
        // Pinned: a commit or abort meanwhile releases the slots, but none is handed
        // out again before the reads end.
        let parts = {
            let mut map = self.inner.map.borrow_mut();
            let Some(parts) = map.prepared(tran).map(<[_]>::to_vec) else {
                drop(map);
                return Err(VssdError::TranResolved {
                    op: OP,
                    tran,
                    outcome: self.tran_outcome(tran),
                });
            };
            for p in &parts {
                map.pin(p.slot);
            }
            parts
        };
        let line_size = self.inner.geometry.line_size() as usize;
        let total: usize = parts.iter().map(|p| p.len as usize).sum();
        let mut payload = AlignedBuf::new(round_up(total));
        payload.set_len(total);
        let mut buf = AlignedBuf::new(line_size);
        let mut read = || -> Result<(), VssdError> {
            for (i, p) in parts.iter().enumerate() {
                let got = self.read_slot("read_prepared payload", p.slot, p.len, &mut buf)?;
                if got != p.crc {
                    return Err(VssdError::Damaged {
                        op: OP,
                        path: self.path_buf(),
                        tran,
                        line: p.line,
                        slot: p.slot,
                        reason: crate::recover::Damage::Checksum { got, want: p.crc },
                    });
                }
                let at = i * line_size;
                payload[at..at + p.len as usize].copy_from_slice(&buf);
            }
            Ok(())
        };
        let result = read();
        for p in &parts {
            self.unpin(p.slot);
        }
        result.map(|()| payload)
    }

    /// Commits an in-doubt tran whose payload recovery found damaged
    /// ([`Payload::Damaged`]) with `payload`, the tran's data fetched from another
    /// copy (a replica): all its lines, as writep1 took them. Each line's part must be
    /// what its PREPARE describes (length and CRC32C); all are written durably to the
    /// tran's slots, then the tran is committed durably.
    pub fn resolve_repaired(&self, tran: u64, payload: &AlignedBuf) -> Result<(), VssdError> {
        const OP: &str = "resolve_repaired";
        self.check_usable(OP)?;
        let Some(d) = self.inner.damaged.borrow().get(&tran).cloned() else {
            return Err(VssdError::Repair {
                path: self.path_buf(),
                tran,
                why: "it is not an in-doubt tran with a damaged payload".to_string(),
            });
        };
        let line_size = self.inner.geometry.line_size() as usize;
        let chunks: Vec<&[u8]> = payload.chunks(line_size).collect();
        if payload.len() as u64 != d.payload_len() || chunks.len() != d.parts.len() {
            return Err(VssdError::Repair {
                path: self.path_buf(),
                tran,
                why: format!(
                    "the payload has {} bytes, its {} PREPAREs from line {} say {}",
                    payload.len(),
                    d.parts.len(),
                    d.line(),
                    d.payload_len()
                ),
            });
        }
        for (p, chunk) in d.parts.iter().zip(&chunks) {
            let crc = crc32c::crc32c(chunk);
            if chunk.len() != p.len as usize || crc != p.crc {
                return Err(VssdError::Repair {
                    path: self.path_buf(),
                    tran,
                    why: format!(
                        "the payload for line {} has {} bytes and CRC32C {crc:#010x}, its PREPARE says {} bytes and {:#010x}",
                        p.line,
                        chunk.len(),
                        p.len,
                        p.crc
                    ),
                });
            }
        }
        for (p, chunk) in d.parts.iter().zip(&chunks) {
            self.inner
                .file
                .pwrite_durable(
                    &aligned_copy(chunk),
                    self.inner.geometry.slot_offset(p.slot),
                )
                .map_err(|source| VssdError::Io {
                    op: "resolve_repaired payload write",
                    path: self.path_buf(),
                    source,
                })?;
        }
        self.inner.damaged.borrow_mut().remove(&tran);
        self.resolve(tran, Resolution::Commit)
    }

    /// Recovery found `d`'s payload damaged and leaves it to the caller.
    pub(crate) fn mark_damaged(&self, d: InDoubt) {
        assert!(matches!(d.payload, Payload::Damaged { .. }), "{d:?}");
        self.inner.damaged.borrow_mut().insert(d.tran, d);
    }

    pub(crate) fn count_damaged_aborted(&self) {
        self.count(|s| s.damaged_aborted += 1);
    }

    /// Resolves an in-doubt tran by the DTM's decision, durably.
    pub fn resolve(&self, tran: u64, resolution: Resolution) -> Result<(), VssdError> {
        let pos = match resolution {
            Resolution::Commit => self.commit(tran)?,
            Resolution::Abort => self.abort(tran)?,
        };
        self.wait_durable(pos)
    }

    /// Reads `line` into `buf` (capacity at least the line size): a hit with the
    /// payload in `buf` (its length set), CRC32C checked, or `None` for a miss. A
    /// payload that fails its CRC is an error naming line and slot, never data.
    pub fn read_into(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<Hit>, VssdError> {
        self.check_usable("read")?;
        assert!(
            buf.capacity() >= self.inner.geometry.line_size() as usize,
            "read buffer of {} bytes for lines of {}",
            buf.capacity(),
            self.inner.geometry.line_size()
        );
        let entry = {
            let mut map = self.inner.map.borrow_mut();
            // A line being filled misses until its payload is written.
            let filling = |e: &Entry| self.inner.filling.borrow().get(&line) == Some(&e.slot);
            match map.access(line) {
                Some(e) if !filling(&e) => {
                    map.pin(e.slot);
                    e
                }
                _ => {
                    drop(map);
                    self.count(|s| s.read_misses += 1);
                    return Ok(None);
                }
            }
        };
        let read = self.read_slot("read payload", entry.slot, entry.len, buf);
        self.unpin(entry.slot);
        let got = read?;
        if got != entry.crc {
            return Err(VssdError::Payload {
                path: self.path_buf(),
                line,
                slot: entry.slot,
                version: entry.version,
                got,
                want: entry.crc,
            });
        }
        self.count(|s| s.read_hits += 1);
        Ok(Some(Hit {
            version: entry.version,
            state: entry.state,
            len: entry.len,
        }))
    }

    /// Ends a pin of the map on `slot`; a writer waiting for room may find the slot
    /// free now.
    fn unpin(&self, slot: u64) {
        if self.inner.map.borrow_mut().unpin(slot) {
            self.inner.space.wakeup_all();
        }
    }

    /// Reads the `len` payload bytes of `slot` into `buf` (its length set to `len`)
    /// and returns their CRC32C.
    pub(crate) fn read_slot(
        &self,
        op: &'static str,
        slot: u64,
        len: u32,
        buf: &mut AlignedBuf,
    ) -> Result<u32, VssdError> {
        buf.set_len(round_up(len as usize));
        self.inner
            .file
            .pread_exact(buf, self.inner.geometry.slot_offset(slot))
            .map_err(|source| VssdError::Io {
                op,
                path: self.path_buf(),
                source,
            })?;
        buf.set_len(len as usize);
        Ok(crc32c::crc32c(buf))
    }

    /// [`read_into`](Vssd::read_into) a new buffer.
    pub fn read(&self, line: u64) -> Result<Option<(Hit, AlignedBuf)>, VssdError> {
        let mut buf = AlignedBuf::new(self.inner.geometry.line_size() as usize);
        Ok(self.read_into(line, &mut buf)?.map(|hit| (hit, buf)))
    }

    /// Caches `payload` as `line`'s clean version after a backing-store read (a miss
    /// filled). Returns whether it is cached: not if the line is cached already or no
    /// slot is free without waiting for a destage. Readers miss until the payload is
    /// written. The caller keeps writes to the line out between its backing-store
    /// read and this call (a fill must not install data older than a write).
    pub fn insert_clean(&self, line: u64, payload: &AlignedBuf) -> Result<bool, VssdError> {
        const OP: &str = "insert_clean";
        self.check_usable(OP)?;
        let mut padded = None;
        let data = self.direct_payload(OP, line, payload, &mut padded)?;
        let len = payload.len() as u32;
        let crc = crc32c::crc32c(payload);
        if self.inner.map.borrow().lookup(line).is_some() {
            return Ok(false);
        }
        let take = |map: &mut CacheMap| map.insert_clean(line, len, crc);
        let slot = match self.alloc(OP, take, false) {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                self.count(|s| s.fills_skipped += 1);
                return Ok(false);
            }
            // Cached meanwhile (a commit while room was made): nothing to fill.
            Err(VssdError::Map {
                source: MapError::Cached { .. },
                ..
            }) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.inner.map.borrow_mut().pin(slot);
        self.inner.filling.borrow_mut().insert(line, slot);
        let written = self
            .inner
            .file
            .pwrite(data, self.inner.geometry.slot_offset(slot));
        {
            let mut filling = self.inner.filling.borrow_mut();
            if filling.get(&line) == Some(&slot) {
                filling.remove(&line);
            }
        }
        if let Err(source) = written {
            // Never logged nor checkpointed: forget it at once.
            let mut map = self.inner.map.borrow_mut();
            if map.lookup(line).is_some_and(|e| e.slot == slot) {
                map.invalidate(line, 0);
            }
            drop(map);
            self.unpin(slot);
            return Err(VssdError::Io {
                op: "insert_clean payload write",
                path: self.path_buf(),
                source,
            });
        }
        self.unpin(slot);
        self.count(|s| s.fills += 1);
        Ok(true)
    }

    /// `line` was destaged with the data of `version`: clean if that is still its
    /// version (a CLEAN record; a newer write stays dirty). Returns whether it is clean
    /// now, and the record's position when one was logged.
    pub fn mark_clean(
        &self,
        line: u64,
        version: u64,
    ) -> Result<(bool, Option<RecordPos>), VssdError> {
        let probe = Record::Clean { line, version };
        let (clean, pos) = self.logged("mark_clean", &probe, |map, _| {
            let was_dirty = map
                .lookup(line)
                .is_some_and(|e| e.version == version && e.state == State::Dirty);
            let clean = map.mark_clean(line, version);
            Ok((clean, was_dirty.then_some(Record::Clean { line, version })))
        })?;
        if pos.is_some() {
            self.count(|s| s.cleaned += 1);
            self.inner.space.wakeup_all();
            self.inner.dirty_changed.wakeup_all();
        }
        Ok((clean, pos))
    }

    /// Drops `line`'s cached version (DISCARD); durable on return. A tran prepared on
    /// the line stays prepared. Returns whether the line was cached.
    pub fn invalidate(&self, line: u64) -> Result<bool, VssdError> {
        Ok(self.invalidate_range(line, 1)? == 1)
    }

    /// Drops the cached versions of lines `first..first + count` (DISCARD of a
    /// range; lines past `u64::MAX` are none), durable on return. Trans prepared
    /// there stay prepared. Returns how many lines were cached.
    ///
    /// One INVALIDATE per cached line, found through the map's ordered index: the
    /// work is proportional to the lines cached in the range, not to `count`. A line
    /// not cached gets no record, but the call still waits for every slot release
    /// logged so far to be durable: an eviction's INVALIDATE may be in flight for it,
    /// and a crash before that is durable would bring the evicted line back over
    /// whatever the caller writes to the backing store next.
    pub fn invalidate_range(&self, first: u64, count: u64) -> Result<u64, VssdError> {
        const OP: &str = "invalidate";
        self.check_usable(OP)?;
        let end = first.saturating_add(count);
        let mut from = first;
        let mut invalidated = 0;
        // Bounded: `from` moves past one cached line of the range each time.
        while from < end {
            if self.inner.map.borrow().cached_from(from, end).is_none() {
                break; // nothing to log: no wait for log room either
            }
            let probe = Record::Invalidate { line: from };
            let (next, _) = self.logged(OP, &probe, |map, seq| {
                let Some(line) = map.cached_from(from, end) else {
                    return Ok((None, None));
                };
                map.invalidate(line, seq).expect("cached_from found it");
                Ok((Some(line), Some(Record::Invalidate { line })))
            })?;
            let Some(line) = next else {
                break;
            };
            invalidated += 1;
            self.count(|s| s.invalidations += 1);
            from = line + 1;
        }
        if invalidated > 0 {
            self.inner.space.wakeup_all();
            self.inner.dirty_changed.wakeup_all();
        }
        // This call's INVALIDATEs release slots too: one wait covers them all.
        let releasing = self.inner.map.borrow().seq_releasing_last();
        if let Some(seq) = releasing {
            self.inner.log.wait_durable(RecordPos { seq, index: 0 })?;
        }
        Ok(invalidated)
    }

    /// Up to `n` dirty lines from line `from` on, in line order, with their versions
    /// (destage): read off the map's ordered index, copying only what is returned.
    pub fn dirty_range(&self, from: u64, n: usize) -> Vec<(u64, u64)> {
        self.inner
            .map
            .borrow()
            .dirty_from(from)
            .take(n)
            .map(|(line, e)| (line, e.version))
            .collect()
    }

    /// Every dirty line and its version, in line order (tests and tools: destage
    /// takes [`Vssd::dirty_range`]s).
    pub fn dirty_lines(&self) -> Vec<(u64, u64)> {
        self.dirty_range(0, usize::MAX)
    }

    /// How many lines are dirty. O(1).
    pub fn dirty_count(&self) -> u64 {
        self.inner.map.borrow().counts().lines_dirty
    }

    /// A number that grows whenever a line becomes dirty, gets a newer dirty version
    /// or stops being dirty: give it to [`Vssd::wait_dirty_changed`].
    pub fn dirty_generation(&self) -> u64 {
        self.inner.map.borrow().dirty_generation()
    }

    /// Parks until the dirty lines changed since `seen` (a
    /// [`Vssd::dirty_generation`]) and returns the new generation; at once if they
    /// already did. Errs once the vSSD is closed or failed.
    pub fn wait_dirty_changed(&self, seen: u64) -> Result<u64, VssdError> {
        loop {
            self.check_usable("wait_dirty_changed")?;
            let now = self.dirty_generation();
            if now != seen {
                return Ok(now);
            }
            self.inner.dirty_changed.sleep();
        }
    }

    /// The first cached line (clean or dirty) in `from..end`, if any, off the map's
    /// ordered index (a device's allocation map: BLOCK_STATUS).
    pub fn cached_from(&self, from: u64, end: u64) -> Option<u64> {
        self.inner.map.borrow().cached_from(from, end)
    }

    /// The current version of `line` without reading it, if cached.
    pub fn lookup(&self, line: u64) -> Option<Entry> {
        self.inner.map.borrow().lookup(line)
    }

    /// Takes a checkpoint now (or waits for the one running) and returns its seq.
    pub fn checkpoint(&self) -> Result<u64, VssdError> {
        self.check_usable("checkpoint")?;
        while self.inner.ck_running.get() {
            self.inner.ck_done.sleep();
            self.check_usable("checkpoint")?;
        }
        self.inner.ck_running.set(true);
        let result = self.checkpoint_now();
        self.inner.ck_running.set(false);
        self.inner.ck_done.wakeup_all();
        if let Err(e) = &result {
            *self.inner.failed.borrow_mut() = Some(format!("a checkpoint failed: {e}"));
        }
        result
    }

    fn checkpoint_now(&self) -> Result<u64, VssdError> {
        let inner = &*self.inner;
        // Cut and copy without a park in between: exact at `seq`.
        let seq = inner.log.cut();
        if inner.ck_which.get().is_some() && seq == inner.ck_seq.get() {
            // Nothing logged since the newest checkpoint. Writing the same seq to the
            // other region would leave two valid checkpoints recovery cannot order,
            // one of them about to be overwritten.
            return Ok(seq);
        }
        let snap = {
            let map = inner.map.borrow();
            let phase1 = inner.phase1.borrow();
            let filling = inner.filling.borrow();
            Snapshot {
                seq,
                entries: map
                    .entries()
                    .into_iter()
                    .filter(|(line, e)| filling.get(line) != Some(&e.slot))
                    .collect(),
                // A tran whose writep1 runs: only the parts whose PREPAREs are
                // appended (before `seq`); the rest follow in the log.
                prepared: map
                    .prepared_all()
                    .into_iter()
                    .filter(|(tran, p)| phase1.get(tran).is_none_or(|&n| p.part < n))
                    .collect(),
                tran_high: inner.trans.high(),
                membership: inner.membership.borrow().clone(),
            }
        };
        // Never ahead of the durable log: every block before `seq` durable first.
        if seq > inner.log.durable_end() {
            inner.log.wait_durable(RecordPos {
                seq: seq - 1,
                index: 0,
            })?;
        }
        let which = inner.ck_which.get().map_or(0, |w| 1 - w);
        checkpoint::write(
            &inner.file,
            &inner.geometry,
            inner.superblock.crc_seed(),
            which,
            &snap,
        )?;
        inner.ck_which.set(Some(which));
        inner.ck_seq.set(seq);
        if seq > inner.log.oldest_needed() {
            inner.log.set_oldest_needed(seq);
        }
        self.count(|s| s.checkpoints += 1);
        Ok(seq)
    }

    /// Stops the vSSD: later calls fail; parks until the log wrote what was pending
    /// and a running checkpoint ended, then releases the device's lock (another open
    /// may follow at once). Dropping the last handle without `close` stops it too,
    /// without waiting ([`Vssd::background`] tells when it is done).
    pub fn close(&self) {
        let inner = &*self.inner;
        if !inner.stop() {
            return;
        }
        // The log writers and the checkpoint task end; then no task but a caller's
        // own checkpoint can still write.
        inner.log.background().wait_ended();
        while inner.ck_running.get() {
            inner.ck_done.sleep();
        }
        // Closing the file releases the lock too; this lets a new open in before the
        // last handle of this vSSD is dropped. Nothing writes to the device now.
        let _ = inner.file.unlock();
    }

    /// The vSSD's background tasks (log writers, checkpoint task): once the vSSD is
    /// closed or its last handle dropped, [`Background::wait_ended`] waits for them to
    /// end, after which the device's file is closed (the last handle dropped) or
    /// unlocked (closed).
    pub fn background(&self) -> Background {
        self.inner.log.background()
    }

    /// Checks the map's invariants (tests).
    #[doc(hidden)]
    pub fn assert_invariants(&self) {
        self.inner.map.borrow().assert_invariants();
    }
}

impl Inner {
    /// Refuses further calls and wakes every task that waits, the log writers and the
    /// checkpoint task included: they finish what they started and end. Whether this
    /// call stopped it (false: stopped already).
    fn stop(&self) -> bool {
        if self.closed.replace(true) {
            return false;
        }
        self.log.close();
        self.kick.wakeup_all();
        self.space.wakeup_all();
        self.dirty_changed.wakeup_all();
        self.ck_done.wakeup_all();
        true
    }
}

impl Drop for Inner {
    /// The last handle is gone: nobody can call `close`, and `Drop` cannot park. The
    /// tasks end on their own; the last reference to the file closes it, releasing
    /// the device's lock.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The checkpoint task: a checkpoint whenever the log is `ck_blocks` full. Ends
/// when the vSSD closes, fails or its last handle is dropped: it holds the vSSD only
/// while it looks at it or checkpoints, never while it sleeps.
fn checkpoint_loop(weak: &Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let vssd = Vssd { inner };
        if vssd.check_usable("checkpoint").is_err() {
            return;
        }
        if vssd.inner.log.blocks_used() >= vssd.inner.ck_blocks {
            if vssd.checkpoint().is_err() {
                return;
            }
            continue;
        }
        let kick = vssd.inner.kick.clone();
        // Possibly the last handle: its drop stops the vSSD and wakes no one yet.
        drop(vssd);
        if weak.strong_count() == 0 {
            return;
        }
        kick.sleep();
    }
}
