//! `taskio`: a libtask-style runtime of stackful tasks, one runtime per OS thread.
//!
//! Renders the seed's libtask usage and its "FIXES THAT MAY BE REQUIRED IN LIBTASK"
//! (#1: `spawn` returns an error instead of aborting; #3: no global task tables, one
//! [`Runtime`] per thread; #5: [`Runtime::run`] returns to its caller instead of calling
//! `exit`, and a panicking task ends alone). Fixes #2 and #4 (epoll, kernel AIO) plug
//! into the [`Driver`] seam.
//!
//! What is here:
//! - tasks: [`spawn`], [`Builder`], [`JoinHandle`], [`yield_now`], [`sleep`],
//!   [`current`], task-local storage ([`local_set`], [`local_with`], [`local_take`]);
//! - task-aware synchronisation, none of which needs a mutex because tasks of one
//!   runtime never run at the same time: [`Rendez`], [`QLock`], [`RwLock`],
//!   [`Channel`] with [`select`], [`Barrier`], [`Pool`];
//! - the [`Driver`] seam between the scheduler and the OS, and the timer-only
//!   [`SleepDriver`];
//! - [`rand::Rng`], the one seeded generator of the simulator and of every
//!   scenario, benchmark and test that wants repeatable randomness.
//!
//! What it must never do: share mutable state between runtimes, move a task between
//! threads, abort the process on an operating error, or block the thread while a task
//! is ready to run.
#![deny(unsafe_op_in_unsafe_fn)]

mod buf;
mod context;
mod driver;
mod error;
pub mod file;
pub mod net;
mod overflow;
pub mod rand;
pub mod remote;
mod runq;
mod sched;
pub mod sim;
mod stack;
mod stall;
mod sync;
mod task;
mod timer;

pub use buf::{ALIGN, AlignedBuf};
pub use driver::aio::{FileOp, FileOpKind};
pub use driver::{Driver, Interest, Io, IoConfig, IoStats, Notifier, Reactor, SleepDriver};
pub use error::{DeadlockTask, IoError, JoinError, RunError, SpawnError};
pub use sched::{Config, Runtime, RuntimeStats};
pub use stall::{DEFAULT_STALL_THRESHOLD, StallReport, StallSink};
pub use sync::barrier::Barrier;
pub use sync::channel::{Channel, RecvError, SendError, TryRecvError, TrySendError};
pub use sync::pool::{Pool, PoolItem, PoolStats};
pub use sync::qlock::{QLock, QLockGuard};
pub use sync::rendez::Rendez;
pub use sync::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use sync::select::{Selectable, select};
pub use task::{
    Builder, Current, JoinHandle, TaskId, TaskRef, WaitReason, current, is_cancellation, local_set,
    local_take, local_with, now, park, park_until, sleep, sleep_until, spawn, yield_now,
};
pub use timer::{Deadline, Instant};

/// Default size of a task's stack: 256 KiB of address space. Only the pages a task
/// touches become resident (a sleeping task holds about one page), so the figure
/// bounds depth, not memory. The guard page below it is extra.
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// Default limit on live tasks per runtime. Each stack is two kernel mappings (the
/// stack and its guard page) and Linux allows 65,530 mappings per process by default.
pub const DEFAULT_MAX_TASKS: usize = 16 * 1024;

/// Default number of finished tasks' stacks a runtime keeps for reuse.
pub const DEFAULT_STACK_POOL_MAX: usize = 256;
