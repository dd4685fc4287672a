//! Sessions over real loopback sockets (PROTOCOL.md "Session" and "Bad input"): what
//! the server does with every bad input, the HELLO rules (sequence, versions,
//! authentication), the session limit, and the pipelined client (many callers,
//! timeouts, a connection that fails under waiting calls).
//!
//! Clients are either the rpc `Client` in a taskio runtime on the test thread, or raw
//! `std::net::TcpStream`s writing hand-made frames; a few client tests put a scripted
//! fake server on the other end. The server runs in-process: a panic hook records any
//! panic on its threads (they are named "rpc-..."), and after every input that ends a
//! session a fresh client must be served by the same server, whose `sessions_max` is
//! small, so a session thread that did not end, or died, shows as a refusal.
//!
//! Nothing here sleeps to wait for the server: the test thread waits on protocol
//! frames, closed sockets, or counters the test service keeps, each under a bound.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream as StdStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

use common::{forge, request_header, response_header};
use rpc::limits::{DATA_LEN_MAX, HEADER_LEN, NONCE_LEN, PAYLOAD_LEN_MAX, PROOF_LEN, TAG_NONE};
use rpc::{
    Body, Client, ClientConfig, Header, Hello, HelloReply, Message, MsgType, Request, Response,
    RpcError, Server, ServerConfig, Service, SessionInfo, Status, auth, decode_header,
    decode_payload, encode_frame, forge as f,
};
use taskio::rand::Rng;
use taskio::{Config, IoConfig, Runtime, spawn};

/// Bound of any single wait of the test on a socket (read or write).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a freed session slot may take to serve a new client.
const SERVED_WITHIN: Duration = Duration::from_secs(5);
/// Longest a gated request waits for its gate (so a failing test cannot hang).
const GATE_WAIT_MAX: Duration = Duration::from_secs(5);
/// PING payloads starting with this wait at the service's gate.
const GATED: &[u8] = b"gate";
/// The frame timeout of servers in the stall tests.
const FRAME_TIMEOUT_SHORT: Duration = Duration::from_millis(200);

const SECRET: &[u8] = b"0123456789abcdef-the-secret";
const SECRET_WRONG: &[u8] = b"0123456789abcdef-not-the-secret";

// ---- the server side: a test service and its counters ---------------------------

/// What the test service tells the test (shared by every session of one server).
#[derive(Default)]
struct Shared {
    gate_open: AtomicBool,
    /// Requests that reached the gate.
    gated: AtomicUsize,
    /// Requests the service was asked to execute (any type).
    executed: AtomicUsize,
    writes: AtomicUsize,
}

impl Shared {
    fn open_gate(&self) {
        self.gate_open.store(true, Ordering::Release);
    }
}

/// The byte at device offset `pos` of the test service's imaginary device: WRITE
/// data must match it, READ returns it.
fn pattern(pos: u64) -> u8 {
    ((pos ^ (pos >> 9)).wrapping_mul(0x9E37_79B9) >> 11) as u8
}

/// PING echoes (waiting at the gate first when its data starts with GATED); WRITE
/// checks its data against `pattern`; READ answers `pattern`; the rest is
/// NOT_SUPPORTED.
struct TestService(Arc<Shared>);

impl TestService {
    fn wait_at_gate(&self) {
        self.0.gated.fetch_add(1, Ordering::AcqRel);
        let start = Instant::now();
        while !self.0.gate_open.load(Ordering::Acquire) && start.elapsed() < GATE_WAIT_MAX {
            taskio::sleep(Duration::from_millis(2));
        }
    }
}

impl Service for TestService {
    fn handle<'s>(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        self.0.executed.fetch_add(1, Ordering::AcqRel);
        match request {
            Request::Ping { data } => {
                if data.starts_with(GATED) {
                    self.wait_at_gate();
                }
                scratch.clear();
                scratch.extend_from_slice(data);
                Response::Ping { data: scratch }
            }
            Request::Write { offset, data, .. } => {
                self.0.writes.fetch_add(1, Ordering::AcqRel);
                let sound = (0u64..).zip(data).all(|(i, &b)| b == pattern(offset + i));
                if sound {
                    Response::Write
                } else {
                    Response::Error {
                        msg_type: MsgType::Write,
                        status: Status::InvalidArgument,
                        reason: "WRITE data does not match its offset's pattern",
                    }
                }
            }
            Request::Read { offset, length, .. } => {
                scratch.clear();
                scratch.extend((0..u64::from(length)).map(|i| pattern(offset + i)));
                Response::Read { data: scratch }
            }
            other => Response::Error {
                msg_type: other.msg_type(),
                status: Status::NotSupported,
                reason: "the test service serves PING, READ and WRITE",
            },
        }
    }
}

/// Panics seen on server threads, with the thread's name.
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if name.starts_with("rpc-") {
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{name}: {info}"));
            }
            previous(info);
        }));
    });
}

#[track_caller]
fn assert_no_server_panic() {
    let panics = SERVER_PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(panics.is_empty(), "server threads panicked: {panics:#?}");
}

/// Starts a server on 127.0.0.1:0 with the test service; `tune` adjusts its config.
fn start(tune: impl FnOnce(&mut ServerConfig)) -> (Server, Arc<Shared>) {
    watch_server_panics();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    tune(&mut config);
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let server = Server::start(config, move || TestService(s.clone())).unwrap();
    (server, shared)
}

/// Stops a server, checking that it does so within a bound and that its threads
/// never panicked.
#[track_caller]
fn stop(server: Server) {
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < IO_TIMEOUT, "stop took {:?}", t.elapsed());
    assert_no_server_panic();
}

// ---- frames by hand -----------------------------------------------------------

fn frame_of(msg: &Message<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(1, msg, &mut v).unwrap();
    v
}

fn request_frame(tag: u64, request: Request<'_>) -> Vec<u8> {
    frame_of(&Message {
        tag,
        body: Body::Request(request),
    })
}

fn ping_frame(tag: u64, data: &[u8]) -> Vec<u8> {
    request_frame(tag, Request::Ping { data })
}

fn hello_frame(
    tag: u64,
    versions: (u16, u16),
    client_nonce: [u8; NONCE_LEN],
    proof: Option<[u8; PROOF_LEN]>,
    client_name: &str,
) -> Vec<u8> {
    request_frame(
        tag,
        Request::Hello(Hello {
            version_min: versions.0,
            version_max: versions.1,
            client_nonce,
            proof,
            client_name,
        }),
    )
}

fn hello_reply_frame(
    tag: u64,
    auth_required: bool,
    server_nonce: [u8; NONCE_LEN],
    proof: Option<[u8; PROOF_LEN]>,
) -> Vec<u8> {
    let reply = HelloReply {
        version: 1,
        queue_depth: 16,
        data_len_max: DATA_LEN_MAX,
        server_nonce,
        proof,
        server_name: "fake",
    };
    let body = if auth_required {
        Response::HelloAuthRequired(reply)
    } else {
        Response::Hello(reply)
    };
    frame_of(&Message {
        tag,
        body: Body::Response(body),
    })
}

/// The header of a whole frame, to forge fields in (`forge::set` reseals its CRC).
fn head(v: &mut [u8]) -> &mut [u8; HEADER_LEN] {
    v.first_chunk_mut::<HEADER_LEN>().unwrap()
}

/// A frame read off a socket: its checked header and its bytes.
struct Frame {
    header: Header,
    bytes: Vec<u8>,
}

impl Frame {
    #[track_caller]
    fn msg(&self) -> Message<'_> {
        decode_payload(&self.header, &self.bytes[HEADER_LEN..])
            .unwrap_or_else(|e| panic!("undecodable payload of {:?}: {e}", self.header))
    }

    /// The reason of an error response, for messages.
    fn reason(&self) -> String {
        match decode_payload(&self.header, &self.bytes[HEADER_LEN..]) {
            Ok(Message {
                body: Body::Response(Response::Error { reason, .. }),
                ..
            }) => reason.to_string(),
            _ => String::new(),
        }
    }
}

enum Next {
    Frame(Frame),
    /// EOF, or a reset, before the first byte of a frame.
    Closed,
}

/// One end of a connection driven by hand: a raw client, or a fake server's side.
struct Raw {
    s: StdStream,
}

/// What a raw HELLO got back.
struct Opened {
    version: u16,
    queue_depth: u32,
}

impl Raw {
    fn new(s: StdStream) -> Raw {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s }
    }

    fn connect(addr: SocketAddr) -> Raw {
        Raw::new(StdStream::connect(addr).unwrap())
    }

    /// Connects and says HELLO (no secret); the server must answer OK.
    #[track_caller]
    fn open(addr: SocketAddr) -> (Raw, Opened) {
        let mut raw = Raw::connect(addr);
        let opened = raw.hello().unwrap_or_else(|e| panic!("HELLO refused: {e}"));
        (raw, opened)
    }

    fn hello(&mut self) -> Result<Opened, String> {
        self.try_send(&hello_frame(1, (1, 1), [3; NONCE_LEN], None, "raw"))?;
        let f = match self.try_next()? {
            Next::Frame(f) => f,
            Next::Closed => return Err("closed instead of answering HELLO".into()),
        };
        match f.msg().body {
            Body::Response(Response::Hello(r)) => Ok(Opened {
                version: r.version,
                queue_depth: r.queue_depth,
            }),
            _ => Err(format!("{} ({})", f.header.status, f.reason())),
        }
    }

    fn try_send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.s.write_all(bytes).map_err(|e| format!("write: {e}"))
    }

    #[track_caller]
    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn try_next(&mut self) -> Result<Next, String> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.s.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(Next::Closed),
                Ok(0) => return Err(format!("closed mid-header ({got} of {HEADER_LEN})")),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset && got == 0 => {
                    return Ok(Next::Closed);
                }
                Err(e) => return Err(format!("read (after {IO_TIMEOUT:?} at most): {e}")),
            }
        }
        let header = decode_header(&head).map_err(|e| format!("bad header from the peer: {e}"))?;
        let mut bytes = head.to_vec();
        bytes.resize(HEADER_LEN + header.payload_len as usize, 0);
        self.s
            .read_exact(&mut bytes[HEADER_LEN..])
            .map_err(|e| format!("read payload: {e}"))?;
        Ok(Next::Frame(Frame { header, bytes }))
    }

    #[track_caller]
    fn next(&mut self) -> Next {
        self.try_next().unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn frame(&mut self) -> Frame {
        match self.next() {
            Next::Frame(f) => f,
            Next::Closed => panic!("the connection closed where a frame was due"),
        }
    }

    #[track_caller]
    fn expect_closed(&mut self) {
        if let Next::Frame(f) = self.next() {
            panic!(
                "a frame where a close was due: {:?} ({})",
                f.header,
                f.reason()
            );
        }
    }

    /// The server closes; before, it may send one ERROR(TAG_NONE) frame, whose
    /// status is returned.
    #[track_caller]
    fn expect_closed_maybe_after_error(&mut self) -> Option<Status> {
        match self.next() {
            Next::Closed => None,
            Next::Frame(f) => {
                assert_eq!(f.header.tag, TAG_NONE, "{:?} ({})", f.header, f.reason());
                assert_eq!(f.header.msg_type, MsgType::Error, "{:?}", f.header);
                self.expect_closed();
                Some(f.header.status)
            }
        }
    }

    /// ERROR(TAG_NONE, status) about the connection, then the close.
    #[track_caller]
    fn expect_connection_error(&mut self, status: Status) {
        let f = self.frame();
        assert_eq!(f.header.tag, TAG_NONE, "{:?} ({})", f.header, f.reason());
        assert_eq!(f.header.msg_type, MsgType::Error, "{:?}", f.header);
        assert_eq!(f.header.status, status, "reason: {}", f.reason());
        self.expect_closed();
    }

    /// The answer to request `tag`: an error response with `status` and `msg_type`.
    #[track_caller]
    fn expect_answer(&mut self, tag: u64, msg_type: MsgType, status: Status) {
        let f = self.frame();
        assert_eq!(f.header.tag, tag, "{:?} ({})", f.header, f.reason());
        assert!(f.header.response, "{:?}", f.header);
        assert_eq!(f.header.status, status, "tag {tag}: reason {}", f.reason());
        assert_eq!(f.header.msg_type, msg_type, "tag {tag}: {:?}", f.header);
    }

    /// A PING on an open session is echoed.
    #[track_caller]
    fn ping(&mut self, tag: u64, data: &[u8]) {
        self.send(&ping_frame(tag, data));
        let f = self.frame();
        assert_eq!(f.header.tag, tag, "{:?} ({})", f.header, f.reason());
        assert_eq!(f.header.status, Status::Ok, "{}", f.reason());
        match f.msg().body {
            Body::Response(Response::Ping { data: back }) => assert_eq!(back, data),
            other => panic!("PING answered {other:?}"),
        }
    }
}

/// A session opened with HELLO within SERVED_WITHIN; refusals (BUSY while the
/// last session is still ending, on a server at its session limit) are retried.
#[track_caller]
fn open_when_free(addr: SocketAddr) -> Raw {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < SERVED_WITHIN {
        let mut raw = Raw::connect(addr);
        match raw.hello() {
            Ok(_) => return raw,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no new client served within {SERVED_WITHIN:?}; last refusal: {last}");
}

/// A new client is served (HELLO, then a PING echoed) within SERVED_WITHIN.
#[track_caller]
fn assert_served(addr: SocketAddr) {
    open_when_free(addr).ping(9, b"probe");
    assert_no_server_panic();
}

/// A fake server: accepts one connection on its own thread and runs `script`.
fn fake_server(script: impl FnOnce(Raw) + Send + 'static) -> (SocketAddr, ThreadHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        script(Raw::new(s));
    });
    (addr, t)
}

/// The fake server's side of a HELLO without a secret; returns the client's nonce.
#[track_caller]
fn fake_hello(raw: &mut Raw) -> [u8; NONCE_LEN] {
    let f = raw.frame();
    let Body::Request(Request::Hello(h)) = f.msg().body else {
        panic!("not a HELLO: {:?}", f.header);
    };
    raw.send(&hello_reply_frame(
        f.header.tag,
        false,
        [7; NONCE_LEN],
        None,
    ));
    h.client_nonce
}

/// Tags of the next `n` requests the fake server reads.
#[track_caller]
fn fake_read_requests(raw: &mut Raw, n: usize) -> Vec<u64> {
    (0..n).map(|_| raw.frame().header.tag).collect()
}

fn in_runtime<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    match rt.run(main) {
        Ok(v) => v,
        Err(e) => panic!("client runtime: {e}"),
    }
}

/// Inside a runtime: waits (bounded) until `cond` holds.
#[track_caller]
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < IO_TIMEOUT,
            "waited {IO_TIMEOUT:?} for {what}"
        );
        taskio::sleep(Duration::from_millis(1));
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        call_timeout: IO_TIMEOUT,
        ..ClientConfig::default()
    }
}

#[track_caller]
fn expect_echo(client: &Client, data: &[u8]) {
    let r = client.call(Request::Ping { data }).unwrap();
    match r.response().unwrap() {
        Response::Ping { data: back } => assert_eq!(back, data),
        other => panic!("PING answered {other:?}"),
    }
}

// ---- bad input that closes the session ----------------------------------------

/// On an open session (sessions_max 1), `bytes` gets ERROR(TAG_NONE, status) and a
/// closed connection, nothing executed; then a new client is served.
#[track_caller]
fn closes_with(bytes: &[u8], status: Status) {
    let (server, shared) = start(|c| c.sessions_max = 1);
    let addr = server.local_addr();
    let (mut raw, _) = Raw::open(addr);
    raw.ping(2, b"before");
    raw.send(bytes);
    raw.expect_connection_error(status);
    assert_served(addr);
    assert_eq!(
        shared.executed.load(Ordering::Acquire),
        2,
        "only the PINGs ran"
    );
    stop(server);
}

#[test]
fn bad_magic_closes_with_bad_magic() {
    let mut v = ping_frame(5, b"");
    f::set(head(&mut v), f::MAGIC_AT, b"HTTP");
    closes_with(&v, Status::BadMagic);
}

#[test]
fn unknown_version_closes_with_bad_version() {
    for version in [0u16, 2, u16::MAX] {
        let mut v = ping_frame(5, b"");
        f::set(head(&mut v), f::VERSION_AT, &version.to_le_bytes());
        closes_with(&v, Status::BadVersion);
    }
}

#[test]
fn header_crc_mismatch_closes_with_bad_header_crc() {
    let mut v = ping_frame(5, b"");
    v[30] ^= 0x01; // in the handle, after the CRC was computed
    closes_with(&v, Status::BadHeaderCrc);
}

#[test]
fn request_tag_none_closes_with_invalid_argument() {
    let mut v = ping_frame(5, b"");
    f::set(head(&mut v), f::TAG_AT, &TAG_NONE.to_le_bytes());
    closes_with(&v, Status::InvalidArgument);
}

/// A payload_len over PAYLOAD_LEN_MAX (up to a 4 GiB claim) is refused from the
/// header alone: the server neither waits for nor allocates the payload, which is
/// never sent here; it answers at once and closes.
#[test]
fn payload_len_over_the_global_limit_closes_at_once_without_reading_it() {
    for claim in [u32::MAX, PAYLOAD_LEN_MAX + 1] {
        let mut v = request_frame(
            5,
            Request::Write {
                handle: 1,
                offset: 0,
                data: &[0; 8],
            },
        );
        v.truncate(HEADER_LEN);
        f::set(head(&mut v), f::PAYLOAD_LEN_AT, &claim.to_le_bytes());
        let t = Instant::now();
        closes_with(&v, Status::TooLarge);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
}

/// A peer that closes inside a header or inside a payload: the session ends (the
/// server may send an ERROR first, nobody reads it), nothing runs, the server goes
/// on.
#[test]
fn a_truncated_frame_ends_the_session_and_the_server_goes_on() {
    let (server, shared) = start(|c| c.sessions_max = 1);
    let addr = server.local_addr();
    let write = request_frame(
        5,
        Request::Write {
            handle: 1,
            offset: 0,
            data: &(0..4096).map(pattern).collect::<Vec<u8>>(),
        },
    );
    for cut in [
        1,
        20,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 100,
        write.len() - 1,
    ] {
        let mut raw = open_when_free(addr);
        raw.send(&write[..cut]);
        raw.s.shutdown(Shutdown::Write).unwrap();
        raw.expect_closed_maybe_after_error();
        assert_served(addr);
    }
    assert_eq!(shared.writes.load(Ordering::Acquire), 0);
    stop(server);
}

// ---- a peer that stalls ---------------------------------------------------------

/// Half a header, then silence: the server closes after its frame timeout, not
/// before and not much later, while serving other clients meanwhile; the same for a
/// payload cut short.
#[test]
fn a_stalled_frame_is_closed_after_the_frame_timeout_and_others_are_served() {
    let (server, _) = start(|c| {
        c.sessions_max = 2;
        c.frame_timeout = FRAME_TIMEOUT_SHORT;
    });
    let addr = server.local_addr();
    let write = request_frame(
        5,
        Request::Write {
            handle: 1,
            offset: 0,
            data: &(0..4096).map(pattern).collect::<Vec<u8>>(),
        },
    );
    for cut in [20, HEADER_LEN + 100] {
        let mut stalled = open_when_free(addr);
        let mut other = open_when_free(addr);
        stalled.send(&write[..cut]);
        let t = Instant::now();
        // Served while the other session waits for the rest of its frame.
        other.ping(3, b"while the other one stalls");
        drop(other);
        stalled.expect_closed_maybe_after_error();
        let took = t.elapsed();
        assert!(
            took >= FRAME_TIMEOUT_SHORT - Duration::from_millis(50),
            "cut {cut}: closed after {took:?}, before the frame timeout"
        );
        assert!(
            took < Duration::from_secs(3),
            "cut {cut}: closed after {took:?}"
        );
        assert_served(addr);
    }
    stop(server);
}

/// PROTOCOL.md, Bad input: "half a frame, then silence | TIMEOUT | close after the
/// frame timeout", and "Close" sends ERROR(TAG_NONE, status) first when the socket
/// still takes it, which a stalled peer's does.
#[test]
fn a_stalled_frame_is_told_timeout_before_the_close() {
    let (server, _) = start(|c| c.frame_timeout = FRAME_TIMEOUT_SHORT);
    let (mut raw, _) = Raw::open(server.local_addr());
    raw.send(&ping_frame(5, b"stall")[..20]);
    raw.expect_connection_error(Status::Timeout);
    stop(server);
}

/// A header trickled a byte at a time, each within the frame timeout of the last
/// but the whole much slower: the frame timeout bounds the whole frame.
#[test]
fn a_trickled_header_is_bounded_by_the_frame_timeout() {
    let (server, _) = start(|c| {
        c.sessions_max = 1;
        c.frame_timeout = FRAME_TIMEOUT_SHORT;
    });
    let addr = server.local_addr();
    let (mut raw, _) = Raw::open(addr);
    let mut w = raw.s.try_clone().unwrap();
    let frame = ping_frame(5, b"trickle");
    let pace = Duration::from_millis(40); // the attacker's pace, not synchronisation
    let t = Instant::now();
    let trickler = std::thread::spawn(move || {
        for b in frame {
            if w.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(pace);
        }
    });
    raw.expect_closed_maybe_after_error();
    let took = t.elapsed();
    trickler.join().unwrap();
    assert!(
        took < Duration::from_millis(1500),
        "closed after {took:?}; the trickle takes {:?}",
        pace * HEADER_LEN as u32
    );
    assert_served(addr);
    stop(server);
}

// ---- bad input that is answered -------------------------------------------------

/// Every bad input the server answers under the request's tag, one after the other
/// on one session: the status, the type of the answer, nothing executed, and the
/// session goes on (a PING after each).
#[test]
fn answerable_bad_input_gets_its_status_under_its_tag_and_the_session_goes_on() {
    let (server, shared) = start(|c| c.sessions_max = 1);
    let (mut raw, _) = Raw::open(server.local_addr());
    let tagged = |tag: u64, h: Header| Header { tag, ..h };
    let write = |tag: u64| {
        request_frame(
            tag,
            Request::Write {
                handle: 1,
                offset: 0,
                data: &[pattern(0), pattern(1), pattern(2), pattern(3)],
            },
        )
    };
    let mut cases: Vec<(&str, Vec<u8>, MsgType, Status)> = Vec::new();
    // Unknown type, with a payload the server must skip.
    let mut v = forge(tagged(101, request_header(MsgType::Ping)), &[1; 10]);
    f::set(head(&mut v), f::TYPE_AT, &0x00FFu16.to_le_bytes());
    cases.push(("unknown type", v, MsgType::Error, Status::BadType));
    let v = forge(tagged(102, request_header(MsgType::Error)), b"");
    cases.push(("ERROR as a request", v, MsgType::Error, Status::BadType));
    let mut v = ping_frame(103, b"flags");
    f::set(head(&mut v), f::FLAGS_AT, &0x0002u16.to_le_bytes());
    cases.push(("reserved flag", v, MsgType::Ping, Status::BadFlags));
    let mut v = ping_frame(104, b"status");
    f::set(head(&mut v), f::STATUS_AT, &12u16.to_le_bytes());
    cases.push(("request status", v, MsgType::Ping, Status::InvalidArgument));
    let mut v = ping_frame(105, b"reserved");
    f::set(head(&mut v), f::RESERVED_AT, &1u32.to_le_bytes());
    cases.push(("header reserved", v, MsgType::Ping, Status::InvalidArgument));
    let v = forge(tagged(106, request_header(MsgType::Ping)), &[7; 5000]);
    cases.push(("PING over its limit", v, MsgType::Ping, Status::TooLarge));
    let big = vec![0; DATA_LEN_MAX as usize + 8];
    let h = Header {
        handle: 1,
        length: DATA_LEN_MAX + 8,
        ..tagged(107, request_header(MsgType::Write))
    };
    cases.push((
        "WRITE over DATA_LEN_MAX",
        forge(h, &big),
        MsgType::Write,
        Status::TooLarge,
    ));
    let mut v = write(108);
    let last = v.len() - 1;
    v[last] ^= 0x01;
    cases.push(("payload CRC", v, MsgType::Write, Status::BadPayloadCrc));
    let h = Header {
        handle: 1,
        length: 9,
        ..tagged(109, request_header(MsgType::Write))
    };
    cases.push((
        "WRITE length",
        forge(h, &[0; 8]),
        MsgType::Write,
        Status::BadLength,
    ));
    let h = Header {
        offset: 5,
        ..tagged(110, request_header(MsgType::Ping))
    };
    cases.push((
        "PING offset",
        forge(h, b""),
        MsgType::Ping,
        Status::InvalidArgument,
    ));
    let h = Header {
        length: 16,
        ..tagged(111, request_header(MsgType::Read))
    };
    cases.push((
        "READ handle 0",
        forge(h, b""),
        MsgType::Read,
        Status::InvalidArgument,
    ));
    let h = Header {
        handle: 1,
        ..tagged(112, request_header(MsgType::Flush))
    };
    cases.push((
        "not served",
        forge(h, b""),
        MsgType::Flush,
        Status::NotSupported,
    ));

    for (i, (what, bytes, msg_type, status)) in cases.iter().enumerate() {
        raw.send(bytes);
        let tag = 101 + i as u64;
        let f = raw.frame();
        assert_eq!(f.header.tag, tag, "{what}: {:?} ({})", f.header, f.reason());
        assert_eq!(f.header.status, *status, "{what}: {}", f.reason());
        assert_eq!(f.header.msg_type, *msg_type, "{what}: {:?}", f.header);
        assert!(!f.reason().is_empty(), "{what}: an error says why");
        raw.ping(1000 + i as u64, what.as_bytes());
    }
    raw.send(&write(200));
    raw.expect_answer(200, MsgType::Write, Status::Ok);
    // Only NOT_SUPPORTED's FLUSH, the PINGs and the last WRITE reached the service.
    let executed = shared.executed.load(Ordering::Acquire);
    assert_eq!(
        executed,
        1 + cases.len() + 1,
        "requests the service executed"
    );
    assert_eq!(shared.writes.load(Ordering::Acquire), 1);
    stop(server);
}

/// PROTOCOL.md: "a response (RESPONSE flag) sent to a server | BAD_FLAGS | answer".
#[test]
fn a_response_sent_to_the_server_is_answered_bad_flags() {
    let (server, shared) = start(|_| {});
    let (mut raw, _) = Raw::open(server.local_addr());
    let h = Header {
        tag: 77,
        ..response_header(MsgType::Ping, Status::Ok)
    };
    raw.send(&forge(h, b"pong"));
    raw.expect_answer(77, MsgType::Ping, Status::BadFlags);
    raw.ping(78, b"after");
    assert_eq!(shared.executed.load(Ordering::Acquire), 1);
    stop(server);
}

/// PROTOCOL.md: HELLO failures include "BAD_SEQUENCE (a HELLO after the session is
/// open)", and BAD_SEQUENCE's connection "goes on".
#[test]
fn a_second_hello_is_answered_bad_sequence_and_the_session_goes_on() {
    let (server, _) = start(|_| {});
    let (mut raw, _) = Raw::open(server.local_addr());
    raw.send(&hello_frame(77, (1, 1), [4; NONCE_LEN], None, "again"));
    raw.expect_answer(77, MsgType::Hello, Status::BadSequence);
    raw.ping(78, b"after");
    stop(server);
}

// ---- a flood beyond the queue depth ----------------------------------------------

/// 4 x queue_depth PINGs pipelined without reading, while the service holds every
/// request it gets at a gate: the first queue_depth are executed once the gate
/// opens; each later one is answered BUSY under its tag at once, never executed.
#[test]
fn a_flood_beyond_the_queue_depth_is_answered_busy_under_each_tag() {
    let depth = 8u32;
    let (server, shared) = start(|c| c.queue_depth = depth);
    let (mut raw, opened) = Raw::open(server.local_addr());
    assert_eq!(opened.queue_depth, depth);
    let n = 4 * u64::from(depth);
    let data = |i: u64| format!("gate {i:03} and some payload to skip");
    let burst: Vec<u8> = (0..n)
        .flat_map(|i| ping_frame(100 + i, data(i).as_bytes()))
        .collect();
    raw.send(&burst);
    // Nothing held at the gate can answer, so the BUSY answers come first, in order.
    for i in u64::from(depth)..n {
        raw.expect_answer(100 + i, MsgType::Ping, Status::Busy);
    }
    assert!(shared.executed.load(Ordering::Acquire) <= depth as usize);
    shared.open_gate();
    let mut tags = BTreeSet::new();
    for _ in 0..depth {
        let f = raw.frame();
        assert_eq!(
            f.header.status,
            Status::Ok,
            "{:?} ({})",
            f.header,
            f.reason()
        );
        let i = f.header.tag - 100;
        match f.msg().body {
            Body::Response(Response::Ping { data: back }) => assert_eq!(back, data(i).as_bytes()),
            other => panic!("{other:?}"),
        }
        tags.insert(i);
    }
    assert_eq!(tags, (0..u64::from(depth)).collect::<BTreeSet<_>>());
    raw.ping(1, b"after the flood");
    assert_eq!(shared.executed.load(Ordering::Acquire), depth as usize + 1);
    stop(server);
}

/// A client that pipelines requests and never reads the answers fills the socket
/// buffers both ways; the server must not hold the session (and its thread) for
/// ever: within a bound it drops the connection and serves someone else.
#[test]
fn a_flooding_client_that_never_reads_does_not_hold_its_session_for_ever() {
    let (server, _) = start(|c| {
        c.sessions_max = 1;
        c.frame_timeout = FRAME_TIMEOUT_SHORT;
        c.idle_timeout = Duration::from_secs(1);
    });
    let addr = server.local_addr();
    let (mut flood, _) = Raw::open(addr);
    flood
        .s
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Small READs with 64 KiB answers: the answers soon have nowhere to go.
    let read = Request::Read {
        handle: 1,
        offset: 0,
        length: 64 * 1024,
    };
    let burst: Vec<u8> = (0..256)
        .flat_map(|tag| request_frame(tag, read.clone()))
        .collect();
    let t = Instant::now();
    // Until the server stops reading.
    while flood.s.write_all(&burst).is_ok() {
        assert!(
            t.elapsed() < IO_TIMEOUT,
            "the server read {IO_TIMEOUT:?} of flood"
        );
    }
    assert_served(addr);
    drop(flood);
    stop(server);
}

// ---- HELLO: sequence, versions, authentication ---------------------------------

#[test]
fn hello_picks_the_highest_common_version_and_tells_the_queue_depth() {
    let (server, _) = start(|c| c.queue_depth = 5);
    let mut raw = Raw::connect(server.local_addr());
    raw.send(&hello_frame(1, (1, 9), [1; NONCE_LEN], None, "future"));
    let f = raw.frame();
    match f.msg().body {
        Body::Response(Response::Hello(r)) => {
            assert_eq!(r.version, 1);
            assert_eq!(r.queue_depth, 5);
            assert_eq!(r.proof, None);
        }
        other => panic!("{other:?}"),
    }
    raw.ping(2, b"v1");
    let (_, opened) = Raw::open(server.local_addr());
    assert_eq!(opened.version, 1);
    stop(server);
}

#[test]
fn hello_without_a_common_version_gets_bad_version_and_close() {
    let (server, shared) = start(|c| c.sessions_max = 1);
    let addr = server.local_addr();
    let mut raw = Raw::connect(addr);
    raw.send(&hello_frame(6, (2, 3), [1; NONCE_LEN], None, "future-only"));
    raw.expect_answer(6, MsgType::Hello, Status::BadVersion);
    raw.expect_closed();
    assert_served(addr);
    assert_eq!(
        shared.executed.load(Ordering::Acquire),
        1,
        "only the probe ran"
    );
    stop(server);
}

/// PROTOCOL.md: "any request before HELLO succeeded | AUTH_REQUIRED | close".
#[test]
fn a_request_before_hello_is_refused_with_auth_required_and_close() {
    let (server, shared) = start(|c| c.sessions_max = 1);
    let addr = server.local_addr();
    let mut raw = Raw::connect(addr);
    raw.send(&ping_frame(5, b"too early"));
    let f = raw.frame();
    assert_eq!(f.header.tag, TAG_NONE, "answered the PING: {:?}", f.header);
    raw.expect_closed();
    assert_eq!(shared.executed.load(Ordering::Acquire), 0);
    assert_served(addr);
    assert_eq!(
        f.header.status,
        Status::AuthRequired,
        "reason: {}",
        f.reason()
    );
    stop(server);
}

/// A first frame with bad magic (say, an HTTP client at the port) closes like
/// any bad magic: ERROR(TAG_NONE, BAD_MAGIC), then the close.
#[test]
fn bad_magic_before_hello_closes_with_bad_magic() {
    let (server, _) = start(|c| c.sessions_max = 1);
    let addr = server.local_addr();
    let mut raw = Raw::connect(addr);
    let mut v = hello_frame(1, (1, 1), [1; NONCE_LEN], None, "http");
    v.truncate(HEADER_LEN);
    v[..4].copy_from_slice(b"GET ");
    raw.send(&v);
    raw.expect_connection_error(Status::BadMagic);
    assert_served(addr);
    stop(server);
}

fn secret_server() -> (Server, Arc<Shared>) {
    start(|c| {
        c.sessions_max = 2;
        c.secret = Some(SECRET.to_vec());
    })
}

/// The server's nonce from an AUTH_REQUIRED answer to a HELLO without a proof.
#[track_caller]
fn expect_auth_required(raw: &mut Raw, tag: u64) -> [u8; NONCE_LEN] {
    raw.send(&hello_frame(tag, (1, 1), [1; NONCE_LEN], None, "raw"));
    let f = raw.frame();
    assert_eq!(f.header.tag, tag);
    assert_eq!(f.header.status, Status::AuthRequired, "{}", f.reason());
    match f.msg().body {
        Body::Response(Response::HelloAuthRequired(r)) => {
            assert_ne!(r.server_nonce, [0; NONCE_LEN]);
            r.server_nonce
        }
        other => panic!("{other:?}"),
    }
}

/// Without the secret a client gets the challenge and nothing else: its PING is
/// not answered but refused with AUTH_REQUIRED, and the connection closes.
#[test]
fn without_the_secret_a_client_gets_nothing_but_a_refusal() {
    let (server, shared) = secret_server();
    let addr = server.local_addr();
    let mut raw = Raw::connect(addr);
    expect_auth_required(&mut raw, 1);
    raw.send(&ping_frame(2, b"let me in"));
    let f = raw.frame();
    assert_eq!(f.header.tag, TAG_NONE, "answered the PING: {:?}", f.header);
    raw.expect_closed();
    let e = in_runtime(move || Client::connect(addr, &client_config()).err())
        .expect("a client without the secret is refused");
    assert!(
        matches!(
            e,
            RpcError::Refused {
                status: Status::AuthRequired,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(shared.executed.load(Ordering::Acquire), 0);
    assert_eq!(
        f.header.status,
        Status::AuthRequired,
        "reason: {}",
        f.reason()
    );
    stop(server);
}

#[test]
fn a_wrong_secret_gets_auth_failed_and_close() {
    let (server, shared) = secret_server();
    let addr = server.local_addr();
    let mut raw = Raw::connect(addr);
    let server_nonce = expect_auth_required(&mut raw, 1);
    let client_nonce = [9; NONCE_LEN];
    let proof = auth::prove(SECRET_WRONG, &server_nonce, &client_nonce, "raw");
    raw.send(&hello_frame(2, (1, 1), client_nonce, Some(proof), "raw"));
    raw.expect_answer(2, MsgType::Hello, Status::AuthFailed);
    raw.expect_closed();
    let e = in_runtime(move || {
        let wrong = ClientConfig {
            secret: Some(SECRET_WRONG.to_vec()),
            ..client_config()
        };
        Client::connect(addr, &wrong).err()
    })
    .expect("a wrong secret is refused");
    assert!(
        matches!(
            e,
            RpcError::Refused {
                status: Status::AuthFailed,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(shared.executed.load(Ordering::Acquire), 0);
    stop(server);
}

/// A proof made for another connection's server nonce does not open this one.
#[test]
fn a_replayed_hello_proof_is_refused() {
    let (server, _) = secret_server();
    let addr = server.local_addr();
    let client_nonce = [9; NONCE_LEN];
    let mut first = Raw::connect(addr);
    let nonce1 = expect_auth_required(&mut first, 1);
    let proof = auth::prove(SECRET, &nonce1, &client_nonce, "raw");
    let second_hello = hello_frame(2, (1, 1), client_nonce, Some(proof), "raw");
    first.send(&second_hello);
    first.expect_answer(2, MsgType::Hello, Status::Ok);
    first.ping(3, b"authenticated");
    let mut replay = Raw::connect(addr);
    let nonce2 = expect_auth_required(&mut replay, 1);
    assert_ne!(nonce1, nonce2, "a server nonce is never reused");
    replay.send(&second_hello);
    replay.expect_answer(2, MsgType::Hello, Status::AuthFailed);
    replay.expect_closed();
    stop(server);
}

/// The right secret opens the session, and the server proves it holds it too.
#[test]
fn the_right_secret_opens_the_session_and_the_server_proves_it_too() {
    let (server, _) = secret_server();
    let addr = server.local_addr();
    let mut raw = Raw::connect(addr);
    let server_nonce = expect_auth_required(&mut raw, 1);
    let client_nonce = [9; NONCE_LEN];
    let proof = auth::prove(SECRET, &server_nonce, &client_nonce, "raw");
    raw.send(&hello_frame(2, (1, 1), client_nonce, Some(proof), "raw"));
    let f = raw.frame();
    assert_eq!(f.header.status, Status::Ok, "{}", f.reason());
    match f.msg().body {
        Body::Response(Response::Hello(r)) => {
            let p = r.proof.expect("the server's proof");
            auth::verify_server(SECRET, &server_nonce, &client_nonce, "raw", &p).unwrap();
        }
        other => panic!("{other:?}"),
    }
    raw.ping(3, b"in");
    in_runtime(move || {
        let right = ClientConfig {
            secret: Some(SECRET.to_vec()),
            ..client_config()
        };
        let c = Client::connect(addr, &right).unwrap();
        expect_echo(&c, b"with the secret");
    });
    stop(server);
}

/// A client with the secret refuses a server that cannot prove it: a wrong proof
/// after the challenge, or an OK with no proof at all (a server skipping the
/// challenge).
#[test]
fn the_client_refuses_a_server_that_cannot_prove_the_secret() {
    for skip_challenge in [false, true] {
        let (addr, fake) = fake_server(move |mut raw| {
            let f = raw.frame();
            if !skip_challenge {
                raw.send(&hello_reply_frame(f.header.tag, true, [5; NONCE_LEN], None));
                let f = raw.frame();
                let bogus = Some([0x5A; PROOF_LEN]);
                raw.send(&hello_reply_frame(
                    f.header.tag,
                    false,
                    [5; NONCE_LEN],
                    bogus,
                ));
            } else {
                raw.send(&hello_reply_frame(
                    f.header.tag,
                    false,
                    [5; NONCE_LEN],
                    None,
                ));
            }
            // The client closes without a request.
            raw.expect_closed();
        });
        let e = in_runtime(move || {
            let cfg = ClientConfig {
                secret: Some(SECRET.to_vec()),
                ..client_config()
            };
            Client::connect(addr, &cfg).err()
        })
        .expect("the client refuses the server");
        assert!(
            matches!(e, RpcError::AuthFailed { who: "server" }),
            "skip {skip_challenge}: {e}"
        );
        fake.join().unwrap();
    }
}

/// PROTOCOL.md, Authentication step 2: "The client sends a second HELLO with a fresh
/// `client_nonce` (32 random bytes)".
#[test]
fn the_client_sends_a_fresh_nonce_in_its_second_hello() {
    let nonces = Arc::new(Mutex::new(Vec::new()));
    let seen = nonces.clone();
    let (addr, fake) = fake_server(move |mut raw| {
        let server_nonce = [5; NONCE_LEN];
        for auth_required in [true, false] {
            let f = raw.frame();
            let Body::Request(Request::Hello(h)) = f.msg().body else {
                panic!("not a HELLO");
            };
            seen.lock().unwrap().push(h.client_nonce);
            let proof = (!auth_required)
                .then(|| auth::prove_server(SECRET, &server_nonce, &h.client_nonce, h.client_name));
            raw.send(&hello_reply_frame(
                f.header.tag,
                auth_required,
                server_nonce,
                proof,
            ));
        }
        raw.expect_closed();
    });
    in_runtime(move || {
        let cfg = ClientConfig {
            secret: Some(SECRET.to_vec()),
            ..client_config()
        };
        drop(Client::connect(addr, &cfg).unwrap());
    });
    fake.join().unwrap();
    let nonces = nonces.lock().unwrap();
    assert_eq!(nonces.len(), 2);
    assert_ne!(
        nonces[0], nonces[1],
        "the second HELLO reused the first one's nonce"
    );
}

// ---- the session limit -----------------------------------------------------------

/// sessions_max = 2: a third client gets ERROR(TAG_NONE, BUSY) and a close, the
/// rpc client a Refused(BUSY); once one of the two leaves, a new client is served.
#[test]
fn over_the_session_limit_a_client_is_refused_busy_until_one_leaves() {
    let (server, _) = start(|c| c.sessions_max = 2);
    let addr = server.local_addr();
    let (mut a, _) = Raw::open(addr);
    let (mut b, _) = Raw::open(addr);
    let mut third = Raw::connect(addr);
    third.expect_connection_error(Status::Busy);
    let e =
        in_runtime(move || Client::connect(addr, &client_config()).err()).expect("over the limit");
    assert!(
        matches!(
            e,
            RpcError::Refused {
                status: Status::Busy,
                ..
            }
        ),
        "{e}"
    );
    a.ping(2, b"a still served");
    b.ping(2, b"b still served");
    drop(a);
    assert_served(addr);
    b.ping(3, b"b still served");
    stop(server);
}

/// Sessions that end free their threads: 3 x sessions_max sessions one after the
/// other are all served, and then sessions_max at once.
#[test]
fn ended_sessions_free_their_threads() {
    let sessions_max = 2;
    let (server, shared) = start(|c| c.sessions_max = sessions_max);
    let addr = server.local_addr();
    in_runtime(move || {
        let connect = || {
            let start = Instant::now();
            loop {
                match Client::connect(addr, &client_config()) {
                    Ok(c) => return c,
                    Err(e) => assert!(start.elapsed() < SERVED_WITHIN, "not served: {e}"),
                }
                taskio::sleep(Duration::from_millis(10));
            }
        };
        for i in 0..3 * sessions_max {
            let c = connect();
            expect_echo(&c, format!("session {i}").as_bytes());
        }
        let all: Vec<Client> = (0..sessions_max).map(|_| connect()).collect();
        for c in &all {
            expect_echo(c, b"all at once");
        }
    });
    assert_eq!(shared.executed.load(Ordering::Acquire), 4 * sessions_max);
    stop(server);
}

// ---- the pipelined client ----------------------------------------------------------

/// 64 callers on one connection, each with its own mix of PINGs (0..=4096 bytes),
/// WRITEs (up to 64 KiB, checked by the service) and READs (up to 64 KiB, checked
/// here): every answer is its own request's.
#[test]
fn sixty_four_callers_with_mixed_sizes_get_their_own_answers() {
    const CALLERS: u64 = 64;
    const CALLS: u64 = 12;
    const IO_LEN_MAX: u64 = 64 * 1024;
    let (server, shared) = start(|_| {});
    let addr = server.local_addr();
    let writes = in_runtime(move || {
        let c = Rc::new(Client::connect(addr, &client_config()).unwrap());
        let writes = Rc::new(Cell::new(0usize));
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (c, writes) = (c.clone(), writes.clone());
                spawn(move || {
                    let mut rng = Rng::stream(0x5e55_1011, caller);
                    for call in 0..CALLS {
                        let offset = rng.below(1 << 30);
                        let len = rng.below(IO_LEN_MAX) + 1;
                        match rng.below(3) {
                            0 => {
                                let n = rng.below(4097) as usize;
                                let data: Vec<u8> =
                                    (0..n).map(|i| (caller + call + i as u64) as u8).collect();
                                expect_echo(&c, &data);
                            }
                            1 => {
                                let data: Vec<u8> = (0..len).map(|i| pattern(offset + i)).collect();
                                let r = c
                                    .call(Request::Write {
                                        handle: 1,
                                        offset,
                                        data: &data,
                                    })
                                    .unwrap();
                                assert_eq!(r.status(), Status::Ok, "caller {caller} call {call}");
                                assert!(matches!(r.response().unwrap(), Response::Write));
                                writes.set(writes.get() + 1);
                            }
                            _ => {
                                let r = c
                                    .call(Request::Read {
                                        handle: 1,
                                        offset,
                                        length: len as u32,
                                    })
                                    .unwrap();
                                let Response::Read { data } = r.response().unwrap() else {
                                    panic!("caller {caller} call {call}: {:?}", r.status());
                                };
                                assert_eq!(data.len() as u64, len);
                                let sound =
                                    (0u64..).zip(data).all(|(i, &b)| b == pattern(offset + i));
                                assert!(sound, "caller {caller} call {call}: READ data");
                            }
                        }
                    }
                })
                .unwrap()
            })
            .collect();
        for h in callers {
            h.join().unwrap();
        }
        writes.get()
    });
    assert_eq!(shared.writes.load(Ordering::Acquire), writes);
    assert_eq!(
        shared.executed.load(Ordering::Acquire),
        (CALLERS * CALLS) as usize
    );
    stop(server);
}

/// A call the server does not answer in time fails with TimedOut; the connection
/// goes on serving other calls, during the wait and after it (when the late answer
/// arrives and is dropped).
#[test]
fn a_call_without_an_answer_times_out_and_the_connection_goes_on() {
    let call_timeout = Duration::from_millis(200);
    let (server, shared) = start(|_| {});
    let addr = server.local_addr();
    let sh = shared.clone();
    in_runtime(move || {
        let cfg = ClientConfig {
            call_timeout,
            ..ClientConfig::default()
        };
        let c = Rc::new(Client::connect(addr, &cfg).unwrap());
        let c2 = c.clone();
        let slow = spawn(move || {
            let t = Instant::now();
            let r = c2.call(Request::Ping {
                data: b"gate: no answer in time",
            });
            (r.err(), t.elapsed())
        })
        .unwrap();
        // Other calls go on while that one waits.
        wait_until("the slow PING at the gate", || {
            sh.gated.load(Ordering::Acquire) == 1
        });
        expect_echo(&c, b"while it waits");
        let (e, took) = slow.join().unwrap();
        let e = e.expect("the call times out");
        assert!(
            matches!(
                e,
                RpcError::TimedOut {
                    msg_type: MsgType::Ping,
                    ..
                }
            ),
            "{e}"
        );
        assert!(took >= call_timeout, "timed out after {took:?}");
        assert!(took < call_timeout * 10, "timed out after {took:?}");
        expect_echo(&c, b"after the time-out");
        sh.open_gate();
        for i in 0..20 {
            expect_echo(&c, format!("after the late answer {i}").as_bytes());
        }
    });
    stop(server);
}

/// server.stop() under 8 waiting calls: each fails with an error within a bound,
/// and a later call fails at once.
#[test]
fn stopping_the_server_fails_every_waiting_call_and_later_calls_at_once() {
    const WAITING: usize = 8;
    let (server, shared) = start(|c| c.queue_depth = 16);
    let addr = server.local_addr();
    let sh = shared.clone();
    let stopper = in_runtime(move || {
        let c = Rc::new(Client::connect(addr, &client_config()).unwrap());
        let callers: Vec<_> = (0..WAITING)
            .map(|i| {
                let c = c.clone();
                spawn(move || {
                    let data = format!("gate {i}");
                    c.call(Request::Ping {
                        data: data.as_bytes(),
                    })
                    .err()
                })
                .unwrap()
            })
            .collect();
        wait_until("every call at the gate", || {
            sh.gated.load(Ordering::Acquire) == WAITING
        });
        let stopper = std::thread::spawn(move || stop(server));
        let t = Instant::now();
        for h in callers {
            let e = h
                .join()
                .unwrap()
                .expect("a call under a stopped server fails");
            assert!(
                matches!(e, RpcError::ConnectionLost { .. } | RpcError::Io { .. }),
                "{e}"
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "failed after {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let e = c
            .call(Request::Ping { data: b"later" })
            .err()
            .expect("a later call fails");
        assert!(matches!(e, RpcError::ConnectionLost { .. }), "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "took {:?}",
            t.elapsed()
        );
        sh.open_gate();
        stopper
    });
    stopper.join().unwrap();
}

/// A server that closes the socket under waiting calls, or says ERROR(TAG_NONE)
/// first: every waiting call fails (with the server's status when it said one),
/// later calls fail at once.
#[test]
fn a_server_closing_the_connection_fails_every_waiting_call() {
    const WAITING: usize = 6;
    for say_why in [false, true] {
        let (addr, fake) = fake_server(move |mut raw| {
            fake_hello(&mut raw);
            fake_read_requests(&mut raw, WAITING);
            if say_why {
                raw.send(&frame_of(&Message::connection_error(
                    Status::ShuttingDown,
                    "going away",
                )));
            }
            raw.s.shutdown(Shutdown::Both).unwrap();
        });
        in_runtime(move || {
            let c = Rc::new(Client::connect(addr, &client_config()).unwrap());
            let callers: Vec<_> = (0..WAITING)
                .map(|i| {
                    let c = c.clone();
                    spawn(move || {
                        let data = [i as u8; 3];
                        let t = Instant::now();
                        (c.call(Request::Ping { data: &data }).err(), t.elapsed())
                    })
                    .unwrap()
                })
                .collect();
            for h in callers {
                let (e, took) = h.join().unwrap();
                let e = e.expect("a call on a closed connection fails");
                assert!(matches!(e, RpcError::ConnectionLost { .. }), "{e}");
                assert!(took < Duration::from_secs(2), "failed after {took:?}");
                if say_why {
                    assert!(e.to_string().contains("SHUTTING_DOWN"), "{e}");
                }
            }
            let t = Instant::now();
            let e = c.call(Request::Ping { data: b"later" }).err();
            assert!(matches!(e, Some(RpcError::ConnectionLost { .. })), "{e:?}");
            assert!(t.elapsed() < Duration::from_millis(100));
        });
        fake.join().unwrap();
    }
}

/// PROTOCOL.md, Tags: "A response with a tag the client has not sent is a protocol
/// violation: the client closes the connection" (failing every outstanding call).
#[test]
fn a_response_to_a_tag_never_sent_closes_the_client_connection() {
    let (addr, fake) = fake_server(|mut raw| {
        fake_hello(&mut raw);
        let tags = fake_read_requests(&mut raw, 2);
        let never_sent = tags.iter().max().unwrap() + 1_000_000;
        raw.send(&frame_of(&Message {
            tag: never_sent,
            body: Body::Response(Response::Ping { data: b"who?" }),
        }));
        // The client closes; nothing more is answered.
        raw.expect_closed();
    });
    in_runtime(move || {
        let cfg = ClientConfig {
            call_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        let c = Rc::new(Client::connect(addr, &cfg).unwrap());
        let callers: Vec<_> = (0..2u8)
            .map(|i| {
                let c = c.clone();
                spawn(move || c.call(Request::Ping { data: &[i] }).err()).unwrap()
            })
            .collect();
        for h in callers {
            let e = h.join().unwrap().expect("the call fails");
            assert!(matches!(e, RpcError::ConnectionLost { .. }), "{e}");
        }
    });
    fake.join().unwrap();
}

/// PROTOCOL.md, Bad input: a response "whose header is sound but whose payload
/// fails (BAD_PAYLOAD_CRC, layout) fails that tag's call only".
#[test]
fn a_response_with_a_bad_payload_fails_only_its_call() {
    let (addr, fake) = fake_server(|mut raw| {
        fake_hello(&mut raw);
        for _ in 0..2 {
            let f = raw.frame();
            let Body::Request(Request::Ping { data }) = f.msg().body else {
                panic!("not a PING");
            };
            let mut reply = frame_of(&Message {
                tag: f.header.tag,
                body: Body::Response(Response::Ping { data }),
            });
            if data == b"spoil" {
                let last = reply.len() - 1;
                reply[last] ^= 0x01;
            }
            raw.send(&reply);
        }
        let f = raw.frame();
        raw.send(&frame_of(&Message {
            tag: f.header.tag,
            body: Body::Response(Response::Ping { data: b"third" }),
        }));
        raw.expect_closed();
    });
    in_runtime(move || {
        let c = Client::connect(addr, &client_config()).unwrap();
        let e = c
            .call(Request::Ping { data: b"spoil" })
            .err()
            .expect("a corrupt answer fails its call");
        assert!(matches!(e, RpcError::PayloadCrc { .. }), "{e}");
        expect_echo(&c, b"sound");
        expect_echo(&c, b"third");
    });
    fake.join().unwrap();
}
