//! `cvacli`: the remote client that tests a running `cvad` top-down (the seed's
//! cvacli.c). It only speaks the wire protocol; it never links the server's crates.
//!
//! Not built yet: it needs the `rpc` client. Until then it says so and fails.
#![deny(unsafe_op_in_unsafe_fn)]

fn main() -> std::process::ExitCode {
    eprintln!("cvacli: no commands yet; the remote client arrives with the rpc issue");
    std::process::ExitCode::from(2)
}
