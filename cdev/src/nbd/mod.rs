//! The NBD export: every cache device served to standard clients (qemu, nbdcopy,
//! fio's nbd engine, the kernel's driver) over the NBD protocol (the NBD project's
//! doc/proto.md), fixed newstyle, no TLS.
//!
//! Two halves, so a server can run them on different runtimes:
//! - [`handshake`]: the option haggling over a byte stream, given the exports'
//!   [`Exports`]; it returns the chosen export and what was negotiated. It reads
//!   exactly the bytes of the handshake (nothing of the transmission phase, which the
//!   client starts only after the server's last reply), so a connection can be
//!   detached after it and handed to the device's runtime.
//! - [`serve_transmission`]: the commands on the device's runtime, each going to the
//!   same [`Device`] operation as the native protocol's.
//!
//! [`serve_listener`] puts both on one runtime that owns the devices: every
//! connection of a device runs on that runtime, so a FLUSH on one covers the writes
//! acknowledged on all (CAN_MULTI_CONN).

mod handshake;
pub mod proto;
mod transmit;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use taskio::net::{TcpListener, TcpStream};
use taskio::{Builder, IoError};

use crate::device::{Device, DeviceInfo};

pub use handshake::handshake;
pub use transmit::serve_transmission;

/// Longest option payload a client may send; a longer one is skipped and answered
/// NBD_REP_ERR_TOO_BIG (the longest valid one is a 4096-byte name plus a few queries).
pub const OPTION_LEN_MAX: u32 = 16 * 1024;
/// Options a client may send in one handshake before the server closes it.
pub const OPTIONS_MAX: u32 = 1024;
/// Longest string (export name, query) the protocol allows.
pub const STRING_LEN_MAX: u32 = 4096;
/// Names listed by NBD_OPT_LIST at most.
pub const EXPORTS_LISTED_MAX: usize = 4096;
/// How long each read of the handshake may wait.
pub const HANDSHAKE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests of one connection served at once (its handler tasks): the queue depth
/// clients commonly keep (qemu, fio at 32), so none waits for a handler while the
/// device could serve it.
pub const HANDLERS_MAX: usize = 32;
/// Requests read and waiting for a handler, at most, per connection.
pub const QUEUE_MAX: usize = 32;
/// Bytes of an oversized WRITE's payload the server skips to answer EOVERFLOW and
/// go on; longer, it closes the connection.
pub const SKIP_LEN_MAX: u64 = 64 << 20;
/// Connections [`serve_listener`] serves at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 256;

const _: () = assert!(OPTION_LEN_MAX >= 4 + STRING_LEN_MAX + 2 + 4 + 4 + STRING_LEN_MAX);
const _: () = assert!(SKIP_LEN_MAX >= crate::IO_LEN_MAX as u64);

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("nbd {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: IoError,
    },
    /// The client broke the protocol in a way the connection cannot survive.
    #[error("nbd {op}: {why}")]
    Protocol { op: &'static str, why: String },
}

/// An export as the handshake shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    pub name: String,
    pub size: u64,
    /// The preferred block size (the cache line).
    pub line_size: u32,
    /// The largest READ or WRITE.
    pub io_len_max: u32,
    pub read_only: bool,
}

impl Export {
    pub fn of(name: &str, info: &DeviceInfo) -> Export {
        Export {
            name: name.to_string(),
            size: info.size_bytes,
            line_size: info.line_size,
            io_len_max: info.io_len_max,
            read_only: info.read_only,
        }
    }

    /// The transmission flags: multi-conn is true because every connection of a
    /// device is served on the device's runtime by the same `Device`.
    pub fn transmission_flags(&self) -> u16 {
        use proto::*;
        let mut f = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_FAST_ZERO
            | TFLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        }
        f
    }
}

/// How the transmission phase reaches its device: a plain `Rc<Device>`, or a host's
/// holder that refuses requests while the device closes (cvad's `DeviceHost`).
pub trait DeviceAccess: 'static {
    /// Runs `f` on the device for one request; None when the device does not serve
    /// now (the client gets ESHUTDOWN).
    fn with_device<R>(&self, f: impl FnOnce(&Device) -> R) -> Option<R>;
}

impl DeviceAccess for Rc<Device> {
    fn with_device<R>(&self, f: impl FnOnce(&Device) -> R) -> Option<R> {
        Some(f(self))
    }
}

/// What the handshake looks exports up in.
pub trait Exports {
    /// The export named `name`; "" is the default export. None: no such export.
    fn find(&self, name: &str) -> Option<Export>;
    /// Every export's name (NBD_OPT_LIST).
    fn names(&self) -> Vec<String>;
}

/// What a handshake ended with: the transmission phase's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub export: Export,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected (BLOCK_STATUS allowed).
    pub base_allocation: bool,
}

/// The devices one runtime owns, by name; the first is the default export.
#[derive(Default)]
pub struct DeviceExports {
    devices: Vec<(String, Rc<Device>)>,
}

impl DeviceExports {
    pub fn new() -> DeviceExports {
        DeviceExports::default()
    }

    pub fn add(&mut self, name: &str, device: Rc<Device>) {
        self.devices.push((name.to_string(), device));
    }

    /// The device of `name` ("": the default).
    pub fn device(&self, name: &str) -> Option<&Rc<Device>> {
        let found = if name.is_empty() {
            self.devices.first()
        } else {
            self.devices.iter().find(|(n, _)| n == name)
        };
        found.map(|(_, d)| d)
    }
}

impl Exports for DeviceExports {
    fn find(&self, name: &str) -> Option<Export> {
        let device = self.device(name)?;
        let name = if name.is_empty() {
            &self.devices[0].0
        } else {
            name
        };
        Some(Export::of(name, &device.info()))
    }

    fn names(&self) -> Vec<String> {
        self.devices.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Serves one accepted connection whose devices are on this runtime: the handshake,
/// then the transmission phase. Ok when the client ended it (ABORT, DISC, EOF).
pub fn serve_connection(stream: TcpStream, exports: &DeviceExports) -> Result<(), NbdError> {
    let Some(negotiated) = handshake(&stream, exports)? else {
        return Ok(());
    };
    let device = exports
        .device(&negotiated.export.name)
        .cloned()
        .ok_or_else(|| NbdError::Protocol {
            op: "transmission",
            why: format!("export {} went away", negotiated.export.name),
        })?;
    serve_transmission(stream, device, negotiated)
}

/// Accepts connections on `listener` and serves each in a task of the current
/// runtime (the one owning the devices), [`CONNECTIONS_MAX`] at once. Returns only
/// when accepting fails.
pub fn serve_listener(listener: &TcpListener, exports: Rc<DeviceExports>) -> Result<(), NbdError> {
    let live = Rc::new(Cell::new(0usize));
    loop {
        let (stream, peer) = listener.accept().map_err(|source| NbdError::Io {
            op: "accept",
            source,
        })?;
        if live.get() >= CONNECTIONS_MAX {
            tracing::warn!(%peer, "nbd: connection limit reached, closing");
            continue;
        }
        let (exports, slot) = (exports.clone(), ConnectionSlot::take(&live));
        // When the runtime is at its task limit the closure, the stream (closed) and
        // the slot are dropped.
        let _ = Builder::new().name("nbd-conn").spawn(move || {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, &exports) {
                tracing::info!(%peer, "nbd connection ended: {e}");
            }
        });
    }
}

/// One of [`CONNECTIONS_MAX`] connection slots, given back however its task ends.
pub(crate) struct ConnectionSlot(Rc<Cell<usize>>);

impl ConnectionSlot {
    pub(crate) fn take(live: &Rc<Cell<usize>>) -> ConnectionSlot {
        live.set(live.get() + 1);
        ConnectionSlot(live.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

// A handshake's outcome travels with the detached connection to the device's
// runtime (another thread): both must be Send.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Negotiated>();
    send::<taskio::net::Detached>();
};
