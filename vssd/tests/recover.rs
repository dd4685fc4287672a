//! Recovery of the whole vSSD on a real file: in-doubt trans whose payload was
//! damaged after it was acknowledged.

mod common;

use common::{TempDir, open_dev, run_io};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use taskio::AlignedBuf;
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Damage, Options, Payload, Resolution, TRAN_IDS_PER_RECORD, Vssd, VssdError, format};

const LINE: u32 = 4096;
const DEVICE: &str = "cdev-recover";

fn params() -> FormatParams {
    FormatParams {
        line_size: LINE,
        lines: 32,
        log_bytes: LOG_BYTES_MIN,
        device_id: DEVICE.to_string(),
        uuid: [3; 16],
        force: false,
    }
}

/// A formatted vSSD file in `dir`.
fn formatted(dir: &TempDir) -> PathBuf {
    let path = dir.path.join("vssd");
    let g = params().geometry().unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(g.total_bytes())
        .unwrap();
    let p = path.clone();
    run_io(move || format(&open_dev(&p), &params()).unwrap());
    path
}

fn payload(line: u64, tran: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(LINE as usize);
    b.set_len(LINE as usize);
    b.fill((line * 7 + tran) as u8);
    b[..8].copy_from_slice(&tran.to_le_bytes());
    b
}

fn open(path: &Path, options: Options) -> (Vssd, vssd::Recovered) {
    Vssd::open(open_dev(path), Some(DEVICE), options).unwrap()
}

/// Flips one byte of `slot`'s payload on the file (the vSSD closed).
fn damage_slot(path: &Path, slot: u64) {
    let g = params().geometry().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = g.slot_offset(slot) + 100;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[!byte[0]], at).unwrap();
    f.sync_all().unwrap();
}

/// A tracing subscriber that keeps each event's fields as one line.
struct Capture(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0 += &format!("{}={value:?} ", field.name());
    }
}

/// A tran prepared (writep1 returned: acknowledged to the DTM) and in doubt, whose
/// payload is damaged afterwards: recovery cannot tell it from a torn one, so it
/// returns it with its line, slot and reason; a plain commit is refused, a commit
/// with the payload from another copy restores the write, and a vSSD that is the
/// sole copy aborts it, counts it and says so.
#[test]
fn a_damaged_in_doubt_payload_is_returned_for_repair_or_aborted_when_sole_copy() {
    let dir = TempDir::new("damaged");
    let path = formatted(&dir);
    let p = path.clone();
    let slots = run_io(move || {
        let (v, _) = open(&p, Options::default());
        v.writep1(7, 3, &payload(3, 7)).unwrap();
        v.writep1(8, 4, &payload(4, 8)).unwrap();
        v.close();
        // Where the payloads are: each in-doubt tran names its slot.
        let (v, rec) = open(&p, Options::default());
        v.close();
        assert_eq!(rec.in_doubt.len(), 2);
        assert!(rec.in_doubt.iter().all(|d| d.payload == Payload::Intact));
        (rec.in_doubt[0].parts[0].slot, rec.in_doubt[1].parts[0].slot)
    });
    damage_slot(&path, slots.0);
    damage_slot(&path, slots.1);
    // The DTM can repair: both come back, damaged, with line, slot and reason.
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p, Options::default());
        assert!(rec.damaged_aborted.is_empty());
        let trans: Vec<(u64, u64, u64)> = rec
            .in_doubt
            .iter()
            .map(|d| (d.tran, d.line(), d.parts[0].slot))
            .collect();
        assert_eq!(trans, vec![(7, 3, slots.0), (8, 4, slots.1)], "{rec:?}");
        for d in &rec.in_doubt {
            match d.payload {
                Payload::Damaged {
                    line,
                    slot,
                    reason: Damage::Checksum { want, .. },
                } => {
                    assert_eq!((line, slot), (d.line(), d.parts[0].slot));
                    assert_eq!(want, d.parts[0].crc);
                }
                Payload::Intact => panic!("tran {} intact", d.tran),
            }
        }
        let e = v.resolve(7, Resolution::Commit).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::Damaged {
                    tran: 7,
                    line: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("damaged"), "{e}");
        // A payload that is not the prepared one is refused.
        let e = v.resolve_repaired(7, &payload(3, 9)).unwrap_err();
        assert!(matches!(e, VssdError::Repair { tran: 7, .. }), "{e}");
        v.resolve_repaired(7, &payload(3, 7)).unwrap();
        let (hit, buf) = v.read(3).unwrap().expect("line 3 committed");
        assert_eq!((hit.version, &buf[..]), (7, &payload(3, 7)[..]));
        // Tran 8 stays in doubt for the next open.
        v.close();
    });
    // No other copy: recovery aborts it, counts it and names it in a log line.
    let p = path.clone();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let capture = Capture(lines.clone());
    tracing::subscriber::with_default(capture, || {
        run_io(move || {
            let sole = Options {
                sole_copy: true,
                ..Options::default()
            };
            let (v, rec) = open(&p, sole);
            assert!(rec.in_doubt.is_empty(), "{rec:?}");
            let aborted: Vec<(u64, u64)> = rec
                .damaged_aborted
                .iter()
                .map(|d| (d.tran, d.line()))
                .collect();
            assert_eq!(aborted, vec![(8, 4)]);
            assert_eq!(v.stats().damaged_aborted, 1);
            assert!(v.read(4).unwrap().is_none());
            let (hit, _) = v.read(3).unwrap().expect("the repaired line");
            assert_eq!(hit.version, 7);
            v.close();
        })
    });
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("aborts in-doubt tran 8 of line 4") && lines[0].contains("damaged"),
        "{}",
        lines[0]
    );
    // The abort was durable.
    run_io(move || {
        let (_v, rec) = open(&path, Options::default());
        assert!(
            rec.in_doubt.is_empty() && rec.damaged_aborted.is_empty(),
            "{rec:?}"
        );
    });
}

/// Tran ids from [`Vssd::next_tran_id`] are above every id handed out or prepared
/// before, across restarts, even when nothing on the vSSD names the old ones any
/// more (the line invalidated, a checkpoint taken since): so a destage's
/// `mark_clean(line, old version)` can never hit a newer write of the line.
#[test]
fn tran_ids_are_never_reused_after_a_restart() {
    let dir = TempDir::new("tran-ids");
    let path = formatted(&dir);
    let p = path.clone();
    let (first, caller_chosen) = run_io(move || {
        let (v, _) = open(&p, Options::default());
        let first = v.next_tran_id().unwrap();
        assert!(first > 0, "tran 0 is the version of a fill");
        v.writep1(first, 1, &payload(1, first)).unwrap();
        v.resolve(first, Resolution::Commit).unwrap();
        // Ids handed out but never used count too.
        let unused: Vec<u64> = (0..10).map(|_| v.next_tran_id().unwrap()).collect();
        assert!(unused.windows(2).all(|w| w[0] < w[1]) && unused[0] > first);
        // A caller's own id raises the mark as well.
        let caller_chosen = unused[9] + 5000;
        v.writep1(caller_chosen, 2, &payload(2, caller_chosen))
            .unwrap();
        v.abort(caller_chosen).unwrap();
        v.invalidate(1).unwrap();
        v.checkpoint().unwrap();
        v.close();
        (first, caller_chosen)
    });
    // After the checkpoint, through the log alone: a clean close, then a crash-like
    // reopen of a log with no checkpoint since.
    let p = path.clone();
    let second = run_io(move || {
        let (v, rec) = open(&p, Options::default());
        assert!(rec.in_doubt.is_empty());
        let t = v.next_tran_id().unwrap();
        assert!(
            t > caller_chosen,
            "tran {t} handed out again after a restart"
        );
        v.writep1(t, 1, &payload(1, t)).unwrap();
        v.resolve(t, Resolution::Commit).unwrap();
        // A destage of the first version finishing now must not clean the new one.
        let (clean, _) = v.mark_clean(1, first).unwrap();
        assert!(!clean);
        assert_eq!(v.lookup(1).unwrap().state, vssd::map::State::Dirty);
        for _ in 0..3000 {
            v.next_tran_id().unwrap();
        }
        let last = v.next_tran_id().unwrap();
        v.close();
        last
    });
    run_io(move || {
        let (v, _) = open(&path, Options::default());
        let t = v.next_tran_id().unwrap();
        assert!(t > second, "tran {t} after {second}");
        v.close();
    });
}

/// The high-water mark rides on the log writes the writes make anyway: handing out
/// ids costs at most one log write per half batch of ids, none per id.
#[test]
fn tran_ids_cost_no_log_write_of_their_own() {
    let dir = TempDir::new("tran-cost");
    let path = formatted(&dir);
    run_io(move || {
        let (v, _) = open(&path, Options::default());
        let before = v.stats().log;
        let n = TRAN_IDS_PER_RECORD + 10; // past two reservations
        for i in 0..n {
            let t = v.next_tran_id().unwrap();
            v.writep1(t, i % 16, &payload(i % 16, t)).unwrap();
            // Waited durable: every write is one someone waits for, none lazy.
            v.resolve(t, Resolution::Commit).unwrap();
        }
        let after = v.stats().log;
        let reservations = after.records_appended - before.records_appended - 2 * n;
        assert!(
            reservations <= n / (TRAN_IDS_PER_RECORD / 2) + 1,
            "{reservations}"
        );
        // A reservation rides on the next write; only when that is more than the log's
        // lazy delay away (a slow payload write) is it written alone.
        let extra = after.writes - before.writes - 2 * n;
        assert!(
            extra <= reservations,
            "{extra} log writes beyond the writes' own for {reservations} reservations"
        );
        // Ids alone: a write each half batch.
        let before = v.stats().log;
        for _ in 0..4 * TRAN_IDS_PER_RECORD {
            v.next_tran_id().unwrap();
        }
        let writes = v.stats().log.writes - before.writes;
        assert!(writes <= 8 + 1, "{writes} log writes for ids alone");
        v.close();
    });
}

/// The membership epoch: durable when set_epoch returns, kept across restarts by the
/// log and by checkpoints (the log before a checkpoint is reused), never going back.
#[test]
fn the_epoch_is_durable_kept_by_checkpoints_and_never_goes_back() {
    let dir = TempDir::new("epoch");
    let path = formatted(&dir);
    let p = path.clone();
    run_io(move || {
        let (v, _) = open(&p, Options::default());
        assert_eq!((v.epoch(), v.members()), (0, vec![]));
        v.set_epoch(3, &[10, 20]).unwrap();
        assert_eq!((v.epoch(), v.members()), (3, vec![10, 20]));
        // Setting it again is harmless; another membership at the same epoch or an
        // older epoch is refused and changes nothing.
        v.set_epoch(3, &[10, 20]).unwrap();
        let e = v.set_epoch(3, &[10]).unwrap_err();
        assert!(matches!(e, VssdError::Epoch { .. }), "{e}");
        let e = v.set_epoch(2, &[10, 20, 30]).unwrap_err();
        assert!(e.to_string().contains("epoch 2"), "{e}");
        let e = v.set_epoch(9, &[7; 17]).unwrap_err();
        assert!(matches!(e, VssdError::Epoch { .. }), "{e}");
        assert_eq!((v.epoch(), v.members()), (3, vec![10, 20]));
        // From a given epoch only: a second mover from 3 is refused even with the
        // same members, and changes nothing.
        v.set_epoch_from(3, 4, &[10, 20]).unwrap();
        let e = v.set_epoch_from(3, 4, &[10, 20]).unwrap_err();
        assert!(
            matches!(e, VssdError::Epoch { epoch: 4, .. }) && e.to_string().contains("not 3"),
            "{e}"
        );
        assert_eq!((v.epoch(), v.members()), (4, vec![10, 20]));
        v.close();
    });
    // From the log.
    let p = path.clone();
    run_io(move || {
        let (v, _) = open(&p, Options::default());
        assert_eq!((v.epoch(), v.members()), (4, vec![10, 20]));
        v.set_epoch(5, &[20, 30]).unwrap();
        v.checkpoint().unwrap();
        v.close();
    });
    // From the checkpoint alone: the EPOCH record is before its seq.
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p, Options::default());
        assert_eq!(rec.records_replayed, 0, "{rec:?}");
        assert_eq!((v.epoch(), v.members()), (5, vec![20, 30]));
        v.close();
    });
}

/// `n` lines of tran `tran` from `first` as one payload.
fn payload_lines(first: u64, n: u64, tran: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(n as usize * LINE as usize);
    b.set_len(n as usize * LINE as usize);
    for i in 0..n {
        b[i as usize * LINE as usize..][..LINE as usize].copy_from_slice(&payload(first + i, tran));
    }
    b
}

/// One damaged line makes its whole multi-line tran damaged: a plain commit is
/// refused, a repair takes the payload of every line (a part of it is refused).
#[test]
fn a_damaged_line_of_a_multi_line_tran_needs_the_whole_payload_to_repair() {
    let dir = TempDir::new("damaged-multi");
    let path = formatted(&dir);
    let p = path.clone();
    let slot = run_io(move || {
        let (v, _) = open(&p, Options::default());
        v.writep1(7, 3, &payload_lines(3, 4, 7)).unwrap();
        v.close();
        let (v, rec) = open(&p, Options::default());
        v.close();
        assert_eq!(rec.in_doubt.len(), 1);
        rec.in_doubt[0].parts[2].slot
    });
    damage_slot(&path, slot);
    run_io(move || {
        let (v, rec) = open(&path, Options::default());
        assert_eq!(rec.in_doubt.len(), 1, "{rec:?}");
        let d = &rec.in_doubt[0];
        assert_eq!(d.parts.len(), 4);
        assert!(
            matches!(d.payload, Payload::Damaged { line: 5, slot: s, .. } if s == slot),
            "{d:?}"
        );
        let e = v.resolve(7, Resolution::Commit).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::Damaged {
                    tran: 7,
                    line: 5,
                    ..
                }
            ),
            "{e}"
        );
        // The damaged line alone, or three lines, are not the tran's payload.
        let e = v.resolve_repaired(7, &payload(5, 7)).unwrap_err();
        assert!(matches!(e, VssdError::Repair { tran: 7, .. }), "{e}");
        let e = v.resolve_repaired(7, &payload_lines(3, 3, 7)).unwrap_err();
        assert!(matches!(e, VssdError::Repair { tran: 7, .. }), "{e}");
        v.resolve_repaired(7, &payload_lines(3, 4, 7)).unwrap();
        for line in 3..7 {
            let (hit, buf) = v.read(line).unwrap().expect("committed");
            assert_eq!((hit.version, &buf[..]), (7, &payload(line, 7)[..]));
        }
        v.close();
    });
}

/// Replay keeps a tran only with all its PREPAREs: a log ending among them drops it
/// (its writep1 never returned), a checkpoint cut among them keeps the first parts
/// and the log the rest, a retry of the same tran id starts afresh at part 0.
#[test]
fn replay_keeps_a_multi_line_tran_only_with_all_its_parts() {
    use vssd::map::Prepared;
    use vssd::record::Record;
    use vssd::recover::Replay;
    let prepare = |tran, part, parts| Record::Prepare {
        tran,
        line: 100 + u64::from(part),
        slot: u64::from(part) + 10 * tran,
        payload_crc: 1,
        len: LINE,
        part,
        parts,
    };
    let prepared = |tran: u64, part: u32, parts| Prepared {
        line: 100 + u64::from(part),
        slot: u64::from(part) + 10 * tran,
        crc: 1,
        len: LINE,
        part,
        parts,
    };
    // The log ends after 2 of 3 PREPAREs: dropped.
    let mut r = Replay::default();
    r.apply(&prepare(1, 0, 3));
    r.apply(&prepare(1, 1, 3));
    assert_eq!(r.incomplete().collect::<Vec<_>>(), vec![1]);
    assert_eq!(r.in_doubt().count(), 0);
    // A COMMIT cannot complete it (none can follow an incomplete writep1).
    r.apply(&Record::Commit { tran: 1 });
    let map = r.clone().finish(64, 32).unwrap();
    assert_eq!(map.prepared_all(), vec![]);
    assert!(map.lookup(100).is_none());
    assert_eq!(map.counts().slots_free, 64);
    // A retry of tran 1 after the crash: part 0 starts afresh.
    for part in 0..2 {
        r.apply(&prepare(1, part, 2));
    }
    assert_eq!(r.incomplete().count(), 0);
    assert_eq!(
        r.in_doubt().collect::<Vec<_>>(),
        vec![(1, prepared(1, 0, 2)), (1, prepared(1, 1, 2))]
    );
    r.apply(&Record::Commit { tran: 1 });
    let map = r.finish(64, 32).unwrap();
    assert_eq!(map.lookup(101).map(|e| e.version), Some(1));
    // A checkpoint with the first 2 of 4 parts, the log with the rest.
    let mut r = Replay::new([], [(2, prepared(2, 0, 4)), (2, prepared(2, 1, 4))]);
    assert_eq!(r.incomplete().collect::<Vec<_>>(), vec![2]);
    r.apply(&prepare(2, 2, 4));
    r.apply(&prepare(2, 3, 4));
    assert_eq!(r.incomplete().count(), 0);
    assert_eq!(r.in_doubt().count(), 4);
    // A part out of order cannot come from this vSSD: the tran is dropped.
    r.apply(&prepare(3, 0, 3));
    r.apply(&prepare(3, 2, 3));
    assert_eq!(r.in_doubt().count(), 4);
    assert_eq!(r.incomplete().count(), 0);
    let map = r.finish(64, 32).unwrap();
    assert_eq!(map.prepared(2).map(<[Prepared]>::len), Some(4));
}

/// A tran whose last PREPARE did not reach the log (its writep1 never returned):
/// recovery drops it whole, lists it, frees its slots; the DTM may retry the same
/// tran id, and the next recovery keeps the retry (its part 0 starts afresh).
#[test]
fn a_tran_with_a_prepare_missing_is_dropped_and_may_be_retried() {
    use vssd::layout::LOG_SEQ_FIRST;
    use vssd::record::{LOG_BLOCK_SIZE, LogBlockWriter, LogRing, Record};
    use vssd::recover::recover_scan;
    let dir = TempDir::new("incomplete");
    let path = formatted(&dir);
    let p = path.clone();
    let (block, offset) = run_io(move || {
        let (v, _) = open(&p, Options::default());
        v.writep1(7, 3, &payload_lines(3, 3, 7)).unwrap();
        let (seed, g) = (v.superblock().crc_seed(), *v.geometry());
        v.close();
        // The log as recovery will read it, without tran 7's last PREPARE.
        let scan = recover_scan(&open_dev(&p), &g, seed, LOG_SEQ_FIRST).unwrap();
        let last = |r: &Record| {
            matches!(
                r,
                Record::Prepare {
                    tran: 7,
                    part: 2,
                    ..
                }
            )
        };
        let (seq, records) = scan
            .blocks
            .iter()
            .find(|(_, rs)| rs.iter().any(last))
            .expect("the PREPARE is in the log");
        assert!(matches!(records.last(), Some(r) if last(r)), "{records:?}");
        let mut w = LogBlockWriter::new(vec![0u8; LOG_BLOCK_SIZE], *seq, seed);
        for r in &records[..records.len() - 1] {
            w.append(r).unwrap();
        }
        let ring = LogRing::new(g.log_blocks()).unwrap();
        (w.seal(), g.log_offset() + ring.offset_bytes(*seq))
    });
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&block, offset).unwrap();
    f.sync_all().unwrap();
    let p = path.clone();
    run_io(move || {
        let (v, rec) = open(&p, Options::default());
        assert_eq!(rec.incomplete, vec![7], "{rec:?}");
        assert!(rec.in_doubt.is_empty(), "{rec:?}");
        for line in 3..6 {
            assert!(v.read(line).unwrap().is_none(), "line {line}");
        }
        let s = v.stats().map;
        assert_eq!((s.prepared, s.slots_free), (0, v.geometry().slot_count()));
        v.assert_invariants();
        // Not pending here: a retry of the same id is allowed.
        assert_eq!(v.tran_outcome(7), vssd::TranOutcome::Forgotten);
        v.writep1(7, 3, &payload_lines(3, 3, 7)).unwrap();
        v.resolve(7, Resolution::Commit).unwrap();
        v.close();
    });
    run_io(move || {
        let (v, rec) = open(&path, Options::default());
        assert!(
            rec.incomplete.is_empty() && rec.in_doubt.is_empty(),
            "{rec:?}"
        );
        for line in 3..6 {
            let (hit, buf) = v.read(line).unwrap().expect("the retry committed");
            assert_eq!((hit.version, &buf[..]), (7, &payload(line, 7)[..]));
        }
        assert_eq!(v.tran_outcome(7), vssd::TranOutcome::Committed);
        v.close();
    });
}

/// `in_doubt` lists the trans prepared and unresolved, from recovery and since open,
/// in id order and paged, with recovery's damage; `read_prepared` gives back the
/// whole payload of an intact one and refuses a damaged or unprepared one.
#[test]
fn in_doubt_lists_prepared_trans_and_read_prepared_checks_their_payload() {
    let dir = TempDir::new("in-doubt-list");
    let path = formatted(&dir);
    let p = path.clone();
    let slot = run_io(move || {
        let (v, _) = open(&p, Options::default());
        v.writep1(7, 3, &payload_lines(3, 3, 7)).unwrap();
        v.writep1(9, 10, &payload(10, 9)).unwrap();
        v.close();
        let (v, rec) = open(&p, Options::default());
        v.close();
        rec.in_doubt[1].parts[0].slot
    });
    damage_slot(&path, slot);
    run_io(move || {
        let (v, rec) = open(&path, Options::default());
        assert_eq!(rec.in_doubt.len(), 2, "{rec:?}");
        // One prepared since open, one committed since open (not listed).
        v.writep1(12, 20, &payload(20, 12)).unwrap();
        v.writep1(13, 21, &payload(21, 13)).unwrap();
        v.resolve(13, Resolution::Commit).unwrap();
        let listed: Vec<(u64, u64, usize, bool)> = v
            .in_doubt(0, 10)
            .iter()
            .map(|d| {
                let damaged = matches!(d.payload, Payload::Damaged { .. });
                (d.tran, d.line(), d.parts.len(), damaged)
            })
            .collect();
        assert_eq!(
            listed,
            vec![(7, 3, 3, false), (9, 10, 1, true), (12, 20, 1, false)]
        );
        let page: Vec<u64> = v.in_doubt(7, 1).iter().map(|d| d.tran).collect();
        assert_eq!(page, vec![9]);
        assert!(v.in_doubt(12, 10).is_empty());

        let got = v.read_prepared(7).unwrap();
        assert_eq!(&got[..], &payload_lines(3, 3, 7)[..]);
        let e = v.read_prepared(9).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::Damaged {
                    tran: 9,
                    line: 10,
                    ..
                }
            ),
            "{e}"
        );
        let e = v.read_prepared(13).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::TranResolved {
                    tran: 13,
                    outcome: vssd::TranOutcome::Committed,
                    ..
                }
            ),
            "{e}"
        );
        // The copy read from one vSSD repairs the damage on another.
        v.resolve_repaired(9, &payload(10, 9)).unwrap();
        v.resolve(7, Resolution::Abort).unwrap();
        let left: Vec<u64> = v.in_doubt(0, 10).iter().map(|d| d.tran).collect();
        assert_eq!(left, vec![12]);
        v.close();
    });
}

/// `writep1_copy` takes a tran id resolved here already (another line of it copied
/// before, or aborted here), which a plain writep1 refuses; a line's versions still
/// only grow, and the copies come back after a restart.
#[test]
fn a_copy_may_reuse_a_committed_tran_id_on_other_lines() {
    let dir = TempDir::new("copy-id");
    let path = formatted(&dir);
    let p = path.clone();
    run_io(move || {
        let (v, _) = open(&p, Options::default());
        v.writep1(7, 3, &payload(3, 7)).unwrap();
        v.resolve(7, Resolution::Commit).unwrap();
        let e = v.writep1(7, 5, &payload(5, 7)).unwrap_err();
        assert!(matches!(e, VssdError::TranResolved { tran: 7, .. }), "{e}");
        v.writep1_copy(7, 5, &payload(5, 7)).unwrap();
        v.resolve(7, Resolution::Commit).unwrap();
        v.writep1(9, 6, &payload(6, 9)).unwrap();
        v.resolve(9, Resolution::Commit).unwrap();
        let e = v.writep1_copy(7, 6, &payload(6, 7)).unwrap_err();
        assert!(
            matches!(
                e,
                VssdError::Map {
                    source: vssd::map::MapError::TranOld {
                        tran: 7,
                        line: 6,
                        version: 9
                    },
                    ..
                }
            ),
            "{e}"
        );
        // A copy aborted leaves the lines committed before: the tran stays committed.
        v.writep1_copy(7, 8, &payload(8, 7)).unwrap();
        v.resolve(7, Resolution::Abort).unwrap();
        assert_eq!(v.tran_outcome(7), vssd::TranOutcome::Committed);
        // A copy of a tran aborted here (a cut-off primary's own prepare of a write
        // committed elsewhere) commits it; a plain writep1 still refuses the id.
        v.writep1(10, 11, &payload(11, 10)).unwrap();
        v.resolve(10, Resolution::Abort).unwrap();
        let e = v.writep1(10, 11, &payload(11, 10)).unwrap_err();
        assert!(matches!(e, VssdError::TranResolved { tran: 10, .. }), "{e}");
        v.writep1_copy(10, 11, &payload(11, 10)).unwrap();
        v.resolve(10, Resolution::Commit).unwrap();
        assert_eq!(v.tran_outcome(10), vssd::TranOutcome::Committed);
        v.close();
    });
    run_io(move || {
        let (v, rec) = open(&path, Options::default());
        assert!(rec.in_doubt.is_empty(), "{rec:?}");
        assert_eq!(v.dirty_lines(), vec![(3, 7), (5, 7), (6, 9), (11, 10)]);
        // The log's COMMIT then ABORT (the aborted copy) of 7 leave it committed;
        // ABORT then the copy's COMMIT of 10 leave it committed.
        assert_eq!(v.tran_outcome(7), vssd::TranOutcome::Committed);
        assert_eq!(v.tran_outcome(10), vssd::TranOutcome::Committed);
        let (_, buf) = v.read(5).unwrap().expect("the copy");
        assert_eq!(&buf[..], &payload(5, 7)[..]);
        v.close();
    });
}

/// A tran whose writep1 has not returned is not in doubt yet (its commit would be
/// refused as busy): `in_doubt` lists it only once its writep1 returned.
#[test]
fn in_doubt_leaves_out_a_tran_whose_writep1_runs() {
    let dir = TempDir::new("in-doubt-phase1");
    let path = formatted(&dir);
    run_io(move || {
        let (v, _) = open(&path, Options::default());
        let v2 = v.clone();
        let writer = taskio::spawn(move || v2.writep1(7, 3, &payload(3, 7))).unwrap();
        taskio::yield_now();
        assert_eq!(
            v.tran_outcome(7),
            vssd::TranOutcome::Prepared,
            "writep1 started"
        );
        assert!(v.in_doubt(0, 10).is_empty());
        let e = v.read_prepared(7).unwrap_err();
        assert!(matches!(e, VssdError::TranBusy { tran: 7, .. }), "{e}");
        writer.join().unwrap().unwrap();
        let listed: Vec<u64> = v.in_doubt(0, 10).iter().map(|d| d.tran).collect();
        assert_eq!(listed, vec![7]);
        v.close();
    });
}

/// `raise_tran_ids`: the next id is at least the floor, and stays above it after a
/// restart (the DTM's epoch-scoped tran ids rely on it).
#[test]
fn raised_tran_ids_stay_above_the_floor_across_a_restart() {
    let dir = TempDir::new("tran-floor");
    let path = formatted(&dir);
    let p = path.clone();
    const FLOOR: u64 = 3 << 40;
    let raised = run_io(move || {
        let (v, _) = open(&p, Options::default());
        let below = v.next_tran_id().unwrap();
        v.raise_tran_ids(below).unwrap();
        assert!(
            v.next_tran_id().unwrap() > below,
            "a lower floor changes nothing"
        );
        v.raise_tran_ids(FLOOR).unwrap();
        let t = v.next_tran_id().unwrap();
        assert_eq!(t, FLOOR);
        v.close();
        t
    });
    run_io(move || {
        let (v, _) = open(&path, Options::default());
        let t = v.next_tran_id().unwrap();
        assert!(
            t > raised,
            "tran {t} after a restart, {raised} handed out before"
        );
        v.close();
    });
}
