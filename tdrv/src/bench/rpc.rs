//! `tdrv bench rpc`: the rpc crate's session server and pipelined client over
//! loopback, beside `bench io`'s floors (`peer_tcp_floor_64b` and
//! `peer_tcp_floor_64b_xthread`, the same code) measured sample by sample in the
//! same run (interleaved, so that drift of the machine hits both alike). The
//! cross-thread floor is the one the reach is measured against: client and server
//! run on different runtimes (threads), as every real client does.
//!
//! - `rpc_ping_1conn`: one caller task, PING with 8 bytes of data: a 64-byte frame
//!   each way, the floor's message size;
//! - `rpc_ping_pipelined`: 64 caller tasks on the same connection;
//! - `rpc_write_4k` (and `rpc_write_4k_mbps`, the same samples in MB/s of data):
//!   WRITE requests of 4 KiB, 32 callers.
//!
//! - `rpc_session_burst_200`: how long a new session waits for the answers to its
//!   HELLO and a PING while 200 other connections open at once (each sending its
//!   HELLO, none waiting), on a server of 201 session threads of its own, started
//!   afresh for each sample.
//!
//! The server runs in this process (`Server::start` on 127.0.0.1:0: its acceptor and
//! session threads, the service answering PING with its data and WRITE with success,
//! dropping the data); the client in a taskio runtime on the bench thread, over one
//! connection for the whole run. The floor's samples run on a thread of their own
//! while the runtime waits for them, parked. Each sample runs for a fixed time; the figures are
//! calls per second, with latency percentiles, CPU time per call (the whole process:
//! client and server) and the ratios of the reach in the table.

use rpc::echo::Echo;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rpc::{Client, ClientConfig, Header, Request, Response, Server, ServerConfig, Status};
use taskio::remote::remote;
use taskio::{Config, IoConfig, Runtime};

use super::io::{
    Measured, Sample, XTHREAD_FLOOR, floor_sample, floor_xthread_sample, met, tasks_sample,
};
use super::lat::Latencies;
use super::{Figure, Plan};

/// PING data: 8 bytes, so that header (56) + data is the floor's 64-byte message.
const PING_LEN: usize = 8;
/// WRITE data.
const WRITE_LEN: usize = 4096;
/// Callers of the pipelined PING figure.
const PIPELINED_CALLERS: usize = 64;
/// Callers of the WRITE figure.
const WRITE_CALLERS: usize = 32;
/// The server's queue depth: every pipelined caller can have its call in flight.
pub(super) const QUEUE_DEPTH: u32 = PIPELINED_CALLERS as u32;
/// The reach of the issue: one caller's calls per second at least this fraction of
/// the cross-thread floor's round trips per second...
const REACH_1CONN: f64 = 0.7;
/// ... at most this many times the floor's CPU time per round trip.
const REACH_1CONN_CPU: f64 = 2.0;
/// The reach of the issue: pipelined calls per second at least this many times one
/// caller's.
const REACH_PIPELINED: f64 = 8.0;

/// What one sample of one variant measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    /// `callers` tasks calling PING in a loop.
    Ping { callers: usize },
    /// `callers` tasks calling WRITE of 4 KiB in a loop.
    Write { callers: usize },
    /// `bench io`'s reactor-less non-blocking ping-pong in one thread.
    Floor,
    /// `bench io`'s cross-thread floor: two plain threads ping-ponging.
    FloorXThread,
}

struct Variant {
    name: &'static str,
    work: Work,
}

/// Every variant, measured interleaved, sample by sample.
const VARIANTS: [Variant; 5] = [
    Variant {
        name: "rpc_ping_1conn",
        work: Work::Ping { callers: 1 },
    },
    Variant {
        name: "rpc_ping_pipelined",
        work: Work::Ping {
            callers: PIPELINED_CALLERS,
        },
    },
    Variant {
        name: "rpc_write_4k",
        work: Work::Write {
            callers: WRITE_CALLERS,
        },
    },
    Variant {
        name: "peer_tcp_floor_64b",
        work: Work::Floor,
    },
    Variant {
        name: XTHREAD_FLOOR,
        work: Work::FloorXThread,
    },
];

/// The second figure of `rpc_write_4k`'s samples.
const WRITE_MBPS: &str = "rpc_write_4k_mbps";

pub fn run(plan: &Plan) -> Result<Vec<Figure>, String> {
    let mut figures = calls_figures(plan)?;
    if Figure::wanted(plan, BURST_FIGURE) {
        figures.push(burst_figure(plan)?);
    }
    Ok(figures)
}

/// The figures of calls on one connection and their floors, measured interleaved.
fn calls_figures(plan: &Plan) -> Result<Vec<Figure>, String> {
    let variants: Vec<&Variant> = VARIANTS
        .iter()
        .filter(|v| {
            Figure::wanted(plan, v.name)
                || (v.name == "rpc_write_4k" && Figure::wanted(plan, WRITE_MBPS))
        })
        .collect();
    if variants.is_empty() {
        return Ok(Vec::new());
    }
    let dur = if plan.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let samples = if plan.quick { 3 } else { 7 };
    let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
    eprintln!("tdrv bench rpc: {}", names.join(", "));

    let is_floor = |w: Work| matches!(w, Work::Floor | Work::FloorXThread);
    let server = if variants.iter().any(|v| !is_floor(v.work)) {
        let mut config = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.sessions_max = 1;
        config.queue_depth = QUEUE_DEPTH;
        config.server_name = "tdrv-bench".into();
        Some(Server::start(config, || Echo).map_err(|e| format!("rpc server: {e}"))?)
    } else {
        None
    };
    let addr = server.as_ref().map(Server::local_addr);
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default())
        .map_err(|e| format!("runtime: {e}"))?;
    let names_works: Vec<(&'static str, Work)> =
        variants.iter().map(|v| (v.name, v.work)).collect();
    let measured = rt
        .run(move || -> Result<Vec<Measured>, String> {
            let client = match addr {
                Some(addr) => {
                    let config = ClientConfig {
                        name: "tdrv-bench".into(),
                        ..ClientConfig::default()
                    };
                    let c = Client::connect(addr, &config).map_err(|e| format!("connect: {e}"))?;
                    if c.queue_depth() < PIPELINED_CALLERS {
                        return Err(format!(
                            "the server allows {} calls in flight, the bench wants {PIPELINED_CALLERS}",
                            c.queue_depth()
                        ));
                    }
                    Some(Rc::new(c))
                }
                None => None,
            };
            let one = |work: Work, dur: Duration| match (work, &client) {
                (Work::Floor, _) => floor_beside(dur, floor_sample),
                (Work::FloorXThread, _) => floor_beside(dur, floor_xthread_sample),
                (_, Some(c)) => calls(c, work, dur),
                (_, None) => unreachable!("a call variant without a server"),
            };
            // A short warm-up of each variant: stacks, buffers, the loopback path.
            for &(name, work) in &names_works {
                one(work, dur / 5).map_err(|e| format!("{name}: {e}"))?;
            }
            let mut ms: Vec<Measured> = names_works
                .iter()
                .map(|&(name, _)| Measured {
                    name,
                    samples: Vec::with_capacity(samples),
                })
                .collect();
            for _ in 0..samples {
                for (&(name, work), m) in names_works.iter().zip(&mut ms) {
                    m.samples
                        .push(one(work, dur).map_err(|e| format!("{name}: {e}"))?);
                }
            }
            Ok(ms)
        })
        .map_err(|e| e.to_string())??;
    if let Some(s) = server {
        s.stop();
    }
    println!(
        "rpc: server in-process (1 session thread, queue depth {QUEUE_DEPTH}), client on \
         this thread, one connection, {dur:?} per sample"
    );
    Ok(figures(plan, &measured))
}

/// A floor on a thread of its own while this runtime waits for its sample in an
/// inbox, parked in epoll: run in a task, the floor's spin (or its blocking calls)
/// would hold the runtime (and trip its stall detector) for the whole sample.
fn floor_beside(
    dur: Duration,
    floor: fn(Duration) -> Result<Sample, String>,
) -> Result<Sample, String> {
    let (tx, inbox) = remote::<Result<Sample, String>>(1).map_err(|e| format!("remote: {e}"))?;
    let floor = std::thread::Builder::new()
        .name("tdrv-floor".into())
        .spawn(move || {
            // The inbox waits for this one value: the send cannot find it full.
            let _ = tx.send(floor(dur));
        })
        .map_err(|e| format!("spawn the floor thread: {e}"))?;
    let sample = inbox.recv().map_err(|e| format!("floor inbox: {e}"))?;
    floor
        .join()
        .map_err(|_| "the floor thread panicked".to_string())?;
    sample.unwrap_or_else(|| Err("the floor thread ended without a sample".into()))
}

/// `callers` tasks calling in a loop on one connection until `dur` has passed; every
/// answer is checked.
pub(super) fn calls(client: &Rc<Client>, work: Work, dur: Duration) -> Result<Sample, String> {
    let (callers, write) = match work {
        Work::Ping { callers } => (callers, false),
        Work::Write { callers } => (callers, true),
        Work::Floor | Work::FloorXThread => unreachable!("a floor makes no calls"),
    };
    tasks_sample(callers, dur, |i, deadline| {
        let c = client.clone();
        move || -> Result<Latencies, String> {
            let ping: [u8; PING_LEN] = (i as u64).to_le_bytes();
            let block = vec![0x5a ^ i as u8; WRITE_LEN];
            let mut offset = i as u64 * WRITE_LEN as u64;
            let mut lat = Latencies::new();
            let mut start = Instant::now();
            while start < deadline {
                if write {
                    let r = c
                        .call(Request::Write {
                            handle: 1,
                            offset,
                            data: &block,
                        })
                        .map_err(|e| e.to_string())?;
                    match r.response() {
                        Ok(Response::Write) => {}
                        other => return Err(format!("WRITE answered {other:?}")),
                    }
                    offset += (callers * WRITE_LEN) as u64;
                } else {
                    let r = c
                        .call(Request::Ping { data: &ping })
                        .map_err(|e| e.to_string())?;
                    match r.response() {
                        Ok(Response::Ping { data }) if data == ping => {}
                        other => return Err(format!("PING {ping:?} answered {other:?}")),
                    }
                }
                let end = Instant::now();
                lat.record(end - start);
                start = end;
            }
            Ok(lat)
        }
    })
}

/// Turns the measurements into figures, with the details and the reach for the table.
fn figures(plan: &Plan, measured: &[Measured]) -> Vec<Figure> {
    let find = |name: &str| measured.iter().find(|m| m.name == name && m.ops() > 0.0);
    let floor = find(XTHREAD_FLOOR);
    let one = find("rpc_ping_1conn");
    let mut out = Vec::new();
    for m in measured {
        let mut detail = String::new();
        if let (Some(p50), Some(p99)) = (m.median_of(|s| s.p50_us), m.median_of(|s| s.p99_us)) {
            detail += &format!("lat p50 {p50:.1} us p99 {p99:.1} us");
        }
        if let Some(cpu) = m.median_of(|s| s.cpu_us_per_op) {
            detail += &format!(", cpu {cpu:.2} us/op");
        }
        let mut target = None;
        match m.name {
            "rpc_ping_1conn" => {
                target = Some(">= 0.7x");
                if let Some(f) = floor {
                    let r = m.ops() / f.ops();
                    let cpu = match (
                        m.median_of(|s| s.cpu_us_per_op),
                        f.median_of(|s| s.cpu_us_per_op),
                    ) {
                        (Some(c), Some(fc)) if fc > 0.0 => c / fc,
                        _ => f64::INFINITY,
                    };
                    detail += &format!(
                        "; {r:.2}x the cross-thread floor's rate (reach >= {REACH_1CONN}x: {}), \
                         cpu {cpu:.2}x its (reach <= {REACH_1CONN_CPU}x: {})",
                        met(r >= REACH_1CONN),
                        met(cpu <= REACH_1CONN_CPU)
                    );
                }
            }
            "rpc_ping_pipelined" => {
                target = Some(">= 8x");
                if let Some(o) = one {
                    let r = m.ops() / o.ops();
                    detail += &format!(
                        "; {r:.2}x rpc_ping_1conn's rate (reach >= {REACH_PIPELINED}x: {})",
                        met(r >= REACH_PIPELINED)
                    );
                }
                if let Some(f) = floor {
                    detail += &format!("; {:.2}x the cross-thread floor's rate", m.ops() / f.ops());
                }
            }
            "rpc_write_4k" => {
                if let Some(f) = floor {
                    detail += &format!("; {:.2}x the cross-thread floor's rate", m.ops() / f.ops());
                }
            }
            "peer_tcp_floor_64b" => {
                detail += "; one thread, non-blocking write/read spin, no reactor";
            }
            XTHREAD_FLOOR => {
                detail += "; two threads, plain libc read/write, best of blocking and epoll";
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
        if m.name == "rpc_write_4k" && Figure::wanted(plan, WRITE_MBPS) {
            out.push(Figure {
                name: WRITE_MBPS,
                unit: "MB/s",
                samples: m
                    .samples
                    .iter()
                    .map(|s| s.ops_per_s * WRITE_LEN as f64 / 1e6)
                    .collect(),
                target: None,
                reference: Some(format!(
                    "rpc_write_4k's samples: {WRITE_LEN} B of data per call, MB = 10^6 B"
                )),
            });
        }
    }
    out
}

/// The session burst's figure.
const BURST_FIGURE: &str = "rpc_session_burst_200";
/// Connections opened together in the burst.
const BURST: usize = 200;
/// The bound on the new session's wait, for the table.
const BURST_REACH_MS: f64 = 50.0;
/// How long the burst's reads may wait before the sample fails (the new session
/// never answered).
const BURST_IO_TIMEOUT: Duration = Duration::from_secs(20);

fn burst_figure(plan: &Plan) -> Result<Figure, String> {
    let samples = if plan.quick { 3 } else { 7 };
    eprintln!("tdrv bench rpc: {BURST_FIGURE}");
    let ms: Vec<f64> = (0..samples)
        .map(|_| burst_sample().map_err(|e| format!("{BURST_FIGURE}: {e}")))
        .collect::<Result<_, _>>()?;
    let f = Figure {
        name: BURST_FIGURE,
        unit: "ms",
        samples: ms,
        target: Some("<= 50"),
        reference: None,
    };
    let median = f.median();
    Ok(Figure {
        reference: Some(format!(
            "new session's HELLO + PING under {BURST} connections opening at once \
             (reach <= {BURST_REACH_MS} ms: {})",
            met(median <= BURST_REACH_MS)
        )),
        ..f
    })
}

/// One burst on a fresh server: the new session's wait in ms.
fn burst_sample() -> Result<f64, String> {
    use std::io::{Read, Write};
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let frame = |tag: u64, request: Request<'_>| -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        let m = rpc::Message {
            tag,
            body: rpc::Body::Request(request),
        };
        rpc::encode_frame(rpc::limits::VERSION_MIN, &m, &mut v).map_err(|e| e.to_string())?;
        Ok(v)
    };
    let hello = |name: &str| {
        frame(
            1,
            Request::Hello(rpc::Hello {
                version_min: rpc::limits::VERSION_MIN,
                version_max: rpc::limits::VERSION_MIN,
                client_nonce: [7; rpc::limits::NONCE_LEN],
                proof: None,
                client_name: name,
            }),
        )
    };
    // The answer's header, its payload read and dropped.
    let answer = |s: &mut std::net::TcpStream| -> Result<Header, String> {
        let mut head = [0u8; rpc::HEADER_LEN];
        s.read_exact(&mut head).map_err(io("read an answer"))?;
        let h = rpc::decode_header(&head).map_err(|e| e.to_string())?;
        let mut payload = vec![0; h.payload_len as usize];
        s.read_exact(&mut payload).map_err(io("read an answer"))?;
        Ok(h)
    };
    let mut config = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    config.sessions_max = BURST + 1;
    config.server_name = "tdrv-bench-burst".into();
    let server = Server::start(config, || Echo).map_err(|e| format!("server: {e}"))?;
    let addr = server.local_addr();
    let mut burst = Vec::with_capacity(BURST);
    for i in 0..BURST {
        let mut c = std::net::TcpStream::connect(addr).map_err(io("connect"))?;
        c.write_all(&hello(&format!("burst-{i}"))?)
            .map_err(io("write HELLO"))?;
        burst.push(c);
    }
    let start = Instant::now();
    let mut c = std::net::TcpStream::connect(addr).map_err(io("connect"))?;
    c.set_read_timeout(Some(BURST_IO_TIMEOUT))
        .map_err(io("read timeout"))?;
    let mut both = hello("new")?;
    both.extend(frame(2, Request::Ping { data: b"new" })?);
    c.write_all(&both).map_err(io("write HELLO + PING"))?;
    for tag in [1, 2] {
        let h = answer(&mut c)?;
        if (h.tag, h.status) != (tag, Status::Ok) {
            return Err(format!("the new session's request {tag} answered {h:?}"));
        }
    }
    let took = start.elapsed();
    for b in &mut burst {
        b.set_read_timeout(Some(BURST_IO_TIMEOUT))
            .map_err(io("read timeout"))?;
        let h = answer(b)?;
        if (h.tag, h.status) != (1, Status::Ok) {
            return Err(format!("a burst HELLO answered {h:?}"));
        }
    }
    drop(burst);
    drop(c);
    server.stop();
    Ok(took.as_secs_f64() * 1e3)
}
