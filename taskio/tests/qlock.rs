//! `QLock`: mutual exclusion across suspensions inside the critical section, FIFO
//! hand-off (the lock is never free between holders, so a relocking task cannot
//! barge), `try_lock`.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{Log, log, run};
use taskio::{QLock, spawn, yield_now};

#[test]
fn mutual_exclusion_across_yields() {
    let v = run(|| {
        let lock = Rc::new(QLock::new(0u64));
        let inside = Rc::new(Cell::new(0u32));
        let hs: Vec<_> = (0..5u32)
            .map(|t| {
                let (lock, inside) = (lock.clone(), inside.clone());
                spawn(move || {
                    for i in 0..10 {
                        let mut g = lock.lock();
                        inside.set(inside.get() + 1);
                        assert_eq!(inside.get(), 1, "two tasks inside the lock");
                        // Read, suspend, write: a lost update shows up in the total.
                        let seen = *g;
                        for _ in 0..(t + i) % 3 + 1 {
                            yield_now();
                        }
                        assert_eq!(inside.get(), 1, "two tasks inside the lock");
                        *g = seen + 1;
                        inside.set(inside.get() - 1);
                    }
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(!lock.is_locked());
        Rc::try_unwrap(lock).ok().unwrap().into_inner()
    });
    assert_eq!(v, 50);
}

#[test]
fn waiters_get_the_lock_in_fifo_order_by_hand_off() {
    let order: Log<u32> = log();
    let o = order.clone();
    run(move || {
        let lock = Rc::new(QLock::new(()));
        let g = lock.lock();
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let (lock, o) = (lock.clone(), o.clone());
                spawn(move || {
                    let _g = lock.lock();
                    o.borrow_mut().push(t);
                    yield_now();
                })
                .unwrap()
            })
            .collect();
        yield_now(); // all four queue up
        assert!(o.borrow().is_empty());
        drop(g);
        // Handed to waiter 0, which has not run yet: the lock never became free.
        assert!(lock.is_locked());
        assert!(lock.try_lock().is_none(), "try_lock barged past a waiter");
        // Relocking at once queues main behind the four.
        drop(lock.lock());
        o.borrow_mut().push(99);
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_eq!(*order.borrow(), [0, 1, 2, 3, 99]);
}

#[test]
fn try_lock_succeeds_only_when_free() {
    run(|| {
        let lock = QLock::new(5);
        {
            let mut g = lock.try_lock().expect("free lock");
            assert!(lock.is_locked());
            assert!(lock.try_lock().is_none());
            *g += 1;
        }
        assert!(!lock.is_locked());
        assert_eq!(*lock.lock(), 6);
        assert_eq!(lock.into_inner(), 6);
        let d: QLock<Vec<u8>> = QLock::default();
        assert!(d.lock().is_empty());
    });
}
