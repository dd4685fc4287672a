//! libaio's `io_prep_*` helpers, as constructors of [`iocb`].
//!
//! Each one only fills a struct (libaio's versions `memset` the iocb to zero and set
//! a few fields; these start from `iocb::default()` and do the same), so they are
//! safe even though they take raw pointers: nothing is dereferenced until the iocb is
//! handed to [`io_submit`](crate::io_submit), whose contract covers the pointers.

use std::os::fd::RawFd;

use crate::abi::{
    IOCB_CMD_FDSYNC, IOCB_CMD_FSYNC, IOCB_CMD_POLL, IOCB_CMD_PREAD, IOCB_CMD_PREADV,
    IOCB_CMD_PWRITE, IOCB_CMD_PWRITEV, IOCB_FLAG_RESFD, iocb,
};

// Addresses and lengths travel in u64 fields; on this target they are the same width.
const _: () = assert!(size_of::<usize>() == size_of::<u64>());

/// `fd` as the kernel's unsigned `aio_fildes`.
///
/// A negative descriptor is a caller's bug (an unchecked failed `open`), and casting
/// it would hand the kernel a different, huge number, so it stops here.
fn fildes(fd: RawFd) -> u32 {
    match u32::try_from(fd) {
        Ok(fildes) => fildes,
        Err(_) => panic!("file descriptor {fd} is negative"),
    }
}

/// The address the kernel will read or write through.
///
/// The kernel accesses the memory through this integer, not through a Rust pointer,
/// so the pointer's provenance is exposed: the memory stays a valid target for
/// accesses that do not come from a Rust pointer.
fn address<T>(pointer: *const T) -> u64 {
    pointer.expose_provenance() as u64
}

impl iocb {
    fn prep(opcode: u16, fd: RawFd, buf: u64, nbytes: u64, offset: i64) -> iocb {
        iocb {
            aio_lio_opcode: opcode,
            aio_fildes: fildes(fd),
            aio_buf: buf,
            aio_nbytes: nbytes,
            aio_offset: offset,
            ..iocb::default()
        }
    }

    /// `io_prep_pread`: read `len` bytes at `offset` of `fd` into `buf`.
    ///
    /// Once submitted, `buf` must be valid for writes of `len` bytes until the
    /// completion is reaped. With `O_DIRECT`, `buf`, `len` and `offset` must be
    /// multiples of the device's logical block size, or the completion is `-EINVAL`.
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_pread(fd: RawFd, buf: *mut u8, len: usize, offset: i64) -> iocb {
        iocb::prep(IOCB_CMD_PREAD, fd, address(buf), len as u64, offset)
    }

    /// `io_prep_pwrite`: write `len` bytes from `buf` at `offset` of `fd`.
    ///
    /// Once submitted, `buf` must be valid for reads of `len` bytes, and not written,
    /// until the completion is reaped.
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_pwrite(fd: RawFd, buf: *const u8, len: usize, offset: i64) -> iocb {
        iocb::prep(IOCB_CMD_PWRITE, fd, address(buf), len as u64, offset)
    }

    /// `io_prep_preadv`: read at `offset` of `fd` into the `iovcnt` buffers of the
    /// `iovec` array `iov` (at most `UIO_MAXIOV`, 1024, or the submission fails
    /// with `EINVAL`).
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_preadv(fd: RawFd, iov: *const libc::iovec, iovcnt: usize, offset: i64) -> iocb {
        iocb::prep(IOCB_CMD_PREADV, fd, address(iov), iovcnt as u64, offset)
    }

    /// `io_prep_pwritev`: write the `iovcnt` buffers of the `iovec` array `iov` at
    /// `offset` of `fd`.
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_pwritev(fd: RawFd, iov: *const libc::iovec, iovcnt: usize, offset: i64) -> iocb {
        iocb::prep(IOCB_CMD_PWRITEV, fd, address(iov), iovcnt as u64, offset)
    }

    /// `io_prep_fsync`: `fsync(2)` of `fd`; the completion's `res` is 0 on success.
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_fsync(fd: RawFd) -> iocb {
        iocb::prep(IOCB_CMD_FSYNC, fd, 0, 0, 0)
    }

    /// `io_prep_fdsync`: `fdatasync(2)` of `fd`; the completion's `res` is 0 on
    /// success.
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_fdsync(fd: RawFd) -> iocb {
        iocb::prep(IOCB_CMD_FDSYNC, fd, 0, 0, 0)
    }

    /// `io_prep_poll`: complete once `fd` is ready for any of `events` (`POLLIN`,
    /// ...); the completion's `res` is the ready mask. Unlike reads and writes,
    /// a poll can be cancelled with [`io_cancel`](crate::io_cancel).
    ///
    /// # Panics
    /// If `fd` is negative.
    #[must_use]
    pub fn io_prep_poll(fd: RawFd, events: libc::c_short) -> iocb {
        // The kernel takes the mask from the low 16 bits of aio_buf and rejects any
        // higher bit, so the sign of a c_short must not be extended.
        iocb::prep(IOCB_CMD_POLL, fd, u64::from(events.cast_unsigned()), 0, 0)
    }

    /// Sets `aio_rw_flags` to `flags` (`RWF_DSYNC` and the other `RWF_*`), for this
    /// read or write only. The kernel rejects a non-zero value on `FSYNC`, `FDSYNC`
    /// and `POLL` with `EINVAL`, and an unknown bit with `EOPNOTSUPP`.
    pub fn set_rw_flags(&mut self, flags: i32) {
        self.aio_rw_flags = flags;
    }

    /// The caller's cookie, returned in [`io_event::data`](crate::io_event::data).
    #[must_use]
    pub fn data(&self) -> u64 {
        self.aio_data
    }

    /// Sets the caller's cookie, returned in [`io_event::data`](crate::io_event::data).
    pub fn set_data(&mut self, data: u64) {
        self.aio_data = data;
    }
}

/// `io_set_eventfd`: on completion the kernel adds 1 to the counter of the eventfd
/// `eventfd`, after the event is in the completion ring (so once the counter says
/// `n`, `io_getevents` with a zero timeout finds at least `n` events).
///
/// # Panics
/// If `eventfd` is negative.
pub fn io_set_eventfd(iocb: &mut iocb, eventfd: RawFd) {
    iocb.aio_flags |= IOCB_FLAG_RESFD;
    iocb.aio_resfd = fildes(eventfd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{RWF_DSYNC, io_event};

    #[test]
    fn pread_fills_what_libaio_fills_and_nothing_else() {
        let mut buf = [0u8; 16];
        let cb = iocb::io_prep_pread(3, buf.as_mut_ptr(), buf.len(), 4096);
        let expected = iocb {
            aio_lio_opcode: IOCB_CMD_PREAD,
            aio_fildes: 3,
            aio_buf: buf.as_ptr() as u64,
            aio_nbytes: 16,
            aio_offset: 4096,
            ..iocb::default()
        };
        assert_eq!(cb, expected);
    }

    #[test]
    fn each_constructor_sets_its_opcode() {
        let buf = [0u8; 8];
        let iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: 8,
        };
        let write = iocb::io_prep_pwrite(4, buf.as_ptr(), 8, 0);
        assert_eq!(write.aio_lio_opcode, IOCB_CMD_PWRITE);
        let readv = iocb::io_prep_preadv(4, &raw const iov, 1, 512);
        assert_eq!(readv.aio_lio_opcode, IOCB_CMD_PREADV);
        assert_eq!(readv.aio_buf, (&raw const iov) as u64);
        assert_eq!(readv.aio_nbytes, 1);
        assert_eq!(readv.aio_offset, 512);
        let writev = iocb::io_prep_pwritev(4, &raw const iov, 1, 0);
        assert_eq!(writev.aio_lio_opcode, IOCB_CMD_PWRITEV);
        let fsync = iocb::io_prep_fsync(4);
        assert_eq!(
            fsync,
            iocb {
                aio_lio_opcode: IOCB_CMD_FSYNC,
                aio_fildes: 4,
                ..iocb::default()
            }
        );
        let fdsync = iocb::io_prep_fdsync(4);
        assert_eq!(fdsync.aio_lio_opcode, IOCB_CMD_FDSYNC);
    }

    #[test]
    fn poll_events_stay_in_the_low_16_bits() {
        let cb = iocb::io_prep_poll(5, libc::POLLIN | libc::POLLOUT);
        assert_eq!(cb.aio_lio_opcode, IOCB_CMD_POLL);
        assert_eq!(cb.aio_buf, 0x5);
        let cb = iocb::io_prep_poll(5, -1);
        assert_eq!(cb.aio_buf, 0xffff);
    }

    #[test]
    fn eventfd_flags_and_data() {
        let mut cb = iocb::io_prep_fsync(4);
        io_set_eventfd(&mut cb, 9);
        cb.set_rw_flags(RWF_DSYNC);
        cb.set_data(0xdead_beef);
        assert_eq!(cb.aio_flags, IOCB_FLAG_RESFD);
        assert_eq!(cb.aio_resfd, 9);
        assert_eq!(cb.aio_rw_flags, RWF_DSYNC);
        assert_eq!(cb.data(), 0xdead_beef);
        assert_eq!(io_event::default().data, 0);
    }

    #[test]
    #[should_panic(expected = "file descriptor -1 is negative")]
    fn negative_fd_is_a_bug() {
        let _ = iocb::io_prep_fsync(-1);
    }
}
