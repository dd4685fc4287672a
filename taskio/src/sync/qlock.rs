//! `QLock<T>`: libtask's queueing lock around a value. Unlock hands the lock straight
//! to the longest waiter (it never becomes free in between), so waiters are served in
//! FIFO order and none is starved by a task that relocks in a loop.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};

use crate::sync::{Holder, WaitQueue};
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
        self.guard()
    }

    pub fn try_lock(&self) -> Option<QLockGuard<'_, T>> {
        if self.locked.get() {
            return None;
        }
        self.locked.set(true);
        Some(self.guard())
    }

    fn guard(&self) -> QLockGuard<'_, T> {
        // SAFETY: `release_hold::<T>` releases a hold of a `QLock<T>`, and the guard
        // borrows `self`, so the lock outlives it.
        let holder = unsafe { Holder::hold(self as *const Self as *const (), release_hold::<T>) };
        QLockGuard { lock: self, holder }
    }

    /// Hands the lock to the longest waiter, or frees it.
    fn unlock(&self) {
        if !self.waiters.wake_one() {
            self.locked.set(false);
        }
    }

    pub fn is_locked(&self) -> bool {
        self.locked.get()
    }

    pub fn into_inner(self) -> T {
        assert!(!self.locked.get());
        self.value.into_inner()
    }
}

/// Releases a hold recorded by `QLock::guard` for an abandoned task.
///
/// # Safety
/// `lock` points to a live `QLock<T>` held by the abandoned task.
unsafe fn release_hold<T>(lock: *const ()) {
    // SAFETY: the caller's contract.
    unsafe { &*(lock as *const QLock<T>) }.unlock();
}

/// Holds the lock; unlocks (handing over to the next waiter) on drop. A guard
/// belongs to the task that took the lock: if that task is abandoned (teardown gave
/// up on it mid-unwind: see `sync::HeldLock`), the lock is released for it.
pub struct QLockGuard<'a, T> {
    lock: &'a QLock<T>,
    holder: Holder,
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
        if self
            .holder
            .drop_hold(self.lock as *const QLock<T> as *const ())
        {
            self.lock.unlock();
        }
    }
}
