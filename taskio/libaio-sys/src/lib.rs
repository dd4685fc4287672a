//! The Linux kernel's native asynchronous I/O interface, as declared in
//! `<linux/aio_abi.h>`, called through raw syscalls.
//!
//! This is the interface the C library libaio wraps (`io_setup`, `io_submit`,
//! `io_getevents`, `io_cancel`, `io_destroy`, `struct iocb`, `struct io_event`),
//! bound here with the `libc` crate's `syscall` so that no C library has to be
//! installed. It is what the seed's `task_aioread` / `task_aiowrite` used: the task
//! fills one `iocb` on its own stack with `io_prep_pread` / `io_prep_pwrite`, points
//! its completion at the runtime's eventfd with `io_set_eventfd`, stores a cookie in
//! `aio_data`, submits it and sleeps; a system task waiting on the eventfd reaps the
//! `io_event`s and wakes the task named by each `data`. The runtime above (`taskio`)
//! builds that loop; this crate is only the binding.
//!
//! # What this crate never does
//! - **Allocate.** Every function works on memory its caller passes in.
//! - **Block**, except in [`io_getevents`], for at most the timeout it is given
//!   (or until `min_nr` events arrive when the timeout is `None`). The kernel itself
//!   may still sleep inside [`io_submit`] (a buffered file is read synchronously; an
//!   `O_DIRECT` request may wait for a block-layer tag or for the filesystem to
//!   allocate blocks; `RWF_NOWAIT` turns some of those waits into `EAGAIN`), and
//!   [`io_destroy`] waits for every request still in flight on the context.
//! - **Hide errors.** A failed syscall becomes an [`std::io::Error`] carrying the
//!   kernel's errno; a partial submission is returned as the count the kernel
//!   accepted; a failed request is an [`io_event`] whose negative `res` is left for the
//!   caller ([`io_event::result`] turns it into an `io::Result`). Nothing is retried,
//!   not even `EINTR`.
//!
//! # Where the unsafety is
//! Filling an [`iocb`] is safe: it only stores integers, including the addresses of
//! buffers. The kernel dereferences those addresses after [`io_submit`] returns,
//! so `io_submit` is `unsafe`, and its contract is the rule the runtime above must keep:
//! **an `iocb` and every buffer (and `iovec` array) it names stay allocated, unmoved
//! and otherwise unaccessed from submission until its completion has been reaped by
//! [`io_getevents`]**, even if the task that submitted it panics. (`io_destroy`
//! waits for in-flight requests before it returns, so destroying the context is
//! the one other way to end the kernel's use of them.)
//!
//! # Example
//! ```
//! use libaio_sys::{io_destroy, io_event, io_getevents, io_setup, io_submit, iocb};
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//!
//! # fn main() -> std::io::Result<()> {
//! let path = std::env::temp_dir().join(format!("libaio-sys-doc-{}", std::process::id()));
//! let file = std::fs::File::options().read(true).write(true).create(true).open(&path)?;
//! let ctx = io_setup(4)?;
//! let message = *b"hello";
//! let mut cb = iocb::io_prep_pwrite(file.as_raw_fd(), message.as_ptr(), message.len(), 0);
//! cb.set_data(7);
//! // SAFETY: `cb` and `message` are locals that outlive the io_getevents below, which
//! // reaps this request's completion before either goes out of scope.
//! let submitted = unsafe { io_submit(ctx, &[&raw mut cb])? };
//! assert_eq!(submitted, 1);
//! let mut events = [io_event::default(); 1];
//! let reaped = io_getevents(ctx, 1, &mut events, Some(Duration::from_secs(10)))?;
//! assert_eq!(reaped, 1);
//! assert_eq!(events[0].data, 7);
//! assert_eq!(events[0].result()?, 5);
//! io_destroy(ctx)?;
//! std::fs::remove_file(&path)?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

// The layouts below are checked for little-endian 64-bit Linux (where `aio_key` comes
// before `aio_rw_flags`) and the syscall numbers are libc's for x86_64; no other
// target has been tested.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("libaio-sys binds the kernel AIO ABI of x86_64 Linux only");

mod abi;
mod prep;
mod syscall;

pub use abi::{
    IOCB_CMD_FDSYNC, IOCB_CMD_FSYNC, IOCB_CMD_NOOP, IOCB_CMD_POLL, IOCB_CMD_PREAD, IOCB_CMD_PREADV,
    IOCB_CMD_PWRITE, IOCB_CMD_PWRITEV, IOCB_FLAG_IOPRIO, IOCB_FLAG_RESFD, RWF_APPEND, RWF_DSYNC,
    RWF_HIPRI, RWF_NOWAIT, RWF_SYNC, aio_context_t, io_event, iocb,
};
pub use prep::io_set_eventfd;
pub use syscall::{io_cancel, io_destroy, io_getevents, io_setup, io_submit};
