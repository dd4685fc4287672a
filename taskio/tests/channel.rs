//! `Channel` and `select`: FIFO delivery, the bound (a full channel makes senders
//! wait), close semantics, `select` over receive and send arms, and the pass-on that
//! keeps a selecting task from swallowing a wakeup meant for another waiter.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{Log, log, run};
use taskio::{Channel, RecvError, SendError, TryRecvError, TrySendError, select, spawn, yield_now};

#[test]
fn values_arrive_in_fifo_order() {
    let got = run(|| {
        let ch = Rc::new(Channel::new(3));
        let tx = ch.clone();
        let producer = spawn(move || {
            for i in 0..200u32 {
                tx.send(i).unwrap();
                if i % 7 == 0 {
                    yield_now();
                }
            }
        })
        .unwrap();
        let got: Vec<u32> = (0..200).map(|_| ch.recv().unwrap()).collect();
        producer.join().unwrap();
        got
    });
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

#[test]
fn full_channel_refuses_try_send_and_blocks_send() {
    let events: Log<&str> = log();
    let e = events.clone();
    run(move || {
        let ch = Rc::new(Channel::new(2));
        assert_eq!(ch.capacity(), 2);
        ch.try_send(1).unwrap();
        ch.try_send(2).unwrap();
        assert_eq!(ch.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(ch.len(), 2);

        let (tx, e2) = (ch.clone(), e.clone());
        let sender = spawn(move || {
            tx.send(3).unwrap();
            e2.borrow_mut().push("sent 3");
        })
        .unwrap();
        yield_now();
        yield_now();
        assert!(e.borrow().is_empty(), "send on a full channel did not wait");
        assert_eq!(ch.len(), 2, "the channel went over its capacity");

        assert_eq!(ch.recv(), Ok(1));
        e.borrow_mut().push("received 1");
        sender.join().unwrap();
        assert_eq!(ch.len(), 2);
        assert_eq!(ch.recv(), Ok(2));
        assert_eq!(ch.recv(), Ok(3));
        assert!(ch.is_empty());
        assert_eq!(ch.try_recv(), Err(TryRecvError::Empty));
    });
    assert_eq!(*events.borrow(), ["received 1", "sent 3"]);
}

#[test]
fn close_fails_sends_and_lets_receivers_drain() {
    run(|| {
        let ch = Channel::new(4);
        ch.send("a").unwrap();
        ch.send("b").unwrap();
        ch.close();
        assert!(ch.is_closed());
        assert_eq!(ch.send("c"), Err(SendError("c")));
        assert_eq!(ch.try_send("d"), Err(TrySendError::Closed("d")));
        assert_eq!(ch.recv(), Ok("a"));
        assert_eq!(ch.try_recv(), Ok("b"));
        assert_eq!(ch.recv(), Err(RecvError));
        assert_eq!(ch.try_recv(), Err(TryRecvError::Closed));
    });
}

#[test]
fn close_wakes_every_waiting_sender_and_receiver() {
    run(|| {
        let empty = Rc::new(Channel::<u32>::new(1));
        let full = Rc::new(Channel::new(1));
        full.send(0u32).unwrap();
        let receivers: Vec<_> = (0..3)
            .map(|_| {
                let c = empty.clone();
                spawn(move || c.recv()).unwrap()
            })
            .collect();
        let senders: Vec<_> = (1..4u32)
            .map(|v| {
                let c = full.clone();
                spawn(move || c.send(v)).unwrap()
            })
            .collect();
        yield_now(); // everyone waits
        empty.close();
        full.close();
        for h in receivers {
            assert_eq!(h.join().unwrap(), Err(RecvError));
        }
        for (h, v) in senders.into_iter().zip(1..) {
            assert_eq!(h.join().unwrap(), Err(SendError(v)), "value must come back");
        }
        // What was in the closed channel is still delivered.
        assert_eq!(full.recv(), Ok(0));
        assert_eq!(full.recv(), Err(RecvError));
    });
}

#[test]
fn many_producers_and_consumers_deliver_each_value_once() {
    let mut got = run(|| {
        let ch = Rc::new(Channel::new(2));
        let producers: Vec<_> = (0..4u32)
            .map(|p| {
                let ch = ch.clone();
                spawn(move || {
                    for i in 0..50 {
                        ch.send(p * 100 + i).unwrap();
                    }
                })
                .unwrap()
            })
            .collect();
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let ch = ch.clone();
                spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(v) = ch.recv() {
                        got.push(v);
                    }
                    got
                })
                .unwrap()
            })
            .collect();
        for h in producers {
            h.join().unwrap();
        }
        ch.close();
        let mut all = Vec::new();
        for h in consumers {
            let got = h.join().unwrap();
            // Each consumer sees each producer's values in send order.
            for p in 0..4 {
                let mine: Vec<u32> = got.iter().copied().filter(|v| v / 100 == p).collect();
                assert!(mine.is_sorted(), "producer {p} out of order: {mine:?}");
            }
            all.extend(got);
        }
        all
    });
    got.sort();
    let want: Vec<u32> = (0..4)
        .flat_map(|p| (0..50).map(move |i| p * 100 + i))
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------
// select

#[test]
fn select_returns_the_first_ready_arm() {
    run(|| {
        let a = Channel::new(1);
        let b = Channel::new(1);
        b.send(2).unwrap();
        assert_eq!(select(&[&a.recv_ready(), &b.recv_ready()]), 1);
        a.send(1).unwrap();
        assert_eq!(select(&[&a.recv_ready(), &b.recv_ready()]), 0);
        // A closed channel's arm is ready (the operation fails at once).
        let c = Channel::<u8>::new(1);
        c.close();
        assert_eq!(select(&[&c.recv_ready()]), 0);
        assert_eq!(c.try_recv(), Err(TryRecvError::Closed));
        // A send arm is ready when there is room.
        let full = Channel::new(1);
        full.send(0).unwrap();
        let roomy = Channel::<i32>::new(1);
        assert_eq!(select(&[&full.send_ready(), &roomy.send_ready()]), 1);
    });
}

#[test]
fn select_waits_for_a_receive_arm() {
    run(|| {
        let a = Rc::new(Channel::<u32>::new(1));
        let b = Rc::new(Channel::<u32>::new(1));
        let (a2, b2) = (a.clone(), b.clone());
        let h = spawn(move || {
            let i = select(&[&a2.recv_ready(), &b2.recv_ready()]);
            let v = [&a2, &b2][i].try_recv().expect("select said ready");
            (i, v)
        })
        .unwrap();
        yield_now();
        assert!(!h.is_finished(), "select returned with no arm ready");
        b.send(7).unwrap();
        assert_eq!(h.join().unwrap(), (1, 7));
    });
}

#[test]
fn select_waits_for_a_send_arm() {
    run(|| {
        let full = Rc::new(Channel::new(1));
        full.send(10u32).unwrap();
        let idle = Rc::new(Channel::<u32>::new(1));
        let (f2, i2) = (full.clone(), idle.clone());
        let h = spawn(move || {
            let i = select(&[&f2.send_ready(), &i2.recv_ready()]);
            assert_eq!(i, 0);
            f2.try_send(11).expect("select said there was room");
            i
        })
        .unwrap();
        yield_now();
        assert!(!h.is_finished(), "select returned with the channel full");
        assert_eq!(full.recv(), Ok(10));
        assert_eq!(h.join().unwrap(), 0);
        assert_eq!(full.recv(), Ok(11));
    });
}

/// The selecting task is woken by `a` but takes `b`; the wakeup it received for `a`
/// must go to the plain receiver waiting on `a`, or that receiver sleeps forever next
/// to a full channel (the run would end in a deadlock).
#[test]
fn select_passes_on_an_unused_receive_wakeup() {
    run(|| {
        let a = Rc::new(Channel::new(1));
        let b = Rc::new(Channel::new(1));
        let (a1, b1) = (a.clone(), b.clone());
        let selector = spawn(move || {
            let i = select(&[&b1.recv_ready(), &a1.recv_ready()]);
            assert_eq!(i, 0, "both arms are ready when it runs: the first wins");
            b1.try_recv().unwrap()
        })
        .unwrap();
        let a2 = a.clone();
        let plain = spawn(move || a2.recv().unwrap()).unwrap();
        yield_now(); // selector registers on b and a, then plain waits on a
        a.send("for plain").unwrap(); // wakes the selector: first waiter on a
        b.send("for selector").unwrap(); // selector already woken: nobody to wake
        assert_eq!(selector.join().unwrap(), "for selector");
        assert_eq!(plain.join().unwrap(), "for plain");
    });
}

/// The same for send arms: the selector is woken by room in `y` but sends on `x`.
#[test]
fn select_passes_on_an_unused_send_wakeup() {
    run(|| {
        let x = Rc::new(Channel::new(1));
        let y = Rc::new(Channel::new(1));
        x.send(0u32).unwrap();
        y.send(0u32).unwrap();
        let (x1, y1) = (x.clone(), y.clone());
        let selector = spawn(move || {
            let i = select(&[&x1.send_ready(), &y1.send_ready()]);
            assert_eq!(i, 0);
            x1.try_send(1).unwrap();
        })
        .unwrap();
        let y2 = y.clone();
        let plain = spawn(move || y2.send(2).unwrap()).unwrap();
        yield_now();
        assert_eq!(y.recv(), Ok(0)); // room in y wakes the selector
        assert_eq!(x.recv(), Ok(0)); // room in x: selector already woken
        selector.join().unwrap();
        plain.join().unwrap();
        assert_eq!(x.recv(), Ok(1));
        assert_eq!(y.recv(), Ok(2));
    });
}

/// Selecting consumers and plain consumers share channels; every value is taken once
/// and nobody is left waiting.
#[test]
fn selecting_and_plain_consumers_share_channels() {
    let total = run(|| {
        let chans: Rc<[Channel<u32>; 2]> = Rc::new([Channel::new(1), Channel::new(1)]);
        let taken = Rc::new(Cell::new(0u32));
        let mut consumers = Vec::new();
        for c in 0..3 {
            let (chans, taken) = (chans.clone(), taken.clone());
            consumers.push(
                spawn(move || {
                    let mut sum = 0;
                    loop {
                        let v = if c == 0 {
                            chans[0].recv()
                        } else {
                            let i = select(&[&chans[0].recv_ready(), &chans[1].recv_ready()]);
                            chans[i].try_recv().map_err(|e| {
                                assert_eq!(e, TryRecvError::Closed, "select said ready");
                                RecvError
                            })
                        };
                        match v {
                            Ok(v) => {
                                sum += v;
                                taken.set(taken.get() + 1);
                            }
                            Err(RecvError) => return sum,
                        }
                        if sum % 3 == 0 {
                            yield_now();
                        }
                    }
                })
                .unwrap(),
            );
        }
        for i in 0..300u32 {
            chans[(i % 2) as usize].send(i).unwrap();
            if i % 5 == 0 {
                yield_now();
            }
        }
        // Closing one channel makes the selectors return from it at once, so close
        // both only after all values are taken.
        while taken.get() < 300 {
            yield_now();
        }
        chans[0].close();
        chans[1].close();
        consumers
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<u32>()
    });
    assert_eq!(total, (0..300).sum::<u32>());
}

#[test]
fn select_with_no_arms_panics() {
    run(|| {
        let err = spawn(|| select(&[])).unwrap().join().unwrap_err();
        assert!(err.message.contains("no arms"), "{}", err.message);
    });
}
