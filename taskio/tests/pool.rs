//! `Pool`: made full up front, `get` waits while empty and an item returns on drop,
//! never more than `capacity` out, the `low` reserve only `get_reserve` may take, the
//! `high` refill hysteresis, and the counters.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use common::{Log, log, run};
use taskio::{Pool, PoolItem, PoolStats, spawn, yield_now};

#[test]
fn pool_is_made_full_up_front() {
    run(|| {
        let made = Rc::new(Cell::new(0u32));
        let m = made.clone();
        let pool = Pool::new(3, move || {
            m.set(m.get() + 1);
            m.get()
        });
        assert_eq!(made.get(), 3);
        assert_eq!(pool.capacity(), 3);
        assert_eq!(pool.free(), 3);
        assert_eq!(
            pool.stats(),
            PoolStats {
                capacity: 3,
                free: 3,
                free_min: 3,
                gets: 0,
                waits: 0
            }
        );
        let items: Vec<PoolItem<u32>> = (0..3).map(|_| pool.get()).collect();
        let mut items: Vec<u32> = items.iter().map(|i| **i).collect();
        items.sort();
        assert_eq!(items, [1, 2, 3]);
        assert_eq!(made.get(), 3, "get made a new object");
    });
}

#[test]
fn get_waits_while_empty_and_the_item_returns_on_drop() {
    run(|| {
        let pool = Pool::new(1, || String::from("buf"));
        let mut item = pool.get();
        item.push_str("+used");
        assert_eq!(pool.free(), 0);
        assert!(pool.try_get().is_none());

        let p = pool.clone();
        let taker = spawn(move || p.get().clone()).unwrap();
        yield_now();
        yield_now();
        assert!(!taker.is_finished(), "get on an empty pool did not wait");
        drop(item);
        // The same object, modified, comes back.
        assert_eq!(taker.join().unwrap(), "buf+used");
        assert_eq!(pool.free(), 1);
        let s = pool.stats();
        assert_eq!((s.gets, s.waits, s.free_min), (2, 1, 0));
    });
}

#[test]
fn never_more_than_capacity_out() {
    const CAP: usize = 3;
    let stats = run(|| {
        let pool = Pool::new(CAP, || ());
        let out = Rc::new(Cell::new(0usize));
        let max_out = Rc::new(Cell::new(0usize));
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let (pool, out, max_out) = (pool.clone(), out.clone(), max_out.clone());
                spawn(move || {
                    for i in 0..10 {
                        let item = pool.get();
                        out.set(out.get() + 1);
                        max_out.set(max_out.get().max(out.get()));
                        assert!(out.get() <= CAP, "{} items out of {CAP}", out.get());
                        assert_eq!(pool.free() + out.get(), CAP);
                        for _ in 0..(t + i) % 4 {
                            yield_now();
                        }
                        out.set(out.get() - 1);
                        drop(item);
                    }
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(max_out.get(), CAP, "the pool was never fully used");
        pool.stats()
    });
    assert_eq!(stats.free, CAP);
    assert_eq!(stats.gets, 80);
    assert_eq!(stats.free_min, 0);
    assert!(
        stats.waits > 0,
        "8 tasks on 3 items never waited: {stats:?}"
    );
}

/// Items kept by the test, so it decides when each goes back.
type Held = Rc<RefCell<Vec<PoolItem<u32>>>>;

#[test]
fn low_watermark_is_a_reserve_only_get_reserve_may_take() {
    let events: Log<&str> = log();
    let e = events.clone();
    run(move || {
        let mut next = 0;
        let pool = Pool::with_watermarks(4, 2, 3, move || {
            next += 1;
            next
        });
        let a = pool.get();
        let b = pool.get();
        assert_eq!(pool.free(), 2);
        assert!(
            pool.try_get().is_none(),
            "ordinary get took from the reserve"
        );
        let c = pool.get_reserve();
        let d = pool.get_reserve();
        assert_eq!(pool.free(), 0);

        let held: Held = Rc::new(RefCell::new(Vec::new()));
        let (p, h, e1) = (pool.clone(), held.clone(), e.clone());
        let ordinary = spawn(move || {
            let item = p.get();
            h.borrow_mut().push(item);
            e1.borrow_mut().push("ordinary");
        })
        .unwrap();
        let (p, h, e2) = (pool.clone(), held.clone(), e.clone());
        let reserve = spawn(move || {
            let item = p.get_reserve();
            h.borrow_mut().push(item);
            e2.borrow_mut().push("reserve");
        })
        .unwrap();
        yield_now();
        assert_eq!(pool.stats().waits, 2);

        // One object back: the reserve taker gets it, the ordinary one may not.
        drop(a);
        yield_now();
        assert!(reserve.is_finished());
        assert!(!ordinary.is_finished());
        assert_eq!(pool.free(), 0);

        // Two back: at the reserve, still below `high`; the ordinary taker waits.
        drop(b);
        drop(c);
        yield_now();
        assert_eq!(pool.free(), 2);
        assert!(!ordinary.is_finished());
        // Three back: above the reserve and at `high`.
        drop(d);
        ordinary.join().unwrap();
        reserve.join().unwrap();
        assert_eq!(pool.free(), 2);
        held.borrow_mut().clear();
        let s = pool.stats();
        assert_eq!((s.free, s.gets, s.waits, s.free_min), (4, 6, 2, 0));
    });
    assert_eq!(*events.borrow(), ["reserve", "ordinary"]);
}

#[test]
fn high_watermark_releases_waiters_only_when_high_are_free() {
    run(|| {
        let pool = Pool::with_watermarks(4, 0, 3, || 0u32);
        let mut out: Vec<PoolItem<u32>> = (0..4).map(|_| pool.get()).collect();
        let held: Held = Rc::new(RefCell::new(Vec::new()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (p, h) = (pool.clone(), held.clone());
                spawn(move || {
                    let item = p.get();
                    h.borrow_mut().push(item);
                })
                .unwrap()
            })
            .collect();
        yield_now();
        for free in 1..3 {
            drop(out.pop());
            yield_now();
            assert_eq!(pool.free(), free);
            assert!(
                held.borrow().is_empty(),
                "a waiter was released with {free} free"
            );
            // A newcomer may not take while the pool refills either.
            assert!(pool.try_get().is_none(), "try_get barged with {free} free");
        }
        drop(out.pop()); // three free: `high`
        for h in waiters {
            h.join().unwrap();
        }
        assert_eq!(held.borrow().len(), 2);
        assert_eq!(pool.free(), 1);
        // Refilled: an ordinary get works again without waiting.
        let waits = pool.stats().waits;
        drop(pool.get());
        assert_eq!(pool.stats().waits, waits);
    });
}

/// A woken taker that finds the objects gone (another task took them first) and has
/// to wait again is an ordinary taker that had to wait: it is released only when
/// `high` objects are free, like on its first wait.
#[test]
fn taker_that_waits_again_still_waits_for_high() {
    run(|| {
        let pool = Pool::with_watermarks(2, 0, 2, || 0u32);
        let a = pool.get();
        let b = pool.get();
        let p = pool.clone();
        let taker = spawn(move || drop(p.get())).unwrap();
        yield_now(); // taker waits
        drop(a);
        drop(b); // two free: taker woken, but it has not run yet
        let c = pool.get();
        let d = pool.get();
        yield_now(); // taker runs, finds none, waits again
        assert!(!taker.is_finished());
        drop(c);
        yield_now();
        assert!(
            !taker.is_finished(),
            "taker released with 1 free, below the high watermark of 2"
        );
        drop(d);
        taker.join().unwrap();
        assert_eq!(pool.free(), 2);
    });
}

#[test]
fn plain_pool_releases_one_waiter_per_returned_object() {
    let order: Log<u32> = log();
    let o = order.clone();
    run(move || {
        let pool = Pool::new(2, || ());
        let mut out: Vec<_> = (0..2).map(|_| pool.get()).collect();
        let held = Rc::new(RefCell::new(Vec::new()));
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let (p, h, o) = (pool.clone(), held.clone(), o.clone());
                spawn(move || {
                    let item = p.get();
                    h.borrow_mut().push(item);
                    o.borrow_mut().push(t);
                })
                .unwrap()
            })
            .collect();
        yield_now();
        drop(out.pop());
        yield_now();
        assert_eq!(*o.borrow(), [0], "first waiter first, one per object");
        drop(out.pop());
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_eq!(*order.borrow(), [0, 1]);
}
