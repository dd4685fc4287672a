//! The pipelined client (the seed's rpc client side): many tasks call one
//! connection at once; each request gets a tag, a reader task routes each response
//! to its caller by tag. In-flight calls are bounded by the server's queue depth
//! (told at HELLO): a caller beyond it waits. A connection failure fails every
//! waiting call with the error, and every later call at once.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use taskio::net::{self, TcpStream};
use taskio::{Builder, QLock, Rendez, TaskRef, WaitReason, park, park_until};

use crate::MsgType;
use crate::error::RpcError;
use crate::frame::{FrameReader, send_message};
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
    /// Bound of each call (None: wait as long as the connection lives).
    pub call_timeout: Option<Duration>,
    /// How long a started response frame may take to arrive.
    pub frame_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            name: "client".into(),
            secret: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Some(Duration::from_secs(30)),
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
        match crate::decode_payload(&self.header, payload)?.body {
            Body::Response(r) => Ok(r),
            Body::Request(_) => Err(RpcError::Protocol {
                what: "a request where a response was due".into(),
            }),
        }
    }
}

struct Pending {
    reply: Option<Result<Reply, RpcError>>,
    waiter: Option<TaskRef>,
}

struct Inner {
    stream: Rc<TcpStream>,
    peer: SocketAddr,
    version: u16,
    queue_depth: usize,
    writer: QLock<Vec<u8>>,
    pending: RefCell<BTreeMap<u64, Pending>>,
    next_tag: Cell<u64>,
    in_flight: Cell<usize>,
    slot_free: Rendez,
    broken: RefCell<Option<String>>,
    call_timeout: Option<Duration>,
    /// Tags of calls that timed out, whose late responses are dropped (bounded:
    /// the oldest are forgotten first).
    expired: RefCell<std::collections::VecDeque<u64>>,
}

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
        )?;
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
            writer: QLock::new(Vec::new()),
            pending: RefCell::new(BTreeMap::new()),
            next_tag: Cell::new(2),
            in_flight: Cell::new(0),
            slot_free: Rendez::new(),
            broken: RefCell::new(None),
            call_timeout: config.call_timeout,
            expired: RefCell::new(std::collections::VecDeque::new()),
        });
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

    /// Sends `request` and waits for its response (any status). Many tasks may call
    /// at once; beyond the server's queue depth a caller waits for a slot.
    pub fn call(&self, request: Request<'_>) -> Result<Reply, RpcError> {
        let inner = &*self.inner;
        let msg_type = request.msg_type();
        while inner.in_flight.get() >= inner.queue_depth && inner.broken.borrow().is_none() {
            inner.slot_free.sleep();
        }
        if let Some(why) = inner.broken.borrow().clone() {
            return Err(lost(inner, why));
        }
        inner.in_flight.set(inner.in_flight.get() + 1);
        let r = self.call_in_slot(request, msg_type);
        inner.in_flight.set(inner.in_flight.get() - 1);
        inner.slot_free.wakeup();
        r
    }

    fn call_in_slot(&self, request: Request<'_>, msg_type: MsgType) -> Result<Reply, RpcError> {
        let inner = &*self.inner;
        let mut tag = inner.next_tag.get();
        if tag == TAG_NONE {
            tag = 2;
        }
        inner.next_tag.set(tag + 1);
        inner.pending.borrow_mut().insert(
            tag,
            Pending {
                reply: None,
                waiter: None,
            },
        );
        let sent = {
            let mut out = inner.writer.lock();
            let m = Message {
                tag,
                body: Body::Request(request),
            };
            send_message(&inner.stream, inner.version, &m, &mut out)
        };
        if let Err(e) = sent {
            inner.pending.borrow_mut().remove(&tag);
            if e.closes_connection() {
                fail_all(inner, &e.to_string());
            }
            return Err(e);
        }
        let deadline = inner.call_timeout.map(|t| taskio::now() + t);
        loop {
            {
                let mut pending = inner.pending.borrow_mut();
                let Some(p) = pending.get_mut(&tag) else {
                    return Err(lost(inner, "the call vanished".into()));
                };
                if let Some(r) = p.reply.take() {
                    pending.remove(&tag);
                    return r;
                }
                p.waiter = Some(TaskRef::current());
            }
            let woken = match deadline {
                None => {
                    park(WaitReason::Io("rpc call"));
                    true
                }
                Some(d) => park_until(WaitReason::Io("rpc call"), d),
            };
            if !woken {
                inner.pending.borrow_mut().remove(&tag);
                let mut expired = inner.expired.borrow_mut();
                if expired.len() >= EXPIRED_TAGS_MAX {
                    expired.pop_front();
                }
                expired.push_back(tag);
                return Err(RpcError::TimedOut {
                    msg_type,
                    tag,
                    after: inner.call_timeout.unwrap_or_default(),
                });
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Ends the reader task (its read fails) and so the connection.
        let _ = self.inner.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn lost(inner: &Inner, why: String) -> RpcError {
    RpcError::ConnectionLost {
        peer: inner.peer.to_string(),
        why,
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
        let mut frame = Vec::new();
        let r = reader
            .read_raw(&inner.stream, idle, frame_timeout, &mut frame)
            .and_then(|raw| raw.validate());
        let header = match r {
            Ok(h) => h,
            Err(e) => {
                fail_all(&inner, &e.to_string());
                return;
            }
        };
        if !header.response {
            fail_all(&inner, "the server sent a request");
            return;
        }
        if header.tag == TAG_NONE {
            // The server is closing the connection and says why.
            let reply = Reply { header, frame };
            let why = match reply.response() {
                Ok(Response::Error { status, reason, .. }) => {
                    format!("server closed the session: {status} ({reason})")
                }
                _ => "server closed the session".into(),
            };
            fail_all(&inner, &why);
            return;
        }
        let payload_ok =
            crate::decode_payload(&header, frame.get(HEADER_LEN..).unwrap_or_default()).map(|_| ());
        let mut pending = inner.pending.borrow_mut();
        if let Some(p) = pending.get_mut(&header.tag) {
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
