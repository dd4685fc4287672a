//! The simulator is as unkind as real disks: a write in flight at a crash lands whole,
//! torn (any subset of its sectors) or not at all; fsync covers only the writes that
//! completed before it was issued; a task of a crashed node writes nothing while it
//! unwinds; on a shared disk a crash decides only the crashed node's writes. Each
//! test is deterministic (seeded) and fails on a kinder simulator.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use taskio::file::OpenOptions;
use taskio::sim::{Sim, SimConfig, SimHandle, SimStats};
use taskio::{AlignedBuf, sleep, spawn, yield_now};

const SECTOR: usize = 512;
/// Sectors of the test writes: enough for tears that keep a non-prefix subset.
const SECTORS: usize = 8;
/// Bound on the controller's polls of a flag, 1 us of virtual time each.
const POLLS_MAX: usize = 1_000_000;

fn ip() -> std::net::IpAddr {
    "10.0.0.1".parse().unwrap()
}

/// Sleeps 1 us at a time until `flag` is set (bounded).
fn wait_for(flag: &Cell<bool>) {
    for _ in 0..POLLS_MAX {
        if flag.get() {
            return;
        }
        sleep(Duration::from_micros(1));
    }
    panic!("flag never set");
}

fn block(fill: u8, sectors: usize) -> AlignedBuf {
    let mut b = AlignedBuf::new(sectors * SECTOR);
    b.set_len(sectors * SECTOR);
    b.fill(fill);
    b
}

/// Which sectors of a `SECTORS`-sector write of 7s the durable image kept (each must
/// be all 7s or all zeros: a sector is atomic).
fn kept_sectors(seed: u64, image: &[u8]) -> Vec<bool> {
    (0..SECTORS)
        .map(|i| {
            let s = image.get(i * SECTOR..(i + 1) * SECTOR).unwrap_or(&[]);
            let sevens = s.iter().filter(|&&b| b == 7).count();
            assert!(
                sevens == 0 || sevens == SECTOR,
                "seed {seed}: sector {i} torn inside ({sevens} bytes of the write)"
            );
            assert!(
                s.iter().all(|&b| b == 7 || b == 0),
                "seed {seed}: bytes never written"
            );
            sevens == SECTOR
        })
        .collect()
}

/// Counts of whole, none, and torn outcomes, and how many tears kept a non-prefix.
#[derive(Debug, Default)]
struct Outcomes {
    whole: u32,
    none: u32,
    torn: u32,
    torn_not_prefix: u32,
}

impl Outcomes {
    fn add(&mut self, kept: &[bool]) {
        let n = kept.iter().filter(|&&k| k).count();
        if n == kept.len() {
            self.whole += 1;
        } else if n == 0 {
            self.none += 1;
        } else {
            self.torn += 1;
            if kept.windows(2).any(|w| !w[0] && w[1]) {
                self.torn_not_prefix += 1;
            }
        }
    }

    fn all_seen(&self) -> bool {
        self.whole > 0 && self.none > 0 && self.torn_not_prefix > 0
    }
}

/// What one seed left: the durable image, the simulator's counters, the trace hash.
struct Left {
    image: Vec<u8>,
    stats: SimStats,
    trace: u64,
}

/// A node submits one write of 7s and the controller crashes it while the write is
/// in flight (no completion seen).
fn crash_during_write(seed: u64) -> Left {
    let mut sim = Sim::new(SimConfig::new(seed));
    let node = sim
        .run(move |h| {
            let submitting = Rc::new(Cell::new(false));
            let completed = Rc::new(Cell::new(false));
            let (s2, c2) = (submitting.clone(), completed.clone());
            let n = h.add_node("d", ip(), move || {
                let f = OpenOptions::new().create(true).open("/d").unwrap();
                // Set just before the submission, in the same run of this task: the
                // controller sees it only once the write is in flight.
                s2.set(true);
                if f.pwrite(&block(7, SECTORS), 0).is_ok() {
                    c2.set(true);
                }
            });
            wait_for(&submitting);
            assert!(
                !completed.get(),
                "seed {seed}: the write completed too soon"
            );
            h.crash(n);
            n
        })
        .unwrap();
    Left {
        image: sim.disk_durable(node, "/d").unwrap_or_default(),
        stats: sim.stats(),
        trace: sim.trace_hash(),
    }
}

#[test]
fn a_write_in_flight_at_a_crash_lands_whole_torn_to_any_subset_or_not_at_all() {
    let mut seen = Outcomes::default();
    let (mut at_crash, mut landed, mut torn) = (0, 0, 0);
    for seed in 0..200 {
        let left = crash_during_write(seed);
        let kept = kept_sectors(seed, &left.image);
        seen.add(&kept);
        assert_eq!(left.stats.in_flight_writes_at_crash, 1, "seed {seed}");
        let any = kept.iter().any(|&k| k);
        assert_eq!(
            left.stats.in_flight_writes_landed,
            u64::from(any),
            "seed {seed}"
        );
        at_crash += left.stats.in_flight_writes_at_crash;
        landed += left.stats.in_flight_writes_landed;
        torn += left.stats.crash_writes_torn;
    }
    assert!(seen.all_seen(), "{seen:?}");
    assert_eq!(at_crash, 200);
    assert!(
        landed > 0 && landed < 200 && torn > 0,
        "{landed} landed, {torn} torn"
    );
}

#[test]
fn a_seed_replays_its_crash_exactly() {
    let a = crash_during_write(17);
    let b = crash_during_write(17);
    assert_eq!((a.trace, &a.image, a.stats), (b.trace, &b.image, b.stats));
    let others: Vec<Left> = (18..30).map(crash_during_write).collect();
    assert!(others.iter().any(|o| o.trace != a.trace));
    assert!(others.iter().any(|o| o.image != a.image));
}

/// A node writes 7s, does not flush, and is crashed; returns the durable image.
fn crash_after_unflushed_write(seed: u64) -> Vec<u8> {
    let mut sim = Sim::new(SimConfig::new(seed));
    let node = sim
        .run(move |h| {
            let done = Rc::new(Cell::new(false));
            let d2 = done.clone();
            let n = h.add_node("d", ip(), move || {
                let f = OpenOptions::new().create(true).open("/d").unwrap();
                f.pwrite(&block(7, SECTORS), 0).unwrap();
                d2.set(true);
                sleep(Duration::from_secs(60));
            });
            wait_for(&done);
            h.crash(n);
            n
        })
        .unwrap();
    sim.disk_durable(node, "/d").unwrap_or_default()
}

#[test]
fn an_unflushed_write_tears_to_any_subset_of_its_sectors() {
    let mut seen = Outcomes::default();
    for seed in 0..200 {
        seen.add(&kept_sectors(seed, &crash_after_unflushed_write(seed)));
    }
    assert!(seen.all_seen(), "{seen:?}");
}

/// What one seed of the flush test saw.
struct FlushRun {
    /// B's write returned before the fsync did (B completed after the fsync was
    /// issued, while it was in flight).
    b_done_first: bool,
    durable: Vec<u8>,
    stats: SimStats,
}

/// Write A (sector 0) completes; then an fsync is issued, and write B (sector 1) is
/// submitted after it. When both returned, the controller reads the durable image.
fn flush_race(seed: u64) -> FlushRun {
    let mut sim = Sim::new(SimConfig::new(seed));
    let b_done_first = Rc::new(Cell::new(false));
    let image = Rc::new(RefCell::new(Vec::new()));
    let (bf, im) = (b_done_first.clone(), image.clone());
    sim.run(move |h: &SimHandle| {
        let both = Rc::new(Cell::new(false));
        let b2 = both.clone();
        let bf2 = bf.clone();
        let n = h.add_node("d", ip(), move || {
            let f = Rc::new(OpenOptions::new().create(true).open("/d").unwrap());
            f.pwrite(&block(1, 1), 0).unwrap();
            let issued = Rc::new(Cell::new(false));
            let synced = Rc::new(Cell::new(false));
            let (f2, i2, s2) = (f.clone(), issued.clone(), synced.clone());
            let syncer = spawn(move || {
                i2.set(true);
                f2.fsync().unwrap();
                s2.set(true);
            })
            .unwrap();
            for _ in 0..POLLS_MAX {
                if issued.get() {
                    break;
                }
                yield_now();
            }
            assert!(issued.get());
            f.pwrite(&block(2, 1), SECTOR as u64).unwrap();
            bf2.set(!synced.get());
            syncer.join().unwrap();
            b2.set(true);
        });
        wait_for(&both);
        *im.borrow_mut() = h.disk_durable(n, "/d").unwrap_or_default();
    })
    .unwrap();
    let durable = image.borrow().clone();
    FlushRun {
        b_done_first: b_done_first.get(),
        durable,
        stats: sim.stats(),
    }
}

#[test]
fn fsync_covers_the_writes_completed_before_it_was_issued_and_no_later_one() {
    let mut raced = 0;
    for seed in 0..100 {
        let r = flush_race(seed);
        assert!(
            r.durable.len() >= SECTOR && r.durable[..SECTOR].iter().all(|&b| b == 1),
            "seed {seed}: write A completed before the fsync was issued and is not durable"
        );
        let b = r.durable.get(SECTOR..2 * SECTOR).unwrap_or(&[]);
        assert!(
            b.iter().all(|&x| x == 0),
            "seed {seed}: write B, submitted after the fsync was issued, became durable \
             (B returned first: {})",
            r.b_done_first
        );
        raced += u32::from(r.b_done_first);
        // B completed before the fsync did: the flush saw it cached and left it.
        if r.b_done_first {
            assert_eq!(r.stats.flush_excluded_writes, 1, "seed {seed}");
        }
    }
    assert!(
        raced > 0,
        "no seed completed B while the fsync was in flight"
    );
}

#[test]
fn a_task_of_a_crashed_node_writes_nothing_while_it_unwinds() {
    for seed in 0..20 {
        let mut sim = Sim::new(SimConfig::new(seed));
        let drops = Rc::new(Cell::new(0u32));
        let d2 = drops.clone();
        let node = sim
            .run(move |h| {
                let ready = Rc::new(Cell::new(false));
                let (r2, d3) = (ready.clone(), d2.clone());
                let n = h.add_node("d", ip(), move || {
                    /// Writes 9s, durably, from its destructor: what a careless
                    /// "flush on drop" does.
                    struct WriteOnDrop(Rc<Cell<u32>>);
                    impl Drop for WriteOnDrop {
                        fn drop(&mut self) {
                            self.0.set(self.0.get() + 1);
                            if let Ok(f) = OpenOptions::new().open("/d") {
                                let _ = f.pwrite_durable(&block(9, 1), 0);
                                let _ = f.fsync();
                            }
                        }
                    }
                    let f = OpenOptions::new().create(true).open("/d").unwrap();
                    f.pwrite(&block(7, 1), 0).unwrap();
                    f.fsync().unwrap();
                    let _guard = WriteOnDrop(d3.clone());
                    r2.set(true);
                    sleep(Duration::from_secs(3600));
                });
                wait_for(&ready);
                h.crash(n);
                // Half the seeds restart at once: the unwinding task must not write
                // to the new boot's disk either.
                if seed % 2 == 0 {
                    h.restart(n);
                }
                sleep(Duration::from_millis(10));
                let view = h.disk_view(n, "/d").unwrap();
                assert!(view.iter().all(|&b| b == 7), "seed {seed}: cache changed");
                n
            })
            .unwrap();
        assert!(drops.get() >= 1, "seed {seed}: the guard was never dropped");
        assert!(
            sim.stats().dead_io_refused >= 1,
            "seed {seed}: the destructor's open was not refused"
        );
        let durable = sim.disk_durable(node, "/d").unwrap();
        assert_eq!(durable.len(), SECTOR, "seed {seed}");
        assert!(
            durable.iter().all(|&b| b == 7),
            "seed {seed}: a dead node's destructor wrote to its disk"
        );
    }
}

#[test]
fn a_stop_lets_the_writes_in_flight_complete_and_loses_nothing() {
    for seed in 0..20 {
        let mut sim = Sim::new(SimConfig::new(seed));
        let view = sim
            .run(move |h| {
                let submitting = Rc::new(Cell::new(false));
                let s2 = submitting.clone();
                let n = h.add_node("d", ip(), move || {
                    let f = OpenOptions::new().create(true).open("/d").unwrap();
                    s2.set(true);
                    let _ = f.pwrite(&block(7, SECTORS), 0);
                });
                wait_for(&submitting);
                h.stop(n);
                h.disk_view(n, "/d").unwrap()
            })
            .unwrap();
        assert_eq!(view.len(), SECTORS * SECTOR, "seed {seed}");
        assert!(view.iter().all(|&b| b == 7), "seed {seed}");
        let st = sim.stats();
        assert_eq!(
            st.in_flight_writes_at_crash, 0,
            "seed {seed}: a stop is no crash"
        );
    }
}

/// `inject_at` aims a fault at a byte range: writes elsewhere pass, the first write
/// that touches the range fails, and the one after it passes again.
#[test]
fn an_injected_fault_strikes_only_the_range_it_is_aimed_at() {
    let results = Rc::new(RefCell::new(Vec::new()));
    let armed = Rc::new(Cell::new(false));
    let (r2, a2) = (results.clone(), armed.clone());
    Sim::new(SimConfig::new(3))
        .run(move |h: &SimHandle| {
            let (r3, a3) = (r2.clone(), a2.clone());
            h.add_node("n", ip(), move || {
                let f = OpenOptions::new().create(true).open("/f").unwrap();
                wait_for(&a3);
                let buf = block(7, 1);
                for offset in [0u64, 4096, 8192, 4096] {
                    r3.borrow_mut()
                        .push((offset, f.pwrite(&buf, offset).is_ok()));
                }
            });
            h.inject_at(1, "/f", taskio::sim::DiskFault::WriteError, 4096..4608);
            a2.set(true);
            assert!(h.run_until(Duration::from_secs(1), || r2.borrow().len() == 4));
        })
        .unwrap();
    assert_eq!(
        *results.borrow(),
        [(0, true), (4096, false), (8192, true), (4096, true)]
    );
}

/// What a seed of the shared-disk test left: the view of the shared disk from each
/// node after the crash of the first, and whether the second saw the first's file.
struct SharedRun {
    view_a: Vec<u8>,
    view_b: Vec<u8>,
    /// The view after A restarted (writing nothing) and crashed again.
    view_again: Vec<u8>,
    own_seen_by_b: bool,
}

/// On a disk shared by nodes A and B (`SimHandle::share`), A writes region 0 and
/// flushes it, writes region 1 without a flush; B opens the file A created, writes
/// region 2 without a flush; A crashes; A restarts (and writes nothing) and crashes
/// again.
fn crash_of_one_sharer(seed: u64) -> SharedRun {
    let region = |r: u64| r * (SECTORS * SECTOR) as u64;
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.run(move |h| {
        h.share("/shared");
        let (a_done, b_done) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        let own_seen = Rc::new(Cell::new(false));
        let (d2, booted) = (a_done.clone(), Rc::new(Cell::new(false)));
        let a = h.add_node("a", ip(), move || {
            if booted.replace(true) {
                return sleep(Duration::from_secs(60));
            }
            let f = OpenOptions::new().create(true).open("/shared").unwrap();
            f.pwrite(&block(1, SECTORS), region(0)).unwrap();
            f.fdatasync().unwrap();
            f.pwrite(&block(7, SECTORS), region(1)).unwrap();
            OpenOptions::new().create(true).open("/own").unwrap();
            d2.set(true);
            sleep(Duration::from_secs(60));
        });
        wait_for(&a_done);
        let (b2, s2) = (b_done.clone(), own_seen.clone());
        let b = h.add_node("b", "10.0.0.2".parse().unwrap(), move || {
            // Not created here: A's file, A's bytes.
            let f = OpenOptions::new().open("/shared").unwrap();
            let mut buf = block(0, SECTORS);
            f.pread_exact(&mut buf, region(0)).unwrap();
            assert!(buf.iter().all(|&x| x == 1), "B reads A's flushed write");
            f.pwrite(&block(9, SECTORS), region(2)).unwrap();
            s2.set(OpenOptions::new().open("/own").is_ok());
            b2.set(true);
            sleep(Duration::from_secs(60));
        });
        wait_for(&b_done);
        h.crash(a);
        let (view_a, view_b) = (
            h.disk_view(a, "/shared").unwrap(),
            h.disk_view(b, "/shared").unwrap(),
        );
        h.restart(a);
        sleep(Duration::from_millis(1));
        h.crash(a);
        SharedRun {
            view_a,
            view_b,
            view_again: h.disk_view(b, "/shared").unwrap(),
            own_seen_by_b: own_seen.get(),
        }
    })
    .unwrap()
}

/// A shared disk is one image for every node; a crash of one node keeps, drops or
/// tears that node's unflushed writes alone: its flushed write and the other node's
/// unflushed write stay, and what it kept stays through the node's next crash. A
/// path not shared stays each node's own.
#[test]
fn a_crash_of_one_node_decides_only_its_own_writes_on_a_shared_disk() {
    let mut seen = Outcomes::default();
    for seed in 0..100 {
        let run = crash_of_one_sharer(seed);
        assert!(!run.own_seen_by_b, "seed {seed}: /own is A's alone");
        assert!(run.view_a == run.view_b, "seed {seed}: one image");
        let v = &run.view_b;
        let r = SECTORS * SECTOR;
        assert!(
            v[..r].iter().all(|&x| x == 1),
            "seed {seed}: A's flushed write"
        );
        assert!(
            v[2 * r..3 * r].iter().all(|&x| x == 9),
            "seed {seed}: B's unflushed write untouched by A's crash"
        );
        seen.add(&kept_sectors(seed, &v[r..2 * r]));
        assert!(
            run.view_again == run.view_b,
            "seed {seed}: the next crash of A changed what the first one kept"
        );
    }
    assert!(seen.all_seen(), "A's unflushed write: {seen:?}");
}
