//! Field rules every message layout shares: unused header fields, handles,
//! ranges, lengths, names, proofs.

use crate::cursor::{Put, Reader};
use crate::error::RpcError;
use crate::header::Header;
use crate::limits::{CONFIG_TEXT_LEN_MAX, DATA_LEN_MAX, NAME_LEN_MAX, PAYLOAD_LEN_MAX, PROOF_LEN};
use crate::msg_type::MsgType;

pub(super) fn invalid(t: MsgType, field: &'static str, got: u64, why: &'static str) -> RpcError {
    RpcError::InvalidArgument {
        msg_type: t,
        field,
        got,
        why,
    }
}

/// The header fields a message does not use must be zero.
pub(super) fn unused(h: &Header, handle: bool, offset: bool, length: bool) -> Result<(), RpcError> {
    let why = "not used by this message, must be 0";
    if !handle && h.handle != 0 {
        return Err(invalid(h.msg_type, "handle", h.handle, why));
    }
    if !offset && h.offset != 0 {
        return Err(invalid(h.msg_type, "offset", h.offset, why));
    }
    if !length && h.length != 0 {
        return Err(invalid(h.msg_type, "length", u64::from(h.length), why));
    }
    Ok(())
}

pub(super) fn open_handle(h: &Header) -> Result<u64, RpcError> {
    if h.handle == 0 {
        return Err(invalid(h.msg_type, "handle", 0, "handle 0 is never open"));
    }
    Ok(h.handle)
}

/// `offset + length` must not overflow.
pub(super) fn range(h: &Header) -> Result<(u64, u32), RpcError> {
    if h.offset.checked_add(u64::from(h.length)).is_none() {
        return Err(invalid(
            h.msg_type,
            "offset",
            h.offset,
            "offset + length overflows u64",
        ));
    }
    Ok((h.offset, h.length))
}

/// A header `length` that is a field of the request (READ, DISCARD, VSSD_READ): below
/// `min` is a value the message does not allow (INVALID_ARGUMENT), over `max` is more
/// data than one request may ask for (TOO_LARGE, so the client splits), PROTOCOL.md
/// "Status codes".
pub(super) fn length_in(h: &Header, min: u32, max: u32) -> Result<u32, RpcError> {
    if h.length < min {
        return Err(invalid(
            h.msg_type,
            "length",
            u64::from(h.length),
            "below the least length of this message",
        ));
    }
    if h.length > max {
        return Err(RpcError::TooLarge {
            msg_type: h.msg_type.code(),
            field: "length",
            len: u64::from(h.length),
            max: u64::from(max),
        });
    }
    Ok(h.length)
}

/// Data that is the rest of the payload: 1..=DATA_LEN_MAX bytes, and the header's
/// `length` says how many.
pub(super) fn data_rest<'a>(h: &Header, r: &mut Reader<'a>) -> Result<&'a [u8], RpcError> {
    let data = r.rest();
    if data.is_empty() || data.len() > DATA_LEN_MAX as usize {
        return Err(RpcError::BadLength {
            msg_type: h.msg_type,
            field: "data",
            got: data.len() as u64,
            min: 1,
            max: u64::from(DATA_LEN_MAX),
        });
    }
    if data.len() as u64 != u64::from(h.length) {
        return Err(RpcError::BadLength {
            msg_type: h.msg_type,
            field: "data (header length disagrees)",
            got: data.len() as u64,
            min: u64::from(h.length),
            max: u64::from(h.length),
        });
    }
    Ok(data)
}

pub(super) fn proof_field(
    r: &mut Reader<'_>,
    present: bool,
    bytes: [u8; PROOF_LEN],
) -> Result<Option<[u8; PROOF_LEN]>, RpcError> {
    if present {
        Ok(Some(bytes))
    } else if bytes != [0u8; PROOF_LEN] {
        Err(r.invalid("proof", 0, "proof bytes must be 0 when absent"))
    } else {
        Ok(None)
    }
}

pub(super) fn power_of_two(r: &Reader<'_>, field: &'static str, v: u32) -> Result<u32, RpcError> {
    if v.is_power_of_two() {
        Ok(v)
    } else {
        Err(r.invalid(field, u64::from(v), "must be a power of two"))
    }
}

/// The one-byte length of a name about to be written (the decoder checks the
/// characters).
pub(super) fn name_len(t: MsgType, field: &'static str, name: &str) -> Result<u8, RpcError> {
    match u8::try_from(name.len()) {
        Ok(n) if (1..=NAME_LEN_MAX).contains(&name.len()) => Ok(n),
        _ => Err(crate::cursor::name_len_error(t, field, name.len())),
    }
}

/// The u32 length of data about to be written.
pub(super) fn data_len(
    t: MsgType,
    field: &'static str,
    len: usize,
    max: usize,
) -> Result<u32, RpcError> {
    match u32::try_from(len) {
        Ok(n) if len <= max => Ok(n),
        _ => Err(RpcError::TooLarge {
            msg_type: t.code(),
            field,
            len: len as u64,
            max: max as u64,
        }),
    }
}

pub(super) fn put_proof(out: &mut Vec<u8>, proof: &Option<[u8; PROOF_LEN]>) {
    match proof {
        Some(p) => out.extend_from_slice(p),
        None => out.put_zeros(PROOF_LEN),
    }
}

/// A list count, bounded by its limit and by the entries the remaining bytes can
/// hold, before anything is reserved for it.
pub(super) fn list_count(
    r: &Reader<'_>,
    field: &'static str,
    count: u32,
    max: usize,
    entry_len_min: usize,
) -> Result<usize, RpcError> {
    assert!(entry_len_min > 0, "a list entry has a size");
    let count = count as usize;
    if count > max {
        return Err(RpcError::TooMany {
            msg_type: r.msg_type(),
            field,
            count: count as u64,
            max: max as u64,
        });
    }
    let fits = r.remaining() / entry_len_min;
    if count > fits {
        return Err(RpcError::BadLength {
            msg_type: r.msg_type(),
            field,
            got: r.remaining() as u64,
            min: (count * entry_len_min) as u64,
            max: u64::from(PAYLOAD_LEN_MAX),
        });
    }
    Ok(count)
}

/// A list of u64s: u32 count (`min..=max`), 4 reserved bytes, the values.
pub(super) fn put_u64s(
    out: &mut Vec<u8>,
    t: MsgType,
    field: &'static str,
    values: &[u64],
    max: usize,
) -> Result<(), RpcError> {
    if values.len() > max {
        return Err(RpcError::TooMany {
            msg_type: t,
            field,
            count: values.len() as u64,
            max: max as u64,
        });
    }
    out.put_u32(values.len() as u32);
    out.put_zeros(4);
    for v in values {
        out.put_u64(*v);
    }
    Ok(())
}

/// The list [`put_u64s`] writes; a count below `min` is INVALID_ARGUMENT.
pub(super) fn get_u64s(
    r: &mut Reader<'_>,
    field: &'static str,
    min: usize,
    max: usize,
) -> Result<Vec<u64>, RpcError> {
    let count = r.u32(field)?;
    r.reserved(4)?;
    if (count as usize) < min {
        return Err(r.invalid(field, u64::from(count), "too few entries"));
    }
    let count = list_count(r, field, count, max, 8)?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(r.u64(field)?);
    }
    Ok(values)
}

/// A request's `max`: u32 (1..=`limit`) then 4 reserved bytes. Over the limit is
/// TOO_LARGE (the caller asks for fewer), 0 is INVALID_ARGUMENT.
pub(super) fn count_in(
    r: &mut Reader<'_>,
    field: &'static str,
    limit: usize,
) -> Result<u32, RpcError> {
    let max = r.u32(field)?;
    r.reserved(4)?;
    if max == 0 {
        return Err(r.invalid(field, 0, "ask for one entry or more"));
    }
    if max as usize > limit {
        return Err(RpcError::TooMany {
            msg_type: r.msg_type(),
            field,
            count: u64::from(max),
            max: limit as u64,
        });
    }
    Ok(max)
}

/// A configuration text about to be written: 1..=CONFIG_TEXT_LEN_MAX bytes.
pub(super) fn put_text(
    out: &mut Vec<u8>,
    t: MsgType,
    field: &'static str,
    text: &str,
) -> Result<(), RpcError> {
    if text.is_empty() {
        return Err(invalid(t, field, 0, "a text of one byte or more"));
    }
    data_len(t, field, text.len(), CONFIG_TEXT_LEN_MAX)?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A configuration text that is the rest of the payload: 1..=CONFIG_TEXT_LEN_MAX
/// bytes of UTF-8.
pub(super) fn text_rest<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, RpcError> {
    let bytes = r.rest();
    if bytes.is_empty() || bytes.len() > CONFIG_TEXT_LEN_MAX {
        return Err(RpcError::BadLength {
            msg_type: r.msg_type(),
            field,
            got: bytes.len() as u64,
            min: 1,
            max: CONFIG_TEXT_LEN_MAX as u64,
        });
    }
    std::str::from_utf8(bytes)
        .map_err(|e| r.invalid(field, e.valid_up_to() as u64, "not UTF-8 from this byte"))
}

/// An optional configuration text that is the rest of the payload:
/// 0..=CONFIG_TEXT_LEN_MAX bytes of UTF-8 (VSSD_CREATE's `config`).
pub(super) fn text_rest_or_empty<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
) -> Result<&'a str, RpcError> {
    if r.remaining() == 0 {
        return Ok("");
    }
    text_rest(r, field)
}

/// A name after a one-byte length and 7 reserved bytes (DEVICE_SHOW, DEVICE_SET).
pub(super) fn put_named(out: &mut Vec<u8>, t: MsgType, name: &str) -> Result<(), RpcError> {
    let n = name_len(t, "name", name)?;
    out.put_u8(n);
    out.put_zeros(7);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// The name [`put_named`] writes.
pub(super) fn get_named<'a>(r: &mut Reader<'a>) -> Result<&'a str, RpcError> {
    let n = r.u8("name length")?;
    r.reserved(7)?;
    r.name(n, "name")
}
