//! `tdrv sim dtm`: a replicated device of 2 or 3 nodes over real rpc holds its
//! checks over 200 seeds of crashes, takeovers, partitions, disk faults and slow
//! replicas; the troubles really happen; acknowledging after the local writep1
//! alone (`--buggy`) is caught; a seed replays exactly.

mod common;

use common::{count, last_line, replay_line, sweep_passes, tdrv};

#[test]
fn a_replicated_device_survives_two_hundred_seeds_of_trouble() {
    sweep_passes("sim", "dtm", 200);
}

/// The seeds that the large sweeps found failing, each fixed since (a test in dtm
/// names each bug): a cut-off primary's lone epoch (692, 10967, 12574), a 2-node
/// takeover from a primary that had degraded to itself (8017, 21775, 22174, 25667),
/// a damaged line on a resync's target (14311), a refuted claim of the epoch on a
/// returning replica (30163, 30297, 30879, 31296), an in-doubt payload marked
/// damaged by a read fault (11972, 15845), a recovery's fence recorded on its own
/// replica first (12376; 16035 and 25094, two claims of one epoch too, pass since),
/// a returning replica's in-doubt tran committed by an id another primary used
/// (4148); refuted claims a decider whose own record failed left behind: trusted
/// over the primary's epoch (92431), refused by a resync for ever (7579, 86875),
/// and one refused by a recovery although it held no later write (550); a fenced
/// primary handing out the ids of the epoch that fenced it (36372); a resync that
/// judged a replica against a membership change under way (50656, 57977); writes
/// let in at an epoch whose record timed out on a member, before the loss was
/// settled (11191); a check after a recovery that a takeover overtook (13276); a
/// replica that failed a write while resynced, made a member all the same (69012).
#[test]
fn the_seeds_the_sweeps_found_pass() {
    for seed in [
        692, 4148, 8017, 10967, 11972, 12376, 12574, 14311, 15845, 16035, 21775, 22174, 25094,
        25667, 30163, 30297, 30879, 31296, 4884, 8981, 52513, 7579, 86875, 36372, 92431, 550,
        50656, 57977, 11191, 13276, 69012,
    ] {
        let (code, out, err) = tdrv(&["sim", "dtm", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "seed {seed}: {out}\n{err}");
    }
}

/// Over a few seeds every kind of trouble struck and every path ran: takeovers,
/// resyncs, in-doubt trans committed by recovery, writes that failed; devices of 2
/// and of 3 nodes; most writes were acknowledged and every line checked.
#[test]
fn every_kind_of_trouble_strikes_and_every_path_runs() {
    let words = [
        " writes acknowledged",
        " failed, ",
        " reads checked",
        " in-doubt committed",
        " takeovers",
        " resyncs (",
        " crashes",
        " partitions",
        " disk faults",
        " slow spells",
        " lines checked on every member",
    ];
    let mut totals = [0u64; 11];
    let (mut two, mut three) = (0, 0);
    for seed in 0..16 {
        let (code, out, _) = tdrv(&["sim", "dtm", "--seed", &seed.to_string()]);
        assert_eq!(code, 0, "{out}");
        for (t, w) in totals.iter_mut().zip(words) {
            *t += count(&out, w);
        }
        two += u32::from(out.contains("2 nodes, min 1"));
        three += u32::from(out.contains("3 nodes, min 2"));
    }
    assert!(totals.iter().all(|&t| t > 0), "{totals:?}");
    assert!(totals[0] > 10 * totals[1], "{totals:?}");
    assert_eq!(totals[10], 16 * 24, "every line of every seed checked");
    assert!(two > 0 && three > 0, "{two} and {three}");
}

#[test]
fn acknowledging_after_the_local_writep1_alone_is_caught_and_replays_exactly() {
    // Most seeds catch it (14 of the first 20): a takeover finds acknowledged
    // writes missing, or the members disagree at the end.
    let (code, out, err) = tdrv(&["sim", "dtm", "--seeds", "20", "--buggy"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let all = format!("{out}{err}");
    let (_, seed) = replay_line(&all, "sim dtm");
    let (c1, o1, _) = tdrv(&["sim", "dtm", "--seed", &seed, "--buggy"]);
    let (c2, o2, _) = tdrv(&["sim", "dtm", "--seed", &seed, "--buggy"]);
    assert_eq!((c1, c2), (1, 1), "{o1}");
    assert!(o1.contains("was acknowledged"), "{o1}");
    assert!(last_line(&o1).starts_with("trace "), "{o1}");
    assert_eq!(last_line(&o1), last_line(&o2), "same seed, same trace");
    // The same seed with the correct replicas passes, and replays exactly too.
    let (c3, o3, _) = tdrv(&["sim", "dtm", "--seed", &seed]);
    let (c4, o4, _) = tdrv(&["sim", "dtm", "--seed", &seed]);
    assert_eq!((c3, c4), (0, 0), "{o3}");
    assert_eq!(last_line(&o3), last_line(&o4), "same seed, same trace");
}
