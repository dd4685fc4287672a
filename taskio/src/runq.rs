//! The ready queue: a FIFO ring of task pointers, on the hot path of every switch.
//!
//! A `VecDeque` behind a `RefCell` cost ~25 instructions per push + pop here; this
//! ring (power-of-two capacity, masked indices, interior mutability without a borrow
//! flag) costs ~10. It grows by doubling when full; it never shrinks, so its size is
//! the most tasks that were ever ready at once (at most `Config::max_tasks`).

use std::cell::{Cell, UnsafeCell};
use std::ptr::NonNull;

use crate::task::Task;

pub(crate) struct RunQueue {
    /// Capacity is a power of two.
    buf: UnsafeCell<Box<[Option<NonNull<Task>>]>>,
    head: Cell<usize>,
    len: Cell<usize>,
}

impl RunQueue {
    pub(crate) fn with_capacity(capacity: usize) -> RunQueue {
        let capacity = capacity.max(4).next_power_of_two();
        RunQueue {
            buf: UnsafeCell::new(vec![None; capacity].into_boxed_slice()),
            head: Cell::new(0),
            len: Cell::new(0),
        }
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }

    #[inline(always)]
    pub(crate) fn push_back(&self, t: NonNull<Task>) {
        // SAFETY: the queue is !Sync and no method of it calls out while holding this
        // reference, so it is the only reference to the buffer for its lifetime.
        let buf = unsafe { &mut *self.buf.get() };
        let len = self.len.get();
        if len == buf.len() {
            self.grow();
            return self.push_back(t);
        }
        let i = (self.head.get() + len) & (buf.len() - 1);
        // SAFETY: the capacity is a power of two, so masking keeps `i` in bounds.
        unsafe { *buf.get_unchecked_mut(i) = Some(t) };
        self.len.set(len + 1);
    }

    #[inline(always)]
    pub(crate) fn pop_front(&self) -> Option<NonNull<Task>> {
        let len = self.len.get();
        if len == 0 {
            return None;
        }
        // SAFETY: as in `push_back`.
        let buf = unsafe { &mut *self.buf.get() };
        let head = self.head.get();
        debug_assert!(head < buf.len());
        // SAFETY: `head` is always masked to the power-of-two capacity.
        let t = unsafe { *buf.get_unchecked(head) };
        debug_assert!(t.is_some(), "ready queue slot empty");
        self.head.set((head + 1) & (buf.len() - 1));
        self.len.set(len - 1);
        t
    }

    /// Swaps the `i`-th queued task with the head.
    pub(crate) fn swap_front(&self, i: usize) {
        assert!(
            i < self.len.get(),
            "swap_front({i}) of a queue of {}",
            self.len.get()
        );
        // SAFETY: as in `push_back`.
        let buf = unsafe { &mut *self.buf.get() };
        let mask = buf.len() - 1;
        let head = self.head.get();
        buf.swap(head, (head + i) & mask);
    }

    /// Keeps only the tasks for which `keep` is true, in order.
    pub(crate) fn retain(&self, mut keep: impl FnMut(NonNull<Task>) -> bool) {
        let mut kept = Vec::with_capacity(self.len.get());
        while let Some(t) = self.pop_front() {
            if keep(t) {
                kept.push(t);
            }
        }
        self.clear();
        for t in kept {
            self.push_back(t);
        }
    }

    pub(crate) fn clear(&self) {
        // SAFETY: as in `push_back`.
        let buf = unsafe { &mut *self.buf.get() };
        buf.fill(None);
        self.head.set(0);
        self.len.set(0);
    }

    #[cold]
    #[inline(never)]
    fn grow(&self) {
        // SAFETY: as in `push_back`.
        let buf = unsafe { &mut *self.buf.get() };
        let old = std::mem::take(buf);
        let mask = old.len() - 1;
        let mut new = vec![None; old.len() * 2].into_boxed_slice();
        for (i, slot) in new.iter_mut().enumerate().take(self.len.get()) {
            *slot = old[(self.head.get() + i) & mask];
        }
        *buf = new;
        self.head.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_across_growth_and_wrap() {
        let q = RunQueue::with_capacity(4);
        // Fake pointers: never dereferenced by the queue.
        let p = |i: usize| NonNull::new((i * 8 + 8) as *mut Task).unwrap();
        let mut expect = std::collections::VecDeque::new();
        for round in 0..50 {
            for i in 0..(round % 7 + 1) {
                q.push_back(p(round * 10 + i));
                expect.push_back(round * 10 + i);
            }
            for _ in 0..(round % 5) {
                assert_eq!(q.pop_front(), expect.pop_front().map(p));
            }
            assert_eq!(q.len(), expect.len());
        }
        while let Some(e) = expect.pop_front() {
            assert_eq!(q.pop_front(), Some(p(e)));
        }
        assert_eq!(q.pop_front(), None);
    }
}
