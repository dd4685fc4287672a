//! `bench` and `verify`: `iodepth` tasks calling one pipelined connection, a
//! progress task beside them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rpc::{Client, Request, Response};

use crate::block::{self, Rng, SECTOR};
use crate::conn::{self, CliError, Conn, Op, Open};
use crate::journal::{self, Journal, Report, Run};
use crate::progress::{Goal, Progress};
use crate::units::{parse_bytes, parse_duration};

/// Tasks calling at once, at most (the server bounds what it takes in flight too).
const IODEPTH_MAX: usize = 1024;
/// How often the progress task redraws.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Latencies recorded up to this (ns); longer ones count as it.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Percentiles reported (fio's keys).
const PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[clap(rename_all = "lower")]
pub enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
    Randrw,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    pub dev: String,
    #[arg(long, value_enum, default_value = "randread")]
    pub rw: Rw,
    /// Percentage of reads in randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    #[arg(long, default_value = "4k", value_parser = parse_bytes)]
    pub bs: u64,
    #[arg(long, default_value_t = 1)]
    pub iodepth: usize,
    /// How long to run (default: one pass over --size, as fio).
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    pub runtime: Option<Duration>,
    /// How many I/Os to make.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Bytes of the device the I/O falls in (default: from --offset to the end).
    #[arg(long, value_parser = parse_bytes)]
    pub size: Option<u64>,
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub offset: u64,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    pub dev: String,
    #[arg(long)]
    pub journal: PathBuf,
    /// Read back every acknowledged write of the journal instead of writing.
    #[arg(long)]
    pub check: bool,
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    pub runtime: Option<Duration>,
    #[arg(long)]
    pub ops: Option<u64>,
    #[arg(long, default_value_t = 8)]
    pub iodepth: usize,
    #[arg(long, default_value = "4k", value_parser = parse_bytes)]
    pub bs: u64,
    #[arg(long, value_parser = parse_bytes)]
    pub size: Option<u64>,
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub offset: u64,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Rw {
    /// fio's word for it.
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// The area a run's I/O falls in, checked against the device.
struct Area {
    offset: u64,
    bs: u64,
    blocks: u64,
}

fn area(
    dev: &str,
    open: &Open,
    data_len_max: u32,
    bs: u64,
    offset: u64,
    size: Option<u64>,
    iodepth: usize,
) -> Result<Area, CliError> {
    let info = open.info;
    let bad = |why: String| Err(CliError::Usage(format!("{dev}: {why}")));
    let block = u64::from(info.block_size);
    let io_max = u64::from(info.io_len_max.min(data_len_max));
    if bs == 0 || !bs.is_multiple_of(block) || !bs.is_multiple_of(SECTOR as u64) || bs > io_max {
        return bad(format!(
            "bs {bs}: not a multiple of the block size {block} (and 512) up to {io_max}"
        ));
    }
    if !offset.is_multiple_of(bs) || offset >= info.size_bytes {
        return bad(format!(
            "offset {offset}: not a multiple of bs {bs} inside the device's {} bytes",
            info.size_bytes
        ));
    }
    let size = size.unwrap_or(info.size_bytes - offset);
    if size < bs
        || offset
            .checked_add(size)
            .is_none_or(|end| end > info.size_bytes)
    {
        return bad(format!(
            "size {size} at offset {offset}: not a block of {bs} inside the device's {} bytes",
            info.size_bytes
        ));
    }
    if iodepth == 0 || iodepth > IODEPTH_MAX {
        return bad(format!("iodepth {iodepth}: not in 1..={IODEPTH_MAX}"));
    }
    Ok(Area {
        offset,
        bs,
        blocks: size / bs,
    })
}

fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// The state the tasks of one run share.
struct Shared {
    goal: Goal,
    start: Instant,
    issued: Cell<u64>,
    done_ops: Cell<u64>,
    done_bytes: Cell<u64>,
    running: Cell<usize>,
    error: RefCell<Option<CliError>>,
}

impl Shared {
    /// The next turn's number, or None when the run is over.
    fn turn(&self) -> Option<u64> {
        let n = self.issued.get();
        let over = self.error.borrow().is_some()
            || match self.goal {
                Goal::Ops(max) => n >= max,
                Goal::Time(d) => self.start.elapsed() >= d,
            };
        (!over).then(|| {
            self.issued.set(n + 1);
            n
        })
    }
}

/// One turn of a task: (task, turn, the task's rng) to the bytes it moved.
type Work = dyn Fn(usize, u64, &mut Rng) -> Result<u64, CliError>;

/// Runs `work(task, turn, rng)` (returning the bytes it moved) on `iodepth` tasks
/// until the goal; the first error stops every task and is returned.
fn drive(
    label: &'static str,
    goal: Goal,
    iodepth: usize,
    seed: u64,
    quiet: bool,
    work: Rc<Work>,
) -> Result<Duration, CliError> {
    let shared = Rc::new(Shared {
        goal,
        start: Instant::now(),
        issued: Cell::new(0),
        done_ops: Cell::new(0),
        done_bytes: Cell::new(0),
        running: Cell::new(iodepth),
        error: RefCell::new(None),
    });
    let spawn_err =
        |e: taskio::SpawnError| CliError::Runtime(format!("{label}: spawn a task: {e}"));
    let mut tasks = Vec::with_capacity(iodepth);
    for task in 0..iodepth {
        let (s, work) = (shared.clone(), work.clone());
        tasks.push(
            taskio::spawn(move || {
                let mut rng = Rng::new(seed ^ (task as u64).wrapping_mul(0x9E37_79B9));
                // Bounded by the goal: every turn counts towards it.
                while let Some(turn) = s.turn() {
                    match work(task, turn, &mut rng) {
                        Ok(bytes) => {
                            s.done_ops.set(s.done_ops.get() + 1);
                            s.done_bytes.set(s.done_bytes.get() + bytes);
                        }
                        Err(e) => {
                            s.error.borrow_mut().get_or_insert(e);
                        }
                    }
                }
                s.running.set(s.running.get() - 1);
            })
            .map_err(spawn_err)?,
        );
    }
    let s = shared.clone();
    let interactive = crate::cmd::interactive();
    let ticker = taskio::spawn(move || {
        let mut p = Progress::new(label, goal, interactive, quiet);
        // Ends when the last worker does.
        while s.running.get() > 0 {
            taskio::sleep(PROGRESS_EVERY);
            p.update(s.done_ops.get(), s.done_bytes.get());
        }
        p.finish(s.done_ops.get(), s.done_bytes.get());
    })
    .map_err(spawn_err)?;
    for t in tasks {
        t.join()
            .map_err(|e| CliError::Runtime(format!("{label}: a task failed: {e}")))?;
    }
    ticker
        .join()
        .map_err(|e| CliError::Runtime(format!("{label}: the progress task failed: {e}")))?;
    let elapsed = shared.start.elapsed();
    match shared.error.borrow_mut().take() {
        Some(e) => Err(e),
        None => Ok(elapsed),
    }
}

/// One direction's figures.
struct Dir {
    lat: Histogram<u64>,
    bytes: u64,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            // 3 significant digits from 1 ns to an hour: a fixed-size histogram.
            lat: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                .unwrap_or_else(|e| panic!("histogram bounds: {e}")),
            bytes: 0,
        }
    }

    fn record(&mut self, ns: u64, bytes: u64) {
        self.lat.saturating_record(ns.clamp(1, LATENCY_MAX_NS));
        self.bytes += bytes;
    }

    fn json(&self, secs: f64) -> serde_json::Value {
        let n = self.lat.len();
        let pct: serde_json::Map<String, serde_json::Value> = PERCENTILES
            .iter()
            .map(|&p| (format!("{p:.6}"), self.lat.value_at_percentile(p).into()))
            .collect();
        serde_json::json!({
            "io_bytes": self.bytes,
            "bw_bytes": (self.bytes as f64 / secs) as u64,
            "bw": (self.bytes as f64 / secs / 1024.0) as u64,
            "iops": n as f64 / secs,
            "runtime": (secs * 1000.0) as u64,
            "total_ios": n,
            "lat_ns": {
                "min": if n > 0 { self.lat.min() } else { 0 },
                "max": self.lat.max(),
                "mean": self.lat.mean(),
                "percentile": pct,
            },
        })
    }

    fn text(&self, name: &str, secs: f64) -> String {
        let n = self.lat.len();
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut s = format!(
            "{name}: IOPS={:.0}, BW={:.1}MB/s ({:.1}MiB/s), {n} ios, {} bytes in {secs:.2}s\n",
            n as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.bytes as f64 / secs / 1048576.0,
            self.bytes
        );
        s.push_str(&format!(
            "  lat (usec): min={:.1} p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} max={:.1} avg={:.1}\n",
            us(if n > 0 { self.lat.min() } else { 0 }),
            us(self.lat.value_at_percentile(50.0)),
            us(self.lat.value_at_percentile(90.0)),
            us(self.lat.value_at_percentile(99.0)),
            us(self.lat.value_at_percentile(99.9)),
            us(self.lat.max()),
            self.lat.mean() / 1000.0
        ));
        s
    }
}

fn out_err(source: std::io::Error) -> CliError {
    CliError::File {
        what: "write",
        path: "stdout".into(),
        source,
    }
}

pub fn bench(conn: &Conn, args: &BenchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dev: Rc<str> = args.dev.as_str().into();
    let open = conn.open(&dev)?;
    let a = area(
        &dev,
        &open,
        conn.client.data_len_max(),
        args.bs,
        args.offset,
        args.size,
        args.iodepth,
    )?;
    let goal = match (args.runtime, args.ops) {
        (Some(d), _) => Goal::Time(d),
        (None, Some(n)) => Goal::Ops(n),
        (None, None) => Goal::Ops(a.blocks),
    };
    let seed = seed_or_clock(args.seed);
    let dirs = Rc::new(RefCell::new([Dir::new(), Dir::new()]));
    let (client, rw, mix, handle) = (
        conn.client.clone(),
        args.rw,
        u64::from(args.rwmixread),
        open.handle,
    );
    let (d, dv) = (dirs.clone(), dev.clone());
    let buffers: Rc<RefCell<HashMap<usize, Vec<u8>>>> = Rc::default();
    let work = move |task: usize, turn: u64, rng: &mut Rng| -> Result<u64, CliError> {
        let read = match rw {
            Rw::Read | Rw::Randread => true,
            Rw::Write | Rw::Randwrite => false,
            Rw::Randrw => rng.below(100) < mix,
        };
        let blk = match rw {
            Rw::Read | Rw::Write => turn % a.blocks,
            _ => rng.below(a.blocks),
        };
        let offset = a.offset + blk * a.bs;
        let op = Op {
            op: if read { "read" } else { "write" },
            device: &dv,
            value: format!("offset {offset} length {}", a.bs),
        };
        let start = Instant::now();
        if read {
            call_read(&client, &op, handle, offset, a.bs as u32, |_| ())?;
        } else {
            let data = buffers.borrow_mut().remove(&task).unwrap_or_else(|| {
                let mut b = vec![0; a.bs as usize];
                block::fill(&mut b, offset, seed, turn);
                b
            });
            let r = conn::call(
                &client,
                &op,
                Request::Write {
                    handle,
                    offset,
                    data: &data,
                },
                |r| matches!(r, Response::Write).then_some(()),
            );
            buffers.borrow_mut().insert(task, data);
            r?;
        }
        let ns = start.elapsed().as_nanos() as u64;
        d.borrow_mut()[usize::from(!read)].record(ns, a.bs);
        Ok(a.bs)
    };
    let elapsed = drive("bench", goal, args.iodepth, seed, args.json, Rc::new(work))?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let dirs = dirs.borrow();
    if args.json {
        let v = serde_json::json!({
            "fio version": "cvacli",
            "jobs": [{
                "jobname": args.rw.name(),
                "job options": {
                    "rw": args.rw.name(),
                    "bs": args.bs.to_string(),
                    "iodepth": args.iodepth.to_string(),
                    "rwmixread": args.rwmixread.to_string(),
                    "filename": &*dev,
                },
                "elapsed": secs.round() as u64,
                "read": dirs[0].json(secs),
                "write": dirs[1].json(secs),
            }],
        });
        writeln!(out, "{v}").map_err(out_err)
    } else {
        writeln!(
            out,
            "bench {dev}: rw={} bs={} iodepth={} in {secs:.2}s",
            args.rw.name(),
            args.bs,
            args.iodepth
        )
        .map_err(out_err)?;
        for (name, dir) in ["read", "write"].iter().zip(dirs.iter()) {
            if !dir.lat.is_empty() {
                out.write_all(dir.text(name, secs).as_bytes())
                    .map_err(out_err)?;
            }
        }
        Ok(())
    }
}

fn call_read<T>(
    client: &Client,
    op: &Op<'_>,
    handle: u64,
    offset: u64,
    length: u32,
    take: impl FnOnce(&[u8]) -> T,
) -> Result<T, CliError> {
    conn::call(
        client,
        op,
        Request::Read {
            handle,
            offset,
            length,
        },
        |r| match r {
            Response::Read { data } => Some(take(data)),
            _ => None,
        },
    )
}

pub fn verify(conn: &Conn, args: &VerifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if args.check {
        return check(conn, args, out);
    }
    let dev: Rc<str> = args.dev.as_str().into();
    let open = conn.open(&dev)?;
    let a = area(
        &dev,
        &open,
        conn.client.data_len_max(),
        args.bs,
        args.offset,
        args.size,
        args.iodepth,
    )?;
    let run = Run {
        device: dev.to_string(),
        seed: seed_or_clock(args.seed),
        bs: a.bs,
        offset: a.offset,
        size: a.blocks * a.bs,
    };
    let (journal, acked) = Journal::create_or_resume(&args.journal, &run)?;
    // A resumed run goes on with the journal's own run: its seed and area.
    let run = acked.run.clone();
    let regions = run.size / run.bs;
    // One write per region at a time: task t owns the regions r with r % tasks == t.
    let tasks = args
        .iodepth
        .min(usize::try_from(regions).unwrap_or(usize::MAX));
    let goal = match (args.runtime, args.ops) {
        (Some(d), _) => Goal::Time(d),
        (None, Some(n)) => Goal::Ops(n),
        (None, None) => Goal::Ops(regions),
    };
    let generations = Rc::new(RefCell::new(acked.newest));
    let journal = Rc::new(journal);
    let (client, handle, r) = (conn.client.clone(), open.handle, run.clone());
    let (gens, j, dv) = (generations.clone(), journal.clone(), dev.clone());
    let work = move |task: usize, _turn: u64, rng: &mut Rng| -> Result<u64, CliError> {
        let owned = (regions - task as u64).div_ceil(tasks as u64);
        let region = task as u64 + tasks as u64 * rng.below(owned);
        let offset = r.offset + region * r.bs;
        let generation = gens.borrow().get(&offset).copied().unwrap_or(0) + 1;
        let mut data = vec![0; r.bs as usize];
        block::fill(&mut data, offset, r.seed, generation);
        let op = Op {
            op: "verify write",
            device: &dv,
            value: format!("offset {offset} generation {generation}"),
        };
        conn::call(
            &client,
            &op,
            Request::Write {
                handle,
                offset,
                data: &data,
            },
            |r| matches!(r, Response::Write).then_some(()),
        )?;
        // Counts only once the journal holds it durably.
        j.append(offset, generation)?;
        gens.borrow_mut().insert(offset, generation);
        Ok(r.bs)
    };
    let elapsed = drive("verify", goal, tasks, run.seed, false, Rc::new(work))?;
    let written: u64 = generations.borrow().len() as u64;
    writeln!(
        out,
        "verify {dev}: {} acknowledged writes in the journal ({} journal syncs in this run's {:.2}s), {written} regions of {} bytes written at least once (seed {}); check with: verify {dev} --check --journal {}",
        generations.borrow().values().sum::<u64>(),
        journal.groups(),
        elapsed.as_secs_f64(),
        run.bs,
        run.seed,
        args.journal.display()
    )
    .map_err(out_err)
}

fn check(conn: &Conn, args: &VerifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let acked = journal::read(&args.journal)?;
    let dev: Rc<str> = args.dev.as_str().into();
    let open = conn.open(&dev)?;
    let run = acked.run;
    area(
        &dev,
        &open,
        conn.client.data_len_max(),
        run.bs,
        run.offset,
        Some(run.size),
        args.iodepth,
    )?;
    let regions: Rc<Vec<(u64, u64)>> = Rc::new(acked.newest.into_iter().collect());
    let report = Rc::new(RefCell::new(Report::default()));
    let (client, handle, rep, rs, dv) = (
        conn.client.clone(),
        open.handle,
        report.clone(),
        regions.clone(),
        dev.clone(),
    );
    let work = move |_task: usize, turn: u64, _rng: &mut Rng| -> Result<u64, CliError> {
        let (offset, generation) = rs[turn as usize];
        let op = Op {
            op: "verify check read",
            device: &dv,
            value: format!("offset {offset} length {}", run.bs),
        };
        call_read(&client, &op, handle, offset, run.bs as u32, |data| {
            rep.borrow_mut().judge(run.seed, offset, generation, data)
        })?;
        Ok(run.bs)
    };
    drive(
        "check",
        Goal::Ops(regions.len() as u64),
        args.iodepth,
        0,
        false,
        Rc::new(work),
    )?;
    let r = report.borrow();
    for p in &r.problems {
        writeln!(out, "  {p}").map_err(out_err)?;
    }
    let summary = format!(
        "verify check {dev}: {} regions, {} sectors ok, {} lost, {} stale, {} foreign",
        r.regions, r.sectors_ok, r.lost, r.stale, r.foreign
    );
    writeln!(out, "{summary}").map_err(out_err)?;
    if r.failed() {
        return Err(CliError::Failed(summary));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc::DeviceInfo;

    fn open(size_bytes: u64) -> Open {
        Open {
            handle: 1,
            info: DeviceInfo {
                size_bytes,
                block_size: 512,
                io_len_max: 1 << 20,
                read_only: false,
            },
        }
    }

    #[test]
    fn the_area_is_checked_against_the_device() {
        let o = open(1 << 20);
        let a = area("d", &o, 1 << 20, 4096, 8192, None, 4).unwrap();
        assert_eq!((a.offset, a.bs, a.blocks), (8192, 4096, 254));
        let refused = |bs, offset, size, depth, what: &str| {
            let e = area("d", &o, 1 << 20, bs, offset, size, depth)
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"))
                .to_string();
            assert!(e.contains(what), "{e}");
        };
        refused(1000, 0, None, 1, "bs 1000");
        refused(2 << 20, 0, None, 1, "bs 2097152");
        refused(4096, 100, None, 1, "offset 100");
        refused(4096, 1 << 20, None, 1, "offset 1048576");
        refused(4096, 0, Some(2 << 20), 1, "size 2097152");
        refused(4096, 0, Some(100), 1, "size 100");
        refused(4096, 0, None, 0, "iodepth 0");
        refused(4096, 0, None, IODEPTH_MAX + 1, "iodepth 1025");
        // The server's data_len_max bounds bs too.
        assert!(area("d", &o, 4096, 8192, 0, None, 1).is_err());
    }
}
