//! `taskio::remote`: other OS threads hand values to a runtime through a bounded
//! `Remote`, whose eventfd wakes the runtime's reactor; the runtime's tasks take them
//! from the `Inbox` (pseudo-blocking). Order is kept, a full queue and a gone inbox are
//! reported at once with the value given back, `close` ends the stream after what was
//! queued, and a runtime parked in epoll (even with a far timer armed) is woken by a
//! send from another thread.

mod common;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant as StdInstant};

use common::io_rt::{HANG_LIMIT, io_ok, io_runtime, run_io, within};
use taskio::remote::{Inbox, Remote, RemoteSendError, remote};
use taskio::{Builder, Config, IoError, Runtime, net, sleep, spawn, yield_now};

/// Sends `value`, retrying while the inbox is full (the runtime drains it meanwhile).
/// Bounded: a runtime that stops receiving fails the test instead of spinning forever.
fn send_retrying<T>(tx: &Remote<T>, value: T) {
    let started = StdInstant::now();
    let mut value = value;
    loop {
        match tx.send(value) {
            Ok(()) => return,
            Err(RemoteSendError::Full { value: v, .. }) => {
                assert!(
                    started.elapsed() < HANG_LIMIT,
                    "inbox full for {HANG_LIMIT:?}: the runtime stopped receiving"
                );
                value = v;
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(RemoteSendError::Closed(_)) => panic!("inbox closed while sending"),
        }
    }
}

/// Receives until the remote side closes; returns everything received.
fn recv_all<T>(inbox: &Inbox<T>) -> Vec<T> {
    let mut got = Vec::new();
    while let Some(v) = inbox.recv().expect("Inbox::recv") {
        got.push(v);
    }
    got
}

#[test]
fn values_from_another_thread_arrive_in_order() {
    const VALUES: u64 = 20_000;
    const CAPACITY: usize = 16;
    let (tx, inbox) = remote::<u64>(CAPACITY).unwrap();
    let sender = std::thread::spawn(move || {
        for v in 0..VALUES {
            send_retrying(&tx, v);
        }
        tx.close();
    });
    let got = io_ok(move || recv_all(&inbox));
    sender.join().unwrap();
    assert_eq!(got.len() as u64, VALUES);
    // In order, none lost, none twice.
    if let Some(i) = got.iter().enumerate().position(|(i, &v)| v != i as u64) {
        panic!("value {i} is {}, want {i}", got[i]);
    }
}

#[test]
fn full_is_returned_with_the_value_when_capacity_is_exceeded() {
    const CAPACITY: usize = 4;
    let (tx, inbox) = remote::<String>(CAPACITY).unwrap();
    // Filled before the runtime runs, so nothing can drain it meanwhile.
    for i in 0..CAPACITY {
        tx.send(i.to_string()).unwrap();
    }
    assert_eq!(tx.len(), CAPACITY);
    let e = tx.send("late".to_string()).unwrap_err();
    assert_eq!(e.to_string(), "remote inbox full (4 queued)");
    assert_eq!(
        e,
        RemoteSendError::Full {
            value: "late".to_string(),
            capacity: CAPACITY
        }
    );
    assert_eq!(tx.len(), CAPACITY, "a refused value is not queued");
    let tx_in_run = tx.clone();
    let got = io_ok(move || {
        let first = inbox.recv().unwrap();
        // One value taken: one slot free, and only one.
        tx_in_run.send("4".to_string()).unwrap();
        assert!(matches!(
            tx_in_run.send("5".to_string()),
            Err(RemoteSendError::Full { .. })
        ));
        tx_in_run.close();
        let mut got: Vec<String> = first.into_iter().collect();
        got.extend(recv_all(&inbox));
        got
    });
    assert_eq!(got, ["0", "1", "2", "3", "4"]);
    assert!(tx.is_empty());
}

#[test]
fn close_makes_recv_return_none_after_draining() {
    let (tx, inbox) = remote::<u32>(8).unwrap();
    let sender = std::thread::spawn(move || {
        for v in [10, 20, 30] {
            tx.send(v).unwrap();
        }
        tx.close();
    });
    let (got, after) = io_ok(move || {
        let got = recv_all(&inbox);
        // Closed stays closed: every later recv is None, at once.
        let after: Vec<Option<u32>> = (0..3).map(|_| inbox.recv().unwrap()).collect();
        (got, after)
    });
    sender.join().unwrap();
    assert_eq!(got, [10, 20, 30]);
    assert_eq!(after, [None, None, None]);
}

#[test]
fn close_wakes_a_receiver_parked_on_an_empty_inbox() {
    let (tx, inbox) = remote::<u32>(8).unwrap();
    let (parked_tx, parked_rx) = mpsc::channel::<()>();
    let closer = std::thread::spawn(move || {
        parked_rx.recv().unwrap();
        tx.close();
    });
    let got = io_ok(move || {
        let receiver = spawn(move || inbox.recv().unwrap()).unwrap();
        // The receiver parks in recv (nothing queued); then the other thread closes.
        yield_now();
        assert!(!receiver.is_finished());
        parked_tx.send(()).unwrap();
        receiver.join().unwrap()
    });
    closer.join().unwrap();
    assert_eq!(got, None);
}

#[test]
fn send_after_the_inbox_is_gone_is_closed_with_the_value() {
    // Dropped outside any runtime.
    let (tx, inbox) = remote::<String>(4).unwrap();
    drop(inbox);
    let e = tx.send("orphan".to_string()).unwrap_err();
    assert_eq!(e, RemoteSendError::Closed("orphan".to_string()));
    assert!(e.to_string().contains("closed"), "{e}");

    // Dropped by a task while the runtime runs, after it had waited on it; the send
    // comes from another thread once the drop has happened.
    let (tx, inbox) = remote::<u32>(4).unwrap();
    let (dropped_tx, dropped_rx) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        tx.send(1).unwrap();
        dropped_rx.recv().unwrap();
        tx.send(2)
    });
    let first = io_ok(move || {
        let first = inbox.recv().unwrap();
        drop(inbox);
        dropped_tx.send(()).unwrap();
        first
    });
    assert_eq!(first, Some(1));
    assert_eq!(sender.join().unwrap(), Err(RemoteSendError::Closed(2)));
}

#[test]
fn recv_on_a_runtime_without_an_io_driver() {
    let (tx, inbox) = remote::<u32>(4).unwrap();
    tx.send(7).unwrap();
    let outcome = within(HANG_LIMIT, move || {
        Runtime::new().run(move || {
            // A queued value needs no driver...
            assert_eq!(inbox.recv().unwrap(), Some(7));
            // ...waiting for one does.
            match inbox.recv() {
                Err(e @ IoError::NoDriver { .. }) => e.to_string(),
                other => panic!("expected NoDriver, got {other:?}"),
            }
        })
    });
    let text = outcome.unwrap();
    assert!(text.contains("remote recv"), "{text}");
    drop(tx);
}

#[test]
fn a_send_wakes_a_runtime_parked_with_a_far_timer() {
    const FAR: Duration = Duration::from_secs(3600);
    let (tx, inbox) = remote::<&'static str>(4).unwrap();
    let (parked_tx, parked_rx) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        parked_rx.recv().unwrap();
        tx.send("wake").unwrap();
        tx
    });
    let started = StdInstant::now();
    let got = io_ok(move || {
        // A system task asleep for an hour: the runtime parks in epoll with that
        // deadline, and only the remote's eventfd can end the park sooner.
        Builder::new()
            .name("far-timer")
            .system(true)
            .spawn(|| sleep(FAR))
            .unwrap();
        let receiver = spawn(move || inbox.recv().unwrap()).unwrap();
        yield_now();
        parked_tx.send(()).unwrap();
        receiver.join().unwrap()
    });
    assert_eq!(got, Some("wake"));
    assert!(started.elapsed() < HANG_LIMIT);
    drop(sender.join().unwrap());
}

#[test]
fn two_runtimes_on_two_threads_fed_by_a_third() {
    const VALUES: u64 = 10_000;
    const RUNTIMES: u64 = 2;
    within(HANG_LIMIT, || {
        let (txs, inboxes): (Vec<_>, Vec<_>) =
            (0..RUNTIMES).map(|_| remote::<u64>(8).unwrap()).unzip();
        let runtimes: Vec<_> = inboxes
            .into_iter()
            .enumerate()
            .map(|(r, inbox)| {
                std::thread::Builder::new()
                    .name(format!("runtime-{r}"))
                    .spawn(move || io_in_this_thread(move || recv_all(&inbox)))
                    .unwrap()
            })
            .collect();
        let feeder = std::thread::spawn(move || {
            for v in 0..VALUES {
                send_retrying(&txs[(v % RUNTIMES) as usize], v);
            }
            for tx in &txs {
                tx.close();
            }
        });
        feeder.join().unwrap();
        for (r, runtime) in runtimes.into_iter().enumerate() {
            let got = runtime.join().unwrap();
            let want: Vec<u64> = (0..VALUES).filter(|v| v % RUNTIMES == r as u64).collect();
            assert_eq!(got.len(), want.len(), "runtime {r}");
            assert!(
                got == want,
                "runtime {r}: values out of order or not its own"
            );
        }
    });
}

/// Runs `main` on a runtime with the real driver on the calling thread.
fn io_in_this_thread<T: 'static>(main: impl FnOnce() -> T + 'static) -> T {
    let mut rt = io_runtime(Config::default());
    match rt.run(main) {
        Ok(v) => v,
        Err(e) => panic!("Runtime::run failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------
// Bugs found by these tests (they fail until fixed)

/// Two tasks receiving from one inbox (`recv` takes `&self`, and the module says "the
/// runtime's tasks take them"). The reactor keeps one waiter per fd and interest, and
/// the second receiver's `wait` on the eventfd replaces the first: two values sent,
/// one receiver takes one and ends, the other is never woken although a value waits
/// for it, and the run ends in a deadlock.
#[test]
fn two_tasks_receiving_from_one_inbox_each_get_a_value() {
    let (tx, inbox) = remote::<u32>(8).unwrap();
    let (parked_tx, parked_rx) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        parked_rx.recv().unwrap();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        tx
    });
    let (outcome, _) = run_io(move || {
        let inbox = Rc::new(inbox);
        let receivers: Vec<_> = (0..2)
            .map(|i| {
                let inbox = inbox.clone();
                Builder::new()
                    .name(format!("receiver-{i}"))
                    .spawn(move || inbox.recv().unwrap())
                    .unwrap()
            })
            .collect();
        // Both receivers park in recv before anything is sent.
        yield_now();
        assert!(receivers.iter().all(|r| !r.is_finished()));
        parked_tx.send(()).unwrap();
        let mut got: Vec<Option<u32>> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
        got.sort();
        got
    });
    drop(sender.join().unwrap());
    match outcome {
        Ok(got) => assert_eq!(got, [Some(1), Some(2)]),
        Err(e) => panic!("two receivers on one inbox: {e}"),
    }
}

/// An inbox whose eventfd the reactor registered (a task waited on it), dropped outside
/// `run` (it outlived the run in an `Rc`): `Inbox::drop` skips `Io::forget` when no
/// runtime runs, so the reactor's fd table still says "registered" for the eventfd's
/// number. Once the last `Remote` is gone the eventfd closes, and a socket that gets
/// the number later is never added to epoll: its reads are never woken. Every socket
/// made after that must work; here one of them reads nothing although data waits.
#[test]
fn an_inbox_dropped_after_run_does_not_blind_the_reactor_to_its_fd_number() {
    const PAIRS: usize = 16;
    const READ_LIMIT: Duration = Duration::from_secs(1);
    let failures = within(HANG_LIMIT, || {
        let mut rt = io_runtime(Config::default());
        let (tx, inbox) = remote::<u32>(4).unwrap();
        let inbox = Rc::new(inbox);
        let in_run = inbox.clone();
        let tx_in_run = tx.clone();
        let (got, l) = rt
            .run(move || {
                let receiver = spawn(move || in_run.recv().unwrap()).unwrap();
                yield_now(); // parked on the eventfd: now registered with the reactor
                tx_in_run.send(1).unwrap();
                // The listener of run 2, made now so that it does not take the number.
                let l = net::listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
                (receiver.join().unwrap(), l)
            })
            .unwrap();
        assert_eq!(got, Some(1));
        drop(inbox); // outside the run
        drop(tx); // the eventfd closes; its number is free
        rt.run(move || {
            let addr = l.local_addr();
            // New sockets take the lowest free numbers, the eventfd's among them.
            let readers: Vec<_> = (0..PAIRS)
                .map(|_| {
                    let c = net::connect(addr, Some(READ_LIMIT)).unwrap();
                    spawn(move || {
                        c.set_read_timeout(Some(READ_LIMIT));
                        let mut buf = [0u8; 4];
                        c.read_exact(&mut buf).map_err(|e| e.to_string())
                    })
                    .unwrap()
                })
                .collect();
            let servers: Vec<_> = (0..PAIRS).map(|_| l.accept().unwrap().0).collect();
            // Every reader has parked on its empty socket; now the data comes.
            yield_now();
            for s in &servers {
                s.write_all(b"data").unwrap();
            }
            readers
                .into_iter()
                .filter_map(|r| r.join().unwrap().err())
                .collect::<Vec<_>>()
        })
        .unwrap()
    });
    assert!(failures.is_empty(), "reads never woken: {failures:?}");
}
