//! `tdrv sim taskio`: the simulator's own scenario (a replicated key-value store with
//! crashes) holds its invariant over 1,000 seeds, the deliberately broken variant
//! (acknowledging before fdatasync) is caught, and a failing seed replays exactly.

use std::process::Command;

fn tdrv(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tdrv"))
        .args(args)
        .output()
        .expect("run tdrv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn correct_store_survives_a_thousand_seeds() {
    let (code, out, err) = tdrv(&["sim", "taskio", "--seeds", "1000"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("1000 seeds in") && out.contains("0 failed"),
        "{out}"
    );
}

#[test]
fn acknowledging_before_fsync_is_found_and_replays_exactly() {
    let (code, out, err) = tdrv(&["sim", "taskio", "--seeds", "200", "--buggy"]);
    assert_eq!(code, 1, "{out}\n{err}");
    // The progress bar prints failures (with their replay command) on stderr.
    let all = format!("{out}{err}");
    let line = all
        .lines()
        .find(|l| l.contains("replay: cargo run --release -p tdrv -- sim taskio --seed"))
        .expect("a replay command");
    let seed = line
        .split("--seed ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("seed in the replay command")
        .to_string();
    let (c1, o1, _) = tdrv(&["sim", "taskio", "--seed", &seed, "--buggy"]);
    let (c2, o2, _) = tdrv(&["sim", "taskio", "--seed", &seed, "--buggy"]);
    assert_eq!((c1, c2), (1, 1), "{o1}");
    assert!(o1.contains("lost acknowledged key"), "{o1}");
    let last = |o: &str| o.lines().last().unwrap_or_default().to_string();
    assert!(last(&o1).starts_with("trace "), "{o1}");
    assert_eq!(last(&o1), last(&o2), "same seed, same trace");
    // The same seed with the correct store passes.
    let (c3, o3, _) = tdrv(&["sim", "taskio", "--seed", &seed]);
    assert_eq!(c3, 0, "{o3}");
}
