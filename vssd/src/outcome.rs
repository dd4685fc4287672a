//! What this vSSD knows of a tran's outcome, for COMMIT/ABORT retried by the DTM
//! (idempotent, rpc/PROTOCOL.md) and for the DTM's recovery ([`TranOutcome`]).
//!
//! The vSSD remembers the trans it committed or aborted lately, each with its
//! record's position (a retried COMMIT waits for the same record): those the log
//! replayed at open resolved ([`Outcomes::recovered`]), then those resolved since.
//! The table is direct-mapped: tran `t` lives in entry `t % OUTCOMES_MAX`, and a
//! tran resolved there later forgets the one it replaces. Ids come from
//! `next_tran_id` and rise, so that is the last [`OUTCOMES_MAX`] resolutions, oldest
//! first, at the cost of one array entry per write: a hash map of 65,536 entries
//! with an eviction queue cost 1-2 us of CPU per write at 32 writers (cache misses;
//! measured A/B with a 1,024-entry table). `forgotten_max` is the
//! low-water at or under which an answer is [`TranOutcome::Forgotten`] rather than
//! [`TranOutcome::Unknown`]. At open it is just below the recovered tran-id
//! high-water (every id handed out or prepared before is below that; those resolved
//! before the replayed log, in the checkpoint's past, are not remembered); later it
//! is raised to every id forgotten. So every tran with an id above it that was
//! resolved here is still remembered (had it been forgotten, `forgotten_max` would
//! be at least its id), and a DTM retrying a COMMIT after a restart finds the outcome
//! of every tran the replayed log resolved.

use std::fmt;

use crate::device::Resolution;
use crate::log::RecordPos;

/// Entries of the outcome table (24 bytes each: 1.5 MiB per vSSD, allocated at open).
pub const OUTCOMES_MAX: usize = 1 << 16;
const _: () = assert!(OUTCOMES_MAX > 0);

/// A tran's outcome as this vSSD knows it: since it was opened, and from the log
/// recovery replayed (trans resolved before the checkpoint it started from are
/// forgotten; the in-doubt ones recovery returns are prepared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranOutcome {
    /// Prepared here (its writep1 may still run), neither committed nor aborted.
    Prepared,
    /// Committed here (since open or in the replayed log).
    Committed,
    /// Aborted here (since open or in the replayed log).
    Aborted,
    /// Not prepared here, no outcome remembered, and the id is at or below the
    /// low-water: resolved here before the replayed log or replaced in the table by a
    /// later tran (with rising ids, [`OUTCOMES_MAX`] resolutions later), or never
    /// prepared here (a writep1 that never
    /// returned, an id handed out and not used). Either way nothing of it is pending
    /// here.
    Forgotten,
    /// Not prepared here and not resolved here (the id is above the low-water): this
    /// vSSD has never seen the tran.
    Unknown,
}

impl fmt::Display for TranOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TranOutcome::Prepared => "prepared",
            TranOutcome::Committed => "committed",
            TranOutcome::Aborted => "aborted",
            TranOutcome::Forgotten => {
                "forgotten (resolved long ago or never prepared here: nothing of it is pending)"
            }
            TranOutcome::Unknown => "unknown (never seen here)",
        })
    }
}

/// The remembered outcomes. Pure state, no I/O.
#[derive(Debug)]
pub(crate) struct Outcomes {
    /// Entry `t % OUTCOMES_MAX`: the last tran resolved there, its outcome and record.
    table: Vec<Option<(u64, Resolution, RecordPos)>>,
    forgotten_max: Option<u64>,
}

impl Default for Outcomes {
    fn default() -> Outcomes {
        Outcomes {
            table: vec![None; OUTCOMES_MAX],
            forgotten_max: None,
        }
    }
}

/// The table entry of `tran`.
fn slot(tran: u64) -> usize {
    (tran % OUTCOMES_MAX as u64) as usize
}

impl Outcomes {
    /// The outcomes at open: `resolved`, the trans the replayed log resolved, recorded
    /// in log order as they were when the vSSD ran (an id resolved again, a copy's,
    /// or one forgotten by a full table and prepared again, ends as
    /// [`Outcomes::record`] leaves it), over a low-water just below `tran_high`, the
    /// recovered high-water of tran ids.
    pub(crate) fn recovered(resolved: &[(u64, Resolution, RecordPos)], tran_high: u64) -> Outcomes {
        let mut outcomes = Outcomes {
            forgotten_max: tran_high.checked_sub(1).filter(|&m| m > 0),
            ..Outcomes::default()
        };
        for &(tran, resolution, pos) in resolved {
            outcomes.record(tran, resolution, pos);
        }
        outcomes
    }

    /// `tran` was resolved by the record at `pos`; forgets the oldest outcome when
    /// [`OUTCOMES_MAX`] are remembered.
    pub(crate) fn record(&mut self, tran: u64, resolution: Resolution, pos: RecordPos) {
        let entry = &mut self.table[slot(tran)];
        if let Some((old, old_resolution, _)) = *entry {
            if old == tran {
                // Resolved again: a copy of another of its lines
                // (`Vssd::writep1_copy`). Committed once, it stays committed (an
                // aborted copy leaves the lines committed before).
                if !(old_resolution == Resolution::Commit && resolution == Resolution::Abort) {
                    *entry = Some((tran, resolution, pos));
                }
                return;
            }
            // Forgotten: ids up to it answer Forgotten from now on.
            self.forgotten_max = Some(self.forgotten_max.map_or(old, |m| m.max(old)));
        }
        *entry = Some((tran, resolution, pos));
    }

    /// The remembered resolution of `tran` and its record's position.
    pub(crate) fn get(&self, tran: u64) -> Option<(Resolution, RecordPos)> {
        match self.table[slot(tran)] {
            Some((t, resolution, pos)) if t == tran => Some((resolution, pos)),
            _ => None,
        }
    }

    /// The outcome of a tran that is not prepared here.
    pub(crate) fn outcome_unprepared(&self, tran: u64) -> TranOutcome {
        match self.get(tran) {
            Some((Resolution::Commit, _)) => TranOutcome::Committed,
            Some((Resolution::Abort, _)) => TranOutcome::Aborted,
            None if self.forgotten_max.is_some_and(|m| tran <= m) => TranOutcome::Forgotten,
            None => TranOutcome::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovered_outcomes_keep_the_last_resolution_over_a_low_water() {
        let o = Outcomes::recovered(
            &[
                (5, Resolution::Abort, pos(1)),
                (7, Resolution::Commit, pos(2)),
                (5, Resolution::Commit, pos(3)),
            ],
            10,
        );
        assert_eq!(o.get(5), Some((Resolution::Commit, pos(3))));
        assert_eq!(o.outcome_unprepared(7), TranOutcome::Committed);
        assert_eq!(o.outcome_unprepared(6), TranOutcome::Forgotten);
        assert_eq!(o.outcome_unprepared(9), TranOutcome::Forgotten);
        assert_eq!(o.outcome_unprepared(10), TranOutcome::Unknown);
        // A copy of a committed tran aborted later leaves it committed.
        let copied = Outcomes::recovered(
            &[
                (5, Resolution::Commit, pos(1)),
                (5, Resolution::Abort, pos(2)),
            ],
            10,
        );
        assert_eq!(copied.get(5), Some((Resolution::Commit, pos(1))));
        let fresh = Outcomes::recovered(&[], 1);
        assert_eq!(fresh.outcome_unprepared(1), TranOutcome::Unknown);
    }

    fn pos(seq: u64) -> RecordPos {
        RecordPos { seq, index: 0 }
    }

    #[test]
    fn the_oldest_outcome_is_forgotten_and_ids_at_or_below_it_are_forgotten() {
        let mut o = Outcomes::default();
        assert_eq!(o.outcome_unprepared(5), TranOutcome::Unknown);
        // Resolved out of id order: 1000 first, then 1..=OUTCOMES_MAX.
        o.record(1000, Resolution::Abort, pos(1));
        assert_eq!(o.outcome_unprepared(1000), TranOutcome::Aborted);
        for t in 1..=OUTCOMES_MAX as u64 {
            let r = if t % 2 == 0 {
                Resolution::Commit
            } else {
                Resolution::Abort
            };
            o.record(t + 2000, r, pos(t + 1));
        }
        assert_eq!(o.table.iter().flatten().count(), OUTCOMES_MAX);
        assert_eq!(o.get(1000), None);
        // 1000 forgotten: ids up to it (never seen or resolved long ago) too.
        assert_eq!(o.outcome_unprepared(1000), TranOutcome::Forgotten);
        assert_eq!(o.outcome_unprepared(7), TranOutcome::Forgotten);
        assert_eq!(o.outcome_unprepared(1001), TranOutcome::Unknown);
        assert_eq!(o.outcome_unprepared(2002), TranOutcome::Committed);
        assert_eq!(o.get(2001), Some((Resolution::Abort, pos(2))));
        let last = 2000 + OUTCOMES_MAX as u64;
        assert_eq!(o.outcome_unprepared(last + 1), TranOutcome::Unknown);
        // The next one forgets 2001 and raises the low-water above 1000.
        o.record(last + 1, Resolution::Commit, pos(9));
        assert_eq!(o.outcome_unprepared(2001), TranOutcome::Forgotten);
        assert_eq!(o.outcome_unprepared(2002), TranOutcome::Committed);
        assert_eq!(o.outcome_unprepared(1500), TranOutcome::Forgotten);
    }
}
