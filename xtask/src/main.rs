//! `cargo xtask`: the project's runner. It drives cargo and the project's binaries
//! as processes and imports no CVA crate.
//!
//! - `cargo xtask test`: fmt --check, clippy -D warnings, every test of the workspace.
//! - `cargo xtask tidy`: fmt --check and clippy only.
//! - `cargo xtask bench [AREA...]`: release build, then `tdrv bench AREA` for each area
//!   (default: every area), printing each benchmark's table and JSON lines.

use std::process::{Command, ExitCode};

/// Benchmark areas `tdrv bench` knows, in the order `cargo xtask bench` runs them.
const BENCH_AREAS: &[&str] = &["taskio"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "test" => test(rest),
        "tidy" => tidy(),
        "bench" => bench(rest),
        "help" | "-h" | "--help" => {
            println!("usage: cargo xtask <test [-- CARGO_TEST_ARGS] | tidy | bench [AREA...]>");
            println!("bench areas: {}", BENCH_AREAS.join(", "));
            Ok(())
        }
        other => Err(format!("unknown command {other:?}; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

fn run(what: &str, mut cmd: Command) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

fn tidy() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("cargo fmt --check", fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run("cargo clippy -D warnings", clippy)
}

fn test(extra: &[String]) -> Result<(), String> {
    tidy()?;
    let mut t = cargo();
    t.args(["test", "--workspace"]);
    t.args(extra);
    run("cargo test --workspace", t)
}

fn bench(areas: &[String]) -> Result<(), String> {
    let areas: Vec<String> = if areas.is_empty() {
        BENCH_AREAS.iter().map(|s| s.to_string()).collect()
    } else {
        areas.to_vec()
    };
    for area in &areas {
        let mut b = cargo();
        b.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "tdrv",
            "--",
            "bench",
            area,
        ]);
        run(&format!("tdrv bench {area}"), b)?;
    }
    Ok(())
}
