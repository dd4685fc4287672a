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
//! Built so far (pieces, not yet a vSSD):
//! - [`layout`]: geometry, the superblock (two copies, CRC32C), `format`, and the
//!   checks that refuse a device that is not this vSSD without touching it;
//! - [`record`]: log records and 4 KiB log blocks (CRC32C, sequence numbers), the
//!   circular log's addressing and its no-overrun contract;
//! - [`evict`]: S3-FIFO over clean lines, with LRU and traces to measure it against;
//! - [`map`]: the cache map and slot allocator (the state machine: every slot free,
//!   current, prepared or freeing until its releasing record is durable) and the
//!   replay that rebuilds it from an exact checkpoint plus the log;
//! - [`log`]: the log writer with group commit, the recovery scan and the scrub.
//!
//! Not built yet: the `Vssd` that wires these to a device (writep1/commit/abort/
//! read/insert_clean/mark_clean/invalidate), checkpoint I/O, recovery on open, the
//! crash torture of the whole and the benchmarks.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod checkpoint;
mod device;
mod error;
pub mod evict;
pub mod layout;
pub mod log;
pub mod map;
pub mod record;

pub use device::{Hit, InDoubt, Options, Recovered, Resolution, Vssd, VssdStats};
pub use error::VssdError;
pub use layout::{FormatParams, format};
pub use log::RecordPos;
