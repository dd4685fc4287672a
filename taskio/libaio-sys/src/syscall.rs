//! The five AIO syscalls, called through `libc::syscall`.
//!
//! `libc::syscall` returns -1 and sets `errno` when the kernel returns a negated
//! errno; each wrapper turns that into `io::Error::last_os_error()` right after the
//! call, before anything else can overwrite `errno`. Every argument is passed as a
//! full-width `c_long` or pointer, because `syscall` is variadic and reads each
//! argument as a `long`.

use std::io;
use std::ptr;
use std::time::Duration;

use libc::c_long;

use crate::abi::{aio_context_t, io_event, iocb};

/// A slice length as the kernel's `long` count.
fn count_of(len: usize) -> c_long {
    // A slice of non-zero-sized elements never holds more than isize::MAX of them.
    c_long::try_from(len).expect("a slice length fits a c_long")
}

/// The syscall's non-negative result, or the error its errno names.
fn check(ret: c_long) -> io::Result<usize> {
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // libc::syscall maps every kernel error to -1, so anything else is a result.
    Ok(usize::try_from(ret).expect("a syscall result other than -1 is not negative"))
}

/// `io_setup(2)`: creates a context that can hold `nr_events` requests in flight
/// (the kernel may round this up).
///
/// # Errors
/// `EINVAL` if `nr_events` is 0 or too large; `EAGAIN` if it would exceed
/// `/proc/sys/fs/aio-max-nr` summed over the system; `ENOMEM`.
///
/// # Panics
/// If the kernel reports success without a context (it never does).
pub fn io_setup(nr_events: u32) -> io::Result<aio_context_t> {
    // The kernel requires *ctxp == 0 on entry and fails with EINVAL otherwise.
    let mut ctx: aio_context_t = 0;
    // SAFETY: io_setup reads and then writes one aio_context_t through its second
    // argument, and touches no other user memory. `ctx` is a live, aligned,
    // initialised local that nothing else references during the call.
    let ret = unsafe { libc::syscall(libc::SYS_io_setup, c_long::from(nr_events), &raw mut ctx) };
    check(ret)?;
    assert_ne!(ctx, 0, "io_setup({nr_events}) succeeded without a context");
    Ok(ctx)
}

/// `io_destroy(2)`: cancels what can be cancelled, **waits for every request still in
/// flight on `ctx` to complete**, then frees the context. Their completions are
/// discarded, but once this returns the kernel no longer uses any iocb or buffer
/// submitted on `ctx`.
///
/// Destroy a context exactly once: its handle is an address that a later
/// [`io_setup`] in this process may return again (see [`aio_context_t`]).
///
/// # Errors
/// `EINVAL` if `ctx` is not a live context of this process.
pub fn io_destroy(ctx: aio_context_t) -> io::Result<()> {
    // SAFETY: io_destroy takes no pointer to dereference: the kernel looks `ctx` up
    // among this process's contexts (failing with EINVAL if it is not one) and, for
    // a live one, returns only after its in-flight requests are done with their
    // buffers, so no memory anyone still uses is touched after the call.
    let ret = unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    check(ret).map(|_| ())
}

/// `io_submit(2)`: queues the requests `iocbs` points to, in order, and returns how
/// many the kernel accepted.
///
/// Fewer than `iocbs.len()` are accepted when the kernel found a fault in request
/// number `n` after accepting `n` (that request and those after it were not
/// queued; submit it again alone to learn its error) or when more were passed than
/// the context holds. A request that is accepted can still fail: its error comes back
/// as a negative `res` in its [`io_event`].
///
/// The kernel may sleep in here (see the crate documentation).
///
/// # Errors
/// Only when not even the first request was accepted: `EBADF` (bad `aio_fildes` or
/// `aio_resfd`, or a write to a file not open for writing), `EINVAL` (unknown
/// opcode, `aio_reserved2` set, bad `ctx`), `EAGAIN` (the context is full), `EFAULT`.
///
/// # Safety
/// For every request the kernel accepts:
/// - the `iocb` is valid for reads and writes (the kernel writes `aio_key` during
///   the call), and stays allocated and at the same address, not written by anyone,
///   until its completion has been reaped with [`io_getevents`] or `ctx` has been
///   destroyed: its address is the request's identity ([`io_event::obj`],
///   [`io_cancel`]);
/// - every buffer it names (`aio_buf` for `PREAD`/`PWRITE`; for `PREADV`/`PWRITEV`
///   the `iovec` array and every buffer in it) is valid for the access the command
///   makes (writes for a read, reads for a write) over its full length, and stays
///   allocated and unmoved, and is neither read nor written by anyone else for a
///   read (nor written for a write), until that same point;
/// - these hold even when the code that submitted the request unwinds: whoever owns
///   the memory must reap the completion (or destroy `ctx`) before freeing it.
///
/// The slice `iocbs` itself is only read during the call.
///
/// # Panics
/// If the kernel claims to have accepted more requests than it was given (it never
/// does).
pub unsafe fn io_submit(ctx: aio_context_t, iocbs: &[*mut iocb]) -> io::Result<usize> {
    // SAFETY: the kernel reads `iocbs.len()` pointers from `iocbs`, a live slice, and
    // dereferences each pointer and the buffers its iocb names under the caller's
    // contract above (this function's `# Safety`); it touches no other user memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_submit,
            ctx,
            count_of(iocbs.len()),
            iocbs.as_ptr(),
        )
    };
    let accepted = check(ret)?;
    assert!(
        accepted <= iocbs.len(),
        "io_submit accepted {accepted} of {} requests",
        iocbs.len()
    );
    Ok(accepted)
}

/// `io_cancel(2)`: asks the kernel to cancel the request submitted on `ctx` from the
/// `iocb` at `iocb`.
///
/// # Errors
/// The kernel's answer is returned as it is, and its usual answers are errors:
///
/// - `Err(EINPROGRESS)` means the cancellation has started (this is what current
///   kernels return on success); the request still completes through the ring, and
///   its event must still be reaped with [`io_getevents`] before its memory is
///   released. `result` is not written.
/// - `Err(EINVAL)` means the request is not cancellable (file reads and writes
///   never are; `IOCB_CMD_POLL` is), has already completed, or is unknown.
/// - `Ok(())` comes only from old kernels that wrote the completion into `result`
///   instead of the ring.
///
/// # Safety
/// `iocb` must be valid for reads of an [`iocb`] for the duration of the call (the
/// kernel reads its `aio_key`).
pub unsafe fn io_cancel(
    ctx: aio_context_t,
    iocb: *mut iocb,
    result: &mut io_event,
) -> io::Result<()> {
    // SAFETY: the kernel reads `aio_key` through `iocb`, valid for reads under the
    // caller's contract, and compares the address with its requests; it may write one
    // io_event through `result`, an exclusive reference to a live io_event.
    let ret = unsafe { libc::syscall(libc::SYS_io_cancel, ctx, iocb, ptr::from_mut(result)) };
    check(ret).map(|_| ())
}

/// `io_getevents(2)`: waits until at least `min_nr` requests on `ctx` have completed
/// or `timeout` has passed, then moves up to `events.len()` completions into the
/// front of `events` and returns how many.
///
/// `timeout` `None` waits for `min_nr` without limit; `Some(Duration::ZERO)` takes
/// what has already completed and never sleeps. Fewer than `min_nr` events (maybe 0)
/// are returned when the timeout expires.
///
/// # Errors
/// `EINTR` when a signal arrived before any event (not retried here); `EINVAL` if
/// `ctx` is not a live context; `EFAULT`.
///
/// # Panics
/// If `min_nr > events.len()`: the kernel would reject it with `EINVAL`, and it can
/// only be a caller's mistake. (Also if the kernel returned more events than there
/// was room for, which it never does.)
pub fn io_getevents(
    ctx: aio_context_t,
    min_nr: usize,
    events: &mut [io_event],
    timeout: Option<Duration>,
) -> io::Result<usize> {
    assert!(
        min_nr <= events.len(),
        "io_getevents: min_nr {min_nr} exceeds the {} events of room",
        events.len()
    );
    // A timeout too long for a timespec is as good as none at all.
    let timespec = timeout.map(|timeout| libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: c_long::from(timeout.subsec_nanos()),
    });
    let timespec_ptr = timespec.as_ref().map_or(ptr::null(), ptr::from_ref);
    // SAFETY: the kernel writes at most `events.len()` io_events into `events`, an
    // exclusive slice of that many, and reads one timespec through `timespec_ptr`,
    // which is null or points to the local `timespec`, alive until the call returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            count_of(min_nr),
            count_of(events.len()),
            events.as_mut_ptr(),
            timespec_ptr,
        )
    };
    let reaped = check(ret)?;
    assert!(
        reaped <= events.len(),
        "io_getevents returned {reaped} events into {}",
        events.len()
    );
    Ok(reaped)
}
