//! Fuzz target: the rpc frame decoder on arbitrary bytes. The property (no panic;
//! a frame that decodes re-encodes to the same bytes; every header error can be
//! answered) is `rpc::fuzzing::check`, shared with the stable fallback
//! `cargo run --release -p rpc --example fuzz_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rpc::fuzzing::check(data);
});
