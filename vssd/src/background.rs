//! The background tasks of one vSSD (its log writers and its checkpoint task), counted
//! so that whoever holds a [`Background`] can wait for them to end.
//!
//! A vSSD closed by [`crate::Vssd::close`] waits for its tasks itself. One whose last
//! handle is dropped cannot park in `Drop`: it tells its tasks to stop, and they end
//! once what they had started is written; the last of them closes the device's file
//! (releasing its lock). [`Background::wait_ended`] waits for that.

use std::cell::Cell;
use std::rc::Rc;

use taskio::Rendez;

struct Count {
    running: Cell<usize>,
    ended: Rendez,
}

/// A handle on the count of a vSSD's background tasks; it outlives the vSSD.
#[derive(Clone)]
pub struct Background {
    count: Rc<Count>,
}

impl Default for Background {
    fn default() -> Background {
        Background {
            count: Rc::new(Count {
                running: Cell::new(0),
                ended: Rendez::new(),
            }),
        }
    }
}

impl Background {
    /// Counts one more task until the returned guard drops. The task drops it last,
    /// after everything it held (so "ended" means its references are gone too).
    pub(crate) fn enter(&self) -> TaskGuard {
        self.count.running.set(self.count.running.get() + 1);
        TaskGuard {
            count: self.count.clone(),
        }
    }

    /// Background tasks still running.
    pub fn running(&self) -> usize {
        self.count.running.get()
    }

    /// Parks until every background task has ended (at once if none runs). Only
    /// after a close or the drop of the vSSD's last handle do they end.
    pub fn wait_ended(&self) {
        while self.count.running.get() > 0 {
            self.count.ended.sleep();
        }
    }
}

/// Held by one running background task.
pub(crate) struct TaskGuard {
    count: Rc<Count>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let running = self.count.running.get();
        assert!(running > 0, "background task count underflow");
        self.count.running.set(running - 1);
        if running == 1 {
            self.count.ended.wakeup_all();
        }
    }
}
