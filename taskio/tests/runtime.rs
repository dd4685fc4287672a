//! The runtime and its tasks: `Runtime::run` (return value, when it returns, reuse,
//! one runtime per thread), `spawn` / `Builder` / `JoinHandle`, panics, the task
//! limit, `yield_now` and the FIFO ready queue, `current`, task-local storage,
//! system tasks and teardown, and `RuntimeStats`.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use common::{Log, drop_flag, log, run};
use taskio::{
    Builder, Channel, Config, Current, Pool, Rendez, RunError, Runtime, RuntimeStats, SpawnError,
    TaskId, current, local_set, local_take, local_with, sleep, spawn, yield_now,
};

// ---------------------------------------------------------------------------------
// Runtime::run

#[test]
fn run_returns_the_main_tasks_value() {
    assert_eq!(run(|| 42), 42);
    assert_eq!(run(|| String::from("main value")), "main value");
    let v: Vec<u32> = run(|| (0..5).collect());
    assert_eq!(v, [0, 1, 2, 3, 4]);
}

#[test]
fn run_waits_for_tasks_that_outlive_main() {
    let steps = Rc::new(Cell::new(0u32));
    let grandchild_done = Rc::new(Cell::new(false));
    let (s, g) = (steps.clone(), grandchild_done.clone());
    let v = run(move || {
        // Detached: the handle is dropped at once, main never joins.
        drop(spawn(move || {
            // Spawns a grandchild that outlives its parent too.
            drop(spawn(move || {
                for _ in 0..20 {
                    yield_now();
                }
                g.set(true);
            }));
            for _ in 0..10 {
                s.set(s.get() + 1);
                yield_now();
            }
        }));
        "main ends first"
    });
    assert_eq!(v, "main ends first");
    assert_eq!(steps.get(), 10, "the detached task did not run to its end");
    assert!(
        grandchild_done.get(),
        "the grandchild did not run to its end"
    );
}

#[test]
fn runtime_is_reusable_for_a_second_run() {
    let mut rt = Runtime::new();
    let first = rt
        .run(|| {
            let h = spawn(|| current().id).unwrap();
            (current().id, h.join().unwrap())
        })
        .unwrap();
    let after_first = rt.stats();
    assert_eq!(after_first.tasks_live, 0);
    assert_eq!(after_first.tasks_spawned, 2);

    let second = rt
        .run(|| {
            let ch = Rc::new(Channel::new(1));
            let tx = ch.clone();
            let h = spawn(move || {
                for i in 0..5 {
                    tx.send(i).unwrap();
                }
            })
            .unwrap();
            let got: Vec<i32> = (0..5).map(|_| ch.recv().unwrap()).collect();
            h.join().unwrap();
            (current().id, got)
        })
        .unwrap();
    assert_eq!(second.1, [0, 1, 2, 3, 4]);
    // Task ids are unique over the runtime's life, not per run.
    assert!(second.0 > first.1, "second run reused id {:?}", second.0);
    assert!(first.1 > first.0);
    let after_second = rt.stats();
    assert_eq!(after_second.tasks_live, 0);
    assert_eq!(after_second.tasks_spawned, 4);
    assert_eq!(after_second.timers_armed, 0);
}

/// A program whose result and stats are known exactly; `k` varies it per thread.
fn pipeline(k: u64) -> (u64, RuntimeStats) {
    let mut rt = Runtime::new();
    let sum = rt
        .run(move || {
            let ch = Rc::new(Channel::new(2));
            let producers: Vec<_> = (0..k)
                .map(|p| {
                    let ch = ch.clone();
                    spawn(move || {
                        for i in 0..100 {
                            ch.send(p * 1000 + i).unwrap();
                        }
                    })
                    .unwrap()
                })
                .collect();
            let mut sum = 0;
            for _ in 0..k * 100 {
                sum += ch.recv().unwrap();
            }
            for h in producers {
                h.join().unwrap();
            }
            sum
        })
        .unwrap();
    (sum, rt.stats())
}

fn pipeline_sum(k: u64) -> u64 {
    (0..k)
        .map(|p| (0..100).map(|i| p * 1000 + i).sum::<u64>())
        .sum()
}

#[test]
fn two_runtimes_run_side_by_side_on_two_threads() {
    let (to_b, from_a) = mpsc::channel::<()>();
    let (to_a, from_b) = mpsc::channel::<()>();
    let (a, b) = std::thread::scope(|s| {
        // Each runtime's main task blocks its OS thread until the other runtime is
        // running too: proof that the two run at the same time and share nothing.
        let a = s.spawn(move || {
            let met = Runtime::new()
                .run(move || {
                    to_b.send(()).unwrap();
                    from_b.recv_timeout(Duration::from_secs(10)).is_ok()
                })
                .unwrap();
            (met, pipeline(3))
        });
        let b = s.spawn(move || {
            let met = Runtime::new()
                .run(move || {
                    to_a.send(()).unwrap();
                    from_a.recv_timeout(Duration::from_secs(10)).is_ok()
                })
                .unwrap();
            (met, pipeline(5))
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.0, "runtime A never saw runtime B running");
    assert!(b.0, "runtime B never saw runtime A running");
    assert_eq!(a.1.0, pipeline_sum(3));
    assert_eq!(b.1.0, pipeline_sum(5));
    // Each runtime counts only its own tasks: main + k producers.
    assert_eq!(a.1.1.tasks_spawned, 4);
    assert_eq!(b.1.1.tasks_spawned, 6);
    assert_eq!(a.1.1.tasks_live, 0);
    assert_eq!(b.1.1.tasks_live, 0);
}

#[test]
fn nested_run_is_refused() {
    let err = Runtime::new()
        .run(|| {
            let mut inner = Runtime::new();
            inner.run(|| 1)
        })
        .unwrap_err();
    let RunError::MainPanicked(e) = err else {
        panic!("expected MainPanicked, got {err:?}");
    };
    assert!(e.message.contains("nested run"), "message: {}", e.message);
}

#[test]
#[should_panic(expected = "outside a task")]
fn spawn_outside_a_runtime_panics() {
    let _ = spawn(|| ());
}

// ---------------------------------------------------------------------------------
// spawn, Builder, JoinHandle

#[test]
fn spawned_task_runs_when_the_spawner_suspends() {
    run(|| {
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let h = spawn(move || r.set(true)).unwrap();
        assert!(
            !ran.get(),
            "spawn ran the task before the spawner suspended"
        );
        assert!(!h.is_finished());
        assert_eq!(yield_now(), 1);
        assert!(ran.get());
        assert!(h.is_finished());
        h.join().unwrap();
    });
}

#[test]
fn join_returns_the_tasks_value_and_handle_id_matches() {
    run(|| {
        let h = spawn(|| (current().id, vec![1u8, 2, 3])).unwrap();
        let id = h.id();
        let (inner_id, v) = h.join().unwrap();
        assert_eq!(inner_id, id);
        assert_eq!(v, [1, 2, 3]);

        // Joining a task that already ended returns at once.
        let h = spawn(|| 9).unwrap();
        yield_now();
        assert!(h.is_finished());
        assert_eq!(h.join().unwrap(), 9);
    });
}

#[test]
fn builder_sets_name_and_system_flag_and_current_reports_them() {
    run(|| {
        let me = current();
        assert_eq!(me.name, "main");
        assert!(!me.system);

        let named = Builder::new().name("worker").spawn(current).unwrap();
        let named_id = named.id();
        assert_eq!(
            named.join().unwrap(),
            Current {
                id: named_id,
                name: "worker".into(),
                system: false,
                node: 0,
            }
        );

        let anon = spawn(current).unwrap();
        let anon_id = anon.id();
        let c = anon.join().unwrap();
        assert_eq!(c.id, anon_id);
        assert_eq!(c.name, format!("task-{}", anon_id.0));

        let sys = Builder::new()
            .name("sys")
            .system(true)
            .spawn(current)
            .unwrap();
        let c = sys.join().unwrap();
        assert_eq!(c.name, "sys");
        assert!(c.system);

        // Ids are distinct and increasing.
        assert!(me.id < named_id && named_id < anon_id && anon_id < c.id);
    });
}

#[test]
fn builder_stack_size_gives_a_deeper_stack() {
    let mut rt = Runtime::new();
    let used = rt
        .run(|| {
            // 512 KiB of locals would overflow the 256 KiB default stack.
            let h = Builder::new()
                .name("big")
                .stack_size(2 * 1024 * 1024)
                .spawn(|| {
                    let buf = std::hint::black_box([7u8; 512 * 1024]);
                    yield_now();
                    buf.iter().map(|&b| b as usize).sum::<usize>()
                })
                .unwrap();
            h.join().unwrap()
        })
        .unwrap();
    assert_eq!(used, 7 * 512 * 1024);
    // Only default-size stacks are pooled: main's, not the big one.
    assert_eq!(rt.stats().stacks_pooled, 1);
}

#[test]
fn stack_pool_keeps_at_most_stack_pool_max() {
    let mut rt = Runtime::with_config(Config {
        stack_pool_max: 2,
        ..Config::default()
    });
    rt.run(|| {
        let hs: Vec<_> = (0..6).map(|i| spawn(move || i).unwrap()).collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), i);
        }
    })
    .unwrap();
    assert_eq!(rt.stats().stacks_pooled, 2);
}

#[test]
fn panicking_task_reports_message_and_name_and_siblings_keep_running() {
    let sibling_steps = Rc::new(Cell::new(0));
    let s = sibling_steps.clone();
    let v = run(move || {
        let sibling = spawn(move || {
            for _ in 0..10 {
                s.set(s.get() + 1);
                yield_now();
            }
            "sibling done"
        })
        .unwrap();
        let bad = Builder::new()
            .name("bad")
            .spawn(|| -> u32 {
                yield_now();
                let n = std::hint::black_box(7);
                panic!("boom {n}");
            })
            .unwrap();
        let bad_id = bad.id();
        let err = bad.join().unwrap_err();
        assert_eq!(err.name, "bad");
        assert_eq!(err.message, "boom 7");
        assert_eq!(err.id, bad_id);
        assert_eq!(
            err.to_string(),
            format!("task {bad_id} \"bad\" panicked: boom 7")
        );
        assert_eq!(
            err.into_panic().downcast::<String>().ok().as_deref(),
            Some(&"boom 7".to_string())
        );
        assert_eq!(sibling.join().unwrap(), "sibling done");
        123
    });
    assert_eq!(v, 123);
    assert_eq!(sibling_steps.get(), 10);
}

#[test]
fn panic_payloads_that_are_not_strings() {
    run(|| {
        let h = spawn(|| std::panic::panic_any(5u32)).unwrap();
        let err = h.join().unwrap_err();
        assert_eq!(err.message, "(non-string panic payload)");
        assert_eq!(err.into_panic().downcast::<u32>().ok().map(|b| *b), Some(5));

        let h = spawn(|| panic!("static str")).unwrap();
        let err = h.join().unwrap_err();
        assert_eq!(err.message, "static str");
        assert_eq!(err.name, format!("task-{}", err.id.0));
    });
}

#[test]
fn unjoined_panicking_task_does_not_fail_the_run() {
    let v = run(|| {
        drop(spawn(|| panic!("nobody joins me")));
        yield_now();
        5
    });
    assert_eq!(v, 5);
}

#[test]
fn main_panic_is_main_panicked_after_siblings_finish() {
    let sibling_done = Rc::new(Cell::new(false));
    let sd = sibling_done.clone();
    let err = Runtime::new()
        .run(move || -> u32 {
            drop(spawn(move || {
                for _ in 0..5 {
                    yield_now();
                }
                sd.set(true);
            }));
            panic!("main gives up");
        })
        .unwrap_err();
    let RunError::MainPanicked(e) = &err else {
        panic!("expected MainPanicked, got {err:?}");
    };
    assert_eq!(e.name, "main");
    assert_eq!(e.message, "main gives up");
    assert!(err.to_string().contains("main gives up"), "{err}");
    assert!(sibling_done.get(), "run returned before the sibling ended");
}

#[test]
fn spawn_fails_with_too_many_tasks_at_config_max_tasks() {
    let mut rt = Runtime::with_config(Config {
        max_tasks: 3,
        ..Config::default()
    });
    let (closure_dropped, guard) = drop_flag();
    let closure_ran = Rc::new(Cell::new(false));
    let ran = closure_ran.clone();
    rt.run(move || {
        let gate = Rc::new(Rendez::new());
        let g = gate.clone();
        let a = spawn(move || g.sleep()).unwrap();
        let b = spawn(|| 2).unwrap();
        // main + a + b = 3 live tasks.
        let err = Builder::new()
            .name("third")
            .spawn(move || {
                let _guard = guard;
                ran.set(true);
            })
            .map(|_| ())
            .unwrap_err();
        match &err {
            SpawnError::TooManyTasks { name, limit } => {
                assert_eq!(name, "third");
                assert_eq!(*limit, 3);
            }
            other => panic!("expected TooManyTasks, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("third") && text.contains('3'), "{text}");

        // Once a task has ended there is room again.
        assert_eq!(b.join().unwrap(), 2);
        let c = spawn(|| 3).unwrap();
        assert!(
            spawn(|| 4).is_err(),
            "limit not enforced after a slot was reused"
        );
        assert_eq!(c.join().unwrap(), 3);
        yield_now(); // a sleeps on the gate
        assert!(gate.wakeup());
        a.join().unwrap();
    })
    .unwrap();
    assert!(closure_dropped.get(), "refused closure was not dropped");
    assert!(!closure_ran.get(), "refused closure ran");
}

// ---------------------------------------------------------------------------------
// yield_now and the ready queue

#[test]
fn lone_task_yield_returns_zero() {
    run(|| {
        for _ in 0..3 {
            assert_eq!(yield_now(), 0);
        }
    });
}

#[test]
fn three_tasks_in_lockstep_each_yield_returns_two() {
    let results: Log<(usize, usize)> = log();
    let r = results.clone();
    run(move || {
        let hs: Vec<_> = (0..3)
            .map(|t| {
                let r = r.clone();
                spawn(move || {
                    for _ in 0..5 {
                        let n = yield_now();
                        r.borrow_mut().push((t, n));
                    }
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let results = results.borrow();
    assert_eq!(results.len(), 15);
    for &(t, n) in results.iter() {
        assert_eq!(
            n, 2,
            "task {t}: yield_now returned {n}, results {results:?}"
        );
    }
    // Lockstep: the log goes round the three tasks in order.
    let order: Vec<usize> = results.iter().map(|&(t, _)| t).collect();
    assert_eq!(order, [0, 1, 2].repeat(5));
}

#[test]
fn ready_tasks_run_in_fifo_order() {
    let order: Log<(u32, u32)> = log();
    let o = order.clone();
    run(move || {
        for t in 0..4 {
            let o = o.clone();
            drop(spawn(move || {
                for step in 0..3 {
                    o.borrow_mut().push((t, step));
                    yield_now();
                }
            }));
        }
    });
    let want: Vec<(u32, u32)> = (0..3).flat_map(|s| (0..4).map(move |t| (t, s))).collect();
    assert_eq!(*order.borrow(), want);
}

#[test]
fn sleep_zero_yields_to_ready_tasks() {
    run(|| {
        let ran = Rc::new(Cell::new(0));
        let r = ran.clone();
        let h = spawn(move || r.set(r.get() + 1)).unwrap();
        sleep(Duration::ZERO);
        assert_eq!(ran.get(), 1, "sleep(ZERO) did not let the ready task run");
        h.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------
// System tasks and teardown

#[test]
fn system_task_sleeping_forever_does_not_keep_run_alive() {
    let (dropped, guard) = drop_flag();
    let (local_dropped, local_guard) = drop_flag();
    let loops = Rc::new(Cell::new(0u64));
    let exhausted = Rc::new(Cell::new(false));
    let (l, e) = (loops.clone(), exhausted.clone());
    let v = run(move || {
        Builder::new()
            .name("ticker")
            .system(true)
            .spawn(move || {
                let _guard = guard;
                local_set(local_guard);
                // "Forever", bounded so that a runtime that waits for it fails the
                // test instead of hanging it.
                for _ in 0..2_000 {
                    l.set(l.get() + 1);
                    sleep(Duration::from_millis(1));
                }
                e.set(true);
            })
            .unwrap();
        yield_now(); // let the ticker start
        7
    });
    assert_eq!(v, 7);
    assert!(loops.get() >= 1, "system task never ran");
    assert!(!exhausted.get(), "run waited for the system task to end");
    assert!(
        dropped.get(),
        "system task's stack was not unwound at teardown"
    );
    assert!(
        local_dropped.get(),
        "system task's locals were not dropped at teardown"
    );
}

#[test]
fn system_task_waiting_on_a_rendez_does_not_keep_run_alive() {
    let (dropped, guard) = drop_flag();
    let served = Rc::new(Cell::new(0));
    let s = served.clone();
    let mut rt = Runtime::new();
    let v = rt
        .run(move || {
            let work = Rc::new(Rendez::new());
            let w = work.clone();
            Builder::new()
                .name("server")
                .system(true)
                .spawn(move || {
                    let _guard = guard;
                    loop {
                        w.sleep();
                        s.set(s.get() + 1);
                    }
                })
                .unwrap();
            for _ in 0..3 {
                yield_now(); // the server goes back to sleep
                assert!(work.wakeup());
            }
            yield_now();
            "done"
        })
        .unwrap();
    assert_eq!(v, "done");
    assert_eq!(served.get(), 3);
    assert!(dropped.get());
    let stats = rt.stats();
    assert_eq!(stats.tasks_live, 0, "teardown left tasks alive: {stats:?}");
}

#[test]
fn system_task_that_never_started_is_dropped_at_teardown() {
    let (dropped, guard) = drop_flag();
    let started = Rc::new(Cell::new(false));
    let s = started.clone();
    run(move || {
        Builder::new()
            .system(true)
            .spawn(move || {
                let _guard = guard;
                s.set(true);
            })
            .unwrap();
        // main ends without suspending: the system task never runs.
    });
    assert!(!started.get());
    assert!(
        dropped.get(),
        "the unstarted task's closure was not dropped"
    );
}

/// A system task that never blocks (a poller that yields in a loop) must not keep
/// `run` alive either: once the last user task has ended it is unwound at its next
/// suspension, not resumed again and again.
#[test]
fn system_task_yielding_forever_does_not_keep_run_alive() {
    const YIELDS_MAX: u64 = 100_000;
    let (dropped, guard) = drop_flag();
    let after_main = Rc::new(Cell::new(0u64));
    let main_done = Rc::new(Cell::new(false));
    let (a, m) = (after_main.clone(), main_done.clone());
    let v = run(move || {
        let m2 = m.clone();
        Builder::new()
            .name("poller")
            .system(true)
            .spawn(move || {
                let _guard = guard;
                // Bounded so that a runtime that keeps resuming it still ends.
                while a.get() < YIELDS_MAX {
                    yield_now();
                    if m2.get() {
                        a.set(a.get() + 1);
                    }
                }
            })
            .unwrap();
        yield_now();
        m.set(true);
        3
    });
    assert_eq!(v, 3);
    assert!(dropped.get());
    assert!(
        after_main.get() <= 1,
        "the system task was resumed {} times after the last user task ended",
        after_main.get()
    );
}

/// Records the name of the task its destructor runs in.
struct NameOnDrop(Rc<RefCell<Option<String>>>);

impl Drop for NameOnDrop {
    fn drop(&mut self) {
        *self.0.borrow_mut() = Some(current().name);
    }
}

#[test]
fn teardown_runs_destructors_as_the_task_being_unwound() {
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    run(move || {
        Builder::new()
            .name("sys-dtor")
            .system(true)
            .spawn(move || {
                let _d = NameOnDrop(s);
                Rendez::new().sleep();
            })
            .unwrap();
        yield_now();
    });
    assert_eq!(seen.borrow().as_deref(), Some("sys-dtor"));
}

// ---------------------------------------------------------------------------------
// Task-local storage

#[test]
fn local_set_take_and_with() {
    run(|| {
        assert_eq!(local_take::<u32>(), None);
        assert_eq!(local_set(1u32), None);
        assert_eq!(local_set(2u32), Some(1));
        // Another type is another slot.
        assert_eq!(local_set(String::from("s")), None);
        assert_eq!(local_with(|v: Option<&mut u32>| v.copied()), Some(2));
        local_with(|v: Option<&mut u32>| *v.unwrap() += 10);
        assert_eq!(local_take::<u32>(), Some(12));
        assert_eq!(local_take::<u32>(), None);
        assert!(local_with(|v: Option<&mut u32>| v.is_none()));
        assert_eq!(local_take::<String>().as_deref(), Some("s"));
    });
}

#[test]
fn locals_are_per_task() {
    run(|| {
        local_set(1000u32);
        let hs: Vec<_> = (0..3u32)
            .map(|t| {
                spawn(move || {
                    assert_eq!(local_take::<u32>(), None, "task {t} saw another's local");
                    local_set(t);
                    for _ in 0..3 {
                        yield_now();
                        assert_eq!(local_with(|v: Option<&mut u32>| v.copied()), Some(t));
                    }
                    t
                })
                .unwrap()
            })
            .collect();
        for (t, h) in hs.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), t as u32);
        }
        assert_eq!(local_take::<u32>(), Some(1000));
    });
}

#[test]
fn nested_local_with() {
    run(|| {
        local_set(1u8);
        local_set(String::from("outer"));
        let r = local_with(|a: Option<&mut u8>| {
            let a = a.unwrap();
            *a += 1;
            local_with(|s: Option<&mut String>| {
                let s = s.unwrap();
                s.push_str("+inner");
                // The u8 is lent to the outer call: not visible while it runs.
                assert!(local_with(|x: Option<&mut u8>| x.is_none()));
                s.len()
            })
        });
        assert_eq!(r, "outer+inner".len());
        assert_eq!(local_take::<u8>(), Some(2));
        assert_eq!(local_take::<String>().as_deref(), Some("outer+inner"));
    });
}

#[test]
fn locals_are_dropped_at_task_end_and_may_wake_others() {
    run(|| {
        let pool = Pool::new(1, || 0u32);
        let p = pool.clone();
        let holder = spawn(move || {
            local_set(p.get());
            yield_now();
            // Ends holding the item in task-local storage.
        })
        .unwrap();
        let p = pool.clone();
        let taker = spawn(move || *p.get() + 1).unwrap();
        // The taker can only get the item when the holder's locals are dropped.
        holder.join().unwrap();
        assert_eq!(taker.join().unwrap(), 1);
        assert_eq!(pool.free(), 1);
    });
}

// ---------------------------------------------------------------------------------
// Stats and identities

#[test]
fn stats_count_switches_parks_and_tasks_exactly() {
    let mut rt = Runtime::new();
    assert_eq!(rt.stats(), RuntimeStats::default());
    rt.run(|| {
        let h = spawn(|| 1).unwrap();
        h.join().unwrap() // main parks once
    })
    .unwrap();
    // main runs, parks in join; the task runs and ends; main resumes and ends.
    assert_eq!(
        rt.stats(),
        RuntimeStats {
            tasks_spawned: 2,
            tasks_live: 0,
            switches: 3,
            parks: 1,
            stacks_pooled: 2,
            timers_armed: 0,
            io: Default::default(),
        }
    );
}

#[test]
fn task_id_displays_with_a_hash() {
    assert_eq!(TaskId(17).to_string(), "#17");
}
