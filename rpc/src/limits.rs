//! Every number of the wire in one place. `PROTOCOL.md` quotes these names; the
//! relations between them are asserted at compile time at the bottom of this file.

/// The four bytes every frame starts with: `b"CVAR"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CVAR");

/// Oldest protocol version this build speaks.
pub const VERSION_MIN: u16 = 1;
/// Newest protocol version this build speaks.
pub const VERSION_MAX: u16 = 1;
/// The header version of every HELLO frame, whatever versions its body offers: a
/// server must be able to read a HELLO before anything is negotiated.
pub const VERSION_HELLO: u16 = 1;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 56;

/// Tag of an ERROR frame about the whole connection (sent just before the server
/// closes it). A client never uses it as a request tag.
pub const TAG_NONE: u64 = u64::MAX;

/// Largest data length of one READ, WRITE, VSSD_WRITEP1 or VSSD_READ: 1 MiB.
pub const DATA_LEN_MAX: u32 = 1024 * 1024;
/// Smallest `data_len_max` a server may advertise in its HELLO reply.
pub const DATA_LEN_MAX_ADVERTISED_MIN: u32 = 4096;
/// Largest payload of any frame: the largest data plus room for a fixed prefix.
/// A header that claims more is refused before a single payload byte is read.
pub const PAYLOAD_LEN_MAX: u32 = DATA_LEN_MAX + 64;
/// Largest frame on the wire.
pub const FRAME_LEN_MAX: usize = HEADER_LEN + PAYLOAD_LEN_MAX as usize;

/// Longest name (device, vSSD, client, server, counter), in bytes. Names are 1 to
/// this many bytes of printable ASCII (0x21..=0x7E).
pub const NAME_LEN_MAX: usize = 64;
/// Longest reason text of an error response, in bytes of UTF-8.
pub const REASON_LEN_MAX: usize = 256;
/// Longest PING payload, echoed back by the server.
pub const PING_LEN_MAX: usize = 4096;
/// Most counters in one STAT reply.
pub const STAT_COUNTERS_MAX: usize = 256;
/// Most in-doubt transactions in one VSSD_RECOVER reply (the rest come with the
/// next call, see `more`).
pub const IN_DOUBT_PER_REPLY_MAX: usize = 4096;
/// Most trans one VSSD_COMMIT carries (COMMITs ride lazily, batched).
pub const COMMIT_TRANS_MAX: usize = 1024;
/// Most members of a replica set (VSSD_OPEN reply, VSSD_EPOCH).
pub const MEMBERS_MAX: usize = 16;
/// Most (line, version) pairs in one VSSD_DIRTY reply.
pub const DIRTY_PER_REPLY_MAX: usize = 8192;
/// Longest configuration text of DEVICE_CREATE, DEVICE_SET and a DEVICE_SHOW reply
/// (UTF-8; its meaning is the serving crate's).
pub const CONFIG_TEXT_LEN_MAX: usize = 8192;
/// Most device names in one DEVICE_LIST reply.
pub const DEVICES_PER_LIST_MAX: usize = 256;
/// Largest queue depth (requests in flight per session) a server may advertise.
pub const QUEUE_DEPTH_MAX: u32 = 1024;

/// HELLO frames a server reads on one connection before a session opens (a refused
/// one, the challenge's two, and a few tries with fields fixed); one more closes it.
pub const HELLO_FRAMES_MAX: u32 = 8;

/// Bytes of a HELLO nonce (client's and server's).
pub const NONCE_LEN: usize = 32;
/// Bytes of a HELLO proof: one HMAC-SHA256.
pub const PROOF_LEN: usize = 32;
/// Shortest shared secret `auth` accepts.
pub const SECRET_LEN_MIN: usize = 16;

// Fixed parts of the payload layouts (PROTOCOL.md, "Messages").
pub(crate) const HELLO_REQ_FIXED_LEN: usize = 8 + NONCE_LEN + PROOF_LEN;
pub(crate) const HELLO_REPLY_FIXED_LEN: usize = 16 + NONCE_LEN + PROOF_LEN;
pub(crate) const DEVICE_OPEN_REQ_FIXED_LEN: usize = 8;
pub(crate) const DEVICE_INFO_LEN: usize = 24;
pub(crate) const VSSD_OPEN_REQ_FIXED_LEN: usize = 16;
pub(crate) const VSSD_INFO_FIXED_LEN: usize = 40;
/// VSSD_CREATE request: lines, log_bytes, line_size, the two name lengths, reserved.
pub(crate) const VSSD_CREATE_REQ_FIXED_LEN: usize = 24;
/// VSSD_CREATE request: the fixed part, the two names and the device's configuration.
pub(crate) const VSSD_CREATE_REQ_LEN_MAX: usize =
    VSSD_CREATE_REQ_FIXED_LEN + 2 * NAME_LEN_MAX + CONFIG_TEXT_LEN_MAX;
/// DEVICE_TAKEOVER reply: epoch, committed, aborted, repaired.
pub(crate) const TAKEOVER_REPLY_LEN: usize = 32;
pub(crate) const WRITEP1_PREFIX_LEN: usize = 16;
/// VSSD_READ reply: the version before the data.
pub(crate) const VSSD_READ_PREFIX_LEN: usize = 8;
/// VSSD_REPAIR request: the tran before the data.
pub(crate) const REPAIR_PREFIX_LEN: usize = 8;
/// VSSD_COMMIT request and VSSD_EPOCH request: count and reserved (and the epoch).
pub(crate) const COMMIT_REQ_FIXED_LEN: usize = 8;
pub(crate) const EPOCH_REQ_FIXED_LEN: usize = 16;
pub(crate) const DIRTY_REPLY_FIXED_LEN: usize = 8;
pub(crate) const DIRTY_ENTRY_LEN: usize = 16;
pub(crate) const STAT_REPLY_FIXED_LEN: usize = 8;
/// One counter: name length (u8), name, value (u64).
pub(crate) const STAT_ENTRY_LEN_MIN: usize = 1 + 1 + 8;
pub(crate) const STAT_ENTRY_LEN_MAX: usize = 1 + NAME_LEN_MAX + 8;
/// DEVICE_SHOW and DEVICE_SET requests: name length and reserved before the name.
pub(crate) const NAMED_REQ_FIXED_LEN: usize = 8;
/// DEVICE_DELETE request: dirty_lines, flags, name length, reserved.
pub(crate) const DELETE_REQ_FIXED_LEN: usize = 16;
pub(crate) const LIST_REPLY_FIXED_LEN: usize = 8;
/// One DEVICE_LIST entry: name length (u8), name.
pub(crate) const LIST_ENTRY_LEN_MIN: usize = 1 + 1;
pub(crate) const LIST_ENTRY_LEN_MAX: usize = 1 + NAME_LEN_MAX;
pub(crate) const LIST_REPLY_LEN_MAX: usize =
    LIST_REPLY_FIXED_LEN + DEVICES_PER_LIST_MAX * LIST_ENTRY_LEN_MAX;
pub(crate) const SET_REQ_LEN_MAX: usize = NAMED_REQ_FIXED_LEN + NAME_LEN_MAX + CONFIG_TEXT_LEN_MAX;
pub(crate) const RECOVER_REPLY_FIXED_LEN: usize = 8;
pub(crate) const IN_DOUBT_LEN: usize = 32;

pub(crate) const HELLO_REQ_LEN_MAX: usize = HELLO_REQ_FIXED_LEN + NAME_LEN_MAX;
pub(crate) const HELLO_REPLY_LEN_MAX: usize = HELLO_REPLY_FIXED_LEN + NAME_LEN_MAX;
pub(crate) const STAT_REPLY_LEN_MAX: usize =
    STAT_REPLY_FIXED_LEN + STAT_COUNTERS_MAX * STAT_ENTRY_LEN_MAX;
pub(crate) const RECOVER_REPLY_LEN_MAX: usize =
    RECOVER_REPLY_FIXED_LEN + IN_DOUBT_PER_REPLY_MAX * IN_DOUBT_LEN;
pub(crate) const VSSD_INFO_LEN_MAX: usize = VSSD_INFO_FIXED_LEN + 8 * MEMBERS_MAX;
pub(crate) const COMMIT_REQ_LEN_MAX: usize = COMMIT_REQ_FIXED_LEN + 8 * COMMIT_TRANS_MAX;
pub(crate) const EPOCH_REQ_LEN_MAX: usize = EPOCH_REQ_FIXED_LEN + 8 * MEMBERS_MAX;
pub(crate) const DIRTY_REPLY_LEN_MAX: usize =
    DIRTY_REPLY_FIXED_LEN + DIRTY_PER_REPLY_MAX * DIRTY_ENTRY_LEN;

const _: () = assert!(HEADER_LEN.is_multiple_of(8));
const _: () = assert!(VERSION_MIN <= VERSION_MAX);
const _: () = assert!(VERSION_MIN <= VERSION_HELLO);
const _: () = assert!(VERSION_HELLO <= VERSION_MAX);
const _: () = assert!(DATA_LEN_MAX_ADVERTISED_MIN <= DATA_LEN_MAX);
const _: () = assert!(PAYLOAD_LEN_MAX as usize >= DATA_LEN_MAX as usize + WRITEP1_PREFIX_LEN);
const _: () = assert!(HELLO_REQ_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(HELLO_REPLY_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(STAT_REPLY_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(RECOVER_REPLY_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(PING_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(VSSD_INFO_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(COMMIT_REQ_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(EPOCH_REQ_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(DIRTY_REPLY_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(PAYLOAD_LEN_MAX as usize >= DATA_LEN_MAX as usize + VSSD_READ_PREFIX_LEN);
const _: () = assert!(PAYLOAD_LEN_MAX as usize >= DATA_LEN_MAX as usize + REPAIR_PREFIX_LEN);
const _: () = assert!(REASON_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(LIST_REPLY_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(SET_REQ_LEN_MAX <= PAYLOAD_LEN_MAX as usize);
const _: () = assert!(DEVICES_PER_LIST_MAX <= u32::MAX as usize);
// A name length travels in one byte.
const _: () = assert!(NAME_LEN_MAX <= u8::MAX as usize);
// Counts travel in u32 fields.
const _: () = assert!(STAT_COUNTERS_MAX <= u32::MAX as usize);
const _: () = assert!(IN_DOUBT_PER_REPLY_MAX <= u32::MAX as usize);
const _: () = assert!(COMMIT_TRANS_MAX <= u32::MAX as usize && COMMIT_TRANS_MAX >= 1);
const _: () = assert!(MEMBERS_MAX <= u32::MAX as usize);
const _: () = assert!(DIRTY_PER_REPLY_MAX <= u32::MAX as usize && DIRTY_PER_REPLY_MAX >= 1);
const _: () = assert!(IN_DOUBT_PER_REPLY_MAX >= 1);
