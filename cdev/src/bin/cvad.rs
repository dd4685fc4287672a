//! `cvad`: the CVA server. `cargo run --release -p cdev --bin cvad` with no
//! arguments keeps its data under `./cva-data` (a default device `dev0`: a 1 GiB
//! sparse backing file and a 256 MiB vSSD, created on first start), listens on
//! 127.0.0.1:7450 and logs one line when it is ready. SIGINT or SIGTERM: it stops
//! accepting, closes every device (drain, checkpoint) and exits 0.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cdev::datadir::{DataDirError, PORT_FILE, read_bytes_bounded};
use cdev::devices::DeviceState;
use cdev::nbd_server::{DEFAULT_NBD_LISTEN, NBD_PORT_FILE};
use cdev::server::DEFAULT_LISTEN;
use cdev::{Cvad, CvadConfig, ServerSettings};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "cvad",
    version,
    about = "CVA: replicated write-back cache devices over the network"
)]
struct Args {
    /// Where devices, their configuration and the port file live.
    #[arg(long, default_value = "./cva-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks one: the ready line and the port file
    /// say which) [default: 127.0.0.1:7450, or the --config file's `listen`].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A file holding the shared secret clients must prove at HELLO (at least 16
    /// bytes; one trailing newline is not part of it).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Server settings (TOML: listen, sessions_max, queue_depth, server_name,
    /// busy_poll_us).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve NBD on (port 0 picks one: the ready line and nbd.port in
    /// the data dir say which; "off": no NBD). NBD has no secret: keep it on
    /// loopback unless the network is trusted (see --allow-remote-without-secret).
    #[arg(long, default_value = DEFAULT_NBD_LISTEN)]
    nbd_listen: String,
    /// Listen beyond loopback without a secret: anyone who reaches the port can
    /// read and write every device.
    #[arg(long)]
    allow_remote_without_secret: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    // Blocked before any thread starts, so every thread inherits the mask and the
    // signals wait for `sigwait` below: no handler, no state shared with one.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        error!("cannot block SIGINT and SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    match run(&args, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, signals: &SigSet) -> Result<(), String> {
    let settings = match &args.config {
        Some(path) => ServerSettings::load(path).map_err(|e| e.to_string())?,
        None => ServerSettings::default(),
    };
    let listen = match args.listen.or(settings.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|e| format!("{DEFAULT_LISTEN}: {e}"))?,
    };
    let secret = match &args.secret_file {
        Some(path) => Some(read_secret(path).map_err(|e| e.to_string())?),
        None => None,
    };
    if !listen.ip().is_loopback() && secret.is_none() && !args.allow_remote_without_secret {
        return Err(format!(
            "refusing to listen on {listen} without a secret: anyone reaching it could read \
             and write every device. Pass --secret-file FILE, or \
             --allow-remote-without-secret on a network you trust"
        ));
    }
    let nbd_listen = match args.nbd_listen.as_str() {
        "off" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| format!("--nbd-listen {a}: {e}"))?,
        ),
    };
    if let Some(a) = nbd_listen
        && !a.ip().is_loopback()
        && !args.allow_remote_without_secret
    {
        return Err(format!(
            "refusing to serve NBD on {a}: NBD has no secret, anyone reaching it could read \
             and write every device. Pass --allow-remote-without-secret on a network you trust"
        ));
    }
    let authenticated = secret.is_some();
    let cvad = Cvad::start(CvadConfig {
        data_dir: args.data_dir.clone(),
        listen,
        secret,
        settings,
        nbd_listen,
    })
    .map_err(|e| e.to_string())?;
    let addr = cvad.local_addr();
    let devices: Vec<String> = cvad
        .device_states()
        .into_iter()
        .map(|(name, state)| match state {
            DeviceState::Open(_) => format!("{name} (open)"),
            DeviceState::Failed(_) => format!("{name} (FAILED: see above)"),
        })
        .collect();
    let nbd = match cvad.nbd_addr() {
        Some(a) => format!(", NBD on {a} (port in {NBD_PORT_FILE})"),
        None => String::new(),
    };
    info!(
        "cvad ready: listening on {addr}{}{nbd}, data in {} (port in {PORT_FILE}), devices: {}; \
         connect with: cvacli --server {addr} (HELLO, then DEVICE_OPEN dev0)",
        if authenticated {
            " (secret required)"
        } else {
            ""
        },
        cvad.data_dir().root().display(),
        if devices.is_empty() {
            "none".to_string()
        } else {
            devices.join(", ")
        },
    );
    let signal = signals
        .wait()
        .map_err(|e| format!("waiting for SIGINT/SIGTERM: {e}"))?;
    info!("{signal}: draining sessions, closing devices (checkpoint)");
    cvad.stop();
    info!("cvad stopped");
    Ok(())
}

/// The secret in `path` (any bytes), without one trailing newline.
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, DataDirError> {
    let bytes = read_bytes_bounded(path)?;
    rpc::auth::secret_from_file(bytes)
        .map_err(|e| cdev::datadir::bad(&path.display().to_string(), "(secret)", e.to_string()))
}
