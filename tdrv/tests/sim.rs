//! `tdrv sim taskio`: the simulator's own scenario (a replicated key-value store with
//! partitions and crashes) holds its invariant over 1,000 seeds, the deliberately
//! broken variant (acknowledging before fdatasync) is caught, and a failing seed
//! replays exactly.

mod common;

use common::{last_line, replay_line, sweep_passes, tdrv};

#[test]
fn correct_store_survives_a_thousand_seeds() {
    sweep_passes("sim", "taskio", 1000);
}

#[test]
fn acknowledging_before_fsync_is_found_and_replays_exactly() {
    let (code, out, err) = tdrv(&["sim", "taskio", "--seeds", "200", "--buggy"]);
    assert_eq!(code, 1, "{out}\n{err}");
    // The progress bar prints failures (with their replay command) on stderr.
    let all = format!("{out}{err}");
    let (_, seed) = replay_line(&all, "sim taskio");
    let (c1, o1, _) = tdrv(&["sim", "taskio", "--seed", &seed, "--buggy"]);
    let (c2, o2, _) = tdrv(&["sim", "taskio", "--seed", &seed, "--buggy"]);
    assert_eq!((c1, c2), (1, 1), "{o1}");
    assert!(o1.contains("lost acknowledged key"), "{o1}");
    assert!(last_line(&o1).starts_with("trace "), "{o1}");
    assert_eq!(last_line(&o1), last_line(&o2), "same seed, same trace");
    // The same seed with the correct store passes.
    let (c3, o3, _) = tdrv(&["sim", "taskio", "--seed", &seed]);
    assert_eq!(c3, 0, "{o3}");
}

/// The scenario's partitions are of both kinds, and the silent ones really swallow
/// traffic (the client's timeouts end its waits; the seed still passes).
#[test]
fn partitions_are_resetting_or_silent_and_silent_ones_drop_traffic() {
    let (mut silent, mut reset, mut dropped) = (0, 0, 0);
    for seed in 0..8 {
        let (code, out, _) = tdrv(&["sim", "taskio", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "{out}");
        silent += u32::from(out.contains("1 silent and 0 resetting"));
        reset += u32::from(out.contains("0 silent and 1 resetting"));
        dropped += u32::from(!out.contains(", 0 chunks and"));
    }
    assert!(
        silent > 0 && reset > 0 && dropped > 0,
        "{silent} {reset} {dropped}"
    );
}
