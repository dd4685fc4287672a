//! Helpers shared by the integration tests (each test file compiles this module on its
//! own, so not every file uses every helper).
#![allow(dead_code)]

pub mod io_rt;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use taskio::Runtime;

/// Sets its flag when dropped: proves a destructor ran (at task end or teardown).
pub struct DropFlag(pub Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        assert!(!self.0.get(), "DropFlag dropped twice");
        self.0.set(true);
    }
}

/// A flag and the guard that sets it.
pub fn drop_flag() -> (Rc<Cell<bool>>, DropFlag) {
    let flag = Rc::new(Cell::new(false));
    (flag.clone(), DropFlag(flag))
}

/// An event log tasks append to; the test compares it with the expected order.
pub type Log<T> = Rc<RefCell<Vec<T>>>;

pub fn log<T>() -> Log<T> {
    Rc::new(RefCell::new(Vec::new()))
}

/// Runs `main` on a fresh default runtime and returns its value; any `RunError` fails
/// the test.
pub fn run<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    match Runtime::new().run(main) {
        Ok(v) => v,
        Err(e) => panic!("Runtime::run failed: {e}"),
    }
}

/// A fresh directory under the system temp dir, removed when dropped, also when the
/// test panics (`tempfile::TempDir`).
pub struct TempDir {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("taskio-{test}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create a temp dir for {test}: {e}"));
        TempDir {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}
