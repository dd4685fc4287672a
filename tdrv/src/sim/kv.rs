//! The simulator's own scenario: a tiny replicated key-value store, written only to
//! exercise taskio's simulation, and to show what it finds.
//!
//! Two replica nodes keep an append-only log file of PUT records (key, value, CRC)
//! and serve PUT and GET over TCP. A client node writes unique keys to both replicas
//! and counts a PUT acknowledged by a replica once that replica answered OK. The
//! controller partitions the client from one replica for a while (resetting or
//! silent, a seeded choice: the client's read and write timeouts end its waits and
//! it reconnects after the heal), then crashes one replica at a random instant (power
//! loss: unflushed writes and writes in flight kept, dropped or torn), restarts it,
//! and checks the invariant: a restarted replica returns every value it acknowledged.
//!
//! The correct replica makes each record durable (fdatasync) before answering; the
//! `--buggy` one answers first, and the simulator finds seeds where a crash loses an
//! acknowledged write.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use taskio::file::OpenOptions;
use taskio::net::{self, TcpStream};
use taskio::sim::SimHandle;
use taskio::{sleep, spawn};

use super::{Options, SeedRun};

const LOG: &str = "/kv.log";
const RECORD: usize = 24; // key u64, value u64, crc u32, magic u32
const MAGIC: u32 = 0x4b56_5631;
const OP_PUT: u8 = 1;
const OP_GET: u8 = 2;
const REPLY_OK: u8 = 0;
const REPLY_MISSING: u8 = 1;
/// The client's bound on a connect, and on each read and write of a call.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(200);

fn record(key: u64, value: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0..8].copy_from_slice(&key.to_le_bytes());
    r[8..16].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&r[0..16]);
    r[16..20].copy_from_slice(&crc.to_le_bytes());
    r[20..24].copy_from_slice(&MAGIC.to_le_bytes());
    r
}

/// Replays the log: records up to the first torn or missing one.
fn recover(log: &[u8]) -> (BTreeMap<u64, u64>, u64) {
    let mut map = BTreeMap::new();
    let mut end = 0u64;
    for chunk in log.chunks_exact(RECORD) {
        let magic = u32::from_le_bytes([chunk[20], chunk[21], chunk[22], chunk[23]]);
        let crc = u32::from_le_bytes([chunk[16], chunk[17], chunk[18], chunk[19]]);
        if magic != MAGIC || crc != crc32c::crc32c(&chunk[0..16]) {
            break;
        }
        let key = u64::from_le_bytes(chunk[0..8].try_into().unwrap_or_default());
        let value = u64::from_le_bytes(chunk[8..16].try_into().unwrap_or_default());
        map.insert(key, value);
        end += RECORD as u64;
    }
    (map, end)
}

/// The replica program: recover, then serve until crashed.
fn replica(addr: SocketAddr, buggy: bool) {
    let Ok(file) = OpenOptions::new().create(true).open(LOG) else {
        return;
    };
    let len = file.len().unwrap_or(0) as usize;
    let mut bytes = vec![0u8; len];
    let n = file.read_at(&mut bytes, 0).unwrap_or(0);
    let (map, end) = recover(&bytes[..n]);
    let state = Rc::new((file, RefCell::new(map), Cell::new(end)));
    let Ok(listener) = net::listen(addr) else {
        return;
    };
    while let Ok((conn, _)) = listener.accept() {
        let state = state.clone();
        let _ = spawn(move || {
            let (file, map, end) = &*state;
            let mut req = [0u8; 17];
            while conn.read_exact(&mut req).is_ok() {
                let key = u64::from_le_bytes(req[1..9].try_into().unwrap_or_default());
                let value = u64::from_le_bytes(req[9..17].try_into().unwrap_or_default());
                let mut reply = [0u8; 9];
                match req[0] {
                    OP_PUT => {
                        let off = end.get();
                        end.set(off + RECORD as u64);
                        if file.write_at(&record(key, value), off).is_err() {
                            return;
                        }
                        if !buggy && file.fdatasync().is_err() {
                            return;
                        }
                        map.borrow_mut().insert(key, value);
                        reply[0] = REPLY_OK;
                    }
                    OP_GET => match map.borrow().get(&key) {
                        Some(v) => {
                            reply[0] = REPLY_OK;
                            reply[1..9].copy_from_slice(&v.to_le_bytes());
                        }
                        None => reply[0] = REPLY_MISSING,
                    },
                    _ => return,
                }
                if conn.write_all(&reply).is_err() {
                    return;
                }
            }
        });
    }
}

fn call(conn: &TcpStream, op: u8, key: u64, value: u64) -> Option<[u8; 9]> {
    let mut req = [0u8; 17];
    req[0] = op;
    req[1..9].copy_from_slice(&key.to_le_bytes());
    req[9..17].copy_from_slice(&value.to_le_bytes());
    conn.write_all(&req).ok()?;
    let mut reply = [0u8; 9];
    conn.read_exact(&mut reply).ok()?;
    Some(reply)
}

/// Acknowledged writes, per replica index.
type Acked = Rc<RefCell<[BTreeMap<u64, u64>; 2]>>;

/// The client program: PUT unique keys to both replicas, one at a time.
fn client(replicas: [SocketAddr; 2], acked: Acked, next_key: Rc<Cell<u64>>) {
    let mut conns: [Option<TcpStream>; 2] = [None, None];
    loop {
        let key = next_key.get();
        next_key.set(key + 1);
        let value = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for (i, addr) in replicas.iter().enumerate() {
            if conns[i].is_none() {
                conns[i] = net::connect(*addr, Some(CLIENT_TIMEOUT)).ok();
                if let Some(c) = &conns[i] {
                    c.set_read_timeout(Some(CLIENT_TIMEOUT));
                    c.set_write_timeout(Some(CLIENT_TIMEOUT));
                }
            }
            let Some(c) = &conns[i] else {
                continue;
            };
            match call(c, OP_PUT, key, value) {
                Some(r) if r[0] == REPLY_OK => {
                    acked.borrow_mut()[i].insert(key, value);
                }
                _ => conns[i] = None,
            }
        }
        sleep(Duration::from_millis(1));
    }
}

/// Runs one seed of the scenario.
pub fn run_seed(seed: u64, opts: Options) -> SeedRun {
    let mut sim = super::simulator(seed);
    let buggy = opts.buggy;
    let checked = Rc::new(Cell::new(0usize));
    let checked2 = checked.clone();
    let result = sim.run(move |h: &SimHandle| -> Option<String> {
        let addrs: [SocketAddr; 2] = [
            SocketAddr::from(([10, 0, 0, 1], 7000)),
            SocketAddr::from(([10, 0, 0, 2], 7000)),
        ];
        let nodes = [
            h.add_node("kv-a", addrs[0].ip(), move || replica(addrs[0], buggy)),
            h.add_node("kv-b", addrs[1].ip(), move || replica(addrs[1], buggy)),
        ];
        let acked: Acked = Rc::new(RefCell::new([BTreeMap::new(), BTreeMap::new()]));
        let next_key = Rc::new(Cell::new(1u64));
        let (a2, k2) = (acked.clone(), next_key.clone());
        let client_ip = SocketAddr::from(([10, 0, 0, 9], 0)).ip();
        let client_node = h.add_node("client", client_ip, move || {
            client(addrs, a2.clone(), k2.clone())
        });
        // Cut the client from one replica for a while (resetting or silent).
        sleep(Duration::from_millis(h.random(200)));
        let cut = nodes[h.random(2) as usize];
        h.partition(client_node, cut);
        sleep(Duration::from_millis(h.random(300)));
        h.heal(client_node, cut);
        // Let traffic run, crash one replica at a random instant, restart it.
        sleep(Duration::from_millis(50 + h.random(450)));
        let victim = h.random(2) as usize;
        h.crash(nodes[victim]);
        h.stop(client_node);
        sleep(Duration::from_millis(h.random(50)));
        h.restart(nodes[victim]);
        // Check: the restarted replica returns everything it acknowledged.
        let want: Vec<(u64, u64)> = acked.borrow()[victim]
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        let conn = loop {
            if let Ok(c) = net::connect(addrs[victim], Some(Duration::from_millis(100))) {
                break c;
            }
            sleep(Duration::from_millis(5));
        };
        checked2.set(want.len());
        for (key, value) in &want {
            match call(&conn, OP_GET, *key, 0) {
                Some(r) if r[0] == REPLY_OK && r[1..9] == value.to_le_bytes() => {}
                Some(r) if r[0] == REPLY_MISSING => {
                    return Some(format!(
                        "replica {} lost acknowledged key {key} after a crash ({} acknowledged)",
                        victim,
                        want.len()
                    ));
                }
                other => return Some(format!("replica {victim}: GET {key} answered {other:?}")),
            }
        }
        None
    });
    let trace = sim.trace_hash();
    let failure = match result {
        Ok(f) => f,
        Err(e) => Some(format!("the simulation itself failed: {e}")),
    };
    SeedRun {
        trace,
        failure,
        detail: {
            let st = sim.stats();
            format!(
                "{} acknowledged writes checked; {} silent and {} resetting partitions, {} chunks and {} connects lost silently",
                checked.get(),
                st.partitions_silent,
                st.partitions_reset,
                st.silent_chunks_dropped,
                st.silent_connects_lost
            )
        },
    }
}
