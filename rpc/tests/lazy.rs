//! Lazy responses (`Service::lazy`): held while an eager request of the session is
//! in flight and written after its response, in one batch; written at once when no
//! eager request is in flight. The service here: PING is eager and waits at a gate
//! when its data says so; WRITE is lazy.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rpc::{
    Client, ClientConfig, Header, MsgType, Request, Response, Server, ServerConfig, Service,
    SessionInfo,
};
use taskio::{Config, IoConfig, Runtime, spawn};

/// Longest the gated PING waits for its gate, and any wait of the test.
const WAIT_MAX: Duration = Duration::from_secs(5);
/// How long an unheld WRITE response gets to reach the client before the gate
/// opens: with holding broken, the WRITE call would end first.
const UNHELD_GRACE: Duration = Duration::from_millis(50);
const GATED: &[u8] = b"gate";

#[derive(Default)]
struct Shared {
    gate_open: AtomicBool,
    writes: AtomicUsize,
}

struct Lazy(Arc<Shared>);

impl Service for Lazy {
    fn handle<'s>(
        &self,
        _s: &SessionInfo,
        _h: &Header,
        req: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        match req {
            Request::Ping { data } => {
                if data.starts_with(GATED) {
                    let start = Instant::now();
                    while !self.0.gate_open.load(Ordering::Acquire) && start.elapsed() < WAIT_MAX {
                        taskio::sleep(Duration::from_millis(1));
                    }
                }
                scratch.clear();
                scratch.extend_from_slice(data);
                Response::Ping { data: scratch }
            }
            Request::Write { .. } => {
                self.0.writes.fetch_add(1, Ordering::AcqRel);
                Response::Write
            }
            other => Response::Error {
                msg_type: other.msg_type(),
                status: rpc::Status::NotSupported,
                reason: "the lazy test serves PING and WRITE",
            },
        }
    }

    fn lazy(&self, msg_type: MsgType) -> bool {
        msg_type == MsgType::Write
    }
}

fn start() -> (Server, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let server = Server::start(
        ServerConfig::new("127.0.0.1:0".parse().unwrap()),
        move || Lazy(s.clone()),
    )
    .unwrap();
    (server, shared)
}

fn client_config() -> ClientConfig {
    ClientConfig {
        call_timeout: WAIT_MAX,
        ..ClientConfig::default()
    }
}

/// Waits (bounded) until `done` holds, polling on the runtime's clock.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT_MAX,
            "{what}: not within {WAIT_MAX:?}"
        );
        taskio::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_lazy_response_waits_for_the_eager_one_in_flight_and_follows_it() {
    let (server, shared) = start();
    let addr = server.local_addr();
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    let s = shared.clone();
    let order = rt
        .run(move || {
            let c = Rc::new(Client::connect(addr, &client_config()).unwrap());
            let order = Rc::new(RefCell::new(Vec::new()));
            let (c1, o1) = (c.clone(), order.clone());
            let ping = spawn(move || {
                let r = c1.call(Request::Ping { data: GATED }).unwrap();
                assert!(matches!(r.response().unwrap(), Response::Ping { .. }));
                o1.borrow_mut().push("ping");
            })
            .unwrap();
            let (c2, o2) = (c.clone(), order.clone());
            let write = spawn(move || {
                let r = c2
                    .call(Request::Write {
                        handle: 1,
                        offset: 0,
                        data: &[7u8; 512],
                    })
                    .unwrap();
                assert!(matches!(r.response().unwrap(), Response::Write));
                o2.borrow_mut().push("write");
            })
            .unwrap();
            wait_until("the WRITE executed", || {
                s.writes.load(Ordering::Acquire) == 1
            });
            taskio::sleep(UNHELD_GRACE);
            assert!(
                order.borrow().is_empty(),
                "{:?} answered while the gated PING was in flight",
                order.borrow()
            );
            s.gate_open.store(true, Ordering::Release);
            ping.join().unwrap();
            write.join().unwrap();
            order.borrow().clone()
        })
        .unwrap();
    assert_eq!(order, ["ping", "write"], "the held WRITE answered first");
    server.stop();
}

#[test]
fn a_lazy_response_with_nothing_eager_in_flight_goes_out_at_once() {
    let (server, shared) = start();
    let addr = server.local_addr();
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
    rt.run(move || {
        let c = Client::connect(addr, &client_config()).unwrap();
        // Bounded: each call ends within the call timeout, WAIT_MAX.
        for i in 0..8u8 {
            let start = Instant::now();
            let r = c
                .call(Request::Write {
                    handle: 1,
                    offset: 0,
                    data: &[i; 512],
                })
                .unwrap();
            assert!(matches!(r.response().unwrap(), Response::Write));
            assert!(start.elapsed() < WAIT_MAX, "write {i} waited for nothing");
        }
    })
    .unwrap();
    assert_eq!(shared.writes.load(Ordering::Acquire), 8);
    server.stop();
}
