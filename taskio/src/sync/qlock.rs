//! `QLock<T>`: libtask's queueing lock around a value. Unlock hands the lock straight
//! to the longest waiter (it never becomes free in between), so waiters are served in
//! FIFO order and none is starved by a task that relocks in a loop.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};

use crate::sync::WaitQueue;
use crate::task::WaitReason;

pub struct QLock<T> {
    locked: Cell<bool>,
    waiters: WaitQueue,
    value: UnsafeCell<T>,
}

impl<T: Default> Default for QLock<T> {
    fn default() -> Self {
        QLock::new(T::default())
    }
}

impl<T> QLock<T> {
    pub fn new(value: T) -> QLock<T> {
        QLock {
            locked: Cell::new(false),
            waiters: WaitQueue::new(),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, sleeping while another task holds it.
    pub fn lock(&self) -> QLockGuard<'_, T> {
        if self.locked.get() {
            self.waiters.wait(WaitReason::QLock);
            // The unlocker handed the lock over without clearing `locked`.
            assert!(self.locked.get(), "QLock woken without the lock");
        } else {
            self.locked.set(true);
        }
        QLockGuard { lock: self }
    }

    pub fn try_lock(&self) -> Option<QLockGuard<'_, T>> {
        if self.locked.get() {
            return None;
        }
        self.locked.set(true);
        Some(QLockGuard { lock: self })
    }

    pub fn is_locked(&self) -> bool {
        self.locked.get()
    }

    pub fn into_inner(self) -> T {
        assert!(!self.locked.get());
        self.value.into_inner()
    }
}

/// Holds the lock; unlocks (handing over to the next waiter) on drop.
pub struct QLockGuard<'a, T> {
    lock: &'a QLock<T>,
}

impl<T> Deref for QLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is true and it is the only
        // guard; tasks of one runtime never run concurrently and the lock is not Sync.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for QLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for QLockGuard<'_, T> {
    fn drop(&mut self) {
        if !self.lock.waiters.wake_one() {
            self.lock.locked.set(false);
        }
    }
}
