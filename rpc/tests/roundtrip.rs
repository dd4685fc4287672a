//! Encode -> decode == original, for every message kind with arbitrary field values
//! within the limits; and the encoder's own limits.

mod common;

use common::{KINDS, Parts, build, parts};
use proptest::prelude::*;
use rpc::limits::{
    COMMIT_TRANS_MAX, DATA_LEN_MAX, DIRTY_PER_REPLY_MAX, HEADER_LEN, IN_DOUBT_PER_REPLY_MAX,
    MEMBERS_MAX, NAME_LEN_MAX, PING_LEN_MAX, REASON_LEN_MAX, STAT_COUNTERS_MAX, TAG_NONE,
    VERSION_HELLO,
};
use rpc::{
    Body, Counter, DirtyLine, InDoubt, Message, MsgType, Request, Response, RpcError, Status,
    VssdInfo, decode_frame, decode_header, decode_payload, encode_frame,
};

fn round_trip(kind: usize, p: &Parts) -> Result<(), TestCaseError> {
    let msg = build(kind, p);
    let mut buf = vec![0xAB; 3]; // encode_frame appends
    let header = encode_frame(1, &msg, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("kind {kind}: encode: {e}")))?;
    let frame = &buf[3..];
    prop_assert_eq!(frame.len(), HEADER_LEN + header.payload_len as usize);
    let (h2, back, used) = decode_frame(frame)
        .map_err(|e| TestCaseError::fail(format!("kind {kind}: decode: {e}")))?;
    prop_assert_eq!(used, frame.len());
    prop_assert_eq!(h2, header);
    prop_assert_eq!(&back, &msg);
    prop_assert_eq!(header.msg_type, msg.msg_type());
    prop_assert_eq!(header.status, msg.status());
    prop_assert_eq!(header.tag, msg.tag);
    prop_assert_eq!(header.response, matches!(msg.body, Body::Response(_)));
    // The two-call path a stream reader takes gives the same message.
    let h3 = decode_header(frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back2 = decode_payload(&h3, &frame[HEADER_LEN..])
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back2, &msg);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips(p in parts(4096)) {
        for kind in 0..KINDS {
            round_trip(kind, &p)?;
        }
    }

    #[test]
    fn frames_concatenate(p in parts(512), kinds in prop::collection::vec(0..KINDS, 1..20)) {
        let mut stream = Vec::new();
        let msgs: Vec<Message<'_>> = kinds.iter().map(|k| build(*k, &p)).collect();
        for m in &msgs {
            encode_frame(1, m, &mut stream).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let mut rest = &stream[..];
        for m in &msgs {
            let (_, back, used) = decode_frame(rest).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, m);
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());
    }
}

#[test]
fn largest_data_round_trips() {
    let data = vec![0x5A; DATA_LEN_MAX as usize];
    let msgs = [
        Message {
            tag: 1,
            body: Body::Request(Request::Write {
                handle: 1,
                offset: 0,
                data: &data,
            }),
        },
        Message {
            tag: 2,
            body: Body::Request(Request::VssdWritep1 {
                handle: 1,
                tran: 9,
                line: 3,
                data: &data,
            }),
        },
        Message {
            tag: 3,
            body: Body::Response(Response::Read { data: &data }),
        },
        Message {
            tag: 4,
            body: Body::Response(Response::VssdRead {
                version: u64::MAX,
                data: &data,
            }),
        },
        Message {
            tag: 5,
            body: Body::Request(Request::VssdRepair {
                handle: 1,
                tran: 9,
                data: &data,
            }),
        },
        Message {
            tag: 6,
            body: Body::Response(Response::VssdReadPrepared { data: &data }),
        },
        Message {
            tag: 7,
            body: Body::Request(Request::VssdCopyIn {
                handle: 1,
                version: 9,
                line: 3,
                data: &data,
            }),
        },
    ];
    for m in &msgs {
        let mut buf = Vec::new();
        let h = encode_frame(1, m, &mut buf).unwrap();
        assert!(h.payload_len <= h.msg_type.payload_len_max(h.response));
        let (_, back, _) = decode_frame(&buf).unwrap();
        assert_eq!(&back, m);
    }
}

#[test]
fn largest_lists_round_trip() {
    let names: Vec<String> = (0..STAT_COUNTERS_MAX)
        .map(|i| format!("{i:0>64}"))
        .collect();
    let counters = names
        .iter()
        .map(|n| Counter {
            name: n,
            value: u64::MAX,
        })
        .collect();
    let in_doubt = (0..IN_DOUBT_PER_REPLY_MAX as u64)
        .map(|i| InDoubt {
            tran: i,
            line: i,
            line_count: 1,
            payload_len: u32::MAX,
            damaged: true,
        })
        .collect();
    let lines = (0..DIRTY_PER_REPLY_MAX as u64)
        .map(|i| DirtyLine {
            line: i,
            version: u64::MAX,
        })
        .collect();
    let members: Vec<u64> = (0..MEMBERS_MAX as u64).collect();
    for body in [
        Response::Stat { counters },
        Response::VssdRecover {
            in_doubt,
            more: true,
        },
        Response::VssdDirty { lines },
        Response::VssdOpen {
            handle: 1,
            info: VssdInfo {
                line_count: 1,
                epoch: 1,
                tran_lines_max: 1,
                line_size: 4096,
                members: members.clone(),
            },
        },
    ] {
        let m = Message {
            tag: 5,
            body: Body::Response(body),
        };
        let mut buf = Vec::new();
        let h = encode_frame(1, &m, &mut buf).unwrap();
        // VSSD_OPEN's largest reply is below the room kept for an error reason.
        let want = match h.msg_type {
            MsgType::VssdOpen => 40 + 8 * MEMBERS_MAX as u32,
            t => t.payload_len_max(true),
        };
        assert_eq!(h.payload_len, want, "{}", h.msg_type);
        assert!(h.payload_len <= h.msg_type.payload_len_max(true));
        assert_eq!(decode_frame(&buf).unwrap().1, m);
    }
    let trans: Vec<u64> = (0..COMMIT_TRANS_MAX as u64).collect();
    for body in [
        Request::VssdCommit { handle: 1, trans },
        Request::VssdEpoch {
            handle: 1,
            epoch: 2,
            members,
        },
    ] {
        let m = Message {
            tag: 6,
            body: Body::Request(body),
        };
        let mut buf = Vec::new();
        let h = encode_frame(1, &m, &mut buf).unwrap();
        assert_eq!(
            h.payload_len,
            h.msg_type.payload_len_max(false),
            "{}",
            h.msg_type
        );
        assert_eq!(decode_frame(&buf).unwrap().1, m);
    }
}

fn encode_err(body: Body<'_>) -> RpcError {
    let mut buf = vec![7u8];
    let err = encode_frame(1, &Message { tag: 1, body }, &mut buf).unwrap_err();
    assert_eq!(buf, [7u8], "a failed encode leaves the buffer as it was");
    err
}

#[test]
fn encoder_refuses_what_the_wire_cannot_carry() {
    let big = vec![0u8; DATA_LEN_MAX as usize + 1];
    let long_name = "n".repeat(NAME_LEN_MAX + 1);
    let long_reason = "r".repeat(REASON_LEN_MAX + 1);
    let too_many: Vec<Counter<'_>> = (0..=STAT_COUNTERS_MAX)
        .map(|_| Counter {
            name: "c",
            value: 0,
        })
        .collect();
    assert!(matches!(
        encode_err(Body::Request(Request::Write {
            handle: 1,
            offset: 0,
            data: &big
        })),
        RpcError::TooLarge { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::Write {
            handle: 1,
            offset: 0,
            data: &[]
        })),
        RpcError::BadLength { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::Ping {
            data: &big[..PING_LEN_MAX + 1]
        })),
        RpcError::TooLarge { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::DeviceOpen {
            name: &long_name,
            read_only: false
        })),
        RpcError::InvalidArgument { field: "name", .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::DeviceOpen {
            name: "has space",
            read_only: false
        })),
        RpcError::InvalidArgument { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::Read {
            handle: 0,
            offset: 0,
            length: 1
        })),
        RpcError::InvalidArgument {
            field: "handle",
            ..
        }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::Read {
            handle: 1,
            offset: u64::MAX,
            length: 1
        })),
        RpcError::InvalidArgument {
            field: "offset",
            ..
        }
    ));
    assert!(matches!(
        encode_err(Body::Response(Response::Stat { counters: too_many })),
        RpcError::TooMany { .. }
    ));
    assert!(matches!(
        encode_err(Body::Response(Response::Error {
            msg_type: MsgType::Read,
            status: Status::IoError,
            reason: &long_reason
        })),
        RpcError::TooLarge { .. }
    ));
    assert!(matches!(
        encode_err(Body::Response(Response::Error {
            msg_type: MsgType::Read,
            status: Status::Ok,
            reason: ""
        })),
        RpcError::BadStatus { .. }
    ));
    assert!(matches!(
        encode_err(Body::Response(Response::Error {
            msg_type: MsgType::Hello,
            status: Status::AuthRequired,
            reason: ""
        })),
        RpcError::BadStatus { .. }
    ));
    // STALE_EPOCH carries the replica's epoch: it is Response::StaleEpoch.
    assert!(matches!(
        encode_err(Body::Response(Response::Error {
            msg_type: MsgType::VssdWritep1,
            status: Status::StaleEpoch,
            reason: ""
        })),
        RpcError::BadStatus { .. }
    ));
    // Lists over their limits, and an empty COMMIT batch.
    let over = vec![0u64; COMMIT_TRANS_MAX.max(MEMBERS_MAX) + 1];
    assert!(matches!(
        encode_err(Body::Request(Request::VssdCommit {
            handle: 1,
            trans: over[..COMMIT_TRANS_MAX + 1].to_vec()
        })),
        RpcError::TooMany { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::VssdCommit {
            handle: 1,
            trans: Vec::new()
        })),
        RpcError::InvalidArgument { field: "trans", .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::VssdEpoch {
            handle: 1,
            epoch: 1,
            members: over[..MEMBERS_MAX + 1].to_vec()
        })),
        RpcError::TooMany { .. }
    ));
    assert!(matches!(
        encode_err(Body::Response(Response::VssdDirty {
            lines: vec![
                DirtyLine {
                    line: 0,
                    version: 0
                };
                DIRTY_PER_REPLY_MAX + 1
            ]
        })),
        RpcError::TooMany { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::VssdDirty {
            handle: 1,
            from: 0,
            max: DIRTY_PER_REPLY_MAX as u32 + 1
        })),
        RpcError::TooMany { .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::VssdRecover {
            handle: 1,
            after_tran: 0,
            max: 0
        })),
        RpcError::InvalidArgument { field: "max", .. }
    ));
    assert!(matches!(
        encode_err(Body::Request(Request::VssdInvalidate {
            handle: 1,
            first: u64::MAX,
            count: 1
        })),
        RpcError::InvalidArgument { field: "first", .. }
    ));
    // A request may not use the tag reserved for connection errors.
    let mut buf = Vec::new();
    let ping = Message {
        tag: TAG_NONE,
        body: Body::Request(Request::Ping { data: b"" }),
    };
    assert!(matches!(
        encode_frame(1, &ping, &mut buf),
        Err(RpcError::BadTag { .. })
    ));
    // An unknown session version.
    let ping = Message {
        tag: 1,
        body: Body::Request(Request::Ping { data: b"" }),
    };
    assert!(matches!(
        encode_frame(9, &ping, &mut buf),
        Err(RpcError::BadVersion { .. })
    ));
}

#[test]
fn hello_always_goes_out_in_the_hello_version() {
    let hello = Message {
        tag: 1,
        body: Body::Request(Request::Hello(rpc::Hello {
            version_min: 1,
            version_max: 7,
            client_nonce: [1; 32],
            proof: None,
            client_name: "c",
        })),
    };
    let mut buf = Vec::new();
    // Whatever the caller thinks the session version is.
    let h = encode_frame(1, &hello, &mut buf).unwrap();
    assert_eq!(h.version, VERSION_HELLO);
}

#[test]
fn error_replies_answer_any_request_header() {
    let mut buf = Vec::new();
    let req = Message {
        tag: 77,
        body: Body::Request(Request::Flush { handle: 3 }),
    };
    encode_frame(1, &req, &mut buf).unwrap();
    let raw = rpc::RawHeader::decode(rpc::header_bytes(&buf).unwrap()).unwrap();
    let long = "x".repeat(1000);
    let reply = Message::error_reply(&raw, Status::IoError, &long);
    let mut out = Vec::new();
    encode_frame(1, &reply, &mut out).unwrap();
    let (h, back, _) = decode_frame(&out).unwrap();
    assert_eq!(h.tag, 77);
    assert_eq!(h.msg_type, MsgType::Flush);
    assert_eq!(h.status, Status::IoError);
    match back.body {
        Body::Response(Response::Error { reason, .. }) => assert_eq!(reason.len(), REASON_LEN_MAX),
        other => panic!("{other:?}"),
    }
    // STALE_EPOCH from a raw header goes out as its own variant, epoch unknown (0).
    let stale = Message::error_reply(&raw, Status::StaleEpoch, "fenced");
    out.clear();
    let h = encode_frame(1, &stale, &mut out).unwrap();
    assert_eq!((h.status, h.offset), (Status::StaleEpoch, 0));
    assert_eq!(decode_frame(&out).unwrap().1, stale);
    let bye = Message::connection_error(Status::Busy, "too many sessions");
    out.clear();
    let h = encode_frame(1, &bye, &mut out).unwrap();
    assert_eq!(
        (h.tag, h.msg_type, h.status),
        (TAG_NONE, MsgType::Error, Status::Busy)
    );
}

#[test]
fn reason_is_cut_at_a_char_boundary() {
    let s = "é".repeat(200); // 400 bytes
    let cut = rpc::truncate_reason(&s);
    assert!(cut.len() <= REASON_LEN_MAX);
    assert!(cut.len() >= REASON_LEN_MAX - 1);
    assert!(s.starts_with(cut));
}

/// The example frame of PROTOCOL.md, byte for byte.
#[test]
fn golden_ping_frame() {
    #[rustfmt::skip]
    let want: [u8; 60] = [
        0x43, 0x56, 0x41, 0x52, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0xe5, 0x26, 0xfa, 0xa7,
        0x00, 0x00, 0x00, 0x00, 0x84, 0x7d, 0x7b, 0xdd, 0x70, 0x69, 0x6e, 0x67,
    ];
    let ping = Message {
        tag: 3,
        body: Body::Request(Request::Ping { data: b"ping" }),
    };
    let mut buf = Vec::new();
    encode_frame(1, &ping, &mut buf).unwrap();
    assert_eq!(buf, want);
    // CRC32C is the Castagnoli CRC (iSCSI), check value of "123456789".
    assert_eq!(rpc::payload_crc(b"123456789"), 0xE306_9283);
    assert_eq!(rpc::payload_crc(b""), 0);
}

/// DEVICE_OPEN's READ_ONLY is bit 0 of the `flags` word at payload offset 0 of the
/// request and 16 of the reply (PROTOCOL.md), and decodes back.
#[test]
fn device_open_read_only_is_bit_0_of_its_flags() {
    let request = Message {
        tag: 1,
        body: Body::Request(Request::DeviceOpen {
            name: "dev0",
            read_only: true,
        }),
    };
    let reply = Message {
        tag: 1,
        body: Body::Response(Response::DeviceOpen {
            handle: 7,
            info: rpc::DeviceInfo {
                size_bytes: 1 << 30,
                block_size: 512,
                io_len_max: 1 << 20,
                read_only: true,
            },
        }),
    };
    for (msg, at) in [(request, 0), (reply, 16)] {
        let mut buf = Vec::new();
        encode_frame(1, &msg, &mut buf).unwrap();
        let flags = &buf[HEADER_LEN + at..][..4];
        assert_eq!(flags, [1, 0, 0, 0], "{:?}", msg.body);
        assert_eq!(decode_frame(&buf).unwrap().1, msg);
    }
}
