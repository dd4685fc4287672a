//! A service that says where it runs and routes DEVICE_OPEN to another runtime, and
//! the raw frames of a client that opens a device with a PING pipelined behind it:
//! shared by the routing tests on real threads (`host.rs`) and under the simulator
//! (`sim_host.rs`).

use rpc::limits::HEADER_LEN;
use rpc::{
    Body, DeviceInfo, HandTo, Header, Hello, Message, Request, Response, Service, SessionInfo,
    Status, encode_frame,
};

/// The name of the device the client opens.
pub const DEVICE: &str = "dev0";

/// Answers PING with `name@thread` (the runtime that serves it), DEVICE_OPEN with
/// a small device; routes DEVICE_OPEN to `to` when it has one.
pub struct Where {
    pub name: String,
    pub to: Option<HandTo>,
}

impl Where {
    pub fn new(name: &str, to: Option<HandTo>) -> Where {
        Where {
            name: name.into(),
            to,
        }
    }

    /// What a PING served here answers.
    pub fn answer(name: &str) -> String {
        let thread = std::thread::current();
        format!("{name}@{}", thread.name().unwrap_or("?"))
    }
}

impl Service for Where {
    fn handle<'s>(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        match request {
            Request::Ping { .. } => {
                scratch.clear();
                scratch.extend_from_slice(Where::answer(&self.name).as_bytes());
                Response::Ping { data: scratch }
            }
            Request::DeviceOpen { name, .. } if name == DEVICE => Response::DeviceOpen {
                handle: 1,
                info: DeviceInfo {
                    size_bytes: 1 << 20,
                    block_size: 4096,
                    io_len_max: 4096,
                    read_only: false,
                },
            },
            other => Response::Error {
                msg_type: other.msg_type(),
                status: Status::NotSupported,
                reason: "PING and DEVICE_OPEN only",
            },
        }
    }

    fn routes(&self, msg_type: rpc::MsgType) -> bool {
        msg_type == rpc::MsgType::DeviceOpen && self.to.is_some()
    }

    fn route(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        _request: &Request<'_>,
    ) -> Option<HandTo> {
        self.to.clone()
    }
}

pub fn frame(tag: u64, request: Request<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    let m = Message {
        tag,
        body: Body::Request(request),
    };
    encode_frame(1, &m, &mut v).unwrap();
    v
}

pub fn hello(tag: u64) -> Vec<u8> {
    frame(
        tag,
        Request::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_nonce: [1; 32],
            proof: None,
            client_name: "routed",
        }),
    )
}

/// DEVICE_OPEN (tag `tag`) and a PING (tag `tag + 1`), to be written at once.
pub fn open_then_ping(tag: u64) -> (Vec<u8>, Vec<u8>) {
    let open = frame(
        tag,
        Request::DeviceOpen {
            name: DEVICE,
            read_only: false,
        },
    );
    (open, frame(tag + 1, Request::Ping { data: b"?" }))
}

/// A response frame: header and payload, checked whole.
pub fn decode(head: &[u8; HEADER_LEN], payload: &[u8]) -> (Header, Vec<u8>, Option<u64>) {
    let h = rpc::decode_header(head).unwrap();
    let m = rpc::decode_payload(&h, payload).unwrap();
    match m.body {
        Body::Response(Response::Ping { data }) => (h, data.to_vec(), None),
        Body::Response(Response::DeviceOpen { handle, .. }) => (h, Vec::new(), Some(handle)),
        _ => (h, Vec::new(), None),
    }
}
