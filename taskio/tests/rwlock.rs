//! `RwLock`: many readers at once, a writer alone, arrival-order queueing so a writer
//! is not starved by readers that come after it, batches of queued readers admitted
//! together, `try_read` / `try_write`.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{Log, log, run};
use taskio::{RwLock, spawn, yield_now};

#[test]
fn many_readers_hold_the_lock_at_once() {
    let max = run(|| {
        let lock = Rc::new(RwLock::new(3u32));
        let active = Rc::new(Cell::new(0usize));
        let max = Rc::new(Cell::new(0usize));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (lock, active, max) = (lock.clone(), active.clone(), max.clone());
                spawn(move || {
                    let g = lock.read();
                    active.set(active.get() + 1);
                    max.set(max.get().max(active.get()));
                    assert_eq!(lock.readers(), active.get());
                    for _ in 0..3 {
                        yield_now();
                    }
                    assert_eq!(*g, 3);
                    active.set(active.get() - 1);
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(lock.readers(), 0);
        max.get()
    });
    assert_eq!(max, 4, "readers did not share the lock");
}

#[test]
fn writer_is_exclusive_and_readers_see_consistent_data() {
    run(|| {
        // Writers keep both fields equal; a reader seeing them differ saw a half write.
        let lock = Rc::new(RwLock::new((0u32, 0u32)));
        let writing = Rc::new(Cell::new(false));
        let mut hs = Vec::new();
        for t in 0..6u32 {
            let (lock, writing) = (lock.clone(), writing.clone());
            hs.push(
                spawn(move || {
                    for i in 0..8 {
                        if (t + i) % 3 == 0 {
                            let mut g = lock.write();
                            assert!(!writing.get(), "two writers");
                            assert_eq!(lock.readers(), 0, "writer with readers");
                            assert!(lock.is_write_locked());
                            writing.set(true);
                            g.0 += 1;
                            yield_now();
                            g.1 += 1;
                            writing.set(false);
                        } else {
                            let g = lock.read();
                            assert!(!writing.get(), "reader with a writer");
                            yield_now();
                            assert_eq!(g.0, g.1, "reader saw a half-done write");
                        }
                        yield_now();
                    }
                })
                .unwrap(),
            );
        }
        for h in hs {
            h.join().unwrap();
        }
        let writes = (0..6u32)
            .flat_map(|t| (0..8).map(move |i| (t + i) % 3 == 0))
            .filter(|&w| w)
            .count() as u32;
        assert_eq!(*lock.read(), (writes, writes));
    });
}

#[test]
fn queued_writer_goes_before_later_readers() {
    let order: Log<&str> = log();
    let o = order.clone();
    run(move || {
        let lock = Rc::new(RwLock::new(()));
        let first_read = lock.read();

        let (l, o1) = (lock.clone(), o.clone());
        let writer = spawn(move || {
            let _g = l.write();
            o1.borrow_mut().push("writer");
            yield_now();
        })
        .unwrap();
        yield_now(); // the writer queues behind the reader

        // A reader arriving now must queue behind the writer, not join the readers.
        assert!(
            lock.try_read().is_none(),
            "try_read overtook a queued writer"
        );
        let (l, o2) = (lock.clone(), o.clone());
        let late_reader = spawn(move || {
            let _g = l.read();
            o2.borrow_mut().push("late reader");
        })
        .unwrap();
        yield_now();
        assert!(o.borrow().is_empty());

        drop(first_read);
        writer.join().unwrap();
        late_reader.join().unwrap();
    });
    assert_eq!(*order.borrow(), ["writer", "late reader"]);
}

#[test]
fn release_admits_queued_readers_up_to_the_next_writer() {
    let order: Log<String> = log();
    let o = order.clone();
    run(move || {
        let lock = Rc::new(RwLock::new(()));
        let w = lock.write();
        let inside = Rc::new(Cell::new(0usize));
        let mut hs = Vec::new();
        // Queue: r0 r1 W2 r3 r4
        for (i, write) in [false, false, true, false, false].into_iter().enumerate() {
            let (lock, o, inside) = (lock.clone(), o.clone(), inside.clone());
            hs.push(
                spawn(move || {
                    if write {
                        let _g = lock.write();
                        o.borrow_mut().push(format!("w{i}:{}", inside.get()));
                        yield_now();
                    } else {
                        let _g = lock.read();
                        inside.set(inside.get() + 1);
                        yield_now();
                        // Who else was reading alongside.
                        o.borrow_mut().push(format!("r{i}:{}", inside.get()));
                        yield_now();
                        inside.set(inside.get() - 1);
                    }
                })
                .unwrap(),
            );
            yield_now(); // queue in this order
        }
        assert_eq!(lock.readers(), 0);
        drop(w);
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_eq!(*order.borrow(), ["r0:2", "r1:2", "w2:0", "r3:2", "r4:2"]);
}

#[test]
fn try_read_and_try_write() {
    run(|| {
        let lock = RwLock::new(1);
        let r1 = lock.try_read().expect("free lock");
        let r2 = lock.try_read().expect("readers share");
        assert_eq!(lock.readers(), 2);
        assert!(lock.try_write().is_none());
        drop((r1, r2));
        let mut w = lock.try_write().expect("free lock");
        *w += 1;
        assert!(lock.try_read().is_none());
        assert!(lock.try_write().is_none());
        drop(w);
        assert!(!lock.is_write_locked());
        assert_eq!(*lock.read(), 2);
        let d: RwLock<u8> = RwLock::default();
        assert_eq!(*d.read(), 0);
    });
}
