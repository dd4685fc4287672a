//! Thread hosting of sessions: a thin layer on top of "serve one connection".
//!
//! [`Host`] is generic over what serving a connection means: an acceptor thread
//! takes connections (blocking std `accept`, no runtime) and hands each, as a
//! [`Handoff`] (a plain fd plus the bytes already read from it) through taskio's
//! `Remote`, to one of a bounded set of runtime threads, each with its own taskio
//! runtime, where the per-thread serve function runs it as a task. Today each
//! runtime serves one connection at a time (so `runtimes` bounds the sessions);
//! over the limit a client gets ERROR(TAG_NONE, BUSY) and a closed connection. The
//! same layer is meant for `cdev` (hand a connection to the runtime of the device it
//! opened) and the NBD export.
//!
//! [`Server`] is the rpc server on top: [`Host`] with
//! [`serve_connection`] as the serve function (HELLO, reader
//! task, handler tasks: see [`crate::session`]). A session that ends (client gone,
//! bad framing) frees all it held; the server goes on.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use taskio::net::TcpStream;
use taskio::remote::{Inbox, Remote, RemoteSendError, remote};
use taskio::{Builder, Config, IoConfig, IoError, Runtime};

use crate::error::RpcError;
use crate::limits::VERSION_MIN;
use crate::msg::Message;
use crate::session::{REFUSE_WRITE_TIMEOUT, Service, SessionConfig, serve_connection};
use crate::status::Status;

/// A connection on its way from the thread that accepted it to the runtime that
/// will serve it: a plain fd, and what was already read from it (a handshake an
/// acceptor looked at; nothing, for rpc's own acceptor).
#[derive(Debug)]
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub already_read: Vec<u8>,
}

impl Handoff {
    /// The connection as a stream of the current runtime; its reads return
    /// `already_read` first.
    pub fn adopt(self) -> Result<TcpStream, IoError> {
        TcpStream::from_std_with_read(self.stream, self.already_read)
    }
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

/// Poison-proof lock: a thread that panicked holding one of these left nothing
/// half-done (each critical section is one push, pop or store).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the acceptor and the runtime threads share.
struct Shared {
    stop: AtomicBool,
    /// Runtimes with no connection.
    free: Mutex<Vec<usize>>,
    /// The connection each runtime serves now (a clone, to shut it down on stop).
    serving: Vec<Mutex<Option<std::net::TcpStream>>>,
}

/// Running acceptor and runtime threads; `stop` (or drop) ends them and joins.
pub struct Host {
    local: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    runtimes: Vec<JoinHandle<()>>,
}

impl Host {
    /// Binds `config.addr` and starts the acceptor and the runtime threads. On each
    /// runtime thread `make_serve` builds, once, the function that serves one
    /// connection there; it runs in a task of that runtime, and the runtime takes
    /// its next connection when it returns.
    pub fn start<G, F>(config: HostConfig, make_serve: F) -> Result<Host, RpcError>
    where
        G: Fn(TcpStream) + 'static,
        F: Fn() -> G + Send + Sync + 'static,
    {
        assert!(config.runtimes > 0, "a host needs at least one runtime");
        let setup = |what| move |source| RpcError::Setup { what, source };
        let listener = TcpListener::bind(config.addr).map_err(setup("bind"))?;
        let local = listener.local_addr().map_err(setup("local_addr"))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            free: Mutex::new((0..config.runtimes).rev().collect()),
            serving: (0..config.runtimes).map(|_| Mutex::new(None)).collect(),
        });
        let make_serve = Arc::new(make_serve);
        let mut remotes = Vec::with_capacity(config.runtimes);
        let mut runtimes = Vec::with_capacity(config.runtimes);
        for i in 0..config.runtimes {
            // One connection at a time: a queue of one.
            let (tx, inbox) = remote::<Handoff>(1).map_err(|source| RpcError::Io {
                op: "remote",
                source,
            })?;
            remotes.push(tx);
            let (config, shared, make_serve) = (config.clone(), shared.clone(), make_serve.clone());
            let t = std::thread::Builder::new()
                .name(format!("rpc-session-{i}"))
                .spawn(move || runtime_thread(i, &config, inbox, shared, make_serve))
                .map_err(setup("spawn runtime thread"))?;
            runtimes.push(t);
        }
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("rpc-acceptor".into())
            .spawn(move || acceptor(listener, remotes, &s))
            .map_err(setup("spawn acceptor"))?;
        Ok(Host {
            local,
            shared,
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
        self.shared.stop.store(true, Ordering::Release);
        // Wake the acceptor out of accept().
        let _ = std::net::TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for slot in &self.shared.serving {
            if let Some(s) = lock(slot).as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        for t in self.runtimes.drain(..) {
            let _ = t.join();
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

fn acceptor(listener: TcpListener, remotes: Vec<Remote<Handoff>>, shared: &Shared) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = conn else {
            continue; // a client that gave up before we accepted it
        };
        let Some(i) = lock(&shared.free).pop() else {
            refuse(stream, Status::Busy, "session limit reached");
            continue;
        };
        if let Ok(clone) = stream.try_clone() {
            *lock(&shared.serving[i]) = Some(clone);
        }
        let handoff = Handoff {
            stream,
            already_read: Vec::new(),
        };
        if let Err(e) = remotes[i].send(handoff) {
            // The runtime thread is gone (it failed to start its runtime).
            let (RemoteSendError::Full { value, .. } | RemoteSendError::Closed(value)) = e;
            refuse(
                value.stream,
                Status::ShuttingDown,
                "session thread unavailable",
            );
        }
    }
    // Dropping the remotes closes every inbox: idle runtime threads end.
    drop(remotes);
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

fn runtime_thread<G, F>(
    index: usize,
    config: &HostConfig,
    inbox: Inbox<Handoff>,
    shared: Arc<Shared>,
    make_serve: Arc<F>,
) where
    G: Fn(TcpStream) + 'static,
    F: Fn() -> G + Send + Sync + 'static,
{
    let Ok(mut rt) = Runtime::with_io(config.runtime.clone(), config.io.clone()) else {
        return; // the acceptor learns it when a send fails
    };
    let _ = rt.run(move || {
        let serve = Rc::new(make_serve());
        while let Ok(Some(handoff)) = inbox.recv() {
            if let Ok(stream) = handoff.adopt() {
                // A task of its own, so that a panic in it ends that connection
                // alone; the runtime goes on with the next one.
                let serve = serve.clone();
                let served = Builder::new()
                    .name(format!("rpc-serve-{index}"))
                    .spawn(move || serve(stream));
                if let Ok(h) = served {
                    let _ = h.join();
                }
            }
            *lock(&shared.serving[index]) = None;
            lock(&shared.free).push(index);
        }
    });
}

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Sessions served at once (one runtime thread each); more clients are refused.
    pub sessions_max: usize,
    /// Requests one session may have in flight (handler tasks per session).
    pub queue_depth: u32,
    /// When set, HELLO must prove knowledge of it (HMAC-SHA256).
    pub secret: Option<Vec<u8>>,
    pub server_name: String,
    /// How long a started frame may take to arrive completely, and a response frame
    /// to be written: a client that does not read its responses loses its session
    /// instead of holding it.
    pub frame_timeout: Duration,
    /// How long a session may stay silent between requests.
    pub idle_timeout: Duration,
    /// How long an idle session waits before it gives its buffers back.
    pub idle_shrink_after: Duration,
    /// Settings of each session thread's runtime (stall detector, stacks).
    pub runtime: Config,
    pub io: IoConfig,
}

impl ServerConfig {
    pub fn new(addr: SocketAddr) -> ServerConfig {
        let session = SessionConfig::default();
        ServerConfig {
            addr,
            sessions_max: 16,
            queue_depth: session.queue_depth,
            secret: session.secret,
            server_name: session.server_name,
            frame_timeout: session.frame_timeout,
            idle_timeout: session.idle_timeout,
            idle_shrink_after: session.idle_shrink_after,
            runtime: Config::default(),
            io: IoConfig::default(),
        }
    }

    /// The settings of each session of this server.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            queue_depth: self.queue_depth,
            secret: self.secret.clone(),
            server_name: self.server_name.clone(),
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
            idle_shrink_after: self.idle_shrink_after,
        }
    }

    /// The hosting of this server's sessions.
    pub fn host(&self) -> HostConfig {
        HostConfig {
            addr: self.addr,
            runtimes: self.sessions_max,
            runtime: self.runtime.clone(),
            io: self.io.clone(),
        }
    }
}

/// A running rpc server: a [`Host`] whose runtimes serve rpc sessions.
pub struct Server {
    host: Host,
}

impl Server {
    /// Binds `config.addr` and starts the acceptor and the session threads;
    /// `make_service` builds each session's service on its thread.
    pub fn start<S, F>(config: ServerConfig, make_service: F) -> Result<Server, RpcError>
    where
        S: Service + 'static,
        F: Fn() -> S + Send + Sync + 'static,
    {
        assert!(config.sessions_max > 0, "sessions_max must be at least 1");
        let session = config.session();
        session.check()?;
        let make_service = Arc::new(make_service);
        let host = Host::start(config.host(), move || {
            let (session, make_service) = (session.clone(), make_service.clone());
            move |stream| {
                let _ = serve_connection(stream, &session, make_service());
            }
        })?;
        Ok(Server { host })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// Stops accepting, ends every session (their sockets are shut down), joins.
    pub fn stop(self) {
        self.host.stop();
    }
}
