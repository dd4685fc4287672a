//! The server's ledger of frames and in-flight slots (`SessionConfig::ledger`),
//! under the simulator: while a request is in a handler its frame and its slot
//! are held; once the session has ended every frame and slot taken was returned,
//! also when the session ends by a crash of its client mid-call.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rpc::{
    Client, ClientConfig, Header, Ledger, LedgerCounts, Request, Response, SessionConfig,
    SessionInfo, serve_listener,
};
use taskio::sim::{Sim, SimConfig};
use taskio::{net, sleep};

const SERVER: ([u8; 4], u16) = ([10, 0, 0, 1], 7000);
/// PINGs answered before the slow one.
const CALLS: u64 = 20;
/// Virtual time the slow PING spends in its handler.
const SLOW_FOR: Duration = Duration::from_secs(1);
const SLOW: &[u8] = b"slow";

/// Echo; a PING of SLOW data sleeps SLOW_FOR first. Counts the services alive.
struct Echo(Rc<Cell<usize>>);

impl Drop for Echo {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

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

/// Runs one seed: a client calls CALLS PINGs then a slow one, and its node crashes
/// in the middle of the slow one. Returns the ledger's counts in the slow call and
/// after the session has ended.
fn run(seed: u64) -> (LedgerCounts, LedgerCounts) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let ledger = Ledger::new();
    let l2 = ledger.clone();
    sim.run(move |h| {
        let live = Rc::new(Cell::new(0usize));
        let (l3, live2) = (l2.clone(), live.clone());
        h.add_node("server", SocketAddr::from(SERVER).ip(), move || {
            let listener = net::listen(SocketAddr::from(SERVER)).expect("listen");
            let config = SessionConfig {
                ledger: Some(l3.clone()),
                ..SessionConfig::default()
            };
            let live = live2.clone();
            let _ = serve_listener(&listener, &config, 4, move || {
                live.set(live.get() + 1);
                Echo(live.clone())
            });
        });
        let answered = Rc::new(Cell::new(0u64));
        let a2 = answered.clone();
        let client = h.add_node("client", "10.0.0.2".parse().unwrap(), move || {
            let c = Client::connect(SocketAddr::from(SERVER), &ClientConfig::default())
                .expect("connect");
            for i in 0..CALLS {
                let data = i.to_le_bytes();
                let r = c.call(Request::Ping { data: &data }).expect("a call");
                assert!(matches!(r.response(), Ok(Response::Ping { data: d }) if d == data));
                a2.set(a2.get() + 1);
            }
            let _ = c.call(Request::Ping { data: SLOW });
        });
        assert!(h.run_until(Duration::from_secs(5), || answered.get() == CALLS));
        // The slow PING is in its handler now.
        sleep(SLOW_FOR / 2);
        let during = l2.counts();
        h.crash(client);
        // Its session ends: the server sees the connection reset.
        assert!(
            h.run_until(Duration::from_secs(5), || live.get() == 0),
            "the session did not end"
        );
        (during, l2.counts())
    })
    .unwrap()
}

#[test]
fn frames_and_slots_are_held_while_a_request_is_served_and_all_returned_after() {
    for seed in 0..10 {
        let (during, after) = run(seed);
        assert_eq!(during.slots_held(), 1, "seed {seed}: the slow call's slot");
        // Its frame (the reader takes one only when a request starts arriving).
        assert_eq!(during.frames_held(), 1, "seed {seed}: {during:?}");
        assert_eq!(during.slots_taken, CALLS + 1, "seed {seed}");
        assert_eq!(
            after.frames_held(),
            0,
            "seed {seed}: frames leaked: {after:?}"
        );
        assert_eq!(
            after.slots_held(),
            0,
            "seed {seed}: slots leaked: {after:?}"
        );
        assert!(after.frames_taken > CALLS, "seed {seed}: {after:?}");
    }
}

/// A service that panics on a PING of BOOM data (a bug in the service: its handler
/// task ends alone).
struct Panicky;
const BOOM: &[u8] = b"boom";
/// Queue depth of the panicking test's session: fewer than the panics.
const PANICKY_DEPTH: u32 = 2;
const PANICS: u64 = 3;

impl rpc::Service for Panicky {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        if matches!(&request, Request::Ping { data } if *data == BOOM) {
            panic!("the service's bug (expected by the test)");
        }
        rpc::echo::Echo.handle(session, header, request, scratch)
    }
}

/// A handler that panics answers IO_ERROR, gives back its request's frame and slot,
/// and the session goes on serving, more times than its queue depth (were the slot kept, the
/// session would answer every request BUSY after PANICKY_DEPTH panics).
#[test]
fn a_handler_that_panics_answers_io_error_returns_its_slot_and_the_session_goes_on() {
    let mut sim = Sim::new(SimConfig::new(1));
    let ledger = Ledger::new();
    let l2 = ledger.clone();
    let answered = sim
        .run(move |h| {
            let l3 = l2.clone();
            h.add_node("server", SocketAddr::from(SERVER).ip(), move || {
                let listener = net::listen(SocketAddr::from(SERVER)).expect("listen");
                let config = SessionConfig {
                    queue_depth: PANICKY_DEPTH,
                    ledger: Some(l3.clone()),
                    ..SessionConfig::default()
                };
                let _ = serve_listener(&listener, &config, 4, || Panicky);
            });
            let answered = Rc::new(Cell::new(0u64));
            let a2 = answered.clone();
            h.add_node("client", "10.0.0.2".parse().unwrap(), move || {
                let config = ClientConfig {
                    call_timeout: Duration::from_millis(200),
                    ..ClientConfig::default()
                };
                let c = Client::connect(SocketAddr::from(SERVER), &config).expect("connect");
                for i in 0..PANICS {
                    // Told at once, not left to its timeout.
                    let e = c.call(Request::Ping { data: BOOM });
                    assert!(
                        matches!(&e, Ok(r) if r.status() == rpc::Status::IoError),
                        "panic {i}: {:?}",
                        e.map(|r| r.status())
                    );
                    let data = i.to_le_bytes();
                    let r = c.call(Request::Ping { data: &data }).expect("a call");
                    match r.response() {
                        Ok(Response::Ping { data: d }) if d == data => a2.set(a2.get() + 1),
                        other => panic!("after panic {i}: {other:?}"),
                    }
                }
            });
            h.run_until(Duration::from_secs(5), || answered.get() == PANICS);
            answered.get()
        })
        .unwrap();
    assert_eq!(answered, PANICS, "the session served after each panic");
    assert_eq!(ledger.counts().slots_held(), 0, "{:?}", ledger.counts());
}
