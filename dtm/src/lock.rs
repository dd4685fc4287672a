//! Range locks and write slots: what keeps overlapping writes in one order on every
//! replica, and the number of writes in flight bounded.
//!
//! A write locks its lines before its writep1 and the lock is released only when its
//! tran is committed on every replica (the vSSD takes one prepared tran per line: the
//! next writep1 of a line must not reach a replica before the previous tran's COMMIT
//! did). So two overlapping writes never have phase 1 in flight together, and each
//! replica sees them in the order the lock granted them. Writes of disjoint lines run
//! in parallel.
//!
//! A range is taken whole or not at all (no lock order to get wrong), first come
//! first served among overlapping requests (a waiting range blocks later ones that
//! overlap it, so a large DISCARD is not starved by small writes), and every wait is
//! bounded by a deadline.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use taskio::{Instant, Rendez, now};

/// Lines `first..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    first: u64,
    end: u64,
}

impl Range {
    fn overlaps(&self, other: &Range) -> bool {
        self.first < other.end && other.first < self.end
    }
}

#[derive(Default)]
struct Table {
    held: Vec<(u64, Range)>,
    /// Requests waiting, in arrival order.
    waiting: VecDeque<(u64, Range)>,
    next_id: u64,
}

/// The range locks of one device.
#[derive(Default)]
pub(crate) struct RangeLocks {
    table: RefCell<Table>,
    released: Rendez,
    waits: Cell<u64>,
}

/// A held range; released when dropped.
pub(crate) struct RangeLock {
    locks: Rc<RangeLocks>,
    id: u64,
}

impl Drop for RangeLock {
    fn drop(&mut self) {
        let mut t = self.locks.table.borrow_mut();
        let i = t.held.iter().position(|&(id, _)| id == self.id);
        t.held.swap_remove(i.expect("a held range is in the table"));
        drop(t);
        self.locks.released.wakeup_all();
    }
}

impl RangeLocks {
    /// Locks lines `first..first + count` (count > 0), waiting until `deadline` at
    /// most; `None` when the deadline passed first.
    pub(crate) fn lock(
        self: &Rc<Self>,
        first: u64,
        count: u64,
        deadline: Instant,
    ) -> Option<RangeLock> {
        assert!(count > 0, "an empty range lock");
        let range = Range {
            first,
            end: first.saturating_add(count),
        };
        let id = {
            let mut t = self.table.borrow_mut();
            let id = t.next_id;
            t.next_id += 1;
            if t.waiting.is_empty() && !t.held.iter().any(|(_, h)| h.overlaps(&range)) {
                t.held.push((id, range));
                return Some(RangeLock {
                    locks: self.clone(),
                    id,
                });
            }
            t.waiting.push_back((id, range));
            id
        };
        self.waits.set(self.waits.get() + 1);
        loop {
            {
                let mut t = self.table.borrow_mut();
                let free = !t.held.iter().any(|(_, h)| h.overlaps(&range))
                    && !t
                        .waiting
                        .iter()
                        .take_while(|&&(w, _)| w != id)
                        .any(|(_, r)| r.overlaps(&range));
                if free {
                    t.waiting.retain(|&(w, _)| w != id);
                    t.held.push((id, range));
                    drop(t);
                    // Requests queued behind this one that do not overlap it may
                    // go now.
                    self.released.wakeup_all();
                    return Some(RangeLock {
                        locks: self.clone(),
                        id,
                    });
                }
            }
            if now() >= deadline || !self.released.sleep_until(deadline) && now() >= deadline {
                self.table.borrow_mut().waiting.retain(|&(w, _)| w != id);
                self.released.wakeup_all();
                return None;
            }
        }
    }

    /// Locks lines `first..first + count` (count > 0) if no lock holds any of them;
    /// `None` at once otherwise. It goes ahead of the requests waiting for them: a
    /// waiting request may wait (through a write it overlaps) for room in the cache
    /// that only this lock's holder (a destage) can make. The lock is still exclusive,
    /// and a waiter loses one turn only.
    pub(crate) fn try_lock(self: &Rc<Self>, first: u64, count: u64) -> Option<RangeLock> {
        assert!(count > 0, "an empty range lock");
        let range = Range {
            first,
            end: first.saturating_add(count),
        };
        let mut t = self.table.borrow_mut();
        let taken = t.held.iter().any(|(_, r)| r.overlaps(&range));
        if taken {
            return None;
        }
        let id = t.next_id;
        t.next_id += 1;
        t.held.push((id, range));
        Some(RangeLock {
            locks: self.clone(),
            id,
        })
    }

    /// How many lock requests had to wait.
    pub(crate) fn waits(&self) -> u64 {
        self.waits.get()
    }
}

/// The slots for writes in flight: a write holds one from before its writep1 until
/// its tran is committed on every replica.
pub(crate) struct Slots {
    used: Cell<usize>,
    max: usize,
    freed: Rendez,
}

/// One slot; freed when dropped.
pub(crate) struct Slot {
    slots: Rc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.used.set(self.slots.used.get() - 1);
        // All: a sleeper whose deadline passed may be the one a single wakeup picks.
        self.slots.freed.wakeup_all();
    }
}

impl Slots {
    pub(crate) fn new(max: usize) -> Slots {
        assert!(max > 0, "no write could ever be in flight");
        Slots {
            used: Cell::new(0),
            max,
            freed: Rendez::new(),
        }
    }

    /// A slot, waiting until `deadline` at most.
    pub(crate) fn take(self: &Rc<Self>, deadline: Instant) -> Option<Slot> {
        while self.used.get() >= self.max {
            if now() >= deadline || !self.freed.sleep_until(deadline) && now() >= deadline {
                return None;
            }
        }
        self.used.set(self.used.get() + 1);
        Some(Slot {
            slots: self.clone(),
        })
    }

    pub(crate) fn used(&self) -> usize {
        self.used.get()
    }
}
