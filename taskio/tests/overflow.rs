//! Stack overflow: a task that runs off its stack hits the guard page and the process
//! dies with "task NAME overflowed its stack" instead of a bare segfault. The test
//! re-runs this binary as a child that overflows, and reads the child's stderr.

use std::hint::black_box;
use std::process::Command;

use taskio::{Builder, Runtime};

/// Set in the child's environment; the child test does nothing without it.
const CHILD_ENV: &str = "TASKIO_OVERFLOW_CHILD";
const CHILD_TEST: &str = "overflow_child";

/// Recurses without bound; the black-boxed array keeps every frame large and alive.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth as u8; 4096]);
    black_box(recurse(depth + 1)) + u64::from(frame[0])
}

#[test]
fn overflow_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let _ = Runtime::new().run(|| {
        let h = Builder::new()
            .name("deep")
            .spawn(|| recurse(0))
            .expect("spawn deep");
        h.join()
    });
    // Reaching here means the overflow was not caught: the parent sees the message
    // missing and a zero exit status.
}

#[test]
fn stack_overflow_kills_the_process_naming_the_task() {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "child survived a stack overflow: {:?}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("task deep overflowed its stack"),
        "child status {:?}, stderr:\n{stderr}",
        out.status
    );
}
