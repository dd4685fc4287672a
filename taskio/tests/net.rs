//! `taskio::net` on real sockets (127.0.0.1, ephemeral ports): echo of every size from
//! one byte to a MiB, many connections at once, end of stream and resets, refused and
//! timed-out connects, read and write timeouts, one reader plus one writer per stream
//! (a second one gets `Busy` at once), half-close, `std::net` peers on other threads,
//! deadlock detection next to the I/O driver, and the driver's byte counters.
//!
//! Every run goes through `common::io_rt`, which fails a test that hangs instead of
//! hanging CI. Tasks synchronise through channels, joins and the socket data itself,
//! never through sleeps.

mod common;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant as StdInstant};

use common::io_rt::{
    HANG_LIMIT, assert_same, io_ok, io_runtime, pattern, run_io, run_io_with, within,
};
use taskio::net::{self, TcpListener, TcpStream};
use taskio::{
    Builder, Channel, Config, DeadlockTask, IoError, Rendez, RunError, Runtime, WaitReason, spawn,
    yield_now,
};

/// Bound on connects to the loopback, which succeed or fail in microseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on anything that must happen "at once" (generous for a loaded CI box).
const PROMPTLY: Duration = Duration::from_secs(2);
/// Socket buffer size for tests that need a writer to block: small enough that a few
/// MiB cannot be absorbed by the kernel. Set on a listener only, so that accepted
/// sockets have it from the handshake on: shrinking the buffers of a connected loopback
/// socket leaves it crawling on TCP's persist timer (seconds for a few MiB).
const SMALL_SOCKET_BUFFER: i32 = 16 * 1024;
/// A write that cannot fit in two small socket buffers, however the kernel rounds them.
const MORE_THAN_THE_BUFFERS: usize = 4 << 20;

fn any_local_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn listen_local() -> TcpListener {
    net::listen(any_local_port()).expect("listen on 127.0.0.1:0")
}

fn connect(addr: SocketAddr) -> TcpStream {
    match net::connect(addr, Some(CONNECT_TIMEOUT)) {
        Ok(s) => s,
        Err(e) => panic!("connect {addr}: {e}"),
    }
}

/// The error of a call that must fail (`TcpStream` is not `Debug`, so no `unwrap_err`).
fn expect_err<T>(r: Result<T, IoError>, what: &str) -> IoError {
    match r {
        Ok(_) => panic!("{what}: succeeded, expected an error"),
        Err(e) => e,
    }
}

/// Writes a frame: a little-endian u32 length, then the payload.
fn send_frame(s: &TcpStream, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame fits a u32 length");
    s.write_all(&len.to_le_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

/// Reads a frame written by [`send_frame`]; None at a clean end of stream.
fn recv_frame(s: &TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(IoError::Eof { done: 0, .. }) => return None,
        Err(e) => panic!("frame header: {e}"),
    }
    let mut payload = vec![0u8; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut payload).unwrap();
    Some(payload)
}

/// Asserts the stream's peer has closed its side: the next read is a clean EOF.
fn expect_eof(s: &TcpStream) {
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Err(IoError::Eof {
            done: 0, want: 1, ..
        }) => {}
        Ok(n) => panic!("expected end of stream, read {n} byte(s)"),
        Err(e) => panic!("expected end of stream, got {e}"),
    }
}

fn set_int_sockopt(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: `value` is a live c_int whose size is passed; `fd` is an open socket of
    // the caller.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}) on fd {fd}: {}",
        std::io::Error::last_os_error()
    );
}

/// Shrinks both socket buffers of listener `fd`, for what it accepts.
fn set_small_buffers(fd: RawFd) {
    set_int_sockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SMALL_SOCKET_BUFFER);
    set_int_sockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SMALL_SOCKET_BUFFER);
}

/// SO_LINGER {on, 0}: closing the socket then sends a RST instead of a FIN.
fn set_linger_zero(s: &std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a live struct whose size is passed; the socket is open.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A listener whose accept queue is full and never drained: Linux drops the SYNs of
/// further connects (no RST), so they stay in SYN_SENT: a connect that cannot finish,
/// on any machine, without depending on its routes.
struct FullBacklog {
    _listener: OwnedFd,
    _filler: std::net::TcpStream,
    addr: SocketAddr,
}

impl FullBacklog {
    fn new() -> FullBacklog {
        // SAFETY: socket(2) has no memory preconditions; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket nothing else owns.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_in; the fields are set below.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let sin_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sin` is a valid sockaddr_in of `sin_len` bytes.
        let rc = unsafe { libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), sin_len) };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // Backlog 0: the queue is full as soon as one connection waits in it.
        // SAFETY: listen(2) on a bound socket we own.
        let rc = unsafe { libc::listen(fd, 0) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        let mut len = sin_len;
        // SAFETY: `sin` has room for `len` bytes.
        let rc =
            unsafe { libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len) };
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port)));
        let filler = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .expect("the first connect fills the empty queue");
        FullBacklog {
            _listener: listener,
            _filler: filler,
            addr,
        }
    }
}

// ---------------------------------------------------------------------------------
// Data transfer

/// Sizes around the boundaries that matter: a byte, an MSS, a page, 64 KiB (a loopback
/// segment), and transfers far larger than one recv or send moves.
const ECHO_SIZES: [usize; 13] = [
    1,
    2,
    3,
    100,
    1460,
    4095,
    4096,
    65_535,
    65_536,
    65_537,
    300_001,
    1 << 20,
    (1 << 20) - 1,
];
const ECHO_REPEATS: u64 = 3;

#[test]
fn echo_round_trips_of_every_size_are_byte_for_byte() {
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let server = Builder::new()
            .name("echo-server")
            .spawn(move || {
                let (s, _) = l.accept().unwrap();
                let mut frames = 0u64;
                while let Some(frame) = recv_frame(&s) {
                    s.write_all(&frame).unwrap();
                    frames += 1;
                }
                frames
            })
            .unwrap();
        let c = connect(addr);
        let mut sent = 0u64;
        for round in 0..ECHO_REPEATS {
            for (i, &size) in ECHO_SIZES.iter().enumerate() {
                let want = pattern(round * 100 + i as u64, size);
                send_frame(&c, &want);
                let mut got = vec![0u8; size];
                c.read_exact(&mut got).unwrap();
                assert_same(&got, &want, &format!("echo of {size} bytes, round {round}"));
                sent += 1;
            }
        }
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.join().unwrap(), sent);
        expect_eof(&c);
    });
}

const CLIENTS: usize = 64;

fn client_payload(id: usize) -> Vec<u8> {
    // 1 B to ~64 KiB: some fit one segment, some need many reads.
    pattern(1000 + id as u64, 1 + id * 1021)
}

#[test]
fn many_connections_each_get_their_own_data_back() {
    let (served, clients) = io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let server = Builder::new()
            .name("server")
            .spawn(move || {
                let handlers: Vec<_> = (0..CLIENTS)
                    .map(|_| {
                        let (s, peer) = l.accept().unwrap();
                        assert_eq!(s.peer_addr(), peer);
                        spawn(move || {
                            let frame = recv_frame(&s).expect("a frame from the client");
                            s.write_all(&frame).unwrap();
                            expect_eof(&s);
                            (peer, frame.len())
                        })
                        .unwrap()
                    })
                    .collect();
                // Bounded: exactly CLIENTS connections, then the listener closes.
                handlers
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                spawn(move || {
                    let c = connect(addr);
                    assert_eq!(c.peer_addr(), addr);
                    let me = c.local_addr().unwrap();
                    let want = client_payload(id);
                    send_frame(&c, &want);
                    let mut got = vec![0u8; want.len()];
                    c.read_exact(&mut got).unwrap();
                    assert_same(&got, &want, &format!("client {id}"));
                    c.shutdown(Shutdown::Write).unwrap();
                    (me, want.len())
                })
                .unwrap()
            })
            .collect();
        let clients: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
        (server.join().unwrap(), clients)
    });
    let mut served = served;
    let mut clients = clients;
    served.sort();
    clients.sort();
    assert_eq!(served.len(), CLIENTS);
    // The server saw each client (by its address) with that client's own frame.
    assert_eq!(served, clients);
}

const DUPLEX_MESSAGES: u32 = 1000;
const DUPLEX_MESSAGE_BYTES: usize = 4096;

/// Message `seq` of `side`: its sequence number, then a pattern of its own.
fn duplex_message(side: u64, seq: u32) -> Vec<u8> {
    let mut m = pattern((side << 32) | u64::from(seq), DUPLEX_MESSAGE_BYTES);
    m[..4].copy_from_slice(&seq.to_le_bytes());
    m
}

/// A writer task and a reader task on one stream; returns their joins.
fn duplex(s: Rc<TcpStream>, me: u64, peer: u64) -> impl FnOnce() {
    let w = s.clone();
    let writer = Builder::new()
        .name(format!("writer-{me}"))
        .spawn(move || {
            for seq in 0..DUPLEX_MESSAGES {
                w.write_all(&duplex_message(me, seq)).unwrap();
            }
        })
        .unwrap();
    let reader = Builder::new()
        .name(format!("reader-{me}"))
        .spawn(move || {
            let mut buf = vec![0u8; DUPLEX_MESSAGE_BYTES];
            for seq in 0..DUPLEX_MESSAGES {
                s.read_exact(&mut buf).unwrap();
                assert_same(
                    &buf,
                    &duplex_message(peer, seq),
                    &format!("side {me}, message {seq}"),
                );
            }
        })
        .unwrap();
    move || {
        writer.join().unwrap();
        reader.join().unwrap();
    }
}

#[test]
fn one_reader_and_one_writer_share_a_stream_full_duplex() {
    io_ok(|| {
        let l = listen_local();
        // Small buffers on the server's end (set on the listener, so before the
        // handshake): both writers fill the way and block many times while the readers
        // wait too, so each stream has a reader and a writer parked at once.
        set_small_buffers(l.fd());
        let addr = l.local_addr();
        let server = spawn(move || {
            let (s, _) = l.accept().unwrap();
            duplex(Rc::new(s), 1, 0)();
        })
        .unwrap();
        duplex(Rc::new(connect(addr)), 0, 1)();
        server.join().unwrap();
    });
}

#[test]
fn echo_over_ipv6_loopback() {
    let any_v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    if let Err(e) = std::net::TcpListener::bind(any_v6) {
        eprintln!("no IPv6 loopback on this machine ({e}); nothing to check");
        return;
    }
    io_ok(move || {
        let l = net::listen(any_v6).unwrap();
        let addr = l.local_addr();
        assert!(addr.is_ipv6() && addr.port() != 0, "{addr}");
        let server = spawn(move || {
            let (s, peer) = l.accept().unwrap();
            let frame = recv_frame(&s).unwrap();
            s.write_all(&frame).unwrap();
            peer
        })
        .unwrap();
        let c = connect(addr);
        let want = pattern(6, 100_000);
        send_frame(&c, &want);
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_same(&got, &want, "echo over IPv6");
        let me = c.local_addr().unwrap();
        assert_eq!(me.ip(), std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(server.join().unwrap(), me);
    });
}

// ---------------------------------------------------------------------------------
// End of stream, resets, half-close

#[test]
fn peer_closing_mid_frame_is_eof_naming_the_fd_and_the_progress() {
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let server = spawn(move || {
            let (s, _) = l.accept().unwrap();
            // A tenth of the frame, then close.
            s.write_all(&pattern(7, 100)).unwrap();
        })
        .unwrap();
        let c = connect(addr);
        let fd = c.fd();
        let mut frame = vec![0u8; 1000];
        let e = expect_err(c.read_exact(&mut frame), "read_exact past the peer's close");
        let text = e.to_string();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{text}");
        match e {
            IoError::Eof {
                op,
                fd: efd,
                done,
                want,
            } => {
                assert_eq!(op, "read_exact");
                assert_eq!(efd, fd);
                assert_eq!((done, want), (100, 1000));
            }
            other => panic!("expected Eof, got {other}"),
        }
        assert!(text.contains(&format!("fd {fd}")), "{text}");
        assert!(text.contains("100 of 1000"), "{text}");
        // What did arrive is in the buffer.
        assert_same(&frame[..100], &pattern(7, 100), "bytes before the close");
        // And every later read says the same, with nothing done.
        match expect_err(c.read(&mut frame), "read after end of stream") {
            IoError::Eof {
                op: "read",
                done: 0,
                want: 1000,
                ..
            } => {}
            other => panic!("expected Eof from read, got {other}"),
        }
        server.join().unwrap();
    });
}

#[test]
fn peer_reset_while_reading_is_an_error_not_a_hang() {
    let peer = io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut go = [0u8; 1];
            s.read_exact(&mut go).unwrap();
            set_linger_zero(&s);
            // Dropped: RST.
        });
        let (s, _) = l.accept().unwrap();
        s.write_all(b"g").unwrap();
        let mut buf = [0u8; 16];
        let started = StdInstant::now();
        let e = expect_err(s.read_exact(&mut buf), "read_exact from a reset peer");
        assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        match &e {
            IoError::Fd { op, fd, .. } => {
                assert_eq!(*op, "read_exact");
                assert_eq!(*fd, s.fd());
            }
            other => panic!("expected an Fd error, got {other}"),
        }
        // Writing to the dead connection fails too (EPIPE, no SIGPIPE).
        let e = expect_err(s.write_all(&[0u8; 4096]), "write_all to a reset peer");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
        peer
    });
    peer.join().unwrap();
}

#[test]
fn peer_reset_while_a_writer_is_blocked_is_an_error_not_a_hang() {
    const READ_BEFORE_RESET: usize = 64 * 1024;
    let peer = io_ok(|| {
        let l = listen_local();
        set_small_buffers(l.fd());
        let addr = l.local_addr();
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            // Proof the writer is under way; what is left cannot fit the buffers, so
            // it is parked (or about to park) when the RST comes.
            let mut some = vec![0u8; READ_BEFORE_RESET];
            s.read_exact(&mut some).unwrap();
            set_linger_zero(&s);
        });
        let (s, _) = l.accept().unwrap();
        let big = pattern(11, MORE_THAN_THE_BUFFERS);
        let e = expect_err(s.write_all(&big), "write_all to a peer that resets");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
        assert!(
            matches!(e, IoError::Fd { op: "write_all", fd, .. } if fd == s.fd()),
            "{e}"
        );
        peer
    });
    peer.join().unwrap();
}

#[test]
fn shutdown_write_gives_the_peer_eof_and_the_other_direction_still_works() {
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let server = spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(&hello, b"hello");
            let mut more = [0u8; 1];
            match expect_err(s.read_exact(&mut more), "read past the peer's shutdown") {
                IoError::Eof {
                    op: "read_exact",
                    done: 0,
                    want: 1,
                    ..
                } => {}
                other => panic!("expected Eof, got {other}"),
            }
            // Half-closed: this direction is still open.
            s.write_all(b"bye").unwrap();
        })
        .unwrap();
        let c = connect(addr);
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut bye = [0u8; 3];
        c.read_exact(&mut bye).unwrap();
        assert_eq!(&bye, b"bye");
        server.join().unwrap();
        expect_eof(&c);
        // Writing after our own shutdown is an error, not a hang.
        let e = expect_err(c.write_all(b"x"), "write_all after shutdown(Write)");
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    });
}

// ---------------------------------------------------------------------------------
// Connect and listen errors

#[test]
fn connect_to_a_closed_port_is_refused() {
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        drop(l);
        for timeout in [None, Some(CONNECT_TIMEOUT)] {
            let started = StdInstant::now();
            let e = expect_err(net::connect(addr, timeout), "connect to a closed port");
            assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            let text = e.to_string();
            match e {
                IoError::Addr { op, addr: a, .. } => {
                    assert_eq!(op, "connect");
                    assert_eq!(a, addr);
                }
                other => panic!("expected an Addr error, got {other}"),
            }
            assert!(text.contains(&addr.to_string()), "{text}");
        }
    });
}

#[test]
fn listen_on_a_port_in_use_names_the_address() {
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let e = expect_err(net::listen(addr), "a second listen on the same port");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(
            matches!(e, IoError::Addr { op: "listen", addr: a, .. } if a == addr),
            "{e}"
        );
    });
}

#[test]
fn connect_times_out_when_nobody_answers_the_syn() {
    const TIMEOUT: Duration = Duration::from_millis(50);
    let full = FullBacklog::new();
    let addr = full.addr;
    io_ok(move || {
        let started = StdInstant::now();
        let e = expect_err(
            net::connect(addr, Some(TIMEOUT)),
            "connect to a full backlog",
        );
        let elapsed = started.elapsed();
        assert!(elapsed >= TIMEOUT, "gave up after {elapsed:?}");
        assert!(elapsed < PROMPTLY, "gave up after {elapsed:?}");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        let text = e.to_string();
        match e {
            IoError::ConnectTimedOut { addr: a, timeout } => {
                assert_eq!(a, addr);
                assert_eq!(timeout, TIMEOUT);
            }
            other => panic!("expected ConnectTimedOut, got {other}"),
        }
        assert!(text.contains(&addr.to_string()), "{text}");
    });
    drop(full);
}

#[test]
fn connect_to_an_unroutable_address_returns_in_bounded_time() {
    const TIMEOUT: Duration = Duration::from_millis(50);
    let addr = SocketAddr::from(([10, 255, 255, 1], 9));
    io_ok(move || {
        let started = StdInstant::now();
        let r = net::connect(addr, Some(TIMEOUT));
        let elapsed = started.elapsed();
        assert!(elapsed < PROMPTLY, "returned after {elapsed:?}");
        // What this address does depends on the machine: unanswered (the usual case),
        // no route (an error at once), or, in a sandbox whose network proxy answers
        // for every address, connected. Any of those; never a hang.
        match r {
            Err(IoError::ConnectTimedOut { addr: a, timeout }) => {
                assert_eq!(a, addr);
                assert_eq!(timeout, TIMEOUT);
                assert!(elapsed >= TIMEOUT, "timed out after {elapsed:?}");
            }
            Err(IoError::Addr { op, addr: a, .. }) => {
                assert_eq!(op, "connect");
                assert_eq!(a, addr);
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(s) => assert_eq!(s.peer_addr(), addr),
        }
    });
}

#[test]
fn io_calls_on_a_runtime_without_a_driver_are_no_driver() {
    let outcome = within(HANG_LIMIT, || {
        Runtime::new().run(|| {
            let e = expect_err(net::listen(any_local_port()), "listen without a driver");
            assert!(matches!(e, IoError::NoDriver { op: "listen" }), "{e}");
            assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
            assert!(e.to_string().contains("Runtime::with_io"), "{e}");
            let e = expect_err(
                net::connect(SocketAddr::from(([127, 0, 0, 1], 9)), None),
                "connect without a driver",
            );
            assert!(matches!(e, IoError::NoDriver { op: "connect" }), "{e}");
        })
    });
    outcome.unwrap();
}

// ---------------------------------------------------------------------------------
// Timeouts

#[test]
fn read_timeout_then_the_stream_still_works() {
    const TIMEOUT: Duration = Duration::from_millis(30);
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let go = Rc::new(Channel::<()>::new(1));
        let server = spawn({
            let go = go.clone();
            move || {
                let (s, _) = l.accept().unwrap();
                go.recv().unwrap();
                s.write_all(b"12345678").unwrap();
                expect_eof(&s);
            }
        })
        .unwrap();
        let c = connect(addr);
        c.set_read_timeout(Some(TIMEOUT));
        let mut buf = [0u8; 8];
        for op in ["read_exact", "read"] {
            let started = StdInstant::now();
            let r = if op == "read" {
                c.read(&mut buf).map(|_| ())
            } else {
                c.read_exact(&mut buf)
            };
            let elapsed = started.elapsed();
            let e = expect_err(r, "read from a silent peer");
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            match e {
                IoError::TimedOut {
                    op: eop,
                    fd,
                    timeout,
                    done,
                    ..
                } => {
                    assert_eq!(done, 0, "nothing was read before the timeout");
                    assert_eq!(eop, op);
                    assert_eq!(fd, c.fd());
                    assert_eq!(timeout, TIMEOUT);
                }
                other => panic!("expected TimedOut, got {other}"),
            }
            assert!(elapsed >= TIMEOUT, "{op} timed out after {elapsed:?}");
            assert!(elapsed < PROMPTLY, "{op} timed out after {elapsed:?}");
        }
        // A zero timeout with nothing to read times out at once, too.
        c.set_read_timeout(Some(Duration::ZERO));
        let e = expect_err(c.read(&mut buf), "read with a zero timeout");
        assert!(matches!(e, IoError::TimedOut { op: "read", .. }), "{e}");
        // The timed-out waits left nothing behind: data sent now is read.
        c.set_read_timeout(Some(HANG_LIMIT));
        go.send(()).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"12345678");
        c.shutdown(Shutdown::Write).unwrap();
        server.join().unwrap();
    });
}

#[test]
fn write_timeout_when_the_peer_never_reads() {
    const TIMEOUT: Duration = Duration::from_millis(50);
    io_ok(|| {
        let l = listen_local();
        set_small_buffers(l.fd());
        let addr = l.local_addr();
        let done = Rc::new(Channel::<()>::new(1));
        let client = spawn({
            let done = done.clone();
            move || {
                let c = connect(addr);
                // Holds the connection open without reading until told.
                done.recv().unwrap();
                drop(c);
            }
        })
        .unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_write_timeout(Some(TIMEOUT));
        let big = pattern(5, MORE_THAN_THE_BUFFERS);
        let started = StdInstant::now();
        let e = expect_err(s.write_all(&big), "write_all to a peer that never reads");
        let elapsed = started.elapsed();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        match e {
            IoError::TimedOut {
                op,
                fd,
                timeout,
                done,
                want,
            } => {
                assert!(done < want, "a timed-out write moved {done} of {want}");
                assert_eq!(op, "write_all");
                assert_eq!(fd, s.fd());
                assert_eq!(timeout, TIMEOUT);
            }
            other => panic!("expected TimedOut, got {other}"),
        }
        assert!(elapsed >= TIMEOUT, "timed out after {elapsed:?}");
        assert!(elapsed < PROMPTLY, "timed out after {elapsed:?}");
        done.send(()).unwrap();
        client.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------
// One reader and one writer per stream

#[test]
fn a_second_concurrent_reader_gets_busy_at_once() {
    io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let server = spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut word = [0u8; 4];
            s.read_exact(&mut word).unwrap();
            assert_eq!(&word, b"ping");
            s.write_all(b"abcd").unwrap();
            s.read_exact(&mut word).unwrap();
            assert_eq!(&word, b"pong");
            s.write_all(b"efgh").unwrap();
            expect_eof(&s);
        })
        .unwrap();
        let c = Rc::new(connect(addr));
        let started = Rc::new(Cell::new(false));
        let reader = spawn({
            let c = c.clone();
            let started = started.clone();
            move || {
                started.set(true);
                let mut word = [0u8; 4];
                c.read_exact(&mut word).unwrap();
                word
            }
        })
        .unwrap();
        // The reader runs until it parks in read_exact (the server sent nothing yet).
        yield_now();
        assert!(started.get() && !reader.is_finished());
        let mut word = [0u8; 4];
        let t0 = StdInstant::now();
        let e = expect_err(c.read_exact(&mut word), "a second read_exact");
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        assert!(e.to_string().contains("already reading"), "{e}");
        assert!(
            matches!(e, IoError::Busy { op: "read_exact", fd, busy: "reading" } if fd == c.fd()),
            "{e}"
        );
        let e = expect_err(c.read(&mut word), "a second read");
        assert!(
            matches!(
                e,
                IoError::Busy {
                    op: "read",
                    busy: "reading",
                    ..
                }
            ),
            "{e}"
        );
        assert!(t0.elapsed() < PROMPTLY, "Busy took {:?}", t0.elapsed());
        // A writer is not a reader: writing while the reader waits works, and the
        // refused reads did not take the first reader's place.
        c.write_all(b"ping").unwrap();
        assert_eq!(&reader.join().unwrap(), b"abcd");
        // The first reader is done: reading is free again.
        c.write_all(b"pong").unwrap();
        c.read_exact(&mut word).unwrap();
        assert_eq!(&word, b"efgh");
        c.shutdown(Shutdown::Write).unwrap();
        server.join().unwrap();
    });
}

#[test]
fn a_second_concurrent_writer_gets_busy_at_once() {
    io_ok(|| {
        let l = listen_local();
        set_small_buffers(l.fd());
        let addr = l.local_addr();
        let drain = Rc::new(Channel::<()>::new(1));
        let client = spawn({
            let drain = drain.clone();
            move || {
                let c = connect(addr);
                drain.recv().unwrap();
                let mut big = vec![0u8; MORE_THAN_THE_BUFFERS];
                c.read_exact(&mut big).unwrap();
                assert_same(&big, &pattern(3, MORE_THAN_THE_BUFFERS), "first writer");
                let mut last = [0u8; 4];
                c.read_exact(&mut last).unwrap();
                assert_eq!(&last, b"last");
                expect_eof(&c);
            }
        })
        .unwrap();
        let s = Rc::new(l.accept().unwrap().0);
        let writer = spawn({
            let s = s.clone();
            move || s.write_all(&pattern(3, MORE_THAN_THE_BUFFERS)).unwrap()
        })
        .unwrap();
        // The writer runs until the socket is full and it parks in write_all.
        yield_now();
        assert!(
            !writer.is_finished(),
            "{MORE_THAN_THE_BUFFERS} bytes fit the socket?"
        );
        let t0 = StdInstant::now();
        let e = expect_err(s.write_all(b"late"), "a second write_all");
        assert!(t0.elapsed() < PROMPTLY, "Busy took {:?}", t0.elapsed());
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        assert!(e.to_string().contains("already writing"), "{e}");
        assert!(
            matches!(e, IoError::Busy { op: "write_all", fd, busy: "writing" } if fd == s.fd()),
            "{e}"
        );
        // A reader is not a writer: reading while the writer waits is no Busy.
        s.set_read_timeout(Some(Duration::from_millis(20)));
        let e = expect_err(s.read(&mut [0u8; 1]), "read while a writer waits");
        assert!(matches!(e, IoError::TimedOut { op: "read", .. }), "{e}");
        drain.send(()).unwrap();
        writer.join().unwrap();
        // The first writer is done: writing is free again.
        s.write_all(b"last").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        client.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------
// std::net peers on other threads

const INTEROP_FRAMES: u64 = 20;

fn interop_payload(i: u64) -> Vec<u8> {
    pattern(500 + i, 1 + i as usize * 5003)
}

#[test]
fn std_client_thread_talks_to_a_taskio_server() {
    let client = io_ok(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            for i in 0..INTEROP_FRAMES {
                let want = interop_payload(i);
                s.write_all(&(want.len() as u32).to_le_bytes()).unwrap();
                s.write_all(&want).unwrap();
                let mut got = vec![0u8; want.len()];
                s.read_exact(&mut got).unwrap();
                assert_same(&got, &want, &format!("std client, frame {i}"));
            }
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{} stray bytes", rest.len());
        });
        let (s, _) = l.accept().unwrap();
        let mut frames = 0;
        while let Some(frame) = recv_frame(&s) {
            assert_same(
                &frame,
                &interop_payload(frames),
                "frame from the std client",
            );
            s.write_all(&frame).unwrap();
            frames += 1;
        }
        assert_eq!(frames, INTEROP_FRAMES);
        client
    });
    client.join().unwrap();
}

#[test]
fn taskio_client_reaches_a_std_server_thread() {
    const TOTAL: usize = 2 << 20;
    let listener = std::net::TcpListener::bind(any_local_port()).unwrap();
    let addr = listener.local_addr().unwrap();
    // An echo server of the standard library: copies until end of stream, then closes.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = s.try_clone().unwrap();
        let copied = std::io::copy(&mut r, &mut s).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        copied
    });
    io_ok(move || {
        let c = Rc::new(connect(addr));
        let data = Rc::new(pattern(77, TOTAL));
        // The echo writes back while we write: read concurrently, or both block.
        let writer = spawn({
            let c = c.clone();
            let data = data.clone();
            move || {
                let mut at = 0;
                let mut chunk = 1;
                while at < TOTAL {
                    let end = (at + chunk).min(TOTAL);
                    c.write_all(&data[at..end]).unwrap();
                    at = end;
                    chunk = chunk * 3 + 1;
                }
                c.shutdown(Shutdown::Write).unwrap();
            }
        })
        .unwrap();
        let mut got = vec![0u8; TOTAL];
        c.read_exact(&mut got).unwrap();
        assert_same(&got, &data, "echo from the std server");
        expect_eof(&c);
        writer.join().unwrap();
    });
    assert_eq!(server.join().unwrap(), TOTAL as u64);
}

// ---------------------------------------------------------------------------------
// The runtime around the sockets

fn expect_deadlock<T>(outcome: Result<T, RunError>) -> Vec<DeadlockTask> {
    match outcome {
        Err(RunError::Deadlock { tasks }) => tasks,
        Err(other) => panic!("expected a deadlock, got {other}"),
        Ok(_) => panic!("expected a deadlock, the run succeeded"),
    }
}

#[test]
fn deadlock_is_detected_with_the_io_driver_and_no_sockets() {
    let (outcome, stats) = run_io(|| {
        let stuck = Builder::new()
            .name("stuck")
            .spawn(|| Rendez::new().sleep())
            .unwrap();
        stuck.id()
    });
    let tasks = expect_deadlock(outcome);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].name, "stuck");
    assert_eq!(tasks[0].waiting_on, WaitReason::Rendez);
    assert_eq!(stats.io.fd_waiters, 0);
}

#[test]
fn finished_and_timed_out_socket_waits_do_not_hide_a_deadlock() {
    let full = FullBacklog::new();
    let unanswered = full.addr;
    let (outcome, stats) = run_io(move || {
        let l = listen_local();
        let addr = l.local_addr();
        // accept waits (the connector has not run yet) and is woken: a wait that ended.
        let connector = spawn(move || connect(addr)).unwrap();
        let (s, _) = l.accept().unwrap();
        let c = connector.join().unwrap();
        // A read and a connect whose waits timed out and were withdrawn.
        s.set_read_timeout(Some(Duration::from_millis(10)));
        let e = expect_err(s.read(&mut [0u8; 1]), "read from a silent peer");
        assert!(matches!(e, IoError::TimedOut { .. }), "{e}");
        let e = expect_err(
            net::connect(unanswered, Some(Duration::from_millis(10))),
            "connect to a full backlog",
        );
        assert!(matches!(e, IoError::ConnectTimedOut { .. }), "{e}");
        // The sockets stay open, registered with the driver, but nobody waits on them:
        // a task stuck on a Rendez is a deadlock, not a wait for I/O forever.
        let stuck = Builder::new()
            .name("stuck")
            .spawn(|| Rendez::new().sleep())
            .unwrap();
        stuck.join().unwrap();
        drop((l, s, c));
    });
    let tasks = expect_deadlock(outcome);
    let waits: Vec<_> = tasks
        .iter()
        .map(|t| (t.name.as_str(), t.waiting_on))
        .collect();
    assert_eq!(waits.len(), 2, "{tasks:?}");
    assert_eq!(waits[0].0, "main");
    assert!(matches!(waits[0].1, WaitReason::Join(_)), "{tasks:?}");
    assert_eq!(waits[1], ("stuck", WaitReason::Rendez));
    assert_eq!(stats.io.fd_waiters, 0);
    drop(full);
}

#[test]
fn io_stats_count_the_traffic() {
    const TOTAL: usize = 300_000;
    let (outcome, stats) = run_io(|| {
        let l = listen_local();
        let addr = l.local_addr();
        let server = spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut data = vec![0u8; TOTAL];
            s.read_exact(&mut data).unwrap();
            s.write_all(&data).unwrap();
        })
        .unwrap();
        let c = connect(addr);
        let data = pattern(9, TOTAL);
        for chunk in data.chunks(7919) {
            c.write_all(chunk).unwrap();
        }
        let mut back = vec![0u8; TOTAL];
        c.read_exact(&mut back).unwrap();
        assert_same(&back, &data, "echo");
        server.join().unwrap();
    });
    outcome.unwrap();
    let io = stats.io;
    // Each byte crossed the driver once each way per direction: written by one end,
    // read by the other, twice over (there and back).
    assert!(io.bytes_written >= 2 * TOTAL as u64, "{io:?}");
    assert!(io.bytes_read >= 2 * TOTAL as u64, "{io:?}");
    assert_eq!(
        io.bytes_written,
        2 * TOTAL as u64,
        "nothing else was sent: {io:?}"
    );
    assert_eq!(
        io.bytes_read,
        2 * TOTAL as u64,
        "nothing else was received: {io:?}"
    );
    assert!(io.polls > 0, "{io:?}");
    assert!(io.polls_empty <= io.polls, "{io:?}");
    assert_eq!(io.fd_waiters, 0, "{io:?}");
    assert_eq!(io.aio_in_flight, 0, "{io:?}");
    assert_eq!(stats.tasks_live, 0, "{stats:?}");
}

#[test]
fn a_socket_over_the_fd_table_bound_is_an_error_not_a_hang() {
    // An fd table of 3 slots: every socket's number is over it, so its first wait
    // cannot be registered. That must be an error naming the fd, not a lost wait.
    let config = taskio::IoConfig {
        max_fds: 3,
        ..taskio::IoConfig::default()
    };
    let outcome = within(HANG_LIMIT, move || {
        let mut rt = Runtime::with_io(Config::default(), config).unwrap();
        rt.run(|| {
            let l = listen_local();
            let e = expect_err(l.accept(), "accept with the fd over the table bound");
            match &e {
                IoError::Fd { op, fd, .. } => {
                    assert_eq!(*op, "accept");
                    assert_eq!(*fd, l.fd());
                }
                other => panic!("expected an Fd error, got {other}"),
            }
            e.to_string()
        })
    });
    let text = outcome.unwrap();
    assert!(text.contains("bound"), "{text}");
}

// ---------------------------------------------------------------------------------
// Bugs found by these tests (they fail until fixed)

/// Two tasks accepting on one listener (the usual multi-acceptor server). The reactor
/// keeps one waiter per fd and interest and a second `wait` replaces the first, so the
/// first acceptor is never woken: with two connections coming, one stays in the
/// backlog and the run ends in a deadlock. `accept` should queue both waiters (or,
/// like a stream's second reader, refuse the second with `Busy`); it must not lose one.
#[test]
fn two_tasks_accepting_on_one_listener_both_get_a_connection() {
    let (outcome, _) = run_io(|| {
        let l = Rc::new(listen_local());
        let addr = l.local_addr();
        let acceptors: Vec<_> = (0..2)
            .map(|i| {
                let l = l.clone();
                Builder::new()
                    .name(format!("acceptor-{i}"))
                    .spawn(move || {
                        let (s, _) = l.accept().unwrap();
                        let mut id = [0u8; 1];
                        s.read_exact(&mut id).unwrap();
                        id[0]
                    })
                    .unwrap()
            })
            .collect();
        // Both acceptors park in accept before anyone connects.
        yield_now();
        assert!(acceptors.iter().all(|a| !a.is_finished()));
        let clients: Vec<_> = (0..2u8)
            .map(|i| {
                let c = connect(addr);
                c.write_all(&[i]).unwrap();
                c
            })
            .collect();
        let mut got: Vec<u8> = acceptors.into_iter().map(|a| a.join().unwrap()).collect();
        got.sort();
        drop(clients);
        got
    });
    match outcome {
        Ok(got) => assert_eq!(got, [0, 1]),
        Err(e) => panic!("two acceptors on one listener: {e}"),
    }
}

/// A socket whose wait registered it with the reactor, then closed outside `run` (it
/// was returned from the run, a documented case in `net::close`), is closed with
/// `libc::close` alone: the reactor's fd table still says "registered". The kernel
/// drops the fd from the epoll set, and the next socket that gets the same fd number is
/// never added (`Reactor::wait` skips EPOLL_CTL_ADD for a registered slot): its waits
/// are never woken, here a read times out with data waiting in the socket.
#[test]
fn a_socket_closed_after_run_does_not_blind_the_reactor_to_its_fd_number() {
    const READ_LIMIT: Duration = Duration::from_secs(1);
    within(HANG_LIMIT, || {
        let mut rt = io_runtime(Config::default());
        // Run 1: a listener that waited in accept (so it is registered), and a second
        // listener for run 2, both handed out of the run.
        let (old, next) = rt
            .run(|| {
                let l = listen_local();
                let addr = l.local_addr();
                let connector = spawn(move || connect(addr)).unwrap();
                let (_s, _) = l.accept().unwrap();
                drop(connector.join().unwrap());
                (l, listen_local())
            })
            .unwrap();
        let stale = old.fd();
        drop(old); // outside the run
        // Run 2: a client socket on the same fd number reads, then the server writes.
        let outcome = rt
            .run(move || {
                let addr = next.local_addr();
                let mut spares = Vec::new();
                let victim = loop {
                    let c = connect(addr);
                    if c.fd() == stale {
                        break Some(c);
                    }
                    if spares.len() == 256 {
                        break None; // another thread holds the number: inconclusive
                    }
                    spares.push(c);
                };
                let Some(victim) = victim else {
                    eprintln!("fd {stale} was not reused; nothing to check");
                    return Ok(());
                };
                let mut servers = Vec::new();
                for _ in 0..=spares.len() {
                    servers.push(next.accept().unwrap().0);
                }
                let sent = Rc::new(Channel::<()>::new(1));
                let writer = spawn({
                    let sent = sent.clone();
                    move || {
                        // Runs once the reader has parked; writes to every accepted
                        // socket, one of which is the victim's peer.
                        for s in &servers {
                            s.write_all(b"data").unwrap();
                        }
                        sent.send(()).unwrap();
                        servers
                    }
                })
                .unwrap();
                victim.set_read_timeout(Some(READ_LIMIT));
                let mut buf = [0u8; 4];
                let r = victim.read_exact(&mut buf);
                sent.recv().unwrap();
                drop(writer.join().unwrap());
                drop(spares);
                r.map(|()| buf)
                    .map(|b| assert_eq!(&b, b"data"))
                    .map_err(|e| e.to_string())
            })
            .unwrap();
        if let Err(e) = outcome {
            panic!("fd {stale}, reused after a close outside run: {e}");
        }
    });
}

/// A system task (libtask's tasksystem: say an accept loop, which must not keep `run`
/// alive) parked in accept on a listener it shares is unwound when the user tasks end,
/// but its wait stays in the reactor's fd table: `RuntimeStats.io.fd_waiters` is still
/// 1 after the run, and in the next run of the runtime that phantom wait counts as I/O
/// in flight, so a deadlock there is never reported: `run` parks in epoll forever.
/// Unwinding a task parked on an fd must withdraw its wait (as a timeout does).
#[test]
fn a_system_task_unwound_in_accept_leaves_no_waiter_behind() {
    within(HANG_LIMIT, || {
        let mut rt = io_runtime(Config::default());
        let l = rt
            .run(|| {
                let l = Rc::new(listen_local());
                Builder::new()
                    .name("acceptor")
                    .system(true)
                    .spawn({
                        let l = l.clone();
                        move || {
                            loop {
                                drop(l.accept().unwrap());
                            }
                        }
                    })
                    .unwrap();
                yield_now(); // the acceptor parks in accept
                l
            })
            .unwrap();
        let io = rt.stats().io;
        assert_eq!(
            io.fd_waiters, 0,
            "a wait of the unwound acceptor is still registered after the run: {io:?}"
        );
        // The consequence: while the listener is open, the next run must still see
        // its deadlock (with the phantom wait it parks in epoll forever).
        let outcome = rt.run(move || {
            let _open = l; // closed inside the run (by the unwinding), not after it
            Builder::new()
                .name("stuck")
                .spawn(|| Rendez::new().sleep())
                .unwrap()
                .join()
                .unwrap();
        });
        let tasks = expect_deadlock(outcome);
        assert_eq!(tasks.len(), 2, "{tasks:?}");
    });
}

/// A stream detached from one runtime carries the bytes it had read ahead; adopted
/// on another runtime (another thread), its reads return those first, then the
/// socket's, and writes go to the same connection.
#[test]
fn a_detached_stream_adopted_on_another_runtime_keeps_the_bytes_read_ahead() {
    let listener = std::net::TcpListener::bind(any_local_port()).unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(HANG_LIMIT)).unwrap();
        // One write: the first runtime's read of 2 bytes reads all 6 ahead.
        s.write_all(b"abcdef").unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ack");
        s.write_all(b"gh").unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest
    });
    let detached = io_ok(move || {
        let s = connect(addr);
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"ab");
        let d = s.detach();
        assert_eq!(d.already_read(), b"cdef", "the read-ahead goes along");
        d
    });
    let got = io_ok(move || {
        let s = TcpStream::adopt(detached);
        let mut four = [0u8; 4];
        s.read_exact(&mut four).unwrap();
        s.write_all(b"ack").unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
        s.write_all(b"end").unwrap();
        [four.to_vec(), two.to_vec()].concat()
    });
    assert_eq!(got, b"cdefgh");
    assert_eq!(peer.join().unwrap(), b"end");
}

/// A reader whose last read drained the socket, busy elsewhere (not waiting on the
/// socket) while more bytes arrive and the driver polls: the edge-triggered event
/// comes with no reader to wake. Its next read must still get the bytes (it waited
/// forever for an edge already gone: an NBD connection's reader, blocked on its full
/// request queue meanwhile, stopped reading requests).
#[test]
fn bytes_arriving_while_the_reader_waits_elsewhere_are_read() {
    io_ok(|| {
        let listener = listen_local();
        let client = connect(listener.local_addr());
        let (server, _) = listener.accept().unwrap();
        let (first, go) = (Rc::new(Channel::new(1)), Rc::new(Channel::new(1)));
        let (f2, g2) = (first.clone(), go.clone());
        let reader = spawn(move || {
            let mut b = [0u8; 10];
            // Waits on the socket first: the fd is in the epoll set from here on.
            server.read_exact(&mut b).unwrap();
            f2.send(b).unwrap();
            g2.recv().unwrap();
            server.set_read_timeout(Some(PROMPTLY));
            server.read_exact(&mut b).unwrap();
            b
        })
        .unwrap();
        yield_now();
        client.write_all(&[1; 10]).unwrap();
        assert_eq!(first.recv().unwrap(), [1; 10]);
        client.write_all(&[2; 10]).unwrap();
        // Not a synchronisation: the condition under test, the driver polling (the
        // edge taken) while the reader waits on a channel, not on the socket.
        taskio::sleep(Duration::from_millis(50));
        go.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), [2; 10]);
    });
}

// ---------------------------------------------------------------------------------
// Polling sockets before parking (`IoConfig::poll_sockets_before_park`)

/// Runs `main` on a runtime whose parks poll sockets for up to `poll` first; its
/// value and the runtime's counters.
fn run_polling<T: Send + 'static>(
    poll: Duration,
    main: impl FnOnce() -> T + Send + 'static,
) -> (T, taskio::RuntimeStats) {
    let io = taskio::IoConfig {
        poll_sockets_before_park: poll,
        ..taskio::IoConfig::default()
    };
    match run_io_with(io, main) {
        (Ok(v), stats) => (v, stats),
        (Err(e), _) => panic!("Runtime::run failed: {e}"),
    }
}

/// A std client thread that sends `rounds` frames one at a time, each after the
/// echo of the one before, and checks every echo.
fn ping_pong_client(addr: SocketAddr, rounds: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        for i in 0..rounds {
            let want = pattern(900 + i, 64);
            let mut frame = (want.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&want);
            s.write_all(&frame).unwrap();
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got).unwrap();
            assert_same(&got, &want, &format!("echo of round {i}"));
        }
    })
}

#[test]
fn a_polling_runtime_catches_a_clients_next_request_without_sleeping() {
    const ROUNDS: u64 = 200;
    // Far longer than a thread's turn around, even on a loaded machine.
    let (client, stats) = run_polling(Duration::from_millis(20), || {
        let l = listen_local();
        let client = ping_pong_client(l.local_addr(), ROUNDS);
        let (s, _) = l.accept().unwrap();
        let mut rounds = 0;
        while let Some(frame) = recv_frame(&s) {
            s.write_all(&frame).unwrap();
            rounds += 1;
        }
        assert_eq!(rounds, ROUNDS);
        client
    });
    client.join().unwrap();
    // Each request but the first arrives while the server polls (a request may
    // come in two segments, its header and its payload: more catches than rounds).
    assert!(
        stats.io.spins_caught >= ROUNDS / 2,
        "{} of {ROUNDS} requests caught by the poll",
        stats.io.spins_caught
    );
    // The default runtime never polls.
    let (_, stats) = run_io(|| {
        let l = listen_local();
        let client = ping_pong_client(l.local_addr(), 10);
        let (s, _) = l.accept().unwrap();
        while let Some(frame) = recv_frame(&s) {
            s.write_all(&frame).unwrap();
        }
        client.join().unwrap();
    });
    assert_eq!(stats.io.spins_caught, 0);
}

#[test]
fn a_polling_runtime_still_wakes_its_timers_on_time() {
    // A poll window longer than the test's time limit: unless the poll ends at the
    // next timer, the first sleep below takes it whole.
    let window = HANG_LIMIT * 2;
    let (longest, _) = run_polling(window, move || {
        let l = listen_local();
        let addr = l.local_addr();
        // A connection that stays silent: a task waits on it all along.
        let silent = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let reader = spawn(move || recv_frame(&s)).unwrap();
        let mut longest = Duration::ZERO;
        for _ in 0..5 {
            let started = StdInstant::now();
            taskio::sleep(Duration::from_millis(10));
            longest = longest.max(started.elapsed());
        }
        drop(silent);
        assert!(
            reader.join().unwrap().is_none(),
            "the silent peer sent a frame"
        );
        longest
    });
    assert!(
        longest < PROMPTLY,
        "a 10 ms sleep took {longest:?} on a runtime polling for up to {window:?}"
    );
}
