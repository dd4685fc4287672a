//! `tdrv sim AREA`: runs an area's simulation scenario across seeds (each seed a
//! whole simulated cluster in one thread), shows progress, and prints every failing
//! seed with the command that replays it. `--seed N` replays one seed and prints its
//! trace hash on the last line.

mod cdev;
mod dtm;
mod kv;
mod rpc;
mod vssd;

use std::time::Instant;

/// The outcome of one seed.
pub struct SeedRun {
    pub trace: u64,
    /// None: every invariant held; Some: what broke.
    pub failure: Option<String>,
    /// What the seed did, for the replay's report.
    pub detail: String,
}

/// Options of a scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Run the deliberately broken variant (for showing what the simulator finds).
    pub buggy: bool,
}

/// The settings every scenario starts from: seeded, with rare disk latency spikes.
fn simulator_config(seed: u64) -> taskio::sim::SimConfig {
    let mut config = taskio::sim::SimConfig::new(seed);
    config.faults = taskio::sim::Faults {
        disk_latency_spike: 0.01,
        ..taskio::sim::Faults::default()
    };
    config
}

/// The simulator of a scenario that keeps [`simulator_config`] as it is.
fn simulator(seed: u64) -> taskio::sim::Sim {
    taskio::sim::Sim::new(simulator_config(seed))
}

/// The scenario of `tdrv CMD AREA` (CMD: sim or torture).
fn scenario(cmd: &str, area: &str) -> Result<fn(u64, Options) -> SeedRun, String> {
    match (cmd, area) {
        ("sim", "taskio") => Ok(kv::run_seed),
        ("sim", "rpc") => Ok(rpc::run_seed),
        ("sim", "dtm") => Ok(dtm::run_seed),
        ("sim", "cdev") => Ok(cdev::run_seed),
        ("torture", "vssd") => Ok(vssd::run_seed),
        ("sim", other) => Err(format!(
            "unknown sim area {other:?} (known: taskio, rpc, dtm, cdev)"
        )),
        (_, other) => Err(format!("unknown torture area {other:?} (known: vssd)")),
    }
}

fn replay_cmd(cmd: &str, area: &str, seed: u64, opts: Options) -> String {
    format!(
        "cargo run --release -p tdrv -- {cmd} {area} --seed {seed}{}",
        if opts.buggy { " --buggy" } else { "" }
    )
}

/// Runs one seed and prints its outcome and trace hash (last line).
pub fn replay(cmd: &str, area: &str, seed: u64, opts: Options) -> Result<bool, String> {
    let run = scenario(cmd, area)?;
    let r = run(seed, opts);
    match &r.failure {
        None => println!("seed {seed}: ok ({})", r.detail),
        Some(f) => println!("seed {seed}: FAILED: {f} ({})", r.detail),
    }
    println!("trace {:016x}", r.trace);
    Ok(r.failure.is_none())
}

/// Runs seeds `first..first+count`; returns whether all passed.
pub fn sweep(cmd: &str, area: &str, first: u64, count: u64, opts: Options) -> Result<bool, String> {
    let run = scenario(cmd, area)?;
    let bar = indicatif::ProgressBar::new(count);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds {per_sec} eta {eta} {msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for seed in first..first + count {
        let r = run(seed, opts);
        if let Some(f) = r.failure {
            let line = format!(
                "seed {seed} FAILED: {f}\n  replay: {}",
                replay_cmd(cmd, area, seed, opts)
            );
            // A hidden bar (not a terminal) swallows its println.
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            failed.push(seed);
            bar.set_message(format!("{} failed", failed.len()));
        }
        bar.inc(1);
    }
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{count} seeds in {secs:.2} s ({:.0} seeds/s); {} failed{}",
        count as f64 / secs.max(1e-9),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {:?}", &failed[..failed.len().min(20)])
        }
    );
    Ok(failed.is_empty())
}
