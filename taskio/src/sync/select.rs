//! `select`: libtask's chanalt. Waits until one of several channel operations can
//! proceed without sleeping and returns its index; the caller then does that
//! operation with `try_recv`/`try_send`, which cannot fail for want of room or data
//! because no other task runs in between.
//!
//! The waiting task registers one `TaskRef` of the same wait on every arm; the first
//! arm to fire wakes it and makes the others stale. A wakeup meant for one waiter
//! that this task then does not use (it took another arm) is passed on to the next
//! waiter of that arm, so no wakeup is lost.

use crate::task::{TaskRef, WaitReason, park};

/// One arm of a [`select`]: `Channel::recv_ready` or `Channel::send_ready`.
pub trait Selectable {
    /// The operation would proceed now (or fail at once on a closed channel).
    fn is_ready(&self) -> bool;
    /// Wakes `task` when the arm may have become ready.
    fn register(&self, task: TaskRef);
    /// Wakes another waiter of this arm (a wakeup this task will not use).
    fn pass_on(&self);
}

/// Returns the index of a ready arm, sleeping until one is. Among several ready
/// arms the first is chosen. Panics on an empty arm list (it would sleep forever).
pub fn select(arms: &[&dyn Selectable]) -> usize {
    assert!(!arms.is_empty(), "select with no arms");
    let mut woken = false;
    loop {
        if let Some(i) = arms.iter().position(|a| a.is_ready()) {
            if woken {
                for (j, arm) in arms.iter().enumerate() {
                    if j != i && arm.is_ready() {
                        arm.pass_on();
                    }
                }
            }
            return i;
        }
        let me = TaskRef::current();
        for arm in arms {
            arm.register(me.clone());
        }
        park(WaitReason::Select);
        woken = true;
    }
}
