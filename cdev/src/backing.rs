//! The backing store of a device: a file or block device, opened with O_DIRECT
//! (buffered where the file system refuses it) and read and written through
//! taskio's file API in whole cache lines.

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
