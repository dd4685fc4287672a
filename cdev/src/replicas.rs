//! The replica vSSDs this cvad holds for peers' devices: `replicas/NAME.vssd` in
//! the data dir, all owned by one runtime thread (`cvad-replicas`). A peer's DTM
//! session moves there at VSSD_OPEN (or VSSD_CREATE) and is served by
//! `dtm::ReplicaService`; VSSD_CREATE formats a new one there. At start every
//! replica vSSD of the data dir is opened (one that fails is logged and not
//! served); at stop each is checkpointed and closed. VSSD_CREATE keeps the device's
//! configuration as its primary sent it beside the vSSD (`replicas/NAME.toml`): a
//! takeover ([`crate::admin`]) starts from it, after [`ReplicaControl::release`]
//! fenced the vSSD and stopped serving it here.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use dtm::{ReplicaService, Vssds};
use rpc::{
    HandTo, Header, Request, Response, RpcError, RuntimeThread, RuntimeThreadConfig, Service,
    SessionConfig, SessionInfo, Status,
};
use taskio::remote::{Inbox, Remote, remote};
use tracing::{error, info, warn};
use vssd::layout::{FormatParams, random_uuid};
use vssd::{Options, Vssd, format};

use crate::config::DeviceConfig;
use crate::datadir::{check_name, parse_toml, write_atomic};
use crate::devices::Refusal;

/// The data dir's folder of replica vSSDs.
pub const REPLICAS_DIR: &str = "replicas";

/// Jobs waiting in the replica runtime's control inbox, at most.
pub const REPLICA_JOBS_QUEUE_MAX: usize = 4;

/// Work run on the replica runtime, with what it holds.
type ReplicaJob = Box<dyn FnOnce(&Host) + Send>;

/// The replica runtime: its thread and the inbox whose closing stops its vSSDs.
pub struct Replicas {
    thread: RuntimeThread,
    control: ReplicaControl,
}

/// What other runtimes ask of the replica runtime (a takeover's steps); each call
/// waits (pseudo-blocking) for its answer.
#[derive(Clone)]
pub struct ReplicaControl {
    jobs: Remote<ReplicaJob>,
}

/// A replica vSSD held here for a device, and the device's configuration as its
/// primary sent it (None: its VSSD_CREATE carried none).
#[derive(Debug, Clone)]
pub struct Held {
    pub vssd: String,
    pub path: PathBuf,
    pub config: Option<String>,
}

impl Replicas {
    /// Starts the runtime, which opens the replica vSSDs under `root` and polls its
    /// sockets for up to `busy_poll` before sleeping.
    pub fn start(
        root: &Path,
        session: SessionConfig,
        busy_poll: std::time::Duration,
    ) -> Result<Replicas, RpcError> {
        let dir = root.join(REPLICAS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| RpcError::Setup {
            what: "create the replicas folder",
            source,
        })?;
        let (jobs, stop) =
            remote::<ReplicaJob>(REPLICA_JOBS_QUEUE_MAX).map_err(|source| RpcError::Io {
                op: "replica control inbox",
                source,
            })?;
        let mut thread_config = RuntimeThreadConfig::new("cvad-replicas");
        thread_config.io.poll_sockets_before_park = busy_poll;
        let thread = RuntimeThread::start(thread_config, move || {
            let (vssds, served) = load(&dir);
            let host = Rc::new(Host {
                vssds,
                served: RefCell::new(served),
                dir,
                creating: RefCell::new(BTreeSet::new()),
            });
            let h = host.clone();
            if let Err(e) = taskio::Builder::new()
                .name("replicas-keeper")
                .spawn(move || keep(&h, &stop))
            {
                error!("cannot start the replica keeper task: {e}");
            }
            move |handoff| {
                let service = PeerService {
                    inner: ReplicaService::new(host.vssds.clone()),
                    host: host.clone(),
                };
                if let Err(e) = rpc::serve_handoff(handoff, &session, service) {
                    tracing::debug!("replica session ended: {e}");
                }
            }
        })?;
        Ok(Replicas {
            thread,
            control: ReplicaControl { jobs },
        })
    }

    pub fn control(&self) -> ReplicaControl {
        self.control.clone()
    }

    pub fn to(&self) -> HandTo {
        self.thread.to()
    }

    /// Ends the sessions, checkpoints and closes every replica vSSD, joins.
    pub fn stop(self) {
        self.control.jobs.close();
        self.thread.stop();
    }
}

impl ReplicaControl {
    fn run<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Host) -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        let gone = || {
            Refusal::new(
                Status::ShuttingDown,
                format!("{what}: the replica runtime is stopping"),
            )
        };
        let (tx, rx) = remote::<T>(1)
            .map_err(|e| Refusal::new(Status::IoError, format!("{what}: reply inbox: {e}")))?;
        self.jobs
            .send(Box::new(move |host| {
                let _ = tx.send(f(host));
            }))
            .map_err(|_| gone())?;
        match rx.recv() {
            Ok(Some(v)) => Ok(v),
            _ => Err(gone()),
        }
    }

    /// The replica vSSD served here for device `device`.
    pub fn held(&self, device: &str) -> Result<Held, Refusal> {
        let d = device.to_string();
        self.run("takeover", move |host| host.held(&d))?
    }

    /// Fences replica vSSD `name` (one epoch on, the same members: a primary still
    /// calling it gets STALE_EPOCH), stops serving it, checkpoints and closes it.
    pub fn release(&self, name: &str) -> Result<(), Refusal> {
        let n = name.to_string();
        self.run("takeover", move |host| host.release(&n))?
    }

    /// Serves replica vSSD `name` again (a takeover that failed after `release`).
    pub fn restore(&self, name: &str) -> Result<(), Refusal> {
        let n = name.to_string();
        self.run("takeover", move |host| host.restore(&n))?
    }
}

struct Host {
    dir: PathBuf,
    vssds: Vssds,
    /// The names served (to close them at stop).
    served: RefCell<BTreeSet<String>>,
    /// Names whose VSSD_CREATE is running (a second one is refused BUSY).
    creating: RefCell<BTreeSet<String>>,
}

/// Every `*.vssd` of `dir`, opened (run on the replica runtime).
fn load(dir: &Path) -> (Vssds, BTreeSet<String>) {
    let (vssds, mut served) = (Vssds::new(), BTreeSet::new());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (vssds, served);
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let (Some(name), true) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().is_some_and(|e| e == "vssd"),
        ) else {
            continue;
        };
        match open_replica(&path) {
            Ok(vssd) => {
                info!(vssd = %name, device = %vssd.superblock().device_id, "replica vSSD served");
                vssds.insert(name, vssd);
                served.insert(name.to_string());
            }
            Err(e) => error!(vssd = %name, "replica vSSD {} not served: {e}", path.display()),
        }
    }
    (vssds, served)
}

fn open_replica(path: &Path) -> Result<Vssd, String> {
    let (file, _) = crate::backing::open_file(path, None).map_err(|e| e.to_string())?;
    Vssd::open(file, None, Options::default())
        .map(|(vssd, _)| vssd)
        .map_err(|e| e.to_string())
}

impl Host {
    fn vssd_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.vssd"))
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    fn held(&self, device: &str) -> Result<Held, Refusal> {
        let served = self.served.borrow();
        let found = served.iter().find(|n| {
            self.vssds
                .get(n)
                .is_some_and(|v| v.superblock().device_id == device)
        });
        let Some(name) = found else {
            let why = format!("no replica vSSD of device {device} here");
            return Err(Refusal::new(Status::NoDevice, why));
        };
        let config = match crate::datadir::read_bounded(&self.config_path(name)) {
            Ok(text) => Some(text),
            Err(_) if !self.config_path(name).exists() => None,
            Err(e) => return Err(Refusal::new(Status::IoError, e.to_string())),
        };
        Ok(Held {
            vssd: name.clone(),
            path: self.vssd_path(name),
            config,
        })
    }

    fn release(&self, name: &str) -> Result<(), Refusal> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            Refusal::new(Status::IoError, format!("replica vSSD {name}: {what}: {e}"))
        };
        let Some(v) = self.vssds.get(name) else {
            return Err(Refusal::new(
                Status::NoDevice,
                format!("no replica vSSD {name} here"),
            ));
        };
        let (epoch, members) = (v.epoch(), v.members());
        // A vSSD no primary ever moved to an epoch has no primary to fence.
        if !members.is_empty() {
            v.set_epoch_from(epoch, epoch + 1, &members)
                .map_err(|e| io("fence", &e))?;
        }
        self.vssds.remove(name);
        self.served.borrow_mut().remove(name);
        if let Err(e) = v.checkpoint() {
            warn!(vssd = %name, "checkpoint at release: {e}");
        }
        v.close();
        info!(vssd = %name, epoch = epoch + 1, "replica vSSD fenced and released for a takeover");
        Ok(())
    }

    fn restore(&self, name: &str) -> Result<(), Refusal> {
        let vssd = open_replica(&self.vssd_path(name)).map_err(|e| {
            Refusal::new(
                Status::IoError,
                format!("replica vSSD {name}: serve again: {e}"),
            )
        })?;
        self.vssds.insert(name, vssd);
        self.served.borrow_mut().insert(name.to_string());
        Ok(())
    }
}

/// Runs jobs until the stop, then checkpoints and closes every replica vSSD.
fn keep(host: &Host, jobs: &Inbox<ReplicaJob>) {
    while let Ok(Some(job)) = jobs.recv() {
        job(host);
    }
    let names = std::mem::take(&mut *host.served.borrow_mut());
    for name in names {
        if let Some(v) = host.vssds.remove(&name) {
            if let Err(e) = v.checkpoint() {
                warn!(vssd = %name, "checkpoint at stop: {e}");
            }
            v.close();
        }
    }
}

/// The replica runtime's session service: VSSD_CREATE here, the rest
/// `dtm::ReplicaService`'s.
struct PeerService {
    inner: ReplicaService,
    host: Rc<Host>,
}

impl Service for PeerService {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        let Request::VssdCreate {
            name,
            device,
            line_size,
            lines,
            log_bytes,
            config,
        } = request
        else {
            return self.inner.handle(session, header, request, scratch);
        };
        let params = FormatParams {
            line_size,
            lines,
            log_bytes,
            device_id: device.to_string(),
            uuid: [0; 16],
            force: false,
        };
        match self.create(name, params, config) {
            Ok(()) => Response::VssdCreate,
            Err(why) => crate::service::refuse(request.msg_type(), &why, scratch),
        }
    }
}

impl PeerService {
    fn create(&self, name: &str, mut params: FormatParams, config: &str) -> Result<(), Refusal> {
        let invalid = |why: String| Refusal::new(Status::InvalidArgument, why);
        check_name("VSSD_CREATE", "name", name).map_err(|e| invalid(e.to_string()))?;
        if !config.is_empty() {
            let c: DeviceConfig =
                parse_toml("VSSD_CREATE config", config).map_err(|e| invalid(e.to_string()))?;
            if c.name != params.device_id {
                let why = format!(
                    "VSSD_CREATE: config of device {} for device {}",
                    c.name, params.device_id
                );
                return Err(invalid(why));
            }
            // Kept (or replaced: the primary's newest) before the vSSD is served.
            write_atomic(&self.host.config_path(name), config.as_bytes())
                .map_err(|e| Refusal::new(Status::IoError, e.to_string()))?;
        }
        if let Some(v) = self.host.vssds.get(name) {
            let (sb, g) = (v.superblock(), v.geometry());
            if sb.device_id == params.device_id
                && g.line_size() == params.line_size
                && g.lines() == params.lines
                && g.log_bytes() == params.log_bytes
            {
                return Ok(()); // asked again
            }
            return Err(invalid(format!(
                "replica vSSD {name} exists: device {}, {} lines of {} bytes, log {} bytes",
                sb.device_id,
                g.lines(),
                g.line_size(),
                g.log_bytes()
            )));
        }
        if !self.host.creating.borrow_mut().insert(name.to_string()) {
            let why = format!("replica vSSD {name} is being created");
            return Err(Refusal::new(Status::Busy, why));
        }
        let made = self.format_new(name, &mut params);
        self.host.creating.borrow_mut().remove(name);
        let vssd = made?;
        info!(vssd = %name, device = %params.device_id, lines = params.lines, "replica vSSD created");
        self.host.vssds.insert(name, vssd);
        self.host.served.borrow_mut().insert(name.to_string());
        Ok(())
    }

    fn format_new(&self, name: &str, params: &mut FormatParams) -> Result<Vssd, Refusal> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            Refusal::new(Status::IoError, format!("replica vSSD {name}: {what}: {e}"))
        };
        params.uuid = random_uuid().map_err(|e| io("uuid", &e))?;
        let geometry = params.geometry().map_err(|e| {
            Refusal::new(Status::InvalidArgument, format!("VSSD_CREATE {name}: {e}"))
        })?;
        let path = self.host.dir.join(format!("{name}.vssd"));
        if path.exists() {
            let why = format!("{} exists but is not served (see the log)", path.display());
            return Err(Refusal::new(Status::InvalidArgument, why));
        }
        let (file, _) = crate::backing::open_file(&path, Some(geometry.total_bytes()))
            .map_err(|e| io("create", &e))?;
        let opened = format(&file, params)
            .map_err(|e| io("format", &e))
            .and_then(|_| {
                Vssd::open(file, Some(&params.device_id), Options::default())
                    .map_err(|e| io("open", &e))
            });
        match opened {
            Ok((vssd, _)) => Ok(vssd),
            Err(e) => {
                // Nothing half made is left to be mistaken for a replica.
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}
