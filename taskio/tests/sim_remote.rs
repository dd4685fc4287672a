//! `Remote`/`Inbox` under the simulator: the runtimes ("threads") of one node are
//! modelled as groups of tasks of the one simulated runtime, and a hand-off between
//! two groups wakes its receiver through the simulated driver (an in-memory event
//! with a seeded hand-off latency), so the interleaving is a function of the seed.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use taskio::remote::{RemoteSendError, remote};
use taskio::sim::{Sim, SimConfig};
use taskio::{now, sleep, spawn};

/// Values each sender of group A hands to group B.
const VALUES_PER_SENDER: u64 = 50;
const SENDERS: u64 = 3;
const RECEIVERS: u64 = 2;
/// Inbox capacity: small, so that senders meet a full inbox.
const CAPACITY: usize = 4;
/// Virtual-time bound of one run.
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// Group A (senders) hands values to group B (receivers) on node "n"; B answers
/// each through a second remote back to A. Returns the trace hash and the log of
/// (receiving group and task, value, virtual instant).
fn handoff(seed: u64) -> (u64, Vec<(u64, u64, u64)>, u64) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let log = Rc::new(RefCell::new(Vec::new()));
    let fulls = Rc::new(RefCell::new(0u64));
    let (l2, f2) = (log.clone(), fulls.clone());
    sim.run(move |h| {
        let (l3, f3) = (l2.clone(), f2.clone());
        h.add_node("n", "10.0.0.1".parse().unwrap(), move || {
            let (to_b, inbox_b) = remote::<u64>(CAPACITY).unwrap();
            let (to_a, inbox_a) = remote::<u64>(CAPACITY).unwrap();
            let inbox_b = Rc::new(inbox_b);
            // Group B: receivers that answer every value (value + 1_000_000).
            let mut group_b = Vec::new();
            for r in 0..RECEIVERS {
                let (inbox_b, to_a, log) = (inbox_b.clone(), to_a.clone(), l3.clone());
                group_b.push(spawn(move || {
                    while let Some(v) = inbox_b.recv().unwrap() {
                        log.borrow_mut().push((r, v, now().as_nanos()));
                        let mut answer = v + 1_000_000;
                        loop {
                            match to_a.send(answer) {
                                Ok(()) => break,
                                Err(RemoteSendError::Full { value, .. }) => {
                                    answer = value;
                                    sleep(Duration::from_micros(10));
                                }
                                Err(RemoteSendError::Closed(_)) => return,
                            }
                        }
                    }
                }));
            }
            drop(to_a);
            // Group A: senders, and one task collecting the answers.
            let mut group_a = Vec::new();
            for s in 0..SENDERS {
                let (to_b, fulls) = (to_b.clone(), f3.clone());
                group_a.push(spawn(move || {
                    for i in 0..VALUES_PER_SENDER {
                        let mut v = s * 1000 + i;
                        loop {
                            match to_b.send(v) {
                                Ok(()) => break,
                                Err(RemoteSendError::Full { value, .. }) => {
                                    *fulls.borrow_mut() += 1;
                                    v = value;
                                    sleep(Duration::from_micros(10));
                                }
                                Err(RemoteSendError::Closed(_)) => panic!("inbox B closed"),
                            }
                        }
                    }
                }));
            }
            let log = l3.clone();
            let collector = spawn(move || {
                let mut answers = 0;
                while answers < SENDERS * VALUES_PER_SENDER {
                    let Some(v) = inbox_a.recv().unwrap() else {
                        break;
                    };
                    log.borrow_mut().push((9, v, now().as_nanos()));
                    answers += 1;
                }
                answers
            });
            for t in group_a {
                t.unwrap().join().unwrap();
            }
            to_b.close();
            for t in group_b {
                t.unwrap().join().unwrap();
            }
            assert_eq!(
                collector.unwrap().join().unwrap(),
                SENDERS * VALUES_PER_SENDER
            );
        });
        let expected = (2 * SENDERS * VALUES_PER_SENDER) as usize;
        assert!(
            h.run_until(RUN_LIMIT, || l2.borrow().len() == expected),
            "hand-off did not finish within {RUN_LIMIT:?} of virtual time: {} of {expected}",
            l2.borrow().len()
        );
    })
    .unwrap();
    let out = log.borrow().clone();
    let full = *fulls.borrow();
    (sim.trace_hash(), out, full)
}

#[test]
fn handoff_between_task_groups_of_one_node_is_deterministic() {
    let (h1, log1, fulls) = handoff(7);
    let (h2, log2, _) = handoff(7);
    assert_eq!(h1, h2, "same seed, same trace hash");
    assert_eq!(log1, log2, "same seed, same hand-offs at the same instants");
    assert!(fulls > 0, "the senders met a full inbox");
    // Every value arrived once, and each sender's values in order.
    let mut got: Vec<u64> = log1.iter().filter(|e| e.0 < 9).map(|e| e.1).collect();
    for s in 0..SENDERS {
        let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1000 == s).collect();
        let want: Vec<u64> = (0..VALUES_PER_SENDER).map(|i| s * 1000 + i).collect();
        assert_eq!(mine, want, "sender {s}'s values in order");
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len() as u64, SENDERS * VALUES_PER_SENDER);
    // A hand-off takes virtual time (the wake-up latency of another thread) and the
    // seed decides the interleaving.
    let others: Vec<_> = (8..12).map(handoff).collect();
    assert!(
        others.iter().any(|(h, _, _)| *h != h1),
        "seeds change the trace"
    );
    assert!(
        others.iter().any(|(_, l, _)| *l != log1),
        "seeds change the interleaving of the groups"
    );
}
