//! cvacli as a real process against a cvad served in this test process
//! (`cdev::Cvad` on a temp data dir with its default device dev0): every command
//! over the real protocol. The tests with cvad processes killed under load belong to
//! xtask's end-to-end tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use cdev::server::{Cvad, CvadConfig, ServerSettings};

struct Server {
    cvad: Option<Cvad>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::with_secret(None)
    }

    fn with_secret(secret: Option<&[u8]>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let cvad = Cvad::start(CvadConfig {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            secret: secret.map(<[u8]>::to_vec),
            settings: ServerSettings::default(),
            nbd_listen: None,
        })
        .unwrap();
        Server {
            addr: cvad.local_addr(),
            cvad: Some(cvad),
            dir,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cvacli"))
            .arg("--server")
            .arg(self.addr.to_string())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and asserts success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(o.status.success(), "cvacli {args:?}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs and asserts failure; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(!o.status.success(), "cvacli {args:?} should fail: {o:?}");
        String::from_utf8(o.stderr).unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.cvad.take() {
            c.stop();
        }
    }
}

#[test]
fn io_commands_and_stat() {
    let s = Server::start();
    assert!(s.ok(&["ping"]).starts_with("pong from cvad in "));
    assert!(
        s.ok(&["write", "dev0", "8k", "--pattern", "0xab", "--len", "16k"])
            .contains("wrote 16384 bytes")
    );
    let out = s.path("r");
    s.ok(&["read", "dev0", "8k", "16k", "-o", &out]);
    assert_eq!(std::fs::read(&out).unwrap(), vec![0xab; 16384]);
    // A file written, read back as a hex dump.
    let input = s.path("in");
    std::fs::write(&input, [b'C'; 4096]).unwrap();
    s.ok(&["write", "dev0", "0", "-i", &input]);
    let dump = s.ok(&["read", "dev0", "0", "4k"]);
    assert!(dump.starts_with("000000000000  43 43"), "{dump}");
    assert_eq!(dump.lines().count(), 256);
    // Longer than one READ or WRITE (the device's io_len_max): sent in pieces.
    let big: Vec<u8> = (0..(5u32 << 19)).map(|i| (i / 512 % 251) as u8).collect();
    std::fs::write(&input, &big).unwrap();
    assert!(
        s.ok(&["write", "dev0", "1m", "-i", &input])
            .contains("wrote 2621440 bytes")
    );
    s.ok(&["read", "dev0", "1m", "2621440", "-o", &out]);
    assert!(std::fs::read(&out).unwrap() == big);
    s.ok(&["flush", "dev0"]);
    s.ok(&["discard", "dev0", "0", "1m"]);
    let table = s.ok(&["stat", "dev0"]);
    assert!(table.lines().any(|l| l == "latency"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["stat", "dev0", "--json"])).unwrap();
    assert!(json["latency"].is_object(), "{json}");
    assert!(s.ok(&["stat"]).lines().count() > 1);
}

/// `--read-only` opens devices read-only: reads and STAT serve; a write, flush or
/// discard is refused READ_ONLY and changes nothing.
#[test]
fn read_only_reads_and_is_refused_writes() {
    let s = Server::start();
    s.ok(&["write", "dev0", "0", "--pattern", "0x5a", "--len", "8k"]);
    let out = s.path("r");
    s.ok(&["--read-only", "read", "dev0", "0", "8k", "-o", &out]);
    assert_eq!(std::fs::read(&out).unwrap(), vec![0x5a; 8192]);
    assert!(s.ok(&["stat", "dev0", "--read-only"]).contains("requests"));
    for args in [
        &[
            "--read-only",
            "write",
            "dev0",
            "0",
            "--pattern",
            "1",
            "--len",
            "4k",
        ][..],
        &["--read-only", "flush", "dev0"],
        &["--read-only", "discard", "dev0", "0", "8k"],
    ] {
        let e = s.fails(args);
        assert!(
            e.contains("READ_ONLY") && e.contains("read-only"),
            "{args:?}: {e}"
        );
    }
    s.ok(&["read", "dev0", "0", "8k", "-o", &out]);
    assert_eq!(std::fs::read(&out).unwrap(), vec![0x5a; 8192]);
}

#[test]
fn errors_name_the_operation_the_device_and_the_value() {
    let s = Server::start();
    let e = s.fails(&["read", "nodev", "0", "4k"]);
    assert!(e.contains("open nodev") && e.contains("NO_DEVICE"), "{e}");
    let e = s.fails(&["read", "dev0", "1", "4k"]);
    assert!(
        e.contains("read dev0 offset 1 length 4096") && e.contains("INVALID_ARGUMENT"),
        "{e}"
    );
    let e = s.fails(&["mode", "dev0", "no-such-mode"]);
    assert!(e.contains("device set dev0 mode = \"no-such-mode\""), "{e}");
    let e = s.fails(&["write", "dev0", "0", "--pattern", "1"]);
    assert!(e.contains("--len"), "{e}");
    // Nobody listening.
    let o = Command::new(env!("CARGO_BIN_EXE_cvacli"))
        .args(["--server", "127.0.0.1:1", "ping"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("connect to 127.0.0.1:1"),
        "{o:?}"
    );
}

#[test]
fn device_admin_and_script() {
    let s = Server::start();
    assert_eq!(s.ok(&["device", "list"]), "dev0\n");
    s.ok(&["mode", "dev0", "write-through"]);
    s.ok(&["device", "set", "dev0", "destage_high_pct=70"]);
    let show = s.ok(&["device", "show", "dev0"]);
    assert!(show.contains("mode = \"write-through\""), "{show}");
    assert!(show.contains("destage_high_pct = 70"), "{show}");
    let script = s.path("script");
    std::fs::write(
        &script,
        "# a top-down session\nwrite dev0 0 --pattern 7 --len 4k\nread dev0 0 4k -o OUT\nflush dev0\n"
            .replace("OUT", &s.path("sr")),
    )
    .unwrap();
    let out = s.ok(&["script", &script]);
    assert!(out.contains("> flush dev0\nflushed dev0"), "{out}");
    assert_eq!(std::fs::read(s.path("sr")).unwrap(), vec![7; 4096]);
    // The first failing line stops it and is named.
    std::fs::write(&script, "ping\nread dev0 1 4k\nping\n").unwrap();
    let e = s.fails(&["script", &script]);
    assert!(e.contains(":2: read dev0 offset 1"), "{e}");
}

#[test]
fn bench_reports_fio_fields() {
    let s = Server::start();
    let out = s.ok(&[
        "bench",
        "dev0",
        "--rw",
        "randrw",
        "--rwmixread",
        "70",
        "--bs",
        "4k",
        "--iodepth",
        "8",
        "--ops",
        "400",
        "--size",
        "4m",
        "--json",
        "--seed",
        "3",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let job = &j["jobs"][0];
    let (r, w) = (&job["read"], &job["write"]);
    assert_eq!(
        r["total_ios"].as_u64().unwrap() + w["total_ios"].as_u64().unwrap(),
        400
    );
    assert!(r["total_ios"].as_u64().unwrap() > w["total_ios"].as_u64().unwrap());
    assert_eq!(
        r["io_bytes"].as_u64().unwrap(),
        4096 * r["total_ios"].as_u64().unwrap()
    );
    let lat = &r["lat_ns"];
    assert!(lat["min"].as_u64().unwrap() <= lat["percentile"]["50.000000"].as_u64().unwrap());
    assert!(lat["percentile"]["99.900000"].as_u64().unwrap() <= lat["max"].as_u64().unwrap());
    let text = s.ok(&[
        "bench",
        "dev0",
        "--rw",
        "write",
        "--runtime",
        "1s",
        "--iodepth",
        "4",
    ]);
    assert!(text.contains("write: IOPS="), "{text}");
    assert!(text.contains("p99.9="), "{text}");
    // Not a terminal: plain progress lines.
    assert!(text.contains("bench: "), "{text}");
}

#[test]
fn verify_passes_then_reports_lost_and_foreign_blocks() {
    let s = Server::start();
    let journal = s.path("journal");
    let out = s.ok(&[
        "verify",
        "dev0",
        "--journal",
        &journal,
        "--ops",
        "300",
        "--iodepth",
        "8",
        "--size",
        "32k",
        "--seed",
        "9",
    ]);
    assert!(
        out.contains("300 acknowledged writes in the journal"),
        "{out}"
    );
    let check = s.ok(&["verify", "dev0", "--check", "--journal", &journal]);
    assert!(check.contains(" 0 lost, 0 stale, 0 foreign"), "{check}");
    let old = s.path("old");
    s.ok(&["read", "dev0", "24k", "4k", "-o", &old]);
    // Resumed: more generations on the same journal (its seed and area), still all
    // there.
    s.ok(&["verify", "dev0", "--journal", &journal, "--ops", "100"]);
    s.ok(&["verify", "dev0", "--check", "--journal", &journal]);
    // 8 regions, one per task, each written every round: an older generation put
    // back, one region zeroed, another copied over a third.
    s.ok(&["write", "dev0", "24k", "-i", &old]);
    s.ok(&["write", "dev0", "0", "--pattern", "0", "--len", "4k"]);
    let copied = s.path("copied");
    s.ok(&["read", "dev0", "8k", "4k", "-o", &copied]);
    s.ok(&["write", "dev0", "16k", "-i", &copied]);
    let o = s.cli(&["verify", "dev0", "--check", "--journal", &journal]);
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(" 8 lost, 8 stale, 8 foreign"), "{text}");
    assert!(text.contains("lost: sector 0:"), "{text}");
    assert!(
        text.contains("foreign: sector 16384: holds offset 8192"),
        "{text}"
    );
    assert!(text.contains("stale: sector 24576: generation "), "{text}");
    assert!(journal_exists(Path::new(&journal)));
}

fn journal_exists(p: &Path) -> bool {
    std::fs::read_to_string(p)
        .is_ok_and(|t| t.starts_with("cvacli-verify-journal-1 device=dev0 seed=9"))
}

#[test]
fn the_secret_file_is_read_as_cvad_reads_it() {
    let s = Server::with_secret(Some(b"a secret of the test"));
    let e = s.fails(&["read", "dev0", "0", "4k"]);
    assert!(e.contains("connect to") && e.contains("secret"), "{e}");
    let file = s.path("secret");
    std::fs::write(&file, "a secret of the test\n").unwrap();
    s.ok(&[
        "--secret-file",
        &file,
        "write",
        "dev0",
        "0",
        "--pattern",
        "5",
        "--len",
        "4k",
    ]);
    std::fs::write(&file, "another secret, wrong\n").unwrap();
    let e = s.fails(&["--secret-file", &file, "ping"]);
    assert!(e.contains("connect to"), "{e}");
}

#[test]
fn device_takeover_refusals_name_the_device_and_why() {
    let s = Server::start();
    // No replica vSSD of it here.
    let e = s.fails(&["device", "takeover", "nodev"]);
    assert!(
        e.contains("device takeover nodev") && e.contains("NO_DEVICE"),
        "{e}"
    );
    assert!(e.contains("no replica vSSD of device nodev here"), "{e}");
    // Served here already.
    let e = s.fails(&["device", "takeover", "dev0"]);
    assert!(
        e.contains("INVALID_ARGUMENT") && e.contains("served here already"),
        "{e}"
    );
    // Not a name, and no name at all.
    let e = s.fails(&["device", "takeover", "a b"]);
    assert!(e.contains("device takeover a b"), "{e}");
    let e = s.fails(&["device", "takeover"]);
    assert!(e.contains("<NAME>"), "{e}");
}
