//! Every kind of bad input, one test each: the error it gets, the status a server
//! answers with, and whether the connection must close (PROTOCOL.md, "Bad input").

mod common;

use common::{forge, request_header, response_header};
use rpc::limits::{
    COMMIT_TRANS_MAX, DATA_LEN_MAX, DIRTY_PER_REPLY_MAX, HEADER_LEN, IN_DOUBT_PER_REPLY_MAX, MAGIC,
    MEMBERS_MAX, PAYLOAD_LEN_MAX, STAT_COUNTERS_MAX, TAG_NONE,
};
use rpc::{
    Body, Header, Message, MsgType, Part, RawHeader, Request, RpcError, Status, decode_frame,
    decode_header, decode_payload, encode_frame, forge as f, header_bytes,
};

fn flush_frame() -> Vec<u8> {
    let mut v = Vec::new();
    let m = Message {
        tag: 42,
        body: Body::Request(Request::Flush { handle: 3 }),
    };
    encode_frame(1, &m, &mut v).unwrap();
    v
}

fn write_frame() -> Vec<u8> {
    let mut v = Vec::new();
    let m = Message {
        tag: 43,
        body: Body::Request(Request::Write {
            handle: 3,
            offset: 4096,
            data: &[1, 2, 3, 4, 5, 6, 7, 8],
        }),
    };
    encode_frame(1, &m, &mut v).unwrap();
    v
}

fn head(v: &mut [u8]) -> &mut [u8; HEADER_LEN] {
    v.first_chunk_mut::<HEADER_LEN>().unwrap()
}

/// The frame's error, checked for its status and disposition.
fn expect(frame: &[u8], status: Status, closes: bool) -> RpcError {
    let err = decode_frame(frame).unwrap_err();
    assert_eq!(err.status(), status, "{err}");
    assert_eq!(err.closes_connection(), closes, "{err}");
    err
}

/// For an error a server answers: it can, under the request's tag.
fn answerable(frame: &[u8], err: &RpcError) {
    let raw = RawHeader::decode(header_bytes(frame).unwrap()).unwrap();
    let reason = err.to_string();
    let reply = Message::error_reply(&raw, err.status(), &reason);
    let mut out = Vec::new();
    let h = encode_frame(1, &reply, &mut out).unwrap();
    assert_eq!(h.tag, raw.tag);
    assert_eq!(h.status, err.status());
}

#[test]
fn bad_magic_closes() {
    let mut v = flush_frame();
    v[0..4].copy_from_slice(b"HTTP");
    let err = expect(&v, Status::BadMagic, true);
    assert!(matches!(err, RpcError::BadMagic { got } if got == u32::from_le_bytes(*b"HTTP")));
    assert!(err.to_string().contains(&format!("{MAGIC:#010x}")));
}

#[test]
fn unknown_version_closes() {
    for version in [0u16, 2, u16::MAX] {
        let mut v = flush_frame();
        f::set(head(&mut v), f::VERSION_AT, &version.to_le_bytes());
        let err = expect(&v, Status::BadVersion, true);
        assert!(matches!(err, RpcError::BadVersion { got, .. } if got == version));
    }
}

#[test]
fn unknown_type_is_answered_as_error() {
    for code in [0u16, 0x0004, 0x00FF, 0x003F, u16::MAX] {
        let mut v = flush_frame();
        f::set(head(&mut v), f::TYPE_AT, &code.to_le_bytes());
        let err = expect(&v, Status::BadType, false);
        assert!(matches!(err, RpcError::BadType { got, .. } if got == code));
        answerable(&v, &err);
        let raw = RawHeader::decode(header_bytes(&v).unwrap()).unwrap();
        let reply = Message::error_reply(&raw, err.status(), "");
        assert_eq!(reply.msg_type(), MsgType::Error);
    }
}

#[test]
fn error_type_as_a_request_is_refused() {
    let v = forge(request_header(MsgType::Error), b"");
    let err = expect(&v, Status::BadType, false);
    assert!(matches!(err, RpcError::BadType { got: 0x0003, .. }));
}

#[test]
fn reserved_flags_are_refused() {
    for flags in [0x0002u16, 0x8000, 0xFFFF] {
        let mut v = flush_frame();
        f::set(head(&mut v), f::FLAGS_AT, &flags.to_le_bytes());
        let err = expect(&v, Status::BadFlags, false);
        assert!(matches!(err, RpcError::BadFlags { got, .. } if got == flags));
        answerable(&v, &err);
    }
}

#[test]
fn reserved_header_field_must_be_zero() {
    let mut v = flush_frame();
    f::set(head(&mut v), f::RESERVED_AT, &1u32.to_le_bytes());
    let err = expect(&v, Status::InvalidArgument, false);
    assert!(matches!(
        err,
        RpcError::InvalidArgument {
            field: "header reserved",
            ..
        }
    ));
}

#[test]
fn a_request_carries_status_zero() {
    let mut v = flush_frame();
    f::set(head(&mut v), f::STATUS_AT, &12u16.to_le_bytes());
    let err = expect(&v, Status::InvalidArgument, false);
    assert!(matches!(err, RpcError::BadStatus { got: 12, .. }));
}

#[test]
fn a_response_carries_a_known_status() {
    let v = forge(response_header(MsgType::Flush, Status::Ok), b"");
    let mut v2 = v.clone();
    f::set(head(&mut v2), f::STATUS_AT, &999u16.to_le_bytes());
    decode_frame(&v).unwrap();
    let err = expect(&v2, Status::InvalidArgument, false);
    assert!(matches!(err, RpcError::BadStatus { got: 999, .. }));
    // ERROR with OK is a contradiction.
    let v3 = forge(response_header(MsgType::Error, Status::Ok), b"");
    assert!(matches!(
        decode_frame(&v3).unwrap_err(),
        RpcError::BadStatus { .. }
    ));
}

#[test]
fn the_connection_tag_is_not_a_request_tag() {
    let mut v = flush_frame();
    f::set(head(&mut v), f::TAG_AT, &TAG_NONE.to_le_bytes());
    let err = expect(&v, Status::InvalidArgument, true);
    assert!(matches!(err, RpcError::BadTag { .. }));
}

#[test]
fn payload_over_the_types_limit_is_answered() {
    // FLUSH carries no payload; 8 bytes are over its limit of 0 but within the
    // global limit, so a server reads and drops them and answers.
    let v = forge(
        Header {
            handle: 3,
            ..request_header(MsgType::Flush)
        },
        &[0; 8],
    );
    let err = expect(&v, Status::TooLarge, false);
    assert!(matches!(err, RpcError::TooLarge { len: 8, max: 0, .. }));
    answerable(&v, &err);
}

#[test]
fn a_4_gib_payload_claim_is_refused_before_reading_it() {
    let mut v = write_frame();
    v.truncate(HEADER_LEN); // only the header arrived
    f::set(head(&mut v), f::PAYLOAD_LEN_AT, &u32::MAX.to_le_bytes());
    // The header alone decides: not "truncated", but too large, and close.
    let err = decode_header(&v).unwrap_err();
    assert!(matches!(
        err,
        RpcError::TooLarge { len, max, .. } if len == u64::from(u32::MAX) && max == u64::from(PAYLOAD_LEN_MAX)
    ));
    assert!(err.closes_connection());
    assert_eq!(err.status(), Status::TooLarge);
    let err = expect(&v, Status::TooLarge, true);
    assert!(matches!(err, RpcError::TooLarge { .. }));
    // Just over the global limit: the same.
    f::set(
        head(&mut v),
        f::PAYLOAD_LEN_AT,
        &(PAYLOAD_LEN_MAX + 1).to_le_bytes(),
    );
    assert!(decode_header(&v).unwrap_err().closes_connection());
    // A WRITE claiming one byte over DATA_LEN_MAX is over WRITE's limit but not
    // the global one: answered.
    f::set(
        head(&mut v),
        f::PAYLOAD_LEN_AT,
        &(DATA_LEN_MAX + 1).to_le_bytes(),
    );
    let err = decode_header(&v).unwrap_err();
    assert!(matches!(err, RpcError::TooLarge { .. }));
    assert!(!err.closes_connection());
}

#[test]
fn header_crc_mismatch_closes() {
    let mut v = flush_frame();
    v[30] ^= 0x01; // in the handle
    let err = expect(&v, Status::BadHeaderCrc, true);
    assert!(matches!(err, RpcError::HeaderCrc { got, want } if got != want));
    let mut v = flush_frame();
    v[HEADER_LEN - 1] ^= 0x80; // in the CRC itself
    expect(&v, Status::BadHeaderCrc, true);
}

#[test]
fn payload_crc_mismatch_is_answered() {
    let mut v = write_frame();
    let last = v.len() - 1;
    v[last] ^= 0x01;
    let err = expect(&v, Status::BadPayloadCrc, false);
    assert!(
        matches!(err, RpcError::PayloadCrc { msg_type: MsgType::Write, got, want } if got != want)
    );
    answerable(&v, &err);
    // A header with payload_len 0 but a non-zero payload CRC.
    let mut v = flush_frame();
    f::set(head(&mut v), f::PAYLOAD_CRC_AT, &1u32.to_le_bytes());
    expect(&v, Status::BadPayloadCrc, false);
}

#[test]
fn truncated_header() {
    let v = flush_frame();
    for len in 0..HEADER_LEN {
        let err = decode_frame(&v[..len]).unwrap_err();
        assert!(
            matches!(err, RpcError::Truncated { part: Part::Header, got, want: HEADER_LEN } if got == len),
            "{len}: {err}"
        );
        assert!(err.closes_connection());
        assert!(decode_header(&v[..len]).is_err());
    }
}

#[test]
fn truncated_payload() {
    let v = write_frame();
    for len in HEADER_LEN..v.len() {
        let err = decode_frame(&v[..len]).unwrap_err();
        assert!(
            matches!(err, RpcError::Truncated { part: Part::Payload, got, want: 8 } if got == len - HEADER_LEN),
            "{len}: {err}"
        );
        assert!(err.closes_connection());
    }
    let h = decode_header(&v).unwrap();
    assert!(matches!(
        decode_payload(&h, &v[HEADER_LEN..v.len() - 1]),
        Err(RpcError::Truncated { .. })
    ));
    let mut longer = v[HEADER_LEN..].to_vec();
    longer.push(0);
    assert!(matches!(
        decode_payload(&h, &longer),
        Err(RpcError::BadLength { .. })
    ));
}

// ---- body-level bad input: answered, the connection goes on -----------------

fn body_err(header: Header, payload: &[u8]) -> RpcError {
    let v = forge(header, payload);
    let err = decode_frame(&v).unwrap_err();
    assert!(!err.closes_connection(), "{err}");
    assert!(!err.status().is_ok());
    err
}

#[test]
fn write_length_must_match_its_data() {
    let h = Header {
        handle: 1,
        length: 9,
        ..request_header(MsgType::Write)
    };
    assert!(matches!(
        body_err(h, &[0; 8]),
        RpcError::BadLength {
            msg_type: MsgType::Write,
            ..
        }
    ));
    let h = Header { length: 0, ..h };
    assert!(matches!(body_err(h, &[]), RpcError::BadLength { .. }));
}

#[test]
fn read_length_and_range_are_checked() {
    let read = Header {
        handle: 1,
        length: 0,
        ..request_header(MsgType::Read)
    };
    assert!(matches!(
        body_err(read, b""),
        RpcError::InvalidArgument {
            field: "length",
            ..
        }
    ));
    let read = Header {
        length: DATA_LEN_MAX + 1,
        ..read
    };
    assert!(matches!(body_err(read, b""), RpcError::TooLarge { .. }));
    let read = Header {
        length: 2,
        offset: u64::MAX - 1,
        ..read
    };
    assert!(matches!(
        body_err(read, b""),
        RpcError::InvalidArgument {
            field: "offset",
            ..
        }
    ));
    let read = Header {
        handle: 0,
        offset: 0,
        ..read
    };
    assert!(matches!(
        body_err(read, b""),
        RpcError::InvalidArgument {
            field: "handle",
            ..
        }
    ));
}

#[test]
fn unused_header_fields_must_be_zero() {
    let ping = Header {
        offset: 5,
        ..request_header(MsgType::Ping)
    };
    assert!(matches!(
        body_err(ping, b""),
        RpcError::InvalidArgument {
            field: "offset",
            ..
        }
    ));
    let flush = Header {
        handle: 1,
        length: 4096,
        ..request_header(MsgType::Flush)
    };
    assert!(matches!(
        body_err(flush, b""),
        RpcError::InvalidArgument {
            field: "length",
            ..
        }
    ));
}

#[test]
fn names_are_checked() {
    let open = request_header(MsgType::DeviceOpen);
    let mut p = vec![0, 0, 0, 0, 3, 0, 0, 0];
    p.extend_from_slice(b"a\0b");
    assert!(matches!(
        body_err(open, &p),
        RpcError::InvalidArgument {
            field: "name",
            got: 0,
            ..
        }
    ));
    // Length byte says more than is there.
    let mut p = vec![0, 0, 0, 0, 10, 0, 0, 0];
    p.extend_from_slice(b"abc");
    assert!(matches!(body_err(open, &p), RpcError::BadLength { .. }));
    // Empty name.
    let p = vec![0, 0, 0, 0, 0, 0, 0, 0];
    assert!(matches!(
        body_err(open, &p),
        RpcError::InvalidArgument { field: "name", .. }
    ));
    // Reserved flag bit.
    let mut p = vec![2, 0, 0, 0, 1, 0, 0, 0];
    p.push(b'a');
    assert!(matches!(
        body_err(open, &p),
        RpcError::InvalidArgument { field: "flags", .. }
    ));
    // Reserved padding.
    let mut p = vec![0, 0, 0, 0, 1, 0, 9, 0];
    p.push(b'a');
    assert!(matches!(
        body_err(open, &p),
        RpcError::InvalidArgument {
            field: "reserved",
            ..
        }
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let abort = Header {
        handle: 1,
        ..request_header(MsgType::VssdAbort)
    };
    // VSSD_ABORT is exactly 8 bytes; 7 is short, 9 over its payload limit.
    assert!(matches!(
        body_err(abort, &[0; 7]),
        RpcError::BadLength { .. }
    ));
    assert!(matches!(
        body_err(abort, &[0; 9]),
        RpcError::TooLarge { .. }
    ));
    // VSSD_CLEAN's reply is exactly 8 bytes: one byte more is trailing (its
    // payload limit is that of an error reason).
    assert!(matches!(
        body_err(response_header(MsgType::VssdClean, Status::Ok), &[0; 9]),
        RpcError::BadLength { .. }
    ));
    let mut open = vec![0, 0, 0, 0, 1, 0, 0, 0, b'a', b'b'];
    open[4] = 1;
    assert!(matches!(
        body_err(request_header(MsgType::DeviceOpen), &open),
        RpcError::BadLength { .. }
    ));
}

#[test]
fn hello_fields_are_checked() {
    let mut p = vec![0u8; 72];
    p[0] = 2; // version_min 2
    p[2] = 1; // version_max 1
    p[5] = 1; // name length 1
    p.push(b'c');
    assert!(matches!(
        body_err(request_header(MsgType::Hello), &p),
        RpcError::InvalidArgument {
            field: "version_max",
            ..
        }
    ));
    p[0] = 1;
    p[4] = 2; // proof_present must be 0 or 1
    assert!(matches!(
        body_err(request_header(MsgType::Hello), &p),
        RpcError::InvalidArgument {
            field: "proof_present",
            ..
        }
    ));
    p[4] = 0;
    p[40] = 1; // proof bytes while absent
    assert!(matches!(
        body_err(request_header(MsgType::Hello), &p),
        RpcError::InvalidArgument { field: "proof", .. }
    ));
    p[40] = 0;
    decode_frame(&forge(request_header(MsgType::Hello), &p)).unwrap();
}

#[test]
fn list_counts_are_bounded_by_limit_and_bytes() {
    let stat = response_header(MsgType::Stat, Status::Ok);
    let mut p = ((STAT_COUNTERS_MAX + 1) as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    assert!(matches!(
        body_err(stat, &p),
        RpcError::TooMany { count: 257, .. }
    ));
    // 200 counters claimed, bytes for none.
    let mut p = 200u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    assert!(matches!(
        body_err(stat, &p),
        RpcError::BadLength {
            field: "counters",
            ..
        }
    ));
    let recover = response_header(MsgType::VssdRecover, Status::Ok);
    let mut p = u32::MAX.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    assert!(matches!(body_err(recover, &p), RpcError::TooMany { .. }));
    // One entry with line_count 0.
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4 + 32]);
    assert!(matches!(
        body_err(recover, &p),
        RpcError::InvalidArgument {
            field: "line_count",
            ..
        }
    ));
    // Two entries out of tran order (paging by after_tran needs the order).
    let mut p = 2u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    for tran in [5u64, 4] {
        p.extend_from_slice(&tran.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&[0; 12]);
    }
    assert!(matches!(
        body_err(recover, &p),
        RpcError::InvalidArgument {
            field: "tran",
            got: 4,
            ..
        }
    ));
    // An entry flag other than DAMAGED.
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4 + 32]);
    p[8 + 16..8 + 20].copy_from_slice(&1u32.to_le_bytes()); // line_count
    p[8 + 24..8 + 28].copy_from_slice(&2u32.to_le_bytes()); // flags
    assert!(matches!(
        body_err(recover, &p),
        RpcError::InvalidArgument {
            field: "entry flags",
            got: 2,
            ..
        }
    ));

    // VSSD_DIRTY: over its limit, short, out of line order.
    let dirty = response_header(MsgType::VssdDirty, Status::Ok);
    let mut p = ((DIRTY_PER_REPLY_MAX + 1) as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    assert!(matches!(body_err(dirty, &p), RpcError::TooMany { .. }));
    let mut p = 3u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4 + 16]);
    assert!(matches!(
        body_err(dirty, &p),
        RpcError::BadLength { field: "lines", .. }
    ));
    let mut p = 2u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    for line in [9u64, 9] {
        p.extend_from_slice(&line.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
    }
    assert!(matches!(
        body_err(dirty, &p),
        RpcError::InvalidArgument {
            field: "line",
            got: 9,
            ..
        }
    ));

    // VSSD_COMMIT: an empty batch, one over the limit; VSSD_EPOCH: too many members.
    let commit = Header {
        handle: 1,
        ..request_header(MsgType::VssdCommit)
    };
    assert!(matches!(
        body_err(commit, &[0; 8]),
        RpcError::InvalidArgument { field: "trans", .. }
    ));
    let mut p = ((COMMIT_TRANS_MAX + 1) as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&[0; 8 * (COMMIT_TRANS_MAX + 1)]);
    assert!(matches!(
        decode_frame(&forge(commit, &p)).unwrap_err(),
        RpcError::TooLarge { .. } // over the type's payload limit first
    ));
    p.truncate(8 + 8);
    assert!(matches!(body_err(commit, &p), RpcError::TooMany { .. }));
    let epoch = Header {
        handle: 1,
        ..request_header(MsgType::VssdEpoch)
    };
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&((MEMBERS_MAX + 1) as u32).to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    assert!(matches!(body_err(epoch, &p), RpcError::TooMany { .. }));
}

#[test]
fn replica_request_fields_are_checked() {
    let h = |t| Header {
        handle: 1,
        ..request_header(t)
    };
    // A `max` of 0, or over the reply's limit.
    for (t, limit) in [
        (MsgType::VssdRecover, IN_DOUBT_PER_REPLY_MAX),
        (MsgType::VssdDirty, DIRTY_PER_REPLY_MAX),
    ] {
        let mut p = vec![0u8; 16];
        assert!(matches!(
            body_err(h(t), &p),
            RpcError::InvalidArgument { field: "max", .. }
        ));
        p[8..12].copy_from_slice(&(limit as u32 + 1).to_le_bytes());
        let e = body_err(h(t), &p);
        assert!(matches!(e, RpcError::TooMany { field: "max", .. }), "{e}");
        assert_eq!(e.status(), Status::TooLarge);
        p[8..12].copy_from_slice(&(limit as u32).to_le_bytes());
        decode_frame(&forge(h(t), &p)).unwrap();
    }
    // VSSD_INVALIDATE: an empty range, one that overflows.
    let mut p = vec![0u8; 16];
    assert!(matches!(
        body_err(h(MsgType::VssdInvalidate), &p),
        RpcError::InvalidArgument { field: "count", .. }
    ));
    p[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
    p[8..16].copy_from_slice(&1u64.to_le_bytes());
    assert!(matches!(
        body_err(h(MsgType::VssdInvalidate), &p),
        RpcError::InvalidArgument { field: "first", .. }
    ));
    // VSSD_REPAIR: its data agrees with the header's length.
    let repair = Header {
        length: 9,
        ..h(MsgType::VssdRepair)
    };
    assert!(matches!(
        body_err(repair, &[0; 16]),
        RpcError::BadLength { .. }
    ));
}

#[test]
fn replica_reply_fields_are_checked() {
    // VSSD_OUTCOME with a code that is no outcome.
    let outcome = response_header(MsgType::VssdOutcome, Status::Ok);
    for code in [0u32, 6] {
        let mut p = code.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        assert!(matches!(
            body_err(outcome, &p),
            RpcError::InvalidArgument {
                field: "outcome",
                ..
            }
        ));
    }
    // VSSD_CLEAN with a flag other than CLEANED.
    let clean = response_header(MsgType::VssdClean, Status::Ok);
    assert!(matches!(
        body_err(clean, &[2, 0, 0, 0, 0, 0, 0, 0]),
        RpcError::InvalidArgument { field: "flags", .. }
    ));
    // VSSD_OPEN with tran_lines_max 0.
    let open = Header {
        handle: 1,
        ..response_header(MsgType::VssdOpen, Status::Ok)
    };
    let mut p = vec![0u8; 40];
    p[24..28].copy_from_slice(&4096u32.to_le_bytes());
    assert!(matches!(
        body_err(open, &p),
        RpcError::InvalidArgument {
            field: "tran_lines_max",
            ..
        }
    ));
    // VSSD_READ's reply: the version, then the header's `length` of data.
    let read = Header {
        length: 8,
        ..response_header(MsgType::VssdRead, Status::Ok)
    };
    assert!(matches!(
        body_err(read, &[0; 8]),
        RpcError::BadLength { .. }
    ));
    decode_frame(&forge(read, &[0; 16])).unwrap();
}

#[test]
fn only_stale_epoch_carries_an_epoch_in_an_error() {
    // STALE_EPOCH: `offset` is the replica's epoch.
    let stale = Header {
        offset: 12,
        ..response_header(MsgType::VssdWritep1, Status::StaleEpoch)
    };
    let frame = forge(stale, b"fenced");
    let (_, m, _) = decode_frame(&frame).unwrap();
    assert_eq!(
        m.body,
        Body::Response(rpc::Response::StaleEpoch {
            msg_type: MsgType::VssdWritep1,
            epoch: 12,
            reason: "fenced",
        })
    );
    // Any other error: `offset` is unused.
    let io = Header {
        offset: 12,
        ..response_header(MsgType::VssdWritep1, Status::IoError)
    };
    assert!(matches!(
        body_err(io, b""),
        RpcError::InvalidArgument {
            field: "offset",
            ..
        }
    ));
}

#[test]
fn reply_fields_are_checked() {
    let open = Header {
        handle: 1,
        ..response_header(MsgType::DeviceOpen, Status::Ok)
    };
    let mut p = vec![0u8; 24];
    p[8..12].copy_from_slice(&3000u32.to_le_bytes()); // block size not a power of two
    p[12..16].copy_from_slice(&4096u32.to_le_bytes());
    assert!(matches!(
        body_err(open, &p),
        RpcError::InvalidArgument {
            field: "block_size",
            ..
        }
    ));
    let hello = response_header(MsgType::Hello, Status::Ok);
    let mut p = vec![0u8; 80];
    p[0] = 1; // version
    p[3] = 1; // name length
    p[4..8].copy_from_slice(&0u32.to_le_bytes()); // queue depth 0
    p[8..12].copy_from_slice(&65536u32.to_le_bytes());
    p.push(b's');
    assert!(matches!(
        body_err(hello, &p),
        RpcError::InvalidArgument {
            field: "queue_depth",
            ..
        }
    ));
}

#[test]
fn error_reason_must_be_utf8() {
    let h = response_header(MsgType::Read, Status::IoError);
    assert!(matches!(
        body_err(h, &[b'o', b'k', 0xFF]),
        RpcError::InvalidArgument {
            field: "reason",
            got: 2,
            ..
        }
    ));
    let v = forge(h, "disk on fire".as_bytes());
    let (_, m, _) = decode_frame(&v).unwrap();
    assert_eq!(m.status(), Status::IoError);
}

// ---- where the server and PROTOCOL.md once disagreed (issue 16) ----------------
//
// A probe written from PROTOCOL.md alone found five answers of the server that the
// spec did not give; each is pinned here, as the spec now says.

/// "READ: `length` (1..=DATA_LEN_MAX ...) ... TOO_LARGE" and "data over
/// `data_len_max`" is TOO_LARGE: a client learns to split, and the session goes on.
#[test]
fn a_read_longer_than_data_len_max_is_too_large() {
    let read = Header {
        handle: 1,
        length: DATA_LEN_MAX + 1,
        ..request_header(MsgType::Read)
    };
    let v = forge(read, b"");
    let err = expect(&v, Status::TooLarge, false);
    assert!(
        matches!(err, RpcError::TooLarge { len, max, .. } if len == u64::from(DATA_LEN_MAX) + 1 && max == u64::from(DATA_LEN_MAX)),
        "{err}"
    );
    answerable(&v, &err);
    let vssd_read = Header {
        handle: 1,
        length: u32::MAX,
        ..request_header(MsgType::VssdRead)
    };
    expect(&forge(vssd_read, &[0; 8]), Status::TooLarge, false);
}

/// READ's and DISCARD's ranges start at 1; a field value the message does not allow
/// is INVALID_ARGUMENT (BAD_LENGTH is for a payload that does not fit its layout).
#[test]
fn a_read_or_discard_of_length_zero_is_an_invalid_argument() {
    for (msg_type, payload) in [
        (MsgType::Read, &[][..]),
        (MsgType::Discard, &[][..]),
        (MsgType::VssdRead, &[0u8; 8][..]),
    ] {
        let h = Header {
            handle: 1,
            length: 0,
            ..request_header(msg_type)
        };
        let v = forge(h, payload);
        let err = expect(&v, Status::InvalidArgument, false);
        assert!(
            matches!(
                err,
                RpcError::InvalidArgument {
                    field: "length",
                    got: 0,
                    ..
                }
            ),
            "{msg_type}: {err}"
        );
        answerable(&v, &err);
    }
}

/// A name is 1..=64 bytes; an empty one is a bad name: INVALID_ARGUMENT.
#[test]
fn an_empty_name_is_an_invalid_argument() {
    let open = forge(request_header(MsgType::DeviceOpen), &[0; 8]);
    let err = expect(&open, Status::InvalidArgument, false);
    assert!(
        matches!(
            err,
            RpcError::InvalidArgument {
                field: "name",
                got: 0,
                ..
            }
        ),
        "{err}"
    );
    let vssd_open = forge(request_header(MsgType::VssdOpen), &[0; 16]);
    expect(&vssd_open, Status::InvalidArgument, false);
    let mut hello = vec![0u8; 72];
    hello[0] = 1;
    hello[2] = 1;
    expect(
        &forge(request_header(MsgType::Hello), &hello),
        Status::InvalidArgument,
        false,
    );
}

/// A server on 127.0.0.1 whose service answers PING; the test talks raw frames.
mod raw {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use rpc::echo::Echo;
    use rpc::limits::HEADER_LEN;
    use rpc::{Header, Server, ServerConfig};
    use rpc::{decode_header, decode_payload};

    pub fn server() -> Server {
        Server::start(ServerConfig::new("127.0.0.1:0".parse().unwrap()), || Echo).unwrap()
    }

    /// Bound of every read of the test.
    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    pub fn send(s: &mut TcpStream, bytes: &[u8]) {
        s.write_all(bytes).unwrap();
    }

    /// The next frame, or None when the server closed the connection (EOF or reset)
    /// before its first byte.
    pub fn next(s: &mut TcpStream) -> Option<(Header, Vec<u8>)> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match s.read(&mut head[got..]) {
                Ok(0) if got == 0 => return None,
                Ok(0) => panic!("closed mid-header ({got} of {HEADER_LEN})"),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset && got == 0 => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
        let header = decode_header(&head).unwrap();
        let mut payload = vec![0; header.payload_len as usize];
        s.read_exact(&mut payload).unwrap();
        decode_payload(&header, &payload).unwrap();
        Some((header, payload))
    }
}

fn hello_frame(tag: u64, versions: (u16, u16)) -> Vec<u8> {
    let mut v = Vec::new();
    let m = Message {
        tag,
        body: Body::Request(Request::Hello(rpc::Hello {
            version_min: versions.0,
            version_max: versions.1,
            client_nonce: [3; 32],
            proof: None,
            client_name: "probe",
        })),
    };
    encode_frame(1, &m, &mut v).unwrap();
    v
}

/// "Past step 1 the tag and `payload_len` are trustworthy, so these failures are
/// answered under the request's tag and the connection goes on": a HELLO with a bad
/// field too. Its answer is an error of type HELLO under its tag, and a sound HELLO
/// on the same connection then opens the session.
#[test]
fn a_hello_with_a_bad_field_is_answered_under_its_tag_and_the_connection_stays() {
    let server = raw::server();
    let mut s = raw::connect(server.local_addr());
    let sound = hello_frame(1, (1, 1));
    let payload = &sound[HEADER_LEN..];
    let bad_payload = |at: usize, byte: u8| {
        let mut p = payload.to_vec();
        p[at] = byte;
        p
    };
    let hello_header = |tag: u64| Header {
        tag,
        ..request_header(MsgType::Hello)
    };
    let cases: [(&str, Vec<u8>); 5] = [
        ("reserved bits", bad_payload(6, 1)),
        ("proof_present 2", bad_payload(4, 2)),
        ("a proof without the flag", bad_payload(40, 1)),
        ("a space in the name", bad_payload(72, b' ')),
        ("version_max < version_min", {
            let mut p = bad_payload(0, 2);
            p[2] = 1;
            p
        }),
    ];
    for (i, (what, p)) in cases.iter().enumerate() {
        let tag = 10 + i as u64;
        raw::send(&mut s, &forge(hello_header(tag), p));
        let (h, _) = raw::next(&mut s).unwrap_or_else(|| panic!("{what}: closed"));
        assert_eq!(h.tag, tag, "{what}: answered on another tag: {h:?}");
        assert_eq!(h.msg_type, MsgType::Hello, "{what}: {h:?}");
        assert_eq!(h.status, Status::InvalidArgument, "{what}: {h:?}");
    }
    raw::send(&mut s, &sound);
    let (h, _) = raw::next(&mut s).expect("the sound HELLO is answered");
    assert_eq!((h.tag, h.status), (1, Status::Ok), "{h:?}");
    let mut ping = Vec::new();
    let m = Message {
        tag: 2,
        body: Body::Request(Request::Ping { data: b"in" }),
    };
    encode_frame(1, &m, &mut ping).unwrap();
    raw::send(&mut s, &ping);
    let (h, _) = raw::next(&mut s).expect("the PING is answered");
    assert_eq!((h.tag, h.status), (2, Status::Ok), "{h:?}");
    server.stop();
}

/// "fewer than 56 header bytes, then EOF | Truncated { part: Header } | — | close
/// (nothing sent)", before HELLO and on an open session alike; the same for EOF
/// inside a payload.
#[test]
fn a_truncated_frame_then_eof_is_closed_with_nothing_sent() {
    let server = raw::server();
    let addr = server.local_addr();
    let ping = {
        let mut v = Vec::new();
        let m = Message {
            tag: 5,
            body: Body::Request(Request::Ping { data: b"cut short" }),
        };
        encode_frame(1, &m, &mut v).unwrap();
        v
    };
    for opened in [false, true] {
        for cut in [1, 20, HEADER_LEN - 1, HEADER_LEN + 3] {
            let mut s = raw::connect(addr);
            if opened {
                raw::send(&mut s, &hello_frame(1, (1, 1)));
                let (h, _) = raw::next(&mut s).expect("HELLO answered");
                assert_eq!(h.status, Status::Ok);
            }
            let frame = if opened {
                &ping
            } else {
                &hello_frame(1, (1, 1))
            };
            raw::send(&mut s, &frame[..cut]);
            s.shutdown(std::net::Shutdown::Write).unwrap();
            if let Some((h, p)) = raw::next(&mut s) {
                panic!(
                    "opened {opened}, cut {cut}: sent {h:?} ({}) before the close",
                    String::from_utf8_lossy(&p)
                );
            }
        }
    }
    server.stop();
}

#[test]
fn admin_texts_are_utf8_and_not_empty() {
    let v = forge(request_header(MsgType::DeviceCreate), b"");
    expect(&v, Status::BadLength, false);
    let v = forge(request_header(MsgType::DeviceCreate), b"name = \xff");
    let err = expect(&v, Status::InvalidArgument, false);
    answerable(&v, &err);
    let too_long = vec![b'#'; rpc::limits::CONFIG_TEXT_LEN_MAX + 1];
    let v = forge(request_header(MsgType::DeviceCreate), &too_long);
    expect(&v, Status::TooLarge, false);
}

#[test]
fn device_delete_names_dirty_lines_only_with_its_flag() {
    // dirty_lines 5, flags 0, name "d".
    let mut p = Vec::new();
    p.extend_from_slice(&5u64.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&[1, 0, 0, 0, b'd']);
    let v = forge(request_header(MsgType::DeviceDelete), &p);
    let err = expect(&v, Status::InvalidArgument, false);
    assert!(
        matches!(
            err,
            RpcError::InvalidArgument {
                field: "dirty_lines",
                ..
            }
        ),
        "{err}"
    );
    // A reserved flag bit.
    p[8] = 0x3;
    let v = forge(request_header(MsgType::DeviceDelete), &p);
    expect(&v, Status::InvalidArgument, false);
    // Named: decodes, and 0 named is not "none named".
    p[8] = 0x1;
    p[..8].copy_from_slice(&0u64.to_le_bytes());
    let v = forge(request_header(MsgType::DeviceDelete), &p);
    let (_, m, _) = decode_frame(&v).unwrap();
    assert_eq!(
        m.body,
        rpc::Body::Request(rpc::Request::DeviceDelete {
            name: "d",
            dirty_lines: Some(0)
        })
    );
}

#[test]
fn device_takeover_fields_are_checked() {
    let takeover = request_header(MsgType::DeviceTakeover);
    // An empty name, then reserved bytes set.
    assert!(matches!(
        body_err(takeover, &[0; 8]),
        RpcError::InvalidArgument { field: "name", .. }
    ));
    assert!(matches!(
        body_err(takeover, &[1, 0, 0, 7, 0, 0, 0, 0, b'd']),
        RpcError::InvalidArgument {
            field: "reserved",
            ..
        }
    ));
    // The reply is exactly four u64s: one short, one over.
    let ok = response_header(MsgType::DeviceTakeover, Status::Ok);
    assert!(matches!(body_err(ok, &[0; 24]), RpcError::BadLength { .. }));
    assert!(matches!(body_err(ok, &[0; 33]), RpcError::BadLength { .. }));
}

#[test]
fn vssd_create_config_is_optional_utf8() {
    // lines 1, log_bytes 0, line_size 4096, name "r", device "d".
    let mut p = Vec::new();
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&4096u32.to_le_bytes());
    p.extend_from_slice(&[1, 1, 0, 0, b'r', b'd']);
    let create = request_header(MsgType::VssdCreate);
    let v = forge(create, &p);
    let (_, m, _) = decode_frame(&v).unwrap();
    assert!(matches!(
        m.body,
        rpc::Body::Request(rpc::Request::VssdCreate { config: "", .. })
    ));
    p.extend_from_slice(b"mode = \xff");
    assert!(matches!(
        body_err(create, &p),
        RpcError::InvalidArgument {
            field: "config",
            ..
        }
    ));
}
