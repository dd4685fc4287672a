//! Shared by the rpc integration tests: arbitrary messages of every kind (owned
//! parts, from which each test borrows a `Message`) and a frame forger.
#![allow(dead_code)]

use proptest::prelude::*;
use rpc::limits::{
    COMMIT_TRANS_MAX, DATA_LEN_MAX, DATA_LEN_MAX_ADVERTISED_MIN, DIRTY_PER_REPLY_MAX,
    IN_DOUBT_PER_REPLY_MAX, MEMBERS_MAX, PING_LEN_MAX, QUEUE_DEPTH_MAX, STAT_COUNTERS_MAX,
};
use rpc::{
    Body, Counter, DeviceInfo, DirtyLine, Header, Hello, HelloReply, InDoubt, Message, MsgType,
    Request, Response, Status, TranState, VssdInfo, payload_crc,
};

/// Owned values a `Message` of any kind can borrow.
#[derive(Debug, Clone)]
pub struct Parts {
    pub tag: u64,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
    pub discard_length: u32,
    pub a: u64,
    pub b: u64,
    pub flag: bool,
    pub name: String,
    pub name2: String,
    pub data: Vec<u8>,
    pub ping: Vec<u8>,
    pub reason: String,
    pub nonce: [u8; 32],
    pub nonce2: [u8; 32],
    pub proof: Option<[u8; 32]>,
    pub version_min: u16,
    pub version_max: u16,
    pub queue_depth: u32,
    pub data_len_max: u32,
    pub pow2_shift: u32,
    pub io_len_max: u32,
    pub counters: Vec<(String, u64)>,
    pub in_doubt: Vec<InDoubt>,
    pub status: Status,
    pub err_type: MsgType,
    /// VSSD_COMMIT's trans (1..=COMMIT_TRANS_MAX), members (0..=MEMBERS_MAX),
    /// VSSD_DIRTY's lines (increasing), a `max` of VSSD_RECOVER and VSSD_DIRTY, an
    /// outcome, and a range count that does not overflow from `a`.
    pub trans: Vec<u64>,
    pub members: Vec<u64>,
    pub dirty: Vec<DirtyLine>,
    pub recover_max: u32,
    pub dirty_max: u32,
    pub state: TranState,
    pub count: u64,
}

/// How many kinds [`build`] knows: every request, every response, and errors
/// (a plain one, a connection one, a STALE_EPOCH one).
pub const KINDS: usize = 30 + 31 + 5;

pub fn name() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

fn in_doubt() -> impl Strategy<Value = InDoubt> {
    (
        any::<u64>(),
        any::<u64>(),
        1..=u32::MAX,
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(tran, line, line_count, payload_len, damaged)| InDoubt {
            tran,
            line,
            line_count,
            payload_len,
            damaged,
        })
}

/// The replica parts: commit batch, members, dirty list, maxima, outcome, count.
#[allow(clippy::type_complexity)]
fn replica_parts()
-> impl Strategy<Value = (Vec<u64>, Vec<u64>, Vec<DirtyLine>, u32, u32, TranState, u64)> {
    (
        prop::collection::vec(any::<u64>(), 1..=COMMIT_TRANS_MAX.min(40)),
        prop::collection::vec(any::<u64>(), 0..=MEMBERS_MAX),
        prop::collection::vec(
            (any::<u64>(), any::<u64>()),
            0..=DIRTY_PER_REPLY_MAX.min(40),
        )
        .prop_map(|mut v| {
            v.sort_by_key(|d| d.0);
            v.dedup_by_key(|d| d.0);
            v.into_iter()
                .map(|(line, version)| DirtyLine { line, version })
                .collect()
        }),
        1..=IN_DOUBT_PER_REPLY_MAX as u32,
        1..=DIRTY_PER_REPLY_MAX as u32,
        prop::sample::select(TranState::ALL.to_vec()),
        1..=u64::MAX,
    )
}

/// Arbitrary parts; `data_max` bounds the data length (tests of the full 1 MiB are
/// separate, to keep cases fast).
pub fn parts(data_max: usize) -> impl Strategy<Value = Parts> {
    // STALE_EPOCH has its own variant (kind 49).
    let failures: Vec<Status> = Status::ALL
        .iter()
        .copied()
        .filter(|s| !s.is_ok() && *s != Status::StaleEpoch)
        .collect();
    let head = (
        0..u64::MAX, // any tag but TAG_NONE
        1..=u64::MAX,
        1..=DATA_LEN_MAX,
        1..=u32::MAX,
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(|(tag, handle, length, discard_length, a, b, flag, off)| {
            // An offset such that offset + length does not overflow (for both READ
            // and DISCARD lengths).
            let room = u64::MAX - u64::from(length.max(discard_length));
            Just((
                tag,
                handle,
                off % (room + 1),
                length,
                discard_length,
                a,
                b,
                flag,
            ))
        });
    let strings = (
        name(),
        name(),
        prop::collection::vec(any::<u8>(), 1..=data_max),
        prop::collection::vec(any::<u8>(), 0..=PING_LEN_MAX.min(data_max)),
        ".{0,80}".prop_map(|s| rpc::truncate_reason(&s).to_string()),
    );
    let hello = (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<Option<[u8; 32]>>(),
        (1..=u16::MAX).prop_flat_map(|max| (1..=max, Just(max))),
        1..=QUEUE_DEPTH_MAX,
        DATA_LEN_MAX_ADVERTISED_MIN..=DATA_LEN_MAX,
        0..32u32,
        1..=DATA_LEN_MAX,
    );
    let lists = (
        prop::collection::vec((name(), any::<u64>()), 0..=STAT_COUNTERS_MAX.min(40)),
        prop::collection::vec(in_doubt(), 0..=IN_DOUBT_PER_REPLY_MAX.min(40)).prop_map(|mut v| {
            // A reply lists them in strictly increasing tran order.
            v.sort_by_key(|d| d.tran);
            v.dedup_by_key(|d| d.tran);
            v
        }),
        prop::sample::select(failures),
        prop::sample::select(MsgType::ALL.to_vec()),
    );
    (head, strings, hello, lists, replica_parts()).prop_map(
        |(
            (tag, handle, offset, length, discard_length, a, b, flag),
            (name, name2, data, ping, reason),
            (
                nonce,
                nonce2,
                proof,
                (version_min, version_max),
                queue_depth,
                data_len_max,
                pow2_shift,
                io_len_max,
            ),
            (counters, in_doubt, status, err_type),
            (trans, members, dirty, recover_max, dirty_max, state, count),
        )| Parts {
            tag,
            handle,
            offset,
            length,
            discard_length,
            a,
            b,
            flag,
            name,
            name2,
            data,
            ping,
            reason,
            nonce,
            nonce2,
            proof,
            version_min,
            version_max,
            queue_depth,
            data_len_max,
            pow2_shift,
            io_len_max,
            counters,
            in_doubt,
            status,
            err_type,
            // A range from `a / 2` that does not overflow.
            count: 1 + (count - 1) % (u64::MAX / 2),
            trans,
            members,
            dirty,
            recover_max,
            dirty_max,
            state,
        },
    )
}

/// The message of kind `kind` (0..KINDS) made of `p`.
pub fn build(kind: usize, p: &Parts) -> Message<'_> {
    let h = p.handle;
    let hello_reply = HelloReply {
        version: p.version_max,
        queue_depth: p.queue_depth,
        data_len_max: p.data_len_max,
        server_nonce: p.nonce2,
        proof: p.proof,
        server_name: &p.name2,
    };
    let body = match kind {
        0 => Body::Request(Request::Hello(Hello {
            version_min: p.version_min,
            version_max: p.version_max,
            client_nonce: p.nonce,
            proof: p.proof,
            client_name: &p.name,
        })),
        1 => Body::Request(Request::Ping { data: &p.ping }),
        2 => Body::Request(Request::DeviceOpen {
            name: &p.name,
            read_only: p.flag,
        }),
        3 => Body::Request(Request::DeviceClose { handle: h }),
        4 => Body::Request(Request::Read {
            handle: h,
            offset: p.offset,
            length: p.length,
        }),
        5 => Body::Request(Request::Write {
            handle: h,
            offset: p.offset,
            data: &p.data,
        }),
        6 => Body::Request(Request::Flush { handle: h }),
        7 => Body::Request(Request::Discard {
            handle: h,
            offset: p.offset,
            length: p.discard_length,
        }),
        // STAT takes handle 0 as well (the server's own counters).
        8 => Body::Request(Request::Stat {
            handle: if p.flag { 0 } else { h },
        }),
        9 => Body::Request(Request::VssdOpen {
            name: &p.name,
            epoch: p.a,
        }),
        10 => Body::Request(Request::VssdClose { handle: h }),
        11 => Body::Request(Request::VssdWritep1 {
            handle: h,
            tran: p.a,
            line: p.b,
            data: &p.data,
        }),
        12 => Body::Request(Request::VssdCommit {
            handle: h,
            trans: p.trans.clone(),
        }),
        13 => Body::Request(Request::VssdAbort {
            handle: h,
            tran: p.a,
        }),
        14 => Body::Request(Request::VssdRead {
            handle: h,
            line: p.a,
            length: p.length,
        }),
        15 => Body::Request(Request::VssdClean {
            handle: h,
            line: p.a,
            version: p.b,
        }),
        16 => Body::Request(Request::VssdRecover {
            handle: h,
            after_tran: p.a,
            max: p.recover_max,
        }),
        17 => Body::Request(Request::VssdEpoch {
            handle: h,
            epoch: p.a,
            members: p.members.clone(),
        }),
        18 => Body::Request(Request::VssdInvalidate {
            handle: h,
            first: p.a / 2,
            count: p.count,
        }),
        19 => Body::Request(Request::VssdOutcome {
            handle: h,
            tran: p.a,
        }),
        20 => Body::Request(Request::VssdDirty {
            handle: h,
            from: p.a,
            max: p.dirty_max,
        }),
        21 => Body::Request(Request::VssdReadPrepared {
            handle: h,
            tran: p.a,
        }),
        22 => Body::Request(Request::VssdRepair {
            handle: h,
            tran: p.a,
            data: &p.data,
        }),
        23 => Body::Response(Response::Hello(hello_reply)),
        24 => Body::Response(Response::HelloAuthRequired(hello_reply)),
        25 => Body::Response(Response::Ping { data: &p.ping }),
        26 => Body::Response(Response::DeviceOpen {
            handle: h,
            info: DeviceInfo {
                size_bytes: p.a,
                block_size: 1 << p.pow2_shift,
                io_len_max: p.io_len_max,
                read_only: p.flag,
            },
        }),
        27 => Body::Response(Response::DeviceClose),
        28 => Body::Response(Response::Read { data: &p.data }),
        29 => Body::Response(Response::Write),
        30 => Body::Response(Response::Flush),
        31 => Body::Response(Response::Discard),
        32 => Body::Response(Response::Stat {
            counters: p
                .counters
                .iter()
                .map(|(name, value)| Counter {
                    name: name.as_str(),
                    value: *value,
                })
                .collect(),
        }),
        33 => Body::Response(Response::VssdOpen {
            handle: h,
            info: VssdInfo {
                line_count: p.a,
                epoch: p.b,
                tran_lines_max: p.count,
                line_size: 1 << p.pow2_shift,
                members: p.members.clone(),
            },
        }),
        34 => Body::Response(Response::VssdClose),
        35 => Body::Response(Response::VssdWritep1),
        36 => Body::Response(Response::VssdCommit),
        37 => Body::Response(Response::VssdAbort),
        38 => Body::Response(Response::VssdRead {
            version: p.b,
            data: &p.data,
        }),
        39 => Body::Response(Response::VssdClean { cleaned: p.flag }),
        40 => Body::Response(Response::VssdRecover {
            in_doubt: p.in_doubt.clone(),
            more: p.flag,
        }),
        41 => Body::Response(Response::VssdEpoch),
        42 => Body::Response(Response::VssdInvalidate { held: p.b }),
        43 => Body::Response(Response::VssdOutcome { state: p.state }),
        44 => Body::Response(Response::VssdDirty {
            lines: p.dirty.clone(),
        }),
        45 => Body::Response(Response::VssdReadPrepared { data: &p.data }),
        46 => Body::Response(Response::VssdRepair),
        47 => {
            // HELLO + AUTH_REQUIRED has its own layout; as a plain error it is ERROR.
            let msg_type = if p.err_type == MsgType::Hello && p.status == Status::AuthRequired {
                MsgType::Error
            } else {
                p.err_type
            };
            Body::Response(Response::Error {
                msg_type,
                status: p.status,
                reason: &p.reason,
            })
        }
        48 => Body::Response(Response::Error {
            msg_type: MsgType::Error,
            status: p.status,
            reason: &p.reason,
        }),
        49 => Body::Response(Response::StaleEpoch {
            msg_type: p.err_type,
            epoch: p.b,
            reason: &p.reason,
        }),
        50 => Body::Request(Request::VssdCopyIn {
            handle: h,
            version: p.a,
            line: p.b,
            data: &p.data,
        }),
        51 => Body::Response(Response::VssdCopyIn),
        52 => Body::Request(Request::DeviceCreate { config: text(p) }),
        53 => Body::Response(Response::DeviceCreate),
        54 => Body::Request(Request::DeviceList),
        55 => Body::Response(Response::DeviceList {
            names: p.counters.iter().map(|(n, _)| n.as_str()).collect(),
        }),
        56 => Body::Request(Request::DeviceShow { name: &p.name }),
        57 => Body::Response(Response::DeviceShow { text: text(p) }),
        58 => Body::Request(Request::DeviceSet {
            name: &p.name,
            settings: text(p),
        }),
        59 => Body::Response(Response::DeviceSet),
        60 => Body::Request(Request::DeviceDelete {
            name: &p.name,
            dirty_lines: p.flag.then_some(p.a),
        }),
        61 => Body::Response(Response::DeviceDelete),
        62 => Body::Request(Request::VssdCreate {
            name: &p.name,
            device: &p.name2,
            line_size: 1 << p.pow2_shift,
            lines: p.a.max(1),
            log_bytes: p.b,
            config: if p.flag { text(p) } else { "" },
        }),
        63 => Body::Response(Response::VssdCreate),
        64 => Body::Request(Request::DeviceTakeover { name: &p.name }),
        65 => Body::Response(Response::DeviceTakeover {
            epoch: p.a,
            committed: p.b,
            aborted: p.count,
            repaired: p.offset,
        }),
        _ => panic!("kind {kind} out of range"),
    };
    let tag = if kind == 48 {
        rpc::limits::TAG_NONE
    } else {
        p.tag
    };
    Message { tag, body }
}

/// A frame with any header fields and payload: the header CRC and payload CRC are
/// computed, nothing else is checked. For crafting bad input.
pub fn forge(header: Header, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        payload_len: payload.len() as u32,
        payload_crc: payload_crc(payload),
        ..header
    };
    let mut v = header.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A request header of `msg_type` with zero fields, for `forge`.
pub fn request_header(msg_type: MsgType) -> Header {
    Header {
        version: 1,
        msg_type,
        response: false,
        status: Status::Ok,
        tag: 42,
        handle: 0,
        offset: 0,
        length: 0,
        payload_len: 0,
        payload_crc: 0,
    }
}

/// The same, as a response with `status`.
pub fn response_header(msg_type: MsgType, status: Status) -> Header {
    Header {
        response: true,
        status,
        ..request_header(msg_type)
    }
}

pub mod route;

/// A configuration text (1.. bytes of UTF-8): the reason, or a name when it is empty.
fn text(p: &Parts) -> &str {
    if p.reason.is_empty() {
        &p.name2
    } else {
        &p.reason
    }
}
