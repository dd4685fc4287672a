//! `tdrv bench taskio`: the costs of the task runtime itself, each measured inside a
//! running runtime on one thread. References are libtask and tokio current_thread as
//! measured on this 2-core machine (they are not rerun here: tdrv links neither).

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use taskio::{Channel, Config, Pool, QLock, Rendez, Runtime, spawn, yield_now};

use super::{Figure, Plan};

type Body = fn(u64) -> f64;

/// (name, target, reference, body): each body runs `ops` operations inside a task
/// and returns ns per operation.
const FIGURES: &[(&str, Option<&str>, Option<&str>, Body)] = &[
    (
        "yield",
        Some("<= 12"),
        Some("libtask 44.5, tokio 95"),
        bench_yield,
    ),
    (
        "spawn_join",
        Some("<= 60"),
        Some("libtask 337, tokio 270"),
        bench_spawn_join,
    ),
    (
        "rendez_handoff",
        Some("<= 15"),
        Some("libtask 49.5"),
        bench_rendez,
    ),
    (
        "channel_msg",
        Some("<= 25"),
        Some("libtask 77; capacity 64"),
        bench_channel_64,
    ),
    (
        "channel_msg_cap1",
        None,
        Some("capacity 1: a switch per message"),
        bench_channel_1,
    ),
    ("qlock_uncontended", None, None, bench_qlock),
    ("pool_get_put", None, None, bench_pool),
];

pub fn run(plan: &Plan) -> Result<Vec<Figure>, String> {
    let mut rt = Runtime::new();
    let mut figures = Vec::new();
    for &(name, target, reference, body) in FIGURES {
        if Figure::wanted(plan, name) {
            figures.push(figure(plan, name, target, reference, &mut rt, body)?);
        }
    }
    if Figure::wanted(plan, "idle_task_rss") {
        figures.push(idle_task_rss(plan)?);
    }
    Ok(figures)
}

/// Runs `body(ops)` inside `rt` once per sample.
fn figure(
    plan: &Plan,
    name: &'static str,
    target: Option<&'static str>,
    reference: Option<&'static str>,
    rt: &mut Runtime,
    body: Body,
) -> Result<Figure, String> {
    let ops = plan.ops;
    // One warm-up sample fills the stack pool and the allocator's caches.
    rt.run(move || body(ops / 10 + 1))
        .map_err(|e| format!("{name}: {e}"))?;
    let mut samples = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        let ns = rt
            .run(move || body(ops))
            .map_err(|e| format!("{name}: {e}"))?;
        samples.push(ns);
    }
    Ok(Figure {
        name,
        unit: "ns/op",
        samples,
        target,
        reference: reference.map(str::to_string),
    })
}

fn spawn_or_fail<T: 'static>(f: impl FnOnce() -> T + 'static) -> taskio::JoinHandle<T> {
    match spawn(f) {
        Ok(h) => h,
        Err(e) => panic!("bench spawn failed: {e}"),
    }
}

fn join_or_fail<T>(h: taskio::JoinHandle<T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(e) => panic!("bench task failed: {e}"),
    }
}

/// Two tasks yielding to each other: ns per yield.
fn bench_yield(ops: u64) -> f64 {
    let n = ops / 2;
    let other = spawn_or_fail(move || {
        for _ in 0..n {
            yield_now();
        }
    });
    let t = Instant::now();
    for _ in 0..n {
        yield_now();
    }
    let ns = t.elapsed().as_nanos() as f64 / (2 * n) as f64;
    join_or_fail(other);
    ns
}

/// Spawn a task that returns at once and join it: ns per spawn + join (pooled stack).
fn bench_spawn_join(ops: u64) -> f64 {
    let ops = ops / 10 + 1;
    let t = Instant::now();
    for i in 0..ops {
        let h = spawn_or_fail(move || black_box(i));
        black_box(join_or_fail(h));
    }
    t.elapsed().as_nanos() as f64 / ops as f64
}

/// Two tasks handing control to each other through two Rendez: ns per hand-off
/// (wakeup of the other, sleep of oneself, the switch).
fn bench_rendez(ops: u64) -> f64 {
    let n = ops / 2;
    let a = Rc::new(Rendez::new());
    let b = Rc::new(Rendez::new());
    let (a2, b2) = (a.clone(), b.clone());
    let other = spawn_or_fail(move || {
        for _ in 0..n {
            b2.sleep();
            a2.wakeup();
        }
    });
    yield_now(); // let `other` reach its first sleep
    let t = Instant::now();
    for _ in 0..n {
        assert!(b.wakeup(), "rendez bench lost its partner");
        a.sleep();
    }
    let ns = t.elapsed().as_nanos() as f64 / (2 * n) as f64;
    join_or_fail(other);
    ns
}

fn bench_channel_64(ops: u64) -> f64 {
    bench_channel(ops, 64)
}

fn bench_channel_1(ops: u64) -> f64 {
    bench_channel(ops, 1)
}

/// A producer and a consumer task on one channel: ns per message.
fn bench_channel(ops: u64, capacity: usize) -> f64 {
    let ch = Rc::new(Channel::new(capacity));
    let rx = ch.clone();
    let consumer = spawn_or_fail(move || {
        let mut sum = 0u64;
        while let Ok(v) = rx.recv() {
            sum = sum.wrapping_add(v);
        }
        sum
    });
    let t = Instant::now();
    for i in 0..ops {
        if ch.send(i).is_err() {
            panic!("channel bench: channel closed early");
        }
    }
    ch.close();
    let sum = join_or_fail(consumer);
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    assert_eq!(sum, ops * (ops - 1) / 2, "channel bench lost messages");
    ns
}

fn bench_qlock(ops: u64) -> f64 {
    let lock = QLock::new(0u64);
    let t = Instant::now();
    for _ in 0..ops {
        let mut g = black_box(&lock).lock();
        *g += 1;
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    assert_eq!(*lock.lock(), ops);
    ns
}

fn bench_pool(ops: u64) -> f64 {
    let pool = Pool::new(64, || [0u8; 64]);
    let t = Instant::now();
    for i in 0..ops {
        let mut item = black_box(&pool).get();
        item[0] = i as u8;
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    assert_eq!(pool.free(), 64);
    ns
}

/// Resident bytes per sleeping task: spawn N tasks that each sleep on a Rendez, read
/// RSS before and after. Stacks are freshly mapped (no pool), as for a server that
/// starts its handler tasks.
fn idle_task_rss(plan: &Plan) -> Result<Figure, String> {
    let tasks: usize = if plan.samples < 5 { 1_000 } else { 10_000 };
    let samples = plan.samples.min(5);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut rt = Runtime::with_config(Config {
            stack_pool_max: 0,
            ..Config::default()
        });
        let per_task = rt
            .run(move || {
                let r = Rc::new(Rendez::new());
                let asleep = Rc::new(Cell::new(0usize));
                let mut handles = Vec::with_capacity(tasks);
                let before = rss_bytes();
                for _ in 0..tasks {
                    let (r, asleep) = (r.clone(), asleep.clone());
                    handles.push(spawn_or_fail(move || {
                        asleep.set(asleep.get() + 1);
                        r.sleep();
                    }));
                }
                yield_now();
                assert_eq!(asleep.get(), tasks, "not every task went to sleep");
                let after = rss_bytes();
                assert_eq!(r.wakeup_all(), tasks);
                for h in handles {
                    join_or_fail(h);
                }
                (after.saturating_sub(before)) as f64 / tasks as f64
            })
            .map_err(|e| format!("idle_task_rss: {e}"))?;
        out.push(per_task);
    }
    Ok(Figure {
        name: "idle_task_rss",
        unit: "bytes",
        samples: out,
        target: Some("<= 8192"),
        reference: Some(
            if tasks == 10_000 {
                "10,000 tasks"
            } else {
                "1,000 tasks (quick)"
            }
            .to_string(),
        ),
    })
}

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = match std::fs::read_to_string("/proc/self/statm") {
        Ok(s) => s,
        Err(e) => panic!("read /proc/self/statm: {e}"),
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("/proc/self/statm: unexpected contents {statm:?}"));
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}
