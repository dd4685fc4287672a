//! The pipelined client against scripted fake servers: a response is checked
//! against its request (type, READ length), an in-flight slot is given back when its
//! caller unwinds, and every call ends within its timeout, even when the server stops
//! reading.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rpc::limits::{DATA_LEN_MAX, HEADER_LEN};
use rpc::{
    Body, Client, ClientConfig, Header, HelloReply, Message, MsgType, Request, Response, RpcError,
    SessionConfig, SessionInfo, decode_header, encode_frame, serve_listener,
};
use taskio::sim::{Sim, SimConfig};
use taskio::{Config, IoConfig, Runtime, spawn};

/// Bound of every blocking read of a fake server.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn frame_of(msg: &Message<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(1, msg, &mut v).unwrap();
    v
}

/// The fake server's reading of one frame: its header and its payload.
fn read_frame(s: &mut TcpStream) -> Option<(Header, Vec<u8>)> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let h = decode_header(&head).unwrap();
    let mut payload = vec![0; h.payload_len as usize];
    s.read_exact(&mut payload).ok()?;
    Some((h, payload))
}

/// A fake server on its own thread: answers HELLO (queue depth `depth`), then runs
/// `script`.
fn fake_server(
    depth: u32,
    script: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (h, _) = read_frame(&mut s).expect("HELLO");
        let reply = HelloReply {
            version: 1,
            queue_depth: depth,
            data_len_max: DATA_LEN_MAX,
            server_nonce: [7; 32],
            proof: None,
            server_name: "fake",
        };
        s.write_all(&frame_of(&Message {
            tag: h.tag,
            body: Body::Response(Response::Hello(reply)),
        }))
        .unwrap();
        script(&mut s);
    });
    (addr, t)
}

/// The fake server reads to the end of the connection: the client closed it.
fn expect_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    // EOF, or a reset: either way the client is gone; bounded by the read timeout.
    let r = s.read_to_end(&mut rest);
    assert!(
        !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the client kept the connection open"
    );
}

fn in_runtime<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(main).unwrap()
}

fn config(call_timeout: Duration) -> ClientConfig {
    ClientConfig {
        call_timeout,
        ..ClientConfig::default()
    }
}

/// A PING answered with a FLUSH response under its tag: the call fails with a
/// protocol error and the connection closes (a later call fails at once).
#[test]
fn a_response_of_another_type_is_a_protocol_error_that_closes_the_connection() {
    let (addr, fake) = fake_server(4, |s| {
        let (h, _) = read_frame(s).expect("the PING");
        s.write_all(&frame_of(&Message {
            tag: h.tag,
            body: Body::Response(Response::Flush),
        }))
        .unwrap();
        expect_closed(s);
    });
    in_runtime(move || {
        let c = Client::connect(addr, &config(IO_TIMEOUT)).unwrap();
        let e = c.call(Request::Ping { data: b"hi" }).err().expect("fails");
        assert!(
            matches!(&e, RpcError::Protocol { what } if what.contains("FLUSH")),
            "{e}"
        );
        let later = c.call(Request::Ping { data: b"later" }).err();
        assert!(
            matches!(later, Some(RpcError::ConnectionLost { .. })),
            "{later:?}"
        );
    });
    fake.join().unwrap();
}

/// A server that closes mid-call: the call's error names the server once, with why
/// (not a second, nameless "connection lost" inside it).
#[test]
fn a_server_that_closes_mid_call_is_named_in_the_error() {
    let (addr, fake) = fake_server(4, |s| {
        read_frame(s).expect("the PING");
    });
    in_runtime(move || {
        let c = Client::connect(addr, &config(IO_TIMEOUT)).unwrap();
        let e = c.call(Request::Ping { data: b"hi" }).err().expect("fails");
        assert_eq!(
            e.to_string(),
            format!("rpc connection to {addr} lost: closed by the peer")
        );
    });
    fake.join().unwrap();
}

/// A READ of 8 bytes answered with 4, a VSSD_READ of 8 answered with 16 (it may be
/// short: the last line of a write): a protocol error that closes the connection.
#[test]
fn a_read_answered_with_another_length_is_a_protocol_error_that_closes() {
    for vssd in [false, true] {
        let (addr, fake) = fake_server(4, move |s| {
            let (h, _) = read_frame(s).expect("the READ");
            let data = [9u8; 16];
            let body = if vssd {
                Response::VssdRead {
                    version: 1,
                    data: &data,
                }
            } else {
                Response::Read { data: &data[..4] }
            };
            s.write_all(&frame_of(&Message {
                tag: h.tag,
                body: Body::Response(body),
            }))
            .unwrap();
            expect_closed(s);
        });
        in_runtime(move || {
            let c = Client::connect(addr, &config(IO_TIMEOUT)).unwrap();
            let request = if vssd {
                Request::VssdRead {
                    handle: 1,
                    line: 0,
                    length: 8,
                }
            } else {
                Request::Read {
                    handle: 1,
                    offset: 0,
                    length: 8,
                }
            };
            let e = c.call(request).err().expect("fails");
            assert!(matches!(e, RpcError::Protocol { .. }), "{e}");
            assert!(c.call(Request::Ping { data: b"x" }).is_err());
        });
        fake.join().unwrap();
    }
}

/// A server that stops reading: the callers' frames fill the socket buffers and
/// their writes block; every call still ends (TimedOut, or the connection that a
/// timed-out write broke) within its timeout, not much later.
#[test]
fn every_call_ends_within_its_timeout_even_when_the_server_stops_reading() {
    const CALLERS: usize = 4;
    let call_timeout = Duration::from_millis(300);
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let (addr, fake) = fake_server(CALLERS as u32, move |_s| {
        // Never read again; hold the connection until the client is done.
        let _ = wait.recv_timeout(IO_TIMEOUT * 4);
    });
    in_runtime(move || {
        let c = Rc::new(Client::connect(addr, &config(call_timeout)).unwrap());
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let c = c.clone();
                spawn(move || {
                    let data = vec![1u8; DATA_LEN_MAX as usize];
                    let mut ended = Vec::new();
                    // Enough 1 MiB WRITEs to fill any socket buffer.
                    for _ in 0..16 {
                        let t = Instant::now();
                        let r = c.call(Request::Write {
                            handle: 1,
                            offset: 0,
                            data: &data,
                        });
                        let e = r.err().expect("no answer ever comes");
                        ended.push((t.elapsed(), e.to_string()));
                        if matches!(e, RpcError::ConnectionLost { .. }) {
                            break;
                        }
                    }
                    ended
                })
                .unwrap()
            })
            .collect();
        for h in callers {
            for (took, e) in h.join().unwrap() {
                // The writer's lock may first have to wait for another caller's
                // write, itself bounded by that caller's deadline.
                assert!(took < call_timeout * 3, "ended after {took:?}: {e}");
            }
        }
        drop(c);
    });
    done.send(()).unwrap();
    fake.join().unwrap();
}

/// Callers parked in calls are unwound when their node crashes; the client, held
/// from outside the node, has given their in-flight slots back.
#[test]
fn an_in_flight_slot_is_given_back_when_its_caller_unwinds() {
    const CALLERS: usize = 3;
    struct Never;
    impl rpc::Service for Never {
        fn handle<'s>(
            &self,
            _session: &SessionInfo,
            _header: &Header,
            _request: Request<'_>,
            _scratch: &'s mut Vec<u8>,
        ) -> Response<'s> {
            taskio::sleep(Duration::from_secs(3600));
            Response::Error {
                msg_type: MsgType::Ping,
                status: rpc::Status::Timeout,
                reason: "slept",
            }
        }
    }
    let server: SocketAddr = "10.0.0.1:7000".parse().unwrap();
    let mut sim = Sim::new(SimConfig::new(5));
    let held: Rc<RefCell<Option<Rc<Client>>>> = Rc::new(RefCell::new(None));
    let h2 = held.clone();
    let in_flight_after = sim
        .run(move |h| {
            h.add_node("server", server.ip(), move || {
                let l = taskio::net::listen(server).unwrap();
                let _ = serve_listener(&l, &SessionConfig::default(), 1, || Never);
            });
            let h3 = h2.clone();
            let client = h.add_node("client", "10.0.0.2".parse().unwrap(), move || {
                let c =
                    Rc::new(Client::connect(server, &config(Duration::from_secs(600))).unwrap());
                *h3.borrow_mut() = Some(c.clone());
                let callers: Vec<_> = (0..CALLERS)
                    .map(|_| {
                        let c = c.clone();
                        spawn(move || c.call(Request::Ping { data: b"never" }).err()).unwrap()
                    })
                    .collect();
                for h in callers {
                    let _ = h.join();
                }
            });
            let parked = || {
                h2.borrow()
                    .as_ref()
                    .is_some_and(|c| c.in_flight() == CALLERS)
            };
            assert!(
                h.run_until(Duration::from_secs(5), parked),
                "calls in flight"
            );
            h.crash(client);
            taskio::sleep(Duration::from_millis(10));
            let c = h2.borrow_mut().take().expect("the client");
            c.in_flight()
        })
        .unwrap();
    assert_eq!(in_flight_after, 0, "slots leaked by unwound callers");
}
