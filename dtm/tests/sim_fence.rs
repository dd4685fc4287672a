//! A takeover's first writes and an old primary's writep1 still running on a
//! replica (its I/O slow): recovery does not list that tran (it is not in doubt:
//! its fence aborts it when it returns), so the new primary's writep1 of the same
//! line must wait for it to let go, not be refused. Under the simulator, seeded
//! disk latency spikes make the old writep1 outlast the new epoch's fence.

use std::rc::Rc;

use dtm::{LocalReplica, Replica, ReplicaErrorKind, TRAN_EPOCH_SHIFT};
use taskio::file::OpenOptions;
use taskio::sim::{Faults, Sim, SimConfig};
use taskio::{AlignedBuf, spawn, yield_now};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Options, TranOutcome, Vssd, format};

const LINE: usize = 4096;
const SEEDS: u64 = 40;
/// Yields of the controller at most while it waits for the old writep1 to start.
const YIELDS_MAX: usize = 1000;

fn open_vssd() -> Vssd {
    let params = FormatParams {
        line_size: LINE as u32,
        lines: 64,
        log_bytes: LOG_BYTES_MIN,
        device_id: "simfence".into(),
        uuid: [7; 16],
        force: false,
    };
    let file = OpenOptions::new()
        .create(true)
        .size(params.geometry().unwrap().total_bytes())
        .open("/r1")
        .unwrap();
    format(&file, &params).unwrap();
    Vssd::open(file, Some("simfence"), Options::default())
        .unwrap()
        .0
}

fn payload(fill: u8) -> AlignedBuf {
    let mut b = AlignedBuf::new(LINE);
    b.set_len(LINE);
    b.fill(fill);
    b
}

/// One seed: returns whether the old writep1 still held the line when the new
/// primary's writep1 started (the race this test is about).
fn run(seed: u64) -> bool {
    let mut config = SimConfig::new(seed);
    config.faults = Faults {
        disk_latency_spike: 0.5,
        ..Faults::default()
    };
    let (old_tran, new_tran) = (1 << TRAN_EPOCH_SHIFT | 1, 2 << TRAN_EPOCH_SHIFT | 1);
    Sim::new(config)
        .run(move |_| {
            let v = open_vssd();
            let old = Rc::new(LocalReplica::new(v.clone(), 1, "old", 0));
            old.set_epoch(1, &[0, 1]).unwrap();
            let writer = {
                let old = old.clone();
                spawn(move || old.writep1(old_tran, 3, &payload(1))).unwrap()
            };
            for _ in 0..YIELDS_MAX {
                if v.tran_outcome(old_tran) == TranOutcome::Prepared {
                    break;
                }
                yield_now();
            }
            assert_eq!(
                v.tran_outcome(old_tran),
                TranOutcome::Prepared,
                "seed {seed}"
            );
            // The takeover: a new opening moves the vSSD on (the old is fenced).
            let new = LocalReplica::new(v.clone(), 1, "new", v.epoch());
            new.set_epoch(2, &[1]).unwrap();
            let raced = v.tran_outcome(old_tran) == TranOutcome::Prepared;
            new.writep1(new_tran, 3, &payload(2))
                .unwrap_or_else(|e| panic!("seed {seed}: the new primary's writep1: {e}"));
            let e = writer.join().unwrap().unwrap_err();
            assert!(
                matches!(e.kind, ReplicaErrorKind::StaleEpoch { replica_epoch: 2 }),
                "seed {seed}: {e}"
            );
            assert_eq!(
                v.tran_outcome(old_tran),
                TranOutcome::Aborted,
                "seed {seed}"
            );
            new.commit(&[new_tran]).unwrap();
            let mut buf = AlignedBuf::new(LINE);
            new.read(3, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 2), "seed {seed}: the new write");
            v.close();
            raced
        })
        .unwrap()
}

#[test]
fn a_new_primarys_writep1_waits_for_a_fenced_writep1_still_running_on_its_line() {
    let raced = (0..SEEDS).filter(|&s| run(s)).count();
    assert!(raced > 0, "no seed had the old writep1 outlast the fence");
}
