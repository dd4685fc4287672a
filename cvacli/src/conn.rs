//! One connection to a cvad and the calls the commands make, each failure naming
//! the operation, the device and the value.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use rpc::{Client, ClientConfig, Counter, DeviceInfo, Request, Response, RpcError, Status};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: Box<RpcError>,
    },
    #[error("{op} {device} {value}: {source}")]
    Call {
        op: &'static str,
        device: String,
        value: String,
        #[source]
        source: Box<RpcError>,
    },
    #[error("{op} {device} {value}: refused {status}: {reason}")]
    Refused {
        op: &'static str,
        device: String,
        value: String,
        status: Status,
        reason: String,
    },
    #[error("{op} {device} {value}: unexpected reply {reply}")]
    Unexpected {
        op: &'static str,
        device: String,
        value: String,
        reply: String,
    },
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("{0}")]
    Usage(String),
    /// The runtime the client runs in: starting it, its tasks.
    #[error("{0}")]
    Runtime(String),
    /// A check that ran and found problems (already reported).
    #[error("{0}")]
    Failed(String),
}

/// A device opened on this connection.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    pub handle: u64,
    pub info: DeviceInfo,
}

/// The connection and the devices it opened (each once).
pub struct Conn {
    pub client: Rc<Client>,
    opened: RefCell<HashMap<String, Open>>,
    /// Devices are opened read-only (DEVICE_OPEN's READ_ONLY flag).
    read_only: bool,
}

/// What a call is, for its errors.
pub struct Op<'a> {
    pub op: &'static str,
    pub device: &'a str,
    pub value: String,
}

impl Op<'_> {
    fn refused(&self, status: Status, reason: &str) -> CliError {
        CliError::Refused {
            op: self.op,
            device: self.device.into(),
            value: self.value.clone(),
            status,
            reason: reason.into(),
        }
    }

    fn unexpected(&self, reply: String) -> CliError {
        CliError::Unexpected {
            op: self.op,
            device: self.device.into(),
            value: self.value.clone(),
            reply,
        }
    }
}

impl Conn {
    /// Connects to `addr`; the devices this connection opens are opened read-only
    /// with `read_only` (the server then refuses writes, discards and flushes).
    pub fn connect(
        addr: SocketAddr,
        secret: Option<Vec<u8>>,
        read_only: bool,
    ) -> Result<Conn, CliError> {
        let config = ClientConfig {
            name: "cvacli".into(),
            secret,
            ..ClientConfig::default()
        };
        let client = Client::connect(addr, &config).map_err(|source| CliError::Connect {
            addr,
            source: Box::new(source),
        })?;
        Ok(Conn {
            client: Rc::new(client),
            opened: RefCell::new(HashMap::new()),
            read_only,
        })
    }

    /// Calls and hands the OK response to `take`; an error status is Refused.
    pub fn call<T>(
        &self,
        op: &Op<'_>,
        request: Request<'_>,
        take: impl FnOnce(Response<'_>) -> Option<T>,
    ) -> Result<T, CliError> {
        call(&self.client, op, request, take)
    }

    /// The device's handle on this connection (DEVICE_OPEN the first time).
    pub fn open(&self, device: &str) -> Result<Open, CliError> {
        if let Some(o) = self.opened.borrow().get(device) {
            return Ok(*o);
        }
        let op = Op {
            op: "open",
            device,
            value: String::new(),
        };
        let o = self.call(
            &op,
            Request::DeviceOpen {
                name: device,
                read_only: self.read_only,
            },
            |r| match r {
                Response::DeviceOpen { handle, info } => Some(Open { handle, info }),
                _ => None,
            },
        )?;
        self.opened.borrow_mut().insert(device.into(), o);
        Ok(o)
    }

    /// STAT of a device, or of the server (None).
    pub fn stat(&self, device: Option<&str>) -> Result<Vec<(String, u64)>, CliError> {
        let handle = match device {
            Some(d) => self.open(d)?.handle,
            None => 0,
        };
        let op = Op {
            op: "stat",
            device: device.unwrap_or("(server)"),
            value: String::new(),
        };
        self.call(&op, Request::Stat { handle }, |r| match r {
            Response::Stat { counters } => Some(
                counters
                    .iter()
                    .map(|Counter { name, value }| (name.to_string(), *value))
                    .collect(),
            ),
            _ => None,
        })
    }
}

/// `Conn::call` on a shared client (the bench's and verify's tasks).
pub fn call<T>(
    client: &Client,
    op: &Op<'_>,
    request: Request<'_>,
    take: impl FnOnce(Response<'_>) -> Option<T>,
) -> Result<T, CliError> {
    let reply = client.call(request).map_err(|source| CliError::Call {
        op: op.op,
        device: op.device.into(),
        value: op.value.clone(),
        source: Box::new(source),
    })?;
    let response = reply.response().map_err(|source| CliError::Call {
        op: op.op,
        device: op.device.into(),
        value: op.value.clone(),
        source: Box::new(source),
    })?;
    if let Response::Error { status, reason, .. } = response {
        return Err(op.refused(status, reason));
    }
    // Its type alone names an unexpected reply: formatting the whole response
    // (a READ's data, byte by byte) on every call cost more than the call itself
    // (perf of `cvacli bench`), and the client already refuses a reply of another
    // type than the request's, so only a variant within the type can be wrong.
    let msg_type = response.msg_type();
    take(response).ok_or_else(|| op.unexpected(msg_type.to_string()))
}
