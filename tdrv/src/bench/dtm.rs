//! `tdrv bench dtm`: replicated writes through the `dtm` crate's `Dtm` on real vSSD
//! files, the replicas other than the primary on peer threads over loopback rpc:
//!
//! - `dtm_write_4k_qd1_r1` / `_r2` / `_r3`: one op is `Dtm::write` of one 4 KiB line
//!   (writep1 on every replica at once, the primary's commit; the other replicas'
//!   COMMITs ride lazily) on a device of 1, 2 or 3 replicas, 1 task; the latency is
//!   that call, the rate counts the `Dtm::clean` after it too (an instant destage, as
//!   in `bench vssd`);
//! - `dtm_write_4k_qd32_r1` / `_r2` / `_r3`: the same, 32 tasks each on lines of its
//!   own (`line % 32 == task`);
//! - `vssd_write_4k_qd32`: `bench vssd`'s figure (its code), on a vSSD of its own
//!   beside the devices: what one vSSD does alone;
//! - `rpc_ping_1conn`: `bench rpc`'s figure (its code): one PING round trip over
//!   loopback to an rpc server thread, the round trip the qd 1 reach allows.
//!
//! Each device has its own vSSD files (formatted afresh each run under
//! ./target/tdrv-bench), its primary on this thread's runtime and each other replica
//! served by a peer: a thread of rpc's hosting layer (`Host`, one runtime) on
//! 127.0.0.1:0, serving its own vSSD with `dtm::ReplicaService`, reached through a
//! `RemoteReplica`. The figures of one queue depth are measured interleaved, sample
//! by sample, so that drift of the machine hits them alike; each sample runs for a
//! fixed time and ends with `Dtm::quiesce` (outside the time). The primary's runtime
//! and the peers' poll their sockets before sleeping as cvad's do
//! ([`rpc::BUSY_POLL_US_DEFAULT`]). The table shows
//! latency percentiles, CPU time per op (the whole process: peers included) and the
//! issue's reach.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::dtm::{
    Dtm, DtmConfig, LocalReplica, RemoteReplica, Replica, ReplicaError, ReplicaService, Vssds,
};
use ::vssd::Vssd;
use ::vssd::layout::{FormatParams, random_uuid};
use rpc::echo::Echo;
use rpc::{Client, ClientConfig, Host, Server, ServerConfig, serve_handoff};
use taskio::rand::Rng;
use taskio::{AlignedBuf, Channel, Config, IoConfig, Runtime, spawn};

use super::io::{Measured, Sample, met, tasks_sample, thread_cpu_time};
use super::lat::Latencies;
use super::rpc::{QUEUE_DEPTH as PING_QUEUE_DEPTH, Work as RpcWork, calls};
use super::vssd::{
    DEVICE_ID, LINE, LINES_FULL, LINES_QUICK, LOG_BYTES_FULL, LOG_BYTES_QUICK, QD, SEED,
    WRITE_QD32, open_fresh, prepare_vssd_file, write_sample,
};
use super::{Figure, Plan};

/// Replicas of the largest device: the primary and two peers.
const REPLICAS_MAX: usize = 3;
/// Requests a peer's session serves at once: a writep1 of each writer, a CLEAN of
/// each writer's cleaner, and the lazy COMMIT (and room to spare).
const PEER_QUEUE_DEPTH: u32 = 3 * QD as u32;
const _: () = assert!(PEER_QUEUE_DEPTH as usize > 2 * QD + 1);
const _: () = assert!(PEER_QUEUE_DEPTH <= rpc::limits::QUEUE_DEPTH_MAX);
/// Writes a writer may queue for its cleaner before it waits for it.
const CLEANS_QUEUED: usize = 4;
/// The name each peer serves its vSSD under.
const PEER_VSSD: &str = "bench";
/// The epoch the devices start at (their vSSDs are fresh: at 0).
const EPOCH: u64 = 1;
/// The reach: at qd 32, 2 replicas at least this fraction of 1 replica's
/// rate,
const REACH_QD32_RATE: f64 = 0.7;
/// with a p99 at most this many times its;
const REACH_QD32_P99: f64 = 2.0;
/// at qd 1, 2 replicas' p50 at most 1 replica's plus one rpc round trip, plus 20%.
const REACH_QD1_SLACK: f64 = 1.2;

const QD1_R: [&str; REPLICAS_MAX] = [
    "dtm_write_4k_qd1_r1",
    "dtm_write_4k_qd1_r2",
    "dtm_write_4k_qd1_r3",
];
const QD32_R: [&str; REPLICAS_MAX] = [
    "dtm_write_4k_qd32_r1",
    "dtm_write_4k_qd32_r2",
    "dtm_write_4k_qd32_r3",
];
const PING: &str = "rpc_ping_1conn";

/// What one sample of one variant measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `qd` tasks writing through the DTM of the device of `replicas` replicas.
    Dtm { qd: usize, replicas: usize },
    /// `bench vssd`'s qd 32 writes on the vSSD of its own.
    Alone,
    /// `bench rpc`'s one PING caller.
    Ping,
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    work: Work,
}

/// Variants measured interleaved, sample by sample.
fn groups() -> Vec<Vec<Variant>> {
    let dtm = |names: &'static [&'static str; REPLICAS_MAX], qd| {
        (0..REPLICAS_MAX).map(move |i| Variant {
            name: names[i],
            work: Work::Dtm {
                qd,
                replicas: i + 1,
            },
        })
    };
    vec![
        dtm(&QD1_R, 1)
            .chain([Variant {
                name: PING,
                work: Work::Ping,
            }])
            .collect(),
        dtm(&QD32_R, QD)
            .chain([Variant {
                name: WRITE_QD32,
                work: Work::Alone,
            }])
            .collect(),
    ]
}

/// The vSSD file of replica `i` (0: the primary) of the device of `replicas`.
fn replica_path(lines: u64, replicas: usize, i: usize) -> PathBuf {
    PathBuf::from("target/tdrv-bench").join(format!("dtm-{lines}-r{replicas}-{i}.dat"))
}

/// The format of every vSSD of the run (each its own uuid).
fn format_params(lines: u64, log_bytes: u64) -> Result<FormatParams, String> {
    Ok(FormatParams {
        line_size: LINE,
        lines,
        log_bytes,
        device_id: DEVICE_ID.to_string(),
        // Never the previous format's uuid: format refuses to reuse one.
        uuid: random_uuid().map_err(|e| format!("random uuid: {e}"))?,
        // The bench's own scratch files: whatever they hold is reformatted.
        force: true,
    })
}

/// How long the primary's runtime and the peers' poll their sockets before sleeping:
/// cvad's default.
fn busy_poll() -> Duration {
    Duration::from_micros(rpc::BUSY_POLL_US_DEFAULT)
}

/// A peer: a thread of rpc's hosting layer serving its own vSSD as a replica.
struct Peer {
    host: Host,
}

impl Peer {
    /// Starts the peer on 127.0.0.1:0; its runtime formats and opens the vSSD at
    /// `path` before it serves anything. Returns once the vSSD is open.
    fn start(path: PathBuf, params: FormatParams) -> Result<Peer, String> {
        let mut server = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        // One session: the primary's RemoteReplica.
        server.sessions_max = 1;
        server.queue_depth = PEER_QUEUE_DEPTH;
        server.server_name = "tdrv-bench-peer".into();
        server.io.poll_sockets_before_park = busy_poll();
        let session = server.session();
        let (opened, opened_rx) = mpsc::channel::<Result<(), String>>();
        let shown = path.display().to_string();
        // Built once, on the peer's runtime thread: the vSSD lives there.
        let host = Host::start(server.host(), move || {
            let vssds = match open_fresh(&path, &params) {
                Ok((vssd, _direct)) => {
                    let vssds = Vssds::new();
                    vssds.insert(PEER_VSSD, vssd);
                    let _ = opened.send(Ok(()));
                    Some(vssds)
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                    None
                }
            };
            let session = session.clone();
            move |handoff| {
                if let Some(vssds) = &vssds {
                    // A session that ends with an error ends the primary's replica:
                    // its next call fails, and the bench with it.
                    let _ = serve_handoff(handoff, &session, ReplicaService::new(vssds.clone()));
                }
            }
        })
        .map_err(|e| format!("peer of {shown}: {e}"))?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Peer { host }),
            Ok(Err(e)) => Err(format!("peer: {e}")),
            Err(_) => Err(format!("peer of {shown}: its runtime did not start")),
        }
    }
}

/// A member as the DTM sees it, with the latencies of its writep1 calls since the
/// last `take`: where a replicated write's time goes.
struct Timed {
    inner: Rc<dyn Replica>,
    writep1: RefCell<Latencies>,
}

impl Timed {
    /// The writep1 latencies recorded since the last call.
    fn take(&self) -> Latencies {
        self.writep1.replace(Latencies::new())
    }
}

impl ::dtm::Forward for Timed {
    fn inner(&self) -> &dyn Replica {
        &*self.inner
    }
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        let start = Instant::now();
        let r = self.inner.writep1(tran, line, data);
        self.writep1.borrow_mut().record(start.elapsed());
        r
    }
}

/// One device: its DTM over the primary vSSD and its peers' replicas.
struct Device {
    replicas: usize,
    dtm: Dtm,
    /// Its members, the primary first.
    members: Vec<Rc<Timed>>,
}

/// Opens the primary at `path` and the peers' replicas at `peers`, and starts the
/// DTM of the device at [`EPOCH`].
fn start_device(
    path: &std::path::Path,
    params: &FormatParams,
    peers: &[SocketAddr],
) -> Result<(Device, bool), String> {
    let (primary, direct) = open_fresh(path, params)?;
    let timed = |inner: Rc<dyn Replica>| {
        Rc::new(Timed {
            inner,
            writep1: RefCell::new(Latencies::new()),
        })
    };
    let mut members = vec![timed(Rc::new(LocalReplica::new(
        primary.clone(),
        1,
        path.display().to_string(),
        primary.epoch(),
    )))];
    let client = ClientConfig {
        name: "tdrv-bench-dtm".into(),
        ..ClientConfig::default()
    };
    for (i, addr) in peers.iter().enumerate() {
        let r = RemoteReplica::open(*addr, PEER_VSSD, 0, i as u64 + 2, &client)
            .map_err(|e| format!("replica {PEER_VSSD} at {addr}: {e}"))?;
        members.push(timed(Rc::new(r)));
    }
    let replicas = members.len();
    let replicas_of_dtm = members
        .iter()
        .map(|m| m.clone() as Rc<dyn Replica>)
        .collect();
    let dtm = Dtm::start(primary, replicas_of_dtm, EPOCH, DtmConfig::default())
        .map_err(|e| format!("start the DTM of {replicas} replicas: {e}"))?;
    Ok((
        Device {
            replicas,
            dtm,
            members,
        },
        direct,
    ))
}

/// Where one DTM sample's time went.
#[derive(Clone, Default)]
struct Spent {
    /// CPU time per write of this thread alone (the primary's side: its vSSD, the
    /// DTM, the rpc clients), us.
    thread_cpu_us: f64,
    /// p50 of each member's writep1, the primary first, us.
    writep1_p50_us: Vec<f64>,
}

/// A variant's samples and, for a DTM variant, where each one's time went.
struct Run {
    measured: Measured,
    spent: Vec<Spent>,
}

/// What the samples need, inside the runtime.
struct Bench {
    devices: Vec<Device>,
    alone: Option<(Vssd, Rc<Cell<u64>>)>,
    ping: Option<Rc<Client>>,
}

pub fn run(plan: &Plan) -> Result<Vec<Figure>, String> {
    let groups: Vec<Vec<Variant>> = groups()
        .into_iter()
        .map(|g| {
            g.into_iter()
                .filter(|v| Figure::wanted(plan, v.name))
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect();
    let mut device_sizes: Vec<usize> = groups
        .iter()
        .flatten()
        .filter_map(|v| match v.work {
            Work::Dtm { replicas, .. } => Some(replicas),
            _ => None,
        })
        .collect();
    device_sizes.sort_unstable();
    device_sizes.dedup();
    let wants = |w: Work| groups.iter().flatten().any(|v| v.work == w);
    let (lines, log_bytes) = if plan.quick {
        (LINES_QUICK, LOG_BYTES_QUICK)
    } else {
        (LINES_FULL, LOG_BYTES_FULL)
    };
    let geometry = format_params(lines, log_bytes)?
        .geometry()
        .map_err(|e| format!("vSSD geometry: {e}"))?;
    let dur = if plan.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let samples = if plan.quick { 3 } else { 7 };

    // The peers, each device's in order, and the primaries' files.
    let mut peers: Vec<(usize, Peer)> = Vec::new();
    for &n in &device_sizes {
        for i in 0..n {
            let path = replica_path(lines, n, i);
            prepare_vssd_file(&path, geometry.total_bytes())?;
            if i > 0 {
                peers.push((n, Peer::start(path, format_params(lines, log_bytes)?)?));
            }
        }
    }
    let alone_path = PathBuf::from("target/tdrv-bench").join(format!("dtm-{lines}-alone.dat"));
    let alone = wants(Work::Alone);
    if alone {
        prepare_vssd_file(&alone_path, geometry.total_bytes())?;
    }
    let ping_server = if wants(Work::Ping) {
        let mut config = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.sessions_max = 1;
        config.queue_depth = PING_QUEUE_DEPTH;
        config.server_name = "tdrv-bench-ping".into();
        // Polling like the peers: the round trip the qd 1 reach allows is theirs.
        config.io.poll_sockets_before_park = busy_poll();
        Some(Server::start(config, || Echo).map_err(|e| format!("rpc server: {e}"))?)
    } else {
        None
    };
    let ping_addr = ping_server.as_ref().map(Server::local_addr);
    let device_peers: Vec<(usize, Vec<SocketAddr>)> = device_sizes
        .iter()
        .map(|&n| {
            let addrs = peers
                .iter()
                .filter(|(of, _)| *of == n)
                .map(|(_, p)| p.host.local_addr())
                .collect();
            (n, addrs)
        })
        .collect();

    let io = IoConfig {
        poll_sockets_before_park: busy_poll(),
        ..IoConfig::default()
    };
    let mut rt = Runtime::with_io(Config::default(), io).map_err(|e| format!("runtime: {e}"))?;
    let (runs, direct, dirty_left) = rt
        .run(move || -> Result<(Vec<Run>, bool, Vec<String>), String> {
            let mut direct = true;
            let mut devices = Vec::new();
            for (n, addrs) in &device_peers {
                let params = format_params(lines, log_bytes)?;
                let (d, d_direct) = start_device(&replica_path(lines, *n, 0), &params, addrs)?;
                direct &= d_direct;
                devices.push(d);
            }
            let alone = if alone {
                let (v, d) = open_fresh(&alone_path, &format_params(lines, log_bytes)?)?;
                direct &= d;
                Some((v, Rc::new(Cell::new(1))))
            } else {
                None
            };
            let ping = match ping_addr {
                Some(addr) => {
                    let config = ClientConfig {
                        name: "tdrv-bench-ping".into(),
                        ..ClientConfig::default()
                    };
                    Some(Rc::new(
                        Client::connect(addr, &config).map_err(|e| format!("connect: {e}"))?,
                    ))
                }
                None => None,
            };
            let bench = Bench {
                devices,
                alone,
                ping,
            };
            let mut measured = Vec::new();
            for g in &groups {
                measured.extend(measure_group(&bench, g, dur, samples)?);
            }
            let mut dirty_left = Vec::new();
            for d in &bench.devices {
                d.dtm
                    .flush()
                    .map_err(|e| format!("flush the DTM of {} replicas: {e}", d.replicas))?;
                dirty_left.push(dirty_lines(d, lines)?);
                d.dtm.close();
            }
            if let Some((v, _)) = &bench.alone {
                v.close();
            }
            Ok((measured, direct, dirty_left))
        })
        .map_err(|e| e.to_string())??;
    for (_, p) in peers {
        p.host.stop();
    }
    if let Some(s) = ping_server {
        s.stop();
    }
    if !device_sizes.is_empty() || alone {
        println!(
            "dtm: vSSDs of {} lines of {LINE} B (log {} MiB{}) under target/tdrv-bench, \
             peers on threads of their own over loopback rpc (queue depth \
             {PEER_QUEUE_DEPTH}), {dur:?} per sample",
            geometry.lines(),
            geometry.log_bytes() >> 20,
            if direct {
                ", O_DIRECT"
            } else {
                ", buffered: no O_DIRECT on this file system"
            }
        );
    }
    if !dirty_left.is_empty() {
        // Every write was cleaned at its version: a dirty line left on a replica is
        // one the DTM's clean missed there.
        println!(
            "dtm: dirty lines left on each member after the run: {}",
            dirty_left.join("; ")
        );
    }
    let (figures, reach) = figures(&runs);
    for line in reach {
        println!("reach: {line}");
    }
    Ok(figures)
}

/// The dirty lines each member of `d` holds, as "r2: 0 0".
fn dirty_lines(d: &Device, lines: u64) -> Result<String, String> {
    let mut counts = Vec::with_capacity(d.members.len());
    for r in &d.members {
        let dirty = r
            .dirty(0, lines as usize)
            .map_err(|e| format!("dirty lines of {}: {e}", r.name()))?;
        counts.push(dirty.len().to_string());
    }
    Ok(format!("r{}: {}", d.replicas, counts.join(" ")))
}

/// Measures one group: a short warm-up of each variant, then its samples,
/// interleaved.
fn measure_group(
    bench: &Bench,
    group: &[Variant],
    dur: Duration,
    samples: usize,
) -> Result<Vec<Run>, String> {
    let names: Vec<&str> = group.iter().map(|v| v.name).collect();
    eprintln!("tdrv bench dtm: {}", names.join(", "));
    for v in group {
        sample(bench, v, dur / 5).map_err(|e| format!("{}: {e}", v.name))?;
    }
    let mut runs: Vec<Run> = group
        .iter()
        .map(|v| Run {
            measured: Measured {
                name: v.name,
                samples: Vec::with_capacity(samples),
            },
            spent: Vec::with_capacity(samples),
        })
        .collect();
    for _ in 0..samples {
        for (v, r) in group.iter().zip(&mut runs) {
            let (s, spent) = sample(bench, v, dur).map_err(|e| format!("{}: {e}", v.name))?;
            r.measured.samples.push(s);
            r.spent.extend(spent);
        }
    }
    Ok(runs)
}

/// Runs one sample of `v` for `dur`.
fn sample(bench: &Bench, v: &Variant, dur: Duration) -> Result<(Sample, Option<Spent>), String> {
    match v.work {
        Work::Dtm { qd, replicas } => {
            let d = bench
                .devices
                .iter()
                .find(|d| d.replicas == replicas)
                .expect("a device for each DTM variant");
            let (s, spent) = dtm_sample(d, qd, dur)?;
            Ok((s, Some(spent)))
        }
        Work::Alone => {
            let (vssd, tran_next) = bench.alone.as_ref().expect("the vSSD alone");
            Ok((write_sample(vssd, tran_next, QD, dur)?.0, None))
        }
        Work::Ping => {
            let client = bench.ping.as_ref().expect("a client for PING");
            Ok((calls(client, RpcWork::Ping { callers: 1 }, dur)?, None))
        }
    }
}

/// `qd` tasks each writing random lines of its own (`line % qd == task`) through the
/// DTM until `dur` has passed, each beside a cleaner task that holds each line it
/// wrote (`Dtm::lock_lines`) and calls `Dtm::clean` of its version (an instant
/// destage, as the primary's destager would run beside the writes: with every line
/// dirty the vSSDs would run out of room; holding the line waits for the write's
/// lazy COMMITs, which the writer need not); then the
/// lazy COMMITs are waited for, outside the time. The latency is the write alone.
fn dtm_sample(device: &Device, qd: usize, dur: Duration) -> Result<(Sample, Spent), String> {
    let dtm = &device.dtm;
    for m in &device.members {
        m.take(); // the warm-up's, or the last sample's
    }
    let thread_cpu0 = thread_cpu_time();
    let lines_per_task = dtm.primary().geometry().lines() / qd as u64;
    assert!(lines_per_task > 0, "{qd} tasks for too few lines");
    let sample = tasks_sample(qd, dur, |task, deadline| {
        let dtm = dtm.clone();
        move || -> Result<Latencies, String> {
            let cleans: Rc<Channel<(u64, u64)>> = Rc::new(Channel::new(CLEANS_QUEUED));
            let cleaner = {
                let (dtm, cleans) = (dtm.clone(), cleans.clone());
                spawn(move || -> Result<(), String> {
                    let mut cleaned = Ok(());
                    while let Ok((line, tran)) = cleans.recv() {
                        // Held, as a destage holds it: that waits for the write's
                        // lazy COMMITs, so the clean reaches every member.
                        cleaned = dtm
                            .lock_lines(line, 1)
                            .and_then(|_held| dtm.clean(line, tran))
                            .map(drop)
                            .map_err(|e| format!("clean of line {line} at {tran}: {e}"));
                        if cleaned.is_err() {
                            break;
                        }
                    }
                    // A writer whose queue is full wakes and stops.
                    cleans.close();
                    cleaned
                })
                .map_err(|e| format!("spawn a cleaner: {e}"))?
            };
            let written = write_loop(&dtm, &cleans, task, qd, lines_per_task, deadline);
            cleans.close();
            let cleaned = cleaner.join().map_err(|e| e.to_string())?;
            // A cleaner's error first: the writer's is then "the cleaner stopped".
            cleaned?;
            written
        }
    })?;
    let thread_cpu = thread_cpu_time().saturating_sub(thread_cpu0);
    dtm.quiesce().map_err(|e| format!("quiesce: {e}"))?;
    let writes = device.members[0].writep1.borrow().len();
    let spent = Spent {
        thread_cpu_us: thread_cpu.as_secs_f64() * 1e6 / writes.max(1) as f64,
        writep1_p50_us: device
            .members
            .iter()
            .map(|m| m.take().quantile_us(0.50).unwrap_or(0.0))
            .collect(),
    };
    Ok((sample, spent))
}

/// "; this thread N us/op; writep1 p50 of each member A / B us" (the primary's
/// first) of a DTM figure's samples, as medians; nothing for another figure.
fn spent_detail(spent: &[Spent]) -> String {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let Some(first) = spent.first() else {
        return String::new();
    };
    let cpu = median(spent.iter().map(|s| s.thread_cpu_us).collect());
    let members: Vec<String> = (0..first.writep1_p50_us.len())
        .map(|i| {
            let p = median(spent.iter().map(|s| s.writep1_p50_us[i]).collect());
            format!("{p:.1}")
        })
        .collect();
    format!(
        "; this thread {cpu:.2} us/op; writep1 p50 of each member {} us",
        members.join(" / ")
    )
}

/// One writer's loop: until `deadline`, a random line of its own written through
/// `dtm`, its version queued for its cleaner. The latency of each write (ns).
fn write_loop(
    dtm: &Dtm,
    cleans: &Channel<(u64, u64)>,
    task: usize,
    qd: usize,
    lines_per_task: u64,
    deadline: Instant,
) -> Result<Latencies, String> {
    let mut buf = AlignedBuf::new(LINE as usize);
    buf.set_len(LINE as usize);
    buf.fill(0xa5 ^ task as u8);
    let mut rng = Rng::stream(SEED, 0x200 + task as u64);
    let mut lat = Latencies::new();
    let mut start = Instant::now();
    while start < deadline {
        let line = rng.below(lines_per_task) * qd as u64 + task as u64;
        let written = dtm
            .write(line, &buf)
            .map_err(|e| format!("write of line {line}: {e}"))?;
        lat.record(start.elapsed());
        let Some(tran) = written.tran() else {
            return Err(format!("write of line {line}: written through, not cached"));
        };
        if cleans.send((line, tran)).is_err() {
            return Err("the cleaner stopped".into());
        }
        start = Instant::now();
    }
    Ok(lat)
}

/// "per round: median N.NNx" of `ratio(k, sample k of m)` over the rounds of
/// interleaved samples (sample k of every figure of a group ran in round k, so a
/// round's ratio is less exposed to the machine's drift than the ratio of medians).
fn per_round(m: &Measured, ratio: impl Fn(usize, &Sample) -> Option<f64>) -> String {
    let mut v: Vec<f64> = m
        .samples
        .iter()
        .enumerate()
        .filter_map(|(k, s)| ratio(k, s))
        .collect();
    if v.is_empty() {
        return "per round: none".into();
    }
    v.sort_by(f64::total_cmp);
    format!("per round: median {:.2}x", v[v.len() / 2])
}

/// Turns the measurements into figures, with the details and the reach for the
/// table; and the reach lines.
fn figures(runs: &[Run]) -> (Vec<Figure>, Vec<String>) {
    let find = |name: &str| {
        runs.iter()
            .map(|r| &r.measured)
            .find(|m| m.name == name && m.ops() > 0.0)
    };
    let p50 = |m: &Measured| m.median_of(|s| s.p50_us);
    let p99 = |m: &Measured| m.median_of(|s| s.p99_us);
    let rtt = find(PING).and_then(p50);
    let mut reach = Vec::new();
    let mut out = Vec::new();
    for r in runs {
        let m = &r.measured;
        let mut detail = String::new();
        if let (Some(p50), Some(p99)) = (p50(m), p99(m)) {
            detail += &format!("lat p50 {p50:.1} us p99 {p99:.1} us");
        }
        if let Some(cpu) = m.median_of(|s| s.cpu_us_per_op) {
            detail += &format!(", cpu {cpu:.2} us/op");
        }
        detail += &spent_detail(&r.spent);
        let mut target = None;
        if let Some(i) = QD32_R.iter().position(|&n| n == m.name) {
            if i == 0 {
                if let Some(a) = find(WRITE_QD32) {
                    detail += &format!("; {:.2}x {WRITE_QD32}'s rate", m.ops() / a.ops());
                }
            } else if let Some(r1) = find(QD32_R[0]) {
                let rate = m.ops() / r1.ops();
                let tail = match (p99(m), p99(r1)) {
                    (Some(a), Some(b)) if b > 0.0 => a / b,
                    _ => f64::INFINITY,
                };
                if i == 1 {
                    target = Some(">=0.7x <=2x");
                    let rounds =
                        per_round(m, |k, s| Some(s.ops_per_s / r1.samples.get(k)?.ops_per_s));
                    let line = format!(
                        "{} {rate:.2}x {}'s rate (reach >= {REACH_QD32_RATE}x: {}; {rounds}), \
                         p99 {tail:.2}x its (reach <= {REACH_QD32_P99}x: {})",
                        m.name,
                        QD32_R[0],
                        met(rate >= REACH_QD32_RATE),
                        met(tail <= REACH_QD32_P99)
                    );
                    detail += &format!("; {}", &line[m.name.len() + 1..]);
                    reach.push(line);
                } else {
                    detail += &format!("; {rate:.2}x {}'s rate, p99 {tail:.2}x its", QD32_R[0]);
                }
            }
        }
        let qd1 = QD1_R.iter().position(|&n| n == m.name);
        if let Some(i) = qd1.filter(|&i| i > 0)
            && let (Some(r1), Some(rtt), Some(p)) = (find(QD1_R[0]).and_then(p50), rtt, p50(m))
        {
            let base = r1 + rtt;
            let x = p / base;
            let text = format!(
                "p50 {p:.1} us {x:.2}x ({}'s p50 {r1:.1} us + rpc round trip {rtt:.1} us \
                 = {base:.1} us)",
                QD1_R[0]
            );
            if i == 1 {
                target = Some("<=1.2x");
                let (r1s, pings) = (find(QD1_R[0]), find(PING));
                let rounds = per_round(m, |k, s| {
                    let base = r1s?.samples.get(k)?.p50_us? + pings?.samples.get(k)?.p50_us?;
                    Some(s.p50_us? / base)
                });
                let line = format!(
                    "{} {text} (reach <= {REACH_QD1_SLACK}x: {}; {rounds})",
                    m.name,
                    met(x <= REACH_QD1_SLACK)
                );
                detail += &format!("; {}", &line[m.name.len() + 1..]);
                reach.push(line);
            } else {
                detail += &format!("; {text}");
            }
        }
        match m.name {
            PING => detail += "; one PING round trip to a server thread (the qd 1 reach's)",
            WRITE_QD32 => detail += "; bench vssd's figure: one vSSD alone",
            _ => {}
        }
        out.push(Figure {
            name: m.name,
            unit: "ops/s",
            samples: m.samples.iter().map(|s| s.ops_per_s).collect(),
            target,
            reference: Some(detail),
        });
    }
    (out, reach)
}
