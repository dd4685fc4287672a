//! `RwLock<T>`: many readers or one writer. Waiters queue in arrival order and the
//! lock is handed over on release: a writer at the head of the queue gets it as soon
//! as the readers ahead of it leave, and readers arriving after a waiting writer queue
//! behind it, so writers are not starved. A release that reaches a run of readers at
//! the head admits the whole run at once.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use crate::sync::Holder;
use crate::task::{TaskRef, WaitReason, park};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

pub struct RwLock<T> {
    readers: Cell<usize>,
    writer: Cell<bool>,
    queue: RefCell<VecDeque<(TaskRef, Want)>>,
    value: UnsafeCell<T>,
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

impl<T> RwLock<T> {
    pub fn new(value: T) -> RwLock<T> {
        RwLock {
            readers: Cell::new(0),
            writer: Cell::new(false),
            queue: RefCell::new(VecDeque::new()),
            value: UnsafeCell::new(value),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        if self.writer.get() || !self.queue.borrow().is_empty() {
            self.enqueue(Want::Read, WaitReason::RwLockRead);
            assert!(!self.writer.get() && self.readers.get() > 0);
        } else {
            self.readers.set(self.readers.get() + 1);
        }
        self.read_guard()
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        if self.writer.get() || self.readers.get() > 0 || !self.queue.borrow().is_empty() {
            self.enqueue(Want::Write, WaitReason::RwLockWrite);
            assert!(self.writer.get() && self.readers.get() == 0);
        } else {
            self.writer.set(true);
        }
        self.write_guard()
    }

    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        if self.writer.get() || !self.queue.borrow().is_empty() {
            return None;
        }
        self.readers.set(self.readers.get() + 1);
        Some(self.read_guard())
    }

    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        if self.writer.get() || self.readers.get() > 0 || !self.queue.borrow().is_empty() {
            return None;
        }
        self.writer.set(true);
        Some(self.write_guard())
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, T> {
        // SAFETY: `release_read::<T>` releases one read hold of an `RwLock<T>`, and
        // the guard borrows `self`, so the lock outlives it.
        let holder = unsafe { Holder::hold(self.addr(), release_read::<T>) };
        RwLockReadGuard { lock: self, holder }
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, T> {
        // SAFETY: as in `read_guard`, for the write hold.
        let holder = unsafe { Holder::hold(self.addr(), release_write::<T>) };
        RwLockWriteGuard { lock: self, holder }
    }

    fn addr(&self) -> *const () {
        self as *const Self as *const ()
    }

    fn unlock_read(&self) {
        let n = self.readers.get() - 1;
        self.readers.set(n);
        if n == 0 {
            self.grant();
        }
    }

    fn unlock_write(&self) {
        self.writer.set(false);
        self.grant();
    }

    /// Number of readers holding the lock now.
    pub fn readers(&self) -> usize {
        self.readers.get()
    }

    pub fn is_write_locked(&self) -> bool {
        self.writer.get()
    }

    fn enqueue(&self, want: Want, reason: WaitReason) {
        self.queue
            .borrow_mut()
            .push_back((TaskRef::current(), want));
        park(reason);
    }

    /// Hands the lock to the head of the queue: one writer, or every reader up to
    /// the next writer. Called when the lock has become free.
    fn grant(&self) {
        debug_assert!(!self.writer.get() && self.readers.get() == 0);
        loop {
            let head = self.queue.borrow_mut().pop_front();
            let Some((task, want)) = head else {
                return;
            };
            if !task.is_current_wait() {
                continue;
            }
            match want {
                Want::Write => {
                    self.writer.set(true);
                    task.wake();
                    return;
                }
                Want::Read => {
                    self.readers.set(self.readers.get() + 1);
                    task.wake();
                    let next_is_read = matches!(self.queue.borrow().front(), Some((_, Want::Read)));
                    if !next_is_read {
                        return;
                    }
                }
            }
        }
    }
}

/// Releases a read hold for an abandoned task (see `sync::HeldLock`).
///
/// # Safety
/// `lock` points to a live `RwLock<T>` the abandoned task holds for reading.
unsafe fn release_read<T>(lock: *const ()) {
    // SAFETY: the caller's contract.
    unsafe { &*(lock as *const RwLock<T>) }.unlock_read();
}

/// Releases a write hold for an abandoned task.
///
/// # Safety
/// `lock` points to a live `RwLock<T>` the abandoned task holds for writing.
unsafe fn release_write<T>(lock: *const ()) {
    // SAFETY: the caller's contract.
    unsafe { &*(lock as *const RwLock<T>) }.unlock_write();
}

/// A read hold; released on drop, or for its task if that task is abandoned.
pub struct RwLockReadGuard<'a, T> {
    lock: &'a RwLock<T>,
    holder: Holder,
}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: readers > 0 excludes a writer, so only shared references exist.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        if self.holder.drop_hold(self.lock.addr()) {
            self.lock.unlock_read();
        }
    }
}

/// The write hold; released on drop, or for its task if that task is abandoned.
pub struct RwLockWriteGuard<'a, T> {
    lock: &'a RwLock<T>,
    holder: Holder,
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer flag makes this guard the only access to the value.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the reference unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        if self.holder.drop_hold(self.lock.addr()) {
            self.lock.unlock_write();
        }
    }
}
