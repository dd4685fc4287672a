//! Helpers of the I/O tests (`net`, `remote`, `stall`): a time limit on a test body,
//! so that a lost wakeup fails the test instead of hanging CI, runtimes with the real
//! driver, and byte patterns whose corruption is easy to locate.

use std::panic::resume_unwind;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use taskio::rand::Rng;
use taskio::{Config, IoConfig, RunError, Runtime, RuntimeStats};

/// How long one test body may take before it counts as hung. Each should finish in
/// well under a second; this only ends a test that would otherwise never end.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);

/// Runs `f` on a thread of its own and returns its value. Panics with `f`'s panic, or
/// when `f` has not returned within `limit` (its thread is then left blocked: the
/// test fails and the process ends anyway).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let (tx, rx) = mpsc::channel();
    let body = std::thread::Builder::new()
        .name(format!("{test} (body)"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a test thread");
    match rx.recv_timeout(limit) {
        Ok(v) => {
            body.join().expect("test thread ended after sending");
            v
        }
        Err(RecvTimeoutError::Disconnected) => match body.join() {
            Err(panic) => resume_unwind(panic),
            Ok(()) => unreachable!("test thread ended without a value or a panic"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("{test}: not finished after {limit:?}: a task or a thread hangs")
        }
    }
}

/// A runtime with the real I/O driver (epoll + eventfd + kernel AIO).
pub fn io_runtime(config: Config) -> Runtime {
    match Runtime::with_io(config, IoConfig::default()) {
        Ok(rt) => rt,
        Err(e) => panic!("Runtime::with_io: {e}"),
    }
}

/// Runs `main` on a fresh runtime with the real driver, within [`HANG_LIMIT`], and
/// returns the run's outcome and the runtime's counters after it.
pub fn run_io<T: Send + 'static>(
    main: impl FnOnce() -> T + Send + 'static,
) -> (Result<T, RunError>, RuntimeStats) {
    run_io_with(IoConfig::default(), main)
}

/// [`run_io`] on a runtime whose driver has the settings `io`.
pub fn run_io_with<T: Send + 'static>(
    io: IoConfig,
    main: impl FnOnce() -> T + Send + 'static,
) -> (Result<T, RunError>, RuntimeStats) {
    within(HANG_LIMIT, move || {
        let mut rt = match Runtime::with_io(Config::default(), io) {
            Ok(rt) => rt,
            Err(e) => panic!("Runtime::with_io: {e}"),
        };
        let outcome = rt.run(main);
        (outcome, rt.stats())
    })
}

/// [`run_io`] for a run that must succeed: returns `main`'s value.
pub fn io_ok<T: Send + 'static>(main: impl FnOnce() -> T + Send + 'static) -> T {
    match run_io(main).0 {
        Ok(v) => v,
        Err(e) => panic!("Runtime::run failed: {e}"),
    }
}

/// `len` bytes of the seeded generator's stream picked by `seed`: no period a misplaced chunk
/// could hide in, and a different stream for every seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// Asserts `got == want` and names the first differing byte (not a megabyte dump).
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} of {}: got {:#04x}, want {:#04x}",
            want.len(),
            got[i],
            want[i]
        );
    }
}
