//! cvad's NBD listener: a thread with a taskio runtime of its own accepts NBD
//! clients, runs each handshake ([`crate::nbd::handshake`]) against the devices
//! kept, and hands the connection to the chosen device's runtime, where its
//! transmission phase runs on the same `Device` as the native sessions (so a FLUSH on
//! any connection of a device covers all: CAN_MULTI_CONN).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use taskio::{Builder, Config, IoConfig, Runtime};
use tracing::{info, warn};

use crate::datadir::DEFAULT_DEVICE;
use crate::devices::{DeviceState, Devices};
use crate::nbd::{CONNECTIONS_MAX, ConnectionSlot, Export, Exports, handshake};

/// The address cvad's NBD listener binds by default (loopback: NBD has no secret).
pub const DEFAULT_NBD_LISTEN: &str = "127.0.0.1:10809";
/// The file, in the data dir, where cvad writes the NBD port.
pub const NBD_PORT_FILE: &str = "nbd.port";

/// cvad's devices as NBD exports; the empty name is the default device.
struct DeviceList(Arc<Devices>);

impl Exports for DeviceList {
    fn find(&self, name: &str) -> Option<Export> {
        let name = if name.is_empty() {
            DEFAULT_DEVICE
        } else {
            name
        };
        match self.0.get(name).ok()? {
            (_, DeviceState::Open(info)) => Some(Export::of(name, &info)),
            (_, DeviceState::Failed(_)) => None,
        }
    }

    fn names(&self) -> Vec<String> {
        self.0.names()
    }
}

/// The running NBD listener.
pub struct NbdListener {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NbdListener {
    /// Binds `addr` (port 0 picks one) and starts accepting.
    pub fn start(addr: SocketAddr, devices: Arc<Devices>) -> Result<NbdListener, String> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let (bound_tx, bound) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("cvad-nbd".into())
            .spawn(move || {
                let tx = bound_tx.clone();
                let run = Runtime::with_io(Config::default(), IoConfig::default())
                    .map_err(|e| e.to_string())
                    .and_then(|mut rt| {
                        rt.run(move || match taskio::net::listen(addr) {
                            Ok(l) => {
                                let _ = tx.send(Ok(l.local_addr()));
                                accept(&l, &devices, &stop);
                            }
                            Err(e) => {
                                let _ = tx.send(Err(format!("nbd listen {addr}: {e}")));
                            }
                        })
                        .map_err(|e| e.to_string())
                    });
                if let Err(e) = run {
                    let _ = bound_tx.send(Err(format!("nbd listener: {e}")));
                }
            })
            .map_err(|e| format!("nbd listener thread: {e}"))?;
        let addr = match bound.recv() {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err("nbd listener thread ended".into()),
        };
        Ok(NbdListener {
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connections already handed to devices end with them).
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the accept; refused or not, the flag is seen at the next accept.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept(listener: &taskio::net::TcpListener, devices: &Arc<Devices>, stopping: &AtomicBool) {
    let live = Rc::new(Cell::new(0usize));
    let exports = Rc::new(DeviceList(devices.clone()));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) => return warn!("nbd accept: {e}"),
        };
        if stopping.load(Ordering::Acquire) {
            return;
        }
        if live.get() >= CONNECTIONS_MAX {
            warn!(%peer, "nbd: handshake limit reached, closing");
            continue;
        }
        let (slot, exports) = (ConnectionSlot::take(&live), exports.clone());
        let _ = Builder::new().name("nbd-handshake").spawn(move || {
            let _slot = slot;
            match handshake(&stream, &*exports) {
                Ok(Some(n)) => match exports.0.nbd_to(&n.export.name) {
                    Some(to) => {
                        if to.send((stream.detach(), n)).is_err() {
                            info!(%peer, "nbd: the device is closing");
                        }
                    }
                    None => info!(%peer, "nbd: export {} is not open", n.export.name),
                },
                Ok(None) => {}
                Err(e) => info!(%peer, "nbd handshake: {e}"),
            }
        });
    }
}
