//! Trans of several lines under the simulator's crashes: writers append multi-line
//! trans (with checkpoints cut among their PREPAREs) while the node crashes at
//! seeded points; after every reopen each tran's lines are all there or none is,
//! every acknowledged commit is there in full, an in-doubt tran comes back with all
//! its lines (a damaged one is repaired with its whole payload), and a tran with
//! PREPAREs missing is dropped.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use taskio::file::OpenOptions;
use taskio::sim::{Faults, Sim, SimConfig};
use taskio::{AlignedBuf, sleep, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Options, Payload, Resolution, Vssd, format};

const DEV: &str = "/vssd";
const LINE: usize = 4096;
const LINES: u64 = 4096;
/// Lines the writers use in all, across boots (below the capacity: no destage here).
const LINES_USED_MAX: u64 = 3600;
/// Most lines of one tran in this test.
const TRAN_LINES: u64 = 8;
const WRITERS: u64 = 3;
const CRASHES: u32 = 6;
const SEEDS: u64 = 16;

fn params() -> FormatParams {
    FormatParams {
        line_size: LINE as u32,
        lines: LINES,
        log_bytes: LOG_BYTES_MIN,
        device_id: "multi".into(),
        uuid: [5; 16],
        force: false,
    }
}

/// Line `line`'s part of tran `tran`'s payload: names both in every 8 bytes.
fn line_data(line: u64, tran: u64) -> Vec<u8> {
    (0..LINE / 8)
        .flat_map(|i| (line.rotate_left(32) ^ tran ^ (i as u64) << 48).to_le_bytes())
        .collect()
}

/// The whole payload of tran `tran` on lines `first..first + n`.
fn payload(first: u64, n: u64, tran: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(n as usize * LINE);
    b.set_len(n as usize * LINE);
    for i in 0..n {
        b[i as usize * LINE..][..LINE].copy_from_slice(&line_data(first + i, tran));
    }
    b
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// writep1 called, not returned.
    Writing,
    /// writep1 returned.
    Prepared,
    /// commit or abort called, not known durable.
    Deciding(Resolution),
    /// Known durable (or settled by a check after a crash): all lines there or none.
    Done { present: bool },
}

#[derive(Debug)]
struct Tran {
    first: u64,
    n: u64,
    stage: Stage,
}

#[derive(Default)]
struct World {
    seed: u64,
    boots: Cell<u32>,
    /// The first boot formatted the device (a crash before that leaves no vSSD).
    formatted: Cell<bool>,
    next_line: Cell<u64>,
    trans: RefCell<BTreeMap<u64, Tran>>,
    failure: RefCell<Option<String>>,
    checks: Cell<u64>,
    in_doubt: Cell<u64>,
    incomplete: Cell<u64>,
    repaired: Cell<u64>,
}

impl World {
    fn fail(&self, why: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(format!(
                "seed {} boot {}: {why}",
                self.seed,
                self.boots.get()
            ));
        }
    }

    fn set(&self, tran: u64, stage: Stage) {
        self.trans.borrow_mut().get_mut(&tran).expect("known").stage = stage;
    }
}

fn open(w: &World) -> Option<(Vssd, vssd::Recovered)> {
    let g = params().geometry().unwrap();
    let file = OpenOptions::new()
        .create(true)
        .size(g.total_bytes())
        .open(DEV)
        .unwrap();
    if !w.formatted.get() {
        format(&file, &params()).unwrap();
        w.formatted.set(true);
    }
    match Vssd::open(file, Some("multi"), Options::default()) {
        Ok(x) => Some(x),
        Err(e) => {
            w.fail(format!("open: {e}"));
            None
        }
    }
}

/// How many lines of `t` show its data; an error for a line showing other data.
fn lines_present(v: &Vssd, tran: u64, t: &Tran) -> Result<u64, String> {
    let mut present = 0;
    for line in t.first..t.first + t.n {
        match v.read(line).map_err(|e| format!("read line {line}: {e}"))? {
            None => {}
            Some((hit, buf)) if hit.version == tran => {
                if buf[..] != line_data(line, tran)[..] {
                    return Err(format!("line {line} of tran {tran}: wrong bytes"));
                }
                present += 1;
            }
            Some((hit, _)) => {
                return Err(format!(
                    "line {line} of tran {tran} shows version {}",
                    hit.version
                ));
            }
        }
    }
    Ok(present)
}

/// After a crash: resolves the in-doubt trans as a DTM would (commit unless an
/// abort was asked), then checks every tran is all-or-none and every acknowledged
/// one is there, and settles the ones the crash decided.
fn check(w: &World, v: &Vssd, rec: &vssd::Recovered) -> Result<(), String> {
    for &tran in &rec.incomplete {
        w.incomplete.set(w.incomplete.get() + 1);
        let trans = w.trans.borrow();
        let t = trans
            .get(&tran)
            .ok_or(format!("incomplete tran {tran} unknown"))?;
        if t.stage != Stage::Writing {
            return Err(format!(
                "tran {tran} dropped as incomplete at {:?}",
                t.stage
            ));
        }
    }
    for d in &rec.in_doubt {
        w.in_doubt.set(w.in_doubt.get() + 1);
        let (first, n, stage) = {
            let trans = w.trans.borrow();
            let t = trans
                .get(&d.tran)
                .ok_or(format!("in-doubt tran {} unknown", d.tran))?;
            (t.first, t.n, t.stage)
        };
        let lines: Vec<u64> = d.parts.iter().map(|p| p.line).collect();
        if lines != (first..first + n).collect::<Vec<_>>() {
            return Err(format!(
                "in-doubt tran {} has lines {lines:?}, it wrote {first}..{}",
                d.tran,
                first + n
            ));
        }
        let resolution = match stage {
            Stage::Writing | Stage::Prepared => Resolution::Commit,
            Stage::Deciding(r) => r,
            Stage::Done { .. } => return Err(format!("tran {} in doubt after done", d.tran)),
        };
        let resolved = match (d.payload, resolution) {
            (Payload::Damaged { .. }, Resolution::Commit) => {
                w.repaired.set(w.repaired.get() + 1);
                v.resolve_repaired(d.tran, &payload(first, n, d.tran))
            }
            _ => v.resolve(d.tran, resolution),
        };
        resolved.map_err(|e| format!("resolve tran {}: {e}", d.tran))?;
        w.set(
            d.tran,
            Stage::Done {
                present: resolution == Resolution::Commit,
            },
        );
    }
    let mut trans = w.trans.borrow_mut();
    for (&tran, t) in trans.iter_mut() {
        let present = lines_present(v, tran, t)?;
        w.checks.set(w.checks.get() + 1);
        if present != 0 && present != t.n {
            return Err(format!(
                "tran {tran}: {present} of its {} lines from {} are there",
                t.n, t.first
            ));
        }
        let all = present == t.n;
        match t.stage {
            Stage::Done { present: want } if want != all => {
                return Err(format!(
                    "tran {tran} of {} lines: present {all}, acknowledged {want}",
                    t.n
                ));
            }
            // Prepared and not in doubt: only a commit or abort can have ended it.
            Stage::Prepared => return Err(format!("prepared tran {tran} not in doubt")),
            Stage::Deciding(r) if all != (r == Resolution::Commit) => {
                return Err(format!(
                    "tran {tran} of {} lines: {r:?} asked, present {all}",
                    t.n
                ));
            }
            _ => {}
        }
        t.stage = Stage::Done { present: all };
    }
    Ok(())
}

/// One writer: multi-line trans on fresh lines until the lines run out.
fn writer(w: &Rc<World>, v: &Vssd, k: u64) -> Result<(), String> {
    loop {
        let tran = v.next_tran_id().map_err(|e| format!("next_tran_id: {e}"))?;
        let n = 1 + (tran.wrapping_mul(0x9e37_79b9) ^ w.seed ^ k) % TRAN_LINES;
        let first = w.next_line.get();
        if first + n > LINES_USED_MAX {
            return Ok(());
        }
        w.next_line.set(first + n);
        w.trans.borrow_mut().insert(
            tran,
            Tran {
                first,
                n,
                stage: Stage::Writing,
            },
        );
        v.writep1(tran, first, &payload(first, n, tran))
            .map_err(|e| format!("writep1 tran {tran}: {e}"))?;
        w.set(tran, Stage::Prepared);
        let r = if tran % 5 == 0 {
            Resolution::Abort
        } else {
            Resolution::Commit
        };
        w.set(tran, Stage::Deciding(r));
        let pos = match r {
            Resolution::Commit => v.commit(tran),
            Resolution::Abort => v.abort(tran),
        }
        .map_err(|e| format!("decide tran {tran}: {e}"))?;
        v.wait_durable(pos)
            .map_err(|e| format!("wait for tran {tran}: {e}"))?;
        w.set(
            tran,
            Stage::Done {
                present: r == Resolution::Commit,
            },
        );
    }
}

fn boot(w: &Rc<World>) {
    w.boots.set(w.boots.get() + 1);
    let Some((v, rec)) = open(w) else {
        return;
    };
    if let Err(e) = check(w, &v, &rec) {
        return w.fail(e);
    }
    for k in 0..WRITERS {
        let (w2, v2) = (w.clone(), v.clone());
        let spawned = spawn(move || {
            if let Err(e) = writer(&w2, &v2, k) {
                w2.fail(e);
            }
        });
        if let Err(e) = spawned {
            return w.fail(format!("spawn writer {k}: {e}"));
        }
    }
    // Checkpoints cut the log among the writers' PREPAREs.
    loop {
        sleep(Duration::from_micros(700));
        if let Err(e) = v.checkpoint() {
            return w.fail(format!("checkpoint: {e}"));
        }
    }
}

fn run_seed(seed: u64) -> Rc<World> {
    let mut config = SimConfig::new(seed);
    config.faults = Faults {
        disk_latency_spike: 0.01,
        ..Faults::default()
    };
    let world = Rc::new(World {
        seed,
        ..World::default()
    });
    let w2 = world.clone();
    Sim::new(config)
        .run(move |h| {
            let w3 = w2.clone();
            let node = h.add_node("ssd", "10.0.0.1".parse().unwrap(), move || boot(&w3));
            let mut waits = 0;
            while !w2.formatted.get() {
                waits += 1;
                assert!(waits < 100_000, "seed {seed}: never formatted");
                sleep(Duration::from_micros(100));
            }
            for crash in 1..=CRASHES {
                sleep(Duration::from_micros(300 + h.random(20_000)));
                if w2.failure.borrow().is_some() {
                    return;
                }
                h.crash(node);
                h.restart(node);
                // The node boots again before the next crash (at most 10 s virtual).
                let mut waits = 0;
                while w2.boots.get() <= crash && w2.failure.borrow().is_none() {
                    waits += 1;
                    assert!(
                        waits < 100_000,
                        "seed {seed}: boot {} never came",
                        crash + 1
                    );
                    sleep(Duration::from_micros(100));
                }
            }
            sleep(Duration::from_micros(300 + h.random(3_000)));
            h.stop(node);
        })
        .unwrap();
    world
}

#[test]
fn multi_line_trans_are_all_or_none_across_crashes() {
    let (mut checks, mut in_doubt, mut incomplete, mut multi) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let w = run_seed(seed);
        if let Some(f) = w.failure.borrow().clone() {
            panic!("{f}");
        }
        checks += w.checks.get();
        in_doubt += w.in_doubt.get();
        incomplete += w.incomplete.get();
        multi += w.trans.borrow().values().filter(|t| t.n > 1).count();
    }
    // The test saw what it is about.
    assert!(multi > 100, "{multi} multi-line trans");
    assert!(checks > 100, "{checks} checks");
    assert!(in_doubt > 0, "no tran was ever in doubt");
    eprintln!(
        "{checks} tran checks, {in_doubt} in doubt, {incomplete} incomplete, {multi} multi-line"
    );
}
