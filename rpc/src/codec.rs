//! Framing: a [`Message`] to bytes and back (PROTOCOL.md, "Frame").
//!
//! A receiver reads exactly [`HEADER_LEN`] bytes, calls [`decode_header`] (or the
//! two steps of [`RawHeader`] to tell a closing error from an answerable one), then
//! reads exactly `header.payload_len` bytes, which the header has already bounded by
//! the type's limit, and calls [`decode_payload`]. Nothing is allocated from a
//! length the header has not checked.

use crate::error::{Part, RpcError};
use crate::header::{Header, RawHeader, payload_crc};
use crate::limits::{HEADER_LEN, REASON_LEN_MAX, TAG_NONE, VERSION_HELLO};
use crate::msg::{Body, Message, Response};
use crate::msg_type::MsgType;
use crate::status::Status;

/// Appends one frame (header, then payload) for `msg` to `out`, in protocol
/// `version` (HELLO frames always go out in [`VERSION_HELLO`]). Returns the header
/// written. On error `out` is left as it was.
///
/// The frame is checked on the way out by the same decoder a receiver runs, so a
/// frame that a peer would refuse is never produced.
pub fn encode_frame(
    version: u16,
    msg: &Message<'_>,
    out: &mut Vec<u8>,
) -> Result<Header, RpcError> {
    let start = out.len();
    let result = encode_at(version, msg, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_at(
    version: u16,
    msg: &Message<'_>,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<Header, RpcError> {
    out.resize(start + HEADER_LEN, 0);
    let fields = msg.body.encode_payload(out)?;
    let payload = out.get(start + HEADER_LEN..).unwrap_or_default();
    let max = fields.msg_type.payload_len_max(fields.response);
    let payload_len = match u32::try_from(payload.len()) {
        Ok(n) if n <= max => n,
        _ => {
            return Err(RpcError::TooLarge {
                msg_type: fields.msg_type.code(),
                field: "payload",
                len: payload.len() as u64,
                max: u64::from(max),
            });
        }
    };
    let version = if fields.msg_type == MsgType::Hello {
        VERSION_HELLO
    } else {
        version
    };
    let header = Header {
        version,
        msg_type: fields.msg_type,
        response: fields.response,
        status: fields.status,
        tag: msg.tag,
        handle: fields.handle,
        offset: fields.offset,
        length: fields.length,
        payload_len,
        payload_crc: payload_crc(payload),
    };
    let bytes = header.encode();
    // Checked on the way out, as a receiver will check it.
    let checked = RawHeader::decode(&bytes)?.validate()?;
    debug_assert_eq!(checked, header);
    Body::decode(&header, payload)?;
    out[start..start + HEADER_LEN].copy_from_slice(&bytes);
    Ok(header)
}

/// Decodes and checks the header at the start of `bytes` (which may hold more).
pub fn decode_header(bytes: &[u8]) -> Result<Header, RpcError> {
    Header::decode(header_bytes(bytes)?)
}

/// The first [`HEADER_LEN`] bytes, or `Truncated`.
pub fn header_bytes(bytes: &[u8]) -> Result<&[u8; HEADER_LEN], RpcError> {
    bytes
        .first_chunk::<HEADER_LEN>()
        .ok_or(RpcError::Truncated {
            part: Part::Header,
            got: bytes.len(),
            want: HEADER_LEN,
        })
}

/// Checks the payload of `header` (exactly `header.payload_len` bytes) against its
/// CRC and decodes the message.
pub fn decode_payload<'a>(header: &Header, payload: &'a [u8]) -> Result<Message<'a>, RpcError> {
    let want_len = header.payload_len as usize;
    if payload.len() < want_len {
        return Err(RpcError::Truncated {
            part: Part::Payload,
            got: payload.len(),
            want: want_len,
        });
    }
    if payload.len() > want_len {
        return Err(RpcError::BadLength {
            msg_type: header.msg_type,
            field: "payload (more bytes than payload_len)",
            got: payload.len() as u64,
            min: u64::from(header.payload_len),
            max: u64::from(header.payload_len),
        });
    }
    let want = payload_crc(payload);
    if want != header.payload_crc {
        return Err(RpcError::PayloadCrc {
            msg_type: header.msg_type,
            got: header.payload_crc,
            want,
        });
    }
    Ok(Message {
        tag: header.tag,
        body: Body::decode(header, payload)?,
    })
}

/// Decodes one whole frame from the start of `bytes`; returns it and the number
/// of bytes it took. Convenient for tests and fuzzing; a stream reader uses
/// [`decode_header`] and [`decode_payload`] to read no more than it must.
pub fn decode_frame(bytes: &[u8]) -> Result<(Header, Message<'_>, usize), RpcError> {
    let header = decode_header(bytes)?;
    let end = HEADER_LEN + header.payload_len as usize;
    let payload = bytes.get(HEADER_LEN..end).ok_or(RpcError::Truncated {
        part: Part::Payload,
        got: bytes.len().saturating_sub(HEADER_LEN),
        want: header.payload_len as usize,
    })?;
    let msg = decode_payload(&header, payload)?;
    Ok((header, msg, end))
}

/// The longest prefix of `reason` that fits an error response (cut at a char
/// boundary).
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= REASON_LEN_MAX {
        return reason;
    }
    let mut end = REASON_LEN_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl<'a> Message<'a> {
    /// The response to a request that fails with `status`: under the request's
    /// tag, typed as the request when its type is known and ERROR otherwise.
    /// `reason` is cut to fit. Works from a [`RawHeader`], so a request whose
    /// header did not validate can still be answered.
    ///
    /// # Panics
    /// If `status` is OK (a programmer error).
    pub fn error_reply(request: &RawHeader, status: Status, reason: &'a str) -> Message<'a> {
        assert!(!status.is_ok(), "an error reply needs a failure status");
        let msg_type = match MsgType::from_u16(request.msg_type) {
            // HELLO + AUTH_REQUIRED has its own layout; as an error it goes as ERROR.
            Some(MsgType::Hello) if status == Status::AuthRequired => MsgType::Error,
            Some(t) => t,
            None => MsgType::Error,
        };
        let reason = truncate_reason(reason);
        let body = if status == Status::StaleEpoch {
            // Its own variant (it carries the replica's epoch); not known here.
            Response::StaleEpoch {
                msg_type,
                epoch: 0,
                reason,
            }
        } else {
            Response::Error {
                msg_type,
                status,
                reason,
            }
        };
        Message {
            tag: request.tag,
            body: Body::Response(body),
        }
    }

    /// The ERROR frame a server sends (tag TAG_NONE) just before it closes a
    /// connection.
    ///
    /// # Panics
    /// If `status` is OK (a programmer error).
    pub fn connection_error(status: Status, reason: &'a str) -> Message<'a> {
        assert!(!status.is_ok(), "a connection error needs a failure status");
        Message {
            tag: TAG_NONE,
            body: Body::Response(Response::Error {
                msg_type: MsgType::Error,
                status,
                reason: truncate_reason(reason),
            }),
        }
    }
}
