//! A task abandoned while holding locks: when a destructor blocks while the runtime
//! unwinds a task (its simulated node crashed, or the runtime tears it down), the
//! task's remaining frames never run, so the guards in them never drop. The locks
//! those guards hold are released for the task, not leaked into a later deadlock.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use taskio::sim::{Sim, SimConfig};
use taskio::{Builder, QLock, Rendez, Runtime, RwLock, sleep, yield_now};

/// Blocks in its destructor, which makes the runtime abandon the task being
/// unwound (the rest of its frames never run).
struct BlocksOnDrop(Rc<Cell<u32>>);

impl Drop for BlocksOnDrop {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
        sleep(Duration::from_millis(1));
        // Never reached when the task is abandoned at the sleep.
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
fn a_crashed_nodes_abandoned_task_releases_locks_shared_with_other_nodes() {
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
            // The unwinding task blocks in its destructor (a 1 ms sleep), is resumed
            // cancelled, and is abandoned then: its locks come back.
            h.run_until(Duration::from_secs(1), || all_free(&l))
        })
        .expect("sim run");
    assert!(got, "the crashed node's locks were never released");
    assert_eq!(drops.get(), 1);
}

fn all_free(l: &Locks) -> bool {
    !l.q.is_locked() && l.read.readers() == 0 && !l.write.is_write_locked()
}
