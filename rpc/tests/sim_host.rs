//! Routing a session between runtimes under the simulator: the server node's
//! runtimes are task groups of the one simulated runtime (A: `serve_listener`; B:
//! `serve_handed` on an inbox made on the node), and the hand-off goes through the
//! simulated driver (the inbox's wake-up and the socket, a simulated fd, which the
//! node's runtimes share). The same session code as on real threads; seeded, so a
//! run repeats exactly.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::route::{self, Where};
use rpc::limits::HEADER_LEN;
use rpc::{MsgType, Request, SessionConfig, Status, handoff_inbox, serve_handed, serve_handoff};
use taskio::net::{self, TcpStream};
use taskio::sim::{Sim, SimConfig};
use taskio::spawn;

const SERVER: ([u8; 4], u16) = ([10, 0, 0, 1], 7000);
/// Connections runtime B's inbox holds, and serves at once.
const B_SESSIONS_MAX: usize = 4;
/// Virtual-time bound of the client's run.
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// What one seed saw: the answers' PING data in order, and the bytes already read
/// of each connection B was handed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    pings: Vec<String>,
    opened: bool,
    handed: Vec<Vec<u8>>,
    written: Vec<u8>,
}

fn server_program(seen: Rc<RefCell<Seen>>) {
    let (to_b, inbox_b) = handoff_inbox("b", B_SESSIONS_MAX).expect("inbox");
    // Runtime B: a group of tasks that serves what is handed to it.
    let _b = spawn(move || {
        let seen = seen.clone();
        serve_handed("b", &inbox_b, B_SESSIONS_MAX, move |h| {
            seen.borrow_mut()
                .handed
                .push(h.stream.already_read().to_vec());
            let _ = serve_handoff(h, &SessionConfig::default(), Where::new("b", None));
        })
    })
    .expect("runtime b");
    // Runtime A: the listener; its sessions move to B at DEVICE_OPEN.
    let listener = net::listen(SocketAddr::from(SERVER)).expect("listen");
    let e = rpc::serve_listener(&listener, &SessionConfig::default(), 4, move || {
        Where::new("a", Some(to_b.clone()))
    });
    panic!("serve_listener returned: {e:?}");
}

fn response(s: &TcpStream) -> (rpc::Header, Vec<u8>, Option<u64>) {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = rpc::decode_header(&head).unwrap();
    let mut payload = vec![0; h.payload_len as usize];
    s.read_exact(&mut payload).unwrap();
    route::decode(&head, &payload)
}

fn client_program(seen: Rc<RefCell<Seen>>) {
    let s = net::connect(SocketAddr::from(SERVER), Some(Duration::from_secs(1))).expect("connect");
    s.write_all(&route::hello(1)).unwrap();
    let (h, _, _) = response(&s);
    assert_eq!((h.tag, h.status), (1, Status::Ok), "{h:?}");
    s.write_all(&route::frame(2, Request::Ping { data: b"?" }))
        .unwrap();
    let (open, ping) = route::open_then_ping(3);
    let both = [open, ping].concat();
    let (h, data, _) = response(&s);
    assert_eq!((h.tag, h.status), (2, Status::Ok), "{h:?}");
    seen.borrow_mut()
        .pings
        .push(String::from_utf8(data).unwrap());
    s.write_all(&both).unwrap();
    seen.borrow_mut().written = both;
    let (h, _, handle) = response(&s);
    assert_eq!(
        (h.tag, h.status, h.msg_type),
        (3, Status::Ok, MsgType::DeviceOpen)
    );
    seen.borrow_mut().opened = handle == Some(1);
    for tag in [4, 5] {
        if tag == 5 {
            s.write_all(&route::frame(5, Request::Ping { data: b"?" }))
                .unwrap();
        }
        let (h, data, _) = response(&s);
        assert_eq!((h.tag, h.status), (tag, Status::Ok), "{h:?}");
        seen.borrow_mut()
            .pings
            .push(String::from_utf8(data).unwrap());
    }
}

fn run(seed: u64) -> (Seen, u64) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let seen = Rc::new(RefCell::new(Seen::default()));
    let s2 = seen.clone();
    sim.run(move |h| {
        let s3 = s2.clone();
        h.add_node("server", SocketAddr::from(SERVER).ip(), move || {
            server_program(s3.clone())
        });
        let s4 = s2.clone();
        h.add_node("client", "10.0.0.2".parse().unwrap(), move || {
            client_program(s4.clone())
        });
        let done = || s2.borrow().pings.len() == 3;
        assert!(
            h.run_until(RUN_LIMIT, done),
            "not served: {:?}",
            s2.borrow()
        );
    })
    .unwrap();
    let out = seen.borrow().clone();
    (out, sim.trace_hash())
}

#[test]
fn a_session_routed_between_runtimes_of_a_simulated_node_goes_on_in_runtime_b() {
    for seed in 0..20 {
        let (seen, hash) = run(seed);
        let thread = std::thread::current();
        let here = thread.name().unwrap_or("?");
        assert_eq!(
            seen.pings,
            [
                format!("a@{here}"),
                format!("b@{here}"),
                format!("b@{here}")
            ],
            "seed {seed}: the first PING served by A, the pipelined one and the next by B"
        );
        assert!(seen.opened, "seed {seed}: DEVICE_OPEN answered by B");
        assert_eq!(
            seen.handed,
            std::slice::from_ref(&seen.written),
            "seed {seed}: B got the DEVICE_OPEN and the PING behind it as bytes already read"
        );
        assert_eq!(run(seed).1, hash, "seed {seed} replays exactly");
    }
}
