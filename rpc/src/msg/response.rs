//! Responses: encoding and decoding of each reply layout, and of error responses
//! (PROTOCOL.md, "Messages").

use super::rules::{
    data_len, data_rest, get_u64s, invalid, list_count, name_len, open_handle, power_of_two,
    proof_field, put_proof, put_text, put_u64s, text_rest, unused,
};
use super::{
    CLEAN_FLAG_CLEANED, Counter, DEVICE_FLAG_READ_ONLY, DeviceInfo, DirtyLine, Fields, HelloReply,
    IN_DOUBT_FLAG_DAMAGED, InDoubt, RECOVER_FLAG_MORE, Response, TranState, VssdInfo,
};
use crate::cursor::{Put, Reader};
use crate::error::RpcError;
use crate::header::Header;
use crate::limits::{
    DATA_LEN_MAX, DATA_LEN_MAX_ADVERTISED_MIN, DEVICES_PER_LIST_MAX, DIRTY_ENTRY_LEN,
    DIRTY_PER_REPLY_MAX, IN_DOUBT_LEN, IN_DOUBT_PER_REPLY_MAX, LIST_ENTRY_LEN_MIN, MEMBERS_MAX,
    PING_LEN_MAX, QUEUE_DEPTH_MAX, REASON_LEN_MAX, STAT_COUNTERS_MAX, STAT_ENTRY_LEN_MIN,
    VERSION_MIN,
};
use crate::msg_type::MsgType;
use crate::status::Status;

impl<'a> Response<'a> {
    /// The message type of this response.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Response::Hello(_) | Response::HelloAuthRequired(_) => MsgType::Hello,
            Response::Ping { .. } => MsgType::Ping,
            Response::DeviceOpen { .. } => MsgType::DeviceOpen,
            Response::DeviceClose => MsgType::DeviceClose,
            Response::Read { .. } => MsgType::Read,
            Response::Write => MsgType::Write,
            Response::Flush => MsgType::Flush,
            Response::Discard => MsgType::Discard,
            Response::Stat { .. } => MsgType::Stat,
            Response::VssdOpen { .. } => MsgType::VssdOpen,
            Response::VssdClose => MsgType::VssdClose,
            Response::VssdWritep1 => MsgType::VssdWritep1,
            Response::VssdCommit => MsgType::VssdCommit,
            Response::VssdAbort => MsgType::VssdAbort,
            Response::VssdRead { .. } => MsgType::VssdRead,
            Response::VssdClean { .. } => MsgType::VssdClean,
            Response::VssdRecover { .. } => MsgType::VssdRecover,
            Response::VssdEpoch => MsgType::VssdEpoch,
            Response::VssdInvalidate { .. } => MsgType::VssdInvalidate,
            Response::VssdOutcome { .. } => MsgType::VssdOutcome,
            Response::VssdDirty { .. } => MsgType::VssdDirty,
            Response::VssdReadPrepared { .. } => MsgType::VssdReadPrepared,
            Response::VssdRepair => MsgType::VssdRepair,
            Response::VssdCopyIn => MsgType::VssdCopyIn,
            Response::VssdCreate => MsgType::VssdCreate,
            Response::DeviceCreate => MsgType::DeviceCreate,
            Response::DeviceList { .. } => MsgType::DeviceList,
            Response::DeviceShow { .. } => MsgType::DeviceShow,
            Response::DeviceSet => MsgType::DeviceSet,
            Response::DeviceDelete => MsgType::DeviceDelete,
            Response::DeviceTakeover { .. } => MsgType::DeviceTakeover,
            Response::Error { msg_type, .. } | Response::StaleEpoch { msg_type, .. } => *msg_type,
        }
    }

    /// The status this response carries.
    pub fn status(&self) -> Status {
        match self {
            Response::HelloAuthRequired(_) => Status::AuthRequired,
            Response::StaleEpoch { .. } => Status::StaleEpoch,
            Response::Error { status, .. } => *status,
            _ => Status::Ok,
        }
    }

    /// True when a response of this type and status has the type's own layout
    /// rather than an error reason.
    fn has_own_layout(t: MsgType, status: Status) -> bool {
        status.is_ok() || (t == MsgType::Hello && status == Status::AuthRequired)
    }

    pub(super) fn encode_payload(&self, out: &mut Vec<u8>) -> Result<Fields, RpcError> {
        let t = self.msg_type();
        let f = Fields::new(t, true).status(self.status());
        Ok(match self {
            Response::Hello(h) | Response::HelloAuthRequired(h) => {
                let n = name_len(t, "server_name", h.server_name)?;
                out.put_u16(h.version);
                out.put_u8(u8::from(h.proof.is_some()));
                out.put_u8(n);
                out.put_u32(h.queue_depth);
                out.put_u32(h.data_len_max);
                out.put_zeros(4);
                out.extend_from_slice(&h.server_nonce);
                put_proof(out, &h.proof);
                out.extend_from_slice(h.server_name.as_bytes());
                f
            }
            Response::Ping { data } => {
                data_len(t, "data", data.len(), PING_LEN_MAX)?;
                out.extend_from_slice(data);
                f
            }
            Response::DeviceOpen { handle, info } => {
                out.put_u64(info.size_bytes);
                out.put_u32(info.block_size);
                out.put_u32(info.io_len_max);
                out.put_u32(if info.read_only {
                    DEVICE_FLAG_READ_ONLY
                } else {
                    0
                });
                out.put_zeros(4);
                f.handle(*handle)
            }
            Response::Read { data } | Response::VssdReadPrepared { data } => {
                let n = data_len(t, "data", data.len(), DATA_LEN_MAX as usize)?;
                out.extend_from_slice(data);
                f.length(n)
            }
            Response::VssdRead { version, data } => {
                let n = data_len(t, "data", data.len(), DATA_LEN_MAX as usize)?;
                out.put_u64(*version);
                out.extend_from_slice(data);
                f.length(n)
            }
            Response::VssdClean { cleaned } => {
                out.put_u32(if *cleaned { CLEAN_FLAG_CLEANED } else { 0 });
                out.put_zeros(4);
                f
            }
            Response::VssdInvalidate { held } => {
                out.put_u64(*held);
                f
            }
            Response::DeviceTakeover {
                epoch,
                committed,
                aborted,
                repaired,
            } => {
                out.put_u64(*epoch);
                out.put_u64(*committed);
                out.put_u64(*aborted);
                out.put_u64(*repaired);
                f
            }
            Response::VssdOutcome { state } => {
                out.put_u32(state.code());
                out.put_zeros(4);
                f
            }
            Response::VssdDirty { lines } => {
                if lines.len() > DIRTY_PER_REPLY_MAX {
                    return Err(RpcError::TooMany {
                        msg_type: t,
                        field: "lines",
                        count: lines.len() as u64,
                        max: DIRTY_PER_REPLY_MAX as u64,
                    });
                }
                out.put_u32(lines.len() as u32);
                out.put_zeros(4);
                for d in lines {
                    out.put_u64(d.line);
                    out.put_u64(d.version);
                }
                f
            }
            Response::StaleEpoch { epoch, reason, .. } => {
                data_len(t, "reason", reason.len(), REASON_LEN_MAX)?;
                out.extend_from_slice(reason.as_bytes());
                f.offset(*epoch)
            }
            Response::DeviceClose
            | Response::Write
            | Response::Flush
            | Response::Discard
            | Response::VssdClose
            | Response::VssdWritep1
            | Response::VssdCommit
            | Response::VssdAbort
            | Response::VssdEpoch
            | Response::VssdRepair
            | Response::VssdCopyIn
            | Response::VssdCreate
            | Response::DeviceCreate
            | Response::DeviceSet
            | Response::DeviceDelete => f,
            Response::DeviceList { names } => {
                if names.len() > DEVICES_PER_LIST_MAX {
                    return Err(RpcError::TooMany {
                        msg_type: t,
                        field: "names",
                        count: names.len() as u64,
                        max: DEVICES_PER_LIST_MAX as u64,
                    });
                }
                out.put_u32(names.len() as u32);
                out.put_zeros(4);
                for name in names {
                    out.put_u8(name_len(t, "name", name)?);
                    out.extend_from_slice(name.as_bytes());
                }
                f
            }
            Response::DeviceShow { text } => {
                put_text(out, t, "text", text)?;
                f
            }
            Response::Stat { counters } => {
                if counters.len() > STAT_COUNTERS_MAX {
                    return Err(RpcError::TooMany {
                        msg_type: t,
                        field: "counters",
                        count: counters.len() as u64,
                        max: STAT_COUNTERS_MAX as u64,
                    });
                }
                out.put_u32(counters.len() as u32);
                out.put_zeros(4);
                for c in counters {
                    let n = name_len(t, "counter name", c.name)?;
                    out.put_u8(n);
                    out.extend_from_slice(c.name.as_bytes());
                    out.put_u64(c.value);
                }
                f
            }
            Response::VssdOpen { handle, info } => {
                out.put_u64(info.line_count);
                out.put_u64(info.epoch);
                out.put_u64(info.tran_lines_max);
                out.put_u32(info.line_size);
                out.put_zeros(4);
                put_u64s(out, t, "members", &info.members, MEMBERS_MAX)?;
                f.handle(*handle)
            }
            Response::VssdRecover { in_doubt, more } => {
                if in_doubt.len() > IN_DOUBT_PER_REPLY_MAX {
                    return Err(RpcError::TooMany {
                        msg_type: t,
                        field: "in_doubt",
                        count: in_doubt.len() as u64,
                        max: IN_DOUBT_PER_REPLY_MAX as u64,
                    });
                }
                out.put_u32(in_doubt.len() as u32);
                out.put_u32(if *more { RECOVER_FLAG_MORE } else { 0 });
                for d in in_doubt {
                    out.put_u64(d.tran);
                    out.put_u64(d.line);
                    out.put_u32(d.line_count);
                    out.put_u32(d.payload_len);
                    out.put_u32(if d.damaged { IN_DOUBT_FLAG_DAMAGED } else { 0 });
                    out.put_zeros(4);
                }
                f
            }
            Response::Error {
                msg_type,
                status,
                reason,
            } => {
                if Response::has_own_layout(*msg_type, *status) || *status == Status::StaleEpoch {
                    return Err(RpcError::BadStatus {
                        msg_type: msg_type.code(),
                        got: status.code(),
                        why: "an error response needs a failure status (HELLO's \
                              AUTH_REQUIRED is Response::HelloAuthRequired, \
                              STALE_EPOCH is Response::StaleEpoch)",
                    });
                }
                data_len(t, "reason", reason.len(), REASON_LEN_MAX)?;
                out.extend_from_slice(reason.as_bytes());
                f
            }
        })
    }

    pub(super) fn decode(h: &Header, payload: &'a [u8]) -> Result<Response<'a>, RpcError> {
        let t = h.msg_type;
        let mut r = Reader::new(t, payload);
        if !Response::has_own_layout(t, h.status) {
            let stale = h.status == Status::StaleEpoch;
            // STALE_EPOCH carries the replica's epoch in `offset`.
            unused(h, false, stale, false)?;
            let bytes = r.rest();
            if bytes.len() > REASON_LEN_MAX {
                return Err(RpcError::TooLarge {
                    msg_type: t.code(),
                    field: "reason",
                    len: bytes.len() as u64,
                    max: REASON_LEN_MAX as u64,
                });
            }
            let reason = std::str::from_utf8(bytes).map_err(|e| {
                invalid(
                    t,
                    "reason",
                    e.valid_up_to() as u64,
                    "not UTF-8 from this byte",
                )
            })?;
            return Ok(if stale {
                Response::StaleEpoch {
                    msg_type: t,
                    epoch: h.offset,
                    reason,
                }
            } else {
                Response::Error {
                    msg_type: t,
                    status: h.status,
                    reason,
                }
            });
        }
        let resp = match t {
            MsgType::Hello => {
                unused(h, false, false, false)?;
                let version = r.u16("version")?;
                let has_proof = r.bool("proof_present")?;
                let n = r.u8("server_name length")?;
                let queue_depth = r.u32("queue_depth")?;
                let data_len_max = r.u32("data_len_max")?;
                r.reserved(4)?;
                let server_nonce = r.bytes32("server_nonce")?;
                let proof = r.bytes32("proof")?;
                let proof = proof_field(&mut r, has_proof, proof)?;
                let server_name = r.name(n, "server_name")?;
                if version < VERSION_MIN {
                    return Err(invalid(
                        t,
                        "version",
                        u64::from(version),
                        "versions start at 1",
                    ));
                }
                if queue_depth == 0 || queue_depth > QUEUE_DEPTH_MAX {
                    return Err(invalid(
                        t,
                        "queue_depth",
                        u64::from(queue_depth),
                        "must be 1..=QUEUE_DEPTH_MAX",
                    ));
                }
                if !(DATA_LEN_MAX_ADVERTISED_MIN..=DATA_LEN_MAX).contains(&data_len_max) {
                    return Err(invalid(
                        t,
                        "data_len_max",
                        u64::from(data_len_max),
                        "must be DATA_LEN_MAX_ADVERTISED_MIN..=DATA_LEN_MAX",
                    ));
                }
                let reply = HelloReply {
                    version,
                    queue_depth,
                    data_len_max,
                    server_nonce,
                    proof,
                    server_name,
                };
                if h.status == Status::AuthRequired {
                    Response::HelloAuthRequired(reply)
                } else {
                    Response::Hello(reply)
                }
            }
            MsgType::Ping => {
                unused(h, false, false, false)?;
                let data = r.rest();
                if data.len() > PING_LEN_MAX {
                    return Err(RpcError::TooLarge {
                        msg_type: t.code(),
                        field: "data",
                        len: data.len() as u64,
                        max: PING_LEN_MAX as u64,
                    });
                }
                Response::Ping { data }
            }
            MsgType::Error => {
                // Header validation refuses ERROR with status OK.
                return Err(RpcError::BadStatus {
                    msg_type: t.code(),
                    got: h.status.code(),
                    why: "ERROR must carry a failure status",
                });
            }
            MsgType::DeviceOpen => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let size_bytes = r.u64("size_bytes")?;
                let block_size = r.u32("block_size")?;
                let block_size = power_of_two(&r, "block_size", block_size)?;
                let io_len_max = r.u32("io_len_max")?;
                let flags = r.u32("flags")?;
                r.reserved(4)?;
                if io_len_max == 0 || io_len_max > DATA_LEN_MAX {
                    return Err(invalid(
                        t,
                        "io_len_max",
                        u64::from(io_len_max),
                        "must be 1..=DATA_LEN_MAX",
                    ));
                }
                if flags & !DEVICE_FLAG_READ_ONLY != 0 {
                    return Err(invalid(t, "flags", u64::from(flags), "reserved bits set"));
                }
                Response::DeviceOpen {
                    handle,
                    info: DeviceInfo {
                        size_bytes,
                        block_size,
                        io_len_max,
                        read_only: flags & DEVICE_FLAG_READ_ONLY != 0,
                    },
                }
            }
            MsgType::Read | MsgType::VssdReadPrepared => {
                unused(h, false, false, true)?;
                let data = data_rest(h, &mut r)?;
                if t == MsgType::Read {
                    Response::Read { data }
                } else {
                    Response::VssdReadPrepared { data }
                }
            }
            MsgType::VssdRead => {
                unused(h, false, false, true)?;
                let version = r.u64("version")?;
                let data = data_rest(h, &mut r)?;
                Response::VssdRead { version, data }
            }
            MsgType::VssdClean => {
                unused(h, false, false, false)?;
                let flags = r.u32("flags")?;
                r.reserved(4)?;
                if flags & !CLEAN_FLAG_CLEANED != 0 {
                    return Err(invalid(t, "flags", u64::from(flags), "reserved bits set"));
                }
                Response::VssdClean {
                    cleaned: flags & CLEAN_FLAG_CLEANED != 0,
                }
            }
            MsgType::VssdInvalidate => {
                unused(h, false, false, false)?;
                Response::VssdInvalidate {
                    held: r.u64("held")?,
                }
            }
            MsgType::DeviceTakeover => {
                unused(h, false, false, false)?;
                Response::DeviceTakeover {
                    epoch: r.u64("epoch")?,
                    committed: r.u64("committed")?,
                    aborted: r.u64("aborted")?,
                    repaired: r.u64("repaired")?,
                }
            }
            MsgType::VssdOutcome => {
                unused(h, false, false, false)?;
                let code = r.u32("outcome")?;
                r.reserved(4)?;
                let Some(state) = TranState::from_code(code) else {
                    return Err(invalid(
                        t,
                        "outcome",
                        u64::from(code),
                        "not an outcome code",
                    ));
                };
                Response::VssdOutcome { state }
            }
            MsgType::VssdDirty => {
                unused(h, false, false, false)?;
                let count = r.u32("lines count")?;
                r.reserved(4)?;
                let count = list_count(&r, "lines", count, DIRTY_PER_REPLY_MAX, DIRTY_ENTRY_LEN)?;
                let mut lines: Vec<DirtyLine> = Vec::with_capacity(count);
                for _ in 0..count {
                    let line = r.u64("line")?;
                    if lines.last().is_some_and(|prev| prev.line >= line) {
                        return Err(r.invalid("line", line, "lines not in increasing order"));
                    }
                    let version = r.u64("version")?;
                    lines.push(DirtyLine { line, version });
                }
                Response::VssdDirty { lines }
            }
            MsgType::DeviceClose
            | MsgType::Write
            | MsgType::Flush
            | MsgType::Discard
            | MsgType::VssdClose
            | MsgType::VssdWritep1
            | MsgType::VssdCommit
            | MsgType::VssdAbort
            | MsgType::VssdEpoch
            | MsgType::VssdRepair
            | MsgType::VssdCopyIn
            | MsgType::VssdCreate
            | MsgType::DeviceCreate
            | MsgType::DeviceSet
            | MsgType::DeviceDelete => {
                unused(h, false, false, false)?;
                match t {
                    MsgType::DeviceClose => Response::DeviceClose,
                    MsgType::Write => Response::Write,
                    MsgType::Flush => Response::Flush,
                    MsgType::Discard => Response::Discard,
                    MsgType::VssdClose => Response::VssdClose,
                    MsgType::VssdWritep1 => Response::VssdWritep1,
                    MsgType::VssdCommit => Response::VssdCommit,
                    MsgType::VssdAbort => Response::VssdAbort,
                    MsgType::VssdEpoch => Response::VssdEpoch,
                    MsgType::VssdRepair => Response::VssdRepair,
                    MsgType::VssdCreate => Response::VssdCreate,
                    MsgType::DeviceCreate => Response::DeviceCreate,
                    MsgType::DeviceSet => Response::DeviceSet,
                    MsgType::DeviceDelete => Response::DeviceDelete,
                    _ => Response::VssdCopyIn,
                }
            }
            MsgType::DeviceList => {
                unused(h, false, false, false)?;
                let count = r.u32("names count")?;
                r.reserved(4)?;
                let count =
                    list_count(&r, "names", count, DEVICES_PER_LIST_MAX, LIST_ENTRY_LEN_MIN)?;
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    let n = r.u8("name length")?;
                    names.push(r.name(n, "name")?);
                }
                Response::DeviceList { names }
            }
            MsgType::DeviceShow => {
                unused(h, false, false, false)?;
                Response::DeviceShow {
                    text: text_rest(&mut r, "text")?,
                }
            }
            MsgType::Stat => {
                unused(h, false, false, false)?;
                let count = r.u32("counter count")?;
                r.reserved(4)?;
                let count =
                    list_count(&r, "counters", count, STAT_COUNTERS_MAX, STAT_ENTRY_LEN_MIN)?;
                let mut counters = Vec::with_capacity(count);
                for _ in 0..count {
                    let n = r.u8("counter name length")?;
                    let name = r.name(n, "counter name")?;
                    let value = r.u64("counter value")?;
                    counters.push(Counter { name, value });
                }
                Response::Stat { counters }
            }
            MsgType::VssdOpen => {
                unused(h, true, false, false)?;
                let handle = open_handle(h)?;
                let line_count = r.u64("line_count")?;
                let epoch = r.u64("epoch")?;
                let tran_lines_max = r.u64("tran_lines_max")?;
                let line_size = r.u32("line_size")?;
                let line_size = power_of_two(&r, "line_size", line_size)?;
                r.reserved(4)?;
                let members = get_u64s(&mut r, "members", 0, MEMBERS_MAX)?;
                if tran_lines_max == 0 {
                    return Err(invalid(
                        t,
                        "tran_lines_max",
                        0,
                        "a tran carries a line or more",
                    ));
                }
                Response::VssdOpen {
                    handle,
                    info: VssdInfo {
                        line_count,
                        epoch,
                        tran_lines_max,
                        line_size,
                        members,
                    },
                }
            }
            MsgType::VssdRecover => {
                unused(h, false, false, false)?;
                let count = r.u32("in_doubt count")?;
                let flags = r.u32("flags")?;
                if flags & !RECOVER_FLAG_MORE != 0 {
                    return Err(invalid(t, "flags", u64::from(flags), "reserved bits set"));
                }
                let count =
                    list_count(&r, "in_doubt", count, IN_DOUBT_PER_REPLY_MAX, IN_DOUBT_LEN)?;
                let mut in_doubt: Vec<InDoubt> = Vec::with_capacity(count);
                for _ in 0..count {
                    let tran = r.u64("tran")?;
                    // Increasing order makes `after_tran` paging exact.
                    if in_doubt.last().is_some_and(|prev| prev.tran >= tran) {
                        return Err(r.invalid(
                            "tran",
                            tran,
                            "in_doubt not in increasing tran order",
                        ));
                    }
                    let line = r.u64("line")?;
                    let line_count = r.u32("line_count")?;
                    let payload_len = r.u32("payload_len")?;
                    let entry_flags = r.u32("entry flags")?;
                    r.reserved(4)?;
                    if entry_flags & !IN_DOUBT_FLAG_DAMAGED != 0 {
                        return Err(r.invalid(
                            "entry flags",
                            u64::from(entry_flags),
                            "reserved bits set",
                        ));
                    }
                    if line_count == 0 {
                        return Err(r.invalid(
                            "line_count",
                            0,
                            "a transaction covers a line or more",
                        ));
                    }
                    in_doubt.push(InDoubt {
                        tran,
                        line,
                        line_count,
                        payload_len,
                        damaged: entry_flags & IN_DOUBT_FLAG_DAMAGED != 0,
                    });
                }
                Response::VssdRecover {
                    in_doubt,
                    more: flags & RECOVER_FLAG_MORE != 0,
                }
            }
        };
        r.finish()?;
        Ok(resp)
    }
}
