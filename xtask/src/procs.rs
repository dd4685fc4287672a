//! The project's binaries as processes, for `cargo xtask demo` and `bench e2e`: a
//! release build of cvad, cvacli and tdrv, a cvad started on 127.0.0.1:0 over a data dir
//! and found through its port file, stopped with SIGTERM or killed with SIGKILL.
//! Every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, run, workspace_root};

/// How long a cvad may take to start (write its port file) or to stop.
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// The release binaries of cvad, cvacli and tdrv (built by [`build`]).
pub struct Bins {
    pub cvad: PathBuf,
    pub cvacli: PathBuf,
    pub tdrv: PathBuf,
}

/// Builds cvad, cvacli and tdrv (release) in one cargo call, and says where they
/// are. One call: the packages' dependencies are built once, with the features of
/// all three (built for fewer packages, they would differ and be built again).
pub fn build() -> Result<Bins, String> {
    let mut b = cargo();
    b.current_dir(workspace_root());
    b.args(["build", "--release", "--quiet", "--bins"]);
    b.args(["-p", "cdev", "-p", "cvacli", "-p", "tdrv"]);
    run("cargo build --release -p cdev -p cvacli -p tdrv --bins", b)?;
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release");
    let bins = Bins {
        cvad: dir.join("cvad"),
        cvacli: dir.join("cvacli"),
        tdrv: dir.join("tdrv"),
    };
    for bin in [&bins.cvad, &bins.cvacli, &bins.tdrv] {
        if !bin.exists() {
            return Err(format!("no binary at {} after the build", bin.display()));
        }
    }
    Ok(bins)
}

/// Waits (bounded by `max`) for `child` to exit.
pub fn wait(child: &mut Child, what: &str, max: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + max;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {what}: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} still running after {max:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// `target/NAME` under the workspace, emptied and created afresh: a bench's files
/// on the disk (not a tmpfs: O_DIRECT needs a real file system).
pub fn fresh_target_dir(name: &str) -> Result<PathBuf, String> {
    let dir = workspace_root().join("target").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A running cvad.
pub struct Cvad {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Cvad {
    /// Starts `cvad` over `data` on `listen` (port 0: any) and waits (bounded) for
    /// its port file; its log goes to `data.log`.
    pub fn start(bins: &Bins, data: &Path, listen: &str) -> Result<Cvad, String> {
        let port_file = data.join("cvad.port");
        // A killed cvad leaves its port file behind.
        match std::fs::remove_file(&port_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", port_file.display())),
        }
        let log_path = data.with_extension("log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("create {}: {e}", log_path.display()))?;
        let mut child = Command::new(&bins.cvad)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", listen])
            // NBD on a port of its own: the demo runs two cvads.
            .args(["--nbd-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bins.cvad.display()))?;
        let deadline = Instant::now() + WAIT_MAX;
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "cvad over {} exited before it was ready ({status}); see {}",
                    data.display(),
                    log_path.display()
                ));
            }
            if Instant::now() >= deadline {
                // Best effort: it is ours and did not come up.
                let _ = child.kill();
                return Err(format!("cvad wrote no port file in {WAIT_MAX:?}"));
            }
            std::thread::sleep(POLL);
        };
        Ok(Cvad {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// SIGTERM (every device closed, a checkpoint), then a bounded wait; exit 0.
    pub fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| format!("kill -TERM cvad: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM cvad: {status}"));
        }
        let status = wait(&mut child, "cvad after SIGTERM", WAIT_MAX)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cvad exited {status} after SIGTERM"))
        }
    }

    /// kill -9: no close, no checkpoint.
    pub fn crash(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill().map_err(|e| format!("kill -9 cvad: {e}"))?;
        wait(&mut child, "cvad after SIGKILL", WAIT_MAX).map(|_| ())
    }

    /// cvacli against this cvad.
    pub fn cli(&self, bins: &Bins) -> Command {
        let mut c = Command::new(&bins.cvacli);
        c.arg("--server").arg(self.addr.to_string());
        c
    }

    /// Runs cvacli with `args`; fails unless it succeeds. Its stdout.
    pub fn ok(&self, bins: &Bins, args: &[&str]) -> Result<String, String> {
        let o: Output = self
            .cli(bins)
            .args(args)
            .output()
            .map_err(|e| format!("cvacli {args:?}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "cvacli {args:?}: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Cvad {
    /// A cvad left running by an error path is killed (it is ours).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes the configuration of device `name` into `dir` (a sparse backing file of
/// `backing_bytes`, a vSSD of `vssd_bytes`, a replica on `peer` if given); its path.
pub fn device_file(
    dir: &Path,
    name: &str,
    backing_bytes: u64,
    vssd_bytes: u64,
    peer: Option<SocketAddr>,
) -> Result<String, String> {
    let backing = dir.join(format!("{name}.backing"));
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(backing_bytes))
        .map_err(|e| format!("backing file {}: {e}", backing.display()))?;
    let mut text = format!(
        "name = \"{name}\"\nbacking = \"{}\"\nvssd = \"{}\"\nvssd_bytes = {vssd_bytes}\n",
        backing.display(),
        dir.join(format!("{name}.vssd")).display(),
    );
    if let Some(peer) = peer {
        text.push_str(&format!(
            "min_replicas = 2\n\n[[replicas]]\npeer = \"{peer}\"\nvssd = \"{name}-r1\"\nmember = 1\n"
        ));
    }
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).map_err(|e| format!("write {}: {e}", file.display()))?;
    Ok(file.display().to_string())
}
