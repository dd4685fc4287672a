//! A process killed (SIGKILL) at a random instant while 8 tasks write through a vSSD
//! on a real file: every write it acknowledged is there after a reopen, in the real
//! AIO and O_DIRECT paths (the simulator's torture covers power loss; this covers the
//! real driver). The child is this test binary again, run for this one test.

mod common;

use common::{TempDir, open_dev, run_io};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskio::{AlignedBuf, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Options, Resolution, Vssd, format};

const CHILD_ENV: &str = "CVA_VSSD_KILL_CHILD";
const TASKS: u64 = 8;
const LINES_PER_TASK: u64 = 24;
const TEST: &str = "a_killed_process_keeps_every_acknowledged_write";

fn params() -> FormatParams {
    FormatParams {
        line_size: 4096,
        lines: 256,
        log_bytes: LOG_BYTES_MIN,
        device_id: "kill".into(),
        uuid: [3; 16],
        force: false,
    }
}

fn payload(line: u64, tran: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(4096);
    b.set_len(4096);
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&((line << 40) ^ tran ^ ((i as u64) << 56)).to_le_bytes());
    }
    b
}

/// The child: writes for ever, printing "ack LINE TRAN" once commit was called after
/// writep1 returned (the DTM's acknowledgement to its client).
fn child(path: PathBuf, round: u64) {
    run_io(move || {
        let (v, _) = Vssd::open(open_dev(&path), Some("kill"), Options::default()).unwrap();
        let mut hs = Vec::new();
        for t in 0..TASKS {
            let v = v.clone();
            hs.push(
                spawn(move || {
                    let mut out = std::io::stdout();
                    for i in 0.. {
                        let line = t * LINES_PER_TASK + i % LINES_PER_TASK;
                        // Trans grow per line across rounds: round, task, count.
                        let tran = (round << 48) | (t << 40) | (i + 1);
                        v.writep1(tran, line, &payload(line, tran)).unwrap();
                        v.commit(tran).unwrap();
                        writeln!(out, "ack {line} {tran}").unwrap();
                        out.flush().unwrap();
                    }
                })
                .unwrap(),
            );
        }
        for h in hs {
            h.join().unwrap();
        }
    });
}

#[test]
fn a_killed_process_keeps_every_acknowledged_write() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        let round = std::env::var("CVA_VSSD_KILL_ROUND").map_or(0, |r| r.parse().unwrap_or(0));
        child(PathBuf::from(path), round);
        return;
    }
    let dir = TempDir::new("kill");
    let path = dir.file("vssd");
    let g = params().geometry().unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(g.total_bytes())
        .unwrap();
    let p = path.clone();
    run_io(move || format(&open_dev(&p), &params()).unwrap());
    // Newest acknowledged tran per line, across the kills.
    let mut acked = std::collections::BTreeMap::<u64, u64>::new();
    for (round, kill_after) in [150usize, 900, 3000].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env("CVA_VSSD_KILL_ROUND", (round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let t0 = Instant::now();
        let mut seen = 0;
        let mut lines = out.lines();
        for l in lines.by_ref() {
            let l = l.unwrap();
            if let Some(rest) = l.strip_prefix("ack ") {
                let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                let (line, tran) = (it.next().unwrap(), it.next().unwrap());
                acked.insert(line, tran);
                seen += 1;
                if seen >= kill_after || t0.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
        }
        child.kill().unwrap();
        // Acknowledgements printed before the kill landed count too.
        for l in lines {
            let Ok(l) = l else { break };
            if let Some(rest) = l.strip_prefix("ack ") {
                let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                let (line, tran) = (it.next().unwrap(), it.next().unwrap());
                acked.insert(line, tran);
            }
        }
        child.wait().unwrap();
        assert!(seen > 0, "round {round}: the child acknowledged nothing");
        eprintln!(
            "round {round}: killed after {seen} acknowledgements, {} lines to check",
            acked.len()
        );
        let p = path.clone();
        let want = acked.clone();
        run_io(move || {
            let sole = Options {
                sole_copy: true,
                ..Options::default()
            };
            let (v, rec) = Vssd::open(open_dev(&p), Some("kill"), sole).unwrap();
            // Every tran here was committed or about to be: the DTM's rule commits.
            eprintln!(
                "reopened: {} in doubt, {} torn prepares, {} log blocks replayed",
                rec.in_doubt.len(),
                rec.damaged_aborted.len(),
                rec.blocks_replayed
            );
            for d in &rec.in_doubt {
                v.resolve(d.tran, Resolution::Commit).unwrap();
            }
            for (&line, &tran) in &want {
                let (hit, buf) = v
                    .read(line)
                    .unwrap()
                    .unwrap_or_else(|| panic!("round {round}: line {line} lost (acked {tran})"));
                // One task writes a line, with growing trans: newer was in flight.
                assert!(
                    hit.version >= tran && (hit.version >> 40) & 0xff == (tran >> 40) & 0xff,
                    "round {round}: line {line} holds {}, acknowledged {tran}",
                    hit.version
                );
                assert_eq!(&buf[..], &payload(line, hit.version)[..], "line {line}");
            }
            v.sync().unwrap();
            v.close();
        });
    }
}
