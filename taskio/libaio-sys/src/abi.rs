//! The types and constants of `<linux/aio_abi.h>` (and the `RWF_*` flags of
//! `<linux/fs.h>`), laid out byte for byte as the kernel reads them.
//!
//! The kernel copies a whole `struct iocb` from user memory and writes whole
//! `struct io_event`s into it, so a field at the wrong offset would not fail loudly:
//! it would read the wrong file or write past a buffer. Every size and offset is
//! therefore asserted at compile time against the kernel header.

// The names are the kernel's, so that code reads like `aio_abi.h` and the seed.
#![allow(non_camel_case_types)]

use core::mem::offset_of;
use std::io;

/// The handle of a kernel AIO context, as returned by [`io_setup`](crate::io_setup)
/// (`typedef __kernel_ulong_t aio_context_t`).
///
/// Its value is the user-space address at which the kernel mapped the context's
/// completion ring. That address is unmapped by [`io_destroy`](crate::io_destroy)
/// and may be handed out again by the next `io_setup` in the same process, so a
/// stale handle can name somebody else's context: destroy each context exactly once.
pub type aio_context_t = u64;

/// `IOCB_CMD_PREAD`: read `aio_nbytes` bytes at `aio_offset` into `aio_buf`.
pub const IOCB_CMD_PREAD: u16 = 0;
/// `IOCB_CMD_PWRITE`: write `aio_nbytes` bytes from `aio_buf` at `aio_offset`.
pub const IOCB_CMD_PWRITE: u16 = 1;
/// `IOCB_CMD_FSYNC`: `fsync(2)` of `aio_fildes`.
pub const IOCB_CMD_FSYNC: u16 = 2;
/// `IOCB_CMD_FDSYNC`: `fdatasync(2)` of `aio_fildes`.
pub const IOCB_CMD_FDSYNC: u16 = 3;
/// `IOCB_CMD_POLL`: one-shot poll of `aio_fildes` for the events in the low 16 bits
/// of `aio_buf`; the completion's `res` is the ready mask. Cancellable.
pub const IOCB_CMD_POLL: u16 = 5;
/// `IOCB_CMD_NOOP`: declared by the header, but the kernel has never implemented it;
/// `io_submit` rejects it with `EINVAL`.
pub const IOCB_CMD_NOOP: u16 = 6;
/// `IOCB_CMD_PREADV`: scatter read into the `aio_nbytes` `iovec`s at `aio_buf`.
pub const IOCB_CMD_PREADV: u16 = 7;
/// `IOCB_CMD_PWRITEV`: gather write from the `aio_nbytes` `iovec`s at `aio_buf`.
pub const IOCB_CMD_PWRITEV: u16 = 8;

/// `IOCB_FLAG_RESFD`: on completion, add 1 to the eventfd in `aio_resfd`.
pub const IOCB_FLAG_RESFD: u32 = 1 << 0;
/// `IOCB_FLAG_IOPRIO`: `aio_reqprio` holds an I/O priority (`ioprio_set(2)` encoding).
pub const IOCB_FLAG_IOPRIO: u32 = 1 << 1;

/// `RWF_HIPRI`: high-priority (polled) request; plain AIO ignores the polling part.
pub const RWF_HIPRI: i32 = 0x01;
/// `RWF_DSYNC`: this write alone behaves as if the file were opened `O_DSYNC`.
pub const RWF_DSYNC: i32 = 0x02;
/// `RWF_SYNC`: this write alone behaves as if the file were opened `O_SYNC`.
pub const RWF_SYNC: i32 = 0x04;
/// `RWF_NOWAIT`: fail with `EAGAIN` instead of waiting (for locks, allocation, tags).
pub const RWF_NOWAIT: i32 = 0x08;
/// `RWF_APPEND`: this write alone behaves as if the file were opened `O_APPEND`.
pub const RWF_APPEND: i32 = 0x10;

// Each flag is its own bit, so they can be or-ed together.
const _: () = assert!(RWF_HIPRI | RWF_DSYNC | RWF_SYNC | RWF_NOWAIT | RWF_APPEND == 0x1f);
const _: () = assert!(IOCB_FLAG_RESFD & IOCB_FLAG_IOPRIO == 0);

/// One request, `struct iocb` of `<linux/aio_abi.h>` (64 bytes, little-endian field
/// order). Build one with the `io_prep_*` constructors rather than by hand.
///
/// The kernel reads the whole struct at submission and writes `aio_key` back into
/// it; after that it identifies the request by this struct's address, which it
/// returns in [`io_event::obj`] and which [`io_cancel`](crate::io_cancel) takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct iocb {
    /// The caller's cookie, returned unchanged in [`io_event::data`].
    pub aio_data: u64,
    /// Owned by the kernel: it stores `KIOCB_KEY` (0) here at submission and checks
    /// it in `io_cancel`.
    pub aio_key: u32,
    /// `RWF_*` flags of a read or write (`__kernel_rwf_t`); must be 0 for other
    /// commands.
    pub aio_rw_flags: i32,
    /// One of the `IOCB_CMD_*` commands.
    pub aio_lio_opcode: u16,
    /// I/O priority, used when `aio_flags` has [`IOCB_FLAG_IOPRIO`].
    pub aio_reqprio: i16,
    /// The file descriptor the request is on.
    pub aio_fildes: u32,
    /// Address of the data buffer (`PREAD`/`PWRITE`), of the `iovec` array
    /// (`PREADV`/`PWRITEV`) or the poll events (`POLL`).
    pub aio_buf: u64,
    /// Length in bytes (`PREAD`/`PWRITE`) or number of `iovec`s (`PREADV`/`PWRITEV`).
    pub aio_nbytes: u64,
    /// File offset in bytes.
    pub aio_offset: i64,
    /// Reserved; the kernel rejects a request where it is not 0.
    pub aio_reserved2: u64,
    /// `IOCB_FLAG_*` flags.
    pub aio_flags: u32,
    /// The eventfd signalled on completion, used when `aio_flags` has
    /// [`IOCB_FLAG_RESFD`].
    pub aio_resfd: u32,
}

const _: () = assert!(size_of::<iocb>() == 64);
const _: () = assert!(align_of::<iocb>() == 8);
const _: () = assert!(offset_of!(iocb, aio_data) == 0);
const _: () = assert!(offset_of!(iocb, aio_key) == 8);
const _: () = assert!(offset_of!(iocb, aio_rw_flags) == 12);
const _: () = assert!(offset_of!(iocb, aio_lio_opcode) == 16);
const _: () = assert!(offset_of!(iocb, aio_reqprio) == 18);
const _: () = assert!(offset_of!(iocb, aio_fildes) == 20);
const _: () = assert!(offset_of!(iocb, aio_buf) == 24);
const _: () = assert!(offset_of!(iocb, aio_nbytes) == 32);
const _: () = assert!(offset_of!(iocb, aio_offset) == 40);
const _: () = assert!(offset_of!(iocb, aio_reserved2) == 48);
const _: () = assert!(offset_of!(iocb, aio_flags) == 56);
const _: () = assert!(offset_of!(iocb, aio_resfd) == 60);

/// One completion, `struct io_event` of `<linux/aio_abi.h>` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct io_event {
    /// The completed request's `aio_data`.
    pub data: u64,
    /// The address of the completed request's `iocb`, as it was passed to `io_submit`.
    pub obj: u64,
    /// The result: bytes transferred (0 for `FSYNC`/`FDSYNC`, the ready mask for
    /// `POLL`), or a negated errno.
    pub res: i64,
    /// A second result; 0 for every file operation.
    pub res2: i64,
}

const _: () = assert!(size_of::<io_event>() == 32);
const _: () = assert!(align_of::<io_event>() == 8);
const _: () = assert!(offset_of!(io_event, data) == 0);
const _: () = assert!(offset_of!(io_event, obj) == 8);
const _: () = assert!(offset_of!(io_event, res) == 16);
const _: () = assert!(offset_of!(io_event, res2) == 24);

/// The largest errno the kernel returns (`MAX_ERRNO` of `<linux/err.h>`): a negative
/// `res` is always in `-MAX_ERRNO..=-1`.
const ERRNO_MAX: i64 = 4095;

impl io_event {
    /// `res` as a result: the non-negative count (bytes, or the poll mask).
    ///
    /// # Errors
    /// The request's failure: the errno the kernel negated into `res`.
    ///
    /// # Panics
    /// If `res` is below `-4095`, which the kernel never writes: the event was not
    /// filled by `io_getevents`.
    pub fn result(&self) -> io::Result<u64> {
        match u64::try_from(self.res) {
            Ok(count) => Ok(count),
            Err(_) => {
                assert!(
                    self.res >= -ERRNO_MAX,
                    "io_event.res {} is not a kernel result (data {:#x}, obj {:#x})",
                    self.res,
                    self.data,
                    self.obj,
                );
                let errno = i32::try_from(-self.res).expect("an errno in 1..=4095 fits an i32");
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_of_a_count_is_the_count() {
        let event = io_event {
            res: 4096,
            ..io_event::default()
        };
        assert_eq!(event.result().unwrap(), 4096);
    }

    #[test]
    fn result_of_a_negated_errno_is_that_errno() {
        let event = io_event {
            res: -i64::from(libc::EBADF),
            ..io_event::default()
        };
        assert_eq!(
            event.result().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        let event = io_event {
            res: -ERRNO_MAX,
            ..io_event::default()
        };
        assert_eq!(event.result().unwrap_err().raw_os_error(), Some(4095));
    }

    #[test]
    #[should_panic(expected = "is not a kernel result")]
    fn result_below_max_errno_is_a_bug() {
        let event = io_event {
            res: -ERRNO_MAX - 1,
            ..io_event::default()
        };
        let _ = event.result();
    }
}
