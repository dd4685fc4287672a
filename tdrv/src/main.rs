//! `tdrv`: the CVA unit driver (the seed's tdrv.c). It drives each module bottom-up:
//! benchmarks now; scenarios, torture and simulation as the modules arrive.
//! It is a tool: it may panic on a broken invariant of its own, never on bad input
//! (that gets a usage error).
#![deny(unsafe_op_in_unsafe_fn)]

mod bench;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tdrv",
    about = "CVA unit driver: benchmarks, scenarios, torture, simulation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmarks of one area; prints a table, then one JSON line per figure.
    Bench {
        /// Area: taskio, io, rpc, vssd, dtm, cdev.
        area: String,
        /// Fewer, shorter samples: checks the benchmarks run, figures are rough.
        #[arg(long)]
        quick: bool,
        /// Run only the figures whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// `bench io`: the file (or block device) for the file I/O figures; created
        /// and filled if missing. Its contents are overwritten by the write figures.
        /// `bench vssd`: the file (or block device) formatted as the bench's vSSD
        /// (grown if short; fio's peers run on a file beside it).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Run an area's deterministic simulation across seeds, or replay one seed.
    Sim {
        /// Area: taskio, rpc, dtm, cdev.
        area: String,
        #[command(flatten)]
        seeds: Seeds,
    },
    /// Crash torture of a module under the simulator, across seeds, or replay one seed.
    Torture {
        /// Area: vssd.
        area: String,
        #[command(flatten)]
        seeds: Seeds,
    },
}

/// Which seeds `tdrv sim` and `tdrv torture` run.
#[derive(Args)]
struct Seeds {
    /// How many seeds to run (from --first).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Replay this one seed and print its trace hash on the last line.
    #[arg(long)]
    seed: Option<u64>,
    /// Run the scenario's deliberately broken variant (shows what the checks find).
    #[arg(long)]
    buggy: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench {
            area,
            quick,
            only,
            file,
        } => match bench::run(&area, quick, only.as_deref(), file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("tdrv bench: {msg}");
                ExitCode::from(2)
            }
        },
        Cmd::Sim { area, seeds } => seeded("sim", &area, &seeds),
        Cmd::Torture { area, seeds } => seeded("torture", &area, &seeds),
    }
}

/// `tdrv sim` and `tdrv torture`: a sweep of seeds, or one replayed.
fn seeded(cmd: &str, area: &str, seeds: &Seeds) -> ExitCode {
    let opts = sim::Options { buggy: seeds.buggy };
    let outcome = match seeds.seed {
        Some(s) => sim::replay(cmd, area, s, opts),
        None => sim::sweep(cmd, area, seeds.first, seeds.seeds, opts),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(msg) => {
            eprintln!("tdrv {cmd}: {msg}");
            ExitCode::from(2)
        }
    }
}
