//! The thread hosting layer: generic over serving one connection, and a connection
//! handed between threads as a plain fd plus what was already read from it.

use rpc::echo::Echo;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use rpc::limits::{HEADER_LEN, TAG_NONE};
use rpc::{
    Body, Handoff, Header, Host, HostConfig, Message, MsgType, Request, SessionConfig, Status,
    decode_header, encode_frame, serve_connection,
};
use taskio::{Config, IoConfig, Runtime};

/// Bound of every blocking read of the test.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn frame(tag: u64, request: Request<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    let m = Message {
        tag,
        body: Body::Request(request),
    };
    encode_frame(1, &m, &mut v).unwrap();
    v
}

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
        let hello = frame(
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
        s.write_all(&frame(2, Request::Ping { data: b"whole" }))
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
        stream,
        already_read,
    };
    let served = std::thread::spawn(move || {
        let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
        rt.run(move || {
            let stream = handoff.adopt().unwrap();
            serve_connection(stream, &SessionConfig::default(), Echo)
        })
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
        |s: taskio::net::TcpStream| {
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
