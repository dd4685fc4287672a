//! The real `cvad` binary as a process: started on an ephemeral loopback port with
//! its data dir in a temporary folder, driven with `rpc::Client`, stopped with
//! SIGTERM (its exit status checked).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::clients::run;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rpc::{Client, ClientConfig, Request, Response, Status};
use taskio::{Config, IoConfig, Runtime};

/// How long cvad may take to start (write its port file) or to stop.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(20);

struct Cvad {
    child: Child,
    addr: SocketAddr,
}

fn cvad(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cvad"));
    // NBD on a port of its own per process: tests run side by side.
    c.arg("--data-dir")
        .arg(data)
        .args(["--nbd-listen", "127.0.0.1:0"])
        .args(args);
    c.env("RUST_LOG", "info");
    c
}

/// Starts cvad on 127.0.0.1:0 and waits (bounded) for its port file.
fn start(data: &Path, args: &[&str]) -> Cvad {
    start_on(data, "127.0.0.1:0", args)
}

fn start_on(data: &Path, listen: &str, args: &[&str]) -> Cvad {
    // A killed cvad leaves its port files behind: a restart must not be taken for
    // ready by them.
    for f in ["cvad.port", "nbd.port"] {
        match std::fs::remove_file(data.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", data.join(f).display()),
        }
    }
    let mut cmd = cvad(data, &["--listen", listen]);
    // Its log, beside the data dir.
    let log = std::fs::File::create(data.with_extension("log")).expect("log file");
    cmd.args(args).stdout(Stdio::null()).stderr(log);
    let mut child = cmd.spawn().expect("spawn cvad");
    let port_file = data.join("cvad.port");
    let deadline = Instant::now() + WAIT_MAX;
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file)
            && let Ok(port) = text.trim().parse::<u16>()
        {
            break port;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("cvad exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "no port file after {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    };
    Cvad {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

impl Cvad {
    /// SIGTERM, then a bounded wait for the exit; returns its status.
    fn stop(self) -> ExitStatus {
        self.stop_by(Signal::SIGTERM)
    }

    fn stop_by(mut self, signal: Signal) -> ExitStatus {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, signal).expect("signal cvad");
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cvad still running {WAIT_MAX:?} after SIGTERM"
            );
            std::thread::sleep(POLL);
        }
    }
}

/// A test that fails before it stops its cvad must not leave it running (each holds
/// AIO contexts, a machine-wide limit other tests need).
impl Drop for Cvad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs cvad to completion when it is expected to refuse to start.
fn refused(data: &Path, args: &[&str]) -> Output {
    let out = cvad(data, args).output().expect("run cvad");
    assert!(!out.status.success(), "cvad started: {out:?}");
    out
}

/// Runs `f` with a client connected to `addr`, on a taskio runtime.
fn with_client<T: 'static>(addr: SocketAddr, f: impl FnOnce(&Client) -> T + 'static) -> T {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).expect("runtime");
    rt.run(move || {
        let client = Client::connect(addr, &ClientConfig::default()).expect("connect");
        f(&client)
    })
    .expect("run")
}

/// The status and reason of a refused call.
fn refusal(client: &Client, request: Request<'_>) -> (Status, String) {
    let reply = client.call(request).expect("call");
    match reply.response().expect("response") {
        Response::Error { status, reason, .. } => (status, reason.to_string()),
        other => panic!("not refused: {other:?}"),
    }
}

fn list(client: &Client) -> Vec<String> {
    let reply = client.call(Request::DeviceList).expect("DEVICE_LIST");
    match reply.response().expect("response") {
        Response::DeviceList { names } => names.iter().map(|n| n.to_string()).collect(),
        other => panic!("DEVICE_LIST answered {other:?}"),
    }
}

fn show(client: &Client, name: &str) -> String {
    let reply = client
        .call(Request::DeviceShow { name })
        .expect("DEVICE_SHOW");
    match reply.response().expect("response") {
        Response::DeviceShow { text } => text.to_string(),
        other => panic!("DEVICE_SHOW answered {other:?}"),
    }
}

fn server_counter(client: &Client, name: &str) -> u64 {
    device_counter(client, 0, name)
}

/// Counter `name` of STAT on `handle` (0: the server's).
fn device_counter(client: &Client, handle: u64, name: &str) -> u64 {
    let reply = client.call(Request::Stat { handle }).expect("STAT");
    match reply.response().expect("response") {
        Response::Stat { counters } => {
            counters
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
                .value
        }
        other => panic!("STAT answered {other:?}"),
    }
}

#[test]
fn first_start_makes_dev0_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cvad = start(&data, &[]);
    let toml = std::fs::read_to_string(data.join("devices/dev0.toml")).unwrap();
    assert!(toml.contains("name = \"dev0\""), "{toml}");
    assert!(toml.contains("vssd_bytes = 268435456"), "{toml}");
    let backing = std::fs::metadata(data.join("dev0.backing")).unwrap();
    assert_eq!(backing.len(), 1 << 30);
    let (names, devices, ping) = with_client(cvad.addr, |c| {
        let reply = c.call(Request::Ping { data: b"hi" }).unwrap();
        let ping = matches!(reply.response().unwrap(), Response::Ping { data } if data == b"hi");
        (list(c), server_counter(c, "devices"), ping)
    });
    assert!(ping);
    assert_eq!(names, ["dev0"]);
    assert_eq!(devices, 1);
    let port = cvad.addr.port();
    assert!(cvad.stop().success());
    assert!(
        !data.join("cvad.port").exists(),
        "the port file outlived cvad"
    );
    // One ready line saying where and how to connect; the stop logged.
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    let ready: Vec<&str> = log.lines().filter(|l| l.contains("cvad ready")).collect();
    assert_eq!(ready.len(), 1, "{log}");
    assert!(
        ready[0].contains(&format!("listening on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(ready[0].contains("dev0 (open)"), "{log}");
    assert!(ready[0].contains("connect with"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("cvad stopped"), "{log}");
}

/// Opens `name` on `c` (the session moves to the device's runtime); its handle.
fn open(c: &Client, name: &str) -> (u64, rpc::DeviceInfo) {
    let reply = c
        .call(Request::DeviceOpen {
            name,
            read_only: false,
        })
        .expect("DEVICE_OPEN");
    match reply.response().expect("response") {
        Response::DeviceOpen { handle, info } => (handle, info),
        other => panic!("DEVICE_OPEN {name} answered {other:?}"),
    }
}

fn read(c: &Client, handle: u64, offset: u64, length: u32) -> Vec<u8> {
    let reply = c
        .call(Request::Read {
            handle,
            offset,
            length,
        })
        .expect("READ");
    match reply.response().expect("response") {
        Response::Read { data } => data.to_vec(),
        other => panic!("READ answered {other:?}"),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn dev0_writes_read_back_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cvad = start(&data, &[]);
    let offset = 40 * 4096 + 512;
    let routed = with_client(cvad.addr, move |c| {
        let (h, info) = open(c, "dev0");
        assert_eq!(info.size_bytes, 1 << 30);
        assert_eq!(info.block_size, 512);
        let data = pattern(7, 3 * 4096);
        let reply = c
            .call(Request::Write {
                handle: h,
                offset,
                data: &data,
            })
            .unwrap();
        assert_eq!(reply.response().unwrap(), Response::Write);
        assert_eq!(read(c, h, offset, data.len() as u32), data);
        let reply = c.call(Request::Flush { handle: h }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::Flush);
        // Past the end, misaligned: refused.
        let (status, _) = refusal(
            c,
            Request::Read {
                handle: h,
                offset: (1 << 30) - 512,
                length: 1024,
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        let (status, _) = refusal(
            c,
            Request::Write {
                handle: h,
                offset: 100,
                data: &data[..512],
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        // The device's counters, and the server's (answered on the device's runtime).
        let reply = c.call(Request::Stat { handle: h }).unwrap();
        assert!(
            matches!(reply.response().unwrap(), Response::Stat { counters } if !counters.is_empty())
        );
        let (status, _) = refusal(c, Request::Stat { handle: h + 1 });
        assert_eq!(status, Status::NoDevice);
        let reply = c.call(Request::DeviceClose { handle: h }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceClose);
        let (status, _) = refusal(
            c,
            Request::Read {
                handle: h,
                offset,
                length: 512,
            },
        );
        assert_eq!(status, Status::NoDevice);
        server_counter(c, "sessions_routed")
    });
    assert_eq!(routed, 1);
    assert!(cvad.stop().success());

    // Opened read-only after the restart: READ and STAT serve, WRITE, DISCARD and
    // FLUSH are refused READ_ONLY and change nothing.
    let cvad = start(&data, &[]);
    let back = with_client(cvad.addr, move |c| {
        let reply = c
            .call(Request::DeviceOpen {
                name: "dev0",
                read_only: true,
            })
            .unwrap();
        let Response::DeviceOpen { handle: h, info } = reply.response().unwrap() else {
            panic!("DEVICE_OPEN read-only refused");
        };
        assert!(info.read_only);
        let before = read(c, h, offset, 3 * 4096);
        let junk = pattern(9, 4096);
        let refused = [
            Request::Write {
                handle: h,
                offset,
                data: &junk,
            },
            Request::Discard {
                handle: h,
                offset: offset - 512,
                length: 4 * 4096,
            },
            Request::Flush { handle: h },
        ];
        for request in refused {
            let t = request.msg_type();
            let (status, reason) = refusal(c, request);
            assert_eq!(status, Status::ReadOnly, "{t}: {reason}");
            assert!(reason.contains("read-only"), "{t}: {reason}");
        }
        assert_eq!(read(c, h, offset, 3 * 4096), before);
        for name in ["requests.writes", "requests.discards", "requests.flushes"] {
            assert_eq!(device_counter(c, h, name), 0, "{name}");
        }
        before
    });
    assert_eq!(back, pattern(7, 3 * 4096));
    assert!(cvad.stop_by(Signal::SIGINT).success());
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("SIGINT"), "{log}");
}

#[test]
fn admin_create_show_set_delete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cvad = start(&data, &[]);
    let backing = dir.path().join("b1");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let b = backing.display().to_string();
    let v = dir.path().join("v1").display().to_string();
    let addr = cvad.addr;
    with_client(addr, move |c| {
        // Refused with the key that is wrong.
        let bad = format!(
            "name = \"dev1\"\nbacking = \"{b}\"\nvssd = \"{v}\"\nvssd_bytes = 1\ncolour = 1\n"
        );
        let (status, reason) = refusal(c, Request::DeviceCreate { config: &bad });
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("colour"), "{reason}");
        let bad = format!(
            "name = \"dev1\"\nbacking = \"{b}\"\nvssd = \"{v}\"\nvssd_bytes = 67108864\nline_size = 3000\n"
        );
        let (status, reason) = refusal(c, Request::DeviceCreate { config: &bad });
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("DEVICE_CREATE: line_size"), "{reason}");
        let dup =
            format!("name = \"dev0\"\nbacking = \"{b}\"\nvssd = \"{v}\"\nvssd_bytes = 67108864\n");
        let (status, reason) = refusal(c, Request::DeviceCreate { config: &dup });
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("exists"), "{reason}");
        assert_eq!(list(c), ["dev0"]);

        // A good one: created, open, listed, served; its vSSD made.
        let good =
            format!("name = \"dev1\"\nbacking = \"{b}\"\nvssd = \"{v}\"\nvssd_bytes = 16777216\n");
        let reply = c.call(Request::DeviceCreate { config: &good }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceCreate);
        assert_eq!(list(c), ["dev0", "dev1"]);
        let text = show(c, "dev1");
        assert!(text.contains("state = \"open\""), "{text}");
        assert!(text.contains("size_bytes = 67108864"), "{text}");
        assert!(Path::new(&v).exists());
        // A session holding a handle of one device does not open another.
        let (h, _) = open(c, "dev1");
        let (status, reason) = refusal(
            c,
            Request::DeviceOpen {
                name: "dev0",
                read_only: false,
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("another connection"), "{reason}");
        let reply = c.call(Request::DeviceClose { handle: h }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceClose);
        // This connection is served on dev1's runtime now: it cannot stop it.
        let (status, reason) = refusal(
            c,
            Request::DeviceDelete {
                name: "dev1",
                dirty_lines: None,
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("runtime"), "{reason}");
        let c = &Client::connect(addr, &ClientConfig::default()).unwrap();
        // Deleting it naming a wrong dirty count is refused, saying how many.
        let (status, reason) = refusal(
            c,
            Request::DeviceDelete {
                name: "dev1",
                dirty_lines: Some(u64::MAX),
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("dirty lines"), "{reason}");
        assert_eq!(list(c), ["dev0", "dev1"]);
        let reply = c
            .call(Request::DeviceDelete {
                name: "dev1",
                dirty_lines: None,
            })
            .unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceDelete);
        assert_eq!(list(c), ["dev0"]);
        assert!(!Path::new(&v).exists(), "the deleted device's vSSD is kept");

        // Shown as TOML with its state.
        let text = show(c, "dev0");
        assert!(text.contains("name = \"dev0\""), "{text}");
        assert!(text.contains("[status]"), "{text}");
        assert!(text.contains("dirty_lines = 0"), "{text}");
        let (status, _) = refusal(c, Request::DeviceShow { name: "nope" });
        assert_eq!(status, Status::NoDevice);

        // Settings: an unknown one and a bad range refused, a good one kept.
        let (status, reason) = refusal(
            c,
            Request::DeviceSet {
                name: "dev0",
                settings: "line_size = 8192\n",
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("line_size"), "{reason}");
        assert!(
            reason.contains("cannot change on a running device"),
            "{reason}"
        );
        let (status, reason) = refusal(
            c,
            Request::DeviceSet {
                name: "dev0",
                settings: "destage_low_pct = 60\n",
            },
        );
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("destage_low_pct"), "{reason}");
        let reply = c
            .call(Request::DeviceSet {
                name: "dev0",
                settings: "destage_high_pct = 70\nseq_cutoff_bytes = 0\n",
            })
            .unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceSet);
        let text = show(c, "dev0");
        assert!(text.contains("destage_high_pct = 70"), "{text}");
        assert!(text.contains("seq_cutoff_bytes = 0"), "{text}");
        // Applied to the running device at once, not at its next open.
        let d = Client::connect(addr, &ClientConfig::default()).expect("connect");
        let (h, _) = open(&d, "dev0");
        let lines = device_counter(&d, h, "config.cache_lines");
        assert_eq!(
            device_counter(&d, h, "config.destage_high_lines"),
            lines * 70 / 100
        );
        assert_eq!(device_counter(&d, h, "config.seq_cutoff_bytes"), 0);
        // A mode change runs on the open device, then is kept.
        let reply = c
            .call(Request::DeviceSet {
                name: "dev0",
                settings: "mode = \"write-through\"\n",
            })
            .unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceSet);
        assert!(show(c, "dev0").contains("mode = \"write-through\""));
    });
    assert!(cvad.stop().success());
    // Kept across a restart; then deleted, and not recreated by the next start.
    let toml = std::fs::read_to_string(data.join("devices/dev0.toml")).unwrap();
    assert!(toml.contains("destage_high_pct = 70"), "{toml}");
    assert!(toml.contains("mode = \"write-through\""), "{toml}");
    let cvad = start(&data, &[]);
    with_client(cvad.addr, |c| {
        let text = show(c, "dev0");
        assert!(text.contains("destage_high_pct = 70"), "{text}");
        let reply = c
            .call(Request::DeviceDelete {
                name: "dev0",
                dirty_lines: None,
            })
            .unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceDelete);
        assert!(list(c).is_empty());
        let (status, _) = refusal(
            c,
            Request::DeviceDelete {
                name: "dev0",
                dirty_lines: None,
            },
        );
        assert_eq!(status, Status::NoDevice);
    });
    assert!(cvad.stop().success());
    assert!(!data.join("devices/dev0.toml").exists());
    assert!(
        data.join("dev0.backing").exists(),
        "a backing store is never deleted"
    );
    let cvad = start(&data, &[]);
    assert!(with_client(cvad.addr, list).is_empty());
    assert!(cvad.stop().success());
}

#[test]
fn a_bad_device_file_is_refused_at_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("devices")).unwrap();
    let file = data.join("devices/d1.toml");
    std::fs::write(
        &file,
        "name = \"d1\"\nbacking = \"/b\"\nvssd = \"/v\"\nvssd_bytes = 67108864\nmode = \"write-sideways\"\n",
    )
    .unwrap();
    let out = refused(&data, &["--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("write-sideways"), "{err}");
    // Nothing was listening: no port file.
    assert!(!data.join("cvad.port").exists());
}

#[test]
fn a_bad_server_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cvad.toml");
    std::fs::write(&config, "queue_depth = 0\n").unwrap();
    let data = dir.path().join("data");
    let c = config.display().to_string();
    let out = refused(&data, &["--listen", "127.0.0.1:0", "--config", &c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue_depth"), "{err}");
    std::fs::write(&config, "queue_depht = 8\n").unwrap();
    let out = refused(&data, &["--listen", "127.0.0.1:0", "--config", &c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue_depht"), "{err}");
    std::fs::write(&config, "busy_poll_us = 10001\n").unwrap();
    let out = refused(&data, &["--listen", "127.0.0.1:0", "--config", &c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("busy_poll_us") && err.contains("10001"),
        "{err}"
    );
}

#[test]
fn beyond_loopback_needs_a_secret_or_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = refused(&data, &["--listen", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--secret-file"), "{err}");
    assert!(!data.join("cvad.port").exists());

    // With a secret it listens, and a client must prove it.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef-cva\n").unwrap();
    let s = secret.display().to_string();
    let cvad = start(&data, &["--secret-file", &s]);
    let addr = cvad.addr;
    let (without, with) = with_client_raw(addr);
    assert!(without.is_err(), "a client without the secret was served");
    assert_eq!(with.unwrap(), ["dev0"]);
    assert!(cvad.stop().success());
}

/// Connects without the secret and with it (the second lists the devices).
fn with_client_raw(addr: SocketAddr) -> (Result<(), String>, Result<Vec<String>, String>) {
    let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).expect("runtime");
    rt.run(move || {
        let without = Client::connect(addr, &ClientConfig::default())
            .and_then(|c| c.call(Request::DeviceList).map(|_| ()))
            .map_err(|e| e.to_string());
        let config = ClientConfig {
            secret: Some(b"0123456789abcdef-cva".to_vec()),
            ..ClientConfig::default()
        };
        let with = Client::connect(addr, &config)
            .map(|c| list(&c))
            .map_err(|e| e.to_string());
        (without, with)
    })
    .expect("run")
}

fn vssd_create(name: &str, lines: u64) -> Request<'_> {
    Request::VssdCreate {
        name,
        device: "devp",
        line_size: 4096,
        lines,
        log_bytes: vssd::layout::LOG_BYTES_MIN,
        config: "",
    }
}

/// VSSD_OPEN of `name` at epoch 0: its line count.
fn vssd_open(c: &Client, name: &str) -> u64 {
    let reply = c.call(Request::VssdOpen { name, epoch: 0 }).unwrap();
    match reply.response().unwrap() {
        Response::VssdOpen { info, .. } => info.line_count,
        other => panic!("VSSD_OPEN {name} answered {other:?}"),
    }
}

#[test]
fn a_peer_creates_and_serves_a_replica_vssd() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cvad = start(&data, &[]);
    with_client(cvad.addr, |c| {
        let reply = c.call(vssd_create("devp-r1", 256)).unwrap();
        assert_eq!(reply.response().unwrap(), Response::VssdCreate);
        // Asked again: the same answer; another geometry: refused, nothing formatted.
        let reply = c.call(vssd_create("devp-r1", 256)).unwrap();
        assert_eq!(reply.response().unwrap(), Response::VssdCreate);
        let (status, reason) = refusal(c, vssd_create("devp-r1", 512));
        assert_eq!(status, Status::InvalidArgument);
        assert!(reason.contains("exists"), "{reason}");
        assert_eq!(vssd_open(c, "devp-r1"), 256);
        let (status, _) = refusal(
            c,
            Request::VssdOpen {
                name: "nope",
                epoch: 0,
            },
        );
        assert_eq!(status, Status::NoDevice);
    });
    assert!(cvad.stop().success());
    assert!(data.join("replicas/devp-r1.vssd").exists());
    // Served again after a restart.
    let cvad = start(&data, &[]);
    assert_eq!(with_client(cvad.addr, |c| vssd_open(c, "devp-r1")), 256);
    assert!(cvad.stop().success());
}

#[test]
fn a_device_replicated_on_a_peer_cvad() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let peer = start(&data_b, &[]);
    let primary = start(&data_a, &[]);
    let backing = dir.path().join("b2");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let config = format!(
        "name = \"dev2\"\nbacking = \"{}\"\nvssd = \"{}\"\nvssd_bytes = 16777216\n\
         min_replicas = 2\n\n[[replicas]]\npeer = \"{}\"\nvssd = \"dev2-r1\"\nmember = 1\n",
        backing.display(),
        dir.path().join("v2").display(),
        peer.addr
    );
    let written = with_client(primary.addr, move |c| {
        let reply = c.call(Request::DeviceCreate { config: &config }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceCreate);
        let (h, _) = open(c, "dev2");
        let data = pattern(3, 8192);
        let reply = c
            .call(Request::Write {
                handle: h,
                offset: 0,
                data: &data,
            })
            .unwrap();
        assert_eq!(reply.response().unwrap(), Response::Write);
        assert_eq!(read(c, h, 0, 8192), data);
        data
    });
    // The peer made the replica vSSD the primary asked for.
    assert!(data_b.join("replicas/dev2-r1.vssd").exists());
    let addr_b = peer.addr;
    assert!(primary.stop().success());
    assert!(peer.stop().success());
    // Both back (the peer where the device's configuration says): the device opens
    // over its replica again and reads what was written.
    let peer = start_on(&data_b, &addr_b.to_string(), &[]);
    let primary = start(&data_a, &[]);
    let back = with_client(primary.addr, |c| {
        let (h, _) = open(c, "dev2");
        read(c, h, 0, 8192)
    });
    assert_eq!(back, written);
    assert!(primary.stop().success());
    assert!(peer.stop().success());
}

/// The NBD port a started cvad wrote.
fn nbd_uri(data: &Path, export: &str) -> String {
    let port = std::fs::read_to_string(data.join("nbd.port")).expect("nbd.port");
    format!("nbd://127.0.0.1:{}/{export}", port.trim())
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for c in cmds {
        args.extend(["-c", c]);
    }
    let out = run("qemu-utils", "qemu-io", &args);
    assert!(!out.contains("failed"), "{out}");
    out
}

#[test]
fn nbd_writes_read_back_after_a_restart_and_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(&data, &[]);
    let info = run("libnbd-bin", "nbdinfo", &["--json", &nbd_uri(&data, "")]);
    assert!(
        info.contains(&format!("\"export-size\": {}", 1u64 << 30)),
        "the default device (dev0, 1 GiB): {info}"
    );
    assert!(info.contains("\"can_multi_conn\": true"), "{info}");
    qemu_io(&nbd_uri(&data, "dev0"), &["write -P 0x3c 4096000 12800"]);
    assert!(c.stop().success());
    let c = start(&data, &[]);
    qemu_io(
        &nbd_uri(&data, "dev0"),
        &["read -P 0x3c 4096000 12800", "write -P 0xc3 512 1024"],
    );
    // Acknowledged means durable: kill -9 loses nothing.
    let _ = c.stop_by(Signal::SIGKILL);
    // Its port files outlive it: start() removes them before the restart.
    assert!(data.join("cvad.port").exists());
    let c = start(&data, &[]);
    let out = qemu_io(
        &nbd_uri(&data, "dev0"),
        &["read -P 0xc3 512 1024", "read -P 0x3c 4096000 12800"],
    );
    assert_eq!(out.matches("read ").count(), 2, "{out}");
    assert!(c.stop().success());
}

#[test]
fn nbd_a_write_on_one_connection_flushed_on_another_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(&data, &[]);
    let uri = nbd_uri(&data, "dev0");
    // Two connections of one nbdsh: the write on the first, the FLUSH on the second
    // (after the write's reply), then kill -9.
    // The system's python3 (python3-libnbd installs the module there, not in a
    // python3 earlier on PATH).
    let python = "/usr/bin/python3";
    let has_nbd = std::process::Command::new(python)
        .args(["-c", "import nbd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_nbd,
        "{python} cannot import nbd: install the python3-libnbd package"
    );
    let script = format!(
        "import nbd\n\
         a = nbd.NBD(); a.connect_uri('{uri}'); b = nbd.NBD(); b.connect_uri('{uri}')\n\
         assert a.can_multi_conn() and b.can_multi_conn()\n\
         a.pwrite(b'\\xa5' * 8192, 1048576 + 2048)\n\
         b.flush()\n\
         print('flushed')\n"
    );
    let out = run("python3-libnbd", python, &["-c", &script]);
    assert!(out.contains("flushed"), "{out}");
    let _ = c.stop_by(Signal::SIGKILL);
    let c = start(&data, &[]);
    qemu_io(&nbd_uri(&data, "dev0"), &["read -P 0xa5 1050624 8192"]);
    assert!(c.stop().success());
}

/// A replicated device's configuration (`name` on `backing`, its replica
/// `name-r1` on `peer`, both members acknowledging writes).
fn replicated(dir: &Path, name: &str, peer: SocketAddr) -> String {
    let backing = dir.join(format!("{name}.backing"));
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    format!(
        "name = \"{name}\"\nbacking = \"{}\"\nvssd = \"{}\"\nvssd_bytes = 16777216\n\
         min_replicas = 2\n\n[[replicas]]\npeer = \"{peer}\"\nvssd = \"{name}-r1\"\nmember = 1\n",
        backing.display(),
        dir.join(format!("{name}.vssd")).display(),
    )
}

fn write(c: &Client, handle: u64, offset: u64, data: &[u8]) -> Response<'static> {
    let reply = c
        .call(Request::Write {
            handle,
            offset,
            data,
        })
        .expect("WRITE");
    match reply.response().expect("response") {
        Response::Write => Response::Write,
        Response::StaleEpoch { msg_type, .. } => Response::StaleEpoch {
            msg_type,
            epoch: 0,
            reason: "",
        },
        other => panic!("WRITE answered {other:?}"),
    }
}

/// The cvad holding a device's replica takes it over while the old primary still
/// runs: what the primary acknowledged reads back there, the old primary's next
/// write fails STALE_EPOCH, and a restart of the new primary keeps serving the
/// device. Refusals name what is wrong: no replica here, a device served here
/// already, a backing store this cvad cannot reach.
#[test]
fn a_replica_cvad_takes_a_device_over_and_fences_the_old_primary() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let peer = start(&data_b, &[]);
    let primary = start(&data_a, &[]);
    let (dev4, dev5) = (
        replicated(dir.path(), "dev4", peer.addr),
        replicated(dir.path(), "dev5", peer.addr),
    );
    let addr_b = peer.addr;
    let (written, epoch) = with_client(primary.addr, move |c| {
        for config in [&dev4, &dev5] {
            let reply = c.call(Request::DeviceCreate { config }).unwrap();
            assert_eq!(reply.response().unwrap(), Response::DeviceCreate);
        }
        let (h, _) = open(c, "dev4");
        let data = pattern(4, 3 * 4096 + 1024);
        assert_eq!(write(c, h, 4096 - 512, &data), Response::Write);
        let b = Client::connect(addr_b, &ClientConfig::default()).expect("connect B");
        let (status, why) = refusal(&b, Request::DeviceTakeover { name: "nodev" });
        assert_eq!(status, Status::NoDevice, "{why}");
        assert!(why.contains("no replica vSSD of device nodev"), "{why}");
        let (status, why) = refusal(&b, Request::DeviceTakeover { name: "dev0" });
        assert_eq!(status, Status::InvalidArgument, "{why}");
        assert!(why.contains("served here already"), "{why}");
        let reply = b
            .call(Request::DeviceTakeover { name: "dev4" })
            .expect("DEVICE_TAKEOVER");
        let epoch = match reply.response().expect("response") {
            Response::DeviceTakeover { epoch, .. } => epoch,
            other => panic!("DEVICE_TAKEOVER answered {other:?}"),
        };
        // The old primary is fenced; the new one serves what it acknowledged.
        assert!(matches!(
            write(c, h, 0, &pattern(5, 4096)),
            Response::StaleEpoch { .. }
        ));
        let (hb, _) = open(&b, "dev4");
        assert_eq!(read(&b, hb, 4096 - 512, data.len() as u32), data);
        (data, epoch)
    });
    assert!(epoch >= 2, "epoch {epoch}");
    assert!(!data_b.join("replicas/dev4-r1.vssd").exists());
    // The backing store of dev5 is gone: the takeover is refused, its replica kept.
    std::fs::remove_file(dir.path().join("dev5.backing")).unwrap();
    let (status, why) = with_client(addr_b, |b| {
        refusal(b, Request::DeviceTakeover { name: "dev5" })
    });
    assert_eq!(status, Status::IoError, "{why}");
    assert!(why.contains("backing store"), "{why}");
    assert!(data_b.join("replicas/dev5-r1.vssd").exists());
    let _ = primary.stop_by(Signal::SIGKILL);
    // Restarted, the new primary serves the device it took over.
    assert!(peer.stop().success());
    let peer = start(&data_b, &[]);
    let back = with_client(peer.addr, move |b| {
        assert!(list(b).contains(&"dev4".to_string()));
        let (h, _) = open(b, "dev4");
        read(b, h, 4096 - 512, written.len() as u32) == written
    });
    assert!(back, "dev4 reads back after the new primary's restart");
    assert!(peer.stop().success());
}

/// A device on A with replicas on B and C, all three acknowledging: with C down, a
/// takeover on B finds too few members of the newest epoch and is refused, and B
/// serves its replica vSSD again; with C back, the takeover on B goes through and
/// reads what A acknowledged.
#[test]
fn a_takeover_short_of_quorum_is_refused_and_serves_the_replica_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = |n: &str| dir.path().join(n);
    let (b, c) = (start(&data("b"), &[]), start(&data("c"), &[]));
    let primary = start(&data("a"), &[]);
    let backing = dir.path().join("devq.backing");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let config = format!(
        "name = \"devq\"\nbacking = \"{}\"\nvssd = \"{}\"\nvssd_bytes = 16777216\n\
         min_replicas = 3\n\n[[replicas]]\npeer = \"{}\"\nvssd = \"devq-r1\"\nmember = 1\n\n\
         [[replicas]]\npeer = \"{}\"\nvssd = \"devq-r2\"\nmember = 2\n",
        backing.display(),
        dir.path().join("devq.vssd").display(),
        b.addr,
        c.addr,
    );
    let data_written = pattern(6, 8192);
    let d = data_written.clone();
    with_client(primary.addr, move |a| {
        let reply = a.call(Request::DeviceCreate { config: &config }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::DeviceCreate);
        let (h, _) = open(a, "devq");
        assert_eq!(write(a, h, 8192, &d), Response::Write);
    });
    let _ = primary.stop_by(Signal::SIGKILL);
    let addr_c = c.addr;
    let _ = c.stop_by(Signal::SIGKILL);
    let (status, why) = with_client(b.addr, |b| {
        refusal(b, Request::DeviceTakeover { name: "devq" })
    });
    assert_ne!(status, Status::Ok);
    assert!(why.contains("at least 2 needed"), "{why}");
    assert!(data("b").join("replicas/devq-r1.vssd").exists());
    assert!(!data("b").join("devices/devq.toml").exists());
    let c = start_on(&data("c"), &addr_c.to_string(), &[]);
    let back = with_client(b.addr, |b| {
        let reply = b
            .call(Request::DeviceTakeover { name: "devq" })
            .expect("DEVICE_TAKEOVER");
        // The replica is served again: a second takeover goes through.
        match reply.response().expect("response") {
            Response::DeviceTakeover { .. } => {}
            other => panic!("DEVICE_TAKEOVER with C back answered {other:?}"),
        }
        let (h, _) = open(b, "devq");
        read(b, h, 8192, 8192)
    });
    assert_eq!(back, data_written);
    assert!(b.stop().success());
    assert!(c.stop().success());
}
