//! `tdrv sim cdev`: a cache device on a simulated node (clients writing, reading and
//! discarding in shared lines, destage, mode changes, crashes and restarts; a
//! quarter of the seeds with a cache smaller than the writes in flight; a third on
//! two nodes, where the replica's node takes the device over after the primary's
//! crashed) keeps every acknowledged write over 200 seeds and destages exactly the
//! cache's view; the device with its read-modify-write lock broken is caught; a
//! seed replays exactly.

mod common;

use common::{count, last_line, replay_line, sweep_passes, tdrv};

#[test]
fn a_cache_device_keeps_every_acknowledged_write_over_two_hundred_seeds() {
    sweep_passes("sim", "cdev", 200);
    // Among them the seeds with a cache smaller than the writes in flight, and seed
    // 15 (a writer waiting for room while set_mode's destage waited for its lines:
    // stalled before the destage could go around held lines).
    let (code, out, err) = tdrv(&["sim", "cdev", "--seed", "15"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("seed 15: 10 cache lines of 16,"), "{out}");
}

/// Over a few seeds everything the scenario claims happens: crashes, writes, checked
/// reads, discards, mode changes, writes in flight at a crash that landed, destage, evictions.
#[test]
fn every_operation_and_a_crash_with_writes_in_flight_happen() {
    let words = [
        " crashes",
        " writes acknowledged",
        " reads checked",
        " discards",
        " mode changes",
        " in-flight blocks landed",
        " destage runs",
        " evictions",
    ];
    let mut totals = [0u64; 8];
    for seed in 0..8 {
        let (code, out, _) = tdrv(&["sim", "cdev", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "{out}");
        for (t, w) in totals.iter_mut().zip(words) {
            *t += count(&out, w);
        }
    }
    assert!(totals.iter().all(|&t| t > 0), "{totals:?}");
}

/// Over a few seeds, the replica's node takes the device over after the primary's
/// node crashed (lines dirty), and its clients' writes are acknowledged and checked
/// (the seed passes: every block and the backing store after `destage_all`).
#[test]
fn a_replica_on_another_node_takes_the_device_over_and_goes_on() {
    let (mut takeovers, mut after, mut dirty) = (0, 0, 0);
    for seed in 0..9 {
        let (code, out, _) = tdrv(&["sim", "cdev", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "{out}");
        takeovers += count(&out, " takeovers");
        after += count(&out, " after a takeover");
        dirty += count(&out, " lines dirty");
    }
    assert!(takeovers >= 2, "{takeovers} takeovers");
    assert!(after > 0, "no write acknowledged after a takeover");
    // The takeover found lines the old primary had not destaged: they came from
    // the replica vSSD, not the backing store.
    assert!(dirty > 0, "no takeover found a dirty line");
}

#[test]
fn a_broken_read_modify_write_lock_is_caught_and_replays_exactly() {
    let (code, out, err) = tdrv(&["sim", "cdev", "--seeds", "20", "--buggy"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    let (_, seed) = replay_line(&all, "sim cdev");
    let (c1, o1, _) = tdrv(&["sim", "cdev", "--seed", &seed, "--buggy"]);
    let (c2, o2, _) = tdrv(&["sim", "cdev", "--seed", &seed, "--buggy"]);
    assert_eq!((c1, c2), (1, 1), "{o1}");
    assert!(o1.contains("holds neither its acknowledged write"), "{o1}");
    assert!(last_line(&o1).starts_with("trace "), "{o1}");
    assert_eq!(last_line(&o1), last_line(&o2), "same seed, same trace");
    // The same seed with the lock in place passes, and replays exactly too.
    let (c3, o3, _) = tdrv(&["sim", "cdev", "--seed", &seed]);
    let (c4, o4, _) = tdrv(&["sim", "cdev", "--seed", &seed]);
    assert_eq!((c3, c4), (0, 0), "{o3}");
    assert_eq!(last_line(&o3), last_line(&o4), "same seed, same trace");
}
