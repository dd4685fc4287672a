//! `tdrv bench vssd`: the virtual SSD on a real file with O_DIRECT, on one taskio
//! runtime thread, each figure beside a fio peer measured in the same run, sample by
//! sample (interleaved, so that drift of the machine hits both alike):
//!
//! - `vssd_write_4k_qd1` / `vssd_write_4k_qd32`: one op is `writep1` (payload and
//!   PREPARE durable) plus `commit` of a fresh tran on a random line, 1 or 32 tasks;
//!   beside fio's random writes with an `fdatasync` after each (qd 1, the durable
//!   write a file system offers one writer) and without (qd 32, the device's rate);
//! - `vssd_writes_per_flush_qd32`: the group-commit factor of the qd 32 write samples,
//!   log records made durable per log write (the vSSD's own counters);
//! - `vssd_read_hit_4k_qd32`: one `read_into` of a cached line (CRC checked), 32
//!   tasks, every line cached first; beside fio's random reads at qd 32.
//!
//! The vSSD is formatted fresh each run (a new uuid) on `--file` or
//! ./target/tdrv-bench/vssd-<lines>.dat; fio runs on a file of the vSSD's data-region
//! size beside it (filled once, not sparse), on a thread of its own while the runtime
//! waits for its sample. Each sample runs for a fixed time; figures are operations per
//! second with latency percentiles, CPU time per op and the reach in the table.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ::vssd::layout::{FormatParams, random_uuid};
use ::vssd::{Options, Vssd, format};
use taskio::file::{File, OpenOptions};
use taskio::rand::Rng;
use taskio::remote::remote;
use taskio::{AlignedBuf, Config, IoConfig, IoError, Runtime, spawn};

use super::io::{Measured, Sample, fill_file, fio_available, fio_sample, tasks_sample};
use super::lat::Latencies;
use super::{Figure, Plan};

/// Bytes per cache line, and per fio block.
pub(super) const LINE: u32 = 4096;
/// The vSSD of a full run: 32768 lines (128 MiB of data) and a 64 MiB log.
pub(super) const LINES_FULL: u64 = 32 * 1024;
pub(super) const LOG_BYTES_FULL: u64 = 64 << 20;
/// The vSSD of a `--quick` run: 2048 lines (8 MiB) and a 4 MiB log.
pub(super) const LINES_QUICK: u64 = 2 * 1024;
pub(super) const LOG_BYTES_QUICK: u64 = 4 << 20;
/// Tasks of the qd 32 figures (and of the fill before the read figure).
pub(super) const QD: usize = 32;
// Each task owns the lines `line % QD == task`: two tasks never prepare one line.
const _: () = assert!(LINES_FULL.is_multiple_of(QD as u64));
const _: () = assert!(LINES_QUICK.is_multiple_of(QD as u64));
/// The cache device the bench's vSSD belongs to (a rerun reformats it without force).
pub(super) const DEVICE_ID: &str = "tdrv-bench";
/// Seed of the lines' generator (each task draws its own stream).
pub(super) const SEED: u64 = 0x2545_f491_4f6c_dd1d;
/// The reach: write qd 32 at least this many times fio's qd 32 random writes,
const REACH_WRITE_PEER: f64 = 0.6;
/// more than this many times fio's qd 1 random writes with fdatasync,
const REACH_WRITE_SYNC: f64 = 4.0;
/// and read hits at least this many times fio's qd 32 random reads.
const REACH_READ_PEER: f64 = 0.9;

const WRITE_QD1: &str = "vssd_write_4k_qd1";
pub(super) const WRITE_QD32: &str = "vssd_write_4k_qd32";
const PER_FLUSH: &str = "vssd_writes_per_flush_qd32";
const READ_QD32: &str = "vssd_read_hit_4k_qd32";
const PEER_SYNC_QD1: &str = "peer_randwrite_fdatasync_4k_qd1";
const PEER_WRITE_QD32: &str = "peer_randwrite_4k_qd32";
const PEER_READ_QD32: &str = "peer_randread_4k_qd32";
/// Not named by the issue: fio's own group commit (an fdatasync every 8 writes at
/// qd 32), the ceiling of durable random writes on this device.
const PEER_SYNC8_QD32: &str = "peer_randwrite_fdatasync8_4k_qd32";

/// What one sample of one variant measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `qd` tasks each doing writep1 + commit (+ mark_clean) in a loop.
    Write { qd: usize },
    /// `qd` tasks each reading cached lines in a loop.
    ReadHit { qd: usize },
    /// fio, libaio, O_DIRECT, 4 KiB at random offsets of the peer file.
    Fio {
        write: bool,
        qd: usize,
        /// An fdatasync every this many writes (0: none).
        fdatasync: u32,
    },
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    work: Work,
}

/// Variants measured interleaved, sample by sample: each vSSD figure with its peer.
fn groups() -> Vec<Vec<Variant>> {
    let v = |name, work| Variant { name, work };
    vec![
        vec![
            v(WRITE_QD1, Work::Write { qd: 1 }),
            v(
                PEER_SYNC_QD1,
                Work::Fio {
                    write: true,
                    qd: 1,
                    fdatasync: 1,
                },
            ),
        ],
        vec![
            v(WRITE_QD32, Work::Write { qd: QD }),
            v(
                PEER_WRITE_QD32,
                Work::Fio {
                    write: true,
                    qd: QD,
                    fdatasync: 0,
                },
            ),
            v(
                PEER_SYNC8_QD32,
                Work::Fio {
                    write: true,
                    qd: QD,
                    fdatasync: 8,
                },
            ),
        ],
        vec![
            v(READ_QD32, Work::ReadHit { qd: QD }),
            v(
                PEER_READ_QD32,
                Work::Fio {
                    write: false,
                    qd: QD,
                    fdatasync: 0,
                },
            ),
        ],
    ]
}

/// The group commit during one write sample, from the vSSD's counters.
#[derive(Clone, Copy)]
pub(super) struct Flush {
    records_per_write: f64,
    writep1_per_write: f64,
}

/// The samples of one variant, and the group commit of each for the write variants.
struct Run {
    measured: Measured,
    flush: Vec<Flush>,
}

/// What the samples need, inside the runtime.
struct Bench {
    vssd: Option<Vssd>,
    /// The next tran: every op of the run gets a fresh one.
    tran_next: Rc<Cell<u64>>,
    peer_file: PathBuf,
    peer_bytes: u64,
    dur: Duration,
    samples: usize,
}

pub fn run(plan: &Plan) -> Result<Vec<Figure>, String> {
    let fio = fio_available();
    let wanted = |v: &Variant| {
        Figure::wanted(plan, v.name) || (v.name == WRITE_QD32 && Figure::wanted(plan, PER_FLUSH))
    };
    let wants_fio = groups()
        .iter()
        .flatten()
        .any(|v| wanted(v) && matches!(v.work, Work::Fio { .. }));
    let groups: Vec<Vec<Variant>> = groups()
        .into_iter()
        .map(|g| {
            g.into_iter()
                .filter(|v| wanted(v) && (fio || !matches!(v.work, Work::Fio { .. })))
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect();
    let wants_vssd = groups
        .iter()
        .flatten()
        .any(|v| !matches!(v.work, Work::Fio { .. }));
    let (lines, log_bytes) = if plan.quick {
        (LINES_QUICK, LOG_BYTES_QUICK)
    } else {
        (LINES_FULL, LOG_BYTES_FULL)
    };
    let params = FormatParams {
        line_size: LINE,
        lines,
        log_bytes,
        device_id: DEVICE_ID.to_string(),
        // Never the previous format's uuid: format refuses to reuse one.
        uuid: random_uuid().map_err(|e| format!("random uuid: {e}"))?,
        // The bench's own scratch file may hold a vSSD of an older format version
        // (a build before a format change): it is the bench's, so it is reformatted.
        // A `--file` never is: a vSSD there that this build cannot use is refused.
        force: plan.file.is_none(),
    };
    let geometry = params
        .geometry()
        .map_err(|e| format!("vSSD geometry: {e}"))?;
    let path = match &plan.file {
        Some(p) => p.clone(),
        None => PathBuf::from("target/tdrv-bench").join(format!("vssd-{lines}.dat")),
    };
    let peer_file = peer_path(&path, geometry.data_bytes());
    let fio_runs = groups
        .iter()
        .flatten()
        .any(|v| matches!(v.work, Work::Fio { .. }));
    if wants_vssd {
        prepare_vssd_file(&path, geometry.total_bytes())?;
    }
    if fio_runs {
        prepare_peer_file(&peer_file, geometry.data_bytes())?;
    }
    let dur = if plan.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let samples = if plan.quick { 3 } else { 7 };

    let mut rt = Runtime::with_io(Config::default(), IoConfig::default())
        .map_err(|e| format!("runtime: {e}"))?;
    let vssd_path = path.clone();
    let bench_peer = peer_file.clone();
    let (runs, direct) = rt
        .run(move || -> Result<(Vec<Run>, bool), String> {
            let (vssd, direct) = if wants_vssd {
                let (v, direct) = open_fresh(&vssd_path, &params)?;
                (Some(v), direct)
            } else {
                (None, true)
            };
            let mut bench = Bench {
                vssd,
                tran_next: Rc::new(Cell::new(1)),
                peer_file: bench_peer,
                peer_bytes: geometry.data_bytes(),
                dur,
                samples,
            };
            let mut runs = Vec::new();
            for g in &groups {
                runs.extend(measure_group(&mut bench, g)?);
            }
            if let Some(v) = &bench.vssd {
                v.close();
            }
            Ok((runs, direct))
        })
        .map_err(|e| e.to_string())??;

    if wants_fio && !fio {
        println!("fio not found: install it with apt-get install -y fio (peer_* figures skipped)");
    }
    if wants_vssd {
        println!(
            "vssd: {} ({} lines of {LINE} B, {} slots, log {} MiB{}), {dur:?} per sample",
            path.display(),
            geometry.lines(),
            geometry.slot_count(),
            geometry.log_bytes() >> 20,
            if direct {
                ", O_DIRECT"
            } else {
                ", buffered: no O_DIRECT on this file system"
            }
        );
    }
    if fio_runs {
        println!(
            "peers: {} ({} MiB, the vSSD's data region), fio libaio O_DIRECT",
            peer_file.display(),
            geometry.data_bytes() >> 20
        );
    }
    Ok(figures(plan, &runs))
}

/// Measures one group: a short warm-up of its vSSD variants, then its samples,
/// interleaved.
fn measure_group(bench: &mut Bench, group: &[Variant]) -> Result<Vec<Run>, String> {
    let names: Vec<&str> = group.iter().map(|v| v.name).collect();
    eprintln!("tdrv bench vssd: {}", names.join(", "));
    let warm = bench.dur / 5;
    for v in group {
        if !matches!(v.work, Work::Fio { .. }) {
            sample(bench, v, warm).map_err(|e| format!("{}: {e}", v.name))?;
        }
    }
    let mut runs: Vec<Run> = group
        .iter()
        .map(|v| Run {
            measured: Measured {
                name: v.name,
                samples: Vec::with_capacity(bench.samples),
            },
            flush: Vec::with_capacity(bench.samples),
        })
        .collect();
    for _ in 0..bench.samples {
        for (v, r) in group.iter().zip(&mut runs) {
            let dur = bench.dur;
            let (s, flush) = sample(bench, v, dur).map_err(|e| format!("{}: {e}", v.name))?;
            r.measured.samples.push(s);
            r.flush.extend(flush);
        }
    }
    Ok(runs)
}

/// Runs one sample of `v` for `dur`.
fn sample(bench: &Bench, v: &Variant, dur: Duration) -> Result<(Sample, Option<Flush>), String> {
    match v.work {
        Work::Write { qd } => {
            let vssd = bench.vssd.as_ref().expect("a vSSD for the write variants");
            let (s, f) = write_sample(vssd, &bench.tran_next, qd, dur)?;
            Ok((s, Some(f)))
        }
        Work::ReadHit { qd } => {
            let vssd = bench.vssd.as_ref().expect("a vSSD for the read variant");
            fill_every_line(vssd)?;
            Ok((read_sample(vssd, qd, dur)?, None))
        }
        Work::Fio {
            write,
            qd,
            fdatasync,
        } => {
            let s = fio_beside(
                bench.peer_file.clone(),
                bench.peer_bytes,
                write,
                qd,
                fdatasync,
                dur,
            )?;
            Ok((s, None))
        }
    }
}

/// `qd` tasks each writing random lines of its own (`line % qd == task`) until `dur`
/// has passed: writep1 of a fresh tran, commit, then mark_clean. The latency is
/// writep1 + commit; the rate counts the mark_clean too.
pub(super) fn write_sample(
    vssd: &Vssd,
    tran_next: &Rc<Cell<u64>>,
    qd: usize,
    dur: Duration,
) -> Result<(Sample, Flush), String> {
    let lines_per_task = vssd.geometry().lines() / qd as u64;
    assert!(lines_per_task > 0, "{qd} tasks for too few lines");
    let stats0 = vssd.stats();
    let sample = tasks_sample(qd, dur, |task, deadline| {
        let vssd = vssd.clone();
        let tran_next = tran_next.clone();
        move || -> Result<Latencies, String> {
            let mut buf = AlignedBuf::new(LINE as usize);
            buf.set_len(LINE as usize);
            buf.fill(0x5a ^ task as u8);
            let mut rng = Rng::stream(SEED, task as u64);
            let mut lat = Latencies::new();
            let mut start = Instant::now();
            while start < deadline {
                let line = rng.below(lines_per_task) * qd as u64 + task as u64;
                let tran = tran_next.get();
                tran_next.set(tran + 1);
                vssd.writep1(tran, line, &buf)
                    .map_err(|e| format!("writep1 of tran {tran} on line {line}: {e}"))?;
                vssd.commit(tran)
                    .map_err(|e| format!("commit of tran {tran}: {e}"))?;
                lat.record(start.elapsed());
                // An instant destage: the line is clean, so evictable. With every line
                // dirty and no destage, writep1 would wait for room for ever.
                vssd.mark_clean(line, tran)
                    .map_err(|e| format!("mark_clean of line {line}: {e}"))?;
                start = Instant::now();
            }
            Ok(lat)
        }
    })?;
    let stats1 = vssd.stats();
    let log_writes = stats1.log.writes - stats0.log.writes;
    let per_write = |n: u64| {
        if log_writes == 0 {
            0.0
        } else {
            n as f64 / log_writes as f64
        }
    };
    let flush = Flush {
        records_per_write: per_write(stats1.log.records_written - stats0.log.records_written),
        writep1_per_write: per_write(stats1.writep1 - stats0.writep1),
    };
    Ok((sample, flush))
}

/// Caches every line not cached yet (insert_clean), `QD` tasks each filling its own.
fn fill_every_line(vssd: &Vssd) -> Result<(), String> {
    let lines = vssd.geometry().lines();
    let mut handles = Vec::with_capacity(QD);
    for task in 0..QD {
        let vssd = vssd.clone();
        let h = spawn(move || -> Result<(), String> {
            let mut buf = AlignedBuf::new(LINE as usize);
            buf.set_len(LINE as usize);
            buf.fill(0xc3 ^ task as u8);
            for line in (task as u64..lines).step_by(QD) {
                if vssd.lookup(line).is_some() {
                    continue;
                }
                let cached = vssd
                    .insert_clean(line, &buf)
                    .map_err(|e| format!("fill of line {line}: {e}"))?;
                if !cached && vssd.lookup(line).is_none() {
                    return Err(format!("fill of line {line}: no room in the vSSD"));
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    for h in handles {
        h.join().map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// `qd` tasks each reading random lines (all cached) until `dur` has passed; a miss is
/// an error: nothing evicts while only reads run.
fn read_sample(vssd: &Vssd, qd: usize, dur: Duration) -> Result<Sample, String> {
    let lines = vssd.geometry().lines();
    tasks_sample(qd, dur, |task, deadline| {
        let vssd = vssd.clone();
        move || -> Result<Latencies, String> {
            let mut buf = AlignedBuf::new(LINE as usize);
            let mut rng = Rng::stream(SEED, 0x100 + task as u64);
            let mut lat = Latencies::new();
            let mut start = Instant::now();
            while start < deadline {
                let line = rng.below(lines);
                let hit = vssd
                    .read_into(line, &mut buf)
                    .map_err(|e| format!("read of line {line}: {e}"))?;
                if hit.is_none() {
                    return Err(format!(
                        "read of line {line}: a miss, every line was cached"
                    ));
                }
                let end = Instant::now();
                lat.record(end - start);
                start = end;
            }
            Ok(lat)
        }
    })
}

/// One fio sample on a thread of its own while this runtime waits for it in an inbox,
/// parked: run in a task, fio's wait would hold the runtime for the whole sample.
fn fio_beside(
    path: PathBuf,
    bytes: u64,
    write: bool,
    qd: usize,
    fdatasync: u32,
    dur: Duration,
) -> Result<Sample, String> {
    let (tx, inbox) = remote::<Result<Sample, String>>(1).map_err(|e| format!("remote: {e}"))?;
    let fio = std::thread::Builder::new()
        .name("tdrv-fio".into())
        .spawn(move || {
            let every = format!("--fdatasync={fdatasync}");
            let extra: &[&str] = if fdatasync > 0 {
                &[every.as_str()]
            } else {
                &[]
            };
            // The inbox waits for this one value: the send cannot find it full.
            let _ = tx.send(fio_sample(&path, bytes, write, qd, dur, extra));
        })
        .map_err(|e| format!("spawn the fio thread: {e}"))?;
    let sample = inbox.recv().map_err(|e| format!("fio inbox: {e}"))?;
    fio.join()
        .map_err(|_| "the fio thread panicked".to_string())?;
    sample.unwrap_or_else(|| Err("the fio thread ended without a sample".into()))
}

/// Opens `path` with O_DIRECT (buffered where the file system has none: says so),
/// formats it afresh and opens the vSSD. Returns it and whether I/O is direct.
pub(super) fn open_fresh(path: &Path, params: &FormatParams) -> Result<(Vssd, bool), String> {
    let (file, direct): (File, bool) = match OpenOptions::new().direct(true).open(path) {
        Ok(f) => (f, true),
        Err(IoError::DirectUnsupported { .. }) => {
            let f = OpenOptions::new()
                .open(path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            (f, false)
        }
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    format(&file, params).map_err(|e| format!("format {}: {e}", path.display()))?;
    let (vssd, recovered) = Vssd::open(file, Some(DEVICE_ID), Options::default())
        .map_err(|e| format!("open the vSSD on {}: {e}", path.display()))?;
    assert!(
        recovered.in_doubt.is_empty(),
        "a freshly formatted vSSD has no in-doubt trans"
    );
    Ok((vssd, direct))
}

/// Creates the vSSD's file if missing and grows a regular file to `bytes` (sparse:
/// format writes what it needs, the benches write the slots they read).
pub(super) fn prepare_vssd_file(path: &Path, bytes: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("prepare {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if meta.is_file() && meta.len() < bytes {
        f.set_len(bytes).map_err(err)?;
    }
    Ok(())
}

/// The peers' file: beside the vSSD's file (the same file system), named by its size;
/// under ./target/tdrv-bench when the vSSD is on a device rather than a file.
fn peer_path(vssd_path: &Path, bytes: u64) -> PathBuf {
    let name = format!("vssd-peer-{}m.dat", bytes >> 20);
    let beside_file = std::fs::metadata(vssd_path).map_or(true, |m| m.is_file());
    match vssd_path.parent() {
        Some(dir) if beside_file => dir.join(name),
        _ => PathBuf::from("target/tdrv-bench").join(name),
    }
}

/// Creates and fills the peers' file when missing or of another size (written
/// through, not sparse: reading holes would not reach the device).
fn prepare_peer_file(path: &Path, bytes: u64) -> Result<(), String> {
    let len = std::fs::metadata(path).map(|m| m.len()).ok();
    if len != Some(bytes) {
        fill_file(path, bytes)?;
    }
    Ok(())
}

/// Turns the measurements into figures, with the details and the reach for the table.
fn figures(plan: &Plan, runs: &[Run]) -> Vec<Figure> {
    let find = |name: &str| {
        runs.iter()
            .map(|r| &r.measured)
            .find(|m| m.name == name && m.ops() > 0.0)
    };
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    for r in runs {
        let m = &r.measured;
        let mut detail = String::new();
        if let (Some(p50), Some(p99)) = (m.median_of(|s| s.p50_us), m.median_of(|s| s.p99_us)) {
            let lat = if m.name.starts_with("peer_") {
                "clat"
            } else {
                "lat"
            };
            detail += &format!("{lat} p50 {p50:.1} us p99 {p99:.1} us");
        }
        if let Some(cpu) = m.median_of(|s| s.cpu_us_per_op) {
            detail += &format!(", cpu {cpu:.2} us/op");
        }
        let ratio = |to: &str| find(to).map(|p| m.ops() / p.ops());
        let mut target = None;
        match m.name {
            WRITE_QD1 => {
                if let Some(x) = ratio(PEER_SYNC_QD1) {
                    detail += &format!("; {x:.2}x {PEER_SYNC_QD1}");
                }
            }
            WRITE_QD32 => {
                target = Some(">=0.6x >4x");
                if let Some(x) = ratio(PEER_WRITE_QD32) {
                    detail += &format!(
                        "; {x:.2}x {PEER_WRITE_QD32} (reach >= {REACH_WRITE_PEER}x: {})",
                        met(x >= REACH_WRITE_PEER)
                    );
                }
                if let Some(x) = ratio(PEER_SYNC_QD1) {
                    detail += &format!(
                        "; {x:.2}x {PEER_SYNC_QD1} (reach > {REACH_WRITE_SYNC}x: {})",
                        met(x > REACH_WRITE_SYNC)
                    );
                }
                if let Some(x) = ratio(PEER_SYNC8_QD32) {
                    detail += &format!("; {x:.2}x {PEER_SYNC8_QD32}");
                }
            }
            READ_QD32 => {
                target = Some(">= 0.9x");
                if let Some(x) = ratio(PEER_READ_QD32) {
                    detail += &format!(
                        "; {x:.2}x {PEER_READ_QD32} (reach >= {REACH_READ_PEER}x: {})",
                        met(x >= REACH_READ_PEER)
                    );
                }
            }
            PEER_SYNC_QD1 => detail += "; fio --fdatasync=1 (clat without the fdatasync)",
            PEER_SYNC8_QD32 => {
                detail += "; fio --fdatasync=8: the device's own group commit, for reference"
            }
            _ => {}
        }
        if Figure::wanted(plan, m.name) {
            out.push(Figure {
                name: m.name,
                unit: "ops/s",
                samples: m.samples.iter().map(|s| s.ops_per_s).collect(),
                target,
                reference: Some(detail),
            });
        }
        if m.name == WRITE_QD32 && Figure::wanted(plan, PER_FLUSH) && !r.flush.is_empty() {
            let mut per_record: Vec<f64> = r.flush.iter().map(|f| f.records_per_write).collect();
            per_record.sort_by(f64::total_cmp);
            out.push(Figure {
                name: PER_FLUSH,
                unit: "writes/flush",
                samples: r.flush.iter().map(|f| f.writep1_per_write).collect(),
                target: None,
                reference: Some(format!(
                    "writep1 per log write (one write + one fdatasync) in {WRITE_QD32}'s \
                     samples; log records per log write {:.1} (median)",
                    per_record[per_record.len() / 2]
                )),
            });
        }
    }
    out
}
