//! Pseudo-blocking file I/O through kernel AIO (the seed's task_aioread /
//! task_aiowrite, fix #4: pread/pwrite at offsets in one call, no lseek). Many
//! operations may be in flight on one file from many tasks; each caller parks until
//! its own completion.
//!
//! Buffers are [`AlignedBuf`]s (4 KiB aligned, as O_DIRECT needs). A file operation
//! holds its buffers until the driver reaps its completion, so a task torn down with
//! I/O in flight frees nothing the kernel still uses. `read_at`/`write_at` take plain
//! slices and go through a bounce buffer, for files opened without O_DIRECT.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::buf::{ALIGN, AlignedBuf};
use crate::driver::FileOp;
use crate::error::IoError;
use crate::sched::core;
use crate::task::{TaskRef, WaitReason, park};

/// How to open a [`File`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    write: bool,
    create: bool,
    truncate: bool,
    direct: bool,
    dsync: bool,
    size: Option<u64>,
    mode: u32,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            write: true,
            create: false,
            truncate: false,
            direct: false,
            dsync: false,
            size: None,
            mode: 0o644,
        }
    }
}

impl OpenOptions {
    /// Read-write, existing file, buffered.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// Read-write (default) or read-only.
    pub fn write(mut self, write: bool) -> OpenOptions {
        self.write = write;
        self
    }

    pub fn create(mut self, create: bool) -> OpenOptions {
        self.create = create;
        self
    }

    pub fn truncate(mut self, truncate: bool) -> OpenOptions {
        self.truncate = truncate;
        self
    }

    /// O_DIRECT: bypass the page cache; offsets and lengths in multiples of 4 KiB.
    pub fn direct(mut self, direct: bool) -> OpenOptions {
        self.direct = direct;
        self
    }

    /// O_DSYNC: every write is durable when it completes.
    pub fn dsync(mut self, dsync: bool) -> OpenOptions {
        self.dsync = dsync;
        self
    }

    /// Sets the file's size after opening (ftruncate), e.g. to make room.
    pub fn size(mut self, bytes: u64) -> OpenOptions {
        self.size = Some(bytes);
        self
    }

    pub fn mode(mut self, mode: u32) -> OpenOptions {
        self.mode = mode;
        self
    }

    pub fn open(&self, path: impl AsRef<Path>) -> Result<File, IoError> {
        let path = path.as_ref().to_path_buf();
        let mut flags = if self.write {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        if self.create {
            flags |= libc::O_CREAT;
        }
        if self.truncate {
            flags |= libc::O_TRUNC;
        }
        if self.direct {
            flags |= libc::O_DIRECT;
        }
        if self.dsync {
            flags |= libc::O_DSYNC;
        }
        let fd = core()
            .with_io("open", |io| io.open(&path, flags, self.mode))?
            .map_err(|source| {
                if self.direct && source.raw_os_error() == Some(libc::EINVAL) {
                    IoError::DirectUnsupported {
                        path: path.clone(),
                        source,
                    }
                } else {
                    IoError::Path {
                        op: "open",
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        let file = File {
            fd,
            path,
            direct: self.direct,
        };
        if let Some(size) = self.size {
            file.set_len(size)?;
        }
        Ok(file)
    }
}

/// An open file or block device.
pub struct File {
    fd: RawFd,
    path: PathBuf,
    direct: bool,
}

impl File {
    /// Opens an existing file read-write, buffered.
    pub fn open(path: impl AsRef<Path>) -> Result<File, IoError> {
        OpenOptions::new().open(path)
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn len(&self) -> Result<u64, IoError> {
        core()
            .with_io("fstat", |io| io.file_len(self.fd))?
            .map_err(|source| self.err_path("fstat", source))
    }

    pub fn is_empty(&self) -> Result<bool, IoError> {
        Ok(self.len()? == 0)
    }

    /// Takes an exclusive advisory lock on the file (flock(2), LOCK_EX | LOCK_NB; the
    /// simulator keeps its own): another open of the file that tries the same fails
    /// with `WouldBlock` until this `File` (every descriptor of it) is closed.
    pub fn try_lock_exclusive(&self) -> Result<(), IoError> {
        core()
            .with_io("flock", |io| io.lock_exclusive(self.fd))?
            .map_err(|source| self.err_path("flock", source))
    }

    /// Releases the lock of [`File::try_lock_exclusive`] (closing the file does too).
    pub fn unlock(&self) -> Result<(), IoError> {
        core()
            .with_io("flock", |io| io.unlock(self.fd))?
            .map_err(|source| self.err_path("flock", source))
    }

    pub fn set_len(&self, len: u64) -> Result<(), IoError> {
        core()
            .with_io("ftruncate", |io| io.set_file_len(self.fd, len))?
            .map_err(|source| self.err_path("ftruncate", source))
    }

    fn err_path(&self, op: &'static str, source: io::Error) -> IoError {
        IoError::Path {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn check(&self, op: &'static str, offset: u64, len: usize) -> Result<(), IoError> {
        if i64::try_from(offset).is_err() || offset.checked_add(len as u64).is_none() {
            return Err(IoError::At {
                op,
                path: self.path.clone(),
                fd: self.fd,
                offset,
                len,
                source: io::Error::from_raw_os_error(libc::EFBIG),
            });
        }
        if self.direct && (!offset.is_multiple_of(ALIGN as u64) || !len.is_multiple_of(ALIGN)) {
            return Err(IoError::Unaligned {
                op,
                path: self.path.clone(),
                offset,
                len,
                align: ALIGN,
            });
        }
        Ok(())
    }

    /// O_DIRECT needs every segment of a vectored transfer aligned, not just the sum.
    fn check_segments(
        &self,
        op: &'static str,
        offset: u64,
        lens: impl Iterator<Item = usize>,
    ) -> Result<(), IoError> {
        if !self.direct {
            return Ok(());
        }
        for len in lens {
            if !len.is_multiple_of(ALIGN) {
                return Err(IoError::Unaligned {
                    op,
                    path: self.path.clone(),
                    offset,
                    len,
                    align: ALIGN,
                });
            }
        }
        Ok(())
    }

    /// Submits `op` and parks until it completes; returns bytes moved.
    fn run(
        &self,
        op: Rc<FileOp>,
        name: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<usize, IoError> {
        let core = core();
        // Wait for room in the AIO queue: a full queue makes the caller wait.
        while core.with_io(name, |io| io.submit_slots())? == 0 {
            let me = TaskRef::current();
            core.with_io(name, |io| io.wait_slot(me))?;
            park(WaitReason::Io("aio slot"));
        }
        op.set_waiter(TaskRef::current());
        core.with_io(name, |io| io.submit(op.clone()))?
            .map_err(|source| self.at(name, offset, len, source))?;
        while op.result().is_none() {
            park(WaitReason::Io(name));
            if op.result().is_none() {
                op.set_waiter(TaskRef::current());
            }
        }
        let res = op.result().unwrap_or_default();
        if res < 0 {
            return Err(self.at(
                name,
                offset,
                len,
                io::Error::from_raw_os_error((-res) as i32),
            ));
        }
        let n = res as usize;
        Ok(n)
    }

    fn at(&self, op: &'static str, offset: u64, len: usize, source: io::Error) -> IoError {
        IoError::At {
            op,
            path: self.path.clone(),
            fd: self.fd,
            offset,
            len,
            source,
        }
    }

    fn count(&self, read: usize, written: usize) {
        let _ = core().with_io("count", |io| io.count_bytes(read as u64, written as u64));
    }

    /// Reads up to `buf.len()` bytes at `offset` into `buf`; returns how many (fewer
    /// only at end of file).
    pub fn pread(&self, buf: &mut AlignedBuf, offset: u64) -> Result<usize, IoError> {
        let len = buf.len();
        self.check("pread", offset, len)?;
        let op = FileOp::read(self.fd, buf, len, offset);
        let n = self.run(op, "pread", offset, len)?;
        self.count(n, 0);
        Ok(n)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; end of file first is an error.
    pub fn pread_exact(&self, buf: &mut AlignedBuf, offset: u64) -> Result<(), IoError> {
        let want = buf.len();
        let n = self.pread(buf, offset)?;
        if n != want {
            return Err(IoError::Short {
                op: "pread",
                path: self.path.clone(),
                offset,
                done: n,
                want,
            });
        }
        Ok(())
    }

    /// Writes `buf` (its `len()` bytes) at `offset`, all of it or an error.
    pub fn pwrite(&self, buf: &AlignedBuf, offset: u64) -> Result<(), IoError> {
        self.write_op(buf, offset, false)
    }

    /// Writes `buf` at `offset` and makes it durable with the write itself
    /// (RWF_DSYNC), without a separate fdatasync.
    pub fn pwrite_durable(&self, buf: &AlignedBuf, offset: u64) -> Result<(), IoError> {
        self.write_op(buf, offset, true)
    }

    fn write_op(&self, buf: &AlignedBuf, offset: u64, durable: bool) -> Result<(), IoError> {
        let len = buf.len();
        self.check("pwrite", offset, len)?;
        let op = FileOp::write(self.fd, buf, len, offset, durable);
        let n = self.run(op, "pwrite", offset, len)?;
        self.count(0, n);
        if n != len {
            return Err(IoError::Short {
                op: "pwrite",
                path: self.path.clone(),
                offset,
                done: n,
                want: len,
            });
        }
        Ok(())
    }

    /// Reads into each buffer's full length in turn, starting at `offset`.
    pub fn preadv(&self, bufs: &mut [&mut AlignedBuf], offset: u64) -> Result<usize, IoError> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.check("preadv", offset, len)?;
        self.check_segments("preadv", offset, bufs.iter().map(|b| b.len()))?;
        if bufs.len() > libc::UIO_MAXIOV as usize {
            return Err(self.at(
                "preadv",
                offset,
                len,
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let op = FileOp::readv(self.fd, bufs, offset);
        let n = self.run(op, "preadv", offset, len)?;
        self.count(n, 0);
        Ok(n)
    }

    /// Writes each buffer's full length in turn, starting at `offset`; all or an error.
    pub fn pwritev(&self, bufs: &[&AlignedBuf], offset: u64, durable: bool) -> Result<(), IoError> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.check("pwritev", offset, len)?;
        self.check_segments("pwritev", offset, bufs.iter().map(|b| b.len()))?;
        if bufs.len() > libc::UIO_MAXIOV as usize {
            return Err(self.at(
                "pwritev",
                offset,
                len,
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let op = FileOp::writev(self.fd, bufs, offset, durable);
        let n = self.run(op, "pwritev", offset, len)?;
        self.count(0, n);
        if n != len {
            return Err(IoError::Short {
                op: "pwritev",
                path: self.path.clone(),
                offset,
                done: n,
                want: len,
            });
        }
        Ok(())
    }

    /// Makes every completed write and the metadata durable.
    pub fn fsync(&self) -> Result<(), IoError> {
        self.run(FileOp::fsync(self.fd, false), "fsync", 0, 0)
            .map(|_| ())
    }

    /// Makes every completed write durable (and the metadata needed to read it).
    pub fn fdatasync(&self) -> Result<(), IoError> {
        self.run(FileOp::fsync(self.fd, true), "fdatasync", 0, 0)
            .map(|_| ())
    }

    /// Reads into a plain slice through a bounce buffer (not for O_DIRECT files
    /// unless offset and length are aligned); returns bytes read.
    pub fn read_at(&self, dst: &mut [u8], offset: u64) -> Result<usize, IoError> {
        let mut bounce = AlignedBuf::new(dst.len());
        bounce.set_len(dst.len());
        let n = self.pread(&mut bounce, offset)?;
        dst[..n].copy_from_slice(&bounce[..n]);
        Ok(n)
    }

    /// Writes a plain slice through a bounce buffer.
    pub fn write_at(&self, src: &[u8], offset: u64) -> Result<(), IoError> {
        let mut bounce = AlignedBuf::new(src.len());
        bounce.set_len(src.len());
        bounce.copy_from_slice(src);
        self.pwrite(&bounce, offset)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // An operation still in flight here (its task torn down) keeps working: the
        // kernel holds its own reference to the open file, and the operation holds
        // its buffers until the driver reaps it.
        if crate::sched::is_running() {
            let _ = core().with_io("close", |io| io.close(self.fd));
        } else {
            // SAFETY: this File owns `fd` and gives it up here.
            unsafe { libc::close(self.fd) };
        }
    }
}
