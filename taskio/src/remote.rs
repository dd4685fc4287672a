//! Cross-thread hand-off: a [`Remote`] lets another OS thread give values to a
//! runtime and wake it; the runtime's tasks take them from the matching [`Inbox`]
//! (pseudo-blocking). A bounded queue behind a mutex plus a [`Notifier`] that the
//! runtime's driver watches: an eventfd on the real reactor, an in-memory event under
//! the simulator. The sender learns at once when the queue is full or the inbox is
//! gone; nothing waits across threads.
//!
//! This is how the server's acceptor thread gives a new connection to a session
//! thread. It is the only place in taskio where threads share state, and the state is
//! the queue of this one channel (no global).
//!
//! Under the simulator the runtimes of one node are modelled as groups of tasks of
//! the one simulated runtime: a "thread" is the set of tasks that use one `Inbox`,
//! and a hand-off between groups wakes the receiver after a seeded latency (the
//! simulator's `notify`), so the interleaving of the groups is part of the seed. The
//! groups do not run in parallel; what can happen between two threads is modelled
//! by which task the seeded scheduler picks and when the wake-up lands. The
//! channel must then be made on the simulation's thread, by one of its tasks.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::driver::{Interest, Notifier};
use crate::error::IoError;
use crate::sched::core;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    capacity: usize,
    notifier: Notifier,
    inbox_gone: AtomicBool,
    /// Set by `close`, or when the last `Remote` is dropped.
    senders_gone: AtomicBool,
    senders: AtomicUsize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A sender that panicked while holding the lock left a consistent queue
        // (push/pop are not interrupted halfway), so poisoning is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self) {
        self.notifier.signal();
    }
}

/// Why a [`Remote::send`] did not deliver; the value comes back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteSendError<T> {
    #[error("remote inbox full ({capacity} queued)")]
    Full { value: T, capacity: usize },
    #[error("remote inbox closed (its runtime is gone)")]
    Closed(T),
}

/// The sending side: `Send + Clone`, usable from any thread.
pub struct Remote<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Remote<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Remote {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Remote<T> {
    /// The last sender gone closes the inbox, so a receiver is not left waiting for
    /// values that cannot come.
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close();
        }
    }
}

/// The receiving side, used by the tasks of one runtime (several may receive).
pub struct Inbox<T> {
    shared: Arc<Shared<T>>,
    registered: Cell<bool>,
}

/// A channel from other threads into a runtime, holding at most `capacity` values.
/// Its wake-up is made by the driver of the runtime that calls this (an eventfd
/// outside any runtime, or on the real reactor; an in-memory event under the
/// simulator), so the inbox belongs to a runtime of that kind.
pub fn remote<T: Send>(capacity: usize) -> Result<(Remote<T>, Inbox<T>), IoError> {
    assert!(capacity > 0, "remote capacity must be at least 1");
    let made = if crate::sched::is_running() {
        core()
            .with_io("remote", |io| io.notifier())
            .unwrap_or_else(|_| Notifier::eventfd())
    } else {
        Notifier::eventfd()
    };
    let notifier = made.map_err(|source| IoError::Setup {
        op: "remote notifier",
        source,
    })?;
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        capacity,
        notifier,
        inbox_gone: AtomicBool::new(false),
        senders_gone: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
    });
    Ok((
        Remote {
            shared: shared.clone(),
        },
        Inbox {
            shared,
            registered: Cell::new(false),
        },
    ))
}

impl<T> Remote<T> {
    /// Queues `value` for the runtime and wakes it; fails at once when full, after
    /// `close`, or when the inbox is gone. (An inbox dropped while this call runs
    /// may still drop the value unreceived: that is the receiver's choice.)
    pub fn send(&self, value: T) -> Result<(), RemoteSendError<T>> {
        if self.shared.inbox_gone.load(Ordering::Acquire)
            || self.shared.senders_gone.load(Ordering::Acquire)
        {
            return Err(RemoteSendError::Closed(value));
        }
        {
            let mut q = self.shared.lock();
            if q.len() >= self.shared.capacity {
                return Err(RemoteSendError::Full {
                    value,
                    capacity: self.shared.capacity,
                });
            }
            q.push_back(value);
        }
        self.shared.signal();
        Ok(())
    }

    /// Tells the inbox no more values will come (after those queued); later sends
    /// from any handle fail with `Closed`.
    pub fn close(&self) {
        self.shared.senders_gone.store(true, Ordering::Release);
        self.shared.signal();
    }

    pub fn len(&self) -> usize {
        self.shared.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Inbox<T> {
    pub fn try_recv(&self) -> Option<T> {
        self.shared.lock().pop_front()
    }

    /// Takes the next value, parking until one arrives; None once a sender has
    /// called `close` and the queue is empty.
    pub fn recv(&self) -> Result<Option<T>, IoError> {
        let fd = self.shared.notifier.fd();
        loop {
            if let Some(v) = self.try_recv() {
                return Ok(Some(v));
            }
            if self.shared.senders_gone.load(Ordering::Acquire) {
                return Ok(self.try_recv());
            }
            // Reset the counter, then look again: a value queued between the first
            // look and the reset has had its signal consumed here.
            self.shared.notifier.clear();
            if let Some(v) = self.try_recv() {
                return Ok(Some(v));
            }
            if self.shared.senders_gone.load(Ordering::Acquire) {
                continue;
            }
            crate::net::ensure_registered(fd, &self.registered, "remote recv")?;
            crate::net::wait_ready(fd, Interest::Read, "remote recv", None)?;
        }
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        self.shared.inbox_gone.store(true, Ordering::Release);
        if crate::sched::is_running() {
            // Forget the fd in the driver before the notifier closes with the last Arc.
            let fd = self.shared.notifier.fd();
            let _ = core().with_io("remote drop", |io| io.forget(fd));
        }
        // Values still queued are dropped with the last reference.
    }
}
