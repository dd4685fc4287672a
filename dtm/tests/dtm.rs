//! The DTM over several LocalReplicas on one runtime, each on its own vSSD: on real
//! files in a scratch directory, and under the simulator where a fault must come at
//! a known instant (a stalled replica, virtual time).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

mod support;

use dtm::{
    Backing, Dtm, DtmConfig, DtmError, InDoubtTran, LocalReplica, LossPolicy, RemoteReplica,
    Replica, ReplicaError, ReplicaErrorKind, ReplicaInfo, TRAN_EPOCH_SHIFT, Vssds, Written,
};
use support::{TempDir, open_dev, run_io, serve_vssds};
use taskio::file::OpenOptions;
use taskio::rand::Rng;
use taskio::sim::{Sim, SimConfig};
use taskio::{AlignedBuf, IoError, now, sleep, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::map::State;
use vssd::{Options, TranOutcome, Vssd, format};

const LINE: usize = 4096;
/// Lines of each test vSSD: room for every line a test writes and the trans in
/// flight besides (nothing destages here, and a full vSSD makes a writep1 wait for
/// room for ever).
const VSSD_LINES: u64 = 256;
const DEVICE: &str = "dev";

// ---------------------------------------------------------------------------------
// Where the vSSDs live: real files in a scratch directory (the crate's test support,
// shared with vssd's tests), or the simulator's disks.

/// Runs `main` as the simulator's controller, seeded.
fn run_sim<T: 'static>(seed: u64, main: impl FnOnce() -> T + 'static) -> T {
    Sim::new(SimConfig::new(seed)).run(move |_| main()).unwrap()
}

// ---------------------------------------------------------------------------------
// Replicas, healthy or not.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Healthy,
    /// Every call (or only `only`'s) fails as unreachable.
    Unreachable,
    /// Every call (or only `only`'s) parks this long, then times out, as a remote
    /// replica's call timeout would end it.
    Stall(Duration),
    /// As `Stall`, after doing the call: a remote call that timed out after the
    /// replica did it.
    DoneThenStall(Duration),
    /// Every call (or only `only`'s) parks this long, then does the call: a slow
    /// but healthy replica.
    Slow(Duration),
}

/// A LocalReplica that fails or stalls on demand.
struct Flaky {
    inner: LocalReplica,
    mode: Cell<Mode>,
    only: Cell<Option<&'static str>>,
}

impl Flaky {
    /// `f` (the inner replica's call), or the fault the mode says.
    fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        let mode = match self.only.get() {
            Some(only) if only != op => Mode::Healthy,
            _ => self.mode.get(),
        };
        let kind = match mode {
            Mode::Healthy => return f(),
            Mode::Unreachable => ReplicaErrorKind::Unreachable("test fault".into()),
            Mode::Stall(d) => {
                sleep(d);
                ReplicaErrorKind::Timeout
            }
            Mode::DoneThenStall(d) => {
                let _ = f();
                sleep(d);
                ReplicaErrorKind::Timeout
            }
            Mode::Slow(d) => {
                sleep(d);
                return f();
            }
        };
        Err(ReplicaError {
            op,
            replica: self.inner.name().to_string(),
            kind,
        })
    }
}

impl Replica for Flaky {
    fn member(&self) -> u64 {
        self.inner.member()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn info(&self) -> ReplicaInfo {
        self.inner.info()
    }
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.call("writep1", || self.inner.writep1(tran, line, data))
    }
    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError> {
        self.call("commit", || self.inner.commit(trans))
    }
    fn abort(&self, tran: u64) -> Result<(), ReplicaError> {
        self.call("abort", || self.inner.abort(tran))
    }
    fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<u64>, ReplicaError> {
        self.call("read", || self.inner.read(line, buf))
    }
    fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, ReplicaError> {
        self.call("read_prepared", || self.inner.read_prepared(tran))
    }
    fn repair(&self, tran: u64, payload: &AlignedBuf) -> Result<(), ReplicaError> {
        self.call("repair", || self.inner.repair(tran, payload))
    }
    fn copy_in(&self, version: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.call("copy_in", || self.inner.copy_in(version, line, data))
    }
    fn clean(&self, line: u64, version: u64) -> Result<bool, ReplicaError> {
        self.call("clean", || self.inner.clean(line, version))
    }
    fn invalidate(&self, first: u64, count: u64) -> Result<u64, ReplicaError> {
        self.call("invalidate", || self.inner.invalidate(first, count))
    }
    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        self.call("set_epoch", || self.inner.set_epoch(epoch, members))
    }
    fn outcome(&self, tran: u64) -> Result<TranOutcome, ReplicaError> {
        self.call("outcome", || self.inner.outcome(tran))
    }
    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError> {
        self.call("in_doubt", || self.inner.in_doubt(after, max))
    }
    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        self.call("dirty", || self.inner.dirty(from, max))
    }
}

/// One replica: its vSSD and the (flaky) seam the DTM uses.
struct Rep {
    vssd: Vssd,
    flaky: Rc<Flaky>,
}

impl Rep {
    fn set(&self, mode: Mode, only: Option<&'static str>) {
        self.flaky.mode.set(mode);
        self.flaky.only.set(only);
    }
}

/// Formats and opens a vSSD of `lines` lines at `path` as member `member`.
fn open_rep(path: &Path, member: u64, lines: u64) -> Rep {
    let params = FormatParams {
        line_size: LINE as u32,
        lines,
        log_bytes: LOG_BYTES_MIN,
        device_id: DEVICE.into(),
        uuid: [member as u8; 16],
        force: false,
    };
    let file = OpenOptions::new()
        .create(true)
        .size(params.geometry().unwrap().total_bytes())
        .open(path)
        .unwrap();
    format(&file, &params).unwrap();
    let (vssd, recovered) = Vssd::open(file, Some(DEVICE), Options::default()).unwrap();
    assert!(recovered.in_doubt.is_empty());
    let name = path.display().to_string();
    let flaky = Rc::new(Flaky {
        inner: LocalReplica::new(vssd.clone(), member, name, 0),
        mode: Cell::new(Mode::Healthy),
        only: Cell::new(None),
    });
    Rep { vssd, flaky }
}

/// `n` replicas (members 1..=n) in `dir`.
fn open_reps(dir: &Path, n: u64, lines: u64) -> Vec<Rep> {
    (1..=n)
        .map(|m| open_rep(&dir.join(format!("r{m}")), m, lines))
        .collect()
}

const EPOCH: u64 = 1;

fn start(reps: &[Rep], config: DtmConfig) -> Result<Dtm, DtmError> {
    let members: Vec<Rc<dyn Replica>> = reps
        .iter()
        .map(|r| r.flaky.clone() as Rc<dyn Replica>)
        .collect();
    Dtm::start(reps[0].vssd.clone(), members, EPOCH, config)
}

// ---------------------------------------------------------------------------------
// Payloads.

/// Line `line`'s bytes in write `tag`: both named in every 8 bytes.
fn line_bytes(line: u64, tag: u64) -> Vec<u8> {
    (0..LINE / 8)
        .flat_map(|i| (line.rotate_left(40) ^ tag.rotate_left(16) ^ i as u64).to_le_bytes())
        .collect()
}

fn payload(first: u64, n: u64, tag: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(n as usize * LINE);
    b.set_len(n as usize * LINE);
    for i in 0..n {
        b[i as usize * LINE..][..LINE].copy_from_slice(&line_bytes(first + i, tag));
    }
    b
}

/// `line` on `rep`: its version, state and bytes, if held.
fn held(rep: &Rep, line: u64) -> Option<(u64, State, Vec<u8>)> {
    rep.vssd
        .read(line)
        .unwrap()
        .map(|(hit, buf)| (hit.version, hit.state, buf.to_vec()))
}

/// Every replica holds the same dirty lines at the same versions with the same
/// bytes; returns the primary's dirty lines.
fn assert_agree(reps: &[&Rep]) -> Vec<(u64, u64)> {
    let dirty = reps[0].vssd.dirty_lines();
    for r in &reps[1..] {
        assert_eq!(r.vssd.dirty_lines(), dirty, "{} disagrees", r.flaky.name());
        for &(line, _) in &dirty {
            assert_eq!(
                held(r, line),
                held(reps[0], line),
                "line {line} on {}",
                r.flaky.name()
            );
        }
    }
    dirty
}

// ---------------------------------------------------------------------------------
// Tests.

#[test]
fn a_write_lands_on_every_replica_at_one_version() {
    let dir = TempDir::new("lands");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        assert_eq!(dtm.members(), vec![1, 2, 3]);
        for r in &reps {
            assert_eq!(r.vssd.epoch(), EPOCH);
            assert_eq!(r.vssd.members(), vec![1, 2, 3]);
        }
        let tran = dtm.write(5, &payload(5, 2, 7)).unwrap().tran().unwrap();
        // Committed on the primary at once: a read after the acknowledgement sees it.
        let mut buf = AlignedBuf::new(LINE);
        let hit = dtm.read(5, &mut buf).unwrap().unwrap();
        assert_eq!((hit.version, &buf[..]), (tran, &line_bytes(5, 7)[..]));
        dtm.quiesce().unwrap();
        for r in &reps {
            for line in [5, 6] {
                let (version, state, bytes) = held(r, line).unwrap();
                assert_eq!((version, state), (tran, State::Dirty));
                assert_eq!(bytes, line_bytes(line, 7));
            }
        }
        let s = dtm.stats();
        assert_eq!((s.writes, s.trans, s.aborts, s.in_flight), (1, 1, 0, 0));
        assert_eq!(s.commits_sent, 2, "one lazy COMMIT per other replica");
    });
}

#[test]
fn line_numbers_reach_the_device_size_not_the_vssd_capacity() {
    let dir = TempDir::new("device-lines");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let far = VSSD_LINES * 4;
        let config = DtmConfig {
            device_lines: Some(far + 1),
            ..DtmConfig::default()
        };
        let dtm = start(&reps, config).unwrap();
        let tran = dtm.write(far, &payload(far, 1, 3)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        for r in &reps {
            assert_eq!(held(r, far).unwrap().0, tran);
        }
        drop(dtm.lock_lines(far, 1).unwrap());
        assert!(dtm.write(far + 1, &payload(far + 1, 1, 3)).is_err());
        assert_eq!(dtm.discard(far, 1).unwrap(), 1);
    });
}

#[test]
fn try_lock_lines_does_not_wait() {
    let dir = TempDir::new("try-lock");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 1, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let held = dtm.lock_lines(4, 4).unwrap();
        assert!(dtm.try_lock_lines(7, 2).unwrap().is_none());
        assert!(dtm.try_lock_lines(3, 1).unwrap().is_some());
        let other = dtm.try_lock_lines(8, 2).unwrap().unwrap();
        drop(other);
        drop(held);
        assert!(dtm.try_lock_lines(4, 8).unwrap().is_some());
        assert!(dtm.try_lock_lines(VSSD_LINES, 1).is_err());
    });
}

/// A destage's try_lock_lines takes lines that a waiting request wants but nobody
/// holds: that request may wait (through the write it overlaps) for room in the
/// cache which only the destage makes.
#[test]
fn try_lock_lines_goes_ahead_of_a_waiter() {
    let dir = TempDir::new("try-lock-waiter");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 1, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let held = dtm.lock_lines(4, 4).unwrap();
        let waiter = {
            let dtm = dtm.clone();
            spawn(move || drop(dtm.lock_lines(6, 4).unwrap())).unwrap()
        };
        taskio::yield_now();
        assert!(dtm.try_lock_lines(7, 1).unwrap().is_none(), "held");
        let ahead = dtm.try_lock_lines(9, 1).unwrap();
        assert!(ahead.is_some(), "line 9 is only waited for");
        drop(held);
        drop(ahead);
        waiter.join().unwrap();
    });
}

#[test]
fn a_write_longer_than_a_tran_is_split() {
    let dir = TempDir::new("split");
    let path = dir.path.clone();
    run_io(move || {
        // 16 lines: a tran holds at most half of them.
        let reps = open_reps(&path, 2, 16);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let max = dtm.tran_lines_max();
        assert_eq!(max, 8);
        let last = dtm.write(2, &payload(2, 12, 3)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        let dirty = assert_agree(&[&reps[0], &reps[1]]);
        let versions: Vec<u64> = dirty.iter().map(|&(_, v)| v).collect();
        assert_eq!(dirty.len(), 12);
        assert!(versions[..8].iter().all(|&v| v == versions[0]));
        assert!(versions[8..].iter().all(|&v| v == last));
        assert!(versions[0] < last);
        for line in 2..14 {
            assert_eq!(held(&reps[1], line).unwrap().2, line_bytes(line, 3));
        }
        assert_eq!(dtm.stats().splits, 1);
    });
}

/// Many tasks writing overlapping ranges: every replica ends with the same version
/// of every line, and that version is the last acknowledged write of the line (tran
/// ids rise, and a line's writes are serialised by its lock).
fn overlapping_writes(seed: u64, reps: &[Rep], dtm: &Dtm) {
    const TASKS: u64 = 12;
    const WRITES: u64 = 25;
    const SPAN: u64 = 10;
    // Each acknowledged tran's first line, line count and tag.
    type Acked = HashMap<u64, (u64, u64, u64)>;
    let acked: Rc<RefCell<Acked>> = Rc::default();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (dtm, acked) = (dtm.clone(), acked.clone());
            spawn(move || {
                let mut rng = Rng::new(seed ^ t);
                for w in 0..WRITES {
                    let first = rng.below(SPAN);
                    let n = 1 + rng.below(3).min(SPAN - first - 1);
                    let tag = t << 32 | w;
                    let tran = dtm.write(first, &payload(first, n, tag)).unwrap();
                    let tran = tran.tran().unwrap();
                    acked.borrow_mut().insert(tran, (first, n, tag));
                }
            })
            .unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    dtm.quiesce().unwrap();
    let all: Vec<&Rep> = reps.iter().collect();
    let dirty = assert_agree(&all);
    let acked = acked.borrow();
    assert_eq!(acked.len() as u64, TASKS * WRITES);
    for (line, version) in dirty {
        let last = acked
            .iter()
            .filter(|(_, (f, n, _))| (*f..f + n).contains(&line))
            .map(|(&tran, _)| tran)
            .max()
            .unwrap();
        assert_eq!(version, last, "line {line}");
        let tag = acked[&version].2;
        assert_eq!(held(&reps[2], line).unwrap().2, line_bytes(line, tag));
    }
    assert!(dtm.stats().lock_waits > 0, "the writes overlapped");
}

#[test]
fn overlapping_writes_from_many_tasks_agree_on_real_files() {
    let dir = TempDir::new("overlap");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        overlapping_writes(1, &reps, &dtm);
    });
}

#[test]
fn overlapping_writes_agree_under_the_simulator() {
    for seed in 0..8 {
        run_sim(seed, move || {
            let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
            let config = DtmConfig {
                commit_batch_max: 4,
                writes_in_flight_max: 8,
                ..DtmConfig::default()
            };
            let dtm = start(&reps, config).unwrap();
            overlapping_writes(seed, &reps, &dtm);
            let s = dtm.stats();
            assert!(s.commits_sent == 2 * s.trans);
            assert!(s.commit_calls < s.commits_sent, "commits were batched");
        });
    }
}

#[test]
fn a_lost_replica_is_dropped_and_the_write_acknowledged_by_the_survivors() {
    let dir = TempDir::new("degrade");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let config = DtmConfig {
            min_replicas: 2,
            ..DtmConfig::default()
        };
        let dtm = start(&reps, config).unwrap();
        let first = dtm.write(2, &payload(2, 1, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        reps[2].set(Mode::Unreachable, None);
        let tran = dtm.write(2, &payload(2, 1, 2)).unwrap().tran().unwrap();
        assert_eq!(dtm.epoch(), EPOCH + 1);
        assert_eq!(dtm.members(), vec![1, 2]);
        for r in &reps[..2] {
            assert_eq!((r.vssd.epoch(), r.vssd.members()), (EPOCH + 1, vec![1, 2]));
        }
        assert_eq!(reps[2].vssd.epoch(), EPOCH, "the lost one is not told");
        dtm.quiesce().unwrap();
        assert_agree(&[&reps[0], &reps[1]]);
        assert_eq!(held(&reps[1], 2).unwrap().0, tran);
        assert_eq!(
            held(&reps[2], 2).unwrap().0,
            first,
            "the lost one kept the older write"
        );
        let s = dtm.stats();
        assert_eq!(
            (s.members_lost, s.epoch_changes, s.aborts, s.retries),
            (1, 1, 1, 1)
        );

        // One more loss leaves fewer than min_replicas: the write fails, and so does
        // every later one; nothing of them is committed.
        reps[1].set(Mode::Unreachable, None);
        let e = dtm.write(2, &payload(2, 1, 3)).unwrap_err();
        assert!(
            matches!(&e, DtmError::TooFewReplicas { members, reachable, min: 2, .. }
                if *members == [1, 2] && *reachable == [1]),
            "{e}"
        );
        reps[1].set(Mode::Healthy, None);
        let e = dtm.write(7, &payload(7, 1, 4)).unwrap_err();
        assert!(matches!(e, DtmError::TooFewReplicas { .. }), "{e}");
        assert!(dtm.down().is_some());
        let mut buf = AlignedBuf::new(LINE);
        let hit = dtm.read(2, &mut buf).unwrap().unwrap();
        assert_eq!(
            hit.version, tran,
            "a DTM stopped short of replicas still reads"
        );
        assert_eq!(held(&reps[0], 2).unwrap().0, tran);
        assert_eq!(held(&reps[0], 7), None);
        assert_eq!(dtm.epoch(), EPOCH + 1, "no epoch below min_replicas");
    });
}

#[test]
fn a_stalled_replica_holds_a_write_no_longer_than_its_timeout() {
    const STALL: Duration = Duration::from_secs(2);
    for seed in 0..4 {
        run_sim(seed, move || {
            let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
            let dtm = start(&reps, DtmConfig::default()).unwrap();
            dtm.write(1, &payload(1, 1, 1)).unwrap();
            reps[1].set(Mode::Stall(STALL), Some("writep1"));
            let t0 = now();
            // Overlapping writers wait on the first one's lock meanwhile.
            let other = {
                let dtm = dtm.clone();
                spawn(move || dtm.write(1, &payload(1, 1, 3)).unwrap().tran().unwrap()).unwrap()
            };
            let tran = dtm.write(1, &payload(1, 1, 2)).unwrap().tran().unwrap();
            let waited = now() - t0;
            assert!(
                waited >= STALL && waited < STALL + Duration::from_millis(500),
                "{waited:?}"
            );
            let later = other.join().unwrap();
            assert!(later > tran);
            assert_eq!(dtm.members(), vec![1, 3]);
            dtm.quiesce().unwrap();
            assert_agree(&[&reps[0], &reps[2]]);
            assert_eq!(held(&reps[2], 1).unwrap().0, later);
        });
    }
}

/// `flush_trans` waits for its own trans' COMMITs only: not for another tran whose
/// lazy COMMIT is stalled on a replica.
#[test]
fn flush_trans_waits_for_its_own_trans_only() {
    const STALL: Duration = Duration::from_secs(2);
    run_sim(3, move || {
        let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let a = dtm.write(1, &payload(1, 1, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        reps[1].set(Mode::Stall(STALL), Some("commit"));
        let b = dtm.write(5, &payload(5, 1, 2)).unwrap().tran().unwrap();
        let t0 = now();
        dtm.flush_trans(&[a]).unwrap();
        assert!(now() - t0 < STALL / 4, "{:?}", now() - t0);
        // b's COMMIT ends when the stalled replica's call does (it is dropped).
        dtm.flush_trans(&[a, b]).unwrap();
        assert!(now() - t0 >= STALL, "{:?}", now() - t0);
        assert_eq!(dtm.members(), vec![1, 3]);
    });
}

#[test]
fn a_replica_that_fails_its_lazy_commit_is_dropped() {
    let dir = TempDir::new("commitloss");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        reps[1].set(Mode::Unreachable, Some("commit"));
        // Acknowledged: prepared everywhere, committed on the primary.
        let tran = dtm.write(4, &payload(4, 1, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        assert_eq!(dtm.members(), vec![1, 3]);
        assert_eq!(dtm.epoch(), EPOCH + 1);
        assert_eq!(reps[2].vssd.members(), vec![1, 3]);
        // The line's lock was released: it is written again.
        let next = dtm.write(4, &payload(4, 1, 2)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        assert!(next > tran);
        assert_agree(&[&reps[0], &reps[2]]);
        assert_eq!(reps[1].vssd.tran_outcome(tran), TranOutcome::Prepared);
    });
}

#[test]
fn a_stale_epoch_fences_the_dtm() {
    let dir = TempDir::new("fence");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let before = dtm.write(4, &payload(4, 1, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        // Another primary takes the device over through replica 2.
        let usurper = LocalReplica::new(reps[1].vssd.clone(), 2, "usurper", EPOCH);
        usurper.set_epoch(EPOCH + 5, &[2, 3]).unwrap();
        let e = dtm.write(4, &payload(4, 1, 2)).unwrap_err();
        assert!(
            matches!(e, DtmError::Fenced { replica_epoch, .. } if replica_epoch == EPOCH + 5),
            "{e}"
        );
        // Never acknowledged, aborted where it prepared.
        for r in [&reps[0], &reps[2]] {
            assert_eq!(held(r, 4).unwrap().0, before);
        }
        let e = dtm.write(9, &payload(9, 1, 3)).unwrap_err();
        assert!(matches!(e, DtmError::Fenced { .. }), "{e}");
        let mut buf = AlignedBuf::new(LINE);
        let e = dtm.read(4, &mut buf).unwrap_err();
        assert!(matches!(e, DtmError::Fenced { .. }), "reads too: {e}");
        assert_eq!(held(&reps[0], 9), None);
        assert_eq!(dtm.members(), vec![1, 2, 3], "a fence drops nobody");
    });
}

/// A takeover that fenced the primary's own vSSD (its recovery reached it): the
/// next read fails, before any write of this DTM found the fence (the cache may be
/// stale once the new primary writes); the DTM's own epoch changes do not.
#[test]
fn a_read_finds_the_primary_vssd_fenced() {
    let dir = TempDir::new("readfence");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        dtm.write(4, &payload(4, 1, 1)).unwrap();
        // The DTM's own epoch change (a lost member) leaves reads served.
        reps[2].set(Mode::Unreachable, None);
        dtm.write(5, &payload(5, 1, 2)).unwrap();
        assert_eq!(dtm.members(), vec![1, 2]);
        let mut buf = AlignedBuf::new(LINE);
        assert!(dtm.read(4, &mut buf).unwrap().is_some());
        // Another primary's recovery moves the primary's vSSD past the DTM's epoch.
        let epoch = dtm.epoch();
        let usurper = LocalReplica::new(reps[0].vssd.clone(), 2, "usurper", epoch);
        usurper.set_epoch(epoch + 1, &[1, 2]).unwrap();
        let e = dtm.read(4, &mut buf).unwrap_err();
        assert!(
            matches!(e, DtmError::Fenced { replica_epoch, .. } if replica_epoch == epoch + 1),
            "{e}"
        );
        let e = dtm.write(4, &payload(4, 1, 3)).unwrap_err();
        assert!(matches!(e, DtmError::Fenced { .. }), "{e}");
    });
}

/// Another primary took the device over and resyncs this primary's vSSD as its
/// replica: the vSSD's epoch stays until that resync ends, but it saw a writep1 of
/// the newer epoch. The next write is fenced, not given an id of that epoch (which
/// the other primary hands out too: `tdrv sim dtm` seed 36372).
#[test]
fn a_writep1_of_a_newer_epoch_on_the_primary_vssd_fences_the_dtm() {
    let dir = TempDir::new("idfence");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let before = dtm.write(4, &payload(4, 1, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        assert_eq!(before >> TRAN_EPOCH_SHIFT, EPOCH);
        // The other primary's write, at epoch + 1, on this primary's vSSD.
        let theirs = ((EPOCH + 1) << TRAN_EPOCH_SHIFT) + 7;
        reps[0]
            .vssd
            .writep1(theirs, 9, &payload(9, 1, theirs))
            .unwrap();
        let e = dtm.write(5, &payload(5, 1, 2)).unwrap_err();
        assert!(
            matches!(e, DtmError::Fenced { replica_epoch, .. } if replica_epoch == EPOCH + 1),
            "{e}"
        );
        for r in &reps {
            assert_eq!(held(r, 5), None, "nothing prepared for the refused write");
        }
        assert_eq!(reps[0].vssd.tran_outcome(theirs), TranOutcome::Prepared);
        let e = dtm.write(6, &payload(6, 1, 3)).unwrap_err();
        assert!(matches!(e, DtmError::Fenced { .. }), "{e}");
    });
}

/// A backing store in memory.
#[derive(Default)]
struct MemBacking {
    bytes: RefCell<BTreeMap<u64, Vec<u8>>>,
    flushed: RefCell<BTreeMap<u64, Vec<u8>>>,
}

impl Backing for MemBacking {
    fn write(&self, offset: u64, data: &AlignedBuf) -> Result<(), IoError> {
        self.bytes.borrow_mut().insert(offset, data.to_vec());
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        *self.flushed.borrow_mut() = self.bytes.borrow().clone();
        Ok(())
    }
}

#[test]
fn short_of_replicas_write_through_writes_the_backing_store() {
    let dir = TempDir::new("through");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let backing = Rc::new(MemBacking::default());
        let config = DtmConfig {
            min_replicas: 2,
            policy: LossPolicy::WriteThrough(backing.clone()),
            ..DtmConfig::default()
        };
        let dtm = start(&reps, config).unwrap();
        assert!(matches!(
            dtm.write(5, &payload(5, 2, 1)).unwrap(),
            Written::Tran(_)
        ));
        assert!(!dtm.writing_through());
        assert!(backing.bytes.borrow().is_empty());
        dtm.quiesce().unwrap();
        reps[1].set(Mode::Unreachable, None);
        assert_eq!(dtm.write(5, &payload(5, 1, 2)).unwrap(), Written::Through);
        assert!(dtm.writing_through());
        assert_eq!((dtm.epoch(), dtm.members()), (EPOCH + 1, vec![1]));
        assert_eq!(
            backing.flushed.borrow().get(&(5 * LINE as u64)),
            Some(&line_bytes(5, 2)),
            "durable in the backing store"
        );
        // The cache no longer holds the older version; line 6 stays cached.
        assert_eq!(held(&reps[0], 5), None);
        assert_eq!(held(&reps[0], 6).unwrap().2, line_bytes(6, 1));
        assert_eq!(dtm.write(9, &payload(9, 1, 3)).unwrap(), Written::Through);
        assert_eq!(dtm.stats().written_through, 2);
        // The lost replica returns: resynced, it drops the line it still held dirty
        // at the version written through over, and the device caches again.
        assert_eq!(held(&reps[1], 5).unwrap().2, line_bytes(5, 1));
        reps[1].set(Mode::Healthy, None);
        let progress = dtm.resync(reps[1].flaky.clone()).unwrap();
        assert_eq!(progress.lines_dropped, 1, "{progress:?}");
        assert!(!dtm.writing_through());
        assert_eq!(held(&reps[1], 5), None);
        assert!(matches!(
            dtm.write(5, &payload(5, 1, 4)).unwrap(),
            Written::Tran(_)
        ));
        dtm.quiesce().unwrap();
        assert_agree(&[&reps[0], &reps[1]]);
    });
}

#[test]
fn clean_and_discard_reach_every_replica() {
    let dir = TempDir::new("clean");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let tran = dtm.write(0, &payload(0, 4, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        assert!(dtm.clean(1, tran).unwrap());
        assert!(!dtm.clean(2, tran - 1).unwrap(), "not its version");
        for r in &reps {
            assert_eq!(held(r, 1).unwrap().1, State::Clean);
            assert_eq!(held(r, 2).unwrap().1, State::Dirty);
            assert_eq!(r.vssd.dirty_lines(), vec![(0, tran), (2, tran), (3, tran)]);
        }
        assert_eq!(dtm.discard(1, 2).unwrap(), 2);
        for r in &reps {
            assert_eq!(held(r, 1), None);
            assert_eq!(held(r, 2), None);
            assert_eq!(r.vssd.dirty_lines(), vec![(0, tran), (3, tran)]);
        }
        let s = dtm.stats();
        assert_eq!((s.cleans, s.discards), (2, 1));
    });
}

/// A destage may clean a line as soon as its write is acknowledged, before the
/// lazy COMMIT reached the other members: holding the line (as a destage does)
/// waits for that COMMIT, so the clean reaches every member and none keeps the line
/// dirty (a replica holds dirty data only).
#[test]
fn a_clean_right_after_the_write_reaches_a_member_whose_commit_is_late() {
    for seed in 0..4 {
        run_sim(seed, move || {
            let reps = open_reps(Path::new("/"), 2, VSSD_LINES);
            let dtm = start(&reps, DtmConfig::default()).unwrap();
            reps[1].set(Mode::Slow(Duration::from_millis(5)), Some("commit"));
            let tran = dtm.write(7, &payload(7, 1, 1)).unwrap().tran().unwrap();
            let held_line = dtm.lock_lines(7, 1).unwrap();
            assert!(dtm.clean(7, tran).unwrap());
            drop(held_line);
            dtm.quiesce().unwrap();
            for r in &reps {
                let state = held(r, 7).map(|(version, state, _)| (version, state));
                assert_eq!(state, Some((tran, State::Clean)), "{}", r.flaky.name());
                assert_eq!(r.vssd.dirty_lines(), vec![], "{}", r.flaky.name());
            }
        });
    }
}

#[test]
fn a_returning_replica_is_resynced_while_writes_go_on() {
    for seed in 0..6 {
        run_sim(seed, move || resync_while_writing(seed));
    }
}

fn resync_while_writing(seed: u64) {
    const LINES: u64 = 64;
    let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
    let config = DtmConfig {
        min_replicas: 2,
        ..DtmConfig::default()
    };
    let dtm = start(&reps, config).unwrap();
    let mut tag = 0;
    let mut write = |first: u64, n: u64| {
        tag += 1;
        dtm.write(first, &payload(first, n, tag))
            .unwrap()
            .tran()
            .unwrap()
    };
    for line in 0..20 {
        write(line, 1);
    }
    // Prepared on the third replica, its lazy COMMIT lost with it: in doubt there.
    let t30 = write(30, 3);
    reps[2].set(Mode::Unreachable, None);
    let t10 = write(10, 1);
    assert_eq!(dtm.members(), vec![1, 2]);
    // While it is away: overwrites, new lines, a multi-line tran, a clean and a
    // discard (it keeps those two lines dirty at older versions).
    for line in 0..5 {
        write(line, 1);
    }
    write(40, 5);
    write(50, 3);
    dtm.quiesce().unwrap();
    assert!(dtm.clean(10, t10).unwrap());
    dtm.discard(11, 1).unwrap();
    reps[2].set(Mode::Healthy, None);

    let stop = Rc::new(Cell::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let (dtm, stop) = (dtm.clone(), stop.clone());
            spawn(move || {
                let mut rng = Rng::new(seed << 8 | t);
                let mut written = 0;
                // Bounded: 400 writes at most.
                while !stop.get() && written < 400 {
                    // Away from lines 0..20, which the checks below count.
                    let first = 20 + rng.below(LINES - 22);
                    let n = 1 + rng.below(2);
                    dtm.write(first, &payload(first, n, (1000 + t) << 20 | written))
                        .unwrap();
                    written += 1;
                }
                written
            })
            .unwrap()
        })
        .collect();
    let watcher = {
        let dtm = dtm.clone();
        spawn(move || {
            // Bounded: the resync ends well within this many looks.
            let mut seen = Vec::new();
            for _ in 0..10_000 {
                if let Some(p) = dtm.resync_progress() {
                    seen.push(p);
                }
                if dtm.members().len() == 3 {
                    break;
                }
                taskio::yield_now();
            }
            seen
        })
        .unwrap()
    };
    let progress = dtm.resync(reps[2].flaky.clone()).unwrap();
    stop.set(true);
    let written: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    let seen = watcher.join().unwrap();
    assert!(written > 0);
    assert!(!seen.is_empty(), "progress was reported while it ran");
    assert!(
        seen.iter()
            .all(|p| p.member == 3 && p.lines_done <= p.lines_total + LINES)
    );
    // Lines 0..5 copied (and maybe some of 40..45, 50..53, unless written again
    // first); 10 (cleaned) and 11 (discarded) dropped; tran t30 committed there.
    assert!(progress.lines_copied >= 5, "{progress:?}");
    assert_eq!(progress.lines_dropped, 2, "{progress:?}");
    assert_eq!(reps[2].vssd.tran_outcome(t30), TranOutcome::Committed);
    assert_eq!(progress.joined_epoch, Some(EPOCH + 2));
    dtm.quiesce().unwrap();
    assert_eq!((dtm.epoch(), dtm.members()), (EPOCH + 2, vec![1, 2, 3]));
    for r in &reps {
        assert_eq!(
            (r.vssd.epoch(), r.vssd.members()),
            (EPOCH + 2, vec![1, 2, 3])
        );
    }
    assert_agree(&[&reps[0], &reps[1], &reps[2]]);
    // A member again: the next writes reach it.
    let tran = dtm.write(63, &payload(63, 1, 9)).unwrap().tran().unwrap();
    dtm.quiesce().unwrap();
    assert_eq!(held(&reps[2], 63).unwrap().0, tran);
}

#[test]
fn a_tran_whose_middle_line_was_overwritten_is_resynced() {
    let dir = TempDir::new("resync-split");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        dtm.write(8, &payload(8, 1, 1)).unwrap();
        dtm.quiesce().unwrap();
        reps[1].set(Mode::Unreachable, None);
        // While it is away: one tran of lines 0..3, then line 1 again; the primary
        // holds 0 and 2 at the first tran's version, 1 at the second's.
        let v = dtm.write(0, &payload(0, 3, 2)).unwrap().tran().unwrap();
        let w = dtm.write(1, &payload(1, 1, 3)).unwrap().tran().unwrap();
        assert_eq!(dtm.members(), vec![1]);
        reps[1].set(Mode::Healthy, None);
        let progress = dtm.resync(reps[1].flaky.clone()).unwrap();
        assert_eq!(progress.lines_copied, 3, "{progress:?}");
        dtm.quiesce().unwrap();
        let dirty = assert_agree(&[&reps[0], &reps[1]]);
        assert_eq!(dirty[..3], [(0, v), (1, w), (2, v)]);
        assert_eq!(dtm.members(), vec![1, 2]);
    });
}

#[test]
fn a_lock_wait_is_bounded() {
    const WAIT_MAX: Duration = Duration::from_millis(500);
    const STALL: Duration = Duration::from_secs(2);
    run_sim(1, || {
        let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
        let config = DtmConfig {
            wait_max: WAIT_MAX,
            ..DtmConfig::default()
        };
        let dtm = start(&reps, config).unwrap();
        // Acknowledged; its lazy COMMIT to replica 2 stalls, holding line 3's lock.
        reps[1].set(Mode::Stall(STALL), Some("commit"));
        dtm.write(3, &payload(3, 1, 1)).unwrap();
        let t0 = now();
        let e = dtm.write(3, &payload(3, 1, 2)).unwrap_err();
        let waited = now() - t0;
        assert!(
            matches!(
                e,
                DtmError::Busy {
                    what: "the range lock",
                    first: 3,
                    end: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(waited >= WAIT_MAX && waited < STALL, "{waited:?}");
        // A write of another line is not held up meanwhile.
        dtm.write(4, &payload(4, 1, 3)).unwrap();
        // The stalled commit times out: replica 2 is dropped, the line written again.
        // (Each quiesce waits WAIT_MAX at most: enough of them cover the stall.)
        let quiesced = (0..STALL.as_millis() / WAIT_MAX.as_millis() + 2)
            .find(|_| dtm.quiesce().is_ok())
            .is_some();
        assert!(quiesced);
        assert_eq!(dtm.members(), vec![1, 3]);
        dtm.write(3, &payload(3, 1, 4)).unwrap();
    });
}

/// Replicas 1 and 2 in epoch `EPOCH + 1`, replica 3 dropped with lines 0..20
/// written while it was away.
fn lose_third(reps: &[Rep]) -> Dtm {
    let config = DtmConfig {
        min_replicas: 2,
        ..DtmConfig::default()
    };
    let dtm = start(reps, config).unwrap();
    reps[2].set(Mode::Unreachable, None);
    for line in 0..20 {
        dtm.write(line, &payload(line, 1, 1)).unwrap();
    }
    assert_eq!(dtm.members(), vec![1, 2]);
    dtm
}

#[test]
fn a_resync_that_fails_leaves_the_replica_out() {
    run_sim(2, || {
        let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
        let dtm = lose_third(&reps);
        reps[2].set(Mode::Unreachable, Some("copy_in"));
        let e = dtm.resync(reps[2].flaky.clone()).unwrap_err();
        assert!(matches!(e, DtmError::Resync { .. }), "{e}");
        assert_eq!((dtm.members(), dtm.syncing()), (vec![1, 2], vec![]));
        assert_eq!(dtm.epoch(), EPOCH + 1);
        assert!(dtm.resync_progress().is_none());
        let tran = dtm.write(30, &payload(30, 1, 2)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        assert_eq!(held(&reps[1], 30).unwrap().0, tran);
        assert_eq!(held(&reps[2], 30), None, "no longer a target");
    });
}

#[test]
fn a_syncing_replica_that_fails_a_write_fails_its_resync_not_the_write() {
    run_sim(3, || {
        let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
        let dtm = lose_third(&reps);
        // Its copies succeed; the writes it receives as a syncing target fail.
        reps[2].set(Mode::Unreachable, Some("writep1"));
        let writer = {
            let dtm = dtm.clone();
            spawn(move || {
                // Bounded: the resync's copies take longer than a few writes.
                (0..50)
                    .map(|i| dtm.write(40, &payload(40, 1, 100 + i)).map(drop))
                    .collect::<Vec<_>>()
            })
            .unwrap()
        };
        let e = dtm.resync(reps[2].flaky.clone()).unwrap_err();
        assert!(
            matches!(&e, DtmError::Resync { why, .. } if why.contains("failed a write")),
            "{e}"
        );
        let written = writer.join().unwrap();
        assert!(written.iter().all(Result::is_ok), "{written:?}");
        assert_eq!((dtm.members(), dtm.syncing()), (vec![1, 2], vec![]));
        dtm.quiesce().unwrap();
        assert_agree(&[&reps[0], &reps[1]]);
    });
}

/// Seeded faults on the replicas (unreachable, stalled, timed out after doing the
/// call; on every call or on one kind) while writers write and the fault task
/// resyncs what was dropped: at the end every line holds its last acknowledged write
/// (the writes that failed were aborted everywhere) and every member agrees.
#[test]
fn seeded_faults_keep_every_acknowledged_write_and_the_members_agreeing() {
    for seed in 0..24 {
        run_sim(seed, move || faults_seed(seed));
    }
}

fn faults_seed(seed: u64) {
    const LINES: u64 = 32;
    const WRITERS: u64 = 4;
    const WRITES: u64 = 40;
    const FAULTS: u64 = 6;
    const STALL: Duration = Duration::from_millis(50);
    let reps = Rc::new(open_reps(Path::new("/"), 3, VSSD_LINES));
    let config = DtmConfig {
        min_replicas: 2,
        wait_max: Duration::from_secs(5),
        ..DtmConfig::default()
    };
    let dtm = start(&reps, config).unwrap();
    // Each acknowledged tran's first line, line count and tag.
    type Acked = BTreeMap<u64, (u64, u64, u64)>;
    let acked: Rc<RefCell<Acked>> = Rc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (dtm, acked, reps) = (dtm.clone(), acked.clone(), reps.clone());
            spawn(move || {
                let mut rng = Rng::new(seed << 8 | t);
                let mut failed = 0;
                for w in 0..WRITES {
                    let first = rng.below(LINES - 2);
                    let n = 1 + rng.below(3);
                    let tag = t << 32 | w;
                    match dtm.write(first, &payload(first, n, tag)) {
                        Ok(Written::Tran(tran)) => {
                            // Acknowledged: on every member of the epoch now, prepared
                            // at least (no park since the write returned).
                            for m in dtm.members() {
                                let outcome = reps[m as usize - 1].vssd.tran_outcome(tran);
                                assert!(
                                    matches!(
                                        outcome,
                                        TranOutcome::Prepared | TranOutcome::Committed
                                    ),
                                    "seed {seed}: tran {tran} {outcome:?} on member {m}"
                                );
                            }
                            acked.borrow_mut().insert(tran, (first, n, tag));
                        }
                        Ok(Written::Through) => unreachable!("no write-through here"),
                        Err(_) => failed += 1,
                    }
                    // Pacing in virtual time, so the faults fall among the writes.
                    sleep(Duration::from_millis(rng.below(4)));
                }
                failed
            })
            .unwrap()
        })
        .collect();
    let faults = {
        let (dtm, reps) = (dtm.clone(), reps.clone());
        spawn(move || {
            let mut rng = Rng::new(!seed);
            let mut resynced = 0;
            for _ in 0..FAULTS {
                sleep(Duration::from_millis(rng.below(30)));
                // The replicas dropped so far (healthy again) come back first.
                for (i, r) in reps.iter().enumerate().skip(1) {
                    if !dtm.members().contains(&(i as u64 + 1)) && dtm.down().is_none() {
                        resynced += u64::from(dtm.resync(r.flaky.clone()).is_ok());
                    }
                }
                let victim = 1 + rng.below(2) as usize;
                let mode = match rng.below(3) {
                    0 => Mode::Unreachable,
                    1 => Mode::Stall(STALL),
                    _ => Mode::DoneThenStall(STALL),
                };
                let only = [None, Some("writep1"), Some("commit")][rng.below(3) as usize];
                reps[victim].set(mode, only);
                sleep(Duration::from_millis(rng.below(30)));
                reps[victim].set(Mode::Healthy, None);
            }
            resynced
        })
        .unwrap()
    };
    let failed: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    let resynced = faults.join().unwrap();
    // Healed: every replica answers; once the lazy commits begun under a fault
    // have ended (a loss among them drops a member), the dropped ones come back.
    for r in reps.iter() {
        r.set(Mode::Healthy, None);
    }
    dtm.quiesce().unwrap();
    for (i, r) in reps.iter().enumerate().skip(1) {
        if !dtm.members().contains(&(i as u64 + 1)) && dtm.down().is_none() {
            dtm.resync(r.flaky.clone()).unwrap();
        }
    }
    dtm.quiesce().unwrap();
    let members = dtm.members();
    let live: Vec<&Rep> = reps
        .iter()
        .filter(|r| members.contains(&r.flaky.member()))
        .collect();
    assert_eq!(live[0].flaky.member(), 1);
    if dtm.down().is_none() {
        assert_agree(&live);
        let mut sorted = members.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [1, 2, 3],
            "seed {seed}: the resynced ones rejoin last"
        );
    } else {
        // Stopped short of replicas: the lazy COMMITs that failed are left to
        // recovery, which commits what every member prepared.
        for r in &live[1..] {
            for (line, version) in reps[0].vssd.dirty_lines() {
                let there = held(r, line).map(|(v, _, _)| v);
                assert!(
                    there == Some(version) || r.vssd.tran_outcome(version) == TranOutcome::Prepared,
                    "seed {seed}: line {line} at {version} on the primary, {there:?} on {}",
                    r.flaky.name()
                );
            }
        }
    }
    let acked = acked.borrow();
    assert_eq!(acked.len() as u64 + failed, WRITERS * WRITES);
    for line in 0..LINES {
        let last = acked
            .iter()
            .filter(|(_, (f, n, _))| (*f..f + n).contains(&line))
            .map(|(&tran, &(_, _, tag))| (tran, tag))
            .next_back();
        let held = held(&reps[0], line).map(|(v, _, bytes)| (v, bytes));
        let want = last.map(|(tran, tag)| (tran, line_bytes(line, tag)));
        assert_eq!(held, want, "seed {seed} line {line}");
    }
    eprintln!(
        "seed {seed}: {} acknowledged, {failed} failed, {resynced} resyncs amid faults, epoch {}, {:?}",
        acked.len(),
        dtm.epoch(),
        dtm.down().map(|e| e.to_string())
    );
}

/// A primary stops with lazy COMMITs still on their way; recovery over new openings
/// of the replicas commits what every member prepared, and a new DTM at the
/// recovered epoch goes on from there.
#[test]
fn a_new_dtm_goes_on_after_recovery() {
    run_sim(4, || {
        let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        reps[1].set(Mode::Stall(Duration::from_secs(1)), Some("commit"));
        let trans: Vec<u64> = (0..10)
            .map(|i| dtm.write(i, &payload(i, 1, 1)).unwrap().tran().unwrap())
            .collect();
        dtm.close();
        assert!(matches!(
            dtm.write(20, &payload(20, 1, 2)),
            Err(DtmError::Closed { .. })
        ));
        assert_eq!(reps[1].vssd.tran_outcome(trans[9]), TranOutcome::Prepared);
        drop(dtm);
        // Takeover: the same vSSDs, opened again.
        let opened: Vec<Rc<dyn Replica>> = reps
            .iter()
            .map(|r| {
                let name = format!("{} again", r.flaky.name());
                let local =
                    LocalReplica::new(r.vssd.clone(), r.flaky.member(), name, r.vssd.epoch());
                Rc::new(local) as Rc<dyn Replica>
            })
            .collect();
        let recovered = dtm::recover(&opened, &[1, 2, 3], 2).unwrap();
        assert!(recovered.committed > 0, "{recovered:?}");
        assert_eq!(recovered.epoch, EPOCH + 1);
        let dtm = Dtm::start(
            reps[0].vssd.clone(),
            recovered.members,
            recovered.epoch,
            DtmConfig::default(),
        )
        .unwrap();
        assert_eq!(reps[1].vssd.tran_outcome(trans[9]), TranOutcome::Committed);
        let tran = dtm.write(3, &payload(3, 1, 3)).unwrap().tran().unwrap();
        assert!(tran > trans[9], "tran ids are never reused");
        dtm.quiesce().unwrap();
        let dirty = assert_agree(&[&reps[0], &reps[1], &reps[2]]);
        assert_eq!(dirty.len(), 10);
    });
}

#[test]
fn held_lines_keep_writes_of_them_out() {
    run_sim(5, || {
        let reps = open_reps(Path::new("/"), 2, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        let v = dtm.write(5, &payload(5, 1, 1)).unwrap().tran().unwrap();
        dtm.quiesce().unwrap();
        // A destage: hold the line, "copy" its version out, clean it.
        let held_lines = dtm.lock_lines(5, 1).unwrap();
        let writer = {
            let dtm = dtm.clone();
            spawn(move || dtm.write(5, &payload(5, 1, 2)).unwrap().tran().unwrap()).unwrap()
        };
        // Other lines are written meanwhile (each parks: the writer runs, and waits);
        // a few would do for the writer to finish, were the line not held.
        for i in 0..50 {
            dtm.write(6 + i % 8, &payload(6 + i % 8, 1, 3)).unwrap();
        }
        assert!(!writer.is_finished(), "a write of a held line went on");
        assert_eq!(held(&reps[0], 5).unwrap().0, v);
        assert!(dtm.clean(5, v).unwrap());
        drop(held_lines);
        let w = writer.join().unwrap();
        dtm.quiesce().unwrap();
        for r in &reps {
            assert_eq!(held(r, 5).unwrap().0, w);
            assert_eq!(held(r, 5).unwrap().1, State::Dirty);
        }
        assert!(
            dtm.lock_lines(VSSD_LINES - 1, 2).is_err(),
            "past the device"
        );
    });
}

#[test]
fn a_member_is_not_resynced() {
    let dir = TempDir::new("resync-member");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let dtm = start(&reps, DtmConfig::default()).unwrap();
        // A write in flight: prepared on both, not committed yet.
        let tran = reps[0].vssd.next_tran_id().unwrap();
        for r in &reps {
            r.vssd.writep1(tran, 9, &payload(9, 1, 1)).unwrap();
        }
        let e = dtm.resync(reps[1].flaky.clone()).unwrap_err();
        assert!(matches!(e, DtmError::Unfit { .. }), "{e}");
        assert_eq!(reps[1].vssd.tran_outcome(tran), TranOutcome::Prepared);
        assert!(dtm.resync_progress().is_none());
        assert_eq!(dtm.members(), vec![1, 2]);
    });
}

/// Two of three replicas on a peer over real loopback rpc (`ReplicaService` on this
/// runtime, `RemoteReplica`s), on real vSSD files: overlapping writes from many tasks
/// land on all at one version; a peer vSSD that closes is a loss over the wire
/// (NO_DEVICE: unreachable) and the survivors go on in a new epoch; reopened and
/// served again, it is resynced over the wire.
#[test]
fn remote_replicas_over_loopback() {
    let dir = TempDir::new("loopback");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let vssds = Vssds::new();
        vssds.insert("r2", reps[1].vssd.clone());
        vssds.insert("r3", reps[2].vssd.clone());
        let addr = serve_vssds(&vssds);
        let client = rpc::ClientConfig {
            name: "dtm-test".into(),
            call_timeout: Duration::from_secs(10),
            ..rpc::ClientConfig::default()
        };
        let remote = move |name: &str, member: u64, epoch: u64| {
            let r = RemoteReplica::open(addr, name, epoch, member, &client).unwrap();
            Rc::new(r) as Rc<dyn Replica>
        };
        let members = vec![
            reps[0].flaky.clone() as Rc<dyn Replica>,
            remote("r2", 2, 0),
            remote("r3", 3, 0),
        ];
        let config = DtmConfig {
            min_replicas: 2,
            ..DtmConfig::default()
        };
        let dtm = Dtm::start(reps[0].vssd.clone(), members, EPOCH, config).unwrap();
        overlapping_writes(7, &reps, &dtm);

        reps[2].vssd.close();
        let tran = dtm.write(3, &payload(3, 1, 1)).unwrap().tran().unwrap();
        assert_eq!((dtm.epoch(), dtm.members()), (EPOCH + 1, vec![1, 2]));
        dtm.quiesce().unwrap();
        assert_eq!(held(&reps[1], 3).unwrap().0, tran);

        let file = open_dev(&path.join("r3"));
        let (v3, _) = Vssd::open(file, Some(DEVICE), Options::default()).unwrap();
        vssds.insert("r3", v3.clone());
        let progress = dtm.resync(remote("r3", 3, v3.epoch())).unwrap();
        assert!(progress.lines_copied >= 1, "{progress:?}");
        dtm.quiesce().unwrap();
        assert_eq!((dtm.epoch(), dtm.members()), (EPOCH + 2, vec![1, 2, 3]));
        let third = Rep {
            vssd: v3,
            flaky: reps[2].flaky.clone(),
        };
        assert_agree(&[&reps[0], &reps[1], &third]);
        assert_eq!(held(&third, 3).unwrap().0, tran);
    });
}

/// Two primaries of one device at two epochs (the old one cut off and not fenced
/// yet, the new one after a takeover) never hand out one tran id: a tran id names
/// one write on every replica. Found by `tdrv sim dtm` seed 460: the old primary's
/// local prepare and the new primary's write had one id, and a resync of the old
/// primary's replica committed the old data under the new write's version.
#[test]
fn primaries_of_two_epochs_never_share_a_tran_id() {
    let dir = TempDir::new("epoch-ids");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let primary = |r: &Rep, epoch| {
            let member: Rc<dyn Replica> = r.flaky.clone();
            Dtm::start(r.vssd.clone(), vec![member], epoch, DtmConfig::default()).unwrap()
        };
        let (old, new) = (primary(&reps[0], EPOCH), primary(&reps[1], EPOCH + 1));
        let (mut old_ids, mut new_ids) = (Vec::new(), Vec::new());
        for line in 0..8 {
            let write = |d: &Dtm, tag| {
                d.write(line, &payload(line, 1, tag))
                    .unwrap()
                    .tran()
                    .unwrap()
            };
            old_ids.push(write(&old, 1));
            new_ids.push(write(&new, 2));
        }
        assert!(
            old_ids.iter().max() < new_ids.iter().min(),
            "{old_ids:?} {new_ids:?}"
        );
    });
}

/// A write that waited for the membership gate while a loss took the DTM below
/// `min_replicas` fails, and prepares nothing: the loss left the view at the epoch
/// it could not record on every survivor. Found by `tdrv sim dtm` seed 181: such a
/// write prepared on the primary under an id of that epoch, which the primary that
/// took over (at the same epoch number) gave to another write.
#[test]
fn a_write_waiting_for_the_gate_while_the_dtm_goes_down_fails_and_prepares_nothing() {
    const STALL: Duration = Duration::from_secs(2);
    run_sim(7, move || {
        let reps = open_reps(Path::new("/"), 3, VSSD_LINES);
        let config = DtmConfig {
            min_replicas: 2,
            ..DtmConfig::default()
        };
        let dtm = start(&reps, config).unwrap();
        reps[2].set(Mode::Stall(STALL), Some("writep1"));
        reps[1].set(Mode::Stall(STALL), Some("set_epoch"));
        let first = {
            let dtm = dtm.clone();
            spawn(move || dtm.write(1, &payload(1, 1, 1))).unwrap()
        };
        // After the first write's writep1 timed out: its loss holds the gate.
        sleep(STALL + Duration::from_millis(100));
        let second = dtm.write(10, &payload(10, 1, 2));
        assert!(first.join().unwrap().is_err());
        assert!(second.is_err(), "{second:?}");
        assert!(dtm.down().is_some());
        assert_eq!(held(&reps[0], 10), None, "prepared on the primary");
        assert!(
            reps[0].vssd.in_doubt(0, 10).is_empty(),
            "in doubt on the primary"
        );
    });
}

/// A loss whose new epoch a surviving member does not record (unreachable, or at a
/// newer epoch already) leaves the primary's own vSSD at its old epoch: the primary
/// records an epoch only after every other member of it did. Found by `tdrv sim dtm`
/// seeds 692, 10967 and 12574: a primary cut off recorded its next epoch on its own
/// vSSD alone; the primary that took over fenced the others to the same epoch
/// number with other members, and later resynced the old primary's vSSD as if it
/// were of its own epoch (its prepares collided with the new primary's tran ids).
#[test]
fn a_primary_records_an_epoch_only_after_its_other_members() {
    let dir = TempDir::new("epoch-last");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 3, VSSD_LINES);
        let config = DtmConfig {
            min_replicas: 2,
            ..DtmConfig::default()
        };
        let dtm = start(&reps, config).unwrap();
        dtm.write(2, &payload(2, 1, 1)).unwrap();
        dtm.quiesce().unwrap();
        reps[2].set(Mode::Unreachable, None);
        reps[1].set(Mode::Unreachable, Some("set_epoch"));
        let e = dtm.write(2, &payload(2, 1, 2)).unwrap_err();
        assert!(matches!(e, DtmError::TooFewReplicas { .. }), "{e}");
        for r in &reps {
            assert_eq!(
                (r.vssd.epoch(), r.vssd.members()),
                (EPOCH, vec![1, 2, 3]),
                "{} holds an epoch its members lack",
                r.flaky.name()
            );
        }
    });
}

/// A replica at the DTM's epoch (or a newer one) that is not a member is another
/// primary's (two claims of one epoch: a split brain, or a fence this DTM has not
/// met yet): resyncing it would mix two primaries' trans. Refused, nothing written.
#[test]
fn a_replica_of_another_primarys_epoch_is_not_resynced() {
    let dir = TempDir::new("resync-other-epoch");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let primary: Rc<dyn Replica> = reps[0].flaky.clone();
        let dtm = Dtm::start(
            reps[0].vssd.clone(),
            vec![primary],
            EPOCH,
            DtmConfig::default(),
        )
        .unwrap();
        dtm.write(3, &payload(3, 1, 1)).unwrap();
        // Replica 2 degraded to itself at the same epoch number, and wrote.
        let other = LocalReplica::new(reps[1].vssd.clone(), 2, "other", 0);
        other.set_epoch(EPOCH, &[2]).unwrap();
        let theirs = reps[1].vssd.next_tran_id().unwrap();
        reps[1].vssd.writep1(theirs, 5, &payload(5, 1, 2)).unwrap();
        let target = Rc::new(Flaky {
            inner: LocalReplica::new(reps[1].vssd.clone(), 2, "target", EPOCH),
            mode: Cell::new(Mode::Healthy),
            only: Cell::new(None),
        });
        let e = dtm.resync(target).unwrap_err();
        assert!(matches!(e, DtmError::Unfit { .. }), "{e}");
        assert!(dtm.resync_progress().is_none());
        assert_eq!((dtm.members(), dtm.syncing()), (vec![1], vec![]));
        assert_eq!(held(&reps[1], 3), None, "nothing copied");
        assert_eq!(reps[1].vssd.tran_outcome(theirs), TranOutcome::Prepared);
        assert_eq!(
            (reps[1].vssd.epoch(), reps[1].vssd.members()),
            (EPOCH, vec![2])
        );
    });
}

/// A replica at the DTM's epoch whose claim lists the primary with other members is
/// stale, and is resynced: that claim never took effect (a resync's join recorded it
/// on the replica, the primary failed to record it, and a recovery that did not
/// reach the replica gave the epoch number to the primary alone). Found by `tdrv sim
/// dtm` seeds 30163, 30297, 30879 and 31296, which the refusal above first failed.
#[test]
fn a_replica_whose_claim_of_the_epoch_the_primary_refutes_is_resynced() {
    let dir = TempDir::new("resync-refuted");
    let path = dir.path.clone();
    run_io(move || {
        let reps = open_reps(&path, 2, VSSD_LINES);
        let primary: Rc<dyn Replica> = reps[0].flaky.clone();
        let dtm = Dtm::start(
            reps[0].vssd.clone(),
            vec![primary],
            EPOCH,
            DtmConfig::default(),
        )
        .unwrap();
        let tran = dtm.write(3, &payload(3, 1, 1)).unwrap().tran().unwrap();
        let other = LocalReplica::new(reps[1].vssd.clone(), 2, "other", 0);
        other.set_epoch(EPOCH, &[1, 2]).unwrap();
        let target = Rc::new(Flaky {
            inner: LocalReplica::new(reps[1].vssd.clone(), 2, "target", EPOCH),
            mode: Cell::new(Mode::Healthy),
            only: Cell::new(None),
        });
        let p = dtm.resync(target).unwrap();
        assert_eq!(p.joined_epoch, Some(EPOCH + 1));
        assert_eq!((dtm.members(), dtm.epoch()), (vec![1, 2], EPOCH + 1));
        assert_eq!(held(&reps[1], 3).unwrap().0, tran);
        assert_agree(&[&reps[0], &reps[1]]);
    });
}
