//! The RAM tier of a cache device: copies of the lines it read or wrote lately, at
//! most `ram_cache_bytes` of them (whole lines, evicted by CLOCK), served before the
//! vSSD: a read hit there costs a memory copy instead of an O_DIRECT read of the
//! virtual disk.
//!
//! A copy is the line's bytes as the device serves them, not the vSSD's copy: a line
//! evicted from the vSSD clean keeps its RAM copy (the backing store holds those
//! bytes). Coherence rests on two rules, both held by the device's one helper for
//! changes (`Inner::changing` in `device.rs`):
//! - every path that changes a line's bytes (write, read-modify-write, discard,
//!   zeroing) calls [`RamCache::invalidate`] on its lines before it starts and again
//!   when it ends, whatever its outcome;
//! - a copy made from an I/O that may have yielded (a vSSD or backing read, a write)
//!   is kept only when no invalidation touched its line since a [`Stamp`] taken
//!   before that I/O started ([`RamCache::fill`] checks): a write that completed
//!   meanwhile is never undone by an older read's copy.
//!
//! The stamps live in [`STAMP_STRIPES`] stripes (a line's is `line % STAMP_STRIPES`),
//! so that they take constant memory: two lines sharing a stripe only cost a refused
//! fill, never a stale copy.

use std::collections::HashMap;

/// Stripes of change stamps per device (8 bytes each).
pub const STAMP_STRIPES: usize = 4096;
/// The largest `ram_cache_bytes` a device may have.
pub const RAM_CACHE_BYTES_MAX: u64 = 64 << 30;
/// A device's `ram_cache_bytes` unless its configuration says otherwise.
pub const RAM_CACHE_BYTES_DEFAULT: u64 = 64 << 20;

const _: () = assert!(STAMP_STRIPES.is_power_of_two());
const _: () = assert!(RAM_CACHE_BYTES_DEFAULT <= RAM_CACHE_BYTES_MAX);
const _: () = assert!(RAM_CACHE_BYTES_MAX / vssd::layout::LINE_SIZE_MIN as u64 <= u32::MAX as u64);

/// The change count when an I/O started (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

/// The lines held in RAM, at most `slots_max` of them.
pub struct RamCache {
    line_size: usize,
    slots_max: usize,
    /// One line's bytes per slot, allocated when first used: at most `slots_max`.
    bufs: Vec<Box<[u8]>>,
    /// The line each slot holds (`None`: free, on `free`).
    slot_line: Vec<Option<u64>>,
    /// CLOCK's reference bit of each slot: set by a hit, cleared by the hand.
    referenced: Vec<bool>,
    free: Vec<usize>,
    index: HashMap<u64, usize>,
    hand: usize,
    /// Invalidations so far; `stripes[s]` is the count at the last one of a line of
    /// stripe `s`.
    changes: u64,
    stripes: Box<[u64]>,
    evictions: u64,
}

impl RamCache {
    /// A tier of `bytes` (rounded down to whole lines of `line_size`; 0: none, every
    /// fill refused).
    pub fn new(bytes: u64, line_size: u32) -> RamCache {
        assert!(line_size.is_power_of_two(), "line size {line_size}");
        assert!(bytes <= RAM_CACHE_BYTES_MAX, "ram cache of {bytes} bytes");
        RamCache {
            line_size: line_size as usize,
            slots_max: (bytes / u64::from(line_size)) as usize,
            bufs: Vec::new(),
            slot_line: Vec::new(),
            referenced: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            hand: 0,
            changes: 0,
            stripes: vec![0; STAMP_STRIPES].into_boxed_slice(),
            evictions: 0,
        }
    }

    /// Bytes of line copies allocated (at most the configured bound).
    pub fn bytes(&self) -> u64 {
        (self.bufs.len() * self.line_size) as u64
    }

    /// Lines held now.
    pub fn lines(&self) -> u64 {
        self.index.len() as u64
    }

    /// Lines evicted to make room for others so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Taken before an I/O whose bytes [`RamCache::fill`] may keep.
    pub fn stamp(&self) -> Stamp {
        Stamp(self.changes)
    }

    /// `line`'s copy, if held.
    pub fn get(&mut self, line: u64) -> Option<&[u8]> {
        let &slot = self.index.get(&line)?;
        self.referenced[slot] = true;
        Some(&self.bufs[slot])
    }

    /// Drops the copies of lines `first..first + n` (whose bytes are changing) and
    /// makes every fill stamped before now refuse them. Costs at most
    /// min(n, lines held + [`STAMP_STRIPES`]) steps.
    pub fn invalidate(&mut self, first: u64, n: u64) {
        self.changes += 1;
        let end = first.saturating_add(n);
        if n >= STAMP_STRIPES as u64 {
            self.stripes.fill(self.changes);
        } else {
            for line in first..end {
                self.stripes[stripe(line)] = self.changes;
            }
        }
        if n <= self.index.len() as u64 {
            for line in first..end {
                if let Some(slot) = self.index.remove(&line) {
                    self.free_slot(slot);
                }
            }
        } else {
            let held: Vec<u64> = self
                .index
                .keys()
                .copied()
                .filter(|l| (first..end).contains(l))
                .collect();
            for line in held {
                if let Some(slot) = self.index.remove(&line) {
                    self.free_slot(slot);
                }
            }
        }
    }

    /// Keeps `data` (a line's bytes) as `line`'s copy unless an invalidation of it
    /// came after `since` or the tier is off. Whether it was kept.
    pub fn fill(&mut self, line: u64, data: &[u8], since: Stamp) -> bool {
        assert_eq!(data.len(), self.line_size, "fill of line {line}");
        if self.slots_max == 0 || self.stripes[stripe(line)] > since.0 {
            return false;
        }
        let slot = match self.index.get(&line) {
            Some(&slot) => slot,
            None => {
                let slot = self.take_slot();
                self.slot_line[slot] = Some(line);
                // A new copy earns its reference bit by a hit.
                self.referenced[slot] = false;
                self.index.insert(line, slot);
                slot
            }
        };
        self.bufs[slot].copy_from_slice(data);
        true
    }

    /// The change of lines `first..` (`data`: their bytes now, whole lines of
    /// `line_size`) ended: drops their copies, and keeps `data` as their copies
    /// when no other invalidation of them came after `since` (taken after the
    /// change's first invalidation).
    pub fn replace(&mut self, first: u64, data: &[u8], line_size: usize, since: Stamp) {
        assert_eq!(line_size, self.line_size, "lines of {line_size}");
        let n = (data.len() / line_size) as u64;
        let alone = (first..first + n.min(STAMP_STRIPES as u64))
            .all(|line| self.stripes[stripe(line)] <= since.0);
        self.invalidate(first, n);
        if !alone {
            return;
        }
        let now = self.stamp();
        for (line, bytes) in (first..).zip(data.chunks_exact(line_size)) {
            self.fill(line, bytes, now);
        }
    }

    fn free_slot(&mut self, slot: usize) {
        self.slot_line[slot] = None;
        self.referenced[slot] = false;
        self.free.push(slot);
    }

    /// A slot for a new copy: a free one, else a new one under the bound, else
    /// CLOCK's victim (every slot holds a line then).
    fn take_slot(&mut self) -> usize {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.bufs.len() < self.slots_max {
            self.bufs.push(vec![0; self.line_size].into_boxed_slice());
            self.slot_line.push(None);
            self.referenced.push(false);
            return self.bufs.len() - 1;
        }
        // Bounded: the first round clears every reference bit it passes, so the
        // second finds an unreferenced slot.
        for _ in 0..2 * self.bufs.len() {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.bufs.len();
            if self.referenced[slot] {
                self.referenced[slot] = false;
                continue;
            }
            let line = self.slot_line[slot].expect("no free slot: every slot holds a line");
            self.index.remove(&line);
            self.slot_line[slot] = None;
            self.evictions += 1;
            return slot;
        }
        unreachable!("CLOCK found no victim in two rounds");
    }
}

/// Why `bytes` cannot be the `ram_cache_bytes` of a device of lines of `line_size`
/// (`None`: it can): 0 (no tier), or one line ..= [`RAM_CACHE_BYTES_MAX`].
pub fn check_bytes(bytes: u64, line_size: u32) -> Option<String> {
    if bytes == 0 || (u64::from(line_size)..=RAM_CACHE_BYTES_MAX).contains(&bytes) {
        return None;
    }
    Some(format!(
        "{bytes} is neither 0 (no RAM tier) nor in one line ({line_size})..={RAM_CACHE_BYTES_MAX}"
    ))
}

fn stripe(line: u64) -> usize {
    (line % STAMP_STRIPES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const LS: u32 = 4096;

    fn line(v: u8) -> Vec<u8> {
        vec![v; LS as usize]
    }

    #[test]
    fn holds_at_most_its_bound_and_evicts_whole_lines() {
        let mut r = RamCache::new(4 * u64::from(LS) + 100, LS);
        for l in 0..100u64 {
            let s = r.stamp();
            assert!(r.fill(l, &line(l as u8), s));
            assert!(r.bytes() <= 4 * u64::from(LS));
            assert!(r.lines() <= 4);
        }
        assert_eq!(r.evictions(), 96);
        // What is held is each line's own bytes.
        for l in 0..100u64 {
            if let Some(b) = r.get(l) {
                assert!(b.iter().all(|&x| x == l as u8));
            }
        }
    }

    #[test]
    fn clock_keeps_a_line_read_again() {
        let mut r = RamCache::new(2 * u64::from(LS), LS);
        let s = r.stamp();
        r.fill(1, &line(1), s);
        r.fill(2, &line(2), s);
        r.fill(3, &line(3), s); // neither was hit: the hand takes 1
        assert!(r.get(1).is_none());
        assert!(r.get(2).is_some()); // referenced again
        r.fill(4, &line(4), s); // 2 was hit: the hand passes it and takes 3
        assert!(r.get(2).is_some());
        assert!(r.get(3).is_none());
    }

    #[test]
    fn a_fill_stamped_before_an_invalidation_is_refused() {
        let mut r = RamCache::new(8 * u64::from(LS), LS);
        let before = r.stamp();
        r.invalidate(5, 1);
        assert!(!r.fill(5, &line(1), before));
        assert!(r.get(5).is_none());
        // Another line (another stripe) still fills with the old stamp.
        assert!(r.fill(6, &line(1), before));
        assert!(r.fill(5, &line(2), r.stamp()));
        assert_eq!(r.get(5).map(|b| b[0]), Some(2));
    }

    #[test]
    fn invalidating_a_huge_range_drops_every_copy_in_it() {
        let mut r = RamCache::new(8 * u64::from(LS), LS);
        let s = r.stamp();
        for l in [0, 7, 1 << 40] {
            r.fill(l, &line(1), s);
        }
        r.invalidate(1, u64::MAX);
        assert!(r.get(0).is_some());
        assert!(r.get(7).is_none());
        assert!(r.get(1 << 40).is_none());
        assert!(!r.fill(0, &line(2), s));
        assert_eq!(r.lines(), 1);
    }

    #[test]
    fn zero_bytes_is_off() {
        let mut r = RamCache::new(0, LS);
        assert!(!r.fill(0, &line(1), r.stamp()));
        assert_eq!(r.bytes(), 0);
        assert!(r.get(0).is_none());
    }
}
