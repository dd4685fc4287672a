//! The thread hosting layer: generic over serving one connection, and a connection
//! handed between threads as a plain fd plus what was already read from it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::route::{self, Where};
use rpc::echo::Echo;
use rpc::limits::{HEADER_LEN, TAG_NONE};
use rpc::{
    Handoff, Header, Host, HostConfig, MsgType, Request, RuntimeThread, RuntimeThreadConfig,
    Server, ServerConfig, SessionConfig, Status, decode_header, serve_handoff,
};
use taskio::net::Detached;
use taskio::{Config, IoConfig, Runtime};

/// Bound of every blocking read of the test.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn read_header(s: &mut TcpStream) -> (Header, Vec<u8>) {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = decode_header(&head).unwrap();
    let mut payload = vec![0; h.payload_len as usize];
    s.read_exact(&mut payload).unwrap();
    (h, payload)
}

/// An acceptor that read part of the client's HELLO itself hands the connection and
/// those bytes to a runtime on another thread, whose session answers the HELLO and a
/// PING as if it had read everything itself.
#[test]
fn a_connection_handed_over_with_bytes_already_read_is_served_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let hello = route::frame(
            1,
            Request::Hello(rpc::Hello {
                version_min: 1,
                version_max: 1,
                client_nonce: [1; 32],
                proof: None,
                client_name: "handed",
            }),
        );
        s.write_all(&hello).unwrap();
        s.write_all(&route::frame(2, Request::Ping { data: b"whole" }))
            .unwrap();
        let (h, _) = read_header(&mut s);
        assert_eq!((h.tag, h.status), (1, Status::Ok), "{h:?}");
        let (h, p) = read_header(&mut s);
        assert_eq!((h.tag, h.status), (2, Status::Ok), "{h:?}");
        assert_eq!(p, b"whole");
    });
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // More than a header's worth: the acceptor looked past the first frame's header.
    let mut already_read = vec![0u8; HEADER_LEN + 10];
    stream.read_exact(&mut already_read).unwrap();
    stream.set_read_timeout(None).unwrap();
    let handoff = Handoff {
        stream: Detached::from_std(stream, already_read).unwrap(),
        hello: None,
    };
    let served = std::thread::spawn(move || {
        let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
        rt.run(move || serve_handoff(handoff, &SessionConfig::default(), Echo))
            .unwrap()
    });
    client.join().unwrap();
    // The client closed: the session ends with the connection lost.
    let end = served.join().unwrap();
    assert!(
        matches!(end, Err(rpc::RpcError::ConnectionLost { .. })),
        "{end:?}"
    );
}

/// The host knows nothing of rpc sessions: here each connection is served by a
/// function that echoes 4 bytes. One runtime serves one connection at a time; a
/// second one meanwhile is refused BUSY, and served once the first has gone.
#[test]
fn the_host_serves_any_connection_function_and_refuses_over_its_runtimes() {
    let config = HostConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        runtimes: 1,
        runtime: Config::default(),
        io: IoConfig::default(),
    };
    let host = Host::start(config, || {
        |h: Handoff| {
            let s = taskio::net::TcpStream::adopt(h.stream);
            let mut b = [0u8; 4];
            while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
        }
    })
    .unwrap();
    let addr = host.local_addr();
    let echo = |s: &mut TcpStream, what: &[u8; 4]| {
        s.write_all(what).unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, what);
    };
    let mut first = TcpStream::connect(addr).unwrap();
    first.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    echo(&mut first, b"one!");
    let mut second = TcpStream::connect(addr).unwrap();
    second.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (h, _) = read_header(&mut second);
    assert_eq!(h.tag, TAG_NONE);
    assert_eq!(h.msg_type, MsgType::Error);
    assert_eq!(h.status, Status::Busy);
    drop(first);
    // The runtime takes the next connection once the first one's function returned.
    let start = std::time::Instant::now();
    loop {
        let mut third = TcpStream::connect(addr).unwrap();
        third.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        third.write_all(b"two!").unwrap();
        let mut b = [0u8; 4];
        third.read_exact(&mut b).unwrap();
        if &b == b"two!" {
            break;
        }
        // A BUSY frame's first bytes: the first connection is still ending.
        assert!(start.elapsed() < IO_TIMEOUT, "the runtime never came free");
        std::thread::sleep(Duration::from_millis(10));
    }
    host.stop();
}

/// What runtime B's serve function saw of each connection handed to it: the bytes
/// already read from it.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// Runtime B: a long-lived runtime thread named `device-b` serving rpc sessions
/// handed to it with `Where("b")`, which routes nothing.
fn runtime_b(seen: &Seen) -> RuntimeThread {
    let seen = seen.clone();
    RuntimeThread::start(RuntimeThreadConfig::new("device-b"), move || {
        move |h: Handoff| {
            seen.lock().unwrap().push(h.stream.already_read().to_vec());
            let _ = serve_handoff(h, &SessionConfig::default(), Where::new("b", None));
        }
    })
    .unwrap()
}

/// Reads one response frame from `s`: its header, a PING's data, a DEVICE_OPEN's
/// handle.
fn response(s: &mut TcpStream) -> (Header, Vec<u8>, Option<u64>) {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = decode_header(&head).unwrap();
    let mut payload = vec![0; h.payload_len as usize];
    s.read_exact(&mut payload).unwrap();
    route::decode(&head, &payload)
}

/// The client's side of a routed session: HELLO, a PING served where the session
/// started (`a_thread`), then DEVICE_OPEN with a PING written behind it in one
/// write: both answered by B, and a later PING too. Returns the bytes of that
/// write.
fn routed_client(addr: SocketAddr, a_thread: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&route::hello(1)).unwrap();
    let (h, _, _) = response(&mut s);
    assert_eq!((h.tag, h.status), (1, Status::Ok), "{h:?}");
    s.write_all(&route::frame(2, Request::Ping { data: b"?" }))
        .unwrap();
    let (h, data, _) = response(&mut s);
    assert_eq!((h.tag, h.status), (2, Status::Ok), "{h:?}");
    let here = String::from_utf8(data).unwrap();
    assert_eq!(here, format!("a@{a_thread}"), "served before the move");
    let (open, ping) = route::open_then_ping(3);
    let both = [open, ping].concat();
    s.write_all(&both).unwrap();
    let (h, _, handle) = response(&mut s);
    assert_eq!(
        (h.tag, h.status, h.msg_type),
        (3, Status::Ok, MsgType::DeviceOpen)
    );
    assert_eq!(handle, Some(1));
    let (h, data, _) = response(&mut s);
    assert_eq!(
        (h.tag, h.status),
        (4, Status::Ok),
        "the pipelined PING: {h:?}"
    );
    assert_eq!(data, b"b@device-b", "served by runtime B");
    s.write_all(&route::frame(5, Request::Ping { data: b"?" }))
        .unwrap();
    let (h, data, _) = response(&mut s);
    assert_eq!((h.tag, h.status), (5, Status::Ok), "{h:?}");
    assert_eq!(data, b"b@device-b", "the session stays on B");
    both
}

/// One thread per session (the server's host): a session whose service routes
/// DEVICE_OPEN moves, after its HELLO and a first PING, to runtime B, with the
/// DEVICE_OPEN and the PING that arrived with it (read ahead on A, handed along);
/// B goes on without a second HELLO.
#[test]
fn a_session_routed_from_its_session_thread_goes_on_in_runtime_b() {
    let seen = Seen::default();
    let b = runtime_b(&seen);
    let to = b.to();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    config.sessions_max = 2;
    let server = Server::start(config, move || Where::new("a", Some(to.clone()))).unwrap();
    let written = routed_client(server.local_addr(), "rpc-session-0");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![written],
        "B got the DEVICE_OPEN and the PING behind it as bytes already read"
    );
    server.stop();
    b.stop();
}

/// Long-lived runtimes both ends: an acceptor (the test) hands a connection to
/// runtime A, whose session does the HELLO and moves to runtime B at DEVICE_OPEN.
#[test]
fn a_session_routed_between_runtime_threads_goes_on_in_runtime_b() {
    let seen = Seen::default();
    let b = runtime_b(&seen);
    let to = b.to();
    let ends = Arc::new(Mutex::new(Vec::new()));
    let e = ends.clone();
    let a = RuntimeThread::start(RuntimeThreadConfig::new("front-a"), move || {
        move |h: Handoff| {
            let service = Where::new("a", Some(to.clone()));
            let r = serve_handoff(h, &SessionConfig::default(), service);
            e.lock().unwrap().push(format!("{r:?}"));
        }
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || routed_client(addr, "front-a"));
    let (stream, _) = listener.accept().unwrap();
    a.to().hand(Handoff::accepted(stream).unwrap()).unwrap();
    let written = client.join().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![written]);
    a.stop();
    assert_eq!(
        *ends.lock().unwrap(),
        ["Ok(())"],
        "A's session ended by moving"
    );
    b.stop();
}

/// A session routed to a runtime that is gone: the client is told
/// (ERROR, TAG_NONE, SHUTTING_DOWN) and the connection closed.
#[test]
fn a_session_routed_to_a_runtime_gone_is_told_and_closed() {
    let b = runtime_b(&Seen::default());
    let to = b.to();
    b.stop();
    let server = Server::start(
        ServerConfig::new("127.0.0.1:0".parse().unwrap()),
        move || Where::new("a", Some(to.clone())),
    )
    .unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&route::hello(1)).unwrap();
    let (h, _, _) = response(&mut s);
    assert_eq!((h.tag, h.status), (1, Status::Ok), "{h:?}");
    s.write_all(&route::open_then_ping(2).0).unwrap();
    let (h, _, _) = response(&mut s);
    assert_eq!((h.tag, h.status), (TAG_NONE, Status::ShuttingDown), "{h:?}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after");
    server.stop();
}
