//! The whole vSSD on a real file: phase 1 and commit, reads with their CRC, fills,
//! destage marks, discards, eviction and backpressure, checkpoints, and recovery
//! (clean and with in-doubt trans), plus a model-checked random program.

mod common;

use common::{TempDir, open_dev, run_io};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use proptest::prelude::*;
use taskio::{AlignedBuf, spawn, yield_now};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::map::{MapError, State};
use vssd::{Options, Resolution, TranOutcome, Vssd, VssdError, format};

const LINE: u32 = 4096;

fn params(lines: u64) -> FormatParams {
    FormatParams {
        line_size: LINE,
        lines,
        log_bytes: LOG_BYTES_MIN,
        device_id: "cdev-test".to_string(),
        uuid: [7; 16],
        force: false,
    }
}

/// A formatted vSSD file of `lines` lines.
fn formatted(dir: &TempDir, lines: u64) -> PathBuf {
    let path = dir.path.join("vssd");
    let g = params(lines).geometry().unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(g.total_bytes())
        .unwrap();
    let p = path.clone();
    run_io(move || format(&open_dev(&p), &params(lines)).unwrap());
    path
}

/// A payload naming its line and tran in every 8 bytes.
fn payload(line: u64, tran: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(LINE as usize);
    b.set_len(LINE as usize);
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        let v = line.rotate_left(32) ^ tran ^ (i as u64) << 48;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn open(path: &Path) -> (Vssd, vssd::Recovered) {
    Vssd::open(open_dev(path), Some("cdev-test"), Options::default()).unwrap()
}

fn read_tran(v: &Vssd, line: u64) -> Option<(u64, State)> {
    let (hit, buf) = v.read(line).unwrap()?;
    assert_eq!(&buf[..], &payload(line, hit.version)[..], "line {line}");
    Some((hit.version, hit.state))
}

#[test]
fn writes_commit_read_back_and_survive_a_reopen() {
    let dir = TempDir::new("basic");
    let path = formatted(&dir, 64);
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p);
        assert!(rec.in_doubt.is_empty());
        assert_eq!(rec.checkpoint, None);
        assert_eq!(v.read(3).unwrap().map(|(h, _)| h), None);
        v.writep1(1, 3, &payload(3, 1)).unwrap();
        // Prepared is not visible.
        assert_eq!(v.read(3).unwrap().map(|(h, _)| h), None);
        v.commit(1).unwrap();
        assert_eq!(read_tran(&v, 3), Some((1, State::Dirty)));
        v.writep1(2, 3, &payload(3, 2)).unwrap();
        v.abort(2).unwrap();
        assert_eq!(read_tran(&v, 3), Some((1, State::Dirty)));
        v.writep1(3, 3, &payload(3, 3)).unwrap();
        let pos = v.commit(3).unwrap();
        v.wait_durable(pos).unwrap();
        assert_eq!(read_tran(&v, 3), Some((3, State::Dirty)));
        // A prepared tran left in doubt, and a clean line.
        v.writep1(4, 9, &payload(9, 4)).unwrap();
        assert!(v.insert_clean(10, &payload(10, 0)).unwrap());
        assert!(
            !v.insert_clean(10, &payload(10, 0)).unwrap(),
            "cached already"
        );
        assert_eq!(read_tran(&v, 10), Some((0, State::Clean)));
        let (clean, _) = v.mark_clean(3, 3).unwrap();
        assert!(clean);
        v.sync().unwrap();
        v.close();
    });
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p);
        // No checkpoint: the log alone. The fill was not logged: forgotten.
        assert_eq!(rec.checkpoint, None);
        assert_eq!(rec.in_doubt.len(), 1, "{rec:?}");
        assert_eq!(rec.in_doubt[0].tran, 4);
        assert_eq!(read_tran(&v, 3), Some((3, State::Clean)));
        assert_eq!(read_tran(&v, 10), None);
        assert_eq!(read_tran(&v, 9), None);
        v.resolve(4, Resolution::Commit).unwrap();
        assert_eq!(read_tran(&v, 9), Some((4, State::Dirty)));
        assert!(v.insert_clean(10, &payload(10, 0)).unwrap());
        let seq = v.checkpoint().unwrap();
        assert!(seq > 1);
        v.writep1(5, 11, &payload(11, 5)).unwrap();
        v.commit(5).unwrap();
        assert!(v.invalidate(3).unwrap());
        assert!(!v.invalidate(3).unwrap());
        v.sync().unwrap();
        v.assert_invariants();
        v.close();
    });
    run_io(move || {
        let (v, rec) = open(&path);
        assert!(rec.checkpoint.is_some(), "{rec:?}");
        assert!(rec.in_doubt.is_empty());
        assert_eq!(read_tran(&v, 3), None, "invalidated");
        assert_eq!(read_tran(&v, 9), Some((4, State::Dirty)));
        assert_eq!(
            read_tran(&v, 10),
            Some((0, State::Clean)),
            "fill in the checkpoint"
        );
        assert_eq!(read_tran(&v, 11), Some((5, State::Dirty)));
        v.assert_invariants();
        v.close();
    });
}

#[test]
fn bad_calls_get_clear_errors_and_change_nothing() {
    let dir = TempDir::new("bad");
    let path = formatted(&dir, 16);
    run_io(move || {
        let (v, _) = open(&path);
        let e = v.commit(42).unwrap_err();
        assert!(format!("{e}").contains("tran 42"), "{e}");
        // More lines than one tran may hold.
        let too_many = (v.tran_lines_max() + 1) as usize * LINE as usize;
        let mut big = AlignedBuf::new(too_many);
        big.set_len(too_many);
        let e = v.writep1(1, 1, &big).unwrap_err();
        assert!(matches!(e, VssdError::PayloadLen { .. }), "{e}");
        v.writep1(1, 1, &payload(1, 1)).unwrap();
        let e = v.writep1(2, 1, &payload(1, 2)).unwrap_err();
        assert!(format!("{e}").contains("prepared on it"), "{e}");
        let e = v.writep1(1, 2, &payload(2, 1)).unwrap_err();
        assert!(format!("{e}").contains("prepared already"), "{e}");
        v.commit(1).unwrap();
        assert_eq!(read_tran(&v, 1), Some((1, State::Dirty)));
        // A short payload is padded on disk and read back at its length.
        let mut short = AlignedBuf::new(LINE as usize);
        short.set_len(100);
        short.fill(0xAB);
        v.writep1(3, 2, &short).unwrap();
        v.commit(3).unwrap();
        let (hit, buf) = v.read(2).unwrap().unwrap();
        assert_eq!(hit.len, 100);
        assert_eq!(&buf[..], &[0xAB; 100][..]);
        v.assert_invariants();
        v.close();
        let e = v.read(1).unwrap_err();
        assert!(matches!(e, VssdError::Unusable { .. }), "{e}");
    });
}

#[test]
fn a_file_that_is_not_a_vssd_is_refused_untouched() {
    let dir = TempDir::new("foreign");
    let path = dir.path.join("junk");
    std::fs::write(&path, vec![0x5a; 1 << 20]).unwrap();
    let p = path.clone();
    let e = run_io(move || {
        Vssd::open(open_dev(&p), None, Options::default())
            .err()
            .unwrap()
            .to_string()
    });
    assert!(e.contains("is not a vSSD"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 1 << 20]);
    let vpath = formatted(&dir, 16);
    let e = run_io(move || {
        Vssd::open(open_dev(&vpath), Some("other"), Options::default())
            .err()
            .unwrap()
            .to_string()
    });
    assert!(e.contains("expected \"other\""), "{e}");
}

/// A full cache of dirty lines: writep1 waits (it does not fail) until a destage
/// marks a line clean, then evicts it.
#[test]
fn writep1_waits_for_destage_when_everything_is_dirty() {
    let dir = TempDir::new("backpressure");
    let path = formatted(&dir, 8);
    run_io(move || {
        let (v, _) = open(&path);
        let g = *v.geometry();
        let mut tran = 0;
        for line in 0..g.lines() {
            tran += 1;
            v.writep1(tran, line, &payload(line, tran)).unwrap();
            v.commit(tran).unwrap();
        }
        let done = Rc::new(std::cell::Cell::new(false));
        let (v2, d2) = (v.clone(), done.clone());
        let writer = spawn(move || {
            v2.writep1(1000, 100, &payload(100, 1000)).unwrap();
            d2.set(true);
            v2.commit(1000).unwrap();
        })
        .unwrap();
        for _ in 0..50 {
            yield_now();
        }
        assert!(
            !done.get(),
            "writep1 found room in a cache full of dirty lines"
        );
        assert!(v.stats().slot_waits >= 1);
        v.mark_clean(0, 1).unwrap();
        writer.join().unwrap();
        assert!(done.get());
        assert_eq!(read_tran(&v, 0), None, "the clean line was evicted");
        assert_eq!(read_tran(&v, 100), Some((1000, State::Dirty)));
        assert_eq!(v.stats().evictions, 1);
        v.assert_invariants();
        v.close();
    });
}

/// Many tasks writing at once share log writes (group commit), and the log wraps
/// over checkpoints taken by the background task: the writers run until the log
/// has written more blocks than it holds (bounded by a number of writes).
#[test]
fn many_writers_share_flushes_and_the_log_wraps_over_checkpoints() {
    const TASKS: u64 = 32;
    const PER_TASK_MAX: u64 = 5000;
    let dir = TempDir::new("group");
    let path = formatted(&dir, 4096);
    let p = path.clone();
    // The newest tran of each line, to read back after a reopen.
    let newest = run_io(move || {
        let (v, _) = open(&p);
        let target = v.geometry().log_blocks() + 64;
        let newest = Rc::new(std::cell::RefCell::new(std::collections::BTreeMap::new()));
        let mut hs = Vec::new();
        for t in 0..TASKS {
            let (v, newest) = (v.clone(), newest.clone());
            hs.push(
                spawn(move || {
                    for i in 0..PER_TASK_MAX {
                        if v.stats().log.blocks_written > target {
                            break;
                        }
                        let (tran, line) = (1 + t * PER_TASK_MAX + i, t * 100 + i % 10);
                        v.writep1(tran, line, &payload(line, tran)).unwrap();
                        v.commit(tran).unwrap();
                        newest.borrow_mut().insert(line, tran);
                    }
                })
                .unwrap(),
            );
        }
        for h in hs {
            h.join().unwrap();
        }
        v.sync().unwrap();
        let s = v.stats();
        eprintln!(
            "{} writep1, {} log writes ({:.1} records per write), {} checkpoints, {} blocks used",
            s.writep1,
            s.log.writes,
            s.log.records_per_write(),
            s.checkpoints,
            s.log.blocks_written
        );
        assert!(s.log.records_per_write() > 4.0, "{s:?}");
        assert!(s.checkpoints >= 2, "{s:?}");
        assert!(
            s.log.blocks_written > v.geometry().log_blocks(),
            "the log wrapped: {s:?}"
        );
        v.close();
        newest.take()
    });
    run_io(move || {
        let (v, rec) = open(&path);
        assert!(rec.in_doubt.is_empty());
        for (&line, &tran) in &newest {
            assert_eq!(read_tran(&v, line), Some((tran, State::Dirty)));
        }
        v.assert_invariants();
        v.close();
    });
}

// ---------------------------------------------------------------------------------
// Model

#[derive(Clone, Debug)]
enum Op {
    /// writep1 then commit (true) or abort (false).
    Write {
        line: u64,
        commit: bool,
    },
    /// writep1 left prepared until the next reopen (resolved by commit).
    Prepare {
        line: u64,
    },
    Read {
        line: u64,
    },
    Fill {
        line: u64,
    },
    Clean {
        line: u64,
    },
    Invalidate {
        line: u64,
    },
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let line = 0..24u64;
    prop_oneof![
        6 => (line.clone(), prop::bool::weighted(0.85)).prop_map(|(line, commit)| Op::Write { line, commit }),
        1 => line.clone().prop_map(|line| Op::Prepare { line }),
        4 => line.clone().prop_map(|line| Op::Read { line }),
        2 => line.clone().prop_map(|line| Op::Fill { line }),
        3 => line.clone().prop_map(|line| Op::Clean { line }),
        1 => line.prop_map(|line| Op::Invalidate { line }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

/// What a line holds in the model: the tran of its version (0 = a fill) and
/// whether it is dirty.
type ModelLine = Option<(u64, bool)>;

/// Any program against a vSSD of 8 lines (so eviction runs) keeps every dirty
/// line's newest committed version; a clean line is cached or evicted, never
/// another version; reopen (clean close) changes nothing but forgets fills not yet
/// checkpointed... which the model allows as an eviction.
fn run_program(path: PathBuf, ops: Vec<Op>) {
    run_io(move || {
        let mut model: std::collections::BTreeMap<u64, ModelLine> = Default::default();
        let mut prepared: Vec<(u64, u64)> = Vec::new();
        let mut tran = 0u64;
        let (mut v, _) = open(&path);
        for op in ops {
            if let Op::Write { .. } | Op::Prepare { .. } = op {
                // Keep a line the cache may evict, as a destage would: a single
                // task never waits for its own destage.
                let busy = model
                    .values()
                    .filter(|m| matches!(m, Some((_, true))))
                    .count()
                    + prepared.len();
                if busy >= 7 {
                    let (line, t) = model
                        .iter()
                        .find_map(|(l, m)| match m {
                            Some((t, true)) => Some((*l, *t)),
                            _ => None,
                        })
                        .expect("a dirty line");
                    assert!(v.mark_clean(line, t).unwrap().0);
                    model.insert(line, Some((t, false)));
                }
            }
            match op {
                Op::Write { line, commit } => {
                    if prepared.iter().any(|&(_, l)| l == line) {
                        continue;
                    }
                    tran += 1;
                    v.writep1(tran, line, &payload(line, tran)).unwrap();
                    if commit {
                        v.commit(tran).unwrap();
                        model.insert(line, Some((tran, true)));
                    } else {
                        v.abort(tran).unwrap();
                    }
                }
                Op::Prepare { line } => {
                    if prepared.iter().any(|&(_, l)| l == line) || prepared.len() >= 3 {
                        continue;
                    }
                    tran += 1;
                    v.writep1(tran, line, &payload(line, tran)).unwrap();
                    prepared.push((tran, line));
                }
                Op::Read { line } => {
                    let got = read_tran(&v, line);
                    let want = model.get(&line).copied().flatten();
                    match (got, want) {
                        (Some((t, st)), Some((wt, dirty))) => {
                            assert_eq!(t, wt, "line {line}");
                            assert_eq!(st == State::Dirty, dirty, "line {line}");
                        }
                        (None, Some((_, false))) | (None, None) => {
                            model.insert(line, None);
                        }
                        (got, want) => panic!("line {line}: read {got:?}, model {want:?}"),
                    }
                }
                Op::Fill { line } => {
                    if model.get(&line).copied().flatten().is_none()
                        && v.lookup(line).is_none()
                        && v.insert_clean(line, &payload(line, 0)).unwrap()
                    {
                        model.insert(line, Some((0, false)));
                    }
                }
                Op::Clean { line } => {
                    if let Some(Some((t, true))) = model.get(&line).copied() {
                        assert!(v.mark_clean(line, t).unwrap().0);
                        model.insert(line, Some((t, false)));
                    }
                }
                Op::Invalidate { line } => {
                    v.invalidate(line).unwrap();
                    model.insert(line, None);
                }
                Op::Checkpoint => {
                    v.checkpoint().unwrap();
                }
                Op::Reopen => {
                    v.sync().unwrap();
                    v.close();
                    let (v2, rec) = open(&path);
                    v = v2;
                    let mut doubt: Vec<u64> = rec.in_doubt.iter().map(|d| d.tran).collect();
                    doubt.sort_unstable();
                    let mut want: Vec<u64> = prepared.iter().map(|p| p.0).collect();
                    want.sort_unstable();
                    assert_eq!(doubt, want, "in-doubt trans");
                    for (t, line) in prepared.drain(..) {
                        v.resolve(t, Resolution::Commit).unwrap();
                        model.insert(line, Some((t, true)));
                    }
                }
            }
            v.assert_invariants();
        }
        for (line, want) in model {
            let got = read_tran(&v, line);
            match (got, want) {
                (Some((t, _)), Some((wt, _))) => assert_eq!(t, wt, "line {line}"),
                (None, Some((_, false)) | None) => {}
                (got, want) => panic!("end: line {line}: read {got:?}, model {want:?}"),
            }
        }
        v.close();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_program_matches_the_model(ops in prop::collection::vec(op(), 1..120)) {
        let dir = TempDir::new("model");
        let path = formatted(&dir, 8);
        run_program(path, ops);
    }
}

/// One user of a device at a time: a second open (another process, or another open
/// file here) and a format over an open vSSD are refused, and change nothing.
#[test]
fn a_device_in_use_is_refused_to_a_second_open_and_to_format() {
    let dir = TempDir::new("lock");
    let path = formatted(&dir, 16);
    run_io(move || {
        let (v, _) = open(&path);
        v.writep1(1, 1, &payload(1, 1)).unwrap();
        v.commit(1).unwrap();
        let e = Vssd::open(open_dev(&path), Some("cdev-test"), Options::default())
            .err()
            .expect("a second open");
        assert!(e.to_string().contains("in use"), "{e}");
        let mut p = params(16);
        p.uuid = [8; 16];
        let e = format(&open_dev(&path), &p).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert_eq!(read_tran(&v, 1), Some((1, State::Dirty)));
        v.close();
    });
}

#[test]
fn a_dropped_vssd_closes_itself_and_releases_its_device() {
    let dir = TempDir::new("drop");
    let path = formatted(&dir, 16);
    run_io(move || {
        let (v, _) = open(&path);
        v.writep1(1, 2, &payload(2, 1)).unwrap();
        let pos = v.commit(1).unwrap();
        // A record nobody waits for: the log still writes it after the drop.
        v.mark_clean(2, 1).unwrap();
        v.wait_durable(pos).unwrap();
        let background = v.background();
        assert!(background.running() > 1, "log writers and checkpoint task");
        drop(v);
        background.wait_ended();
        assert_eq!(background.running(), 0);
        let (v, rec) = open(&path);
        assert!(rec.in_doubt.is_empty());
        assert_eq!(read_tran(&v, 2), Some((1, State::Clean)));
        // Closed, then dropped: the same end.
        let background = v.background();
        v.close();
        assert_eq!(background.running(), 0);
        drop(v);
        open(&path).0.close();
    });
}

#[test]
fn commit_and_abort_are_idempotent_and_a_query_tells_a_trans_outcome() {
    let dir = TempDir::new("outcome");
    let path = formatted(&dir, 16);
    run_io(move || {
        let (v, _) = open(&path);
        v.writep1(1, 2, &payload(2, 1)).unwrap();
        v.writep1(2, 3, &payload(3, 2)).unwrap();
        let pos = v.commit(1).unwrap();
        // Again (a DTM retrying after a lost reply): the same record, nothing logged.
        let appended = v.stats().log.records_appended;
        assert_eq!(v.commit(1).unwrap(), pos);
        v.abort(2).unwrap();
        v.abort(2).unwrap();
        v.resolve(1, Resolution::Commit).unwrap();
        assert_eq!(v.stats().log.records_appended, appended + 1, "one ABORT");
        assert_eq!(read_tran(&v, 2), Some((1, State::Dirty)));
        assert_eq!(read_tran(&v, 3), None);
        // The other way round: an error naming the tran and its outcome.
        let e = v.abort(1).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::TranResolved {
                    tran: 1,
                    outcome: TranOutcome::Committed,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("tran 1: the tran is committed"),
            "{e}"
        );
        let e = v.resolve(2, Resolution::Commit).unwrap_err();
        assert!(e.to_string().contains("tran 2: the tran is aborted"), "{e}");
        // A resolved id is not prepared again.
        let e = v.writep1(1, 4, &payload(4, 1)).unwrap_err();
        assert!(
            e.to_string()
                .contains("writep1 tran 1: the tran is committed"),
            "{e}"
        );
        // The query.
        v.writep1(3, 4, &payload(4, 3)).unwrap();
        assert_eq!(v.tran_outcome(1), TranOutcome::Committed);
        assert_eq!(v.tran_outcome(2), TranOutcome::Aborted);
        assert_eq!(v.tran_outcome(3), TranOutcome::Prepared);
        assert_eq!(v.tran_outcome(4), TranOutcome::Unknown);
        assert!(matches!(
            v.commit(4).unwrap_err(),
            VssdError::Map {
                source: MapError::UnknownTran { tran: 4, .. },
                ..
            }
        ));
        v.commit(3).unwrap();
        assert_eq!(v.tran_outcome(3), TranOutcome::Committed);
        v.close();
    });
}

#[test]
fn a_discard_logs_only_the_cached_lines_of_its_range() {
    let dir = TempDir::new("discard");
    let path = formatted(&dir, 64);
    run_io(move || {
        let (v, _) = open(&path);
        for (tran, line) in [(1, 10), (2, 12), (3, 40)] {
            v.writep1(tran, line, &payload(line, tran)).unwrap();
            v.commit(tran).unwrap();
        }
        assert!(v.insert_clean(11, &payload(11, 0)).unwrap());
        assert!(v.insert_clean(50, &payload(50, 0)).unwrap());
        v.sync().unwrap();
        let appended = v.stats().log.records_appended;
        // Not cached: no record.
        assert!(!v.invalidate(3).unwrap());
        assert_eq!(v.stats().log.records_appended, appended);
        // 2^40 lines (4 PiB of 4 KiB lines): one INVALIDATE per cached line in it.
        assert_eq!(v.invalidate_range(11, 1 << 40).unwrap(), 4);
        assert_eq!(v.stats().log.records_appended, appended + 4);
        assert_eq!(v.stats().invalidations, 4);
        assert_eq!(read_tran(&v, 10), Some((1, State::Dirty)));
        for line in [11, 12, 40, 50] {
            assert_eq!(read_tran(&v, line), None, "line {line}");
        }
        assert_eq!(v.invalidate_range(0, 0).unwrap(), 0);
        assert_eq!(v.invalidate_range(u64::MAX - 1, 5).unwrap(), 0);
        v.assert_invariants();
        v.close();
        // Durable on return.
        let (v, _) = open(&path);
        assert_eq!(read_tran(&v, 10), Some((1, State::Dirty)));
        assert_eq!(read_tran(&v, 12), None);
        assert_eq!(read_tran(&v, 40), None);
        v.close();
    });
}

#[test]
fn dirty_lines_come_in_line_order_by_range_and_a_destager_waits_for_changes() {
    let dir = TempDir::new("dirty");
    let path = formatted(&dir, 64);
    run_io(move || {
        let (v, _) = open(&path);
        for (tran, line) in [(1, 30), (2, 5), (3, 17), (4, 9)] {
            v.writep1(tran, line, &payload(line, tran)).unwrap();
            v.commit(tran).unwrap();
        }
        assert!(v.insert_clean(6, &payload(6, 0)).unwrap());
        assert_eq!(v.dirty_count(), 4);
        assert_eq!(v.dirty_range(0, 2), vec![(5, 2), (9, 4)]);
        assert_eq!(v.dirty_range(10, 10), vec![(17, 3), (30, 1)]);
        assert_eq!(v.dirty_range(31, 10), vec![]);
        assert_eq!(v.dirty_lines(), vec![(5, 2), (9, 4), (17, 3), (30, 1)]);

        // A destager task: waits for a change, then takes the lines and cleans them.
        let seen = v.dirty_generation();
        let v2 = v.clone();
        let destager = spawn(move || {
            let mut seen = seen;
            let mut cleaned = Vec::new();
            // Bounded: the main task makes two changes, then closes.
            for _ in 0..3 {
                if let Err(e) = v2.wait_dirty_changed(seen) {
                    return (cleaned, e.to_string());
                }
                for (line, version) in v2.dirty_range(0, 64) {
                    assert!(v2.mark_clean(line, version).unwrap().0);
                    cleaned.push((line, version));
                }
                // Its own cleaning changed the dirty lines too.
                seen = v2.dirty_generation();
            }
            (cleaned, "no close".into())
        })
        .unwrap();
        yield_now();
        assert!(!destager.is_finished(), "nothing changed yet");
        // A prepare changes no dirty line; a clean fill neither.
        v.writep1(5, 40, &payload(40, 5)).unwrap();
        assert!(v.insert_clean(7, &payload(7, 0)).unwrap());
        assert!(!destager.is_finished());
        assert_eq!(v.dirty_count(), 4);
        v.commit(5).unwrap();
        // The destager woke and cleaned all five.
        for _ in 0..4 {
            if v.dirty_count() == 0 {
                break;
            }
            yield_now();
        }
        assert_eq!(v.dirty_count(), 0);
        v.writep1(6, 9, &payload(9, 6)).unwrap();
        v.commit(6).unwrap();
        v.sync().unwrap();
        assert_eq!(v.dirty_count(), 0, "the destager cleaned line 9 again");
        v.close();
        let (cleaned, end) = destager.join().unwrap();
        assert_eq!(
            cleaned,
            vec![(5, 2), (9, 4), (17, 3), (30, 1), (40, 5), (9, 6)]
        );
        assert!(end.contains("closed"), "{end}");
    });
}

#[test]
fn a_stale_destage_mark_never_cleans_a_newer_version() {
    let dir = TempDir::new("stale-clean");
    let path = formatted(&dir, 16);
    let p = path.clone();
    run_io(move || {
        let (v, _) = open(&p);
        v.writep1(5, 3, &payload(3, 5)).unwrap();
        v.commit(5).unwrap();
        // A destage copies version 5; meanwhile tran 6 writes the line.
        v.writep1(6, 3, &payload(3, 6)).unwrap();
        v.commit(6).unwrap();
        assert_eq!(v.mark_clean(3, 5).unwrap(), (false, None));
        assert_eq!(read_tran(&v, 3), Some((6, State::Dirty)));
        v.sync().unwrap();
        v.close();
    });
    run_io(move || {
        let (v, _) = open(&path);
        assert_eq!(read_tran(&v, 3), Some((6, State::Dirty)));
        // After a reopen the replayed log says tran 6 committed: its id again is
        // refused.
        let e = v.writep1(6, 3, &payload(3, 66)).unwrap_err();
        assert!(
            e.to_string().contains("tran 6: the tran is committed"),
            "{e}"
        );
        // Tran 4 was never used (forgotten, not resolved), but the line's version
        // says tran 6 wrote it: a tran id not above it (a DTM reusing ids) is
        // refused, or the stale mark of version 6's destage below would clean the
        // newer data.
        let e = v.writep1(4, 3, &payload(3, 4)).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(e.to_string().contains("version 6"), "{e}");
        assert!(v.mark_clean(3, 6).unwrap().0);
        assert_eq!(read_tran(&v, 3), Some((6, State::Clean)));
        // Newer ids are fine, on this line and over a fill.
        v.writep1(7, 3, &payload(3, 7)).unwrap();
        v.commit(7).unwrap();
        assert!(v.insert_clean(4, &payload(4, 0)).unwrap());
        v.writep1(2, 4, &payload(4, 2)).unwrap();
        v.commit(2).unwrap();
        assert_eq!(read_tran(&v, 4), Some((2, State::Dirty)));
        v.close();
    });
}

/// `n` lines of tran `tran` from `first` as one payload (the last `short` bytes
/// shorter: a tran's last line may be short).
fn payload_lines(first: u64, n: u64, tran: u64, short: usize) -> AlignedBuf {
    let len = n as usize * LINE as usize - short;
    let mut b = AlignedBuf::new(n as usize * LINE as usize);
    b.set_len(len);
    for i in 0..n {
        let part = payload(first + i, tran);
        let at = i as usize * LINE as usize;
        let end = (at + LINE as usize).min(len);
        b[at..end].copy_from_slice(&part[..end - at]);
    }
    b
}

/// Reads `n` lines from `first`: each line's version, `None` for a miss; checks the
/// bytes of a hit of a tran written by [`payload_lines`] with `short` bytes less.
fn read_lines(v: &Vssd, first: u64, n: u64, short: usize) -> Vec<Option<u64>> {
    (first..first + n)
        .map(|line| {
            let (hit, buf) = v.read(line).unwrap()?;
            let want = payload(line, hit.version);
            let len = if line == first + n - 1 {
                LINE as usize - short
            } else {
                LINE as usize
            };
            assert_eq!(&buf[..], &want[..len], "line {line}");
            Some(hit.version)
        })
        .collect()
}

/// A tran of several consecutive lines: one writep1, one COMMIT or ABORT for all of
/// them, recovered whole (in doubt with every line, committed with every line), a
/// checkpoint keeps it, and its limit is stated.
#[test]
fn a_multi_line_tran_is_written_resolved_and_recovered_as_one() {
    let dir = TempDir::new("multi");
    let path = formatted(&dir, 64);
    let p = path.clone();
    run_io(move || {
        let (v, _) = open(&p);
        // 1 MiB of 4 KiB lines is 256, but at most half of the 64 lines.
        assert_eq!(v.tran_lines_max(), 32);
        v.writep1(1, 10, &payload_lines(10, 4, 1, 0)).unwrap();
        assert_eq!(read_lines(&v, 10, 4, 0), vec![None; 4], "prepared: unseen");
        assert_eq!(v.stats().map.prepared, 4);
        // Every line of the tran is prepared: another tran on one of them waits its turn.
        let e = v.writep1(2, 12, &payload(12, 2)).unwrap_err();
        assert!(format!("{e}").contains("prepared on it"), "{e}");
        let e = v.writep1(2, 8, &payload_lines(8, 3, 2, 0)).unwrap_err();
        assert!(format!("{e}").contains("line 10"), "{e}");
        let pos = v.commit(1).unwrap();
        v.wait_durable(pos).unwrap();
        assert_eq!(read_lines(&v, 10, 4, 0), vec![Some(1); 4]);
        assert_eq!(v.dirty_count(), 4);
        // Aborted: none of its lines changes.
        v.writep1(3, 12, &payload_lines(12, 3, 3, 0)).unwrap();
        v.abort(3).unwrap();
        assert_eq!(read_lines(&v, 10, 4, 0), vec![Some(1); 4]);
        assert_eq!(read_lines(&v, 14, 1, 0), vec![None]);
        // Over committed lines and new ones, the last line short; left in doubt.
        v.writep1(4, 12, &payload_lines(12, 5, 4, 1000)).unwrap();
        // And one across a checkpoint: the checkpoint keeps its lines.
        v.writep1(5, 30, &payload_lines(30, 32, 5, 0)).unwrap();
        v.checkpoint().unwrap();
        v.assert_invariants();
        v.close();
    });
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p);
        assert!(rec.incomplete.is_empty(), "{rec:?}");
        let trans: Vec<(u64, Vec<u64>, u64)> = rec
            .in_doubt
            .iter()
            .map(|d| {
                (
                    d.tran,
                    d.parts.iter().map(|p| p.line).collect(),
                    d.payload_len(),
                )
            })
            .collect();
        assert_eq!(
            trans,
            vec![
                (4, (12..17).collect(), 5 * u64::from(LINE) - 1000),
                (5, (30..62).collect(), 32 * u64::from(LINE)),
            ]
        );
        assert!(
            rec.in_doubt
                .iter()
                .all(|d| d.payload == vssd::Payload::Intact)
        );
        assert_eq!(read_lines(&v, 10, 4, 0), vec![Some(1); 4]);
        v.resolve(4, Resolution::Commit).unwrap();
        v.resolve(5, Resolution::Abort).unwrap();
        assert_eq!(read_lines(&v, 10, 2, 0), vec![Some(1); 2]);
        assert_eq!(read_lines(&v, 12, 5, 1000), vec![Some(4); 5]);
        assert_eq!(read_lines(&v, 30, 32, 0), vec![None; 32]);
        v.assert_invariants();
        v.close();
    });
    run_io(move || {
        let (v, rec) = open(&path);
        assert!(rec.in_doubt.is_empty(), "{rec:?}");
        assert_eq!(read_lines(&v, 12, 5, 1000), vec![Some(4); 5]);
        assert_eq!(read_lines(&v, 30, 32, 0), vec![None; 32]);
        v.close();
    });
}

/// A DTM retrying a COMMIT or ABORT after the vSSD restarted: the outcome of every
/// tran resolved in the log recovery replays is known again (the retry is
/// idempotent, the other way is refused), a tran resolved before the checkpoint is
/// forgotten (never unknown: nothing of it is pending), an id never seen is unknown.
#[test]
fn outcomes_of_the_replayed_log_survive_a_restart() {
    let dir = TempDir::new("outcome-restart");
    let path = formatted(&dir, 16);
    let p = path.clone();
    run_io(move || {
        let (v, _) = open(&p);
        for tran in 1..=5 {
            v.writep1(tran, tran, &payload(tran, tran)).unwrap();
        }
        v.resolve(1, Resolution::Commit).unwrap();
        v.resolve(2, Resolution::Abort).unwrap();
        v.checkpoint().unwrap();
        v.resolve(4, Resolution::Commit).unwrap();
        v.resolve(5, Resolution::Abort).unwrap();
        v.close();
    });
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p);
        assert_eq!(
            rec.in_doubt.iter().map(|d| d.tran).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(v.tran_outcome(3), TranOutcome::Prepared);
        assert_eq!(v.tran_outcome(4), TranOutcome::Committed);
        assert_eq!(v.tran_outcome(5), TranOutcome::Aborted);
        assert_eq!(v.tran_outcome(1), TranOutcome::Forgotten);
        assert_eq!(v.tran_outcome(2), TranOutcome::Forgotten);
        assert_eq!(v.tran_outcome(1000), TranOutcome::Unknown);
        // Retries: idempotent, nothing logged.
        let appended = v.stats().log.records_appended;
        v.resolve(4, Resolution::Commit).unwrap();
        v.resolve(5, Resolution::Abort).unwrap();
        assert_eq!(v.stats().log.records_appended, appended);
        // The other way round, or a forgotten one: an error naming its outcome.
        let e = v.abort(4).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::TranResolved {
                    tran: 4,
                    outcome: TranOutcome::Committed,
                    ..
                }
            ),
            "{e}"
        );
        let e = v.commit(5).unwrap_err();
        assert!(e.to_string().contains("the tran is aborted"), "{e}");
        let e = v.commit(1).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::TranResolved {
                    tran: 1,
                    outcome: TranOutcome::Forgotten,
                    ..
                }
            ),
            "{e}"
        );
        // A resolved id is not prepared again.
        let e = v.writep1(4, 9, &payload(9, 4)).unwrap_err();
        assert!(e.to_string().contains("the tran is committed"), "{e}");
        assert_eq!(read_tran(&v, 4), Some((4, State::Dirty)));
        v.resolve(3, Resolution::Commit).unwrap();
        v.checkpoint().unwrap();
        v.close();
    });
    run_io(move || {
        // The checkpoint took them: forgotten now.
        let (v, _) = open(&path);
        assert_eq!(v.tran_outcome(3), TranOutcome::Forgotten);
        assert_eq!(v.tran_outcome(4), TranOutcome::Forgotten);
        v.close();
    });
}
