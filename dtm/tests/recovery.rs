//! `recover` over `LocalReplica`s, each on its own vSSD file, on one runtime: the
//! in-doubt trans resolved, damaged copies repaired, lagging members reconciled,
//! members lost and found stale, too few members refused, a second primary fenced.

mod support;

use std::path::PathBuf;
use std::rc::Rc;

use dtm::{DtmError, InDoubtTran, LocalReplica, Replica, ReplicaError, recover};
use support::{
    LINE, TempDir, damage_slot, formatted, in_doubt_slot, open_vssd, payload, replica, run_io,
};
use taskio::AlignedBuf;
use vssd::TranOutcome;

const ALL: [u64; 3] = [1, 2, 3];

/// Three formatted vSSD files, members 1, 2 and 3 (member `m` at `paths[m - 1]`),
/// moved to epoch 1 by a first recovery.
fn device(dir: &TempDir) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| formatted(dir, n))
        .collect();
    let p = paths.clone();
    run_io(move || {
        let locals = open_all(&p, &ALL);
        let rec = recover(&dyns(&locals), &ALL, 3).unwrap();
        assert_eq!(rec.epoch, 1);
        assert_eq!(rec.members.len(), 3);
        assert_eq!((rec.committed, rec.aborted, rec.reconciled), (0, 0, 0));
        close(&locals);
    });
    paths
}

/// The replicas of `members`, opened at their vSSD's epoch.
fn open_all(paths: &[PathBuf], members: &[u64]) -> Vec<Rc<LocalReplica>> {
    members
        .iter()
        .map(|&m| Rc::new(replica(&paths[m as usize - 1], m)))
        .collect()
}

fn dyns(locals: &[Rc<LocalReplica>]) -> Vec<Rc<dyn Replica>> {
    locals
        .iter()
        .map(|r| r.clone() as Rc<dyn Replica>)
        .collect()
}

fn close(locals: &[Rc<LocalReplica>]) {
    for r in locals {
        r.vssd().close();
    }
}

fn version(r: &dyn Replica, line: u64) -> Option<u64> {
    let mut buf = AlignedBuf::new(LINE as usize);
    r.read(line, &mut buf).unwrap()
}

/// Every replica holds the same dirty lines at the same versions, and `line` holds
/// the data of `tran` written from `first`.
fn agree(locals: &[Rc<LocalReplica>]) -> Vec<(u64, u64)> {
    let dirty = locals[0].dirty(0, 1000).unwrap();
    for r in &locals[1..] {
        assert_eq!(r.dirty(0, 1000).unwrap(), dirty, "{}", r.name());
    }
    dirty
}

fn holds(r: &dyn Replica, line: u64, first: u64, lines: u64, tran: u64) {
    let mut buf = AlignedBuf::new(LINE as usize);
    assert_eq!(r.read(line, &mut buf).unwrap(), Some(tran), "{}", r.name());
    let at = (line - first) as usize * LINE as usize;
    assert_eq!(
        &buf[..],
        &payload(first, lines, tran)[at..][..LINE as usize],
        "{} line {line}",
        r.name()
    );
}

#[test]
fn in_doubt_trans_are_committed_when_complete_or_committed_somewhere_aborted_otherwise() {
    let dir = TempDir::new("rec-in-doubt");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        // 100: prepared on all (acknowledged, its COMMITs lost).
        // 101: prepared on member 1 only (never acknowledged).
        // 102: prepared on all, committed on member 1 only (lazy COMMITs cut short).
        // 103: committed on members 1 and 2, never written to 3 (lagging member).
        // 104: prepared on 1 and 2, aborted on 3 (a failed write).
        for m in &r {
            m.writep1(100, 0, &payload(0, 2, 100)).unwrap();
            m.writep1(102, 10, &payload(10, 1, 102)).unwrap();
        }
        r[0].writep1(101, 5, &payload(5, 1, 101)).unwrap();
        r[0].commit(&[102]).unwrap();
        for m in &r[..2] {
            m.writep1(103, 20, &payload(20, 3, 103)).unwrap();
            m.commit(&[103]).unwrap();
            m.writep1(104, 30, &payload(30, 1, 104)).unwrap();
        }
        r[2].writep1(104, 30, &payload(30, 1, 104)).unwrap();
        r[2].abort(104).unwrap();
        // 105: prepared on all, committed on member 3 before a checkpoint (forgotten
        // there after the restart, its line holding it).
        for m in &r {
            m.writep1(105, 40, &payload(40, 1, 105)).unwrap();
        }
        r[2].commit(&[105]).unwrap();
        r[2].vssd().checkpoint().unwrap();
        close(&r);
    });
    run_io(move || {
        let r = open_all(&paths, &ALL);
        assert_eq!(r[2].outcome(105).unwrap(), TranOutcome::Forgotten);
        let rec = recover(&dyns(&r), &ALL, 2).unwrap();
        assert_eq!(rec.epoch, 2);
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!(members, ALL);
        assert!(rec.lost.is_empty() && rec.stale.is_empty(), "{rec:?}");
        assert_eq!((rec.committed, rec.aborted), (3, 2), "{rec:?}");
        assert_eq!((rec.repaired, rec.damaged_aborted), (0, 0), "{rec:?}");
        assert_eq!(
            rec.reconciled,
            3,
            "103's three lines to member 3: {rec:?} {:?}",
            r[2].dirty(0, 100)
        );
        for m in &r {
            assert_eq!((m.vssd().epoch(), m.vssd().members()), (2, ALL.to_vec()));
            assert!(m.in_doubt(0, 10).unwrap().0.is_empty(), "{}", m.name());
            holds(&**m, 1, 0, 2, 100);
            holds(&**m, 10, 10, 1, 102);
            holds(&**m, 22, 20, 3, 103);
            holds(&**m, 40, 40, 1, 105);
            assert_eq!(version(&**m, 5), None);
            assert_eq!(version(&**m, 30), None);
        }
        assert_eq!(r[0].outcome(101).unwrap(), TranOutcome::Aborted);
        let dirty = agree(&r);
        assert_eq!(
            dirty,
            vec![
                (0, 100),
                (1, 100),
                (10, 102),
                (20, 103),
                (21, 103),
                (22, 103),
                (40, 105),
            ]
        );
        // Again: nothing left to do, one epoch on.
        let rec = recover(&dyns(&r), &ALL, 3).unwrap();
        assert_eq!(rec.epoch, 3);
        assert_eq!((rec.committed, rec.aborted, rec.reconciled), (0, 0, 0));
        close(&r);
    });
}

#[test]
fn a_damaged_copy_is_repaired_from_an_intact_one_and_aborted_when_none_is_intact() {
    let dir = TempDir::new("rec-damaged");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        for m in &r {
            m.writep1(100, 0, &payload(0, 2, 100)).unwrap();
            m.writep1(101, 8, &payload(8, 1, 101)).unwrap();
        }
        close(&r);
    });
    // 100 damaged on member 2; 101 on every member.
    damage_slot(&paths[1], in_doubt_slot(&paths[1], 100));
    for p in &paths {
        damage_slot(p, in_doubt_slot(p, 101));
    }
    run_io(move || {
        let r = open_all(&paths, &ALL);
        let listed = r[1].in_doubt(0, 10).unwrap().0;
        assert!(listed.iter().all(|d| d.damaged), "{listed:?}");
        let rec = recover(&dyns(&r), &ALL, 3).unwrap();
        assert_eq!((rec.committed, rec.aborted), (1, 0), "{rec:?}");
        assert_eq!((rec.repaired, rec.damaged_aborted), (1, 1), "{rec:?}");
        for m in &r {
            holds(&**m, 0, 0, 2, 100);
            holds(&**m, 1, 0, 2, 100);
            assert_eq!(version(&**m, 8), None);
            assert_eq!(m.outcome(101).unwrap(), TranOutcome::Aborted);
        }
        assert_eq!(agree(&r), vec![(0, 100), (1, 100)]);
        close(&r);
    });
}

#[test]
fn a_missing_member_is_left_out_while_enough_remain_and_comes_back_stale() {
    let dir = TempDir::new("rec-missing");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        // Prepared on the two that will be reachable; member 3 never got it.
        for m in &r[..2] {
            m.writep1(100, 4, &payload(4, 1, 100)).unwrap();
        }
        close(&r);
    });
    let p = paths.clone();
    run_io(move || {
        // Member 3 does not open.
        let r = open_all(&p, &[1, 2]);
        let rec = recover(&dyns(&r), &ALL, 2).unwrap();
        assert_eq!(rec.epoch, 2);
        assert_eq!(rec.lost, vec![3]);
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!(members, vec![1, 2]);
        assert_eq!(rec.committed, 1, "complete on every survivor: {rec:?}");
        for m in &r {
            assert_eq!((m.vssd().epoch(), m.vssd().members()), (2, vec![1, 2]));
            holds(&**m, 4, 4, 1, 100);
        }
        close(&r);
    });
    let p = paths.clone();
    run_io(move || {
        // Fewer than min_replicas members of epoch 2 reachable: refused, and no
        // epoch moved.
        let r = open_all(&p, &[1]);
        let e = recover(&dyns(&r), &ALL, 2).unwrap_err();
        assert!(
            matches!(
                &e,
                DtmError::TooFewReplicas { epoch: 2, members, reachable, min: 2, .. }
                    if *members == vec![1, 2] && *reachable == vec![1]
            ),
            "{e}"
        );
        assert_eq!(r[0].vssd().epoch(), 2);
        close(&r);
    });
    run_io(move || {
        // Member 3 back: still at epoch 1, out of epoch 2: stale, left alone.
        let r = open_all(&paths, &ALL);
        let rec = recover(&dyns(&r), &ALL, 2).unwrap();
        assert_eq!((rec.epoch, rec.stale.clone()), (3, vec![3]), "{rec:?}");
        assert!(rec.lost.is_empty(), "{rec:?}");
        assert_eq!(r[2].vssd().epoch(), 1);
        assert_eq!(r[0].vssd().members(), vec![1, 2]);
        // Member 3 alone cannot revive epoch 1 when a majority is needed (with
        // min_replicas 1 it could: see the recovery module's documentation).
        let e = recover(&dyns(&r[2..]), &ALL, 2).unwrap_err();
        assert!(
            matches!(e, DtmError::TooFewReplicas { epoch: 1, .. }),
            "{e}"
        );
        assert_eq!(r[2].vssd().epoch(), 1);
        close(&r);
    });
}

#[test]
fn a_primary_whose_replicas_moved_to_a_newer_epoch_is_fenced() {
    let dir = TempDir::new("rec-fenced");
    let paths = device(&dir);
    run_io(move || {
        let vssds: Vec<vssd::Vssd> = paths.iter().map(|p| open_vssd(p)).collect();
        // Two primaries open the same replicas at epoch 1.
        let opening = |who: &str| -> Vec<Rc<LocalReplica>> {
            vssds
                .iter()
                .zip(ALL)
                .map(|(v, m)| Rc::new(LocalReplica::new(v.clone(), m, format!("{who}-{m}"), 1)))
                .collect()
        };
        let (a, b) = (opening("a"), opening("b"));
        a[0].writep1(100, 1, &payload(1, 1, 100)).unwrap();
        let rec = recover(&dyns(&b), &ALL, 3).unwrap();
        assert_eq!(rec.epoch, 2);
        assert_eq!(rec.aborted, 1, "a's half-done write: {rec:?}");
        // `a` can neither write nor take the device back.
        let e = a[1].writep1(101, 2, &payload(2, 1, 101)).unwrap_err();
        assert!(
            matches!(
                e.kind,
                dtm::ReplicaErrorKind::StaleEpoch { replica_epoch: 2 }
            ),
            "{e}"
        );
        let e = recover(&dyns(&a), &ALL, 3).unwrap_err();
        assert!(
            matches!(
                e,
                DtmError::Fenced {
                    replica_epoch: 2,
                    epoch: 2,
                    ..
                }
            ),
            "{e}"
        );
        for v in &vssds {
            assert_eq!(v.epoch(), 2);
            v.close();
        }
    });
}

/// Replicas whose claims of an epoch disagree and stand both are not one device's
/// (claims that refute each other never took effect: see the tests below); a member
/// that fails during recovery fails it (the caller reopens what it can and retries).
#[test]
fn disagreeing_members_are_refused_and_a_failing_member_fails_the_recovery() {
    let dir = TempDir::new("rec-errors");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        // Two primaries each degraded to itself (a split brain): neither claim
        // lists the other's replica, so neither refutes the other.
        r[0].vssd().set_epoch(5, &[1]).unwrap();
        r[1].vssd().set_epoch(5, &[2]).unwrap();
        close(&r);
    });
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        let e = recover(&dyns(&r), &ALL, 1).unwrap_err();
        assert!(
            matches!(&e, DtmError::Mismatch { why, .. } if why.contains("epoch 5")),
            "{e}"
        );
        r[0].vssd().set_epoch(6, &ALL).unwrap();
        r[1].vssd().set_epoch(6, &ALL).unwrap();
        r[2].vssd().set_epoch(6, &ALL).unwrap();
        close(&r);
    });
    run_io(move || {
        let r = open_all(&paths, &ALL);
        r[1].vssd().close();
        let e = recover(&dyns(&r), &ALL, 2).unwrap_err();
        assert!(
            matches!(&e, DtmError::Replica(re) if re.kind.is_loss() && re.op == "set_epoch"),
            "{e}"
        );
        close(&r);
    });
}

/// Two primaries moved from one epoch: the fenced one recorded the next epoch on
/// its own replica only, with members another member records differently. That
/// claim never took effect: its replica is stale, and the other claim's members
/// recover (found by `tdrv sim dtm` seed 60: every later recovery was refused as a
/// mismatch, and the device never came back).
#[test]
fn a_claim_of_an_epoch_that_one_of_its_members_refutes_is_stale() {
    let dir = TempDir::new("rec-refuted");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        r[0].vssd().set_epoch(4, &[1, 2]).unwrap();
        r[1].vssd().set_epoch(4, &[3, 2]).unwrap();
        r[2].vssd().set_epoch(4, &[3, 2]).unwrap();
        close(&r);
    });
    run_io(move || {
        let r = open_all(&paths, &ALL);
        let rec = recover(&dyns(&r), &ALL, 2).unwrap();
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!((rec.epoch, members), (5, vec![2, 3]), "{rec:?}");
        assert_eq!(
            (rec.stale.clone(), rec.lost.clone()),
            (vec![1], vec![]),
            "{rec:?}"
        );
        close(&r);
    });
}

/// Two primaries that raced from one epoch with the same members each recorded
/// their own order (itself first) on the replica they won: the same members, so the
/// epoch stands (neither won everywhere, so no write was made at it) and recovery
/// goes on instead of refusing the device for ever (`tdrv sim dtm` seed 26548:
/// "epoch 2 has members [2, 1] against [1, 2]").
#[test]
fn two_records_of_an_epoch_that_order_its_members_differently_agree() {
    let dir = TempDir::new("rec-order");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &[1, 2]);
        r[0].vssd().set_epoch(2, &[1, 2]).unwrap();
        r[1].vssd().set_epoch(2, &[2, 1]).unwrap();
        close(&r);
    });
    run_io(move || {
        let r = open_all(&paths, &[1, 2]);
        let rec = recover(&dyns(&r), &[1, 2], 2).unwrap();
        let mut members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        members.sort_unstable();
        assert_eq!((rec.epoch, members), (3, vec![1, 2]), "{rec:?}");
        assert!(rec.stale.is_empty() && rec.lost.is_empty(), "{rec:?}");
        close(&r);
    });
}

/// Recoveries that failed while they fenced left one member behind the newest
/// epoch (its set_epoch failed each time): those epochs never had a write (each
/// member records an epoch before any write at it), so the member still holds every
/// acknowledged write and counts as reachable (found by `tdrv sim dtm` seed 120: a
/// disk error failed the fence on one member, and every later recovery was
/// refused for too few members, for ever).
#[test]
fn a_member_behind_the_newest_epoch_that_lists_it_is_reachable() {
    let dir = TempDir::new("rec-behind");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p, &ALL);
        r[0].vssd().set_epoch(2, &[1, 2]).unwrap();
        r[0].vssd().set_epoch(3, &[1, 2]).unwrap();
        close(&r);
    });
    run_io(move || {
        let r = open_all(&paths, &[1, 2]);
        let rec = recover(&dyns(&r), &ALL, 2).unwrap();
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!((rec.epoch, members), (4, vec![1, 2]), "{rec:?}");
        assert!(rec.stale.is_empty(), "{rec:?}");
        for m in &r {
            assert_eq!(m.info().epoch, 4, "{}", m.name());
        }
        close(&r);
    });
}

/// A replica whose listings never end (ids and lines that keep rising, each page
/// saying more follow): its in-doubt listing, or its dirty listing, is refused once
/// it listed more than its slots can hold, naming the replica and the count; not
/// paged for ever.
struct Endless {
    inner: Rc<LocalReplica>,
    /// Which listing never ends.
    in_doubt: bool,
}

impl dtm::Forward for Endless {
    fn inner(&self) -> &dyn Replica {
        &*self.inner
    }
    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError> {
        if !self.in_doubt {
            return self.inner.in_doubt(after, max);
        }
        let page = (after + 1..=after + max as u64)
            .map(|tran| InDoubtTran {
                tran,
                line: 0,
                line_count: 1,
                payload_len: LINE,
                damaged: false,
            })
            .collect();
        Ok((page, true))
    }
    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        if self.in_doubt {
            return self.inner.dirty(from, max);
        }
        Ok((from..from + max as u64).map(|l| (l, 7)).collect())
    }
}

#[test]
fn a_replica_whose_listings_never_end_is_refused() {
    let dir = TempDir::new("rec-endless");
    let paths = device(&dir);
    for in_doubt in [true, false] {
        let p = paths.clone();
        run_io(move || {
            let locals = open_all(&p, &ALL);
            let slots = locals[1].info().lines;
            let mut opened = dyns(&locals);
            opened[1] = Rc::new(Endless {
                inner: locals[1].clone(),
                in_doubt,
            });
            let e = recover(&opened, &ALL, 3).expect_err("refused");
            let op = if in_doubt { "in_doubt" } else { "dirty" };
            assert!(
                matches!(&e, DtmError::BadAnswer { op: o, replica, why }
                    if *o == op && *replica == locals[1].name()
                        && why.contains(&format!("its {slots} slots"))),
                "{e}"
            );
            close(&locals);
        });
    }
}

/// A copy marked damaged because one read of it failed its CRC at the vSSD's open
/// (a transient fault: the payload is intact on disk) is read again before it is
/// given up: with no intact copy elsewhere, the re-read repairs and commits it.
/// Before, such a tran was aborted, and with one replica required an acknowledged
/// write was lost (`tdrv sim dtm` seeds 11972 and 15845: a corrupt read injected
/// just before the primary's restart).
#[test]
fn a_copy_damaged_by_a_read_fault_at_open_is_read_again_and_committed() {
    let dir = TempDir::new("rec-reread");
    let paths = device(&dir);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p[..1], &[1]);
        r[0].writep1(100, 4, &payload(4, 2, 100)).unwrap();
        close(&r);
    });
    let slot = in_doubt_slot(&paths[0], 100);
    damage_slot(&paths[0], slot);
    let p = paths.clone();
    run_io(move || {
        let r = open_all(&p[..1], &[1]);
        let listed = r[0].in_doubt(0, 10).unwrap().0;
        assert!(listed.iter().all(|d| d.damaged), "{listed:?}");
        // The fault was in the read: the bytes on disk are intact again.
        damage_slot(&p[0], slot);
        let rec = recover(&dyns(&r), &ALL, 1).unwrap();
        assert_eq!((rec.committed, rec.aborted), (1, 0), "{rec:?}");
        assert_eq!((rec.repaired, rec.damaged_aborted), (1, 0), "{rec:?}");
        holds(&*r[0], 4, 4, 2, 100);
        holds(&*r[0], 5, 4, 2, 100);
        assert_eq!(r[0].outcome(100).unwrap(), TranOutcome::Committed);
        close(&r);
    });
}

/// A replica whose `set_epoch` times out (a slow peer: it may apply it later).
struct SlowEpoch(Rc<LocalReplica>);

impl dtm::Forward for SlowEpoch {
    fn inner(&self) -> &dyn Replica {
        &*self.0
    }
    fn set_epoch(&self, _epoch: u64, _members: &[u64]) -> Result<(), ReplicaError> {
        Err(ReplicaError {
            op: "set_epoch",
            replica: self.0.name().to_string(),
            kind: dtm::ReplicaErrorKind::Timeout,
        })
    }
}

/// Recovery's fence records the new epoch on its own (first) replica last, after
/// every other member: a fence that fails on a member leaves the local replica at
/// its epoch. Before, the local replica recorded the new epoch with all members
/// while the slow member applied a loss's epoch of the same number (with fewer
/// members) a moment later: two claims of one epoch that each refute the other, and
/// every later recovery refused the device (`tdrv sim dtm` seed 12376).
#[test]
fn a_fence_that_fails_on_a_member_leaves_the_local_replica_at_its_epoch() {
    let dir = TempDir::new("rec-fence-last");
    let paths = device(&dir);
    run_io(move || {
        let r = open_all(&paths, &ALL);
        let mut opened = dyns(&r);
        opened[1] = Rc::new(SlowEpoch(r[1].clone()));
        let e = recover(&opened, &ALL, 2).expect_err("the fence failed");
        assert!(
            matches!(e, DtmError::Replica(_) | DtmError::TooFewReplicas { .. }),
            "{e}"
        );
        assert_eq!(
            (r[0].vssd().epoch(), r[0].vssd().members()),
            (1, ALL.to_vec()),
            "the local replica recorded the fence's epoch"
        );
        close(&r);
    });
}

/// Two replicas, member 1 at `a` and member 2 at `b`, whose vSSDs hold the epochs
/// `a_epochs` and `b_epochs` (each recorded in turn), closed.
fn epochs(dir: &TempDir, a_epochs: &[(u64, &[u64])], b_epochs: &[(u64, &[u64])]) -> [PathBuf; 2] {
    let (pa, pb) = (formatted(dir, "a"), formatted(dir, "b"));
    let (a_epochs, b_epochs) = (a_epochs.to_vec(), b_epochs.to_vec());
    let (a, b) = (pa.clone(), pb.clone());
    let own: Vec<(u64, Vec<u64>)> = a_epochs.iter().map(|(e, m)| (*e, m.to_vec())).collect();
    let other: Vec<(u64, Vec<u64>)> = b_epochs.iter().map(|(e, m)| (*e, m.to_vec())).collect();
    run_io(move || {
        for (path, list) in [(&a, &own), (&b, &other)] {
            let v = open_vssd(path);
            for (epoch, members) in list {
                v.set_epoch(*epoch, members).unwrap();
            }
            v.close();
        }
    });
    [pa, pb]
}

/// Tries of member 1's recovery whose own record failed left member 2 at epochs 1
/// and 2 with members [1, 2]; member 1 then recovered alone (min_replicas 1) at
/// epoch 1 and acknowledged a write whose COMMIT a crash lost. The claim of epoch 2
/// never took effect (its first member, recorded last, never recorded it): member
/// 1's epoch is trusted, its tran committed. Before, member 1 counted as a member
/// of epoch 2 that lagged, and the tran, missing on member 2, was aborted: an
/// acknowledged write lost (`tdrv sim dtm` seed 92431).
#[test]
fn a_claim_its_first_member_never_recorded_is_refuted() {
    let dir = TempDir::new("rec-refuted-first");
    let [pa, pb] = epochs(&dir, &[(1, &[1])], &[(1, &[1, 2]), (2, &[1, 2])]);
    let tran = (1 << dtm::TRAN_EPOCH_SHIFT) + 5;
    let a = pa.clone();
    run_io(move || {
        let v = open_vssd(&a);
        v.writep1(tran, 7, &payload(7, 1, tran)).unwrap();
        v.close();
    });
    run_io(move || {
        let r = [Rc::new(replica(&pa, 1)), Rc::new(replica(&pb, 2))];
        let rec = recover(&dyns(&r), &[1, 2], 1).unwrap();
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!((members, rec.stale.clone()), (vec![1], vec![2]), "{rec:?}");
        assert_eq!(
            (rec.epoch, rec.committed, rec.aborted),
            (3, 1, 0),
            "{rec:?}"
        );
        let mut buf = AlignedBuf::new(LINE as usize);
        assert_eq!(r[0].read(7, &mut buf).unwrap(), Some(tran));
        close(&r);
    });
}

/// A recovery whose own record failed left member 2 one epoch past member 1, with
/// the members it chose. Tried again, it records that epoch again (completing the
/// claim) rather than the next: retries do not move the members one epoch further
/// each time (`tdrv sim dtm` seed 7579 went to epoch 16 so), and member 2 counts.
#[test]
fn a_retried_recovery_records_its_own_refuted_claim_again() {
    let dir = TempDir::new("rec-retry");
    let [pa, pb] = epochs(&dir, &[(2, &[1, 2])], &[(2, &[1, 2]), (3, &[1, 2])]);
    run_io(move || {
        let r = [Rc::new(replica(&pa, 1)), Rc::new(replica(&pb, 2))];
        let rec = recover(&dyns(&r), &[1, 2], 2).unwrap();
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!((rec.epoch, members), (3, vec![1, 2]), "{rec:?}");
        for x in &r {
            assert_eq!((x.vssd().epoch(), x.vssd().members()), (3, vec![1, 2]));
        }
        close(&r);
    });
}

/// A replica two epochs past the newest epoch that took effect, at a claim that
/// never did (a join that failed, then a move past it whose own record failed):
/// with no write of a later epoch it counts as a member; holding one (the epoch
/// between took effect, and its writes may be on it only) it is refused, and
/// nothing moves.
#[test]
fn a_refuted_claim_two_epochs_past_the_trusted_one_counts_unless_it_holds_later_writes() {
    let dir = TempDir::new("rec-far");
    let [pa, pb] = epochs(&dir, &[(2, &[1, 2])], &[(2, &[1, 2]), (4, &[1, 2])]);
    let (a, b) = (pa.clone(), pb.clone());
    run_io(move || {
        let r = [Rc::new(replica(&a, 1)), Rc::new(replica(&b, 2))];
        let rec = recover(&dyns(&r), &[1, 2], 2).unwrap();
        let members: Vec<u64> = rec.members.iter().map(|m| m.member()).collect();
        assert_eq!((rec.epoch, members), (5, vec![1, 2]), "{rec:?}");
        close(&r);
    });
    let [pa, pb] = epochs(
        &dir,
        &[(5, &[1, 2])],
        &[(5, &[1, 2]), (6, &[2]), (8, &[1, 2])],
    );
    let b = pb.clone();
    run_io(move || {
        let v = open_vssd(&b);
        let tran = (6 << dtm::TRAN_EPOCH_SHIFT) + 1;
        v.writep1(tran, 3, &payload(3, 1, tran)).unwrap();
        v.commit(tran).unwrap();
        v.close();
    });
    run_io(move || {
        let r = [Rc::new(replica(&pa, 1)), Rc::new(replica(&pb, 2))];
        let e = recover(&dyns(&r), &[1, 2], 1).unwrap_err();
        assert!(
            matches!(&e, DtmError::Mismatch { why, .. } if why.contains("writes of epoch 6")),
            "{e}"
        );
        assert_eq!((r[0].vssd().epoch(), r[1].vssd().epoch()), (5, 8));
        close(&r);
    });
}
