//! `tdrv bench cdev`: how much destage costs the clients of a cache device
//! (`cdev::Device` on real files under ./target/tdrv-bench, formatted afresh each
//! run, on one taskio runtime with the real I/O driver).
//!
//! The foreground is [`FG_TASKS`] tasks reading 4 KiB at random lines of a region
//! the cache holds clean (every read a hit on the vSSD), at a fixed rate in all
//! ([`FG_READS_PER_S`]): each read is due at its slot of the schedule and its latency
//! is counted from that slot (a read held up by destage is late, not skipped).
//! Each sample measures the foreground twice:
//!
//! - `cdev_fg_p99_idle`: for [`PHASE`] with no dirty line (no destage);
//! - `cdev_fg_p99_destage`: while destage flushes a backlog of dirty lines written
//!   beforehand ([`BACKLOG_SHARE_PCT`] of the cache, by 1 MiB writes, below the high
//!   watermark), started by lowering the watermarks (`Device::set`), until the
//!   backlog is gone or [`PHASE`] has passed;
//! - `cdev_fg_p99_ratio`: the second over the first, sample by sample (the issue's
//!   reach: at most 2x);
//! - `cdev_destage_mbps`: the backlog's bytes destaged over the destage phase.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use cdev::{CacheMode, Device, DeviceConfig, DeviceSettings, OpenOptions, ReplicaLoss};
use taskio::rand::Rng;
use taskio::{Config, Instant, IoConfig, Runtime, now, sleep_until, spawn};

use super::lat::Latencies;
use super::{Figure, Plan};

/// Bytes of a cache line and of a foreground read.
const LINE: u64 = 4096;
/// Foreground reads per second, all tasks together.
const FG_READS_PER_S: u64 = 2000;
/// Foreground tasks (each a share of the rate).
const FG_TASKS: u64 = 4;
/// Lines of the region the foreground reads (cached clean before the samples).
const FG_LINES: u64 = 1024;
/// The backlog of dirty lines destage flushes, as a share of the cache's lines.
const BACKLOG_SHARE_PCT: u64 = 60;
/// Bytes of one write of the backlog.
const BACKLOG_WRITE: u64 = 1 << 20;
/// The reach: foreground p99 during destage at most this many times idle's.
const REACH_RATIO: f64 = 2.0;
const SEED: u64 = 0xcde5;

const _: () = assert!(FG_READS_PER_S.is_multiple_of(FG_TASKS) && FG_TASKS >= 1);
const _: () = assert!(BACKLOG_WRITE.is_multiple_of(LINE));
const _: () = assert!(BACKLOG_SHARE_PCT < 100);

/// Sizes of one run.
struct Shape {
    cache_bytes: u64,
    device_bytes: u64,
    /// How long each phase of a sample runs at most.
    phase: Duration,
}

const PHASE: Duration = Duration::from_secs(1);
const FULL: Shape = Shape {
    cache_bytes: 256 << 20,
    device_bytes: 1 << 30,
    phase: PHASE,
};
const QUICK: Shape = Shape {
    cache_bytes: 32 << 20,
    device_bytes: 256 << 20,
    phase: Duration::from_millis(200),
};

const FIGURES: [&str; 4] = [
    "cdev_fg_p99_idle",
    "cdev_fg_p99_destage",
    "cdev_fg_p99_ratio",
    "cdev_destage_mbps",
];

pub fn run(plan: &Plan) -> Result<Vec<Figure>, String> {
    if !FIGURES.iter().any(|f| Figure::wanted(plan, f)) {
        return Ok(Vec::new());
    }
    let shape = if plan.quick { QUICK } else { FULL };
    let dir = PathBuf::from("target/tdrv-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let config = DeviceConfig {
        name: "bench".into(),
        backing: dir.join("cdev-backing.dat"),
        vssd: dir.join("cdev-vssd.dat"),
        vssd_bytes: shape.cache_bytes,
        line_size: LINE as u32,
        mode: CacheMode::WriteBack,
        replicas: Vec::new(),
        min_replicas: 1,
        replica_loss: ReplicaLoss::Degrade,
        destage_high_pct: 100,
        destage_low_pct: 99,
        seq_cutoff_bytes: 0,
        // No RAM tier: the foreground reads the vSSD destage also uses.
        ram_cache_bytes: 0,
        local_member: 0,
    };
    // Formatted afresh: no dirty line of an earlier run.
    for path in [&config.backing, &config.vssd] {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("remove {}: {e}", path.display()));
            }
            _ => {}
        }
    }
    let samples = plan.samples.min(if plan.quick { 3 } else { 7 });
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default())
        .map_err(|e| format!("cdev: runtime: {e}"))?;
    let measured = rt
        .run(move || measure(&config, &shape, samples))
        .map_err(|e| format!("cdev: {e}"))??;
    let Measured {
        idle,
        destage,
        mbps,
        p50_idle,
        p50_destage,
    } = measured;
    let median = |v: Vec<f64>| {
        Figure {
            name: "p50",
            unit: "us",
            samples: v,
            target: None,
            reference: None,
        }
        .median()
    };
    let ratios: Vec<f64> = idle.iter().zip(&destage).map(|(i, d)| d / i).collect();
    let ratio = Figure {
        name: "cdev_fg_p99_ratio",
        unit: "x",
        samples: ratios,
        target: Some("<= 2"),
        reference: None,
    };
    let met = if ratio.median() <= REACH_RATIO {
        "met"
    } else {
        "NOT met"
    };
    let reference = format!(
        "{:.2}x idle's (reach <= {REACH_RATIO}x: {met}); p50 {:.0} us, idle {:.0} us; {FG_READS_PER_S} reads/s of 4 KiB hits, {FG_TASKS} tasks",
        ratio.median(),
        median(p50_destage),
        median(p50_idle)
    );
    let figures = vec![
        Figure {
            name: "cdev_fg_p99_idle",
            unit: "us",
            samples: idle,
            target: None,
            reference: None,
        },
        Figure {
            name: "cdev_fg_p99_destage",
            unit: "us",
            samples: destage,
            target: None,
            reference: Some(reference),
        },
        ratio,
        Figure {
            name: "cdev_destage_mbps",
            unit: "MB/s",
            samples: mbps,
            target: None,
            reference: None,
        },
    ];
    Ok(figures
        .into_iter()
        .filter(|f| Figure::wanted(plan, f.name))
        .collect())
}

/// The samples: foreground p99 (us) idle and during destage, destage MB/s, and the
/// foreground p50s (us) idle and during destage (for the table).
struct Measured {
    idle: Vec<f64>,
    destage: Vec<f64>,
    mbps: Vec<f64>,
    p50_idle: Vec<f64>,
    p50_destage: Vec<f64>,
}

fn measure(config: &DeviceConfig, shape: &Shape, samples: usize) -> Result<Measured, String> {
    let options = OpenOptions {
        create: true,
        backing_bytes: shape.device_bytes,
    };
    let dev = Device::open(config, options).map_err(|e| e.to_string())?;
    let result = samples_of(&dev, shape, samples);
    let closed = dev.close().map_err(|e| e.to_string());
    let measured = result?;
    closed?;
    Ok(measured)
}

fn samples_of(dev: &Device, shape: &Shape, samples: usize) -> Result<Measured, String> {
    let e = |e: cdev::CdevError| e.to_string();
    let cache_lines = shape.cache_bytes / LINE;
    let backlog_lines =
        cache_lines * BACKLOG_SHARE_PCT / 100 / (BACKLOG_WRITE / LINE) * (BACKLOG_WRITE / LINE);
    let backlog_first = FG_LINES;
    assert!(backlog_first + backlog_lines <= shape.device_bytes / LINE);
    assert!(
        FG_LINES + backlog_lines < cache_lines,
        "the foreground's lines stay cached"
    );
    // The foreground's region, cached clean.
    let mut buf = vec![0u8; BACKLOG_WRITE as usize];
    for first in (0..FG_LINES).step_by((BACKLOG_WRITE / LINE) as usize) {
        dev.write(first * LINE, &buf).map_err(e)?;
    }
    dev.destage_all().map_err(e)?;
    let hold = settings(100, 99);
    let run = settings(1, 0);
    let mut m = Measured {
        idle: Vec::new(),
        destage: Vec::new(),
        mbps: Vec::new(),
        p50_idle: Vec::new(),
        p50_destage: Vec::new(),
    };
    for sample in 0..samples {
        dev.set(&hold).map_err(e)?;
        let (p50, p99) = foreground(dev, shape.phase, sample as u64, || false)?;
        m.idle.push(p99);
        m.p50_idle.push(p50);
        for (i, first) in (backlog_first..backlog_first + backlog_lines)
            .step_by((BACKLOG_WRITE / LINE) as usize)
            .enumerate()
        {
            buf.fill((sample + i) as u8 | 1);
            dev.write(first * LINE, &buf).map_err(e)?;
        }
        let dirty = dev.dirty_lines();
        let start = now();
        dev.set(&run).map_err(e)?;
        let (p50, p99) = foreground(dev, shape.phase, sample as u64, || dev.dirty_lines() == 0)?;
        let seconds = now().saturating_duration_since(start).as_secs_f64();
        let destaged = dirty - dev.dirty_lines();
        m.destage.push(p99);
        m.p50_destage.push(p50);
        m.mbps.push((destaged * LINE) as f64 / seconds / 1e6);
        // What the phase left is destaged outside the figures.
        dev.destage_all().map_err(e)?;
    }
    Ok(m)
}

fn settings(high: u8, low: u8) -> DeviceSettings {
    DeviceSettings {
        destage_high_pct: Some(high),
        destage_low_pct: Some(low),
        ..DeviceSettings::default()
    }
}

/// Reads at [`FG_READS_PER_S`] for `phase` at most, or until `done` says so; the p50
/// and p99 of their latencies (us), each counted from its slot in the schedule.
fn foreground(
    dev: &Device,
    phase: Duration,
    sample: u64,
    done: impl Fn() -> bool,
) -> Result<(f64, f64), String> {
    let interval = Duration::from_nanos(1_000_000_000 * FG_TASKS / FG_READS_PER_S);
    let start = now();
    let end = start + phase;
    let stop = Rc::new(Cell::new(false));
    let lat = Rc::new(RefCell::new(Latencies::new()));
    let failed: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let tasks: Vec<_> = (0..FG_TASKS)
        .map(|k| {
            let (dev, stop, lat, failed) = (dev.clone(), stop.clone(), lat.clone(), failed.clone());
            // Staggered: the tasks' slots interleave evenly.
            let first: Instant = start + interval * k as u32 / FG_TASKS as u32;
            spawn(move || {
                let mut rng = Rng::new(SEED ^ sample << 8 ^ k);
                let mut buf = vec![0u8; LINE as usize];
                let mut due = first;
                // Bounded: the slots move forward until the phase ends.
                while due < end && !stop.get() {
                    sleep_until(due);
                    let line = rng.below(FG_LINES);
                    if let Err(e) = dev.read(line * LINE, &mut buf) {
                        *failed.borrow_mut() = Some(e.to_string());
                        return;
                    }
                    lat.borrow_mut()
                        .record(now().saturating_duration_since(due));
                    due = due + interval;
                }
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("spawn a foreground task: {e}"))?;
    // Bounded by the phase: polled every interval.
    while now() < end && !done() {
        sleep_until(now() + interval);
    }
    stop.set(true);
    for t in tasks {
        t.join().map_err(|e| format!("a foreground task: {e}"))?;
    }
    if let Some(why) = failed.borrow_mut().take() {
        return Err(format!("foreground read: {why}"));
    }
    let lat = lat.borrow();
    let none = || "no foreground read in the phase".to_string();
    Ok((
        lat.quantile_us(0.5).ok_or_else(none)?,
        lat.quantile_us(0.99).ok_or_else(none)?,
    ))
}
