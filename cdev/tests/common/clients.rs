//! The NBD clients the tests drive (libnbd-bin, qemu-utils, fio; `.ci/run` installs
//! them).

use std::process::Command;
use std::time::Duration;

/// How long any client or server step may take.
pub const STEP: Duration = Duration::from_secs(60);

/// Runs `program` (from `package`) bounded by STEP; its stdout; fails naming the
/// package when the program is missing.
pub fn run(package: &str, program: &str, args: &[&str]) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{program} is missing: install the {package} package (apt-get install -y {package})"
    );
    let out = Command::new("timeout")
        .env("LIBNBD_DEBUG", "1")
        .arg(STEP.as_secs().to_string())
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
