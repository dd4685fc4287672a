//! Kernel AIO for files: the operation record a task submits ([`FileOp`]) and the
//! table of operations in flight ([`AioQueue`]), as the seed's task_aiorw / aiotask.
//!
//! Each operation is a heap record holding its iocb, its iovec array and references
//! to the buffers the kernel uses; the queue holds one reference from submission
//! until the completion is reaped. So a task that is torn down while its I/O is in
//! flight frees nothing the kernel may still write into. The iocb's `aio_data` is the
//! record's slot in the table; completions are signalled on an eventfd the reactor
//! watches, and reaped with io_getevents (skipped when the completion ring mapped at
//! the context address shows nothing new).
//!
//! Submission is gathered: [`AioQueue::submit`] queues the operation and
//! [`AioQueue::flush`] (the reactor calls it whenever the scheduler polls or parks,
//! that is once no task is ready, or once a round) submits everything queued with one
//! io_submit. The operations that tasks made ready together start cost one system
//! call instead of one each, and from three iocbs on the kernel plugs the batch and
//! kicks the disk once: on a virtio disk every kick is a VM exit (`iowrite16`, 14% of
//! the CPU of `tdrv bench dtm`'s replicated writes before, perf). A failed submission
//! completes its operation with the error, which the task sees as it would have.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use libaio_sys as sys;

use crate::buf::{AlignedBuf, Hold};
use crate::task::TaskRef;

/// Offsets are u64 in the API and i64 in the ABI; `file` checks the range first.
fn offset_i64(offset: u64) -> i64 {
    i64::try_from(offset).expect("file offset over i64::MAX (checked by the caller)")
}

/// What a file operation does, for error messages and the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOpKind {
    Read,
    Write,
    ReadV,
    WriteV,
    Fsync,
    Fdatasync,
}

/// One file operation: built by `file`, submitted through [`super::Io::submit`],
/// completed by the driver.
pub struct FileOp {
    kind: FileOpKind,
    iocb: UnsafeCell<sys::iocb>,
    /// For vectored operations; its heap buffer does not move while the op lives.
    iov: Vec<libc::iovec>,
    /// The buffers the kernel uses, kept until completion.
    keep: RefCell<Vec<Hold>>,
    result: Cell<Option<i64>>,
    waiter: RefCell<Option<TaskRef>>,
}

impl FileOp {
    fn new(
        kind: FileOpKind,
        iocb: sys::iocb,
        iov: Vec<libc::iovec>,
        keep: Vec<Hold>,
    ) -> Rc<FileOp> {
        Rc::new(FileOp {
            kind,
            iocb: UnsafeCell::new(iocb),
            iov,
            keep: RefCell::new(keep),
            result: Cell::new(None),
            waiter: RefCell::new(None),
        })
    }

    /// pread of `len` bytes at `offset` into `buf`.
    pub(crate) fn read(fd: RawFd, buf: &mut AlignedBuf, len: usize, offset: u64) -> Rc<FileOp> {
        assert!(
            len <= buf.capacity(),
            "read of {len} bytes into a buffer of {}",
            buf.capacity()
        );
        let iocb = sys::iocb::io_prep_pread(fd, buf.as_mut_ptr(), len, offset_i64(offset));
        FileOp::new(
            FileOpKind::Read,
            iocb,
            Vec::new(),
            vec![Hold::new(buf, true)],
        )
    }

    /// pwrite of the first `len` bytes of `buf` at `offset`; `durable` sets RWF_DSYNC.
    pub(crate) fn write(
        fd: RawFd,
        buf: &AlignedBuf,
        len: usize,
        offset: u64,
        durable: bool,
    ) -> Rc<FileOp> {
        assert!(
            len <= buf.capacity(),
            "write of {len} bytes from a buffer of {}",
            buf.capacity()
        );
        let mut iocb = sys::iocb::io_prep_pwrite(fd, buf.as_ptr(), len, offset_i64(offset));
        if durable {
            iocb.set_rw_flags(sys::RWF_DSYNC);
        }
        FileOp::new(
            FileOpKind::Write,
            iocb,
            Vec::new(),
            vec![Hold::new(buf, false)],
        )
    }

    /// preadv into each buffer's full length, in order, starting at `offset`.
    pub(crate) fn readv(fd: RawFd, bufs: &mut [&mut AlignedBuf], offset: u64) -> Rc<FileOp> {
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let keep = bufs.iter().map(|b| Hold::new(b, true)).collect();
        let iocb = sys::iocb::io_prep_preadv(fd, iov.as_ptr(), iov.len(), offset_i64(offset));
        FileOp::new(FileOpKind::ReadV, iocb, iov, keep)
    }

    /// pwritev of each buffer's full length, in order, starting at `offset`.
    pub(crate) fn writev(
        fd: RawFd,
        bufs: &[&AlignedBuf],
        offset: u64,
        durable: bool,
    ) -> Rc<FileOp> {
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        let keep = bufs.iter().map(|b| Hold::new(b, false)).collect();
        let mut iocb = sys::iocb::io_prep_pwritev(fd, iov.as_ptr(), iov.len(), offset_i64(offset));
        if durable {
            iocb.set_rw_flags(sys::RWF_DSYNC);
        }
        FileOp::new(FileOpKind::WriteV, iocb, iov, keep)
    }

    pub(crate) fn fsync(fd: RawFd, data_only: bool) -> Rc<FileOp> {
        let (kind, iocb) = if data_only {
            (FileOpKind::Fdatasync, sys::iocb::io_prep_fdsync(fd))
        } else {
            (FileOpKind::Fsync, sys::iocb::io_prep_fsync(fd))
        };
        FileOp::new(kind, iocb, Vec::new(), Vec::new())
    }

    pub fn kind(&self) -> FileOpKind {
        self.kind
    }

    /// The request as the kernel sees it (opcode, fd, buffer, length, offset).
    pub fn iocb(&self) -> sys::iocb {
        // SAFETY: the iocb is written only before submission (`new`, `submit`); a
        // copy read here races with nothing on this thread.
        unsafe { *self.iocb.get() }
    }

    /// The iovecs of a vectored operation.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// The kernel's result: bytes moved, or a negated errno. None while in flight.
    pub fn result(&self) -> Option<i64> {
        self.result.get()
    }

    pub(crate) fn set_waiter(&self, task: TaskRef) {
        *self.waiter.borrow_mut() = Some(task);
    }

    /// Records the result, releases the buffers and wakes the waiter (the driver,
    /// once the kernel is done with the operation).
    pub fn complete(&self, res: i64) {
        self.result.set(Some(res));
        self.keep.borrow_mut().clear();
        let waiter = self.waiter.borrow_mut().take();
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

fn is_sync(op: &FileOp) -> bool {
    matches!(op.kind(), FileOpKind::Fsync | FileOpKind::Fdatasync)
}

/// The AIO context of one runtime and its operations in flight.
pub(crate) struct AioQueue {
    ctx: sys::aio_context_t,
    depth: usize,
    ops: Vec<Option<Rc<FileOp>>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Of those, fsync/fdatasync operations (the kernel runs them on a worker).
    syncs_in_flight: usize,
    events: Vec<sys::io_event>,
    slot_waiters: VecDeque<TaskRef>,
    /// Slots of the operations submitted by tasks and not yet given to the kernel,
    /// in submission order (counted in `in_flight`; at most `depth`).
    queued: Vec<usize>,
    /// The iocb pointers of one flush (kept for its capacity).
    iocbs: Vec<*mut sys::iocb>,
    eventfd: RawFd,
    pub(crate) submitted: u64,
    /// io_submit calls made.
    pub(crate) submit_calls: u64,
    pub(crate) completed: u64,
}

/// Layout of the head of the completion ring the kernel maps at the context address.
#[repr(C)]
struct AioRing {
    id: u32,
    nr: u32,
    head: u32,
    tail: u32,
    magic: u32,
}

const AIO_RING_MAGIC: u32 = 0xa10a10a1;

impl AioQueue {
    /// An AIO context for `depth` operations in flight, completions signalled on
    /// `eventfd`.
    pub(crate) fn new(depth: usize, eventfd: RawFd) -> io::Result<AioQueue> {
        assert!(
            depth > 0 && depth <= 65536,
            "AIO depth {depth} out of range"
        );
        let ctx = sys::io_setup(depth as u32)?;
        Ok(AioQueue {
            ctx,
            depth,
            ops: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
            syncs_in_flight: 0,
            events: vec![sys::io_event::default(); depth.min(256)],
            slot_waiters: VecDeque::new(),
            queued: Vec::with_capacity(depth),
            iocbs: Vec::with_capacity(depth),
            eventfd,
            submitted: 0,
            submit_calls: 0,
            completed: 0,
        })
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// fsync/fdatasync operations in flight: the kernel runs them on a worker
    /// thread of the submitting CPU, which a thread spinning there would delay.
    pub(crate) fn syncs_in_flight(&self) -> usize {
        self.syncs_in_flight
    }

    pub(crate) fn slots(&self) -> usize {
        self.depth - self.in_flight
    }

    pub(crate) fn wait_slot(&mut self, task: TaskRef) {
        if self.slot_waiters.len() >= 64 && self.slot_waiters.len().is_power_of_two() {
            self.slot_waiters.retain(TaskRef::is_current_wait);
        }
        self.slot_waiters.push_back(task);
    }

    /// Queues `op` for the next [`AioQueue::flush`]; from now on it counts as in
    /// flight. Fails only when every slot is taken.
    pub(crate) fn submit(&mut self, op: Rc<FileOp>) -> io::Result<()> {
        let Some(slot) = self.free.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("AIO queue full ({} in flight)", self.depth),
            ));
        };
        let iocb = op.iocb.get();
        // SAFETY: `iocb` points into `op`, which is not yet shared with the kernel;
        // this thread is the only one touching it.
        unsafe {
            (*iocb).set_data(slot as u64);
            sys::io_set_eventfd(&mut *iocb, self.eventfd);
        }
        if is_sync(&op) {
            self.syncs_in_flight += 1;
        }
        self.ops[slot] = Some(op);
        self.in_flight += 1;
        self.queued.push(slot);
        debug_assert!(self.queued.len() <= self.depth);
        Ok(())
    }

    /// Gives the kernel every queued operation, in order, with as few io_submit
    /// calls as it accepts them in; an operation it refuses is completed with the
    /// error (its task sees it as the result of its I/O). Returns how many it
    /// refused.
    pub(crate) fn flush(&mut self) -> usize {
        let mut refused = 0;
        // Bounded: each pass submits at least one queued operation or fails one.
        while !self.queued.is_empty() {
            self.iocbs.clear();
            for &slot in &self.queued {
                let op = self.ops[slot].as_ref().expect("a queued slot holds its op");
                self.iocbs.push(op.iocb.get());
            }
            // SAFETY: each iocb, and every buffer and iovec it points to, lives in
            // its op (whose `keep` holds the buffers); `self.ops` keeps each op alive
            // and unmoved (behind an `Rc`) until `reap` has seen its completion, or
            // until `fail` takes back one the kernel refused (it never saw it).
            let submitted = unsafe { sys::io_submit(self.ctx, &self.iocbs) };
            self.submit_calls += 1;
            match submitted {
                Ok(n) if n > 0 => {
                    self.queued.drain(..n);
                    self.submitted += n as u64;
                }
                // The kernel took none without saying why: the first fails, so that
                // the loop ends.
                Ok(_) => {
                    self.fail_first(io::Error::from_raw_os_error(libc::EAGAIN));
                    refused += 1;
                }
                Err(e) => {
                    self.fail_first(e);
                    refused += 1;
                }
            }
        }
        refused
    }

    /// Completes the first queued operation with `e`: the kernel refused it.
    fn fail_first(&mut self, e: io::Error) {
        let slot = self.queued.remove(0);
        let op = self.ops[slot].take().expect("a queued slot holds its op");
        self.free.push(slot);
        self.in_flight -= 1;
        if is_sync(&op) {
            self.syncs_in_flight -= 1;
        }
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        op.complete(-i64::from(errno));
        self.wake_slot_waiter();
    }

    /// Wakes the first task still waiting for a free slot.
    fn wake_slot_waiter(&mut self) {
        while let Some(w) = self.slot_waiters.pop_front() {
            if w.wake() {
                break;
            }
        }
    }

    /// True when the completion ring may hold events (cheap: no syscall).
    fn ring_has_events(&self) -> bool {
        let ring = self.ctx as *const AioRing;
        // SAFETY: the kernel maps the completion ring at the context address for the
        // life of the context, header first; the reads are volatile because the
        // kernel writes `tail` concurrently. An unexpected magic means "don't know".
        unsafe {
            if std::ptr::read_volatile(&(*ring).magic) != AIO_RING_MAGIC {
                return true;
            }
            std::ptr::read_volatile(&(*ring).head) != std::ptr::read_volatile(&(*ring).tail)
        }
    }

    /// Reaps every completed operation without blocking; returns how many.
    pub(crate) fn reap(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while self.in_flight > 0 && self.ring_has_events() {
            let n = match sys::io_getevents(self.ctx, 0, &mut self.events, Some(Duration::ZERO)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for i in 0..n {
                let ev = self.events[i];
                let slot = ev.data as usize;
                let op = self.ops.get_mut(slot).and_then(Option::take);
                let Some(op) = op else {
                    panic!("AIO completion for slot {slot} with nothing in flight there");
                };
                self.free.push(slot);
                self.in_flight -= 1;
                if is_sync(&op) {
                    self.syncs_in_flight -= 1;
                }
                self.completed += 1;
                op.complete(ev.res);
                self.wake_slot_waiter();
            }
            total += n;
            if n < self.events.len() {
                break;
            }
        }
        Ok(total)
    }
}

impl Drop for AioQueue {
    fn drop(&mut self) {
        // What tasks submitted is started first, as it would have been at once.
        self.flush();
        // io_destroy cancels what it can and waits until every request in flight has
        // completed; only then may the buffers in `ops` be freed (by dropping them,
        // after this). Nobody is woken: the runtime is going away.
        if let Err(e) = sys::io_destroy(self.ctx)
            && self.in_flight > 0
        {
            // The kernel may still write into these buffers: leak them rather than
            // free memory under it.
            eprintln!(
                "taskio: io_destroy failed with {} AIO in flight ({e}); leaking their buffers",
                self.in_flight
            );
            std::mem::forget(std::mem::take(&mut self.ops));
        }
    }
}
