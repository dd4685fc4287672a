//! Opening many sessions at once stays cheap: while 200 connections open together,
//! a new session is answered (the latency, 50 ms, is the bench figure
//! `rpc_session_burst_200` of `tdrv bench rpc`; here the bound is a wait that fails
//! only when the new session is not answered at all).

use rpc::echo::Echo;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rpc::limits::HEADER_LEN;
use rpc::{
    Body, Header, Message, Request, Server, ServerConfig, Status, decode_header, encode_frame,
};

/// Connections opened together.
const BURST: usize = 200;
/// How long the new session may take to be answered before the test fails: far
/// above any answer, so that only a session never answered fails it.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

fn frame(tag: u64, request: Request<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    let m = Message {
        tag,
        body: Body::Request(request),
    };
    encode_frame(1, &m, &mut v).unwrap();
    v
}

fn hello(name: &str) -> Vec<u8> {
    frame(
        1,
        Request::Hello(rpc::Hello {
            version_min: 1,
            version_max: 1,
            client_nonce: [7; 32],
            proof: None,
            client_name: name,
        }),
    )
}

fn read_header(s: &mut TcpStream) -> Header {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = decode_header(&head).unwrap();
    let mut payload = vec![0; h.payload_len as usize];
    s.read_exact(&mut payload).unwrap();
    h
}

#[test]
fn a_new_session_is_answered_while_200_connections_open_at_once() {
    let stalls = Arc::new(AtomicUsize::new(0));
    let mut config = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    config.sessions_max = BURST + 1;
    let s = stalls.clone();
    config.runtime.stall_sink = Some(Arc::new(move |r| {
        eprintln!("{r}");
        s.fetch_add(1, Ordering::Relaxed);
    }));
    let server = Server::start(config, || Echo).unwrap();
    let addr = server.local_addr();
    // The burst: every connection opened and its HELLO sent, no answer awaited.
    let mut burst: Vec<TcpStream> = (0..BURST)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&hello(&format!("burst-{i}"))).unwrap();
            c
        })
        .collect();
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    c.write_all(&hello("new")).unwrap();
    c.write_all(&frame(2, Request::Ping { data: b"new" }))
        .unwrap();
    let h = read_header(&mut c);
    assert_eq!((h.tag, h.status), (1, Status::Ok), "HELLO answered {h:?}");
    let h = read_header(&mut c);
    assert_eq!((h.tag, h.status), (2, Status::Ok), "PING answered {h:?}");
    let took = start.elapsed();
    // Every connection of the burst got its session too.
    for b in &mut burst {
        b.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
        let h = read_header(b);
        assert_eq!(
            (h.tag, h.status),
            (1, Status::Ok),
            "burst HELLO answered {h:?}"
        );
    }
    eprintln!(
        "new session answered after {took:?} under a burst of {BURST}; {} stall reports",
        stalls.load(Ordering::Relaxed)
    );
    drop(burst);
    drop(c);
    server.stop();
}
