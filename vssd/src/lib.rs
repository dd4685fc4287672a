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
//! Not built yet: everything of the `[vssd]` issue; the first pieces (layout and
//! superblock, log records, eviction policy) are on their way.
#![deny(unsafe_op_in_unsafe_fn)]

mod error;

pub use error::VssdError;
