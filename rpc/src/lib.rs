//! `rpc`: the CVA wire protocol, the session server loop and a pipelined client.
//!
//! Renders the seed's "CVA OVERALL ARCHITECTURE USING LIBTASK" (rpc.c, server and
//! client sides). It sits on `taskio` and must never know what a cache, a vSSD or a
//! transaction is: it moves framed, checksummed messages and nothing else. The
//! replica messages name their fields (tran, line, version) only to lay them out;
//! what they mean is `dtm`'s and `vssd`'s business.
//!
//! `PROTOCOL.md` beside this crate is the single source of truth for the wire; this
//! code follows it:
//! - [`limits`]: every number of the wire, with their relations asserted;
//! - [`Header`] / [`RawHeader`]: the fixed 56-byte header and its checks;
//! - [`MsgType`], [`Status`]: the type and status codes;
//! - [`Message`], [`Request`], [`Response`]: typed bodies of every message,
//!   decoded without copying their data;
//! - [`encode_frame`], [`decode_header`], [`decode_payload`], [`decode_frame`]:
//!   framing with both CRC32Cs; [`FrameReader`] / [`send_message`] on a stream;
//! - [`auth`]: the HELLO challenge-response (HMAC-SHA256), and the handshake of
//!   both sides in one module (`hello.rs`);
//! - [`session`]: one connection served by tasks of the current runtime
//!   ([`serve_connection`]) and a listener serving one session per connection
//!   ([`serve_listener`]): the same code on the real driver and the simulator;
//! - [`host`]: the thread hosting on top, generic over serving one connection: a
//!   connection handed between runtimes ([`Handoff`]: a plain fd, the bytes
//!   already read, the HELLO negotiated), runtime inboxes ([`HandTo`],
//!   [`serve_handed`]), long-lived runtime threads ([`RuntimeThread`]) and an
//!   acceptor with one runtime thread per session ([`Host`]);
//! - [`server`]: the rpc server on a [`Host`] ([`Server`]);
//! - [`client`]: the pipelined [`Client`];
//! - [`Ledger`]: frames and in-flight slots server sessions took and returned,
//!   for leak checks;
//! - [`echo`]: a service that echoes, for tests, benchmarks and simulations;
//! - [`RpcError`]: what went wrong, the status to answer with, and whether the
//!   connection must close.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod client;
mod codec;
mod cursor;
pub mod echo;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod hello;
pub mod host;
mod ledger;
pub mod limits;
mod msg;
mod msg_type;
pub mod server;
pub mod session;
mod status;

pub use client::{Client, ClientConfig, Reply};
pub use codec::{
    decode_frame, decode_header, decode_payload, encode_frame, header_bytes, truncate_reason,
};
pub use error::{Part, RpcError};
pub use frame::{FrameOut, FrameReader, WRITE_GATHER_BYTES_MAX, send_message};
#[doc(hidden)]
pub use header::forge;
pub use header::{FLAG_RESPONSE, FLAGS_KNOWN, Header, RawHeader, payload_crc};
pub use host::{
    BUSY_POLL_US_DEFAULT, BUSY_POLL_US_MAX, HANDOFF_QUEUE_MAX, HandTo, Handoff, Host, HostConfig,
    RuntimeThread, RuntimeThreadConfig, handoff_inbox, serve_handed,
};
pub use ledger::{Ledger, LedgerCounts};
pub use limits::HEADER_LEN;
pub use msg::{
    Body, CLEAN_FLAG_CLEANED, Counter, DELETE_FLAG_DIRTY_NAMED, DEVICE_FLAG_READ_ONLY, DeviceInfo,
    DirtyLine, Hello, HelloReply, IN_DOUBT_FLAG_DAMAGED, InDoubt, Message, RECOVER_FLAG_MORE,
    Request, Response, TranState, VssdInfo,
};
pub use msg_type::MsgType;
pub use server::{SESSION_AIO_DEPTH, Server, ServerConfig};
pub use session::{
    Service, SessionConfig, SessionInfo, serve_connection, serve_handoff, serve_listener,
};
pub use status::Status;
