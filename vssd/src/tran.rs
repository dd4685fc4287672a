//! Tran ids that are never reused: the vSSD hands them out in increasing order
//! ([`crate::Vssd::next_tran_id`]) and keeps a durable high-water mark, so that after
//! a restart every new id is above every id handed out or prepared before.
//!
//! Why it matters: a line's version is the id of the tran that wrote it, and a
//! destage marks a line clean by version ([`crate::Vssd::mark_clean`]). An id reused
//! after a restart could name a newer write of the line, and a destage of the old
//! data would mark the new data clean: lost at the next eviction.
//!
//! The mark is kept ahead, in batches: a TRAN_HIGH record says that no id at or above
//! its `tran_high` was handed out; one is appended (without waiting) when the ids
//! handed out come within half a batch of the newest one, so it rides on a log write
//! the vSSD makes anyway; an id is handed out only below a TRAN_HIGH known durable.
//! A checkpoint keeps the mark too ([`crate::checkpoint::Snapshot::tran_high`]), so
//! it survives the log's reuse; recovery takes the highest of the checkpoint's, the
//! replayed TRAN_HIGHs' and the replayed trans' ids + 1 ([`crate::recover::Replay`]).

use std::cell::Cell;

use crate::error::VssdError;
use crate::log::{LogWriter, RecordPos};
use crate::record::Record;

/// Tran ids one TRAN_HIGH record reserves ahead of the next id.
pub const TRAN_IDS_PER_RECORD: u64 = 1024;

const _: () = assert!(TRAN_IDS_PER_RECORD >= 2); // the next one is logged at half

/// The tran id state of one open vSSD.
pub(crate) struct TranIds {
    /// The next id to hand out: above every id handed out or prepared so far.
    next: Cell<u64>,
    /// The highest `tran_high` appended, and the seq of its block.
    logged: Cell<u64>,
    logged_seq: Cell<u64>,
    /// The highest `tran_high` known durable (recovered, or its block durable).
    durable: Cell<u64>,
}

impl TranIds {
    /// After recovery: `tran_high` is durable (recovery read it).
    pub(crate) fn new(tran_high: u64) -> TranIds {
        TranIds {
            next: Cell::new(tran_high),
            logged: Cell::new(tran_high),
            logged_seq: Cell::new(0),
            durable: Cell::new(tran_high),
        }
    }

    /// A new tran id, above every id handed out or prepared before, across restarts.
    /// Parks only when no durable TRAN_HIGH covers it yet (the first id after open,
    /// or when ids are taken faster than log writes happen).
    pub(crate) fn next_id(&self, log: &LogWriter) -> Result<u64, VssdError> {
        loop {
            if log.durable_end() > self.logged_seq.get() {
                self.durable.set(self.logged.get());
            }
            let tran = self.next.get();
            if tran < self.durable.get() {
                self.next.set(tran + 1);
                if self.logged.get() - tran <= TRAN_IDS_PER_RECORD / 2 {
                    self.log_ahead(log)?;
                }
                return Ok(tran);
            }
            if tran >= self.logged.get() {
                self.log_ahead(log)?;
            }
            log.wait_durable(RecordPos {
                seq: self.logged_seq.get(),
                index: 0,
            })?;
        }
    }

    /// Appends a TRAN_HIGH a batch above the next id (may park for room).
    fn log_ahead(&self, log: &LogWriter) -> Result<(), VssdError> {
        let tran_high = self.next.get().saturating_add(TRAN_IDS_PER_RECORD);
        let pos = log.append(&Record::TranHigh { tran_high })?;
        if tran_high > self.logged.get() {
            self.logged.set(tran_high);
            self.logged_seq.set(pos.seq);
        }
        Ok(())
    }

    /// A tran id the caller chose (writep1): later ids are above it.
    pub(crate) fn saw(&self, tran: u64) {
        if tran >= self.next.get() {
            self.next.set(tran.saturating_add(1));
        }
    }

    /// What a checkpoint taken now keeps: every id handed out, prepared or reserved
    /// by a TRAN_HIGH appended so far is below it.
    pub(crate) fn high(&self) -> u64 {
        self.next.get().max(self.logged.get())
    }
}
