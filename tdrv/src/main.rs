//! `tdrv`: the CVA unit driver (the seed's tdrv.c). It drives each module bottom-up:
//! benchmarks now; scenarios, torture and simulation as the modules arrive.
//! It is a tool: it may panic on a broken invariant of its own, never on bad input
//! (that gets a usage error).
#![deny(unsafe_op_in_unsafe_fn)]

mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// Area: taskio.
        area: String,
        /// Fewer, shorter samples: checks the benchmarks run, figures are rough.
        #[arg(long)]
        quick: bool,
        /// Run only the figures whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench { area, quick, only } => match bench::run(&area, quick, only.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("tdrv bench: {msg}");
                ExitCode::from(2)
            }
        },
    }
}
