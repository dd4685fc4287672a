//! Random programs checked against models.
//!
//! - `scheduler_matches_a_round_robin_model`: tasks that yield a random number of times
//!   while main joins them; an exact model of the FIFO ready queue predicts the order
//!   of every event, what each `yield_now` returns, and the runtime's switch and park
//!   counters.
//! - `random_programs_keep_their_invariants`: producers and consumers on two bounded
//!   channels (consumers `select` over both), interleaved with yields, tiny sleeps,
//!   `QLock`, `RwLock` and `Pool` critical sections that suspend inside. Total sends
//!   equal total receives and no task holds a lock or pool item across a channel
//!   operation, so a correct runtime can never deadlock: any `RunError` is a lost
//!   wakeup. Checked: every value received exactly once, per-producer FIFO per
//!   channel, receive counts per consumer, mutual exclusion, pool never over
//!   capacity, and the counters.
//! - `rendez_matches_a_fifo_model`: random `wakeup` / `wakeup_all` against sleepers.
//! - `barrier_rounds_hold_under_random_delays`.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;
use taskio::{
    Barrier, Channel, Instant, Pool, QLock, Rendez, RunError, Runtime, RwLock, TryRecvError,
    select, sleep, spawn, yield_now,
};

// ---------------------------------------------------------------------------------
// Scheduler model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start(usize),
    /// Task, value `yield_now` returned.
    Yielded(usize, usize),
}

struct SchedModel {
    events: Vec<Event>,
    switches: u64,
    parks: u64,
}

/// Predicts a run where main spawns one task per entry of `yields` (task `i` yields
/// `yields[i]` times) and then joins them in order.
fn sched_model(yields: &[usize]) -> SchedModel {
    #[derive(Clone, Copy)]
    enum Who {
        Main,
        Task(usize),
    }
    let n = yields.len();
    let mut events = Vec::new();
    let mut queue: VecDeque<Who> = (0..n).map(Who::Task).collect();
    let mut left = yields.to_vec();
    let mut started = vec![false; n];
    let mut finished = vec![false; n];
    let mut yielded_at = vec![0u64; n];
    let mut joining = 0usize;
    let mut main_blocked = false;
    let mut switches = 1u64; // main's first resume
    let mut parks = 0u64;

    // Main joins in order; returns whether it blocked.
    let main_step = |joining: &mut usize, finished: &[bool], parks: &mut u64| {
        while *joining < n && finished[*joining] {
            *joining += 1;
        }
        if *joining < n {
            *parks += 1;
            true
        } else {
            false
        }
    };
    main_blocked = main_blocked || main_step(&mut joining, &finished, &mut parks);
    while let Some(who) = queue.pop_front() {
        switches += 1;
        match who {
            Who::Main => main_blocked = main_step(&mut joining, &finished, &mut parks),
            Who::Task(i) => {
                if started[i] {
                    events.push(Event::Yielded(i, (switches - yielded_at[i] - 1) as usize));
                } else {
                    started[i] = true;
                    events.push(Event::Start(i));
                }
                if left[i] > 0 {
                    left[i] -= 1;
                    yielded_at[i] = switches;
                    queue.push_back(Who::Task(i));
                } else {
                    finished[i] = true;
                    if main_blocked && joining == i {
                        main_blocked = false;
                        queue.push_back(Who::Main);
                    }
                }
            }
        }
    }
    assert!(!main_blocked, "model: main never woken");
    SchedModel {
        events,
        switches,
        parks,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scheduler_matches_a_round_robin_model(yields in prop::collection::vec(0usize..6, 0..7)) {
        let model = sched_model(&yields);
        let events: Rc<RefCell<Vec<Event>>> = Rc::default();
        let ev = events.clone();
        let ys = yields.clone();
        let mut rt = Runtime::new();
        rt.run(move || {
            let hs: Vec<_> = ys
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let ev = ev.clone();
                    spawn(move || {
                        ev.borrow_mut().push(Event::Start(i));
                        for _ in 0..k {
                            let n = yield_now();
                            ev.borrow_mut().push(Event::Yielded(i, n));
                        }
                    })
                    .unwrap()
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        })
        .unwrap();
        prop_assert_eq!(&*events.borrow(), &model.events);
        let stats = rt.stats();
        prop_assert_eq!(stats.switches, model.switches);
        prop_assert_eq!(stats.parks, model.parks);
        prop_assert_eq!(stats.tasks_spawned, yields.len() as u64 + 1);
        prop_assert_eq!(stats.tasks_live, 0);
    }
}

// ---------------------------------------------------------------------------------
// Random programs on channels, locks and a pool

#[derive(Debug, Clone)]
enum Op {
    Yield,
    /// Sleep this many milliseconds (0 yields).
    Sleep(u8),
    /// Hold the QLock across this many yields.
    Lock(u8),
    Read(u8),
    Write(u8),
    /// Hold a pool item across this many yields.
    Pool(u8),
    /// Producers: send the next value on this channel. Consumers: receive one value.
    Comm(u8),
}

#[derive(Debug, Clone)]
struct Program {
    capacities: [usize; 2],
    pool_capacity: usize,
    producers: Vec<Vec<Op>>,
    consumers: Vec<Vec<Op>>,
    /// With one channel, consumers may use plain `recv` instead of `select`.
    plain_recv: Vec<bool>,
}

const SLEEPS_MAX: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Yield),
        1 => (0u8..3).prop_map(Op::Sleep),
        2 => (0u8..3).prop_map(Op::Lock),
        2 => (0u8..3).prop_map(Op::Read),
        1 => (0u8..3).prop_map(Op::Write),
        2 => (0u8..3).prop_map(Op::Pool),
        8 => (0u8..2).prop_map(Op::Comm),
    ]
}

fn program() -> impl Strategy<Value = Program> {
    (
        1usize..4,
        1usize..4,
        1usize..4,
        prop::collection::vec(prop::collection::vec(op(), 0..16), 1..5),
        prop::collection::vec(prop::collection::vec(op(), 0..16), 1..5),
        prop::bool::ANY,
        prop::collection::vec(prop::bool::ANY, 4),
    )
        .prop_map(
            |(c0, c1, pool_capacity, producers, consumers, one_chan, plain)| {
                repair(
                    Program {
                        capacities: [c0, c1],
                        pool_capacity,
                        producers,
                        consumers,
                        plain_recv: if one_chan { plain } else { vec![false; 4] },
                    },
                    one_chan,
                )
            },
        )
}

/// Makes a generated program well formed: at most `SLEEPS_MAX` sleeps, one channel
/// when `one_chan`, and as many receives as sends.
fn repair(mut p: Program, one_chan: bool) -> Program {
    let mut sleeps = 0;
    for ops in p.producers.iter_mut().chain(p.consumers.iter_mut()) {
        for op in ops.iter_mut() {
            if let Op::Sleep(_) = op {
                sleeps += 1;
                if sleeps > SLEEPS_MAX {
                    *op = Op::Yield;
                }
            }
            if let Op::Comm(ch) = op
                && one_chan
            {
                *ch = 0;
            }
        }
    }
    let sends = count_comm(&p.producers);
    let mut recvs = count_comm(&p.consumers);
    // Too many receives: the last ones become yields.
    'outer: for ops in p.consumers.iter_mut().rev() {
        for op in ops.iter_mut().rev() {
            if recvs <= sends {
                break 'outer;
            }
            if let Op::Comm(_) = op {
                *op = Op::Yield;
                recvs -= 1;
            }
        }
    }
    // Too few: append receives round-robin.
    let c = p.consumers.len();
    for i in 0..sends.saturating_sub(recvs) {
        p.consumers[i % c].push(Op::Comm(0));
    }
    assert_eq!(count_comm(&p.consumers), sends);
    p
}

fn count_comm(tasks: &[Vec<Op>]) -> usize {
    tasks
        .iter()
        .flatten()
        .filter(|op| matches!(op, Op::Comm(_)))
        .count()
}

/// Shared state of one run, and the counters the checks compare with the model.
struct World {
    chans: [Channel<(usize, usize)>; 2],
    qlock: QLock<u64>,
    rwlock: RwLock<u64>,
    pool: Pool<()>,
    pool_capacity: usize,
    in_qlock: Cell<u32>,
    readers: Cell<u32>,
    writers: Cell<u32>,
    pool_out: Cell<usize>,
    /// (consumer, producer, seq, channel) in the order values were taken.
    received: RefCell<Vec<(usize, usize, usize, usize)>>,
}

impl World {
    fn step(&self, op: &Op) {
        match *op {
            Op::Yield => {
                yield_now();
            }
            Op::Sleep(ms) => {
                let d = Duration::from_millis(ms.into());
                let t0 = Instant::monotonic();
                sleep(d);
                assert!(Instant::monotonic() - t0 >= d, "woke before {d:?}");
            }
            Op::Lock(k) => {
                let mut g = self.qlock.lock();
                self.in_qlock.set(self.in_qlock.get() + 1);
                assert_eq!(self.in_qlock.get(), 1, "two tasks inside the QLock");
                let v = *g;
                for _ in 0..k {
                    yield_now();
                }
                assert_eq!(self.in_qlock.get(), 1, "two tasks inside the QLock");
                *g = v + 1;
                self.in_qlock.set(0);
            }
            Op::Read(k) => {
                let g = self.rwlock.read();
                assert_eq!(self.writers.get(), 0, "reader beside a writer");
                self.readers.set(self.readers.get() + 1);
                let v = *g;
                for _ in 0..k {
                    yield_now();
                }
                assert_eq!(*g, v, "value changed under a reader");
                self.readers.set(self.readers.get() - 1);
            }
            Op::Write(k) => {
                let mut g = self.rwlock.write();
                assert_eq!(self.readers.get(), 0, "writer beside readers");
                assert_eq!(self.writers.get(), 0, "two writers");
                self.writers.set(1);
                let v = *g;
                for _ in 0..k {
                    yield_now();
                }
                *g = v + 1;
                self.writers.set(0);
            }
            Op::Pool(k) => {
                let item = self.pool.get();
                self.pool_out.set(self.pool_out.get() + 1);
                assert!(
                    self.pool_out.get() <= self.pool_capacity,
                    "pool over capacity"
                );
                assert_eq!(self.pool.free() + self.pool_out.get(), self.pool_capacity);
                for _ in 0..k {
                    yield_now();
                }
                self.pool_out.set(self.pool_out.get() - 1);
                drop(item);
            }
            Op::Comm(_) => unreachable!("Comm is handled by the task loop"),
        }
    }
}

/// What the program must produce, computed without running it.
struct Expected {
    sent: Vec<(usize, usize, usize)>,
    per_consumer: Vec<usize>,
    locks: u64,
    writes: u64,
    pool_gets: u64,
}

fn expected(p: &Program) -> Expected {
    let mut sent = Vec::new();
    for (pi, ops) in p.producers.iter().enumerate() {
        let mut seq = 0;
        for op in ops {
            if let Op::Comm(ch) = op {
                sent.push((pi, seq, usize::from(*ch)));
                seq += 1;
            }
        }
    }
    let all = || p.producers.iter().chain(p.consumers.iter()).flatten();
    let count = |f: fn(&Op) -> bool| all().filter(|op| f(op)).count() as u64;
    Expected {
        sent,
        per_consumer: p
            .consumers
            .iter()
            .map(|ops| ops.iter().filter(|op| matches!(op, Op::Comm(_))).count())
            .collect(),
        locks: count(|op| matches!(op, Op::Lock(_))),
        writes: count(|op| matches!(op, Op::Write(_))),
        pool_gets: count(|op| matches!(op, Op::Pool(_))),
    }
}

fn run_program(p: &Program) -> Result<Rc<World>, RunError> {
    let world = Rc::new(World {
        chans: [Channel::new(p.capacities[0]), Channel::new(p.capacities[1])],
        qlock: QLock::new(0),
        rwlock: RwLock::new(0),
        pool: Pool::new(p.pool_capacity, || ()),
        pool_capacity: p.pool_capacity,
        in_qlock: Cell::new(0),
        readers: Cell::new(0),
        writers: Cell::new(0),
        pool_out: Cell::new(0),
        received: RefCell::new(Vec::new()),
    });
    let w = world.clone();
    let p = p.clone();
    Runtime::new()
        .run(move || {
            let mut hs = Vec::new();
            for (pi, ops) in p.producers.into_iter().enumerate() {
                let w = w.clone();
                hs.push(
                    spawn(move || {
                        let mut seq = 0;
                        for op in &ops {
                            match op {
                                Op::Comm(ch) => {
                                    w.chans[usize::from(*ch)].send((pi, seq)).unwrap();
                                    seq += 1;
                                }
                                op => w.step(op),
                            }
                        }
                    })
                    .unwrap(),
                );
            }
            for (ci, ops) in p.consumers.into_iter().enumerate() {
                let w = w.clone();
                let plain = p.plain_recv[ci % p.plain_recv.len()];
                hs.push(
                    spawn(move || {
                        for op in &ops {
                            let Op::Comm(_) = op else {
                                w.step(op);
                                continue;
                            };
                            let (ch, v) = if plain {
                                (0, w.chans[0].recv().unwrap())
                            } else {
                                let i =
                                    select(&[&w.chans[0].recv_ready(), &w.chans[1].recv_ready()]);
                                match w.chans[i].try_recv() {
                                    Ok(v) => (i, v),
                                    Err(e @ (TryRecvError::Empty | TryRecvError::Closed)) => {
                                        panic!("select chose channel {i} but try_recv: {e}")
                                    }
                                }
                            };
                            w.received.borrow_mut().push((ci, v.0, v.1, ch));
                        }
                    })
                    .unwrap(),
                );
            }
            for h in hs {
                h.join().unwrap();
            }
        })
        .map(|()| world)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_programs_keep_their_invariants(p in program()) {
        let want = expected(&p);
        let world = match run_program(&p) {
            Ok(w) => w,
            Err(e) => return Err(TestCaseError::fail(format!("run failed: {e}"))),
        };
        let received = world.received.borrow();

        // Every value sent is received exactly once, on the channel it was sent on.
        let mut got: Vec<(usize, usize, usize)> =
            received.iter().map(|&(_, pi, seq, ch)| (pi, seq, ch)).collect();
        got.sort();
        let mut sent = want.sent.clone();
        sent.sort();
        prop_assert_eq!(got, sent);

        // Per producer and channel, values are taken in the order they were sent.
        for pi in 0..p.producers.len() {
            for ch in 0..2 {
                let seqs: Vec<usize> = received
                    .iter()
                    .filter(|r| r.1 == pi && r.3 == ch)
                    .map(|r| r.2)
                    .collect();
                prop_assert!(seqs.is_sorted(), "producer {} channel {}: {:?}", pi, ch, seqs);
            }
        }

        // Each consumer took exactly as many values as it asked for.
        let mut per_consumer = vec![0; p.consumers.len()];
        for r in received.iter() {
            per_consumer[r.0] += 1;
        }
        prop_assert_eq!(per_consumer, want.per_consumer);

        prop_assert!(world.chans.iter().all(Channel::is_empty));
        // Free after the run, and every critical section's increment is there.
        prop_assert_eq!(world.qlock.try_lock().map(|g| *g), Some(want.locks));
        prop_assert_eq!(world.rwlock.try_write().map(|g| *g), Some(want.writes));
        let stats = world.pool.stats();
        prop_assert_eq!(stats.gets, want.pool_gets);
        prop_assert_eq!(stats.free, p.pool_capacity);
        prop_assert!(stats.waits <= stats.gets);
    }
}

// ---------------------------------------------------------------------------------
// Rendez against a FIFO model

#[derive(Debug, Clone, Copy)]
enum Wake {
    One,
    All,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Task `i` sleeps `sleeps[i]` times on one `Rendez`; main issues random wakeups,
    /// yielding after each so the woken run (and sleep again or end). Model: a FIFO of
    /// sleepers where a woken task that sleeps again goes to the back.
    #[test]
    fn rendez_matches_a_fifo_model(
        sleeps in prop::collection::vec(1usize..4, 1..6),
        wakes in prop::collection::vec(prop_oneof![3 => Just(Wake::One), 1 => Just(Wake::All)], 0..40),
    ) {
        // The model.
        let mut asleep: VecDeque<usize> = (0..sleeps.len()).collect();
        let mut left = sleeps.clone();
        let mut want_returns = Vec::new();
        let mut want_woken = Vec::new();
        let mut wake = |i: usize, asleep: &mut VecDeque<usize>, woken: &mut Vec<usize>| {
            woken.push(i);
            left[i] -= 1;
            if left[i] > 0 {
                asleep.push_back(i);
            }
        };
        for w in &wakes {
            match w {
                Wake::One => {
                    let first = asleep.pop_front();
                    want_returns.push(first.is_some() as usize);
                    if let Some(i) = first {
                        wake(i, &mut asleep, &mut want_woken);
                    }
                }
                Wake::All => {
                    let all: Vec<usize> = asleep.drain(..).collect();
                    want_returns.push(all.len());
                    for i in all {
                        wake(i, &mut asleep, &mut want_woken);
                    }
                }
            }
        }
        // Then wake the rest one by one until everyone has ended.
        let mut tail = 0;
        while let Some(i) = asleep.pop_front() {
            wake(i, &mut asleep, &mut want_woken);
            tail += 1;
        }

        let (ws, sl) = (wakes.clone(), sleeps.clone());
        let (returns, woken) = Runtime::new()
            .run(move || {
                let r = Rc::new(Rendez::new());
                let woken: Rc<RefCell<Vec<usize>>> = Rc::default();
                let hs: Vec<_> = sl
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| {
                        let (r, woken) = (r.clone(), woken.clone());
                        spawn(move || {
                            for _ in 0..k {
                                r.sleep();
                                woken.borrow_mut().push(i);
                            }
                        })
                        .unwrap()
                    })
                    .collect();
                yield_now(); // everyone asleep, in spawn order
                let mut returns = Vec::new();
                for w in &ws {
                    returns.push(match w {
                        Wake::One => r.wakeup() as usize,
                        Wake::All => r.wakeup_all(),
                    });
                    yield_now();
                }
                for _ in 0..tail {
                    assert!(r.wakeup(), "model and runtime disagree on who sleeps");
                    yield_now();
                }
                assert!(!r.has_sleepers());
                for h in hs {
                    h.join().unwrap();
                }
                let woken = woken.borrow().clone();
                (returns, woken)
            })
            .unwrap();
        prop_assert_eq!(returns, want_returns);
        prop_assert_eq!(woken, want_woken);
    }
}

// ---------------------------------------------------------------------------------
// Barrier under random delays

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn barrier_rounds_hold_under_random_delays(
        (n, rounds, delays) in (1usize..6, 1usize..6).prop_flat_map(|(n, rounds)| {
            (Just(n), Just(rounds), prop::collection::vec(0usize..4, n * rounds))
        })
    ) {
        let leaders = Runtime::new()
            .run(move || {
                let b = Rc::new(Barrier::new(n));
                let arrived = Rc::new(RefCell::new(vec![0usize; rounds]));
                let leaders = Rc::new(RefCell::new(vec![0usize; rounds]));
                let hs: Vec<_> = (0..n)
                    .map(|t| {
                        let (b, arrived, leaders) = (b.clone(), arrived.clone(), leaders.clone());
                        let delays = delays.clone();
                        spawn(move || {
                            for round in 0..rounds {
                                for _ in 0..delays[t * rounds + round] {
                                    yield_now();
                                }
                                arrived.borrow_mut()[round] += 1;
                                let last = arrived.borrow()[round] == n;
                                let leader = b.wait();
                                assert_eq!(arrived.borrow()[round], n, "passed before all arrived");
                                assert_eq!(leader, last, "the leader is the last to arrive");
                                if leader {
                                    leaders.borrow_mut()[round] += 1;
                                }
                            }
                        })
                        .unwrap()
                    })
                    .collect();
                for h in hs {
                    h.join().unwrap();
                }
                assert_eq!(b.rounds(), rounds as u64);
                leaders.borrow().clone()
            })
            .unwrap();
        prop_assert_eq!(leaders, vec![1; rounds]);
    }
}
