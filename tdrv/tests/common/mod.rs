//! Helpers shared by the tests that run the `tdrv` binary.
#![allow(dead_code)] // each test binary uses its own part

use std::process::Command;

/// Runs `tdrv ARGS`: exit code, stdout, stderr.
pub fn tdrv(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tdrv"))
        .args(args)
        .output()
        .expect("run tdrv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first failing seed's replay command in a sweep's output (`replay: cargo run
/// ... -- CMD AREA --seed N ...`): the whole line and the seed.
pub fn replay_line(output: &str, cmd_area: &str) -> (String, String) {
    let prefix = format!("replay: cargo run --release -p tdrv -- {cmd_area} --seed");
    let line = output
        .lines()
        .find(|l| l.contains(&prefix))
        .expect("a replay command")
        .to_string();
    let seed = line
        .split("--seed ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("seed in the replay command")
        .to_string();
    (line, seed)
}

/// The last line of an output (a replay's trace hash).
pub fn last_line(output: &str) -> String {
    output.lines().last().unwrap_or_default().to_string()
}

/// Runs `tdrv CMD AREA --seeds N` and asserts that every seed passed.
pub fn sweep_passes(cmd: &str, area: &str, seeds: u64) {
    let n = seeds.to_string();
    let (code, out, err) = tdrv(&[cmd, area, "--seeds", &n]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("{seeds} seeds in")) && out.contains("0 failed"),
        "{out}"
    );
}

/// The number just before `what` in a seed's summary (`... 3 crashes, ...`, or
/// `(5 failed, ...`).
pub fn count(summary: &str, what: &str) -> u64 {
    let at = summary
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} in {summary}"));
    summary[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("a number before {what:?} in {summary}"))
}
