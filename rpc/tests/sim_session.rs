//! The rpc session under taskio's simulator: the same `serve_listener` /
//! `serve_connection` and `Client` as on real sockets, a server node and a client
//! node in one thread, virtual time. Calls succeed; when the server node crashes,
//! every call in flight and every later call ends with an error, long before its
//! timeout (no hang); after a restart a new session works. Seeded, so a run repeats
//! exactly (same trace hash).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rpc::{
    Client, ClientConfig, Header, Request, Response, RpcError, SessionConfig, SessionInfo,
    serve_listener,
};
use taskio::sim::{Sim, SimConfig};
use taskio::{net, sleep, spawn};

const SERVER: ([u8; 4], u16) = ([10, 0, 0, 1], 7000);
/// Callers on the client's one connection.
const CALLERS: usize = 8;
/// Calls each caller makes before the crash.
const CALLS_BEFORE: usize = 10;
/// Virtual time a PING of `SLOW` data spends in the service.
const SLOW_FOR: Duration = Duration::from_secs(1);
const SLOW: &[u8] = b"slow";
/// Bound of every call: far beyond what a call that ends by the crash may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a call in flight at the crash may take to fail.
const FAIL_WITHIN: Duration = Duration::from_millis(100);
/// Connection attempts of the client after the restart, `RETRY_EVERY` apart.
const CONNECT_TRIES_MAX: usize = 100;
const RETRY_EVERY: Duration = Duration::from_millis(50);

fn server_addr() -> SocketAddr {
    SocketAddr::from(SERVER)
}

/// Echoes PING; one with `SLOW` data first sleeps SLOW_FOR of virtual time.
struct Echo;

impl rpc::Service for Echo {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        if matches!(&request, Request::Ping { data } if *data == SLOW) {
            sleep(SLOW_FOR);
        }
        rpc::echo::Echo.handle(session, header, request, scratch)
    }
}

fn server_program() {
    let listener = net::listen(server_addr()).expect("listen");
    let config = SessionConfig {
        queue_depth: CALLERS as u32,
        ..SessionConfig::default()
    };
    let e = serve_listener(&listener, &config, 4, || Echo);
    panic!("serve_listener returned: {e:?}");
}

fn client_config() -> ClientConfig {
    ClientConfig {
        call_timeout: CALL_TIMEOUT,
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    }
}

fn echo(c: &Client, data: &[u8]) -> Result<(), RpcError> {
    let r = c.call(Request::Ping { data })?;
    match r.response()? {
        Response::Ping { data: back } if back == data => Ok(()),
        other => panic!("PING {data:?} answered {other:?}"),
    }
}

/// What the client node saw.
#[derive(Default, Debug)]
struct Seen {
    ok_before: usize,
    /// Calls that were in flight at the crash: how long after the crash each ended,
    /// and how.
    failed: Vec<(Duration, String)>,
    /// A call after the failure: failed at once?
    later: Option<String>,
    ok_after_restart: usize,
}

/// One seed: returns what was seen and the trace hash.
fn run(seed: u64) -> (Seen, u64) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let seen = Rc::new(RefCell::new(Seen::default()));
    let crashed_at = Rc::new(RefCell::new(None));
    let (s2, c2) = (seen.clone(), crashed_at.clone());
    sim.run(move |h| {
        let server = h.add_node("server", server_addr().ip(), server_program);
        let (s3, c3) = (s2.clone(), c2.clone());
        h.add_node("client", "10.0.0.2".parse().unwrap(), move || {
            let (seen, crashed_at) = (s3.clone(), c3.clone());
            let c = Rc::new(Client::connect(server_addr(), &client_config()).expect("connect"));
            let callers: Vec<_> = (0..CALLERS)
                .map(|i| {
                    let (c, seen, crashed_at) = (c.clone(), seen.clone(), crashed_at.clone());
                    spawn(move || {
                        for call in 0..CALLS_BEFORE {
                            let data = format!("caller {i} call {call}");
                            echo(&c, data.as_bytes()).expect("a call before the crash");
                            seen.borrow_mut().ok_before += 1;
                        }
                        // In flight when the server crashes.
                        let e = echo(&c, SLOW).expect_err("a call through the crash fails");
                        let at: taskio::Instant = crashed_at.borrow().expect("crashed");
                        seen.borrow_mut()
                            .failed
                            .push((taskio::now() - at, e.to_string()));
                    })
                    .unwrap()
                })
                .collect();
            for h in callers {
                h.join().unwrap();
            }
            let later = echo(&c, b"later").expect_err("a later call fails");
            seen.borrow_mut().later = Some(later.to_string());
            // The server comes back: a new session.
            let mut tries = 0;
            let c = loop {
                match Client::connect(server_addr(), &client_config()) {
                    Ok(c) => break c,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < CONNECT_TRIES_MAX, "no new session: {e}");
                        sleep(RETRY_EVERY);
                    }
                }
            };
            for i in 0..CALLERS {
                echo(&c, format!("after restart {i}").as_bytes()).expect("a new session");
                seen.borrow_mut().ok_after_restart += 1;
            }
        });
        let all_slow = || s2.borrow().ok_before == CALLERS * CALLS_BEFORE;
        assert!(h.run_until(Duration::from_secs(10), all_slow));
        // Let the slow PINGs reach the service, then crash the server under them.
        sleep(SLOW_FOR / 2);
        *c2.borrow_mut() = Some(taskio::now());
        h.crash(server);
        let failed = || s2.borrow().later.is_some();
        assert!(h.run_until(Duration::from_secs(5), failed), "calls hang");
        h.restart(server);
        let served = || s2.borrow().ok_after_restart == CALLERS;
        assert!(
            h.run_until(Duration::from_secs(20), served),
            "no new session after the restart: {:?}",
            s2.borrow()
        );
    })
    .unwrap();
    let hash = sim.trace_hash();
    let seen = std::mem::take(&mut *seen.borrow_mut());
    (seen, hash)
}

#[test]
fn calls_succeed_fail_fast_on_a_server_crash_and_a_restart_serves_a_new_session() {
    for seed in 1..=8 {
        let (seen, _) = run(seed);
        assert_eq!(seen.ok_before, CALLERS * CALLS_BEFORE, "seed {seed}");
        assert_eq!(seen.failed.len(), CALLERS, "seed {seed}");
        for (took, e) in &seen.failed {
            assert!(
                *took <= FAIL_WITHIN,
                "seed {seed}: failed {took:?} after the crash: {e}"
            );
            assert!(e.contains("connection"), "seed {seed}: {e}");
        }
        assert!(seen.later.is_some(), "seed {seed}");
        assert_eq!(seen.ok_after_restart, CALLERS, "seed {seed}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    let (_, a) = run(42);
    let (_, b) = run(42);
    assert_eq!(a, b, "same seed, another trace");
}

/// A partition resets the connection: a call in flight fails at once, a new
/// connection is refused until the heal, then a new session works.
#[test]
fn a_partition_fails_calls_at_once_and_a_heal_serves_a_new_session() {
    let mut sim = Sim::new(SimConfig::new(11));
    let log = Rc::new(RefCell::new(Vec::<String>::new()));
    let l2 = log.clone();
    sim.run(move |h| {
        let server = h.add_node("server", server_addr().ip(), server_program);
        let l3 = l2.clone();
        let client = h.add_node("client", "10.0.0.2".parse().unwrap(), move || {
            let c = Client::connect(server_addr(), &client_config()).expect("connect");
            echo(&c, b"before").expect("a call before the partition");
            l3.borrow_mut().push("served".into());
            let t = taskio::now();
            let e = echo(&c, SLOW).expect_err("a call through the partition fails");
            let took = taskio::now() - t;
            // Before the slow answer could have come: the reset ended it.
            assert!(took < SLOW_FOR, "failed after {took:?}: {e}");
            l3.borrow_mut().push(format!("failed: {e}"));
            let mut tries = 0;
            let c = loop {
                match Client::connect(server_addr(), &client_config()) {
                    Ok(c) => break c,
                    Err(_) => {
                        tries += 1;
                        assert!(tries < CONNECT_TRIES_MAX, "no session after the heal");
                        sleep(RETRY_EVERY);
                    }
                }
            };
            echo(&c, b"healed").expect("a new session");
            l3.borrow_mut()
                .push(format!("healed after {tries} refusals"));
        });
        assert!(h.run_until(Duration::from_secs(5), || l2.borrow().len() == 1));
        sleep(SLOW_FOR / 2);
        h.partition(server, client);
        assert!(h.run_until(Duration::from_secs(5), || l2.borrow().len() == 2));
        sleep(Duration::from_millis(500));
        h.heal(server, client);
        assert!(h.run_until(Duration::from_secs(10), || l2.borrow().len() == 3));
    })
    .unwrap();
    let log = log.borrow();
    assert!(log[1].contains("connection"), "{}", log[1]);
    assert!(log[2].starts_with("healed after"), "{}", log[2]);
    assert_ne!(
        log[2], "healed after 0 refusals",
        "refused while partitioned"
    );
}
