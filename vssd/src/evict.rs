//! Eviction: which clean line leaves the cache when a line must come in and no
//! slot is free. Pure in-memory bookkeeping over line numbers; no I/O.
//!
//! # Policy: S3-FIFO
//!
//! [`Evictor`] is S3-FIFO (Yang et al., "FIFO queues are all you need for cache
//! eviction", SOSP '23): a *small* FIFO holding about 10% of the lines, a *main*
//! FIFO holding the rest, a 2-bit access counter per line, and a *ghost* FIFO that
//! remembers (keys only, no data) lines recently evicted from the small queue.
//!
//! - A new line enters the small queue, or the main queue if the ghost remembers
//!   it (it came back soon after being thrown out: it is worth keeping).
//! - A hit only bumps the line's counter (saturating at [`FREQ_MAX`]); nothing
//!   moves.
//! - Evicting from the small queue looks at its oldest line: accessed at least
//!   [`SMALL_PROMOTE_FREQ_MIN`] times since insertion, it moves to the main queue
//!   (counter cleared); otherwise it is evicted and its key enters the ghost.
//! - Evicting from the main queue looks at its oldest line: counter above zero,
//!   it goes back to the head with the counter decremented (a 2-bit CLOCK);
//!   zero, it is evicted.
//! - The small queue is drained while it holds at least its target share
//!   ([`SMALL_PERCENT`] of the capacity), the main queue otherwise.
//!
//! Why this and not LRU, for a block cache:
//!
//! - *One-hit wonders and scans do not flush the hot set.* Storage traces are full
//!   of lines read once: sequential scans (backups, table scans, a VM booting,
//!   read-ahead), and the long cold tail of a skewed workload. LRU puts each of
//!   them at the head and pushes a hot line out for it, so one scan as long as the
//!   cache empties it. S3-FIFO lets them pass through the small queue only, which
//!   is 10% of the cache; the main queue, where the hot set lives, is untouched.
//!   The ghost repairs the one mistake this makes (a line that *is* reused but
//!   with a reuse distance longer than the small queue): on its return it goes
//!   straight to the main queue. The measured hit ratios are in the tests and in
//!   `examples/evict_hit_ratio.rs`: equal or better than LRU on a Zipf trace, much
//!   better on a Zipf trace mixed with scans.
//! - *A hit is a counter bump.* LRU moves the line to the head of a list on every
//!   hit: three or four pointer writes on the read path, in lock step with every
//!   other hit (one list, one lock, once the cache is shared). A hit here writes
//!   two bits of the line's own entry. The list work happens at eviction time,
//!   where a miss already pays a backing-store read.
//! - *O(1) amortised.* Each step of an eviction either evicts, moves a line from
//!   the small to the main queue (at most once per insertion), or decrements a
//!   counter (at most once per earlier hit): all paid for in advance.
//!
//! CLOCK-Pro was the other candidate: comparable hit ratios on storage traces,
//! but three hands and test/cold/hot states, harder to get right and to bound; 2Q
//! is S3-FIFO's ancestor with an LRU main queue, i.e. list moves on hits again.
//!
//! # Dirty lines: skipped, never evicted, never aged
//!
//! Only clean lines may be evicted (a dirty line exists nowhere else durably but in
//! the vSSDs of its device). [`Evictor::victim`] asks the caller, line by line,
//! whether the line it would evict (or, in the main queue, age) is evictable. A
//! line the caller refuses is
//! *skipped*: it stays in its queue with its counter unchanged, and goes to that
//! queue's head so that the next call does not look at it again first. Keeping it
//! at the tail would have every later call rescan the same dirty prefix (O(dirty
//! lines) per eviction); moving it to the head costs O(1) and makes the scan
//! cost per eviction proportional to the dirty share of the cache, which destage's
//! watermarks bound. Its counter is not decremented: a sweep that could not evict
//! a line must not make it look cold once destage has cleaned it.
//!
//! The scan is bounded. One call examines each line of the small queue at most
//! once and each line of the main queue at most `FREQ_MAX + 1` times, and stops
//! after the first pass over the main queue in which it met no clean line. So when
//! nothing is clean it costs one pass over the cached lines and returns `None`: the
//! caller then waits for destage (backpressure), it does not fail. It returns
//! `None` only if no cached line is evictable. A caller that knows no line is clean
//! (the cache map counts them) should wait without calling it.
//!
//! # Memory
//!
//! Everything is allocated by [`Evictor::new`] for the capacity and never grows.
//! Per line of capacity:
//!
//! - the line's entry: 16 bytes (line number, queue and counter packed in one
//!   `u64`, two `u32` list links);
//! - its bucket in the line index: 4 bytes (an entry number) at a load factor of at
//!   most 1/2 with a power-of-two table, so 8 to 16 bytes;
//! - the ghost, sized like the main queue (90% of the capacity): a 4-byte
//!   fingerprint per remembered line in a ring, plus a 4-byte bucket at load at
//!   most 1/2, so 0.9 x (12 to 20) bytes.
//!
//! Total: 34.8 to 50 bytes per line of capacity (below 50 at any capacity; 35.6
//! at 2^20 lines; [`Evictor::heap_bytes`] gives the exact figure, the tests check
//! it). The reference LRU, on the same entries and index, takes 24 to 32. The
//! ghost keeps 32-bit fingerprints, not line numbers: a collision only sends a new
//! line to the main queue instead of the small one, which costs a little hit
//! ratio, never correctness.
//!
//! # Limits
//!
//! At most [`CAPACITY_MAX`] lines (entry numbers are `u32`), line numbers at most
//! [`LINE_MAX`] (a line is at least 4 KiB, so 2^60 lines is far beyond any byte
//! offset that fits a `u64`).

use std::fmt;

#[doc(hidden)]
pub mod reference;
pub mod trace;

/// Highest value of a line's access counter (two bits).
pub const FREQ_MAX: u8 = 3;
/// A line leaving the small queue moves to the main queue if it was accessed at
/// least this many times since insertion; otherwise it is evicted. The paper's
/// "accessed at least once"; the example measures both 1 and 2 (`--promote 2`),
/// and 1 was as good or better on every trace and size there.
pub const SMALL_PROMOTE_FREQ_MIN: u8 = 1;
/// The small queue's target share of the capacity, in percent: the paper's 10%,
/// chosen there over many real traces. On our synthetic ones 5% and 20% came
/// within 0.7 points of it (example, `--small-percent`).
pub const SMALL_PERCENT: u64 = 10;
/// Most lines an evictor holds: entry numbers are `u32`, and `u32::MAX` is the
/// null link.
pub const CAPACITY_MAX: u64 = 1 << 31;
/// Highest line number: the top 4 bits of an entry's word hold its queue and counter.
pub const LINE_MAX: u64 = (1 << LINE_BITS) - 1;

const LINE_BITS: u32 = 60;
const FREQ_SHIFT: u32 = 60;
const QUEUE_SHIFT: u32 = 62;
/// The null entry number (end of a list, empty bucket).
const NIL: u32 = u32::MAX;
/// Hash table buckets per stored reference, at least: load factor at most 1/2, so
/// linear probes stay short.
const BUCKETS_PER_REF_MIN: usize = 2;

const _: () = assert!(FREQ_MAX as u64 <= 0b11, "the counter has two bits");
const _: () = assert!(SMALL_PROMOTE_FREQ_MIN >= 1 && SMALL_PROMOTE_FREQ_MIN <= FREQ_MAX);
const _: () = assert!(SMALL_PERCENT > 0 && SMALL_PERCENT < 100);
const _: () = assert!(CAPACITY_MAX < NIL as u64);
const _: () = assert!(FREQ_SHIFT >= LINE_BITS && QUEUE_SHIFT >= FREQ_SHIFT + 2);

/// A fast 64-bit mixer (murmur3's finaliser): every input bit changes every output
/// bit with probability 1/2, so strided line numbers (every 2^k-th line) spread over
/// the whole table instead of piling up in one cluster, as they would under the
/// identity or a plain multiply.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Which list an entry is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Queue {
    Free = 0,
    Small = 1,
    Main = 2,
}

/// One cached line: 16 bytes.
#[derive(Clone, Copy)]
struct Entry {
    /// Line number (bits 0..60), access counter (60..62), queue (62..64).
    word: u64,
    /// Toward the head (newer); `NIL` at the head.
    newer: u32,
    /// Toward the tail (older); `NIL` at the tail. On the free list: the next free entry.
    older: u32,
}

impl Entry {
    const FREE: Entry = Entry {
        word: 0,
        newer: NIL,
        older: NIL,
    };

    fn line(self) -> u64 {
        self.word & LINE_MAX
    }

    fn freq(self) -> u8 {
        ((self.word >> FREQ_SHIFT) & 0b11) as u8
    }

    fn queue(self) -> Queue {
        match self.word >> QUEUE_SHIFT {
            0 => Queue::Free,
            1 => Queue::Small,
            2 => Queue::Main,
            q => unreachable!("entry with queue tag {q}"),
        }
    }

    fn pack(line: u64, freq: u8, queue: Queue) -> u64 {
        debug_assert!(line <= LINE_MAX);
        debug_assert!(freq <= FREQ_MAX);
        line | (u64::from(freq) << FREQ_SHIFT) | ((queue as u64) << QUEUE_SHIFT)
    }
}

/// An open-addressing hash table of `u32` references whose keys live elsewhere
/// (entries, ghost ring): 4 bytes a bucket, linear probing, deletion by backward
/// shift (no tombstones, so probes never lengthen with churn).
struct RefTable {
    buckets: Box<[u32]>,
    len: usize,
    refs_max: usize,
}

impl RefTable {
    fn new(refs_max: usize) -> Self {
        let bucket_count = (refs_max * BUCKETS_PER_REF_MIN).max(2).next_power_of_two();
        RefTable {
            buckets: vec![NIL; bucket_count].into_boxed_slice(),
            len: 0,
            refs_max,
        }
    }

    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    fn home(&self, hash: u64) -> usize {
        // The mixer's high bits are as good as its low ones; truncation is the point.
        (hash as usize) & self.mask()
    }

    /// The bucket holding the first reference on `hash`'s probe chain for which
    /// `is_match` holds.
    fn find(&self, hash: u64, mut is_match: impl FnMut(u32) -> bool) -> Option<usize> {
        let mask = self.mask();
        let mut pos = self.home(hash);
        // At load <= 1/2 the table always has an empty bucket, which ends the probe;
        // the bound is belt and braces.
        for _ in 0..self.buckets.len() {
            let r = self.buckets[pos];
            if r == NIL {
                return None;
            }
            if is_match(r) {
                return Some(pos);
            }
            pos = (pos + 1) & mask;
        }
        None
    }

    fn insert(&mut self, hash: u64, r: u32) {
        assert!(r != NIL);
        assert!(
            self.len < self.refs_max,
            "RefTable over its bound {}",
            self.refs_max
        );
        let mask = self.mask();
        let mut pos = self.home(hash);
        while self.buckets[pos] != NIL {
            pos = (pos + 1) & mask;
        }
        self.buckets[pos] = r;
        self.len += 1;
    }

    /// Empties bucket `pos` and shifts back the references after it that could
    /// no longer be found (Knuth's algorithm R). `hash_of` gives a reference's hash.
    fn remove_at(&mut self, mut pos: usize, hash_of: impl Fn(u32) -> u64) {
        assert!(self.buckets[pos] != NIL);
        let mask = self.mask();
        self.buckets[pos] = NIL;
        self.len -= 1;
        let mut next = pos;
        loop {
            next = (next + 1) & mask;
            let r = self.buckets[next];
            if r == NIL {
                return;
            }
            let home = self.home(hash_of(r));
            // `r` stays if its home lies cyclically in (pos, next]: the hole at `pos`
            // is not on its probe path.
            let stays = if pos <= next {
                pos < home && home <= next
            } else {
                pos < home || home <= next
            };
            if !stays {
                self.buckets[pos] = r;
                self.buckets[next] = NIL;
                pos = next;
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.len() * size_of::<u32>()
    }
}

/// A doubly linked FIFO of entries: insertion at the head, eviction at the tail.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
    len: u64,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// The entries of every cached line, their free list and the line index.
/// Shared by [`Evictor`] and the reference LRU.
struct Slab {
    entries: Box<[Entry]>,
    free_head: u32,
    len: u64,
    index: RefTable,
}

impl Slab {
    fn new(capacity: u64) -> Self {
        assert!(capacity >= 1, "an evictor of zero lines");
        assert!(
            capacity <= CAPACITY_MAX,
            "evictor capacity {capacity} lines over the maximum {CAPACITY_MAX}"
        );
        let n = capacity as usize;
        let mut entries = vec![Entry::FREE; n].into_boxed_slice();
        for (i, e) in entries.iter_mut().enumerate() {
            e.older = if i + 1 < n { (i + 1) as u32 } else { NIL };
        }
        Slab {
            entries,
            free_head: 0,
            len: 0,
            index: RefTable::new(n),
        }
    }

    fn capacity(&self) -> u64 {
        self.entries.len() as u64
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn entry(&self, i: u32) -> Entry {
        self.entries[i as usize]
    }

    fn line(&self, i: u32) -> u64 {
        self.entry(i).line()
    }

    /// The entry of `line`, if cached.
    fn find(&self, line: u64) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(mix64(line), |r| entries[r as usize].line() == line)
            .map(|pos| self.index.buckets[pos])
    }

    /// Takes a free entry for `line` (not cached) on no list yet.
    fn alloc(&mut self, line: u64, queue: Queue) -> u32 {
        assert!(line <= LINE_MAX, "line {line} over the maximum {LINE_MAX}");
        assert!(self.len < self.capacity(), "alloc in a full slab");
        let i = self.free_head;
        assert!(i != NIL);
        let e = &mut self.entries[i as usize];
        assert_eq!(e.queue(), Queue::Free);
        self.free_head = e.older;
        *e = Entry {
            word: Entry::pack(line, 0, queue),
            newer: NIL,
            older: NIL,
        };
        self.index.insert(mix64(line), i);
        self.len += 1;
        i
    }

    /// Returns entry `i`, already off its list, to the free list.
    fn release(&mut self, i: u32) {
        let line = self.line(i);
        let pos = self
            .index
            .find(mix64(line), |r| r == i)
            .expect("a cached entry is in the index");
        let entries = &self.entries;
        self.index
            .remove_at(pos, |r| mix64(entries[r as usize].line()));
        self.entries[i as usize] = Entry {
            older: self.free_head,
            ..Entry::FREE
        };
        self.free_head = i;
        self.len -= 1;
    }

    fn set_freq(&mut self, i: u32, freq: u8) {
        let e = &mut self.entries[i as usize];
        e.word = Entry::pack(e.line(), freq, e.queue());
    }

    fn set_queue(&mut self, i: u32, queue: Queue) {
        let e = &mut self.entries[i as usize];
        e.word = Entry::pack(e.line(), e.freq(), queue);
    }

    fn push_head(&mut self, list: &mut List, i: u32) {
        let old_head = list.head;
        {
            let e = &mut self.entries[i as usize];
            e.newer = NIL;
            e.older = old_head;
        }
        if old_head == NIL {
            list.tail = i;
        } else {
            self.entries[old_head as usize].newer = i;
        }
        list.head = i;
        list.len += 1;
    }

    fn unlink(&mut self, list: &mut List, i: u32) {
        let Entry { newer, older, .. } = self.entry(i);
        if newer == NIL {
            list.head = older;
        } else {
            self.entries[newer as usize].older = older;
        }
        if older == NIL {
            list.tail = newer;
        } else {
            self.entries[older as usize].newer = newer;
        }
        list.len -= 1;
    }

    /// Moves entry `i` of `list` to its head.
    fn move_to_head(&mut self, list: &mut List, i: u32) {
        if list.head != i {
            self.unlink(list, i);
            self.push_head(list, i);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.entries.len() * size_of::<Entry>() + self.index.heap_bytes()
    }

    /// Walks `list`, checking its links and tags; returns its lines.
    fn check_list(&self, list: &List, queue: Queue) -> Vec<u64> {
        let mut lines = Vec::new();
        let mut newer = NIL;
        let mut i = list.head;
        while i != NIL {
            assert!(
                (lines.len() as u64) < list.len,
                "{queue:?} list longer than its len"
            );
            let e = self.entry(i);
            assert_eq!(e.queue(), queue);
            assert_eq!(e.newer, newer);
            assert!(e.freq() <= FREQ_MAX);
            assert_eq!(
                self.find(e.line()),
                Some(i),
                "line {} not indexed",
                e.line()
            );
            lines.push(e.line());
            newer = i;
            i = e.older;
        }
        assert_eq!(list.tail, newer);
        assert_eq!(lines.len() as u64, list.len);
        lines
    }

    fn check_free(&self) {
        let mut free = 0u64;
        let mut i = self.free_head;
        while i != NIL {
            assert!(free < self.capacity());
            assert_eq!(self.entry(i).queue(), Queue::Free);
            free += 1;
            i = self.entry(i).older;
        }
        assert_eq!(free + self.len, self.capacity());
        assert_eq!(self.index.len as u64, self.len);
    }
}

/// Lines recently evicted from the small queue, as 32-bit fingerprints in a ring of
/// fixed size; a table finds a fingerprint's ring position.
struct Ghost {
    fingerprints: Box<[u32]>,
    /// How many fingerprints were ever pushed; the next goes to `pushed % len`.
    pushed: u64,
    /// Ring positions of the remembered fingerprints (a position leaves when its
    /// line comes back, or when the ring overwrites it).
    table: RefTable,
}

impl Ghost {
    fn new(entries_max: u64) -> Self {
        Ghost {
            fingerprints: vec![0; entries_max as usize].into_boxed_slice(),
            pushed: 0,
            table: RefTable::new(entries_max as usize),
        }
    }

    fn fingerprint(line: u64) -> u32 {
        (mix64(line) >> 32) as u32
    }

    fn pos_hash(fingerprints: &[u32], pos: u32) -> u64 {
        mix64(u64::from(fingerprints[pos as usize]))
    }

    fn push(&mut self, line: u64) {
        let ring_len = self.fingerprints.len() as u64;
        if ring_len == 0 {
            return;
        }
        let pos = (self.pushed % ring_len) as u32;
        if self.pushed >= ring_len {
            // The oldest fingerprint falls out, unless its line already came back.
            let fps = &self.fingerprints;
            let hash = Self::pos_hash(fps, pos);
            if let Some(at) = self.table.find(hash, |r| r == pos) {
                self.table.remove_at(at, |r| Self::pos_hash(fps, r));
            }
        }
        let fp = Self::fingerprint(line);
        self.fingerprints[pos as usize] = fp;
        self.table.insert(mix64(u64::from(fp)), pos);
        self.pushed += 1;
    }

    /// Forgets `line` and says whether it was remembered.
    fn take(&mut self, line: u64) -> bool {
        let fp = Self::fingerprint(line);
        let fps = &self.fingerprints;
        match self
            .table
            .find(mix64(u64::from(fp)), |r| fps[r as usize] == fp)
        {
            Some(at) => {
                self.table.remove_at(at, |r| Self::pos_hash(fps, r));
                true
            }
            None => false,
        }
    }

    fn len(&self) -> u64 {
        self.table.len as u64
    }

    fn heap_bytes(&self) -> usize {
        self.fingerprints.len() * size_of::<u32>() + self.table.heap_bytes()
    }

    /// Every remembered position is in the ring, written, and findable.
    fn check(&self) {
        let ring_len = self.fingerprints.len() as u64;
        let mut refs = 0;
        for (at, &r) in self.table.buckets.iter().enumerate() {
            if r == NIL {
                continue;
            }
            refs += 1;
            assert!(u64::from(r) < ring_len.min(self.pushed));
            let hash = Self::pos_hash(&self.fingerprints, r);
            assert_eq!(self.table.find(hash, |q| q == r), Some(at));
        }
        assert_eq!(refs, self.table.len);
        assert!(self.table.len as u64 <= ring_len);
    }
}

/// S3-FIFO over the lines of a cache of fixed capacity, evicting only lines the
/// caller says are evictable. See the module documentation.
pub struct Evictor {
    slab: Slab,
    small: List,
    main: List,
    /// The small queue's target length: it is drained first while at least this long.
    small_target: u64,
    /// See [`SMALL_PROMOTE_FREQ_MIN`].
    promote_freq_min: u8,
    ghost: Ghost,
}

/// The two knobs of S3-FIFO, for experiments (`examples/evict_hit_ratio.rs`);
/// [`Evictor::new`] uses the constants.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub small_percent: u64,
    pub promote_freq_min: u8,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            small_percent: SMALL_PERCENT,
            promote_freq_min: SMALL_PROMOTE_FREQ_MIN,
        }
    }
}

impl Evictor {
    /// An empty evictor for a cache of `capacity` lines (1 ..= [`CAPACITY_MAX`]).
    /// Allocates everything it will ever use.
    pub fn new(capacity: u64) -> Self {
        Self::with_tuning(capacity, Tuning::default())
    }

    #[doc(hidden)]
    pub fn with_tuning(capacity: u64, tuning: Tuning) -> Self {
        assert!(tuning.small_percent > 0 && tuning.small_percent < 100);
        assert!(tuning.promote_freq_min >= 1 && tuning.promote_freq_min <= FREQ_MAX);
        let slab = Slab::new(capacity);
        let small_target = (capacity * tuning.small_percent / 100).max(1);
        Evictor {
            slab,
            small: List::EMPTY,
            main: List::EMPTY,
            small_target,
            promote_freq_min: tuning.promote_freq_min,
            // As in the paper, the ghost remembers as many lines as the main queue holds.
            ghost: Ghost::new(capacity - small_target),
        }
    }

    /// Lines the cache holds at most.
    pub fn capacity(&self) -> u64 {
        self.slab.capacity()
    }

    /// Lines cached now.
    pub fn len(&self) -> u64 {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    pub fn contains(&self, line: u64) -> bool {
        self.slab.find(line).is_some()
    }

    /// `line` entered the cache. It must not be cached already, and the cache must
    /// not be full (call [`Evictor::victim`] first).
    pub fn insert(&mut self, line: u64) {
        assert!(
            line <= LINE_MAX,
            "evict insert: line {line} over {LINE_MAX}"
        );
        assert!(
            !self.contains(line),
            "evict insert: line {line} is already cached"
        );
        assert!(
            !self.is_full(),
            "evict insert: line {line} into a full cache of {} lines",
            self.capacity()
        );
        if self.ghost.take(line) {
            let i = self.slab.alloc(line, Queue::Main);
            self.slab.push_head(&mut self.main, i);
        } else {
            let i = self.slab.alloc(line, Queue::Small);
            self.slab.push_head(&mut self.small, i);
        }
    }

    /// A hit on cached `line`: bumps its counter, moves nothing.
    pub fn touch(&mut self, line: u64) {
        let hit = self.touch_if_cached(line);
        assert!(hit, "evict touch: line {line} is not cached");
    }

    fn touch_if_cached(&mut self, line: u64) -> bool {
        match self.slab.find(line) {
            Some(i) => {
                let freq = self.slab.entry(i).freq();
                if freq < FREQ_MAX {
                    self.slab.set_freq(i, freq + 1);
                }
                true
            }
            None => false,
        }
    }

    /// Cached `line` left the cache without being a victim (invalidated,
    /// discarded): it is forgotten, and not remembered by the ghost.
    pub fn remove(&mut self, line: u64) {
        let i = self
            .slab
            .find(line)
            .unwrap_or_else(|| panic!("evict remove: line {line} is not cached"));
        match self.slab.entry(i).queue() {
            Queue::Small => self.slab.unlink(&mut self.small, i),
            Queue::Main => self.slab.unlink(&mut self.main, i),
            Queue::Free => unreachable!("an indexed entry is on a list"),
        }
        self.slab.release(i);
    }

    /// Chooses one line that `is_evictable` accepts, removes it and returns it;
    /// `None` if no cached line is evictable (the caller waits for destage).
    ///
    /// `is_evictable` is asked only about cached lines, and should answer the same
    /// for a line throughout one call. Lines it refuses stay cached with their
    /// counters (see the module documentation for the bound on the scan).
    pub fn victim(&mut self, mut is_evictable: impl FnMut(u64) -> bool) -> Option<u64> {
        let line = if self.small.len >= self.small_target || self.main.len == 0 {
            // If the small queue yields nothing, each of its lines was refused or
            // promoted to the main queue, which is examined next.
            self.evict_small(&mut is_evictable)
                .or_else(|| self.evict_main(&mut is_evictable))
        } else {
            // If the main queue holds nothing evictable: the small queue's oldest
            // evictable line, though the small queue is below its target.
            self.evict_main(&mut is_evictable)
                .or_else(|| self.evict_small_any(&mut is_evictable))
        };
        if let Some(line) = line {
            debug_assert!(!self.contains(line));
        }
        line
    }

    /// One pass over the small queue from its tail: promotes accessed lines to the
    /// main queue, evicts the first unaccessed evictable line.
    fn evict_small(&mut self, is_evictable: &mut impl FnMut(u64) -> bool) -> Option<u64> {
        let examined_max = self.small.len;
        for _ in 0..examined_max {
            let i = self.small.tail;
            assert!(i != NIL);
            let e = self.slab.entry(i);
            if e.freq() >= self.promote_freq_min {
                self.slab.unlink(&mut self.small, i);
                self.slab.set_freq(i, 0);
                self.slab.set_queue(i, Queue::Main);
                self.slab.push_head(&mut self.main, i);
            } else if is_evictable(e.line()) {
                self.slab.unlink(&mut self.small, i);
                self.slab.release(i);
                self.ghost.push(e.line());
                return Some(e.line());
            } else {
                self.slab.move_to_head(&mut self.small, i);
            }
        }
        None
    }

    /// The small queue's oldest evictable line, whatever its counter. Used only
    /// when the main queue has nothing evictable, so rare: it walks without moving.
    fn evict_small_any(&mut self, is_evictable: &mut impl FnMut(u64) -> bool) -> Option<u64> {
        let mut i = self.small.tail;
        while i != NIL {
            let e = self.slab.entry(i);
            if is_evictable(e.line()) {
                self.slab.unlink(&mut self.small, i);
                self.slab.release(i);
                self.ghost.push(e.line());
                return Some(e.line());
            }
            i = e.newer;
        }
        None
    }

    /// The main queue's 2-bit CLOCK: from the tail, an evictable line with a zero
    /// counter is evicted, one with a counter goes to the head one count lower, a
    /// refused line goes to the head unchanged. Stops after a pass that met no
    /// evictable line; after at most `FREQ_MAX + 1` passes any evictable line has
    /// reached zero.
    fn evict_main(&mut self, is_evictable: &mut impl FnMut(u64) -> bool) -> Option<u64> {
        let pass_len = self.main.len;
        let passes_max = u64::from(FREQ_MAX) + 1;
        for _pass in 0..passes_max {
            let mut evictable_seen = false;
            for _ in 0..pass_len {
                let i = self.main.tail;
                assert!(i != NIL);
                let e = self.slab.entry(i);
                if !is_evictable(e.line()) {
                    self.slab.move_to_head(&mut self.main, i);
                } else if e.freq() > 0 {
                    evictable_seen = true;
                    self.slab.set_freq(i, e.freq() - 1);
                    self.slab.move_to_head(&mut self.main, i);
                } else {
                    self.slab.unlink(&mut self.main, i);
                    self.slab.release(i);
                    return Some(e.line());
                }
            }
            if !evictable_seen {
                return None;
            }
        }
        // Reached only if `is_evictable` changed its answers within the call.
        None
    }

    /// Bytes of heap this evictor holds (fixed from `new` on).
    pub fn heap_bytes(&self) -> usize {
        self.slab.heap_bytes() + self.ghost.heap_bytes()
    }

    /// Lines the ghost remembers now (at most the main queue's share of capacity).
    pub fn ghost_len(&self) -> u64 {
        self.ghost.len()
    }

    /// Checks every structural invariant; O(capacity). For tests.
    #[doc(hidden)]
    pub fn assert_invariants(&self) {
        let small = self.slab.check_list(&self.small, Queue::Small);
        let main = self.slab.check_list(&self.main, Queue::Main);
        assert_eq!(small.len() as u64 + main.len() as u64, self.len());
        assert!(self.len() <= self.capacity());
        self.slab.check_free();
        self.ghost.check();
        assert!(self.ghost.len() <= self.capacity());
    }
}

impl fmt::Debug for Evictor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evictor")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("small_len", &self.small.len)
            .field("small_target", &self.small_target)
            .field("main_len", &self.main.len)
            .field("ghost_len", &self.ghost.len())
            .finish()
    }
}

/// A cache replacement policy driven by a trace of accesses, for measuring hit
/// ratios: every line is evictable.
pub trait Policy {
    /// One access to `line`: `true` on a hit. On a miss the line is admitted,
    /// after evicting one line if the cache is full.
    fn access(&mut self, line: u64) -> bool;
    /// A short name for tables.
    fn name(&self) -> &'static str;
}

impl Policy for Evictor {
    fn access(&mut self, line: u64) -> bool {
        if self.touch_if_cached(line) {
            return true;
        }
        if self.is_full() {
            let evicted = self.victim(|_| true);
            assert!(evicted.is_some(), "a full cache of clean lines evicts");
        }
        self.insert(line);
        false
    }

    fn name(&self) -> &'static str {
        "S3-FIFO"
    }
}

/// The fraction of `trace`'s accesses that hit under `policy` (0 for an empty trace).
pub fn hit_ratio(policy: &mut impl Policy, trace: impl Iterator<Item = u64>) -> f64 {
    let mut accesses = 0u64;
    let mut hits = 0u64;
    for line in trace {
        accesses += 1;
        hits += u64::from(policy.access(line));
    }
    if accesses == 0 {
        0.0
    } else {
        hits as f64 / accesses as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_16_bytes() {
        assert_eq!(size_of::<Entry>(), 16);
    }

    #[test]
    fn entry_packs_line_freq_queue() {
        let e = Entry {
            word: Entry::pack(LINE_MAX, FREQ_MAX, Queue::Main),
            newer: NIL,
            older: NIL,
        };
        assert_eq!(e.line(), LINE_MAX);
        assert_eq!(e.freq(), FREQ_MAX);
        assert_eq!(e.queue(), Queue::Main);
    }

    #[test]
    fn ref_table_survives_churn_on_colliding_homes() {
        // Every reference on the same few homes: long clusters, many backward shifts.
        let keys: Vec<u64> = (0..64).collect();
        let hash = |r: u32| keys[r as usize] % 3;
        let mut t = RefTable::new(64);
        let mut present = [false; 64];
        let mut x = 7u64;
        for _ in 0..5000 {
            x = mix64(x);
            let r = (x % 64) as u32;
            let found = t.find(hash(r), |q| q == r);
            assert_eq!(found.is_some(), present[r as usize]);
            match found {
                Some(at) => t.remove_at(at, hash),
                None => t.insert(hash(r), r),
            }
            present[r as usize] = !present[r as usize];
            for q in 0..64u32 {
                assert_eq!(t.find(hash(q), |s| s == q).is_some(), present[q as usize]);
            }
        }
    }

    #[test]
    fn ghost_is_a_bounded_fifo() {
        let mut g = Ghost::new(4);
        for line in 0..10 {
            g.push(line);
            assert!(g.len() <= 4);
        }
        // 6..10 remembered, 0..6 fell out.
        for line in 0..6 {
            assert!(!g.take(line), "line {line}");
        }
        for line in 6..10 {
            assert!(g.take(line), "line {line}");
            assert!(!g.take(line), "taken twice: line {line}");
        }
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn ghost_hit_goes_to_main() {
        let mut ev = Evictor::new(10);
        for line in 0..10 {
            ev.insert(line);
        }
        assert_eq!(ev.victim(|_| true), Some(0));
        ev.insert(100);
        assert_eq!(ev.victim(|_| true), Some(1));
        ev.insert(0);
        assert_eq!(ev.slab.entry(ev.slab.find(0).unwrap()).queue(), Queue::Main);
        ev.assert_invariants();
    }

    #[test]
    fn refused_line_keeps_its_counter() {
        let mut ev = Evictor::new(20);
        for line in 0..20 {
            ev.insert(line);
        }
        // Drain the small queue below its target: everything accessed moves to main.
        for line in 0..20 {
            ev.touch(line);
        }
        for line in 0..20 {
            ev.touch(line);
        }
        // Every line is promoted to main with its counter cleared; only 19 may go.
        let v = ev.victim(|l| l == 19);
        assert_eq!(v, Some(19));
        // Nothing else evictable: None, after one pass, and counters untouched.
        ev.touch(5);
        let before = ev.slab.entry(ev.slab.find(5).unwrap()).freq();
        assert_eq!(ev.victim(|_| false), None);
        assert_eq!(ev.slab.entry(ev.slab.find(5).unwrap()).freq(), before);
        ev.assert_invariants();
    }
}
