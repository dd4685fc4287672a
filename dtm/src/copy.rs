//! [`copy_line`]: one dirty line brought from one replica to another at the same
//! version, for recovery's reconciliation (crate::recovery) and the core's resync.
//!
//! The version stays the line's version on both replicas, so a destage's
//! `clean(line, version)` cleans it everywhere: the copy is written with the version
//! as its tran id ([`Replica::copy_in`]: prepare + commit, durable). What `to` may
//! already know of that tran id decides what is done:
//!
//! | `to`'s outcome of the version | done |
//! | --- | --- |
//! | prepared (in doubt, or a write whose commit is on its way) | committed there: the same tran, the same data (tran ids are unique per device) |
//! | committed, aborted, forgotten, unknown | the line copied, unless `to` holds that version or a newer one already |
//!
//! A tran aborted on `to` and committed on `from` is legitimate: a primary cut off
//! from its replicas aborts its own prepare of a write that the recovery of the
//! primary taking over committed on the others (a write never acknowledged, so
//! either is allowed); `from`'s committed version wins, and the copy commits it on
//! `to` ([`crate::Replica::copy_in`] accepts the aborted id).
//!
//! A line whose copy on `to` is damaged (its read fails with an I/O error: a failed
//! CRC, a disk read error) is one `to` lacks: copied over, unless `to`'s dirty
//! listing holds it at that version or a newer one (the vSSD takes a copy only
//! above the line's version; the error is returned). A damaged read on `from` is never copied: the error
//! is returned and `to` is left as it was.
//!
//! A tran committed on `to` whose line `to` does not hold (destaged and evicted, or
//! dropped by a DISCARD that never completed) is copied again: one more destage of
//! the same data at worst. The caller keeps writes to the line out while it copies
//! (the core's range lock; recovery runs before any write).

use taskio::AlignedBuf;
use vssd::TranOutcome;

use crate::error::DtmError;
use crate::replica::{Replica, ReplicaErrorKind};

/// What [`copy_line`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// `to` lacked the version: the line was written there.
    Written,
    /// `to` held the tran prepared: it was committed there.
    Committed,
    /// `to` holds the line at `version` (the one asked, or newer) already: nothing done.
    Current { version: u64 },
    /// `from` no longer holds the line at the version asked (a newer write, or the
    /// line cleaned and evicted): nothing done; `found` is what it holds.
    Moved { found: Option<u64> },
}

/// Brings `line` at `version` from `from` to `to`. See the module documentation.
pub fn copy_line(
    from: &dyn Replica,
    to: &dyn Replica,
    line: u64,
    version: u64,
) -> Result<Copied, DtmError> {
    const OP: &str = "copy_line";
    let line_size = from.info().line_size;
    if to.info().line_size != line_size {
        return Err(DtmError::Mismatch {
            op: OP,
            replica: to.name().to_string(),
            other: from.name().to_string(),
            why: format!("lines of {} bytes against {line_size}", to.info().line_size),
        });
    }
    match to.outcome(version)? {
        TranOutcome::Prepared => {
            // The tran prepared there under this id must be this line's: a primary
            // cut off at the same epoch may have handed the id out for other lines
            // (sim dtm seed 8981). Such a tran is aborted there and the line copied.
            let (listed, _) = to.in_doubt(version - 1, 1)?;
            match listed.first() {
                Some(t)
                    if t.tran == version
                        && !(t.line..t.line + u64::from(t.line_count)).contains(&line) =>
                {
                    to.abort(version)?;
                }
                _ => {
                    to.commit(&[version])?;
                    return Ok(Copied::Committed);
                }
            }
        }
        TranOutcome::Committed
        | TranOutcome::Aborted
        | TranOutcome::Forgotten
        | TranOutcome::Unknown => {}
    }
    let mut buf = AlignedBuf::new(line_size as usize);
    let held = match to.read(line, &mut buf) {
        Ok(held) => held,
        // Damaged there (a disk fault): it lacks the line, unless its dirty listing
        // shows the damaged copy at this version or a newer one, which the vSSD
        // keeps (a copy's tran id must be above the line's version).
        Err(e) if matches!(e.kind, ReplicaErrorKind::Io(_)) => {
            let listed = to.dirty(line, 1)?;
            if listed
                .first()
                .is_some_and(|&(l, v)| l == line && v >= version)
            {
                return Err(e.into());
            }
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(held) = held
        && held >= version
    {
        return Ok(Copied::Current { version: held });
    }
    match from.read(line, &mut buf)? {
        Some(found) if found == version => {}
        found => return Ok(Copied::Moved { found }),
    }
    to.copy_in(version, line, &buf)?;
    Ok(Copied::Written)
}
