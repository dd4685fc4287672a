//! The deterministic simulation driver: virtual time, in-memory disks with a
//! volatile write cache, and an in-memory network of named nodes, all driven by one
//! seed (FoundationDB's and TigerBeetle's way of testing).
//!
//! It answers the same [`Io`] calls as the real reactor, so `net`, `file` and `sleep`
//! run unchanged. Everything that can vary is drawn from one seeded generator, every
//! map is ordered, and events are processed in (time, sequence) order, so a seed
//! replays exactly. Time only moves in `park`, when no task is ready: it jumps to the
//! next event or deadline, so an hour of simulated traffic takes as long as its
//! events take to process.
//!
//! It is as unkind as real disks and networks, on by default, every choice seeded,
//! mixed into the trace hash and counted in [`SimStats`]:
//!
//! - Disks: a write lands in the device's volatile cache when it completes, sector
//!   by sector (512 bytes), each write with an increasing id; a sector keeps every
//!   cached version. An fsync/fdatasync makes durable only the writes that completed
//!   before it was *issued* (the newest such version of each sector); a write that
//!   completes while the flush is in flight stays volatile. A RWF_DSYNC or O_DSYNC
//!   write goes to the durable image itself. A crash takes every cached write and
//!   every write still in flight (its buffer is read at the crash) and keeps it
//!   whole, drops it, or tears it to a random subset of its sectors (not only a
//!   prefix), applied in write order; the operations in flight then complete with
//!   EIO. A stop instead lets them complete and keeps the cache. A path declared
//!   shared (`SimHandle::share`) is one disk every node sees (shared storage): a
//!   crash there decides only the crashed node's writes, the same way, and leaves
//!   the cache and the other nodes' writes.
//! - Network: a connection is two ordered pipes of chunks, each chunk delivered
//!   after a random latency (never before the chunk ahead of it). A partition either
//!   resets the connections that cross it and refuses new ones, or is silent: what
//!   crosses is dropped, no one is told, connects never complete, so only timeouts
//!   notice (see [`PartitionKind`]; `partition` without a kind draws one). A crash
//!   resets every connection of the node.
//! - A crashed node's tasks unwind when they next run (one that may be unwinding
//!   from its own panic runs on until no unwind is in progress: see `sched`); any I/O
//!   they try meanwhile (a destructor that writes) is refused and never touches the
//!   node's disks.
//!
//! Parts: `disk` (the disk model and file operations), `net` (connections,
//! partitions), `events` (the event queue and `park`), `io_impl` (the [`Io`]
//! calls); the generator is [`crate::rand::Rng`].

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

mod disk;
mod events;
mod io_impl;
mod net;

use super::aio::{FileOp, FileOpKind};
use super::{Interest, IoStats};
use crate::rand::Rng;
use crate::task::TaskRef;
use crate::timer::Instant;
use disk::{Disk, InFlight, segments};
use events::{Ev, EvKind};
use net::{Conn, Pipe, Side};

/// The node number under which a shared disk is kept (see `SimHandle::share`): no
/// node's, so that no node's crash takes it whole.
pub(crate) const SHARED_NODE: u32 = u32::MAX;
/// Sector size of simulated disks: the granule of caching and tearing.
pub const SECTOR: usize = 512;
/// Bytes a connection's pipe holds in flight before the writer must wait.
const PIPE_BYTES_MAX: usize = 256 * 1024;
/// The latency of a hand-off's wake-up between two "threads" of a node (a
/// `Remote` signalling its `Inbox`), drawn uniformly: another thread's wake-up.
const NOTIFY_LATENCY_NS: (u64, u64) = (1_000, 20_000);
const _: () = assert!(NOTIFY_LATENCY_NS.0 > 0 && NOTIFY_LATENCY_NS.0 <= NOTIFY_LATENCY_NS.1);
/// File operations in flight per runtime (as the real driver's AIO depth).
const FILE_OPS_MAX: usize = 256;
/// The streams of a simulation's seed (see [`Rng::stream`]): the driver's choices
/// (disks, network, faults, the controller's `random`) and the scheduler's picks.
const STREAM_DRIVER: u64 = 0;
pub(crate) const STREAM_SCHED: u64 = 1;
/// Virtual time starts here (not at zero, so "zero" is never a valid deadline).
const START_NANOS: u64 = 1_000_000_000;

/// Fault rates of a simulation (probabilities per operation, 0.0 ..= 1.0).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub disk_read_error: f64,
    pub disk_write_error: f64,
    /// A read returns data with one byte flipped.
    pub disk_corrupt_read: f64,
    /// An operation takes 10-100 ms more.
    pub disk_latency_spike: f64,
    /// A send resets its connection.
    pub net_reset: f64,
}

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub faults: Faults,
    /// One-way network latency, drawn uniformly from this range.
    pub net_latency: (Duration, Duration),
    /// Disk operation latency, drawn uniformly from this range.
    pub disk_latency: (Duration, Duration),
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            faults: Faults::default(),
            net_latency: (Duration::from_micros(50), Duration::from_micros(500)),
            disk_latency: (Duration::from_micros(20), Duration::from_micros(200)),
        }
    }
}

/// A fault waiting for the next operation that touches its byte range.
type Injected = (DiskFault, Range<u64>);

/// A fault injected on demand into the next matching disk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    ReadError,
    WriteError,
    CorruptRead,
}

/// A fault injected on demand into the next chunk of bytes one node sends another
/// (a bad frame on the wire: a middlebox or NIC bug, memory corruption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// One byte of the chunk, at a seeded place, is changed.
    Corrupt,
    /// A seeded tail of the chunk (at least one byte) is lost; the stream goes on
    /// with the next chunk.
    Truncate,
}

/// How a partition cuts the network between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    /// The connections that cross it reset at once; new ones are refused.
    Reset,
    /// Nothing crosses it and nobody is told: chunks in flight and every chunk sent
    /// later over a crossing connection are dropped, that connection never delivers
    /// again (even after a heal, as a TCP connection whose retransmissions timed
    /// out), and connects across it never complete. Only timeouts notice.
    Silent,
}

/// What the simulator's unkindness did, counted so that a test can tell that a
/// fault it relies on really happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Writes (cached, or in flight) that a crash kept whole, dropped, or tore to a
    /// proper subset of their sectors.
    pub crash_writes_whole: u64,
    pub crash_writes_dropped: u64,
    pub crash_writes_torn: u64,
    /// Writes in flight at a crash, and how many of them reached the disk (whole or
    /// torn).
    pub in_flight_writes_at_crash: u64,
    pub in_flight_writes_landed: u64,
    /// Writes that a flush left volatile because they completed after it was issued
    /// (summed over flushes).
    pub flush_excluded_writes: u64,
    pub partitions_reset: u64,
    pub partitions_silent: u64,
    /// Chunks (data or end of stream) a silent partition dropped, and connects it
    /// swallowed.
    pub silent_chunks_dropped: u64,
    pub silent_connects_lost: u64,
    /// Chunks an injected [`NetFault`] corrupted or truncated.
    pub net_chunks_corrupted: u64,
    pub net_chunks_truncated: u64,
    /// I/O calls refused to a task of a crashed or stopped node (a destructor that
    /// runs while the task unwinds).
    pub dead_io_refused: u64,
}

/// A latency drawn uniformly from `lo..=hi`, in nanoseconds.
fn latency(rng: &mut Rng, (lo, hi): (Duration, Duration)) -> u64 {
    rng.between(lo.as_nanos() as u64, hi.as_nanos() as u64)
}

enum SimFd {
    Listener {
        node: u32,
        addr: SocketAddr,
        backlog: VecDeque<u64>,
    },
    Stream {
        node: u32,
        conn: u64,
        side: Side,
    },
    File {
        node: u32,
        path: PathBuf,
        dsync: bool,
    },
    /// A notifier's event (see `driver::notify`): readable while `pending`.
    Event {
        node: u32,
        pending: bool,
    },
}

impl SimFd {
    fn node(&self) -> u32 {
        match self {
            SimFd::Listener { node, .. }
            | SimFd::Stream { node, .. }
            | SimFd::File { node, .. }
            | SimFd::Event { node, .. } => *node,
        }
    }
}

fn mix(h: &mut u64, words: &[u64]) {
    for w in words {
        *h = (*h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ip: IpAddr,
    pub(crate) alive: bool,
    pub(crate) epoch: u64,
    pub(crate) program: Option<Rc<dyn Fn()>>,
}

/// Everything a simulation knows; shared by the driver and the `Sim` handle.
pub(crate) struct SimState {
    config: SimConfig,
    now: u64,
    pub(crate) rng: Rng,
    seq: u64,
    pub(crate) trace: u64,
    events: BinaryHeap<Reverse<Ev>>,
    next_fd: RawFd,
    next_port: u16,
    next_conn: u64,
    next_write: u64,
    fds: BTreeMap<RawFd, SimFd>,
    listeners: BTreeMap<SocketAddr, RawFd>,
    conns: BTreeMap<u64, Conn>,
    waiters: BTreeMap<(RawFd, u8), Vec<TaskRef>>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) disks: BTreeMap<(u32, PathBuf), Disk>,
    /// Paths every node sees as one disk (kept under [`SHARED_NODE`]).
    pub(crate) shared: BTreeSet<PathBuf>,
    /// Exclusive file locks: (node, path) -> the fd holding it (a node's own, even
    /// on a shared disk).
    locks: BTreeMap<(u32, PathBuf), RawFd>,
    /// (lower node, higher node) -> how the network between them is cut.
    partitions: BTreeMap<(u32, u32), PartitionKind>,
    injected: BTreeMap<(u32, PathBuf), VecDeque<Injected>>,
    /// (sending node, receiving node) -> faults for its next chunks, in order.
    net_injected: BTreeMap<(u32, u32), VecDeque<NetFault>>,
    file_ops: usize,
    slot_waiters: VecDeque<TaskRef>,
    stats: IoStats,
    pub(crate) sim_stats: SimStats,
}

fn interest_key(i: Interest) -> u8 {
    match i {
        Interest::Read => 0,
        Interest::Write => 1,
    }
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl SimState {
    pub(crate) fn new(config: SimConfig) -> SimState {
        SimState {
            rng: Rng::stream(config.seed, STREAM_DRIVER),
            config,
            now: START_NANOS,
            seq: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            events: BinaryHeap::new(),
            next_fd: 1000,
            next_port: 40000,
            next_conn: 1,
            next_write: 1,
            fds: BTreeMap::new(),
            listeners: BTreeMap::new(),
            conns: BTreeMap::new(),
            waiters: BTreeMap::new(),
            nodes: vec![Node {
                name: "controller".into(),
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 254)),
                alive: true,
                epoch: 0,
                program: None,
            }],
            disks: BTreeMap::new(),
            shared: BTreeSet::new(),
            locks: BTreeMap::new(),
            partitions: BTreeMap::new(),
            injected: BTreeMap::new(),
            net_injected: BTreeMap::new(),
            file_ops: 0,
            slot_waiters: VecDeque::new(),
            stats: IoStats::default(),
            sim_stats: SimStats::default(),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    fn alloc_fd(&mut self, fd: SimFd) -> RawFd {
        let n = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(n, fd);
        n
    }

    fn wake(&mut self, fd: RawFd, interest: Interest) -> bool {
        let list = self
            .waiters
            .remove(&(fd, interest_key(interest)))
            .unwrap_or_default();
        list.iter().filter(|t| t.wake_ref()).count() > 0
    }

    /// A node crash (`lose_cache`) or stop: its connections reset, its listeners and
    /// files closed. In a crash its disks keep, drop or tear each write not flushed
    /// and each write still in flight; in a stop every write in flight completes and
    /// nothing is lost.
    pub(crate) fn crash_node(&mut self, node: u32, lose_cache: bool) {
        let n = &mut self.nodes[node as usize];
        let epoch = n.epoch;
        n.alive = false;
        n.epoch += 1;
        mix(&mut self.trace, &[4, self.now, node as u64]);
        let fds: Vec<RawFd> = self
            .fds
            .iter()
            .filter(|(_, f)| f.node() == node)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            self.close_fd(fd, true);
        }
        let mut in_flight = self.writes_in_flight(node, epoch);
        let keys: Vec<(u32, PathBuf)> = self
            .disks
            .keys()
            .filter(|(n, _)| *n == node || *n == SHARED_NODE)
            .cloned()
            .collect();
        let SimState {
            disks,
            rng,
            trace,
            sim_stats,
            ..
        } = self;
        for k in keys {
            let writes = in_flight.remove(&k.1).unwrap_or_default();
            if let Some(d) = disks.get_mut(&k) {
                if k.0 == SHARED_NODE {
                    if lose_cache {
                        d.crash_writer(node, writes, rng, trace, sim_stats);
                    } else {
                        d.settle(writes);
                    }
                } else if lose_cache {
                    d.crash(writes, rng, trace, sim_stats);
                } else {
                    d.settle(writes);
                }
            }
        }
    }

    /// The writes of `node`'s boot `epoch` still in flight, per file, in the order
    /// they would have completed, each with a write id given now. Their operations
    /// will complete later with an error (the epoch check), never touching a disk.
    fn writes_in_flight(&mut self, node: u32, epoch: u64) -> BTreeMap<PathBuf, Vec<InFlight>> {
        let mut ops: Vec<(u64, u64, Rc<FileOp>, PathBuf)> = self
            .events
            .iter()
            .filter_map(|Reverse(ev)| match &ev.kind {
                EvKind::FileDone {
                    op,
                    node: n,
                    epoch: e,
                    path,
                    ..
                } if *n == node
                    && *e == epoch
                    && matches!(op.kind(), FileOpKind::Write | FileOpKind::WriteV) =>
                {
                    Some((ev.at, ev.seq, op.clone(), path.clone()))
                }
                _ => None,
            })
            .collect();
        ops.sort_by_key(|(at, seq, _, _)| (*at, *seq));
        let mut out: BTreeMap<PathBuf, Vec<InFlight>> = BTreeMap::new();
        for (_, _, op, path) in ops {
            let mut data = Vec::new();
            for (ptr, len) in segments(&op) {
                // SAFETY: the operation has not completed, so it still holds its
                // buffers (`FileOp::complete` releases them); nothing writes to a
                // write's buffer while it is in flight.
                data.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
            }
            let write = self.next_write;
            self.next_write += 1;
            mix(&mut self.trace, &[0x1f, write, data.len() as u64]);
            out.entry(path).or_default().push(InFlight {
                write,
                writer: node,
                offset: op.iocb().aio_offset as u64,
                data,
            });
        }
        out
    }

    /// Refuses I/O to a task of a crashed or stopped node: a task being unwound (its
    /// destructors run, perhaps after the node restarted), or any task of a node that
    /// is down. Such a task must never touch the node's disks or network, not even
    /// those of its next boot.
    fn refuse_dead(&mut self) -> io::Result<()> {
        let core = crate::sched::core();
        let node = core.current_node();
        if node == 0 || (self.nodes[node as usize].alive && !core.current_cancelled()) {
            return Ok(());
        }
        self.sim_stats.dead_io_refused += 1;
        mix(&mut self.trace, &[0xd1e0, node as u64]);
        Err(err(libc::EIO))
    }

    /// The key of the disk that `node` sees at `path`: its own, or the shared one.
    pub(crate) fn disk_key(&self, node: u32, path: &Path) -> (u32, PathBuf) {
        if self.shared.contains(path) {
            (SHARED_NODE, path.to_path_buf())
        } else {
            (node, path.to_path_buf())
        }
    }

    /// The (node, path) of file descriptor `fd`, the key of its lock: a lock is
    /// the node's own, as `flock` is, even on a shared disk.
    fn lock_key(&self, fd: RawFd) -> io::Result<(u32, PathBuf)> {
        match self.fds.get(&fd) {
            Some(SimFd::File { node, path, .. }) => Ok((*node, path.clone())),
            _ => Err(err(libc::EBADF)),
        }
    }

    /// The disk behind file descriptor `fd`.
    fn file_key(&self, fd: RawFd) -> io::Result<(u32, PathBuf)> {
        match self.fds.get(&fd) {
            Some(SimFd::File { node, path, .. }) => Ok(self.disk_key(*node, path)),
            _ => Err(err(libc::EBADF)),
        }
    }

    /// Releases `fd`'s lock on the disk `key`, if it holds it.
    fn unlock(&mut self, key: (u32, PathBuf), fd: RawFd) {
        if self.locks.get(&key) == Some(&fd) {
            self.locks.remove(&key);
        }
    }

    /// Queues `fault` for the next matching operation whose bytes overlap `bytes`.
    pub(crate) fn inject(&mut self, node: u32, path: PathBuf, fault: DiskFault, bytes: Range<u64>) {
        self.injected
            .entry((node, path))
            .or_default()
            .push_back((fault, bytes));
    }
}

/// The driver half: what the scheduler and `net`/`file` call.
pub(crate) struct SimDriver {
    pub(crate) state: Rc<RefCell<SimState>>,
}

fn node_now() -> u32 {
    crate::sched::core().current_node()
}
