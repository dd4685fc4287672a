//! `copy_line` between two `LocalReplica`s on real vSSD files: what it does for each
//! thing the target may already know of the version.

mod support;

use dtm::{Copied, Replica, copy_line};
use support::{LINE, TempDir, damage_slot, formatted, payload, replica, run_io};
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

/// A tran prepared on the target under the copied version's id but for another
/// line (a primary cut off at the same epoch handed the id out) is aborted there and
/// the line copied; before, the copy committed it and the target held line 12 at a
/// version no member had for it (`tdrv sim dtm` seed 8981).
#[test]
fn a_prepared_tran_of_the_same_id_for_another_line_is_aborted_and_the_line_copied() {
    let dir = TempDir::new("copy-same-id");
    let (a, b) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let ra = replica(&a, 1);
        let rb = replica(&b, 2);
        ra.writep1(5, 7, &payload(7, 1, 5)).unwrap();
        ra.commit(&[5]).unwrap();
        rb.writep1(5, 12, &payload(12, 1, 55)).unwrap();
        assert_eq!(copy_line(&ra, &rb, 7, 5).unwrap(), Copied::Written);
        let mut buf = AlignedBuf::new(LINE as usize);
        assert_eq!(rb.read(7, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..], &payload(7, 1, 5)[..]);
        assert_eq!(
            rb.read(12, &mut buf).unwrap(),
            None,
            "the other tran's line"
        );
        ra.vssd().close();
        rb.vssd().close();
    });
}

/// A line whose copy on the target is damaged (its payload fails its CRC: a disk
/// fault) is what the target lacks: the source's version is copied over it. Before,
/// the target's failed read failed the copy, and the resync of that replica failed
/// for ever (`tdrv sim dtm` seed 14311). A damaged line on the source is never
/// copied as good data: the copy fails and the target is left as it was.
#[test]
fn a_damaged_line_on_the_target_is_copied_and_one_on_the_source_is_not() {
    let dir = TempDir::new("copy-damaged");
    let (a, b) = (formatted(&dir, "a"), formatted(&dir, "b"));
    run_io(move || {
        let (ra, rb) = (replica(&a, 1), replica(&b, 2));
        for r in [&ra, &rb] {
            r.writep1(5, 3, &payload(3, 1, 5)).unwrap();
            r.commit(&[5]).unwrap();
        }
        ra.writep1(6, 3, &payload(3, 1, 6)).unwrap();
        ra.writep1(7, 12, &payload(12, 1, 7)).unwrap();
        ra.commit(&[6, 7]).unwrap();
        for r in [&ra, &rb] {
            r.writep1(9, 20, &payload(20, 1, 9)).unwrap();
            r.commit(&[9]).unwrap();
        }
        let (theirs, ours) = (rb.vssd().lookup(3).unwrap(), ra.vssd().lookup(12).unwrap());
        let same = rb.vssd().lookup(20).unwrap();
        assert_eq!((theirs.version, ours.version, same.version), (5, 7, 9));
        ra.vssd().close();
        rb.vssd().close();
        damage_slot(&b, theirs.slot);
        damage_slot(&b, same.slot);
        damage_slot(&a, ours.slot);
        let (ra, rb) = (replica(&a, 1), replica(&b, 2));
        let mut buf = AlignedBuf::new(LINE as usize);
        assert!(rb.read(3, &mut buf).is_err(), "damaged on the target");
        assert_eq!(copy_line(&ra, &rb, 3, 6).unwrap(), Copied::Written);
        assert_eq!(rb.read(3, &mut buf).unwrap(), Some(6));
        assert_eq!(&buf[..], &payload(3, 1, 6)[..]);
        // Damaged at the very version asked: the vSSD keeps it (a copy must be
        // above the line's version), and the copy says so.
        assert!(copy_line(&ra, &rb, 20, 9).is_err());
        assert_eq!(rb.dirty(20, 1).unwrap(), vec![(20, 9)]);

        assert!(copy_line(&ra, &rb, 12, 7).is_err(), "damaged on the source");
        assert_eq!(rb.read(12, &mut buf).unwrap(), None);
        assert_ne!(rb.outcome(7).unwrap(), TranOutcome::Committed);
        ra.vssd().close();
        rb.vssd().close();
    });
}
