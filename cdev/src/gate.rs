//! The lines of the writes in flight on a device: a write holds its lines from the
//! read-modify-write of its partial lines to its acknowledgement, so two writes of
//! one line never merge into one built from the other's old bytes, and a write
//! that goes around the cache is never overtaken by another of the same lines.
//!
//! The DTM's own range lock cannot do it: it is taken inside `Dtm::write`, after
//! the read of the old bytes. Lock order: this gate, then the DTM's locks.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use taskio::{Rendez, now};

/// Lines held by the writes in flight; their number is bounded by the writes in
/// flight (the sessions' queue depths).
#[derive(Default)]
pub(crate) struct Gate {
    held: RefCell<Vec<(u64, u64)>>,
    released: Rendez,
}

/// Lines `first..end` held; released when dropped.
pub(crate) struct GateGuard {
    gate: Rc<Gate>,
    range: (u64, u64),
}

impl Gate {
    /// Holds lines `first..first + count`, waiting at most `wait_max` for the writes
    /// that hold any of them; `None` when the wait ran out.
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
            let busy = self
                .held
                .borrow()
                .iter()
                .any(|&(a, b)| a < range.1 && range.0 < b);
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
