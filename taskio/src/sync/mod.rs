//! Task-aware synchronisation. Tasks of one runtime never run at the same time and
//! switch only at suspension points, so none of these needs an atomic or a mutex:
//! state lives in `Cell`/`RefCell`, waiters in a [`WaitQueue`]. None is `Send`.

pub(crate) mod barrier;
pub(crate) mod channel;
pub(crate) mod pool;
pub(crate) mod qlock;
pub(crate) mod rendez;
pub(crate) mod rwlock;
pub(crate) mod select;

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::task::{TaskRef, WaitReason, park};

/// A FIFO of parked tasks. Entries may be stale (their task was woken elsewhere,
/// by a timer or another channel of a `select`); waking skips them, and pushing prunes
/// them once they could pile up, so the queue stays within twice its live waiters.
#[derive(Default)]
pub(crate) struct WaitQueue {
    q: RefCell<VecDeque<TaskRef>>,
}

/// Below this length a queue is not pruned on push.
const PRUNE_MIN_LEN: usize = 64;

impl WaitQueue {
    pub(crate) fn new() -> WaitQueue {
        WaitQueue::default()
    }

    #[inline]
    pub(crate) fn push(&self, t: TaskRef) {
        let mut q = self.q.borrow_mut();
        if q.len() >= PRUNE_MIN_LEN && q.len().is_power_of_two() {
            q.retain(TaskRef::is_current_wait);
        }
        q.push_back(t);
    }

    /// Parks the running task at the tail of this queue.
    #[inline(always)]
    pub(crate) fn wait(&self, reason: WaitReason) {
        self.push(TaskRef::current());
        park(reason);
    }

    /// Wakes the first task that still waits here; false if there is none.
    #[inline]
    pub(crate) fn wake_one(&self) -> bool {
        loop {
            let next = self.q.borrow_mut().pop_front();
            match next {
                None => return false,
                Some(t) => {
                    if t.wake() {
                        return true;
                    }
                }
            }
        }
    }

    /// Wakes every task waiting here; returns how many.
    pub(crate) fn wake_all(&self) -> usize {
        let all = std::mem::take(&mut *self.q.borrow_mut());
        all.iter().filter(|t| t.wake_ref()).count()
    }

    pub(crate) fn has_waiters(&self) -> bool {
        self.q.borrow().iter().any(TaskRef::is_current_wait)
    }
}
