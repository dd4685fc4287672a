//! The cache map: checked against a model (BTreeMaps) under any sequence of
//! operations, rebuilt from its own checkpoint, and its memory per line measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use vssd::map::{CacheMap, Entry, MapError, Prepared, State, VERSION_CLEAN_INSERT};
use vssd::record::Record;
use vssd::recover::Replay;

// ---------------------------------------------------------------------------------
// A counting allocator: bytes held by allocations made on this thread.

struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call forwards to `System` with the caller's arguments; the
// thread-local counter is a const-initialised `Cell` without destructor, so touching
// it never allocates. `try_with` tolerates threads whose locals are gone.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = HELD.try_with(|h| h.set(h.get() + layout.size() as isize));
        // SAFETY: the caller's contract for `alloc` is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = HELD.try_with(|h| h.set(h.get() - layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = HELD.try_with(|h| h.set(h.get() + new_size as isize - layout.size() as isize));
        // SAFETY: the caller's contract for `realloc` is `System::realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn held() -> isize {
    HELD.with(|h| h.get())
}

#[test]
fn ram_per_line() {
    for lines in [3000u64, 1 << 12, 1 << 16] {
        let slots = lines + lines / 16;
        let before = held();
        let mut map = CacheMap::new(slots, lines);
        for line in 0..lines {
            map.insert_clean(line * 7, 4096, line as u32).unwrap();
        }
        let bytes = (held() - before) as f64;
        let per_line = bytes / lines as f64;
        let estimate = map.heap_bytes() as f64 / lines as f64;
        println!("{lines} lines: {per_line:.1} bytes per line measured, {estimate:.1} estimated");
        assert!(per_line < 160.0, "{per_line} bytes per line");
        assert!(
            (per_line - estimate).abs() / per_line < 0.05,
            "measured {per_line}, estimated {estimate}"
        );
        map.assert_invariants();
    }
    assert_eq!(size_of::<Entry>(), 32);
}

// ---------------------------------------------------------------------------------
// The model.

const LINE_COUNT: u64 = 12;

#[derive(Clone, Debug)]
enum Op {
    Prepare {
        line: u64,
        len: u32,
        crc: u32,
    },
    /// Prepare reusing a prepared tran id (refused).
    PrepareSameTran(usize),
    Commit(usize),
    Abort(usize),
    CommitUnknown(u64),
    Lookup(u64),
    InsertClean {
        line: u64,
        crc: u32,
    },
    /// Clean with the current version (true) or a stale one.
    MarkClean {
        line: u64,
        current: bool,
    },
    Invalidate(u64),
    Evict,
    /// The log moves on to the next block.
    NextSeq,
    /// `durable` of the current seq minus `back` (saturating).
    Durable {
        back: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..LINE_COUNT, 1..=65536u32, any::<u32>())
            .prop_map(|(line, len, crc)| Op::Prepare { line, len, crc }),
        1 => any::<usize>().prop_map(Op::PrepareSameTran),
        4 => any::<usize>().prop_map(Op::Commit),
        1 => any::<usize>().prop_map(Op::Abort),
        1 => (1000..1010u64).prop_map(Op::CommitUnknown),
        2 => (0..LINE_COUNT).prop_map(Op::Lookup),
        3 => (0..LINE_COUNT, any::<u32>()).prop_map(|(line, crc)| Op::InsertClean { line, crc }),
        3 => (0..LINE_COUNT, any::<bool>()).prop_map(|(line, current)| Op::MarkClean { line, current }),
        1 => (0..LINE_COUNT).prop_map(Op::Invalidate),
        2 => Just(Op::Evict),
        2 => Just(Op::NextSeq),
        2 => (0..3u64).prop_map(|back| Op::Durable { back }),
    ]
}

#[derive(Default)]
struct Model {
    slot_count: u64,
    lines: u64,
    entries: BTreeMap<u64, Entry>,
    /// tran -> (line, slot, crc, len)
    prepared: BTreeMap<u64, (u64, u64, u32, u32)>,
    /// slot -> seq at which it was released
    freeing: BTreeMap<u64, u64>,
    seq: u64,
    durable: u64,
}

impl Model {
    fn slots_used(&self) -> BTreeSet<u64> {
        let mut used = BTreeSet::new();
        for e in self.entries.values() {
            assert!(used.insert(e.slot), "slot {} twice", e.slot);
        }
        for p in self.prepared.values() {
            assert!(used.insert(p.1), "slot {} twice", p.1);
        }
        for &s in self.freeing.keys() {
            assert!(used.insert(s), "slot {s} twice");
        }
        used
    }

    fn slots_free(&self) -> u64 {
        self.slot_count - self.slots_used().len() as u64
    }

    fn lines_held(&self) -> BTreeSet<u64> {
        let mut held: BTreeSet<u64> = self.entries.keys().copied().collect();
        held.extend(self.prepared.values().map(|p| p.0));
        held
    }

    /// Whether the map must refuse `line` with `Full`.
    fn full_for(&self, line: u64) -> bool {
        let held = self.lines_held();
        self.slots_free() == 0 || (!held.contains(&line) && held.len() as u64 == self.lines)
    }

    fn lines_clean(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.state == State::Clean)
            .count() as u64
    }

    fn release(&mut self, slot: u64) {
        if self.seq > self.durable {
            self.freeing.insert(slot, self.seq);
        }
    }

    fn durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
        let d = self.durable;
        self.freeing.retain(|_, s| *s > d);
    }

    /// The slot the map gave must be free in the model.
    fn check_fresh(&self, slot: u64, line: u64) -> Result<(), TestCaseError> {
        prop_assert!(slot < self.slot_count);
        prop_assert!(
            !self.slots_used().contains(&slot),
            "slot {slot} handed out twice"
        );
        prop_assert!(self.entries.get(&line).is_none_or(|e| e.slot != slot));
        Ok(())
    }
}

fn check(map: &CacheMap, model: &Model) -> Result<(), TestCaseError> {
    map.assert_invariants();
    let c = map.counts();
    let dirty = model.entries.len() as u64 - model.lines_clean();
    prop_assert_eq!(c.lines_dirty, dirty);
    prop_assert_eq!(c.lines_clean, model.lines_clean());
    prop_assert_eq!(c.prepared, model.prepared.len() as u64);
    prop_assert_eq!(c.slots_freeing, model.freeing.len() as u64);
    prop_assert_eq!(c.slots_free, model.slots_free());
    for &slot in model.freeing.keys() {
        prop_assert!(
            !map.is_free(slot),
            "slot {slot} free before its release is durable"
        );
    }
    let entries: Vec<(u64, Entry)> = model.entries.iter().map(|(&l, &e)| (l, e)).collect();
    prop_assert_eq!(map.entries(), entries);
    Ok(())
}

fn pick<T: Copy>(keys: impl Iterator<Item = T>, i: usize) -> Option<T> {
    let v: Vec<T> = keys.collect();
    if v.is_empty() {
        None
    } else {
        Some(v[i % v.len()])
    }
}

/// A checkpoint taken between two operations: the map's state and the log length.
type Snapshot = (Vec<(u64, Entry)>, Vec<(u64, Prepared)>, usize);

fn run(lines: u64, spare: u64, ops: Vec<Op>, snap_at: usize) -> Result<(), TestCaseError> {
    // The records the I/O layer would append, and a fuzzy checkpoint.
    let mut log: Vec<Record> = Vec::new();
    let snap_at = snap_at % (ops.len() + 1);
    let mut snapshot: Option<Snapshot> = None;
    let slot_count = lines + spare;
    let mut map = CacheMap::new(slot_count, lines);
    let mut model = Model {
        slot_count,
        lines,
        seq: 1,
        ..Model::default()
    };
    let mut tran_next = 1u64;
    for (i, op) in ops.into_iter().enumerate() {
        if i == snap_at {
            snapshot = Some((map.entries(), map.prepared_all(), log.len()));
        }
        match op {
            Op::Prepare { line, len, crc } => {
                let tran = tran_next;
                tran_next += 1;
                let got = map.prepare(tran, line, len, crc);
                if let Some((&other, _)) = model.prepared.iter().find(|(_, p)| p.0 == line) {
                    prop_assert_eq!(
                        got,
                        Err(MapError::LinePrepared {
                            tran,
                            line,
                            tran_other: other
                        })
                    );
                } else if model.full_for(line) {
                    let seq_freeing_min = model.freeing.values().min().copied();
                    prop_assert_eq!(
                        got,
                        Err(MapError::Full {
                            line,
                            lines_clean: model.lines_clean(),
                            seq_freeing_min
                        })
                    );
                } else {
                    let slot = got.expect("room for a prepare");
                    model.check_fresh(slot, line)?;
                    model.prepared.insert(tran, (line, slot, crc, len));
                    log.push(Record::Prepare {
                        tran,
                        line,
                        slot,
                        payload_crc: crc,
                        len,
                        part: 0,
                        parts: 1,
                    });
                }
            }
            Op::PrepareSameTran(i) => {
                if let Some(tran) = pick(model.prepared.keys().copied(), i) {
                    let got = map.prepare(tran, LINE_COUNT + 1, 1, 0);
                    prop_assert_eq!(
                        got,
                        Err(MapError::TranPrepared {
                            tran,
                            line: LINE_COUNT + 1
                        })
                    );
                }
                prop_assert_eq!(
                    map.prepare(0, 0, 1, 0),
                    Err(MapError::TranZero { op: "prepare" })
                );
            }
            Op::Commit(i) => {
                let Some(tran) = pick(model.prepared.keys().copied(), i) else {
                    continue;
                };
                let (line, slot, crc, len) = model.prepared.remove(&tran).unwrap();
                let c = map.commit(tran, model.seq).expect("prepared tran commits");
                prop_assert_eq!(c.len(), 1);
                let c = c[0];
                log.push(Record::Commit { tran });
                prop_assert_eq!(c.line, line);
                prop_assert_eq!(c.slot, slot);
                let old = model.entries.insert(
                    line,
                    Entry {
                        slot,
                        version: tran,
                        crc,
                        len,
                        state: State::Dirty,
                    },
                );
                prop_assert_eq!(c.slot_old, old.map(|e| e.slot));
                if let Some(old) = old {
                    model.release(old.slot);
                }
                prop_assert_eq!(map.lookup(line).map(|e| e.slot), Some(slot));
            }
            Op::Abort(i) => {
                let Some(tran) = pick(model.prepared.keys().copied(), i) else {
                    continue;
                };
                let (line, slot, _, _) = model.prepared.remove(&tran).unwrap();
                let p = map.abort(tran, model.seq).expect("prepared tran aborts");
                prop_assert_eq!(p.len(), 1);
                let p = p[0];
                log.push(Record::Abort { tran });
                prop_assert_eq!((p.line, p.slot), (line, slot));
                model.release(slot);
            }
            Op::CommitUnknown(tran) => {
                prop_assert_eq!(
                    map.commit(tran, model.seq),
                    Err(MapError::UnknownTran { op: "commit", tran })
                );
            }
            Op::Lookup(line) => {
                prop_assert_eq!(map.lookup(line), model.entries.get(&line).copied());
                prop_assert_eq!(map.access(line), model.entries.get(&line).copied());
                // The ordered index: the first cached line from `line` on.
                let end = line + 3;
                let want = model.entries.range(line..end).next().map(|(&l, _)| l);
                prop_assert_eq!(map.cached_from(line, end), want);
            }
            Op::InsertClean { line, crc } => {
                let got = map.insert_clean(line, 4096, crc);
                if let Some(e) = model.entries.get(&line) {
                    prop_assert_eq!(got, Err(MapError::Cached { line, slot: e.slot }));
                } else if model.full_for(line) {
                    prop_assert!(matches!(got, Err(MapError::Full { .. })), "{got:?}");
                } else {
                    let slot = got.expect("room for a clean insert");
                    model.check_fresh(slot, line)?;
                    model.entries.insert(
                        line,
                        Entry {
                            slot,
                            version: VERSION_CLEAN_INSERT,
                            crc,
                            len: 4096,
                            state: State::Clean,
                        },
                    );
                }
            }
            Op::MarkClean { line, current } => {
                let Some(e) = model.entries.get_mut(&line) else {
                    prop_assert!(!map.mark_clean(line, 7));
                    continue;
                };
                let version = if current { e.version } else { e.version + 1 };
                let cleaned = map.mark_clean(line, version);
                log.push(Record::Clean { line, version });
                prop_assert_eq!(cleaned, current);
                if current {
                    e.state = State::Clean;
                }
            }
            Op::Invalidate(line) => {
                let got = map.invalidate(line, model.seq);
                log.push(Record::Invalidate { line });
                let want = model.entries.remove(&line);
                prop_assert_eq!(got, want);
                if let Some(e) = want {
                    model.release(e.slot);
                }
                prop_assert_eq!(map.lookup(line), None);
            }
            Op::Evict => {
                let prepared_lines: BTreeSet<u64> = model.prepared.values().map(|p| p.0).collect();
                let evictable: BTreeSet<u64> = model
                    .entries
                    .iter()
                    .filter(|(l, e)| e.state == State::Clean && !prepared_lines.contains(l))
                    .map(|(&l, _)| l)
                    .collect();
                match map.evict(model.seq) {
                    None => prop_assert!(evictable.is_empty(), "None with {evictable:?} clean"),
                    Some(ev) => {
                        prop_assert!(evictable.contains(&ev.line), "evicted {}", ev.line);
                        log.push(Record::Invalidate { line: ev.line });
                        let e = model.entries.remove(&ev.line).unwrap();
                        prop_assert_eq!(e.slot, ev.slot);
                        model.release(e.slot);
                    }
                }
            }
            Op::NextSeq => model.seq += 1,
            Op::Durable { back } => {
                let seq = model.seq.saturating_sub(back);
                map.durable(seq);
                model.durable(seq);
            }
        }
        check(&map, &model)?;
    }
    // A checkpoint of the map rebuilds the same map (as after recovery: every
    // freeing slot is free, since everything recovered is durable).
    let restored = CacheMap::restore(slot_count, lines, map.entries(), map.prepared_all())
        .expect("a map's own state restores");
    restored.assert_invariants();
    prop_assert_eq!(restored.entries(), map.entries());
    prop_assert_eq!(restored.prepared_all(), map.prepared_all());
    let c = map.counts();
    let r = restored.counts();
    prop_assert_eq!(r.slots_free, c.slots_free + c.slots_freeing);

    // Recovery: the logged state (every line a tran wrote, every prepared tran)
    // comes back from the whole log, and from a checkpoint plus the log after it.
    // The checkpoint is exact (see `Replay`): a fuzzy one (replay from before the
    // snapshot's instant) loses a commit whose PREPARE precedes the checkpoint's
    // seq when an INVALIDATE of the line's older version falls between the two.
    let logged = |entries: Vec<(u64, Entry)>| -> Vec<(u64, Entry)> {
        entries
            .into_iter()
            .filter(|(_, e)| e.version != VERSION_CLEAN_INSERT)
            .collect()
    };
    let (snap_entries, snap_prepared, snap_log_len) =
        snapshot.unwrap_or_else(|| (map.entries(), map.prepared_all(), log.len()));
    let replays = [
        (Replay::default(), 0),
        (Replay::new(snap_entries, snap_prepared), snap_log_len),
    ];
    for (mut replay, from) in replays {
        for record in &log[from..] {
            replay.apply(record);
        }
        prop_assert_eq!(replay.in_doubt().collect::<Vec<_>>(), map.prepared_all());
        let rebuilt = replay
            .finish(slot_count, lines)
            .expect("a replayed log restores");
        rebuilt.assert_invariants();
        prop_assert_eq!(logged(rebuilt.entries()), logged(map.entries()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn map_agrees_with_a_model(
        lines in 1..8u64,
        spare in 1..4u64,
        ops in proptest::collection::vec(op(), 0..150),
        snap_at in any::<usize>(),
    ) {
        run(lines, spare, ops, snap_at)?;
    }
}

#[test]
fn old_slot_waits_for_durability() {
    let mut map = CacheMap::new(3, 2);
    let s1 = map.prepare(1, 10, 4096, 1).unwrap();
    map.commit(1, 5).unwrap();
    let s2 = map.prepare(2, 10, 4096, 2).unwrap();
    assert_ne!(s1, s2);
    let c = map.commit(2, 6).unwrap()[0];
    assert_eq!(c.slot_old, Some(s1));
    assert!(!map.is_free(s1));
    map.durable(5);
    assert!(!map.is_free(s1), "released at 6, durable only to 5");
    map.durable(6);
    assert!(map.is_free(s1));
    map.assert_invariants();
}

#[test]
fn full_says_what_to_wait_for() {
    // One line, one spare: a second prepare on another line finds no room.
    let mut map = CacheMap::new(2, 1);
    map.insert_clean(1, 4096, 0).unwrap();
    assert_eq!(
        map.prepare(1, 2, 4096, 0),
        Err(MapError::Full {
            line: 2,
            lines_clean: 1,
            seq_freeing_min: None
        })
    );
    let ev = map.evict(9).unwrap();
    assert_eq!(ev.line, 1);
    assert_eq!(
        map.prepare(1, 2, 4096, 0),
        Ok(1),
        "the evicted slot is not free yet, the other one is"
    );
    assert_eq!(
        map.prepare(2, 3, 4096, 0),
        Err(MapError::Full {
            line: 3,
            lines_clean: 0,
            seq_freeing_min: Some(9)
        })
    );
    map.durable(9);
    assert!(map.is_free(ev.slot));
}

#[test]
fn restore_refuses_a_slot_used_twice() {
    let e = Entry {
        slot: 1,
        version: 3,
        crc: 0,
        len: 4096,
        state: State::Dirty,
    };
    let got = CacheMap::restore(4, 3, [(1, e), (2, e)], []);
    assert!(
        matches!(got, Err(MapError::Restore { .. })),
        "{:?}",
        got.err()
    );
}

/// Why `Replay` needs an exact checkpoint: a snapshot that already reflects a
/// COMMIT whose PREPARE precedes the checkpoint's seq, replayed with an INVALIDATE
/// of the line's older version in between, loses the committed line.
#[test]
fn replay_from_an_exact_checkpoint_keeps_the_commit() {
    let mut map = CacheMap::new(4, 2);
    let mut log = Vec::new();
    let s1 = map.prepare(1, 5, 4096, 11).unwrap();
    log.push(Record::Prepare {
        tran: 1,
        line: 5,
        slot: s1,
        payload_crc: 11,
        len: 4096,
        part: 0,
        parts: 1,
    });
    map.commit(1, 1).unwrap();
    log.push(Record::Commit { tran: 1 });
    let s2 = map.prepare(2, 5, 4096, 22).unwrap();
    log.push(Record::Prepare {
        tran: 2,
        line: 5,
        slot: s2,
        payload_crc: 22,
        len: 4096,
        part: 0,
        parts: 1,
    });
    // The exact checkpoint: here, covering the three records above.
    let exact = (map.entries(), map.prepared_all(), log.len());
    map.invalidate(5, 2).unwrap();
    log.push(Record::Invalidate { line: 5 });
    map.commit(2, 2).unwrap();
    log.push(Record::Commit { tran: 2 });
    // A fuzzy snapshot taken now, claiming to cover only the first three records.
    let fuzzy = (map.entries(), map.prepared_all(), exact.2);

    let mut replay = Replay::new(exact.0, exact.1);
    log[exact.2..].iter().for_each(|r| replay.apply(r));
    let rebuilt = replay.finish(4, 2).unwrap();
    assert_eq!(rebuilt.lookup(5), map.lookup(5));
    assert_eq!(rebuilt.lookup(5).map(|e| e.version), Some(2));

    let mut replay = Replay::new(fuzzy.0, fuzzy.1);
    log[fuzzy.2..].iter().for_each(|r| replay.apply(r));
    let rebuilt = replay.finish(4, 2).unwrap();
    assert_eq!(rebuilt.lookup(5), None, "the fuzzy checkpoint loses tran 2");
}
