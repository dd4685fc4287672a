//! The HELLO handshake, both sides (PROTOCOL.md, "Connection and HELLO"): version
//! negotiation, queue depth and data length, and the optional HMAC
//! challenge-response of [`auth`](crate::auth). The client's [`client`] and the
//! server's [`server`] live together so that one reading of the spec drives both.

use std::time::Duration;

use taskio::net::TcpStream;

use crate::auth;
use crate::error::{RpcError, type_name};
use crate::frame::{FrameReader, send_message};
use crate::limits::{
    DATA_LEN_MAX, HEADER_LEN, HELLO_FRAMES_MAX, NONCE_LEN, TAG_NONE, VERSION_MAX, VERSION_MIN,
};
use crate::msg::{Body, Hello, HelloReply, Message, Request, Response};
use crate::msg_type::MsgType;
use crate::status::Status;

/// The tag of the client's HELLO frames (any tag but TAG_NONE would do: nothing
/// else is in flight during the handshake).
const HELLO_TAG: u64 = 1;

/// The highest version both `min..=max` (the peer's offer) and this build speak.
fn common_version(min: u16, max: u16) -> Option<u16> {
    let lo = min.max(VERSION_MIN);
    let hi = max.min(VERSION_MAX);
    (lo <= hi).then_some(hi)
}

/// What the client learns from the server's HELLO reply.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub version: u16,
    pub queue_depth: u32,
    pub data_len_max: u32,
    pub server_name: String,
}

/// The client's side: says HELLO, proves `secret` when the server asks, checks the
/// server's proof when it has a secret. Every read waits at most `timeout`.
pub(crate) fn client(
    stream: &TcpStream,
    reader: &mut FrameReader,
    name: &str,
    secret: Option<&[u8]>,
    timeout: Duration,
) -> Result<Opened, RpcError> {
    let mut out = Vec::new();
    let mut client_nonce = auth::nonce();
    let mut proof = None;
    loop {
        let hello = Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
            client_nonce,
            proof,
            client_name: name,
        };
        let m = Message {
            tag: HELLO_TAG,
            body: Body::Request(Request::Hello(hello)),
        };
        send_message(stream, VERSION_MIN, &m, &mut out)?;
        let (header, msg) = reader.read(stream, timeout)?;
        // TAG_NONE: an ERROR about the connection (BUSY at the session limit).
        if header.tag != HELLO_TAG && header.tag != TAG_NONE {
            return Err(RpcError::Protocol {
                what: format!("HELLO answered under tag {:#x}", header.tag),
            });
        }
        match msg.body {
            Body::Response(Response::Hello(r)) => {
                if let Some(secret) = secret {
                    let Some(p) = r.proof else {
                        return Err(RpcError::AuthFailed { who: "server" });
                    };
                    auth::verify_server(secret, &r.server_nonce, &client_nonce, name, &p)?;
                }
                if common_version(r.version, r.version) != Some(r.version) {
                    return Err(RpcError::Protocol {
                        what: format!("the server chose version {}, not offered", r.version),
                    });
                }
                return Ok(Opened {
                    version: r.version,
                    queue_depth: r.queue_depth,
                    data_len_max: r.data_len_max,
                    server_name: r.server_name.to_string(),
                });
            }
            Body::Response(Response::HelloAuthRequired(r)) if proof.is_none() => {
                let Some(secret) = secret else {
                    return Err(RpcError::Refused {
                        what: "HELLO",
                        status: Status::AuthRequired,
                        reason: "the server wants a secret and none is configured".into(),
                    });
                };
                // A fresh nonce for the proving HELLO (PROTOCOL.md, HELLO step 2).
                client_nonce = auth::nonce();
                proof = Some(auth::prove(secret, &r.server_nonce, &client_nonce, name));
            }
            Body::Response(Response::Error { status, reason, .. }) => {
                return Err(RpcError::Refused {
                    what: "HELLO",
                    status,
                    reason: reason.to_string(),
                });
            }
            _ => {
                return Err(RpcError::Protocol {
                    what: "unexpected answer to HELLO".into(),
                });
            }
        }
    }
}

/// What the server side of HELLO needs to know.
pub(crate) struct ServerSide<'a> {
    pub queue_depth: u32,
    pub secret: Option<&'a [u8]>,
    pub server_name: &'a str,
    /// Bound of each HELLO frame's arrival.
    pub timeout: Duration,
}

/// What the server learns from a successful HELLO.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub client_name: String,
    pub version: u16,
    pub authenticated: bool,
}

/// Sends `m` when the socket takes it: the session is ending, and a peer that does
/// not read must not hold it.
fn tell(stream: &TcpStream, m: &Message<'_>, out: &mut Vec<u8>) {
    let _ = send_message(stream, VERSION_MIN, m, out);
}

/// Whether a session ending on `e` tells the peer why (ERROR, TAG_NONE): not when
/// the peer closed its side, inside a frame or between frames (PROTOCOL.md, "Bad
/// input": a truncated frame closes with nothing sent).
pub(crate) fn is_told(e: &RpcError) -> bool {
    !matches!(
        e,
        RpcError::ConnectionLost { .. } | RpcError::Truncated { .. }
    )
}

/// The status a closing ERROR frame gives for `e` (a read that timed out is TIMEOUT).
pub(crate) fn closing_status(e: &RpcError) -> Status {
    match e {
        RpcError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
            Status::Timeout
        }
        e => e.status(),
    }
}

/// The server's side: reads HELLO frames (at most HELLO_FRAMES_MAX), answers a
/// HELLO whose fields fail under its tag, challenges for the secret when it has one.
/// On any error it has already told the client (when the spec says so) and the
/// caller closes the connection.
pub(crate) fn server(
    stream: &TcpStream,
    reader: &mut FrameReader,
    side: &ServerSide<'_>,
) -> Result<Accepted, RpcError> {
    let server_nonce: [u8; NONCE_LEN] = auth::nonce();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let mut asked_proof = false;
    for _ in 0..HELLO_FRAMES_MAX {
        let raw = match reader.read_raw(stream, side.timeout, side.timeout, &mut frame) {
            Ok(raw) => raw,
            Err(e) => {
                // Bad framing before HELLO is told like everywhere else (an HTTP
                // client hitting the port learns why it is closed).
                if is_told(&e) {
                    let reason = e.to_string();
                    let m = Message::connection_error(closing_status(&e), &reason);
                    tell(stream, &m, &mut out);
                }
                return Err(e);
            }
        };
        if raw.msg_type != MsgType::Hello.code() {
            // Nothing is served before HELLO (and its proof, when asked).
            let m = Message::connection_error(Status::AuthRequired, "HELLO first");
            tell(stream, &m, &mut out);
            return Err(RpcError::Protocol {
                what: format!("{} before HELLO", type_name(raw.msg_type)),
            });
        }
        // A HELLO whose fields fail is answered under its tag and the client may
        // try again (PROTOCOL.md, "Header checks"); what cannot be trusted closes.
        let decoded = raw.validate().and_then(|header| {
            if header.response {
                return Err(RpcError::BadFlags {
                    msg_type: raw.msg_type,
                    got: raw.flags,
                });
            }
            match crate::decode_payload(&header, &frame[HEADER_LEN..])?.body {
                Body::Request(Request::Hello(h)) => Ok(h),
                _ => Err(RpcError::Protocol {
                    what: "a HELLO request that does not decode as one".into(),
                }),
            }
        });
        let hello = match decoded {
            Ok(h) => h,
            Err(e) => {
                let reason = e.to_string();
                if e.closes_connection() {
                    tell(
                        stream,
                        &Message::connection_error(e.status(), &reason),
                        &mut out,
                    );
                    return Err(e);
                }
                let m = Message::error_reply(&raw, e.status(), &reason);
                send_message(stream, VERSION_MIN, &m, &mut out)?;
                continue;
            }
        };
        let Some(version) = common_version(hello.version_min, hello.version_max) else {
            let m = Message::error_reply(&raw, Status::BadVersion, "no common version");
            tell(stream, &m, &mut out);
            return Err(RpcError::BadVersion {
                got: hello.version_max,
                min: VERSION_MIN,
                max: VERSION_MAX,
            });
        };
        let reply = |proof| HelloReply {
            version,
            queue_depth: side.queue_depth,
            data_len_max: DATA_LEN_MAX,
            server_nonce,
            proof,
            server_name: side.server_name,
        };
        let (authenticated, server_proof) = match (side.secret, hello.proof) {
            (None, _) => (false, None),
            (Some(_), None) if !asked_proof => {
                asked_proof = true;
                let m = Message {
                    tag: raw.tag,
                    body: Body::Response(Response::HelloAuthRequired(reply(None))),
                };
                send_message(stream, VERSION_MIN, &m, &mut out)?;
                continue;
            }
            (Some(secret), proof) => {
                // One try per connection: a proof before the challenge, none after
                // it, or a wrong one all fail.
                let proven = asked_proof
                    && proof.is_some_and(|p| {
                        let (cn, name) = (&hello.client_nonce, hello.client_name);
                        auth::verify(secret, &server_nonce, cn, name, &p).is_ok()
                    });
                if !proven {
                    let m = Message::error_reply(&raw, Status::AuthFailed, "bad proof");
                    tell(stream, &m, &mut out);
                    return Err(RpcError::AuthFailed { who: "client" });
                }
                let p = auth::prove_server(
                    secret,
                    &server_nonce,
                    &hello.client_nonce,
                    hello.client_name,
                );
                (true, Some(p))
            }
        };
        let m = Message {
            tag: raw.tag,
            body: Body::Response(Response::Hello(reply(server_proof))),
        };
        send_message(stream, VERSION_MIN, &m, &mut out)?;
        return Ok(Accepted {
            client_name: hello.client_name.to_string(),
            version,
            authenticated,
        });
    }
    let m = Message::connection_error(Status::BadSequence, "too many HELLO frames");
    tell(stream, &m, &mut out);
    Err(RpcError::Protocol {
        what: format!("no session after {HELLO_FRAMES_MAX} HELLO frames"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_is_chosen() {
        assert_eq!(common_version(1, 9), Some(VERSION_MAX));
        assert_eq!(common_version(0, 1), Some(1));
        assert_eq!(common_version(VERSION_MAX + 1, u16::MAX), None);
    }
}
