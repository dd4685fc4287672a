//! `tdrv sim rpc`: rpc sessions under crashes and restarts of the server,
//! partitions, slow links and bad frames hold their checks over 200 seeds; the
//! troubles really happen; the deliberately broken service (a handler that never
//! returns) is caught by the leak check; a seed replays exactly.

mod common;

use common::{count, last_line, replay_line, sweep_passes, tdrv};

#[test]
fn rpc_sessions_survive_two_hundred_seeds_of_trouble() {
    sweep_passes("sim", "rpc", 200);
}

/// Over a few seeds every kind of trouble struck: crashes, both kinds of
/// partition, corrupted and truncated frames, slow links; and calls failed and
/// timed out, while most were answered.
#[test]
fn every_kind_of_trouble_strikes_and_calls_end_every_way() {
    let mut totals = [0u64; 8];
    let mut slow = 0;
    for seed in 0..12 {
        let (code, out, _) = tdrv(&["sim", "rpc", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "{out}");
        let words = [
            " calls answered",
            " timed out",
            " failed,",
            " crashes",
            " resetting",
            " silent partitions",
            " corrupted",
            " truncated on the wire",
        ];
        for (t, w) in totals.iter_mut().zip(words) {
            *t += count(&out, w);
        }
        slow += u32::from(out.contains("slow links"));
    }
    assert!(totals.iter().all(|&t| t > 0), "{totals:?}");
    assert!(totals[0] > 10 * (totals[1] + totals[2]), "{totals:?}");
    assert!(slow > 0, "no seed ran over slow links");
}

#[test]
fn a_handler_that_never_returns_is_found_as_a_leak_and_replays_exactly() {
    let (code, out, err) = tdrv(&["sim", "rpc", "--seeds", "40", "--buggy"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    let (_, seed) = replay_line(&all, "sim rpc");
    let (c1, o1, _) = tdrv(&["sim", "rpc", "--seed", &seed, "--buggy"]);
    let (c2, o2, _) = tdrv(&["sim", "rpc", "--seed", &seed, "--buggy"]);
    assert_eq!((c1, c2), (1, 1), "{o1}");
    assert!(o1.contains("leak: "), "{o1}");
    assert!(last_line(&o1).starts_with("trace "), "{o1}");
    assert_eq!(last_line(&o1), last_line(&o2), "same seed, same trace");
    // The same seed with the correct service passes, and replays exactly too.
    let (c3, o3, _) = tdrv(&["sim", "rpc", "--seed", &seed]);
    let (c4, o4, _) = tdrv(&["sim", "rpc", "--seed", &seed]);
    assert_eq!((c3, c4), (0, 0), "{o3}");
    assert_eq!(last_line(&o3), last_line(&o4), "same seed, same trace");
}
