//! Resync of a returning replica whose in-doubt copy of a tran is damaged, on real
//! vSSD files: the case `tdrv sim dtm` found (a resync's copy of a line torn by a
//! crash of the replica's node left the copy prepared with a bad payload; the next
//! resync aborted it there and then refused to copy the line at that version, so the
//! replica could never come back).

mod support;

use std::rc::Rc;

use dtm::{Dtm, DtmConfig, Replica};
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
