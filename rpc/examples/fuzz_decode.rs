//! Stable-toolchain fuzzer for the rpc decoder: a seeded random mutator over the
//! seed corpus, for a bounded time or number of iterations. It checks the same
//! property as the cargo-fuzz target (`rpc::fuzzing::check`): no panic, decoded
//! frames re-encode to the same bytes, every header error can be answered.
//!
//! It is not coverage-guided; it keeps a mutated input only when its outcome
//! (decoded type, or error status and disposition) is new. `cargo xtask fuzz`
//! prefers cargo-fuzz (libFuzzer, nightly) and runs this where that is missing.
//!
//! ```text
//! cargo run --release -p rpc --example fuzz_decode -- [SECONDS] [--seed N] [--iterations N]
//! cargo run --release -p rpc --example fuzz_decode -- --replay FILE
//! ```
//! A failing input is written to `target/fuzz-crashes/` and the run exits 1.

use std::collections::HashSet;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rpc::fuzzing::{check, seeds, with_sound_framing};
use rpc::limits::{DATA_LEN_MAX, HEADER_LEN, PAYLOAD_LEN_MAX};
use rpc::{MsgType, RawHeader, decode_frame, forge, header_bytes};
use taskio::rand::Rng;

/// Most inputs kept in the working pool.
const POOL_MAX: usize = 4096;
/// Longest input the mutator builds (a few frames' worth; large data adds nothing).
const INPUT_LEN_MAX: usize = 4096;
/// Mutations stacked on one input, at most.
const STACK_MAX: u64 = 6;

const INTERESTING_U32: &[u32] = &[
    0,
    1,
    2,
    7,
    8,
    16,
    24,
    HEADER_LEN as u32,
    255,
    256,
    4096,
    DATA_LEN_MAX,
    DATA_LEN_MAX + 1,
    PAYLOAD_LEN_MAX,
    PAYLOAD_LEN_MAX + 1,
    0x7FFF_FFFF,
    0x8000_0000,
    u32::MAX - 1,
    u32::MAX,
];

fn mutate(rng: &mut Rng, v: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = v.len();
    match rng.index(11) {
        0 if len > 0 => {
            let i = rng.index(len);
            v[i] ^= 1 << rng.index(8);
        }
        1 if len > 0 => {
            let i = rng.index(len);
            v[i] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            let i = rng.index(len);
            v[i] = [0u8, 1, 0x7F, 0x80, 0xFF][rng.index(5)];
        }
        3 if len >= 4 => {
            // An interesting u32 at a random, often 4-aligned, offset.
            let mut i = rng.index(len - 3);
            if rng.index(2) == 0 {
                i &= !3;
            }
            let x = INTERESTING_U32[rng.index(INTERESTING_U32.len())];
            v[i..i + 4].copy_from_slice(&x.to_le_bytes());
        }
        4 if len >= 2 => {
            let i = rng.index(len - 1) & !1;
            let x = [
                0u16,
                1,
                2,
                3,
                0x10,
                0x13,
                0x22,
                0x27,
                0x28,
                0x8000,
                u16::MAX,
            ][rng.index(11)];
            v[i..i + 2].copy_from_slice(&x.to_le_bytes());
        }
        5 => {
            let i = rng.index(len + 1);
            let n = 1 + rng.index(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(i..i, bytes);
        }
        6 if len > 0 => {
            let i = rng.index(len);
            let n = 1 + rng.index((len - i).min(32));
            v.drain(i..i + n);
        }
        7 if len > 0 => v.truncate(rng.index(len)),
        8 if !pool.is_empty() => {
            // Splice: our head, another input's tail.
            let other = &pool[rng.index(pool.len())];
            let cut = rng.index(len + 1);
            let from = rng.index(other.len() + 1);
            v.truncate(cut);
            v.extend_from_slice(&other[from..]);
        }
        9 if len >= HEADER_LEN => {
            // Reseal only the header CRC: lengths and payload CRC stay as mutated.
            if let Some(h) = v.first_chunk_mut::<HEADER_LEN>() {
                forge::reseal(h);
            }
        }
        _ => {
            // Repair magic, version, payload length and both CRCs.
            *v = with_sound_framing(v);
        }
    }
    v.truncate(INPUT_LEN_MAX);
}

/// What an input did, coarsely: the fuzzer keeps inputs with new outcomes.
fn outcome(v: &[u8]) -> (bool, u16, u16, bool, bool) {
    let raw_type = header_bytes(v)
        .ok()
        .and_then(|h| RawHeader::decode(h).ok())
        .and_then(|r| MsgType::from_u16(r.msg_type))
        .map_or(u16::MAX, MsgType::code);
    match decode_frame(v) {
        Ok((h, _, _)) => (true, h.msg_type.code(), 0, h.response, false),
        Err(e) => (
            false,
            raw_type,
            e.status().code(),
            false,
            e.closes_connection(),
        ),
    }
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut inputs: Vec<Vec<u8>> = seeds().into_iter().map(|(_, b)| b).collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(b) = std::fs::read(&p) {
                inputs.push(b);
            }
        }
    }
    inputs.sort();
    inputs.dedup();
    inputs
}

fn run_one(input: &[u8]) -> Result<(), String> {
    let owned = input.to_vec();
    panic::catch_unwind(move || check(&owned)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())
    })
}

fn save_crash(input: &[u8], seed: u64, iter: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("decode-{seed:016x}-{iter}.bin"));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!(
            "fuzz_decode: cannot save the failing input to {}: {e}",
            path.display()
        );
    }
    path
}

struct Args {
    seconds: u64,
    seed: u64,
    iterations: Option<u64>,
    replay: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        iterations: None,
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--iterations" => {
                args.iterations = Some(
                    value("--iterations")?
                        .parse()
                        .map_err(|e| format!("--iterations: {e}"))?,
                )
            }
            "--replay" => args.replay = Some(PathBuf::from(value("--replay")?)),
            s => args.seconds = s.parse().map_err(|e| format!("SECONDS {s:?}: {e}"))?,
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz_decode: {e}");
            eprintln!("usage: fuzz_decode [SECONDS] [--seed N] [--iterations N] | --replay FILE");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = args.replay {
        let input = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("fuzz_decode: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        return match run_one(&input) {
            Ok(()) => {
                println!("fuzz_decode: {} passes", path.display());
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("fuzz_decode: {} fails: {msg}", path.display());
                ExitCode::FAILURE
            }
        };
    }

    let corpus_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut pool = load_corpus(&corpus_dir);
    let corpus_len = pool.len();
    let mut seen: HashSet<(bool, u16, u16, bool, bool)> = pool.iter().map(|v| outcome(v)).collect();
    let mut rng = Rng::new(args.seed);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    println!(
        "fuzz_decode: seed {} ({corpus_len} corpus inputs), {}",
        args.seed,
        match args.iterations {
            Some(n) => format!("{n} iterations"),
            None => format!("{} s", args.seconds),
        }
    );
    // Silence the default hook: a failing input is reported once, below.
    panic::set_hook(Box::new(|_| {}));
    let mut iter = 0u64;
    let mut decoded = 0u64;
    loop {
        match args.iterations {
            Some(n) if iter >= n => break,
            None if iter.is_multiple_of(256) && Instant::now() >= deadline => break,
            _ => {}
        }
        iter += 1;
        let mut input = pool[rng.index(pool.len())].clone();
        for _ in 0..=rng.index(STACK_MAX as usize) {
            mutate(&mut rng, &mut input, &pool);
        }
        if let Err(msg) = run_one(&input) {
            let path = save_crash(&input, args.seed, iter);
            eprintln!(
                "fuzz_decode: FAILED at iteration {iter} (seed {}): {msg}\n  input saved to {}\n  replay: cargo run --release -p rpc --example fuzz_decode -- --replay {}",
                args.seed,
                path.display(),
                path.display()
            );
            return ExitCode::FAILURE;
        }
        let out = outcome(&input);
        if out.0 {
            decoded += 1;
        }
        if seen.insert(out) {
            if pool.len() < POOL_MAX {
                pool.push(input);
            } else {
                let i = rng.index(POOL_MAX - corpus_len) + corpus_len;
                pool[i] = input;
            }
        }
    }
    println!(
        "fuzz_decode: {iter} inputs, {decoded} decoded as valid frames, {} distinct outcomes, pool {}: no failure",
        seen.len(),
        pool.len()
    );
    ExitCode::SUCCESS
}
