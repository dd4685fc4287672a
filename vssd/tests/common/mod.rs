//! Helpers shared by the real-file tests of this crate: a scratch directory, a
//! runtime with the real driver, and a device opened with O_DIRECT where it can be.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use taskio::file::{File, OpenOptions};
use taskio::{Config, IoConfig, IoError, Runtime};

/// A fresh directory on the target's file system (not a tmpfs, so O_DIRECT has a
/// chance), removed when dropped, also when the test panics (`tempfile::TempDir`).
pub struct TempDir {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vssd-{test}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap_or_else(|e| panic!("create a temp dir for {test}: {e}"));
        TempDir {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A file of `len` bytes holding `bytes` at its start.
    pub fn file_with(&self, name: &str, len: u64, bytes: &[u8]) -> PathBuf {
        let p = self.file(name);
        std::fs::write(&p, bytes).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len.max(bytes.len() as u64)).unwrap();
        p
    }
}

/// Runs `main` on a runtime with the real driver (kernel AIO).
pub fn run_io<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default())
        .unwrap_or_else(|e| panic!("Runtime::with_io: {e}"));
    rt.run(main)
        .unwrap_or_else(|e| panic!("Runtime::run failed: {e}"))
}

/// Opens an existing file with O_DIRECT, or buffered where the file system refuses
/// O_DIRECT (said once on stderr).
pub fn open_dev(path: &Path) -> File {
    static SAID: AtomicBool = AtomicBool::new(false);
    match OpenOptions::new().direct(true).open(path) {
        Ok(f) => f,
        Err(IoError::DirectUnsupported { .. }) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "note: the file system under {} refuses O_DIRECT: these tests use buffered I/O",
                    path.display()
                );
            }
            OpenOptions::new().open(path).unwrap()
        }
        Err(e) => panic!("open {}: {e}", path.display()),
    }
}
