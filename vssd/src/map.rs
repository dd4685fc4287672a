//! The cache map: which slot holds each cached line, in which state, written by which
//! tran, with which payload CRC32C; the prepared (phase-1) versions; and the slot
//! allocator. Pure in-memory state machine, no I/O: the vSSD appends the log record
//! each operation names and does the payload I/O around it.
//!
//! # Roles of a slot
//!
//! Every slot is in exactly one role at every instant:
//!
//! - **free**: may be handed out by [`CacheMap::prepare`] / [`CacheMap::insert_clean`];
//! - **current**: the slot of a line's current version (clean or dirty);
//! - **prepared**: the slot of a prepared tran (PREPARE logged, no COMMIT/ABORT yet);
//! - **freeing**: released by a record at log sequence `seq`, reusable only once
//!   [`CacheMap::durable`] reports a durable prefix reaching `seq`.
//!
//! Why "freeing": a slot is released by a record (COMMIT releases the line's old
//! slot, ABORT the prepared one, INVALIDATE the invalidated or evicted line's one).
//! Until that record is durable, a crash replays the log without it, and the replay
//! maps the slot to its old content again (old version current, PREPARE in doubt,
//! line still cached). Writing another payload into the slot before then would let a
//! recovered read return bytes never written to that line. So `release(slot, seq)`
//! queues the slot, and `durable(seq)` moves to free every slot released at or
//! before `seq`. `seq` is the log block sequence of the releasing record.
//!
//! # Operations, and what the caller does around each
//!
//! | call | the caller | slots |
//! | --- | --- | --- |
//! | [`CacheMap::prepare`], [`CacheMap::prepare_lines`] (a tran of several lines: a slot each, all or none) | writes the payloads to the slots, appends the PREPAREs, waits for them | free -> prepared |
//! | [`CacheMap::commit`] (COMMIT's seq) | appends COMMIT | prepared -> current; old current -> freeing |
//! | [`CacheMap::abort`] (ABORT's seq) | appends ABORT | prepared -> freeing |
//! | [`CacheMap::insert_clean`] | writes the payload; no record | free -> current |
//! | [`CacheMap::mark_clean`] | appends CLEAN (after destage) | none |
//! | [`CacheMap::invalidate`] (INVALIDATE's seq) | appends INVALIDATE | current -> freeing |
//! | [`CacheMap::evict`] (INVALIDATE's seq) | appends INVALIDATE | current -> freeing |
//! | [`CacheMap::durable`] | reports the durable log prefix | freeing -> free |
//! | [`CacheMap::pin`] / [`CacheMap::unpin`] | reads or writes a slot meanwhile | a pinned slot stays freeing until unpinned |
//!
//! The `seq` given is the log block sequence the record goes to. The caller calls
//! the map in the order it appends the records, so seqs come nondecreasing; a seq
//! below an earlier one is raised to it (releasing later is always safe).
//!
//! `insert_clean` makes the line visible at once: the caller must keep readers of
//! the line away (the cache device's per-line lock) until the payload is written.
//!
//! # Eviction is logged
//!
//! Evicting a clean line could seem to need no record (the backing store has its
//! data). It does need one, an INVALIDATE, and its slot is released at that
//! record's seq like any other:
//!
//! - reusing the slot at once: a crash before the new PREPARE is durable replays the
//!   older PREPARE/COMMIT (or checkpoint) that maps the line to the slot, which now
//!   holds another line's bytes. The PREPARE's CRC would catch that on read, but
//!   only with probability 1 - 2^-32, and the invariant is absolute;
//! - not reusing it, without a record: a crash resurrects the line from the log,
//!   while the backing store may meanwhile have received a newer write for the line
//!   (write-around, write-through, or a destage of another copy) that did not
//!   invalidate an uncached line: a stale read whose CRC matches.
//!
//! With the record, recovery never maps an evicted line. The cost is that an
//! eviction frees its slot one group commit later. So [`CacheMap::prepare`] never
//! evicts by itself: it returns [`MapError::Full`] saying whether a clean line could
//! be evicted and which seq frees the next slot; the caller then calls
//! [`CacheMap::evict`] with the seq its INVALIDATE record gets, and waits for that
//! seq (or, with nothing clean and nothing freeing, for destage or a commit: the
//! backpressure of the issue, never a failure).
//!
//! # Invariants (checked by [`CacheMap::assert_invariants`] and the property test)
//!
//! 1. Every slot is in exactly one role; the counts of each role add up to `slot_count`.
//! 2. A line has at most one current version and at most **one prepared tran** at a
//!    time ([`MapError::LinePrepared`] otherwise): the DTM serialises writes to a
//!    line, and one prepared version per line keeps recovery's in-doubt resolution
//!    free of ordering questions between two trans of one line. A tran prepared on
//!    a cached line is above the tran of its version ([`MapError::TranOld`]): a
//!    line's versions grow, so [`CacheMap::mark_clean`] of a version destaged
//!    earlier never matches a newer one (its equality test would, were an id
//!    reused).
//! 3. A prepared slot is never the line's current slot (it comes from the free pool).
//! 4. Lines cached or prepared are at most `lines` (the capacity), so a commit never
//!    needs room it cannot find; the [`Evictor`] holds exactly those lines.
//! 5. A slot released at `seq` is not free before `durable(s)` with `s >= seq`.
//!
//! `mark_clean` takes no seq: it releases no slot. A CLEAN record lost in a crash
//! leaves the line dirty after recovery (destaged again, harmless), and an eviction
//! of the now clean line logs its INVALIDATE after the CLEAN, so it is durable only
//! after it.
//!
//! # Memory per cached line
//!
//! Everything but the B-tree index of cached lines is allocated by [`CacheMap::new`]
//! for the capacity and never grows; the index grows with the lines cached, at most
//! the capacity. Per line of capacity:
//!
//! - the line index, a std `HashMap<u64, Stored>` (hashbrown) made with room for
//!   `lines` entries: an 8-byte key, a 24-byte entry (the public 32-byte [`Entry`]
//!   packed: slot numbers fit a `u32`) and 1 control byte per bucket, the buckets a
//!   power of two at load <= 7/8: 37.7 to 75.4 bytes (66 when `lines` is a power
//!   of two);
//! - the [`Evictor`]: 34.8 to 50 bytes (its own documentation);
//! - the line index by state (two `BTreeSet<u64>`, each cached line in one): about
//!   19 bytes;
//! - per slot, 1 + 1/16 slots per line: the role byte, a 4-byte free-stack entry
//!   and a 16-byte freeing-queue entry (seq, slot), 22.3 bytes per line;
//! - the prepared trans: two hash maps with room for one tran per spare slot,
//!   about 6 bytes per line; each prepared tran keeps its lines in a vector of its
//!   own (32 bytes a line and one allocation, only while it is prepared).
//!
//! About 120 to 175 bytes per line of capacity: measured 149.8 at 2^12 and 2^16
//! lines (test `ram_per_line`, with a counting allocator; [`CacheMap::heap_bytes`]
//! gives the same figure from the capacities and the lines cached), so 1 GiB of 4 KiB
//! lines (2^18 lines) costs about 38 MiB of RAM. The hasher is std's SipHash: line numbers come from
//! clients, and a keyed hash keeps a crafted access pattern from degrading lookups.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::evict::{CAPACITY_MAX, Evictor, LINE_MAX};
use crate::record::PAYLOAD_LEN_MAX;

/// The version of a line filled from the backing store: no tran wrote it.
pub const VERSION_CLEAN_INSERT: u64 = 0;
/// The first tran id the vSSD hands out ([`crate::Vssd::next_tran_id`]): every tran
/// id is above [`VERSION_CLEAN_INSERT`].
pub const TRAN_FIRST: u64 = VERSION_CLEAN_INSERT + 1;

/// State of a line's current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Same data as the backing store: may be evicted.
    Clean = 1,
    /// Newer than the backing store: must be destaged before it can be evicted.
    Dirty = 2,
}

/// A line's current version: 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub slot: u64,
    /// The tran that wrote it; [`VERSION_CLEAN_INSERT`] for a fill from the backing store.
    pub version: u64,
    /// CRC32C of the payload.
    pub crc: u32,
    /// Payload bytes.
    pub len: u32,
    pub state: State,
}

/// How the map stores an [`Entry`]: 24 bytes (slot numbers fit a `u32`, see
/// [`CacheMap::new`]).
#[derive(Clone, Copy, Debug)]
struct Stored {
    version: u64,
    slot: u32,
    crc: u32,
    len: u32,
    state: State,
}

impl Stored {
    fn from_entry(e: Entry) -> Stored {
        Stored {
            version: e.version,
            slot: u32::try_from(e.slot).expect("slot below slot_count fits u32"),
            crc: e.crc,
            len: e.len,
            state: e.state,
        }
    }

    fn entry(self) -> Entry {
        Entry {
            slot: u64::from(self.slot),
            version: self.version,
            crc: self.crc,
            len: self.len,
            state: self.state,
        }
    }
}

const _: () = assert!(size_of::<Stored>() == 24);
const _: () = assert!(size_of::<Prepared>() == 32); // the memory figure of the module doc

/// One line of a prepared tran: its payload is in `slot`, not yet the line's
/// version. A tran of `parts` lines has one per line, `part` 0..`parts`, on lines
/// `first..first + parts` in order (a one-line tran: part 0 of 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prepared {
    pub line: u64,
    pub slot: u64,
    pub crc: u32,
    pub len: u32,
    pub part: u32,
    pub parts: u32,
}

/// Whether `parts` are all the lines of one tran, in order: part `i` at index `i` on
/// line `first + i`, each saying the same count.
pub fn parts_complete(parts: &[Prepared]) -> bool {
    let Some(first) = parts.first() else {
        return false;
    };
    parts.len() == first.parts as usize
        && parts.iter().enumerate().all(|(i, p)| {
            p.part as usize == i && p.parts == first.parts && p.line == first.line + i as u64
        })
}

/// What a commit did: `slot` is now `line`'s version; `slot_old` (if any) is freeing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub line: u64,
    pub slot: u64,
    pub slot_old: Option<u64>,
}

/// A line evicted by [`CacheMap::evict`]: the caller logs INVALIDATE(line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub line: u64,
    pub slot: u64,
}

/// Counts of lines and slots, kept up to date in O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub lines_dirty: u64,
    pub lines_clean: u64,
    /// Lines (slots) of prepared trans.
    pub prepared: u64,
    pub slots_free: u64,
    pub slots_freeing: u64,
}

/// Why an operation of the map was refused. None changes the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No free slot, or the map holds `lines` lines and `line` is a new one.
    #[error(
        "cache map full for line {line}: {lines_clean} clean lines to evict, next slot freed at seq {seq_freeing_min:?}"
    )]
    Full {
        line: u64,
        /// Clean lines (some may be unevictable while a write to them is prepared).
        lines_clean: u64,
        /// The seq whose durability frees the next slot, if any slot is freeing.
        seq_freeing_min: Option<u64>,
    },
    /// `line` already has prepared tran `tran_other` (one per line at a time).
    #[error("prepare tran {tran} on line {line}: tran {tran_other} is prepared on it")]
    LinePrepared {
        tran: u64,
        line: u64,
        tran_other: u64,
    },
    /// `tran` is not above the tran of `line`'s current version: versions of a line
    /// must grow, or a destage's mark of the older one could clean the newer.
    #[error(
        "prepare tran {tran} on line {line}: the line holds version {version}, a tran id must be above it"
    )]
    TranOld { tran: u64, line: u64, version: u64 },
    /// A tran of 0 lines, or of more than [`crate::record::TRAN_PARTS_MAX`].
    #[error("prepare tran {tran} on line {line}: {parts} lines, allowed 1..={max}")]
    Parts {
        tran: u64,
        line: u64,
        parts: usize,
        max: u32,
    },
    /// `tran` is prepared already.
    #[error("prepare tran {tran} on line {line}: the tran is prepared already")]
    TranPrepared { tran: u64, line: u64 },
    /// `tran` is not prepared here.
    #[error("{op} tran {tran}: not prepared")]
    UnknownTran { op: &'static str, tran: u64 },
    /// Tran 0 is [`VERSION_CLEAN_INSERT`].
    #[error("{op} tran 0: tran ids start at 1")]
    TranZero { op: &'static str },
    /// A line number the map cannot hold.
    #[error("{op} line {line}: above the highest line {max}")]
    LineRange {
        op: &'static str,
        line: u64,
        max: u64,
    },
    /// A payload length of 0 or over [`PAYLOAD_LEN_MAX`].
    #[error("{op} line {line}: payload length {len}, allowed 1..={max}")]
    Len {
        op: &'static str,
        line: u64,
        len: u32,
        max: u32,
    },
    /// `insert_clean` of a line that is cached already.
    #[error("insert_clean line {line}: cached already in slot {slot}")]
    Cached { line: u64, slot: u64 },
    /// A state given to [`CacheMap::restore`] that cannot be.
    #[error("restore: {why} (line {line}, slot {slot})")]
    Restore {
        why: &'static str,
        line: u64,
        slot: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Role {
    Free = 0,
    Current = 1,
    Prepared = 2,
    Freeing = 3,
}

/// The cache map of one vSSD. See the module documentation.
pub struct CacheMap {
    lines_max: u64,
    entries: HashMap<u64, Stored>,
    /// tran -> its prepared lines, in part order.
    prepared: HashMap<u64, Vec<Prepared>>,
    /// Slots held by prepared trans (their lines).
    prepared_slots: usize,
    /// line -> the tran prepared on it (invariant 2).
    prepared_lines: HashMap<u64, u64>,
    evictor: Evictor,
    roles: Vec<Role>,
    /// Free slots, used as a stack (recently freed slots are reused first).
    free: Vec<u32>,
    /// (seq, slot) in nondecreasing seq.
    freeing: VecDeque<(u64, u32)>,
    /// Slots being read or written by the I/O layer, with how many times each:
    /// such a slot is never handed out, even once its release is durable.
    pins: HashMap<u32, u32>,
    /// Freeing slots whose release is durable but which are still pinned: free at
    /// their last unpin.
    held: Vec<u32>,
    seq_durable: u64,
    /// The cached lines by state, in line order: ranges of them in work proportional
    /// to the lines in the range (destage order, DISCARD of a range).
    dirty: BTreeSet<u64>,
    clean: BTreeSet<u64>,
    /// Changes of `dirty` (a line in or out, or a new dirty version of one).
    dirty_generation: u64,
}

impl CacheMap {
    /// An empty map of `slot_count` slots for at most `lines` lines (a
    /// [`crate::layout::Geometry`]'s `slot_count()` and `lines()`). Every slot is free.
    pub fn new(slot_count: u64, lines: u64) -> CacheMap {
        assert!(lines >= 1, "cache map of 0 lines");
        assert!(
            lines <= CAPACITY_MAX,
            "cache map of {lines} lines, at most {CAPACITY_MAX}"
        );
        assert!(
            slot_count > lines,
            "cache map: {slot_count} slots for {lines} lines, needs spare slots"
        );
        // Slot numbers are stored as u32: the evictor's capacity bounds `lines`
        // far below, and the spare slots are a sixteenth of it.
        assert!(
            slot_count <= u64::from(u32::MAX),
            "cache map of {slot_count} slots, at most {}",
            u32::MAX
        );
        let slots = usize::try_from(slot_count).expect("slot count fits usize");
        let spare = usize::try_from(slot_count - lines).expect("fits usize");
        CacheMap {
            lines_max: lines,
            entries: HashMap::with_capacity(lines as usize),
            prepared: HashMap::with_capacity(spare),
            prepared_slots: 0,
            prepared_lines: HashMap::with_capacity(spare),
            evictor: Evictor::new(lines),
            roles: vec![Role::Free; slots],
            // Highest slot at the bottom, so slot 0 is handed out first.
            free: (0..slot_count as u32).rev().collect(),
            freeing: VecDeque::with_capacity(slots),
            pins: HashMap::new(),
            held: Vec::new(),
            seq_durable: 0,
            dirty: BTreeSet::new(),
            clean: BTreeSet::new(),
            dirty_generation: 0,
        }
    }

    /// Rebuilds a map from recovered state (checkpoint + replay, all durable):
    /// current versions and prepared (in-doubt) trans. Every other slot is free.
    pub fn restore(
        slot_count: u64,
        lines: u64,
        entries: impl IntoIterator<Item = (u64, Entry)>,
        prepared: impl IntoIterator<Item = (u64, Prepared)>,
    ) -> Result<CacheMap, MapError> {
        let mut map = CacheMap::new(slot_count, lines);
        for (line, e) in entries {
            map.check_line("restore", line)?;
            map.check_len("restore", line, e.len)?;
            let bad = |why| MapError::Restore {
                why,
                line,
                slot: e.slot,
            };
            if e.slot >= slot_count || map.roles[e.slot as usize] != Role::Free {
                return Err(bad("slot out of range or used twice"));
            }
            if map.entries.contains_key(&line) {
                return Err(bad("line twice"));
            }
            if map.evictor.is_full() {
                return Err(bad("more lines than the capacity"));
            }
            map.roles[e.slot as usize] = Role::Current;
            map.entries.insert(line, Stored::from_entry(e));
            map.evictor.insert(line);
            map.index_add(line, e.state);
        }
        for (tran, p) in prepared {
            if tran == 0 {
                return Err(MapError::TranZero { op: "restore" });
            }
            let parts_so_far = map.prepared.get(&tran).map_or(0, Vec::len);
            let first_line = map.prepared.get(&tran).map_or(p.line, |v| v[0].line);
            if p.part as usize != parts_so_far
                || p.part >= p.parts
                || p.line != first_line + u64::from(p.part)
            {
                return Err(MapError::Restore {
                    why: "a tran's lines out of order",
                    line: p.line,
                    slot: p.slot,
                });
            }
            map.check_line("restore", p.line)?;
            map.check_len("restore", p.line, p.len)?;
            let bad = |why| MapError::Restore {
                why,
                line: p.line,
                slot: p.slot,
            };
            if p.slot >= slot_count || map.roles[p.slot as usize] != Role::Free {
                return Err(bad("slot out of range or used twice"));
            }
            if map.prepared_lines.contains_key(&p.line) {
                return Err(bad("two prepared trans on one line, or one tran twice"));
            }
            if !map.evictor.contains(p.line) {
                if map.evictor.is_full() {
                    return Err(bad("more lines than the capacity"));
                }
                map.evictor.insert(p.line);
            }
            map.roles[p.slot as usize] = Role::Prepared;
            map.prepared.entry(tran).or_default().push(p);
            map.prepared_slots += 1;
            map.prepared_lines.insert(p.line, tran);
        }
        if let Some((_, parts)) = map.prepared.iter().find(|(_, v)| !parts_complete(v)) {
            return Err(MapError::Restore {
                why: "a tran with lines missing",
                line: parts[0].line,
                slot: parts[0].slot,
            });
        }
        map.free.retain(|&s| map.roles[s as usize] == Role::Free);
        Ok(map)
    }

    fn check_line(&self, op: &'static str, line: u64) -> Result<(), MapError> {
        if line > LINE_MAX {
            return Err(MapError::LineRange {
                op,
                line,
                max: LINE_MAX,
            });
        }
        Ok(())
    }

    fn check_len(&self, op: &'static str, line: u64, len: u32) -> Result<(), MapError> {
        if len == 0 || len > PAYLOAD_LEN_MAX {
            return Err(MapError::Len {
                op,
                line,
                len,
                max: PAYLOAD_LEN_MAX,
            });
        }
        Ok(())
    }

    fn full(&self, line: u64) -> MapError {
        MapError::Full {
            line,
            lines_clean: self.clean.len() as u64,
            seq_freeing_min: self.freeing.front().map(|&(seq, _)| seq),
        }
    }

    /// Room for a slot and, if `line` is neither cached nor prepared, for the line.
    fn check_room(&self, line: u64) -> Result<(), MapError> {
        self.check_room_lines(line, 1)
    }

    /// Room for `n` slots and for those of lines `first..first + n` that are neither
    /// cached nor prepared.
    fn check_room_lines(&self, first: u64, n: u64) -> Result<(), MapError> {
        let lines_new = (first..first + n)
            .filter(|&l| !self.evictor.contains(l))
            .count() as u64;
        if (self.free.len() as u64) < n || self.evictor.len() + lines_new > self.lines_max {
            return Err(self.full(first));
        }
        Ok(())
    }

    fn alloc(&mut self, role: Role) -> u64 {
        let slot = u64::from(self.free.pop().expect("check_room found a free slot"));
        assert_eq!(self.roles[slot as usize], Role::Free, "slot {slot}");
        self.roles[slot as usize] = role;
        slot
    }

    /// `slot` leaves its role; it becomes free once `seq` is durable. A seq below
    /// one released before is raised to it (releasing later is always safe), so the
    /// queue stays ordered.
    fn release(&mut self, slot: u64, seq: u64) {
        let role = self.roles[slot as usize];
        assert!(
            role == Role::Current || role == Role::Prepared,
            "release slot {slot} in role {role:?}"
        );
        let seq = self.freeing.back().map_or(seq, |&(last, _)| seq.max(last));
        if seq <= self.seq_durable {
            self.roles[slot as usize] = Role::Freeing;
            self.settle(slot as u32);
        } else {
            self.roles[slot as usize] = Role::Freeing;
            self.freeing.push_back((seq, slot as u32));
        }
    }

    /// Phase 1 of `tran` on `line`: a free slot for its payload (never the line's
    /// current slot). The caller writes the payload there and logs PREPARE(tran,
    /// line, slot, crc, len, part 0 of 1). [`CacheMap::prepare_lines`] of one line.
    pub fn prepare(&mut self, tran: u64, line: u64, len: u32, crc: u32) -> Result<u64, MapError> {
        Ok(self.prepare_lines(tran, line, &[(len, crc)])?[0])
    }

    /// Phase 1 of `tran` on lines `first..first + parts.len()`, `parts` giving each
    /// line's payload (length, CRC32C): a free slot for each (never a line's current
    /// slot), all or none: a writer never holds slots while it waits for more, so
    /// writers cannot deadlock on each other. The caller writes the payloads and logs
    /// one PREPARE per line, part 0 first.
    pub fn prepare_lines(
        &mut self,
        tran: u64,
        first: u64,
        parts: &[(u32, u32)],
    ) -> Result<Vec<u64>, MapError> {
        if tran == 0 {
            return Err(MapError::TranZero { op: "prepare" });
        }
        let n = parts.len();
        if n == 0 || n > crate::record::TRAN_PARTS_MAX as usize {
            return Err(MapError::Parts {
                tran,
                line: first,
                parts: n,
                max: crate::record::TRAN_PARTS_MAX,
            });
        }
        self.check_line("prepare", first.saturating_add(n as u64 - 1))?;
        for (i, &(len, _)) in parts.iter().enumerate() {
            self.check_len("prepare", first + i as u64, len)?;
        }
        if self.prepared.contains_key(&tran) {
            return Err(MapError::TranPrepared { tran, line: first });
        }
        for line in first..first + n as u64 {
            if let Some(&tran_other) = self.prepared_lines.get(&line) {
                return Err(MapError::LinePrepared {
                    tran,
                    line,
                    tran_other,
                });
            }
            if let Some(e) = self.entries.get(&line)
                && e.version != VERSION_CLEAN_INSERT
                && e.version >= tran
            {
                return Err(MapError::TranOld {
                    tran,
                    line,
                    version: e.version,
                });
            }
        }
        self.check_room_lines(first, n as u64)?;
        let mut slots = Vec::with_capacity(n);
        let mut prepared = Vec::with_capacity(n);
        for (i, &(len, crc)) in parts.iter().enumerate() {
            let line = first + i as u64;
            if self.evictor.contains(line) {
                self.evictor.touch(line);
            } else {
                self.evictor.insert(line);
            }
            let slot = self.alloc(Role::Prepared);
            debug_assert!(
                self.entries
                    .get(&line)
                    .is_none_or(|e| u64::from(e.slot) != slot)
            );
            prepared.push(Prepared {
                line,
                slot,
                crc,
                len,
                part: i as u32,
                parts: n as u32,
            });
            self.prepared_lines.insert(line, tran);
            slots.push(slot);
        }
        self.prepared_slots += n;
        self.prepared.insert(tran, prepared);
        Ok(slots)
    }

    /// `tran` committed, its COMMIT record at `seq`: the slot of each of its lines is
    /// the line's dirty version; the old versions' slots are freeing until `seq` is
    /// durable. What it did to each line, in line order.
    pub fn commit(&mut self, tran: u64, seq: u64) -> Result<Vec<Committed>, MapError> {
        let parts = self
            .prepared
            .remove(&tran)
            .ok_or(MapError::UnknownTran { op: "commit", tran })?;
        self.prepared_slots -= parts.len();
        Ok(parts
            .into_iter()
            .map(|p| self.commit_line(tran, p, seq))
            .collect())
    }

    fn commit_line(&mut self, tran: u64, p: Prepared, seq: u64) -> Committed {
        let removed = self.prepared_lines.remove(&p.line);
        assert_eq!(removed, Some(tran), "line {} prepared index", p.line);
        assert_eq!(self.roles[p.slot as usize], Role::Prepared);
        self.roles[p.slot as usize] = Role::Current;
        let new = Entry {
            slot: p.slot,
            version: tran,
            crc: p.crc,
            len: p.len,
            state: State::Dirty,
        };
        let old = self
            .entries
            .insert(p.line, Stored::from_entry(new))
            .map(Stored::entry);
        let slot_old = old.map(|e| {
            self.index_remove(p.line, e.state);
            self.release(e.slot, seq);
            e.slot
        });
        self.index_add(p.line, State::Dirty);
        Committed {
            line: p.line,
            slot: p.slot,
            slot_old,
        }
    }

    /// `tran` aborted, its ABORT record at `seq`: its slots are freeing until then.
    /// Its lines, in line order.
    pub fn abort(&mut self, tran: u64, seq: u64) -> Result<Vec<Prepared>, MapError> {
        let parts = self
            .prepared
            .remove(&tran)
            .ok_or(MapError::UnknownTran { op: "abort", tran })?;
        self.prepared_slots -= parts.len();
        for p in &parts {
            let removed = self.prepared_lines.remove(&p.line);
            assert_eq!(removed, Some(tran), "line {} prepared index", p.line);
            if !self.entries.contains_key(&p.line) {
                self.evictor.remove(p.line);
            }
            self.release(p.slot, seq);
        }
        Ok(parts)
    }

    fn index(&mut self, state: State) -> &mut BTreeSet<u64> {
        match state {
            State::Clean => &mut self.clean,
            State::Dirty => &mut self.dirty,
        }
    }

    fn index_add(&mut self, line: u64, state: State) {
        let added = self.index(state).insert(line);
        assert!(added, "line {line} indexed {state:?} twice");
        if state == State::Dirty {
            self.dirty_generation += 1;
        }
    }

    fn index_remove(&mut self, line: u64, state: State) {
        let removed = self.index(state).remove(&line);
        assert!(removed, "line {line} not indexed {state:?}");
        if state == State::Dirty {
            self.dirty_generation += 1;
        }
    }

    /// The dirty lines from `from` on, in line order, with their current versions.
    /// O(log n) to start, O(1) a line; copies nothing.
    pub fn dirty_from(&self, from: u64) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.dirty.range(from..).map(|&line| {
            let e = self.lookup(line).expect("a dirty line is cached");
            (line, e)
        })
    }

    /// Grows whenever the set of dirty lines or the version of one changes.
    pub fn dirty_generation(&self) -> u64 {
        self.dirty_generation
    }

    /// The current version of `line`, if cached. O(1), changes nothing.
    pub fn lookup(&self, line: u64) -> Option<Entry> {
        self.entries.get(&line).map(|s| s.entry())
    }

    /// A read hit: as [`CacheMap::lookup`], and tells the evictor.
    pub fn access(&mut self, line: u64) -> Option<Entry> {
        let e = self.lookup(line)?;
        self.evictor.touch(line);
        Some(e)
    }

    /// The tran prepared on `line`, if any.
    pub fn prepared_on(&self, line: u64) -> Option<u64> {
        self.prepared_lines.get(&line).copied()
    }

    /// The prepared lines of `tran`, in line order, if prepared.
    pub fn prepared(&self, tran: u64) -> Option<&[Prepared]> {
        self.prepared.get(&tran).map(Vec::as_slice)
    }

    /// The ids of the prepared trans, in no order.
    pub fn prepared_trans(&self) -> impl Iterator<Item = u64> + '_ {
        self.prepared.keys().copied()
    }

    /// A miss filled from the backing store: a free slot that becomes `line`'s
    /// clean version ([`VERSION_CLEAN_INSERT`]). No record: a crash forgets it. The
    /// caller must write the payload before any reader can look the line up.
    pub fn insert_clean(&mut self, line: u64, len: u32, crc: u32) -> Result<u64, MapError> {
        self.check_line("insert_clean", line)?;
        self.check_len("insert_clean", line, len)?;
        if let Some(e) = self.entries.get(&line) {
            return Err(MapError::Cached {
                line,
                slot: u64::from(e.slot),
            });
        }
        self.check_room(line)?;
        if !self.evictor.contains(line) {
            self.evictor.insert(line);
        }
        let slot = self.alloc(Role::Current);
        let e = Entry {
            slot,
            version: VERSION_CLEAN_INSERT,
            crc,
            len,
            state: State::Clean,
        };
        self.entries.insert(line, Stored::from_entry(e));
        self.index_add(line, State::Clean);
        Ok(slot)
    }

    /// `line` was destaged with the data of `version` (a CLEAN record): clean if
    /// its current version is still `version`; a newer write stays dirty. Returns
    /// whether the line is now clean.
    pub fn mark_clean(&mut self, line: u64, version: u64) -> bool {
        let Some(e) = self.entries.get_mut(&line) else {
            return false;
        };
        if e.version != version {
            return false;
        }
        if e.state == State::Dirty {
            e.state = State::Clean;
            self.index_remove(line, State::Dirty);
            self.index_add(line, State::Clean);
        }
        true
    }

    /// The first cached line (clean or dirty) in `from..end`, if any. O(log n).
    pub fn cached_from(&self, from: u64, end: u64) -> Option<u64> {
        if from >= end {
            return None;
        }
        let dirty = self.dirty.range(from..end).next();
        let clean = self.clean.range(from..end).next();
        dirty.into_iter().chain(clean).min().copied()
    }

    /// The seq of the newest slot release not yet durable, if any: once it is
    /// durable, so is every record that released a slot so far (an eviction's
    /// INVALIDATE among them).
    pub fn seq_releasing_last(&self) -> Option<u64> {
        self.freeing.back().map(|&(seq, _)| seq)
    }

    /// `line`'s current version is dropped (DISCARD), its INVALIDATE record at
    /// `seq`. A tran prepared on the line stays prepared.
    pub fn invalidate(&mut self, line: u64, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&line)?.entry();
        self.index_remove(line, e.state);
        if !self.prepared_lines.contains_key(&line) {
            self.evictor.remove(line);
        }
        self.release(e.slot, seq);
        Some(e)
    }

    /// Evicts one clean line with no prepared tran (S3-FIFO's choice); the caller
    /// logs INVALIDATE(line) at `seq`, and the slot is free once `seq` is durable.
    /// `None` if no line is evictable.
    pub fn evict(&mut self, seq: u64) -> Option<Evicted> {
        if self.clean.is_empty() {
            return None;
        }
        let entries = &self.entries;
        let prepared_lines = &self.prepared_lines;
        let line = self.evictor.victim(|l| {
            !prepared_lines.contains_key(&l)
                && entries.get(&l).is_some_and(|e| e.state == State::Clean)
        })?;
        let e = self
            .entries
            .remove(&line)
            .expect("victim is cached")
            .entry();
        assert_eq!(e.state, State::Clean, "evicted line {line}");
        self.index_remove(line, e.state);
        self.release(e.slot, seq);
        Some(Evicted { line, slot: e.slot })
    }

    /// Every log block up to `seq` is durable: slots released at or before it are free.
    pub fn durable(&mut self, seq: u64) {
        self.seq_durable = self.seq_durable.max(seq);
        while let Some(&(s, slot)) = self.freeing.front() {
            if s > self.seq_durable {
                break;
            }
            self.freeing.pop_front();
            self.settle(slot);
        }
    }

    /// A freeing slot whose release is durable: free, or held while pinned.
    fn settle(&mut self, slot: u32) {
        assert_eq!(self.roles[slot as usize], Role::Freeing, "slot {slot}");
        if self.pins.contains_key(&slot) {
            self.held.push(slot);
        } else {
            self.roles[slot as usize] = Role::Free;
            self.free.push(slot);
        }
    }

    /// The I/O layer reads or writes `slot`: it is not handed out again until the
    /// matching [`unpin`](CacheMap::unpin), whatever is released meanwhile.
    ///
    /// # Panics
    /// If `slot` is free (nothing to read there, and a write goes to a slot the map
    /// handed out) or out of range.
    pub fn pin(&mut self, slot: u64) {
        assert!(
            self.roles[slot as usize] != Role::Free,
            "pin of free slot {slot}"
        );
        *self.pins.entry(slot as u32).or_insert(0) += 1;
    }

    /// Ends one [`pin`](CacheMap::pin); returns whether the slot became free.
    pub fn unpin(&mut self, slot: u64) -> bool {
        let s = slot as u32;
        let count = self.pins.get_mut(&s).expect("unpin of a slot not pinned");
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.pins.remove(&s);
        let Some(at) = self.held.iter().position(|&h| h == s) else {
            return false;
        };
        self.held.swap_remove(at);
        self.roles[slot as usize] = Role::Free;
        self.free.push(s);
        true
    }

    /// The highest durable seq reported.
    pub fn seq_durable(&self) -> u64 {
        self.seq_durable
    }

    pub fn counts(&self) -> Counts {
        Counts {
            lines_dirty: self.dirty.len() as u64,
            lines_clean: self.clean.len() as u64,
            prepared: self.prepared_slots as u64,
            slots_free: self.free.len() as u64,
            slots_freeing: (self.freeing.len() + self.held.len()) as u64,
        }
    }

    pub fn slot_count(&self) -> u64 {
        self.roles.len() as u64
    }

    /// Capacity in lines.
    pub fn lines(&self) -> u64 {
        self.lines_max
    }

    /// Whether `slot` is free (for tests and assertions of the I/O layer).
    pub fn is_free(&self, slot: u64) -> bool {
        self.roles[slot as usize] == Role::Free
    }

    /// Current versions ordered by line, for a checkpoint. O(n log n), allocates.
    pub fn entries(&self) -> Vec<(u64, Entry)> {
        let mut v: Vec<(u64, Entry)> = self.entries.iter().map(|(&l, s)| (l, s.entry())).collect();
        v.sort_unstable_by_key(|&(l, _)| l);
        v
    }

    /// The lines of every prepared tran, ordered by tran then part, for a checkpoint.
    pub fn prepared_all(&self) -> Vec<(u64, Prepared)> {
        let mut v: Vec<(u64, Prepared)> = self
            .prepared
            .iter()
            .flat_map(|(&t, parts)| parts.iter().map(move |&p| (t, p)))
            .collect();
        v.sort_unstable_by_key(|&(t, p)| (t, p.part));
        v
    }

    /// Heap bytes held, estimated from the tables' capacities (hashbrown: buckets
    /// a power of two, `capacity` = 7/8 of them, one control byte per bucket).
    pub fn heap_bytes(&self) -> usize {
        fn table<K, V>(m: &HashMap<K, V>) -> usize {
            let cap = m.capacity();
            if cap == 0 {
                return 0;
            }
            let buckets = (cap * 8 / 7).next_power_of_two();
            buckets * (size_of::<(K, V)>() + 1) + 16
        }
        // A std B-tree set of u64: leaves of 11 keys (104 bytes), internal nodes with
        // 12 edges (200 bytes); about 7 keys a node (measured by `ram_per_line`).
        fn set(s: &BTreeSet<u64>) -> usize {
            const KEYS_PER_LEAF_AVG: usize = 7;
            let leaves = s.len().div_ceil(KEYS_PER_LEAF_AVG);
            leaves * 104 + leaves.div_ceil(KEYS_PER_LEAF_AVG) * 200
        }
        table(&self.entries)
            + set(&self.dirty)
            + set(&self.clean)
            + table(&self.prepared)
            + table(&self.prepared_lines)
            + self.evictor.heap_bytes()
            + self.roles.capacity() * size_of::<Role>()
            + self.free.capacity() * size_of::<u32>()
            + self.freeing.capacity() * size_of::<(u64, u32)>()
    }

    /// Checks every invariant of the module documentation; O(slots). For tests.
    #[doc(hidden)]
    pub fn assert_invariants(&self) {
        let mut role_count = [0u64; 4];
        for r in &self.roles {
            role_count[*r as usize] += 1;
        }
        assert_eq!(role_count[Role::Free as usize], self.free.len() as u64);
        assert_eq!(
            role_count[Role::Current as usize],
            self.entries.len() as u64
        );
        assert_eq!(
            role_count[Role::Prepared as usize],
            self.prepared_slots as u64
        );
        assert_eq!(
            self.prepared.values().map(Vec::len).sum::<usize>(),
            self.prepared_slots
        );
        assert_eq!(
            role_count[Role::Freeing as usize],
            (self.freeing.len() + self.held.len()) as u64
        );
        for &s in &self.held {
            assert_eq!(self.roles[s as usize], Role::Freeing, "held slot {s}");
            assert!(self.pins.contains_key(&s), "held slot {s} not pinned");
        }
        for &s in &self.free {
            assert_eq!(self.roles[s as usize], Role::Free, "free slot {s}");
        }
        let mut last = 0;
        for &(seq, s) in &self.freeing {
            assert_eq!(self.roles[s as usize], Role::Freeing, "freeing slot {s}");
            assert!(seq >= last && seq > self.seq_durable, "freeing seq {seq}");
            last = seq;
        }
        for (&line, e) in &self.entries {
            assert_eq!(self.roles[e.slot as usize], Role::Current, "line {line}");
            assert!(self.evictor.contains(line), "line {line} not in evictor");
            let (indexed, other) = match e.state {
                State::Clean => (&self.clean, &self.dirty),
                State::Dirty => (&self.dirty, &self.clean),
            };
            assert!(indexed.contains(&line), "line {line} not indexed");
            assert!(!other.contains(&line), "line {line} indexed twice");
        }
        assert_eq!(self.dirty.len() + self.clean.len(), self.entries.len());
        assert_eq!(self.prepared_slots, self.prepared_lines.len());
        for (&tran, p) in self
            .prepared
            .iter()
            .flat_map(|(t, v)| v.iter().map(move |p| (t, p)))
        {
            assert!(parts_complete(&self.prepared[&tran]), "tran {tran} parts");
            assert_eq!(self.roles[p.slot as usize], Role::Prepared, "tran {tran}");
            assert_eq!(self.prepared_lines.get(&p.line), Some(&tran));
            assert!(
                self.evictor.contains(p.line),
                "line {} not in evictor",
                p.line
            );
        }
        let lines_held = self.entries.len()
            + self
                .prepared_lines
                .keys()
                .filter(|l| !self.entries.contains_key(l))
                .count();
        assert_eq!(lines_held as u64, self.evictor.len());
        assert!(self.evictor.len() <= self.lines_max);
    }
}
