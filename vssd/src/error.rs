//! The one error type of `vssd`: each variant names the operation, the object (path,
//! line, slot, block, offset) and the value that was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VssdError {
    /// An I/O call of the device failed.
    #[error("vssd {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: taskio::IoError,
    },
    /// Format parameters that cannot make a vSSD.
    #[error("vssd format: {what} (got {got}, allowed {allowed})")]
    BadGeometry {
        what: &'static str,
        got: u64,
        allowed: String,
    },
    /// The device is not a vSSD (no valid superblock): refused, not touched.
    #[error("{path} is not a vSSD: {why}")]
    NotAVssd { path: PathBuf, why: String },
    /// A vSSD of a format version this code does not read.
    #[error("{path}: vSSD format version {got}, this build reads {want}")]
    Version { path: PathBuf, got: u32, want: u32 },
    /// A vSSD that belongs to another cache device.
    #[error("{path}: vSSD of device {got:?}, expected {want:?}")]
    WrongDevice {
        path: PathBuf,
        got: String,
        want: String,
    },
    /// A checksum that does not match what it covers.
    #[error("{what} at offset {offset}: CRC32C {got:#010x}, expected {want:#010x}")]
    Checksum {
        what: &'static str,
        offset: u64,
        got: u32,
        want: u32,
    },
    /// A record or block that does not decode.
    #[error("{what} at offset {offset}: {why}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        why: String,
    },
    /// A device smaller than the vSSD's layout needs.
    #[error("vssd {op} on {path}: the device holds {got} bytes, the vSSD needs {need} ({layout})")]
    TooSmall {
        op: &'static str,
        path: PathBuf,
        got: u64,
        need: u64,
        layout: String,
    },
    /// An operation that would destroy or confuse a vSSD it was not told to.
    #[error("vssd {op} on {path} refused: {why}")]
    Refused {
        op: &'static str,
        path: PathBuf,
        why: String,
    },
    /// A cache-map operation refused (unknown tran, a line already prepared, ...).
    #[error("vssd {op} on {path}: {source}")]
    Map {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: crate::map::MapError,
    },
    /// A payload read back from its slot does not match the CRC32C its write logged:
    /// never returned as data.
    #[error(
        "vssd read of line {line} on {path}: slot {slot} (version {version}) holds CRC32C {got:#010x}, expected {want:#010x}"
    )]
    Payload {
        path: PathBuf,
        line: u64,
        slot: u64,
        version: u64,
        got: u32,
        want: u32,
    },
    /// A payload length the vSSD cannot store.
    #[error("vssd {op} of line {line}: payload of {len} bytes, allowed 1..={max}")]
    PayloadLen {
        op: &'static str,
        line: u64,
        len: usize,
        max: u32,
    },
    /// A commit of an in-doubt tran whose payload recovery found damaged: repair it
    /// ([`crate::Vssd::resolve_repaired`]) or abort it.
    #[error(
        "vssd {op} tran {tran} on {path}: its payload for line {line} in slot {slot} is damaged ({reason}); commit it with a repaired payload or abort it"
    )]
    Damaged {
        op: &'static str,
        path: PathBuf,
        tran: u64,
        line: u64,
        slot: u64,
        reason: crate::recover::Damage,
    },
    /// A membership epoch refused (older than the vSSD's, or too many members).
    #[error("vssd set_epoch to epoch {epoch} on {path}: {why}")]
    Epoch {
        path: PathBuf,
        epoch: u64,
        why: String,
    },
    /// A repaired payload refused.
    #[error("vssd resolve_repaired tran {tran} on {path}: {why}")]
    Repair {
        path: PathBuf,
        tran: u64,
        why: String,
    },
    /// commit/abort of a tran whose writep1 has not returned.
    #[error("vssd {op} tran {tran}: its writep1 is still running")]
    TranBusy { op: &'static str, tran: u64 },
    /// commit/abort of a tran resolved the other way or forgotten, or writep1 of a
    /// tran id resolved already.
    #[error("vssd {op} tran {tran}: the tran is {outcome}")]
    TranResolved {
        op: &'static str,
        tran: u64,
        outcome: crate::outcome::TranOutcome,
    },
    /// The vSSD was closed, or failed on an earlier I/O error.
    #[error("vssd {op} on {path}: {why}")]
    Unusable {
        op: &'static str,
        path: PathBuf,
        why: String,
    },
}
