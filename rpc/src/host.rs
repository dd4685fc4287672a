//! Thread hosting of connections: a thin layer on top of "serve one connection".
//!
//! A connection travels between runtimes as a [`Handoff`]: a plain fd
//! ([`taskio::net::Detached`]) plus the bytes already read from it, and the session
//! state negotiated on it (its HELLO), if any. A runtime that takes connections has
//! an inbox ([`handoff_inbox`]): a [`HandTo`] (its name and taskio's cross-runtime
//! [`Remote`], `Send` and `Clone`) that any thread or runtime hands connections to,
//! and an [`Inbox`] that [`serve_handed`] takes them from on the receiving runtime,
//! serving each in a task of its own. The wake-up goes through the driver's `Io`
//! seam, so the same code runs on the real reactor and, with the runtimes of a node
//! as task groups of the one simulated runtime, under the simulator.
//!
//! On top, for real threads:
//! - [`RuntimeThread`]: a long-lived OS thread with its own taskio runtime, named by
//!   the embedder, serving what is handed to it (`cdev`: one per open device, to
//!   which a session hands its connection after DEVICE_OPEN, see
//!   [`Service::route`](crate::Service::route));
//! - [`Host`]: an acceptor thread (blocking std `accept`, no runtime) and a bounded
//!   set of runtime threads, each serving one connection at a time (one thread per
//!   session); over the limit a client gets ERROR(TAG_NONE, BUSY) and a closed
//!   connection.
//!
//! Nothing here knows what serving a connection means; [`crate::Server`] plugs in
//! [`serve_handoff`](crate::serve_handoff).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use taskio::net::{Detached, TcpStream};
use taskio::remote::{Inbox, Remote, RemoteSendError, remote};
use taskio::{Builder, Config, IoConfig, Runtime};

use crate::error::RpcError;
use crate::limits::VERSION_MIN;
use crate::msg::Message;
use crate::session::{REFUSE_WRITE_TIMEOUT, SessionInfo, refuse_connection};
use crate::status::Status;

/// Connections waiting in one runtime's inbox, at most: a sender finding it full
/// is refused at once (the client is told BUSY).
pub const HANDOFF_QUEUE_MAX: usize = 64;

/// A connection on its way between runtimes: a plain fd plus what was already read
/// from it, and the HELLO negotiated on it (None: the next owner does the HELLO).
#[derive(Debug)]
pub struct Handoff {
    pub stream: Detached,
    pub hello: Option<Box<SessionInfo>>,
}

impl Handoff {
    /// A connection a blocking acceptor took (nothing read from it yet).
    pub fn accepted(stream: std::net::TcpStream) -> Result<Handoff, RpcError> {
        let stream = Detached::from_std(stream, Vec::new()).map_err(|source| RpcError::Io {
            op: "adopt accepted connection",
            source,
        })?;
        Ok(Handoff {
            stream,
            hello: None,
        })
    }
}

/// Where connections are handed: a runtime's name and the sending side of its
/// inbox. `Send` and `Clone`: any thread or runtime may hold one.
#[derive(Clone)]
pub struct HandTo {
    name: Arc<str>,
    remote: Remote<Handoff>,
}

impl std::fmt::Debug for HandTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandTo").field("name", &self.name).finish()
    }
}

impl HandTo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues `handoff` for the runtime and wakes it; fails at once (the hand-off
    /// comes back) when its inbox is full or the runtime is gone.
    pub fn hand(&self, handoff: Handoff) -> Result<(), RemoteSendError<Handoff>> {
        self.remote.send(handoff)
    }

    /// No more connections: the runtime's `serve_handed` returns once it has taken
    /// those queued.
    pub fn close(&self) {
        self.remote.close();
    }
}

/// A runtime's inbox of connections, holding at most `capacity`: the [`HandTo`]
/// others hand to, and the [`Inbox`] that [`serve_handed`] takes from. Its wake-up
/// is made by the driver of the calling runtime (see `taskio::remote::remote`):
/// call it outside any runtime (an eventfd) or on the receiving runtime's kind
/// (the simulator's own event under the simulator).
pub fn handoff_inbox(name: &str, capacity: usize) -> Result<(HandTo, Inbox<Handoff>), RpcError> {
    let (remote, inbox) = remote::<Handoff>(capacity).map_err(|source| RpcError::Io {
        op: "handoff inbox",
        source,
    })?;
    let to = HandTo {
        name: name.into(),
        remote,
    };
    Ok((to, inbox))
}

/// Serves the connections handed to `inbox` on the current runtime, each in a task
/// of its own (named after the runtime, `name`) that runs `serve`, at most
/// `sessions_max` at once: one more is told ERROR(TAG_NONE, BUSY) and closed.
/// Returns once the inbox is closed and empty (every [`HandTo`] closed or gone);
/// the sessions it started go on until they end.
pub fn serve_handed<G>(
    name: &str,
    inbox: &Inbox<Handoff>,
    sessions_max: usize,
    serve: G,
) -> Result<(), RpcError>
where
    G: Fn(Handoff) + 'static,
{
    assert!(sessions_max > 0, "sessions_max must be at least 1");
    let serve = Rc::new(serve);
    let live = Rc::new(std::cell::Cell::new(0usize));
    while let Some(handoff) = inbox.recv().map_err(|source| RpcError::Io {
        op: "handoff recv",
        source,
    })? {
        if live.get() >= sessions_max {
            let stream = TcpStream::adopt(handoff.stream);
            refuse_connection(stream, Status::Busy, "the runtime's session limit reached");
            continue;
        }
        live.set(live.get() + 1);
        let (serve, done) = (serve.clone(), LiveSlot(live.clone()));
        // A task of its own, so that a panic in it ends that connection alone. At
        // the runtime's task limit the closure and the connection are dropped: that
        // session never starts.
        let _ = Builder::new()
            .name(format!("{name}-session"))
            .spawn(move || {
                let _slot = done;
                serve(handoff);
            });
    }
    Ok(())
}

/// One of `serve_handed`'s session slots, given back when its session ends however
/// it ends (returned, panicked, unwound).
struct LiveSlot(Rc<std::cell::Cell<usize>>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Poison-proof lock: a thread that panicked holding one of these left nothing
/// half-done (each critical section is a push, pop, insert, remove or store).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long, in microseconds, cvad's runtimes and cvacli's poll their sockets
/// before sleeping (taskio's `IoConfig::poll_sockets_before_park`) unless told
/// otherwise: longer than a client's turn around at queue depth 1 (tens of
/// microseconds) and than a 4 KiB write's fdatasync on a fast flash device.
pub const BUSY_POLL_US_DEFAULT: u64 = 200;
/// The longest such poll a setting may ask for.
pub const BUSY_POLL_US_MAX: u64 = 10_000;

/// Settings of a [`RuntimeThread`].
#[derive(Debug, Clone)]
pub struct RuntimeThreadConfig {
    /// The thread's name (and its session tasks').
    pub name: String,
    /// Connections served at once; more are refused BUSY.
    pub sessions_max: usize,
    /// Settings of its runtime (stall detector, stacks) and its I/O.
    pub runtime: Config,
    pub io: IoConfig,
}

impl RuntimeThreadConfig {
    pub fn new(name: &str) -> RuntimeThreadConfig {
        RuntimeThreadConfig {
            name: name.into(),
            sessions_max: 64,
            runtime: Config::default(),
            io: IoConfig::default(),
        }
    }
}

/// The connections a runtime thread serves, as duplicates of their sockets, so
/// that `stop` can shut them down from another thread.
#[derive(Default)]
struct Serving {
    stopping: bool,
    next_id: u64,
    sockets: HashMap<u64, std::net::TcpStream>,
}

/// A long-lived OS thread with its own taskio runtime that serves the connections
/// handed to it ([`serve_handed`]); `stop` (or drop) ends it and joins.
pub struct RuntimeThread {
    to: HandTo,
    serving: Arc<Mutex<Serving>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    /// Starts the thread; on it `make_serve` builds, once, the function that serves
    /// one handed connection there (it runs in a task of its own). Fails when the
    /// thread or its runtime cannot start.
    pub fn start<G, F>(
        config: RuntimeThreadConfig,
        make_serve: F,
    ) -> Result<RuntimeThread, RpcError>
    where
        G: Fn(Handoff) + 'static,
        F: FnOnce() -> G + Send + 'static,
    {
        let setup = |what| move |source| RpcError::Setup { what, source };
        let (to, inbox) = handoff_inbox(&config.name, HANDOFF_QUEUE_MAX)?;
        let serving = Arc::new(Mutex::new(Serving::default()));
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        let s = serving.clone();
        let thread = std::thread::Builder::new()
            .name(config.name.clone())
            .spawn(move || {
                let mut rt = match Runtime::with_io(config.runtime.clone(), config.io.clone()) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let _ = rt.run(move || {
                    let serve = make_serve();
                    let _ = serve_handed(&config.name, &inbox, config.sessions_max, move |h| {
                        let Some(id) = track(&s, &h.stream) else {
                            return; // stopping: the connection is dropped, closed
                        };
                        serve(h);
                        lock(&s).sockets.remove(&id);
                    });
                });
            })
            .map_err(setup("spawn runtime thread"))?;
        let runtime = RuntimeThread {
            to,
            serving,
            thread: Some(thread),
        };
        match started.recv() {
            Ok(Ok(())) => Ok(runtime),
            Ok(Err(source)) => Err(RpcError::Io {
                op: "runtime thread's runtime",
                source,
            }),
            Err(_) => Err(RpcError::Protocol {
                what: format!(
                    "runtime thread {} ended before its runtime started",
                    runtime.name()
                ),
            }),
        }
    }

    pub fn name(&self) -> &str {
        self.to.name()
    }

    /// Where to hand this thread connections.
    pub fn to(&self) -> HandTo {
        self.to.clone()
    }

    /// Takes no more connections, ends every one it serves (their sockets are shut
    /// down), joins.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            let mut serving = lock(&self.serving);
            serving.stopping = true;
            for s in serving.sockets.values() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        self.to.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// Records a connection a runtime thread starts serving (a duplicate of its socket
/// for `stop`); None once the thread is stopping. Under the one lock `stop` takes,
/// so no connection starts after `stop` shut the others down.
fn track(serving: &Mutex<Serving>, stream: &Detached) -> Option<u64> {
    let mut s = lock(serving);
    if s.stopping {
        return None;
    }
    s.next_id += 1;
    let id = s.next_id;
    if let Ok(dup) = stream.try_clone_std() {
        s.sockets.insert(id, dup);
    }
    Some(id)
}

/// Settings of a [`Host`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub addr: SocketAddr,
    /// Runtime threads; each serves one connection at a time, so this is also the
    /// number of connections served at once. More are refused (BUSY).
    pub runtimes: usize,
    /// Settings of each runtime (stall detector, stacks) and its I/O.
    pub runtime: Config,
    pub io: IoConfig,
}

/// Running acceptor and runtime threads (one connection each at a time); `stop`
/// (or drop) ends them and joins.
pub struct Host {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    runtimes: Vec<RuntimeThread>,
}

impl Host {
    /// Binds `config.addr` and starts the acceptor and the runtime threads
    /// (`rpc-session-<i>`). On each runtime thread `make_serve` builds, once, the
    /// function that serves one connection there; the runtime takes its next
    /// connection when it returns.
    pub fn start<G, F>(config: HostConfig, make_serve: F) -> Result<Host, RpcError>
    where
        G: Fn(Handoff) + 'static,
        F: Fn() -> G + Send + Sync + 'static,
    {
        assert!(config.runtimes > 0, "a host needs at least one runtime");
        let setup = |what| move |source| RpcError::Setup { what, source };
        let listener = TcpListener::bind(config.addr).map_err(setup("bind"))?;
        let local = listener.local_addr().map_err(setup("local_addr"))?;
        // Runtimes with no connection.
        let free = Arc::new(Mutex::new((0..config.runtimes).rev().collect::<Vec<_>>()));
        let make_serve = Arc::new(make_serve);
        let mut runtimes = Vec::with_capacity(config.runtimes);
        for i in 0..config.runtimes {
            let thread = RuntimeThreadConfig {
                name: format!("rpc-session-{i}"),
                sessions_max: 1,
                runtime: config.runtime.clone(),
                io: config.io.clone(),
            };
            let (make_serve, free) = (make_serve.clone(), free.clone());
            runtimes.push(RuntimeThread::start(thread, move || {
                let serve = make_serve();
                move |h| {
                    serve(h);
                    // Free before `serve_handed`'s slot of this session is given
                    // back, when the task ends just after: nothing parks between,
                    // so the runtime's loop cannot take the next connection (and
                    // find its one slot taken) in between.
                    lock(&free).push(i);
                }
            })?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let to: Vec<HandTo> = runtimes.iter().map(RuntimeThread::to).collect();
        let s = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("rpc-acceptor".into())
            .spawn(move || acceptor(listener, &to, &free, &s))
            .map_err(setup("spawn acceptor"))?;
        Ok(Host {
            local,
            stop,
            acceptor: Some(acceptor),
            runtimes,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, ends every connection (their sockets are shut down), joins.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the acceptor out of accept().
        let _ = std::net::TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for r in self.runtimes.drain(..) {
            r.stop();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
        }
    }
}

fn acceptor(listener: TcpListener, to: &[HandTo], free: &Mutex<Vec<usize>>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = conn else {
            continue; // a client that gave up before we accepted it
        };
        let Some(i) = lock(free).pop() else {
            refuse(stream, Status::Busy, "session limit reached");
            continue;
        };
        let Ok(handoff) = Handoff::accepted(stream) else {
            lock(free).push(i);
            continue; // gone before it could be set up
        };
        if let Err(e) = to[i].hand(handoff) {
            // The runtime thread is gone (stopping).
            let (RemoteSendError::Full { value, .. } | RemoteSendError::Closed(value)) = e;
            lock(free).push(i);
            if let Ok(stream) = value.stream.into_std() {
                refuse(stream, Status::ShuttingDown, "session thread unavailable");
            }
        }
    }
}

/// Writes a connection-level ERROR frame (best effort, bounded) and closes: the
/// acceptor has no runtime, so this is plain std I/O.
fn refuse(mut stream: std::net::TcpStream, status: Status, reason: &str) {
    use std::io::Write;
    let mut out = Vec::new();
    let m = Message::connection_error(status, reason);
    if crate::encode_frame(VERSION_MIN, &m, &mut out).is_ok() {
        let _ = stream.set_write_timeout(Some(REFUSE_WRITE_TIMEOUT));
        let _ = stream.write_all(&out);
    }
}
