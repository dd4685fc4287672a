//! [`Ledger`]: what server sessions took and gave back, for leak checks.
//!
//! A session takes a frame buffer from its pool for each request it reads and an
//! in-flight slot for each request it queues, and gives both back when the request
//! has been answered (or dropped: the session ended, its task unwound). A ledger
//! given to sessions ([`SessionConfig::ledger`](crate::SessionConfig::ledger))
//! counts both, summed over every session: once those sessions have ended, every
//! count taken equals its count returned, and a difference is a leak (the server's
//! side of the client's `Client::in_flight` check; `tdrv sim rpc` checks it after
//! each seed). Counted with atomics, since a server's sessions run on several
//! threads, and only where a ledger is configured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Counts {
    frames_taken: AtomicU64,
    frames_returned: AtomicU64,
    slots_taken: AtomicU64,
    slots_returned: AtomicU64,
}

/// Counts of frames and in-flight slots sessions took and returned; clones share
/// the counts.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Counts>);

/// A reading of a [`Ledger`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    pub frames_taken: u64,
    pub frames_returned: u64,
    pub slots_taken: u64,
    pub slots_returned: u64,
}

impl LedgerCounts {
    /// Frames taken and not returned (held by sessions now, or leaked).
    pub fn frames_held(&self) -> u64 {
        self.frames_taken - self.frames_returned
    }

    /// In-flight slots taken and not returned.
    pub fn slots_held(&self) -> u64 {
        self.slots_taken - self.slots_returned
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// The counts now. Each count returned is read before its count taken, so that
    /// a reading taken while sessions run never shows more returned than taken.
    pub fn counts(&self) -> LedgerCounts {
        let c = &self.0;
        let frames_returned = c.frames_returned.load(Ordering::Acquire);
        let slots_returned = c.slots_returned.load(Ordering::Acquire);
        let counts = LedgerCounts {
            frames_taken: c.frames_taken.load(Ordering::Acquire),
            frames_returned,
            slots_taken: c.slots_taken.load(Ordering::Acquire),
            slots_returned,
        };
        assert!(counts.frames_returned <= counts.frames_taken, "{counts:?}");
        assert!(counts.slots_returned <= counts.slots_taken, "{counts:?}");
        counts
    }

    pub(crate) fn frame_taken(&self) {
        self.0.frames_taken.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn frame_returned(&self) {
        self.0.frames_returned.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn slot_taken(&self) {
        self.0.slots_taken.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn slot_returned(&self) {
        self.0.slots_returned.fetch_add(1, Ordering::AcqRel);
    }
}
