//! `tdrv sim rpc`: rpc sessions under the simulator, with the same
//! `serve_listener` / `serve_connection` and `Client` as on real sockets.
//!
//! A server node serves PING (echo; one call in eight is slow in the service) and
//! three client nodes call it, each over one connection with six caller tasks that
//! call with a seeded think time. A client whose connection failed lets its callers
//! finish, checks that no in-flight slot is left, drops the connection and connects
//! again. For two seconds of virtual time the controller makes four seeded trouble
//! events: a crash of the server and its restart; a partition of one client from the
//! server (resetting or silent) and its heal; bad frames injected on the wire
//! (a byte changed, or a tail lost, in either direction). One seed in four runs over
//! slow links (2-40 ms one way instead of 50-500 us).
//!
//! After the trouble the network heals, the clients stop, and each seed checks:
//! every call ended with its reply or an error within its timeout (an echo carries
//! the request's data back); no caller task and no client is stuck; no client holds
//! an in-flight slot; every server session ended once its client was gone (a session
//! holds its frames and buffers, so a session left is what a leak would be), and
//! then every frame and in-flight slot the sessions took is back (the server's
//! `rpc::Ledger`); and the server still serves a new session.
//!
//! `--buggy` runs a service whose handler never returns from one PING in 64 (it
//! waits an hour of virtual time): the calls still end by their timeouts, but the
//! sessions of those handlers never end, and the leak check finds them.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rpc::{
    Client, ClientConfig, Header, Ledger, Request, Response, RpcError, SessionConfig, SessionInfo,
    serve_listener,
};
use taskio::rand::Rng;
use taskio::sim::{NetFault, NodeId, SimConfig, SimHandle};
use taskio::{net, now, sleep, spawn};

use super::{Options, SeedRun};

const SERVER: ([u8; 4], u16) = ([10, 0, 0, 1], 7000);
const CLIENTS: usize = 3;
const CALLERS_PER_CLIENT: usize = 6;
/// Sessions the server serves at once: room for every client and its reconnects.
const SESSIONS_MAX: usize = 16;
/// Requests a session serves at once (fewer than the callers: some wait for a slot).
const QUEUE_DEPTH: u32 = 4;
/// Virtual time of traffic under trouble.
const TROUBLE_FOR: Duration = Duration::from_secs(2);
/// Trouble events in that time.
const TROUBLE_EVENTS: usize = 4;
/// A caller's think time between calls, drawn uniformly.
const THINK_MS: (u64, u64) = (5, 50);
/// A slow call's time in the service, and how often a call is slow (1 in N).
const SLOW_FOR: Duration = Duration::from_millis(300);
const SLOW_ONE_IN: u64 = 8;
/// `--buggy`: one PING in this many never returns from the handler.
const BUGGY_ONE_IN: u64 = 64;
const BUGGY_HANG: Duration = Duration::from_secs(3600);
/// Bound of every call, of a connect, and of a started frame (client and server).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const FRAME_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a server session may stay silent: what ends the session of a client
/// cut by a silent partition.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a call may take beyond its timeout (the deadline's timer fires at the
/// instant; nothing else delays it in virtual time).
const CALL_SLACK: Duration = Duration::from_millis(1);
/// A client's pause before it connects again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// After the stop: bound for the clients to end, and for the server's sessions to.
const CLIENTS_END_WITHIN: Duration = Duration::from_secs(10);
const SESSIONS_END_WITHIN: Duration = Duration::from_secs(10);
/// Attempts of the final check's new session, RECONNECT_PAUSE apart.
const FINAL_CONNECT_TRIES: usize = 50;
/// One-way latency of normal and of slow links, and how often a seed is slow.
const LINK_NORMAL_US: (u64, u64) = (50, 500);
const LINK_SLOW_US: (u64, u64) = (2_000, 40_000);
const SLOW_LINKS_ONE_IN: u64 = 4;
/// The seed's stream for the choices made before the simulation starts, and the
/// first of the callers' streams (taskio's own use streams 0 and 1).
const STREAM_SETUP: u64 = 0x5e7;
const STREAM_CALLERS: u64 = 0x1000;
/// A slow call is still answered within its timeout (even waiting for a slot
/// behind another slow one), so slowness alone never times a call out.
const _: () = assert!(SLOW_FOR.as_millis() * 2 < CALL_TIMEOUT.as_millis());
const _: () = assert!(THINK_MS.0 > 0 && THINK_MS.0 <= THINK_MS.1);
const _: () = assert!(CLIENTS * 2 <= SESSIONS_MAX);
/// A session a silent partition cut ends by its idle timeout before the check.
const _: () = assert!(IDLE_TIMEOUT.as_secs() < SESSIONS_END_WITHIN.as_secs());

fn server_addr() -> SocketAddr {
    SocketAddr::from(SERVER)
}

/// What the seed saw, shared by the controller and the nodes' programs.
#[derive(Default)]
struct World {
    buggy: bool,
    seed: u64,
    /// The clients stop calling and end.
    stop: Cell<bool>,
    failure: RefCell<Option<String>>,
    calls_ok: Cell<u64>,
    /// Calls answered with an error status (a damaged request the server refused).
    calls_answered_error: Cell<u64>,
    calls_timed_out: Cell<u64>,
    calls_failed: Cell<u64>,
    call_us_max: Cell<u64>,
    callers_live: Cell<usize>,
    clients_done: Cell<usize>,
    sessions: Cell<u64>,
    /// Server sessions whose service still exists (made, not dropped).
    services_live: Cell<usize>,
    /// Frames and in-flight slots the server's sessions took and returned (the
    /// ledger survives the server's crashes: a crashed session's unwinding
    /// returns what it held).
    ledger: Ledger,
    crashes: Cell<u64>,
    bad_frames: Cell<u64>,
}

impl World {
    fn fail(&self, why: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(why);
        }
    }
}

/// Echoes PING; one in SLOW_ONE_IN (by its data) is slow; `--buggy` hangs one in
/// BUGGY_ONE_IN. Counts itself in `services_live` while it exists.
struct Echo(Rc<World>);

impl Echo {
    fn new(world: &Rc<World>) -> Echo {
        world.services_live.set(world.services_live.get() + 1);
        Echo(world.clone())
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.0.services_live.set(self.0.services_live.get() - 1);
    }
}

/// The first 8 bytes of a call's data: a number the caller drew, which decides
/// whether the service is slow on it.
fn call_number(data: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    let len = data.len().min(8);
    n[..len].copy_from_slice(&data[..len]);
    u64::from_le_bytes(n)
}

impl rpc::Service for Echo {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        if let Request::Ping { data } = &request {
            let n = call_number(data);
            if self.0.buggy && n % BUGGY_ONE_IN == 1 {
                sleep(BUGGY_HANG);
            } else if n.is_multiple_of(SLOW_ONE_IN) {
                sleep(SLOW_FOR);
            }
        }
        rpc::echo::Echo.handle(session, header, request, scratch)
    }
}

fn server_program(world: &Rc<World>) {
    let Ok(listener) = net::listen(server_addr()) else {
        world.fail("the server cannot listen".into());
        return;
    };
    let config = SessionConfig {
        queue_depth: QUEUE_DEPTH,
        frame_timeout: FRAME_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        ledger: Some(world.ledger.clone()),
        ..SessionConfig::default()
    };
    let w = world.clone();
    // Returns only when accepting fails (the node crashed: its tasks unwind).
    let _ = serve_listener(&listener, &config, SESSIONS_MAX, || {
        w.sessions.set(w.sessions.get() + 1);
        Echo::new(&w)
    });
}

fn client_config() -> ClientConfig {
    ClientConfig {
        call_timeout: CALL_TIMEOUT,
        connect_timeout: CONNECT_TIMEOUT,
        frame_timeout: FRAME_TIMEOUT,
        ..ClientConfig::default()
    }
}

/// One call and its checks; false when the connection should be given up.
fn one_call(world: &World, client: &Client, data: &[u8]) -> bool {
    let started = now();
    let outcome = client.call(Request::Ping { data });
    let took = now() - started;
    world
        .call_us_max
        .set(world.call_us_max.get().max(took.as_micros() as u64));
    if took > CALL_TIMEOUT + CALL_SLACK {
        world.fail(format!(
            "a call took {took:?}, beyond its timeout {CALL_TIMEOUT:?}: {:?}",
            outcome.as_ref().err()
        ));
    }
    let reply = match outcome {
        Ok(r) => r,
        Err(RpcError::TimedOut { .. }) => {
            world.calls_timed_out.set(world.calls_timed_out.get() + 1);
            return false;
        }
        Err(_) => {
            world.calls_failed.set(world.calls_failed.get() + 1);
            return false;
        }
    };
    match reply.response() {
        Ok(Response::Ping { data: back }) if back == data => {
            world.calls_ok.set(world.calls_ok.get() + 1);
            true
        }
        Ok(Response::Error { .. }) => {
            world
                .calls_answered_error
                .set(world.calls_answered_error.get() + 1);
            true
        }
        other => {
            world.fail(format!("PING of {} bytes answered {other:?}", data.len()));
            false
        }
    }
}

/// A caller task: calls until the stop, or until its connection fails.
fn caller(world: Rc<World>, client: Rc<Client>, broken: Rc<Cell<bool>>, mut rng: Rng) {
    let mut data = Vec::new();
    while !world.stop.get() && !broken.get() {
        let len = rng.between(8, 256) as usize;
        data.resize(len, 0);
        rng.fill(&mut data);
        if !one_call(&world, &client, &data) {
            broken.set(true);
        }
        sleep(Duration::from_millis(rng.between(THINK_MS.0, THINK_MS.1)));
    }
}

/// A client node: a connection at a time, CALLERS_PER_CLIENT callers on it.
fn client_program(world: &Rc<World>, index: usize) {
    let mut session = 0u64;
    while !world.stop.get() {
        let Ok(client) = Client::connect(server_addr(), &client_config()) else {
            sleep(RECONNECT_PAUSE);
            continue;
        };
        let client = Rc::new(client);
        let broken = Rc::new(Cell::new(false));
        let mut callers = Vec::with_capacity(CALLERS_PER_CLIENT);
        for c in 0..CALLERS_PER_CLIENT {
            let stream = STREAM_CALLERS + ((index as u64 * 1000 + session) << 8) + c as u64;
            let rng = Rng::stream(world.seed, stream);
            let (w, cl, b) = (world.clone(), client.clone(), broken.clone());
            world.callers_live.set(world.callers_live.get() + 1);
            let spawned = spawn(move || {
                caller(w.clone(), cl, b, rng);
                w.callers_live.set(w.callers_live.get() - 1);
            });
            match spawned {
                Ok(h) => callers.push(h),
                Err(e) => {
                    world.callers_live.set(world.callers_live.get() - 1);
                    world.fail(format!("client {index}: cannot spawn a caller: {e}"));
                }
            }
        }
        for h in callers {
            if let Err(e) = h.join() {
                world.fail(format!("client {index}: a caller panicked: {e:?}"));
            }
        }
        if client.in_flight() != 0 {
            world.fail(format!(
                "client {index}: {} in-flight slots held after every caller ended",
                client.in_flight()
            ));
        }
        session += 1;
        drop(client);
        if broken.get() {
            sleep(RECONNECT_PAUSE);
        }
    }
    world.clients_done.set(world.clients_done.get() + 1);
}

/// One trouble event, drawn from the seed.
fn trouble(h: &SimHandle, world: &World, server: NodeId, clients: &[NodeId]) {
    let client = clients[h.random(clients.len() as u64) as usize];
    match h.random(3) {
        0 => {
            h.crash(server);
            world.crashes.set(world.crashes.get() + 1);
            sleep(Duration::from_millis(h.random(300)));
            h.restart(server);
        }
        1 => {
            h.partition(client, server);
            sleep(Duration::from_millis(h.random(1000)));
            h.heal(client, server);
        }
        _ => {
            for _ in 0..1 + h.random(3) {
                let fault = if h.random(2) == 0 {
                    NetFault::Corrupt
                } else {
                    NetFault::Truncate
                };
                if h.random(2) == 0 {
                    h.inject_net(client, server, fault);
                } else {
                    h.inject_net(server, client, fault);
                }
                world.bad_frames.set(world.bad_frames.get() + 1);
            }
        }
    }
}

/// The final check: a new session on the server answers.
fn new_session_answers(world: &World) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..FINAL_CONNECT_TRIES {
        match Client::connect(server_addr(), &client_config()) {
            Ok(c) => {
                let before = world.calls_ok.get();
                one_call(world, &c, b"the final check's call");
                if world.calls_ok.get() == before + 1 {
                    return Ok(());
                }
                last = "its call did not succeed".into();
            }
            Err(e) => last = e.to_string(),
        }
        sleep(RECONNECT_PAUSE);
    }
    Err(format!(
        "the server serves no new session after {FINAL_CONNECT_TRIES} tries: {last}"
    ))
}

/// The controller: nodes, trouble, then the checks; the failure, if any.
fn control(h: &SimHandle, world: &Rc<World>) -> Option<String> {
    let w = world.clone();
    let server = h.add_node("server", server_addr().ip(), move || server_program(&w));
    let clients: Vec<NodeId> = (0..CLIENTS)
        .map(|i| {
            let w = world.clone();
            let ip = SocketAddr::from(([10, 0, 0, 11 + i as u8], 0)).ip();
            h.add_node(&format!("client-{i}"), ip, move || client_program(&w, i))
        })
        .collect();
    let start = h.now();
    for _ in 0..TROUBLE_EVENTS {
        let gap = TROUBLE_FOR.as_millis() as u64 / TROUBLE_EVENTS as u64;
        sleep(Duration::from_millis(h.random(gap)));
        trouble(h, world, server, &clients);
    }
    let elapsed = h.now() - start;
    if elapsed < TROUBLE_FOR {
        sleep(TROUBLE_FOR - elapsed);
    }
    world.stop.set(true);
    let ended = || world.clients_done.get() == CLIENTS && world.callers_live.get() == 0;
    if !h.run_until(CLIENTS_END_WITHIN, ended) {
        return Some(format!(
            "stuck: {} of {CLIENTS} clients ended, {} caller tasks still running {CLIENTS_END_WITHIN:?} after the stop",
            world.clients_done.get(),
            world.callers_live.get()
        ));
    }
    if !h.run_until(SESSIONS_END_WITHIN, || world.services_live.get() == 0) {
        let held = world.ledger.counts();
        return Some(format!(
            "leak: {} server sessions still live {SESSIONS_END_WITHIN:?} after their clients left, holding {} frames and {} in-flight slots",
            world.services_live.get(),
            held.frames_held(),
            held.slots_held()
        ));
    }
    // Every session has ended: each frame and slot it took is back.
    let held = world.ledger.counts();
    if held.frames_held() != 0 || held.slots_held() != 0 {
        return Some(format!(
            "leak: the server's ended sessions hold {} frames and {} in-flight slots ({held:?})",
            held.frames_held(),
            held.slots_held()
        ));
    }
    if let Err(e) = new_session_answers(world) {
        return Some(e);
    }
    world.failure.borrow().clone()
}

/// Runs one seed of the scenario.
pub fn run_seed(seed: u64, opts: Options) -> SeedRun {
    let mut setup = Rng::stream(seed, STREAM_SETUP);
    let slow_links = setup.below(SLOW_LINKS_ONE_IN) == 0;
    let (lo, hi) = if slow_links {
        LINK_SLOW_US
    } else {
        LINK_NORMAL_US
    };
    let mut config: SimConfig = super::simulator_config(seed);
    config.net_latency = (Duration::from_micros(lo), Duration::from_micros(hi));
    let mut sim = taskio::sim::Sim::new(config);
    let world = Rc::new(World {
        buggy: opts.buggy,
        seed,
        ..World::default()
    });
    let w = world.clone();
    let result = sim.run(move |h| control(h, &w));
    let failure = match result {
        Ok(f) => f,
        Err(e) => Some(format!("the simulation itself failed: {e}")),
    };
    let st = sim.stats();
    let ledger = world.ledger.counts();
    SeedRun {
        trace: sim.trace_hash(),
        failure,
        detail: format!(
            "{} calls answered, {} answered with an error, {} timed out, {} failed, longest {} us; {} sessions, {} frames and {} in-flight slots taken ({} and {} held at the end); {} crashes, {} resetting and {} silent partitions, {} bad frames injected ({} corrupted, {} truncated on the wire){}",
            world.calls_ok.get(),
            world.calls_answered_error.get(),
            world.calls_timed_out.get(),
            world.calls_failed.get(),
            world.call_us_max.get(),
            world.sessions.get(),
            ledger.frames_taken,
            ledger.slots_taken,
            ledger.frames_held(),
            ledger.slots_held(),
            world.crashes.get(),
            st.partitions_reset,
            st.partitions_silent,
            world.bad_frames.get(),
            st.net_chunks_corrupted,
            st.net_chunks_truncated,
            if slow_links { "; slow links" } else { "" }
        ),
    }
}
