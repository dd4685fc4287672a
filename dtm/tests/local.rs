//! `LocalReplica` on real vSSD files: the `Replica` calls, the epoch fence, the
//! in-doubt listing and repair, and the error kinds.

mod support;

use dtm::{LocalReplica, Replica, ReplicaErrorKind};
use support::{
    LINE, TempDir, damage_slot, formatted, in_doubt_slot, open_vssd, payload, replica, run_io,
};
use taskio::AlignedBuf;
use vssd::TranOutcome;

fn line_buf() -> AlignedBuf {
    AlignedBuf::new(LINE as usize)
}

#[test]
fn writes_commit_read_clean_and_invalidate_through_the_seam() {
    let dir = TempDir::new("local-calls");
    let path = formatted(&dir, "a");
    run_io(move || {
        let r = replica(&path, 1);
        assert_eq!(r.member(), 1);
        let info = r.info();
        assert_eq!((info.line_size, info.lines, info.epoch), (LINE, 64, 0));
        assert!(info.members.is_empty());
        assert!(info.tran_lines_max >= 2);

        r.writep1(5, 10, &payload(10, 2, 5)).unwrap();
        r.writep1(6, 20, &payload(20, 1, 6)).unwrap();
        assert_eq!(r.outcome(5).unwrap(), TranOutcome::Prepared);
        let (listed, more) = r.in_doubt(0, 10).unwrap();
        assert_eq!(
            listed.iter().map(|d| d.tran).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert!(!more);
        assert_eq!((listed[0].line, listed[0].line_count), (10, 2));
        assert_eq!(listed[0].payload_len, 2 * LINE);
        assert!(!listed[0].damaged);
        assert_eq!(&r.read_prepared(5).unwrap()[..], &payload(10, 2, 5)[..]);

        r.commit(&[5, 6]).unwrap();
        r.commit(&[5]).unwrap(); // idempotent
        assert_eq!(r.outcome(6).unwrap(), TranOutcome::Committed);
        assert!(r.in_doubt(0, 10).unwrap().0.is_empty());
        let mut buf = line_buf();
        assert_eq!(r.read(11, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..], &payload(10, 2, 5)[LINE as usize..]);
        assert_eq!(r.read(30, &mut buf).unwrap(), None);
        assert_eq!(r.dirty(0, 10).unwrap(), vec![(10, 5), (11, 5), (20, 6)]);
        assert_eq!(r.dirty(11, 1).unwrap(), vec![(11, 5)]);

        assert!(!r.clean(10, 4).unwrap(), "an older version cleans nothing");
        assert!(r.clean(10, 5).unwrap());
        assert_eq!(r.dirty(0, 10).unwrap(), vec![(11, 5), (20, 6)]);
        assert_eq!(r.invalidate(0, 64).unwrap(), 3);
        assert_eq!(r.read(20, &mut buf).unwrap(), None);

        r.writep1(7, 1, &payload(1, 1, 7)).unwrap();
        r.abort(7).unwrap();
        r.abort(7).unwrap(); // idempotent
        assert_eq!(r.outcome(7).unwrap(), TranOutcome::Aborted);
        r.vssd().close();
    });
}

#[test]
fn errors_name_the_operation_and_the_replica_and_say_their_kind() {
    let dir = TempDir::new("local-errors");
    let path = formatted(&dir, "a");
    run_io(move || {
        let r = replica(&path, 1);
        let name = path.display().to_string();
        let e = r.read_prepared(99).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::NotFound(_)), "{e}");
        assert_eq!((e.op, e.replica.as_str()), ("read_prepared", name.as_str()));
        let e = r.commit(&[99]).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::NotFound(_)), "{e}");
        r.writep1(5, 1, &payload(1, 1, 5)).unwrap();
        r.abort(5).unwrap();
        // Resolved the other way: refused, never retried.
        let e = r.commit(&[5]).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Refused(_)), "{e}");
        assert!(!e.kind.is_loss());
        // A write longer than the line count allows.
        let max = r.info().tran_lines_max;
        let e = r.writep1(6, 0, &payload(0, max + 1, 6)).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Refused(_)), "{e}");
        // Closed: lost until reopened.
        r.vssd().close();
        let e = r.writep1(8, 1, &payload(1, 1, 8)).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Unreachable(_)), "{e}");
        assert!(e.kind.is_loss());
        assert!(e.to_string().contains("writep1 on replica"), "{e}");
    });
}

/// Two openings of one vSSD: once one moves it to a newer epoch, every call of the
/// other is refused as stale, and nothing it asked for is done.
#[test]
fn a_newer_epoch_fences_the_older_opening_off() {
    let dir = TempDir::new("local-fence");
    let path = formatted(&dir, "a");
    run_io(move || {
        let v = open_vssd(&path);
        let old = LocalReplica::new(v.clone(), 1, "old", 0);
        let new = LocalReplica::new(v.clone(), 1, "new", 0);
        old.set_epoch(1, &[1, 2]).unwrap();
        assert_eq!(old.epoch(), 1);
        old.writep1(5, 1, &payload(1, 1, 5)).unwrap();
        // `new` was opened at 0: the vSSD moved past it.
        let stale = |e: dtm::ReplicaError| {
            assert!(
                matches!(e.kind, ReplicaErrorKind::StaleEpoch { replica_epoch: 1 }),
                "{e}"
            );
        };
        stale(new.writep1(6, 2, &payload(2, 1, 6)).unwrap_err());
        stale(new.commit(&[5]).unwrap_err());
        stale(new.abort(5).unwrap_err());
        stale(new.read(1, &mut line_buf()).unwrap_err());
        stale(new.in_doubt(0, 1).unwrap_err());
        stale(new.dirty(0, 1).unwrap_err());
        stale(new.set_epoch(1, &[1]).unwrap_err());
        // The same move as the winner's is no exception: one primary per epoch.
        stale(new.set_epoch(1, &[1, 2]).unwrap_err());
        assert_eq!(new.epoch(), 0);
        // A repeat by the winner is harmless; another membership there is refused.
        old.set_epoch(1, &[1, 2]).unwrap();
        let e = old.set_epoch(1, &[1]).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Refused(_)), "{e}");
        assert_eq!(v.tran_outcome(5), TranOutcome::Prepared);
        assert_eq!(v.tran_outcome(6), TranOutcome::Unknown);
        // A takeover: `new` reopened at the vSSD's epoch moves it on; `old` is out.
        let new = LocalReplica::new(v.clone(), 1, "new", v.epoch());
        new.set_epoch(2, &[1]).unwrap();
        let e = old.commit(&[5]).unwrap_err();
        assert!(
            matches!(e.kind, ReplicaErrorKind::StaleEpoch { replica_epoch: 2 }),
            "{e}"
        );
        new.commit(&[5]).unwrap();
        assert_eq!((v.epoch(), v.members()), (2, vec![1]));
        v.close();
    });
}

/// A writep1 running while the epoch moves is undone and refused: its primary never
/// sees it succeed once the new epoch is durable.
#[test]
fn a_writep1_overtaken_by_a_new_epoch_is_aborted_and_refused() {
    let dir = TempDir::new("local-fence-race");
    let path = formatted(&dir, "a");
    run_io(move || {
        let v = open_vssd(&path);
        let old = std::rc::Rc::new(LocalReplica::new(v.clone(), 1, "old", 0));
        let new = LocalReplica::new(v.clone(), 1, "new", 0);
        let writer = {
            let old = old.clone();
            taskio::spawn(move || old.writep1(5, 1, &payload(1, 1, 5))).unwrap()
        };
        // The writer is parked in its writep1's I/O: the epoch moves under it.
        taskio::yield_now();
        assert_eq!(v.tran_outcome(5), TranOutcome::Prepared, "writep1 started");
        new.set_epoch(1, &[1]).unwrap();
        let e = writer.join().unwrap().unwrap_err();
        assert!(
            matches!(e.kind, ReplicaErrorKind::StaleEpoch { replica_epoch: 1 }),
            "{e}"
        );
        assert_eq!(v.tran_outcome(5), TranOutcome::Aborted);
        assert!(new.in_doubt(0, 10).unwrap().0.is_empty());
        v.close();
    });
}

/// Trans recovery left in doubt are listed by the reopened replica, a damaged one
/// marked; it cannot be committed as it is, its copy read from an intact replica
/// repairs it.
#[test]
fn in_doubt_trans_after_a_restart_are_listed_and_a_damaged_one_is_repaired() {
    let dir = TempDir::new("local-in-doubt");
    let a = formatted(&dir, "a");
    let b = formatted(&dir, "b");
    let (pa, pb) = (a.clone(), b.clone());
    run_io(move || {
        for p in [&pa, &pb] {
            let r = replica(p, 1);
            r.writep1(5, 3, &payload(3, 2, 5)).unwrap();
            r.writep1(6, 9, &payload(9, 1, 6)).unwrap();
            r.vssd().close();
        }
    });
    damage_slot(&a, in_doubt_slot(&a, 5));
    run_io(move || {
        let ra = replica(&a, 1);
        let rb = replica(&b, 2);
        let (listed, more) = ra.in_doubt(0, 1).unwrap();
        assert!(more);
        assert_eq!((listed[0].tran, listed[0].damaged), (5, true));
        let (listed, more) = ra.in_doubt(5, 1).unwrap();
        assert!(!more);
        assert_eq!((listed[0].tran, listed[0].damaged), (6, false));
        assert!(!rb.in_doubt(0, 10).unwrap().0.iter().any(|d| d.damaged));

        let e = ra.commit(&[5]).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Refused(_)), "{e}");
        let e = ra.read_prepared(5).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Refused(_)), "{e}");
        let copy = rb.read_prepared(5).unwrap();
        ra.repair(5, &copy).unwrap();
        rb.commit(&[5]).unwrap();
        let mut buf = line_buf();
        for r in [&ra, &rb] {
            assert_eq!(r.read(4, &mut buf).unwrap(), Some(5));
            assert_eq!(&buf[..], &payload(3, 2, 5)[LINE as usize..]);
            r.abort(6).unwrap();
            assert!(r.in_doubt(0, 10).unwrap().0.is_empty());
            r.vssd().close();
        }
    });
}
