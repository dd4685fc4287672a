//! `vssd`: one virtual SSD, a region of local flash holding the cached lines of one
//! cache device, their metadata and a write-ahead log.
//!
//! Renders the seed's vssd.c ("read metadata into private buffer, write payload to
//! correct location, prepare and write transaction record into log buffer, sleep until
//! log buffer is flushed"). It must never import `rpc` nor know about replicas: the
//! DTM reaches remote vSSDs, not this crate.
//!
//! Not built yet: layout, cache map, log and recovery arrive with the `[vssd]` issue.
#![deny(unsafe_op_in_unsafe_fn)]
