//! `cargo xtask`: the project's runner. It drives cargo and the project's binaries
//! as processes and imports no CVA crate.
//!
//! - `cargo xtask test`: fmt --check, clippy -D warnings, every test of the workspace.
//! - `cargo xtask tidy`: fmt --check and clippy only.
//! - `cargo xtask bench [AREA...]`: release build, then `tdrv bench AREA` for each area
//!   (default: every area), printing each benchmark's table and JSON lines. Area
//!   `e2e` (not in the default) is xtask's own: the real cvad and cvacli binaries
//!   beside fio and the in-process DTM (`bench_e2e.rs`); so is `nbd` (not in the
//!   default either): cvad's NBD export beside nbdkit and qemu-nbd under fio's nbd
//!   engine (`bench_nbd.rs`; `--quick`: one 1 s sample per figure).
//! - `cargo xtask demo`: two cvads (release), a replicated device, 10 s of
//!   `cvacli verify` load, kill -9 of the primary, its restart, `verify --check`, a
//!   summary table.
//! - `cargo xtask fuzz [--stable] [SECONDS]`: fuzz the rpc frame decoder for SECONDS
//!   (default 60): cargo-fuzz (libFuzzer, nightly toolchain) when both are installed,
//!   else it says how to install them, runs the stable fallback (a seeded random
//!   mutator, `rpc`'s `fuzz_decode` example) and exits non-zero. `--stable` runs only
//!   the fallback.

mod bench_e2e;
mod bench_nbd;
mod demo;
mod figures;
mod procs;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// Benchmark areas `tdrv bench` knows, in the order `cargo xtask bench` runs them.
const BENCH_AREAS: &[&str] = &["taskio", "io", "rpc", "vssd"];

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
        "fuzz" => fuzz(rest),
        "demo" => demo::demo(),
        "help" | "-h" | "--help" => {
            println!(
                "usage: cargo xtask <test [-- CARGO_TEST_ARGS] | tidy | bench [AREA...] | demo | fuzz [--stable] [SECONDS]>"
            );
            println!(
                "bench areas: {}, e2e, nbd [--quick]",
                BENCH_AREAS.join(", ")
            );
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

fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let areas: Vec<&String> = args.iter().filter(|a| *a != "--quick").collect();
    let areas: Vec<String> = if areas.is_empty() {
        BENCH_AREAS.iter().map(|s| s.to_string()).collect()
    } else {
        areas.into_iter().cloned().collect()
    };
    for area in &areas {
        if area == "e2e" {
            bench_e2e::bench_e2e()?;
            continue;
        }
        if area == "nbd" {
            bench_nbd::bench_nbd(quick)?;
            continue;
        }
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

/// Default length of `cargo xtask fuzz`, in seconds.
const FUZZ_SECONDS_DEFAULT: u64 = 60;
/// Longest input libFuzzer builds for the decoder (a few frames; the 1 MiB data
/// limits are covered by rpc's unit tests).
const FUZZ_INPUT_LEN_MAX: usize = 4096;

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo` as found on PATH: the rustup proxy, which understands `+nightly`
/// (`$CARGO` is the stable toolchain's own binary, which does not).
fn rustup_cargo() -> Command {
    let mut c = Command::new("cargo");
    // Let `+nightly` choose the toolchain, not the one this xtask runs under.
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Why cargo-fuzz cannot run here, if it cannot.
fn cargo_fuzz_missing() -> Option<String> {
    let quiet = |mut c: Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c.status().map(|s| s.success()).unwrap_or(false)
    };
    let mut nightly = rustup_cargo();
    nightly.args(["+nightly", "--version"]);
    if !quiet(nightly) {
        return Some("no nightly toolchain (`cargo +nightly` fails)".to_string());
    }
    let mut fuzz = rustup_cargo();
    fuzz.args(["+nightly", "fuzz", "--version"]);
    if !quiet(fuzz) {
        return Some("cargo-fuzz is not installed".to_string());
    }
    None
}

fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds = FUZZ_SECONDS_DEFAULT;
    let mut stable_only = false;
    for a in args {
        match a.as_str() {
            "--stable" => stable_only = true,
            s => {
                seconds = s.parse().map_err(|e| format!("fuzz: SECONDS {s:?}: {e}"))?;
            }
        }
    }
    if stable_only {
        return fuzz_stable(seconds);
    }
    match cargo_fuzz_missing() {
        None => fuzz_libfuzzer(seconds),
        Some(why) => {
            eprintln!("xtask: cargo fuzz cannot run: {why}. To install it:");
            eprintln!("    rustup toolchain install nightly");
            eprintln!("    cargo install cargo-fuzz");
            eprintln!("xtask: running the stable fallback instead (not coverage-guided)");
            fuzz_stable(seconds)?;
            Err(format!(
                "fuzz: cargo fuzz did not run ({why}); the stable fallback passed \
                 (`cargo xtask fuzz --stable` runs only the fallback and exits 0 when it passes)"
            ))
        }
    }
}

/// cargo-fuzz over the decode target. libFuzzer writes what it finds into the first
/// corpus directory: a scratch one under rpc/fuzz/target, so the kept seed corpus
/// (the second, read-only here) stays as the repo has it.
fn fuzz_libfuzzer(seconds: u64) -> Result<(), String> {
    let rpc = workspace_root().join("rpc");
    let work = rpc.join("fuzz/target/corpus-work/decode");
    std::fs::create_dir_all(&work)
        .map_err(|e| format!("fuzz: cannot create {}: {e}", work.display()))?;
    let mut c = rustup_cargo();
    c.current_dir(&rpc);
    c.args(["+nightly", "fuzz", "run", "decode"]);
    c.arg(&work);
    c.arg("fuzz/corpus/decode");
    c.arg("--");
    c.arg(format!("-max_total_time={seconds}"));
    c.arg(format!("-max_len={FUZZ_INPUT_LEN_MAX}"));
    run(
        &format!(
            "cargo +nightly fuzz run decode for {seconds} s (failing inputs go to rpc/fuzz/artifacts/decode/)"
        ),
        c,
    )
}

/// The stable fallback: a seeded random mutator over the same corpus and property.
fn fuzz_stable(seconds: u64) -> Result<(), String> {
    let mut c = cargo();
    c.current_dir(workspace_root());
    c.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "rpc",
        "--example",
        "fuzz_decode",
        "--",
    ]);
    c.arg(seconds.to_string());
    run(
        &format!("rpc fuzz_decode (stable fallback) for {seconds} s"),
        c,
    )
}
