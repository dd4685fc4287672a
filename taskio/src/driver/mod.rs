//! The seam between the scheduler and the OS (tokio's `park` / `park_timeout(0)`).
//!
//! The scheduler calls a [`Driver`] only when it needs time or events: to read the
//! clock, and to park when no task is ready. The driver wakes the tasks whose events
//! arrived by calling [`TaskRef::wake`](crate::TaskRef::wake). Timers are the
//! scheduler's; the driver only sleeps until the next deadline. Real I/O (epoll and
//! kernel AIO) and the deterministic simulation are further drivers behind this seam.

use std::io;
use std::time::Duration;

use crate::timer::Instant;

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
