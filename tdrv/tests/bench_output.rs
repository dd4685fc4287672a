//! `tdrv bench taskio|io|rpc|vssd|dtm|cdev --quick` runs and prints what DEVELOPERS.md promises: a
//! table, then one JSON object per figure with its keys in order. (Figures are not
//! checked: speed is for benchmarks, not tests.)

use std::process::Command;

const KEYS: [&str; 6] = ["bench", "unit", "median", "min", "max", "n"];

/// A fresh directory `NAME-XXXXXX` under the target's temporary directory (a real file
/// system: O_DIRECT fails on tmpfs, which /tmp may be), removed on drop, even when the
/// test panics.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temporary directory")
}

/// Runs `tdrv ARGS`, checks it succeeds, that the table comes before the JSON lines,
/// and that each JSON line has the documented keys in order; returns the figures'
/// names and units, and stdout.
fn run_bench(args: &[&str]) -> (Vec<(String, String)>, String) {
    run_bench_in(None, args)
}

/// [`run_bench`] in directory `dir` (where `./target/tdrv-bench` then lands).
fn run_bench_in(dir: Option<&std::path::Path>, args: &[&str]) -> (Vec<(String, String)>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tdrv"));
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.args(args).output().expect("run tdrv");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tdrv {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    let figures = json
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON line");
            let obj = v.as_object().expect("a JSON object");
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            let mut sorted_expected = KEYS.to_vec();
            sorted_expected.sort();
            assert_eq!(keys, sorted_expected, "keys of {line}");
            // Key order as documented (serde_json's map sorts, so check the text).
            let positions: Vec<usize> = KEYS
                .iter()
                .map(|k| line.find(&format!("\"{k}\":")).expect("key present"))
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "key order in {line}"
            );
            let min = obj["min"].as_f64().expect("min");
            let median = obj["median"].as_f64().expect("median");
            let max = obj["max"].as_f64().expect("max");
            assert!(
                min <= median && median <= max,
                "min <= median <= max in {line}"
            );
            assert!(obj["n"].as_u64().expect("n") > 0);
            (
                obj["bench"].as_str().expect("bench").to_string(),
                obj["unit"].as_str().expect("unit").to_string(),
            )
        })
        .collect();
    // The table comes first.
    let first_json = stdout.find('{').expect("JSON present");
    assert!(stdout[..first_json].contains("bench"), "table before JSON");
    (figures, stdout)
}

#[test]
fn taskio_quick_bench_prints_table_then_json_lines() {
    let (figures, _) = run_bench(&["bench", "taskio", "--quick"]);
    for want in [
        "yield",
        "spawn_join",
        "rendez_handoff",
        "channel_msg",
        "qlock_uncontended",
        "pool_get_put",
        "idle_task_rss",
    ] {
        assert!(
            figures.iter().any(|(n, _)| n == want),
            "figure {want} missing from {figures:?}"
        );
    }
}

/// `bench io --quick` on a small file of the test's own: every taskio figure (and the
/// syscall floor) is printed in ops/s; fio's figures come only when fio is installed,
/// so they are not required.
#[test]
fn io_quick_bench_prints_table_then_json_lines() {
    let dir = scratch("bench-io");
    let file = dir.path().join("io.dat");
    // 4 MiB of non-zero data (holes would not reach the device).
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&file, &data).expect("write the test file");
    let path = file.to_str().expect("UTF-8 temp path");
    let (figures, stdout) = run_bench(&["bench", "io", "--quick", "--file", path]);
    for want in [
        "aio_randread_4k_qd1",
        "aio_randread_4k_qd1_poll50us",
        "aio_randread_4k_qd32",
        "aio_randwrite_4k_qd32",
        "tcp_echo_64b_1conn",
        "tcp_echo_64b_1conn_poll50us",
        "tcp_echo_64b_16conn",
        "peer_tcp_floor_64b",
        "tcp_echo_64b_1conn_xthread",
        "peer_tcp_floor_64b_xthread",
    ] {
        let unit = figures
            .iter()
            .find(|(n, _)| n == want)
            .map(|(_, u)| u.as_str());
        assert_eq!(unit, Some("ops/s"), "figure {want} in {figures:?}");
    }
    assert!(
        stdout.contains("x the cross-thread floor (reach >= 0.8x"),
        "the xthread reach in {stdout}"
    );
    // The file given is the one used, at its own size.
    assert!(
        stdout.contains(&format!("file: {path} (4 MiB)")),
        "file line in {stdout}"
    );
}

#[test]
fn io_bench_only_selects_figures() {
    let (figures, _) = run_bench(&["bench", "io", "--quick", "--only", "peer_tcp_floor"]);
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["peer_tcp_floor_64b", "peer_tcp_floor_64b_xthread"]);
}

/// `bench rpc --quick`: the three rpc figures in ops/s, the WRITE figure again in MB/s,
/// and the syscall floor they are compared with, with the reach in the table.
#[test]
fn rpc_quick_bench_prints_table_then_json_lines() {
    let (figures, stdout) = run_bench(&["bench", "rpc", "--quick"]);
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "rpc_ping_1conn",
            "rpc_ping_pipelined",
            "rpc_write_4k",
            "rpc_write_4k_mbps",
            "peer_tcp_floor_64b",
            "peer_tcp_floor_64b_xthread",
            "rpc_session_burst_200"
        ]
    );
    for (name, unit) in &figures {
        let want = match name.as_str() {
            "rpc_write_4k_mbps" => "MB/s",
            "rpc_session_burst_200" => "ms",
            _ => "ops/s",
        };
        assert_eq!(unit, want, "unit of {name}");
    }
    for ratio in [
        "x the cross-thread floor's rate (reach >= 0.7x",
        "x its (reach <= 2x",
        "x rpc_ping_1conn's rate (reach >= 8x",
        "lat p50",
    ] {
        assert!(stdout.contains(ratio), "{ratio:?} in {stdout}");
    }
}

#[test]
fn rpc_bench_only_selects_figures() {
    let (figures, _) = run_bench(&["bench", "rpc", "--quick", "--only", "mbps"]);
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rpc_write_4k_mbps"]);
}

#[test]
fn unknown_area_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tdrv"))
        .args(["bench", "no-such-area"])
        .output()
        .expect("run tdrv");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown bench area"));
}

/// `bench vssd --quick` on a vSSD file of the test's own: the four vSSD figures (the
/// group-commit factor in writes/flush, the others in ops/s); fio's peers come only
/// when fio is installed, so they are not required, but their reach is then printed.
#[test]
fn vssd_quick_bench_prints_table_then_json_lines() {
    let dir = scratch("bench-vssd");
    let file = dir.path().join("vssd.dat");
    let path = file.to_str().expect("UTF-8 temp path");
    let (figures, stdout) = run_bench(&["bench", "vssd", "--quick", "--file", path]);
    for (want, want_unit) in [
        ("vssd_write_4k_qd1", "ops/s"),
        ("vssd_write_4k_qd32", "ops/s"),
        ("vssd_writes_per_flush_qd32", "writes/flush"),
        ("vssd_read_hit_4k_qd32", "ops/s"),
    ] {
        let unit = figures
            .iter()
            .find(|(n, _)| n == want)
            .map(|(_, u)| u.as_str());
        assert_eq!(unit, Some(want_unit), "figure {want} in {figures:?}");
    }
    assert!(
        stdout.contains(&format!("vssd: {path} (2048 lines")),
        "vssd line in {stdout}"
    );
    if figures.iter().any(|(n, _)| n == "peer_randread_4k_qd32") {
        for reach in [
            "x peer_randwrite_4k_qd32 (reach >= 0.6x: ",
            "x peer_randwrite_fdatasync_4k_qd1 (reach > 4x: ",
            "x peer_randread_4k_qd32 (reach >= 0.9x: ",
        ] {
            assert!(stdout.contains(reach), "{reach:?} in {stdout}");
        }
    } else {
        assert!(stdout.contains("fio not found"), "fio note in {stdout}");
    }
}

/// `--only` the group-commit factor: its figure alone (from the write samples it needs).
#[test]
fn vssd_bench_only_selects_figures() {
    let dir = scratch("bench-vssd-only");
    let file = dir.path().join("vssd.dat");
    let path = file.to_str().expect("UTF-8 temp path");
    let (figures, _) = run_bench(&[
        "bench",
        "vssd",
        "--quick",
        "--only",
        "per_flush",
        "--file",
        path,
    ]);
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["vssd_writes_per_flush_qd32"]);
}

/// `bench dtm --quick` in a directory of the test's own (its vSSD files go to
/// ./target/tdrv-bench there): the six DTM figures, the vSSD alone and the rpc round
/// trip, all in ops/s, in the documented order, with both reach lines printed.
#[test]
fn dtm_quick_bench_prints_table_then_json_lines() {
    let dir = scratch("bench-dtm");
    let (figures, stdout) = run_bench_in(Some(dir.path()), &["bench", "dtm", "--quick"]);
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "dtm_write_4k_qd1_r1",
            "dtm_write_4k_qd1_r2",
            "dtm_write_4k_qd1_r3",
            "rpc_ping_1conn",
            "dtm_write_4k_qd32_r1",
            "dtm_write_4k_qd32_r2",
            "dtm_write_4k_qd32_r3",
            "vssd_write_4k_qd32",
        ]
    );
    assert!(figures.iter().all(|(_, u)| u == "ops/s"), "{figures:?}");
    for reach in [
        "reach: dtm_write_4k_qd1_r2 p50 ",
        "rpc round trip ",
        "(reach <= 1.2x: ",
        "reach: dtm_write_4k_qd32_r2 ",
        "x dtm_write_4k_qd32_r1's rate (reach >= 0.7x: ",
        "x its (reach <= 2x: ",
        "dtm: vSSDs of 2048 lines",
        // Every write was cleaned: no member keeps a dirty line.
        "dtm: dirty lines left on each member after the run: r1: 0; r2: 0 0; r3: 0 0 0\n",
    ] {
        assert!(stdout.contains(reach), "{reach:?} in {stdout}");
    }
}

/// `--only` one replica count: its two figures alone (one device, no peer).
#[test]
fn dtm_bench_only_selects_figures() {
    let dir = scratch("bench-dtm-only");
    let (figures, _) = run_bench_in(
        Some(dir.path()),
        &["bench", "dtm", "--quick", "--only", "_r1"],
    );
    let files: Vec<String> = std::fs::read_dir(dir.path().join("target/tdrv-bench"))
        .expect("the bench's files")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dtm_write_4k_qd1_r1", "dtm_write_4k_qd32_r1"]);
    assert_eq!(
        files,
        ["dtm-2048-r1-0.dat"],
        "only the device of one replica"
    );
}

/// `bench cdev --quick` in a scratch directory (its device files land under
/// ./target/tdrv-bench there): the foreground p99 idle and during destage in us,
/// their ratio, and destage's rate, with the reach printed.
#[test]
fn cdev_quick_bench_prints_table_then_json_lines() {
    let dir = scratch("bench-cdev");
    let (figures, stdout) = run_bench_in(Some(dir.path()), &["bench", "cdev", "--quick"]);
    assert_eq!(
        figures,
        [
            ("cdev_fg_p99_idle", "us"),
            ("cdev_fg_p99_destage", "us"),
            ("cdev_fg_p99_ratio", "x"),
            ("cdev_destage_mbps", "MB/s"),
        ]
        .map(|(n, u)| (n.to_string(), u.to_string()))
    );
    assert!(stdout.contains("x idle's (reach <= 2x: "), "{stdout}");
}
