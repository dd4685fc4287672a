//! `copy_line` between two `LocalReplica`s on real vSSD files: what it does for each
//! thing the target may already know of the version.

mod support;

use dtm::{Copied, Replica, copy_line};
use support::{LINE, TempDir, formatted, payload, replica, run_io};
use taskio::AlignedBuf;
use vssd::TranOutcome;

#[test]
fn a_line_is_copied_at_its_version_once_and_a_prepared_one_is_committed() {
    let dir = TempDir::new("copy");
    let (a, b) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let ra = replica(&a, 1);
        let rb = replica(&b, 2);
        // A three-line tran on `a` only; its lines copied one at a time.
        ra.writep1(5, 3, &payload(3, 3, 5)).unwrap();
        ra.commit(&[5]).unwrap();
        for line in [3, 5, 4] {
            assert_eq!(copy_line(&ra, &rb, line, 5).unwrap(), Copied::Written);
        }
        assert_eq!(rb.dirty(0, 10).unwrap(), ra.dirty(0, 10).unwrap());
        let mut buf = AlignedBuf::new(LINE as usize);
        assert_eq!(rb.read(4, &mut buf).unwrap(), Some(5));
        assert_eq!(
            &buf[..],
            &payload(3, 3, 5)[LINE as usize..][..LINE as usize]
        );
        assert_eq!(
            copy_line(&ra, &rb, 4, 5).unwrap(),
            Copied::Current { version: 5 }
        );
        // `from` moved on: nothing copied.
        ra.writep1(6, 3, &payload(3, 1, 6)).unwrap();
        ra.commit(&[6]).unwrap();
        assert_eq!(
            copy_line(&ra, &rb, 3, 5).unwrap(),
            Copied::Current { version: 5 }
        );
        assert_eq!(
            copy_line(&ra, &rb, 9, 5).unwrap(),
            Copied::Moved { found: None }
        );
        rb.invalidate(3, 1).unwrap();
        assert_eq!(
            copy_line(&ra, &rb, 3, 5).unwrap(),
            Copied::Moved { found: Some(6) }
        );
        // `to` newer than asked: nothing copied.
        assert_eq!(
            copy_line(&rb, &ra, 5, 5).unwrap(),
            Copied::Current { version: 5 }
        );
        assert_eq!(
            copy_line(&ra, &rb, 3, 6).unwrap(),
            Copied::Written,
            "the newer version"
        );
        // Prepared on `to`: committed there.
        ra.writep1(7, 10, &payload(10, 1, 7)).unwrap();
        rb.writep1(7, 10, &payload(10, 1, 7)).unwrap();
        ra.commit(&[7]).unwrap();
        assert_eq!(copy_line(&ra, &rb, 10, 7).unwrap(), Copied::Committed);
        assert_eq!(rb.outcome(7).unwrap(), TranOutcome::Committed);
        assert_eq!(rb.dirty(0, 20).unwrap(), ra.dirty(0, 20).unwrap());
        ra.vssd().close();
        rb.vssd().close();
    });
}

/// A version aborted on the target (a primary cut off aborted its own prepare of
/// a write the takeover's recovery committed on the others) is copied and committed
/// there: the committed version wins. Before, a conflict, and a resync of the old
/// primary's replica failed for ever (`tdrv sim dtm` seed 105).
#[test]
fn a_version_aborted_on_the_target_is_copied_and_committed_there() {
    let dir = TempDir::new("copy-aborted");
    let (a, b) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let ra = replica(&a, 1);
        let rb = replica(&b, 2);
        ra.writep1(5, 1, &payload(1, 1, 5)).unwrap();
        rb.writep1(5, 1, &payload(1, 1, 5)).unwrap();
        ra.commit(&[5]).unwrap();
        rb.abort(5).unwrap();
        assert_eq!(copy_line(&ra, &rb, 1, 5).unwrap(), Copied::Written);
        assert_eq!(rb.outcome(5).unwrap(), TranOutcome::Committed);
        let mut buf = AlignedBuf::new(LINE as usize);
        assert_eq!(rb.read(1, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..], &payload(1, 1, 5)[..]);
        ra.vssd().close();
        rb.vssd().close();
    });
}
