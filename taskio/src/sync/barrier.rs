//! `Barrier`: the seed's task_barrier. `n` tasks call `wait`; each sleeps until the
//! n-th arrives, then all go on. Reusable: the next `n` arrivals form the next round.

use std::cell::Cell;

use crate::sync::WaitQueue;
use crate::task::WaitReason;

pub struct Barrier {
    n: usize,
    arrived: Cell<usize>,
    round: Cell<u64>,
    waiters: WaitQueue,
}

impl Barrier {
    pub fn new(n: usize) -> Barrier {
        assert!(n > 0, "a barrier needs at least one task");
        Barrier {
            n,
            arrived: Cell::new(0),
            round: Cell::new(0),
            waiters: WaitQueue::new(),
        }
    }

    /// Waits for the round to fill. Returns true in exactly one task per round (the
    /// last to arrive), as std's `BarrierWaitResult::is_leader`.
    pub fn wait(&self) -> bool {
        let arrived = self.arrived.get() + 1;
        if arrived == self.n {
            self.arrived.set(0);
            self.round.set(self.round.get() + 1);
            let woken = self.waiters.wake_all();
            assert_eq!(
                woken,
                self.n - 1,
                "barrier released a wrong number of tasks"
            );
            return true;
        }
        self.arrived.set(arrived);
        let round = self.round.get();
        self.waiters.wait(WaitReason::Barrier);
        // Later rounds may already have completed (more than `n` tasks use the
        // barrier), but never an earlier one.
        assert!(self.round.get() > round, "barrier woke a task early");
        false
    }

    /// How many rounds have completed.
    pub fn rounds(&self) -> u64 {
        self.round.get()
    }
}
