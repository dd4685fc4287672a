//! The fixed 56-byte frame header (PROTOCOL.md, "Header").
//!
//! Decoding is in two steps because a receiver acts differently on their errors:
//! [`RawHeader::decode`] checks what framing rests on (magic, header CRC, version,
//! the global payload limit); past it, the tag and the payload length can be
//! trusted, so [`RawHeader::validate`]'s errors are answered under the request's
//! tag while the connection goes on (but for the two that
//! [`RpcError::closes_connection`] names: a HELLO outside VERSION_HELLO and a
//! request using TAG_NONE).

use crate::error::{FIELD_FRAME_PAYLOAD, RpcError};
use crate::limits::{
    HEADER_LEN, MAGIC, PAYLOAD_LEN_MAX, TAG_NONE, VERSION_HELLO, VERSION_MAX, VERSION_MIN,
};
use crate::msg_type::MsgType;
use crate::status::Status;

/// Flag bit: this frame is a response.
pub const FLAG_RESPONSE: u16 = 0x0001;
/// Every flag bit with a meaning; the others are reserved and must be zero.
pub const FLAGS_KNOWN: u16 = FLAG_RESPONSE;

// Byte offsets of the header fields.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_TYPE: usize = 6;
const OFF_FLAGS: usize = 8;
const OFF_STATUS: usize = 10;
const OFF_LENGTH: usize = 12;
const OFF_TAG: usize = 16;
const OFF_HANDLE: usize = 24;
const OFF_OFFSET: usize = 32;
const OFF_PAYLOAD_LEN: usize = 40;
const OFF_PAYLOAD_CRC: usize = 44;
const OFF_RESERVED: usize = 48;
/// The header CRC covers every byte before it.
const OFF_HEADER_CRC: usize = 52;

const _: () = assert!(OFF_HEADER_CRC + 4 == HEADER_LEN);
// The u64 fields sit on 8-byte boundaries.
const _: () = assert!(OFF_TAG.is_multiple_of(8));
const _: () = assert!(OFF_HANDLE.is_multiple_of(8));
const _: () = assert!(OFF_OFFSET.is_multiple_of(8));

/// CRC32C (Castagnoli) of a payload, as carried in `payload_crc`. Zero for an
/// empty payload.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

fn get_u16(b: &[u8; HEADER_LEN], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn get_u32(b: &[u8; HEADER_LEN], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn get_u64(b: &[u8; HEADER_LEN], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

fn put(b: &mut [u8; HEADER_LEN], off: usize, bytes: &[u8]) {
    b[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A header whose framing is sound (magic, CRC, version, global payload limit)
/// but whose fields are not yet checked against the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    pub version: u16,
    pub msg_type: u16,
    pub flags: u16,
    pub status: u16,
    pub length: u32,
    pub tag: u64,
    pub handle: u64,
    pub offset: u64,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub reserved: u32,
}

impl RawHeader {
    /// Checks magic, header CRC, version and `payload_len <= PAYLOAD_LEN_MAX`, in
    /// that order. Any error here means the stream cannot be trusted: close.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<RawHeader, RpcError> {
        let magic = get_u32(bytes, OFF_MAGIC);
        if magic != MAGIC {
            return Err(RpcError::BadMagic { got: magic });
        }
        let got = get_u32(bytes, OFF_HEADER_CRC);
        let want = crc32c::crc32c(&bytes[..OFF_HEADER_CRC]);
        if got != want {
            return Err(RpcError::HeaderCrc { got, want });
        }
        let raw = RawHeader {
            version: get_u16(bytes, OFF_VERSION),
            msg_type: get_u16(bytes, OFF_TYPE),
            flags: get_u16(bytes, OFF_FLAGS),
            status: get_u16(bytes, OFF_STATUS),
            length: get_u32(bytes, OFF_LENGTH),
            tag: get_u64(bytes, OFF_TAG),
            handle: get_u64(bytes, OFF_HANDLE),
            offset: get_u64(bytes, OFF_OFFSET),
            payload_len: get_u32(bytes, OFF_PAYLOAD_LEN),
            payload_crc: get_u32(bytes, OFF_PAYLOAD_CRC),
            reserved: get_u32(bytes, OFF_RESERVED),
        };
        if !(VERSION_MIN..=VERSION_MAX).contains(&raw.version) {
            return Err(RpcError::BadVersion {
                got: raw.version,
                min: VERSION_MIN,
                max: VERSION_MAX,
            });
        }
        if raw.payload_len > PAYLOAD_LEN_MAX {
            return Err(RpcError::TooLarge {
                msg_type: raw.msg_type,
                field: FIELD_FRAME_PAYLOAD,
                len: u64::from(raw.payload_len),
                max: u64::from(PAYLOAD_LEN_MAX),
            });
        }
        Ok(raw)
    }

    /// True when the RESPONSE flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Checks the fields against the message type, in this order: a known type,
    /// HELLO in VERSION_HELLO, no reserved flag, a request type not sent as a
    /// response-only one, a request tag other than TAG_NONE, a status the frame
    /// may carry, the reserved field zero, and the type's own payload limit.
    /// Errors here are answered under `self.tag`; but for BadVersion and BadTag
    /// the connection goes on.
    pub fn validate(&self) -> Result<Header, RpcError> {
        let Some(msg_type) = MsgType::from_u16(self.msg_type) else {
            return Err(RpcError::BadType {
                got: self.msg_type,
                why: "unknown message type",
            });
        };
        if self.flags & !FLAGS_KNOWN != 0 {
            return Err(RpcError::BadFlags {
                msg_type: self.msg_type,
                got: self.flags,
            });
        }
        if msg_type == MsgType::Hello && self.version != VERSION_HELLO {
            return Err(RpcError::BadVersion {
                got: self.version,
                min: VERSION_HELLO,
                max: VERSION_HELLO,
            });
        }
        let response = self.is_response();
        if !response && !msg_type.is_request_type() {
            return Err(RpcError::BadType {
                got: self.msg_type,
                why: "response-only type sent as a request",
            });
        }
        if !response && self.tag == TAG_NONE {
            return Err(RpcError::BadTag { got: self.tag });
        }
        let status = if response {
            let Some(status) = Status::from_u16(self.status) else {
                return Err(RpcError::BadStatus {
                    msg_type: self.msg_type,
                    got: self.status,
                    why: "unknown status code",
                });
            };
            if msg_type == MsgType::Error && status.is_ok() {
                return Err(RpcError::BadStatus {
                    msg_type: self.msg_type,
                    got: self.status,
                    why: "ERROR must carry a failure status",
                });
            }
            status
        } else {
            if self.status != 0 {
                return Err(RpcError::BadStatus {
                    msg_type: self.msg_type,
                    got: self.status,
                    why: "a request's status must be 0",
                });
            }
            Status::Ok
        };
        if self.reserved != 0 {
            return Err(RpcError::InvalidArgument {
                msg_type,
                field: "header reserved",
                got: u64::from(self.reserved),
                why: "reserved, must be 0",
            });
        }
        let max = msg_type.payload_len_max(response);
        if self.payload_len > max {
            return Err(RpcError::TooLarge {
                msg_type: self.msg_type,
                field: "payload",
                len: u64::from(self.payload_len),
                max: u64::from(max),
            });
        }
        Ok(Header {
            version: self.version,
            msg_type,
            response,
            status,
            tag: self.tag,
            handle: self.handle,
            offset: self.offset,
            length: self.length,
            payload_len: self.payload_len,
            payload_crc: self.payload_crc,
        })
    }
}

/// A checked header. Which of `handle`, `offset` and `length` a message uses is
/// the message type's business (PROTOCOL.md, "Messages"); unused ones are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub msg_type: MsgType,
    pub response: bool,
    pub status: Status,
    pub tag: u64,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
}

impl Header {
    /// The same fields as a [`RawHeader`] (to answer with `Message::error_reply`).
    pub fn raw(&self) -> RawHeader {
        RawHeader {
            version: self.version,
            msg_type: self.msg_type.code(),
            flags: if self.response { FLAG_RESPONSE } else { 0 },
            status: self.status.code(),
            length: self.length,
            tag: self.tag,
            handle: self.handle,
            offset: self.offset,
            payload_len: self.payload_len,
            payload_crc: self.payload_crc,
            reserved: 0,
        }
    }

    /// Both decode steps: framing, then the fields.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, RpcError> {
        RawHeader::decode(bytes)?.validate()
    }

    /// The wire bytes, header CRC included. Encodes whatever the fields hold;
    /// [`crate::encode_frame`] is what keeps them consistent with a payload.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let flags = if self.response { FLAG_RESPONSE } else { 0 };
        put(&mut b, OFF_MAGIC, &MAGIC.to_le_bytes());
        put(&mut b, OFF_VERSION, &self.version.to_le_bytes());
        put(&mut b, OFF_TYPE, &self.msg_type.code().to_le_bytes());
        put(&mut b, OFF_FLAGS, &flags.to_le_bytes());
        put(&mut b, OFF_STATUS, &self.status.code().to_le_bytes());
        put(&mut b, OFF_LENGTH, &self.length.to_le_bytes());
        put(&mut b, OFF_TAG, &self.tag.to_le_bytes());
        put(&mut b, OFF_HANDLE, &self.handle.to_le_bytes());
        put(&mut b, OFF_OFFSET, &self.offset.to_le_bytes());
        put(&mut b, OFF_PAYLOAD_LEN, &self.payload_len.to_le_bytes());
        put(&mut b, OFF_PAYLOAD_CRC, &self.payload_crc.to_le_bytes());
        put(&mut b, OFF_RESERVED, &0u32.to_le_bytes());
        seal(&mut b);
        b
    }
}

/// Writes the header CRC of `b` (over every byte before the CRC field).
pub(crate) fn seal(b: &mut [u8; HEADER_LEN]) {
    let crc = crc32c::crc32c(&b[..OFF_HEADER_CRC]);
    put(b, OFF_HEADER_CRC, &crc.to_le_bytes());
}

/// Raw field access for tests and fuzzers that forge headers: sets a field by
/// byte offset and re-seals the CRC.
#[doc(hidden)]
pub mod forge {
    use super::*;

    pub const MAGIC_AT: usize = OFF_MAGIC;
    pub const VERSION_AT: usize = OFF_VERSION;
    pub const TYPE_AT: usize = OFF_TYPE;
    pub const FLAGS_AT: usize = OFF_FLAGS;
    pub const STATUS_AT: usize = OFF_STATUS;
    pub const LENGTH_AT: usize = OFF_LENGTH;
    pub const TAG_AT: usize = OFF_TAG;
    pub const HANDLE_AT: usize = OFF_HANDLE;
    pub const OFFSET_AT: usize = OFF_OFFSET;
    pub const PAYLOAD_LEN_AT: usize = OFF_PAYLOAD_LEN;
    pub const PAYLOAD_CRC_AT: usize = OFF_PAYLOAD_CRC;
    pub const RESERVED_AT: usize = OFF_RESERVED;
    pub const HEADER_CRC_AT: usize = OFF_HEADER_CRC;

    /// Overwrites bytes at `off` and recomputes the header CRC.
    pub fn set(b: &mut [u8; HEADER_LEN], off: usize, bytes: &[u8]) {
        put(b, off, bytes);
        seal(b);
    }

    /// Recomputes the header CRC.
    pub fn reseal(b: &mut [u8; HEADER_LEN]) {
        seal(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 1,
            msg_type: MsgType::Read,
            response: false,
            status: Status::Ok,
            tag: 0x0102_0304_0506_0708,
            handle: 7,
            offset: 4096,
            length: 8192,
            payload_len: 0,
            payload_crc: 0,
        }
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let b = sample().encode();
        assert_eq!(&b[0..4], b"CVAR");
        assert_eq!(&b[4..6], &[1, 0]);
        assert_eq!(&b[6..8], &[0x12, 0x00]);
        assert_eq!(&b[12..16], &8192u32.to_le_bytes());
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..32], &7u64.to_le_bytes());
        assert_eq!(&b[32..40], &4096u64.to_le_bytes());
        assert_eq!(&b[52..56], &crc32c::crc32c(&b[..52]).to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn crc_covers_every_byte_before_it() {
        let good = sample().encode();
        for i in 0..OFF_HEADER_CRC {
            let mut b = good;
            b[i] ^= 0x10;
            let err = RawHeader::decode(&b).unwrap_err();
            // A flipped magic byte is reported as bad magic (checked first).
            if i < 4 {
                assert!(matches!(err, RpcError::BadMagic { .. }), "byte {i}: {err}");
            } else {
                assert!(matches!(err, RpcError::HeaderCrc { .. }), "byte {i}: {err}");
            }
        }
    }
}
