//! The rpc server: the thread hosting of [`crate::host`] ([`Host`]: an acceptor
//! thread and one runtime thread per session) with [`serve_handoff`] as the serve
//! function (HELLO, reader task, handler tasks: see [`crate::session`]). A session
//! that ends (client gone, bad framing) frees all it held; the server goes on. A
//! session whose service routes it ([`Service::route`]) moves to a
//! [`RuntimeThread`](crate::RuntimeThread) of the embedder's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use taskio::{Config, IoConfig};

use crate::error::RpcError;
use crate::host::{Host, HostConfig};
use crate::session::{Service, SessionConfig, serve_handoff};

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
    /// Where every session counts the frames and in-flight slots it takes and
    /// returns (a leak check; None: not counted).
    pub ledger: Option<crate::Ledger>,
    /// Settings of each session thread's runtime (stall detector, stacks).
    pub runtime: Config,
    /// Its I/O driver: by default with [`SESSION_AIO_DEPTH`] file operations in
    /// flight (a service doing much file I/O on the session's thread sets more).
    pub io: IoConfig,
}

/// Kernel AIO events of each session runtime's context. Every context counts
/// against the system-wide `fs.aio-max-nr` (65,536 by default), and a server runs one
/// runtime per session: taskio's default of 256 would let ~250 sessions, less
/// whatever other processes hold, exhaust it (io_setup fails EAGAIN and the session
/// is refused). rpc sessions do network I/O; their services little file I/O.
pub const SESSION_AIO_DEPTH: usize = 16;

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
            ledger: session.ledger,
            runtime: Config::default(),
            io: IoConfig {
                aio_depth: SESSION_AIO_DEPTH,
                ..IoConfig::default()
            },
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
            ledger: self.ledger.clone(),
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
            move |handoff| {
                let _ = serve_handoff(handoff, &session, make_service());
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
