//! `tdrv torture vssd`: the whole vSSD under the simulator, with crashes.
//!
//! One node holds a vSSD on its simulated disk (16 lines of cache for 40 lines of
//! data, so eviction and backpressure run; the smallest log, so it wraps over
//! checkpoints). Six tasks run random operations, each under the locks of the lines
//! it touches (taken in line order; the DTM serialises writes per line): write of
//! one line, or of 2 or 3 consecutive lines in one tran (writep1 with an id from
//! `next_tran_id`, then the coordinator's decision, commit or abort, sometimes
//! waited durable, sometimes retried both ways), read, fill after a miss, destage
//! (copy to the backing store, then mark_clean), discard of one line or a range (a
//! tombstone to the backing store, then `invalidate_range`; some ranges reach far
//! past the data lines, where nothing is cached), a new membership epoch, and
//! checkpoints. A destager walks `dirty_range` in line order and destages when
//! `dirty_count` reaches half the cache. The backing store lives outside the node:
//! it survives crashes.
//!
//! One seed in eight lets each boot run long enough for the log to wrap.
//!
//! The controller crashes the node at three random instants and restarts it; one
//! crash in three strikes again soon after its restart, half the time during the
//! reopen (recovery and its checks), half the time within 3 ms after it. The
//! simulator is as unkind as a real disk: at each crash every unflushed write and
//! every write still in flight is kept whole, dropped, or torn to any subset of its
//! sectors, and an fsync covers only the writes completed before it was issued.
//! Each boot reopens the vSSD,
//! resolves the in-doubt trans by the DTM's rule (the coordinator's decision if it
//! made one, else commit: with one vSSD, prepared everywhere is prepared here), and
//! checks:
//! - for every line, what a client would read (the cache, or the backing store on a
//!   miss) is the newest acknowledged version (a write whose writep1 returned and
//!   whose decision was commit, or a discard that returned), or a newer one in
//!   flight; never an aborted write, and never bytes no write produced (every
//!   payload names its line and version in each of its 8-byte words); and a version
//!   the backing store lacks is cached dirty;
//! - a tran undecided at the crash shows on all its lines or on none; an in-doubt
//!   tran has exactly the lines it was written on; none whose COMMIT or ABORT was
//!   durable is in doubt;
//! - the next id is above every id handed out before the crash;
//! - the trans resolved lately are committed or aborted as decided (or forgotten),
//!   their decision retried is idempotent (refused if forgotten), the other refused;
//! - the membership epoch is the last one acknowledged, or the one being set at the
//!   crash, never an older one.
//!
//! While the node runs, every read under the line's lock must return exactly the
//! newest acknowledged version (and a version the backing store lacks must be
//! cached dirty); a discarded range must be uncached, having dropped at least its
//! dirty lines and at most its cached ones; a decision retried returns the same
//! record, the other one is refused; an older epoch, or the same epoch with other
//! members, is refused; the destager's walk must be in line order, agree with
//! `dirty_count`, each line's entry, the dirty generation and the test's model of
//! the dirty lines.
//!
//! `--buggy` acknowledges each write to its client before writep1 returns (a DTM that
//! replies before phase 1 is durable): the torture finds seeds where a crash loses an
//! acknowledged write.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use taskio::file::OpenOptions;
use taskio::rand::Rng;
use taskio::sim::SimHandle;
use taskio::{AlignedBuf, QLock, sleep, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::map::State;
use vssd::{
    Membership, Options as VssdOptions, RecordPos, Resolution, TranOutcome, Vssd, VssdError,
};

use super::{Options, SeedRun};

const DEV: &str = "/vssd";
const LINE_SIZE: u32 = 4096;
const CACHE_LINES: u64 = 16;
const DATA_LINES: u64 = 40;
const TASKS: u64 = 6;
const CRASHES: u64 = 3;
/// One crash in this many strikes again soon after its restart: during the reopen
/// (recovery, the checks) or just after it.
const DOUBLE_CRASH_ONE_IN: u64 = 3;
/// The second crash of a double crash comes within this many microseconds of the
/// restart, or of the end of its recovery.
const DOUBLE_CRASH_MICROS: u64 = 3_000;
/// Polls (10 us of virtual time each) the controller waits for a restarted node to
/// boot or recover before it fails the seed.
const BOOT_WAIT_POLLS_MAX: u64 = 1_000_000;
/// The most lines of one multi-line tran or range discard.
const OP_LINES_MAX: u64 = 3;
/// Multi-line operations (trans, range discards) running at once; more fall back
/// to one line. Writers wait for room holding their lines' locks, and the destager
/// cannot destage a locked line: the lines locked at once (one per task, plus the
/// extra lines of the multi-line operations) must leave room for the largest tran
/// when every unlocked dirty line is destaged (the destager lets fewer than half
/// the cache stay dirty).
const MULTI_OPS_MAX: u64 = 2;
const _: () = assert!(TASKS + MULTI_OPS_MAX * (OP_LINES_MAX - 1) + OP_LINES_MAX <= CACHE_LINES);
const _: () = assert!(CACHE_LINES / 2 - 1 + OP_LINES_MAX <= CACHE_LINES);
const _: () = assert!(OP_LINES_MAX >= 2 && OP_LINES_MAX <= DATA_LINES);
/// Dirty lines the destager asks `dirty_range` for at a time.
const DESTAGE_BATCH: usize = 4;
const _: () = assert!(DESTAGE_BATCH > 0);
/// The destager walks the dirty lines (and checks them) when it destages, and at
/// least once in this many of its rounds.
const DIRTY_WALK_EVERY: u64 = 8;
const _: () = assert!(DIRTY_WALK_EVERY > 0);
/// Trans resolved lately whose COMMIT and ABORT are retried after each reopen.
const RETRIED_MAX: usize = 16;
/// Most members of an epoch the torture sets (the vSSD takes up to
/// `vssd::record::EPOCH_MEMBERS_MAX`).
const EPOCH_MEMBERS: u64 = 3;
const _: () = assert!(EPOCH_MEMBERS as usize <= vssd::record::EPOCH_MEMBERS_MAX);
/// A range discard "mostly uncached" reaches this far past the data lines at most.
const DISCARD_TAIL_MAX: u64 = 1 << 20;

/// Each 8-byte word names the line, the version id and the word's index.
fn word(line: u64, id: u64, i: usize) -> u64 {
    (line << 40) ^ id ^ ((i as u64) << 56)
}

/// The payload of version `id` on `lines` lines from `first` on.
fn payload(first: u64, lines: u64, id: u64) -> AlignedBuf {
    let len = (lines * u64::from(LINE_SIZE)) as usize;
    let mut b = AlignedBuf::new(len);
    b.set_len(len);
    for (line, bytes) in (first..).zip(b.chunks_mut(LINE_SIZE as usize)) {
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&word(line, id, i).to_le_bytes());
        }
    }
    b
}

/// The version id a payload of `line` carries, if every word agrees.
fn decode(line: u64, bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != LINE_SIZE as usize {
        return Err(format!("line {line}: payload of {} bytes", bytes.len()));
    }
    let w = |i: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(v)
    };
    let id = w(0) ^ (line << 40);
    for i in 0..bytes.len() / 8 {
        if w(i) != word(line, id, i) {
            return Err(format!(
                "line {line}: word {i} is {:#x}, not of version {id}: bytes never written",
                w(i)
            ));
        }
    }
    Ok(id)
}

/// What the test knows of one line, across crashes.
#[derive(Clone, Debug, Default)]
struct LineModel {
    /// The newest acknowledged version (0: the backing store's initial data).
    acked: u64,
    /// Newer versions in flight (a writep1 or discard not acknowledged yet).
    in_flight: BTreeSet<u64>,
}

/// The state that survives the node's crashes.
#[derive(Default)]
struct World {
    lines: RefCell<BTreeMap<u64, LineModel>>,
    /// The backing store: the version id each line holds there.
    backing: RefCell<BTreeMap<u64, u64>>,
    /// Every tran's lines: (first, count).
    tran_lines: RefCell<BTreeMap<u64, (u64, u64)>>,
    /// Trans whose writep1 started and on which the coordinator has not decided:
    /// after a crash each shows on all its lines or on none.
    undecided: RefCell<BTreeSet<u64>>,
    /// The coordinator's decisions: tran -> commit?
    decided: RefCell<BTreeMap<u64, bool>>,
    /// Trans whose COMMIT or ABORT was waited durable.
    durable_decision: RefCell<BTreeSet<u64>>,
    /// Trans resolved lately, oldest first (at most [`RETRIED_MAX`]).
    resolved: RefCell<VecDeque<u64>>,
    /// The highest id `next_tran_id` handed out, in any boot.
    max_id: Cell<u64>,
    /// The membership epoch last acknowledged, and the one being set (if any).
    epoch_acked: RefCell<Membership>,
    epoch_in_flight: RefCell<Option<Membership>>,
    boots: Cell<u64>,
    /// The last boot that finished its recovery and checks.
    recovered: Cell<u64>,
    /// Crashes that struck soon after a restart, and those of them that struck
    /// before the boot had recovered and checked.
    double_crashes: Cell<u64>,
    double_during_recovery: Cell<u64>,
    formatted: Cell<bool>,
    trace: bool,
    /// `--buggy`: acknowledge writes before writep1 returns.
    buggy: bool,
    failure: RefCell<Option<String>>,
    /// Counters for the report.
    ops: Cell<u64>,
    checked: Cell<u64>,
    in_doubt: Cell<u64>,
    torn: Cell<u64>,
    multi_trans: Cell<u64>,
    /// Multi-line trans undecided at a crash (checked all-or-none), and those of
    /// them recovery kept whole.
    cut_short: Cell<u64>,
    cut_short_whole: Cell<u64>,
    range_discards: Cell<u64>,
    retries: Cell<u64>,
    epochs: Cell<u64>,
    /// This boot's and the earlier boots' checkpoints, evictions, writep1 waits for
    /// room, log blocks written.
    boot_counts: Cell<[u64; 4]>,
    total_counts: Cell<[u64; 4]>,
    seed: u64,
}

impl World {
    fn fail(&self, why: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(format!("boot {}: {why}", self.boots.get()));
        }
    }

    /// Counts of every boot so far, this one's included.
    fn counts(&self) -> [u64; 4] {
        let (a, b) = (self.total_counts.get(), self.boot_counts.take());
        std::array::from_fn(|i| a[i] + b[i])
    }

    /// A new id (a tran's, or a discard's tombstone version) from the vSSD: above
    /// every id handed out before, in this boot or an earlier one.
    fn id(&self, v: &Vssd) -> Result<u64, String> {
        let id = v.next_tran_id().map_err(|e| format!("next_tran_id: {e}"))?;
        let max = self.max_id.get();
        if id <= max {
            return Err(format!(
                "next_tran_id handed out {id}, not above {max} handed out before"
            ));
        }
        self.max_id.set(id);
        Ok(id)
    }

    fn backing(&self, line: u64) -> u64 {
        self.backing.borrow().get(&line).copied().unwrap_or(0)
    }

    fn line<R>(&self, line: u64, f: impl FnOnce(&mut LineModel) -> R) -> R {
        f(self.lines.borrow_mut().entry(line).or_default())
    }

    /// `tran` was resolved (its decision in `decided`): retried after reopens.
    fn resolved(&self, tran: u64) {
        let mut r = self.resolved.borrow_mut();
        if r.len() == RETRIED_MAX {
            r.pop_front();
        }
        r.push_back(tran);
    }
}

/// The state of one boot, shared by its tasks.
struct BootState {
    /// One lock per data line: the DTM serialises the writes to a line.
    locks: Vec<QLock<()>>,
    /// Multi-line operations running (at most [`MULTI_OPS_MAX`]).
    multi: Cell<u64>,
    /// The lines the model says are dirty.
    dirty: RefCell<BTreeSet<u64>>,
    /// Lines a discard is dropping: dirty or not until it returns.
    unsettled: RefCell<BTreeSet<u64>>,
}

/// Each boot's format gets its own uuid: a format cut short by a crash is redone.
fn params(seed: u64, boot: u64) -> FormatParams {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&(seed ^ 0x5eed).to_le_bytes());
    uuid[8..].copy_from_slice(&boot.to_le_bytes());
    FormatParams {
        line_size: LINE_SIZE,
        lines: CACHE_LINES,
        log_bytes: LOG_BYTES_MIN,
        device_id: "torture".into(),
        uuid,
        force: false,
    }
}

/// What a client reads for `line`: the cache's version, or the backing store's.
fn effective(w: &World, v: &Vssd, line: u64) -> Result<u64, String> {
    match v.read(line).map_err(|e| format!("read line {line}: {e}"))? {
        Some((hit, buf)) => {
            let id = decode(line, &buf)?;
            if hit.version != 0 && hit.version != id {
                return Err(format!(
                    "line {line}: version {} holds the bytes of {id}",
                    hit.version
                ));
            }
            Ok(id)
        }
        None => Ok(w.backing(line)),
    }
}

/// A line whose newest version is not in the backing store must be cached dirty
/// with it: clean, an eviction would lose it.
fn check_unbacked_is_dirty(w: &World, v: &Vssd, line: u64, newest: u64) -> Result<(), String> {
    let backing = w.backing(line);
    if newest == backing {
        return Ok(());
    }
    match v.lookup(line) {
        Some(e) if e.state == State::Dirty && e.version == newest => Ok(()),
        e => Err(format!(
            "line {line}: version {newest} is not in the backing store ({backing}) and the cache holds {e:?}, not it dirty"
        )),
    }
}

/// Retries the decision on `tran`, resolved lately (`pos`: its record, if known):
/// the same decision again is idempotent while the vSSD remembers the outcome, the
/// other one refused; its outcome is the decision or forgotten, nothing else.
fn retry_decision(v: &Vssd, tran: u64, commit: bool, pos: Option<RecordPos>) -> Result<(), String> {
    let outcome = v.tran_outcome(tran);
    let done = if commit {
        TranOutcome::Committed
    } else {
        TranOutcome::Aborted
    };
    if outcome != done && outcome != TranOutcome::Forgotten {
        return Err(format!(
            "tran {tran}, decided {}, is {outcome}",
            if commit { "commit" } else { "abort" }
        ));
    }
    let (same, other) = if commit {
        (v.commit(tran), v.abort(tran))
    } else {
        (v.abort(tran), v.commit(tran))
    };
    let refused = |r: &Result<RecordPos, VssdError>| matches!(r, Err(VssdError::TranResolved { outcome: o, .. }) if *o == outcome);
    let same_ok = match &same {
        Ok(p) => outcome == done && pos.is_none_or(|pos| pos == *p),
        Err(_) => outcome == TranOutcome::Forgotten && refused(&same),
    };
    if !same_ok || !refused(&other) {
        return Err(format!(
            "tran {tran} ({outcome}, record {pos:?}): the decision retried gave {same:?}, the other one {other:?}"
        ));
    }
    Ok(())
}

/// The membership after a reopen is the last one acknowledged, or the one being set
/// at the crash: never an older one.
fn check_epoch(w: &World, v: &Vssd) -> Result<(), String> {
    let now = Membership {
        epoch: v.epoch(),
        members: v.members(),
    };
    let acked = w.epoch_acked.borrow().clone();
    let flying = w.epoch_in_flight.take();
    if now == acked {
        return Ok(());
    }
    if flying.as_ref() == Some(&now) {
        *w.epoch_acked.borrow_mut() = now;
        return Ok(());
    }
    Err(format!(
        "membership {now:?} after recovery{}; acknowledged {acked:?}, being set {flying:?}",
        if now.epoch < acked.epoch {
            " (went back)"
        } else {
            ""
        }
    ))
}

/// Recovery's checks: the in-doubt trans resolved by the DTM's rule, every line
/// against the model, all-or-none of the undecided trans, tran ids, the outcomes of
/// trans resolved lately, the membership epoch. Returns the dirty lines.
fn check_recovered(w: &World, v: &Vssd, rec: &vssd::Recovered) -> Result<BTreeSet<u64>, String> {
    w.torn.set(w.torn.get() + rec.damaged_aborted.len() as u64);
    for d in &rec.damaged_aborted {
        // Recovery aborted it (sole copy): it must show nowhere.
        w.decided.borrow_mut().entry(d.tran).or_insert(false);
    }
    // Resolve the in-doubt trans by the DTM's rule.
    for d in &rec.in_doubt {
        w.in_doubt.set(w.in_doubt.get() + 1);
        if w.durable_decision.borrow().contains(&d.tran) {
            return Err(format!(
                "tran {} is in doubt though its decision was durable",
                d.tran
            ));
        }
        let lines = w.tran_lines.borrow().get(&d.tran).copied();
        if lines != Some((d.line(), d.parts.len() as u64)) {
            return Err(format!(
                "tran {} is in doubt on {} lines from line {}; it was written on {lines:?}",
                d.tran,
                d.parts.len(),
                d.line()
            ));
        }
        let commit = w.decided.borrow().get(&d.tran).copied().unwrap_or(true);
        let r = if commit {
            Resolution::Commit
        } else {
            Resolution::Abort
        };
        v.resolve(d.tran, r)
            .map_err(|e| format!("resolve tran {}: {e}", d.tran))?;
        if w.decided.borrow_mut().insert(d.tran, commit).is_none() {
            w.resolved(d.tran);
        }
    }
    let mut got = Vec::new();
    for line in 0..DATA_LINES {
        got.push(effective(w, v, line)?);
    }
    // A tran cut short before its decision shows on all its lines or on none.
    for tran in w.undecided.take() {
        let (first, n) = w.tran_lines.borrow()[&tran];
        let shown = (first..first + n)
            .filter(|&l| got[l as usize] == tran)
            .count() as u64;
        if shown != 0 && shown != n {
            return Err(format!(
                "tran {tran} on lines {first}..{}, undecided at the crash, shows on {shown} of its {n} lines after recovery",
                first + n
            ));
        }
        if n > 1 {
            w.cut_short.set(w.cut_short.get() + 1);
            w.cut_short_whole
                .set(w.cut_short_whole.get() + u64::from(shown == n));
        }
    }
    // Check every line against the model, then take what is there as acknowledged.
    for (line, got) in (0..DATA_LINES).zip(got) {
        let aborted = w.decided.borrow().get(&got) == Some(&false);
        let b = w.backing(line);
        let discard = w.line(line, |m| {
            let allowed = got == m.acked || (got > m.acked && m.in_flight.contains(&got));
            if aborted || !allowed {
                return Err(format!(
                    "line {line} reads version {got} after recovery; acknowledged {}, in flight {:?}{}",
                    m.acked,
                    m.in_flight,
                    if aborted { " (an aborted write)" } else { "" }
                ));
            }
            m.acked = got;
            let discard = m.in_flight.contains(&b) && b != got;
            m.in_flight.clear();
            if discard {
                m.in_flight.insert(b); // in flight again while retried below
            }
            Ok(discard)
        })?;
        w.checked.set(w.checked.get() + 1);
        // A discard cut short: its tombstone is in the backing store; the client
        // retries it, as it was never acknowledged.
        if discard {
            v.invalidate(line)
                .map_err(|e| format!("invalidate line {line} again: {e}"))?;
            w.line(line, |m| {
                m.acked = b;
                m.in_flight.clear();
            });
        } else {
            check_unbacked_is_dirty(w, v, line, got)?;
        }
    }
    // New ids are above every id handed out before the crash.
    w.id(v)?;
    let resolved: Vec<u64> = w.resolved.borrow().iter().copied().collect();
    for tran in resolved {
        let commit = w.decided.borrow()[&tran];
        retry_decision(v, tran, commit, None).map_err(|e| format!("after recovery: {e}"))?;
        w.retries.set(w.retries.get() + 1);
    }
    check_epoch(w, v)?;
    Ok(v.dirty_lines().into_iter().map(|(line, _)| line).collect())
}

/// One boot: format (first boot) or recover, check, then run the workers.
fn boot(w: &Rc<World>) {
    let boot = w.boots.get() + 1;
    w.boots.set(boot);
    w.total_counts.set(w.counts());
    let g = match params(w.seed, boot).geometry() {
        Ok(g) => g,
        Err(e) => return w.fail(format!("geometry: {e}")),
    };
    let file = match OpenOptions::new()
        .create(true)
        .size(g.total_bytes())
        .open(DEV)
    {
        Ok(f) => f,
        Err(e) => return w.fail(format!("open {DEV}: {e}")),
    };
    // Format until one format completed (a crash may cut the first one short).
    if !w.formatted.get() {
        if let Err(e) = vssd::format(&file, &params(w.seed, boot)) {
            return w.fail(format!("format: {e}"));
        }
        w.formatted.set(true);
    }
    // One vSSD, no replica: a damaged in-doubt payload has no other copy.
    let options = VssdOptions {
        sole_copy: true,
        ..VssdOptions::default()
    };
    let (v, rec) = match Vssd::open(file, Some("torture"), options) {
        Ok(x) => x,
        Err(e) => return w.fail(format!("open: {e}")),
    };
    trace(w, format_args!("recovered {rec:?}"));
    assert!(OP_LINES_MAX <= v.tran_lines_max());
    let dirty = match check_recovered(w, &v, &rec) {
        Ok(d) => d,
        Err(e) => return w.fail(e),
    };
    v.assert_invariants();
    w.recovered.set(boot);
    let b = Rc::new(BootState {
        locks: (0..DATA_LINES).map(|_| QLock::new(())).collect(),
        multi: Cell::new(0),
        dirty: RefCell::new(dirty),
        unsettled: RefCell::default(),
    });
    // The destager: keeps dirty lines below half the cache, so writers waiting for
    // room (each holding its own lines' locks) always get it.
    let (w2, v2, b2) = (w.clone(), v.clone(), b.clone());
    let destager = spawn(move || {
        let mut seen = (v2.dirty_generation(), v2.dirty_lines());
        for tick in 1.. {
            sleep(Duration::from_micros(300));
            let count = v2.dirty_count();
            let model = b2.dirty.borrow().len() as u64;
            if b2.unsettled.borrow().is_empty() && count != model {
                return w2.fail(format!(
                    "dirty_count is {count}, the model has {model} lines dirty"
                ));
            }
            if count < CACHE_LINES / 2 && tick % DIRTY_WALK_EVERY != 0 {
                continue;
            }
            let dirty = match walk_dirty(&v2, &b2, &mut seen) {
                Ok(d) => d,
                Err(e) => return w2.fail(e),
            };
            if (dirty.len() as u64) < CACHE_LINES / 2 {
                continue;
            }
            for line in dirty {
                let Some(_guard) = b2.locks[line as usize].try_lock() else {
                    continue;
                };
                if let Err(e) = destage(&w2, &v2, &b2, line) {
                    return w2.fail(e);
                }
            }
        }
    });
    if let Err(e) = destager {
        return w.fail(format!("spawn: {e}"));
    }
    for t in 0..TASKS {
        let (w2, v, b) = (w.clone(), v.clone(), b.clone());
        let mut rng = Rng::stream(w.seed, (boot << 8) | t);
        let spawned = spawn(move || {
            let w = w2;
            loop {
                if let Err(e) = task_step(&w, &v, &b, &mut rng) {
                    w.fail(e);
                    return;
                }
                w.ops.set(w.ops.get() + 1);
                let s = v.stats();
                w.boot_counts.set([
                    s.checkpoints,
                    s.evictions,
                    s.slot_waits,
                    s.log.blocks_written,
                ]);
                sleep(Duration::from_micros(rng.below(50)));
            }
        });
        if let Err(e) = spawned {
            return w.fail(format!("spawn: {e}"));
        }
    }
}

/// The dirty lines, in line order, as the destager reads them: `dirty_range`
/// batches from line 0 on. Checks them against `dirty_count`, the lines' entries,
/// the model, and the dirty generation (`seen`: the last walk's, updated).
fn walk_dirty(
    v: &Vssd,
    b: &BootState,
    seen: &mut (u64, Vec<(u64, u64)>),
) -> Result<Vec<u64>, String> {
    let generation = v.dirty_generation();
    let mut dirty = Vec::new();
    let mut from = 0;
    // Bounded: every batch but the last holds DESTAGE_BATCH data lines.
    for _ in 0..DATA_LINES as usize / DESTAGE_BATCH + 1 {
        let batch = v.dirty_range(from, DESTAGE_BATCH);
        for &(line, version) in &batch {
            if line < from || line >= DATA_LINES {
                return Err(format!(
                    "dirty_range from line {from} returned line {line}: not in line order, or never written"
                ));
            }
            match v.lookup(line) {
                Some(e) if e.state == State::Dirty && e.version == version => {}
                e => {
                    return Err(format!(
                        "dirty_range returned line {line} version {version}, the map holds {e:?}"
                    ));
                }
            }
            dirty.push((line, version));
            from = line + 1;
        }
        if batch.len() < DESTAGE_BATCH {
            break;
        }
    }
    if v.dirty_count() != dirty.len() as u64 {
        return Err(format!(
            "dirty_count is {}, dirty_range returned {} lines",
            v.dirty_count(),
            dirty.len()
        ));
    }
    // Against the model, but for lines a discard is dropping: in line order both.
    let (model, unsettled) = (b.dirty.borrow(), b.unsettled.borrow());
    let settled = |l: &u64| !unsettled.contains(l);
    let expected = model.iter().copied().filter(settled);
    let walked = dirty.iter().map(|&(line, _)| line).filter(settled);
    if !expected.clone().eq(walked.clone()) {
        return Err(format!(
            "the vSSD has lines {:?} dirty, the model {:?} (discards running on {unsettled:?})",
            walked.collect::<Vec<_>>(),
            expected.collect::<Vec<_>>()
        ));
    }
    if generation == seen.0 && dirty != seen.1 {
        return Err(format!(
            "dirty generation {generation} unchanged while the dirty lines went from {:?} to {dirty:?}",
            seen.1
        ));
    }
    let lines = dirty.iter().map(|&(line, _)| line).collect();
    *seen = (generation, dirty);
    Ok(lines)
}

/// Destage of `line` (its lock held): the dirty version to the backing store, then
/// CLEAN.
fn destage(w: &World, v: &Vssd, b: &BootState, line: u64) -> Result<(), String> {
    if v.lookup(line).is_none_or(|e| e.state != State::Dirty) {
        return Ok(());
    }
    let Some((hit, buf)) = v.read(line).map_err(|e| format!("destage read: {e}"))? else {
        return Err(format!("line {line} dirty but missed"));
    };
    let id = decode(line, &buf)?;
    trace(w, format_args!("destage line {line} version {id}"));
    w.backing.borrow_mut().insert(line, id);
    let (clean, _) = v
        .mark_clean(line, hit.version)
        .map_err(|e| format!("mark_clean line {line}: {e}"))?;
    if clean {
        b.dirty.borrow_mut().remove(&line);
    }
    Ok(())
}

/// `TDRV_TRACE=1`: every operation on stderr (for studying a failing seed).
fn trace(w: &World, what: std::fmt::Arguments<'_>) {
    if w.trace {
        eprintln!("boot {} | {what}", w.boots.get());
    }
}

/// One random operation of a worker task, with the locks of the lines it touches
/// (taken in line order: no deadlock).
fn task_step(w: &World, v: &Vssd, b: &BootState, rng: &mut Rng) -> Result<(), String> {
    // In 100: 6 multi-line writes, 3 range discards over data lines, 2 range
    // discards mostly past them, 1 new epoch; the rest one line at a time.
    let r = rng.below(100);
    if r >= 12 {
        let line = rng.below(DATA_LINES);
        let _guard = b.locks[line as usize].lock();
        return step(w, v, b, rng, line);
    }
    if r == 11 {
        return set_epoch(w, v, rng);
    }
    // A multi-line operation, unless enough of them run already (a fallback to one
    // line still counts, as the bound only needs to be an upper one).
    let lines = if b.multi.get() < MULTI_OPS_MAX {
        2 + rng.below(OP_LINES_MAX - 1)
    } else {
        1
    };
    let (first, count) = match r {
        0..9 => (rng.below(DATA_LINES - lines + 1), lines),
        // A range mostly past the data lines: never cached, so no record.
        _ => {
            let data = rng.below(lines + 1);
            (DATA_LINES - data, data + 1 + rng.below(DISCARD_TAIL_MAX))
        }
    };
    let locked = first..(first + count).min(DATA_LINES);
    b.multi.set(b.multi.get() + 1);
    let guards: Vec<_> = locked.map(|l| b.locks[l as usize].lock()).collect();
    let done = if r < 6 {
        write(w, v, b, rng, first, count)
    } else {
        discard(w, v, b, first, count)
    };
    drop(guards);
    b.multi.set(b.multi.get() - 1);
    done
}

/// A write of `count` lines from `first` (their locks held): phase 1, then the
/// coordinator's decision, commit or abort, sometimes retried.
fn write(
    w: &World,
    v: &Vssd,
    b: &BootState,
    rng: &mut Rng,
    first: u64,
    count: u64,
) -> Result<(), String> {
    let tran = w.id(v)?;
    let lines = first..first + count;
    w.tran_lines.borrow_mut().insert(tran, (first, count));
    w.undecided.borrow_mut().insert(tran);
    for line in lines.clone() {
        w.line(line, |m| m.in_flight.insert(tran));
    }
    if count > 1 {
        w.multi_trans.set(w.multi_trans.get() + 1);
    }
    trace(w, format_args!("writep1 tran {tran} lines {lines:?}"));
    if w.buggy {
        // The broken variant acknowledges the write to its client (and decides
        // commit) before phase 1 is durable.
        w.decided.borrow_mut().insert(tran, true);
        w.undecided.borrow_mut().remove(&tran);
        for line in lines.clone() {
            w.line(line, |m| {
                m.acked = tran;
                m.in_flight.clear();
            });
        }
    }
    v.writep1(tran, first, &payload(first, count, tran))
        .map_err(|e| format!("writep1 tran {tran} lines {lines:?}: {e}"))?;
    let commit = w.buggy || rng.below(10) != 0;
    trace(
        w,
        format_args!("tran {tran} lines {lines:?} decided {commit}"),
    );
    w.decided.borrow_mut().insert(tran, commit);
    w.undecided.borrow_mut().remove(&tran);
    let pos = if commit {
        for line in lines.clone() {
            w.line(line, |m| {
                m.acked = tran;
                m.in_flight.clear();
            });
        }
        let pos = v.commit(tran);
        if pos.is_ok() {
            b.dirty.borrow_mut().extend(lines.clone());
        }
        pos
    } else {
        for line in lines.clone() {
            w.line(line, |m| m.in_flight.remove(&tran));
        }
        v.abort(tran)
    }
    .map_err(|e| format!("decision on tran {tran}: {e}"))?;
    w.resolved(tran);
    if rng.below(4) == 0 {
        retry_decision(v, tran, commit, Some(pos))?;
        w.retries.set(w.retries.get() + 1);
    }
    if rng.below(4) == 0 {
        v.wait_durable(pos)
            .map_err(|e| format!("wait for tran {tran}'s decision: {e}"))?;
        w.durable_decision.borrow_mut().insert(tran);
    }
    Ok(())
}

/// A discard of lines `first..first + count` (the locks of those below
/// [`DATA_LINES`] held): a tombstone written around the cache, then
/// `invalidate_range`.
fn discard(w: &World, v: &Vssd, b: &BootState, first: u64, count: u64) -> Result<(), String> {
    let id = w.id(v)?;
    let lines = first..(first + count).min(DATA_LINES);
    let (mut cached, mut dirty) = (0, 0);
    for line in lines.clone() {
        w.line(line, |m| m.in_flight.insert(id));
        w.backing.borrow_mut().insert(line, id);
        b.unsettled.borrow_mut().insert(line);
        if let Some(e) = v.lookup(line) {
            cached += 1;
            dirty += u64::from(e.state == State::Dirty);
        }
    }
    if count > 1 {
        w.range_discards.set(w.range_discards.get() + 1);
    }
    trace(w, format_args!("discard lines {first}.. ({count}) id {id}"));
    let n = v
        .invalidate_range(first, count)
        .map_err(|e| format!("invalidate {count} lines from line {first}: {e}"))?;
    // Clean lines of the range may have been evicted meanwhile, dirty ones not.
    if n < dirty || n > cached {
        return Err(format!(
            "invalidate {count} lines from line {first} dropped {n}; {cached} were cached, {dirty} dirty"
        ));
    }
    for line in lines {
        if let Some(e) = v.lookup(line) {
            return Err(format!("line {line} holds {e:?} after its discard"));
        }
        w.line(line, |m| {
            m.acked = id;
            m.in_flight.clear();
        });
        b.dirty.borrow_mut().remove(&line);
        b.unsettled.borrow_mut().remove(&line);
    }
    Ok(())
}

/// A new membership epoch, then what the vSSD must refuse (an older epoch, the same
/// epoch with other members) and the same one again (harmless).
fn set_epoch(w: &World, v: &Vssd, rng: &mut Rng) -> Result<(), String> {
    if w.epoch_in_flight.borrow().is_some() {
        return Ok(()); // one at a time, as the DTM sets them
    }
    let old = w.epoch_acked.borrow().clone();
    let members = 1 + rng.below(EPOCH_MEMBERS);
    let new = Membership {
        epoch: old.epoch + 1 + rng.below(3),
        members: (0..members).map(|i| i * 8 + rng.below(8)).collect(),
    };
    trace(w, format_args!("set epoch {new:?}"));
    *w.epoch_in_flight.borrow_mut() = Some(new.clone());
    v.set_epoch(new.epoch, &new.members)
        .map_err(|e| format!("set_epoch {new:?}: {e}"))?;
    *w.epoch_acked.borrow_mut() = new.clone();
    w.epochs.set(w.epochs.get() + 1);
    let mut others = new.members.clone();
    others.push(1000);
    if old.epoch > 0 && v.set_epoch(old.epoch, &old.members).is_ok() {
        return Err(format!(
            "set_epoch took epoch {} back from {}",
            old.epoch, new.epoch
        ));
    }
    if v.set_epoch(new.epoch, &others).is_ok() {
        return Err(format!(
            "set_epoch took epoch {} with other members {others:?}",
            new.epoch
        ));
    }
    v.set_epoch(new.epoch, &new.members)
        .map_err(|e| format!("set_epoch {new:?} again: {e}"))?;
    if (v.epoch(), v.members()) != (new.epoch, new.members.clone()) {
        return Err(format!(
            "epoch {} members {:?} after set_epoch {new:?}",
            v.epoch(),
            v.members()
        ));
    }
    *w.epoch_in_flight.borrow_mut() = None;
    Ok(())
}

/// One random operation on `line`, whose lock the caller holds.
fn step(w: &World, v: &Vssd, b: &BootState, rng: &mut Rng, line: u64) -> Result<(), String> {
    match rng.below(100) {
        0..40 => write(w, v, b, rng, line, 1)?,
        40..70 => {
            // Read, and fill a miss from the backing store.
            let want = w.line(line, |m| m.acked);
            check_unbacked_is_dirty(w, v, line, want)?;
            match v.read(line).map_err(|e| format!("read line {line}: {e}"))? {
                Some((_, buf)) => {
                    let got = decode(line, &buf)?;
                    if got != want {
                        return Err(format!("line {line} read version {got}, newest is {want}"));
                    }
                }
                None => {
                    let b = w.backing(line);
                    if b != want {
                        return Err(format!(
                            "line {line} missed with version {want} not in the backing store ({b})"
                        ));
                    }
                    v.insert_clean(line, &payload(line, 1, b))
                        .map_err(|e| format!("insert_clean line {line}: {e}"))?;
                }
            }
        }
        70..88 => destage(w, v, b, line)?,
        88..96 => discard(w, v, b, line, 1)?,
        _ => {
            let seq = v.checkpoint().map_err(|e| format!("checkpoint: {e}"))?;
            trace(w, format_args!("checkpoint at seq {seq}"));
        }
    }
    Ok(())
}

/// Sleeps in steps of 10 us of virtual time until `done` holds; false (the seed
/// failed) if a boot failed or none came.
fn wait_for_boot(w: &World, done: impl Fn() -> bool) -> bool {
    for _ in 0..BOOT_WAIT_POLLS_MAX {
        if w.failure.borrow().is_some() {
            return false;
        }
        if done() {
            return true;
        }
        sleep(Duration::from_micros(10));
    }
    w.fail(format!("boot {} did not come up", w.boots.get()));
    false
}

/// Runs one seed of the torture.
pub fn run_seed(seed: u64, opts: Options) -> SeedRun {
    let mut sim = super::simulator(seed);
    let world = Rc::new(World {
        seed,
        buggy: opts.buggy,
        trace: std::env::var_os("TDRV_TRACE").is_some(),
        ..World::default()
    });
    let w2 = world.clone();
    // One seed in 8 runs boots long enough for the log to wrap over checkpoints.
    let boot_micros = if seed % 8 == 7 { 2_000_000 } else { 80_000 };
    let result = sim.run(move |h: &SimHandle| {
        let w3 = w2.clone();
        let node = h.add_node("ssd", "10.0.0.1".parse().expect("ip"), move || boot(&w3));
        for _ in 0..CRASHES {
            sleep(Duration::from_micros(500 + h.random(boot_micros)));
            if w2.failure.borrow().is_some() {
                return;
            }
            h.crash(node);
            let booted = w2.boots.get();
            h.restart(node);
            if h.random(DOUBLE_CRASH_ONE_IN) == 0 {
                // Crash again during the reopen, or (half the time) soon after it.
                if h.random(2) == 0 {
                    let recovered =
                        || w2.boots.get() > booted && w2.recovered.get() == w2.boots.get();
                    if !wait_for_boot(&w2, recovered) {
                        return;
                    }
                }
                sleep(Duration::from_micros(h.random(DOUBLE_CRASH_MICROS)));
                w2.double_crashes.set(w2.double_crashes.get() + 1);
                if w2.recovered.get() < w2.boots.get() || w2.boots.get() == booted {
                    w2.double_during_recovery
                        .set(w2.double_during_recovery.get() + 1);
                }
                h.crash(node);
                h.restart(node);
            }
            // The last restart boots before the next crash may strike.
            let before = w2.boots.get();
            if !wait_for_boot(&w2, || w2.boots.get() > before) {
                return;
            }
        }
        sleep(Duration::from_micros(500 + h.random(5_000)));
        h.stop(node);
    });
    let failure = match result {
        Err(e) => Some(format!("the simulation itself failed: {e}")),
        Ok(()) => world.failure.borrow().clone(),
    };
    let [checkpoints, evictions, waits, blocks] = world.counts();
    let st = sim.stats();
    SeedRun {
        trace: sim.trace_hash(),
        failure,
        detail: format!(
            "{} boots, {} double crashes ({} during recovery), {} ops, {} line checks after crashes, {} in doubt, {} torn prepares aborted, {} multi-line trans ({} cut short by a crash, {} of them kept whole), {} range discards, {} decisions retried, {} epochs set, {} checkpoints, {} evictions, {} waits for room, {} log blocks; disk: {} writes torn, {} in flight at crashes ({} landed), {} left volatile by a flush",
            world.boots.get(),
            world.double_crashes.get(),
            world.double_during_recovery.get(),
            world.ops.get(),
            world.checked.get(),
            world.in_doubt.get(),
            world.torn.get(),
            world.multi_trans.get(),
            world.cut_short.get(),
            world.cut_short_whole.get(),
            world.range_discards.get(),
            world.retries.get(),
            world.epochs.get(),
            checkpoints,
            evictions,
            waits,
            blocks,
            st.crash_writes_torn,
            st.in_flight_writes_at_crash,
            st.in_flight_writes_landed,
            st.flush_excluded_writes,
        ),
    }
}
