//! The `cvad` server: the data dir's devices, each open on its runtime thread
//! ([`crate::devices`]), a replica runtime serving the vSSDs peers ask for
//! (`dtm::ReplicaService`), and the rpc server whose sessions do their HELLO and
//! admin requests on its session runtimes and move to a device's runtime at
//! DEVICE_OPEN ([`crate::service`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rpc::{Server, ServerConfig};
use serde::Deserialize;
use tracing::info;

use crate::datadir::{
    DataDir, DataDirError, bad, check_name, parse_toml, read_bounded, write_atomic,
};
use crate::devices::{Counters, DeviceState, Devices};
use crate::nbd_server::{NBD_PORT_FILE, NbdListener};
use crate::replicas::Replicas;
use crate::service::CvadService;

/// The address cvad listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7450";

/// Server settings (`--config`, TOML; unknown keys refused). Flags override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Where to listen (`--listen`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Sessions doing their HELLO or admin requests at once (one runtime thread each).
    #[serde(default = "default_sessions_max")]
    pub sessions_max: usize,
    /// Requests one session may have in flight.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// The name HELLO replies carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Microseconds a runtime thread (a device's, the replicas', a session's) polls
    /// its sockets before it sleeps while it waits for a client, yielding the CPU
    /// between polls; the window adapts below this bound and falls to none while
    /// idle (taskio's `IoConfig::poll_sockets_before_park`). A request at queue depth
    /// 1 then finds the thread awake instead of waking a halted CPU. 0: sleep at once.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u64,
}

fn default_sessions_max() -> usize {
    16
}
fn default_queue_depth() -> u32 {
    32
}
fn default_server_name() -> String {
    "cvad".into()
}
fn default_busy_poll_us() -> u64 {
    rpc::BUSY_POLL_US_DEFAULT
}

/// Sessions one runtime thread serves at once, at most.
pub const SESSIONS_MAX_LIMIT: usize = 1024;

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            listen: None,
            sessions_max: default_sessions_max(),
            queue_depth: default_queue_depth(),
            server_name: default_server_name(),
            busy_poll_us: default_busy_poll_us(),
        }
    }
}

impl ServerSettings {
    /// Reads and checks a settings file.
    pub fn load(path: &std::path::Path) -> Result<ServerSettings, DataDirError> {
        let where_ = path.display().to_string();
        let s: ServerSettings = parse_toml(&where_, &read_bounded(path)?)?;
        if !(1..=SESSIONS_MAX_LIMIT).contains(&s.sessions_max) {
            let why = format!("{} is not in 1..={SESSIONS_MAX_LIMIT}", s.sessions_max);
            return Err(bad(&where_, "sessions_max", why));
        }
        if !(1..=rpc::limits::QUEUE_DEPTH_MAX).contains(&s.queue_depth) {
            let why = format!(
                "{} is not in 1..={}",
                s.queue_depth,
                rpc::limits::QUEUE_DEPTH_MAX
            );
            return Err(bad(&where_, "queue_depth", why));
        }
        check_name(&where_, "server_name", &s.server_name)?;
        if s.busy_poll_us > rpc::BUSY_POLL_US_MAX {
            let why = format!("{} is not in 0..={}", s.busy_poll_us, rpc::BUSY_POLL_US_MAX);
            return Err(bad(&where_, "busy_poll_us", why));
        }
        Ok(s)
    }

    /// `busy_poll_us` as a duration.
    pub fn busy_poll(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.busy_poll_us)
    }
}

/// What a cvad runs with.
#[derive(Debug, Clone)]
pub struct CvadConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub secret: Option<Vec<u8>>,
    pub settings: ServerSettings,
    /// Where to serve NBD (None: not at all); see [`crate::nbd_server`].
    pub nbd_listen: Option<SocketAddr>,
}

/// Why cvad could not start.
#[derive(Debug, thiserror::Error)]
pub enum CvadError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{what}: {source}")]
    Rpc {
        what: &'static str,
        #[source]
        source: rpc::RpcError,
    },
    #[error("device {device}: {why}")]
    Device { device: String, why: String },
    #[error("{why}")]
    Nbd { why: String },
}

/// A running cvad. `stop` drains and closes every device.
pub struct Cvad {
    server: Server,
    nbd: Option<NbdListener>,
    devices: Arc<Devices>,
    replicas: Replicas,
    dir: DataDir,
}

impl Cvad {
    /// Opens the data dir (creating the default device on first start), opens every
    /// device on its runtime, starts the server and writes the port file.
    pub fn start(config: CvadConfig) -> Result<Cvad, CvadError> {
        let dir = DataDir::open(&config.data_dir)?;
        if dir.ensure_default_device()? {
            info!(data_dir = %dir.root().display(), "first start: default device dev0 created");
        }
        let configs = dir.load_devices()?;
        let mut server_config = ServerConfig::new(config.listen);
        server_config.sessions_max = config.settings.sessions_max;
        server_config.queue_depth = config.settings.queue_depth;
        server_config.server_name = config.settings.server_name.clone();
        server_config.secret = config.secret.clone();
        let busy_poll = config.settings.busy_poll();
        server_config.io.poll_sockets_before_park = busy_poll;
        let session = server_config.session();
        session.check().map_err(|source| CvadError::Rpc {
            what: "session settings",
            source,
        })?;
        let replicas =
            Replicas::start(dir.root(), session.clone(), busy_poll).map_err(|source| {
                CvadError::Rpc {
                    what: "replica runtime",
                    source,
                }
            })?;
        let peers = rpc::ClientConfig {
            secret: config.secret.clone(),
            ..rpc::ClientConfig::default()
        };
        let devices = Devices::new(
            dir.clone(),
            session,
            Arc::new(Counters::default()),
            replicas.to(),
            replicas.control(),
            peers,
            busy_poll,
        );
        // Whatever fails from here on stops what was started (the devices' and
        // the replicas' runtime threads), or the process would wait for them.
        let started = (|| {
            for c in configs {
                let name = c.name.clone();
                devices.start(c).map_err(|why| CvadError::Device {
                    device: name,
                    why: why.reason,
                })?;
            }
            let d = devices.clone();
            let server = Server::start(server_config, move || {
                CvadService::new(d.clone(), d.started())
            })
            .map_err(|source| CvadError::Rpc {
                what: "listen",
                source,
            })?;
            // The NBD port file first: whoever waits for the port file finds both.
            let nbd = match config.nbd_listen {
                Some(addr) => {
                    let nbd = NbdListener::start(addr, devices.clone())
                        .map_err(|why| CvadError::Nbd { why })?;
                    write_atomic(
                        &dir.root().join(NBD_PORT_FILE),
                        format!("{}\n", nbd.local_addr().port()).as_bytes(),
                    )?;
                    Some(nbd)
                }
                None => None,
            };
            dir.write_port(server.local_addr().port())?;
            Ok((server, nbd))
        })();
        let (server, nbd) = match started {
            Ok(s) => s,
            Err(e) => {
                devices.stop_all();
                replicas.stop();
                return Err(e);
            }
        };
        Ok(Cvad {
            server,
            nbd,
            devices,
            replicas,
            dir,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where NBD is served, if it is.
    pub fn nbd_addr(&self) -> Option<SocketAddr> {
        self.nbd.as_ref().map(NbdListener::local_addr)
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    /// Each device's name and whether it is open (or why it failed).
    pub fn device_states(&self) -> Vec<(String, DeviceState)> {
        self.devices
            .names()
            .into_iter()
            .filter_map(|n| self.devices.get(&n).ok().map(|(_, s)| (n, s)))
            .collect()
    }

    /// Stops accepting and ends every session, then closes every device (drain,
    /// checkpoint) and the replica runtime.
    pub fn stop(self) {
        if let Some(nbd) = self.nbd {
            nbd.stop();
            let _ = std::fs::remove_file(self.dir.root().join(NBD_PORT_FILE));
        }
        self.server.stop();
        self.devices.stop_all();
        self.replicas.stop();
        let _ = std::fs::remove_file(self.dir.root().join(crate::datadir::PORT_FILE));
    }
}
