//! The simulation driver itself: determinism, virtual time, flush semantics,
//! resetting partitions, crash and restart, injected and seeded faults.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use taskio::file::OpenOptions;
use taskio::sim::{DiskFault, Faults, Sim, SimConfig};
use taskio::{AlignedBuf, IoError, net, now, sleep, spawn, yield_now};

const SRV: ([u8; 4], u16) = ([10, 0, 0, 1], 7000);

fn srv() -> SocketAddr {
    SocketAddr::from(SRV)
}

/// A busy program: several tasks, sleeps, a file and a socket per node.
fn busy(seed: u64) -> (u64, Vec<u8>) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let log = Rc::new(RefCell::new(Vec::new()));
    let l2 = log.clone();
    sim.run(move |h| {
        let l3 = l2.clone();
        let a = h.add_node("a", srv().ip(), move || {
            let f = OpenOptions::new().create(true).open("/f").unwrap();
            let l = net::listen(srv()).unwrap();
            let (s, _) = l.accept().unwrap();
            let mut b = [0u8; 4];
            let mut off = 0;
            while s.read_exact(&mut b).is_ok() {
                f.write_at(&b, off).unwrap();
                off += 4;
                l3.borrow_mut().push(b[0]);
            }
        });
        h.add_node("b", "10.0.0.2".parse().unwrap(), move || {
            let c = Rc::new(net::connect(srv(), Some(Duration::from_secs(1))).unwrap());
            let mut hs = Vec::new();
            for t in 0..4u8 {
                let c = c.clone();
                hs.push(spawn(move || {
                    for i in 0..10u8 {
                        sleep(Duration::from_micros(100 * (i as u64 + t as u64)));
                        while c.write_all(&[t * 16 + i; 4]).is_err() {
                            yield_now();
                        }
                    }
                }));
            }
            for h in hs {
                h.unwrap().join().unwrap();
            }
        });
        h.run_until(Duration::from_secs(10), || l2.borrow().len() == 40);
        let _ = a;
    })
    .unwrap();
    let out = log.borrow().clone();
    (sim.trace_hash(), out)
}

#[test]
fn same_seed_same_schedule_and_result_other_seed_differs() {
    let (h1, o1) = busy(42);
    let (h2, o2) = busy(42);
    assert_eq!(o1.len(), 40);
    assert_eq!(h1, h2);
    assert_eq!(o1, o2, "same seed, same order of arrival");
    let others: Vec<(u64, Vec<u8>)> = (43..48).map(busy).collect();
    assert!(
        others.iter().any(|(h, _)| *h != h1),
        "seeds change the trace"
    );
    assert!(
        others.iter().any(|(_, o)| *o != o1),
        "seeds change the interleaving"
    );
}

#[test]
fn virtual_time_jumps_an_hour_in_no_time() {
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(SimConfig::new(1));
    let slept = sim
        .run(|_| {
            let t0 = now();
            sleep(Duration::from_secs(3600));
            now() - t0
        })
        .unwrap();
    assert!(slept >= Duration::from_secs(3600) && slept < Duration::from_secs(3601));
    assert!(wall.elapsed() < Duration::from_secs(2));
}

/// Writes one block, flushes or not, crashes; returns the durable image.
fn crash_after_write(seed: u64, flush: bool, dsync_write: bool) -> Vec<u8> {
    let mut sim = Sim::new(SimConfig::new(seed));
    let node = sim
        .run(move |h| {
            let ready = Rc::new(Cell::new(false));
            let r = ready.clone();
            let n = h.add_node("d", srv().ip(), move || {
                let f = OpenOptions::new().create(true).open("/d").unwrap();
                let mut b = AlignedBuf::new(8 * 512);
                b.fill(7);
                if dsync_write {
                    f.pwrite_durable(&b, 0).unwrap();
                } else {
                    f.pwrite(&b, 0).unwrap();
                }
                if flush {
                    f.fsync().unwrap();
                }
                r.set(true);
                sleep(Duration::from_secs(60));
            });
            assert!(h.run_until(Duration::from_secs(5), || ready.get()));
            h.crash(n);
            n
        })
        .unwrap();
    sim.disk_durable(node, "/d").unwrap_or_default()
}

#[test]
fn flushed_and_durable_writes_survive_every_crash() {
    for seed in 0..30 {
        for (flush, dsync) in [(true, false), (false, true)] {
            let d = crash_after_write(seed, flush, dsync);
            assert_eq!(d.len(), 4096, "seed {seed}");
            assert!(
                d.iter().all(|&b| b == 7),
                "seed {seed}: durable data changed"
            );
        }
    }
}

#[test]
fn partition_resets_connections_and_refuses_new_ones_until_healed() {
    let mut sim = Sim::new(SimConfig::new(3));
    let outcome = Rc::new(RefCell::new(Vec::<String>::new()));
    let o = outcome.clone();
    sim.run(move |h| {
        let a = h.add_node("a", srv().ip(), || {
            let l = net::listen(srv()).unwrap();
            loop {
                let (s, _) = l.accept().unwrap();
                spawn(move || {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                })
                .unwrap();
            }
        });
        let o2 = o.clone();
        let b = h.add_node("b", "10.0.0.2".parse().unwrap(), move || {
            let c = net::connect(srv(), Some(Duration::from_secs(1))).unwrap();
            c.write_all(&[1]).unwrap();
            let mut r = [0u8; 1];
            c.read_exact(&mut r).unwrap();
            o2.borrow_mut().push("echoed".into());
            // Now wait for the partition to cut us off.
            let e = c.read_exact(&mut r).unwrap_err();
            o2.borrow_mut().push(format!("cut: {:?}", e.kind()));
            let e = net::connect(srv(), Some(Duration::from_millis(100))).unwrap_err();
            o2.borrow_mut().push(format!("refused: {:?}", e.kind()));
            sleep(Duration::from_secs(2));
            let c = net::connect(srv(), Some(Duration::from_secs(1))).unwrap();
            c.write_all(&[2]).unwrap();
            c.read_exact(&mut r).unwrap();
            o2.borrow_mut().push("healed".into());
        });
        assert!(h.run_until(Duration::from_secs(1), || o.borrow().len() == 1));
        h.partition_reset(a, b);
        sleep(Duration::from_secs(1));
        h.heal(a, b);
        assert!(h.run_until(Duration::from_secs(10), || o.borrow().len() == 4));
    })
    .unwrap();
    let out = outcome.borrow();
    assert_eq!(out[0], "echoed");
    assert_eq!(out[1], "cut: ConnectionReset");
    assert_eq!(out[2], "refused: ConnectionRefused");
    assert_eq!(out[3], "healed");
}

#[test]
fn crash_ends_the_nodes_tasks_and_restart_runs_its_program_on_what_the_disk_kept() {
    let mut sim = Sim::new(SimConfig::new(9));
    let boots = Rc::new(RefCell::new(Vec::<usize>::new()));
    let b2 = boots.clone();
    let dropped = Rc::new(Cell::new(0));
    let d2 = dropped.clone();
    sim.run(move |h| {
        let b3 = b2.clone();
        let d3 = d2.clone();
        let n = h.add_node("n", srv().ip(), move || {
            struct OnDrop(Rc<Cell<u32>>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.set(self.0.get() + 1);
                }
            }
            let _guard = OnDrop(d3.clone());
            let f = OpenOptions::new().create(true).open("/boot").unwrap();
            let len = f.len().unwrap() as usize;
            b3.borrow_mut().push(len);
            f.write_at(&[1u8; 512], len as u64).unwrap();
            f.fdatasync().unwrap();
            sleep(Duration::from_secs(3600));
        });
        assert!(h.run_until(Duration::from_secs(1), || b2.borrow().len() == 1));
        h.crash(n);
        assert!(!h.is_alive(n));
        sleep(Duration::from_millis(10));
        assert_eq!(d2.get(), 1, "the crashed node's task was unwound");
        h.restart(n);
        assert!(h.run_until(Duration::from_secs(1), || b2.borrow().len() == 2));
    })
    .unwrap();
    assert_eq!(
        *boots.borrow(),
        vec![0, 512],
        "second boot sees the first boot's durable block"
    );
    assert_eq!(
        dropped.get(),
        2,
        "both boots' tasks unwound (crash, then end of run)"
    );
}

#[test]
fn injected_disk_faults_hit_the_next_matching_operation() {
    let mut sim = Sim::new(SimConfig::new(5));
    let results = Rc::new(RefCell::new(Vec::<String>::new()));
    let r2 = results.clone();
    sim.run(move |h| {
        let r3 = r2.clone();
        let n = h.add_node("n", srv().ip(), move || {
            let f = OpenOptions::new().create(true).open("/x").unwrap();
            f.write_at(&[9u8; 512], 0).unwrap();
            sleep(Duration::from_millis(10)); // the controller injects now
            let w = f.write_at(&[8u8; 512], 0);
            let mut b = [0u8; 512];
            let r = f.read_at(&mut b, 0);
            let r_ok = f.read_at(&mut b, 0).map(|_| b[0]);
            let mut c = [0u8; 512];
            f.read_at(&mut c, 0).unwrap();
            let errno = |e: IoError| match e {
                IoError::At { source, .. } => source.raw_os_error(),
                _ => None,
            };
            r3.borrow_mut().push(format!("{:?}", w.map_err(errno)));
            r3.borrow_mut().push(format!("{:?}", r.map_err(errno)));
            r3.borrow_mut().push(format!("{r_ok:?}"));
            r3.borrow_mut()
                .push(format!("{}", c.iter().filter(|&&x| x != 9).count()));
        });
        sleep(Duration::from_millis(5));
        h.inject(n, "/x", DiskFault::WriteError);
        h.inject(n, "/x", DiskFault::ReadError);
        h.inject(n, "/x", DiskFault::CorruptRead);
        assert!(h.run_until(Duration::from_secs(1), || r2.borrow().len() == 4));
    })
    .unwrap();
    let r = results.borrow();
    assert_eq!(r[0], "Err(Some(5))", "injected write error (EIO)");
    assert_eq!(r[1], "Err(Some(5))", "injected read error (EIO)");
    assert_eq!(
        r[2], "Ok(9)",
        "the failed write changed nothing; a corrupt read is next"
    );
    assert_eq!(r[3], "0", "the read after the corrupt one is clean");
}

#[test]
fn seeded_fault_rates_produce_errors_deterministically() {
    let run = |seed| {
        let mut config = SimConfig::new(seed);
        config.faults = Faults {
            disk_write_error: 0.2,
            ..Faults::default()
        };
        let mut sim = Sim::new(config);
        let errors = Rc::new(Cell::new(0));
        let e2 = errors.clone();
        sim.run(move |h| {
            let e3 = e2.clone();
            let done = Rc::new(Cell::new(false));
            let d2 = done.clone();
            h.add_node("n", srv().ip(), move || {
                let f = OpenOptions::new().create(true).open("/y").unwrap();
                for i in 0..100u64 {
                    if f.write_at(&[1u8; 512], i * 512).is_err() {
                        e3.set(e3.get() + 1);
                    }
                }
                d2.set(true);
            });
            assert!(h.run_until(Duration::from_secs(10), || done.get()));
        })
        .unwrap();
        (errors.get(), sim.trace_hash())
    };
    let (e1, h1) = run(11);
    let (e2, h2) = run(11);
    assert_eq!((e1, h1), (e2, h2));
    assert!(
        (5..=40).contains(&e1),
        "about 20% of 100 writes failed: {e1}"
    );
}

#[test]
fn silent_partition_drops_what_crosses_so_only_timeouts_notice() {
    let mut sim = Sim::new(SimConfig::new(4));
    let outcome = Rc::new(RefCell::new(Vec::<String>::new()));
    let o = outcome.clone();
    sim.run(move |h| {
        let a = h.add_node("a", srv().ip(), || {
            let l = net::listen(srv()).unwrap();
            loop {
                let (s, _) = l.accept().unwrap();
                spawn(move || {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                })
                .unwrap();
            }
        });
        let o2 = o.clone();
        let b = h.add_node("b", "10.0.0.2".parse().unwrap(), move || {
            let c = net::connect(srv(), Some(Duration::from_secs(1))).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(200)));
            let mut r = [0u8; 1];
            c.write_all(&[1]).unwrap();
            c.read_exact(&mut r).unwrap();
            o2.borrow_mut().push("echoed".into());
            // The controller cuts the network silently now.
            sleep(Duration::from_millis(100));
            let sent = c.write_all(&[2]).map_err(|e| e.kind());
            o2.borrow_mut().push(format!("send: {sent:?}"));
            let e = c.read_exact(&mut r).unwrap_err();
            o2.borrow_mut().push(format!("read: {:?}", e.kind()));
            let e = net::connect(srv(), Some(Duration::from_millis(100))).unwrap_err();
            o2.borrow_mut().push(format!("connect: {:?}", e.kind()));
            sleep(Duration::from_secs(2));
            // Healed: the old connection stays dead, a new one works.
            let e = c.read_exact(&mut r).unwrap_err();
            o2.borrow_mut()
                .push(format!("old after heal: {:?}", e.kind()));
            let c = net::connect(srv(), Some(Duration::from_secs(1))).unwrap();
            c.write_all(&[3]).unwrap();
            c.read_exact(&mut r).unwrap();
            o2.borrow_mut().push(format!("healed: {}", r[0]));
        });
        assert!(h.run_until(Duration::from_secs(1), || o.borrow().len() == 1));
        h.partition_silent(a, b);
        sleep(Duration::from_secs(1));
        h.heal(a, b);
        assert!(h.run_until(Duration::from_secs(10), || o.borrow().len() == 6));
    })
    .unwrap();
    let out = outcome.borrow();
    assert_eq!(
        *out,
        [
            "echoed",
            "send: Ok(())",
            "read: TimedOut",
            "connect: TimedOut",
            "old after heal: TimedOut",
            "healed: 3",
        ]
    );
    let st = sim.stats();
    assert_eq!((st.partitions_silent, st.partitions_reset), (1, 0));
    assert!(st.silent_chunks_dropped >= 1, "{st:?}");
    assert_eq!(st.silent_connects_lost, 1, "{st:?}");
}

#[test]
fn partition_without_a_kind_is_a_seeded_choice_of_both() {
    let kinds: Vec<(u64, u64)> = (0..16)
        .map(|seed| {
            let mut sim = Sim::new(SimConfig::new(seed));
            sim.run(|h| {
                let a = h.add_node("a", srv().ip(), || {});
                let b = h.add_node("b", "10.0.0.2".parse().unwrap(), || {});
                h.partition(a, b);
            })
            .unwrap();
            let st = sim.stats();
            (st.partitions_reset, st.partitions_silent)
        })
        .collect();
    assert!(kinds.iter().all(|&(r, s)| r + s == 1));
    assert!(
        kinds.contains(&(1, 0)) && kinds.contains(&(0, 1)),
        "{kinds:?}"
    );
}

/// An injected net fault damages the next chunk from one node to the other (one
/// byte changed, or a tail lost) and nothing else: the chunks around it and the
/// other direction arrive intact.
#[test]
fn injected_net_faults_corrupt_or_truncate_the_next_chunk_only() {
    use taskio::sim::NetFault;
    const CHUNK: usize = 64;
    let mut sim = Sim::new(SimConfig::new(5));
    let got = Rc::new(RefCell::new(Vec::<Vec<u8>>::new()));
    let g2 = got.clone();
    sim.run(move |h| {
        let g3 = g2.clone();
        let a = h.add_node("a", srv().ip(), move || {
            let l = net::listen(srv()).unwrap();
            let (s, _) = l.accept().unwrap();
            let mut buf = [0u8; CHUNK];
            // Read each chunk as it comes: a truncated one is short.
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => g3.borrow_mut().push(buf[..n].to_vec()),
                }
            }
        });
        let b = h.add_node("b", "10.0.0.2".parse().unwrap(), move || {
            let c = net::connect(srv(), Some(Duration::from_secs(1))).unwrap();
            for i in 0..3u8 {
                c.write_all(&[i + 1; CHUNK]).unwrap();
                // Far apart, so that each chunk is read alone.
                sleep(Duration::from_millis(10));
            }
        });
        h.inject_net(a, b, NetFault::Corrupt); // the other direction: never used
        h.inject_net(b, a, NetFault::Corrupt);
        h.inject_net(b, a, NetFault::Truncate);
        h.run_until(Duration::from_secs(1), || {
            !h.is_alive(b) || g2.borrow().len() >= 3
        });
        sleep(Duration::from_millis(100));
    })
    .unwrap();
    let got = got.borrow();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].len(), CHUNK);
    assert_eq!(
        got[0].iter().filter(|&&x| x != 1).count(),
        1,
        "one byte changed"
    );
    assert!(
        got[1].len() < CHUNK && got[1].iter().all(|&x| x == 2),
        "a tail lost"
    );
    assert_eq!(got[2], vec![3u8; CHUNK], "the next chunk intact");
    let st = sim.stats();
    assert_eq!((st.net_chunks_corrupted, st.net_chunks_truncated), (1, 1));
}

/// A node program that holds the simulation's handle (to restart nodes, to draw
/// random numbers) does not keep the simulation alive once it is dropped: `run`
/// drops the programs when it ends.
#[test]
fn a_program_holding_the_handle_is_dropped_with_the_simulation() {
    let held = Rc::new(());
    let weak = Rc::downgrade(&held);
    let mut sim = Sim::new(SimConfig::new(3));
    sim.run(move |h| {
        let h2 = h.clone();
        h.add_node("a", srv().ip(), move || {
            let _ = (&held, h2.random(2));
            sleep(Duration::from_secs(60));
        });
        sleep(Duration::from_millis(1));
    })
    .unwrap();
    drop(sim);
    assert!(
        weak.upgrade().is_none(),
        "the program outlived the simulation"
    );
}
