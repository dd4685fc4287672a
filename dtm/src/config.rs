//! What a device's DTM is told at start: how many replicas it needs, what it does
//! when it loses one, and its limits.

use std::rc::Rc;
use std::time::Duration;

use taskio::{AlignedBuf, IoError};

/// Most members of an epoch (vSSD's EPOCH record limit).
pub const MEMBERS_MAX: usize = vssd::record::EPOCH_MEMBERS_MAX;
/// Default most trans one lazy COMMIT call carries to a replica.
pub const COMMIT_BATCH_MAX_DEFAULT: usize = 64;
/// Default most trans not yet committed on every replica.
pub const WRITES_IN_FLIGHT_MAX_DEFAULT: usize = 256;
/// Default longest wait for a range lock or a slot for a write in flight. Every
/// remote call ends within its own timeout, so a lock is held at most a few of
/// those; this bound only turns a stuck device into an error.
pub const WAIT_MAX_DEFAULT: Duration = Duration::from_secs(30);
/// Lines a resync lists from each replica at a time.
pub const RESYNC_BATCH_LINES: usize = 256;

/// A tran id's epoch: the DTM of epoch E hands out ids from `E << TRAN_EPOCH_SHIFT`
/// on, so a primary taking a device over (at a newer epoch) hands out ids above
/// every id the primary it fenced may still hand out, and two writes never share
/// one (2^40 ids per epoch, 2^24 epochs).
pub const TRAN_EPOCH_SHIFT: u32 = 40;

const _: () = assert!(COMMIT_BATCH_MAX_DEFAULT <= WRITES_IN_FLIGHT_MAX_DEFAULT);
const _: () = assert!(TRAN_EPOCH_SHIFT > 0 && TRAN_EPOCH_SHIFT < 64);
const _: () = assert!(MEMBERS_MAX >= 1);

/// The device's backing store, written synchronously by [`LossPolicy::WriteThrough`]
/// while the device is short of replicas.
pub trait Backing {
    /// Writes `data` at byte `offset` (line * line size).
    fn write(&self, offset: u64, data: &AlignedBuf) -> Result<(), IoError>;
    /// Makes every write before it durable.
    fn flush(&self) -> Result<(), IoError>;
}

/// What the DTM does when it loses a replica.
#[derive(Clone)]
pub enum LossPolicy {
    /// Drop the lost replica, epoch + 1 with the survivors, go on while at least
    /// `min_replicas` are left (then every write fails).
    Degrade,
    /// Drop the lost replica, epoch + 1 with the survivors; while the device has
    /// fewer replicas than it started with, write the backing store synchronously
    /// (then drop the lines from every replica, so the cache never returns older
    /// data). `min_replicas` does not stop writes: the backing store holds them.
    WriteThrough(Rc<dyn Backing>),
}

impl std::fmt::Debug for LossPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossPolicy::Degrade => f.write_str("Degrade"),
            LossPolicy::WriteThrough(_) => f.write_str("WriteThrough"),
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct DtmConfig {
    /// Fewest replicas (the primary included) that may acknowledge a write under
    /// [`LossPolicy::Degrade`].
    pub min_replicas: usize,
    pub policy: LossPolicy,
    /// Most trans in one lazy COMMIT call to a replica.
    pub commit_batch_max: usize,
    /// Most trans not yet committed on every replica (a write waits for a slot):
    /// bounds the lazy commit queues and the range locks held.
    pub writes_in_flight_max: usize,
    /// Longest wait for a slot or a range lock before the write fails.
    pub wait_max: Duration,
    /// The device's size in lines, the bound of every line number (the backing
    /// store's, larger than the vSSDs' capacity: the vSSDs map lines, they do not
    /// mirror them); `None`: the primary vSSD's capacity.
    pub device_lines: Option<u64>,
}

impl Default for DtmConfig {
    fn default() -> Self {
        DtmConfig {
            min_replicas: 1,
            policy: LossPolicy::Degrade,
            commit_batch_max: COMMIT_BATCH_MAX_DEFAULT,
            writes_in_flight_max: WRITES_IN_FLIGHT_MAX_DEFAULT,
            wait_max: WAIT_MAX_DEFAULT,
            device_lines: None,
        }
    }
}
