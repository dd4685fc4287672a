//! `tdrv bench io`: taskio's file and socket I/O on one runtime thread, each beside a
//! peer measured in the same run, sample by sample (interleaved, so that drift of the
//! machine hits both alike):
//!
//! - kernel AIO, O_DIRECT 4 KiB random reads and writes at queue depth 1 and 32 (qd
//!   tasks each doing I/O in a loop), beside fio with libaio and the same parameters;
//! - TCP echo of 64-byte messages over loopback, client and server tasks on the same
//!   runtime, beside the floor of a reactor-less non-blocking ping-pong in one thread;
//! - TCP echo against an echo thread outside the runtime, beside the cross-thread
//!   floor (`peer_tcp_floor_64b_xthread`: two plain threads, best of blocking and
//!   epoll), the floor that matters to a real client, always in another thread;
//! - the parking choice: the qd1 AIO and 1-connection TCP figures again with
//!   `IoConfig::poll_before_park` and `poll_sockets_before_park` 50 us (poll before
//!   blocking while file I/O is in flight, or a task waits on a socket) instead of
//!   the default (zero: block in epoll at once).
//!
//! Each sample runs for a fixed time; figures are operations per second, with the
//! latency percentiles and the CPU time per operation in the table.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use taskio::file::OpenOptions;
use taskio::rand::Rng;
use taskio::{AlignedBuf, Config, IoConfig, IoError, Runtime, net, spawn};

use super::lat::Latencies;
use super::{Figure, Plan};

/// Block size of the file figures.
const BLOCK: u64 = 4096;
/// TCP message size.
const MSG: usize = 64;
/// The default file sizes: full and quick runs.
const FILE_FULL: u64 = 1 << 30;
const FILE_QUICK: u64 = 64 << 20;
/// `poll_before_park` and `poll_sockets_before_park` of the `_poll50us` variants: the
/// poll the default does without must show here that it would win.
const POLL_ALTERNATIVE: Duration = Duration::from_micros(50);
/// Seed of the offsets' generator (each task draws its own stream).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// What one sample of one variant measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// taskio AIO: O_DIRECT 4 KiB at random offsets, `qd` tasks.
    Aio { write: bool, qd: usize },
    /// fio, libaio, same parameters.
    Fio { write: bool, qd: usize },
    /// taskio TCP echo over `conns` loopback connections.
    Tcp { conns: usize },
    /// taskio TCP client, echoed by a blocking thread outside the runtime.
    TcpXThread,
    /// Reactor-less non-blocking ping-pong in one thread.
    Floor,
    /// Two plain threads ping-ponging over loopback (best of blocking and epoll).
    FloorXThread,
}

/// Which runtime a taskio variant runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parking {
    /// `IoConfig::default()` (no poll before park).
    Default,
    /// `poll_before_park: POLL_ALTERNATIVE`.
    Poll,
}

struct Variant {
    name: &'static str,
    work: Work,
    parking: Parking,
}

/// Variants measured interleaved, sample by sample.
struct Group {
    variants: Vec<Variant>,
}

fn groups() -> Vec<Group> {
    use Parking::{Default as Dflt, Poll};
    let v = |name, work, parking| Variant {
        name,
        work,
        parking,
    };
    vec![
        Group {
            variants: vec![
                v(
                    "aio_randread_4k_qd1",
                    Work::Aio {
                        write: false,
                        qd: 1,
                    },
                    Dflt,
                ),
                v(
                    "aio_randread_4k_qd1_poll50us",
                    Work::Aio {
                        write: false,
                        qd: 1,
                    },
                    Poll,
                ),
                v(
                    "peer_aio_randread_4k_qd1",
                    Work::Fio {
                        write: false,
                        qd: 1,
                    },
                    Dflt,
                ),
            ],
        },
        Group {
            variants: vec![
                v(
                    "aio_randread_4k_qd32",
                    Work::Aio {
                        write: false,
                        qd: 32,
                    },
                    Dflt,
                ),
                v(
                    "peer_aio_randread_4k_qd32",
                    Work::Fio {
                        write: false,
                        qd: 32,
                    },
                    Dflt,
                ),
            ],
        },
        Group {
            variants: vec![
                v(
                    "aio_randwrite_4k_qd32",
                    Work::Aio {
                        write: true,
                        qd: 32,
                    },
                    Dflt,
                ),
                v(
                    "peer_aio_randwrite_4k_qd32",
                    Work::Fio {
                        write: true,
                        qd: 32,
                    },
                    Dflt,
                ),
            ],
        },
        Group {
            variants: vec![
                v("tcp_echo_64b_1conn", Work::Tcp { conns: 1 }, Dflt),
                v("tcp_echo_64b_1conn_poll50us", Work::Tcp { conns: 1 }, Poll),
                v("peer_tcp_floor_64b", Work::Floor, Dflt),
            ],
        },
        Group {
            variants: vec![v("tcp_echo_64b_16conn", Work::Tcp { conns: 16 }, Dflt)],
        },
        Group {
            variants: vec![
                v("tcp_echo_64b_1conn_xthread", Work::TcpXThread, Dflt),
                v(
                    "tcp_echo_64b_1conn_xthread_poll50us",
                    Work::TcpXThread,
                    Poll,
                ),
                v("peer_tcp_floor_64b_xthread", Work::FloorXThread, Dflt),
            ],
        },
    ]
}

/// One sample: throughput, and what the table shows beside it (also `bench rpc`'s).
#[derive(Clone, Copy, Default)]
pub(super) struct Sample {
    pub(super) ops_per_s: f64,
    pub(super) p50_us: Option<f64>,
    pub(super) p99_us: Option<f64>,
    pub(super) cpu_us_per_op: Option<f64>,
}

/// The samples of one variant.
pub(super) struct Measured {
    pub(super) name: &'static str,
    pub(super) samples: Vec<Sample>,
}

impl Measured {
    pub(super) fn median_of(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let mut v: Vec<f64> = self.samples.iter().filter_map(f).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    pub(super) fn ops(&self) -> f64 {
        self.median_of(|s| Some(s.ops_per_s)).unwrap_or(0.0)
    }
}

/// What the run needs besides the plan.
struct Setup {
    /// Time per sample.
    dur: Duration,
    samples: usize,
    file: PathBuf,
    /// Usable size of the file, a multiple of BLOCK.
    file_bytes: u64,
    fio: bool,
    default_rt: Runtime,
    poll_rt: Runtime,
}

pub fn run(plan: &Plan) -> Result<Vec<Figure>, String> {
    let groups: Vec<Group> = groups()
        .into_iter()
        .map(|g| Group {
            variants: g
                .variants
                .into_iter()
                .filter(|v| Figure::wanted(plan, v.name))
                .collect(),
        })
        .filter(|g| !g.variants.is_empty())
        .collect();
    let all = || groups.iter().flat_map(|g| &g.variants);
    let wants_file = all().any(|v| matches!(v.work, Work::Aio { .. } | Work::Fio { .. }));
    let wants_fio = all().any(|v| matches!(v.work, Work::Fio { .. }));

    let (file, file_bytes) = if wants_file {
        prepare_file(plan)?
    } else {
        (PathBuf::new(), 0)
    };
    let fio = wants_fio && fio_available();
    let runtime = |poll_before_park: Option<Duration>| {
        let mut io = IoConfig::default();
        if let Some(p) = poll_before_park {
            io.poll_before_park = p;
            io.poll_sockets_before_park = p;
        }
        Runtime::with_io(Config::default(), io).map_err(|e| format!("runtime: {e}"))
    };
    let mut setup = Setup {
        dur: if plan.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        },
        samples: if plan.quick { 3 } else { 7 },
        file,
        file_bytes,
        fio,
        default_rt: runtime(None)?,
        poll_rt: runtime(Some(POLL_ALTERNATIVE))?,
    };

    let mut measured: Vec<Measured> = Vec::new();
    for g in &groups {
        let variants: Vec<&Variant> = g
            .variants
            .iter()
            .filter(|v| setup.fio || !matches!(v.work, Work::Fio { .. }))
            .collect();
        if variants.is_empty() {
            continue;
        }
        let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
        eprintln!("tdrv bench io: {}", names.join(", "));
        // A short warm-up of each taskio variant: the runtimes' stacks, the file's
        // metadata, the loopback path.
        let warm = setup.dur / 5;
        for v in &variants {
            if !matches!(v.work, Work::Fio { .. }) {
                sample(&mut setup, v, warm).map_err(|e| format!("{}: {e}", v.name))?;
            }
        }
        let mut ms: Vec<Measured> = variants
            .iter()
            .map(|v| Measured {
                name: v.name,
                samples: Vec::new(),
            })
            .collect();
        for _ in 0..setup.samples {
            for (v, m) in variants.iter().zip(&mut ms) {
                let dur = setup.dur;
                let s = sample(&mut setup, v, dur).map_err(|e| format!("{}: {e}", v.name))?;
                m.samples.push(s);
            }
        }
        measured.extend(ms);
    }
    if wants_fio && !setup.fio {
        println!(
            "fio not found: install it with apt-get install -y fio (peer_aio_* figures skipped)"
        );
    }
    if wants_file {
        println!(
            "file: {} ({} MiB), {:?} per sample",
            setup.file.display(),
            setup.file_bytes >> 20,
            setup.dur
        );
    }
    Ok(figures(&measured))
}

/// The cross-thread floor's name (both benches).
pub(super) const XTHREAD_FLOOR: &str = "peer_tcp_floor_64b_xthread";
/// The reach of the issue: one connection against an echo thread at least this
/// fraction of the cross-thread floor's rate.
const REACH_XTHREAD: f64 = 0.8;

pub(super) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// "; cpu N.NNx the floor's" of `m` over `floor`, when both have a CPU figure.
pub(super) fn cpu_ratio(m: &Measured, floor: &Measured) -> String {
    match (
        m.median_of(|s| s.cpu_us_per_op),
        floor.median_of(|s| s.cpu_us_per_op),
    ) {
        (Some(c), Some(f)) if f > 0.0 => format!("; cpu {:.2}x the floor's", c / f),
        _ => String::new(),
    }
}

/// Turns the measurements into figures, with the details and ratios for the table.
fn figures(measured: &[Measured]) -> Vec<Figure> {
    let find = |name: &str| measured.iter().find(|m| m.name == name);
    let ratio = |of: &Measured, to: &str, what: &str| {
        find(to)
            .filter(|t| t.ops() > 0.0)
            .map(|t| format!("; {:.2}x {what}", of.ops() / t.ops()))
            .unwrap_or_default()
    };
    measured
        .iter()
        .map(|m| {
            let mut detail = String::new();
            if let (Some(p50), Some(p99)) = (m.median_of(|s| s.p50_us), m.median_of(|s| s.p99_us)) {
                let lat = if m.name.starts_with("peer_aio") {
                    "clat"
                } else {
                    "lat"
                };
                detail += &format!("{lat} p50 {p50:.1} us p99 {p99:.1} us");
            }
            if let Some(cpu) = m.median_of(|s| s.cpu_us_per_op) {
                if !detail.is_empty() {
                    detail += ", ";
                }
                detail += &format!("cpu {cpu:.2} us/op");
            }
            match m.name {
                "aio_randread_4k_qd1" | "aio_randread_4k_qd32" | "aio_randwrite_4k_qd32" => {
                    detail += &ratio(m, &format!("peer_{}", m.name), "fio");
                }
                "aio_randread_4k_qd1_poll50us" => {
                    detail += &ratio(m, "aio_randread_4k_qd1", "no poll");
                    detail += &ratio(m, "peer_aio_randread_4k_qd1", "fio");
                }
                "tcp_echo_64b_1conn" | "tcp_echo_64b_16conn" => {
                    detail += &ratio(m, "peer_tcp_floor_64b", "floor");
                }
                "tcp_echo_64b_1conn_poll50us" => {
                    detail += &ratio(m, "tcp_echo_64b_1conn", "no poll");
                    detail += &ratio(m, "peer_tcp_floor_64b", "floor");
                }
                "tcp_echo_64b_1conn_xthread" => {
                    detail += "; echo by a blocking thread";
                    if let Some(f) = find(XTHREAD_FLOOR).filter(|f| f.ops() > 0.0) {
                        let r = m.ops() / f.ops();
                        detail += &format!(
                            "; {r:.2}x the cross-thread floor (reach >= {REACH_XTHREAD}x: {})",
                            met(r >= REACH_XTHREAD)
                        );
                        detail += &cpu_ratio(m, f);
                    }
                }
                "tcp_echo_64b_1conn_xthread_poll50us" => {
                    detail += &ratio(m, "tcp_echo_64b_1conn_xthread", "no poll");
                    detail += &ratio(m, XTHREAD_FLOOR, "the cross-thread floor");
                }
                XTHREAD_FLOOR => {
                    detail += "; two threads, plain libc read/write, best of blocking and epoll";
                }
                "peer_tcp_floor_64b" => {
                    detail += "; one thread, non-blocking write/read spin, no reactor";
                }
                _ => {}
            }
            Figure {
                name: m.name,
                unit: "ops/s",
                samples: m.samples.iter().map(|s| s.ops_per_s).collect(),
                target: None,
                reference: Some(detail),
            }
        })
        .collect()
}

/// Runs one sample of `v` for `dur`.
fn sample(setup: &mut Setup, v: &Variant, dur: Duration) -> Result<Sample, String> {
    let blocks = setup.file_bytes / BLOCK;
    let rt = match v.parking {
        Parking::Default => &mut setup.default_rt,
        Parking::Poll => &mut setup.poll_rt,
    };
    match v.work {
        Work::Aio { write, qd } => {
            let path = setup.file.clone();
            rt.run(move || aio_sample(&path, blocks, write, qd, dur))
                .map_err(|e| e.to_string())?
        }
        Work::Tcp { conns } => rt
            .run(move || tcp_sample(conns, dur))
            .map_err(|e| e.to_string())?,
        Work::TcpXThread => tcp_xthread_sample(rt, dur),
        Work::Fio { write, qd } => fio_sample(&setup.file, setup.file_bytes, write, qd, dur, &[]),
        Work::Floor => floor_sample(dur),
        Work::FloorXThread => floor_xthread_sample(dur),
    }
}

/// User plus system CPU time of the whole process (every thread) so far.
pub(super) fn cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// User plus system CPU time of the calling thread so far.
pub(super) fn thread_cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

/// User plus system CPU time of `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`) so far.
fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: all-zero is a valid rusage, and getrusage writes into the one passed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage; getrusage writes only into it.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0, "getrusage({who}) failed");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Builds a sample from what the tasks did.
pub(super) fn finish(ops: u64, elapsed: Duration, cpu: Duration, lat: &Latencies) -> Sample {
    Sample {
        ops_per_s: ops as f64 / elapsed.as_secs_f64(),
        p50_us: lat.quantile_us(0.50),
        p99_us: lat.quantile_us(0.99),
        cpu_us_per_op: (ops > 0).then(|| cpu.as_secs_f64() * 1e6 / ops as f64),
    }
}

/// Runs `count` tasks, `make(i, deadline)` each, which do ops until `deadline` (`dur`
/// from now) and return the latency of each (ns); the sample of them all: rate,
/// percentiles, CPU time per op.
pub(super) fn tasks_sample<F, E>(
    count: usize,
    dur: Duration,
    mut make: impl FnMut(usize, Instant) -> F,
) -> Result<Sample, String>
where
    F: FnOnce() -> Result<Latencies, E> + 'static,
    E: std::fmt::Display + 'static,
{
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        handles.push(spawn(make(i, deadline)).map_err(|e| e.to_string())?);
    }
    let mut lat = Latencies::new();
    for h in handles {
        lat.merge(
            &h.join()
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?,
        );
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    Ok(finish(lat.len(), elapsed, cpu, &lat))
}

/// Times back-to-back round trips of `one` for `dur`: the sample (rate, latency
/// percentiles, CPU per op).
pub(super) fn round_trips_sample<E>(
    dur: Duration,
    mut one: impl FnMut() -> Result<(), E>,
) -> Result<Sample, E> {
    let mut lat = Latencies::new();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let mut start = t0;
    while start < deadline {
        one()?;
        let end = Instant::now();
        lat.record(end - start);
        start = end;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    Ok(finish(lat.len(), elapsed, cpu, &lat))
}

/// `qd` tasks each reading (or writing) 4 KiB blocks at random offsets of the file
/// until `dur` has passed.
fn aio_sample(
    path: &Path,
    blocks: u64,
    write: bool,
    qd: usize,
    dur: Duration,
) -> Result<Sample, String> {
    let file = OpenOptions::new()
        .write(write)
        .direct(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let file = Rc::new(file);
    tasks_sample(qd, dur, |i, deadline| {
        let file = file.clone();
        move || -> Result<Latencies, IoError> {
            let mut buf = AlignedBuf::new(BLOCK as usize);
            if write {
                buf.fill(0x5a ^ i as u8);
            }
            let mut rng = Rng::stream(SEED, i as u64);
            let mut lat = Latencies::new();
            let mut start = Instant::now();
            while start < deadline {
                let offset = rng.below(blocks) * BLOCK;
                if write {
                    file.pwrite(&buf, offset)?;
                } else {
                    file.pread_exact(&mut buf, offset)?;
                }
                let end = Instant::now();
                lat.record(end - start);
                start = end;
            }
            Ok(lat)
        }
    })
}

/// `conns` client tasks each doing write_all + read_exact of 64 bytes in a loop
/// against echo tasks on the same runtime, until `dur` has passed.
fn tcp_sample(conns: usize, dur: Duration) -> Result<Sample, String> {
    let listener =
        net::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map_err(|e| e.to_string())?;
    let addr = listener.local_addr();
    let server = spawn(move || -> Result<(), String> {
        let mut echoes = Vec::with_capacity(conns);
        for _ in 0..conns {
            let (s, _) = listener.accept().map_err(|e| e.to_string())?;
            let h = spawn(move || -> Result<(), IoError> {
                let mut buf = [0u8; MSG];
                loop {
                    match s.read_exact(&mut buf) {
                        Ok(()) => s.write_all(&buf)?,
                        // The client is done.
                        Err(IoError::Eof { done: 0, .. }) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            })
            .map_err(|e| e.to_string())?;
            echoes.push(h);
        }
        for h in echoes {
            h.join()
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(net::connect(addr, Some(Duration::from_secs(5))).map_err(|e| e.to_string())?);
    }
    let mut streams = streams.into_iter();
    let sample = tasks_sample(conns, dur, |i, deadline| {
        let s = streams.next().expect("one stream per client");
        move || -> Result<Latencies, IoError> {
            let msg = [i as u8; MSG];
            let mut back = [0u8; MSG];
            let mut lat = Latencies::new();
            let mut start = Instant::now();
            while start < deadline {
                s.write_all(&msg)?;
                s.read_exact(&mut back)?;
                let end = Instant::now();
                lat.record(end - start);
                start = end;
            }
            assert_eq!(back[0], i as u8, "echo crossed connections");
            Ok(lat)
        }
    })?;
    server.join().map_err(|e| e.to_string())??;
    Ok(sample)
}

/// One client task doing write_all + read_exact of 64 bytes in a loop against an
/// echo thread outside the runtime (blocking std I/O), until `dur` has passed: here
/// the runtime really waits for its peer, so parking matters.
fn tcp_xthread_sample(rt: &mut Runtime, dur: Duration) -> Result<Sample, String> {
    let err = |what: &str, e: std::io::Error| format!("echo thread {what}: {e}");
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| err("bind", e))?;
    let addr = l.local_addr().map_err(|e| err("local_addr", e))?;
    let echo = std::thread::Builder::new()
        .name("tdrv-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (mut s, _) = l.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; MSG];
            loop {
                match s.read_exact(&mut buf) {
                    Ok(()) => s.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(|e| err("spawn", e))?;
    let sample = rt
        .run(move || -> Result<Sample, String> {
            let s = net::connect(addr, Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
            let msg = [3u8; MSG];
            let mut back = [0u8; MSG];
            round_trips_sample(dur, || {
                s.write_all(&msg).map_err(|e| e.to_string())?;
                s.read_exact(&mut back).map_err(|e| e.to_string())
            })
        })
        .map_err(|e| e.to_string());
    // The client's stream is closed when `run` returns: the echo thread sees EOF. If
    // the run failed before it connected, the thread still waits in accept: leave it.
    let sample = sample??;
    echo.join()
        .map_err(|_| "echo thread panicked".to_string())?
        .map_err(|e| err("echo", e))?;
    Ok(sample)
}

/// The floor under any reactor: one loopback connection, both ends non-blocking in
/// this thread; write 64 B on A, read them on B, write them back on B, read on A,
/// spinning on WouldBlock. Also `bench rpc`'s peer (it blocks the calling thread: run
/// it outside a runtime, or in a task while the runtime has nothing else to do).
pub(super) fn floor_sample(dur: Duration) -> Result<Sample, String> {
    let err = |what: &str, e: std::io::Error| format!("floor {what}: {e}");
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| err("bind", e))?;
    let addr = l.local_addr().map_err(|e| err("local_addr", e))?;
    let mut a = std::net::TcpStream::connect(addr).map_err(|e| err("connect", e))?;
    let (mut b, _) = l.accept().map_err(|e| err("accept", e))?;
    for s in [&a, &b] {
        s.set_nonblocking(true).map_err(|e| err("nonblocking", e))?;
        s.set_nodelay(true).map_err(|e| err("nodelay", e))?;
    }
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    round_trips_sample(dur, || {
        spin_write(&mut a, &msg).map_err(|e| err("write A", e))?;
        spin_read(&mut b, &mut buf).map_err(|e| err("read B", e))?;
        spin_write(&mut b, &buf).map_err(|e| err("write B", e))?;
        spin_read(&mut a, &mut buf).map_err(|e| err("read A", e))
    })
}

/// How the cross-thread floor's threads wait for their peer.
#[derive(Clone, Copy)]
enum FloorWait {
    /// Blocking sockets: read(2) sleeps in the kernel.
    Blocking,
    /// Non-blocking sockets, each thread sleeping in its own epoll_wait(2) on EAGAIN.
    Epoll,
}

/// The floor that matters to a real client, which is always in another thread or
/// process than its server: two plain threads (no runtime) ping-ponging 64 B over
/// one loopback connection with plain libc read/write, half the sample blocking,
/// half with epoll; the better half is the sample.
pub(super) fn floor_xthread_sample(dur: Duration) -> Result<Sample, String> {
    let blocking = floor_xthread_run(FloorWait::Blocking, dur / 2)?;
    let epoll = floor_xthread_run(FloorWait::Epoll, dur / 2)?;
    Ok(if blocking.ops_per_s >= epoll.ops_per_s {
        blocking
    } else {
        epoll
    })
}

fn floor_xthread_run(wait: FloorWait, dur: Duration) -> Result<Sample, String> {
    let err = |what: &str, e: std::io::Error| format!("cross-thread floor {what}: {e}");
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| err("bind", e))?;
    let addr = l.local_addr().map_err(|e| err("local_addr", e))?;
    let a = std::net::TcpStream::connect(addr).map_err(|e| err("connect", e))?;
    let (b, _) = l.accept().map_err(|e| err("accept", e))?;
    for s in [&a, &b] {
        s.set_nodelay(true).map_err(|e| err("nodelay", e))?;
    }
    let echo = std::thread::Builder::new()
        .name("tdrv-floor-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let end = PlainEnd::new(&b, wait)?;
            let mut buf = [0u8; MSG];
            while end.read_full(&mut buf)? {
                end.write_full(&buf)?;
            }
            Ok(())
        })
        .map_err(|e| err("spawn", e))?;
    let measured = (|| -> std::io::Result<Sample> {
        let end = PlainEnd::new(&a, wait)?;
        let msg = [9u8; MSG];
        let mut back = [0u8; MSG];
        round_trips_sample(dur, || {
            end.write_full(&msg)?;
            if !end.read_full(&mut back)? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(())
        })
    })();
    // The echo thread sees the end of stream and ends.
    let _ = a.shutdown(std::net::Shutdown::Both);
    let sample = measured.map_err(|e| err("client", e))?;
    echo.join()
        .map_err(|_| "cross-thread floor: echo thread panicked".to_string())?
        .map_err(|e| err("echo", e))?;
    Ok(sample)
}

/// One end of the cross-thread floor: a socket read and written with libc calls,
/// waiting for its peer as `FloorWait` says.
struct PlainEnd {
    fd: std::os::fd::RawFd,
    /// `FloorWait::Epoll`'s epoll instance (level-triggered, EPOLLIN).
    epoll: Option<std::os::fd::OwnedFd>,
}

impl PlainEnd {
    fn new(s: &std::net::TcpStream, wait: FloorWait) -> std::io::Result<PlainEnd> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let fd = s.as_raw_fd();
        let epoll = match wait {
            FloorWait::Blocking => None,
            FloorWait::Epoll => {
                s.set_nonblocking(true)?;
                // SAFETY: epoll_create1 has no memory preconditions; checked below.
                let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                if ep < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `ep` is a fresh fd that nothing else owns.
                let ep = unsafe { OwnedFd::from_raw_fd(ep) };
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: 0,
                };
                // SAFETY: both fds are open and `ev` is a valid epoll_event.
                let rc =
                    unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Some(ep)
            }
        };
        Ok(PlainEnd { fd, epoll })
    }

    /// Reads all of `buf`; false at the end of stream before its first byte.
    fn read_full(&self, buf: &mut [u8]) -> std::io::Result<bool> {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the tail of `buf` is valid for writes of its length.
            let n =
                unsafe { libc::read(self.fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
            match n {
                0 if done == 0 => return Ok(false),
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n if n > 0 => done += n as usize,
                _ => self.wait_after(std::io::Error::last_os_error(), true)?,
            }
        }
        Ok(true)
    }

    fn write_full(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the tail of `buf` is valid for reads of its length.
            let n = unsafe { libc::write(self.fd, buf[done..].as_ptr().cast(), buf.len() - done) };
            if n >= 0 {
                done += n as usize;
            } else {
                self.wait_after(std::io::Error::last_os_error(), false)?;
            }
        }
        Ok(())
    }

    /// After a failed call: EINTR retries, EAGAIN of a read sleeps in epoll, of a
    /// write yields the thread (64 B into an empty socket buffer, one message in
    /// flight, never finds it full: only a safety net), the rest fails.
    fn wait_after(&self, e: std::io::Error, reading: bool) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        match (e.kind(), &self.epoll) {
            (std::io::ErrorKind::Interrupted, _) => Ok(()),
            (std::io::ErrorKind::WouldBlock, Some(_)) if !reading => {
                std::thread::yield_now();
                Ok(())
            }
            (std::io::ErrorKind::WouldBlock, Some(ep)) => {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: `ev` has room for the one event asked for.
                let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut ev, 1, -1) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                Ok(())
            }
            _ => Err(e),
        }
    }
}

fn spin_write(s: &mut std::net::TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                std::hint::spin_loop()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn spin_read(s: &mut std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match s.read(&mut buf[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                std::hint::spin_loop()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One fio run with the parameters of the taskio figure, plus `extra` arguments
/// (`bench vssd`'s `--fdatasync=1`).
pub(super) fn fio_sample(
    path: &Path,
    bytes: u64,
    write: bool,
    qd: usize,
    dur: Duration,
    extra: &[&str],
) -> Result<Sample, String> {
    let rw = if write { "randwrite" } else { "randread" };
    let mut cmd = Command::new("fio");
    cmd.arg("--name=x")
        .arg(format!("--filename={}", path.display()))
        .args(["--ioengine=libaio", "--direct=1"])
        .arg(format!("--rw={rw}"))
        .arg("--bs=4k")
        .arg(format!("--iodepth={qd}"))
        .arg("--numjobs=1")
        .arg(format!("--runtime={}ms", dur.as_millis()))
        .arg("--time_based")
        .arg(format!("--size={bytes}"))
        .args(extra)
        .arg("--output-format=json");
    let out = cmd.output().map_err(|e| format!("run fio: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "fio failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // fio may print notes before its JSON.
    let json = stdout.find('{').map_or("", |i| &stdout[i..]);
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("fio output is not JSON ({e}): {stdout}"))?;
    let job = &v["jobs"][0];
    let dir = &job[if write { "write" } else { "read" }];
    let num = |x: &serde_json::Value, what: &str| {
        x.as_f64()
            .ok_or_else(|| format!("fio JSON: no {what} in {stdout}"))
    };
    let iops = num(&dir["iops"], "iops")?;
    let ios = num(&dir["total_ios"], "total_ios")?;
    let runtime_ms = num(&job["job_runtime"], "job_runtime")?;
    let cpu_pct = num(&job["usr_cpu"], "usr_cpu")? + num(&job["sys_cpu"], "sys_cpu")?;
    let pct = |p: &str| {
        dir["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1000.0)
    };
    Ok(Sample {
        ops_per_s: iops,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cpu_us_per_op: (ios > 0.0).then(|| cpu_pct / 100.0 * runtime_ms * 1000.0 / ios),
    })
}

/// The file of the AIO figures: `--file`, or ./target/tdrv-bench/io-<size>.dat.
/// A missing file is created and filled (written through, not sparse: reading holes
/// would not reach the device). Returns the path and its usable size.
fn prepare_file(plan: &Plan) -> Result<(PathBuf, u64), String> {
    let want = if plan.quick { FILE_QUICK } else { FILE_FULL };
    let path = match &plan.file {
        Some(p) => p.clone(),
        None => PathBuf::from("target/tdrv-bench").join(format!("io-{}m.dat", want >> 20)),
    };
    if !path.exists() {
        fill_file(&path, want)?;
    }
    // Seeking to the end measures block devices too.
    let len = fs::File::open(&path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| format!("size of {}: {e}", path.display()))?;
    let usable = len / BLOCK * BLOCK;
    if usable == 0 {
        return Err(format!(
            "{}: {len} bytes, the file figures need at least {BLOCK}",
            path.display()
        ));
    }
    Ok((path, usable))
}

/// Writes `bytes` of pseudo-random data to `path` (through a temporary name, so that
/// an interrupted fill leaves no short file behind).
pub(super) fn fill_file(path: &Path, bytes: u64) -> Result<(), String> {
    eprintln!(
        "tdrv bench: creating {} ({} MiB)",
        path.display(),
        bytes >> 20
    );
    let err = |e: std::io::Error| format!("create {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(err)?;
    let mut rng = Rng::new(SEED);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        rng.fill(&mut chunk);
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}
