//! `vssd`: one virtual SSD, a region of local flash holding the cached lines of one
//! cache device, their metadata and a write-ahead log.
//!
//! Renders the seed's vssd.c ("read metadata into private buffer, write payload to
//! correct location, prepare and write transaction record into log buffer, sleep until
//! log buffer is flushed"). It must never import `rpc` nor know about replicas: the
//! DTM reaches remote vSSDs, not this crate. It does all its I/O through taskio's
//! `file` API, so the same code runs on a real file and on the simulator's disk.
//!
//! On disk (DESIGN.md, "vSSD on disk"):
//!
//! ```text
//! | superblock A | superblock B | log (circular) | checkpoint A | checkpoint B | data slots |
//! ```
//!
//! [`Vssd`] is the vSSD: [`format()`] makes one, [`Vssd::open`] recovers it (newest
//! checkpoint, log replay, in-doubt trans returned to the DTM), and its calls are the
//! seed's: [`Vssd::writep1`] (a tran of one or several consecutive lines, up to
//! [`Vssd::tran_lines_max`]: each payload in a free slot, its PREPARE durable by group
//! commit; after a crash all the tran's lines or none), [`Vssd::commit`] / [`Vssd::abort`] / [`Vssd::resolve`] (idempotent;
//! [`Vssd::tran_outcome`] tells what became of a tran), [`Vssd::read`] (CRC32C
//! checked), [`Vssd::insert_clean`], [`Vssd::mark_clean`], [`Vssd::invalidate`] /
//! [`Vssd::invalidate_range`], [`Vssd::dirty_range`] and [`Vssd::wait_dirty_changed`]
//! (destage), and [`Vssd::checkpoint`] (also taken in the background). Dropping the
//! last handle closes it ([`Vssd::background`] tells when its tasks ended).
//! Its parts:
//! - [`layout`]: geometry, the superblock (two copies, CRC32C), `format`, and the
//!   checks that refuse a device that is not this vSSD without touching it;
//! - [`record`]: log records and 4 KiB log blocks (CRC32C seeded with the format's
//!   uuid, sequence numbers), the circular log's addressing and its no-overrun rules;
//! - [`log`]: the log writers with group commit (write + fdatasync, lazy for records
//!   nobody waits for);
//! - [`map`]: the cache map and slot allocator (every slot free, current, prepared or
//!   freeing until its releasing record is durable; pinned while I/O uses it);
//! - [`checkpoint`]: the map written to the alternate checkpoint region;
//! - [`recover`]: the whole of recovery, in the order it runs: checkpoint, log scan
//!   and replay, the checks, the scrub past the log's end, the in-doubt trans;
//! - `epoch`: the membership epoch, set by the DTM, never going back;
//! - `tran`: tran ids never reused, by a durable high-water mark logged ahead;
//! - [`evict`]: S3-FIFO over clean lines, with LRU and traces to measure it against.
//!
//! How each piece is checked: unit and property tests per module, a model-checked
//! random program against a real file (`tests/vssd.rs`), and the crash torture of the
//! whole under the simulator (`tdrv torture vssd`, 200 seeds in the tests).
#![deny(unsafe_op_in_unsafe_fn)]

mod background;
pub mod checkpoint;
mod device;
mod epoch;
mod error;
pub mod evict;
pub mod layout;
pub mod log;
pub mod map;
mod outcome;
pub mod record;
pub mod recover;
mod tran;

pub use background::Background;
pub use device::{Hit, Options, Resolution, Vssd, VssdStats};
pub use epoch::Membership;
pub use error::VssdError;
pub use layout::{FormatParams, format};
pub use log::RecordPos;
pub use outcome::{OUTCOMES_MAX, TranOutcome};
pub use recover::{Damage, InDoubt, Payload, Recovered};
pub use tran::TRAN_IDS_PER_RECORD;
