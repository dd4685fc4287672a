//! `tdrv sim dtm`: a replicated cache device under the simulator, its replicas on
//! separate nodes talking real rpc (dtm's `ReplicaService` and `RemoteReplica`).
//!
//! Each of the seed's 2 or 3 nodes formats a vSSD on its simulated disk at its first
//! boot and serves it with `ReplicaService` at every boot, so any node can be the
//! primary or a replica. The primary role runs on one node: its own vSSD as a
//! `LocalReplica` and the others over rpc, `recover()` (the takeover step: the
//! members fenced to a new epoch), `Dtm::start`, then writer tasks writing
//! self-describing lines (line, writer, sequence, CRC) over a small overlapping
//! range, a reader checking what it reads, and a resyncer bringing back every node
//! that is not a member. Each acknowledged write is recorded (per line the highest
//! tran acknowledged and the write's identity).
//!
//! For a second of virtual time the controller makes seeded trouble: a replica node
//! crashes and restarts; the primary node crashes and a member of the latest epoch
//! takes over (the controller, which knows the old primary is down, plays the
//! cluster manager); with 3 nodes, the primary is cut off from the others and a
//! member takes over while the old primary still runs (the fence must stop it);
//! partitions (resetting or silent) between two nodes; a disk error or corrupt read
//! on a node's vSSD, then that node restarts; a replica's service turns slow (some
//! calls beyond their timeout). Nodes cut off or restarted come back as stale
//! replicas and are resynced while the writers go on.
//!
//! Then the writers stop, the network heals and every node crashes and restarts at
//! once. The primary runs a final recovery, resyncs every other node and reads every
//! line from every member. Checks: after every recovery (a takeover's, a restarted
//! primary's), the primary holds every line at its highest acknowledged version or
//! a newer one; at the end, every line holds at least its highest
//! acknowledged version and, at that version, the acknowledged write's data;
//! every member holds the same version and bytes of every line; every line read
//! (there, and by the reader while writes go on) decodes to a write that was issued
//! for that line (nothing unwritten is ever read); no primary acknowledged a write it
//! began after a later takeover had fenced the members (a stale-epoch write).
//!
//! Devices of 3 nodes need 2 replicas to acknowledge (any two takeovers share a
//! member); devices of 2 nodes go on with 1, and are taken over only after their
//! primary crashed. A takeover goes to a member of the membership the primary last
//! told the controller, which it does before recording each epoch on its own vSSD
//! ([`Announced`]): a primary that degraded to itself is not taken over.
//!
//! `--buggy` wraps each remote replica so that its writep1 is never sent and
//! returns at once: a write is acknowledged after the local writep1 alone.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use dtm::{
    Dtm, DtmConfig, LocalReplica, LossPolicy, RemoteReplica, Replica, ReplicaError,
    ReplicaErrorKind, ReplicaService, Vssds, Written, recover,
};
use rpc::{ClientConfig, Header, Request, Response, SessionConfig, SessionInfo, serve_listener};
use taskio::file::OpenOptions;
use taskio::rand::Rng;
use taskio::sim::{DiskFault, NodeId, SimConfig, SimHandle};
use taskio::{AlignedBuf, Instant, net, now, sleep, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Options as VssdOptions, Vssd};

use super::{Options, SeedRun};

const PORT: u16 = 7300;
/// The vSSD's name in each node's registry, its file on the node's disk, and the
/// device it belongs to.
const VSSD: &str = "replica";
const DEV: &str = "/dev/dtm-replica";
const DEVICE: &str = "simdtm";
const LINE_SIZE: u32 = 4096;
/// Cache lines of each vSSD: room for every written line several times over (a
/// full vSSD waits for room).
const CACHE_LINES: u64 = 256;
/// The writers write lines `0..LINES_WRITTEN`, at most WRITE_LINES_MAX at a time:
/// a small range, so writes overlap.
const LINES_WRITTEN: u64 = 24;
const WRITE_LINES_MAX: u64 = 3;
const WRITERS: usize = 4;
/// Writes one writer makes at most (the stop ends it long before).
const WRITES_PER_WRITER_MAX: u64 = 100_000;
const THINK_MS: (u64, u64) = (1, 20);
/// Virtual time of writes under trouble, and trouble events in it.
const TROUBLE_FOR: Duration = Duration::from_millis(1200);
const TROUBLE_EVENTS: usize = 4;
/// Bound of every replica call, of a connect, of a started frame.
const CALL_TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const FRAME_TIMEOUT: Duration = Duration::from_millis(300);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Sessions a node serves at once: every primary's connections and their reconnects.
const SESSIONS_MAX: usize = 32;
/// A slow service's delay on a call: below the timeout on one call in two, beyond it
/// on the other.
const SLOW_SHORT: Duration = Duration::from_millis(150);
const SLOW_LONG: Duration = Duration::from_millis(450);
/// How long a replica stays slow at most.
const SLOW_FOR_MS: u64 = 800;
/// Longest wait of a write for its range lock or a slot.
const WAIT_MAX: Duration = Duration::from_secs(2);
/// A node looks for the primary role this often; a primary role that ended is
/// started again after this pause.
const ROLE_POLL: Duration = Duration::from_millis(20);
/// The resyncer looks for nodes that are not members this often.
const RESYNC_EVERY: Duration = Duration::from_millis(100);
/// Rounds of the polling loops at most (each a pause): far beyond a seed's time.
const POLL_ROUNDS_MAX: u64 = 100_000;
/// Attempts to open a node's vSSD at boot (a fault injected just before a restart
/// may fail the first).
const BOOT_TRIES: usize = 5;
/// Final phase: attempts to resync each node, and its bounds.
const FINAL_RESYNC_TRIES: usize = 20;
const STOP_WITHIN: Duration = Duration::from_secs(20);
const FINAL_WITHIN: Duration = Duration::from_secs(60);
/// Downtime of a crashed node, length of a partition, at most.
const DOWN_MS: u64 = 500;
const PARTITION_MS: u64 = 800;
/// One-way link latency.
const LINK_US: (u64, u64) = (50, 500);
/// `--buggy`: trans a remote replica drops, at most (its set's bound).
const BUGGY_DROPS_MAX: usize = 100_000;
/// The seed's streams: setup and the writers' (taskio uses 0 and 1).
const STREAM_SETUP: u64 = 0xd7;
const STREAM_WRITERS: u64 = 0x2000;
/// A payload's header: line, writer key, sequence (u64 each), CRC32C of the rest.
const HEADER: usize = 28;

const _: () = assert!(WRITE_LINES_MAX <= LINES_WRITTEN && LINES_WRITTEN * 4 <= CACHE_LINES);
const _: () = assert!(THINK_MS.0 > 0 && THINK_MS.0 <= THINK_MS.1);
const _: () = assert!(SLOW_SHORT.as_millis() < CALL_TIMEOUT.as_millis());
const _: () = assert!(SLOW_LONG.as_millis() > CALL_TIMEOUT.as_millis());
const _: () = assert!((HEADER as u32) < LINE_SIZE);

/// A node's member id (0 is the peer service's own placeholder).
fn member_id(node: usize) -> u64 {
    node as u64 + 1
}

fn node_of(member: u64) -> usize {
    (member - 1) as usize
}

fn addr(node: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, 1 + node as u8], PORT))
}

/// The highest acknowledged write of a line.
#[derive(Clone, Copy, Debug)]
struct Ack {
    tran: u64,
    key: u64,
    seq: u64,
}

/// A takeover's fence: the generation of the primary role that made it, the epoch
/// its members moved to, and when.
struct Fence {
    generation: u64,
    epoch: u64,
    at: Instant,
}

/// What the seed saw, shared by the controller and the nodes' programs.
#[derive(Default)]
struct World {
    seed: u64,
    buggy: bool,
    /// TDRV_TRACE set: the seed's events on stderr.
    trace: bool,
    nodes: usize,
    min_replicas: usize,
    formatted: RefCell<Vec<bool>>,
    /// Boots of each node: each format gets a uuid of its own.
    boots: RefCell<Vec<u64>>,
    /// The node the primary role runs on, and its generation (+1 at each takeover).
    primary: Cell<usize>,
    generation: Cell<u64>,
    /// The members of the latest epoch the current primary's own vSSD may hold: it
    /// tells them before it records them ([`Announced`]); the controller's takeover
    /// choice.
    members: RefCell<Vec<u64>>,
    fences: RefCell<Vec<Fence>>,
    /// Writes issued: (writer key, sequence) -> (first line, count).
    issued: RefCell<HashMap<(u64, u64), (u64, u64)>>,
    acked: RefCell<HashMap<u64, Ack>>,
    /// Nodes whose service is slow until then.
    slow_until: RefCell<Vec<Option<Instant>>>,
    stop: Cell<bool>,
    /// Every node restarted after the stop: the primary role runs the final checks.
    final_phase: Cell<bool>,
    final_done: Cell<bool>,
    writers_live: Cell<usize>,
    roles: Cell<u64>,
    failure: RefCell<Option<String>>,
    writes_acked: Cell<u64>,
    writes_failed: Cell<u64>,
    reads_checked: Cell<u64>,
    recoveries: Cell<u64>,
    recoveries_failed: Cell<u64>,
    in_doubt_committed: Cell<u64>,
    in_doubt_aborted: Cell<u64>,
    reconciled: Cell<u64>,
    resyncs: Cell<u64>,
    resyncs_failed: Cell<u64>,
    takeovers: Cell<u64>,
    crashes: Cell<u64>,
    partitions: Cell<u64>,
    disk_faults: Cell<u64>,
    slow_spells: Cell<u64>,
    final_lines: Cell<u64>,
}

impl World {
    fn fail(&self, why: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(why);
        }
    }

    fn add(&self, counter: &Cell<u64>, n: u64) {
        counter.set(counter.get() + n);
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("{:>8} us | {what}", now().as_nanos() / 1000);
        }
    }

    fn is_slow(&self, node: usize) -> bool {
        self.slow_until.borrow()[node].is_some_and(|t| now() < t)
    }
}

/// A format cut short by a crash is redone with a new uuid (the vSSD refuses to
/// format itself again under the same one).
fn params(seed: u64, node: usize, boot: u64) -> FormatParams {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&seed.to_le_bytes());
    uuid[8..].copy_from_slice(&((boot << 8) + node as u64 + 1).to_le_bytes());
    FormatParams {
        line_size: LINE_SIZE,
        lines: CACHE_LINES,
        log_bytes: LOG_BYTES_MIN,
        device_id: DEVICE.into(),
        uuid,
        force: false,
    }
}

/// The node's vSSD: formatted at its first boot (until one format completed),
/// opened (recovered) at every boot.
fn open_vssd(w: &World, node: usize) -> Result<Vssd, String> {
    let boot = {
        let mut boots = w.boots.borrow_mut();
        boots[node] += 1;
        boots[node]
    };
    let p = params(w.seed, node, boot);
    let g = p.geometry().map_err(|e| format!("geometry: {e}"))?;
    let file = OpenOptions::new()
        .create(true)
        .size(g.total_bytes())
        .open(DEV)
        .map_err(|e| format!("open {DEV}: {e}"))?;
    if !w.formatted.borrow()[node] {
        vssd::format(&file, &p).map_err(|e| format!("format: {e}"))?;
        w.formatted.borrow_mut()[node] = true;
    }
    let (v, _) = Vssd::open(file, Some(DEVICE), VssdOptions::default())
        .map_err(|e| format!("open the vSSD: {e}"))?;
    Ok(v)
}

/// The payload of `count` lines from `first` of write `(key, seq)`: each line starts
/// with its header and is filled with a pattern of its identity.
fn payload(first: u64, count: u64, key: u64, seq: u64) -> AlignedBuf {
    let line = LINE_SIZE as usize;
    let mut b = AlignedBuf::new(line * count as usize);
    b.set_len(line * count as usize);
    for (i, chunk) in b.chunks_mut(line).enumerate() {
        let l = first + i as u64;
        chunk[..8].copy_from_slice(&l.to_le_bytes());
        chunk[8..16].copy_from_slice(&key.to_le_bytes());
        chunk[16..24].copy_from_slice(&seq.to_le_bytes());
        let fill = (l ^ key.rotate_left(16) ^ seq.rotate_left(32)).to_le_bytes();
        for (j, byte) in chunk[HEADER..].iter_mut().enumerate() {
            *byte = fill[j % 8].wrapping_add(j as u8);
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&chunk[..24]), &chunk[HEADER..]);
        chunk[24..HEADER].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

/// Checks a line read at `version`: it decodes to a write issued for that line,
/// and is at least the highest write acknowledged before the read (`acked`), with
/// that write's data at its version.
fn check_line(
    w: &World,
    line: u64,
    version: u64,
    bytes: &[u8],
    acked: Option<Ack>,
) -> Result<(), String> {
    if bytes.len() != LINE_SIZE as usize {
        return Err(format!("line {line} v{version}: {} bytes", bytes.len()));
    }
    let word = |at: usize| {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(n)
    };
    let (l, key, seq) = (word(0), word(8), word(16));
    let mut c = [0u8; 4];
    c.copy_from_slice(&bytes[24..HEADER]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[HEADER..]);
    if u32::from_le_bytes(c) != crc || l != line {
        return Err(format!(
            "line {line} v{version}: bytes that no write wrote (header line {l}, CRC {})",
            if u32::from_le_bytes(c) == crc {
                "ok"
            } else {
                "bad"
            }
        ));
    }
    match w.issued.borrow().get(&(key, seq)) {
        Some(&(first, count)) if (first..first + count).contains(&line) => {}
        other => {
            return Err(format!(
                "line {line} v{version}: the data of write {key}/{seq}, never issued for it ({other:?})"
            ));
        }
    }
    if let Some(a) = acked {
        if version < a.tran {
            return Err(format!(
                "line {line}: v{version} read, tran {} (write {}/{}) was acknowledged",
                a.tran, a.key, a.seq
            ));
        }
        if version == a.tran && (key, seq) != (a.key, a.seq) {
            return Err(format!(
                "line {line} v{version}: the data of write {key}/{seq}, tran {version} acknowledged write {}/{}",
                a.key, a.seq
            ));
        }
    }
    Ok(())
}

/// A node's service: dtm's `ReplicaService`, slowed while the controller says so.
struct Served {
    inner: ReplicaService,
    world: Rc<World>,
    node: usize,
}

impl rpc::Service for Served {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        if self.world.is_slow(self.node) {
            sleep(if header.tag.is_multiple_of(2) {
                SLOW_SHORT
            } else {
                SLOW_LONG
            });
        }
        self.inner.handle(session, header, request, scratch)
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        call_timeout: CALL_TIMEOUT,
        connect_timeout: CONNECT_TIMEOUT,
        frame_timeout: FRAME_TIMEOUT,
        ..ClientConfig::default()
    }
}

/// Node `node`'s replica over rpc, opened at the replica's own epoch (learnt from
/// the STALE_EPOCH answer to an opening at epoch 0).
fn open_remote(w: &World, node: usize) -> Result<Rc<dyn Replica>, ReplicaError> {
    let open =
        |epoch| RemoteReplica::open(addr(node), VSSD, epoch, member_id(node), &client_config());
    let r = match open(0) {
        Err(ReplicaError {
            kind: ReplicaErrorKind::StaleEpoch { replica_epoch },
            ..
        }) => open(replica_epoch)?,
        other => other?,
    };
    Ok(if w.buggy {
        Rc::new(Hasty::new(Rc::new(r)))
    } else {
        Rc::new(r)
    })
}

/// The node's program: its vSSD served, and the primary role whenever the world
/// says this node holds it.
fn node_program(w: &Rc<World>, node: usize) {
    let mut opened = Err(String::new());
    for _ in 0..BOOT_TRIES {
        opened = open_vssd(w, node);
        if opened.is_ok() {
            break;
        }
        // A fault injected before the restart may fail one opening.
        sleep(ROLE_POLL);
    }
    let vssd = match opened {
        Ok(v) => v,
        Err(e) => {
            return w.fail(format!(
                "node {node}: its vSSD does not open in {BOOT_TRIES} tries: {e}"
            ));
        }
    };
    let vssds = Vssds::new();
    vssds.insert(VSSD, vssd.clone());
    let listener = match net::listen(addr(node)) {
        Ok(l) => l,
        Err(e) => return w.fail(format!("node {node}: listen: {e}")),
    };
    let config = SessionConfig {
        frame_timeout: FRAME_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        ..SessionConfig::default()
    };
    let w2 = w.clone();
    // Serves until the node crashes.
    let served = spawn(move || {
        let _ = serve_listener(&listener, &config, SESSIONS_MAX, || Served {
            inner: ReplicaService::new(vssds.clone()),
            world: w2.clone(),
            node,
        });
    });
    if let Err(e) = served {
        return w.fail(format!("node {node}: cannot spawn its server: {e}"));
    }
    for _ in 0..POLL_ROUNDS_MAX {
        if w.final_done.get() {
            return;
        }
        if w.primary.get() == node {
            primary_role(w, node, &vssd);
        }
        sleep(ROLE_POLL);
    }
}

/// The primary role at one start: recovery, the DTM, then writes (or, after the
/// stop, the final checks) until its DTM goes down.
fn primary_role(w: &Rc<World>, me: usize, vssd: &Vssd) {
    if w.stop.get() && !w.final_phase.get() {
        return;
    }
    let generation = w.generation.get();
    let local: Rc<dyn Replica> = Rc::new(Announced {
        inner: LocalReplica::new(
            vssd.clone(),
            member_id(me),
            format!("node {me}"),
            vssd.epoch(),
        ),
        world: w.clone(),
        generation,
    });
    let mut opened = vec![local];
    for q in (0..w.nodes).filter(|&q| q != me) {
        if let Ok(r) = open_remote(w, q) {
            opened.push(r);
        }
    }
    let configured: Vec<u64> = (0..w.nodes).map(member_id).collect();
    let rec = match recover(&opened, &configured, w.min_replicas) {
        Ok(r) => r,
        Err(e) => {
            w.trace(format_args!("node {me}: recovery failed: {e}"));
            return w.add(&w.recoveries_failed, 1);
        }
    };
    w.trace(format_args!("node {me} (generation {generation}): {rec:?}"));
    w.add(&w.recoveries, 1);
    w.add(&w.in_doubt_committed, rec.committed);
    w.add(&w.in_doubt_aborted, rec.aborted);
    w.add(&w.reconciled, rec.reconciled);
    let member_ids: Vec<u64> = rec.members.iter().map(|r| r.member()).collect();
    w.fences.borrow_mut().push(Fence {
        generation,
        epoch: rec.epoch,
        at: now(),
    });
    if member_ids.first() != Some(&member_id(me)) {
        // This node's vSSD is stale: the role goes to a member of the newest epoch
        // (fenced already; its own recovery fences again).
        if w.generation.get() == generation {
            w.primary.set(node_of(member_ids[0]));
            w.generation.set(generation + 1);
        }
        return;
    }
    let members = rec.members.clone();
    let config = DtmConfig {
        min_replicas: w.min_replicas,
        policy: LossPolicy::Degrade,
        wait_max: WAIT_MAX,
        ..DtmConfig::default()
    };
    let dtm = match Dtm::start(vssd.clone(), rec.members, rec.epoch, config) {
        Ok(d) => d,
        Err(e) => {
            w.trace(format_args!("node {me}: start failed: {e}"));
            return w.add(&w.recoveries_failed, 1);
        }
    };
    if w.final_phase.get() {
        if let Err(e) = final_check(w, me, &dtm, members) {
            w.fail(format!("final check on node {me}: {e}"));
        }
        w.final_done.set(true);
    } else {
        if let Err(e) = acknowledged_held(w, &dtm) {
            w.fail(format!(
                "after the recovery by node {me} (generation {generation}, epoch {}): {e}",
                dtm.epoch()
            ));
        }
        run_writes(w, me, generation, &dtm);
    }
    dtm.close();
}

/// Every line acknowledged so far holds its acknowledged write or a newer one on
/// the primary after its recovery (a takeover's recovery must find every one).
///
/// The acknowledgements as they stand when the check begins: its reads park, and
/// meanwhile another node may take the device over without this one in its members
/// (so without fencing its vSSD) and acknowledge newer writes, which this node,
/// deposed, does not hold (`tdrv sim dtm` seed 13276).
fn acknowledged_held(w: &World, dtm: &Dtm) -> Result<(), String> {
    let mut buf = AlignedBuf::new(LINE_SIZE as usize);
    let snapshot = w.acked.borrow().clone();
    for line in 0..LINES_WRITTEN {
        let Some(&acked) = snapshot.get(&line) else {
            continue;
        };
        match dtm.read(line, &mut buf) {
            Ok(Some(hit)) => check_line(w, line, hit.version, &buf, Some(acked))?,
            Ok(None) => {
                return Err(format!(
                    "line {line} is not held, tran {} (write {}/{}) was acknowledged",
                    acked.tran, acked.key, acked.seq
                ));
            }
            // A disk fault injected on the primary: the line is checked at the end.
            Err(_) => {}
        }
    }
    Ok(())
}

/// Writers, a reader and a resyncer on `dtm` until the stop or until it goes down.
fn run_writes(w: &Rc<World>, me: usize, generation: u64, dtm: &Dtm) {
    let role = w.roles.get();
    w.roles.set(role + 1);
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let key = role * WRITERS as u64 + i as u64;
        let rng = Rng::stream(w.seed, STREAM_WRITERS + key);
        let (w2, d) = (w.clone(), dtm.clone());
        match spawn(move || {
            let _live = Live::new(&w2.writers_live);
            writer(&w2, &d, generation, key, rng);
        }) {
            Ok(h) => tasks.push(h),
            Err(e) => w.fail(format!("cannot spawn a writer: {e}")),
        }
    }
    let (w2, d) = (w.clone(), dtm.clone());
    match spawn(move || resyncer(&w2, me, &d)) {
        Ok(h) => tasks.push(h),
        Err(e) => w.fail(format!("cannot spawn the resyncer: {e}")),
    }
    for t in tasks {
        if let Err(e) = t.join() {
            w.fail(format!("node {me}: a task of the primary panicked: {e:?}"));
        }
    }
}

/// Counts a task in a counter while it lives: a crash unwinds the task, and the
/// count with it.
struct Live<'a>(&'a Cell<usize>);

impl<'a> Live<'a> {
    fn new(count: &'a Cell<usize>) -> Live<'a> {
        count.set(count.get() + 1);
        Live(count)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn writer(w: &World, dtm: &Dtm, generation: u64, key: u64, mut rng: Rng) {
    let mut buf = AlignedBuf::new(LINE_SIZE as usize);
    for seq in 1..=WRITES_PER_WRITER_MAX {
        if w.stop.get() || dtm.down().is_some() {
            return;
        }
        let count = rng.between(1, WRITE_LINES_MAX);
        let first = rng.below(LINES_WRITTEN - count + 1);
        w.issued.borrow_mut().insert((key, seq), (first, count));
        let began = now();
        match dtm.write(first, &payload(first, count, key, seq)) {
            Ok(Written::Tran(tran)) => {
                acknowledged(w, dtm, generation, began, (key, seq), first, count, tran)
            }
            Ok(Written::Through) => {
                w.fail(format!("write {key}/{seq} written through under Degrade"))
            }
            Err(e) => {
                w.trace(format_args!(
                    "write {key}/{seq} of {first}+{count} failed: {e}"
                ));
                w.add(&w.writes_failed, 1);
            }
        }
        // A read of one line: what it holds was written, and is not older than what
        // was acknowledged before (by this primary, if it is still the current one).
        let line = rng.below(LINES_WRITTEN);
        let before = w.acked.borrow().get(&line).copied();
        if let Ok(Some(hit)) = dtm.read(line, &mut buf) {
            let current = w.generation.get() == generation;
            if let Err(e) = check_line(w, line, hit.version, &buf, before.filter(|_| current)) {
                w.fail(format!(
                    "read by the primary on its generation {generation}: {e}"
                ));
            }
            w.add(&w.reads_checked, 1);
        }
        sleep(Duration::from_millis(rng.between(THINK_MS.0, THINK_MS.1)));
    }
}

/// Records an acknowledged write; a primary whose write began after a later
/// generation's takeover fenced the members must not have acknowledged it.
#[allow(clippy::too_many_arguments)]
fn acknowledged(
    w: &World,
    dtm: &Dtm,
    generation: u64,
    began: Instant,
    (key, seq): (u64, u64),
    first: u64,
    count: u64,
    tran: u64,
) {
    let epoch = dtm.epoch();
    if let Some(f) = w
        .fences
        .borrow()
        .iter()
        .find(|f| f.generation > generation && f.at < began && f.epoch > epoch)
    {
        w.fail(format!(
            "stale-epoch write acknowledged: write {key}/{seq} (tran {tran}) by the primary of generation {generation} at epoch {epoch}, begun after generation {}'s takeover fenced the members at epoch {}",
            f.generation, f.epoch
        ));
    }
    w.trace(format_args!(
        "write {key}/{seq} of {first}+{count}: tran {tran} at epoch {epoch}, members {:?}",
        dtm.members()
    ));
    w.add(&w.writes_acked, 1);
    let mut acked = w.acked.borrow_mut();
    for line in first..first + count {
        let a = acked.entry(line).or_insert(Ack { tran: 0, key, seq });
        if tran > a.tran {
            *a = Ack { tran, key, seq };
        }
    }
}

/// Brings back every node that is not a member, until the stop.
fn resyncer(w: &World, me: usize, dtm: &Dtm) {
    for _ in 0..POLL_ROUNDS_MAX {
        if w.stop.get() || dtm.down().is_some() {
            return;
        }
        sleep(RESYNC_EVERY);
        for q in (0..w.nodes).filter(|&q| q != me) {
            let id = member_id(q);
            if dtm.members().contains(&id) || dtm.syncing().contains(&id) {
                continue;
            }
            if let Ok(r) = open_remote(w, q) {
                w.trace(format_args!("node {me}: resync of node {q} starts"));
                match dtm.resync(r) {
                    Ok(p) => {
                        w.trace(format_args!("node {me}: resync {p:?}"));
                        w.add(&w.resyncs, 1);
                    }
                    Err(e) => {
                        w.trace(format_args!("node {me}: resync of node {q} failed: {e}"));
                        w.add(&w.resyncs_failed, 1);
                    }
                }
            }
        }
    }
}

/// After the stop and the restart of every node: every other node resynced, then
/// every line read from every member.
fn final_check(
    w: &World,
    me: usize,
    dtm: &Dtm,
    mut members: Vec<Rc<dyn Replica>>,
) -> Result<(), String> {
    for q in (0..w.nodes).filter(|&q| q != me) {
        let id = member_id(q);
        let mut last = String::new();
        for _ in 0..FINAL_RESYNC_TRIES {
            if dtm.members().contains(&id) {
                break;
            }
            match open_remote(w, q) {
                Ok(r) => match dtm.resync(r.clone()) {
                    Ok(_) => {
                        w.add(&w.resyncs, 1);
                        members.push(r);
                    }
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            if !dtm.members().contains(&id) {
                sleep(RESYNC_EVERY);
            }
        }
        if !dtm.members().contains(&id) {
            return Err(format!("node {q} is not resynced: {last}"));
        }
    }
    dtm.quiesce().map_err(|e| format!("quiesce: {e}"))?;
    let mut buf = AlignedBuf::new(LINE_SIZE as usize);
    for line in 0..LINES_WRITTEN {
        let acked = w.acked.borrow().get(&line).copied();
        let mut first: Option<(Option<u64>, Vec<u8>, String)> = None;
        for r in &members {
            let version = r
                .read(line, &mut buf)
                .map_err(|e| format!("line {line}: {e}"))?;
            match version {
                Some(v) => check_line(w, line, v, &buf, acked)
                    .map_err(|e| format!("{} holds {e}", r.name()))?,
                None if acked.is_some() => {
                    return Err(format!(
                        "line {line}: not held by {}, tran {} was acknowledged",
                        r.name(),
                        acked.map_or(0, |a| a.tran)
                    ));
                }
                None => {}
            }
            let bytes = if version.is_some() {
                buf.to_vec()
            } else {
                Vec::new()
            };
            match &first {
                None => first = Some((version, bytes, r.name().to_string())),
                Some((v0, b0, name)) if (*v0, b0) != (version, &bytes) => {
                    return Err(format!(
                        "line {line}: the members disagree: {name} holds {v0:?}, {} holds {version:?}",
                        r.name()
                    ));
                }
                Some(_) => {}
            }
        }
        w.add(&w.final_lines, 1);
    }
    Ok(())
}

/// `--buggy`: a remote replica whose writep1 is never sent: the primary
/// acknowledges after its local writep1 alone, and the replica never holds the
/// write (its COMMIT and ABORT are dropped too). At most [`BUGGY_DROPS_MAX`] trans
/// are dropped per replica; the later ones are sent.
struct Hasty {
    inner: Rc<dyn Replica>,
    dropped: RefCell<HashSet<u64>>,
}

impl Hasty {
    fn new(inner: Rc<dyn Replica>) -> Hasty {
        Hasty {
            inner,
            dropped: RefCell::new(HashSet::new()),
        }
    }
}

impl dtm::Forward for Hasty {
    fn inner(&self) -> &dyn Replica {
        &*self.inner
    }
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        let mut dropped = self.dropped.borrow_mut();
        if dropped.len() >= BUGGY_DROPS_MAX {
            drop(dropped);
            return self.inner.writep1(tran, line, data);
        }
        dropped.insert(tran);
        Ok(())
    }
    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError> {
        let sent: Vec<u64> = {
            let mut dropped = self.dropped.borrow_mut();
            trans
                .iter()
                .copied()
                .filter(|t| !dropped.remove(t))
                .collect()
        };
        if sent.is_empty() {
            return Ok(());
        }
        self.inner.commit(&sent)
    }
    fn abort(&self, tran: u64) -> Result<(), ReplicaError> {
        if self.dropped.borrow_mut().remove(&tran) {
            return Ok(());
        }
        self.inner.abort(tran)
    }
}

/// The primary's own replica, which tells the controller (the cluster manager) the
/// members of each epoch before it records it, as DRBD's fence-peer handler tells
/// the cluster manager before a primary goes on without its peer. So the controller
/// never takes over with a node that the primary's vSSD may have dropped: with 2
/// nodes and 1 replica required, a primary that degraded to itself and a takeover by
/// the other node would make two claims of one epoch (a split brain no fence can
/// stop; recovery refuses it). Only the current generation's primary is heard.
struct Announced {
    inner: LocalReplica,
    world: Rc<World>,
    generation: u64,
}

impl dtm::Forward for Announced {
    fn inner(&self) -> &dyn Replica {
        &self.inner
    }
    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        if self.world.generation.get() == self.generation {
            *self.world.members.borrow_mut() = members.to_vec();
        }
        self.inner.set_epoch(epoch, members)
    }
}

/// A member of the latest epoch, other than the primary and alive, to take over.
fn takeover_choice(h: &SimHandle, w: &World, ids: &[NodeId]) -> Option<usize> {
    let p = w.primary.get();
    let candidates: Vec<usize> = w
        .members
        .borrow()
        .iter()
        .map(|&m| node_of(m))
        .filter(|&q| q != p && h.is_alive(ids[q]))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[h.random(candidates.len() as u64) as usize])
}

fn take_over(w: &World, to: usize) {
    w.trace(format_args!("takeover by node {to}"));
    w.primary.set(to);
    w.generation.set(w.generation.get() + 1);
    w.add(&w.takeovers, 1);
}

/// One trouble event, drawn from the seed.
fn trouble(h: &SimHandle, w: &World, ids: &[NodeId]) {
    let n = ids.len();
    let p = w.primary.get();
    let other = (p + 1 + h.random(n as u64 - 1) as usize) % n;
    w.trace(format_args!("trouble, primary node {p}"));
    let pause = |max_ms: u64| sleep(Duration::from_millis(1 + h.random(max_ms)));
    let event = h.random(6);
    w.trace(format_args!("trouble {event}, node {other}"));
    match event {
        0 => {
            // A replica node crashes and comes back (stale: resynced).
            h.crash(ids[other]);
            w.add(&w.crashes, 1);
            pause(DOWN_MS);
            h.restart(ids[other]);
        }
        1 => {
            // The primary crashes; a member of the latest epoch takes over.
            h.crash(ids[p]);
            w.add(&w.crashes, 1);
            if let Some(q) = takeover_choice(h, w, ids) {
                take_over(w, q);
            }
            pause(DOWN_MS);
            h.restart(ids[p]);
        }
        2 if n >= 3 => {
            // The primary is cut off and a member takes over while it runs: the
            // fence must keep it from acknowledging.
            for q in (0..n).filter(|&q| q != p) {
                h.partition(ids[p], ids[q]);
            }
            w.add(&w.partitions, 1);
            if let Some(q) = takeover_choice(h, w, ids) {
                take_over(w, q);
            }
            pause(PARTITION_MS);
            for q in (0..n).filter(|&q| q != p) {
                h.heal(ids[p], ids[q]);
            }
        }
        2 | 3 => {
            let a = h.random(n as u64) as usize;
            let b = (a + 1 + h.random(n as u64 - 1) as usize) % n;
            h.partition(ids[a], ids[b]);
            w.add(&w.partitions, 1);
            pause(PARTITION_MS);
            h.heal(ids[a], ids[b]);
        }
        4 => {
            // A disk fault on a node's vSSD; the node restarts later.
            let q = h.random(n as u64) as usize;
            let fault = match h.random(3) {
                0 => DiskFault::ReadError,
                1 => DiskFault::WriteError,
                _ => DiskFault::CorruptRead,
            };
            h.inject(ids[q], DEV, fault);
            w.add(&w.disk_faults, 1);
            pause(DOWN_MS);
            h.crash(ids[q]);
            w.add(&w.crashes, 1);
            if q == p
                && let Some(t) = takeover_choice(h, w, ids)
            {
                take_over(w, t);
            }
            pause(DOWN_MS);
            h.restart(ids[q]);
        }
        _ => {
            let q = h.random(n as u64) as usize;
            w.slow_until.borrow_mut()[q] =
                Some(now() + Duration::from_millis(1 + h.random(SLOW_FOR_MS)));
            w.add(&w.slow_spells, 1);
        }
    }
}

/// The controller: nodes, trouble, the stop, a restart of every node, the final
/// checks; the failure, if any.
fn control(h: &SimHandle, w: &Rc<World>) -> Option<String> {
    let ids: Vec<NodeId> = (0..w.nodes)
        .map(|i| {
            let w2 = w.clone();
            h.add_node(&format!("node-{i}"), addr(i).ip(), move || {
                node_program(&w2, i)
            })
        })
        .collect();
    let start = h.now();
    let gap = TROUBLE_FOR.as_millis() as u64 / TROUBLE_EVENTS as u64;
    for _ in 0..TROUBLE_EVENTS {
        sleep(Duration::from_millis(h.random(gap)));
        trouble(h, w, &ids);
    }
    let elapsed = h.now() - start;
    if elapsed < TROUBLE_FOR {
        sleep(TROUBLE_FOR - elapsed);
    }
    w.stop.set(true);
    if !h.run_until(STOP_WITHIN, || w.writers_live.get() == 0) {
        return Some(format!(
            "stuck: {} writers still running {STOP_WITHIN:?} after the stop",
            w.writers_live.get()
        ));
    }
    for a in 0..ids.len() {
        for b in a + 1..ids.len() {
            h.heal(ids[a], ids[b]);
        }
    }
    w.slow_until.borrow_mut().fill(None);
    for &id in &ids {
        h.crash(id);
    }
    w.final_phase.set(true);
    for &id in &ids {
        h.restart(id);
    }
    if !h.run_until(FINAL_WITHIN, || {
        w.final_done.get() || w.failure.borrow().is_some()
    }) {
        return Some(format!(
            "the final recovery did not finish within {FINAL_WITHIN:?} (primary node {}, {} recoveries failed)",
            w.primary.get(),
            w.recoveries_failed.get()
        ));
    }
    w.failure.borrow().clone()
}

/// Runs one seed of the scenario.
pub fn run_seed(seed: u64, opts: Options) -> SeedRun {
    let mut setup = Rng::stream(seed, STREAM_SETUP);
    let nodes = 2 + setup.below(2) as usize;
    let mut config: SimConfig = super::simulator_config(seed);
    config.net_latency = (
        Duration::from_micros(LINK_US.0),
        Duration::from_micros(LINK_US.1),
    );
    let mut sim = taskio::sim::Sim::new(config);
    let world = Rc::new(World {
        seed,
        buggy: opts.buggy,
        trace: std::env::var_os("TDRV_TRACE").is_some(),
        nodes,
        min_replicas: nodes / 2 + nodes % 2,
        formatted: RefCell::new(vec![false; nodes]),
        boots: RefCell::new(vec![0; nodes]),
        slow_until: RefCell::new(vec![None; nodes]),
        ..World::default()
    });
    let w = world.clone();
    let failure = match sim.run(move |h| control(h, &w)) {
        Ok(f) => f,
        Err(e) => Some(format!("the simulation itself failed: {e}")),
    };
    let c = |x: &Cell<u64>| x.get();
    SeedRun {
        trace: sim.trace_hash(),
        failure,
        detail: format!(
            "{nodes} nodes, min {}; {} writes acknowledged, {} failed, {} reads checked; {} recoveries ({} failed, {} in-doubt committed, {} aborted, {} lines reconciled), {} takeovers, {} resyncs ({} failed); {} crashes, {} partitions, {} disk faults, {} slow spells; {} lines checked on every member",
            world.min_replicas,
            c(&world.writes_acked),
            c(&world.writes_failed),
            c(&world.reads_checked),
            c(&world.recoveries),
            c(&world.recoveries_failed),
            c(&world.in_doubt_committed),
            c(&world.in_doubt_aborted),
            c(&world.reconciled),
            c(&world.takeovers),
            c(&world.resyncs),
            c(&world.resyncs_failed),
            c(&world.crashes),
            c(&world.partitions),
            c(&world.disk_faults),
            c(&world.slow_spells),
            c(&world.final_lines),
        ),
    }
}
