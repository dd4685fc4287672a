//! `tdrv torture vssd`: the whole vSSD under simulated crashes (double crashes among
//! them, on a simulator that tears and lands writes in flight) holds the invariants
//! of DESIGN.md over 200 seeds, and a seed replays exactly (same trace hash).

mod common;

use common::{last_line, replay_line, sweep_passes, tdrv};

#[test]
fn vssd_survives_crashes_over_200_seeds() {
    sweep_passes("torture", "vssd", 200);
}

#[test]
fn a_seed_replays_exactly_and_reports_what_it_did() {
    let (c1, o1, e1) = tdrv(&["torture", "vssd", "--seed", "11"]);
    let (c2, o2, _) = tdrv(&["torture", "vssd", "--seed", "11"]);
    assert_eq!((c1, c2), (0, 0), "{o1}\n{e1}");
    assert!(last_line(&o1).starts_with("trace "), "{o1}");
    assert_eq!(last_line(&o1), last_line(&o2), "same seed, same trace");
    // The seed did work worth the name: a boot after each of the three crashes (more
    // after double crashes), checks after them.
    let boots: u64 = o1
        .split("seed 11: ok (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(boots >= 4, "{o1}");
    assert!(o1.contains("line checks after crashes"), "{o1}");
    let (_, o3, _) = tdrv(&["torture", "vssd", "--seed", "12"]);
    assert_ne!(
        last_line(&o1),
        last_line(&o3),
        "another seed, another trace"
    );
}

#[test]
fn an_unknown_area_is_a_usage_error() {
    let (code, _, err) = tdrv(&["torture", "nothing", "--seeds", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown torture area"), "{err}");
}

/// The torture is not vacuous: a client acknowledged before writep1 returns (a DTM
/// replying before phase 1 is durable) loses acknowledged writes in crashes, and the
/// torture finds them, with a replay command that replays exactly.
#[test]
fn acknowledging_before_phase_one_is_found_and_replays() {
    let (code, out, err) = tdrv(&["torture", "vssd", "--seeds", "40", "--buggy"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    let (line, seed) = replay_line(&all, "torture vssd");
    assert!(line.ends_with("--buggy"), "{line}");
    let (c1, o1, _) = tdrv(&["torture", "vssd", "--seed", &seed, "--buggy"]);
    let (c2, o2, _) = tdrv(&["torture", "vssd", "--seed", &seed, "--buggy"]);
    assert_eq!((c1, c2), (1, 1), "{o1}");
    assert!(o1.contains("acknowledged"), "{o1}");
    assert_eq!(last_line(&o1), last_line(&o2), "same seed, same trace");
    let (c3, o3, _) = tdrv(&["torture", "vssd", "--seed", &seed]);
    assert_eq!(c3, 0, "the correct client on the same seed: {o3}");
}

/// The number before `what` in a seed's summary (`N what`).
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(what)
        .next()
        .and_then(|head| head.split([' ', '(']).rfind(|w| !w.is_empty()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {summary}"))
}

/// The seeds of the torture really crash twice, during a recovery and after one, and
/// the simulator really lands and tears writes that were in flight at the crashes;
/// the workload really writes multi-line trans, some cut short by crashes (kept
/// whole by recovery, or dropped), discards ranges, retries decisions and sets
/// epochs.
#[test]
fn seeds_crash_twice_during_and_after_recovery_and_land_writes_in_flight() {
    let (mut double, mut during, mut in_flight, mut landed, mut torn) = (0, 0, 0, 0, 0);
    let (mut multi, mut cut, mut whole, mut ranges, mut retried, mut epochs) = (0, 0, 0, 0, 0, 0);
    for seed in 0..12 {
        let (code, out, err) = tdrv(&["torture", "vssd", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "{out}\n{err}");
        double += count(&out, " double crashes");
        during += count(&out, " during recovery");
        in_flight += count(&out, " in flight at crashes");
        landed += count(&out, " landed");
        torn += count(&out, " writes torn");
        multi += count(&out, " multi-line trans");
        cut += count(&out, " cut short by a crash");
        whole += count(&out, " of them kept whole");
        ranges += count(&out, " range discards");
        retried += count(&out, " decisions retried");
        epochs += count(&out, " epochs set");
    }
    assert!(
        during > 0 && double > during,
        "{double} double, {during} during"
    );
    assert!(
        landed > 0 && in_flight > landed,
        "{in_flight} in flight, {landed} landed"
    );
    assert!(torn > 0);
    assert!(
        multi > cut && cut > whole && whole > 0,
        "{multi} multi-line trans, {cut} cut short, {whole} kept whole"
    );
    assert!(
        ranges > 0 && retried > 0 && epochs > 0,
        "{ranges} range discards, {retried} retried, {epochs} epochs"
    );
}
