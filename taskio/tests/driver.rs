//! The `Driver` seam: the scheduler reads time from the driver and parks in it only
//! when nothing is ready; I/O in flight is polled once per round so busy tasks cannot
//! starve it; a driver error ends the run with `RunError::Driver`; a task waiting on
//! I/O with none in flight is a deadlock. Uses a virtual clock and a fake I/O driver.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use common::{Log, log};
use taskio::{
    Builder, Config, Driver, Instant, RunError, Runtime, TaskRef, WaitReason, park, sleep, spawn,
    yield_now,
};

/// Virtual time: parking jumps the clock straight to the deadline.
struct VirtualClock {
    now_ns: Rc<Cell<u64>>,
    parks: Rc<Cell<u32>>,
}

impl Driver for VirtualClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now_ns.get())
    }

    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let deadline = deadline.expect("no I/O in flight: the scheduler must pass a deadline");
        self.parks.set(self.parks.get() + 1);
        self.now_ns.set(self.now_ns.get().max(deadline.as_nanos()));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        0
    }
}

const START_NS: u64 = 1_000_000_000;
const HOUR_NS: u64 = 3600 * 1_000_000_000;

fn virtual_runtime() -> (Runtime, Rc<Cell<u64>>, Rc<Cell<u32>>) {
    let now_ns = Rc::new(Cell::new(START_NS));
    let parks = Rc::new(Cell::new(0));
    let driver = VirtualClock {
        now_ns: now_ns.clone(),
        parks: parks.clone(),
    };
    let rt = Runtime::with_driver(Config::default(), Box::new(driver));
    (rt, now_ns, parks)
}

#[test]
fn sleeps_run_on_the_drivers_clock() {
    let (mut rt, now_ns, parks) = virtual_runtime();
    let woke: Log<(u64, u64)> = log();
    let (w, n) = (woke.clone(), now_ns.clone());
    let wall = std::time::Instant::now();
    rt.run(move || {
        let hours = [3u64, 1, 2];
        let hs: Vec<_> = hours
            .into_iter()
            .map(|h| {
                let (w, n) = (w.clone(), n.clone());
                spawn(move || {
                    sleep(Duration::from_secs(h * 3600));
                    w.borrow_mut().push((h, n.get()));
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    })
    .unwrap();
    assert!(
        wall.elapsed() < Duration::from_secs(5),
        "slept in real time"
    );
    // Each sleeper wakes in deadline order, exactly at its deadline.
    let want: Vec<(u64, u64)> = [1, 2, 3]
        .into_iter()
        .map(|h| (h, START_NS + h * HOUR_NS))
        .collect();
    assert_eq!(*woke.borrow(), want);
    // The scheduler parked once per distinct deadline and the clock ends on the last.
    assert_eq!(parks.get(), 3);
    assert_eq!(now_ns.get(), START_NS + 3 * HOUR_NS);
}

#[test]
fn sleep_until_on_a_virtual_clock_wakes_exactly_at_the_deadline() {
    let (mut rt, now_ns, _) = virtual_runtime();
    let n = now_ns.clone();
    rt.run(move || {
        let deadline = Instant::from_nanos(START_NS + 5_000);
        taskio::sleep_until(deadline);
        assert_eq!(n.get(), START_NS + 5_000);
        sleep(Duration::from_nanos(250));
        assert_eq!(n.get(), START_NS + 5_250);
    })
    .unwrap();
}

/// Fake asynchronous I/O: a task submits an operation by handing its `TaskRef` to the
/// driver and parking; the driver completes one operation per `park`.
#[derive(Default)]
struct FakeIoState {
    pending: VecDeque<(TaskRef, u32)>,
    done: Vec<u32>,
    /// `park` calls with a deadline in the past (non-blocking polls).
    polls: u32,
    /// `park` calls that may block.
    blocking_parks: u32,
}

struct FakeIo(Rc<RefCell<FakeIoState>>);

impl Driver for FakeIo {
    fn now(&self) -> Instant {
        Instant::monotonic()
    }

    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let mut s = self.0.borrow_mut();
        if deadline.is_some_and(|d| d <= Instant::monotonic()) {
            s.polls += 1;
        } else {
            s.blocking_parks += 1;
        }
        if let Some((task, op)) = s.pending.pop_front() {
            s.done.push(op);
            drop(s);
            assert!(task.wake(), "I/O completion found its task not waiting");
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.0.borrow().pending.len()
    }
}

/// Submits operation `op` to the fake driver and waits for its completion.
fn fake_io(state: &Rc<RefCell<FakeIoState>>, op: u32) {
    state
        .borrow_mut()
        .pending
        .push_back((TaskRef::current(), op));
    park(WaitReason::Io("fake op"));
    assert!(
        state.borrow().done.contains(&op),
        "woken before op {op} completed"
    );
}

#[test]
fn scheduler_parks_in_the_driver_while_io_is_in_flight() {
    let state = Rc::new(RefCell::new(FakeIoState::default()));
    let mut rt = Runtime::with_driver(Config::default(), Box::new(FakeIo(state.clone())));
    let s = state.clone();
    let v = rt
        .run(move || {
            let hs: Vec<_> = (0..3)
                .map(|i| {
                    let s = s.clone();
                    spawn(move || fake_io(&s, i)).unwrap()
                })
                .collect();
            fake_io(&s, 99);
            for h in hs {
                h.join().unwrap();
            }
            "all I/O done"
        })
        .unwrap();
    assert_eq!(v, "all I/O done");
    let s = state.borrow();
    assert!(s.pending.is_empty());
    // Submitted in the order the tasks ran: main first, then the three.
    assert_eq!(s.done, [99, 0, 1, 2]);
}

#[test]
fn busy_tasks_do_not_starve_io() {
    let state = Rc::new(RefCell::new(FakeIoState::default()));
    let mut rt = Runtime::with_driver(Config::default(), Box::new(FakeIo(state.clone())));
    let s = state.clone();
    let yields = rt
        .run(move || {
            let done = Rc::new(Cell::new(false));
            let (s2, d) = (s.clone(), done.clone());
            let io_task = spawn(move || {
                fake_io(&s2, 1);
                d.set(true);
            })
            .unwrap();
            // main is always ready: the scheduler never runs out of work, so only the
            // per-round poll can complete the I/O.
            let mut yields = 0u32;
            while !done.get() {
                yield_now();
                yields += 1;
                assert!(yields < 100_000, "I/O never polled while tasks were busy");
            }
            io_task.join().unwrap();
            yields
        })
        .unwrap();
    assert!(yields >= 1);
    let s = state.borrow();
    assert!(s.polls >= 1, "completed without a non-blocking poll");
    assert_eq!(s.blocking_parks, 0, "parked with a task ready");
}

/// A driver that claims I/O is in flight and fails when asked to wait for it.
struct FailingDriver;

impl Driver for FailingDriver {
    fn now(&self) -> Instant {
        Instant::monotonic()
    }
    fn park(&mut self, _deadline: Option<Instant>) -> io::Result<()> {
        Err(io::Error::other("disk on fire"))
    }
    fn in_flight(&self) -> usize {
        1
    }
}

#[test]
fn driver_error_ends_the_run() {
    let mut rt = Runtime::with_driver(Config::default(), Box::new(FailingDriver));
    let (dropped, guard) = common::drop_flag();
    let err = rt
        .run(move || {
            let _guard = guard;
            park(WaitReason::Io("read"));
        })
        .unwrap_err();
    let RunError::Driver(e) = &err else {
        panic!("expected RunError::Driver, got {err:?}");
    };
    assert_eq!(e.to_string(), "disk on fire");
    assert_eq!(err.to_string(), "driver park failed: disk on fire");
    assert!(dropped.get(), "the parked task was not unwound");
    assert_eq!(rt.stats().tasks_live, 0);
}

#[test]
fn waiting_on_io_with_none_in_flight_is_a_deadlock() {
    let state = Rc::new(RefCell::new(FakeIoState::default()));
    let mut rt = Runtime::with_driver(Config::default(), Box::new(FakeIo(state)));
    let err = rt
        .run(|| {
            Builder::new()
                .name("reader")
                .spawn(|| park(WaitReason::Io("aio read")))
                .unwrap();
        })
        .unwrap_err();
    let text = err.to_string();
    let RunError::Deadlock { tasks } = err else {
        panic!("expected a deadlock, got {err:?}");
    };
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].name, "reader");
    assert_eq!(tasks[0].waiting_on, WaitReason::Io("aio read"));
    assert!(text.contains("I/O aio read"), "{text}");
}
