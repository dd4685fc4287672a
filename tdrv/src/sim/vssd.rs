//! `tdrv torture vssd`: the whole vSSD under the simulator, with crashes.
//!
//! One node holds a vSSD on its simulated disk (16 lines of cache for 40 lines of
//! data, so eviction and backpressure run; the smallest log, so it wraps over
//! checkpoints). Six tasks run random operations, one line at a time each (a
//! per-line lock, as the cache device holds): write (writep1, then the coordinator's
//! decision, commit or abort, sometimes waited durable), read, fill after a miss,
//! destage (copy to the backing store, then mark_clean), discard (a tombstone to the
//! backing store, then invalidate) and checkpoints. The backing store lives outside
//! the node: it survives crashes.
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
//! checks, for every line, what a client would read (the cache, or the backing store
//! on a miss):
//! - it is the newest acknowledged version (a write whose writep1 returned and whose
//!   decision was commit, or a discard that returned), or a newer one in flight;
//! - never an aborted write, and never bytes no write produced (every payload names
//!   its line and version in each of its 8-byte words);
//! - the in-doubt set holds no tran whose COMMIT or ABORT was durable.
//!
//! While the node runs, every read under the line's lock must return exactly the
//! newest acknowledged version.
//!
//! `--buggy` acknowledges each write to its client before writep1 returns (a DTM that
//! replies before phase 1 is durable): the torture finds seeds where a crash loses an
//! acknowledged write.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use taskio::file::OpenOptions;
use taskio::rand::Rng;
use taskio::sim::SimHandle;
use taskio::{AlignedBuf, QLock, sleep, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::map::State;
use vssd::{Options as VssdOptions, Resolution, Vssd};

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

/// Each 8-byte word names the line, the version id and the word's index.
fn word(line: u64, id: u64, i: usize) -> u64 {
    (line << 40) ^ id ^ ((i as u64) << 56)
}

fn payload(line: u64, id: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(LINE_SIZE as usize);
    b.set_len(LINE_SIZE as usize);
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&word(line, id, i).to_le_bytes());
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
    /// The coordinator's decisions: tran -> commit?
    decided: RefCell<BTreeMap<u64, bool>>,
    /// Trans whose COMMIT or ABORT was waited durable.
    durable_decision: RefCell<BTreeSet<u64>>,
    next_id: Cell<u64>,
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

    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    fn backing(&self, line: u64) -> u64 {
        self.backing.borrow().get(&line).copied().unwrap_or(0)
    }
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
    w.torn.set(w.torn.get() + rec.damaged_aborted.len() as u64);
    // Resolve the in-doubt trans by the DTM's rule.
    for d in &rec.in_doubt {
        w.in_doubt.set(w.in_doubt.get() + 1);
        if w.durable_decision.borrow().contains(&d.tran) {
            return w.fail(format!(
                "tran {} is in doubt though its decision was durable",
                d.tran
            ));
        }
        let commit = w.decided.borrow().get(&d.tran).copied().unwrap_or(true);
        let r = if commit {
            Resolution::Commit
        } else {
            Resolution::Abort
        };
        if let Err(e) = v.resolve(d.tran, r) {
            return w.fail(format!("resolve tran {}: {e}", d.tran));
        }
        if commit {
            w.decided.borrow_mut().insert(d.tran, true);
        }
    }
    // Check every line against the model, then take what is there as acknowledged.
    for line in 0..DATA_LINES {
        let got = match effective(w, &v, line) {
            Ok(id) => id,
            Err(e) => return w.fail(e),
        };
        let mut lines = w.lines.borrow_mut();
        let m = lines.entry(line).or_default();
        let aborted = w.decided.borrow().get(&got) == Some(&false);
        let allowed = got == m.acked || (got > m.acked && m.in_flight.contains(&got));
        if aborted || !allowed {
            let why = format!(
                "line {line} reads version {got} after recovery; acknowledged {}, in flight {:?}{}",
                m.acked,
                m.in_flight,
                if aborted { " (an aborted write)" } else { "" }
            );
            drop(lines);
            return w.fail(why);
        }
        m.acked = got;
        let b = w.backing(line);
        let discard = m.in_flight.contains(&b) && b != got;
        m.in_flight.clear();
        if discard {
            m.in_flight.insert(b); // in flight again while retried below
        }
        drop(lines);
        w.checked.set(w.checked.get() + 1);
        // A discard cut short: its tombstone is in the backing store; the client
        // retries it, as it was never acknowledged.
        if discard {
            if let Err(e) = v.invalidate(line) {
                return w.fail(format!("invalidate line {line} again: {e}"));
            }
            if let Some(m) = w.lines.borrow_mut().get_mut(&line) {
                m.acked = b;
                m.in_flight.clear();
            }
        }
    }
    v.assert_invariants();
    w.recovered.set(boot);
    let locks: Rc<Vec<QLock<()>>> = Rc::new((0..DATA_LINES).map(|_| QLock::new(())).collect());
    // The destager: keeps dirty lines below half the cache, so writers waiting for
    // room (each holding its own line's lock) always get it.
    let (w2, v2, l2) = (w.clone(), v.clone(), locks.clone());
    let destager = spawn(move || {
        loop {
            sleep(Duration::from_micros(300));
            let dirty = v2.dirty_lines();
            if (dirty.len() as u64) < CACHE_LINES / 2 {
                continue;
            }
            for (line, _) in dirty {
                let Some(_guard) = l2[line as usize].try_lock() else {
                    continue;
                };
                if let Err(e) = destage(&w2, &v2, line) {
                    return w2.fail(e);
                }
            }
        }
    });
    if let Err(e) = destager {
        return w.fail(format!("spawn: {e}"));
    }
    for t in 0..TASKS {
        let (w2, v, locks) = (w.clone(), v.clone(), locks.clone());
        let mut rng = Rng::stream(w.seed, (boot << 8) | t);
        let spawned = spawn(move || {
            let w = w2;
            loop {
                let line = rng.below(DATA_LINES);
                let _guard = locks[line as usize].lock();
                if let Err(e) = step(&w, &v, &mut rng, line) {
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
                drop(_guard);
                sleep(Duration::from_micros(rng.below(50)));
            }
        });
        if let Err(e) = spawned {
            return w.fail(format!("spawn: {e}"));
        }
    }
}

/// Destage of `line` (its lock held): the dirty version to the backing store, then
/// CLEAN.
fn destage(w: &World, v: &Vssd, line: u64) -> Result<(), String> {
    if v.lookup(line).is_none_or(|e| e.state != State::Dirty) {
        return Ok(());
    }
    let Some((hit, buf)) = v.read(line).map_err(|e| format!("destage read: {e}"))? else {
        return Err(format!("line {line} dirty but missed"));
    };
    let id = decode(line, &buf)?;
    trace(w, format_args!("destage line {line} version {id}"));
    w.backing.borrow_mut().insert(line, id);
    v.mark_clean(line, hit.version)
        .map_err(|e| format!("mark_clean line {line}: {e}"))?;
    Ok(())
}

/// `TDRV_TRACE=1`: every operation on stderr (for studying a failing seed).
fn trace(w: &World, what: std::fmt::Arguments<'_>) {
    if w.trace {
        eprintln!("boot {} | {what}", w.boots.get());
    }
}

/// One random operation on `line`, whose lock the caller holds.
fn step(w: &World, v: &Vssd, rng: &mut Rng, line: u64) -> Result<(), String> {
    let acked = || w.lines.borrow().get(&line).map_or(0, |m| m.acked);
    match rng.below(100) {
        0..40 => {
            // Write: phase 1, the decision, commit or abort.
            let tran = w.id();
            w.lines
                .borrow_mut()
                .entry(line)
                .or_default()
                .in_flight
                .insert(tran);
            trace(w, format_args!("writep1 tran {tran} line {line}"));
            if w.buggy {
                // The broken variant acknowledges the write to its client (and
                // decides commit) before phase 1 is durable.
                w.decided.borrow_mut().insert(tran, true);
                let mut lines = w.lines.borrow_mut();
                let m = lines.entry(line).or_default();
                m.acked = tran;
                m.in_flight.clear();
            }
            v.writep1(tran, line, &payload(line, tran))
                .map_err(|e| format!("writep1 tran {tran} line {line}: {e}"))?;
            let commit = w.buggy || rng.below(10) != 0;
            trace(
                w,
                format_args!(
                    "tran {tran} line {line} slot {:?} decided {commit}",
                    v.lookup(line)
                ),
            );
            w.decided.borrow_mut().insert(tran, commit);
            let pos = if commit {
                let mut lines = w.lines.borrow_mut();
                let m = lines.entry(line).or_default();
                m.acked = tran;
                m.in_flight.clear();
                drop(lines);
                v.commit(tran)
            } else {
                w.lines
                    .borrow_mut()
                    .entry(line)
                    .or_default()
                    .in_flight
                    .remove(&tran);
                v.abort(tran)
            }
            .map_err(|e| format!("decision on tran {tran}: {e}"))?;
            if rng.below(4) == 0 {
                v.wait_durable(pos)
                    .map_err(|e| format!("wait for tran {tran}'s decision: {e}"))?;
                w.durable_decision.borrow_mut().insert(tran);
            }
        }
        40..70 => {
            // Read, and fill a miss from the backing store.
            let want = acked();
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
                    v.insert_clean(line, &payload(line, b))
                        .map_err(|e| format!("insert_clean line {line}: {e}"))?;
                }
            }
        }
        70..88 => destage(w, v, line)?,
        88..96 => {
            // Discard: a tombstone written around the cache, then invalidate.
            let id = w.id();
            w.lines
                .borrow_mut()
                .entry(line)
                .or_default()
                .in_flight
                .insert(id);
            w.backing.borrow_mut().insert(line, id);
            trace(w, format_args!("discard line {line} id {id}"));
            v.invalidate(line)
                .map_err(|e| format!("invalidate line {line}: {e}"))?;
            let mut lines = w.lines.borrow_mut();
            let m = lines.entry(line).or_default();
            m.acked = id;
            m.in_flight.clear();
        }
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
        next_id: Cell::new(1),
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
            "{} boots, {} double crashes ({} during recovery), {} ops, {} line checks after crashes, {} in doubt, {} torn prepares aborted, {} checkpoints, {} evictions, {} waits for room, {} log blocks; disk: {} writes torn, {} in flight at crashes ({} landed), {} left volatile by a flush",
            world.boots.get(),
            world.double_crashes.get(),
            world.double_during_recovery.get(),
            world.ops.get(),
            world.checked.get(),
            world.in_doubt.get(),
            world.torn.get(),
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
