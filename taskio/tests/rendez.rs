//! `Rendez`: sleep / wakeup / wakeup_all counts and FIFO order, `sleep_until` timeouts,
//! and that a timed-out sleeper leaves no phantom behind.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::{Log, log, run};
use taskio::{Instant, Rendez, sleep, spawn, yield_now};

/// Spawns `n` tasks that each sleep once on `r` and then log their index.
fn sleepers(r: &Rc<Rendez>, n: usize, woke: &Log<usize>) -> Vec<taskio::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (r, w) = (r.clone(), woke.clone());
            spawn(move || {
                r.sleep();
                w.borrow_mut().push(i);
            })
            .unwrap()
        })
        .collect()
}

#[test]
fn wakeup_with_nobody_asleep() {
    run(|| {
        let r = Rendez::new();
        assert!(!r.has_sleepers());
        assert!(!r.wakeup());
        assert_eq!(r.wakeup_all(), 0);
    });
}

#[test]
fn wakeup_wakes_one_sleeper_in_fifo_order() {
    let woke: Log<usize> = log();
    let w = woke.clone();
    run(move || {
        let r = Rc::new(Rendez::new());
        let hs = sleepers(&r, 4, &w);
        yield_now(); // all four go to sleep
        assert!(r.has_sleepers());
        for expect in 0..4 {
            assert!(r.wakeup());
            yield_now();
            let got = w.borrow().clone();
            assert_eq!(
                got,
                (0..=expect).collect::<Vec<_>>(),
                "one wakeup, one sleeper"
            );
        }
        assert!(!r.has_sleepers());
        assert!(!r.wakeup());
        for h in hs {
            h.join().unwrap();
        }
    });
}

#[test]
fn wakeup_all_counts_and_wakes_everyone() {
    let woke: Log<usize> = log();
    let w = woke.clone();
    run(move || {
        let r = Rc::new(Rendez::new());
        let hs = sleepers(&r, 5, &w);
        yield_now();
        assert_eq!(r.wakeup_all(), 5);
        assert_eq!(r.wakeup_all(), 0, "sleepers counted twice");
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_eq!(*woke.borrow(), [0, 1, 2, 3, 4]);
}

#[test]
fn sleep_until_times_out_and_leaves_no_phantom_sleeper() {
    run(|| {
        let r = Rendez::new();
        let deadline = Instant::monotonic() + Duration::from_millis(3);
        assert!(!r.sleep_until(deadline), "nobody woke it: must time out");
        assert!(Instant::monotonic() >= deadline);
        // The timed-out wait must not count as a sleeper or absorb a wakeup.
        assert!(!r.has_sleepers());
        assert!(!r.wakeup());
        assert!(!r.sleep_until(Instant::monotonic() + Duration::from_millis(1)));
        assert_eq!(r.wakeup_all(), 0, "wakeup_all counted a timed-out sleeper");
    });
}

#[test]
fn sleep_until_returns_true_when_woken() {
    run(|| {
        let r = Rc::new(Rendez::new());
        let r2 = r.clone();
        let h =
            spawn(move || r2.sleep_until(Instant::monotonic() + Duration::from_secs(60))).unwrap();
        yield_now();
        assert!(r.wakeup());
        assert!(h.join().unwrap());
    });
}

/// After a timed sleeper times out, a wakeup goes to the next real sleeper.
#[test]
fn wakeup_skips_timed_out_sleepers() {
    let woke: Log<&str> = log();
    let w = woke.clone();
    run(move || {
        let r = Rc::new(Rendez::new());
        let (r1, w1) = (r.clone(), w.clone());
        let timed = spawn(move || {
            let woken = r1.sleep_until(Instant::monotonic() + Duration::from_millis(1));
            w1.borrow_mut().push(if woken {
                "timed:woken"
            } else {
                "timed:timeout"
            });
        })
        .unwrap();
        let (r2, w2) = (r.clone(), w.clone());
        let plain = spawn(move || {
            r2.sleep();
            w2.borrow_mut().push("plain");
        })
        .unwrap();
        timed.join().unwrap(); // ends by its timeout; `plain` sleeps behind it
        assert!(r.wakeup(), "the wakeup was absorbed by the timed-out entry");
        plain.join().unwrap();
    });
    assert_eq!(*woke.borrow(), ["timed:timeout", "plain"]);
}

/// A timer that belonged to a wait that was ended by a wakeup must not end a later
/// wait of the same task.
#[test]
fn stale_timer_does_not_wake_a_later_wait() {
    run(|| {
        let first = Rc::new(Rendez::new());
        let second = Rc::new(Rendez::new());
        let (f, s) = (first.clone(), second.clone());
        let h = spawn(move || {
            let woken = f.sleep_until(Instant::monotonic() + Duration::from_millis(2));
            s.sleep();
            woken
        })
        .unwrap();
        yield_now();
        assert!(first.wakeup());
        // Sleep well past the first wait's deadline: the task must still be asleep on
        // `second`, since only a wakeup may end that wait.
        sleep(Duration::from_millis(10));
        assert!(
            second.has_sleepers(),
            "the stale timer woke the second wait"
        );
        assert!(second.wakeup());
        assert!(h.join().unwrap());
    });
}
