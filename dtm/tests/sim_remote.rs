//! `RemoteReplica` and `ReplicaService` under taskio's simulator: a peer node serving
//! a vSSD on its simulated disk, a primary node writing to it through the wire.
//! When the peer crashes (the connection resets) the call in flight ends
//! `Unreachable` at once; when the peer goes silent (a partition that drops every
//! packet) it ends `Timeout` at its call timeout, never later. Seeded: a seed
//! replays exactly (same trace hash).

mod support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use dtm::{RemoteReplica, Replica, ReplicaErrorKind, ReplicaService, Vssds};
use rpc::{ClientConfig, SessionConfig, serve_listener};
use support::{DEVICE, params, payload};
use taskio::file::OpenOptions;
use taskio::sim::{Sim, SimConfig};
use taskio::{Instant, net, sleep};
use vssd::{Options, Vssd};

const PEER: ([u8; 4], u16) = ([10, 0, 0, 1], 7100);
const PRIMARY: [u8; 4] = [10, 0, 0, 2];
const VSSD: &str = "replica-a";
const DEV: &str = "/dev/replica-a";
/// Bound of every call (virtual time).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A call ends this long after its timeout at most (the timer's grain).
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);
/// A call in flight when the peer's connection resets ends this soon.
const FAIL_WITHIN: Duration = Duration::from_millis(100);
/// Writes (writep1 + commit) the primary makes before the fault, at least.
const WRITES_BEFORE: usize = 20;
/// Writes it tries at most (it stops at the first failure).
const WRITES_MAX: u64 = 100_000;
/// Opening attempts while the peer boots, `RETRY_EVERY` apart.
const OPEN_TRIES_MAX: usize = 100;
const RETRY_EVERY: Duration = Duration::from_millis(10);
/// Virtual time the driver lets pass at most for each phase.
const PHASE_MAX: Duration = Duration::from_secs(20);

fn peer_addr() -> SocketAddr {
    SocketAddr::from(PEER)
}

/// The peer node: a fresh vSSD on its disk, served to every session.
fn peer_program() {
    let g = params().geometry().expect("geometry");
    let file = OpenOptions::new()
        .create(true)
        .size(g.total_bytes())
        .open(DEV)
        .expect("the vSSD's file");
    vssd::format(&file, &params()).expect("format");
    let (v, _) = Vssd::open(file, Some(DEVICE), Options::default()).expect("open");
    let vssds = Vssds::new();
    vssds.insert(VSSD, v);
    let listener = net::listen(peer_addr()).expect("listen");
    let e = serve_listener(&listener, &SessionConfig::default(), 4, move || {
        ReplicaService::new(vssds.clone())
    });
    panic!("serve_listener returned: {e:?}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The peer node crashes: its connections reset.
    Crash,
    /// Every packet between the two nodes is dropped, nothing resets.
    Silence,
}

/// What the primary saw.
#[derive(Debug, Default)]
struct Seen {
    writes: usize,
    /// When the fault struck (set by the driver).
    fault_at: Option<Instant>,
    /// How long after the fault the failing call ended, its kind and text.
    failed: Option<(Duration, &'static str, String)>,
}

fn kind_name(k: &ReplicaErrorKind) -> &'static str {
    match k {
        ReplicaErrorKind::StaleEpoch { .. } => "stale",
        ReplicaErrorKind::NotFound(_) => "not found",
        ReplicaErrorKind::Timeout => "timeout",
        ReplicaErrorKind::Unreachable(_) => "unreachable",
        ReplicaErrorKind::Io(_) => "io",
        ReplicaErrorKind::Refused(_) => "refused",
    }
}

fn primary(seen: &Rc<RefCell<Seen>>) {
    let config = ClientConfig {
        call_timeout: CALL_TIMEOUT,
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let mut tries = 0;
    let r = loop {
        match RemoteReplica::open(peer_addr(), VSSD, 0, 1, &config) {
            Ok(r) => break r,
            Err(e) => {
                tries += 1;
                assert!(tries < OPEN_TRIES_MAX, "the peer never served: {e}");
                sleep(RETRY_EVERY);
            }
        }
    };
    let lines = r.info().lines;
    for tran in 1..=WRITES_MAX {
        let line = tran % lines;
        let done = r
            .writep1(tran, line, &payload(line, 1, tran))
            .and_then(|()| r.commit(&[tran]));
        if let Err(e) = done {
            let mut s = seen.borrow_mut();
            let at = s.fault_at.expect("a call failed before the fault");
            s.failed = Some((taskio::now() - at, kind_name(&e.kind), e.to_string()));
            return;
        }
        seen.borrow_mut().writes += 1;
    }
}

/// One seed with `fault`: what the primary saw, and the trace hash.
fn run(seed: u64, fault: Fault) -> (Seen, u64) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let seen = Rc::new(RefCell::new(Seen::default()));
    let s2 = seen.clone();
    sim.run(move |h| {
        let peer = h.add_node("peer", peer_addr().ip(), peer_program);
        let s3 = s2.clone();
        let client = h.add_node("primary", PRIMARY.into(), move || primary(&s3));
        let written = || s2.borrow().writes >= WRITES_BEFORE;
        assert!(h.run_until(PHASE_MAX, written), "writes before the fault");
        s2.borrow_mut().fault_at = Some(taskio::now());
        match fault {
            Fault::Crash => h.crash(peer),
            Fault::Silence => h.partition_silent(peer, client),
        }
        let ended = || s2.borrow().failed.is_some();
        assert!(
            h.run_until(PHASE_MAX, ended),
            "a call hangs past its timeout"
        );
    })
    .unwrap();
    let hash = sim.trace_hash();
    let seen = std::mem::take(&mut *seen.borrow_mut());
    (seen, hash)
}

#[test]
fn a_crashed_peer_fails_the_call_in_flight_at_once_as_unreachable() {
    for seed in 1..=4 {
        let (seen, _) = run(seed, Fault::Crash);
        let (took, kind, e) = seen.failed.expect("failed");
        assert_eq!(kind, "unreachable", "seed {seed}: {e}");
        assert!(
            took <= FAIL_WITHIN,
            "seed {seed}: {took:?} after the crash: {e}"
        );
    }
}

#[test]
fn a_silent_peer_fails_the_call_in_flight_within_its_timeout() {
    for seed in 1..=4 {
        let (seen, _) = run(seed, Fault::Silence);
        let (took, kind, e) = seen.failed.expect("failed");
        // Nothing resets: the call waits its whole timeout (it started a few
        // round trips before the partition at most), then ends.
        assert_eq!(kind, "timeout", "seed {seed}: {e}");
        assert!(
            took >= CALL_TIMEOUT - FAIL_WITHIN && took <= CALL_TIMEOUT + TIMEOUT_SLACK,
            "seed {seed}: {took:?} after the partition: {e}"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let (a, ha) = run(7, Fault::Silence);
    let (b, hb) = run(7, Fault::Silence);
    assert_eq!(ha, hb, "same seed, another trace");
    assert_eq!((a.writes, a.failed), (b.writes, b.failed));
}
