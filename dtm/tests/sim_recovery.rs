//! Recovery under the simulator's crashes: a node holds three replica vSSDs of one
//! device. Writers prepare each tran on the three one after another and count it
//! acknowledged once all three returned; COMMITs go out lazily in batches, one
//! replica after another; checkpoints cut the replicas' logs. The node crashes at
//! seeded points (writes in flight torn or lost); each boot opens the three and
//! runs `recover` before writing again. After every recovery: no tran in doubt,
//! the replicas agree on every dirty line, every line holds its newest
//! acknowledged tran or a newer one, and every line holds the data of the tran its
//! version names.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use dtm::{LocalReplica, Replica, recover};
use taskio::file::OpenOptions;
use taskio::rand::Rng;
use taskio::sim::{Faults, Sim, SimConfig};
use taskio::{AlignedBuf, sleep, spawn};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Options, Vssd, format};

const LINE: usize = 4096;
const LINES: u64 = 512;
const MEMBERS: [u64; 3] = [1, 2, 3];
const WRITERS: u64 = 2;
/// Lines of each writer's own range (writers never share a line: the core's range
/// locks are not here).
const WRITER_LINES: u64 = 64;
/// Most lines of one tran.
const TRAN_LINES: u64 = 3;
/// Acknowledged trans a commit batch waits for.
const COMMIT_BATCH: usize = 4;
const CRASHES: u32 = 4;
const SEEDS: u64 = 8;
const _: () = assert!(WRITERS * WRITER_LINES <= LINES / 2 && TRAN_LINES <= WRITER_LINES);

fn params() -> FormatParams {
    FormatParams {
        line_size: LINE as u32,
        lines: LINES,
        log_bytes: LOG_BYTES_MIN,
        device_id: "simdev".into(),
        uuid: [9; 16],
        force: false,
    }
}

/// Line `line`'s part of tran `tran`: names both in every 8 bytes.
fn line_data(line: u64, tran: u64) -> Vec<u8> {
    (0..LINE / 8)
        .flat_map(|i| (line.rotate_left(32) ^ tran ^ (i as u64) << 48).to_le_bytes())
        .collect()
}

fn payload(first: u64, n: u64, tran: u64) -> AlignedBuf {
    let mut b = AlignedBuf::new(n as usize * LINE);
    b.set_len(n as usize * LINE);
    for i in 0..n {
        b[i as usize * LINE..][..LINE].copy_from_slice(&line_data(first + i, tran));
    }
    b
}

#[derive(Default)]
struct World {
    seed: u64,
    formatted: Cell<bool>,
    boots: Cell<u32>,
    /// Per line, the newest tran acknowledged on it.
    acked: RefCell<BTreeMap<u64, u64>>,
    /// Acknowledged trans whose COMMITs are not sent yet (this boot).
    pending: RefCell<Vec<u64>>,
    recoveries: Cell<u64>,
    committed: Cell<u64>,
    aborted: Cell<u64>,
    repaired: Cell<u64>,
    reconciled: Cell<u64>,
    failure: RefCell<Option<String>>,
}

impl World {
    fn fail(&self, why: String) {
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(format!("seed {}: {why}", self.seed));
        }
    }
}

fn open(w: &World, m: u64) -> Result<LocalReplica, String> {
    let g = params().geometry().unwrap();
    let path = format!("/r{m}");
    let file = OpenOptions::new()
        .create(true)
        .size(g.total_bytes())
        .open(&path)
        .map_err(|e| format!("open {path}: {e}"))?;
    if !w.formatted.get() {
        format(&file, &params()).map_err(|e| format!("format {path}: {e}"))?;
    }
    let (v, _) = Vssd::open(file, Some("simdev"), Options::default())
        .map_err(|e| format!("vssd open {path}: {e}"))?;
    let epoch = v.epoch();
    Ok(LocalReplica::new(v, m, path, epoch))
}

/// What must hold after a recovery (module documentation).
fn check(w: &World, replicas: &[Rc<LocalReplica>]) -> Result<(), String> {
    let dirty = replicas[0]
        .dirty(0, LINES as usize)
        .map_err(|e| e.to_string())?;
    let mut buf = AlignedBuf::new(LINE);
    for r in replicas {
        let (left, _) = r.in_doubt(0, 16).map_err(|e| e.to_string())?;
        if !left.is_empty() {
            return Err(format!("{} has trans in doubt: {left:?}", r.name()));
        }
        let d = r.dirty(0, LINES as usize).map_err(|e| e.to_string())?;
        if d != dirty {
            return Err(format!(
                "{} has dirty {d:?}, {} {dirty:?}",
                r.name(),
                replicas[0].name()
            ));
        }
        for &(line, version) in &d {
            let read = r.read(line, &mut buf).map_err(|e| e.to_string())?;
            if read != Some(version) || buf[..] != line_data(line, version)[..] {
                return Err(format!(
                    "{} line {line}: version {read:?}, not the data of {version}",
                    r.name()
                ));
            }
        }
    }
    for (&line, &tran) in w.acked.borrow().iter() {
        let held = dirty.iter().find(|&&(l, _)| l == line).map(|&(_, v)| v);
        if held.is_none_or(|v| v < tran) {
            return Err(format!(
                "line {line}: acknowledged tran {tran} lost, holds {held:?}"
            ));
        }
    }
    Ok(())
}

/// One writer on its own lines: a tran prepared on every replica in turn, then
/// acknowledged; stops at the first error (the crash).
fn writer(w: &Rc<World>, replicas: &[Rc<LocalReplica>], k: u64, rng: &mut Rng) {
    let first_line = k * WRITER_LINES;
    loop {
        let n = 1 + rng.below(TRAN_LINES);
        let line = first_line + rng.below(WRITER_LINES - n + 1);
        let Ok(tran) = replicas[0].vssd().next_tran_id() else {
            return;
        };
        let data = payload(line, n, tran);
        for r in replicas {
            if r.writep1(tran, line, &data).is_err() {
                return;
            }
        }
        let mut acked = w.acked.borrow_mut();
        for l in line..line + n {
            acked.insert(l, tran);
        }
        drop(acked);
        w.pending.borrow_mut().push(tran);
        sleep(Duration::from_micros(50 + rng.below(200)));
    }
}

/// The lazy COMMITs: batches sent to one replica after another.
fn committer(w: &Rc<World>, replicas: &[Rc<LocalReplica>]) {
    loop {
        sleep(Duration::from_micros(400));
        if w.pending.borrow().len() < COMMIT_BATCH {
            continue;
        }
        let batch: Vec<u64> = w.pending.borrow_mut().drain(..).collect();
        for r in replicas {
            if let Err(e) = r.commit(&batch) {
                return w.fail(format!("commit: {e}"));
            }
        }
    }
}

fn boot(w: &Rc<World>) {
    let boot = w.boots.get() + 1;
    w.boots.set(boot);
    w.pending.borrow_mut().clear();
    let opened: Result<Vec<LocalReplica>, String> = MEMBERS.iter().map(|&m| open(w, m)).collect();
    let replicas: Vec<Rc<LocalReplica>> = match opened {
        Ok(r) => r.into_iter().map(Rc::new).collect(),
        Err(e) => return w.fail(e),
    };
    w.formatted.set(true);
    let dyns: Vec<Rc<dyn Replica>> = replicas
        .iter()
        .map(|r| r.clone() as Rc<dyn Replica>)
        .collect();
    match recover(&dyns, &MEMBERS, MEMBERS.len()) {
        Ok(rec) => {
            if rec.epoch != u64::from(boot) {
                return w.fail(format!("boot {boot} recovered to epoch {}", rec.epoch));
            }
            w.recoveries.set(w.recoveries.get() + 1);
            w.committed.set(w.committed.get() + rec.committed);
            w.aborted.set(w.aborted.get() + rec.aborted);
            w.repaired.set(w.repaired.get() + rec.repaired);
            w.reconciled.set(w.reconciled.get() + rec.reconciled);
        }
        Err(e) => return w.fail(format!("boot {boot}: recover: {e}")),
    }
    if let Err(e) = check(w, &replicas) {
        return w.fail(format!("boot {boot}: {e}"));
    }
    for k in 0..WRITERS {
        let (w2, r2) = (w.clone(), replicas.clone());
        let mut rng = Rng::stream(w.seed, u64::from(boot) * 16 + k);
        if let Err(e) = spawn(move || writer(&w2, &r2, k, &mut rng)) {
            return w.fail(format!("spawn writer: {e}"));
        }
    }
    let (w2, r2) = (w.clone(), replicas.clone());
    if let Err(e) = spawn(move || committer(&w2, &r2)) {
        return w.fail(format!("spawn committer: {e}"));
    }
    // Checkpoints cut one replica's log after another.
    let mut rng = Rng::stream(w.seed, u64::from(boot) * 16 + 15);
    loop {
        sleep(Duration::from_micros(500 + rng.below(1_500)));
        let r = &replicas[rng.index(replicas.len())];
        if let Err(e) = r.vssd().checkpoint() {
            return w.fail(format!("checkpoint {}: {e}", r.name()));
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
            let node = h.add_node("primary", "10.0.0.1".parse().unwrap(), move || boot(&w3));
            // The first boot formats the vSSDs: no crash before it recovered.
            let mut waits = 0;
            while w2.recoveries.get() == 0 && w2.failure.borrow().is_none() {
                waits += 1;
                assert!(
                    waits < 100_000,
                    "seed {seed}: the first boot never recovered"
                );
                sleep(Duration::from_micros(100));
            }
            for crash in 1..=CRASHES {
                sleep(Duration::from_micros(2_000 + h.random(20_000)));
                if w2.failure.borrow().is_some() {
                    return;
                }
                h.crash(node);
                h.restart(node);
                // The node boots and recovers before the next crash.
                let mut waits = 0;
                while w2.recoveries.get() <= u64::from(crash) && w2.failure.borrow().is_none() {
                    waits += 1;
                    assert!(
                        waits < 100_000,
                        "seed {seed}: boot {} never recovered",
                        crash + 1
                    );
                    sleep(Duration::from_micros(100));
                }
            }
            h.stop(node);
        })
        .unwrap();
    world
}

#[test]
fn every_acknowledged_write_survives_crashes_and_recovery_and_replicas_agree() {
    let (mut committed, mut aborted, mut recoveries, mut acked) = (0, 0, 0, 0);
    let (mut repaired, mut reconciled) = (0, 0);
    for seed in 0..SEEDS {
        let w = run_seed(seed);
        if let Some(f) = w.failure.borrow().as_ref() {
            panic!("{f}");
        }
        assert_eq!(w.recoveries.get(), u64::from(CRASHES) + 1, "seed {seed}");
        committed += w.committed.get();
        aborted += w.aborted.get();
        recoveries += w.recoveries.get();
        repaired += w.repaired.get();
        reconciled += w.reconciled.get();
        acked += w.acked.borrow().len();
    }
    eprintln!(
        "{recoveries} recoveries: {committed} in-doubt trans committed, {aborted} aborted, {repaired} copies repaired, {reconciled} lines reconciled, {acked} lines acknowledged"
    );
    // The crashes must have left work for recovery, or this test shows nothing.
    assert!(committed > 0 && aborted > 0 && acked > 0);
}
