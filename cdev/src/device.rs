//! A cache device on its taskio runtime: the client operations over the DTM, the
//! primary vSSD and the backing store, the cache modes and the destage task.
//!
//! Everything of a device lives on one runtime (single-threaded, `Rc` inside): the
//! server hands each connection that opened the device to that runtime, so a request
//! never crosses threads.
//!
//! - **Reads**: each line a hit on the primary vSSD is served from it; a run of
//!   missed lines is read from the backing store in one I/O under the DTM's lock of
//!   those lines (a write landing meanwhile is seen: each line is looked up again
//!   under the lock) and inserted clean, unless the mode is pass-through or the read
//!   continues a sequential stream longer than `seq_cutoff_bytes`.
//! - **Writes** hold their lines in the device's [`Gate`] from the read-modify-write
//!   of their partial lines (the old bytes from the cache, else the backing store)
//!   to their acknowledgement. Write-back: one `Dtm::write` of the whole lines, on
//!   every replica when it returns. The other modes drop the lines' clean copies
//!   from every replica, then write the backing store under the DTM's lock of the
//!   lines (no destage or fill in between), fdatasync, and write-through caches them
//!   clean again: no crash leaves a cached copy older than the backing store. A line
//!   dirty in the cache (written back before a mode change, or found by recovery)
//!   would be undone by its destage: such a write goes through the DTM first and its
//!   lines are destaged at once.
//! - **Destage** ([`Device::open`] starts its task): between the watermarks, and
//!   whenever dirty lines wait while no request came for [`IDLE_AFTER`], it walks the
//!   vSSD's ordered dirty index from a cursor, takes a run of adjacent dirty lines
//!   (at most [`DESTAGE_RUN_BYTES_MAX`]), and under the DTM's lock of the run: makes
//!   reads the dirty versions, waits for those versions' COMMITs on every member and
//!   makes them durable (`Dtm::flush_trans`: not for other lines' writes in flight),
//!   writes them to the backing store, fdatasyncs, then marks each clean on every
//!   replica at the version it wrote (`Dtm::clean`). Up to [`DESTAGE_RUNS_MAX`] runs
//!   are in flight at once, each a task on lines no other run holds; while clients
//!   are served, [`DESTAGE_RUNS_YIELDING`] (destage yields to client I/O), unless
//!   the cache is nearly full of dirty lines.
//! - **The RAM tier** ([`crate::ramcache`], `ram_cache_bytes`): a read looks there
//!   first, after the DTM's checks of a vSSD read (a fenced or closed device serves
//!   nothing from it); hits and fills of the vSSD and fills from the backing store
//!   are copied there (not those of a bypassing read), and so are the lines a write
//!   leaves in write-back and write-through. Every change of lines' bytes runs
//!   through [`Inner::changing`], which drops their copies before and after it.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::{Rc, Weak};
use std::time::Duration;

use dtm::{
    Dtm, DtmConfig, LineLock, LocalReplica, LossPolicy, RemoteReplica, Replica, ReplicaError,
    ReplicaErrorKind,
};
use taskio::{AlignedBuf, Builder, Instant, JoinHandle, Rendez, now, yield_now};
use vssd::layout::{FormatParams, Geometry, LINE_SIZE_MAX, LINE_SIZE_MIN, LOG_BYTES_MIN};
use vssd::map::State;
use vssd::{Options, Vssd, format};

use crate::backing::{BackingStore, Next, open_file};
use crate::config::{CacheMode, DeviceConfig, DeviceSettings, ReplicaLoss};
use crate::error::CdevError;
use crate::gate::Gate;
use crate::latency::Histogram;
use crate::ramcache::RamCache;

/// Block size of every device: offsets and lengths are multiples of it.
pub const BLOCK_SIZE: u32 = 512;
/// Longest READ or WRITE.
pub const IO_LEN_MAX: u32 = rpc::limits::DATA_LEN_MAX;
/// Bytes of zeroes per device write when [`Device::write_zeroes`] writes them.
pub const ZERO_CHUNK_BYTES_MAX: u64 = 256 * 1024;
/// Extents one [`Device::block_status`] returns at most (a client asks again for the
/// rest of its range).
pub const EXTENTS_MAX: usize = 1024;
/// Lines one [`Device::block_status`] looks at most (its reply then covers a prefix
/// of the range).
pub const STATUS_LINES_MAX: u64 = 1 << 16;
/// Longest backing-store write of one destage run.
pub const DESTAGE_RUN_BYTES_MAX: u64 = 1 << 20;
/// Dirty lines listed from the index per destage step.
const DESTAGE_LIST_LINES: usize = 256;
/// With dirty lines below the high watermark, destage runs once no request came for
/// this long.
pub const IDLE_AFTER: Duration = Duration::from_millis(100);
/// How long the destage task sleeps between looks at the watermarks and the idle
/// time when nothing wakes it.
const DESTAGE_POLL: Duration = Duration::from_millis(50);
/// Destage runs in flight at once (each its own backing write and fdatasync): at
/// most this many times [`DESTAGE_RUN_BYTES_MAX`] of destage I/O in flight.
pub const DESTAGE_RUNS_MAX: usize = 4;
/// Destage runs in flight at once while clients are served (a request in flight,
/// or one within [`CLIENT_RECENT`]) and the cache is not nearly full of dirty lines:
/// destage yields to client I/O. `tdrv bench cdev` (DEVELOPERS.md): with
/// [`DESTAGE_RUNS_MAX`] runs in flight the foreground's p99 was 2.9x idle's (the
/// reach is 2x), destaging 93 MB/s; with one, 1.3x, 0.4x and 2.8x in three runs,
/// destaging 35 to 43 MB/s (on a shared, loaded machine: idle's p99 itself varied
/// from 0.45 to 441 ms between samples, so the p99s mostly measure the machine).
/// Runs are also shorter then ([`DESTAGE_RUN_BYTES_YIELDING`]).
pub const DESTAGE_RUNS_YIELDING: usize = 1;
/// Longest backing-store write of one destage run while destage yields to clients
/// (see [`DESTAGE_RUNS_YIELDING`]): a shorter write holds the disk from their reads
/// for less time.
pub const DESTAGE_RUN_BYTES_YIELDING: u64 = 128 << 10;
/// A request within this long counts as clients being served.
const CLIENT_RECENT: Duration = Duration::from_millis(10);
/// Dirty lines at which destage runs [`DESTAGE_RUNS_MAX`] whatever the clients do
/// (percent of the cache's lines): writers are about to wait for room.
const DESTAGE_URGENT_PCT: u64 = 90;
/// The window over which STAT's `destage.rate_lines_per_s` is measured.
const DESTAGE_RATE_WINDOW: Duration = Duration::from_secs(1);
/// After a run whose lines were locked, the task waits this long before the next.
const DESTAGE_BUSY_WAIT: Duration = Duration::from_millis(1);
/// After a failed destage run (the backing store failed), the task waits this long.
const DESTAGE_RETRY: Duration = Duration::from_millis(500);
/// Longest wait of a write for the lines another write holds.
const GATE_WAIT_MAX: Duration = dtm::config::WAIT_MAX_DEFAULT;
/// The member id of the device's original primary vSSD in its epochs.
const PRIMARY: u64 = 0;
/// The log takes 1/LOG_SHARE of a vSSD formatted by `open`.
const LOG_SHARE: u64 = 8;

const _: () = assert!(BLOCK_SIZE.is_power_of_two() && LINE_SIZE_MIN.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(IO_LEN_MAX.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(
    ZERO_CHUNK_BYTES_MAX.is_multiple_of(BLOCK_SIZE as u64)
        && ZERO_CHUNK_BYTES_MAX <= IO_LEN_MAX as u64
);
const _: () = assert!(EXTENTS_MAX >= 1 && STATUS_LINES_MAX >= 1);
const _: () = assert!(DESTAGE_RUN_BYTES_MAX >= LINE_SIZE_MAX as u64);
const _: () = assert!(DESTAGE_RUNS_MAX >= 1);
const _: () = assert!(DESTAGE_RUNS_YIELDING >= 1 && DESTAGE_RUNS_YIELDING < DESTAGE_RUNS_MAX);
const _: () =
    assert!(DESTAGE_URGENT_PCT <= 100 && CLIENT_RECENT.as_millis() < IDLE_AFTER.as_millis());
const _: () = assert!(DESTAGE_LIST_LINES as u64 >= DESTAGE_RUN_BYTES_MAX / LINE_SIZE_MIN as u64);

/// How [`Device::open`] treats missing files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Format the vSSD and create the (sparse) backing file when they are missing.
    pub create: bool,
    /// The size of a backing file created by `create` (0: a missing backing store is
    /// an error even with `create`).
    pub backing_bytes: u64,
}

/// What the recovery of the device's last open did (DEVICE_TAKEOVER's answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The epoch the device serves at.
    pub epoch: u64,
    /// In-doubt trans committed, and aborted.
    pub committed: u64,
    pub aborted: u64,
    /// Damaged copies repaired from an intact one.
    pub repaired: u64,
}

/// What a client is told at DEVICE_OPEN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The backing store's size.
    pub size_bytes: u64,
    /// [`BLOCK_SIZE`].
    pub block_size: u32,
    /// Longest READ or WRITE ([`IO_LEN_MAX`]).
    pub io_len_max: u32,
    /// Bytes per cache line.
    pub line_size: u32,
    pub read_only: bool,
}

impl DeviceInfo {
    /// The wire's form (DEVICE_OPEN reply).
    pub fn wire(&self) -> rpc::DeviceInfo {
        rpc::DeviceInfo {
            size_bytes: self.size_bytes,
            block_size: self.block_size,
            io_len_max: self.io_len_max,
            read_only: self.read_only,
        }
    }
}

/// How [`Device::write_zeroes`] may zero a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zeroing {
    /// Zeroes written as data: the range stays allocated (NBD's NO_HOLE).
    Allocate,
    /// The whole lines inside the range may be dropped from the cache and punched
    /// out of the backing store; partial lines are written.
    Punch,
    /// Punched, and only when the whole range can be (line-aligned, a backing store
    /// that punches holes); otherwise nothing is done (NBD's FAST_ZERO).
    FastOnly,
}

/// One extent of [`Device::block_status`]: `len` bytes that are data, or a hole
/// (reads as zeroes, nothing allocated in the cache or the backing store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub hole: bool,
}

/// How a destage step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A run destaged: how many lines it wrote.
    Wrote(u64),
    /// Every line of the run was locked: left for later.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DevState {
    Open,
    Closing,
    Closed,
}

/// Counters of STAT (see [`Device::stat`]).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    read_hit_lines: u64,
    read_miss_lines: u64,
    read_hits: u64,
    read_misses: u64,
    read_partial_hits: u64,
    read_pass_through: u64,
    write_hits: u64,
    write_pass_through: u64,
    fills: u64,
    blocks_read_client: u64,
    blocks_written_client: u64,
    blocks_read_backing: u64,
    blocks_written_backing: u64,
    blocks_read_cache: u64,
    blocks_written_cache: u64,
    errors_invalid: u64,
    errors_cache: u64,
    errors_backing: u64,
    destage_runs: u64,
    destage_lines: u64,
    destage_errors: u64,
    /// The most destage runs ever in flight at once (a high-water mark).
    destage_runs_in_flight_max: u64,
    mode_changes: u64,
    /// Reads served from the RAM tier alone, and lines served from it.
    ram_hits: u64,
    ram_hit_lines: u64,
}

/// The destage watermarks and the sequential cutoff of a running device.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    high_pct: u8,
    low_pct: u8,
    /// Dirty lines at which destage starts, and at or below which it stops.
    high_lines: u64,
    low_lines: u64,
    seq_cutoff_bytes: u64,
}

impl Tuning {
    /// The tuning of a cache of `capacity` lines (watermarks checked by
    /// [`check_watermarks`]).
    fn new(capacity: u64, high_pct: u8, low_pct: u8, seq_cutoff_bytes: u64) -> Tuning {
        let pct = |p: u8| capacity * u64::from(p) / 100;
        Tuning {
            high_pct,
            low_pct,
            high_lines: pct(high_pct).max(1),
            low_lines: pct(low_pct),
            seq_cutoff_bytes,
        }
    }
}

/// The sequential-read detector: where the last read ended and how long the stream
/// of reads, each starting where the previous ended, is.
#[derive(Clone, Copy, Default)]
struct Stream {
    next: u64,
    bytes: u64,
}

struct Inner {
    name: String,
    config: DeviceConfig,
    mode: Cell<CacheMode>,
    dtm: Dtm,
    recovered: Recovered,
    vssd: Vssd,
    backing: Rc<BackingStore>,
    line_size: u64,
    /// The device's size in lines (the backing store's).
    lines: u64,
    /// The settings DEVICE_SET changes online besides the mode ([`Device::set`]).
    tuning: Cell<Tuning>,
    gate: Rc<Gate>,
    state: Cell<DevState>,
    in_flight: Cell<u64>,
    drained: Rendez,
    stream: Cell<Stream>,
    last_request: Cell<Instant>,
    /// Wakes the destage task (close, a write past the high watermark, a run's end).
    kick: Rc<Rendez>,
    destage: RefCell<Option<JoinHandle<()>>>,
    /// The destage runs in flight (their lines), at most [`DESTAGE_RUNS_MAX`].
    runs: RefCell<Vec<(u64, u64)>>,
    runs_done: Rendez,
    /// Set by a run that found its lines locked or failed: the destage task pauses.
    destage_pause: Cell<Option<Duration>>,
    /// When each line dirty since it was last clean became dirty (pruned lazily:
    /// an entry whose line is no longer dirty is stale).
    dirty_since: RefCell<std::collections::BTreeMap<u64, Instant>>,
    /// `destage.rate_lines_per_s`: the window's start and lines, the last rate.
    rate: Cell<(Instant, u64, u64)>,
    counters: Cell<Counters>,
    /// Latencies of the client operations, by [`TIMED`]'s order.
    latency: RefCell<[Histogram; TIMED.len()]>,
    /// The simulator's `--buggy` variant: writes skip the gate ([`Device::break_rmw_lock`]).
    rmw_unlocked: Cell<bool>,
    /// Line buffers of reads that ended, for the next reads: a new one each read (an
    /// aligned, zeroed allocation) was 5% of a device runtime's CPU serving 4k reads
    /// at queue depth 32 (perf of cvad under `cvacli bench`). At most
    /// [`SPARE_LINE_BUFS_MAX`].
    spare_line_bufs: RefCell<Vec<AlignedBuf>>,
    /// Copies of recent lines, in front of the vSSD (never borrowed across a yield).
    ram: RefCell<RamCache>,
}

/// Line buffers a device keeps for its reads: one per read in flight from two
/// sessions at cvad's default queue depth (32); more reads at once allocate their
/// own. At 64 KiB lines, 4 MiB a device.
const SPARE_LINE_BUFS_MAX: usize = 64;

/// The operations whose latencies STAT reports.
const TIMED: [&str; 4] = ["read", "write", "flush", "discard"];

/// One open cache device (cheap to clone: every clone is the same device).
#[derive(Clone)]
pub struct Device {
    inner: Rc<Inner>,
}

/// A request counted in flight until dropped ([`Device::close`] drains them).
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let n = self.0.in_flight.get() - 1;
        self.0.in_flight.set(n);
        if n == 0 {
            self.0.drained.wakeup_all();
        }
    }
}

impl Device {
    /// Opens the device of `config` on the calling runtime: opens (or, with
    /// `options.create`, creates and formats) the primary vSSD and the backing store,
    /// recovers through the DTM (the local replica, member `config.local_member`
    /// (0, or the member it was when this cvad took the device over), alone when
    /// `config.replicas` is empty; a `RemoteReplica` for each configured peer that
    /// answers), starts the DTM and the destage task.
    ///
    /// The peers are reached with a default client configuration (no secret): see
    /// [`Device::open_with`].
    pub fn open(config: &DeviceConfig, options: OpenOptions) -> Result<Device, CdevError> {
        let peers = rpc::ClientConfig {
            name: format!("cvad-{}", config.name),
            ..rpc::ClientConfig::default()
        };
        Device::open_with(config, options, &peers)
    }

    /// [`Device::open`], reaching the peers that hold replicas with `peers` (their
    /// secret, the calls' timeout: a slow replica stalls a write at most that long
    /// before the loss policy applies).
    pub fn open_with(
        config: &DeviceConfig,
        options: OpenOptions,
        peers: &rpc::ClientConfig,
    ) -> Result<Device, CdevError> {
        Device::open_as(config, options, peers, config.local_member, None)
    }

    /// Takes the device over on the cvad that holds its replica vSSD `member`, open
    /// as `replica` (the instance its `dtm::ReplicaService` serves, which may go on
    /// serving it: the old primary's calls then fail STALE_EPOCH; a failed takeover
    /// leaves it open): `config.vssd` is that replica's file (for STAT and the log),
    /// `config.backing` the device's backing store (reachable from here), and
    /// `config.replicas` the other members, the old primary (member 0) among them
    /// when its vSSD is served by a peer. Recovery through the DTM fences every
    /// member it reaches to a new epoch (the old primary's writes then fail
    /// STALE_EPOCH, or find too few replicas), decides every tran in doubt from the
    /// members' copies, and the device serves and destages from here: no
    /// acknowledged write is lost while `min_replicas` members of the newest epoch
    /// answer (the replica taking over is one).
    pub fn takeover(
        config: &DeviceConfig,
        member: u64,
        replica: Vssd,
        peers: &rpc::ClientConfig,
    ) -> Result<Device, CdevError> {
        assert!(member != PRIMARY, "a takeover by a replica's member id");
        Device::open_as(config, OpenOptions::default(), peers, member, Some(replica))
    }

    /// The vSSD this device runs on, for serving it to a peer that takes the device
    /// over (with `dtm::ReplicaService`): the takeover's recovery then fences it and
    /// keeps it as a replica.
    pub fn vssd(&self) -> Vssd {
        self.inner.vssd.clone()
    }

    /// [`Device::open_with`] with the local vSSD as member `me` of the device: `given`
    /// open already (a takeover's replica, left open on failure), else opened here.
    fn open_as(
        config: &DeviceConfig,
        options: OpenOptions,
        peers: &rpc::ClientConfig,
        me: u64,
        given: Option<Vssd>,
    ) -> Result<Device, CdevError> {
        const OP: &str = "open";
        check_config(config, me)?;
        let name = config.name.clone();
        let line_size = u64::from(config.line_size);
        let create = (options.create && options.backing_bytes > 0).then_some(options.backing_bytes);
        let backing = Rc::new(BackingStore::open(&name, &config.backing, create)?);
        let size = backing.size();
        if size == 0 || !size.is_multiple_of(line_size) {
            return Err(config_error(
                &name,
                format!(
                    "backing store {} is {size} bytes: not a positive multiple of the line size {line_size}",
                    config.backing.display()
                ),
            ));
        }
        let owned = given.is_none();
        let vssd = match given {
            Some(v) => {
                check_line_size(config, &v)?;
                v
            }
            None => open_vssd(config, options.create)?,
        };
        let started = start_dtm(config, me, &vssd, &backing, size / line_size, peers);
        let (dtm, recovered) = match started {
            Ok(started) => started,
            Err(e) => {
                if owned {
                    vssd.close();
                }
                return Err(e);
            }
        };
        let cache_lines = vssd.geometry().lines();
        let tuning = Tuning::new(
            cache_lines,
            config.destage_high_pct,
            config.destage_low_pct,
            config.seq_cutoff_bytes,
        );
        let inner = Rc::new(Inner {
            name: name.clone(),
            config: config.clone(),
            mode: Cell::new(config.mode),
            vssd,
            dtm,
            recovered,
            backing,
            line_size,
            lines: size / line_size,
            tuning: Cell::new(tuning),
            gate: Rc::new(Gate::new(cache_lines)),
            state: Cell::new(DevState::Open),
            in_flight: Cell::new(0),
            drained: Rendez::new(),
            stream: Cell::new(Stream::default()),
            last_request: Cell::new(now()),
            kick: Rc::new(Rendez::new()),
            destage: RefCell::new(None),
            runs: RefCell::new(Vec::new()),
            runs_done: Rendez::new(),
            destage_pause: Cell::new(None),
            dirty_since: RefCell::new(std::collections::BTreeMap::new()),
            rate: Cell::new((now(), 0, 0)),
            counters: Cell::new(Counters::default()),
            latency: RefCell::new(Default::default()),
            rmw_unlocked: Cell::new(false),
            spare_line_bufs: RefCell::new(Vec::new()),
            ram: RefCell::new(RamCache::new(config.ram_cache_bytes, config.line_size)),
        });
        inner.note_dirty_at_open();
        let weak = Rc::downgrade(&inner);
        let kick = inner.kick.clone();
        let task = Builder::new()
            .name(format!("destage-{name}"))
            .spawn(move || destage_loop(&weak, &kick));
        match task {
            Ok(h) => *inner.destage.borrow_mut() = Some(h),
            Err(e) => {
                inner.dtm.close();
                inner.vssd.close();
                return Err(CdevError::Runtime {
                    op: OP,
                    device: name,
                    why: format!("cannot start the destage task: {e}"),
                });
            }
        }
        tracing::info!(device = %name, size, line_size, mode = ?config.mode, epoch = inner.dtm.epoch(), "device open");
        Ok(Device { inner })
    }

    /// What the recovery of this open did.
    pub fn recovered(&self) -> Recovered {
        self.inner.recovered
    }

    /// Size, block size, longest I/O, line size, read-only.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size_bytes: self.inner.lines * self.inner.line_size,
            block_size: BLOCK_SIZE,
            io_len_max: IO_LEN_MAX,
            line_size: self.inner.config.line_size,
            read_only: false,
        }
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of [`BLOCK_SIZE`], inside
    /// the device, at most `io_len_max`): hits from the cache, misses from the
    /// backing store (then cached clean, unless a long sequential stream bypasses).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), CdevError> {
        let inner = &*self.inner;
        let _req = inner.enter("read")?;
        inner.check_range("read", offset, buf.len() as u64, true)?;
        inner.count(|c| c.reads += 1);
        let start = now();
        let result = inner.read(offset, buf);
        inner.done("read", start, &result);
        result
    }

    /// Writes `data` at `offset` (same rules as [`Device::read`]); durable when it
    /// returns: on every replica (write-back) or on the backing store (the other
    /// modes).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), CdevError> {
        let inner = &*self.inner;
        let _req = inner.enter("write")?;
        inner.check_range("write", offset, data.len() as u64, true)?;
        inner.count(|c| c.writes += 1);
        let start = now();
        let result = inner.write(offset, data);
        inner.done("write", start, &result);
        result
    }

    /// Every write acknowledged before it is durable already; this makes the
    /// replicas' COMMITs durable too (nothing is left for recovery to decide).
    pub fn flush(&self) -> Result<(), CdevError> {
        let inner = &*self.inner;
        let _req = inner.enter("flush")?;
        inner.count(|c| c.flushes += 1);
        let start = now();
        let result = inner.dtm.flush().map_err(|e| inner.dtm_error("flush", e));
        inner.done("flush", start, &result);
        result
    }

    /// Drops `len` bytes at `offset` (multiples of [`BLOCK_SIZE`], inside the device)
    /// from the cache, on every replica: the whole lines inside the range only (a
    /// partial line keeps its bytes). Dirty lines dropped are not destaged: the
    /// client said it does not need their bytes. The backing store keeps what it
    /// holds.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), CdevError> {
        let inner = &*self.inner;
        let _req = inner.enter("discard")?;
        inner.check_range("discard", offset, len, false)?;
        inner.count(|c| c.discards += 1);
        let first = offset.div_ceil(inner.line_size);
        let end = (offset + len) / inner.line_size;
        if first >= end {
            return Ok(());
        }
        let start = now();
        let result = inner.changing(first, end - first, || {
            let _gate = inner.hold("discard", first, end - first)?;
            inner
                .dtm
                .discard(first, end - first)
                .map_err(|e| inner.dtm_error("discard", e))?;
            Ok(None)
        });
        inner.done("discard", start, &result);
        result
    }

    /// Makes `len` bytes at `offset` (multiples of [`BLOCK_SIZE`], inside the
    /// device) read as zeroes, durable on every replica and the backing store when it
    /// returns. Whole lines are zeroed fast unless `how` is [`Zeroing::Allocate`]
    /// (see [`Inner::zero_lines`]): dropped from the cache on every replica and
    /// punched out of the backing store (when it punches holes); partial lines are
    /// written. `Ok(false)`: `how` is [`Zeroing::FastOnly`] and the range cannot be
    /// zeroed fast; nothing was done.
    pub fn write_zeroes(&self, offset: u64, len: u64, how: Zeroing) -> Result<bool, CdevError> {
        const OP: &str = "write_zeroes";
        let inner = &*self.inner;
        let _req = inner.enter(OP)?;
        inner.check_range(OP, offset, len, false)?;
        let ls = inner.line_size;
        let (first, end) = (offset.div_ceil(ls), (offset + len) / ls);
        let punch = how != Zeroing::Allocate && first < end && inner.backing.can_punch();
        let aligned = offset == first * ls && offset + len == end * ls;
        if how == Zeroing::FastOnly && !(punch && aligned) {
            return Ok(false);
        }
        // The blocks written as data count in `Inner::write`, the punched ones in
        // `Inner::zero_lines`.
        inner.count(|c| c.writes += 1);
        let start = now();
        let result = if punch {
            inner
                .zero_written(offset, first * ls - offset)
                .and_then(|()| inner.zero_lines(first, end - first))
                .and_then(|()| inner.zero_written(end * ls, offset + len - end * ls))
        } else {
            inner.zero_written(offset, len)
        };
        inner.done("write", start, &result);
        result.map(|()| true)
    }

    /// The allocation of `len` bytes at `offset` (multiples of [`BLOCK_SIZE`], inside
    /// the device), in order from `offset`, in whole lines (cut to the range): a
    /// line is a hole when the cache holds no version of it (clean or dirty) and the
    /// backing store has a hole there (`lseek(SEEK_DATA)`), data otherwise. At most
    /// one extent when `one`, else at most [`EXTENTS_MAX`], and at most
    /// [`STATUS_LINES_MAX`] lines looked at: the extents may cover a prefix of the
    /// range only, never more than the range.
    pub fn block_status(&self, offset: u64, len: u64, one: bool) -> Result<Vec<Extent>, CdevError> {
        const OP: &str = "block_status";
        let inner = &*self.inner;
        let _req = inner.enter(OP)?;
        inner.check_range(OP, offset, len, false)?;
        inner.block_status(offset, len, if one { 1 } else { EXTENTS_MAX })
    }

    /// The STAT counters: names without spaces, at most 64 bytes, at most
    /// `rpc::limits::STAT_COUNTERS_MAX` of them.
    pub fn stat(&self) -> Vec<(String, u64)> {
        self.inner.stat()
    }

    /// Applies DEVICE_SET's `settings` to the running device, all of them checked
    /// before any applies (a refusal names the field and its value and changes
    /// nothing). New watermarks rule the destage task's next look, which this wakes:
    /// destage starts at once when the dirty lines reach the new high watermark, and
    /// stops at once at or below the new low one. The next read uses the new
    /// sequential cutoff. The mode changes last ([`Device::set_mode`]: leaving
    /// write-back destages every dirty line first).
    pub fn set(&self, settings: &DeviceSettings) -> Result<(), CdevError> {
        const OP: &str = "set";
        let inner = &*self.inner;
        let _req = inner.enter(OP)?;
        let old = inner.tuning.get();
        let high = settings.destage_high_pct.unwrap_or(old.high_pct);
        let low = settings.destage_low_pct.unwrap_or(old.low_pct);
        check_watermarks(&inner.name, OP, high, low)?;
        let cutoff = settings.seq_cutoff_bytes.unwrap_or(old.seq_cutoff_bytes);
        let new = Tuning::new(inner.vssd.geometry().lines(), high, low, cutoff);
        inner.tuning.set(new);
        inner.kick.wakeup_all();
        tracing::info!(device = %inner.name, ?old, ?new, "settings changed");
        match settings.mode {
            Some(mode) if mode != inner.mode.get() => self.set_mode(mode),
            _ => Ok(()),
        }
    }

    /// Changes the cache mode; leaving write-back destages every dirty line first
    /// (writes go on meanwhile in the new mode).
    pub fn set_mode(&self, mode: CacheMode) -> Result<(), CdevError> {
        const OP: &str = "set_mode";
        let inner = &*self.inner;
        let _req = inner.enter(OP)?;
        let old = inner.mode.replace(mode);
        inner.count(|c| c.mode_changes += 1);
        tracing::info!(device = %inner.name, from = ?old, to = ?mode, dirty = inner.vssd.dirty_count(), "cache mode change");
        if old == CacheMode::WriteBack && mode != CacheMode::WriteBack {
            inner.destage_all(OP)?;
        }
        Ok(())
    }

    /// Breaks the device on purpose, for the simulator's `--buggy` variant (`tdrv sim
    /// cdev --buggy`) only: from now on writes skip the gate, so two writes'
    /// read-modify-writes of one line race and one undoes the other's bytes. Never
    /// call it on a device that holds data anyone needs.
    #[doc(hidden)]
    pub fn break_rmw_lock(&self) {
        tracing::warn!(device = %self.inner.name, "the read-modify-write lock is broken on purpose");
        self.inner.rmw_unlocked.set(true);
    }

    /// Dirty lines in the cache now.
    pub fn dirty_lines(&self) -> u64 {
        self.inner.vssd.dirty_count()
    }

    /// Destages every dirty line now (what leaving write-back does).
    pub fn destage_all(&self) -> Result<(), CdevError> {
        let inner = &*self.inner;
        let _req = inner.enter("destage")?;
        inner.destage_all("destage")
    }

    /// Drains the requests in flight, stops destage, makes the COMMITs durable,
    /// checkpoints and closes the vSSD. Later calls fail; a second close does
    /// nothing.
    pub fn close(&self) -> Result<(), CdevError> {
        const OP: &str = "close";
        let inner = &*self.inner;
        if inner.state.get() != DevState::Open {
            return Ok(());
        }
        inner.state.set(DevState::Closing);
        inner.kick.wakeup_all();
        // Bounded: each request ends within the DTM's and the backing store's waits.
        while inner.in_flight.get() > 0 {
            inner.drained.sleep();
        }
        let task = inner.destage.borrow_mut().take();
        if let Some(task) = task {
            inner.kick.wakeup_all();
            if let Err(e) = task.join() {
                tracing::error!(device = %inner.name, "destage task failed: {e}");
            }
        }
        // Bounded: each run ends within the DTM's and the backing store's waits.
        while !inner.runs.borrow().is_empty() {
            inner.runs_done.sleep();
        }
        let flushed = inner.dtm.flush().map_err(|e| inner.dtm_error(OP, e));
        let checkpointed = inner
            .vssd
            .checkpoint()
            .map(|_| ())
            .map_err(|e| inner.vssd_error(OP, e));
        inner.dtm.close();
        inner.vssd.close();
        inner.state.set(DevState::Closed);
        tracing::info!(device = %inner.name, dirty = inner.vssd.dirty_count(), "device closed");
        flushed.and(checkpointed)
    }
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Counts the end of a client operation `op` (one of [`TIMED`]) begun at `start`.
    fn done<T>(&self, op: &'static str, start: Instant, result: &Result<T, CdevError>) {
        let i = TIMED
            .iter()
            .position(|&t| t == op)
            .expect("a timed operation");
        self.latency.borrow_mut()[i].record(now().saturating_duration_since(start));
        self.count_error(result);
    }

    fn count_error<T>(&self, result: &Result<T, CdevError>) {
        match result {
            Err(CdevError::Backing { .. }) => self.count(|c| c.errors_backing += 1),
            Err(CdevError::Vssd { .. } | CdevError::Dtm { .. }) => {
                self.count(|c| c.errors_cache += 1)
            }
            _ => {}
        }
    }

    fn enter(&self, op: &'static str) -> Result<InFlight<'_>, CdevError> {
        let state = match self.state.get() {
            DevState::Open => {
                self.in_flight.set(self.in_flight.get() + 1);
                self.last_request.set(now());
                return Ok(InFlight(self));
            }
            DevState::Closing => "closing",
            DevState::Closed => "closed",
        };
        Err(CdevError::NotServing {
            op,
            device: self.name.clone(),
            state,
        })
    }

    /// INVALID_ARGUMENT unless `offset..offset + len` is block-aligned, non-empty,
    /// inside the device and (for `io`) at most [`IO_LEN_MAX`] long.
    fn check_range(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        io: bool,
    ) -> Result<(), CdevError> {
        let size = self.lines * self.line_size;
        let block = u64::from(BLOCK_SIZE);
        let why = if !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
            format!("not a multiple of the block size {BLOCK_SIZE}")
        } else if len == 0 {
            "empty".to_string()
        } else if io && len > u64::from(IO_LEN_MAX) {
            format!("longer than io_len_max {IO_LEN_MAX}")
        } else if offset > size || len > size - offset {
            format!("past the end of the device ({size} bytes)")
        } else {
            return Ok(());
        };
        self.count(|c| c.errors_invalid += 1);
        Err(CdevError::InvalidArgument {
            op,
            device: self.name.clone(),
            offset,
            len,
            why,
        })
    }

    fn dtm_error(&self, op: &'static str, e: dtm::DtmError) -> CdevError {
        CdevError::Dtm {
            op,
            device: self.name.clone(),
            source: Box::new(e),
        }
    }

    fn vssd_error(&self, op: &'static str, e: vssd::VssdError) -> CdevError {
        CdevError::Vssd {
            op,
            device: self.name.clone(),
            path: self.config.vssd.clone(),
            source: Box::new(e),
        }
    }

    fn hold(
        &self,
        op: &'static str,
        first: u64,
        count: u64,
    ) -> Result<crate::gate::GateGuard, CdevError> {
        self.gate
            .lock(first, count, GATE_WAIT_MAX)
            .ok_or_else(|| CdevError::Runtime {
                op,
                device: self.name.clone(),
                why: format!(
                    "lines {first}..{} held by other writes for {GATE_WAIT_MAX:?}",
                    first + count
                ),
            })
    }

    fn line_buf(&self, lines: u64) -> AlignedBuf {
        let len = (lines * self.line_size) as usize;
        let mut b = AlignedBuf::new(len);
        b.set_len(len);
        b
    }

    /// A buffer of one line for a read: a spare one if there is one (its bytes are
    /// whatever an earlier read left; a read overwrites them), else a new one.
    fn take_read_buf(&self) -> AlignedBuf {
        match self.spare_line_bufs.borrow_mut().pop() {
            Some(mut b) => {
                b.set_len(self.line_size as usize);
                b
            }
            None => self.line_buf(1),
        }
    }

    /// Keeps a read's line buffer, which nothing else holds now, for the next read.
    fn give_read_buf(&self, b: AlignedBuf) {
        let mut spare = self.spare_line_bufs.borrow_mut();
        if spare.len() < SPARE_LINE_BUFS_MAX {
            spare.push(b);
        }
    }

    /// The lines `offset..offset + len` touches: the first and one past the last.
    fn lines_of(&self, offset: u64, len: u64) -> (u64, u64) {
        (
            offset / self.line_size,
            (offset + len).div_ceil(self.line_size),
        )
    }

    /// Copies the part of `line` (its bytes in `src`) inside the request at `offset`
    /// into `dst` (the request's buffer).
    fn copy_out(&self, line: u64, src: &[u8], offset: u64, dst: &mut [u8]) {
        let start = (line * self.line_size).max(offset);
        let end = ((line + 1) * self.line_size).min(offset + dst.len() as u64);
        let at = (start - line * self.line_size) as usize;
        let n = (end - start) as usize;
        dst[(start - offset) as usize..][..n].copy_from_slice(&src[at..at + n]);
    }

    /// Whether a read of `len` at `offset` continues a sequential stream past the
    /// cutoff (it then bypasses the cache).
    fn sequential(&self, offset: u64, len: u64) -> bool {
        let s = self.stream.get();
        let bytes = if offset == s.next { s.bytes + len } else { len };
        self.stream.set(Stream {
            next: offset + len,
            bytes,
        });
        let cutoff = self.tuning.get().seq_cutoff_bytes;
        cutoff > 0 && bytes > cutoff
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), CdevError> {
        const OP: &str = "read";
        let len = buf.len() as u64;
        let bypass = self.sequential(offset, len) || self.mode.get() == CacheMode::PassThrough;
        let (first, end) = self.lines_of(offset, len);
        let mut line_buf = self.take_read_buf();
        let (mut hits, mut misses, mut ram_hits) = (0, 0, 0);
        let mut line = first;
        // Bounded: `line` moves forward every round.
        while line < end {
            if self.read_ram(line, offset, buf)? {
                hits += 1;
                ram_hits += 1;
                line += 1;
                continue;
            }
            let since = self.ram.borrow().stamp();
            if self
                .dtm
                .read(line, &mut line_buf)
                .map_err(|e| self.dtm_error(OP, e))?
                .is_some()
            {
                self.copy_out(line, &line_buf, offset, buf);
                if !bypass {
                    self.ram.borrow_mut().fill(line, &line_buf, since);
                }
                hits += 1;
                line += 1;
                continue;
            }
            let mut run_end = line + 1;
            while run_end < end && self.vssd.lookup(run_end).is_none() {
                run_end += 1;
            }
            self.read_missed(line, run_end, offset, buf, !bypass)?;
            misses += run_end - line;
            line = run_end;
        }
        self.give_read_buf(line_buf);
        let blocks = len / u64::from(BLOCK_SIZE);
        self.count(|c| {
            c.read_hit_lines += hits;
            c.ram_hit_lines += ram_hits;
            c.blocks_read_cache += (hits - ram_hits) * self.line_size / u64::from(BLOCK_SIZE);
            if ram_hits == end - first {
                c.ram_hits += 1;
            }
            c.read_miss_lines += misses;
            c.blocks_read_client += blocks;
            match (hits, misses) {
                (_, 0) => c.read_hits += 1,
                (0, _) => c.read_misses += 1,
                _ => c.read_partial_hits += 1,
            }
            if bypass && misses > 0 {
                c.read_pass_through += 1;
            }
        });
        Ok(())
    }

    /// Copies `line`'s RAM copy, when the tier holds one, into the request at
    /// `offset`: whether it did. Checked first as a vSSD read is (`Dtm::check_read`):
    /// a fenced device's copies may be older than another primary's writes.
    fn read_ram(&self, line: u64, offset: u64, buf: &mut [u8]) -> Result<bool, CdevError> {
        self.dtm
            .check_read()
            .map_err(|e| self.dtm_error("read", e))?;
        let mut ram = self.ram.borrow_mut();
        let Some(bytes) = ram.get(line) else {
            return Ok(false);
        };
        self.copy_out(line, bytes, offset, buf);
        Ok(true)
    }

    /// Runs `change`, which changes the bytes of lines `first..first + n`, with their
    /// RAM copies dropped before it and again after it whatever it returns (a failed
    /// change may have changed some); then keeps the lines' bytes `change` returns
    /// (whole lines from `first`) as their copies, unless another change of them
    /// began meanwhile. Every path that changes lines' bytes runs through here
    /// (writes with their read-modify-writes, discards, zeroing), so no copy outlives
    /// a change (see [`crate::ramcache`]).
    fn changing(
        &self,
        first: u64,
        n: u64,
        change: impl FnOnce() -> Result<Option<AlignedBuf>, CdevError>,
    ) -> Result<(), CdevError> {
        self.ram.borrow_mut().invalidate(first, n);
        let since = self.ram.borrow().stamp();
        let result = change();
        let mut ram = self.ram.borrow_mut();
        match &result {
            Ok(Some(lines)) => {
                assert_eq!(lines.len() as u64, n * self.line_size, "lines changed");
                ram.replace(first, lines, self.line_size as usize, since);
            }
            Ok(None) | Err(_) => ram.invalidate(first, n),
        }
        result.map(|_| ())
    }

    /// Lines `first..end`, missed, read from the backing store in one I/O under the
    /// DTM's lock of them; each looked up again under the lock (a write may have
    /// landed since) and, when `fill`, inserted clean.
    fn read_missed(
        &self,
        first: u64,
        end: u64,
        offset: u64,
        buf: &mut [u8],
        fill: bool,
    ) -> Result<(), CdevError> {
        const OP: &str = "read";
        let n = end - first;
        let since = self.ram.borrow().stamp();
        let _lock = self
            .dtm
            .lock_lines(first, n)
            .map_err(|e| self.dtm_error(OP, e))?;
        let mut run = self.line_buf(n);
        self.backing.read(first * self.line_size, &mut run)?;
        self.count(|c| c.blocks_read_backing += n * self.line_size / u64::from(BLOCK_SIZE));
        let mut line_buf = self.line_buf(1);
        let ls = self.line_size as usize;
        for (i, line) in (first..end).enumerate() {
            let from_backing = &run[i * ls..][..ls];
            if self
                .dtm
                .read(line, &mut line_buf)
                .map_err(|e| self.dtm_error(OP, e))?
                .is_some()
            {
                self.copy_out(line, &line_buf, offset, buf);
                if fill {
                    self.ram.borrow_mut().fill(line, &line_buf, since);
                }
                continue;
            }
            self.copy_out(line, from_backing, offset, buf);
            if fill {
                line_buf.copy_from_slice(from_backing);
                self.fill(line, &line_buf);
                self.ram.borrow_mut().fill(line, from_backing, since);
            }
        }
        Ok(())
    }

    /// Caches `data` as `line`'s clean copy (the caller holds the DTM's lock of it).
    /// A failure is counted and logged, not returned: the read has its bytes.
    fn fill(&self, line: u64, data: &AlignedBuf) {
        match self.vssd.insert_clean(line, data) {
            Ok(true) => self.count(|c| {
                c.fills += 1;
                c.blocks_written_cache += self.line_size / u64::from(BLOCK_SIZE);
            }),
            Ok(false) => {}
            Err(e) => {
                self.count(|c| c.errors_cache += 1);
                tracing::warn!(device = %self.name, line, "fill failed: {e}");
            }
        }
    }

    /// `line`'s bytes now into `dst` (a line long): the cache's, else the backing
    /// store's. The caller holds the line in the gate.
    fn read_line(&self, line: u64, dst: &mut [u8]) -> Result<(), CdevError> {
        const OP: &str = "write";
        let mut line_buf = self.line_buf(1);
        let hit = self
            .dtm
            .read(line, &mut line_buf)
            .map_err(|e| self.dtm_error(OP, e))?;
        if hit.is_none() {
            self.backing.read(line * self.line_size, &mut line_buf)?;
            self.count(|c| c.blocks_read_backing += self.line_size / u64::from(BLOCK_SIZE));
        }
        dst.copy_from_slice(&line_buf);
        Ok(())
    }

    /// A write of `data` at `offset` (see [`Inner::write_lines`]) as a change of its
    /// lines: the lines it leaves are kept in RAM in the modes that cache writes.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), CdevError> {
        let (first, end) = self.lines_of(offset, data.len() as u64);
        self.changing(first, end - first, || {
            let lines = self.write_lines(offset, data)?;
            let cached = matches!(
                self.mode.get(),
                CacheMode::WriteBack | CacheMode::WriteThrough
            );
            Ok(cached.then_some(lines))
        })
    }

    /// Writes `data` at `offset` in the current mode; the whole lines it wrote.
    fn write_lines(&self, offset: u64, data: &[u8]) -> Result<AlignedBuf, CdevError> {
        const OP: &str = "write";
        let len = data.len() as u64;
        let (first, end) = self.lines_of(offset, len);
        let n = end - first;
        let _gate = if self.rmw_unlocked.get() {
            None
        } else {
            Some(self.hold(OP, first, n)?)
        };
        let ls = self.line_size;
        let mut buf = self.line_buf(n);
        // The read-modify-write of the partial first and last lines.
        for line in [first, end - 1] {
            let (a, b) = (line * ls, (line + 1) * ls);
            let whole = offset <= a && b <= offset + len;
            let at = ((line - first) * ls) as usize;
            if !whole {
                self.read_line(line, &mut buf[at..at + ls as usize])?;
            }
            if first == end - 1 {
                break;
            }
        }
        let at = (offset - first * ls) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        let blocks = len / u64::from(BLOCK_SIZE);
        self.count(|c| c.blocks_written_client += blocks);
        match self.mode.get() {
            CacheMode::WriteBack => {
                self.dtm
                    .write(first, &buf)
                    .map_err(|e| self.dtm_error(OP, e))?;
                self.count(|c| {
                    c.write_hits += 1;
                    c.blocks_written_cache += n * ls / u64::from(BLOCK_SIZE);
                });
                let at = now();
                let mut since = self.dirty_since.borrow_mut();
                for line in first..end {
                    since.entry(line).or_insert(at);
                }
                if self.vssd.dirty_count() >= self.tuning.get().high_lines {
                    self.kick.wakeup_all();
                }
            }
            mode => self.write_backing(first, &buf, mode)?,
        }
        Ok(buf)
    }

    /// Zeroes written as data, [`ZERO_CHUNK_BYTES_MAX`] per write (none when `len`
    /// is 0).
    fn zero_written(&self, offset: u64, len: u64) -> Result<(), CdevError> {
        let zeroes = vec![0u8; len.min(ZERO_CHUNK_BYTES_MAX) as usize];
        let mut done = 0;
        // Bounded: `done` grows by a chunk every round.
        while done < len {
            let n = (len - done).min(ZERO_CHUNK_BYTES_MAX) as usize;
            self.write(offset + done, &zeroes[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Zeroes lines `first..first + n` fast, in an order that never lets an older
    /// version come back: under the gate (no write of them meanwhile), their dirty
    /// versions are destaged first (a crash midway then leaves the bytes they had,
    /// not the backing store's older ones); then they are dropped from the cache on
    /// every replica (durable on return; `Dtm::discard` waits for a destage run
    /// holding them, and no line of them is dirty after it, so no destage can
    /// write them later); then under the DTM's lock of them (no fill, no destage) a
    /// fill's copy that slipped in since is dropped, the backing store's range is
    /// punched and the punch made durable (fdatasync). A read concurrent with the
    /// zeroing may see the old bytes, as with any write; every read after it sees
    /// zeroes, and so does recovery after a crash.
    fn zero_lines(&self, first: u64, n: u64) -> Result<(), CdevError> {
        self.changing(first, n, || self.zero_lines_held(first, n).map(|()| None))
    }

    /// [`Inner::zero_lines`] inside its change.
    fn zero_lines_held(&self, first: u64, n: u64) -> Result<(), CdevError> {
        const OP: &str = "write_zeroes";
        let ls = self.line_size;
        let _gate = self.hold(OP, first, n)?;
        let end = first + n;
        let run_max = DESTAGE_RUN_BYTES_MAX / ls;
        let mut from = first;
        // Bounded: `from` moves past a run every round; the gate keeps new dirty
        // versions out of the range.
        while let Some(&(line, _)) = self.vssd.dirty_range(from, 1).first() {
            if line >= end {
                break;
            }
            let run = (end - line).min(run_max);
            self.destage_run(OP, line, run, true)?;
            from = line + run;
        }
        let _lock = self.drop_cached(OP, first, n)?;
        self.backing.punch(first * ls, n * ls)?;
        self.backing.flush()?;
        self.count(|c| c.blocks_written_client += n * ls / u64::from(BLOCK_SIZE));
        Ok(())
    }

    /// Drops lines `first..first + n` from the cache on every replica (durable on
    /// return), then takes the DTM's lock of them and drops a fill's copy that
    /// slipped in before it (fills are the primary's only): under the returned lock
    /// no fill and no destage touches them while the caller writes the backing store.
    fn drop_cached(&self, op: &'static str, first: u64, n: u64) -> Result<LineLock, CdevError> {
        self.dtm
            .discard(first, n)
            .map_err(|e| self.dtm_error(op, e))?;
        let lock = self
            .dtm
            .lock_lines(first, n)
            .map_err(|e| self.dtm_error(op, e))?;
        self.vssd
            .invalidate_range(first, n)
            .map_err(|e| self.vssd_error(op, e))?;
        Ok(lock)
    }

    /// [`Device::block_status`] of a checked range, `extents_max` extents at most.
    fn block_status(
        &self,
        offset: u64,
        len: u64,
        extents_max: usize,
    ) -> Result<Vec<Extent>, CdevError> {
        let ls = self.line_size;
        let end = offset + len;
        let end_line = end.div_ceil(ls).min(offset / ls + STATUS_LINES_MAX);
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        // Bounded: `at` moves to a later line boundary every round, up to `end_line`.
        while at < end && at / ls < end_line {
            let line = at / ls;
            let cached = self.vssd.cached_from(line, end_line);
            let (hole, upto) = if cached == Some(line) {
                let mut l = line + 1;
                // Bounded by `end_line`.
                while l < end_line && self.vssd.lookup(l).is_some() {
                    l += 1;
                }
                (false, l)
            } else {
                let before_cached = cached.unwrap_or(end_line);
                let start = line * ls;
                match self.backing.next_data(start)? {
                    Next::Data(d) if d < start + ls => {
                        let hole_at = self.backing.next_hole(d)?;
                        (false, hole_at.div_ceil(ls).clamp(line + 1, end_line))
                    }
                    Next::Data(d) => (true, (d / ls).min(before_cached)),
                    Next::None => (true, before_cached),
                }
            };
            let next = (upto * ls).min(end);
            assert!(next > at, "block_status made no progress at {at}");
            let full = out.len() == extents_max;
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += next - at,
                _ if full => break,
                _ => out.push(Extent {
                    len: next - at,
                    hole,
                }),
            }
            at = next;
        }
        assert!(!out.is_empty(), "block_status of an empty range");
        Ok(out)
    }

    /// A write of the whole lines `buf` at `first` in a mode other than write-back:
    /// see the module documentation.
    fn write_backing(
        &self,
        first: u64,
        buf: &AlignedBuf,
        mode: CacheMode,
    ) -> Result<(), CdevError> {
        const OP: &str = "write";
        let ls = self.line_size;
        let n = buf.len() as u64 / ls;
        let dirty = (first..first + n)
            .any(|l| self.vssd.lookup(l).is_some_and(|e| e.state == State::Dirty));
        if dirty {
            // Through the DTM first: the destage of the older dirty version can then
            // never land after this write (module documentation).
            self.dtm
                .write(first, buf)
                .map_err(|e| self.dtm_error(OP, e))?;
            self.destage_run(OP, first, n, true)?;
            if mode == CacheMode::WriteThrough {
                self.count(|c| c.write_hits += 1);
            } else {
                self.dtm
                    .discard(first, n)
                    .map_err(|e| self.dtm_error(OP, e))?;
                self.count(|c| c.write_pass_through += 1);
            }
            return Ok(());
        }
        // The cache's clean copies go first, on every replica, so that no crash
        // leaves a copy older than the backing store (none is dirty, and none
        // becomes so: the gate holds the lines).
        let _lock = self.drop_cached(OP, first, n)?;
        self.backing.write(first * ls, buf)?;
        self.backing.flush()?;
        self.count(|c| c.blocks_written_backing += n * ls / u64::from(BLOCK_SIZE));
        if mode == CacheMode::WriteThrough {
            let mut line_buf = self.line_buf(1);
            for (i, line) in (first..first + n).enumerate() {
                line_buf.copy_from_slice(&buf[i * ls as usize..][..ls as usize]);
                self.fill(line, &line_buf);
            }
            self.count(|c| c.write_hits += 1);
        } else {
            self.count(|c| c.write_pass_through += 1);
        }
        Ok(())
    }

    /// Destages the dirty lines among `first..first + n` (at most a run's bytes):
    /// under the DTM's lock of them, the COMMITs made durable, the dirty versions
    /// written to the backing store, fdatasync, then each marked clean on every
    /// replica at the version written. How many lines it wrote.
    ///
    /// Without `wait`, lines that a write, a discard or a lock holds are left for
    /// later (`None` when that is all of them): that write may be waiting for room
    /// in the cache, which only destaging the other lines makes, so those are
    /// destaged meanwhile, in the sub-runs that nobody holds.
    fn destage_run(
        &self,
        op: &'static str,
        first: u64,
        n: u64,
        wait: bool,
    ) -> Result<Option<u64>, CdevError> {
        let ls = self.line_size;
        assert!(n * ls <= DESTAGE_RUN_BYTES_MAX.max(u64::from(IO_LEN_MAX)));
        if wait {
            let _lock = self
                .dtm
                .lock_lines(first, n)
                .map_err(|e| self.dtm_error(op, e))?;
            return self.destage_locked(op, first, n).map(Some);
        }
        let whole = self
            .dtm
            .try_lock_lines(first, n)
            .map_err(|e| self.dtm_error(op, e))?;
        if let Some(_lock) = whole {
            return self.destage_locked(op, first, n).map(Some);
        }
        // Bounded: `line` moves forward every round; the locks of one sub-run at
        // most (a run's lines).
        let (mut wrote, mut any) = (0, false);
        let mut locks = Vec::new();
        let mut line = first;
        while line < first + n {
            let lock = self
                .dtm
                .try_lock_lines(line, 1)
                .map_err(|e| self.dtm_error(op, e))?;
            let held = lock.is_none();
            locks.extend(lock);
            line += 1;
            if (held || line == first + n) && !locks.is_empty() {
                let sub = locks.len() as u64;
                let sub_first = line - sub - u64::from(held);
                wrote += self.destage_locked(op, sub_first, sub)?;
                any = true;
                locks.clear();
            }
        }
        Ok(any.then_some(wrote))
    }

    /// [`Inner::destage_run`] of `first..first + n`, whose lines the caller holds.
    fn destage_locked(&self, op: &'static str, first: u64, n: u64) -> Result<u64, CdevError> {
        let ls = self.line_size;
        let mut line_buf = self.line_buf(1);
        // Segments of adjacent lines still dirty: (first line, bytes, versions).
        let mut segments: Vec<(u64, Vec<u8>, Vec<u64>)> = Vec::new();
        for line in first..first + n {
            let hit = self
                .dtm
                .read(line, &mut line_buf)
                .map_err(|e| self.dtm_error(op, e))?;
            let Some(hit) = hit.filter(|h| h.state == State::Dirty) else {
                continue;
            };
            match segments.last_mut() {
                Some((s, bytes, versions)) if *s + versions.len() as u64 == line => {
                    bytes.extend_from_slice(&line_buf);
                    versions.push(hit.version);
                }
                _ => segments.push((line, line_buf.to_vec(), vec![hit.version])),
            }
        }
        if segments.is_empty() {
            return Ok(0);
        }
        // A destaged version must never be in doubt on any member (recovery's rule):
        // these versions' COMMITs, not every write's in flight.
        let versions: Vec<u64> = segments
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .collect();
        self.dtm
            .flush_trans(&versions)
            .map_err(|e| self.dtm_error(op, e))?;
        for (s, bytes, _) in &segments {
            let mut out = AlignedBuf::new(bytes.len());
            out.set_len(bytes.len());
            out.copy_from_slice(bytes);
            self.backing.write(s * ls, &out)?;
        }
        self.backing.flush()?;
        let mut lines = 0;
        for (s, _, versions) in &segments {
            for (i, &version) in versions.iter().enumerate() {
                self.dtm
                    .clean(s + i as u64, version)
                    .map_err(|e| self.dtm_error(op, e))?;
                lines += 1;
            }
        }
        self.count(|c| {
            c.destage_runs += 1;
            c.destage_lines += lines;
            c.blocks_written_backing += lines * ls / u64::from(BLOCK_SIZE);
        });
        self.note_destaged(first, n, lines);
        Ok(lines)
    }

    /// The next run of adjacent dirty lines at or after `cursor` (from line 0 again
    /// past the last), at most a run's bytes: its first line and length; the cursor
    /// moves past it.
    fn next_run(&self, cursor: &mut u64) -> Option<(u64, u64)> {
        let mut listed = self.vssd.dirty_range(*cursor, DESTAGE_LIST_LINES);
        if listed.is_empty() && *cursor > 0 {
            *cursor = 0;
            listed = self.vssd.dirty_range(0, DESTAGE_LIST_LINES);
        }
        let &(first, _) = listed.first()?;
        let run_bytes = if self.yielding() {
            DESTAGE_RUN_BYTES_YIELDING
        } else {
            DESTAGE_RUN_BYTES_MAX
        };
        let run_max = (run_bytes / self.line_size).max(1);
        let n = listed
            .iter()
            .enumerate()
            .take_while(|&(i, &(line, _))| line == first + i as u64 && (i as u64) < run_max)
            .count() as u64;
        *cursor = first + n;
        Some((first, n))
    }

    /// [`Inner::destage_run`] of `first..first + n` as a [`Step`], its error counted.
    fn run_step(
        &self,
        op: &'static str,
        first: u64,
        n: u64,
        wait: bool,
    ) -> Result<Step, CdevError> {
        match self.destage_run(op, first, n, wait) {
            Ok(Some(lines)) => Ok(Step::Wrote(lines)),
            Ok(None) => Ok(Step::Busy),
            Err(e) => {
                self.count(|c| c.destage_errors += 1);
                Err(e)
            }
        }
    }

    /// Destages until no line is dirty. Bounded: every round destages a run or moves
    /// the cursor past one, and writes (mode other than write-back now) leave no
    /// line dirty, so twice the capacity in rounds means something keeps dirtying.
    fn destage_all(&self, op: &'static str) -> Result<(), CdevError> {
        let rounds_max = 2 * self.vssd.geometry().lines() + 2;
        let mut cursor = 0;
        for round in 0..rounds_max {
            if self.vssd.dirty_count() == 0 {
                return Ok(());
            }
            if let Some((first, n)) = self.next_run(&mut cursor)
                && let Step::Busy = self.run_step(op, first, n, false)?
            {
                // Every line of the run is held (by a write that may wait for room
                // the destage task makes meanwhile): wait for its first line alone,
                // a wait that keeps no other line from being destaged.
                self.run_step(op, first, 1, true)?;
            }
            if round % 64 == 63 {
                tracing::info!(device = %self.name, dirty = self.vssd.dirty_count(), "destaging");
            }
        }
        Err(CdevError::Runtime {
            op,
            device: self.name.clone(),
            why: format!(
                "{} lines still dirty after {rounds_max} destage runs",
                self.vssd.dirty_count()
            ),
        })
    }

    /// Whether the destage task should run a step now.
    fn destage_due(&self, active: &mut bool) -> bool {
        let dirty = self.vssd.dirty_count();
        let tuning = self.tuning.get();
        if dirty >= tuning.high_lines {
            *active = true;
        } else if dirty <= tuning.low_lines {
            *active = false;
        }
        let idle = now().saturating_duration_since(self.last_request.get()) >= IDLE_AFTER;
        dirty > 0 && (*active || idle)
    }

    /// How many destage runs may be in flight now: [`DESTAGE_RUNS_YIELDING`] while
    /// clients are served, unless the cache is nearly full of dirty lines.
    fn destage_runs_allowed(&self) -> usize {
        if self.yielding() {
            DESTAGE_RUNS_YIELDING
        } else {
            DESTAGE_RUNS_MAX
        }
    }

    /// Whether destage yields to clients now: they are served (a request in flight,
    /// or one within [`CLIENT_RECENT`]) and the cache is not nearly full of dirty
    /// lines.
    fn yielding(&self) -> bool {
        let urgent =
            self.vssd.dirty_count() * 100 >= self.vssd.geometry().lines() * DESTAGE_URGENT_PCT;
        let served = self.in_flight.get() > 0
            || now().saturating_duration_since(self.last_request.get()) < CLIENT_RECENT;
        served && !urgent
    }

    /// The lines recovery found dirty count as dirty since the open.
    fn note_dirty_at_open(&self) {
        let at = now();
        let mut since = self.dirty_since.borrow_mut();
        let mut from = 0;
        // Bounded: `from` moves past each page, and the pages cover the device.
        loop {
            let page = self.vssd.dirty_range(from, DESTAGE_LIST_LINES);
            let Some(&(last, _)) = page.last() else {
                break;
            };
            for &(line, _) in &page {
                since.insert(line, at);
            }
            from = last + 1;
        }
    }

    /// After a destage run of `first..first + n` that wrote `lines`: the lines no
    /// longer dirty leave `dirty_since`; the rate's window counts them.
    fn note_destaged(&self, first: u64, n: u64, lines: u64) {
        {
            let mut since = self.dirty_since.borrow_mut();
            for line in first..first + n {
                if !self.is_dirty(line) {
                    since.remove(&line);
                }
            }
        }
        let (start, in_window, rate) = self.rate.get();
        let t = now();
        let elapsed = t.saturating_duration_since(start);
        self.rate.set(if elapsed >= DESTAGE_RATE_WINDOW {
            let per_s = (in_window + lines) as f64 / elapsed.as_secs_f64();
            (t, 0, per_s as u64)
        } else {
            (start, in_window + lines, rate)
        });
    }

    fn is_dirty(&self, line: u64) -> bool {
        self.vssd
            .lookup(line)
            .is_some_and(|e| e.state == State::Dirty)
    }

    /// Age of the oldest dirty line (0: none), pruning the stale entries.
    fn oldest_dirty_age(&self) -> Duration {
        let mut since = self.dirty_since.borrow_mut();
        since.retain(|&line, _| self.is_dirty(line));
        since
            .values()
            .min()
            .map_or(Duration::ZERO, |&t| now().saturating_duration_since(t))
    }

    /// Lines destaged per second over the last window (0 once no run ended for two
    /// windows).
    fn destage_rate(&self) -> u64 {
        let (start, _, rate) = self.rate.get();
        if now().saturating_duration_since(start) >= 2 * DESTAGE_RATE_WINDOW {
            0
        } else {
            rate
        }
    }

    fn stat(&self) -> Vec<(String, u64)> {
        let c = self.counters.get();
        let v = self.vssd.stats();
        let d = self.dtm.stats();
        let capacity = self.vssd.geometry().lines();
        let counts = v.map;
        let dirty = self.vssd.dirty_count();
        let tuning = self.tuning.get();
        let ram = self.ram.borrow();
        let mode = match self.mode.get() {
            CacheMode::WriteBack => 0,
            CacheMode::WriteThrough => 1,
            CacheMode::WriteAround => 2,
            CacheMode::PassThrough => 3,
        };
        let out: Vec<(&str, u64)> = vec![
            ("config.size_bytes", self.lines * self.line_size),
            ("config.line_size", self.line_size),
            ("config.block_size", u64::from(BLOCK_SIZE)),
            ("config.cache_lines", capacity),
            ("config.mode", mode),
            ("config.destage_high_lines", tuning.high_lines),
            ("config.destage_low_lines", tuning.low_lines),
            ("config.seq_cutoff_bytes", tuning.seq_cutoff_bytes),
            ("config.ram_cache_bytes", self.config.ram_cache_bytes),
            ("usage.dirty_lines", dirty),
            ("usage.clean_lines", counts.lines_clean),
            ("usage.free_slots", counts.slots_free),
            ("usage.prepared_lines", counts.prepared),
            ("usage.ram_bytes", ram.bytes()),
            ("usage.ram_lines", ram.lines()),
            (
                "usage.oldest_dirty_age_ms",
                self.oldest_dirty_age().as_millis() as u64,
            ),
            ("requests.reads", c.reads),
            ("requests.writes", c.writes),
            ("requests.flushes", c.flushes),
            ("requests.discards", c.discards),
            ("requests.read_hits", c.read_hits),
            ("requests.read_misses", c.read_misses),
            ("requests.read_partial_hits", c.read_partial_hits),
            ("requests.read_pass_through", c.read_pass_through),
            ("requests.write_hits", c.write_hits),
            ("requests.write_pass_through", c.write_pass_through),
            ("requests.read_hit_lines", c.read_hit_lines),
            ("requests.read_miss_lines", c.read_miss_lines),
            ("requests.fills", c.fills),
            ("requests.ram_hits", c.ram_hits),
            ("requests.ram_hit_lines", c.ram_hit_lines),
            ("ram.evictions", ram.evictions()),
            ("blocks.client_read", c.blocks_read_client),
            ("blocks.client_written", c.blocks_written_client),
            ("blocks.backing_read", c.blocks_read_backing),
            ("blocks.backing_written", c.blocks_written_backing),
            ("blocks.cache_read", c.blocks_read_cache),
            ("blocks.cache_written", c.blocks_written_cache),
            ("errors.invalid", c.errors_invalid),
            ("errors.cache", c.errors_cache),
            ("errors.backing", c.errors_backing),
            ("destage.runs", c.destage_runs),
            ("destage.lines", c.destage_lines),
            ("destage.errors", c.destage_errors),
            ("destage.backlog_lines", dirty),
            ("destage.rate_lines_per_s", self.destage_rate()),
            ("destage.runs_in_flight", self.runs.borrow().len() as u64),
            ("destage.runs_in_flight_max", c.destage_runs_in_flight_max),
            ("vssd.evictions", v.evictions),
            ("vssd.checkpoints", v.checkpoints),
            ("vssd.slot_waits", v.slot_waits),
            ("state.down", u64::from(self.dtm.down().is_some())),
            ("replicas.epoch", self.dtm.epoch()),
            ("replicas.members", self.dtm.members().len() as u64),
            ("replicas.syncing", self.dtm.syncing().len() as u64),
            (
                "replicas.writing_through",
                u64::from(self.dtm.writing_through()),
            ),
            ("replicas.members_lost", d.members_lost),
            ("replicas.epoch_changes", d.epoch_changes),
            ("dtm.trans", d.trans),
            ("dtm.aborts", d.aborts),
            ("dtm.retries", d.retries),
            ("dtm.written_through", d.written_through),
            ("dtm.in_flight", d.in_flight),
            ("mode.changes", c.mode_changes),
        ];
        let mut out: Vec<(String, u64)> =
            out.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let latency = self.latency.borrow();
        for (op, h) in TIMED.iter().zip(latency.iter()) {
            for (name, per_mille) in [("p50", 500), ("p99", 990), ("p999", 999)] {
                out.push((
                    format!("latency.{op}_{name}_us"),
                    h.percentile_us(per_mille),
                ));
            }
        }
        out
    }
}

/// The destage task (module documentation): while [`Inner::destage_due`] says so,
/// starts runs (each a task of its own, at most [`Inner::destage_runs_allowed`] in flight, on
/// lines no other run in flight holds), yielding to client requests between them;
/// ends when the device closes or is dropped ([`Device::close`] then waits for the
/// runs in flight).
fn destage_loop(weak: &Weak<Inner>, kick: &Rendez) {
    let mut cursor = 0;
    let mut active = false;
    // Bounded by the device's life: it ends once the device is closing or gone.
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if inner.state.get() != DevState::Open {
                return;
            }
            if let Some(pause) = inner.destage_pause.take() {
                Some(pause)
            } else if inner.runs.borrow().len() >= inner.destage_runs_allowed()
                || !inner.destage_due(&mut active)
            {
                Some(DESTAGE_POLL)
            } else {
                match inner.next_run(&mut cursor) {
                    None => Some(DESTAGE_POLL),
                    // Its lines are in flight already (the cursor came round):
                    // wait for a run to end.
                    Some((first, n))
                        if inner
                            .runs
                            .borrow()
                            .iter()
                            .any(|&(f, m)| first < f + m && f < first + n) =>
                    {
                        Some(DESTAGE_POLL)
                    }
                    Some((first, n)) => start_run(weak, &inner, first, n),
                }
            }
        };
        match wait {
            None => {
                yield_now();
            }
            Some(d) => {
                kick.sleep_until(now() + d);
            }
        }
    }
}

/// Starts a destage run of `first..first + n` as a task; the pause the destage task
/// makes if it cannot.
fn start_run(weak: &Weak<Inner>, inner: &Inner, first: u64, n: u64) -> Option<Duration> {
    const OP: &str = "destage";
    /// Removes the run from the runs in flight however its task ends.
    struct Running(Weak<Inner>, u64);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(inner) = self.0.upgrade() {
                inner.runs.borrow_mut().retain(|&(f, _)| f != self.1);
                inner.runs_done.wakeup_all();
                inner.kick.wakeup_all();
            }
        }
    }
    inner.runs.borrow_mut().push((first, n));
    let in_flight = inner.runs.borrow().len() as u64;
    inner.count(|c| c.destage_runs_in_flight_max = c.destage_runs_in_flight_max.max(in_flight));
    let running = Running(weak.clone(), first);
    let task_weak = weak.clone();
    let spawned = Builder::new()
        .name(format!("destage-{}-{first}", inner.name))
        .spawn(move || {
            let _running = running;
            let Some(inner) = task_weak.upgrade() else {
                return;
            };
            let pause = match inner.run_step(OP, first, n, false) {
                Ok(Step::Wrote(_)) => None,
                Ok(Step::Busy) => Some(DESTAGE_BUSY_WAIT),
                Err(e) => {
                    tracing::warn!(device = %inner.name, "destage: {e}");
                    Some(DESTAGE_RETRY)
                }
            };
            if let Some(p) = pause {
                let longest = inner.destage_pause.get().map_or(p, |q| q.max(p));
                inner.destage_pause.set(Some(longest));
            }
        });
    match spawned {
        Ok(_detached) => None,
        Err(e) => {
            tracing::warn!(device = %inner.name, "destage: cannot start a run: {e}");
            Some(DESTAGE_RETRY)
        }
    }
}

fn config_error(device: &str, why: String) -> CdevError {
    CdevError::Config {
        op: "open",
        device: device.to_string(),
        why,
    }
}

/// What `DeviceConfig` must hold for `open` with the local vSSD as member `me`
/// (serde checks the types only).
fn check_config(c: &DeviceConfig, me: u64) -> Result<(), CdevError> {
    let bad = |why: String| Err(config_error(&c.name, why));
    if c.name.is_empty()
        || c.name.len() > rpc::limits::NAME_LEN_MAX
        || c.name.contains(char::is_whitespace)
    {
        return bad(format!(
            "name {:?}: 1..={} bytes without spaces",
            c.name,
            rpc::limits::NAME_LEN_MAX
        ));
    }
    if !c.line_size.is_power_of_two() || !(LINE_SIZE_MIN..=LINE_SIZE_MAX).contains(&c.line_size) {
        return bad(format!(
            "line_size {}: a power of two in {LINE_SIZE_MIN}..={LINE_SIZE_MAX}",
            c.line_size
        ));
    }
    if let Some(why) = crate::ramcache::check_bytes(c.ram_cache_bytes, c.line_size) {
        return bad(format!("ram_cache_bytes {why}"));
    }
    check_watermarks(&c.name, "open", c.destage_high_pct, c.destage_low_pct)?;
    let members = 1 + c.replicas.len();
    if c.min_replicas == 0 || c.min_replicas > members {
        return bad(format!(
            "min_replicas {}: 1..={members} (the primary and {} replicas)",
            c.min_replicas,
            c.replicas.len()
        ));
    }
    for (i, r) in c.replicas.iter().enumerate() {
        if r.member == me || c.replicas[..i].iter().any(|o| o.member == r.member) {
            return bad(format!(
                "replica {} on {}: member {} ({me} is the local vSSD's; each used once)",
                r.vssd, r.peer, r.member
            ));
        }
    }
    Ok(())
}

/// The destage watermarks must hold 0 <= low < high <= 100 (percentages of the cache).
fn check_watermarks(device: &str, op: &'static str, high: u8, low: u8) -> Result<(), CdevError> {
    let why = if high == 0 || high > 100 {
        format!("destage_high_pct {high}: not in 1..=100")
    } else if low >= high {
        format!("destage_low_pct {low}: not below destage_high_pct {high}")
    } else {
        return Ok(());
    };
    Err(CdevError::Config {
        op,
        device: device.to_string(),
        why,
    })
}

/// How `open` formats the device's vSSD of `c.vssd_bytes`: a log of
/// 1/[`LOG_SHARE`] of it (at least the minimum), and as many lines as fit, under a
/// new random uuid. A replica vSSD of the device (on a peer) must be formatted with
/// the same (its `vssd_bytes` is the primary's).
pub fn vssd_format_params(c: &DeviceConfig) -> Result<FormatParams, CdevError> {
    let log_bytes =
        (c.vssd_bytes / LOG_SHARE / 4096 * 4096).clamp(LOG_BYTES_MIN, vssd::layout::LOG_BYTES_MAX);
    let fits = |lines: u64| {
        Geometry::new(c.line_size, lines, log_bytes).is_ok_and(|g| g.total_bytes() <= c.vssd_bytes)
    };
    // The largest count that fits: fits(lo) holds, fits(hi) does not.
    let (mut lo, mut hi) = (0u64, c.vssd_bytes / u64::from(c.line_size) + 1);
    if !fits(1) {
        return Err(config_error(
            &c.name,
            format!(
                "vssd_bytes {}: too small for one line of {} and a log of {log_bytes}",
                c.vssd_bytes, c.line_size
            ),
        ));
    }
    // Bounded: the interval halves every round.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    let uuid = vssd::layout::random_uuid().map_err(|e| CdevError::Runtime {
        op: "open",
        device: c.name.clone(),
        why: format!("a uuid for the vSSD: {e}"),
    })?;
    Ok(FormatParams {
        line_size: c.line_size,
        lines: lo,
        log_bytes,
        device_id: c.name.clone(),
        uuid,
        force: false,
    })
}

/// Opens the primary vSSD; with `create`, a missing one is created and formatted.
fn open_vssd(c: &DeviceConfig, create: bool) -> Result<Vssd, CdevError> {
    const OP: &str = "open";
    let path: &Path = &c.vssd;
    let err = |source: vssd::VssdError| CdevError::Vssd {
        op: OP,
        device: c.name.clone(),
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let io_err = |source: taskio::IoError| CdevError::Vssd {
        op: OP,
        device: c.name.clone(),
        path: path.to_path_buf(),
        source: Box::new(vssd::VssdError::Io {
            op: OP,
            path: path.to_path_buf(),
            source,
        }),
    };
    // Checked before a file is created: a configuration that cannot make a vSSD
    // leaves no file behind.
    let params = if create {
        Some(vssd_format_params(c)?)
    } else {
        None
    };
    let (file, created) = open_file(path, create.then_some(c.vssd_bytes)).map_err(io_err)?;
    if let Some(params) = params.filter(|_| created) {
        format(&file, &params).map_err(err)?;
        tracing::info!(device = %c.name, path = %path.display(), lines = params.lines, "vSSD formatted");
    }
    let options = Options {
        sole_copy: c.replicas.is_empty(),
        ..Options::default()
    };
    let (vssd, _recovered) = Vssd::open(file, Some(&c.name), options).map_err(err)?;
    if let Err(e) = check_line_size(c, &vssd) {
        vssd.close();
        return Err(e);
    }
    Ok(vssd)
}

/// The vSSD's lines must be the configuration's.
fn check_line_size(c: &DeviceConfig, vssd: &Vssd) -> Result<(), CdevError> {
    if vssd.geometry().line_size() == c.line_size {
        return Ok(());
    }
    Err(config_error(
        &c.name,
        format!(
            "line_size {} but the vSSD {} has lines of {}",
            c.line_size,
            c.vssd.display(),
            vssd.geometry().line_size()
        ),
    ))
}

/// Recovery through the DTM over the local replica (member `me`: [`PRIMARY`], or a
/// replica taking the device over) and the configured peers that answer, then the
/// DTM of the recovered epoch.
fn start_dtm(
    c: &DeviceConfig,
    me: u64,
    vssd: &Vssd,
    backing: &Rc<BackingStore>,
    device_lines: u64,
    peers: &rpc::ClientConfig,
) -> Result<(Dtm, Recovered), CdevError> {
    const OP: &str = "open";
    let dtm_err = |e: dtm::DtmError| CdevError::Dtm {
        op: OP,
        device: c.name.clone(),
        source: Box::new(e),
    };
    let epoch = vssd.epoch();
    let local = LocalReplica::new(vssd.clone(), me, c.vssd.display().to_string(), epoch);
    let mut opened: Vec<Rc<dyn Replica>> = vec![Rc::new(local)];
    for r in &c.replicas {
        // A peer at a newer epoch than the local vSSD is opened at its own: recovery
        // must see that epoch (the local vSSD may be stale in it), not lose the peer.
        let remote = match RemoteReplica::open(r.peer, &r.vssd, epoch, r.member, peers) {
            Err(ReplicaError {
                kind: ReplicaErrorKind::StaleEpoch { replica_epoch },
                ..
            }) if replica_epoch > epoch => {
                RemoteReplica::open(r.peer, &r.vssd, replica_epoch, r.member, peers)
            }
            other => other,
        };
        match remote {
            Ok(remote) => opened.push(Rc::new(remote)),
            Err(e) => {
                tracing::warn!(device = %c.name, peer = %r.peer, vssd = %r.vssd, "replica not opened: {e}")
            }
        }
    }
    let configured: Vec<u64> = std::iter::once(me)
        .chain(c.replicas.iter().map(|r| r.member))
        .collect();
    let recovered = dtm::recover(&opened, &configured, c.min_replicas).map_err(dtm_err)?;
    tracing::info!(device = %c.name, ?recovered, "recovered");
    if recovered.members.first().is_none_or(|m| m.member() != me) {
        return Err(config_error(
            &c.name,
            format!(
                "the local vSSD {} (member {me}) is not a member of the newest epoch {} (stale: {:?}); another cvad may serve the device",
                c.vssd.display(),
                recovered.epoch,
                recovered.stale
            ),
        ));
    }
    let policy = match c.replica_loss {
        ReplicaLoss::Degrade => LossPolicy::Degrade,
        ReplicaLoss::WriteThrough => LossPolicy::WriteThrough(backing.clone()),
    };
    let config = DtmConfig {
        min_replicas: c.min_replicas,
        policy,
        device_lines: Some(device_lines),
        ..DtmConfig::default()
    };
    let summary = Recovered {
        epoch: recovered.epoch,
        committed: recovered.committed,
        aborted: recovered.aborted,
        repaired: recovered.repaired,
    };
    let dtm =
        Dtm::start(vssd.clone(), recovered.members, recovered.epoch, config).map_err(dtm_err)?;
    Ok((dtm, summary))
}
