//! Hit ratios of the vSSD's eviction policy (S3-FIFO) against plain LRU on a Zipf
//! trace and on a Zipf trace mixed with sequential scans, at caches of 1%, 5% and
//! 10% of the Zipf key space; and the policy's memory per line.
//!
//! ```text
//! cargo run --release -p vssd --example evict_hit_ratio [-- OPTIONS]
//!   --accesses N       accesses per trace (default 4000000)
//!   --keys N           Zipf key space in lines (default 1000000)
//!   --alpha F          Zipf skew (default 0.9)
//!   --zipf-run N       scan-mixed: Zipf accesses between two scans (default 20000)
//!   --scan-len N       scan-mixed: lines per scan (default 10000)
//!   --small-percent P  S3-FIFO small queue share (default 10)
//!   --promote K        S3-FIFO small -> main promotion threshold (default 1)
//!   --seed N           trace seed (default 1)
//! ```

use vssd::evict::reference::Lru;
use vssd::evict::trace::{ScanMix, Zipf};
use vssd::evict::{Evictor, Tuning, hit_ratio};

struct Args {
    accesses: u64,
    keys: u64,
    alpha: f64,
    zipf_run: u64,
    scan_len: u64,
    tuning: Tuning,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        accesses: 4_000_000,
        keys: 1_000_000,
        alpha: 0.9,
        zipf_run: 20_000,
        scan_len: 10_000,
        tuning: Tuning::default(),
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--accesses" => a.accesses = value.parse().map_err(|e| bad(&e))?,
            "--keys" => a.keys = value.parse().map_err(|e| bad(&e))?,
            "--alpha" => a.alpha = value.parse().map_err(|e| bad(&e))?,
            "--zipf-run" => a.zipf_run = value.parse().map_err(|e| bad(&e))?,
            "--scan-len" => a.scan_len = value.parse().map_err(|e| bad(&e))?,
            "--small-percent" => a.tuning.small_percent = value.parse().map_err(|e| bad(&e))?,
            "--promote" => a.tuning.promote_freq_min = value.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("evict_hit_ratio: {e}");
            std::process::exit(2);
        }
    };
    let n = args.accesses as usize;
    let zipf = Zipf::new(args.keys, args.alpha, args.seed);
    let traces: [(&str, Vec<u64>); 2] = [
        ("zipf", zipf.clone().take(n).collect()),
        (
            "scan-mixed",
            ScanMix::new(zipf, args.zipf_run, args.scan_len)
                .take(n)
                .collect(),
        ),
    ];
    println!(
        "{} accesses per trace; Zipf alpha {} over {} lines; scan-mixed: {} Zipf \
         accesses, then a scan of {} new lines; S3-FIFO small {}%, promote at {}",
        args.accesses,
        args.alpha,
        args.keys,
        args.zipf_run,
        args.scan_len,
        args.tuning.small_percent,
        args.tuning.promote_freq_min,
    );
    println!();
    println!("| trace | cache | lines | LRU | S3-FIFO | S3-FIFO - LRU |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, trace) in &traces {
        for percent in [1u64, 5, 10] {
            let lines = args.keys * percent / 100;
            let lru = hit_ratio(&mut Lru::new(lines), trace.iter().copied());
            let mut ev = Evictor::with_tuning(lines, args.tuning);
            let s3 = hit_ratio(&mut ev, trace.iter().copied());
            println!(
                "| {name} | {percent}% | {lines} | {:.2}% | {:.2}% | {:+.2} pts |",
                lru * 100.0,
                s3 * 100.0,
                (s3 - lru) * 100.0
            );
        }
    }
    println!();
    for lines in [args.keys / 100, 1 << 20, 1_000_000] {
        let ev = Evictor::new(lines);
        println!(
            "S3-FIFO memory at {lines} lines: {} bytes, {:.1} bytes per line \
             (LRU reference: {:.1})",
            ev.heap_bytes(),
            ev.heap_bytes() as f64 / lines as f64,
            Lru::new(lines).heap_bytes() as f64 / lines as f64,
        );
    }
}
