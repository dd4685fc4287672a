//! The backing store of a device: a file or block device, opened with O_DIRECT
//! (buffered where the file system refuses it) and read and written through
//! taskio's file API in whole cache lines.

use std::cell::Cell;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use taskio::file::{File, OpenOptions};
use taskio::{AlignedBuf, IoError};

use crate::error::CdevError;

pub(crate) struct BackingStore {
    file: File,
    path: PathBuf,
    device: String,
    size: u64,
    /// Whether the file system punches holes in this file (asked once, on the first
    /// [`BackingStore::can_punch`]).
    punches: Cell<Option<bool>>,
}

/// What `lseek(SEEK_DATA)` found from an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Data starts at this offset (at or after the one asked).
    Data(u64),
    /// No data from the offset asked to the end of the file.
    None,
}

/// Opens `path` with O_DIRECT, buffered where the file system refuses O_DIRECT; when
/// it is missing and `create` says a size, creates it (sparse) with that size.
/// Whether it was created.
pub(crate) fn open_file(path: &Path, create: Option<u64>) -> Result<(File, bool), IoError> {
    let open = |options: OpenOptions| match options.clone().direct(true).open(path) {
        Err(IoError::DirectUnsupported { .. }) => {
            tracing::warn!(path = %path.display(), "O_DIRECT refused: buffered I/O");
            options.open(path)
        }
        other => other,
    };
    match open(OpenOptions::new()) {
        Err(IoError::Path { source, .. }) if source.kind() == ErrorKind::NotFound => match create {
            Some(size) => Ok((open(OpenOptions::new().create(true).size(size))?, true)),
            None => Err(IoError::Path {
                op: "open",
                path: path.to_path_buf(),
                source,
            }),
        },
        other => other.map(|f| (f, false)),
    }
}

impl BackingStore {
    pub(crate) fn open(
        device: &str,
        path: &Path,
        create: Option<u64>,
    ) -> Result<BackingStore, CdevError> {
        let err = |source| CdevError::Backing {
            op: "open",
            device: device.to_string(),
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let (file, _) = open_file(path, create).map_err(err)?;
        let size = file.len().map_err(err)?;
        Ok(BackingStore {
            file,
            path: path.to_path_buf(),
            device: device.to_string(),
            size,
            punches: Cell::new(None),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    fn error(&self, op: &'static str, source: IoError) -> CdevError {
        CdevError::Backing {
            op,
            device: self.device.clone(),
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub(crate) fn read(&self, offset: u64, buf: &mut AlignedBuf) -> Result<(), CdevError> {
        self.file
            .pread_exact(buf, offset)
            .map_err(|e| self.error("backing read", e))
    }

    /// Writes `buf` at `offset` (not yet durable: [`BackingStore::flush`]).
    pub(crate) fn write(&self, offset: u64, buf: &AlignedBuf) -> Result<(), CdevError> {
        self.file
            .pwrite(buf, offset)
            .map_err(|e| self.error("backing write", e))
    }

    /// Makes every write before it durable (fdatasync).
    pub(crate) fn flush(&self) -> Result<(), CdevError> {
        self.file
            .fdatasync()
            .map_err(|e| self.error("backing flush", e))
    }
}

impl BackingStore {
    fn at_error(&self, op: &'static str, offset: u64, len: u64) -> CdevError {
        self.error(
            op,
            IoError::At {
                op,
                path: self.path.clone(),
                fd: self.file.fd(),
                offset,
                len: len as usize,
                source: std::io::Error::last_os_error(),
            },
        )
    }

    /// Where the next data at or after `offset` (inside the file) begins, from the
    /// file system's extents (`lseek(SEEK_DATA)`): a file system that does not track
    /// holes, and a block device, say data everywhere. A metadata call: it does not
    /// wait for the disk's data, so it is made in place, not through AIO.
    pub(crate) fn next_data(&self, offset: u64) -> Result<Next, CdevError> {
        self.seek(offset, libc::SEEK_DATA, "backing seek data")
            .map(|found| found.map_or(Next::None, Next::Data))
    }

    /// Where the hole after the data at `offset` begins (`lseek(SEEK_HOLE)`; the end
    /// of the file counts as a hole).
    pub(crate) fn next_hole(&self, offset: u64) -> Result<u64, CdevError> {
        self.seek(offset, libc::SEEK_HOLE, "backing seek hole")
            .map(|found| found.unwrap_or(self.size))
    }

    /// `lseek(fd, offset, whence)`; None on ENXIO (no data, or no hole, past
    /// `offset`).
    fn seek(&self, offset: u64, whence: i32, op: &'static str) -> Result<Option<u64>, CdevError> {
        assert!(offset < self.size, "{op} at {offset} of {}", self.size);
        let at = libc::off_t::try_from(offset).expect("a file offset fits off_t");
        // SAFETY: lseek reads no memory of ours; the fd is open for as long as
        // `self.file` lives, which outlives the call. Moving the file offset is
        // harmless: every I/O of this file is positioned (pread/pwrite, AIO).
        let found = unsafe { libc::lseek(self.file.fd(), at, whence) };
        if found >= 0 {
            return Ok(Some(found as u64));
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        Err(self.at_error(op, offset, 0))
    }

    /// Whether [`BackingStore::punch`] can work here: asked of the file system once,
    /// by punching past the end of the file (which changes nothing).
    pub(crate) fn can_punch(&self) -> bool {
        if let Some(known) = self.punches.get() {
            return known;
        }
        let known = self.fallocate_punch(self.size, 4096).is_ok();
        tracing::info!(device = %self.device, path = %self.path.display(), punches = known, "backing store hole punching");
        self.punches.set(Some(known));
        known
    }

    /// Deallocates `len` bytes at `offset`, which then read as zeroes
    /// (FALLOC_FL_PUNCH_HOLE, the size kept); not yet durable:
    /// [`BackingStore::flush`].
    pub(crate) fn punch(&self, offset: u64, len: u64) -> Result<(), CdevError> {
        assert!(offset + len <= self.size, "punch past the end");
        self.fallocate_punch(offset, len)
            .map_err(|()| self.at_error("backing punch", offset, len))
    }

    fn fallocate_punch(&self, offset: u64, len: u64) -> Result<(), ()> {
        let at = libc::off_t::try_from(offset).expect("a file offset fits off_t");
        let n = libc::off_t::try_from(len).expect("a length fits off_t");
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate reads no memory of ours; the fd is open while `self.file`
        // lives. A blocking call on the device's runtime: deallocating extents is
        // metadata work, short beside the fdatasync that follows it (through AIO).
        let r = unsafe { libc::fallocate(self.file.fd(), mode, at, n) };
        if r == 0 { Ok(()) } else { Err(()) }
    }
}

/// The DTM's synchronous writes while the device is short of replicas
/// ([`dtm::LossPolicy::WriteThrough`]).
impl dtm::Backing for BackingStore {
    fn write(&self, offset: u64, data: &AlignedBuf) -> Result<(), IoError> {
        self.file.pwrite(data, offset)
    }

    fn flush(&self) -> Result<(), IoError> {
        self.file.fdatasync()
    }
}
