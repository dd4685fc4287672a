//! The seam between the scheduler and the OS (tokio's `park` / `park_timeout(0)`).
//!
//! The scheduler calls a [`Driver`] only when it needs time or events: to read the
//! clock, and to park when no task is ready. The driver wakes the tasks whose events
//! arrived by calling [`TaskRef::wake`](crate::TaskRef::wake). Timers are the
//! scheduler's; the driver only sleeps until the next deadline.
//!
//! A driver that does I/O also implements [`Io`]: the non-blocking primitives (a
//! socket call that may say `WouldBlock`, interest in readiness, submission of a file
//! operation) on which `net` and `file` build their pseudo-blocking calls. The real
//! driver ([`Reactor`]: epoll + eventfd + kernel AIO) passes them to the kernel; the
//! simulation answers them from memory. A [`Notifier`] is the wake-up one runtime
//! gives another (`remote`): made by the receiving runtime's driver, so that a
//! hand-off between runtimes goes through this seam too.

pub(crate) mod aio;
pub(crate) mod notify;
mod reactor;
pub(crate) mod sim;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

pub use notify::Notifier;
pub use reactor::{IoConfig, Reactor};

use crate::task::TaskRef;
use crate::timer::Instant;

pub(crate) use aio::FileOp;

/// Which readiness a task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// Counters of a driver's I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Calls that waited for or polled events (epoll_wait and friends).
    pub polls: u64,
    /// Polls that found nothing.
    pub polls_empty: u64,
    pub aio_submitted: u64,
    /// io_submit calls that submitted them (fewer: one submits every operation
    /// queued since the last poll; the simulator counts none).
    pub aio_submit_calls: u64,
    pub aio_completed: u64,
    /// AIO operations in flight now.
    pub aio_in_flight: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Tasks parked waiting for socket or eventfd readiness now.
    pub fd_waiters: usize,
    /// Parks whose poll before blocking (`IoConfig::poll_sockets_before_park`)
    /// caught an event, so that they did not block.
    pub spins_caught: u64,
}

/// Non-blocking I/O primitives of a driver. Every call returns at once; a call that
/// cannot proceed returns `ErrorKind::WouldBlock` and the caller registers interest
/// with [`Io::wait`] and parks.
pub trait Io {
    /// A TCP listening socket bound to `addr`.
    fn listen(&mut self, addr: SocketAddr, backlog: u32) -> io::Result<RawFd>;
    /// An accepted connection (non-blocking, TCP_NODELAY) and its peer.
    fn accept(&mut self, fd: RawFd) -> io::Result<(RawFd, SocketAddr)>;
    /// Starts a non-blocking connect; the socket is writable when it has finished.
    fn connect(&mut self, addr: SocketAddr) -> io::Result<RawFd>;
    /// The outcome of a finished connect (SO_ERROR).
    fn connect_result(&mut self, fd: RawFd) -> io::Result<()>;
    fn local_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr>;
    fn peer_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr>;
    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize>;
    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize>;
    fn shutdown(&mut self, fd: RawFd, how: Shutdown) -> io::Result<()>;
    /// Adds `fd` to the readiness set; its owner calls this once, before its first
    /// wait. Anything the driver remembered of an earlier fd with the same number is
    /// forgotten.
    fn register(&mut self, fd: RawFd) -> io::Result<()>;
    /// Wakes `task` when `fd` may have become ready for `interest` (or has an error
    /// or hang-up). Several tasks may wait; an event wakes them all.
    fn wait(&mut self, fd: RawFd, interest: Interest, task: TaskRef) -> io::Result<()>;
    /// Whether the driver has seen the peer of `fd` close or reset (an end of stream
    /// a recv would report without a new readiness event).
    fn peer_closed(&self, _fd: RawFd) -> bool {
        false
    }
    /// Whether a read-readiness event for `fd` came while no task waited to read it
    /// (so nobody was woken by it), since the last call; clears it. A reader that
    /// drained the socket before must read again rather than wait for that edge.
    fn take_missed_read(&mut self, _fd: RawFd) -> bool {
        false
    }
    /// Withdraws the waits on `fd` for `interest` whose tasks no longer wait there
    /// (timed out, or unwinding).
    fn cancel_wait(&mut self, fd: RawFd, interest: Interest);
    /// Closes `fd` and forgets everything about it.
    fn close(&mut self, fd: RawFd);
    /// Forgets `fd` (removes it from the readiness set) without closing it, for an fd
    /// whose owner closes it elsewhere later.
    fn forget(&mut self, fd: RawFd);
    /// Opens a file; `flags` are open(2) flags (O_DIRECT, O_DSYNC, O_CREAT, ...).
    fn open(&mut self, path: &std::path::Path, flags: i32, mode: u32) -> io::Result<RawFd>;
    /// Size of the file behind `fd`.
    fn file_len(&mut self, fd: RawFd) -> io::Result<u64>;
    /// Sets the size of the file behind `fd`.
    fn set_file_len(&mut self, fd: RawFd, len: u64) -> io::Result<()>;
    /// Takes an exclusive advisory lock on the file behind `fd` (flock(2) semantics:
    /// held until every descriptor of this open file is closed), or fails with
    /// `WouldBlock` if another open file holds it.
    fn lock_exclusive(&mut self, fd: RawFd) -> io::Result<()>;
    /// Releases the lock [`Io::lock_exclusive`] took on `fd` (nothing if none).
    fn unlock(&mut self, fd: RawFd) -> io::Result<()>;
    /// Starts a file operation. On completion the driver stores the result in `op`
    /// and wakes its waiter; until then it keeps `op` (and so the buffers in it)
    /// alive, even if the submitting task is gone.
    fn submit(&mut self, op: Rc<FileOp>) -> io::Result<()>;
    /// Room for more file operations in flight; when none, wait with `wait_slot`.
    fn submit_slots(&self) -> usize;
    /// Wakes `task` when a file operation completes (a slot frees up).
    fn wait_slot(&mut self, task: TaskRef);
    /// A wake-up another runtime (a `Remote`) gives this one: a kernel eventfd,
    /// unless the driver keeps its own events (the simulator).
    fn notifier(&mut self) -> io::Result<Notifier> {
        Notifier::eventfd()
    }
    /// Signals the driver's own event `fd` (a [`Notifier::in_driver`]): its waiters
    /// wake. Drivers without their own events never see this call.
    fn notify(&mut self, _fd: RawFd) {}
    /// Consumes the pending signal of the driver's own event `fd`.
    fn notify_clear(&mut self, _fd: RawFd) {}
    /// Gives back the driver's own event `fd`.
    fn notify_close(&mut self, _fd: RawFd) {}
    /// Counts bytes moved by `net`/`file` calls built on this driver.
    fn count_bytes(&mut self, read: u64, written: u64);
    fn stats(&self) -> IoStats;
}

pub trait Driver {
    /// The current time on this driver's clock.
    fn now(&self) -> Instant;

    /// Waits until an event readies a task or `deadline` passes, whichever is first.
    /// `None`: no timer is armed, wait for events only. A deadline in the past means
    /// poll without blocking. Spurious returns are allowed.
    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()>;

    /// How many operations are in flight that may still wake a task. With none, no
    /// ready task and no timer, the runtime is deadlocked.
    fn in_flight(&self) -> usize;

    /// The driver's I/O primitives; `None` for a driver without I/O.
    fn io(&mut self) -> Option<&mut dyn Io> {
        None
    }

    /// Starts the operations the tasks submitted that wait to be started together
    /// (the real driver's gathered AIO submission: each `park` does it first). The
    /// scheduler calls it before it tears the tasks down, so an operation a task
    /// submitted is started, as it would have been at once, whatever comes next.
    fn flush(&mut self) {}
}

/// The timer-only driver: the monotonic clock, and `nanosleep` until the next timer.
#[derive(Debug, Default)]
pub struct SleepDriver;

impl Driver for SleepDriver {
    fn now(&self) -> Instant {
        Instant::monotonic()
    }

    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let Some(deadline) = deadline else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SleepDriver::park with no deadline and no I/O would sleep forever",
            ));
        };
        let now = Instant::monotonic();
        if deadline > now {
            std::thread::sleep(Duration::from_nanos(deadline.as_nanos() - now.as_nanos()));
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        0
    }
}
