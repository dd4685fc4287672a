//! The decoder's fuzz property, shared by the cargo-fuzz target
//! (`rpc/fuzz/fuzz_targets/decode.rs`), the stable fallback
//! (`examples/fuzz_decode.rs`) and the proptests. Not part of the API.
//!
//! For any bytes: decoding never panics; a frame that decodes re-encodes to the
//! very same bytes (one encoding per message); every header error has a status
//! and a disposition, and a server can always encode its answer to it.

use crate::codec::{decode_frame, encode_frame, header_bytes};
use crate::error::RpcError;
use crate::header::{Header, RawHeader, forge, payload_crc};
use crate::limits::{HEADER_LEN, MAGIC, PAYLOAD_LEN_MAX};
use crate::msg::{
    Body, Counter, DeviceInfo, DirtyLine, Hello, HelloReply, InDoubt, Message, Request, Response,
    TranState, VssdInfo,
};
use crate::msg_type::MsgType;
use crate::status::Status;

/// Most frames one input is decoded as (inputs are small; this bounds the loop).
const FRAMES_PER_INPUT_MAX: usize = 64;

/// Runs the property over `data` as it is, and again with its framing made
/// sound (magic, version, lengths and CRCs fixed up) so that the field and body
/// decoders behind the CRC checks are reached too. Panics if the property fails.
pub fn check(data: &[u8]) {
    check_stream(data);
    check_stream(&with_sound_framing(data));
}

/// `data` turned into one frame that passes the CRC checks: padded to a header,
/// magic and version set, the payload length clamped to what follows, and both
/// CRCs recomputed. Every other field keeps its fuzzed value.
pub fn with_sound_framing(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() < HEADER_LEN {
        v.resize(HEADER_LEN, 0);
    }
    let payload_len = (v.len() - HEADER_LEN).min(PAYLOAD_LEN_MAX as usize);
    v.truncate(HEADER_LEN + payload_len);
    let (head, payload) = v.split_at_mut(HEADER_LEN);
    let crc = payload_crc(payload);
    let head: &mut [u8; HEADER_LEN] = head.try_into().expect("split at HEADER_LEN");
    head[forge::MAGIC_AT..forge::MAGIC_AT + 4].copy_from_slice(&MAGIC.to_le_bytes());
    head[forge::VERSION_AT..forge::VERSION_AT + 2].copy_from_slice(&1u16.to_le_bytes());
    head[forge::PAYLOAD_LEN_AT..forge::PAYLOAD_LEN_AT + 4]
        .copy_from_slice(&(payload_len as u32).to_le_bytes());
    head[forge::PAYLOAD_CRC_AT..forge::PAYLOAD_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    forge::reseal(head);
    v
}

fn check_stream(mut rest: &[u8]) {
    for _ in 0..FRAMES_PER_INPUT_MAX {
        check_header_steps(rest);
        match decode_frame(rest) {
            Ok((header, msg, used)) => {
                check_canonical(&header, &msg, &rest[..used]);
                rest = &rest[used..];
            }
            Err(e) => {
                check_error(&e);
                return;
            }
        }
    }
}

/// The two header steps agree with `Header::decode`, and a server can answer any
/// header that passes the framing step.
fn check_header_steps(bytes: &[u8]) {
    let Ok(head) = header_bytes(bytes) else {
        return;
    };
    let whole = Header::decode(head);
    let raw = match RawHeader::decode(head) {
        Ok(raw) => raw,
        Err(e) => {
            assert!(
                whole.is_err(),
                "framing error {e} but Header::decode passed"
            );
            assert!(e.closes_connection(), "framing error {e} must close");
            return;
        }
    };
    let validated = raw.validate();
    assert_eq!(
        validated.as_ref().ok(),
        whole.as_ref().ok(),
        "two-step and one-step header decode disagree"
    );
    if let Err(e) = validated {
        check_error(&e);
        let reason = e.to_string();
        let reply = Message::error_reply(&raw, e.status(), &reason);
        let mut out = Vec::new();
        if let Err(enc) = encode_frame(raw.version, &reply, &mut out) {
            panic!("cannot encode the reply to {e}: {enc}");
        }
    }
}

fn check_canonical(header: &Header, msg: &Message<'_>, bytes: &[u8]) {
    let mut out = Vec::with_capacity(bytes.len());
    let h2 = match encode_frame(header.version, msg, &mut out) {
        Ok(h) => h,
        Err(e) => panic!("decoded {msg:?} does not re-encode: {e}"),
    };
    assert_eq!(&h2, header, "re-encoded header differs");
    assert!(out == bytes, "re-encoded bytes differ for {msg:?}");
}

fn check_error(e: &RpcError) {
    assert!(!e.status().is_ok(), "error {e} maps to OK");
    let _ = e.closes_connection();
    assert!(!e.to_string().is_empty());
}

/// One small valid frame of every request and response shape, named
/// `seed-<dir>-<type>[-variant].bin`: the seed corpus of the fuzzers (kept in
/// `rpc/fuzz/corpus/decode/`, checked against this list by `tests/corpus.rs`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    const DATA: &[u8] = b"0123456789abcdef0123456789abcdef";
    let hello = Hello {
        version_min: 1,
        version_max: 1,
        client_nonce: [0x11; 32],
        proof: None,
        client_name: "cva-client",
    };
    let reply = HelloReply {
        version: 1,
        queue_depth: 64,
        data_len_max: 1 << 20,
        server_nonce: [0x22; 32],
        proof: None,
        server_name: "cva-server",
    };
    let requests: Vec<(&str, Request<'static>)> = vec![
        ("hello", Request::Hello(hello.clone())),
        (
            "hello-proof",
            Request::Hello(Hello {
                proof: Some([0x33; 32]),
                ..hello
            }),
        ),
        ("ping", Request::Ping { data: b"ping" }),
        (
            "device_open",
            Request::DeviceOpen {
                name: "dev0",
                read_only: false,
            },
        ),
        ("device_close", Request::DeviceClose { handle: 1 }),
        (
            "read",
            Request::Read {
                handle: 1,
                offset: 4096,
                length: 4096,
            },
        ),
        (
            "write",
            Request::Write {
                handle: 1,
                offset: 8192,
                data: DATA,
            },
        ),
        ("flush", Request::Flush { handle: 1 }),
        (
            "discard",
            Request::Discard {
                handle: 1,
                offset: 0,
                length: 1 << 20,
            },
        ),
        ("stat", Request::Stat { handle: 1 }),
        (
            "vssd_open",
            Request::VssdOpen {
                name: "vssd0",
                epoch: 3,
            },
        ),
        ("vssd_close", Request::VssdClose { handle: 2 }),
        (
            "vssd_writep1",
            Request::VssdWritep1 {
                handle: 2,
                tran: 100,
                line: 7,
                data: DATA,
            },
        ),
        (
            "vssd_commit",
            Request::VssdCommit {
                handle: 2,
                trans: vec![100, 103],
            },
        ),
        (
            "vssd_abort",
            Request::VssdAbort {
                handle: 2,
                tran: 101,
            },
        ),
        (
            "vssd_read",
            Request::VssdRead {
                handle: 2,
                line: 7,
                length: 4096,
            },
        ),
        (
            "vssd_clean",
            Request::VssdClean {
                handle: 2,
                line: 7,
                version: 100,
            },
        ),
        (
            "vssd_recover",
            Request::VssdRecover {
                handle: 2,
                after_tran: 0,
                max: 64,
            },
        ),
        (
            "vssd_epoch",
            Request::VssdEpoch {
                handle: 2,
                epoch: 4,
                members: vec![1, 2],
            },
        ),
        (
            "vssd_invalidate",
            Request::VssdInvalidate {
                handle: 2,
                first: 7,
                count: 256,
            },
        ),
        (
            "vssd_outcome",
            Request::VssdOutcome {
                handle: 2,
                tran: 100,
            },
        ),
        (
            "vssd_dirty",
            Request::VssdDirty {
                handle: 2,
                from: 0,
                max: 128,
            },
        ),
        (
            "vssd_read_prepared",
            Request::VssdReadPrepared {
                handle: 2,
                tran: 102,
            },
        ),
        (
            "vssd_copy_in",
            Request::VssdCopyIn {
                handle: 2,
                version: 90,
                line: 7,
                data: DATA,
            },
        ),
        (
            "vssd_repair",
            Request::VssdRepair {
                handle: 2,
                tran: 102,
                data: DATA,
            },
        ),
        (
            "vssd_create",
            Request::VssdCreate {
                name: "dev1-r1",
                device: "dev1",
                line_size: 4096,
                lines: 4096,
                log_bytes: 1 << 20,
                config: "name = \"dev1\"\nbacking = \"/srv/b1\"\nvssd = \"/srv/v1\"\nvssd_bytes = 268435456\n",
            },
        ),
        (
            "device_create",
            Request::DeviceCreate {
                config: "name = \"dev1\"\nbacking = \"/srv/b1\"\nvssd = \"/srv/v1\"\nvssd_bytes = 268435456\n",
            },
        ),
        ("device_list", Request::DeviceList),
        ("device_show", Request::DeviceShow { name: "dev1" }),
        (
            "device_set",
            Request::DeviceSet {
                name: "dev1",
                settings: "mode = \"write-through\"\n",
            },
        ),
        (
            "device_delete",
            Request::DeviceDelete {
                name: "dev1",
                dirty_lines: Some(12),
            },
        ),
        ("device_takeover", Request::DeviceTakeover { name: "dev1" }),
    ];
    let responses: Vec<(&str, Response<'static>)> = vec![
        ("hello", Response::Hello(reply.clone())),
        ("hello-auth_required", Response::HelloAuthRequired(reply)),
        ("ping", Response::Ping { data: b"ping" }),
        (
            "device_open",
            Response::DeviceOpen {
                handle: 1,
                info: DeviceInfo {
                    size_bytes: 1 << 30,
                    block_size: 4096,
                    io_len_max: 1 << 20,
                    read_only: false,
                },
            },
        ),
        ("device_close", Response::DeviceClose),
        ("read", Response::Read { data: DATA }),
        ("write", Response::Write),
        ("flush", Response::Flush),
        ("discard", Response::Discard),
        (
            "stat",
            Response::Stat {
                counters: vec![
                    Counter {
                        name: "hits",
                        value: 10,
                    },
                    Counter {
                        name: "misses",
                        value: 2,
                    },
                ],
            },
        ),
        (
            "vssd_open",
            Response::VssdOpen {
                handle: 2,
                info: VssdInfo {
                    line_count: 1 << 18,
                    epoch: 3,
                    tran_lines_max: 256,
                    line_size: 4096,
                    members: vec![1, 2, 3],
                },
            },
        ),
        ("vssd_close", Response::VssdClose),
        ("vssd_writep1", Response::VssdWritep1),
        ("vssd_commit", Response::VssdCommit),
        ("vssd_abort", Response::VssdAbort),
        (
            "vssd_read",
            Response::VssdRead {
                version: 100,
                data: DATA,
            },
        ),
        ("vssd_clean", Response::VssdClean { cleaned: true }),
        (
            "vssd_recover",
            Response::VssdRecover {
                in_doubt: vec![
                    InDoubt {
                        tran: 100,
                        line: 7,
                        line_count: 1,
                        payload_len: 4096,
                        damaged: false,
                    },
                    InDoubt {
                        tran: 102,
                        line: 9,
                        line_count: 4,
                        payload_len: 13000,
                        damaged: true,
                    },
                ],
                more: true,
            },
        ),
        ("vssd_epoch", Response::VssdEpoch),
        ("vssd_invalidate", Response::VssdInvalidate { held: 3 }),
        (
            "vssd_outcome",
            Response::VssdOutcome {
                state: TranState::Committed,
            },
        ),
        (
            "vssd_dirty",
            Response::VssdDirty {
                lines: vec![
                    DirtyLine {
                        line: 7,
                        version: 100,
                    },
                    DirtyLine {
                        line: 9,
                        version: 102,
                    },
                ],
            },
        ),
        (
            "vssd_read_prepared",
            Response::VssdReadPrepared { data: DATA },
        ),
        ("vssd_repair", Response::VssdRepair),
        ("vssd_copy_in", Response::VssdCopyIn),
        ("vssd_create", Response::VssdCreate),
        ("device_create", Response::DeviceCreate),
        (
            "device_list",
            Response::DeviceList {
                names: vec!["dev0", "dev1"],
            },
        ),
        (
            "device_show",
            Response::DeviceShow {
                text: "name = \"dev1\"\nmode = \"write-back\"\n",
            },
        ),
        ("device_set", Response::DeviceSet),
        ("device_delete", Response::DeviceDelete),
        (
            "device_takeover",
            Response::DeviceTakeover {
                epoch: 7,
                committed: 2,
                aborted: 1,
                repaired: 0,
            },
        ),
        (
            "vssd_writep1-stale_epoch",
            Response::StaleEpoch {
                msg_type: MsgType::VssdWritep1,
                epoch: 5,
                reason: "replica at epoch 5",
            },
        ),
        (
            "write-io_error",
            Response::Error {
                msg_type: MsgType::Write,
                status: Status::IoError,
                reason: "backing store: EIO",
            },
        ),
        (
            "error-connection",
            Response::Error {
                msg_type: MsgType::Error,
                status: Status::Busy,
                reason: "session limit reached",
            },
        ),
    ];
    let mut out = Vec::new();
    let mut tag = 1u64;
    let mut push = |dir: &str, name: &str, body: Body<'static>| {
        let mut frame = Vec::new();
        let msg = Message { tag, body };
        tag += 1;
        if let Err(e) = encode_frame(1, &msg, &mut frame) {
            panic!("seed {dir}-{name} does not encode: {e}");
        }
        out.push((format!("seed-{dir}-{name}.bin"), frame));
    };
    for (name, r) in requests {
        push("req", name, Body::Request(r));
    }
    for (name, r) in responses {
        push("resp", name, Body::Response(r));
    }
    out
}
