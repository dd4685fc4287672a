//! What this vSSD knows of a tran's outcome, for COMMIT/ABORT retried by the DTM
//! (idempotent, rpc/PROTOCOL.md) and for the DTM's recovery ([`TranOutcome`]).
//!
//! The vSSD remembers the last [`OUTCOMES_MAX`] trans it committed or aborted since
//! it was opened, each with its record's position (a retried COMMIT waits for the same
//! record). Older outcomes are forgotten, oldest first; `forgotten_max`, the highest
//! tran id forgotten so far, is the low-water under which an answer is
//! [`TranOutcome::Forgotten`] rather than [`TranOutcome::Unknown`]: every tran
//! resolved since open with an id above it is still remembered (had it been
//! forgotten, `forgotten_max` would be at least its id).

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crate::device::Resolution;
use crate::log::RecordPos;

/// Outcomes remembered (about 48 bytes each: 3 MiB at most).
pub const OUTCOMES_MAX: usize = 1 << 16;
const _: () = assert!(OUTCOMES_MAX > 0);

/// A tran's outcome as this vSSD knows it (since it was opened: trans resolved before
/// a crash or a close are not remembered across it, except the in-doubt ones that
/// recovery returns, which are prepared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranOutcome {
    /// Prepared here (its writep1 may still run), neither committed nor aborted.
    Prepared,
    /// Committed here since open.
    Committed,
    /// Aborted here since open.
    Aborted,
    /// Not prepared here, no outcome remembered, and the id is at or below the
    /// highest one whose outcome was forgotten: committed or aborted here since open
    /// more than [`OUTCOMES_MAX`] resolutions ago, or never prepared here. Either way
    /// nothing of it is pending here.
    Forgotten,
    /// Not prepared here and not resolved here since open (the id is above every
    /// forgotten one): this vSSD has not seen the tran since it was opened.
    Unknown,
}

impl fmt::Display for TranOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TranOutcome::Prepared => "prepared",
            TranOutcome::Committed => "committed",
            TranOutcome::Aborted => "aborted",
            TranOutcome::Forgotten => {
                "resolved long ago or never prepared here (its outcome is not remembered)"
            }
            TranOutcome::Unknown => "unknown here since open",
        })
    }
}

/// The remembered outcomes. Pure state, no I/O.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    by_tran: HashMap<u64, (Resolution, RecordPos)>,
    /// Trans in the order they were resolved, oldest first.
    order: VecDeque<u64>,
    forgotten_max: Option<u64>,
}

impl Outcomes {
    /// `tran` was resolved by the record at `pos`; forgets the oldest outcome when
    /// [`OUTCOMES_MAX`] are remembered.
    pub(crate) fn record(&mut self, tran: u64, resolution: Resolution, pos: RecordPos) {
        let old = self.by_tran.insert(tran, (resolution, pos));
        assert!(
            old.is_none(),
            "tran {tran} resolved twice: {old:?} then {resolution:?}"
        );
        self.order.push_back(tran);
        if self.order.len() > OUTCOMES_MAX {
            let oldest = self.order.pop_front().expect("more than OUTCOMES_MAX");
            self.by_tran.remove(&oldest);
            self.forgotten_max = Some(self.forgotten_max.map_or(oldest, |m| m.max(oldest)));
        }
        debug_assert_eq!(self.order.len(), self.by_tran.len());
    }

    /// The remembered resolution of `tran` and its record's position.
    pub(crate) fn get(&self, tran: u64) -> Option<(Resolution, RecordPos)> {
        self.by_tran.get(&tran).copied()
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
        assert_eq!(o.order.len(), OUTCOMES_MAX);
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
