//! Cancelled tasks whose destructors park: a crashed node's task is unwound with a
//! `Cancelled` panic, and a destructor that waits during that unwind waits like any
//! other code, so the unwind reaches its end and std's per-thread panic count comes
//! back down. Each test runs on a thread of its own: the count is per thread, and a
//! run that left it raised would poison every later run on that thread.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use common::DropFlag;
use taskio::sim::{NodeId, Sim, SimConfig, SimHandle};
use taskio::{Rendez, sleep};

/// How long a `ParksOnDrop` waits in its destructor (virtual time).
const DROP_PARK: Duration = Duration::from_secs(1);
/// Longest a controller waits for what it expects (virtual time).
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Counts the calls of its destructor and the calls that got past its wait.
#[derive(Clone, Default)]
struct Drops {
    entered: Rc<Cell<u32>>,
    finished: Rc<Cell<u32>>,
}

/// Parks (sleeps `DROP_PARK`) in its destructor.
struct ParksOnDrop(Drops);

impl Drop for ParksOnDrop {
    fn drop(&mut self) {
        self.0.entered.set(self.0.entered.get() + 1);
        sleep(DROP_PARK);
        self.0.finished.set(self.0.finished.get() + 1);
    }
}

/// Runs `f` on a new thread and returns its value (a failed assertion fails the test).
fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Adds a node whose program holds a `ParksOnDrop` and waits for ever; `holding` is
/// set once it waits.
fn add_parking_node(h: &SimHandle, ip: &str, drops: &Drops, holding: &Rc<Cell<bool>>) -> NodeId {
    let (d, held) = (drops.clone(), holding.clone());
    h.add_node(ip, ip.parse().expect("ip"), move || {
        let _parks = ParksOnDrop(d.clone());
        held.set(true);
        Rendez::new().sleep();
        unreachable!("nobody wakes this Rendez");
    })
}

/// Adds a node whose program holds a plain destructor (sets `dropped`) and waits for
/// ever; `holding` is set once it waits.
fn add_flag_node(
    h: &SimHandle,
    ip: &str,
    dropped: &Rc<Cell<bool>>,
    holding: &Rc<Cell<bool>>,
) -> NodeId {
    let (out, held) = (dropped.clone(), holding.clone());
    h.add_node(ip, ip.parse().expect("ip"), move || {
        let _flag = DropFlag(out.clone());
        held.set(true);
        Rendez::new().sleep();
        unreachable!("nobody wakes this Rendez");
    })
}

/// One simulation: a node whose task's destructor parks is crashed; returns the
/// destructor's counts once the run is over.
fn crash_a_node_whose_destructor_parks(seed: u64) -> (u32, u32) {
    let drops = Drops::default();
    let d = drops.clone();
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.run(move |h| {
        let holding = Rc::new(Cell::new(false));
        let node = add_parking_node(h, "10.0.0.1", &d, &holding);
        assert!(h.run_until(WAIT_LIMIT, || holding.get()), "never held");
        h.crash(node);
        h.run_until(WAIT_LIMIT, || d.finished.get() == 1);
    })
    .expect("sim run");
    (drops.entered.get(), drops.finished.get())
}

#[test]
fn a_crashed_task_whose_destructor_parks_finishes_its_unwind() {
    let (entered, finished, panicking) = on_own_thread(|| {
        let (entered, finished) = crash_a_node_whose_destructor_parks(1);
        (entered, finished, std::thread::panicking())
    });
    assert_eq!(entered, 1, "the destructor ran once");
    assert_eq!(finished, 1, "the destructor's wait ended and it went on");
    assert!(!panicking, "the thread was left panicking after the run");
}

#[test]
fn a_second_simulation_on_the_thread_still_runs_a_crashed_tasks_destructors() {
    let dropped = on_own_thread(|| {
        crash_a_node_whose_destructor_parks(2);
        let dropped = Rc::new(Cell::new(false));
        let out = dropped.clone();
        let mut sim = Sim::new(SimConfig::new(3));
        sim.run(move |h| {
            let holding = Rc::new(Cell::new(false));
            let node = add_flag_node(h, "10.0.0.1", &out, &holding);
            assert!(h.run_until(WAIT_LIMIT, || holding.get()), "never held");
            h.crash(node);
            h.run_until(WAIT_LIMIT, || out.get());
        })
        .expect("second sim run");
        dropped.get()
    });
    assert!(
        dropped,
        "the second run's crashed task never ran its destructors"
    );
}

#[test]
fn a_std_mutex_held_across_such_a_run_is_not_poisoned() {
    let poisoned = on_own_thread(|| {
        let m = Mutex::new(0u32);
        let guard = m.lock().expect("fresh mutex");
        crash_a_node_whose_destructor_parks(4);
        // std poisons a mutex whose guard drops while the thread panics but was
        // taken while it did not.
        drop(guard);
        m.is_poisoned()
    });
    assert!(
        !poisoned,
        "the guard dropped after the run poisoned its mutex"
    );
}

#[test]
fn a_task_unwinding_from_its_own_panic_then_crashed_ends_without_abort() {
    let (entered, finished, ended, panicking) = on_own_thread(|| {
        let drops = Drops::default();
        let ended = Rc::new(Cell::new(false));
        let (d, e) = (drops.clone(), ended.clone());
        let mut sim = Sim::new(SimConfig::new(5));
        sim.run(move |h| {
            let d2 = d.clone();
            let node = h.add_node("panics", "10.0.0.1".parse().expect("ip"), move || {
                let _parks = ParksOnDrop(d2.clone());
                panic!("the node's own bug");
            });
            // The task panics at once and parks in its destructor while unwinding.
            assert!(
                h.run_until(WAIT_LIMIT, || d.entered.get() == 1),
                "the destructor never ran"
            );
            assert_eq!(d.finished.get(), 0, "the destructor did not park");
            h.crash(node);
            // A second unwind started in the parked destructor would abort here.
            h.run_until(WAIT_LIMIT, || d.finished.get() == 1);
            e.set(true);
        })
        .expect("sim run");
        (
            drops.entered.get(),
            drops.finished.get(),
            ended.get(),
            std::thread::panicking(),
        )
    });
    assert!(ended);
    assert_eq!(entered, 1);
    assert_eq!(finished, 1, "the own panic's unwind did not finish");
    assert!(!panicking, "the thread was left panicking after the run");
}

#[test]
fn a_cancelled_task_runs_its_destructors_while_another_is_parked_mid_unwind() {
    let (during, parked_then, finished, panicking) = on_own_thread(|| {
        let drops = Drops::default();
        let dropped = Rc::new(Cell::new(false));
        let seen = Rc::new(Cell::new((false, 0u32)));
        let (d, out, s) = (drops.clone(), dropped.clone(), seen.clone());
        let mut sim = Sim::new(SimConfig::new(6));
        sim.run(move |h| {
            let (held_a, held_b) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
            let a = add_parking_node(h, "10.0.0.1", &d, &held_a);
            let b = add_flag_node(h, "10.0.0.2", &out, &held_b);
            assert!(h.run_until(WAIT_LIMIT, || held_a.get() && held_b.get()));
            h.crash(a);
            // a's task is now parked in its destructor, mid-unwind.
            assert!(h.run_until(WAIT_LIMIT, || d.entered.get() == 1));
            assert_eq!(d.finished.get(), 0, "a's destructor did not park");
            h.crash(b);
            sleep(Duration::from_millis(1));
            s.set((out.get(), d.finished.get()));
            h.run_until(WAIT_LIMIT, || d.finished.get() == 1);
        })
        .expect("sim run");
        let (during, parked_then) = seen.get();
        (
            during,
            parked_then,
            drops.finished.get(),
            std::thread::panicking(),
        )
    });
    assert_eq!(parked_then, 0, "a's destructor was no longer parked");
    assert!(
        during,
        "b's destructors did not run while a was parked mid-unwind"
    );
    assert_eq!(finished, 1, "a's unwind did not finish");
    assert!(!panicking);
}

#[test]
fn a_task_that_parked_during_anothers_unwind_is_cancelled_once_it_ends() {
    let (dropped, finished, panicking) = on_own_thread(|| {
        let drops = Drops::default();
        let dropped = Rc::new(Cell::new(false));
        let (d, out) = (drops.clone(), dropped.clone());
        let mut sim = Sim::new(SimConfig::new(7));
        sim.run(move |h| {
            let held_a = Rc::new(Cell::new(false));
            let a = add_parking_node(h, "10.0.0.1", &d, &held_a);
            assert!(h.run_until(WAIT_LIMIT, || held_a.get()));
            h.crash(a);
            assert!(h.run_until(WAIT_LIMIT, || d.entered.get() == 1));
            // b's task parks while a's unwind is in progress on the thread: the
            // runtime cannot tell it from a task parked in its own unwind, so its
            // cancel waits until no unwind is in progress.
            let held_b = Rc::new(Cell::new(false));
            let b = add_flag_node(h, "10.0.0.2", &out, &held_b);
            assert!(h.run_until(WAIT_LIMIT, || held_b.get()));
            assert_eq!(
                d.finished.get(),
                0,
                "a's destructor did not park long enough"
            );
            h.crash(b);
            h.run_until(WAIT_LIMIT, || out.get() && d.finished.get() == 1);
        })
        .expect("sim run");
        (
            dropped.get(),
            drops.finished.get(),
            std::thread::panicking(),
        )
    });
    assert_eq!(finished, 1, "a's unwind did not finish");
    assert!(dropped, "b's destructors never ran");
    assert!(!panicking);
}

/// Waits for ever in its destructor: teardown abandons its task mid-unwind.
struct WaitsForeverOnDrop;

impl Drop for WaitsForeverOnDrop {
    fn drop(&mut self) {
        Rendez::new().sleep();
        unreachable!("nobody wakes this Rendez");
    }
}

#[test]
fn after_a_run_that_left_the_thread_panicking_a_crashed_nodes_tasks_still_end() {
    let (left_panicking, second, dropped) = on_own_thread(|| {
        // A system task stuck in a destructor at teardown is abandoned mid-unwind:
        // std's count of this thread stays raised for good.
        taskio::Runtime::new()
            .run(|| {
                taskio::Builder::new()
                    .system(true)
                    .spawn(|| {
                        let _stuck = WaitsForeverOnDrop;
                        Rendez::new().sleep();
                    })
                    .expect("spawn");
                taskio::yield_now();
            })
            .expect("first run");
        let left_panicking = std::thread::panicking();
        // `panicking()` now tells nothing about the tasks of a run on this thread:
        // a crashed node's task is still ended (abandoned, as it cannot be told
        // from one unwinding from its own panic), not left parked for ever.
        let dropped = Rc::new(Cell::new(false));
        let out = dropped.clone();
        let mut sim = Sim::new(SimConfig::new(9));
        let second = sim.run(move |h| {
            let holding = Rc::new(Cell::new(false));
            let node = add_flag_node(h, "10.0.0.1", &out, &holding);
            assert!(h.run_until(WAIT_LIMIT, || holding.get()), "never held");
            h.crash(node);
        });
        (
            left_panicking,
            second.map_err(|e| e.to_string()),
            dropped.get(),
        )
    });
    assert!(
        left_panicking,
        "the first run did not abandon a task mid-unwind"
    );
    assert_eq!(second, Ok(()), "the crashed node's task did not end");
    assert!(!dropped, "an abandoned task's destructors ran");
}

/// Yields a few times in its destructor, then records that it went on.
struct YieldsOnDrop(Rc<Cell<bool>>);

/// How many times a `YieldsOnDrop` yields.
const DROP_YIELDS: u32 = 3;

impl Drop for YieldsOnDrop {
    fn drop(&mut self) {
        for _ in 0..DROP_YIELDS {
            taskio::yield_now();
        }
        self.0.set(true);
    }
}

#[test]
fn teardown_finishes_the_unwind_of_a_system_task_whose_destructor_yields() {
    let (finished, panicking) = on_own_thread(|| {
        let finished = Rc::new(Cell::new(false));
        let f = finished.clone();
        taskio::Runtime::new()
            .run(move || {
                taskio::Builder::new()
                    .system(true)
                    .spawn(move || {
                        let _yields = YieldsOnDrop(f);
                        Rendez::new().sleep();
                    })
                    .expect("spawn");
                // Let it park; then main ends and teardown unwinds it.
                taskio::yield_now();
            })
            .expect("run");
        (finished.get(), std::thread::panicking())
    });
    assert!(finished, "the destructor was abandoned at a yield");
    assert!(!panicking, "the thread was left panicking after the run");
}

#[test]
fn teardown_lets_a_system_task_finish_the_unwind_of_its_own_panic() {
    let (finished, panicking) = on_own_thread(|| {
        let finished = Rc::new(Cell::new(false));
        let f = finished.clone();
        taskio::Runtime::new()
            .run(move || {
                taskio::Builder::new()
                    .system(true)
                    .spawn(move || {
                        let _yields = YieldsOnDrop(f);
                        panic!("the system task's own bug");
                    })
                    .expect("spawn");
                // Let it panic and yield in its destructor; then main ends and
                // teardown resumes it mid-unwind, where a `Cancelled` unwind would
                // abort the process.
                taskio::yield_now();
            })
            .expect("run");
        (finished.get(), std::thread::panicking())
    });
    assert!(finished, "the destructor was abandoned at a yield");
    assert!(!panicking, "the thread was left panicking after the run");
}

/// Code that catches panics can tell the runtime's teardown unwind from a panic
/// (`is_cancellation`), and must resume it: rpc's handlers do.
#[test]
fn a_caught_teardown_unwind_is_a_cancellation_and_a_panic_is_not() {
    let (seen, panicking) = on_own_thread(|| {
        let seen = Rc::new(Cell::new((false, false)));
        let s = seen.clone();
        taskio::Runtime::new()
            .run(move || {
                let panicked = std::panic::catch_unwind(|| panic!("a bug (expected by the test)"))
                    .expect_err("it panicked");
                let s2 = s.clone();
                taskio::Builder::new()
                    .system(true)
                    .spawn(move || {
                        let caught = std::panic::catch_unwind(|| Rendez::new().sleep())
                            .expect_err("torn down");
                        s2.set((taskio::is_cancellation(&*caught), s2.get().1));
                        std::panic::resume_unwind(caught);
                    })
                    .expect("spawn");
                s.set((false, taskio::is_cancellation(&*panicked)));
                // Let it park; then main ends and teardown unwinds it.
                taskio::yield_now();
            })
            .expect("run");
        (seen.get(), std::thread::panicking())
    });
    assert_eq!(
        seen,
        (true, false),
        "(teardown caught as cancellation, panic as cancellation)"
    );
    assert!(!panicking, "the thread was left panicking after the run");
}
