//! A [`Notifier`]: the wake-up a `Remote` gives the runtime of its `Inbox`, made by
//! that runtime's driver ([`Io::notifier`](super::Io::notifier)) so that it works on
//! every driver:
//!
//! - The real reactor: a kernel eventfd in the epoll set. Any thread may signal it
//!   (the sender runs on another OS thread, outside the runtime).
//! - The simulator: an in-memory event of the simulated driver. The simulation runs
//!   every "thread" of a node as a group of tasks of its one runtime, so the sender
//!   is a task of the same OS thread; a signal becomes a readiness event after a
//!   seeded hand-off latency (the wake-up of another thread), part of the trace.
//!
//! The receiver waits on [`Notifier::fd`] for `Interest::Read` like on a socket, and
//! calls [`Notifier::clear`] before it looks at its queue again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::ThreadId;

use crate::sched::core;

enum Kind {
    Eventfd(OwnedFd),
    /// An event that lives in the driver of the runtime on `thread`.
    InDriver {
        thread: ThreadId,
    },
}

/// A wake-up for the runtime whose driver made it; `Send + Sync`.
pub struct Notifier {
    fd: RawFd,
    kind: Kind,
}

impl Notifier {
    /// A kernel eventfd: what the real reactor makes, and what a `Remote` made
    /// outside any runtime uses.
    pub fn eventfd() -> io::Result<Notifier> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh fd nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Notifier {
            fd: owned.as_raw_fd(),
            kind: Kind::Eventfd(owned),
        })
    }

    /// An event `fd` of the calling thread's driver (one that overrides
    /// [`Io::notify`](super::Io::notify) and its companions).
    pub fn in_driver(fd: RawFd) -> Notifier {
        Notifier {
            fd,
            kind: Kind::InDriver {
                thread: std::thread::current().id(),
            },
        }
    }

    /// What the receiver registers and waits on (`Interest::Read`).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Wakes the receiver (or makes its next wait return at once).
    pub fn signal(&self) {
        match &self.kind {
            Kind::Eventfd(fd) => {
                let one: u64 = 1;
                // SAFETY: writing 8 bytes from a live u64 to our eventfd. It can fail
                // only if the counter would overflow (then a wakeup is pending anyway).
                unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
            Kind::InDriver { thread } => {
                assert_eq!(
                    *thread,
                    std::thread::current().id(),
                    "a simulated notifier is signalled from its simulation's thread only"
                );
                // Outside the runtime (the simulation is over) no one can be woken.
                if crate::sched::is_running() {
                    let fd = self.fd;
                    let _ = core().with_io("notify", |io| io.notify(fd));
                }
            }
        }
    }

    /// Consumes the pending signal (the receiver then looks at its queue again).
    pub fn clear(&self) {
        match &self.kind {
            Kind::Eventfd(fd) => {
                let mut count: u64 = 0;
                // SAFETY: reading 8 bytes into a live u64 from our non-blocking eventfd.
                unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            }
            Kind::InDriver { .. } => {
                let fd = self.fd;
                let _ = core().with_io("notify clear", |io| io.notify_clear(fd));
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // An eventfd closes with its OwnedFd. A driver's event is given back to the
        // driver if its runtime still runs here; otherwise it went with the runtime.
        if let Kind::InDriver { thread } = &self.kind
            && *thread == std::thread::current().id()
            && crate::sched::is_running()
        {
            let fd = self.fd;
            let _ = core().with_io("notify close", |io| io.notify_close(fd));
        }
    }
}
