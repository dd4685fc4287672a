//! Deadlock detection: when tasks wait and no ready task, timer or I/O can wake them,
//! `run` returns `RunError::Deadlock` naming every stuck task and what it waits on,
//! after unwinding them all (their destructors run), and the runtime stays usable.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::drop_flag;
use taskio::{
    Barrier, Builder, Channel, DeadlockTask, Pool, QLock, Rendez, RunError, Runtime, RwLock,
    TaskId, WaitReason, select, sleep, spawn, yield_now,
};

/// Runs `main` and returns the deadlock report; any other outcome fails the test.
fn deadlock<T: std::fmt::Debug + 'static>(
    rt: &mut Runtime,
    main: impl FnOnce() -> T + 'static,
) -> (Vec<DeadlockTask>, String) {
    match rt.run(main) {
        Err(e @ RunError::Deadlock { .. }) => {
            let text = e.to_string();
            let RunError::Deadlock { tasks } = e else {
                unreachable!()
            };
            (tasks, text)
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
}

#[test]
fn task_waiting_on_a_rendez_nobody_wakes() {
    let (dropped, guard) = drop_flag();
    let stuck_id = Rc::new(Cell::new(TaskId(0)));
    let s = stuck_id.clone();
    let mut rt = Runtime::new();
    let (tasks, text) = deadlock(&mut rt, move || {
        let h = Builder::new()
            .name("stuck")
            .spawn(move || {
                let _guard = guard;
                Rendez::new().sleep();
            })
            .unwrap();
        s.set(h.id());
        // main ends; the stuck task alone keeps the run going.
    });
    assert_eq!(
        tasks,
        [DeadlockTask {
            id: stuck_id.get(),
            name: "stuck".into(),
            waiting_on: WaitReason::Rendez,
            system: false,
        }]
    );
    assert!(text.contains("stuck"), "{text}");
    assert!(text.contains("Rendez::sleep"), "{text}");
    assert!(text.contains("1 task(s)"), "{text}");
    assert!(
        dropped.get(),
        "the stuck task was not unwound after the deadlock"
    );
    assert_eq!(rt.stats().tasks_live, 0);
    assert_eq!(rt.stats().timers_armed, 0);
}

#[test]
fn two_tasks_each_waiting_on_the_others_channel_and_main_joining() {
    let mut rt = Runtime::new();
    let ids = Rc::new(Cell::new((TaskId(0), TaskId(0))));
    let i = ids.clone();
    let (tasks, text) = deadlock(&mut rt, move || {
        let to_a = Rc::new(Channel::<u32>::new(1));
        let to_b = Rc::new(Channel::<u32>::new(1));
        let (ra, sb) = (to_a.clone(), to_b.clone());
        let a = Builder::new()
            .name("alice")
            .spawn(move || {
                let v = ra.recv().unwrap();
                sb.send(v).unwrap();
            })
            .unwrap();
        let (rb, sa) = (to_b.clone(), to_a.clone());
        let b = Builder::new()
            .name("bob")
            .spawn(move || {
                let v = rb.recv().unwrap();
                sa.send(v).unwrap();
            })
            .unwrap();
        i.set((a.id(), b.id()));
        a.join().unwrap();
        b.join().unwrap();
    });
    let (a, b) = ids.get();
    let got: Vec<(&str, WaitReason)> = tasks
        .iter()
        .map(|t| (t.name.as_str(), t.waiting_on))
        .collect();
    assert_eq!(
        got,
        [
            ("main", WaitReason::Join(a)),
            ("alice", WaitReason::ChannelRecv),
            ("bob", WaitReason::ChannelRecv),
        ]
    );
    assert_eq!(tasks[1].id, a);
    assert_eq!(tasks[2].id, b);
    for name in ["main", "alice", "bob", "Channel::recv", "join of task"] {
        assert!(text.contains(name), "{name:?} missing from {text}");
    }
    assert!(text.contains("3 task(s)"), "{text}");
}

#[test]
fn main_joining_a_blocked_task() {
    let mut rt = Runtime::new();
    let id = Rc::new(Cell::new(TaskId(0)));
    let i = id.clone();
    let (tasks, text) = deadlock(&mut rt, move || {
        let h = Builder::new()
            .name("sleeper")
            .spawn(|| Rendez::new().sleep())
            .unwrap();
        i.set(h.id());
        h.join().unwrap();
    });
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].name, "main");
    assert_eq!(tasks[0].waiting_on, WaitReason::Join(id.get()));
    assert_eq!(tasks[1].name, "sleeper");
    assert_eq!(tasks[1].waiting_on, WaitReason::Rendez);
    assert!(
        text.contains(&format!("join of task {}", id.get())),
        "{text}"
    );
}

#[test]
fn blocked_system_tasks_are_listed_as_system() {
    let mut rt = Runtime::new();
    let (tasks, text) = deadlock(&mut rt, || {
        Builder::new()
            .name("daemon")
            .system(true)
            .spawn(|| Rendez::new().sleep())
            .unwrap();
        Builder::new()
            .name("user")
            .spawn(|| Rendez::new().sleep())
            .unwrap();
    });
    let got: Vec<(&str, bool)> = tasks.iter().map(|t| (t.name.as_str(), t.system)).collect();
    assert_eq!(got, [("daemon", true), ("user", false)]);
    assert!(
        text.contains("\"daemon\" waits on Rendez::sleep (system)"),
        "{text}"
    );
}

/// Each primitive names itself in the report when it is what a task is stuck on.
#[test]
fn every_primitive_reports_its_wait_reason() {
    type Setup = fn();
    let cases: [(WaitReason, Setup); 8] = [
        (WaitReason::QLock, || {
            let l = Rc::new(QLock::new(()));
            let g = l.lock();
            let l2 = l.clone();
            spawn(move || drop(l2.lock())).unwrap();
            yield_now();
            Rendez::new().sleep();
            drop(g);
        }),
        (WaitReason::RwLockRead, || {
            let l = Rc::new(RwLock::new(()));
            let g = l.write();
            let l2 = l.clone();
            spawn(move || drop(l2.read())).unwrap();
            yield_now();
            Rendez::new().sleep();
            drop(g);
        }),
        (WaitReason::RwLockWrite, || {
            let l = Rc::new(RwLock::new(()));
            let g = l.read();
            let l2 = l.clone();
            spawn(move || drop(l2.write())).unwrap();
            yield_now();
            Rendez::new().sleep();
            drop(g);
        }),
        (WaitReason::ChannelSend, || {
            let c = Rc::new(Channel::new(1));
            c.send(1).unwrap();
            spawn(move || c.send(2).unwrap()).unwrap();
            yield_now();
            Rendez::new().sleep();
        }),
        (WaitReason::ChannelRecv, || {
            let c = Rc::new(Channel::<u8>::new(1));
            spawn(move || c.recv().unwrap()).unwrap();
            yield_now();
            Rendez::new().sleep();
        }),
        (WaitReason::Select, || {
            let a = Rc::new(Channel::<u8>::new(1));
            let b = Rc::new(Channel::<u8>::new(1));
            spawn(move || select(&[&a.recv_ready(), &b.recv_ready()])).unwrap();
            yield_now();
            Rendez::new().sleep();
        }),
        (WaitReason::Barrier, || {
            let b = Rc::new(Barrier::new(2));
            spawn(move || b.wait()).unwrap();
            yield_now();
            Rendez::new().sleep();
        }),
        (WaitReason::Pool, || {
            let p = Pool::new(1, || ());
            let item = p.get();
            spawn(move || drop(p.get())).unwrap();
            yield_now();
            Rendez::new().sleep();
            drop(item);
        }),
    ];
    let mut rt = Runtime::new();
    for (reason, setup) in cases {
        let (tasks, text) = deadlock(&mut rt, setup);
        let got: Vec<WaitReason> = tasks.iter().map(|t| t.waiting_on).collect();
        assert_eq!(got, [WaitReason::Rendez, reason], "{text}");
        assert!(text.contains(&reason.to_string()), "{text}");
        assert_eq!(rt.stats().tasks_live, 0, "teardown after {reason:?}");
    }
}

#[test]
fn runtime_is_usable_after_a_deadlock() {
    let mut rt = Runtime::new();
    let (tasks, _) = deadlock(&mut rt, || Rendez::new().sleep());
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].name, "main");
    let v = rt
        .run(|| {
            let h = spawn(|| 5).unwrap();
            h.join().unwrap() * 2
        })
        .unwrap();
    assert_eq!(v, 10);
}

/// An armed timer can still wake someone, so a waiting task is not a deadlock yet.
#[test]
fn no_deadlock_while_a_timer_is_armed() {
    let v = Runtime::new()
        .run(|| {
            let r = Rc::new(Rendez::new());
            let r2 = r.clone();
            // Runs first (FIFO) and is asleep before the waker runs.
            let waiter = spawn(move || r2.sleep()).unwrap();
            let waker = spawn(move || {
                sleep(Duration::from_millis(2));
                r.wakeup()
            })
            .unwrap();
            waiter.join().unwrap();
            waker.join().unwrap()
        })
        .unwrap();
    assert!(v, "the waker found nobody asleep");
}

/// A timer whose wait already ended (the task was woken by a `Rendez`) must not
/// postpone the report until its deadline.
#[test]
fn stale_timer_does_not_delay_the_deadlock_report() {
    let t0 = Instant::now();
    let mut rt = Runtime::new();
    let (tasks, text) = deadlock(&mut rt, || {
        let r = Rc::new(Rendez::new());
        let r2 = r.clone();
        let h = Builder::new()
            .name("late")
            .spawn(move || {
                let deadline = taskio::Instant::monotonic() + Duration::from_secs(30);
                assert!(
                    r2.sleep_until(deadline),
                    "woken by the rendez, not the timer"
                );
                Rendez::new().sleep();
            })
            .unwrap();
        yield_now();
        assert!(r.wakeup());
        h.join().unwrap();
    });
    assert_eq!(tasks.len(), 2, "{text}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the deadlock was reported only after the stale timer's deadline: {:?}",
        t0.elapsed()
    );
}
