//! The cache device on real files (a tempdir, a taskio runtime with the real I/O
//! driver) and under the simulator (its disk faults, virtual time).

mod common;

use std::path::Path;
use std::time::Duration;

use cdev::{CacheMode, CdevError, Device, DeviceConfig, OpenOptions, ReplicaLoss};
use common::dev::{data, stat};
use rpc::Status;
use taskio::sim::{DiskFault, Sim, SimConfig};
use taskio::{Config, IoConfig, Runtime, sleep};

const LINE: u64 = 4096;
const BACKING_BYTES: u64 = 4 << 20;
const VSSD_BYTES: u64 = 8 << 20;

fn config(dir: &Path) -> DeviceConfig {
    DeviceConfig {
        name: "dev0".into(),
        backing: dir.join("backing"),
        vssd: dir.join("vssd"),
        vssd_bytes: VSSD_BYTES,
        line_size: LINE as u32,
        mode: CacheMode::WriteBack,
        local_member: 0,
        replicas: Vec::new(),
        min_replicas: 1,
        replica_loss: ReplicaLoss::Degrade,
        destage_high_pct: 90,
        destage_low_pct: 10,
        seq_cutoff_bytes: 0,
        ram_cache_bytes: cdev::ramcache::RAM_CACHE_BYTES_DEFAULT,
    }
}

const CREATE: OpenOptions = OpenOptions {
    create: true,
    backing_bytes: BACKING_BYTES,
};

fn run_io<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(main).unwrap()
}

/// Bytes read back: compared as bytes, shown as their length, non-zero count and a
/// checksum (they are megabytes long).
#[derive(PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nonzero = self.0.iter().filter(|&&b| b != 0).count();
        write!(
            f,
            "{} bytes ({nonzero} non-zero, crc {:08x})",
            self.0.len(),
            crc(&self.0)
        )
    }
}

fn crc(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |h, &x| h.rotate_left(5) ^ u32::from(x))
}

impl PartialEq<&[u8]> for Bytes {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Vec<u8>> for Bytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        &self.0 == other
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

fn read(dev: &Device, offset: u64, len: u64) -> Bytes {
    let mut buf = vec![0; len as usize];
    dev.read(offset, &mut buf).unwrap();
    Bytes(buf)
}

/// Runs `main` under the simulator (seed 0) with the controller's handle.
fn run_sim<T: 'static>(main: impl FnOnce(&taskio::sim::SimHandle) -> T + 'static) -> T {
    Sim::new(SimConfig::new(0)).run(main).unwrap()
}

/// The backing store's bytes as the simulated disk holds them (written, flushed
/// or not).
fn sim_backing(h: &taskio::sim::SimHandle, c: &DeviceConfig, offset: u64, len: u64) -> Bytes {
    Bytes(h.disk_view(0, &c.backing).unwrap()[offset as usize..][..len as usize].to_vec())
}

fn backing(dir: &Path, offset: u64, len: u64) -> Bytes {
    Bytes(std::fs::read(dir.join("backing")).unwrap()[offset as usize..][..len as usize].to_vec())
}

/// A model of the device's bytes, for the writes of a test.
struct Model(Vec<u8>);

impl Model {
    fn new() -> Model {
        Model(vec![0; BACKING_BYTES as usize])
    }
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        self.0[offset as usize..][..bytes.len()].copy_from_slice(bytes);
    }
    fn at(&self, offset: u64, len: u64) -> &[u8] {
        &self.0[offset as usize..][..len as usize]
    }
}

#[test]
fn writes_read_back_across_line_boundaries_and_at_block_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let info = dev.info();
        assert_eq!(
            (info.size_bytes, info.block_size, info.line_size),
            (BACKING_BYTES, 512, 4096)
        );
        let mut model = Model::new();
        // (offset, len): inside a line, across one boundary, across several, whole lines.
        let writes = [
            (512, 1024),
            (LINE - 512, 1024),
            (3 * LINE + 1536, 5 * LINE),
            (10 * LINE, 2 * LINE),
            (10 * LINE + 512, 512),
            (BACKING_BYTES - 1024, 1024),
            // The longest I/O, misaligned to lines: split into trans by the DTM.
            (
                BACKING_BYTES / 2 + 512,
                u64::from(rpc::limits::DATA_LEN_MAX),
            ),
        ];
        for (tag, &(offset, len)) in writes.iter().enumerate() {
            let d = data(offset, len, tag as u64 + 1);
            dev.write(offset, &d).unwrap();
            model.write(offset, &d);
        }
        for &(offset, len) in &writes {
            assert_eq!(
                read(&dev, offset, len),
                model.at(offset, len),
                "{offset}+{len}"
            );
        }
        // Whole region, with its untouched bytes (zero on the new backing store).
        assert_eq!(read(&dev, 0, 16 * LINE), model.at(0, 16 * LINE));
        dev.close().unwrap();
    });
}

#[test]
fn misaligned_past_the_end_and_too_long_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        dev.write(0, &data(0, 2 * LINE, 1)).unwrap();
        let before = read(&dev, 0, 2 * LINE);
        let bad: [(u64, u64); 6] = [
            (1, 512),
            (512, 100),
            (0, 0),
            (BACKING_BYTES - 512, 1024),
            (BACKING_BYTES, 512),
            (0, u64::from(rpc::limits::DATA_LEN_MAX) + 512),
        ];
        for (offset, len) in bad {
            let e = dev.write(offset, &vec![7; len as usize]).unwrap_err();
            assert_eq!(
                e.status(),
                Status::InvalidArgument,
                "write {offset}+{len}: {e}"
            );
            assert!(matches!(e, CdevError::InvalidArgument { .. }));
            let mut buf = vec![0; len as usize];
            let e = dev.read(offset, &mut buf).unwrap_err();
            assert_eq!(
                e.status(),
                Status::InvalidArgument,
                "read {offset}+{len}: {e}"
            );
        }
        assert_eq!(
            dev.discard(3, 512).unwrap_err().status(),
            Status::InvalidArgument
        );
        assert_eq!(
            dev.discard(0, BACKING_BYTES + 512).unwrap_err().status(),
            Status::InvalidArgument
        );
        assert_eq!(read(&dev, 0, 2 * LINE), before);
        assert_eq!(stat(&dev, "requests.writes"), 1);
        dev.close().unwrap();
    });
}

/// Reads at once, more of them than the device keeps spare line buffers (64), each
/// of other lines written with other bytes: every read gets its own bytes, in
/// every round (a line buffer shared by two reads in flight, or one kept with a
/// read's bytes, would show here as another line's bytes).
#[test]
fn concurrent_hits_each_read_their_own_lines() {
    const TASKS: u64 = 96;
    const ROUNDS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        for line in 0..TASKS * ROUNDS {
            dev.write(line * LINE, &data(line * LINE, LINE, 5)).unwrap();
        }
        let hits_before = stat(&dev, "requests.read_hits");
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let dev = dev.clone();
                taskio::spawn(move || {
                    for round in 0..ROUNDS {
                        let line = (t * ROUNDS + round * 7) % (TASKS * ROUNDS);
                        assert_eq!(
                            read(&dev, line * LINE, LINE),
                            data(line * LINE, LINE, 5),
                            "task {t} round {round}: line {line}"
                        );
                    }
                })
                .unwrap()
            })
            .collect();
        for t in tasks {
            t.join().unwrap();
        }
        assert_eq!(
            stat(&dev, "requests.read_hits") - hits_before,
            TASKS * ROUNDS,
            "every read a hit"
        );
        dev.close().unwrap();
    });
}

#[test]
fn a_miss_is_filled_from_the_backing_store_then_hits() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let pattern = data(0, BACKING_BYTES, 9);
    std::fs::write(dir.path().join("backing"), &pattern).unwrap();
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        assert_eq!(
            read(&dev, 5 * LINE + 512, 2 * LINE),
            &pattern[(5 * LINE + 512) as usize..][..2 * LINE as usize]
        );
        assert_eq!(
            (
                stat(&dev, "requests.read_misses"),
                stat(&dev, "requests.read_hits")
            ),
            (1, 0)
        );
        assert_eq!(stat(&dev, "requests.fills"), 3);
        assert_eq!(
            read(&dev, 5 * LINE, 3 * LINE),
            &pattern[(5 * LINE) as usize..][..3 * LINE as usize]
        );
        assert_eq!(
            (
                stat(&dev, "requests.read_misses"),
                stat(&dev, "requests.read_hits")
            ),
            (1, 1)
        );
        // Part cached, part not.
        read(&dev, 7 * LINE, 2 * LINE);
        assert_eq!(stat(&dev, "requests.read_partial_hits"), 1);
        assert_eq!(dev.dirty_lines(), 0, "fills are clean");
        dev.close().unwrap();
    });
}

#[test]
fn a_long_sequential_stream_bypasses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.seq_cutoff_bytes = 4 * LINE;
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        for i in 0..8 {
            read(&dev, i * 2 * LINE, 2 * LINE);
        }
        // The first two reads (4 lines, at the cutoff) filled; the rest bypassed.
        assert_eq!(stat(&dev, "requests.fills"), 4);
        assert_eq!(stat(&dev, "requests.read_pass_through"), 6);
        dev.close().unwrap();
    });
}

/// What a write in `mode` leaves: (on the backing store at once, cached, dirty).
fn mode_effect(mode: CacheMode) -> (bool, bool, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.mode = mode;
    let path = dir.path().to_path_buf();
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let d = data(2 * LINE + 512, LINE, 4);
        dev.write(2 * LINE + 512, &d).unwrap();
        // No yield since the write returned: the destage task has not run.
        let dirty = dev.dirty_lines();
        let on_backing = backing(&path, 2 * LINE + 512, LINE) == d;
        let hits = stat(&dev, "requests.read_hits");
        assert_eq!(read(&dev, 2 * LINE + 512, LINE), d);
        let cached = stat(&dev, "requests.read_hits") == hits + 1;
        dev.close().unwrap();
        (on_backing, cached, dirty)
    })
}

#[test]
fn each_cache_mode_puts_a_write_where_it_says() {
    assert_eq!(mode_effect(CacheMode::WriteBack), (false, true, 2));
    assert_eq!(mode_effect(CacheMode::WriteThrough), (true, true, 0));
    assert_eq!(mode_effect(CacheMode::WriteAround), (true, false, 0));
    assert_eq!(mode_effect(CacheMode::PassThrough), (true, false, 0));
}

#[test]
fn destage_cleans_the_lines_and_the_backing_store_equals_the_writes() {
    // Under the simulator: no real-time pause makes the idle destage run meanwhile.
    run_sim(move |h| {
        let c = config(Path::new(SIM_DIR));
        let dev = Device::open(&c, CREATE).unwrap();
        let mut model = Model::new();
        // Adjacent lines (one run), a gap, lines far apart; one line written twice.
        for (tag, (offset, len)) in [
            (0, 8 * LINE),
            (20 * LINE + 512, 3 * LINE),
            (300 * LINE, LINE),
            (LINE, 512),
        ]
        .into_iter()
        .enumerate()
        {
            let d = data(offset, len, tag as u64 + 11);
            dev.write(offset, &d).unwrap();
            model.write(offset, &d);
        }
        assert_eq!(dev.dirty_lines(), 8 + 4 + 1);
        dev.destage_all().unwrap();
        assert_eq!(dev.dirty_lines(), 0);
        assert_eq!(sim_backing(h, &c, 0, 400 * LINE), model.at(0, 400 * LINE));
        assert_eq!(stat(&dev, "destage.lines"), 13);
        assert!(stat(&dev, "destage.runs") <= 3, "adjacent lines in one run");
        // Still cached (clean): a hit.
        assert_eq!(read(&dev, 0, 8 * LINE), model.at(0, 8 * LINE));
        assert_eq!(stat(&dev, "requests.read_hits"), 1);
        dev.close().unwrap();
    });
}

#[test]
fn leaving_write_back_destages_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let path = dir.path().to_path_buf();
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let d = data(0, 4 * LINE, 5);
        dev.write(0, &d).unwrap();
        assert_eq!(dev.dirty_lines(), 4);
        dev.set_mode(CacheMode::WriteAround).unwrap();
        assert_eq!(dev.dirty_lines(), 0);
        assert_eq!(backing(&path, 0, 4 * LINE), d);
        // A write-around over a clean cached line: the cache drops it, reads see it.
        let e = data(LINE, 512, 6);
        dev.write(LINE, &e).unwrap();
        assert_eq!(read(&dev, LINE, 512), e);
        assert_eq!(backing(&path, LINE, 512), e);
        dev.close().unwrap();
    });
}

#[test]
fn a_write_through_over_a_dirty_line_is_not_undone_by_its_destage() {
    // Under the simulator: no real-time pause makes the idle destage run meanwhile.
    run_sim(move |h| {
        let c = config(Path::new(SIM_DIR));
        let dev = Device::open(&c, CREATE).unwrap();
        dev.write(0, &data(0, 2 * LINE, 1)).unwrap();
        dev.close().unwrap();
        // Reopened in write-through with the lines still dirty (as after a crash).
        let mut c2 = c.clone();
        c2.mode = CacheMode::WriteThrough;
        let dev = Device::open(&c2, OpenOptions::default()).unwrap();
        assert_eq!(dev.dirty_lines(), 2);
        let d = data(512, 512, 2);
        dev.write(512, &d).unwrap();
        let mut want = data(0, 2 * LINE, 1);
        want[512..1024].copy_from_slice(&d);
        // The line written is on the backing store with the older dirty bytes merged;
        // the other stays dirty in the cache.
        assert!(
            sim_backing(h, &c, 0, LINE) == want[..LINE as usize],
            "line 0 on the backing store"
        );
        assert_eq!(dev.dirty_lines(), 1);
        assert_eq!(read(&dev, 0, 2 * LINE), want);
        dev.destage_all().unwrap();
        assert_eq!(sim_backing(h, &c, 0, 2 * LINE), want);
        dev.close().unwrap();
    });
}

#[test]
fn close_and_reopen_reads_everything_back_dirty_lines_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let mut model = Model::new();
        for i in 0..40u64 {
            let offset = (i * 7919 * 512) % (BACKING_BYTES - 3 * LINE);
            let d = data(offset, 2 * LINE + 512, i);
            dev.write(offset, &d).unwrap();
            model.write(offset, &d);
        }
        let dirty = dev.dirty_lines();
        assert!(dirty > 0);
        dev.close().unwrap();
        assert_eq!(
            dev.write(0, &[0; 512]).unwrap_err().status(),
            Status::ShuttingDown
        );
        let dev = Device::open(&c, OpenOptions::default()).unwrap();
        assert_eq!(dev.dirty_lines(), dirty);
        for at in (0..BACKING_BYTES).step_by(1 << 20) {
            assert_eq!(read(&dev, at, 1 << 20), model.at(at, 1 << 20), "at {at}");
        }
        dev.close().unwrap();
    });
}

#[test]
fn stat_names_fit_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let counters = dev.stat();
        assert!(counters.len() <= rpc::limits::STAT_COUNTERS_MAX);
        for (i, (name, _)) in counters.iter().enumerate() {
            assert!(
                !name.is_empty() && name.len() <= 64 && !name.contains(' '),
                "{name:?}"
            );
            assert!(counters[..i].iter().all(|(n, _)| n != name), "{name} twice");
        }
        assert_eq!(stat(&dev, "config.size_bytes"), BACKING_BYTES);
        assert_eq!(stat(&dev, "replicas.members"), 1);
        dev.close().unwrap();
    });
}

#[test]
fn discard_drops_the_whole_lines_inside_its_range_only() {
    // Under the simulator: no real-time pause makes the idle destage run meanwhile.
    run_sim(move |_| {
        let c = config(Path::new(SIM_DIR));
        let dev = Device::open(&c, CREATE).unwrap();
        let d = data(0, 3 * LINE, 4);
        dev.write(0, &d).unwrap();
        assert_eq!(dev.dirty_lines(), 3);
        // From the middle of line 0 to the middle of line 2: line 1 only.
        dev.discard(LINE / 2, 2 * LINE).unwrap();
        assert_eq!(dev.dirty_lines(), 2);
        let mut want = d.clone();
        want[LINE as usize..2 * LINE as usize].fill(0); // the backing store's bytes
        assert_eq!(read(&dev, 0, 3 * LINE), want);
        // Inside one line: nothing dropped.
        dev.discard(512, 1024).unwrap();
        assert_eq!(dev.dirty_lines(), 2);
        dev.close().unwrap();
    });
}

#[test]
fn a_missing_file_without_create_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    run_io(move || {
        let e = Device::open(&c, OpenOptions::default()).err().unwrap();
        assert_eq!(e.status(), Status::IoError, "{e}");
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let replica = |member| cdev::ReplicaConfig {
            peer,
            vssd: "r".into(),
            member,
        };
        let bads: [fn(&mut DeviceConfig); 6] = [
            |b| b.line_size = 3000,
            |b| b.line_size = 128 << 10,
            |b| b.name = "has space".into(),
            |b| b.destage_low_pct = b.destage_high_pct,
            |b| b.min_replicas = 2,
            |b| b.vssd_bytes = 4096,
        ];
        for (i, bad) in bads.iter().enumerate() {
            let mut b = c.clone();
            bad(&mut b);
            let e = Device::open(&b, CREATE).err().unwrap();
            assert!(matches!(e, CdevError::Config { .. }), "case {i}: {e}");
            assert_eq!(e.status(), Status::InvalidArgument);
        }
        for members in [vec![0], vec![1, 1]] {
            let mut b = c.clone();
            b.replicas = members.into_iter().map(replica).collect();
            let e = Device::open(&b, CREATE).err().unwrap();
            assert!(matches!(e, CdevError::Config { .. }), "{e}");
        }
        // Nothing refused left a file in the way.
        Device::open(&c, CREATE).unwrap().close().unwrap();
    });
}

// ---------------------------------------------------------------------------------
// Under the simulator.

const SIM_DIR: &str = "/cva";

#[test]
fn a_backing_store_read_error_is_an_io_error_never_wrong_data() {
    for seed in 0..4 {
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let c = config(Path::new(SIM_DIR));
                let dev = Device::open(&c, CREATE).unwrap();
                let d = data(0, 4 * LINE, 3);
                dev.write(0, &d).unwrap();
                dev.destage_all().unwrap();
                dev.discard(0, 4 * LINE).unwrap();
                h.inject(0, c.backing.clone(), DiskFault::ReadError);
                let mut buf = vec![0; 4 * LINE as usize];
                let e = dev.read(0, &mut buf).unwrap_err();
                assert_eq!(e.status(), Status::IoError, "seed {seed}: {e}");
                assert_eq!(stat(&dev, "errors.backing"), 1);
                // Nothing wrong was cached: the next read gets the bytes.
                assert_eq!(read(&dev, 0, 4 * LINE), d, "seed {seed}");
                // A partial-line write needs the line's old bytes: refused too.
                dev.discard(0, 4 * LINE).unwrap();
                h.inject(0, c.backing.clone(), DiskFault::ReadError);
                let e = dev.write(512, &[1; 512]).unwrap_err();
                assert_eq!(e.status(), Status::IoError, "seed {seed}: {e}");
                assert_eq!(read(&dev, 0, 4 * LINE), d, "seed {seed}");
                dev.close().unwrap();
            })
            .unwrap();
    }
}

#[test]
fn idle_destage_and_a_model_of_the_bytes_under_the_simulator() {
    for seed in 0..8u64 {
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let c = config(Path::new(SIM_DIR));
                let dev = Device::open(&c, CREATE).unwrap();
                let mut model = Model::new();
                let lines = 64;
                for i in 0..200u64 {
                    let blocks = 1 + h.random(16);
                    let offset = h.random(lines * LINE / 512 - blocks) * 512;
                    let d = data(offset, blocks * 512, seed * 1000 + i);
                    if h.random(4) == 0 {
                        let got = read(&dev, offset, blocks * 512);
                        assert_eq!(got, model.at(offset, blocks * 512), "seed {seed} op {i}");
                    } else {
                        dev.write(offset, &d).unwrap();
                        model.write(offset, &d);
                    }
                    if h.random(50) == 0 {
                        sleep(Duration::from_millis(h.random(300)));
                    }
                }
                assert!(dev.dirty_lines() > 0);
                // Idle: the destage task cleans everything.
                sleep(Duration::from_secs(2));
                assert_eq!(dev.dirty_lines(), 0, "seed {seed}");
                assert!(stat(&dev, "destage.runs") > 0);
                // The simulated disk takes 20..200 µs an operation.
                let (p50, p99) = (
                    stat(&dev, "latency.write_p50_us"),
                    stat(&dev, "latency.write_p99_us"),
                );
                assert!(20 <= p50 && p50 <= p99, "{p50} {p99}");
                assert!(stat(&dev, "latency.read_p999_us") >= 20);
                let on_disk =
                    Bytes(h.disk_view(0, &c.backing).unwrap()[..(lines * LINE) as usize].to_vec());
                assert_eq!(on_disk, model.at(0, lines * LINE), "seed {seed}");
                dev.close().unwrap();
                let dev = Device::open(&c, OpenOptions::default()).unwrap();
                assert_eq!(
                    read(&dev, 0, lines * LINE),
                    model.at(0, lines * LINE),
                    "seed {seed}"
                );
                dev.close().unwrap();
            })
            .unwrap();
    }
}

/// Writers that share lines but never a block: each owns the blocks `b` with
/// `b % WRITERS == k` of the first `LINES` lines and writes one at a time, so two
/// writers' read-modify-writes of one line race. Meanwhile the mode changes and
/// destage runs (low watermarks). Every block must hold its owner's last write.
#[test]
fn writers_sharing_lines_under_mode_changes_and_destage_keep_every_block() {
    const WRITERS: u64 = 4;
    const LINES: u64 = 32;
    const OPS: u64 = 150;
    const BLOCKS: u64 = LINES * LINE / 512;
    const MODES: [CacheMode; 4] = [
        CacheMode::WriteBack,
        CacheMode::WriteThrough,
        CacheMode::WriteAround,
        CacheMode::PassThrough,
    ];
    for seed in 0..6u64 {
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let mut c = config(Path::new(SIM_DIR));
                c.destage_high_pct = 2;
                c.destage_low_pct = 1;
                let dev = Device::open(&c, CREATE).unwrap();
                let model = std::rc::Rc::new(std::cell::RefCell::new(Model::new()));
                let mut tasks = Vec::new();
                for k in 0..WRITERS {
                    let (dev, model, h) = (dev.clone(), model.clone(), h.clone());
                    tasks.push(
                        taskio::spawn(move || {
                            for i in 0..OPS {
                                let block = h.random(BLOCKS / WRITERS) * WRITERS + k;
                                let offset = block * 512;
                                if h.random(3) == 0 {
                                    let want = Bytes(model.borrow().at(offset, 512).to_vec());
                                    assert_eq!(
                                        read(&dev, offset, 512),
                                        want,
                                        "seed {seed} w{k} op {i}"
                                    );
                                } else {
                                    let d = data(offset, 512, seed << 32 | k << 16 | i);
                                    dev.write(offset, &d).unwrap();
                                    model.borrow_mut().write(offset, &d);
                                }
                            }
                        })
                        .unwrap(),
                    );
                }
                let mode_task = {
                    let (dev, h) = (dev.clone(), h.clone());
                    taskio::spawn(move || {
                        for _ in 0..6 {
                            sleep(Duration::from_millis(h.random(20)));
                            dev.set_mode(MODES[h.random(4) as usize]).unwrap();
                        }
                        dev.set_mode(CacheMode::WriteBack).unwrap();
                    })
                    .unwrap()
                };
                for t in tasks {
                    t.join().unwrap();
                }
                mode_task.join().unwrap();
                let want = Bytes(model.borrow().at(0, LINES * LINE).to_vec());
                assert_eq!(read(&dev, 0, LINES * LINE), want, "seed {seed}");
                dev.destage_all().unwrap();
                let on_disk = h.disk_view(0, &c.backing).unwrap();
                assert_eq!(
                    Bytes(on_disk[..(LINES * LINE) as usize].to_vec()),
                    want,
                    "seed {seed}"
                );
                assert!(stat(&dev, "destage.runs") > 0);
                dev.close().unwrap();
            })
            .unwrap();
    }
}

/// A backing-store write error during destage: the lines stay dirty (the error is
/// counted), the next destage writes them.
#[test]
fn a_failed_destage_leaves_the_lines_dirty_for_the_next() {
    Sim::new(SimConfig::new(1))
        .run(move |h| {
            let c = config(Path::new(SIM_DIR));
            let dev = Device::open(&c, CREATE).unwrap();
            let d = data(0, 4 * LINE, 8);
            dev.write(0, &d).unwrap();
            h.inject(0, c.backing.clone(), DiskFault::WriteError);
            let e = dev.destage_all().unwrap_err();
            assert_eq!(e.status(), Status::IoError, "{e}");
            assert_eq!(dev.dirty_lines(), 4);
            assert_eq!(stat(&dev, "destage.errors"), 1);
            dev.destage_all().unwrap();
            assert_eq!(dev.dirty_lines(), 0);
            let on_disk = h.disk_view(0, &c.backing).unwrap();
            assert_eq!(Bytes(on_disk[..(4 * LINE) as usize].to_vec()), d);
            dev.close().unwrap();
        })
        .unwrap();
}

/// What the crash test's boots share with the controller: per block, the tag of its
/// last acknowledged write (`None`: never written, zeros) and of the write in flight.
#[derive(Default)]
struct World {
    acked: std::cell::RefCell<Vec<Option<u64>>>,
    in_flight: std::cell::RefCell<std::collections::HashMap<u64, u64>>,
    boots: std::cell::Cell<u32>,
    writes: std::cell::Cell<u64>,
    failure: std::cell::RefCell<Option<String>>,
}

impl World {
    fn fail(&self, why: String) {
        self.failure.borrow_mut().get_or_insert(why);
    }
}

const CRASH_WRITERS: u64 = 3;
/// Lines of each writer's own region.
const CRASH_REGION_LINES: u64 = 8;
const CRASH_BLOCKS: u64 = CRASH_WRITERS * CRASH_REGION_LINES * LINE / 512;

fn block_data(block: u64, tag: Option<u64>) -> Vec<u8> {
    tag.map_or_else(|| vec![0; 512], |t| data(block * 512, 512, t))
}

/// One boot of the crash test's node: opens the device (recovery), checks every
/// block holds its acknowledged write or the one in flight at the crash, then
/// writers write ranges of their own regions (several lines, partial ones).
fn crash_boot(w: &std::rc::Rc<World>, h: &taskio::sim::SimHandle, seed: u64, vssd_bytes: u64) {
    let boot = w.boots.get();
    let mut c = config(Path::new(SIM_DIR));
    c.vssd_bytes = vssd_bytes;
    c.mode = if boot % 3 == 2 {
        CacheMode::WriteThrough
    } else {
        CacheMode::WriteBack
    };
    let dev = match Device::open(&c, CREATE) {
        Ok(d) => d,
        Err(e) => return w.fail(format!("seed {seed} boot {boot}: open: {e}")),
    };
    let mut buf = vec![0; (CRASH_BLOCKS * 512) as usize];
    if let Err(e) = dev.read(0, &mut buf) {
        return w.fail(format!("seed {seed} boot {boot}: read: {e}"));
    }
    {
        let mut acked = w.acked.borrow_mut();
        let in_flight = w.in_flight.borrow();
        for b in 0..CRASH_BLOCKS {
            let got = &buf[(b * 512) as usize..][..512];
            let flying = in_flight.get(&b).copied();
            if got == block_data(b, acked[b as usize]) {
                continue;
            }
            if flying.is_some() && got == block_data(b, flying) {
                acked[b as usize] = flying;
                continue;
            }
            return w.fail(format!(
                "seed {seed} boot {boot}: block {b} holds neither its acknowledged write {:?} nor the one in flight {flying:?}",
                acked[b as usize]
            ));
        }
    }
    w.in_flight.borrow_mut().clear();
    w.boots.set(boot + 1);
    for k in 0..CRASH_WRITERS {
        let (wt, h, dev) = (w.clone(), h.clone(), dev.clone());
        let spawned = taskio::spawn(move || {
            let w = wt;
            let region = k * CRASH_REGION_LINES * LINE / 512;
            let region_blocks = CRASH_REGION_LINES * LINE / 512;
            for _ in 0..60 {
                let n = 1 + h.random(24);
                let first = region + h.random(region_blocks - n);
                let tag = seed << 40 | w.writes.get();
                w.writes.set(w.writes.get() + 1);
                let mut d = Vec::with_capacity((n * 512) as usize);
                for b in first..first + n {
                    d.extend(block_data(b, Some(tag)));
                    w.in_flight.borrow_mut().insert(b, tag);
                }
                if let Err(e) = dev.write(first * 512, &d) {
                    return w.fail(format!("seed {seed}: write: {e}"));
                }
                for b in first..first + n {
                    w.acked.borrow_mut()[b as usize] = Some(tag);
                    w.in_flight.borrow_mut().remove(&b);
                }
                if h.random(8) == 0 {
                    sleep(Duration::from_millis(h.random(150)));
                }
            }
        });
        if let Err(e) = spawned {
            return w.fail(format!("spawn: {e}"));
        }
    }
}

/// The node crashes at seeded points (writes in flight torn or lost), some boots in
/// write-through; after each boot's recovery every block holds its last acknowledged
/// write or the one in flight at the crash: no acknowledged write is lost.
fn crashes(seeds: std::ops::Range<u64>, vssd_bytes: u64) {
    const CRASHES: u32 = 5;
    for seed in seeds {
        let w = std::rc::Rc::new(World::default());
        w.acked.replace(vec![None; CRASH_BLOCKS as usize]);
        let w2 = w.clone();
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let (w3, h3) = (w2.clone(), h.clone());
                let node = h.add_node("cvad", "10.0.0.1".parse().unwrap(), move || {
                    crash_boot(&w3, &h3, seed, vssd_bytes)
                });
                for crash in 0..CRASHES {
                    let booted = h.run_until(Duration::from_secs(30), || {
                        w2.boots.get() > crash || w2.failure.borrow().is_some()
                    });
                    if !booted || w2.failure.borrow().is_some() {
                        break;
                    }
                    sleep(Duration::from_millis(h.random(400)));
                    h.crash(node);
                    h.restart(node);
                }
                h.run_until(Duration::from_secs(30), || {
                    w2.boots.get() > CRASHES || w2.failure.borrow().is_some()
                });
            })
            .unwrap();
        assert_eq!(*w.failure.borrow(), None);
        assert_eq!(w.boots.get(), CRASHES + 1, "seed {seed}");
        assert!(w.writes.get() > 0);
    }
}

#[test]
fn no_acknowledged_write_is_lost_across_crashes() {
    crashes(0..6, VSSD_BYTES);
}

/// A vSSD of this many lines holds a fraction of the tests' working sets: writes
/// wait for destage and eviction.
const SMALL_CACHE_LINES: u64 = 16;

fn small_vssd_bytes() -> u64 {
    vssd::layout::Geometry::new(LINE as u32, SMALL_CACHE_LINES, vssd::layout::LOG_BYTES_MIN)
        .unwrap()
        .total_bytes()
}

/// As above with a cache smaller than the writers' regions: lines are destaged,
/// evicted and read back from the backing store across the crashes.
#[test]
fn no_acknowledged_write_is_lost_across_crashes_with_a_small_cache() {
    crashes(10..16, small_vssd_bytes());
}

/// Write-back over a working set four times the cache: writes wait for destage to
/// make room (never for ever), and everything reads back.
#[test]
fn a_working_set_larger_than_the_cache_is_written_back_through_destage() {
    for seed in 0..4u64 {
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let mut c = config(Path::new(SIM_DIR));
                c.vssd_bytes = small_vssd_bytes();
                let dev = Device::open(&c, CREATE).unwrap();
                let start = h.now();
                assert_eq!(stat(&dev, "config.cache_lines"), SMALL_CACHE_LINES);
                let lines = 4 * SMALL_CACHE_LINES;
                let model = std::rc::Rc::new(std::cell::RefCell::new(Model::new()));
                let tasks: Vec<_> = (0..3u64)
                    .map(|k| {
                        let (dev, model, h) = (dev.clone(), model.clone(), h.clone());
                        taskio::spawn(move || {
                            // Each writer its own third of the lines.
                            let region = k * lines / 3 * LINE;
                            let blocks = lines / 3 * LINE / 512;
                            for i in 0..80u64 {
                                let n = 1 + h.random(16);
                                let offset = region + h.random(blocks - n) * 512;
                                let d = data(offset, n * 512, seed << 32 | k << 16 | i);
                                dev.write(offset, &d).unwrap();
                                model.borrow_mut().write(offset, &d);
                            }
                        })
                        .unwrap()
                    })
                    .collect();
                for t in tasks {
                    t.join().unwrap();
                }
                let want = Bytes(model.borrow().at(0, lines * LINE).to_vec());
                assert_eq!(read(&dev, 0, lines * LINE), want, "seed {seed}");
                assert!(stat(&dev, "vssd.evictions") > 0);
                // No destage waited behind a write waiting for room (it would wait
                // the DTM's wait_max, 30 s, and fail).
                assert_eq!(stat(&dev, "destage.errors"), 0, "seed {seed}");
                assert!(h.now().saturating_duration_since(start) < Duration::from_secs(10));
                dev.close().unwrap();
            })
            .unwrap();
    }
}

/// STAT's age of the oldest dirty line follows virtual time and drops to 0 once
/// everything is destaged; the destage rate is measured over a window and drops to 0
/// once destage stops.
#[test]
fn stat_shows_the_oldest_dirty_age_and_the_destage_rate() {
    run_sim(move |_| {
        let c = config(Path::new(SIM_DIR));
        let dev = Device::open(&c, CREATE).unwrap();
        assert_eq!(stat(&dev, "usage.oldest_dirty_age_ms"), 0);
        // Past the rate's first window, and no idle destage meanwhile (nothing dirty).
        sleep(Duration::from_millis(1100));
        dev.write(0, &data(0, 40 * LINE, 1)).unwrap();
        sleep(Duration::from_millis(30));
        dev.write(100 * LINE, &data(100 * LINE, LINE, 2)).unwrap();
        sleep(Duration::from_millis(30));
        let age = stat(&dev, "usage.oldest_dirty_age_ms");
        assert!((60..100).contains(&age), "{age}");
        dev.destage_all().unwrap();
        assert_eq!(stat(&dev, "usage.oldest_dirty_age_ms"), 0);
        assert!(stat(&dev, "destage.rate_lines_per_s") > 0);
        sleep(Duration::from_secs(3));
        assert_eq!(stat(&dev, "destage.rate_lines_per_s"), 0);
        dev.close().unwrap();
    });
}

/// Many dirty runs far apart, destaged by the background task with several runs in
/// flight: every byte reaches the backing store.
#[test]
fn background_destage_with_runs_in_flight_writes_every_run() {
    run_sim(move |h| {
        let mut c = config(Path::new(SIM_DIR));
        c.destage_high_pct = 2;
        c.destage_low_pct = 1;
        let dev = Device::open(&c, CREATE).unwrap();
        let mut model = Model::new();
        for i in 0..64u64 {
            let offset = i * 16 * LINE;
            let d = data(offset, 3 * LINE, i + 1);
            dev.write(offset, &d).unwrap();
            model.write(offset, &d);
        }
        for _ in 0..2000 {
            if dev.dirty_lines() == 0 {
                break;
            }
            sleep(Duration::from_millis(1));
        }
        assert_eq!(dev.dirty_lines(), 0);
        assert!(
            stat(&dev, "destage.runs_in_flight_max") > 1,
            "never more than one run in flight"
        );
        assert_eq!(
            sim_backing(h, &c, 0, BACKING_BYTES),
            model.at(0, BACKING_BYTES)
        );
        dev.close().unwrap();
    });
}

/// While a client is served (a read every millisecond), destage yields: one run in
/// flight at a time (`DESTAGE_RUNS_YIELDING`), and the backlog is still destaged;
/// once the clients stop, it runs `DESTAGE_RUNS_MAX` (the test above).
#[test]
fn destage_yields_to_client_requests() {
    run_sim(move |h| {
        let mut c = config(Path::new(SIM_DIR));
        c.destage_high_pct = 2;
        c.destage_low_pct = 0;
        let dev = Device::open(&c, CREATE).unwrap();
        let mut model = Model::new();
        for i in 0..64u64 {
            let offset = i * 16 * LINE;
            let d = data(offset, 3 * LINE, i + 1);
            dev.write(offset, &d).unwrap();
            model.write(offset, &d);
        }
        // Bounded: 2 s of virtual time.
        for _ in 0..2000 {
            if dev.dirty_lines() == 0 {
                break;
            }
            assert_eq!(read(&dev, 0, LINE).0, model.at(0, LINE));
            sleep(Duration::from_millis(1));
        }
        assert_eq!(dev.dirty_lines(), 0);
        assert_eq!(
            stat(&dev, "destage.runs_in_flight_max"),
            cdev::DESTAGE_RUNS_YIELDING as u64
        );
        assert_eq!(
            sim_backing(h, &c, 0, BACKING_BYTES),
            model.at(0, BACKING_BYTES)
        );
        dev.close().unwrap();
    });
}

/// DEVICE_SET's settings apply to the running device: bad watermarks are refused
/// by field and value and change nothing; new watermarks start destage at once
/// (well before the idle rule would); a new sequential cutoff rules the next read.
#[test]
fn settings_apply_online_and_bad_ones_change_nothing() {
    run_sim(move |_| {
        let mut c = config(Path::new(SIM_DIR));
        c.seq_cutoff_bytes = 0;
        let dev = Device::open(&c, CREATE).unwrap();
        let lines = stat(&dev, "config.cache_lines");
        let high = stat(&dev, "config.destage_high_lines");
        let bad = cdev::DeviceSettings {
            destage_high_pct: Some(50),
            destage_low_pct: Some(60),
            seq_cutoff_bytes: Some(4096),
            ..Default::default()
        };
        let e = dev.set(&bad).unwrap_err();
        assert_eq!(e.status(), Status::InvalidArgument, "{e}");
        assert!(e.to_string().contains("destage_low_pct 60"), "{e}");
        assert_eq!(stat(&dev, "config.destage_high_lines"), high);
        assert_eq!(stat(&dev, "config.seq_cutoff_bytes"), 0);

        // 40 dirty lines, below the high watermark: destage waits for idle time.
        for line in 0..40 {
            dev.write(line * LINE, &data(line * LINE, LINE, 1)).unwrap();
        }
        assert_eq!(dev.dirty_lines(), 40);
        let low = cdev::DeviceSettings {
            destage_high_pct: Some(1),
            destage_low_pct: Some(0),
            ..Default::default()
        };
        dev.set(&low).unwrap();
        assert_eq!(
            stat(&dev, "config.destage_high_lines"),
            (lines / 100).max(1)
        );
        // Bounded: under IDLE_AFTER of virtual time.
        for _ in 0..16 {
            if dev.dirty_lines() == 0 {
                break;
            }
            sleep(Duration::from_millis(5));
        }
        assert_eq!(
            dev.dirty_lines(),
            0,
            "destage did not start at the new watermark"
        );

        // A sequential stream: cached while the cutoff is 0 (never), bypasses the
        // cache once a cutoff shorter than it is set.
        let chunk = 16 * LINE;
        read(&dev, 64 * LINE, chunk);
        read(&dev, 64 * LINE + chunk, chunk);
        assert_eq!(stat(&dev, "requests.read_pass_through"), 0);
        let cutoff = cdev::DeviceSettings {
            seq_cutoff_bytes: Some(chunk),
            ..Default::default()
        };
        dev.set(&cutoff).unwrap();
        read(&dev, 64 * LINE + 2 * chunk, chunk);
        assert_eq!(stat(&dev, "requests.read_pass_through"), 1);
        dev.close().unwrap();
    });
}

/// Joins `writers` once they all ended, within a minute of virtual time (well
/// under a second while destage progresses); a writer still waiting then fails the
/// test (its wait ended by closing the vSSD: the test never waits for ever).
fn join_writers(
    dev: &Device,
    writers: Vec<taskio::JoinHandle<Result<(), CdevError>>>,
) -> Vec<Result<(), CdevError>> {
    // Bounded: 600 rounds.
    for _ in 0..600 {
        if writers.iter().all(|w| w.is_finished()) {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let stuck = writers.iter().filter(|w| !w.is_finished()).count();
    let dirty = dev.dirty_lines();
    if stuck > 0 {
        dev.vssd().close();
    }
    let results = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(
        stuck, 0,
        "writers stuck waiting for room: {dirty} dirty lines of {SMALL_CACHE_LINES}"
    );
    results
}

/// Writers waiting for room in a full cache must never hold every dirty line, or
/// destage could free nothing and they would wait for ever. Set up under the
/// simulator: a cache of 16 lines, 15 dirty (below the high watermark of 100%);
/// then at once 15 writers of two lines, each a dirty line and a new one: the first
/// takes the last room, the others wait for room holding their dirty lines; two
/// more writers wait in the gate for the first's lines, and take them (wanting room
/// too) as it ends, before destage looks. The gate's cap on the lines held by the
/// writes in flight (below the cache's lines) keeps a dirty line free for destage.
#[test]
fn writers_waiting_for_room_never_hold_every_dirty_line() {
    run_sim(move |_| {
        let mut c = config(Path::new(SIM_DIR));
        c.vssd_bytes = small_vssd_bytes();
        c.destage_high_pct = 100;
        c.destage_low_pct = 99;
        let dev = Device::open(&c, CREATE).unwrap();
        assert_eq!(stat(&dev, "config.cache_lines"), SMALL_CACHE_LINES);
        let dirty = SMALL_CACHE_LINES - 1;
        for i in 0..dirty {
            dev.write(3 * i * LINE, &data(3 * i * LINE, LINE, 1))
                .unwrap();
        }
        assert_eq!(dev.dirty_lines(), dirty);
        // Writer k (first) takes the last room; the others wait for room; x and y
        // wait in the gate for k's lines.
        let k = dirty / 2;
        let mut firsts: Vec<u64> = vec![3 * k];
        firsts.extend((0..dirty).filter(|&i| i != k).map(|i| 3 * i));
        firsts.extend([3 * k + 1, 3 * k - 1]);
        let writers = firsts
            .iter()
            .map(|&first| {
                let dev = dev.clone();
                taskio::spawn(move || {
                    let offset = first * LINE;
                    dev.write(offset, &data(offset, 2 * LINE, 2))
                })
                .unwrap()
            })
            .collect();
        for result in join_writers(&dev, writers) {
            result.unwrap();
        }
        for &first in &firsts {
            assert_eq!(read(&dev, first * LINE, LINE).0.len() as u64, LINE);
        }
        dev.close().unwrap();
    });
}

/// Many writers, each a two-line read-modify-write straddling a line boundary, over
/// a working set four times a tiny cache: together they would hold three times the
/// cache's lines; the gate lets them hold fewer than the cache's, and every write
/// ends (none waits for the gate's wait_max).
#[test]
fn many_partial_line_writers_on_a_tiny_cache_all_finish() {
    const WRITERS: u64 = 48;
    const WRITES: u64 = 12;
    for seed in 0..4u64 {
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let mut c = config(Path::new(SIM_DIR));
                c.vssd_bytes = small_vssd_bytes();
                c.destage_high_pct = 100;
                c.destage_low_pct = 99;
                let dev = Device::open(&c, CREATE).unwrap();
                let lines = 4 * SMALL_CACHE_LINES;
                let writers = (0..WRITERS)
                    .map(|k| {
                        let (dev, h) = (dev.clone(), h.clone());
                        taskio::spawn(move || {
                            for i in 0..WRITES {
                                let offset = h.random(lines - 1) * LINE + LINE / 2;
                                dev.write(offset, &data(offset, LINE, seed << 32 | k << 16 | i))?;
                            }
                            Ok(())
                        })
                        .unwrap()
                    })
                    .collect();
                for result in join_writers(&dev, writers) {
                    result.unwrap();
                }
                dev.close().unwrap();
            })
            .unwrap();
    }
}

/// Raising the watermarks above the dirty lines stops destage at once: once the run
/// in flight ends, no line is destaged while clients are served (a read every
/// millisecond keeps the device from idling); lowering them starts it again.
#[test]
fn raised_watermarks_stop_destage_at_once() {
    run_sim(move |_| {
        let mut c = config(Path::new(SIM_DIR));
        c.destage_high_pct = 2;
        c.destage_low_pct = 0;
        let dev = Device::open(&c, CREATE).unwrap();
        for i in 0..64u64 {
            let offset = i * 16 * LINE;
            dev.write(offset, &data(offset, 3 * LINE, i + 1)).unwrap();
        }
        assert!(stat(&dev, "destage.runs") > 0, "destage started");
        let hold = cdev::DeviceSettings {
            destage_high_pct: Some(100),
            destage_low_pct: Some(99),
            ..Default::default()
        };
        dev.set(&hold).unwrap();
        // Bounded: the run in flight ends within its I/O.
        for _ in 0..1000 {
            if stat(&dev, "destage.runs_in_flight") == 0 {
                break;
            }
            sleep(Duration::from_millis(1));
        }
        let dirty = dev.dirty_lines();
        assert!(dirty > 0, "the backlog outlived the change");
        for _ in 0..200 {
            read(&dev, 0, LINE);
            sleep(Duration::from_millis(1));
        }
        assert_eq!(
            dev.dirty_lines(),
            dirty,
            "destage went on above the low watermark"
        );
        let run = cdev::DeviceSettings {
            destage_high_pct: Some(1),
            destage_low_pct: Some(0),
            ..Default::default()
        };
        dev.set(&run).unwrap();
        for _ in 0..2000 {
            if dev.dirty_lines() == 0 {
                break;
            }
            read(&dev, 0, LINE);
            sleep(Duration::from_millis(1));
        }
        assert_eq!(dev.dirty_lines(), 0);
        dev.close().unwrap();
    });
}
