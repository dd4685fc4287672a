//! `cvacli`: the remote client that tests a running `cvad` top-down (the seed's
//! cvacli.c): administration (casadm's), I/O, measuring (fio's words) and a crash
//! checker. It only speaks the wire protocol (rpc/PROTOCOL.md).

mod block;
mod cmd;
mod conn;
mod journal;
mod load;
mod progress;
mod units;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error's text already carries its cause.
            eprintln!("cvacli: {e}");
            ExitCode::FAILURE
        }
    }
}
