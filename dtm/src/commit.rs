//! Lazy, batched COMMITs: one committer per replica other than the primary.
//!
//! A write is acknowledged once its tran is prepared on every member and committed
//! on the primary; the other members' COMMITs ride later (a tran prepared on every
//! member is committed by recovery anyway). Each replica's committer takes whatever
//! trans queued while its previous call was in flight, up to the batch limit, and
//! sends them in one `commit(&[trans])`: the busier the device, the larger the
//! batches. The queue is bounded by the writes in flight (each queued tran holds a
//! slot, [`crate::lock::Slots`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use taskio::Rendez;

use crate::replica::Replica;

/// The COMMIT queue of one replica.
pub(crate) struct Committer {
    pub(crate) replica: Rc<dyn Replica>,
    queue: RefCell<VecDeque<u64>>,
    queued_max: usize,
    wake: Rendez,
    closed: Cell<bool>,
}

impl Committer {
    pub(crate) fn new(replica: Rc<dyn Replica>, queued_max: usize) -> Committer {
        Committer {
            replica,
            queue: RefCell::new(VecDeque::new()),
            queued_max,
            wake: Rendez::new(),
            closed: Cell::new(false),
        }
    }

    /// Queues `tran` for commit.
    pub(crate) fn push(&self, tran: u64) {
        assert!(!self.closed.get(), "commit queued on a closed committer");
        let mut q = self.queue.borrow_mut();
        assert!(
            q.len() < self.queued_max,
            "commit queue over the writes in flight ({})",
            self.queued_max
        );
        q.push_back(tran);
        drop(q);
        self.wake.wakeup();
    }

    /// The next batch, at most `max` trans, waiting for one; empty once closed.
    pub(crate) fn take(&self, max: usize) -> Vec<u64> {
        while self.queue.borrow().is_empty() && !self.closed.get() {
            self.wake.sleep();
        }
        if self.closed.get() {
            return Vec::new();
        }
        let mut q = self.queue.borrow_mut();
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Stops the committer; returns the trans it had not taken yet.
    pub(crate) fn close(&self) -> Vec<u64> {
        self.closed.set(true);
        self.wake.wakeup_all();
        self.queue.borrow_mut().drain(..).collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }
}
