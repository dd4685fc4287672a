//! The one error type of `cdev`: each variant names the operation, the device and the
//! value that was wrong, and maps to the wire's status ([`CdevError::status`]).

use std::path::PathBuf;

use dtm::DtmError;
use rpc::Status;
use taskio::IoError;
use vssd::VssdError;

#[derive(Debug, thiserror::Error)]
pub enum CdevError {
    /// A request's range is misaligned, past the end or too long; nothing was done.
    #[error("{op} on device {device}: offset {offset} length {len}: {why}")]
    InvalidArgument {
        op: &'static str,
        device: String,
        offset: u64,
        len: u64,
        why: String,
    },
    /// The configuration cannot make a device.
    #[error("{op} of device {device}: bad configuration: {why}")]
    Config {
        op: &'static str,
        device: String,
        why: String,
    },
    /// The backing store failed an I/O.
    #[error("{op} on device {device}: backing store {path}: {source}", path = path.display())]
    Backing {
        op: &'static str,
        device: String,
        path: PathBuf,
        #[source]
        source: Box<IoError>,
    },
    /// The primary vSSD failed to open, format or serve.
    #[error("{op} on device {device}: vSSD {path}: {source}", path = path.display())]
    Vssd {
        op: &'static str,
        device: String,
        path: PathBuf,
        #[source]
        source: Box<VssdError>,
    },
    /// The DTM refused or failed the operation.
    #[error("{op} on device {device}: {source}")]
    Dtm {
        op: &'static str,
        device: String,
        #[source]
        source: Box<DtmError>,
    },
    /// A write or a mode change on a device opened read-only.
    #[error("{op} on device {device}: the device is read-only")]
    ReadOnly { op: &'static str, device: String },
    /// The device was closed, or failed and stopped serving.
    #[error("{op} on device {device}: the device is {state}")]
    NotServing {
        op: &'static str,
        device: String,
        state: &'static str,
    },
    /// A runtime resource (a task) could not be had.
    #[error("{op} on device {device}: {why}")]
    Runtime {
        op: &'static str,
        device: String,
        why: String,
    },
}

impl CdevError {
    /// The wire's status for this error.
    pub fn status(&self) -> Status {
        match self {
            CdevError::InvalidArgument { .. } | CdevError::Config { .. } => Status::InvalidArgument,
            CdevError::Backing { .. } | CdevError::Vssd { .. } => Status::IoError,
            CdevError::Dtm { source, .. } => dtm_status(source),
            CdevError::ReadOnly { .. } => Status::ReadOnly,
            CdevError::NotServing { .. } => Status::ShuttingDown,
            CdevError::Runtime { .. } => Status::Busy,
        }
    }
}

/// A DTM error's status: a wait that ran out is BUSY (try again); a device fenced by
/// a newer epoch (another cvad took it over) is STALE_EPOCH; anything else the device
/// failed.
fn dtm_status(e: &DtmError) -> Status {
    match e {
        DtmError::Busy { .. } => Status::Busy,
        DtmError::Fenced { .. } => Status::StaleEpoch,
        DtmError::Replica(r) if matches!(r.kind, dtm::ReplicaErrorKind::StaleEpoch { .. }) => {
            Status::StaleEpoch
        }
        _ => Status::IoError,
    }
}
