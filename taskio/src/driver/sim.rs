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
//! Disks: a write lands in the device's volatile cache, sector by sector (512 bytes,
//! newest wins); fsync/fdatasync move the file's cached sectors to the durable image,
//! a RWF_DSYNC or O_DSYNC write goes to the durable image itself. A node crash keeps
//! each cached write, drops it, or tears it at a sector boundary (keeps a prefix of
//! its sectors), at random.
//!
//! Network: a connection is two ordered pipes of chunks, each chunk delivered after a
//! random latency (never before the chunk ahead of it). A partition between two
//! nodes resets the connections that cross it and refuses new ones; a crash resets
//! every connection of the node.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::aio::{FileOp, FileOpKind};
use super::{Driver, Interest, Io, IoStats};
use crate::task::TaskRef;
use crate::timer::Instant;

/// Sector size of simulated disks: the granule of caching and tearing.
pub const SECTOR: usize = 512;
/// Bytes a connection's pipe holds in flight before the writer must wait.
const PIPE_BYTES_MAX: usize = 256 * 1024;
/// File operations in flight per runtime (as the real driver's AIO depth).
const FILE_OPS_MAX: usize = 256;
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

/// A fault injected on demand into the next matching disk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    ReadError,
    WriteError,
    CorruptRead,
}

/// splitmix64: the one generator every random choice of a simulation comes from.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> u64 {
        let lo = lo.as_nanos() as u64;
        let hi = (hi.as_nanos() as u64).max(lo);
        lo + self.below(hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    /// The connecting side.
    A,
    /// The accepted side.
    B,
}

#[derive(Default)]
struct Pipe {
    /// (deliver at, bytes); an empty chunk is the end of stream (FIN).
    chunks: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    last_at: u64,
    fin: bool,
}

struct Conn {
    a_fd: RawFd,
    b_fd: Option<RawFd>,
    a_node: u32,
    b_node: u32,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    to_a: Pipe,
    to_b: Pipe,
    reset: bool,
    established: bool,
    refused: bool,
}

impl Conn {
    fn inbound(&mut self, side: Side) -> &mut Pipe {
        match side {
            Side::A => &mut self.to_a,
            Side::B => &mut self.to_b,
        }
    }

    fn outbound(&mut self, side: Side) -> &mut Pipe {
        match side {
            Side::A => &mut self.to_b,
            Side::B => &mut self.to_a,
        }
    }

    fn peer_fd(&self, side: Side) -> Option<RawFd> {
        match side {
            Side::A => self.b_fd,
            Side::B => Some(self.a_fd),
        }
    }
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
}

impl SimFd {
    fn node(&self) -> u32 {
        match self {
            SimFd::Listener { node, .. }
            | SimFd::Stream { node, .. }
            | SimFd::File { node, .. } => *node,
        }
    }
}

/// One simulated disk file: the durable image and the volatile cache over it.
#[derive(Default, Clone)]
pub(crate) struct Disk {
    durable: Vec<u8>,
    /// sector -> (write id, index of the sector within its write, contents)
    cache: BTreeMap<u64, (u64, u64, Box<[u8; SECTOR]>)>,
    len: u64,
}

impl Disk {
    fn sector_view(&self, sector: u64) -> [u8; SECTOR] {
        if let Some((_, _, data)) = self.cache.get(&sector) {
            return **data;
        }
        let mut out = [0u8; SECTOR];
        let start = sector as usize * SECTOR;
        if start < self.durable.len() {
            let end = (start + SECTOR).min(self.durable.len());
            out[..end - start].copy_from_slice(&self.durable[start..end]);
        }
        out
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The durable image alone.
    pub(crate) fn read_durable(&self) -> Vec<u8> {
        self.durable.clone()
    }

    /// What a read sees: the cache over the durable image, up to the length.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let end = (offset + len as u64).min(self.len);
        if end <= offset {
            return Vec::new();
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let sector = pos / SECTOR as u64;
            let within = (pos % SECTOR as u64) as usize;
            let take = ((SECTOR - within) as u64).min(end - pos) as usize;
            out.extend_from_slice(&self.sector_view(sector)[within..within + take]);
            pos += take as u64;
        }
        out
    }

    fn write_durable(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[offset as usize..end].copy_from_slice(data);
    }

    /// A write into the cache (or straight to the durable image when `durable`).
    fn write(&mut self, id: u64, offset: u64, data: &[u8], durable: bool) {
        self.len = self.len.max(offset + data.len() as u64);
        if data.is_empty() {
            return;
        }
        let first = offset / SECTOR as u64;
        let last = (offset + data.len() as u64 - 1) / SECTOR as u64;
        for (index, sector) in (first..=last).enumerate() {
            let mut contents = self.sector_view(sector);
            let s_start = sector * SECTOR as u64;
            let from = offset.max(s_start);
            let to = (offset + data.len() as u64).min(s_start + SECTOR as u64);
            contents[(from - s_start) as usize..(to - s_start) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            if durable {
                self.cache.remove(&sector);
                self.write_durable(s_start, &contents);
            } else {
                self.cache
                    .insert(sector, (id, index as u64, Box::new(contents)));
            }
        }
    }

    fn flush(&mut self) {
        let cache = std::mem::take(&mut self.cache);
        for (sector, (_, _, data)) in cache {
            self.write_durable(sector * SECTOR as u64, &data[..]);
        }
    }

    /// A power loss: each cached write is kept, dropped, or torn (a prefix of its
    /// sectors kept), at random; then the cache is gone.
    fn crash(&mut self, rng: &mut Rng, trace: &mut u64) {
        let cache = std::mem::take(&mut self.cache);
        let mut fate: BTreeMap<u64, u64> = BTreeMap::new(); // write id -> sectors kept
        for (_, (id, _, _)) in cache.iter() {
            if fate.contains_key(id) {
                continue;
            }
            let keep = match rng.below(4) {
                0 | 1 => u64::MAX,
                2 => 0,
                _ => rng.below(64),
            };
            fate.insert(*id, keep);
            mix(trace, &[*id, keep]);
        }
        for (sector, (id, index, data)) in cache {
            if index < fate[&id] {
                self.write_durable(sector * SECTOR as u64, &data[..]);
            }
        }
        // What was only in the cache is gone, and with it any length it added.
        self.len = self.durable.len() as u64;
    }
}

fn mix(h: &mut u64, words: &[u64]) {
    for w in words {
        *h = (*h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

enum EvKind {
    /// Wake whoever waits on (fd, interest).
    Ready(RawFd, Interest),
    /// A connection reaches its listener (or is refused).
    Arrive(u64),
    FileDone {
        op: Rc<FileOp>,
        node: u32,
        epoch: u64,
        path: PathBuf,
        dsync: bool,
    },
}

struct Ev {
    at: u64,
    seq: u64,
    kind: EvKind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
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
    /// Exclusive file locks: (node, path) -> the fd holding it.
    locks: BTreeMap<(u32, PathBuf), RawFd>,
    partitions: BTreeSet<(u32, u32)>,
    injected: BTreeMap<(u32, PathBuf), VecDeque<DiskFault>>,
    file_ops: usize,
    slot_waiters: VecDeque<TaskRef>,
    stats: IoStats,
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
            rng: Rng::new(config.seed ^ 0x005e_ed0f_5111),
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
            locks: BTreeMap::new(),
            partitions: BTreeSet::new(),
            injected: BTreeMap::new(),
            file_ops: 0,
            slot_waiters: VecDeque::new(),
            stats: IoStats::default(),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    fn at(&mut self, at: u64, kind: EvKind) {
        self.seq += 1;
        self.events.push(Reverse(Ev {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn alloc_fd(&mut self, fd: SimFd) -> RawFd {
        let n = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(n, fd);
        n
    }

    fn node_ip(&self, node: u32) -> IpAddr {
        self.nodes[node as usize].ip
    }

    fn node_of_ip(&self, ip: IpAddr) -> Option<u32> {
        self.nodes.iter().position(|n| n.ip == ip).map(|i| i as u32)
    }

    fn partitioned(&self, a: u32, b: u32) -> bool {
        self.partitions.contains(&(a.min(b), a.max(b)))
    }

    /// Maps loopback and unspecified addresses to the node's own address.
    fn own_addr(&self, node: u32, addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_loopback() || addr.ip().is_unspecified() {
            SocketAddr::new(self.node_ip(node), addr.port())
        } else {
            addr
        }
    }

    fn ephemeral_port(&mut self) -> u16 {
        self.next_port = self.next_port.checked_add(1).unwrap_or(40000);
        self.next_port
    }

    fn wake(&mut self, fd: RawFd, interest: Interest) -> bool {
        let list = self
            .waiters
            .remove(&(fd, interest_key(interest)))
            .unwrap_or_default();
        list.iter().filter(|t| t.wake_ref()).count() > 0
    }

    fn stream(&self, fd: RawFd) -> io::Result<(u64, Side)> {
        match self.fds.get(&fd) {
            Some(SimFd::Stream { conn, side, .. }) => Ok((*conn, *side)),
            Some(_) => Err(err(libc::ENOTSOCK)),
            None => Err(err(libc::EBADF)),
        }
    }

    /// Resets a connection: both ends see ECONNRESET; their waiters wake.
    fn reset_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.reset {
            return;
        }
        c.reset = true;
        let fds = [Some(c.a_fd), c.b_fd];
        mix(&mut self.trace, &[0xdead, id]);
        let now = self.now;
        for fd in fds.into_iter().flatten() {
            self.at(now, EvKind::Ready(fd, Interest::Read));
            self.at(now, EvKind::Ready(fd, Interest::Write));
        }
    }

    /// Processes the events due at or before `now`; returns how many tasks woke.
    fn process_due(&mut self) -> usize {
        let mut woken = 0;
        while let Some(Reverse(ev)) = self.events.peek() {
            if ev.at > self.now {
                break;
            }
            let Some(Reverse(ev)) = self.events.pop() else {
                break;
            };
            woken += self.process(ev);
        }
        woken
    }

    fn process(&mut self, ev: Ev) -> usize {
        match ev.kind {
            EvKind::Ready(fd, interest) => {
                mix(
                    &mut self.trace,
                    &[1, ev.at, fd as u64, interest_key(interest) as u64],
                );
                usize::from(self.wake(fd, interest))
            }
            EvKind::Arrive(id) => {
                mix(&mut self.trace, &[2, ev.at, id]);
                self.arrive(id)
            }
            EvKind::FileDone {
                op,
                node,
                epoch,
                path,
                dsync,
            } => {
                mix(&mut self.trace, &[3, ev.at, node as u64]);
                self.file_ops -= 1;
                self.stats.aio_completed += 1;
                let res = if self.nodes[node as usize].epoch != epoch {
                    // The node crashed with this operation in flight: it never
                    // reached the disk.
                    -(libc::EIO as i64)
                } else {
                    self.execute(&op, node, &path, dsync)
                };
                mix(&mut self.trace, &[res as u64]);
                op.complete(res);
                let mut woken = 1;
                while let Some(w) = self.slot_waiters.pop_front() {
                    if w.wake() {
                        woken += 1;
                        break;
                    }
                }
                woken
            }
        }
    }

    fn arrive(&mut self, id: u64) -> usize {
        let Some(c) = self.conns.get(&id) else {
            return 0;
        };
        let (a_fd, a_node, b_addr) = (c.a_fd, c.a_node, c.b_addr);
        let listener = self.listeners.get(&b_addr).copied();
        let target = listener.and_then(|l| match self.fds.get(&l) {
            Some(SimFd::Listener { node, .. }) => Some((l, *node)),
            _ => None,
        });
        let ok = match target {
            Some((_, node)) => self.nodes[node as usize].alive && !self.partitioned(a_node, node),
            None => false,
        };
        let mut woken = 0;
        match (ok, target) {
            (true, Some((lfd, lnode))) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.established = true;
                    c.b_node = lnode;
                }
                if let Some(SimFd::Listener { backlog, .. }) = self.fds.get_mut(&lfd) {
                    backlog.push_back(id);
                }
                woken += usize::from(self.wake(lfd, Interest::Read));
            }
            _ => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.refused = true;
                }
            }
        }
        woken += usize::from(self.wake(a_fd, Interest::Write));
        woken
    }

    fn take_fault(&mut self, node: u32, path: &Path, want: &[DiskFault]) -> Option<DiskFault> {
        let q = self.injected.get_mut(&(node, path.to_path_buf()))?;
        let i = q.iter().position(|f| want.contains(f))?;
        q.remove(i)
    }

    /// Performs a file operation on the disk image; returns bytes or -errno.
    fn execute(&mut self, op: &FileOp, node: u32, path: &Path, dsync: bool) -> i64 {
        let iocb = op.iocb();
        let key = (node, path.to_path_buf());
        let kind = op.kind();
        match kind {
            FileOpKind::Fsync | FileOpKind::Fdatasync => {
                if let Some(d) = self.disks.get_mut(&key) {
                    d.flush();
                }
                0
            }
            FileOpKind::Read | FileOpKind::ReadV => {
                let injected =
                    self.take_fault(node, path, &[DiskFault::ReadError, DiskFault::CorruptRead]);
                if injected == Some(DiskFault::ReadError)
                    || self.rng.chance(self.config.faults.disk_read_error)
                {
                    return -(libc::EIO as i64);
                }
                let segs = segments(op);
                let total: usize = segs.iter().map(|s| s.1).sum();
                let Some(disk) = self.disks.get(&key) else {
                    return -(libc::EBADF as i64);
                };
                let mut data = disk.read(iocb.aio_offset as u64, total);
                if !data.is_empty()
                    && (injected == Some(DiskFault::CorruptRead)
                        || self.rng.chance(self.config.faults.disk_corrupt_read))
                {
                    let i = self.rng.below(data.len() as u64) as usize;
                    data[i] ^= 0x5a;
                }
                let mut done = 0;
                for (ptr, len) in segs {
                    let n = len.min(data.len() - done);
                    // SAFETY: `ptr..ptr+len` is a buffer of the operation, which holds
                    // its storage until `complete`; nothing else accesses it while the
                    // operation is in flight (the submitter is parked).
                    unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), ptr, n) };
                    done += n;
                    if done == data.len() {
                        break;
                    }
                }
                self.stats.bytes_read += done as u64;
                done as i64
            }
            FileOpKind::Write | FileOpKind::WriteV => {
                let injected = self.take_fault(node, path, &[DiskFault::WriteError]);
                if injected.is_some() || self.rng.chance(self.config.faults.disk_write_error) {
                    return -(libc::EIO as i64);
                }
                let mut data = Vec::new();
                for (ptr, len) in segments(op) {
                    // SAFETY: as for reads; the kernel (here: we) only reads the buffer.
                    data.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
                }
                let durable = dsync || iocb.aio_rw_flags & libaio_sys::RWF_DSYNC != 0;
                let id = self.next_write;
                self.next_write += 1;
                let Some(disk) = self.disks.get_mut(&key) else {
                    return -(libc::EBADF as i64);
                };
                disk.write(id, iocb.aio_offset as u64, &data, durable);
                self.stats.bytes_written += data.len() as u64;
                data.len() as i64
            }
        }
    }

    /// A node crash: its connections reset, its listeners and files closed, its
    /// disks lose or tear what was not flushed.
    pub(crate) fn crash_node(&mut self, node: u32, lose_cache: bool) {
        let n = &mut self.nodes[node as usize];
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
        if lose_cache {
            let keys: Vec<(u32, PathBuf)> = self
                .disks
                .keys()
                .filter(|(n, _)| *n == node)
                .cloned()
                .collect();
            let SimState {
                disks, rng, trace, ..
            } = self;
            for k in keys {
                if let Some(d) = disks.get_mut(&k) {
                    d.crash(rng, trace);
                }
            }
        }
    }

    /// The disk behind file descriptor `fd`.
    fn file_key(&self, fd: RawFd) -> io::Result<(u32, PathBuf)> {
        match self.fds.get(&fd) {
            Some(SimFd::File { node, path, .. }) => Ok((*node, path.clone())),
            _ => Err(err(libc::EBADF)),
        }
    }

    /// Releases `fd`'s lock on the disk `key`, if it holds it.
    fn unlock(&mut self, key: (u32, PathBuf), fd: RawFd) {
        if self.locks.get(&key) == Some(&fd) {
            self.locks.remove(&key);
        }
    }

    fn close_fd(&mut self, fd: RawFd, reset: bool) {
        self.waiters.remove(&(fd, 0));
        self.waiters.remove(&(fd, 1));
        match self.fds.remove(&fd) {
            Some(SimFd::Listener { addr, backlog, .. }) => {
                self.listeners.remove(&addr);
                for id in backlog {
                    self.reset_conn(id);
                }
            }
            Some(SimFd::Stream { conn, side, .. }) => {
                if reset {
                    self.reset_conn(conn);
                } else if let Some(c) = self.conns.get_mut(&conn) {
                    // Orderly close: the peer reads what was sent, then end of stream.
                    let now = self.now;
                    let lat = self.rng.between(self.config.net_latency);
                    let pipe = c.outbound(side);
                    if !pipe.fin {
                        pipe.fin = true;
                        let at = (now + lat).max(pipe.last_at);
                        pipe.last_at = at;
                        pipe.chunks.push_back((at, Vec::new()));
                        if let Some(peer) = c.peer_fd(side) {
                            self.at(at, EvKind::Ready(peer, Interest::Read));
                        }
                    }
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    match side {
                        Side::A => c.a_fd = -1,
                        Side::B => c.b_fd = None,
                    }
                    if c.a_fd == -1 && c.b_fd.is_none() {
                        self.conns.remove(&conn);
                    }
                }
            }
            Some(SimFd::File { node, path, .. }) => self.unlock((node, path), fd),
            None => {}
        }
    }

    pub(crate) fn partition(&mut self, a: u32, b: u32) {
        self.partitions.insert((a.min(b), a.max(b)));
        let crossing: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| (c.a_node, c.b_node) == (a, b) || (c.a_node, c.b_node) == (b, a))
            .map(|(id, _)| *id)
            .collect();
        for id in crossing {
            self.reset_conn(id);
        }
    }

    pub(crate) fn heal(&mut self, a: u32, b: u32) {
        self.partitions.remove(&(a.min(b), a.max(b)));
    }

    pub(crate) fn inject(&mut self, node: u32, path: PathBuf, fault: DiskFault) {
        self.injected
            .entry((node, path))
            .or_default()
            .push_back(fault);
    }
}

/// (pointer, length) of each buffer segment of a read or write.
fn segments(op: &FileOp) -> Vec<(*mut u8, usize)> {
    let iocb = op.iocb();
    match op.kind() {
        FileOpKind::Read | FileOpKind::Write => {
            vec![(iocb.aio_buf as usize as *mut u8, iocb.aio_nbytes as usize)]
        }
        FileOpKind::ReadV | FileOpKind::WriteV => op
            .iovecs()
            .iter()
            .map(|v| (v.iov_base.cast::<u8>(), v.iov_len))
            .collect(),
        FileOpKind::Fsync | FileOpKind::Fdatasync => Vec::new(),
    }
}

/// The driver half: what the scheduler and `net`/`file` call.
pub(crate) struct SimDriver {
    pub(crate) state: Rc<RefCell<SimState>>,
}

fn node_now() -> u32 {
    crate::sched::core().current_node()
}

impl Driver for SimDriver {
    fn now(&self) -> Instant {
        self.state.borrow().now()
    }

    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.stats.polls += 1;
        loop {
            let next = s.events.peek().map(|Reverse(e)| e.at);
            let due_by_deadline = |t: u64| deadline.is_none_or(|d| t <= d.as_nanos());
            match next {
                Some(t) if due_by_deadline(t) || t <= s.now => {
                    s.now = s.now.max(t);
                    if s.process_due() > 0 {
                        return Ok(());
                    }
                    // Nothing woke (stale events): look further.
                }
                _ => {
                    if let Some(d) = deadline {
                        s.now = s.now.max(d.as_nanos());
                    }
                    s.stats.polls_empty += 1;
                    return Ok(());
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.state.borrow().events.len()
    }

    fn io(&mut self) -> Option<&mut dyn Io> {
        Some(self)
    }
}

impl Io for SimDriver {
    fn listen(&mut self, addr: SocketAddr, _backlog: u32) -> io::Result<RawFd> {
        let node = node_now();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let mut addr = s.own_addr(node, addr);
        if addr.ip() != s.node_ip(node) {
            return Err(err(libc::EADDRNOTAVAIL));
        }
        if addr.port() == 0 {
            addr.set_port(s.ephemeral_port());
        }
        if s.listeners.contains_key(&addr) {
            return Err(err(libc::EADDRINUSE));
        }
        let fd = s.alloc_fd(SimFd::Listener {
            node,
            addr,
            backlog: VecDeque::new(),
        });
        s.listeners.insert(addr, fd);
        Ok(fd)
    }

    fn accept(&mut self, fd: RawFd) -> io::Result<(RawFd, SocketAddr)> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (node, id) = match s.fds.get_mut(&fd) {
            Some(SimFd::Listener { node, backlog, .. }) => match backlog.pop_front() {
                Some(id) => (*node, id),
                None => return Err(err(libc::EAGAIN)),
            },
            Some(_) => return Err(err(libc::EINVAL)),
            None => return Err(err(libc::EBADF)),
        };
        let conn_fd = s.alloc_fd(SimFd::Stream {
            node,
            conn: id,
            side: Side::B,
        });
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ECONNABORTED));
        };
        c.b_fd = Some(conn_fd);
        let peer = c.a_addr;
        let reset = c.reset;
        mix(&mut s.trace, &[5, conn_fd as u64, id]);
        if reset {
            s.at(s.now, EvKind::Ready(conn_fd, Interest::Read));
        }
        Ok((conn_fd, peer))
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<RawFd> {
        let node = node_now();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let b_addr = s.own_addr(node, addr);
        let port = s.ephemeral_port();
        let a_addr = SocketAddr::new(s.node_ip(node), port);
        let id = s.next_conn;
        s.next_conn += 1;
        let fd = s.alloc_fd(SimFd::Stream {
            node,
            conn: id,
            side: Side::A,
        });
        let b_node = s.node_of_ip(b_addr.ip()).unwrap_or(u32::MAX);
        s.conns.insert(
            id,
            Conn {
                a_fd: fd,
                b_fd: None,
                a_node: node,
                b_node,
                a_addr,
                b_addr,
                to_a: Pipe::default(),
                to_b: Pipe::default(),
                reset: false,
                established: false,
                refused: false,
            },
        );
        let lat = s.rng.between(s.config.net_latency);
        let at = s.now + lat;
        s.at(at, EvKind::Arrive(id));
        Ok(fd)
    }

    fn connect_result(&mut self, fd: RawFd) -> io::Result<()> {
        let s = self.state.borrow();
        let (id, _) = s.stream(fd)?;
        let Some(c) = s.conns.get(&id) else {
            return Err(err(libc::ECONNRESET));
        };
        if c.refused {
            Err(err(libc::ECONNREFUSED))
        } else if c.reset {
            Err(err(libc::ECONNRESET))
        } else if c.established {
            Ok(())
        } else {
            Err(err(libc::ENOTCONN))
        }
    }

    fn local_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr> {
        let s = self.state.borrow();
        match s.fds.get(&fd) {
            Some(SimFd::Listener { addr, .. }) => Ok(*addr),
            Some(SimFd::Stream { conn, side, .. }) => {
                let c = s.conns.get(conn).ok_or_else(|| err(libc::ENOTCONN))?;
                Ok(if *side == Side::A { c.a_addr } else { c.b_addr })
            }
            Some(SimFd::File { .. }) => Err(err(libc::ENOTSOCK)),
            None => Err(err(libc::EBADF)),
        }
    }

    fn peer_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr> {
        let s = self.state.borrow();
        let (id, side) = s.stream(fd)?;
        let c = s.conns.get(&id).ok_or_else(|| err(libc::ENOTCONN))?;
        Ok(if side == Side::A { c.b_addr } else { c.a_addr })
    }

    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (id, side) = s.stream(fd)?;
        let now = s.now;
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ECONNRESET));
        };
        if c.reset {
            return Err(err(libc::ECONNRESET));
        }
        let was_full = c.inbound(side).bytes >= PIPE_BYTES_MAX;
        let pipe = c.inbound(side);
        let mut n = 0;
        while n < buf.len() {
            let Some((at, chunk)) = pipe.chunks.front_mut() else {
                break;
            };
            if *at > now {
                break;
            }
            if chunk.is_empty() {
                // End of stream: report it only when nothing was read in this call.
                if n == 0 {
                    return Ok(0);
                }
                break;
            }
            let take = chunk.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&chunk[..take]);
            chunk.drain(..take);
            n += take;
            pipe.bytes -= take;
            if chunk.is_empty() {
                pipe.chunks.pop_front();
            }
        }
        if n == 0 {
            return Err(err(libc::EAGAIN));
        }
        let peer = c.peer_fd(side);
        if was_full && let Some(peer) = peer {
            s.at(now, EvKind::Ready(peer, Interest::Write));
        }
        s.stats.bytes_read += n as u64;
        Ok(n)
    }

    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (id, side) = s.stream(fd)?;
        let reset_now = s.rng.chance(s.config.faults.net_reset);
        let lat = s.rng.between(s.config.net_latency);
        let now = s.now;
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ECONNRESET));
        };
        if c.reset {
            return Err(err(libc::ECONNRESET));
        }
        if !c.established {
            return Err(err(libc::ENOTCONN));
        }
        if reset_now {
            s.reset_conn(id);
            return Err(err(libc::ECONNRESET));
        }
        let peer = c.peer_fd(side);
        let pipe = c.outbound(side);
        if pipe.fin {
            return Err(err(libc::EPIPE));
        }
        let room = PIPE_BYTES_MAX.saturating_sub(pipe.bytes);
        if room == 0 {
            return Err(err(libc::EAGAIN));
        }
        let n = room.min(buf.len());
        let at = (now + lat).max(pipe.last_at);
        pipe.last_at = at;
        pipe.bytes += n;
        pipe.chunks.push_back((at, buf[..n].to_vec()));
        if let Some(peer) = peer {
            s.at(at, EvKind::Ready(peer, Interest::Read));
        }
        mix(&mut s.trace, &[6, fd as u64, n as u64, at]);
        s.stats.bytes_written += n as u64;
        Ok(n)
    }

    fn shutdown(&mut self, fd: RawFd, how: Shutdown) -> io::Result<()> {
        if how == Shutdown::Read {
            return Ok(());
        }
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (id, side) = s.stream(fd)?;
        let lat = s.rng.between(s.config.net_latency);
        let now = s.now;
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ENOTCONN));
        };
        let peer = c.peer_fd(side);
        let pipe = c.outbound(side);
        if !pipe.fin {
            pipe.fin = true;
            let at = (now + lat).max(pipe.last_at);
            pipe.last_at = at;
            pipe.chunks.push_back((at, Vec::new()));
            if let Some(peer) = peer {
                s.at(at, EvKind::Ready(peer, Interest::Read));
            }
        }
        Ok(())
    }

    fn register(&mut self, fd: RawFd) -> io::Result<()> {
        if self.state.borrow().fds.contains_key(&fd) {
            Ok(())
        } else {
            Err(err(libc::EBADF))
        }
    }

    fn wait(&mut self, fd: RawFd, interest: Interest, task: TaskRef) -> io::Result<()> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if !s.fds.contains_key(&fd) {
            return Err(err(libc::EBADF));
        }
        s.waiters
            .entry((fd, interest_key(interest)))
            .or_default()
            .push(task);
        // Readiness that is already there (data delivered, a reset) wakes at once.
        let ready_now = match s.fds.get(&fd) {
            Some(SimFd::Stream { conn, side, .. }) => match s.conns.get(conn) {
                None => true,
                Some(c) if c.reset || c.refused => true,
                Some(c) => match interest {
                    Interest::Read => {
                        // Data already on its way wakes the reader when it lands (a
                        // send before the accept had no reader fd to schedule).
                        let p = if *side == Side::A { &c.to_a } else { &c.to_b };
                        match p.chunks.front() {
                            Some((at, _)) if *at > s.now => {
                                let at = *at;
                                s.at(at, EvKind::Ready(fd, interest));
                                false
                            }
                            Some(_) => true,
                            None => false,
                        }
                    }
                    Interest::Write => {
                        let p = if *side == Side::A { &c.to_b } else { &c.to_a };
                        c.established && p.bytes < PIPE_BYTES_MAX
                    }
                },
            },
            Some(SimFd::Listener { backlog, .. }) => !backlog.is_empty(),
            _ => false,
        };
        if ready_now {
            let now = s.now;
            s.at(now, EvKind::Ready(fd, interest));
        }
        Ok(())
    }

    fn cancel_wait(&mut self, fd: RawFd, interest: Interest) {
        self.state
            .borrow_mut()
            .waiters
            .remove(&(fd, interest_key(interest)));
    }

    fn close(&mut self, fd: RawFd) {
        self.state.borrow_mut().close_fd(fd, false);
    }

    fn forget(&mut self, fd: RawFd) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.waiters.remove(&(fd, 0));
        s.waiters.remove(&(fd, 1));
    }

    fn open(&mut self, path: &Path, flags: i32, _mode: u32) -> io::Result<RawFd> {
        let node = node_now();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let key = (node, path.to_path_buf());
        if !s.disks.contains_key(&key) {
            if flags & libc::O_CREAT == 0 {
                return Err(err(libc::ENOENT));
            }
            s.disks.insert(key.clone(), Disk::default());
        }
        if flags & libc::O_TRUNC != 0
            && let Some(d) = s.disks.get_mut(&key)
        {
            *d = Disk::default();
        }
        let fd = s.alloc_fd(SimFd::File {
            node,
            path: path.to_path_buf(),
            dsync: flags & libc::O_DSYNC != 0,
        });
        Ok(fd)
    }

    fn lock_exclusive(&mut self, fd: RawFd) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let key = s.file_key(fd)?;
        match s.locks.get(&key) {
            Some(&holder) if holder != fd => Err(err(libc::EWOULDBLOCK)),
            _ => {
                s.locks.insert(key, fd);
                Ok(())
            }
        }
    }

    fn unlock(&mut self, fd: RawFd) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let key = s.file_key(fd)?;
        s.unlock(key, fd);
        Ok(())
    }

    fn file_len(&mut self, fd: RawFd) -> io::Result<u64> {
        let s = self.state.borrow();
        let key = s.file_key(fd)?;
        Ok(s.disks.get(&key).map_or(0, |d| d.len))
    }

    fn set_file_len(&mut self, fd: RawFd, len: u64) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let key = s.file_key(fd)?;
        let d = s.disks.entry(key).or_default();
        // Metadata changes are durable at once in this model.
        d.len = len;
        d.durable.resize(len as usize, 0);
        d.cache.retain(|sector, _| sector * (SECTOR as u64) < len);
        Ok(())
    }

    fn submit(&mut self, op: Rc<FileOp>) -> io::Result<()> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let fd = op.iocb().aio_fildes as RawFd;
        let (node, path, dsync) = match s.fds.get(&fd) {
            Some(SimFd::File { node, path, dsync }) => (*node, path.clone(), *dsync),
            _ => return Err(err(libc::EBADF)),
        };
        if s.file_ops >= FILE_OPS_MAX {
            return Err(err(libc::EAGAIN));
        }
        let mut lat = s.rng.between(s.config.disk_latency);
        if s.rng.chance(s.config.faults.disk_latency_spike) {
            lat += 10_000_000 + s.rng.below(90_000_000);
        }
        let epoch = s.nodes[node as usize].epoch;
        let at = s.now + lat;
        s.file_ops += 1;
        s.stats.aio_submitted += 1;
        mix(&mut s.trace, &[7, fd as u64, at]);
        s.at(
            at,
            EvKind::FileDone {
                op,
                node,
                epoch,
                path,
                dsync,
            },
        );
        Ok(())
    }

    fn submit_slots(&self) -> usize {
        FILE_OPS_MAX - self.state.borrow().file_ops
    }

    fn wait_slot(&mut self, task: TaskRef) {
        self.state.borrow_mut().slot_waiters.push_back(task);
    }

    fn count_bytes(&mut self, _read: u64, _written: u64) {
        // The simulator counts bytes where it moves them.
    }

    fn stats(&self) -> IoStats {
        let s = self.state.borrow();
        IoStats {
            aio_in_flight: s.file_ops,
            fd_waiters: s.waiters.values().map(Vec::len).sum(),
            ..s.stats
        }
    }
}
