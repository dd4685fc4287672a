//! The one error type of `rpc`. Each variant names what was wrong and carries the
//! values, so a log line alone tells what a peer sent. Decode errors also tell the
//! receiver what to do next: [`RpcError::closes_connection`] and the status to
//! answer with, [`RpcError::status`] (PROTOCOL.md, "Bad input").

use crate::limits::MAGIC;
use crate::msg_type::MsgType;
use crate::status::Status;

/// Which part of a frame an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    Payload,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
        })
    }
}

/// Display name of a raw type code, known or not.
pub(crate) fn type_name(code: u16) -> String {
    match MsgType::from_u16(code) {
        Some(t) => t.name().to_string(),
        None => format!("type {code:#06x}"),
    }
}

/// Everything that can go wrong encoding or decoding a frame, or proving a HELLO.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Fewer bytes than the header or the declared payload needs.
    #[error("truncated frame: {part} has {got} of {want} bytes")]
    Truncated { part: Part, got: usize, want: usize },
    /// The frame does not start with MAGIC: not our protocol, or framing is lost.
    #[error("bad magic {got:#010x} (want {MAGIC:#010x})")]
    BadMagic { got: u32 },
    /// The header's CRC32C does not match its bytes.
    #[error("header CRC32C mismatch: header says {got:#010x}, bytes give {want:#010x}")]
    HeaderCrc { got: u32, want: u32 },
    /// A header version outside what this side speaks.
    #[error("protocol version {got} not spoken here ({min}..={max})")]
    BadVersion { got: u16, min: u16, max: u16 },
    /// A length over its limit: the payload (against the global or the type's
    /// limit) or one field of it.
    #[error("{}: {field} of {len} bytes is over the limit of {max}", type_name(*msg_type))]
    TooLarge {
        msg_type: u16,
        field: &'static str,
        len: u64,
        max: u64,
    },
    /// A count over its limit (list entries).
    #[error("{msg_type}: {field} count {count} is over the limit of {max}")]
    TooMany {
        msg_type: MsgType,
        field: &'static str,
        count: u64,
        max: u64,
    },
    /// An unknown type code, or a type sent in a direction it does not go.
    #[error("{}: {why}", type_name(*got))]
    BadType { got: u16, why: &'static str },
    /// A flag bit that is reserved (must be zero) is set.
    #[error("{}: reserved flag bits set in flags {got:#06x}", type_name(*msg_type))]
    BadFlags { msg_type: u16, got: u16 },
    /// A status that the message cannot carry.
    #[error("{}: status {got}: {why}", type_name(*msg_type))]
    BadStatus {
        msg_type: u16,
        got: u16,
        why: &'static str,
    },
    /// A request used the tag reserved for connection-level errors.
    #[error("request tag {got:#x} is reserved (TAG_NONE)")]
    BadTag { got: u64 },
    /// The payload's CRC32C does not match its bytes.
    #[error(
        "{msg_type}: payload CRC32C mismatch: header says {got:#010x}, bytes give {want:#010x}"
    )]
    PayloadCrc {
        msg_type: MsgType,
        got: u32,
        want: u32,
    },
    /// The payload (or a length inside it) does not fit the message's layout.
    #[error("{msg_type}: {field} is {got} bytes, must be {min}..={max}")]
    BadLength {
        msg_type: MsgType,
        field: &'static str,
        got: u64,
        min: u64,
        max: u64,
    },
    /// A field holds a value the message does not allow.
    #[error("{msg_type}: {field} = {got:#x}: {why}")]
    InvalidArgument {
        msg_type: MsgType,
        field: &'static str,
        got: u64,
        why: &'static str,
    },
    /// A HELLO shared secret shorter than SECRET_LEN_MIN.
    #[error("HELLO secret of {len} bytes is shorter than {min}")]
    SecretTooShort { len: usize, min: usize },
    /// A HELLO proof that does not match.
    #[error("HELLO proof of the {who} does not match")]
    AuthFailed { who: &'static str },
    /// The connection failed under an I/O call.
    #[error("rpc {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: taskio::IoError,
    },
    /// The connection is gone (closed by the peer, broken, or by us); every call
    /// waiting on it fails with this.
    #[error("rpc connection to {peer} lost: {why}")]
    ConnectionLost { peer: String, why: String },
    /// The peer refused (an error status for the session, e.g. at HELLO).
    #[error("rpc peer refused {what}: {status} ({reason})")]
    Refused {
        what: &'static str,
        status: Status,
        reason: String,
    },
    /// A call got no response in time.
    #[error("rpc call {msg_type} (tag {tag}) timed out after {after:?}")]
    TimedOut {
        msg_type: MsgType,
        tag: u64,
        after: std::time::Duration,
    },
    /// The peer broke the protocol in a way a decode error does not name.
    #[error("rpc protocol: {what}")]
    Protocol { what: String },
    /// A connection could not be handed to the runtime a session chose (its inbox
    /// full, or the runtime gone); the client is told and the connection closed.
    #[error("rpc hand-off of a connection to runtime {to}: {why}")]
    Handoff {
        to: String,
        status: Status,
        why: &'static str,
    },
    /// The server could not start (bind, threads, runtimes).
    #[error("rpc server setup: {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RpcError {
    /// The status a server answers this error with.
    pub fn status(&self) -> Status {
        match self {
            RpcError::Truncated { .. } => Status::BadLength,
            RpcError::BadMagic { .. } => Status::BadMagic,
            RpcError::HeaderCrc { .. } => Status::BadHeaderCrc,
            RpcError::BadVersion { .. } => Status::BadVersion,
            RpcError::TooLarge { .. } | RpcError::TooMany { .. } => Status::TooLarge,
            RpcError::BadType { .. } => Status::BadType,
            RpcError::BadFlags { .. } => Status::BadFlags,
            RpcError::BadStatus { .. } | RpcError::BadTag { .. } => Status::InvalidArgument,
            RpcError::PayloadCrc { .. } => Status::BadPayloadCrc,
            RpcError::BadLength { .. } => Status::BadLength,
            RpcError::InvalidArgument { .. } | RpcError::SecretTooShort { .. } => {
                Status::InvalidArgument
            }
            RpcError::AuthFailed { .. } => Status::AuthFailed,
            RpcError::Refused { status, .. } | RpcError::Handoff { status, .. } => *status,
            RpcError::TimedOut { .. } => Status::Timeout,
            RpcError::Io { .. }
            | RpcError::ConnectionLost { .. }
            | RpcError::Protocol { .. }
            | RpcError::Setup { .. } => Status::IoError,
        }
    }

    /// True when a receiver can no longer trust the framing of the stream (or the
    /// peer) and must close the connection; false when it answers the request
    /// with [`status`](Self::status) under the request's tag and goes on.
    ///
    /// A payload over the type's limit but within PAYLOAD_LEN_MAX is answered (the
    /// server reads and drops it, bounded); one over PAYLOAD_LEN_MAX closes.
    pub fn closes_connection(&self) -> bool {
        match self {
            RpcError::Truncated { .. }
            | RpcError::BadMagic { .. }
            | RpcError::HeaderCrc { .. }
            | RpcError::BadVersion { .. }
            | RpcError::BadTag { .. }
            | RpcError::AuthFailed { .. }
            | RpcError::SecretTooShort { .. }
            | RpcError::Io { .. }
            | RpcError::ConnectionLost { .. }
            | RpcError::Refused { .. }
            | RpcError::Handoff { .. }
            | RpcError::Protocol { .. }
            | RpcError::Setup { .. } => true,
            RpcError::TimedOut { .. } => false,
            RpcError::TooLarge { field, .. } => *field == FIELD_FRAME_PAYLOAD,
            RpcError::TooMany { .. }
            | RpcError::BadType { .. }
            | RpcError::BadFlags { .. }
            | RpcError::BadStatus { .. }
            | RpcError::PayloadCrc { .. }
            | RpcError::BadLength { .. }
            | RpcError::InvalidArgument { .. } => false,
        }
    }
}

/// The `field` of a [`RpcError::TooLarge`] about a payload over PAYLOAD_LEN_MAX:
/// the frame cannot be skipped, so the connection closes.
pub(crate) const FIELD_FRAME_PAYLOAD: &str = "payload (global limit)";
