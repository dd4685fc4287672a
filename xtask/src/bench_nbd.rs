//! `cargo xtask bench nbd`: the NBD export of the real cvad binary against the NBD
//! servers people already use, all driven by fio's nbd engine over loopback:
//! 4k randread and randwrite at iodepth 1 and 32, and 4 jobs of iodepth 8 (each
//! job its own connection: multi-conn), on a 64 MiB area written whole first (so
//! cvad's reads hit its cache), against
//! - cvad, write-back, 1 replica and 2 (the second on another cvad);
//! - `nbdkit file` on a file of the same file system (target/);
//! - `qemu-nbd --cache=none --aio=native -f raw` on that file.
//!
//! Every cvad write is durable (on the vSSD log of every replica) when acknowledged;
//! the peers' are not, so their write rows are given twice: as they come, and
//! durable (`_fua`). fio's nbd engine sends every write without flags (no FUA) and
//! maps only DDIR_SYNC to a command (NBD_CMD_FLUSH; `--fdatasync` becomes
//! DDIR_DATASYNC, which it refuses, and `--sync=1` only changes how files are
//! opened, which it does not): the durable rows use `--fsync=1`, a FLUSH after every
//! write, the client-side equivalent of FUA on each.
//!
//! Each figure is the median of [`SAMPLES`] fio runs of [`SAMPLE_SECONDS`] (the
//! rows interleaved, so a drift of the machine spreads over all). Prints a table,
//! one JSON line per figure (peers as `peer_<bench>_<server>`) and, per cvad row,
//! its ratio to the faster peer (the durable rows for writes), against the issue's
//! reach of 1.0.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::figures::{Figures, number, parse, side};
use crate::procs::{self, Bins, Cvad, WAIT_MAX};

/// Samples per figure and each sample's length (`--quick`: 1 of 1 s).
const SAMPLES: usize = 3;
const SAMPLE_SECONDS: u64 = 3;
/// The device (and the peers' file): its size, cvad's vSSD, and the area the I/O
/// falls in, written whole first.
const BACKING_BYTES: u64 = 1 << 30;
const VSSD_BYTES: u64 = 256 << 20;
const AREA: &str = "64m";
const AREA_BYTES: u64 = 64 << 20;
const _: () = assert!(AREA_BYTES < VSSD_BYTES && AREA_BYTES <= BACKING_BYTES);
/// The device's name (its NBD export).
const DEVICE: &str = "bench";
/// The multi-conn rows: jobs (connections) and each one's depth.
const JOBS: u32 = 4;
const JOB_DEPTH: u32 = 8;
/// The reach the issue sets: cvad / the faster peer, every row.
const REACH_MIN: f64 = 1.0;
/// How often a wait for a server's port looks again.
const POLL: Duration = Duration::from_millis(20);

/// One fio shape.
#[derive(Clone, Copy)]
struct Shape {
    rw: &'static str,
    jobs: u32,
    depth: u32,
}

impl Shape {
    /// `randread_4k_qd1`, `randwrite_4k_4j_qd8`.
    fn name(&self) -> String {
        if self.jobs == 1 {
            format!("{}_4k_qd{}", self.rw, self.depth)
        } else {
            format!("{}_4k_{}j_qd{}", self.rw, self.jobs, self.depth)
        }
    }
}

fn shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for rw in ["randread", "randwrite"] {
        for (jobs, depth) in [(1, 1), (1, 32), (JOBS, JOB_DEPTH)] {
            v.push(Shape { rw, jobs, depth });
        }
    }
    v
}

/// How long and how often each figure is sampled.
#[derive(Clone, Copy)]
struct Plan {
    samples: usize,
    seconds: u64,
}

/// The peers, by their suffix in the figures' names.
const PEERS: [&str; 2] = ["nbdkit", "qemunbd"];

pub fn bench_nbd(quick: bool) -> Result<(), String> {
    let plan = if quick {
        Plan {
            samples: 1,
            seconds: 1,
        }
    } else {
        Plan {
            samples: SAMPLES,
            seconds: SAMPLE_SECONDS,
        }
    };
    let bins = procs::build()?;
    // O_DIRECT for the vSSD and qemu-nbd --cache=none.
    let dir = procs::fresh_target_dir("xtask-bench-nbd")?;
    let mut figures = Figures::default();
    for replicas in [1, 2] {
        cvad_figures(
            &bins,
            &dir.join(format!("r{replicas}")),
            replicas,
            plan,
            &mut figures,
        )?;
    }
    let file = dir.join("peer.img");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(BACKING_BYTES))
        .map_err(|e| format!("create {}: {e}", file.display()))?;
    for peer in PEERS {
        let server = PeerServer::start(peer, &file, &dir)?;
        let uri = format!("nbd://{}/", server.addr);
        prewrite(&uri)?;
        for _ in 0..plan.samples {
            for shape in shapes() {
                let name = format!("peer_nbd_{}_{peer}", shape.name());
                figures.add(&name, "ops/s", fio(&uri, shape, plan, false)?);
                if shape.rw == "randwrite" {
                    let name = format!("peer_nbd_{}_fua_{peer}", shape.name());
                    figures.add(&name, "ops/s", fio(&uri, shape, plan, true)?);
                }
            }
        }
        server.stop()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    figures.print();
    reach(&figures)
}

/// The cvad figures with `replicas` members: the device on a cvad (its replica on
/// a second), its area written whole, then every shape sample by sample.
fn cvad_figures(
    bins: &Bins,
    dir: &Path,
    replicas: u32,
    plan: Plan,
    figures: &mut Figures,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let peer = if replicas == 2 {
        Some(Cvad::start(bins, &dir.join("b"), "127.0.0.1:0")?)
    } else {
        None
    };
    let data = dir.join("a");
    let cvad = Cvad::start(bins, &data, "127.0.0.1:0")?;
    let config = procs::device_file(
        dir,
        DEVICE,
        BACKING_BYTES,
        VSSD_BYTES,
        peer.as_ref().map(|p| p.addr),
    )?;
    cvad.ok(bins, &["device", "create", &config])?;
    let port_file = data.join("nbd.port");
    let port = std::fs::read_to_string(&port_file)
        .map_err(|e| format!("read {}: {e}", port_file.display()))?;
    let uri = format!("nbd://127.0.0.1:{}/{DEVICE}", port.trim());
    prewrite(&uri)?;
    for _ in 0..plan.samples {
        for shape in shapes() {
            let name = format!("nbd_{}_r{replicas}", shape.name());
            figures.add(&name, "ops/s", fio(&uri, shape, plan, false)?);
        }
    }
    cvad.stop()?;
    if let Some(p) = peer {
        p.stop()?;
    }
    Ok(())
}

/// The area written whole through the server, 1 MiB at a time.
fn prewrite(uri: &str) -> Result<(), String> {
    let out = Command::new("fio")
        .args(["--name=prewrite", "--ioengine=nbd", "--rw=write", "--bs=1m"])
        .args(["--iodepth=4", "--output-format=json"])
        .arg(format!("--uri={uri}"))
        .arg(format!("--size={AREA}"))
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("fio (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!("fio prewrite of {uri}: {}", out.status));
    }
    Ok(())
}

/// One fio run of `shape` on `uri` (with `--fsync=1` when `durable`): its IOPS
/// (the jobs' sum).
fn fio(uri: &str, shape: Shape, plan: Plan, durable: bool) -> Result<f64, String> {
    let what = format!("fio {} on {uri}", shape.name());
    let mut c = Command::new("fio");
    c.args(["--name=nbd", "--ioengine=nbd", "--bs=4k", "--time_based"])
        .args(["--group_reporting", "--output-format=json"])
        .arg(format!("--uri={uri}"))
        .arg(format!("--size={AREA}"))
        .arg(format!("--rw={}", shape.rw))
        .arg(format!("--iodepth={}", shape.depth))
        .arg(format!("--numjobs={}", shape.jobs))
        .arg(format!("--runtime={}", plan.seconds))
        .stderr(Stdio::null());
    if durable {
        c.arg("--fsync=1");
    }
    let o = c
        .output()
        .map_err(|e| format!("fio (is it installed?): {e}"))?;
    if !o.status.success() {
        return Err(format!("{what}: fio failed: {}", o.status));
    }
    // The engine logs "fio: connected to NBD server" lines before the JSON.
    let out = String::from_utf8_lossy(&o.stdout);
    let json = out.find("\n{").map_or(&out[..], |at| &out[at + 1..]);
    let j = parse(&what, json)?;
    let job = &j["jobs"][0];
    if job["error"].as_i64() != Some(0) {
        return Err(format!("{what}: fio error {}", job["error"]));
    }
    number(&what, &job[side(shape.rw)]["iops"])
}

/// A free port on 127.0.0.1 for a server that cannot be told port 0 (the kernel
/// gave it to us and took it back; nothing else here binds ports meanwhile).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// nbdkit or qemu-nbd serving a file, killed when dropped.
struct PeerServer {
    child: Option<Child>,
    addr: SocketAddr,
    name: &'static str,
}

impl PeerServer {
    /// Starts `name` ("nbdkit" or "qemunbd") on `file`, listening on a free port of
    /// 127.0.0.1 (its log in `dir`), and waits (bounded) until it accepts.
    fn start(name: &'static str, file: &Path, dir: &Path) -> Result<PeerServer, String> {
        let port = free_port()?;
        let log_path: PathBuf = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("create {}: {e}", log_path.display()))?;
        let mut c = match name {
            "nbdkit" => {
                let mut c = Command::new("nbdkit");
                c.args(["--foreground", "--exit-with-parent", "-i", "127.0.0.1"])
                    .args(["-p", &port.to_string(), "file"])
                    .arg(file);
                c
            }
            "qemunbd" => {
                let mut c = Command::new("qemu-nbd");
                // Persistent, and as many clients at once as the multi-conn rows
                // open.
                c.args(["--cache=none", "--aio=native", "-f", "raw", "-t"])
                    .args(["-b", "127.0.0.1", "-p", &port.to_string()])
                    .arg(format!("--shared={}", JOBS + 1))
                    .arg(file);
                c
            }
            other => return Err(format!("no peer server {other}")),
        };
        let child = c
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {name} (is it installed?): {e}"))?;
        let mut server = PeerServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            name,
        };
        let deadline = Instant::now() + WAIT_MAX;
        // Bounded by the deadline.
        while TcpStream::connect(server.addr).is_err() {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "{name} exited before it listened ({status}); see {}",
                    log_path.display()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not listen on {} in {WAIT_MAX:?}",
                    server.addr
                ));
            }
            std::thread::sleep(POLL);
        }
        Ok(server)
    }

    /// Kills it and waits (bounded) for it to exit.
    fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child
            .kill()
            .map_err(|e| format!("kill {}: {e}", self.name))?;
        procs::wait(&mut child, self.name, WAIT_MAX).map(|_| ())
    }
}

impl Drop for PeerServer {
    /// A server left running by an error path is killed (it is ours).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The faster peer of shape `name` (`suffix` "_fua": its durable rows): its name
/// and median.
fn faster_peer(f: &Figures, name: &str, suffix: &str) -> Result<(&'static str, f64), String> {
    let mut best = ("", 0.0);
    for peer in PEERS {
        let v = f.median(&format!("peer_nbd_{name}{suffix}_{peer}"))?;
        if v > best.1 {
            best = (peer, v);
        }
    }
    Ok(best)
}

/// Per cvad row, its ratio to the faster peer (durable rows for writes).
fn reach(f: &Figures) -> Result<(), String> {
    let (mut met, mut rows) = (0, 0);
    for replicas in [1, 2] {
        for shape in shapes() {
            let row = format!("nbd_{}_r{replicas}", shape.name());
            let write = shape.rw == "randwrite";
            let fua = if write { "_fua" } else { "" };
            let (peer, v) = faster_peer(f, &shape.name(), fua)?;
            let ratio = f.median(&row)? / v;
            let ok = ratio >= REACH_MIN;
            rows += 1;
            met += usize::from(ok);
            println!(
                "reach: {row} = {ratio:.2} x {peer}{fua} (>= {REACH_MIN}): {}",
                if ok { "MET" } else { "MISSED" }
            );
            if write {
                // For information: the peers' writes as they come (not durable).
                let (peer, v) = faster_peer(f, &shape.name(), "")?;
                println!(
                    "       {row} = {:.2} x {peer} as it comes (not durable)",
                    f.median(&row)? / v
                );
            }
        }
    }
    println!("reach: {met} of {rows} rows met");
    Ok(())
}
