//! `Rendez`: libtask's rendezvous, a condition variable without a mutex. A task
//! checks its condition, and if it does not hold, sleeps; nothing can run between the
//! check and the sleep, so no wakeup is lost.

use crate::sync::WaitQueue;
use crate::task::{TaskRef, WaitReason, park_until};
use crate::timer::Instant;

#[derive(Default)]
pub struct Rendez {
    waiters: WaitQueue,
}

impl Rendez {
    pub fn new() -> Rendez {
        Rendez::default()
    }

    /// Sleeps until a `wakeup` or `wakeup_all` (libtask's tasksleep).
    #[inline(always)]
    pub fn sleep(&self) {
        self.waiters.wait(WaitReason::Rendez);
    }

    /// Sleeps until woken or until `deadline`; true when woken.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        self.waiters.push(TaskRef::current());
        park_until(WaitReason::Rendez, deadline)
    }

    /// Wakes the longest sleeper (libtask's taskwakeup); false if none slept.
    #[inline]
    pub fn wakeup(&self) -> bool {
        self.waiters.wake_one()
    }

    /// Wakes every sleeper (libtask's taskwakeupall); returns how many.
    pub fn wakeup_all(&self) -> usize {
        self.waiters.wake_all()
    }

    pub fn has_sleepers(&self) -> bool {
        self.waiters.has_waiters()
    }
}
