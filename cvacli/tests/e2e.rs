//! End-to-end: the real `cvad` and `cvacli` binaries as processes. Each cvad runs on
//! 127.0.0.1:0 with its data dir in a temporary folder, is found through its port
//! file and is stopped by the test (SIGTERM, exit 0 checked; or SIGKILL where the
//! test crashes it). Every wait is bounded in time.
//!
//! cvad is cdev's binary: cargo builds it beside cvacli's when the workspace is
//! tested (`cargo xtask test`); run alone (`cargo test -p cvacli`), the test builds
//! it once with the same cargo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a cvad may take to start (write its port file) or to stop, and a
/// writer to notice its server died.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// The cvad binary: beside cvacli's in the target dir, built there if missing.
fn cvad_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cli = Path::new(env!("CARGO_BIN_EXE_cvacli"));
        let bin = cli.with_file_name(format!("cvad{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let status = Command::new(cargo)
                .args(["build", "-p", "cdev", "--bin", "cvad"])
                .status()
                .expect("run cargo build -p cdev --bin cvad");
            assert!(status.success(), "cargo build -p cdev --bin cvad: {status}");
        }
        assert!(bin.exists(), "no cvad at {}", bin.display());
        bin
    })
}

struct Cvad {
    child: Child,
    addr: SocketAddr,
}

/// Starts cvad on `listen` (port 0: any) over `data`, waits (bounded) for its port
/// file. Its log goes beside the data dir.
fn start_on(data: &Path, listen: &str, args: &[&str]) -> Cvad {
    let port_file = data.join("cvad.port");
    // A crashed (kill -9) cvad leaves its port file behind.
    match std::fs::remove_file(&port_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", port_file.display()),
    }
    let log = std::fs::File::create(data.with_extension("log")).expect("log file");
    let child = Command::new(cvad_bin())
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", listen])
        // NBD on a port of its own: cvads of parallel tests must not share 10809.
        .args(["--nbd-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cvad");
    // Owned from here: a panic below kills it (Drop) instead of leaking it.
    let mut cvad = Cvad {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let deadline = Instant::now() + WAIT_MAX;
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file)
            && let Ok(port) = text.trim().parse::<u16>()
        {
            break port;
        }
        if let Some(status) = cvad.child.try_wait().expect("try_wait") {
            panic!("cvad exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "no port file after {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    };
    cvad.addr.set_port(port);
    cvad
}

/// A cvad a test did not stop (it failed first) is killed, never left running.
impl Drop for Cvad {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(data: &Path, args: &[&str]) -> Cvad {
    start_on(data, "127.0.0.1:0", args)
}

/// Waits (bounded) for `child` to exit.
fn wait(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still running after {WAIT_MAX:?}"
        );
        std::thread::sleep(POLL);
    }
}

impl Cvad {
    /// SIGTERM; cvad must exit 0 (every device closed).
    fn stop(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("SIGTERM cvad");
        let status = wait(&mut self.child, "cvad after SIGTERM");
        assert!(status.success(), "cvad exited {status} after SIGTERM");
    }

    /// kill -9: no checkpoint, no close.
    fn crash(mut self) {
        self.child.kill().expect("SIGKILL cvad");
        wait(&mut self.child, "cvad after SIGKILL");
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cvacli"));
        c.arg("--server").arg(self.addr.to_string());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("run cvacli")
    }

    /// Runs cvacli and asserts success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "cvacli {args:?}: {o:?}");
        String::from_utf8(o.stdout).expect("utf-8")
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Writes the configuration of device `name` (a 64 MiB backing file and a vSSD of
/// `vssd_bytes`, both in `dir`, `replica` on a peer if given) and returns its path.
fn device_file(dir: &Path, name: &str, vssd_bytes: u64, replica: Option<SocketAddr>) -> String {
    let backing = dir.join(format!("{name}.backing"));
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(64 << 20))
        .expect("backing file");
    let mut text = format!(
        "name = \"{name}\"\nbacking = \"{}\"\nvssd = \"{}\"\nvssd_bytes = {vssd_bytes}\n",
        backing.display(),
        dir.join(format!("{name}.vssd")).display(),
    );
    if let Some(peer) = replica {
        text.push_str(&format!(
            "min_replicas = 2\n\n[[replicas]]\npeer = \"{peer}\"\nvssd = \"{name}-r1\"\nmember = 1\n"
        ));
    }
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("device file");
    p(&file)
}

/// The smallest vSSD the tests use (16 MiB).
const VSSD_SMALL: u64 = 16 << 20;

#[test]
fn create_write_read_stat_restart_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cvad = start(&data, &[]);
    cvad.ok(&[
        "device",
        "create",
        &device_file(dir.path(), "dev1", VSSD_SMALL, None),
    ]);
    assert_eq!(cvad.ok(&["device", "list"]), "dev0\ndev1\n");
    let input = dir.path().join("in");
    let data_in: Vec<u8> = (0..(96u32 << 10)).map(|i| (i / 512 % 253) as u8).collect();
    std::fs::write(&input, &data_in).unwrap();
    cvad.ok(&["write", "dev1", "64k", "-i", &p(&input)]);
    let out = dir.path().join("out");
    cvad.ok(&["read", "dev1", "64k", "96k", "-o", &p(&out)]);
    assert!(std::fs::read(&out).unwrap() == data_in);
    let stat: serde_json::Value =
        serde_json::from_str(&cvad.ok(&["stat", "dev1", "--json"])).unwrap();
    assert!(stat["latency"].is_object(), "{stat}");
    cvad.stop();
    // Back on the same data dir: the device is there, its data with it.
    let cvad = start(&data, &[]);
    assert_eq!(cvad.ok(&["device", "list"]), "dev0\ndev1\n");
    std::fs::remove_file(&out).unwrap();
    cvad.ok(&["read", "dev1", "64k", "96k", "-o", &p(&out)]);
    assert!(std::fs::read(&out).unwrap() == data_in);
    cvad.stop();
}

#[test]
fn every_cache_mode_writes_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let cvad = start(&dir.path().join("data"), &[]);
    cvad.ok(&[
        "device",
        "create",
        &device_file(dir.path(), "dev1", VSSD_SMALL, None),
    ]);
    let modes = [
        "write-back",
        "write-through",
        "write-around",
        "pass-through",
    ];
    for (i, mode) in modes.iter().enumerate() {
        cvad.ok(&["mode", "dev1", mode]);
        assert!(cvad.ok(&["device", "show", "dev1"]).contains(mode));
        let offset = format!("{}k", 64 * i);
        let byte = format!("{}", 0x10 + i);
        cvad.ok(&["write", "dev1", &offset, "--pattern", &byte, "--len", "64k"]);
    }
    // Every mode's data read back in every mode (read through cache or backing).
    for mode in modes {
        cvad.ok(&["mode", "dev1", mode]);
        for i in 0..modes.len() {
            let out = dir.path().join(format!("out-{mode}-{i}"));
            cvad.ok(&[
                "read",
                "dev1",
                &format!("{}k", 64 * i),
                "64k",
                "-o",
                &p(&out),
            ]);
            assert!(
                std::fs::read(&out).unwrap() == vec![0x10 + i as u8; 64 << 10],
                "mode {mode}, region {i}"
            );
        }
    }
    cvad.stop();
}

/// Writes `ops` verified blocks through `cvad` under `journal`; then checks them.
fn verify_and_check(cvad: &Cvad, dev: &str, journal: &Path, args: &[&str]) {
    let j = p(journal);
    let mut w = vec!["verify", dev, "--journal", &j];
    w.extend_from_slice(args);
    cvad.ok(&w);
    let check = cvad.ok(&["verify", dev, "--check", "--journal", &j]);
    assert!(check.contains(" 0 lost, 0 stale, 0 foreign"), "{check}");
}

#[test]
fn a_full_cache_under_load_holds_back_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let cvad = start(&dir.path().join("data"), &[]);
    cvad.ok(&[
        "device",
        "create",
        &device_file(dir.path(), "dev1", VSSD_SMALL, None),
    ]);
    // Three times the vSSD, write-back: the writers wait for destage, none fails.
    let journal = dir.path().join("journal");
    verify_and_check(
        &cvad,
        "dev1",
        &journal,
        &[
            "--bs",
            "64k",
            "--size",
            "48m",
            "--ops",
            "768",
            "--iodepth",
            "16",
        ],
    );
    let stat: serde_json::Value =
        serde_json::from_str(&cvad.ok(&["stat", "dev1", "--json"])).unwrap();
    let n = |group: &str, key: &str| {
        stat[group][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {group}.{key} in {stat}"))
    };
    // More written into the cache than it holds: destage made the room.
    assert!(n("blocks", "cache_written") * 512 > VSSD_SMALL, "{stat}");
    assert!(n("destage", "lines") > 0, "{stat}");
    assert_eq!(n("destage", "errors"), 0, "{stat}");
    assert_eq!(n("errors", "cache") + n("errors", "backing"), 0, "{stat}");
    cvad.stop();
}

#[test]
fn a_device_replicated_on_two_cvads() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let peer = start(&data_b, &[]);
    let primary = start(&data_a, &[]);
    let config = device_file(dir.path(), "devr", VSSD_SMALL, Some(peer.addr));
    primary.ok(&["device", "create", &config]);
    assert!(data_b.join("replicas/devr-r1.vssd").exists());
    let show = primary.ok(&["stat", "devr", "--json"]);
    let stat: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(stat["replicas"]["members"], 2, "{stat}");
    verify_and_check(
        &primary,
        "devr",
        &dir.path().join("journal"),
        &["--size", "4m", "--ops", "500", "--iodepth", "8"],
    );
    primary.stop();
    peer.stop();
}

#[test]
fn kill_9_under_verify_load_then_restart_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cvad = start(&data, &[]);
    let journal = dir.path().join("journal");
    let j = p(&journal);
    let mut writer = Client(
        cvad.cli()
            .args(["verify", "dev0", "--journal", &j, "--runtime", "60s"])
            .args(["--size", "8m", "--iodepth", "16"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn verify"),
    );
    // Crashed once the journal holds acknowledged writes beyond its header line.
    let deadline = Instant::now() + WAIT_MAX;
    while std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count()) < 200 {
        assert!(Instant::now() < deadline, "the journal did not grow");
        assert!(writer.0.try_wait().unwrap().is_none(), "the writer stopped");
        std::thread::sleep(POLL);
    }
    cvad.crash();
    // The writer loses its connection: its exit status says nothing here.
    wait(&mut writer.0, "verify after its server died");
    let cvad = start(&data, &[]);
    let check = cvad.ok(&["verify", "dev0", "--check", "--journal", &j]);
    assert!(check.contains(" 0 lost, 0 stale, 0 foreign"), "{check}");
    cvad.stop();
}

#[test]
fn a_client_without_the_secret_reads_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "the secret of the e2e tests\n").unwrap();
    let cvad = start(&dir.path().join("data"), &["--secret-file", &p(&secret)]);
    let s = p(&secret);
    cvad.ok(&[
        "--secret-file",
        &s,
        "write",
        "dev0",
        "0",
        "--pattern",
        "7",
        "--len",
        "4k",
    ]);
    let out = dir.path().join("out");
    for args in [
        &["write", "dev0", "0", "--pattern", "9", "--len", "4k"][..],
        &["read", "dev0", "0", "4k", "-o", &p(&out)][..],
    ] {
        let o = cvad.run(args);
        assert!(
            !o.status.success(),
            "cvacli {args:?} without the secret: {o:?}"
        );
    }
    assert!(!out.exists() || std::fs::read(&out).unwrap().is_empty());
    // The write without the secret changed nothing.
    cvad.ok(&[
        "--secret-file",
        &s,
        "read",
        "dev0",
        "0",
        "4k",
        "-o",
        &p(&out),
    ]);
    assert!(std::fs::read(&out).unwrap() == vec![7; 4096]);
    cvad.stop();
}

/// A client process killed (and reaped) if the test fails before it ends.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two cvads with a replicated device; kill -9 of the primary under `verify` load;
/// `device takeover` on the replica's cvad; `verify --check` there finds every
/// acknowledged write.
#[test]
fn kill_9_of_the_primary_under_verify_load_then_takeover_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let peer = start(&data_b, &[]);
    let primary = start(&data_a, &[]);
    let config = device_file(dir.path(), "devr", VSSD_SMALL, Some(peer.addr));
    primary.ok(&["device", "create", &config]);
    let journal = dir.path().join("journal");
    let j = p(&journal);
    let mut writer = Client(
        primary
            .cli()
            .args(["verify", "devr", "--journal", &j, "--runtime", "60s"])
            .args(["--size", "8m", "--iodepth", "16"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn verify"),
    );
    let deadline = Instant::now() + WAIT_MAX;
    while std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count()) < 200 {
        assert!(Instant::now() < deadline, "the journal did not grow");
        assert!(writer.0.try_wait().unwrap().is_none(), "the writer stopped");
        std::thread::sleep(POLL);
    }
    primary.crash();
    wait(&mut writer.0, "verify after its server died");
    let took = peer.ok(&["device", "takeover", "devr"]);
    assert!(took.starts_with("took devr over: epoch "), "{took}");
    let check = peer.ok(&["verify", "devr", "--check", "--journal", &j]);
    assert!(check.contains(" 0 lost, 0 stale, 0 foreign"), "{check}");
    peer.stop();
}
