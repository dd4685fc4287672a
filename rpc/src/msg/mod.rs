//! Typed messages: one variant per request and per response of PROTOCOL.md,
//! "Messages", with the payload layout of each.
//!
//! Bodies borrow from the payload they were decoded from (`&'a [u8]` data, `&'a str`
//! names), so decoding a 1 MiB WRITE copies nothing; the only allocations are the
//! STAT and VSSD_RECOVER lists, whose counts are bounded by their limits and by the
//! bytes actually present before anything is reserved.
//!
//! The decoder is the one statement of what is valid: [`crate::encode_frame`] runs
//! it over every payload it builds, so a frame that would be refused is never sent.
//!
//! Here: the types; `request.rs` and `response.rs`: each layout's encoding and
//! decoding; `rules.rs`: the field rules they share.

mod request;
mod response;
mod rules;

use crate::error::RpcError;
use crate::header::Header;
use crate::limits::{NONCE_LEN, PROOF_LEN};
use crate::msg_type::MsgType;
use crate::status::Status;

/// DEVICE_OPEN request and reply flag: the device is (to be) read-only.
pub const DEVICE_FLAG_READ_ONLY: u32 = 0x1;
/// VSSD_RECOVER reply flag: more in-doubt transactions follow a further call.
pub const RECOVER_FLAG_MORE: u32 = 0x1;
/// VSSD_RECOVER entry flag: the tran's prepared payload failed its CRC there.
pub const IN_DOUBT_FLAG_DAMAGED: u32 = 0x1;
/// VSSD_CLEAN reply flag: the line was marked clean.
pub const CLEAN_FLAG_CLEANED: u32 = 0x1;
/// DEVICE_DELETE request flag: the request names the device's dirty lines
/// (`dirty_lines`), which the deletion then drops.
pub const DELETE_FLAG_DIRTY_NAMED: u32 = 0x1;

/// HELLO request: the versions the client speaks, its nonce and name, and (in
/// the second HELLO of an authenticated session) its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    pub version_min: u16,
    pub version_max: u16,
    pub client_nonce: [u8; NONCE_LEN],
    /// `auth::prove(secret, server_nonce, client_nonce, client_name)`.
    pub proof: Option<[u8; PROOF_LEN]>,
    pub client_name: &'a str,
}

/// HELLO reply (status OK, or AUTH_REQUIRED with the nonce to prove against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply<'a> {
    /// The version both sides use from the next frame on.
    pub version: u16,
    /// Requests the client may have in flight on this session.
    pub queue_depth: u32,
    /// Largest data length of one READ/WRITE/VSSD_WRITEP1/VSSD_READ here.
    pub data_len_max: u32,
    pub server_nonce: [u8; NONCE_LEN],
    /// `auth::prove_server(..)` in an OK reply of an authenticated session.
    pub proof: Option<[u8; PROOF_LEN]>,
    pub server_name: &'a str,
}

/// DEVICE_OPEN reply: the device's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub size_bytes: u64,
    /// Offsets and lengths of READ/WRITE/DISCARD are multiples of it (a power of two).
    pub block_size: u32,
    /// Largest length of one READ or WRITE on this device (1..=DATA_LEN_MAX).
    pub io_len_max: u32,
    pub read_only: bool,
}

/// VSSD_OPEN reply: the vSSD's geometry, epoch and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VssdInfo {
    pub line_count: u64,
    /// The replica's current membership epoch.
    pub epoch: u64,
    /// Largest number of lines one VSSD_WRITEP1 may carry there (>= 1).
    pub tran_lines_max: u64,
    /// Bytes per cache line (a power of two).
    pub line_size: u32,
    /// The members of `epoch` (0..=MEMBERS_MAX).
    pub members: Vec<u64>,
}

/// One STAT counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter<'a> {
    pub name: &'a str,
    pub value: u64,
}

/// One in-doubt transaction of a VSSD_RECOVER reply: its PREPARE record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InDoubt {
    pub tran: u64,
    /// Its first line and how many lines it has (>= 1).
    pub line: u64,
    pub line_count: u32,
    /// Bytes of its payload, all lines together.
    pub payload_len: u32,
    /// Its payload failed its CRC there (IN_DOUBT_FLAG_DAMAGED).
    pub damaged: bool,
}

/// One dirty line of a VSSD_DIRTY reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyLine {
    pub line: u64,
    /// The tran that wrote its current version.
    pub version: u64,
}

/// What a replica knows of a tran (VSSD_OUTCOME reply), by wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum TranState {
    /// Prepared there, neither committed nor aborted.
    Prepared = 1,
    Committed = 2,
    Aborted = 3,
    /// Not pending there and its outcome no longer kept (or never prepared there).
    Forgotten = 4,
    /// An id the replica has never seen.
    Unknown = 5,
}

impl TranState {
    pub const ALL: &[TranState] = &[
        TranState::Prepared,
        TranState::Committed,
        TranState::Aborted,
        TranState::Forgotten,
        TranState::Unknown,
    ];

    pub const fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u32) -> Option<TranState> {
        TranState::ALL.iter().copied().find(|s| s.code() == code)
    }
}

/// A request (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Hello(Hello<'a>),
    Ping {
        data: &'a [u8],
    },
    DeviceOpen {
        name: &'a str,
        read_only: bool,
    },
    DeviceClose {
        handle: u64,
    },
    Read {
        handle: u64,
        offset: u64,
        length: u32,
    },
    Write {
        handle: u64,
        offset: u64,
        data: &'a [u8],
    },
    Flush {
        handle: u64,
    },
    Discard {
        handle: u64,
        offset: u64,
        length: u32,
    },
    /// Handle 0 asks for the server's own counters.
    Stat {
        handle: u64,
    },
    VssdOpen {
        name: &'a str,
        epoch: u64,
    },
    VssdClose {
        handle: u64,
    },
    VssdWritep1 {
        handle: u64,
        tran: u64,
        line: u64,
        data: &'a [u8],
    },
    /// Commits each of `trans` in order (1..=COMMIT_TRANS_MAX of them).
    VssdCommit {
        handle: u64,
        trans: Vec<u64>,
    },
    VssdAbort {
        handle: u64,
        tran: u64,
    },
    VssdRead {
        handle: u64,
        line: u64,
        length: u32,
    },
    VssdClean {
        handle: u64,
        line: u64,
        version: u64,
    },
    /// In-doubt transactions with a tran id above `after_tran` (0: from the start),
    /// in increasing tran order.
    VssdRecover {
        handle: u64,
        after_tran: u64,
        /// At most this many in the reply (1..=IN_DOUBT_PER_REPLY_MAX).
        max: u32,
    },
    /// Moves the replica to `epoch` with `members` (0..=MEMBERS_MAX).
    VssdEpoch {
        handle: u64,
        epoch: u64,
        members: Vec<u64>,
    },
    /// Drops lines `first..first + count` (count >= 1, no overflow).
    VssdInvalidate {
        handle: u64,
        first: u64,
        count: u64,
    },
    VssdOutcome {
        handle: u64,
        tran: u64,
    },
    /// Dirty lines from `from` on, at most `max` (1..=DIRTY_PER_REPLY_MAX).
    VssdDirty {
        handle: u64,
        from: u64,
        max: u32,
    },
    VssdReadPrepared {
        handle: u64,
        tran: u64,
    },
    /// Writes `data` as the committed version `version` of `line` and the lines
    /// after it (a copy from another replica), durably.
    VssdCopyIn {
        handle: u64,
        version: u64,
        line: u64,
        data: &'a [u8],
    },
    /// Commits in-doubt `tran` with `data`, its payload from another replica.
    VssdRepair {
        handle: u64,
        tran: u64,
        data: &'a [u8],
    },
    /// Formats a replica vSSD `name` for device `device` (a name) with `lines`
    /// lines of `line_size` bytes and a log of `log_bytes`, and serves it. `config`
    /// is the device's configuration as its primary runs it (0..=CONFIG_TEXT_LEN_MAX
    /// bytes of UTF-8, empty when not given): what a takeover there starts from.
    VssdCreate {
        name: &'a str,
        device: &'a str,
        line_size: u32,
        lines: u64,
        log_bytes: u64,
        config: &'a str,
    },
    /// A device's configuration text (1..=CONFIG_TEXT_LEN_MAX bytes of UTF-8, its
    /// meaning the serving crate's: `cdev`'s TOML).
    DeviceCreate {
        config: &'a str,
    },
    DeviceList,
    DeviceShow {
        name: &'a str,
    },
    /// Changes the settings `settings` names (a text as DEVICE_CREATE's).
    DeviceSet {
        name: &'a str,
        settings: &'a str,
    },
    /// Deletes `name`. With `dirty_lines` Some(n) the request names the n dirty
    /// lines the device holds (DELETE_FLAG_DIRTY_NAMED), which the deletion drops;
    /// a device holding dirty lines is deleted only when they are named exactly.
    DeviceDelete {
        name: &'a str,
        dirty_lines: Option<u64>,
    },
    /// Takes device `name` over on the server holding one of its replica vSSDs.
    DeviceTakeover {
        name: &'a str,
    },
}

/// A response (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// Status OK: the session is open.
    Hello(HelloReply<'a>),
    /// Status AUTH_REQUIRED: send HELLO again with a proof over `server_nonce`.
    HelloAuthRequired(HelloReply<'a>),
    Ping {
        data: &'a [u8],
    },
    DeviceOpen {
        handle: u64,
        info: DeviceInfo,
    },
    DeviceClose,
    Read {
        data: &'a [u8],
    },
    Write,
    Flush,
    Discard,
    Stat {
        counters: Vec<Counter<'a>>,
    },
    VssdOpen {
        handle: u64,
        info: VssdInfo,
    },
    VssdClose,
    VssdWritep1,
    VssdCommit,
    VssdAbort,
    /// The line's current version (the tran that wrote it) and its data.
    VssdRead {
        version: u64,
        data: &'a [u8],
    },
    VssdClean {
        cleaned: bool,
    },
    VssdRecover {
        in_doubt: Vec<InDoubt>,
        more: bool,
    },
    VssdEpoch,
    /// How many of the lines were held.
    VssdInvalidate {
        held: u64,
    },
    VssdOutcome {
        state: TranState,
    },
    /// In strictly increasing line order.
    VssdDirty {
        lines: Vec<DirtyLine>,
    },
    VssdReadPrepared {
        data: &'a [u8],
    },
    VssdRepair,
    VssdCopyIn,
    VssdCreate,
    DeviceCreate,
    /// Device names, at most DEVICES_PER_LIST_MAX.
    DeviceList {
        names: Vec<&'a str>,
    },
    /// The device's configuration and state (1..=CONFIG_TEXT_LEN_MAX bytes of UTF-8).
    DeviceShow {
        text: &'a str,
    },
    DeviceSet,
    DeviceDelete,
    /// The device serves here at `epoch`; what its recovery did: in-doubt trans
    /// committed and aborted, damaged copies repaired.
    DeviceTakeover {
        epoch: u64,
        committed: u64,
        aborted: u64,
        repaired: u64,
    },
    /// Status STALE_EPOCH (any type): the replica is at `epoch`, newer than the
    /// handle's or the opener's. The epoch travels in the header's `offset`.
    StaleEpoch {
        msg_type: MsgType,
        epoch: u64,
        reason: &'a str,
    },
    /// Any failure but STALE_EPOCH ([`Response::StaleEpoch`]): `status` is not OK.
    /// `msg_type` is the request's type, or ERROR for an unknown type or (tag
    /// TAG_NONE) a connection being closed.
    Error {
        msg_type: MsgType,
        status: Status,
        reason: &'a str,
    },
}

/// A frame's body, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Request(Request<'a>),
    Response(Response<'a>),
}

/// A whole message: the tag that pairs a response with its request, and the body.
/// The header's other fields follow from these (and the session's version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub tag: u64,
    pub body: Body<'a>,
}

/// The header fields a body sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fields {
    pub msg_type: MsgType,
    pub response: bool,
    pub status: Status,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Fields {
    fn new(msg_type: MsgType, response: bool) -> Fields {
        Fields {
            msg_type,
            response,
            status: Status::Ok,
            handle: 0,
            offset: 0,
            length: 0,
        }
    }
    fn handle(mut self, handle: u64) -> Fields {
        self.handle = handle;
        self
    }
    fn offset(mut self, offset: u64) -> Fields {
        self.offset = offset;
        self
    }
    fn length(mut self, length: u32) -> Fields {
        self.length = length;
        self
    }
    fn status(mut self, status: Status) -> Fields {
        self.status = status;
        self
    }
}

impl Message<'_> {
    /// The header's type.
    pub fn msg_type(&self) -> MsgType {
        match &self.body {
            Body::Request(r) => r.msg_type(),
            Body::Response(r) => r.msg_type(),
        }
    }

    /// The header's status.
    pub fn status(&self) -> Status {
        match &self.body {
            Body::Request(_) => Status::Ok,
            Body::Response(r) => r.status(),
        }
    }
}

impl<'a> Body<'a> {
    /// Appends this body's payload to `out` and returns the header fields it sets.
    /// Checks the lengths it has to narrow; the decoder checks the rest.
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) -> Result<Fields, RpcError> {
        match self {
            Body::Request(r) => r.encode_payload(out),
            Body::Response(r) => r.encode_payload(out),
        }
    }

    /// Decodes the payload of a checked header.
    pub(crate) fn decode(h: &Header, payload: &'a [u8]) -> Result<Body<'a>, RpcError> {
        if h.response {
            Response::decode(h, payload).map(Body::Response)
        } else {
            Request::decode(h, payload).map(Body::Request)
        }
    }
}
