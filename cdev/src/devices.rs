//! The devices a cvad keeps, each open on a runtime thread of its own.
//!
//! [`Devices`] is the registry (shared by every runtime of the server, behind one
//! mutex held only for map lookups and updates, never across a wait): device names
//! to their configuration and their runtime. A device's runtime is an
//! [`rpc::RuntimeThread`] named `cdev-NAME` that opens the [`Device`] (on that
//! runtime, as everything of a device is), then serves the connections handed to
//! it ([`crate::service::DeviceService`]). A keeper task there owns the device's
//! control inbox: other runtimes run a [`Job`] on the device through it (a mode
//! change, the dirty count), and when the inbox closes the keeper waits for the
//! device's sessions to end and closes the device (drain, checkpoint).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rpc::{HandTo, RuntimeThread, RuntimeThreadConfig, SessionConfig, Status};
use taskio::remote::{Inbox, Remote, remote};
use taskio::{Builder, Rendez};
use tracing::{error, info, warn};

use crate::config::DeviceConfig;
use crate::datadir::DataDir;
use crate::device::{Device, DeviceInfo, OpenOptions};
use crate::replicas::ReplicaControl;

/// Jobs waiting in a device's control inbox, at most.
pub const JOBS_QUEUE_MAX: usize = 16;
/// How long a device may take to open before its creator stops waiting (it goes
/// on opening; DEVICE_SHOW tells when it is open).
pub const OPEN_WAIT_MAX: Duration = Duration::from_secs(300);
/// How long a closing device waits for its sessions to end before it closes
/// anyway (their sockets are shut down by then: this bounds a handler stuck in I/O).
pub const SESSION_DRAIN_MAX: Duration = Duration::from_secs(30);

/// Work run on a device's runtime, with what the runtime holds of the device.
pub type Job = Box<dyn FnOnce(&DeviceHost) + Send>;

/// An NBD connection after its handshake, on its way to the device's runtime.
pub type NbdHandoff = (taskio::net::Detached, crate::nbd::Negotiated);
/// NBD connections waiting in a device runtime's inbox, at most.
pub const NBD_QUEUE_MAX: usize = 64;

/// A refusal of an admin or routing request: the wire status and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub status: Status,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: Status, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// The server's own counters (STAT on handle 0).
#[derive(Debug, Default)]
pub struct Counters {
    pub sessions_routed: AtomicU64,
    pub admin_requests: AtomicU64,
    pub admin_refused: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a device is serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    Open(DeviceInfo),
    /// It could not open: the status and reason of the failure.
    Failed(Refusal),
}

/// A device's runtime thread and its control inbox.
struct Running {
    thread: RuntimeThread,
    control: Remote<Job>,
    nbd: Remote<NbdHandoff>,
}

impl Running {
    /// Closes the device (its keeper ends it once its sessions are gone) and joins.
    fn stop(self) {
        self.control.close();
        self.nbd.close();
        self.thread.stop();
    }
}

/// One kept device.
struct Kept {
    config: DeviceConfig,
    state: DeviceState,
    running: Option<Running>,
}

enum Slot {
    /// Being created or deleted: other admin requests on it are refused BUSY.
    Busy,
    Kept(Box<Kept>),
}

/// The devices of one cvad. See the module documentation.
pub struct Devices {
    dir: DataDir,
    /// Settings of the sessions handed to device runtimes.
    session: SessionConfig,
    counters: Arc<Counters>,
    replicas: HandTo,
    replica_control: ReplicaControl,
    /// How this server reaches peers (their replica vSSDs): its own secret.
    peers: rpc::ClientConfig,
    /// How long device runtimes poll their sockets before sleeping (see
    /// `ServerSettings::busy_poll_us`).
    busy_poll: std::time::Duration,
    map: Mutex<BTreeMap<String, Slot>>,
    started: std::time::Instant,
}

/// Poison-proof lock: every critical section is a lookup, insert or remove.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Devices {
    pub fn new(
        dir: DataDir,
        session: SessionConfig,
        counters: Arc<Counters>,
        replicas: HandTo,
        replica_control: ReplicaControl,
        peers: rpc::ClientConfig,
        busy_poll: std::time::Duration,
    ) -> Arc<Devices> {
        Arc::new(Devices {
            dir,
            session,
            counters,
            replicas,
            replica_control,
            peers,
            busy_poll,
            map: Mutex::new(BTreeMap::new()),
            started: std::time::Instant::now(),
        })
    }

    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// When the server started (its `uptime_s`).
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// How this server reaches peers.
    pub fn peers(&self) -> &rpc::ClientConfig {
        &self.peers
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Where VSSD_OPEN sessions go: the runtime serving replica vSSDs.
    pub fn replicas(&self) -> HandTo {
        self.replicas.clone()
    }

    /// What a takeover asks of the runtime serving replica vSSDs.
    pub fn replica_control(&self) -> &ReplicaControl {
        &self.replica_control
    }

    /// Starts `config`'s runtime, opens the device there and keeps it (a device that
    /// fails to open is kept, failed, with why). Fails only when its runtime cannot
    /// start.
    pub fn start(self: &Arc<Self>, config: DeviceConfig) -> Result<DeviceState, Refusal> {
        let name = config.name.clone();
        let (running, state) = self.run(&config)?;
        match &state {
            DeviceState::Open(i) => info!(device = %name, size_bytes = i.size_bytes, "device open"),
            DeviceState::Failed(r) => error!(device = %name, "device failed to open: {}", r.reason),
        }
        let kept = Kept {
            config,
            state: state.clone(),
            running: Some(running),
        };
        lock(&self.map).insert(name, Slot::Kept(Box::new(kept)));
        Ok(state)
    }

    /// Starts a device's runtime and waits for its open.
    fn run(self: &Arc<Self>, config: &DeviceConfig) -> Result<(Running, DeviceState), Refusal> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            Refusal::new(
                Status::IoError,
                format!("device {}: {what}: {e}", config.name),
            )
        };
        let (control, jobs) = remote::<Job>(JOBS_QUEUE_MAX).map_err(|e| io("control inbox", &e))?;
        let (nbd, nbd_inbox) =
            remote::<NbdHandoff>(NBD_QUEUE_MAX).map_err(|e| io("nbd inbox", &e))?;
        let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
        let (devices, cfg) = (self.clone(), config.clone());
        let mut thread_config = RuntimeThreadConfig::new(&runtime_name(&config.name));
        thread_config.io.poll_sockets_before_park = self.busy_poll;
        let thread = RuntimeThread::start(thread_config, move || {
            let peers = rpc::ClientConfig {
                name: format!("cvad-{}", cfg.name),
                ..devices.peers.clone()
            };
            let device = match Device::open_with(&cfg, open_options(), &peers) {
                Ok(d) => {
                    let _ = opened_tx.send(DeviceState::Open(d.info()));
                    Some(d)
                }
                Err(e) => {
                    let r = Refusal::new(e.status(), e.to_string());
                    let _ = opened_tx.send(DeviceState::Failed(r));
                    None
                }
            };
            let host = Rc::new(DeviceHost {
                name: cfg.name.clone(),
                device,
                live: Cell::new(0),
                ended: Rendez::new(),
                closing: Cell::new(false),
                busy: Cell::new(0),
                idle: Rendez::new(),
            });
            let h = host.clone();
            if let Err(e) = Builder::new()
                .name("cdev-nbd")
                .spawn(move || serve_nbd(&h, &nbd_inbox))
            {
                error!(device = %cfg.name, "cannot start the device's NBD task: {e}");
            }
            let h = host.clone();
            if let Err(e) = Builder::new()
                .name("cdev-keeper")
                .spawn(move || keep(&h, &jobs))
            {
                // No keeper: the device is closed when its runtime ends instead.
                error!(device = %cfg.name, "cannot start the device's keeper task: {e}");
            }
            move |handoff| {
                let _live = host.enter();
                let service = crate::service::DeviceService::new(host.clone(), devices.clone());
                if let Err(e) = rpc::serve_handoff(handoff, &devices.session, service) {
                    tracing::debug!(device = %host.name, "session ended: {e}");
                }
            }
        })
        .map_err(|e| io("runtime thread", &e))?;
        let state = opened.recv_timeout(OPEN_WAIT_MAX).unwrap_or_else(|_| {
            DeviceState::Failed(Refusal::new(
                Status::Timeout,
                format!(
                    "device {} did not open within {OPEN_WAIT_MAX:?}",
                    config.name
                ),
            ))
        });
        Ok((
            Running {
                thread,
                control,
                nbd,
            },
            state,
        ))
    }

    /// Where a DEVICE_OPEN of `name` goes: the runtime of the open device, or why not.
    pub fn hand_to(&self, name: &str) -> Result<HandTo, Refusal> {
        let map = lock(&self.map);
        match map.get(name) {
            Some(Slot::Kept(k)) => match (&k.state, &k.running) {
                (DeviceState::Open(_), Some(r)) => Ok(r.thread.to()),
                (DeviceState::Failed(why), _) => Err(Refusal::new(
                    why.status,
                    format!("device {name} failed to open: {}", why.reason),
                )),
                (DeviceState::Open(_), None) => Err(no_device(name)),
            },
            Some(_) => Err(Refusal::new(
                Status::Busy,
                format!("device {name} is changing"),
            )),
            None => Err(no_device(name)),
        }
    }

    /// Where an NBD connection to `name` goes: the open device's NBD inbox.
    pub fn nbd_to(&self, name: &str) -> Option<Remote<NbdHandoff>> {
        match lock(&self.map).get(name) {
            Some(Slot::Kept(k)) => match (&k.state, &k.running) {
                (DeviceState::Open(_), Some(r)) => Some(r.nbd.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The names of the kept devices, in order.
    pub fn names(&self) -> Vec<String> {
        let map = lock(&self.map);
        map.iter()
            .filter(|(_, s)| matches!(s, Slot::Kept(_)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// How many devices are kept, open and failed.
    pub fn census(&self) -> (u64, u64, u64) {
        let map = lock(&self.map);
        let (mut kept, mut open) = (0, 0);
        for s in map.values() {
            if let Slot::Kept(k) = s {
                kept += 1;
                open += u64::from(matches!(k.state, DeviceState::Open(_)));
            }
        }
        (kept, open, kept - open)
    }

    /// A device's configuration and state.
    pub fn get(&self, name: &str) -> Result<(DeviceConfig, DeviceState), Refusal> {
        match lock(&self.map).get(name) {
            Some(Slot::Kept(k)) => Ok((k.config.clone(), k.state.clone())),
            Some(Slot::Busy) => Err(Refusal::new(
                Status::Busy,
                format!("device {name} is changing"),
            )),
            None => Err(no_device(name)),
        }
    }

    /// Runs `f` with device `name` on its runtime and returns its answer; the
    /// calling task waits (pseudo-blocking) for it.
    pub fn on_device<T, F>(&self, name: &str, f: F) -> Result<T, Refusal>
    where
        T: Send + 'static,
        F: FnOnce(&DeviceHost) -> T + Send + 'static,
    {
        let control = match lock(&self.map).get(name) {
            Some(Slot::Kept(k)) if k.running.is_some() => match &k.running {
                Some(r) => r.control.clone(),
                None => unreachable!("looked at under the same lock"),
            },
            _ => return Err(no_device(name)),
        };
        let gone = || Refusal::new(Status::ShuttingDown, format!("device {name} is closing"));
        let (tx, rx) = remote::<T>(1).map_err(|e| {
            Refusal::new(Status::IoError, format!("device {name}: reply inbox: {e}"))
        })?;
        control
            .send(Box::new(move |host| {
                let _ = tx.send(f(host));
            }))
            .map_err(|_| gone())?;
        match rx.recv() {
            Ok(Some(v)) => Ok(v),
            _ => Err(gone()),
        }
    }

    /// Reserves `name` for a creation (BUSY while another request changes it).
    pub fn reserve(&self, name: &str, limit: usize) -> Result<(), Refusal> {
        let mut map = lock(&self.map);
        if map.contains_key(name) {
            let why = format!("device {name} exists");
            return Err(Refusal::new(Status::InvalidArgument, why));
        }
        if map.len() >= limit {
            let why = format!("this server keeps {limit} devices, its most");
            return Err(Refusal::new(Status::NoSpace, why));
        }
        map.insert(name.to_string(), Slot::Busy);
        Ok(())
    }

    /// Gives up a reservation.
    pub fn unreserve(&self, name: &str) {
        let mut map = lock(&self.map);
        if matches!(map.get(name), Some(Slot::Busy)) {
            map.remove(name);
        }
    }

    /// Replaces a kept device's configuration (its runtime stays).
    pub fn set_config(&self, config: DeviceConfig) {
        if let Some(Slot::Kept(k)) = lock(&self.map).get_mut(&config.name) {
            k.config = config;
        }
    }

    /// Takes device `name` out (reserved as Busy until `forget` or `restore`),
    /// closing it: its runtime's sessions end, the device closes (checkpoint).
    pub fn take_and_close(&self, name: &str) -> Result<DeviceConfig, Refusal> {
        not_its_runtime(name)?;
        let kept = {
            let mut map = lock(&self.map);
            match map.get(name) {
                Some(Slot::Kept(_)) => {}
                Some(Slot::Busy) => {
                    let why = format!("device {name} is changing");
                    return Err(Refusal::new(Status::Busy, why));
                }
                None => return Err(no_device(name)),
            }
            let Some(Slot::Kept(k)) = map.insert(name.to_string(), Slot::Busy) else {
                unreachable!("looked up under the same lock")
            };
            k
        };
        if let Some(r) = kept.running {
            r.stop();
        }
        info!(device = %name, "device closed");
        Ok(kept.config)
    }

    /// Forgets a name taken by `take_and_close` or reserved.
    pub fn forget(&self, name: &str) {
        lock(&self.map).remove(name);
    }

    /// Closes every device (each drains and checkpoints) and joins their runtimes.
    pub fn stop_all(&self) {
        let kept: Vec<(String, Slot)> = std::mem::take(&mut *lock(&self.map)).into_iter().collect();
        for (name, slot) in kept {
            if let Slot::Kept(k) = slot
                && let Some(r) = k.running
            {
                r.stop();
                info!(device = %name, "device closed");
            }
        }
    }
}

/// Refuses to stop device `name` from a task of its own runtime: stopping a
/// runtime joins its thread (and the asking session, served there, ends with it;
/// a task waiting there for the stop would wait for ever).
pub fn not_its_runtime(name: &str) -> Result<(), Refusal> {
    if std::thread::current().name() == Some(runtime_name(name).as_str()) {
        let why = format!(
            "this connection is served by device {name}'s runtime (it opened {name}): \
             ask on a connection that has not"
        );
        return Err(Refusal::new(Status::InvalidArgument, why));
    }
    Ok(())
}

/// Runs `f` on a plain thread of its own while the calling task waits for it
/// (pseudo-blocking): for work that blocks its thread (starting a device's runtime
/// and waiting for the device to open, stopping and joining one) asked from a task,
/// whose runtime serves others meanwhile.
pub fn off_runtime<T, F>(what: &str, f: F) -> Result<T, Refusal>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| Refusal::new(Status::IoError, format!("{what}: {e}"));
    let (tx, rx) = remote::<T>(1).map_err(|e| failed(&e))?;
    std::thread::Builder::new()
        .name(format!("cvad-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| failed(&e))?;
    match rx.recv() {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(failed(&"its thread ended without an answer")),
        Err(e) => Err(failed(&e)),
    }
}

/// The name of device `name`'s runtime thread.
fn runtime_name(name: &str) -> String {
    format!("cdev-{name}")
}

pub fn no_device(name: &str) -> Refusal {
    Refusal::new(Status::NoDevice, format!("no device {name} here"))
}

/// What a device's runtime holds of it, shared by its keeper and its sessions.
pub struct DeviceHost {
    pub name: String,
    /// None when it failed to open (no session is routed here then).
    pub device: Option<Device>,
    /// Sessions being served here.
    live: Cell<usize>,
    /// Woken when a session ends.
    ended: Rendez,
    /// Set once the device is closing (or being checked for deletion): new
    /// requests are refused SHUTTING_DOWN.
    pub closing: Cell<bool>,
    /// Client requests calling the device now.
    busy: Cell<usize>,
    /// Woken when `busy` drops to zero.
    idle: Rendez,
}

impl DeviceHost {
    /// The device for one client request, counted busy until the guard drops; None
    /// when it does not serve (failed to open, or closing).
    pub fn device(self: &Rc<Self>) -> Option<(&Device, Busy)> {
        if self.closing.get() {
            return None;
        }
        let device = self.device.as_ref()?;
        self.busy.set(self.busy.get() + 1);
        Some((device, Busy(self.clone())))
    }

    /// Refuses new requests and waits (up to `wait`) for those calling the device to
    /// end; false (and serving again) when they did not.
    pub fn quiesce(&self, wait: Duration) -> bool {
        self.closing.set(true);
        let deadline = taskio::now() + wait;
        while self.busy.get() > 0 {
            if !self.idle.sleep_until(deadline) {
                self.closing.set(false);
                return false;
            }
        }
        true
    }

    /// Counts a session in until the guard drops.
    fn enter(self: &Rc<Self>) -> LiveSession {
        self.live.set(self.live.get() + 1);
        LiveSession(self.clone())
    }
}

/// A client request calling the device (see [`DeviceHost::device`]).
pub struct Busy(Rc<DeviceHost>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
        if self.0.busy.get() == 0 {
            self.0.idle.wakeup_all();
        }
    }
}

struct LiveSession(Rc<DeviceHost>);

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
        self.0.ended.wakeup_all();
    }
}

impl crate::nbd::DeviceAccess for Rc<DeviceHost> {
    fn with_device<R>(&self, f: impl FnOnce(&Device) -> R) -> Option<R> {
        let (device, _busy) = self.device()?;
        Some(f(device))
    }
}

/// The NBD connections handed to this device, each served in a system task of its
/// own: an NBD client holds its connection open between requests, so the keeper does
/// not wait for it (Device::close waits for the requests in flight; later ones get
/// ESHUTDOWN), and the runtime's end unwinds it.
fn serve_nbd(host: &Rc<DeviceHost>, inbox: &Inbox<NbdHandoff>) {
    while let Ok(Some((stream, negotiated))) = inbox.recv() {
        let host = host.clone();
        let spawned = Builder::new()
            .name("cdev-nbd-conn")
            .system(true)
            .spawn(move || {
                let stream = taskio::net::TcpStream::adopt(stream);
                if let Err(e) = crate::nbd::serve_transmission(stream, host.clone(), negotiated) {
                    tracing::debug!(device = %host.name, "nbd connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            warn!("nbd connection dropped: {e}");
        }
    }
}

/// The keeper: runs jobs until the control inbox closes, then waits (bounded)
/// for the device's sessions to end and closes the device.
fn keep(host: &DeviceHost, jobs: &Inbox<Job>) {
    while let Ok(Some(job)) = jobs.recv() {
        job(host);
    }
    host.closing.set(true);
    let deadline = taskio::now() + SESSION_DRAIN_MAX;
    while host.live.get() > 0 {
        if !host.ended.sleep_until(deadline) {
            warn!(device = %host.name, sessions = host.live.get(), "closing with sessions still running");
            break;
        }
    }
    if let Some(d) = &host.device
        && let Err(e) = d.close()
    {
        error!(device = %host.name, "close: {e}");
    }
}

/// How cvad opens its devices: the vSSD is formatted when missing; the backing
/// store must exist (cvad made the default device's; an operator names theirs).
fn open_options() -> OpenOptions {
    OpenOptions {
        create: true,
        backing_bytes: 0,
    }
}
