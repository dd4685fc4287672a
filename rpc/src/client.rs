//! The pipelined client (the seed's rpc client side): many tasks call one
//! connection at once; each request gets a tag and is pushed to the connection's
//! gathering output, whose writer task writes every request pushed since its last
//! write at once (one send for the callers a read of responses made ready
//! together); a reader task routes each response to its caller by tag. In-flight
//! calls are bounded by the server's queue depth (told at HELLO): a caller beyond it
//! waits. A connection failure fails every waiting call with the error, and every
//! later call at once. Every call has a timeout; a response is checked against its
//! request (type, READ length), and a caller that unwinds gives its slot back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use taskio::net::{self, TcpStream};
use taskio::{Builder, Deadline, Instant, Rendez, TaskRef, WaitReason, park};

use crate::MsgType;
use crate::error::RpcError;
use crate::frame::{FrameOut, FrameReader};
use crate::header::Header;
use crate::limits::{HEADER_LEN, TAG_NONE};
use crate::msg::{Body, Message, Request, Response};
use crate::status::Status;

/// Settings of a client connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    /// The server's shared secret, if it asks for one.
    pub secret: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// Bound of each call, from its start (waiting for an in-flight slot, sending,
    /// waiting for the response) to its end. Every call has one.
    pub call_timeout: Duration,
    /// How long a started response frame may take to arrive.
    pub frame_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            name: "client".into(),
            secret: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// A response frame, owned (header + payload, CRCs already checked).
pub struct Reply {
    header: Header,
    frame: Vec<u8>,
}

impl Reply {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn status(&self) -> Status {
        self.header.status
    }

    /// The decoded response (an error status is `Response::Error`).
    pub fn response(&self) -> Result<Response<'_>, RpcError> {
        let payload = self.frame.get(HEADER_LEN..).unwrap_or_default();
        // The reader checked the payload before it made this reply.
        match crate::codec::decode_verified(&self.header, payload)?.body {
            Body::Response(r) => Ok(r),
            Body::Request(_) => Err(RpcError::Protocol {
                what: "a request where a response was due".into(),
            }),
        }
    }
}

/// The hash of a call's tag in the map of pending calls: tags are consecutive
/// numbers chosen here (no peer picks them), so a multiplication spreads them
/// enough; SipHash, the default, cost more than the map's work (perf, bench rpc's
/// pipelined calls).
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(TAG_HASH_MULTIPLIER);
        }
    }

    fn write_u64(&mut self, tag: u64) {
        self.0 = (self.0 ^ tag).wrapping_mul(TAG_HASH_MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// 2^64 / phi, odd: Fibonacci hashing's multiplier.
const TAG_HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

struct Pending {
    reply: Option<Result<Reply, RpcError>>,
    waiter: Option<TaskRef>,
    /// When the call gives up waiting for its reply (set when it first waits).
    deadline: Option<Instant>,
    /// The watchdog found the deadline passed with no reply.
    expired: bool,
    /// What the response must be.
    expect: Expect,
}

/// What a response must be, given its request (PROTOCOL.md, "Error responses" and
/// READ): anything else is a protocol violation that closes the connection.
#[derive(Debug, Clone, Copy)]
struct Expect {
    msg_type: MsgType,
    /// The data length of an OK READ (exactly) or VSSD_READ (at most: the last
    /// line of a write may be short).
    data_len: Option<(u32, bool)>,
}

impl Expect {
    fn of(request: &Request<'_>) -> Expect {
        let data_len = match *request {
            Request::Read { length, .. } => Some((length, true)),
            Request::VssdRead { length, .. } => Some((length, false)),
            _ => None,
        };
        Expect {
            msg_type: request.msg_type(),
            data_len,
        }
    }

    /// Why `header` cannot answer the request, if it cannot.
    fn mismatch(&self, header: &Header) -> Option<String> {
        if header.msg_type != self.msg_type {
            return Some(format!(
                "a {} response to a {} request (tag {})",
                header.msg_type, self.msg_type, header.tag
            ));
        }
        match self.data_len {
            Some((want, exact))
                if header.status.is_ok()
                    && (header.length > want || (exact && header.length != want)) =>
            {
                Some(format!(
                    "{} of {want} bytes answered with {} (tag {})",
                    self.msg_type, header.length, header.tag
                ))
            }
            _ => None,
        }
    }
}

struct Inner {
    stream: Rc<TcpStream>,
    peer: SocketAddr,
    version: u16,
    queue_depth: usize,
    /// Requests gathered for the writer task.
    out: FrameOut,
    pending: RefCell<HashMap<u64, Pending, BuildHasherDefault<TagHasher>>>,
    next_tag: Cell<u64>,
    in_flight: Cell<usize>,
    slot_free: Rendez,
    broken: RefCell<Option<String>>,
    call_timeout: Duration,
    /// The watchdog of the calls' deadlines sleeps here, until the earliest
    /// deadline of the calls waiting (`watch_until`), or until woken.
    watch: Rendez,
    /// The instant the watchdog sleeps until (None: no call waits, it sleeps
    /// until a call wakes it).
    watch_until: Cell<Option<Instant>>,
    /// The client is gone: the watchdog ends.
    closed: Cell<bool>,
    /// Tags of calls that timed out, whose late responses are dropped (bounded:
    /// the oldest are forgotten first).
    expired: RefCell<std::collections::VecDeque<u64>>,
}

/// Bytes a reply's buffer is allocated with before its header says its length: a
/// small response (no data, a short PING) fits; a larger one grows it once.
const REPLY_ROOM_BYTES: usize = HEADER_LEN + 64;

/// Timed-out tags remembered, so that their late responses are not mistaken for
/// protocol violations.
const EXPIRED_TAGS_MAX: usize = 4096;

/// One connection to a server. Share it between tasks with `Rc`.
pub struct Client {
    inner: Rc<Inner>,
    server_name: String,
    data_len_max: u32,
}

impl Client {
    /// Connects, says HELLO (proving the secret if the server asks), and starts the
    /// reader task.
    pub fn connect(addr: SocketAddr, config: &ClientConfig) -> Result<Client, RpcError> {
        let stream =
            net::connect(addr, Some(config.connect_timeout)).map_err(|source| RpcError::Io {
                op: "connect",
                source,
            })?;
        let mut reader = FrameReader::new();
        let opened = crate::hello::client(
            &stream,
            &mut reader,
            &config.name,
            config.secret.as_deref(),
            config.connect_timeout,
        )
        .map_err(|e| match e {
            // The frame layer does not know whom it read from: name the server.
            RpcError::ConnectionLost { why, .. } => RpcError::ConnectionLost {
                peer: addr.to_string(),
                why,
            },
            e => e,
        })?;
        let crate::hello::Opened {
            version,
            queue_depth,
            data_len_max,
            server_name,
        } = opened;
        let peer = stream.peer_addr();
        let inner = Rc::new(Inner {
            stream: Rc::new(stream),
            peer,
            version,
            queue_depth: (queue_depth as usize).max(1),
            out: FrameOut::new(),
            pending: RefCell::new(HashMap::default()),
            next_tag: Cell::new(2),
            in_flight: Cell::new(0),
            slot_free: Rendez::new(),
            broken: RefCell::new(None),
            call_timeout: config.call_timeout,
            watch: Rendez::new(),
            watch_until: Cell::new(None),
            closed: Cell::new(false),
            expired: RefCell::new(std::collections::VecDeque::new()),
        });
        // A request's write may take as long as a call: longer, the server is not
        // reading, and the connection breaks (every call in flight fails).
        inner.stream.set_write_timeout(Some(config.call_timeout));
        let w = inner.clone();
        Builder::new()
            .name("rpc-client-writer")
            .system(true)
            .spawn(move || {
                if let Err(e) = w.out.run(&w.stream) {
                    fail_all(&w, &why_failed(&e));
                    let _ = w.stream.shutdown(std::net::Shutdown::Both);
                }
            })
            .map_err(|e| RpcError::Protocol {
                what: format!("cannot start the writer task: {e}"),
            })?;
        let d = inner.clone();
        Builder::new()
            .name("rpc-client-deadlines")
            .system(true)
            .spawn(move || watch_deadlines(&d))
            .map_err(|e| RpcError::Protocol {
                what: format!("cannot start the deadline watchdog task: {e}"),
            })?;
        let r = inner.clone();
        let frame_timeout = config.frame_timeout;
        // A system task: an idle connection does not keep its runtime alive.
        Builder::new()
            .name("rpc-client-reader")
            .system(true)
            .spawn(move || read_responses(r, reader, frame_timeout))
            .map_err(|e| RpcError::Protocol {
                what: format!("cannot start the reader task: {e}"),
            })?;
        Ok(Client {
            inner,
            server_name,
            data_len_max,
        })
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Requests the server lets one session have in flight.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue_depth
    }

    pub fn data_len_max(&self) -> u32 {
        self.data_len_max
    }

    /// Calls in flight on this connection now (each holds a slot).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Sends `request` and waits for its response (any status). Many tasks may call
    /// at once; beyond the server's queue depth a caller waits for a slot. The call
    /// ends within the client's `call_timeout` (TimedOut), or at once when the
    /// connection fails. A response of another type than the request's, or a READ
    /// answered with another length, closes the connection (Protocol).
    pub fn call(&self, request: Request<'_>) -> Result<Reply, RpcError> {
        let inner = &*self.inner;
        let msg_type = request.msg_type();
        // Fixed when the call first waits: a call whose reply is never waited for
        // reads no clock.
        let deadline = Deadline::after(Some(inner.call_timeout));
        let due = || deadline.at().unwrap_or(Instant::from_nanos(u64::MAX));
        let timed_out = |tag| RpcError::TimedOut {
            msg_type,
            tag,
            after: inner.call_timeout,
        };
        while inner.in_flight.get() >= inner.queue_depth && inner.broken.borrow().is_none() {
            if !inner.slot_free.sleep_until(due()) {
                return Err(timed_out(TAG_NONE));
            }
        }
        if let Some(why) = inner.broken.borrow().clone() {
            return Err(lost(inner, why));
        }
        let mut slot = Slot::take(inner);
        let tag = inner.next_tag.get();
        // Tags run 2.. (1 is HELLO's) and never reach TAG_NONE in practice; wrap
        // anyway rather than send it.
        inner
            .next_tag
            .set(if tag + 1 == TAG_NONE { 2 } else { tag + 1 });
        inner.pending.borrow_mut().insert(
            tag,
            Pending {
                reply: None,
                waiter: None,
                deadline: None,
                expired: false,
                expect: Expect::of(&request),
            },
        );
        slot.tag = Some(tag);
        let m = Message {
            tag,
            body: Body::Request(request),
        };
        // A server that stops reading cannot hold the call past its deadline: the
        // wait for room ends with it, and the wait for the response below.
        match inner.out.push(inner.version, &m, &deadline) {
            Ok(true) => {}
            Ok(false) => return Err(timed_out(tag)),
            // The writer failed: it broke the connection and failed the calls.
            Err(RpcError::ConnectionLost { why, .. }) => return Err(lost(inner, why)),
            // Not encodable: nothing was sent, the connection goes on.
            Err(e) => return Err(e),
        }
        // Bounded: each pass ends the call, or parks until the reply, the
        // watchdog's expiry or the connection's failure wakes it.
        loop {
            let deadline_set = {
                let mut pending = inner.pending.borrow_mut();
                let Some(p) = pending.get_mut(&tag) else {
                    return Err(lost(inner, "the call vanished".into()));
                };
                if let Some(r) = p.reply.take() {
                    pending.remove(&tag);
                    slot.tag = None;
                    return r;
                }
                if p.expired {
                    return Err(timed_out(tag));
                }
                p.waiter = Some(TaskRef::current());
                let first_wait = p.deadline.is_none().then(due);
                p.deadline = p.deadline.or(first_wait);
                first_wait
            };
            if let Some(d) = deadline_set {
                watch(inner, d);
            }
            // No timer of its own: the client's watchdog wakes it at its deadline.
            park(WaitReason::Io("rpc call"));
        }
    }
}

/// A call's in-flight slot and its pending tag, given back however the call ends:
/// returned, timed out, or unwound (its task torn down with a crashed node or its
/// runtime). A tag given back unanswered is remembered as expired, so that its late
/// response is dropped instead of taken for a protocol violation.
struct Slot<'a> {
    inner: &'a Inner,
    tag: Option<u64>,
}

impl<'a> Slot<'a> {
    fn take(inner: &'a Inner) -> Slot<'a> {
        inner.in_flight.set(inner.in_flight.get() + 1);
        Slot { inner, tag: None }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        let unanswered = self
            .tag
            .and_then(|tag| inner.pending.borrow_mut().remove(&tag))
            .is_some_and(|p| p.reply.is_none());
        if let (true, Some(tag)) = (unanswered, self.tag) {
            let mut expired = inner.expired.borrow_mut();
            if expired.len() >= EXPIRED_TAGS_MAX {
                expired.pop_front();
            }
            expired.push_back(tag);
        }
        inner.in_flight.set(inner.in_flight.get() - 1);
        inner.slot_free.wakeup();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Ends the reader task (its read fails) and so the connection, and the
        // writer task.
        let _ = self.inner.stream.shutdown(std::net::Shutdown::Both);
        self.inner.out.close();
        self.inner.closed.set(true);
        self.inner.watch.wakeup();
    }
}

/// A call waits until `deadline`: the watchdog must wake by then. Deadlines come
/// in the order calls first wait (one timeout for all), so the watchdog is woken
/// only when it sleeps with no call waiting.
fn watch(inner: &Inner, deadline: Instant) {
    if inner.watch_until.get().is_none_or(|t| deadline < t) {
        inner.watch_until.set(Some(deadline));
        inner.watch.wakeup();
    }
}

/// The watchdog of the calls' deadlines (one task per client, instead of a timer
/// per call: arming and reaping a timer for every call cost more than a call's
/// other work, perf of bench rpc's pipelined calls): sleeps until the earliest
/// deadline of the calls waiting, then marks those past it expired and wakes
/// them. Ends when the client is dropped.
fn watch_deadlines(inner: &Inner) {
    while !inner.closed.get() {
        let now = taskio::now();
        let mut next: Option<Instant> = None;
        for p in inner.pending.borrow_mut().values_mut() {
            let Some(d) = p.deadline else { continue };
            if p.reply.is_some() || p.expired {
                continue;
            }
            if d <= now {
                p.expired = true;
                if let Some(w) = p.waiter.take() {
                    w.wake();
                }
            } else {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        inner.watch_until.set(next);
        match next {
            Some(t) => {
                inner.watch.sleep_until(t);
            }
            None => inner.watch.sleep(),
        }
    }
}

fn lost(inner: &Inner, why: String) -> RpcError {
    RpcError::ConnectionLost {
        peer: inner.peer.to_string(),
        why,
    }
}

/// Why the connection failed on `e`, for [`fail_all`]: a lost connection's own
/// reason (the calls' error names the peer itself), any other error whole.
fn why_failed(e: &RpcError) -> String {
    match e {
        RpcError::ConnectionLost { why, .. } => why.clone(),
        e => e.to_string(),
    }
}

/// Fails every waiting call with `why` and marks the connection broken.
fn fail_all(inner: &Inner, why: &str) {
    *inner.broken.borrow_mut() = Some(why.to_string());
    let mut pending = inner.pending.borrow_mut();
    for p in pending.values_mut() {
        if p.reply.is_none() {
            p.reply = Some(Err(lost(inner, why.to_string())));
        }
        if let Some(w) = p.waiter.take() {
            w.wake();
        }
    }
    drop(pending);
    inner.slot_free.wakeup_all();
}

fn read_responses(inner: Rc<Inner>, mut reader: FrameReader, frame_timeout: Duration) {
    let idle = Duration::from_secs(365 * 24 * 3600);
    loop {
        // Room for a small response at once (one allocation, not two).
        let mut frame = Vec::with_capacity(REPLY_ROOM_BYTES);
        let r = reader
            .read_raw(&inner.stream, idle, frame_timeout, &mut frame)
            .and_then(|raw| raw.validate());
        let header = match r {
            Ok(h) => h,
            Err(e) => {
                fail_all(&inner, &why_failed(&e));
                return;
            }
        };
        if !header.response {
            fail_all(&inner, "the server sent a request");
            return;
        }
        let payload_ok =
            crate::decode_payload(&header, frame.get(HEADER_LEN..).unwrap_or_default()).map(|_| ());
        if header.tag == TAG_NONE {
            // The server is closing the connection and says why.
            let reply = Reply { header, frame };
            let why = match payload_ok.and_then(|()| reply.response()) {
                Ok(Response::Error { status, reason, .. }) => {
                    format!("server closed the session: {status} ({reason})")
                }
                _ => "server closed the session".into(),
            };
            fail_all(&inner, &why);
            return;
        }
        let mut pending = inner.pending.borrow_mut();
        if let Some(p) = pending.get_mut(&header.tag) {
            if let Some(what) = p.expect.mismatch(&header) {
                // The server answered something else than was asked: nothing it
                // sends on this connection can be trusted.
                p.reply = Some(Err(RpcError::Protocol { what: what.clone() }));
                drop(pending);
                fail_all(&inner, &what);
                let _ = inner.stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            p.reply = Some(payload_ok.map(|()| Reply { header, frame }));
            if let Some(w) = p.waiter.take() {
                w.wake();
            }
            continue;
        }
        drop(pending);
        // A late answer to a call that timed out is dropped; an answer to a tag
        // never sent means the server lost track: the connection cannot be trusted.
        let late = inner.expired.borrow().contains(&header.tag);
        if !late {
            fail_all(
                &inner,
                &format!("response to tag {} that was never sent", header.tag),
            );
            let _ = inner.stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}
