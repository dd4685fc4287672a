//! Thread hosting of rpc sessions: an acceptor thread takes connections and hands
//! each, through taskio's `Remote`, to one of a bounded set of session threads, each
//! running its own taskio runtime, where [`serve_connection`] serves it (HELLO,
//! reader task, handler tasks: see [`crate::session`]). Over the limit a client gets
//! an ERROR frame (BUSY) and a closed connection. A session that ends (client gone,
//! bad framing) frees all it held; the server goes on.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use taskio::net::TcpStream;
use taskio::remote::{Inbox, Remote, remote};
use taskio::{Config, IoConfig, Runtime};

use crate::auth;
use crate::error::RpcError;
use crate::limits::{QUEUE_DEPTH_MAX, VERSION_MIN};
use crate::msg::Message;
use crate::session::{Service, SessionConfig, serve_connection};
use crate::status::Status;

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Sessions served at once (one thread each); more clients are refused.
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
    /// Settings of each session thread's runtime (stall detector, stacks).
    pub runtime: Config,
    pub io: IoConfig,
}

impl ServerConfig {
    /// The settings of each session of this server.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            queue_depth: self.queue_depth,
            secret: self.secret.clone(),
            server_name: self.server_name.clone(),
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    pub fn new(addr: SocketAddr) -> ServerConfig {
        ServerConfig {
            addr,
            sessions_max: 16,
            queue_depth: 32,
            secret: None,
            server_name: "cva".into(),
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            runtime: Config::default(),
            io: IoConfig::default(),
        }
    }
}

/// A running server; `stop` (or drop) ends it and joins its threads.
pub struct Server {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    sessions: Vec<JoinHandle<()>>,
    /// The stream each session thread serves now (to shut it down on stop).
    serving: Arc<Vec<Mutex<Option<std::net::TcpStream>>>>,
}

impl Server {
    /// Binds `config.addr` and starts the acceptor and the session threads;
    /// `make_service` builds each session's service on its thread.
    pub fn start<S, F>(config: ServerConfig, make_service: F) -> Result<Server, RpcError>
    where
        S: Service + 'static,
        F: Fn() -> S + Send + Sync + 'static,
    {
        if let Some(secret) = &config.secret {
            auth::check_secret(secret)?;
        }
        assert!(config.sessions_max > 0, "sessions_max must be at least 1");
        assert!(
            (1..=QUEUE_DEPTH_MAX).contains(&config.queue_depth),
            "queue_depth {} out of 1..={QUEUE_DEPTH_MAX}",
            config.queue_depth
        );
        let listener = TcpListener::bind(config.addr).map_err(|source| RpcError::Setup {
            what: "bind",
            source,
        })?;
        let local = listener.local_addr().map_err(|source| RpcError::Setup {
            what: "local_addr",
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let free: Arc<Mutex<Vec<usize>>> =
            Arc::new(Mutex::new((0..config.sessions_max).rev().collect()));
        let serving: Arc<Vec<Mutex<Option<std::net::TcpStream>>>> =
            Arc::new((0..config.sessions_max).map(|_| Mutex::new(None)).collect());
        let make_service = Arc::new(make_service);
        let mut remotes = Vec::with_capacity(config.sessions_max);
        let mut sessions = Vec::with_capacity(config.sessions_max);
        for i in 0..config.sessions_max {
            let (tx, inbox) = remote::<std::net::TcpStream>(1).map_err(|e| RpcError::Io {
                op: "remote",
                source: e,
            })?;
            remotes.push(tx);
            let (config, free, make_service, serving) = (
                config.clone(),
                free.clone(),
                make_service.clone(),
                serving.clone(),
            );
            let t = std::thread::Builder::new()
                .name(format!("rpc-session-{i}"))
                .spawn(move || {
                    session_thread(i, config, inbox, free, serving, move || make_service())
                })
                .map_err(|source| RpcError::Setup {
                    what: "spawn session thread",
                    source,
                })?;
            sessions.push(t);
        }
        let (stop2, serving2) = (stop.clone(), serving.clone());
        let acceptor = std::thread::Builder::new()
            .name("rpc-acceptor".into())
            .spawn(move || acceptor(listener, remotes, free, stop2, serving2))
            .map_err(|source| RpcError::Setup {
                what: "spawn acceptor",
                source,
            })?;
        Ok(Server {
            local,
            stop,
            acceptor: Some(acceptor),
            sessions,
            serving,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, ends every session (their sockets are shut down), joins.
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
        for slot in self.serving.iter() {
            if let Some(s) = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        for t in self.sessions.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
        }
    }
}

fn acceptor(
    listener: TcpListener,
    remotes: Vec<Remote<std::net::TcpStream>>,
    free: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
    serving: Arc<Vec<Mutex<Option<std::net::TcpStream>>>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = conn else {
            continue; // a client that gave up before we accepted it
        };
        let slot = free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(i) = slot else {
            refuse(stream, Status::Busy, "session limit reached");
            continue;
        };
        if let Ok(clone) = stream.try_clone() {
            *serving[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(clone);
        }
        if let Err(e) = remotes[i].send(stream) {
            // The session thread is gone (it failed to start its runtime).
            let stream = match e {
                taskio::remote::RemoteSendError::Full { value, .. } => value,
                taskio::remote::RemoteSendError::Closed(value) => value,
            };
            refuse(stream, Status::ShuttingDown, "session thread unavailable");
        }
    }
    // Dropping the remotes closes every inbox: idle session threads end.
    drop(remotes);
}

/// Writes a connection-level ERROR frame (best effort, bounded) and closes.
fn refuse(mut stream: std::net::TcpStream, status: Status, reason: &str) {
    use std::io::Write;
    let mut out = Vec::new();
    if crate::encode_frame(
        VERSION_MIN,
        &Message::connection_error(status, reason),
        &mut out,
    )
    .is_ok()
    {
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = stream.write_all(&out);
    }
}

fn session_thread<S: Service + 'static>(
    index: usize,
    config: ServerConfig,
    inbox: Inbox<std::net::TcpStream>,
    free: Arc<Mutex<Vec<usize>>>,
    serving: Arc<Vec<Mutex<Option<std::net::TcpStream>>>>,
    make_service: impl Fn() -> S + 'static,
) {
    let rt = Runtime::with_io(config.runtime.clone(), config.io.clone());
    let Ok(mut rt) = rt else {
        return; // the acceptor learns it when a send fails
    };
    let session = config.session();
    let _ = rt.run(move || {
        while let Ok(Some(stream)) = inbox.recv() {
            if let Ok(stream) = TcpStream::from_std(stream) {
                let _ = serve_connection(stream, &session, make_service());
            }
            *serving[index].lock().unwrap_or_else(|p| p.into_inner()) = None;
            free.lock().unwrap_or_else(|p| p.into_inner()).push(index);
        }
    });
}
