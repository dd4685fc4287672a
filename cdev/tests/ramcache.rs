//! The device's RAM tier (`ram_cache_bytes`) on real files and under the simulator:
//! hits, its bound, and that no read through it returns bytes older than the newest
//! acknowledged write, discard or zeroing of their line.

mod common;

use std::path::Path;

use cdev::{CacheMode, Device, DeviceConfig, OpenOptions, Zeroing};
use common::dev::{data, stat};
use taskio::sim::{Sim, SimConfig};
use taskio::{Config, IoConfig, Runtime, spawn, yield_now};

const LINE: u64 = 4096;
const BACKING_BYTES: u64 = 4 << 20;
const VSSD_BYTES: u64 = 8 << 20;
const SIM_DIR: &str = "/cva";

fn config(dir: &Path, ram_lines: u64) -> DeviceConfig {
    let mut c = DeviceConfig::new("dev0", dir.join("backing"), dir.join("vssd"), VSSD_BYTES);
    c.seq_cutoff_bytes = 0;
    c.ram_cache_bytes = ram_lines * LINE;
    c
}

const CREATE: OpenOptions = OpenOptions {
    create: true,
    backing_bytes: BACKING_BYTES,
};

fn run_io<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(main).unwrap()
}

fn read(dev: &Device, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0; len as usize];
    dev.read(offset, &mut buf).unwrap();
    buf
}

#[test]
fn a_line_read_again_is_served_from_ram() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 16);
    let pattern = data(0, BACKING_BYTES, 3);
    std::fs::write(dir.path().join("backing"), &pattern).unwrap();
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let at = |o: u64, n: u64| pattern[o as usize..][..n as usize].to_vec();
        assert_eq!(read(&dev, 3 * LINE, 2 * LINE), at(3 * LINE, 2 * LINE));
        assert_eq!(stat(&dev, "requests.ram_hits"), 0);
        let cache_read = stat(&dev, "blocks.cache_read");
        assert_eq!(read(&dev, 3 * LINE + 512, LINE), at(3 * LINE + 512, LINE));
        assert_eq!(stat(&dev, "requests.ram_hits"), 1);
        assert_eq!(stat(&dev, "requests.ram_hit_lines"), 2);
        assert_eq!(stat(&dev, "requests.read_hits"), 1);
        assert_eq!(
            stat(&dev, "blocks.cache_read"),
            cache_read,
            "not from the vSSD"
        );
        assert_eq!(stat(&dev, "usage.ram_lines"), 2);
        assert_eq!(stat(&dev, "config.ram_cache_bytes"), 16 * LINE);
        dev.close().unwrap();
    });
}

#[test]
fn the_ram_tier_never_holds_more_than_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Not a whole number of lines: rounded down.
    let mut c = config(dir.path(), 8);
    c.ram_cache_bytes += LINE / 2;
    let pattern = data(0, BACKING_BYTES, 4);
    std::fs::write(dir.path().join("backing"), &pattern).unwrap();
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let lines = BACKING_BYTES / LINE;
        let mut seed = 7u64;
        for i in 0..2000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly 16 hot lines, now and then any line: hits and evictions.
            let line = if i % 4 == 0 {
                (seed >> 33) % lines
            } else {
                (seed >> 33) % 16
            };
            let n = 1 + (seed >> 20) % 3;
            let n = n.min(lines - line);
            let got = read(&dev, line * LINE, n * LINE);
            assert!(
                got == pattern[(line * LINE) as usize..][..(n * LINE) as usize],
                "read {i} of line {line}"
            );
            assert!(stat(&dev, "usage.ram_bytes") <= 8 * LINE, "read {i}");
            assert!(stat(&dev, "usage.ram_lines") <= 8, "read {i}");
        }
        assert_eq!(stat(&dev, "usage.ram_bytes"), 8 * LINE);
        assert!(stat(&dev, "ram.evictions") > 0);
        assert!(stat(&dev, "requests.ram_hits") > 0);
        dev.close().unwrap();
    });
}

#[test]
fn zero_bytes_turns_the_ram_tier_off() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 0);
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let d = data(0, 2 * LINE, 5);
        dev.write(0, &d).unwrap();
        for _ in 0..3 {
            assert_eq!(read(&dev, 0, 2 * LINE), d);
        }
        assert_eq!(stat(&dev, "requests.ram_hits"), 0);
        assert_eq!(stat(&dev, "usage.ram_bytes"), 0);
        assert_eq!(stat(&dev, "requests.read_hits"), 3, "from the vSSD");
        dev.close().unwrap();
    });
}

#[test]
fn a_ram_tier_smaller_than_a_line_or_too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bytes in [LINE - 512, cdev::ramcache::RAM_CACHE_BYTES_MAX + LINE] {
        let mut c = config(dir.path(), 0);
        c.ram_cache_bytes = bytes;
        let e = run_io(move || Device::open(&c, CREATE).err().unwrap());
        assert!(
            e.to_string().contains(&format!("ram_cache_bytes {bytes}")),
            "{e}"
        );
    }
}

/// Each way a line's bytes change, after the line was read into RAM: the next read
/// returns the new bytes.
#[test]
fn writes_discards_and_zeroing_are_seen_through_the_ram_tier() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 64);
    run_io(move || {
        let dev = Device::open(&c, CREATE).unwrap();
        let mut want = vec![0u8; (16 * LINE) as usize];
        let put = |want: &mut Vec<u8>, o: u64, d: &[u8]| {
            want[o as usize..][..d.len()].copy_from_slice(d);
        };
        // A whole-line write, read back (from RAM), then partial writes of it
        // (read-modify-writes), each read back.
        let d = data(0, 4 * LINE, 1);
        dev.write(0, &d).unwrap();
        put(&mut want, 0, &d);
        assert!(read(&dev, 0, 4 * LINE) == want[..(4 * LINE) as usize]);
        for (i, (o, n)) in [(512, 512), (LINE - 512, 1024), (3 * LINE + 1024, 2048)]
            .into_iter()
            .enumerate()
        {
            let d = data(o, n, 10 + i as u64);
            dev.write(o, &d).unwrap();
            put(&mut want, o, &d);
            assert!(
                read(&dev, 0, 4 * LINE) == want[..(4 * LINE) as usize],
                "partial write {i}"
            );
        }
        assert!(stat(&dev, "requests.ram_hits") >= 4);
        // Destaged (the backing store holds `want`), overwritten (dirty, in RAM),
        // then discarded: the line reads as the backing store's again.
        dev.destage_all().unwrap();
        let backing = want[(LINE) as usize..][..LINE as usize].to_vec();
        dev.write(LINE, &data(LINE, LINE, 20)).unwrap();
        assert_eq!(read(&dev, LINE, LINE), data(LINE, LINE, 20));
        dev.discard(LINE, LINE).unwrap();
        assert_eq!(read(&dev, LINE, LINE), backing, "discarded");
        // Zeroed, punched and written as zeroes.
        for (line, how) in [(2, Zeroing::Punch), (3, Zeroing::Allocate)] {
            assert_ne!(read(&dev, line * LINE, LINE), vec![0; LINE as usize]);
            assert!(dev.write_zeroes(line * LINE, LINE, how).unwrap());
            assert_eq!(
                read(&dev, line * LINE, LINE),
                vec![0; LINE as usize],
                "{how:?}"
            );
        }
        // In the modes that write the backing store.
        for (i, mode) in [
            CacheMode::WriteThrough,
            CacheMode::WriteAround,
            CacheMode::PassThrough,
        ]
        .into_iter()
        .enumerate()
        {
            dev.set_mode(mode).unwrap();
            let o = 8 * LINE;
            read(&dev, o, 2 * LINE);
            let d = data(o + 512, LINE, 30 + i as u64);
            dev.write(o + 512, &d).unwrap();
            put(&mut want, o + 512, &d);
            assert!(
                read(&dev, o, 2 * LINE) == want[o as usize..][..(2 * LINE) as usize],
                "{mode:?}"
            );
        }
        dev.close().unwrap();
    });
}

/// A read and a write of one line at once, in many interleavings (seeds of the
/// simulator, which also draws each disk operation's latency, and yields before
/// each): the racing read returns the old or the new bytes, and every read after
/// the write returns the new ones (an older read that finished last must not
/// leave the old bytes in RAM).
#[test]
fn a_read_racing_a_write_of_its_line_never_leaves_older_bytes() {
    const SEEDS: u64 = 64;
    const ROUNDS: u64 = 20;
    for seed in 0..SEEDS {
        Sim::new(SimConfig::new(seed))
            .run(move |h| {
                let c = config(Path::new(SIM_DIR), 4);
                let dev = Device::open(&c, CREATE).unwrap();
                let mut now = vec![0u8; (4 * LINE) as usize];
                for round in 0..ROUNDS {
                    let line = h.random(4);
                    // A whole line or part of it (a read-modify-write).
                    let (o, n) = match h.random(3) {
                        0 => (line * LINE, LINE),
                        1 => (line * LINE + 512 * h.random(7), 512),
                        _ => (line * LINE, 2048),
                    };
                    let d = data(o, n, seed * 1000 + round + 1);
                    let old = now[(line * LINE) as usize..][..LINE as usize].to_vec();
                    now[o as usize..][..n as usize].copy_from_slice(&d);
                    let new = now[(line * LINE) as usize..][..LINE as usize].to_vec();
                    let (r_yields, w_yields) = (h.random(4), h.random(4));
                    let rdev = dev.clone();
                    let reader = spawn(move || {
                        for _ in 0..r_yields {
                            yield_now();
                        }
                        read(&rdev, line * LINE, LINE)
                    })
                    .unwrap();
                    let wdev = dev.clone();
                    let writer = spawn(move || {
                        for _ in 0..w_yields {
                            yield_now();
                        }
                        wdev.write(o, &d).unwrap();
                    })
                    .unwrap();
                    let raced = reader.join().unwrap();
                    writer.join().unwrap();
                    assert!(
                        raced == old || raced == new,
                        "seed {seed} round {round}: the racing read saw neither"
                    );
                    for _ in 0..2 {
                        assert!(
                            read(&dev, line * LINE, LINE) == new,
                            "seed {seed} round {round}: older bytes after the write"
                        );
                    }
                    // Now and then the line leaves the vSSD clean copy behind too.
                    if h.random(4) == 0 {
                        dev.destage_all().unwrap();
                    }
                }
                assert!(stat(&dev, "requests.ram_hits") > 0, "seed {seed}");
                dev.close().unwrap();
            })
            .unwrap();
    }
}
