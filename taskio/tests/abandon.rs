//! A task abandoned while holding locks: when a destructor blocks while the runtime
//! tears a task down and nothing can wake it (the run deadlocked, or only system
//! tasks are left), the task's remaining frames never run, so the guards in them
//! never drop. The locks those guards hold are released for the task, not leaked into
//! a later deadlock. A crashed node's task whose destructor waits is not abandoned.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use taskio::sim::{Sim, SimConfig};
use taskio::{Builder, QLock, Rendez, Runtime, RwLock, sleep, yield_now};

/// Blocks in its destructor, which makes teardown abandon the task being unwound
/// (the rest of its frames never run).
struct BlocksOnDrop(Rc<Cell<u32>>);

impl Drop for BlocksOnDrop {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
        sleep(Duration::from_millis(1));
        // Never reached when teardown abandons the task at the sleep.
        self.0.set(self.0.get() + 100);
    }
}

struct Locks {
    q: QLock<u32>,
    read: RwLock<u32>,
    write: RwLock<u32>,
}

fn locks() -> Rc<Locks> {
    Rc::new(Locks {
        q: QLock::new(0),
        read: RwLock::new(0),
        write: RwLock::new(0),
    })
}

/// Takes every lock, then a value that blocks in its destructor, then parks for
/// ever: unwinding it drops `BlocksOnDrop` first (declared last), which blocks.
fn hold_all_and_park(l: &Locks, drops: Rc<Cell<u32>>, holding: &Cell<bool>) {
    let _q = l.q.lock();
    let _r1 = l.read.read();
    let _r2 = l.read.read();
    let _w = l.write.write();
    let _blocker = BlocksOnDrop(drops);
    holding.set(true);
    Rendez::new().sleep();
    unreachable!("nobody wakes this Rendez");
}

fn assert_all_free(l: &Locks) {
    assert!(!l.q.is_locked(), "the QLock stayed locked");
    assert_eq!(l.read.readers(), 0, "read holds stayed taken");
    assert!(!l.write.is_write_locked(), "the write hold stayed taken");
}

#[test]
fn teardown_releases_the_locks_of_a_task_it_abandons() {
    let mut rt = Runtime::new();
    let l = locks();
    let drops = Rc::new(Cell::new(0));
    let holding = Rc::new(Cell::new(false));
    let (l2, d2, h2) = (l.clone(), drops.clone(), holding.clone());
    rt.run(move || {
        Builder::new()
            .name("holder")
            .system(true)
            .spawn(move || hold_all_and_park(&l2, d2, &h2))
            .expect("spawn holder");
        // Let the holder take its locks; then main ends and teardown unwinds it.
        while !holding.get() {
            yield_now();
        }
    })
    .expect("first run");
    assert_eq!(
        drops.get(),
        1,
        "the destructor blocked once and was abandoned"
    );
    assert_all_free(&l);
    // A later run takes every lock again instead of deadlocking.
    let l3 = l.clone();
    let v = rt
        .run(move || {
            *l3.q.lock() += 1;
            *l3.write.write() += 1;
            (*l3.q.lock(), *l3.write.read(), *l3.read.read())
        })
        .expect("second run");
    assert_eq!(v, (1, 1, 0));
}

#[test]
fn a_crashed_nodes_task_whose_destructor_waits_is_not_abandoned() {
    let mut sim = Sim::new(SimConfig::new(7));
    let l = locks();
    let drops = Rc::new(Cell::new(0));
    let holding = Rc::new(Cell::new(false));
    let (l2, d2, h2) = (l.clone(), drops.clone(), holding.clone());
    let got = sim
        .run(move |h| {
            let node = h.add_node("holder", "10.0.0.1".parse().expect("ip"), move || {
                hold_all_and_park(&l2, d2.clone(), &h2)
            });
            assert!(h.run_until(Duration::from_secs(1), || holding.get()));
            h.crash(node);
            // The unwinding task waits in its destructor (a 1 ms sleep) like any
            // task, then its unwind goes on and its guards release the locks.
            h.run_until(Duration::from_secs(1), || all_free(&l))
        })
        .expect("sim run");
    assert!(got, "the crashed node's locks were never released");
    assert_eq!(
        drops.get(),
        101,
        "the destructor's wait did not end normally"
    );
}

/// Waits for ever in its destructor: nothing can end its task's unwind.
struct WaitsForeverOnDrop;

impl Drop for WaitsForeverOnDrop {
    fn drop(&mut self) {
        Rendez::new().sleep();
        unreachable!("nobody wakes this Rendez");
    }
}

#[test]
fn a_crashed_nodes_task_stuck_in_its_destructor_is_named_then_abandoned_with_its_locks() {
    // Abandoning a task mid-unwind leaves std's panic count of its thread raised:
    // keep that to a thread of its own.
    let (err, freed) = std::thread::spawn(|| {
        let mut sim = Sim::new(SimConfig::new(8));
        let l = locks();
        let l2 = l.clone();
        let err = sim
            .run(move |h| {
                let l3 = l2.clone();
                let node = h.add_node("stuck", "10.0.0.1".parse().expect("ip"), move || {
                    let _q = l3.q.lock();
                    let _w = l3.write.write();
                    let _stuck = WaitsForeverOnDrop;
                    Rendez::new().sleep();
                    unreachable!("nobody wakes this Rendez");
                });
                assert!(h.run_until(Duration::from_secs(1), || l2.q.is_locked()));
                h.crash(node);
            })
            .expect_err("the run ended with a task stuck mid-unwind");
        (err.to_string(), all_free(&l))
    })
    .join()
    .expect("test thread");
    assert!(
        err.contains("stuck") && err.contains("Rendez"),
        "the deadlock report does not name the stuck task and its wait: {err}"
    );
    assert!(freed, "the abandoned task's locks stayed taken");
}

fn all_free(l: &Locks) -> bool {
    !l.q.is_locked() && l.read.readers() == 0 && !l.write.is_write_locked()
}
