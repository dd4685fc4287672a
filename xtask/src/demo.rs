//! `cargo xtask demo`: two cvads, a device replicated on both, 10 s of `cvacli
//! verify` load (its progress bar), kill -9 of the primary under that load,
//! `device takeover` on the replica's cvad, `verify --check` there, a summary table.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::procs::{self, Bins, Cvad, WAIT_MAX};

/// How long the verify load runs.
const LOAD: Duration = Duration::from_secs(10);
/// When, into the load, the primary is killed.
const KILL_AT: Duration = Duration::from_secs(8);
const _: () = assert!(KILL_AT.as_secs() < LOAD.as_secs());
/// The demo device: its backing file and its vSSD.
const BACKING_BYTES: u64 = 256 << 20;
const VSSD_BYTES: u64 = 64 << 20;
/// The area verify writes in and its depth.
const AREA: &str = "32m";
const IODEPTH: &str = "16";

pub fn demo() -> Result<(), String> {
    let bins = procs::build()?;
    let dir = std::env::temp_dir().join(format!("cva-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = steps(&bins, &dir);
    if result.is_ok() {
        // Kept when it failed: the logs say why.
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("xtask demo: data dirs and logs kept in {}", dir.display());
    }
    result
}

fn steps(bins: &Bins, dir: &Path) -> Result<(), String> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let t0 = Instant::now();
    let replica = Cvad::start(bins, &dir.join("b"), "127.0.0.1:0")?;
    let primary = Cvad::start(bins, &dir.join("a"), "127.0.0.1:0")?;
    println!(
        "demo: cvad A (primary) on {}, cvad B (replica) on {}",
        primary.addr, replica.addr
    );
    rows.push((
        "two cvads up".into(),
        format!(
            "A {} B {} in {:.2?}",
            primary.addr,
            replica.addr,
            t0.elapsed()
        ),
    ));
    let config = procs::device_file(dir, "demo", BACKING_BYTES, VSSD_BYTES, Some(replica.addr))?;
    primary.ok(bins, &["device", "create", &config])?;
    rows.push((
        "device demo".into(),
        format!("{} MiB vSSD on A, replica demo-r1 on B", VSSD_BYTES >> 20),
    ));

    let journal = dir.join("journal").display().to_string();
    println!("demo: cvacli verify demo for {LOAD:?}; cvad A gets kill -9 at {KILL_AT:?}");
    let load_s = format!("{}s", LOAD.as_secs());
    let mut writer = primary
        .cli(bins)
        .args([
            "verify",
            "demo",
            "--journal",
            &journal,
            "--runtime",
            &load_s,
        ])
        .args(["--iodepth", IODEPTH, "--size", AREA])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start cvacli verify: {e}"))?;
    let started = Instant::now();
    // The demo's clock, not a synchronisation: the crash comes under load, when
    // it comes.
    std::thread::sleep(KILL_AT);
    if let Ok(Some(status)) = writer.try_wait() {
        return Err(format!("verify stopped before the crash: {status}"));
    }
    primary.crash()?;
    println!("\ndemo: kill -9 of cvad A at {:.2?}", started.elapsed());
    // It loses its server: its exit status says so and nothing more.
    let writer_status = procs::wait(&mut writer, "cvacli verify", WAIT_MAX)?;
    let journal_text = std::fs::read_to_string(&journal)
        .map_err(|e| format!("read the journal {journal}: {e}"))?;
    let acknowledged = journal_text.lines().count().saturating_sub(1);
    rows.push((
        "verify load".into(),
        format!(
            "{acknowledged} acknowledged writes journaled; A killed at {:.1} s; writer {writer_status}",
            KILL_AT.as_secs_f64()
        ),
    ));

    let t = Instant::now();
    let took = replica.ok(bins, &["device", "takeover", "demo"])?;
    print!("{took}");
    rows.push((
        "takeover on B".into(),
        format!("{} in {:.2?}", took.trim_end(), t.elapsed()),
    ));
    let check = replica
        .cli(bins)
        .args(["verify", "demo", "--check", "--journal", &journal])
        .output()
        .map_err(|e| format!("cvacli verify --check: {e}"))?;
    let check_text = String::from_utf8_lossy(&check.stdout);
    print!("{check_text}");
    let last = check_text.lines().last().unwrap_or("").to_string();
    rows.push((
        "verify --check on B".into(),
        format!(
            "{} ({last})",
            if check.status.success() {
                "PASS"
            } else {
                "FAIL"
            }
        ),
    ));
    replica.stop()?;
    rows.push((
        "B stopped".into(),
        format!("SIGTERM, exit 0; {:.2?} in all", t0.elapsed()),
    ));

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\n{:width$}  result", "step");
    println!("{:-<width$}  {:-<6}", "", "");
    for (k, v) in &rows {
        println!("{k:width$}  {v}");
    }
    if check.status.success() {
        Ok(())
    } else {
        Err("verify --check found lost, stale or foreign blocks".into())
    }
}
