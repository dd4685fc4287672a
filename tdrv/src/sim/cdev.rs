//! `tdrv sim cdev`: a cache device (`cdev::Device`, its DTM, vSSD, backing store and
//! destage task) on a simulated node, against a model of the device's bytes; one
//! seed in [`TAKEOVER_ONE_IN`] on two nodes, ending with a takeover.
//!
//! At each boot the node opens the device (recovery), reads every block and checks
//! it against the model, then client tasks each own a region of blocks (the regions
//! are not line-aligned, so neighbouring clients share the lines at their edges and
//! race in the read-modify-write of those lines) and write, read and discard in it:
//! writes of 1..=WRITE_BLOCKS_MAX blocks, inside one line or across several, reads
//! checked block by block, discards (whole lines only drop: their blocks may then
//! hold any older bytes until written again). A mode task switches the cache mode
//! now and then (leaving write-back destages everything), and destage runs between
//! low watermarks and when idle, with a cache smaller than the device (evictions);
//! one seed in [`TINY_ONE_IN`] has a cache smaller than the lines of the writes in
//! flight (writers wait for room that only destage and eviction make). One seed in
//! [`RAM_ONE_IN`] has a RAM tier of 1..=[`RAM_LINES_MAX`] lines (evicted all the
//! time), the others none.
//!
//! The controller crashes the node 1..=CRASHES_MAX times at seeded moments (writes
//! not yet flushed are kept, dropped or torn) and restarts it. After each crash every
//! block must hold its newest acknowledged write or the write in flight at the crash.
//! At the last boot the clients finish, every block is checked, `destage_all` runs,
//! and the backing store (as the simulated disk holds it) must equal the device's
//! bytes read through the cache.
//!
//! The takeover seeds run the device as a cvad pair does: the backing store on
//! storage both nodes share (`SimHandle::share`: a crash decides only the crashed
//! node's unflushed writes there), the primary's vSSD on node A (member 0) and a
//! replica vSSD on node B (member 1), which B serves with dtm's `ReplicaService`
//! over the simulated network; every write is on both (`min_replicas` 2). A boots
//! and crashes as above, but its last crash is not followed by a restart: B takes
//! the device over (`Device::takeover` with the vSSD it serves: recovery through
//! the DTM, a new epoch; A's vSSD, down with A, is dropped) and runs the last boot:
//! the same check of every block (a write in flight at A's crash may have landed
//! or not), clients, mode changes, and the final checks against the shared backing
//! store. A's last crash comes sooner (within [`TAKEOVER_CRASH_AFTER_MS`]), while
//! its clients run: lines dirty, writes in flight. The report counts takeovers, the
//! writes acknowledged after them and the dirty lines they found.
//!
//! `--buggy` breaks the device's read-modify-write lock
//! (`Device::break_rmw_lock`): two writes to one line race, one undoes the other's
//! acknowledged bytes, and the checks find the lost write.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use cdev::{CacheMode, CdevError, Device, DeviceConfig, OpenOptions, ReplicaConfig, ReplicaLoss};
use dtm::{ReplicaService, Vssds};
use rpc::{ClientConfig, SessionConfig, serve_listener};
use taskio::sim::{NodeId, SimHandle};
use taskio::{JoinHandle, net, sleep, spawn};
use vssd::layout::{Geometry, LOG_BYTES_MIN};
use vssd::{Options as VssdOptions, Vssd};

use super::{Options, SeedRun};

const LINE: u64 = 4096;
const BLOCK: u64 = cdev::BLOCK_SIZE as u64;
/// The device's size in lines (the backing store's), the cache's (smaller: lines
/// are evicted and read back from the backing store), and each client's region.
#[derive(Clone, Copy, Debug)]
struct Shape {
    device_lines: u64,
    cache_lines: u64,
    /// Not a whole number of lines, so each edge between two regions falls inside a
    /// line.
    region_blocks: u64,
}

impl Shape {
    const fn blocks(self) -> u64 {
        CLIENTS * self.region_blocks
    }

    const fn valid(self) -> bool {
        self.blocks() * BLOCK <= self.device_lines * LINE
            && self.cache_lines < self.device_lines
            && !(self.region_blocks * BLOCK).is_multiple_of(LINE)
            && WRITE_BLOCKS_MAX < self.region_blocks
            && READ_BLOCKS_MAX < self.region_blocks
    }
}

impl Default for Shape {
    fn default() -> Shape {
        ROOMY
    }
}

/// Regions of 4.5 lines.
const ROOMY: Shape = Shape {
    device_lines: 32,
    cache_lines: 20,
    region_blocks: 36,
};
/// A cache smaller than the lines of the writes in flight (up to 3 lines for each of
/// the clients): writers wait for room that only destage and eviction make.
const TINY: Shape = Shape {
    device_lines: 16,
    cache_lines: 10,
    region_blocks: 20,
};
/// One seed in this many runs with the tiny cache.
const TINY_ONE_IN: u64 = 4;
/// One seed in this many has a RAM tier, of at most this many lines (fewer than
/// the clients' lines: evictions).
const RAM_ONE_IN: u64 = 2;
const RAM_LINES_MAX: u64 = 6;
const CLIENTS: u64 = 6;
const WRITE_BLOCKS_MAX: u64 = 12;
const READ_BLOCKS_MAX: u64 = 16;
/// Operations of one client at one boot, and its think time between them.
const OPS_PER_BOOT: u64 = 25;
const THINK_US_MAX: u64 = 500;
/// Mode changes at one boot, at most this far apart.
const MODE_CHANGES: u64 = 3;
const MODE_GAP_MS: u64 = 60;
const CRASHES_MAX: u64 = 3;
/// How long after a boot the node crashes, at most; before a takeover, sooner
/// (while the clients run: lines dirty, writes in flight).
const CRASH_AFTER_MS: u64 = 150;
const TAKEOVER_CRASH_AFTER_MS: u64 = 30;
/// Bound of a boot (open and recovery) and of the final boot's work.
const BOOT_WITHIN: Duration = Duration::from_secs(30);
const FINAL_WITHIN: Duration = Duration::from_secs(60);
/// One seed in this many runs the device on two nodes and ends with a takeover.
const TAKEOVER_ONE_IN: u64 = 3;
/// The nodes' addresses (the primary's and the replica's), the port the replica's
/// `ReplicaService` listens on, the replica vSSD's name there and the primary's.
const PRIMARY_IP: [u8; 4] = [10, 0, 2, 1];
const REPLICA_IP: [u8; 4] = [10, 0, 2, 2];
const PORT: u16 = 7400;
const REPLICA_VSSD: &str = "simcdev-r1";
const PRIMARY_VSSD: &str = "simcdev-p";
/// Sessions the replica's node serves at once.
const SESSIONS_MAX: usize = 16;
/// Bounds of a replica call and of a connect: far beyond a call's time on a disk
/// with latency spikes (a timeout would drop the replica, or fail the write).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// The replica's node looks for the takeover order this often, this many times
/// at most.
const TAKEOVER_POLL: Duration = Duration::from_millis(10);
const TAKEOVER_POLLS_MAX: u64 = 100_000;
const MODES: [CacheMode; 4] = [
    CacheMode::WriteBack,
    CacheMode::WriteThrough,
    CacheMode::WriteAround,
    CacheMode::PassThrough,
];

const _: () = assert!(ROOMY.valid() && TINY.valid());
const _: () = assert!(WRITE_BLOCKS_MAX * BLOCK > LINE);

/// What a block must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// The bytes of write `tag` (0: never written, zeros).
    Tag(u64),
    /// Anything: a discard dropped its line (the backing store's older bytes).
    Any,
}

#[derive(Default)]
struct World {
    seed: u64,
    buggy: bool,
    shape: Shape,
    /// The device's `ram_cache_bytes`.
    ram_bytes: u64,
    crashes_planned: u64,
    /// The device runs on two nodes (the primary's vSSD and a replica's on the
    /// other node), and the last crash of the primary's node is followed by a
    /// takeover by the replica's instead of a restart.
    takeover: bool,
    /// The replica's node serves its vSSD.
    replica_up: Cell<bool>,
    /// The controller's order to the replica's node: take the device over.
    take_over: Cell<bool>,
    takeovers: Cell<u64>,
    /// Writes acknowledged by the device on the replica's node, after the takeover.
    writes_taken_over: Cell<u64>,
    /// Dirty lines the device held when the replica's node took it over.
    dirty_at_takeover: Cell<u64>,
    want: RefCell<Vec<Want>>,
    /// Blocks of the writes in flight (and their tags): kept across a crash.
    in_flight: RefCell<HashMap<u64, u64>>,
    boots: Cell<u64>,
    next_tag: Cell<u64>,
    /// The final boot's view of the device's bytes after `destage_all`.
    final_view: RefCell<Option<Vec<u8>>>,
    failure: RefCell<Option<String>>,
    writes: Cell<u64>,
    reads: Cell<u64>,
    discards: Cell<u64>,
    mode_changes: Cell<u64>,
    in_flight_landed: Cell<u64>,
    destage_runs: Cell<u64>,
    evictions: Cell<u64>,
    ram_hit_lines: Cell<u64>,
}

impl World {
    fn fail(&self, why: String) {
        self.failure.borrow_mut().get_or_insert(why);
    }

    fn add(&self, c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
}

/// Where the device runs: alone on one node, as the primary of two nodes, or on
/// the replica's node after the takeover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Alone,
    Primary,
    TakenOver,
}

fn addr(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, PORT))
}

/// The device's configuration on its node in `role`: as a cvad runs it.
fn config(w: &World, role: Role) -> DeviceConfig {
    let c = base_config(w.shape, w.ram_bytes);
    match role {
        Role::Alone => c,
        // Every write on both members: the replica taking over has them all.
        Role::Primary => DeviceConfig {
            replicas: vec![ReplicaConfig {
                peer: addr(REPLICA_IP),
                vssd: REPLICA_VSSD.into(),
                member: 1,
            }],
            min_replicas: 2,
            ..c
        },
        // The old primary's vSSD (down with its node) the other member; the device
        // goes on alone.
        Role::TakenOver => DeviceConfig {
            local_member: 1,
            replicas: vec![ReplicaConfig {
                peer: addr(PRIMARY_IP),
                vssd: PRIMARY_VSSD.into(),
                member: 0,
            }],
            min_replicas: 1,
            ..c
        },
    }
}

fn peers() -> ClientConfig {
    ClientConfig {
        name: "cvad-simcdev".into(),
        call_timeout: CALL_TIMEOUT,
        connect_timeout: CONNECT_TIMEOUT,
        ..ClientConfig::default()
    }
}

fn base_config(shape: Shape, ram_bytes: u64) -> DeviceConfig {
    DeviceConfig {
        name: "simcdev".into(),
        backing: PathBuf::from("/dev/backing"),
        vssd: PathBuf::from("/dev/vssd"),
        vssd_bytes: Geometry::new(LINE as u32, shape.cache_lines, LOG_BYTES_MIN)
            .map(|g| g.total_bytes())
            .unwrap_or(0),
        line_size: LINE as u32,
        mode: CacheMode::WriteBack,
        local_member: 0,
        replicas: Vec::new(),
        min_replicas: 1,
        replica_loss: ReplicaLoss::Degrade,
        destage_high_pct: 40,
        destage_low_pct: 10,
        seq_cutoff_bytes: 0,
        ram_cache_bytes: ram_bytes,
    }
}

fn create(shape: Shape) -> OpenOptions {
    OpenOptions {
        create: true,
        backing_bytes: shape.device_lines * LINE,
    }
}

/// Block `block`'s bytes as write `tag` leaves them (tag 0: zeros).
fn block_data(block: u64, tag: u64) -> [u8; BLOCK as usize] {
    let mut b = [0u8; BLOCK as usize];
    if tag != 0 {
        for (i, w) in b.chunks_exact_mut(8).enumerate() {
            let v = (block << 16 | i as u64) ^ tag.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// Checks blocks `first..first + got.len() / BLOCK` read as `got`; with `crashed`,
/// a block may hold its write in flight at the crash instead (then that write is
/// its acknowledged one).
fn check(w: &World, first: u64, got: &[u8], what: &str, crashed: bool) -> Result<(), String> {
    let mut want = w.want.borrow_mut();
    let in_flight = w.in_flight.borrow();
    for (i, bytes) in got.chunks_exact(BLOCK as usize).enumerate() {
        let b = first + i as u64;
        let Want::Tag(tag) = want[b as usize] else {
            continue;
        };
        if bytes == block_data(b, tag) {
            continue;
        }
        match in_flight.get(&b) {
            Some(&t) if crashed && bytes == block_data(b, t) => {
                want[b as usize] = Want::Tag(t);
                w.add(&w.in_flight_landed, 1);
            }
            flying => {
                return Err(format!(
                    "{what}: block {b} (line {}) holds neither its acknowledged write {tag} nor the one in flight {flying:?}",
                    b * BLOCK / LINE
                ));
            }
        }
    }
    Ok(())
}

fn read_all(w: &World, dev: &Device) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; (w.shape.device_lines * LINE) as usize];
    dev.read(0, &mut buf)
        .map_err(|e| format!("read all: {e}"))?;
    Ok(buf)
}

/// One client's operations at one boot, in its own region.
fn client(w: &World, h: &SimHandle, dev: &Device, k: u64) -> Result<(), String> {
    let region_blocks = w.shape.region_blocks;
    let region = k * region_blocks;
    for _ in 0..OPS_PER_BOOT {
        match h.random(10) {
            0..=2 => {
                let n = 1 + h.random(READ_BLOCKS_MAX);
                let first = region + h.random(region_blocks - n + 1);
                let mut buf = vec![0; (n * BLOCK) as usize];
                dev.read(first * BLOCK, &mut buf)
                    .map_err(|e| format!("client {k}: read: {e}"))?;
                check(w, first, &buf, &format!("client {k}: read"), false)?;
                w.add(&w.reads, 1);
            }
            3 => {
                let n = 1 + h.random(WRITE_BLOCKS_MAX);
                let first = region + h.random(region_blocks - n + 1);
                let (start, end) = (first * BLOCK, (first + n) * BLOCK);
                // Whole lines inside the range drop: their blocks may then read as
                // any older bytes (marked before the call: a crash may cut it).
                let (l0, l1) = (start.div_ceil(LINE), end / LINE);
                for b in (l0 * LINE / BLOCK)..(l1 * LINE / BLOCK).max(l0 * LINE / BLOCK) {
                    w.want.borrow_mut()[b as usize] = Want::Any;
                }
                dev.discard(start, end - start)
                    .map_err(|e| format!("client {k}: discard: {e}"))?;
                w.add(&w.discards, 1);
            }
            _ => {
                let n = 1 + h.random(WRITE_BLOCKS_MAX);
                // One write in two at an edge of the region: in a line shared with
                // the neighbour's region.
                let first = match h.random(4) {
                    0 => region,
                    1 => region + region_blocks - n,
                    _ => region + h.random(region_blocks - n + 1),
                };
                let tag = w.next_tag.get();
                w.next_tag.set(tag + 1);
                let mut data = Vec::with_capacity((n * BLOCK) as usize);
                for b in first..first + n {
                    data.extend_from_slice(&block_data(b, tag));
                    w.in_flight.borrow_mut().insert(b, tag);
                }
                dev.write(first * BLOCK, &data)
                    .map_err(|e| format!("client {k}: write: {e}"))?;
                for b in first..first + n {
                    w.want.borrow_mut()[b as usize] = Want::Tag(tag);
                    w.in_flight.borrow_mut().remove(&b);
                }
                w.add(&w.writes, 1);
                if w.take_over.get() {
                    w.add(&w.writes_taken_over, 1);
                }
            }
        }
        sleep(Duration::from_micros(h.random(THINK_US_MAX)));
    }
    Ok(())
}

fn mode_changes(w: &World, h: &SimHandle, dev: &Device) -> Result<(), String> {
    for _ in 0..MODE_CHANGES {
        sleep(Duration::from_millis(h.random(MODE_GAP_MS)));
        let mode = MODES[h.random(MODES.len() as u64) as usize];
        dev.set_mode(mode)
            .map_err(|e| format!("set_mode {mode:?}: {e}"))?;
        w.add(&w.mode_changes, 1);
    }
    Ok(())
}

/// The final boot's end: the clients and the mode task done, every block checked,
/// everything destaged, the device's bytes kept for the controller's comparison
/// with the backing store.
fn finish(w: &World, dev: &Device, tasks: Vec<JoinHandle<()>>) -> Result<(), String> {
    for t in tasks {
        t.join().map_err(|e| format!("a task failed: {e}"))?;
    }
    if w.failure.borrow().is_some() {
        return Ok(());
    }
    let all = read_all(w, dev)?;
    check(
        w,
        0,
        &all[..(w.shape.blocks() * BLOCK) as usize],
        "final read",
        false,
    )?;
    dev.destage_all()
        .map_err(|e| format!("final destage_all: {e}"))?;
    if dev.dirty_lines() != 0 {
        return Err(format!(
            "{} lines dirty after destage_all",
            dev.dirty_lines()
        ));
    }
    let view = read_all(w, dev)?;
    if view != all {
        return Err("the device's bytes changed across destage_all".into());
    }
    let stat = dev.stat();
    let counter = |name: &str| stat.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
    w.add(&w.destage_runs, counter("destage.runs"));
    w.add(&w.evictions, counter("vssd.evictions"));
    w.add(&w.ram_hit_lines, counter("requests.ram_hit_lines"));
    dev.close().map_err(|e| format!("close: {e}"))?;
    *w.final_view.borrow_mut() = Some(view);
    Ok(())
}

/// One boot of the device: `open` (recovery, or the takeover's), the check of
/// every block, then the clients and the mode task (and at the last boot,
/// [`finish`]).
fn boot(w: &Rc<World>, h: &SimHandle, open: impl FnOnce() -> Result<Device, CdevError>) {
    let boot = w.boots.get();
    let dev = match open() {
        Ok(d) => d,
        Err(e) => return w.fail(format!("boot {boot}: open: {e}")),
    };
    if w.buggy {
        dev.break_rmw_lock();
    }
    if w.take_over.get() {
        w.add(&w.dirty_at_takeover, dev.dirty_lines());
    }
    let checked = read_all(w, &dev).and_then(|all| {
        check(
            w,
            0,
            &all[..(w.shape.blocks() * BLOCK) as usize],
            &format!("boot {boot}: recovery"),
            true,
        )
    });
    if let Err(e) = checked {
        return w.fail(e);
    }
    w.in_flight.borrow_mut().clear();
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let (w2, h2, dev2) = (w.clone(), h.clone(), dev.clone());
        match spawn(move || {
            if let Err(e) = client(&w2, &h2, &dev2, k) {
                w2.fail(format!("boot {boot}: {e}"));
            }
        }) {
            Ok(t) => tasks.push(t),
            Err(e) => return w.fail(format!("spawn: {e}")),
        }
    }
    let (w2, h2, dev2) = (w.clone(), h.clone(), dev.clone());
    match spawn(move || {
        if let Err(e) = mode_changes(&w2, &h2, &dev2) {
            w2.fail(format!("boot {boot}: {e}"));
        }
    }) {
        Ok(t) => tasks.push(t),
        Err(e) => return w.fail(format!("spawn: {e}")),
    }
    w.boots.set(boot + 1);
    if boot == w.crashes_planned
        && let Err(e) = finish(w, &dev, tasks)
    {
        w.fail(format!("boot {boot} (final): {e}"));
    }
}

/// The primary's node: the device opened (created at the first boot), alone or
/// with its replica on the other node.
fn primary_node(w: &Rc<World>, h: &SimHandle) {
    if w.takeover {
        let c = config(w, Role::Primary);
        boot(w, h, || Device::open_with(&c, create(w.shape), &peers()));
    } else {
        let c = config(w, Role::Alone);
        boot(w, h, || Device::open(&c, create(w.shape)));
    }
}

/// The replica's node (as its cvad): its vSSD formatted and served with dtm's
/// `ReplicaService`; on the controller's order (its primary's node crashed) it
/// takes the device over with that vSSD and runs the device's last boot.
fn replica_node(w: &Rc<World>, h: &SimHandle) {
    let c = config(w, Role::Primary);
    let vssd = match replica_vssd(w, &c) {
        Ok(v) => v,
        Err(e) => return w.fail(format!("the replica's node: {e}")),
    };
    let vssds = Vssds::new();
    vssds.insert(REPLICA_VSSD, vssd.clone());
    let listener = match net::listen(addr(REPLICA_IP)) {
        Ok(l) => l,
        Err(e) => return w.fail(format!("the replica's node: listen: {e}")),
    };
    // Serves until the run ends.
    let served = spawn(move || {
        let _ = serve_listener(&listener, &SessionConfig::default(), SESSIONS_MAX, || {
            ReplicaService::new(vssds.clone())
        });
    });
    if let Err(e) = served {
        return w.fail(format!("the replica's node: cannot spawn its server: {e}"));
    }
    w.replica_up.set(true);
    for _ in 0..TAKEOVER_POLLS_MAX {
        if w.take_over.get() {
            let t = config(w, Role::TakenOver);
            return boot(w, h, || Device::takeover(&t, 1, vssd, &peers()));
        }
        if w.failure.borrow().is_some() {
            return;
        }
        sleep(TAKEOVER_POLL);
    }
}

/// The replica vSSD of the device, formatted for it (as VSSD_CREATE does), open.
fn replica_vssd(w: &World, c: &DeviceConfig) -> Result<Vssd, String> {
    let mut params = cdev::vssd_format_params(c).map_err(|e| format!("format params: {e}"))?;
    params.uuid[..8].copy_from_slice(&w.seed.to_le_bytes());
    params.uuid[8..].copy_from_slice(&0x5eed_0001u64.to_le_bytes());
    let file = taskio::file::OpenOptions::new()
        .create(true)
        .size(c.vssd_bytes)
        .open(&c.vssd)
        .map_err(|e| format!("open {}: {e}", c.vssd.display()))?;
    vssd::format(&file, &params).map_err(|e| format!("format: {e}"))?;
    let (v, _) = Vssd::open(file, Some(&c.name), VssdOptions::default())
        .map_err(|e| format!("open the vSSD: {e}"))?;
    Ok(v)
}

fn control(h: &SimHandle, w: &Rc<World>) -> Option<String> {
    let backing = base_config(w.shape, w.ram_bytes).backing;
    if w.takeover {
        // The backing store is shared storage both nodes reach.
        h.share(&backing);
        let (w2, h2) = (w.clone(), h.clone());
        h.add_node("replica", REPLICA_IP.into(), move || replica_node(&w2, &h2));
        if !h.run_until(BOOT_WITHIN, || {
            w.replica_up.get() || w.failure.borrow().is_some()
        }) {
            return Some(format!(
                "the replica's node did not serve within {BOOT_WITHIN:?}"
            ));
        }
    }
    let (w2, h2) = (w.clone(), h.clone());
    let node: NodeId = h.add_node("cvad", PRIMARY_IP.into(), move || primary_node(&w2, &h2));
    for crash in 0..w.crashes_planned {
        if !h.run_until(BOOT_WITHIN, || {
            w.boots.get() > crash || w.failure.borrow().is_some()
        }) {
            return Some(format!(
                "boot {crash} did not finish within {BOOT_WITHIN:?}"
            ));
        }
        if w.failure.borrow().is_some() {
            break;
        }
        let takeover = w.takeover && crash + 1 == w.crashes_planned;
        let after_ms = if takeover {
            TAKEOVER_CRASH_AFTER_MS
        } else {
            CRASH_AFTER_MS
        };
        sleep(Duration::from_millis(h.random(after_ms)));
        h.crash(node);
        if takeover {
            w.take_over.set(true);
            w.add(&w.takeovers, 1);
        } else {
            h.restart(node);
        }
    }
    if !h.run_until(FINAL_WITHIN, || {
        w.final_view.borrow().is_some() || w.failure.borrow().is_some()
    }) {
        return Some(format!(
            "the final boot did not finish within {FINAL_WITHIN:?}"
        ));
    }
    if let Some(f) = w.failure.borrow().clone() {
        return Some(f);
    }
    let view = w.final_view.borrow().clone().unwrap_or_default();
    let on_disk = h.disk_view(node, &backing).unwrap_or_default();
    if on_disk.len() < view.len() {
        return Some(format!(
            "the backing store holds {} bytes, the device {}",
            on_disk.len(),
            view.len()
        ));
    }
    if let Some(at) = (0..view.len()).find(|&i| on_disk[i] != view[i]) {
        return Some(format!(
            "after destage_all the backing store differs from the cache's view at byte {at} (line {})",
            at as u64 / LINE
        ));
    }
    None
}

/// Runs one seed of the scenario.
pub fn run_seed(seed: u64, opts: Options) -> SeedRun {
    let mut sim = super::simulator(seed);
    let mut setup = taskio::rand::Rng::stream(seed, 0xcde);
    let crashes_planned = 1 + setup.below(CRASHES_MAX);
    let shape = if setup.below(TINY_ONE_IN) == 0 {
        TINY
    } else {
        ROOMY
    };
    let ram_bytes = if setup.below(RAM_ONE_IN) == 0 {
        (1 + setup.below(RAM_LINES_MAX)) * LINE
    } else {
        0
    };
    let takeover = setup.below(TAKEOVER_ONE_IN) == 0;
    let world = Rc::new(World {
        seed,
        buggy: opts.buggy,
        shape,
        ram_bytes,
        crashes_planned,
        takeover,
        want: RefCell::new(vec![Want::Tag(0); shape.blocks() as usize]),
        next_tag: Cell::new(1),
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
            "seed {}: {} cache lines of {}, {} crashes, {} takeovers, {} writes acknowledged ({} after a takeover, which found {} lines dirty), {} reads checked, {} discards, {} mode changes, {} in-flight blocks landed, {} destage runs, {} evictions and {} lines read from RAM (a tier of {} bytes) at the last boot",
            world.seed,
            world.shape.cache_lines,
            world.shape.device_lines,
            world.crashes_planned,
            c(&world.takeovers),
            c(&world.writes),
            c(&world.writes_taken_over),
            c(&world.dirty_at_takeover),
            c(&world.reads),
            c(&world.discards),
            c(&world.mode_changes),
            c(&world.in_flight_landed),
            c(&world.destage_runs),
            c(&world.evictions),
            c(&world.ram_hit_lines),
            world.ram_bytes,
        ),
    }
}
