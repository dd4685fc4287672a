//! Requests: encoding and decoding of each request layout (PROTOCOL.md,
//! "Messages").

use super::rules::{
    count_in, data_len, data_rest, get_named, get_u64s, invalid, length_in, name_len, open_handle,
    proof_field, put_named, put_proof, put_text, put_u64s, range, text_rest, text_rest_or_empty,
    unused,
};
use super::{DELETE_FLAG_DIRTY_NAMED, DEVICE_FLAG_READ_ONLY, Fields, Hello, Request};
use crate::cursor::{Put, Reader};
use crate::error::RpcError;
use crate::header::Header;
use crate::limits::{
    COMMIT_TRANS_MAX, CONFIG_TEXT_LEN_MAX, DATA_LEN_MAX, DIRTY_PER_REPLY_MAX,
    IN_DOUBT_PER_REPLY_MAX, MEMBERS_MAX, PING_LEN_MAX, VERSION_MIN,
};
use crate::msg_type::MsgType;

impl<'a> Request<'a> {
    /// The message type of this request.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Hello(_) => MsgType::Hello,
            Request::Ping { .. } => MsgType::Ping,
            Request::DeviceOpen { .. } => MsgType::DeviceOpen,
            Request::DeviceClose { .. } => MsgType::DeviceClose,
            Request::Read { .. } => MsgType::Read,
            Request::Write { .. } => MsgType::Write,
            Request::Flush { .. } => MsgType::Flush,
            Request::Discard { .. } => MsgType::Discard,
            Request::Stat { .. } => MsgType::Stat,
            Request::VssdOpen { .. } => MsgType::VssdOpen,
            Request::VssdClose { .. } => MsgType::VssdClose,
            Request::VssdWritep1 { .. } => MsgType::VssdWritep1,
            Request::VssdCommit { .. } => MsgType::VssdCommit,
            Request::VssdAbort { .. } => MsgType::VssdAbort,
            Request::VssdRead { .. } => MsgType::VssdRead,
            Request::VssdClean { .. } => MsgType::VssdClean,
            Request::VssdRecover { .. } => MsgType::VssdRecover,
            Request::VssdEpoch { .. } => MsgType::VssdEpoch,
            Request::VssdInvalidate { .. } => MsgType::VssdInvalidate,
            Request::VssdOutcome { .. } => MsgType::VssdOutcome,
            Request::VssdDirty { .. } => MsgType::VssdDirty,
            Request::VssdReadPrepared { .. } => MsgType::VssdReadPrepared,
            Request::VssdRepair { .. } => MsgType::VssdRepair,
            Request::VssdCopyIn { .. } => MsgType::VssdCopyIn,
            Request::VssdCreate { .. } => MsgType::VssdCreate,
            Request::DeviceCreate { .. } => MsgType::DeviceCreate,
            Request::DeviceList => MsgType::DeviceList,
            Request::DeviceShow { .. } => MsgType::DeviceShow,
            Request::DeviceSet { .. } => MsgType::DeviceSet,
            Request::DeviceDelete { .. } => MsgType::DeviceDelete,
            Request::DeviceTakeover { .. } => MsgType::DeviceTakeover,
        }
    }

    pub(super) fn encode_payload(&self, out: &mut Vec<u8>) -> Result<Fields, RpcError> {
        let t = self.msg_type();
        let f = Fields::new(t, false);
        Ok(match self {
            Request::Hello(h) => {
                let n = name_len(t, "client_name", h.client_name)?;
                out.put_u16(h.version_min);
                out.put_u16(h.version_max);
                out.put_u8(u8::from(h.proof.is_some()));
                out.put_u8(n);
                out.put_zeros(2);
                out.extend_from_slice(&h.client_nonce);
                put_proof(out, &h.proof);
                out.extend_from_slice(h.client_name.as_bytes());
                f
            }
            Request::Ping { data } => {
                data_len(t, "data", data.len(), PING_LEN_MAX)?;
                out.extend_from_slice(data);
                f
            }
            Request::DeviceOpen { name, read_only } => {
                let n = name_len(t, "name", name)?;
                out.put_u32(if *read_only { DEVICE_FLAG_READ_ONLY } else { 0 });
                out.put_u8(n);
                out.put_zeros(3);
                out.extend_from_slice(name.as_bytes());
                f
            }
            Request::DeviceClose { handle }
            | Request::Flush { handle }
            | Request::Stat { handle }
            | Request::VssdClose { handle } => f.handle(*handle),
            Request::Read {
                handle,
                offset,
                length,
            }
            | Request::Discard {
                handle,
                offset,
                length,
            } => f.handle(*handle).offset(*offset).length(*length),
            Request::Write {
                handle,
                offset,
                data,
            } => {
                let n = data_len(t, "data", data.len(), DATA_LEN_MAX as usize)?;
                out.extend_from_slice(data);
                f.handle(*handle).offset(*offset).length(n)
            }
            Request::VssdOpen { name, epoch } => {
                let n = name_len(t, "name", name)?;
                out.put_u64(*epoch);
                out.put_u8(n);
                out.put_zeros(7);
                out.extend_from_slice(name.as_bytes());
                f
            }
            Request::VssdWritep1 {
                handle,
                tran,
                line,
                data,
            }
            | Request::VssdCopyIn {
                handle,
                version: tran,
                line,
                data,
            } => {
                let n = data_len(t, "data", data.len(), DATA_LEN_MAX as usize)?;
                out.put_u64(*tran);
                out.put_u64(*line);
                out.extend_from_slice(data);
                f.handle(*handle).length(n)
            }
            Request::VssdCommit { handle, trans } => {
                put_u64s(out, t, "trans", trans, COMMIT_TRANS_MAX)?;
                f.handle(*handle)
            }
            Request::VssdAbort { handle, tran }
            | Request::VssdOutcome { handle, tran }
            | Request::VssdReadPrepared { handle, tran } => {
                out.put_u64(*tran);
                f.handle(*handle)
            }
            Request::VssdRead {
                handle,
                line,
                length,
            } => {
                out.put_u64(*line);
                f.handle(*handle).length(*length)
            }
            Request::VssdClean {
                handle,
                line,
                version,
            } => {
                out.put_u64(*line);
                out.put_u64(*version);
                f.handle(*handle)
            }
            Request::VssdRecover {
                handle,
                after_tran: from,
                max,
            }
            | Request::VssdDirty { handle, from, max } => {
                out.put_u64(*from);
                out.put_u32(*max);
                out.put_zeros(4);
                f.handle(*handle)
            }
            Request::VssdEpoch {
                handle,
                epoch,
                members,
            } => {
                out.put_u64(*epoch);
                put_u64s(out, t, "members", members, MEMBERS_MAX)?;
                f.handle(*handle)
            }
            Request::VssdInvalidate {
                handle,
                first,
                count,
            } => {
                out.put_u64(*first);
                out.put_u64(*count);
                f.handle(*handle)
            }
            Request::VssdRepair { handle, tran, data } => {
                let n = data_len(t, "data", data.len(), DATA_LEN_MAX as usize)?;
                out.put_u64(*tran);
                out.extend_from_slice(data);
                f.handle(*handle).length(n)
            }
            Request::VssdCreate {
                name,
                device,
                line_size,
                lines,
                log_bytes,
                config,
            } => {
                let n = name_len(t, "name", name)?;
                let m = name_len(t, "device", device)?;
                data_len(t, "config", config.len(), CONFIG_TEXT_LEN_MAX)?;
                out.put_u64(*lines);
                out.put_u64(*log_bytes);
                out.put_u32(*line_size);
                out.put_u8(n);
                out.put_u8(m);
                out.put_zeros(2);
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(device.as_bytes());
                out.extend_from_slice(config.as_bytes());
                f
            }
            Request::DeviceCreate { config } => {
                put_text(out, t, "config", config)?;
                f
            }
            Request::DeviceList => f,
            Request::DeviceShow { name } | Request::DeviceTakeover { name } => {
                put_named(out, t, name)?;
                f
            }
            Request::DeviceSet { name, settings } => {
                put_named(out, t, name)?;
                put_text(out, t, "settings", settings)?;
                f
            }
            Request::DeviceDelete { name, dirty_lines } => {
                let n = name_len(t, "name", name)?;
                out.put_u64(dirty_lines.unwrap_or(0));
                out.put_u32(if dirty_lines.is_some() {
                    DELETE_FLAG_DIRTY_NAMED
                } else {
                    0
                });
                out.put_u8(n);
                out.put_zeros(3);
                out.extend_from_slice(name.as_bytes());
                f
            }
        })
    }

    pub(super) fn decode(h: &Header, payload: &'a [u8]) -> Result<Request<'a>, RpcError> {
        let t = h.msg_type;
        let mut r = Reader::new(t, payload);
        let req = match t {
            MsgType::Hello => {
                unused(h, false, false, false)?;
                let version_min = r.u16("version_min")?;
                let version_max = r.u16("version_max")?;
                let has_proof = r.bool("proof_present")?;
                let n = r.u8("client_name length")?;
                r.reserved(2)?;
                let client_nonce = r.bytes32("client_nonce")?;
                let proof = r.bytes32("proof")?;
                let proof = proof_field(&mut r, has_proof, proof)?;
                let client_name = r.name(n, "client_name")?;
                if version_min < VERSION_MIN {
                    return Err(invalid(
                        t,
                        "version_min",
                        u64::from(version_min),
                        "versions start at 1",
                    ));
                }
                if version_min > version_max {
                    return Err(invalid(
                        t,
                        "version_max",
                        u64::from(version_max),
                        "below version_min",
                    ));
                }
                Request::Hello(Hello {
                    version_min,
                    version_max,
                    client_nonce,
                    proof,
                    client_name,
                })
            }
            MsgType::Ping => {
                unused(h, false, false, false)?;
                let data = r.rest();
                if data.len() > PING_LEN_MAX {
                    // Header validation already bounds this; a hand-made Header
                    // passed to decode_payload does not.
                    return Err(RpcError::TooLarge {
                        msg_type: t.code(),
                        field: "data",
                        len: data.len() as u64,
                        max: PING_LEN_MAX as u64,
                    });
                }
                Request::Ping { data }
            }
            MsgType::Error => {
                return Err(RpcError::BadType {
                    got: t.code(),
                    why: "response-only type sent as a request",
                });
            }
            MsgType::DeviceOpen => {
                unused(h, false, false, false)?;
                let flags = r.u32("flags")?;
                let n = r.u8("name length")?;
                r.reserved(3)?;
                let name = r.name(n, "name")?;
                if flags & !DEVICE_FLAG_READ_ONLY != 0 {
                    return Err(invalid(t, "flags", u64::from(flags), "reserved bits set"));
                }
                Request::DeviceOpen {
                    name,
                    read_only: flags & DEVICE_FLAG_READ_ONLY != 0,
                }
            }
            MsgType::DeviceClose => {
                unused(h, true, false, false)?;
                Request::DeviceClose {
                    handle: open_handle(h)?,
                }
            }
            MsgType::Read => {
                unused(h, true, true, true)?;
                let handle = open_handle(h)?;
                let length = length_in(h, 1, DATA_LEN_MAX)?;
                let (offset, _) = range(h)?;
                Request::Read {
                    handle,
                    offset,
                    length,
                }
            }
            MsgType::Write => {
                unused(h, true, true, true)?;
                let handle = open_handle(h)?;
                let data = data_rest(h, &mut r)?;
                let (offset, _) = range(h)?;
                Request::Write {
                    handle,
                    offset,
                    data,
                }
            }
            MsgType::Flush => {
                unused(h, true, false, false)?;
                Request::Flush {
                    handle: open_handle(h)?,
                }
            }
            MsgType::Discard => {
                unused(h, true, true, true)?;
                let handle = open_handle(h)?;
                let length = length_in(h, 1, u32::MAX)?;
                let (offset, _) = range(h)?;
                Request::Discard {
                    handle,
                    offset,
                    length,
                }
            }
            MsgType::Stat => {
                unused(h, true, false, false)?;
                Request::Stat { handle: h.handle }
            }
            MsgType::VssdOpen => {
                unused(h, false, false, false)?;
                let epoch = r.u64("epoch")?;
                let n = r.u8("name length")?;
                r.reserved(7)?;
                let name = r.name(n, "name")?;
                Request::VssdOpen { name, epoch }
            }
            MsgType::VssdClose => {
                unused(h, true, false, false)?;
                Request::VssdClose {
                    handle: open_handle(h)?,
                }
            }
            MsgType::VssdWritep1 | MsgType::VssdCopyIn => {
                unused(h, true, false, true)?;
                let handle = open_handle(h)?;
                let tran = r.u64(if t == MsgType::VssdCopyIn {
                    "version"
                } else {
                    "tran"
                })?;
                let line = r.u64("line")?;
                let data = data_rest(h, &mut r)?;
                if t == MsgType::VssdCopyIn {
                    Request::VssdCopyIn {
                        handle,
                        version: tran,
                        line,
                        data,
                    }
                } else {
                    Request::VssdWritep1 {
                        handle,
                        tran,
                        line,
                        data,
                    }
                }
            }
            MsgType::VssdCommit => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let trans = get_u64s(&mut r, "trans", 1, COMMIT_TRANS_MAX)?;
                Request::VssdCommit { handle, trans }
            }
            MsgType::VssdAbort => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                Request::VssdAbort {
                    handle,
                    tran: r.u64("tran")?,
                }
            }
            MsgType::VssdRead => {
                unused(h, true, false, true)?;
                let handle = open_handle(h)?;
                let length = length_in(h, 1, DATA_LEN_MAX)?;
                Request::VssdRead {
                    handle,
                    line: r.u64("line")?,
                    length,
                }
            }
            MsgType::VssdClean => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let line = r.u64("line")?;
                let version = r.u64("version")?;
                Request::VssdClean {
                    handle,
                    line,
                    version,
                }
            }
            MsgType::VssdRecover => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let after_tran = r.u64("after_tran")?;
                let max = count_in(&mut r, "max", IN_DOUBT_PER_REPLY_MAX)?;
                Request::VssdRecover {
                    handle,
                    after_tran,
                    max,
                }
            }
            MsgType::VssdDirty => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let from = r.u64("from")?;
                let max = count_in(&mut r, "max", DIRTY_PER_REPLY_MAX)?;
                Request::VssdDirty { handle, from, max }
            }
            MsgType::VssdEpoch => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let epoch = r.u64("epoch")?;
                let members = get_u64s(&mut r, "members", 0, MEMBERS_MAX)?;
                Request::VssdEpoch {
                    handle,
                    epoch,
                    members,
                }
            }
            MsgType::VssdInvalidate => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let first = r.u64("first")?;
                let count = r.u64("count")?;
                if count == 0 {
                    return Err(invalid(t, "count", 0, "a range of one line or more"));
                }
                if first.checked_add(count).is_none() {
                    return Err(invalid(t, "first", first, "first + count overflows u64"));
                }
                Request::VssdInvalidate {
                    handle,
                    first,
                    count,
                }
            }
            MsgType::VssdOutcome | MsgType::VssdReadPrepared => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let tran = r.u64("tran")?;
                if t == MsgType::VssdOutcome {
                    Request::VssdOutcome { handle, tran }
                } else {
                    Request::VssdReadPrepared { handle, tran }
                }
            }
            MsgType::VssdRepair => {
                unused(h, true, false, true)?;
                let handle = open_handle(h)?;
                let tran = r.u64("tran")?;
                let data = data_rest(h, &mut r)?;
                Request::VssdRepair { handle, tran, data }
            }
            MsgType::VssdCreate => {
                unused(h, false, false, false)?;
                let lines = r.u64("lines")?;
                let log_bytes = r.u64("log_bytes")?;
                let line_size = r.u32("line_size")?;
                let n = r.u8("name length")?;
                let m = r.u8("device length")?;
                r.reserved(2)?;
                let name = r.name(n, "name")?;
                let device = r.name(m, "device")?;
                let config = text_rest_or_empty(&mut r, "config")?;
                if !line_size.is_power_of_two() {
                    let why = "must be a power of two";
                    return Err(invalid(t, "line_size", u64::from(line_size), why));
                }
                if lines == 0 {
                    return Err(invalid(t, "lines", 0, "a vSSD holds a line or more"));
                }
                Request::VssdCreate {
                    name,
                    device,
                    line_size,
                    lines,
                    log_bytes,
                    config,
                }
            }
            MsgType::DeviceCreate => {
                unused(h, false, false, false)?;
                Request::DeviceCreate {
                    config: text_rest(&mut r, "config")?,
                }
            }
            MsgType::DeviceList => {
                unused(h, false, false, false)?;
                Request::DeviceList
            }
            MsgType::DeviceShow => {
                unused(h, false, false, false)?;
                Request::DeviceShow {
                    name: get_named(&mut r)?,
                }
            }
            MsgType::DeviceTakeover => {
                unused(h, false, false, false)?;
                Request::DeviceTakeover {
                    name: get_named(&mut r)?,
                }
            }
            MsgType::DeviceSet => {
                unused(h, false, false, false)?;
                let name = get_named(&mut r)?;
                let settings = text_rest(&mut r, "settings")?;
                Request::DeviceSet { name, settings }
            }
            MsgType::DeviceDelete => {
                unused(h, false, false, false)?;
                let dirty = r.u64("dirty_lines")?;
                let flags = r.u32("flags")?;
                let n = r.u8("name length")?;
                r.reserved(3)?;
                let name = r.name(n, "name")?;
                if flags & !DELETE_FLAG_DIRTY_NAMED != 0 {
                    return Err(invalid(t, "flags", u64::from(flags), "reserved bits set"));
                }
                let named = flags & DELETE_FLAG_DIRTY_NAMED != 0;
                if !named && dirty != 0 {
                    return Err(invalid(t, "dirty_lines", dirty, "must be 0 unless named"));
                }
                Request::DeviceDelete {
                    name,
                    dirty_lines: named.then_some(dirty),
                }
            }
        };
        r.finish()?;
        Ok(req)
    }
}
