//! Time for tasks: the runtime's [`Instant`] (nanoseconds on the driver's clock) and
//! the timer heap that wakes sleeping tasks.
//!
//! The heap is a binary heap ordered by (deadline, sequence), so equal deadlines fire
//! in the order they were armed. A timer whose task was woken by something else stays
//! in the heap as a stale entry (its wait generation no longer matches) and is skipped
//! when it fires; when stale entries outnumber live ones the heap is rebuilt, so its
//! size stays within twice the number of armed timers.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::ops::{Add, Sub};
use std::time::Duration;

use crate::task::TaskRef;

/// A point in time on the runtime's clock, in nanoseconds. The real driver reads
/// CLOCK_MONOTONIC; a simulated driver keeps virtual time. Only differences mean
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `nanos` nanoseconds after the clock's origin.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Reads CLOCK_MONOTONIC (a vDSO call, no syscall).
    pub fn monotonic() -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on
        // Linux, so the call cannot fail with these arguments.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
        Instant(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// A bound on a call that may wait: `timeout` from the first time the call has to
/// wait (the first time [`Deadline::at`] is asked), so that a call that finds its
/// data ready, its buffer room or its reply in place reads no clock at all. The time
/// a call spends before its first wait is its own CPU time, never a wait: the bound
/// on waiting is the same.
#[derive(Debug, Clone)]
pub struct Deadline {
    timeout: Option<Duration>,
    at: std::cell::Cell<Option<Instant>>,
}

impl Deadline {
    /// `timeout` from the first wait; None: no bound.
    pub fn after(timeout: Option<Duration>) -> Deadline {
        Deadline {
            timeout,
            at: std::cell::Cell::new(None),
        }
    }

    /// The instant the call gives up, fixed (reading the runtime's clock) the first
    /// time it is asked; None when unbounded. Call it when about to wait.
    pub fn at(&self) -> Option<Instant> {
        let timeout = self.timeout?;
        if let Some(at) = self.at.get() {
            return Some(at);
        }
        let at = crate::task::now() + timeout;
        self.at.set(Some(at));
        Some(at)
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

struct Entry {
    deadline: Instant,
    seq: u64,
    task: TaskRef,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// Below this many entries the heap is never compacted: not worth the pass.
const COMPACT_MIN_ENTRIES: usize = 1024;

#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl TimerHeap {
    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn arm(&mut self, deadline: Instant, task: TaskRef) {
        // Compact before the push: the task arming has not parked yet, so its own
        // entry would look stale (`is_current_wait` is false until it blocks) and
        // be dropped, and its wait would never time out.
        let len = self.heap.len() + 1;
        if len >= COMPACT_MIN_ENTRIES && len.is_power_of_two() {
            self.compact();
        }
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            task,
        }));
    }

    /// Earliest deadline of a live timer, dropping stale entries found on top.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.task.is_current_wait() {
                return Some(top.deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Wakes every task whose deadline is at or before `now`; returns how many woke.
    pub(crate) fn fire(&mut self, now: Instant) -> usize {
        let mut woken = 0;
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.deadline > now {
                break;
            }
            let Some(Reverse(entry)) = self.heap.pop() else {
                break;
            };
            if entry.task.wake_by_timer() {
                woken += 1;
            }
        }
        woken
    }

    /// Drops stale entries when they are at least half the heap.
    fn compact(&mut self) {
        let live = self
            .heap
            .iter()
            .filter(|Reverse(e)| e.task.is_current_wait())
            .count();
        if live * 2 <= self.heap.len() {
            let old = std::mem::take(&mut self.heap);
            self.heap = old
                .into_iter()
                .filter(|Reverse(e)| e.task.is_current_wait())
                .collect();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }
}
