//! The lines of the writes in flight on a device: a write holds its lines from the
//! read-modify-write of its partial lines to its acknowledgement, so two writes of
//! one line never merge into one built from the other's old bytes, and a write
//! that goes around the cache is never overtaken by another of the same lines.
//!
//! The DTM's own range lock cannot do it: it is taken inside `Dtm::write`, after
//! the read of the old bytes. Lock order: this gate, then the DTM's locks.
//!
//! # Writers waiting for room never hold every dirty line
//!
//! A write-back write waits for room in a full cache (`Vssd::writep1`) holding the
//! DTM's lock of its lines, some of them dirty; destage skips the lines a lock
//! holds (`Dtm::try_lock_lines`). Were every dirty line held by such writers,
//! destage could free nothing and they would wait for ever: 16 writers of a dirty
//! line and a new one each fill a cache of 16 lines so (the test
//! `writers_waiting_for_room_never_hold_every_dirty_line`). So the writes in flight
//! hold at most `lines_max` = the cache's lines - 1 together. When a writer waits
//! for room, the cache is full: its lines cached (all dirty: a clean one would be
//! evicted) and those prepared by writes in flight add up to the cache's lines, and
//! the writes in flight hold the prepared lines and at most `lines_max` minus those
//! of the dirty ones, so one dirty line at least is held by no write. A read's fill
//! and a destage run hold lines too, but they end without waiting for room. Destage
//! reaches that line (it walks the dirty lines, skipping the held ones), cleans it,
//! and the cache evicts it for a waiting writer. A write alone may hold more lines
//! than `lines_max` (one longer than the cache): the DTM locks it a tran at a time,
//! at most half the cache's lines (`Vssd::tran_lines_max`), which the same argument
//! covers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use taskio::{Rendez, now};

/// Lines held by the writes in flight; their number is bounded by the writes in
/// flight (the sessions' queue depths), their lines by `lines_max`.
pub(crate) struct Gate {
    held: RefCell<Vec<(u64, u64)>>,
    /// Lines the writes in flight hold together at most, unless one holds them
    /// alone (module documentation).
    lines_max: u64,
    released: Rendez,
}

/// Lines `first..end` held; released when dropped.
pub(crate) struct GateGuard {
    gate: Rc<Gate>,
    range: (u64, u64),
}

impl Gate {
    /// The gate of a cache of `cache_lines` lines (at least one).
    pub(crate) fn new(cache_lines: u64) -> Gate {
        assert!(cache_lines >= 1, "a cache of no lines");
        Gate {
            held: RefCell::new(Vec::new()),
            lines_max: cache_lines - 1,
            released: Rendez::new(),
        }
    }

    /// Holds lines `first..first + count`, waiting at most `wait_max` for the writes
    /// that hold any of them, and while the writes in flight would hold more than
    /// `lines_max` lines with these (module documentation); `None` when the wait ran
    /// out.
    pub(crate) fn lock(
        self: &Rc<Gate>,
        first: u64,
        count: u64,
        wait_max: Duration,
    ) -> Option<GateGuard> {
        let range = (first, first + count);
        let deadline = now() + wait_max;
        // Bounded by the deadline: each round sleeps until a release or the deadline.
        loop {
            let busy = {
                let held = self.held.borrow();
                let lines: u64 = held.iter().map(|&(a, b)| b - a).sum();
                held.iter().any(|&(a, b)| a < range.1 && range.0 < b)
                    || !held.is_empty() && lines + count > self.lines_max
            };
            if !busy {
                self.held.borrow_mut().push(range);
                return Some(GateGuard {
                    gate: self.clone(),
                    range,
                });
            }
            if now() >= deadline {
                return None;
            }
            self.released.sleep_until(deadline);
        }
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut held = self.gate.held.borrow_mut();
        let at = held
            .iter()
            .position(|&r| r == self.range)
            .expect("a held range is in the gate");
        held.swap_remove(at);
        drop(held);
        self.gate.released.wakeup_all();
    }
}
