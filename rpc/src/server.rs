//! The session server (the seed's "CVA overall architecture", server side).
//!
//! An acceptor thread takes connections and hands each, through taskio's `Remote`,
//! to one of a bounded set of session threads, each running its own taskio runtime;
//! over the limit a client gets an ERROR frame (BUSY) and a closed connection. In a
//! session: after HELLO (version, queue depth, optional HMAC challenge-response), one
//! reader task reads frames into pooled buffers and queues them; `queue_depth` handler
//! tasks call the [`Service`] and write responses under a `QLock` on the socket. A
//! request beyond the queue depth is answered BUSY at once, so memory stays bounded
//! by `queue_depth` frames. A session that ends (client gone, bad framing) frees all
//! it held; the server goes on.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use taskio::net::TcpStream;
use taskio::remote::{Inbox, Remote, remote};
use taskio::{Builder, Channel, Config, IoConfig, Pool, QLock, Runtime};

use crate::error::RpcError;
use crate::frame::{FrameReader, send_message};
use crate::hello::{closing_status, is_told};
use crate::limits::{QUEUE_DEPTH_MAX, VERSION_MIN};
use crate::msg::{Body, Message, Request, Response};
use crate::status::Status;
use crate::{Header, MsgType, auth};

/// What a session knows of its client, for the service.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    pub client_name: String,
    pub version: u16,
    pub authenticated: bool,
}

/// What an upper crate plugs into the server: one instance per session, on the
/// session's thread.
pub trait Service {
    /// Answers one request (never HELLO: the session does that). Runs in a handler
    /// task and may pseudo-block. Data a response carries (READ) goes in `scratch`,
    /// which the response may borrow. A failure is `Response::Error`.
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s>;
}

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
    let _ = rt.run(move || {
        while let Ok(Some(stream)) = inbox.recv() {
            if let Ok(stream) = TcpStream::from_std(stream) {
                let service = make_service();
                let _ = serve(&config, Rc::new(stream), service);
            }
            *serving[index].lock().unwrap_or_else(|p| p.into_inner()) = None;
            free.lock().unwrap_or_else(|p| p.into_inner()).push(index);
        }
    });
}

/// HELLO (the shared handshake of [`crate::hello`]): the session's identity.
fn hello(
    config: &ServerConfig,
    stream: &TcpStream,
    reader: &mut FrameReader,
) -> Result<SessionInfo, RpcError> {
    let side = crate::hello::ServerSide {
        queue_depth: config.queue_depth,
        secret: config.secret.as_deref(),
        server_name: &config.server_name,
        timeout: config.idle_timeout.min(config.frame_timeout),
    };
    let accepted = crate::hello::server(stream, reader, &side)?;
    Ok(SessionInfo {
        peer: stream.peer_addr(),
        client_name: accepted.client_name,
        version: accepted.version,
        authenticated: accepted.authenticated,
    })
}

/// A request waiting for a handler: its frame (header + payload) in a pooled buffer.
struct Queued {
    header: Header,
    frame: taskio::PoolItem<Vec<u8>>,
}

/// Serves one connection until it ends. Everything it allocates is dropped on return.
fn serve<S: Service + 'static>(
    config: &ServerConfig,
    stream: Rc<TcpStream>,
    service: S,
) -> Result<(), RpcError> {
    stream.set_write_timeout(Some(config.frame_timeout));
    let mut reader = FrameReader::new();
    let info = Rc::new(hello(config, &stream, &mut reader)?);
    let depth = config.queue_depth as usize;
    let queue: Rc<Channel<Queued>> = Rc::new(Channel::new(depth));
    // One frame buffer per request in flight, plus the one being read.
    let frames = Pool::new(depth + 1, Vec::new);
    let in_flight = Rc::new(Cell::new(0usize));
    let writer = Rc::new(QLock::new(Vec::new()));
    let service = Rc::new(service);
    let mut handlers = Vec::with_capacity(depth);
    for i in 0..depth {
        let (queue, stream, writer, service, info, in_flight) = (
            queue.clone(),
            stream.clone(),
            writer.clone(),
            service.clone(),
            info.clone(),
            in_flight.clone(),
        );
        let version = info.version;
        let h = Builder::new()
            .name(format!("rpc-handler-{i}"))
            .spawn(move || {
                let mut scratch = Vec::new();
                while let Ok(q) = queue.recv() {
                    let reply = answer(&*service, &info, &q, &mut scratch);
                    let sent = {
                        let mut out = writer.lock();
                        send_message(&stream, version, &reply, &mut out)
                    };
                    drop(q);
                    in_flight.set(in_flight.get() - 1);
                    if sent.is_err() {
                        queue.close();
                        break;
                    }
                }
            });
        match h {
            Ok(h) => handlers.push(h),
            Err(_) => break, // fewer handlers: still correct, just less parallel
        }
    }
    let result = read_requests(
        config,
        &stream,
        &info,
        &mut reader,
        &queue,
        &frames,
        &in_flight,
        &writer,
        handlers.len(),
    );
    queue.close();
    for h in handlers {
        let _ = h.join();
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn read_requests(
    config: &ServerConfig,
    stream: &TcpStream,
    info: &SessionInfo,
    reader: &mut FrameReader,
    queue: &Channel<Queued>,
    frames: &Pool<Vec<u8>>,
    in_flight: &Cell<usize>,
    writer: &QLock<Vec<u8>>,
    depth: usize,
) -> Result<(), RpcError> {
    loop {
        let mut frame = frames.get();
        let raw = match reader.read_raw(
            stream,
            config.idle_timeout,
            config.frame_timeout,
            &mut frame,
        ) {
            Ok(raw) => raw,
            Err(e) => {
                if is_told(&e) {
                    say_closing(stream, info.version, writer, &e);
                }
                return Err(e);
            }
        };
        let header = match raw.validate() {
            Ok(h) if h.response => Err(RpcError::BadFlags {
                msg_type: h.msg_type.code(),
                got: raw.flags,
            }),
            Ok(h) if h.msg_type == MsgType::Hello => {
                let mut out = writer.lock();
                send_message(
                    stream,
                    info.version,
                    &Message::error_reply(&raw, Status::BadSequence, "HELLO twice"),
                    &mut out,
                )?;
                continue;
            }
            other => other,
        };
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                if e.closes_connection() {
                    say_closing(stream, info.version, writer, &e);
                    return Err(e);
                }
                let reason = e.to_string();
                let mut out = writer.lock();
                send_message(
                    stream,
                    info.version,
                    &Message::error_reply(&raw, e.status(), &reason),
                    &mut out,
                )?;
                continue;
            }
        };
        if in_flight.get() >= depth {
            let mut out = writer.lock();
            send_message(
                stream,
                info.version,
                &Message::error_reply(&raw, Status::Busy, "queue depth exceeded"),
                &mut out,
            )?;
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        if queue.try_send(Queued { header, frame }).is_err() {
            in_flight.set(in_flight.get() - 1);
            return Ok(()); // handlers gone: the session is ending
        }
    }
}

/// Tells the client why the session closes (best effort: it may be gone).
fn say_closing(stream: &TcpStream, version: u16, writer: &QLock<Vec<u8>>, e: &RpcError) {
    let reason = e.to_string();
    let mut out = writer.lock();
    let _ = send_message(
        stream,
        version,
        &Message::connection_error(closing_status(e), &reason),
        &mut out,
    );
}

/// Decodes a queued request and asks the service.
fn answer<'s, S: Service>(
    service: &S,
    info: &SessionInfo,
    q: &'s Queued,
    scratch: &'s mut Vec<u8>,
) -> Message<'s> {
    let payload = q.frame.get(crate::HEADER_LEN..).unwrap_or_default();
    match crate::decode_payload(&q.header, payload) {
        Ok(Message {
            tag,
            body: Body::Request(req),
        }) => Message {
            tag,
            body: Body::Response(service.handle(info, &q.header, req, scratch)),
        },
        Ok(_) => Message::error_reply(&q.header.raw(), Status::BadType, "not a request"),
        Err(e) => {
            let status = e.status();
            scratch.clear();
            scratch.extend_from_slice(e.to_string().as_bytes());
            let reason = std::str::from_utf8(scratch).unwrap_or("bad payload");
            Message::error_reply(&q.header.raw(), status, reason)
        }
    }
}
