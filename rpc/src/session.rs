//! One rpc session as a unit of taskio tasks (the seed's "CVA overall architecture",
//! server side), on whatever runtime calls it: the real driver or the simulator.
//!
//! [`serve_connection`] serves one connection on the calling task's runtime: HELLO
//! (`hello.rs`), then one reader task (the caller) that reads each request
//! frame into a pooled buffer and queues it, up to `queue_depth` handler tasks
//! (started as requests in flight need them, so that opening a session costs no
//! `queue_depth` task stacks: a burst of new sessions stays cheap) that take
//! requests off the queue, call the [`Service`] and push the responses to the
//! session's gathering output (`FrameOut`), and one writer task that writes all the
//! responses pushed since its last write with one `write_all` (a lazy response,
//! [`Service::lazy`], waits there for the response of an eager request in flight,
//! and goes out right after it). A request beyond the
//! queue depth is answered BUSY at once, so memory stays bounded by
//! `queue_depth + 1` frames. Every error reply of the
//! session goes out through one function, `Session::refuse`. A session that ends
//! (client gone, bad framing) frees all it held.
//!
//! Memory: a busy session holds up to `queue_depth + 1` frame buffers, `queue_depth`
//! scratch buffers (READ data), each up to FRAME_LEN_MAX, and two write buffers (the
//! batch being written and the frames gathered for the next), each up to
//! WRITE_GATHER_BYTES_MAX plus a frame. Once it has had nothing in flight for
//! `idle_shrink_after`, it gives them back down to [`SESSION_IDLE_BUFFER_BYTES_MAX`]
//! (about 12 KiB, whatever its depth; before, an idle session kept
//! `(depth + 1) x 1 MiB`), plus the socket's read-ahead and its tasks' stacks (a
//! page or so each while they sleep).
//!
//! [`serve_listener`] runs one such session per accepted connection as tasks of the
//! same runtime, up to `sessions_max`. Which OS thread a session runs on is the
//! business of the hosting layer above ([`crate::server`]); nothing here knows.

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::rc::Rc;
use std::time::Duration;

use taskio::net::{TcpListener, TcpStream};
use taskio::remote::RemoteSendError;
use taskio::{Builder, Channel, Pool, PoolItem};

use crate::error::RpcError;
use crate::frame::{FrameOut, FrameReader, is_idle_timeout, send_message};
use crate::header::{Header, RawHeader};
use crate::hello::{ServerSide, closing_status, is_told};
use crate::host::{HandTo, Handoff};
use crate::ledger::Ledger;
use crate::limits::{FRAME_LEN_MAX, HEADER_LEN, PING_LEN_MAX, QUEUE_DEPTH_MAX, VERSION_MIN};
use crate::msg::{Body, Message, Request, Response};
use crate::msg_type::MsgType;
use crate::status::Status;

/// What a session knows of its client, for the service.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    pub client_name: String,
    pub version: u16,
    pub authenticated: bool,
    /// The queue depth the HELLO reply granted (the client pipelines up to this):
    /// a session handed to another runtime keeps it.
    pub queue_depth: u32,
}

/// What an upper crate plugs into a session: one instance per session, on the
/// session's runtime.
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

    /// Whether [`Service::route`] is asked about requests of this type. Those are
    /// decoded by the session's reader before they are queued, so that the
    /// session can move before any request after them is read; say true for the
    /// few types that may move a session (DEVICE_OPEN for `cdev`).
    fn routes(&self, _msg_type: MsgType) -> bool {
        false
    }

    /// Whether the session moves to another runtime before `request` is handled,
    /// and to which (`cdev`: the runtime of the device DEVICE_OPEN names). Asked
    /// once nothing else is in flight (every earlier request answered and
    /// written); on Some the session ends here and its connection, with `request`
    /// and every byte read after it, goes to that runtime (a [`Handoff`] carrying
    /// this HELLO), where [`serve_handoff`] goes on without a second HELLO and
    /// handles `request` first.
    fn route(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        _request: &Request<'_>,
    ) -> Option<HandTo> {
        None
    }

    /// Whether the response to a request of this type is lazy: one its client does
    /// not wait on to go on (`dtm`: VSSD_COMMIT, whose COMMITs ride lazily by
    /// design, and a destage's VSSD_CLEAN). A lazy response is held, not written, while an eager (not lazy)
    /// request of the session is queued or being handled, and goes out with that
    /// one's response: one write and one wake-up of the client for both, where a
    /// COMMIT answered at once cost the client a wake-up of its own in the middle
    /// of its next write (`tdrv bench dtm`). With no eager request in flight it
    /// goes out at once, so it waits at most as long as a request in flight.
    fn lazy(&self, _msg_type: MsgType) -> bool {
        false
    }
}

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Requests the session serves at once (its handler tasks), 1..=QUEUE_DEPTH_MAX.
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
    /// How long a session with nothing in flight waits before it gives back its
    /// buffers, down to SESSION_IDLE_BUFFER_BYTES_MAX.
    pub idle_shrink_after: Duration,
    /// Where the session counts the frames and in-flight slots it takes and
    /// returns (a leak check; None: not counted).
    pub ledger: Option<Ledger>,
}

/// Bytes an idle session keeps in one buffer it keeps warm: a frame of the
/// largest PING, so that small requests after an idle spell allocate nothing.
pub const IDLE_BUFFER_KEEP_BYTES: usize = HEADER_LEN + PING_LEN_MAX;
/// Frame buffers an idle session keeps warm (the frame pool's low watermark when
/// idle); the others are emptied.
pub const FRAMES_WARM_IDLE: usize = 1;
/// Handler scratch buffers an idle session keeps warm.
pub const SCRATCHES_WARM_IDLE: usize = 1;
/// The bound on the frame, scratch and write buffers of a session that has been idle
/// for `idle_shrink_after`, whatever its queue depth (a busy session holds up to
/// `(2 x queue_depth + 2) x` a frame of up to FRAME_LEN_MAX). The socket's read-ahead
/// (taskio's READ_AHEAD_BYTES) and the tasks' stacks come on top.
pub const SESSION_IDLE_BUFFER_BYTES_MAX: usize =
    (FRAMES_WARM_IDLE + SCRATCHES_WARM_IDLE + 1) * IDLE_BUFFER_KEEP_BYTES;
const _: () = assert!(IDLE_BUFFER_KEEP_BYTES <= FRAME_LEN_MAX);
const _: () = assert!(FRAMES_WARM_IDLE >= 1 && SCRATCHES_WARM_IDLE >= 1);

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            queue_depth: 32,
            secret: None,
            server_name: "cva".into(),
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            idle_shrink_after: Duration::from_secs(1),
            ledger: None,
        }
    }
}

impl SessionConfig {
    /// Refuses what no session could run with (a short secret); asserts the rest.
    pub fn check(&self) -> Result<(), RpcError> {
        if let Some(secret) = &self.secret {
            crate::auth::check_secret(secret)?;
        }
        assert!(
            (1..=QUEUE_DEPTH_MAX).contains(&self.queue_depth),
            "queue_depth {} out of 1..={QUEUE_DEPTH_MAX}",
            self.queue_depth
        );
        // The reader looks for idleness every `idle_shrink_after` while handlers
        // are busy: zero would make that a spin.
        assert!(
            !self.idle_shrink_after.is_zero(),
            "idle_shrink_after must be more than zero"
        );
        Ok(())
    }
}

/// A request waiting for a handler: its frame (header + payload) in a pooled buffer.
struct Queued {
    header: Header,
    frame: Frame,
    /// Held until the request is done with, never read.
    _slot: Slot,
    /// An eager request's count in `Session::eager`, held as `_slot` is (None: a
    /// lazy one).
    eager: Option<Eager>,
}

/// One eager request (see [`Service::lazy`]) queued or being handled, counted in
/// its session until it is done with, however it ends.
struct Eager(Rc<Cell<usize>>);

impl Eager {
    fn take(count: &Rc<Cell<usize>>) -> Eager {
        count.set(count.get() + 1);
        Eager(count.clone())
    }
}

impl Drop for Eager {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Requests queued or being handled (at `queue_depth` a new one is answered BUSY),
/// counted by their [`Slot`]s.
struct InFlight {
    count: Cell<usize>,
    /// Woken when `count` drops to zero (a reader waiting to move the session).
    drained: taskio::Rendez,
    ledger: Option<Ledger>,
}

impl InFlight {
    fn get(&self) -> usize {
        self.count.get()
    }

    /// A request is queued: one more in flight until its slot drops.
    fn take(self: &Rc<Self>) -> Slot {
        self.count.set(self.count.get() + 1);
        if let Some(l) = &self.ledger {
            l.slot_taken();
        }
        Slot(self.clone())
    }
}

/// One request's in-flight slot, given back when it drops however the request
/// ends: answered, dropped with the queue of an ending session, or with its
/// handler's task when that panics or unwinds (a crash).
struct Slot(Rc<InFlight>);

impl Drop for Slot {
    fn drop(&mut self) {
        let f = &self.0;
        f.count.set(f.count.get() - 1);
        if let Some(l) = &f.ledger {
            l.slot_returned();
        }
        if f.count.get() == 0 {
            f.drained.wakeup_all();
        }
    }
}

/// A request frame's pooled buffer, counted in the session's ledger (if any) from
/// the pool until it drops back into it.
struct Frame {
    buf: PoolItem<Vec<u8>>,
    ledger: Option<Ledger>,
}

impl std::ops::Deref for Frame {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for Frame {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        if let Some(l) = &self.ledger {
            l.frame_returned();
        }
    }
}

/// A session that moves: where to, and the frame of the request that moves it
/// (read again there).
struct Moving {
    to: HandTo,
    frame: Vec<u8>,
}

/// Why the reader does not queue a frame.
enum Refusal {
    /// Answered under the request's tag; the session goes on.
    Answer(Status, String),
    /// The session ends (told first when the spec says so).
    Close(RpcError),
}

/// Everything one session shares between its reader and its handlers.
struct Session<S> {
    config: SessionConfig,
    stream: TcpStream,
    info: SessionInfo,
    service: S,
    queue: Channel<Queued>,
    /// One frame buffer per request in flight, plus the one being read.
    frames: Pool<Vec<u8>>,
    /// One scratch buffer per handler (the data of a READ's response).
    scratches: Pool<Vec<u8>>,
    /// Requests queued or being handled; at `queue_depth` a new one is answered BUSY.
    in_flight: Rc<InFlight>,
    /// Eager requests (not [`Service::lazy`]) queued or being handled: while there
    /// is one, lazy responses are held for its response to take along.
    eager: Rc<Cell<usize>>,
    /// Handler tasks that started (as many as requests were ever in flight at once,
    /// up to `queue_depth`); they live until the session ends, unless one panics
    /// (a bug of the service: that task ends alone).
    handlers: std::cell::RefCell<Vec<taskio::JoinHandle<()>>>,
    /// Handler tasks that have not ended (a [`HandlerLive`] each).
    handlers_live: Cell<usize>,
    /// The socket's writing side: responses gathered for the writer task.
    out: FrameOut,
}

/// Serves one connection on the current runtime until it ends: HELLO, then requests.
/// Returns why it ended (a client that leaves is `ConnectionLost`; a session the
/// service moved to another runtime is `Ok`); everything the session allocated is
/// freed on return.
pub fn serve_connection<S: Service + 'static>(
    stream: TcpStream,
    config: &SessionConfig,
    service: S,
) -> Result<(), RpcError> {
    config.check()?;
    stream.set_write_timeout(Some(config.frame_timeout));
    let mut reader = FrameReader::new();
    let side = ServerSide {
        queue_depth: config.queue_depth,
        secret: config.secret.as_deref(),
        server_name: &config.server_name,
        timeout: config.idle_timeout.min(config.frame_timeout),
    };
    let accepted = crate::hello::server(&stream, &mut reader, &side)?;
    let info = SessionInfo {
        peer: stream.peer_addr(),
        client_name: accepted.client_name,
        version: accepted.version,
        authenticated: accepted.authenticated,
        queue_depth: config.queue_depth,
    };
    serve_session(stream, reader, info, config, service)
}

/// Serves a connection handed to the current runtime (see [`crate::host`]): one
/// whose HELLO was negotiated elsewhere goes on without a second one, keeping that
/// HELLO's queue depth (`config`'s is not used) and reading first the bytes
/// already read from it; one without a HELLO is served as [`serve_connection`] does.
pub fn serve_handoff<S: Service + 'static>(
    handoff: Handoff,
    config: &SessionConfig,
    service: S,
) -> Result<(), RpcError> {
    let stream = TcpStream::adopt(handoff.stream);
    let Some(info) = handoff.hello else {
        return serve_connection(stream, config, service);
    };
    let config = SessionConfig {
        queue_depth: info.queue_depth,
        ..config.clone()
    };
    config.check()?;
    stream.set_write_timeout(Some(config.frame_timeout));
    serve_session(stream, FrameReader::new(), *info, &config, service)
}

/// The session after its HELLO: reader, handlers and writer until it ends or moves.
fn serve_session<S: Service + 'static>(
    stream: TcpStream,
    mut reader: FrameReader,
    info: SessionInfo,
    config: &SessionConfig,
    service: S,
) -> Result<(), RpcError> {
    let depth = config.queue_depth as usize;
    let session = Rc::new(Session {
        config: config.clone(),
        info,
        stream,
        service,
        queue: Channel::new(depth),
        frames: Pool::new(depth + 1, Vec::new),
        scratches: Pool::new(depth, Vec::new),
        in_flight: Rc::new(InFlight {
            count: Cell::new(0),
            drained: taskio::Rendez::new(),
            ledger: config.ledger.clone(),
        }),
        eager: Rc::new(Cell::new(0)),
        handlers: std::cell::RefCell::new(Vec::new()),
        handlers_live: Cell::new(0),
        out: FrameOut::new(),
    });
    let s = session.clone();
    let writer = Builder::new()
        .name("rpc-writer")
        .spawn(move || {
            if s.out.run(&s.stream).is_err() {
                // The responses cannot go out: end the session (the reader's read
                // fails, the handlers see the queue closed).
                s.queue.close();
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
        })
        .map_err(|e| RpcError::Protocol {
            what: format!("cannot start the session's writer task: {e}"),
        })?;
    let result = session.read_requests(&mut reader);
    session.queue.close();
    let handlers = std::mem::take(&mut *session.handlers.borrow_mut());
    for h in handlers {
        let _ = h.join();
    }
    // Every response pushed (and the closing reason) goes out before the end.
    session.out.close();
    let _ = writer.join();
    let moving = match result {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Ok(session) = Rc::try_unwrap(session) else {
        unreachable!("a session's handlers and writer have ended, yet it is shared")
    };
    session.hand_over(moving)
}

impl<S: Service> Session<S> {
    /// The reader: frames in, requests queued, bad ones refused.
    fn read_requests(self: &Rc<Self>, reader: &mut FrameReader) -> Result<Option<Moving>, RpcError>
    where
        S: 'static,
    {
        loop {
            let first = match self.first_byte(reader) {
                Ok(b) => b,
                Err(e) => return Err(self.close(e)),
            };
            let mut frame = self.take_frame();
            let raw = match reader.read_rest(
                &self.stream,
                first,
                self.config.frame_timeout,
                &mut frame,
            ) {
                Ok(raw) => raw,
                Err(e) => return Err(self.close(e)),
            };
            let header = match self.admit(&raw) {
                Ok(header) => header,
                Err(Refusal::Answer(status, reason)) => {
                    self.refuse(&raw, status, &reason)?;
                    continue;
                }
                Err(Refusal::Close(e)) => return Err(self.close(e)),
            };
            if self.service.routes(header.msg_type)
                && let Some(to) = self.route(&header, &frame)?
            {
                return Ok(Some(Moving {
                    to,
                    frame: frame.to_vec(),
                }));
            }
            if !self.handler_for(self.in_flight.get() + 1) {
                let reason = "no handler task could be started";
                self.refuse(&raw, Status::Busy, reason)?;
                continue;
            }
            let slot = self.in_flight.take();
            let eager = (!self.service.lazy(header.msg_type)).then(|| Eager::take(&self.eager));
            if self
                .queue
                .try_send(Queued {
                    header,
                    frame,
                    _slot: slot,
                    eager,
                })
                .is_err()
            {
                return Ok(None); // handlers gone: the session is ending
            }
        }
    }

    /// Asks the service where a request of a type it routes moves the session,
    /// once every earlier request has been answered (so that none is answered
    /// from two runtimes). A request that does not decode is not routed: its
    /// handler refuses it as any other.
    fn route(&self, header: &Header, frame: &[u8]) -> Result<Option<HandTo>, RpcError> {
        let deadline = taskio::now() + self.config.idle_timeout;
        while self.in_flight.get() > 0 {
            if !self.in_flight.drained.sleep_until(deadline) {
                let e = RpcError::Protocol {
                    what: format!(
                        "requests still in flight after {:?}: cannot route the session",
                        self.config.idle_timeout
                    ),
                };
                return Err(self.close(e));
            }
        }
        let payload = frame.get(HEADER_LEN..).unwrap_or_default();
        Ok(match crate::decode_payload(header, payload) {
            Ok(Message {
                body: Body::Request(request),
                ..
            }) => self.service.route(&self.info, header, &request),
            _ => None,
        })
    }

    /// A frame buffer from the session's pool (waits while every one is in use:
    /// at most `queue_depth` are queued or handled, so one is free for the reader).
    fn take_frame(&self) -> Frame {
        let buf = self.frames.get();
        let ledger = self.config.ledger.clone();
        if let Some(l) = &ledger {
            l.frame_taken();
        }
        Frame { buf, ledger }
    }

    /// Whether a handler will take a request when `in_flight` are queued or being
    /// handled: one more is started when every live one has one (a handler that
    /// panicked is not live); when that fails (the runtime's task limit) the live
    /// ones will, if there are any.
    fn handler_for(self: &Rc<Self>, in_flight: usize) -> bool
    where
        S: 'static,
    {
        if in_flight <= self.handlers_live.get() {
            return true;
        }
        let mut handlers = self.handlers.borrow_mut();
        // Those that panicked: at most `queue_depth` handles are kept.
        handlers.retain(|h| !h.is_finished());
        let live = HandlerLive::count(self);
        if let Ok(h) = Builder::new()
            .name(format!("rpc-handler-{}", handlers.len()))
            .spawn(move || live.0.handle_requests())
        {
            handlers.push(h);
        }
        self.handlers_live.get() > 0
    }

    /// Waits for the first byte of the next request, up to `idle_timeout`; once
    /// `idle_shrink_after` has passed with nothing in flight, gives the session's
    /// buffers back (`shrink_idle`).
    fn first_byte(&self, reader: &mut FrameReader) -> Result<u8, RpcError> {
        let (idle, shrink_after) = (self.config.idle_timeout, self.config.idle_shrink_after);
        if shrink_after >= idle {
            return reader.read_first_byte(&self.stream, idle);
        }
        // The common case, a request within `idle_shrink_after`, reads no clock
        // (the read's timeout starts when it first waits).
        match reader.read_first_byte(&self.stream, shrink_after) {
            Err(e) if is_idle_timeout(&e) => {}
            r => return r,
        }
        let idle_end = taskio::now() + (idle - shrink_after);
        // Bounded: each pass waits up to `idle_shrink_after` of what is left, or ends.
        loop {
            if self.in_flight.get() == 0 {
                self.shrink_idle();
                let left = idle_end.saturating_duration_since(taskio::now());
                return reader.read_first_byte(&self.stream, left);
            }
            // Handlers still busy are not idle: look again later.
            let left = idle_end.saturating_duration_since(taskio::now());
            let wait = left.min(shrink_after);
            match reader.read_first_byte(&self.stream, wait) {
                Err(e) if is_idle_timeout(&e) && wait < left => {}
                r => return r,
            }
        }
    }

    /// Gives back the memory of an idle session's buffers, down to
    /// SESSION_IDLE_BUFFER_BYTES_MAX: the frame and scratch pools keep their warm
    /// few at IDLE_BUFFER_KEEP_BYTES and empty the others; the output keeps
    /// IDLE_BUFFER_KEEP_BYTES for the frames it gathers and empties its other buffer.
    fn shrink_idle(&self) {
        for (pool, warm) in [
            (&self.frames, FRAMES_WARM_IDLE),
            (&self.scratches, SCRATCHES_WARM_IDLE),
        ] {
            // Every free buffer out of the pool (a bounded loop: its capacity), then
            // back, shrunk.
            let mut taken = Vec::with_capacity(pool.capacity());
            while let Some(b) = pool.try_get() {
                taken.push(b);
            }
            for (i, b) in taken.iter_mut().enumerate() {
                b.clear();
                b.shrink_to(if i < warm { IDLE_BUFFER_KEEP_BYTES } else { 0 });
            }
        }
        self.out.shrink(IDLE_BUFFER_KEEP_BYTES);
    }

    /// Whether a frame whose framing is sound may be queued.
    fn admit(&self, raw: &RawHeader) -> Result<Header, Refusal> {
        let header = match raw.validate() {
            Ok(h) => h,
            Err(e) if e.closes_connection() => return Err(Refusal::Close(e)),
            Err(e) => return Err(Refusal::Answer(e.status(), e.to_string())),
        };
        if header.response {
            let e = RpcError::BadFlags {
                msg_type: raw.msg_type,
                got: raw.flags,
            };
            return Err(Refusal::Answer(e.status(), e.to_string()));
        }
        if header.msg_type == MsgType::Hello {
            return Err(Refusal::Answer(Status::BadSequence, "HELLO twice".into()));
        }
        if self.in_flight.get() >= self.config.queue_depth as usize {
            let reason = "queue depth exceeded".into();
            return Err(Refusal::Answer(Status::Busy, reason));
        }
        Ok(header)
    }

    /// A handler: requests off the queue, answers back, until the queue closes or
    /// the socket fails.
    fn handle_requests(&self) {
        while let Ok(q) = self.queue.recv() {
            // Never waits: a handler holds at most one, and there is one each.
            let mut scratch = self.scratches.get();
            let sent = self.answer(&q, &mut scratch);
            drop(scratch);
            drop(q); // its frame, its slot and its eager count
            if self.eager.get() == 0 {
                // Belt and braces: every eager request pushes a response (its answer
                // or a refusal) before its count ends, and that sends the held ones;
                // should one end without, they go now.
                self.out.wake();
            }

            if sent.is_err() {
                self.queue.close();
                break;
            }
        }
    }

    /// Decodes a queued request, asks the service, sends its response.
    fn answer(&self, q: &Queued, scratch: &mut Vec<u8>) -> Result<(), RpcError> {
        let payload = q.frame.get(HEADER_LEN..).unwrap_or_default();
        let request = match crate::decode_payload(&q.header, payload) {
            Ok(Message {
                body: Body::Request(req),
                ..
            }) => req,
            Ok(_) => {
                let raw = q.header.raw();
                return self.refuse(&raw, Status::BadType, "not a request");
            }
            Err(e) => return self.refuse(&q.header.raw(), e.status(), &e.to_string()),
        };
        // A service that panics (a bug) still answers its client, IO_ERROR under the
        // request's tag, rather than leaving it to its timeout; then the handler
        // task ends as it would have (its frame and slot are given back on the way).
        // The runtime ending the task is not a panic: it goes on at once.
        let handled = catch_unwind(AssertUnwindSafe(|| {
            self.service.handle(&self.info, &q.header, request, scratch)
        }));
        let response: Response<'_> = match handled {
            Ok(response) => response,
            Err(payload) if taskio::is_cancellation(&*payload) => resume_unwind(payload),
            Err(payload) => {
                let why = "the server failed on this request (a bug; see its log)";
                let _ = self.refuse(&q.header.raw(), Status::IoError, why);
                resume_unwind(payload)
            }
        };
        let m = Message {
            tag: q.header.tag,
            body: Body::Response(response),
        };
        if q.eager.is_none() && self.eager.get() > 0 {
            // Lazy, and an eager request's response will be pushed after it: one
            // pushed already would have ended that request's count, as nothing
            // parks between a handler's push and the end of its request.
            let unbounded = taskio::Deadline::after(None);
            let held = self.out.push_held(self.info.version, &m, &unbounded);
            if self.eager.get() == 0 {
                // The push waited for room, and meanwhile the last eager request
                // pushed its response and ended: none will come to take this one.
                self.out.wake();
            }
            return held.map(|_| ());
        }
        self.send(&m)
    }

    /// Pushes one frame to the writer task (waiting for room, bounded by the
    /// writer's write timeout, frame_timeout).
    fn send(&self, m: &Message<'_>) -> Result<(), RpcError> {
        let unbounded = taskio::Deadline::after(None);
        self.out.push(self.info.version, m, &unbounded).map(|_| ())
    }

    /// The one place an error reply of a session is sent: `status` under the tag of
    /// `request`, nothing executed; the session goes on.
    fn refuse(&self, request: &RawHeader, status: Status, reason: &str) -> Result<(), RpcError> {
        self.send(&Message::error_reply(request, status, reason))
    }

    /// Gives the connection to the runtime the service chose: the frame that moves
    /// it is put back before the bytes read after it, and the HELLO goes along.
    /// When that runtime cannot take it, the client is told (ERROR, TAG_NONE) and
    /// the connection closed.
    fn hand_over(self, moving: Moving) -> Result<(), RpcError> {
        let mut stream = self.stream.detach();
        stream.unread(&moving.frame);
        let handoff = Handoff {
            stream,
            hello: Some(Box::new(self.info)),
        };
        let (handoff, status, why) = match moving.to.hand(handoff) {
            Ok(()) => return Ok(()),
            Err(RemoteSendError::Full { value, .. }) => (value, Status::Busy, "its inbox is full"),
            Err(RemoteSendError::Closed(value)) => (value, Status::ShuttingDown, "it is gone"),
        };
        let e = RpcError::Handoff {
            to: moving.to.name().to_string(),
            status,
            why,
        };
        let stream = TcpStream::adopt(handoff.stream);
        refuse_connection(stream, status, &e.to_string());
        Err(e)
    }

    /// The session ends on `e`: tells the client why when the spec says so (best
    /// effort: it may be gone) and gives `e` back.
    fn close(&self, e: RpcError) -> RpcError {
        if is_told(&e) {
            let reason = e.to_string();
            let _ = self.send(&Message::connection_error(closing_status(&e), &reason));
        }
        e
    }
}

/// A handler task counted live in its session from its start until its closure is
/// dropped: when it returns, panics or unwinds, or never runs.
struct HandlerLive<S: Service>(Rc<Session<S>>);

impl<S: Service> HandlerLive<S> {
    fn count(session: &Rc<Session<S>>) -> HandlerLive<S> {
        session.handlers_live.set(session.handlers_live.get() + 1);
        HandlerLive(session.clone())
    }
}

impl<S: Service> Drop for HandlerLive<S> {
    fn drop(&mut self) {
        let live = &self.0.handlers_live;
        live.set(live.get() - 1);
    }
}

/// How long a refusal (BUSY at the session limit) may take to be written: a
/// client that does not read gets a closed connection instead.
pub(crate) const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Tells a connection that will not be served why (ERROR, TAG_NONE), then drops it.
pub(crate) fn refuse_connection(stream: TcpStream, status: Status, reason: &str) {
    stream.set_write_timeout(Some(REFUSE_WRITE_TIMEOUT));
    let mut out = Vec::new();
    let m = Message::connection_error(status, reason);
    let _ = send_message(&stream, VERSION_MIN, &m, &mut out);
}

/// Accepts connections on `listener` and serves each with [`serve_connection`] as
/// tasks of the current runtime, `sessions_max` at once; a connection over the limit
/// gets ERROR(TAG_NONE, BUSY) and is closed. `make_service` makes each session's
/// service. Returns only when accepting fails.
pub fn serve_listener<S, F>(
    listener: &TcpListener,
    config: &SessionConfig,
    sessions_max: usize,
    make_service: F,
) -> Result<(), RpcError>
where
    S: Service + 'static,
    F: Fn() -> S,
{
    config.check()?;
    assert!(sessions_max > 0, "sessions_max must be at least 1");
    let live = Rc::new(Cell::new(0usize));
    loop {
        let (stream, _) = listener.accept().map_err(|source| RpcError::Io {
            op: "accept",
            source,
        })?;
        if live.get() >= sessions_max {
            refuse_connection(stream, Status::Busy, "session limit reached");
            continue;
        }
        let (config, service) = (config.clone(), make_service());
        let slot = Live::take(&live);
        // When the runtime is at its task limit the closure, the connection and
        // the slot are dropped: that session never starts.
        let _ = Builder::new().name("rpc-session").spawn(move || {
            let _slot = slot;
            let _ = serve_connection(stream, &config, service);
        });
    }
}

/// One of `serve_listener`'s session slots, given back when its session ends however
/// it ends (returned, panicked, unwound).
struct Live(Rc<Cell<usize>>);

impl Live {
    fn take(live: &Rc<Cell<usize>>) -> Live {
        live.set(live.get() + 1);
        Live(live.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
