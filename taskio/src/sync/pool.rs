//! `Pool<T>`: the seed's buffer pools. A fixed number of objects, made up front; `get`
//! sleeps while none may be taken and the object goes back when its [`PoolItem`] is
//! dropped. The pool never holds more than its capacity.
//!
//! Watermarks, on the number of free objects:
//! - `low`: a reserve. Ordinary `get` leaves the last `low` objects alone;
//!   `get_reserve` (for the task that must make progress for the others to, such as
//!   a log writer) may take them.
//! - `high`: hysteresis. Once ordinary takers have had to wait, they are released
//!   only when `high` objects are free again, so a drained pool refills in batches
//!   instead of waking one task per returned object.
//!
//! `Pool::new(capacity, ..)` uses low = 0, high = 1: a plain blocking pool.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use crate::sync::WaitQueue;
use crate::task::WaitReason;

/// Counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub capacity: usize,
    pub free: usize,
    /// Fewest free objects seen.
    pub free_min: usize,
    pub gets: u64,
    /// Gets that had to sleep.
    pub waits: u64,
}

struct Inner<T> {
    free: RefCell<Vec<T>>,
    capacity: usize,
    low: usize,
    high: usize,
    /// Set when an ordinary taker had to wait; cleared when `high` are free again.
    refilling: Cell<bool>,
    waiters: WaitQueue,
    reserve_waiters: WaitQueue,
    stats: Cell<PoolStats>,
}

/// A handle on a pool; clones share the pool.
pub struct Pool<T> {
    inner: Rc<Inner<T>>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Pool<T> {
    /// A plain pool of `capacity` objects made by `make`.
    pub fn new(capacity: usize, make: impl FnMut() -> T) -> Pool<T> {
        Pool::with_watermarks(capacity, 0, 1, make)
    }

    /// A pool with a reserve of `low` objects and refill hysteresis up to `high`
    /// (`low < high <= capacity`).
    pub fn with_watermarks(
        capacity: usize,
        low: usize,
        high: usize,
        mut make: impl FnMut() -> T,
    ) -> Pool<T> {
        assert!(capacity > 0, "pool capacity must be at least 1");
        assert!(
            low < high,
            "pool watermarks: low {low} must be below high {high}"
        );
        assert!(
            high <= capacity,
            "pool high watermark {high} over capacity {capacity}"
        );
        let free: Vec<T> = (0..capacity).map(|_| make()).collect();
        Pool {
            inner: Rc::new(Inner {
                free: RefCell::new(free),
                capacity,
                low,
                high,
                refilling: Cell::new(false),
                waiters: WaitQueue::new(),
                reserve_waiters: WaitQueue::new(),
                stats: Cell::new(PoolStats {
                    capacity,
                    free: capacity,
                    free_min: capacity,
                    gets: 0,
                    waits: 0,
                }),
            }),
        }
    }

    /// Takes an object, sleeping while the pool is at its reserve or refilling.
    pub fn get(&self) -> PoolItem<T> {
        let inner = &*self.inner;
        let mut waited = false;
        while !self.ordinary_may_take() {
            if !waited {
                waited = true;
                self.count_wait();
            }
            // On every wait, not only the first: a woken taker that finds the
            // objects gone waits again for `high` to be free.
            inner.refilling.set(true);
            inner.waiters.wait(WaitReason::Pool);
        }
        self.take()
    }

    /// Takes an object, dipping into the reserve; sleeps only when the pool is empty.
    pub fn get_reserve(&self) -> PoolItem<T> {
        let mut waited = false;
        while self.free() == 0 {
            if !waited {
                waited = true;
                self.count_wait();
            }
            self.inner.reserve_waiters.wait(WaitReason::Pool);
        }
        self.take()
    }

    /// Whether an ordinary `get` (or `try_get`) would take an object now.
    pub fn may_get(&self) -> bool {
        self.ordinary_may_take()
    }

    /// Takes an object if an ordinary `get` would not sleep.
    pub fn try_get(&self) -> Option<PoolItem<T>> {
        if self.ordinary_may_take() {
            Some(self.take())
        } else {
            None
        }
    }

    pub fn free(&self) -> usize {
        self.inner.free.borrow().len()
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub fn stats(&self) -> PoolStats {
        let mut s = self.inner.stats.get();
        s.free = self.free();
        s
    }

    fn ordinary_may_take(&self) -> bool {
        let inner = &*self.inner;
        let free = self.free();
        free > inner.low && !(inner.refilling.get() && free < inner.high)
    }

    fn count_wait(&self) {
        let mut s = self.inner.stats.get();
        s.waits += 1;
        self.inner.stats.set(s);
    }

    fn take(&self) -> PoolItem<T> {
        let inner = &*self.inner;
        let value = inner
            .free
            .borrow_mut()
            .pop()
            .expect("pool take with no free object");
        let mut s = inner.stats.get();
        s.gets += 1;
        s.free_min = s.free_min.min(inner.free.borrow().len());
        inner.stats.set(s);
        PoolItem {
            value: Some(value),
            pool: self.clone(),
        }
    }

    fn put(&self, value: T) {
        let inner = &*self.inner;
        let free = {
            let mut f = inner.free.borrow_mut();
            assert!(f.len() < inner.capacity, "pool over capacity on put");
            f.push(value);
            f.len()
        };
        if inner.reserve_waiters.wake_one() {
            return;
        }
        if inner.refilling.get() {
            if free < inner.high {
                return;
            }
            inner.refilling.set(false);
        }
        // Wake as many ordinary takers as may take now; each re-checks when it runs.
        for _ in 0..free.saturating_sub(inner.low) {
            if !inner.waiters.wake_one() {
                break;
            }
        }
    }
}

/// An object out of a pool; it goes back on drop.
pub struct PoolItem<T> {
    value: Option<T>,
    pool: Pool<T>,
}

impl<T> Deref for PoolItem<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_ref().expect("pool item used after return")
    }
}

impl<T> DerefMut for PoolItem<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().expect("pool item used after return")
    }
}

impl<T> Drop for PoolItem<T> {
    fn drop(&mut self) {
        if let Some(v) = self.value.take() {
            self.pool.put(v);
        }
    }
}
