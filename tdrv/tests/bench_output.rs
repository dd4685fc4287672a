//! `tdrv bench taskio --quick` runs and prints what DEVELOPERS.md promises: a table,
//! then one JSON object per figure with its keys in order. (Figures are not checked:
//! speed is for benchmarks, not tests.)

use std::process::Command;

const KEYS: [&str; 6] = ["bench", "unit", "median", "min", "max", "n"];

#[test]
fn taskio_quick_bench_prints_table_then_json_lines() {
    let out = Command::new(env!("CARGO_BIN_EXE_tdrv"))
        .args(["bench", "taskio", "--quick"])
        .output()
        .expect("run tdrv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tdrv failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    let names: Vec<String> = json
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
            obj["bench"].as_str().expect("bench").to_string()
        })
        .collect();
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
            names.iter().any(|n| n == want),
            "figure {want} missing from {names:?}"
        );
    }
    // The table comes first.
    let first_json = stdout.find('{').expect("JSON present");
    assert!(stdout[..first_json].contains("bench"), "table before JSON");
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
