use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use taskio::file::OpenOptions;
use taskio::sim::{Sim, SimConfig};
use taskio::*;

fn run_echo(seed: u64) -> (u64, u64, Duration) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let done = Rc::new(Cell::new(0u64));
    let d2 = done.clone();
    let elapsed = sim
        .run(move |h| {
            let t0 = now();
            let server: SocketAddr = "10.0.0.1:7000".parse().unwrap();
            h.add_node("srv", server.ip(), move || {
                let l = net::listen(server).unwrap();
                loop {
                    let (s, _) = l.accept().unwrap();
                    spawn(move || {
                        let mut b = [0u8; 32];
                        while s.read_exact(&mut b).is_ok() {
                            if s.write_all(&b).is_err() {
                                break;
                            }
                        }
                    })
                    .unwrap();
                }
            });
            let d3 = d2.clone();
            h.add_node("cli", "10.0.0.2".parse().unwrap(), move || {
                let c = net::connect(server, Some(Duration::from_secs(1))).unwrap();
                for i in 0..200u64 {
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&i.to_le_bytes());
                    c.write_all(&b).unwrap();
                    let mut r = [0u8; 32];
                    c.read_exact(&mut r).unwrap();
                    assert_eq!(r, b);
                    d3.set(d3.get() + 1);
                    sleep(Duration::from_secs(10));
                }
            });
            let ok = h.run_until(Duration::from_secs(3 * 3600), || d2.get() == 200);
            assert!(ok, "done {}", d2.get());
            now() - t0
        })
        .unwrap();
    (sim.trace_hash(), done.get(), elapsed)
}

#[test]
fn echo_over_simulated_network_is_deterministic_and_virtual() {
    let wall = std::time::Instant::now();
    let (h1, n1, e1) = run_echo(7);
    let (h2, n2, e2) = run_echo(7);
    let (h3, _, _) = run_echo(8);
    assert_eq!(n1, 200);
    assert_eq!(n2, 200);
    assert_eq!(h1, h2, "same seed, same trace");
    assert_eq!(e1, e2);
    assert_ne!(h1, h3, "another seed, another trace");
    assert!(
        e1 >= Duration::from_secs(1990),
        "virtual time advanced {e1:?}"
    );
    assert!(wall.elapsed() < Duration::from_secs(20));
}

#[test]
fn crash_keeps_flushed_and_may_drop_unflushed() {
    let mut kept_unflushed = 0;
    let mut dropped_unflushed = 0;
    for seed in 0..40 {
        let mut sim = Sim::new(SimConfig::new(seed));
        let node = sim
            .run(|h| {
                let ready = Rc::new(Cell::new(false));
                let r2 = ready.clone();
                let n = h.add_node("disk", "10.0.0.1".parse().unwrap(), move || {
                    let f = OpenOptions::new().create(true).open("/data").unwrap();
                    f.write_at(&[1u8; 4096], 0).unwrap();
                    f.fdatasync().unwrap();
                    f.write_at(&[2u8; 4096], 4096).unwrap();
                    r2.set(true);
                    sleep(Duration::from_secs(100));
                });
                assert!(h.run_until(Duration::from_secs(10), || ready.get()));
                h.crash(n);
                n
            })
            .unwrap();
        let d = sim.disk_durable(node, "/data").unwrap();
        assert!(
            d.len() >= 4096 && d[..4096].iter().all(|&b| b == 1),
            "flushed data lost (seed {seed})"
        );
        if d.len() >= 8192 && d[4096..8192].iter().all(|&b| b == 2) {
            kept_unflushed += 1;
        } else if d.len() == 4096 || d[4096..].iter().all(|&b| b != 2) {
            dropped_unflushed += 1;
        }
    }
    assert!(
        kept_unflushed > 0 && dropped_unflushed > 0,
        "kept {kept_unflushed} dropped {dropped_unflushed}"
    );
}
