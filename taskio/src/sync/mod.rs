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
use std::rc::Rc;

use crate::sched::current_task_rc;
use crate::task::{Task, TaskRef, WaitReason, park};

/// One lock a task holds, and how to release it should the task be abandoned.
///
/// A task is abandoned by the runtime's teardown when it is parked mid-unwind with
/// nothing left to wake it (the run deadlocked, or only system tasks are left), or
/// when it parks again while teardown unwinds it (see `sched`): its remaining frames
/// never run, so the guards in them would never drop and their locks would stay
/// taken, a deadlock for whoever takes them next. Each lock a task takes is recorded on the task; the
/// guard's drop removes the record; an abandoned task's records are released for it.
pub(crate) struct HeldLock {
    lock: *const (),
    release: unsafe fn(*const ()),
}

/// A guard's link to the task that took its lock (`None` outside a task).
pub(crate) struct Holder(Option<Rc<Task>>);

impl Holder {
    /// Records that the running task now holds `lock`, released by `release(lock)`.
    ///
    /// # Safety
    /// `release(lock)` must release this hold of the lock, and the lock must outlive
    /// the guard that owns the returned `Holder` (a guard borrows its lock).
    #[inline]
    pub(crate) unsafe fn hold(lock: *const (), release: unsafe fn(*const ())) -> Holder {
        let task = current_task_rc();
        if let Some(t) = &task {
            t.held.borrow_mut().push(HeldLock { lock, release });
        }
        Holder(task)
    }

    /// Removes the record of `lock`; false when it is gone because the holder was
    /// abandoned and the lock already released for it (the guard must not release
    /// it again). One record per hold: a task holding two read guards of one lock
    /// has two records, and either guard may remove either.
    #[inline]
    pub(crate) fn drop_hold(&self, lock: *const ()) -> bool {
        let Some(t) = &self.0 else {
            return true;
        };
        let mut held = t.held.borrow_mut();
        match held.iter().rposition(|h| h.lock == lock) {
            Some(i) => {
                held.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Releases every lock `task` still holds: it is being abandoned, and the guards in
/// its remaining frames will never drop.
pub(crate) fn release_abandoned(task: &Task) {
    let held = std::mem::take(&mut *task.held.borrow_mut());
    for h in held {
        // SAFETY: `hold`'s contract: `release` releases this hold, and the lock is
        // alive because the guard that borrows it is alive (leaked with the frames).
        unsafe { (h.release)(h.lock) };
    }
}

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
