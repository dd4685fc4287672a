//! `Barrier`: nobody passes before all `n` arrived, exactly one leader per round (the
//! last to arrive), reuse over many rounds, and more tasks than `n` forming
//! successive rounds.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{Log, log, run};
use taskio::{Barrier, spawn, yield_now};

#[test]
fn rounds_with_one_leader_and_nobody_early() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 6;
    let leaders: Log<(usize, usize)> = log();
    let l = leaders.clone();
    run(move || {
        let barrier = Rc::new(Barrier::new(TASKS));
        let arrived = Rc::new(RefCell::new([0usize; ROUNDS]));
        let passed = Rc::new(RefCell::new([0usize; ROUNDS]));
        let hs: Vec<_> = (0..TASKS)
            .map(|t| {
                let (b, arrived, passed, l) =
                    (barrier.clone(), arrived.clone(), passed.clone(), l.clone());
                spawn(move || {
                    for round in 0..ROUNDS {
                        // A different amount of work per task and round.
                        for _ in 0..(t * 3 + round) % 5 {
                            yield_now();
                        }
                        arrived.borrow_mut()[round] += 1;
                        let last_to_arrive = arrived.borrow()[round] == TASKS;
                        let leader = b.wait();
                        assert_eq!(
                            arrived.borrow()[round],
                            TASKS,
                            "task {t} passed round {round} before all arrived"
                        );
                        assert_eq!(leader, last_to_arrive, "task {t} round {round}");
                        if leader {
                            l.borrow_mut().push((round, t));
                        }
                        passed.borrow_mut()[round] += 1;
                        // Nobody gets two rounds ahead of a slow task.
                        if round > 0 {
                            assert_eq!(passed.borrow()[round - 1], TASKS);
                        }
                    }
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(barrier.rounds(), ROUNDS as u64);
    });
    let rounds: Vec<usize> = leaders.borrow().iter().map(|&(r, _)| r).collect();
    assert_eq!(
        rounds,
        (0..ROUNDS).collect::<Vec<_>>(),
        "one leader per round"
    );
}

#[test]
fn barrier_of_one_never_waits() {
    run(|| {
        let b = Barrier::new(1);
        for _ in 0..3 {
            assert!(b.wait());
        }
        assert_eq!(b.rounds(), 3);
    });
}

/// "The next `n` arrivals form the next round": with more tasks than `n`, a task
/// released from one round may run only after the next round has completed too.
#[test]
fn more_tasks_than_n_form_successive_rounds() {
    let results = run(|| {
        let b = Rc::new(Barrier::new(2));
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let b = b.clone();
                spawn(move || b.wait()).unwrap()
            })
            .collect();
        let r: Vec<bool> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(b.rounds(), 3);
        r
    });
    // Tasks arrive in spawn order: every second one completes a round.
    assert_eq!(results, [false, true, false, true, false, true]);
}
