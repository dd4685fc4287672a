//! Resync cases `tdrv sim dtm` found, on real vSSD files: a returning replica whose
//! in-doubt copy of a tran is damaged (a resync's copy of a line torn by a crash of
//! the replica's node: the next resync aborted it there and then refused to copy the
//! line at that version, so the replica could never come back); a join whose new
//! epoch reached the replica but whose answer was lost.

mod support;

use std::cell::Cell;
use std::rc::Rc;

use dtm::{Dtm, DtmConfig, LocalReplica, Replica, ReplicaError, ReplicaErrorKind, recover};
use support::{TempDir, damage_slot, formatted, in_doubt_slot, payload, replica, run_io};
use taskio::AlignedBuf;
use vssd::TranOutcome;

#[test]
fn a_damaged_in_doubt_copy_of_a_tran_the_primary_holds_is_repaired_by_the_resync() {
    let dir = TempDir::new("resync-damaged");
    let (pa, pb) = (formatted(&dir, "a"), formatted(&dir, "b"));
    let (a, b) = (pa.clone(), pb.clone());
    // The primary alone writes lines 0..2 as one tran and line 5; the replica holds
    // the tran prepared (a copy cut short, or a write whose primary dropped it).
    let tran = run_io(move || {
        let ra = Rc::new(replica(&a, 1));
        let rb = replica(&b, 2);
        let dtm = Dtm::start(ra.vssd().clone(), vec![ra.clone()], 1, DtmConfig::default()).unwrap();
        let tran = dtm.write(0, &payload(0, 2, 0)).unwrap().tran().unwrap();
        dtm.write(5, &payload(5, 1, 0)).unwrap();
        rb.writep1(tran, 0, &payload(0, 2, 0)).unwrap();
        dtm.flush().unwrap();
        dtm.close();
        ra.vssd().close();
        rb.vssd().close();
        tran
    });
    // A crash tore the replica's copy of the payload.
    damage_slot(&pb, in_doubt_slot(&pb, tran));
    run_io(move || {
        let ra = Rc::new(replica(&pa, 1));
        let rb = Rc::new(replica(&pb, 2));
        let listed = rb.in_doubt(0, 10).unwrap().0;
        assert!(
            listed.iter().all(|d| d.damaged && d.tran == tran),
            "{listed:?}"
        );
        let dtm = Dtm::start(ra.vssd().clone(), vec![ra.clone()], 2, DtmConfig::default()).unwrap();
        let progress = dtm.resync(rb.clone()).unwrap();
        assert_eq!(dtm.members(), vec![1, 2], "{progress:?}");
        assert_eq!(rb.outcome(tran).unwrap(), TranOutcome::Committed);
        let (mut x, mut y) = (AlignedBuf::new(4096), AlignedBuf::new(4096));
        for line in [0, 1, 5] {
            let va = ra.read(line, &mut x).unwrap();
            assert_eq!(rb.read(line, &mut y).unwrap(), va, "line {line}");
            assert_eq!(&x[..], &y[..], "line {line}");
        }
        dtm.close();
        ra.vssd().close();
        rb.vssd().close();
    });
}

/// A replica whose `set_epoch` is applied and then answered with a timeout (the
/// answer lost on the wire), once armed.
struct LostAnswer {
    inner: LocalReplica,
    armed: Cell<bool>,
}

impl dtm::Forward for LostAnswer {
    fn inner(&self) -> &dyn Replica {
        &self.inner
    }
    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        self.inner.set_epoch(epoch, members)?;
        if self.armed.get() {
            return Err(ReplicaError {
                op: "set_epoch",
                replica: self.inner.name().to_string(),
                kind: ReplicaErrorKind::Timeout,
            });
        }
        Ok(())
    }
}

/// The join's new epoch reached the replica but its answer was lost: the members
/// must move past that epoch before they acknowledge another write, or a recovery
/// would trust the replica's newer epoch and lose the writes acknowledged since
/// (found by `tdrv sim dtm` seed 59: a slow replica timed the join out).
#[test]
fn a_join_whose_answer_was_lost_leaves_the_members_past_the_replicas_epoch() {
    let dir = TempDir::new("resync-lost-join");
    let (pa, pb) = (formatted(&dir, "a"), formatted(&dir, "b"));
    let (a, b) = (pa.clone(), pb.clone());
    let tran = run_io(move || {
        let ra = Rc::new(replica(&a, 1));
        let rb = Rc::new(LostAnswer {
            inner: replica(&b, 2),
            armed: Cell::new(true),
        });
        let dtm = Dtm::start(ra.vssd().clone(), vec![ra.clone()], 1, DtmConfig::default()).unwrap();
        dtm.write(0, &payload(0, 1, 0)).unwrap();
        assert!(dtm.resync(rb.clone()).is_err());
        assert_eq!(dtm.members(), vec![1]);
        // Acknowledged by the primary alone.
        let tran = dtm.write(3, &payload(3, 1, 0)).unwrap().tran().unwrap();
        dtm.flush().unwrap();
        dtm.close();
        ra.vssd().close();
        rb.inner.vssd().close();
        tran
    });
    run_io(move || {
        let ra = Rc::new(replica(&pa, 1));
        let rb = Rc::new(replica(&pb, 2));
        let rec = recover(&[ra.clone(), rb.clone()], &[1, 2], 1).unwrap();
        let members: Vec<u64> = rec.members.iter().map(|r| r.member()).collect();
        assert_eq!((members, rec.stale.clone()), (vec![1], vec![2]), "{rec:?}");
        let mut buf = AlignedBuf::new(4096);
        assert_eq!(rec.members[0].read(3, &mut buf).unwrap(), Some(tran));
        ra.vssd().close();
        rb.vssd().close();
    });
}

/// An in-doubt tran on the replica whose id the primary knows as committed, but for
/// other lines (two primaries that handed out one id: a cut-off one and the one that
/// took over, at one epoch number), is not the primary's tran: it is aborted there,
/// and the walk copies the primary's lines. Before, the resync committed it by its
/// id, and the replica kept data no member holds (`tdrv sim dtm` seed 4148).
#[test]
fn an_in_doubt_tran_is_committed_by_the_lines_the_primary_holds_not_by_its_id() {
    let dir = TempDir::new("resync-same-id");
    let (pa, pb) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let ra = Rc::new(replica(&pa, 1));
        let rb = Rc::new(replica(&pb, 2));
        ra.writep1(5, 8, &payload(8, 1, 5)).unwrap();
        ra.writep1(9, 18, &payload(18, 1, 9)).unwrap();
        ra.commit(&[5, 9]).unwrap();
        // The replica's own tran 9, of line 8, prepared and never resolved.
        rb.writep1(9, 8, &payload(8, 1, 99)).unwrap();
        let dtm = Dtm::start(ra.vssd().clone(), vec![ra.clone()], 1, DtmConfig::default()).unwrap();
        dtm.resync(rb.clone()).unwrap();
        assert_eq!(dtm.members(), vec![1, 2]);
        // Tran 9 is the primary's there now (line 18, copied by the walk).
        let (mut x, mut y) = (AlignedBuf::new(4096), AlignedBuf::new(4096));
        for line in [8, 18] {
            let va = ra.read(line, &mut x).unwrap();
            assert_eq!(rb.read(line, &mut y).unwrap(), va, "line {line}");
            assert_eq!(&x[..], &y[..], "line {line}");
        }
        dtm.close();
        ra.vssd().close();
        rb.vssd().close();
    });
}

/// A returning replica's in-doubt tran whose id the primary holds on one of its
/// lines but not on the others (another primary's tran of that id, for overlapping
/// lines) is aborted, not committed: committing it left the replica holding a line
/// at a version no member had for it (`tdrv sim dtm` seed 4884).
#[test]
fn an_in_doubt_tran_is_committed_only_if_the_primary_holds_every_line_of_it() {
    let dir = TempDir::new("resync-same-id-overlap");
    let (pa, pb) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let ra = Rc::new(replica(&pa, 1));
        let rb = Rc::new(replica(&pb, 2));
        // The primary: line 21 at tran 5, line 23 at tran 9.
        ra.writep1(5, 21, &payload(21, 1, 5)).unwrap();
        ra.writep1(9, 23, &payload(23, 1, 9)).unwrap();
        ra.commit(&[5, 9]).unwrap();
        // The replica's own tran 9, of lines 21..=23, prepared and never resolved.
        let mut three = AlignedBuf::new(3 * 4096);
        three.set_len(3 * 4096);
        for (i, line) in (21..24).enumerate() {
            three[i * 4096..(i + 1) * 4096].copy_from_slice(&payload(line, 1, 99));
        }
        rb.writep1(9, 21, &three).unwrap();
        let dtm = Dtm::start(ra.vssd().clone(), vec![ra.clone()], 1, DtmConfig::default()).unwrap();
        dtm.resync(rb.clone()).unwrap();
        assert_eq!(dtm.members(), vec![1, 2]);
        let (mut x, mut y) = (AlignedBuf::new(4096), AlignedBuf::new(4096));
        for line in 21..24 {
            let va = ra.read(line, &mut x).unwrap();
            assert_eq!(rb.read(line, &mut y).unwrap(), va, "line {line}");
            if va.is_some() {
                assert_eq!(&x[..], &y[..], "line {line}");
            }
        }
        dtm.close();
        ra.vssd().close();
        rb.vssd().close();
    });
}

/// The vSSD at `path` moved to `epoch` with `members`, as replica `member` opened
/// at that epoch.
fn at_epoch(path: &std::path::Path, member: u64, epoch: u64, members: &[u64]) -> Rc<LocalReplica> {
    let v = support::open_vssd(path);
    v.set_epoch(epoch, members).unwrap();
    Rc::new(LocalReplica::new(
        v,
        member,
        path.display().to_string(),
        epoch,
    ))
}

/// A returning replica at a newer epoch than the DTM's, whose claim lists a member
/// of the DTM (a decider whose own record failed left it, and each retry moved it
/// further: `tdrv sim dtm` seeds 7579, 86875, which then never resynced): the
/// members first move past the claim, so that it can never take effect, then the
/// replica is resynced. A claim that lists none of the members is another
/// primary's; one that took effect on a member (that member is at its epoch) fences
/// the DTM.
#[test]
fn a_replica_at_a_newer_claim_of_a_member_is_resynced_past_it() {
    let dir = TempDir::new("resync-past");
    let paths: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| formatted(&dir, n))
        .collect();
    run_io(move || {
        let (ra, rb) = (
            Rc::new(replica(&paths[0], 1)),
            Rc::new(replica(&paths[1], 2)),
        );
        let members: Vec<Rc<dyn Replica>> = vec![ra.clone(), rb.clone()];
        let dtm = Dtm::start(ra.vssd().clone(), members, 1, DtmConfig::default()).unwrap();
        let tran = dtm.write(0, &payload(0, 1, 0)).unwrap().tran().unwrap();
        let rc = at_epoch(&paths[2], 3, 5, &[2, 3]);
        let progress = dtm.resync(rc.clone()).unwrap();
        assert_eq!(progress.joined_epoch, Some(7), "{progress:?}");
        assert_eq!((dtm.epoch(), dtm.members()), (7, vec![1, 2, 3]));
        for r in [&ra, &rb, &rc] {
            assert_eq!((r.vssd().epoch(), r.vssd().members()), (7, vec![1, 2, 3]));
        }
        let mut buf = AlignedBuf::new(4096);
        assert_eq!(rc.read(0, &mut buf).unwrap(), Some(tran));
        // Lists none of the members: refused, nothing moved.
        let rd = at_epoch(&paths[3], 4, 9, &[4, 5]);
        let e = dtm.resync(rd.clone()).unwrap_err();
        assert!(e.to_string().contains("another primary's"), "{e}");
        assert_eq!((dtm.epoch(), rd.vssd().epoch()), (7, 9));
        // Took effect on member 2: the move past it finds the DTM fenced.
        let usurper = LocalReplica::new(rb.vssd().clone(), 2, "usurper", 7);
        usurper.set_epoch(12, &[2, 5]).unwrap();
        let re = at_epoch(&paths[4], 5, 12, &[2, 5]);
        let e = dtm.resync(re.clone()).unwrap_err();
        assert!(matches!(e, dtm::DtmError::Fenced { .. }), "{e}");
        assert!(dtm.write(1, &payload(1, 1, 0)).is_err());
        assert_eq!(
            re.vssd().epoch(),
            12,
            "the other primary's replica untouched"
        );
        dtm.close();
        for r in [&ra, &rb, &rc, &rd, &re] {
            r.vssd().close();
        }
    });
}

/// A replica being resynced whose walk starts a write (through `dirty`, called by
/// the walk once the replica receives writes), and whose writep1 of that write
/// fails after a while: the write is acknowledged without it.
struct FailsAWrite {
    inner: LocalReplica,
    dtm: std::cell::RefCell<Option<Dtm>>,
    writer: std::cell::RefCell<Option<taskio::JoinHandle<u64>>>,
}

impl dtm::Forward for FailsAWrite {
    fn inner(&self) -> &dyn Replica {
        &self.inner
    }
    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        if let Some(dtm) = self.dtm.borrow_mut().take() {
            let h = taskio::spawn(move || dtm.write(7, &payload(7, 1, 0)).unwrap().tran().unwrap())
                .unwrap();
            *self.writer.borrow_mut() = Some(h);
            // The write enters its phase 1 (the gate's read side) and parks in this
            // replica's writep1 before the walk goes on to the join.
            taskio::yield_now();
            taskio::yield_now();
        }
        self.inner.dirty(from, max)
    }
    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        taskio::sleep(std::time::Duration::from_millis(20));
        let _ = (tran, line, data);
        Err(ReplicaError {
            op: "writep1",
            replica: self.inner.name().to_string(),
            kind: ReplicaErrorKind::Timeout,
        })
    }
}

/// A write that a replica being resynced failed is acknowledged without it; the
/// resync's join, waiting for the membership gate while that write was in its phase
/// 1, must not make the replica a member before the failure is dealt with: it
/// would lack an acknowledged write (`tdrv sim dtm` seed 69012: recovery then
/// aborted the write, prepared on one member only).
#[test]
fn a_replica_that_failed_a_write_during_its_resync_does_not_join() {
    let dir = TempDir::new("resync-failed-write");
    let (pa, pb) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let ra = Rc::new(replica(&pa, 1));
        let dtm = Dtm::start(ra.vssd().clone(), vec![ra.clone()], 1, DtmConfig::default()).unwrap();
        let rb = Rc::new(FailsAWrite {
            inner: replica(&pb, 2),
            dtm: std::cell::RefCell::new(Some(dtm.clone())),
            writer: std::cell::RefCell::new(None),
        });
        let resynced = dtm.resync(rb.clone());
        let tran = rb
            .writer
            .borrow_mut()
            .take()
            .expect("the walk started the write")
            .join()
            .unwrap();
        let mut buf = AlignedBuf::new(4096);
        if resynced.is_ok() {
            assert_eq!(
                rb.inner.read(7, &mut buf).unwrap(),
                Some(tran),
                "a member lacks an acknowledged write"
            );
        }
        assert!(resynced.is_err(), "joined after failing a write");
        assert_eq!(dtm.members(), vec![1]);
        assert_eq!(ra.read(7, &mut buf).unwrap(), Some(tran));
        dtm.close();
        ra.vssd().close();
        rb.inner.vssd().close();
    });
}
