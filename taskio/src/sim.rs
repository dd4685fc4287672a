//! Deterministic simulation of a cluster in one thread: the public face of the
//! simulated driver (see `driver::sim` for the model of disks and network).
//!
//! ```ignore
//! let mut sim = Sim::new(SimConfig::new(seed));
//! let out = sim.run(|h| {
//!     let a = h.add_node("a", "10.0.0.1".parse().unwrap(), server_program);
//!     let b = h.add_node("b", "10.0.0.2".parse().unwrap(), client_program);
//!     taskio::sleep(Duration::from_secs(5));   // virtual time
//!     h.crash(a);
//!     h.restart(a);
//!     h.run_until(Duration::from_secs(60), || done.get())
//! });
//! println!("trace {:016x}", sim.trace_hash());
//! ```
//!
//! The closure given to [`Sim::run`] is the controller: it runs as the main task, on
//! node 0, outside the simulated nodes. When it returns, every node is stopped (its
//! tasks unwound, its disks kept as they are, its program dropped) and `run` returns
//! its value. Node programs are `Fn()` so that a restart can run them again on what
//! their disks kept.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

pub use crate::driver::sim::{DiskFault, Faults, NetFault, PartitionKind, SimConfig, SimStats};
use crate::driver::sim::{Node, STREAM_SCHED, SimDriver, SimState};
use crate::error::RunError;
use crate::rand::Rng;
use crate::sched::{Config, Runtime, core};
use crate::task::{Builder, sleep};
use crate::timer::Instant;

/// A simulated node's number (the controller is node 0).
pub type NodeId = u32;

/// A simulation: a runtime on the simulated driver, seeded.
pub struct Sim {
    rt: Runtime,
    state: Rc<RefCell<SimState>>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let seed = config.seed;
        let state = Rc::new(RefCell::new(SimState::new(config)));
        let driver = SimDriver {
            state: state.clone(),
        };
        let rt = Runtime::with_driver(
            Config {
                // Wall-clock stalls mean nothing in virtual time.
                stall_threshold: None,
                ..Config::default()
            },
            Box::new(driver),
        );
        rt.set_sched_rng(Rng::stream(seed, STREAM_SCHED));
        Sim { rt, state }
    }

    /// Runs `controller` as the main task; then stops every node and returns.
    pub fn run<T: 'static>(
        &mut self,
        controller: impl FnOnce(&SimHandle) -> T + 'static,
    ) -> Result<T, RunError> {
        let handle = self.handle();
        self.rt.run(move || {
            let v = controller(&handle);
            let nodes = handle.state.borrow().nodes.len() as u32;
            for n in 1..nodes {
                handle.stop(n);
            }
            // The programs go: one that holds a `SimHandle` (its node restarts, its
            // random choices) would keep the simulation, disks and all, alive in a
            // cycle after it is dropped.
            let programs: Vec<_> = handle
                .state
                .borrow_mut()
                .nodes
                .iter_mut()
                .filter_map(|n| n.program.take())
                .collect();
            drop(programs);
            v
        })
    }

    pub fn handle(&self) -> SimHandle {
        SimHandle {
            state: self.state.clone(),
        }
    }

    /// A hash of everything that happened (events, choices, faults and the
    /// scheduler's picks): equal for two runs of the same seed and program.
    pub fn trace_hash(&self) -> u64 {
        self.state.borrow().trace ^ self.rt.sched_trace().rotate_left(17)
    }

    /// The durable contents of a node's file (what any crash keeps).
    pub fn disk_durable(&self, node: NodeId, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.handle().disk_durable(node, path)
    }

    /// What the simulator's faults did so far.
    pub fn stats(&self) -> SimStats {
        self.handle().stats()
    }
}

/// What the controller (and the test after the run) uses to drive the cluster.
#[derive(Clone)]
pub struct SimHandle {
    state: Rc<RefCell<SimState>>,
}

impl SimHandle {
    /// Adds a node with address `ip` and starts `program` on it.
    pub fn add_node(&self, name: &str, ip: IpAddr, program: impl Fn() + 'static) -> NodeId {
        let program: Rc<dyn Fn()> = Rc::new(program);
        let id = {
            let mut s = self.state.borrow_mut();
            assert!(
                s.nodes.iter().all(|n| n.ip != ip && n.name != name),
                "node {name} / {ip} added twice"
            );
            s.nodes.push(Node {
                name: name.to_string(),
                ip,
                alive: true,
                epoch: 0,
                program: Some(program),
            });
            (s.nodes.len() - 1) as NodeId
        };
        self.start(id);
        id
    }

    fn start(&self, node: NodeId) {
        let (name, program) = {
            let s = self.state.borrow();
            let n = &s.nodes[node as usize];
            (n.name.clone(), n.program.clone())
        };
        let Some(program) = program else {
            return;
        };
        let spawned = Builder::new()
            .name(name)
            .node(node)
            .spawn(move || program());
        if let Err(e) = spawned {
            panic!("simulation could not start node {node}: {e}");
        }
    }

    /// Crashes `node`: its tasks end (they unwind when next run, a destructor that
    /// waits meanwhile waits as usual, and any I/O their destructors try is refused),
    /// its connections reset, its disks keep, drop or tear (any subset of its
    /// sectors) each write that was not flushed and each write still in flight.
    pub fn crash(&self, node: NodeId) {
        assert!(node != 0, "the controller cannot crash");
        self.state.borrow_mut().crash_node(node, true);
        core().cancel_node(node);
    }

    /// Stops `node` like a crash, but its disks keep everything written, the writes
    /// in flight included (the kernel completes a dead process's I/O).
    pub fn stop(&self, node: NodeId) {
        assert!(node != 0, "the controller cannot stop");
        self.state.borrow_mut().crash_node(node, false);
        core().cancel_node(node);
    }

    /// Starts `node`'s program again, on what its disks kept.
    pub fn restart(&self, node: NodeId) {
        {
            let mut s = self.state.borrow_mut();
            let n = &mut s.nodes[node as usize];
            assert!(!n.alive, "restart of node {node}, which is running");
            n.alive = true;
        }
        self.start(node);
    }

    pub fn is_alive(&self, node: NodeId) -> bool {
        self.state.borrow().nodes[node as usize].alive
    }

    /// Cuts the network between `a` and `b` until `heal`, resetting or silent (a
    /// seeded choice, half and half: see [`PartitionKind`]).
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.state.borrow_mut().partition(a, b, None);
    }

    /// Cuts the network between `a` and `b`: their connections reset, new ones are
    /// refused, until `heal`.
    pub fn partition_reset(&self, a: NodeId, b: NodeId) {
        self.state
            .borrow_mut()
            .partition(a, b, Some(PartitionKind::Reset));
    }

    /// Cuts the network between `a` and `b` without telling anyone: what crosses is
    /// dropped, the connections that crossed never deliver again, connects across
    /// never complete; only timeouts notice. New connections work after `heal`.
    pub fn partition_silent(&self, a: NodeId, b: NodeId) {
        self.state
            .borrow_mut()
            .partition(a, b, Some(PartitionKind::Silent));
    }

    pub fn heal(&self, a: NodeId, b: NodeId) {
        self.state.borrow_mut().heal(a, b);
    }

    /// Makes the next matching operation on `node`'s file `path` fail as `fault`.
    pub fn inject(&self, node: NodeId, path: impl AsRef<Path>, fault: DiskFault) {
        self.inject_at(node, path, fault, 0..u64::MAX);
    }

    /// Makes the next matching operation on `node`'s file `path` that touches a byte
    /// of `bytes` fail as `fault` (operations elsewhere in the file pass).
    pub fn inject_at(
        &self,
        node: NodeId,
        path: impl AsRef<Path>,
        fault: DiskFault,
        bytes: std::ops::Range<u64>,
    ) {
        assert!(bytes.start < bytes.end, "inject_at: empty range {bytes:?}");
        self.state
            .borrow_mut()
            .inject(node, path.as_ref().to_path_buf(), fault, bytes);
    }

    /// Makes the next chunk of bytes `from` sends `to` (over any connection) arrive
    /// damaged as `fault`; several queue up, each for the next chunk.
    pub fn inject_net(&self, from: NodeId, to: NodeId, fault: NetFault) {
        self.state.borrow_mut().inject_net(from, to, fault);
    }

    /// Makes `path` one disk that every node sees (storage they share, as a SAN
    /// LUN or a shared NVMe namespace): a file any node creates there is the one
    /// the others open, and it survives any node's crash. A crash of a node decides
    /// only that node's writes there: each one it had not flushed, or had in flight,
    /// is kept whole, dropped or torn (as on its own disks); what is kept stays in the
    /// shared disk's volatile cache until a flush by any node. The writes of the
    /// other nodes are untouched. Locks stay each node's own (as `flock`). Call it
    /// before any node opens `path`.
    pub fn share(&self, path: impl AsRef<Path>) {
        let mut s = self.state.borrow_mut();
        let path = path.as_ref().to_path_buf();
        assert!(
            !s.disks.keys().any(|(_, p)| *p == path),
            "share({}) after a node opened it",
            path.display()
        );
        s.shared.insert(path);
    }

    /// The durable contents of a node's file (what any crash keeps).
    pub fn disk_durable(&self, node: NodeId, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        let d = s.disks.get(&s.disk_key(node, path.as_ref()))?;
        Some(d.read_durable())
    }

    /// What a read of a node's file would return now (cache over durable).
    pub fn disk_view(&self, node: NodeId, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        let d = s.disks.get(&s.disk_key(node, path.as_ref()))?;
        Some(d.read(0, d.len() as usize))
    }

    pub fn now(&self) -> Instant {
        self.state.borrow().now()
    }

    /// What the simulator's faults did so far.
    pub fn stats(&self) -> SimStats {
        self.state.borrow().sim_stats
    }

    /// A seeded random number for the controller's own choices (part of the trace).
    pub fn random(&self, below: u64) -> u64 {
        self.state.borrow_mut().rng.below(below)
    }

    /// Sleeps in virtual time until `pred` holds or `limit` has passed; returns
    /// whether `pred` held. Checks every 100 ms of virtual time (each check costs a
    /// wake-up of the controller; use `sleep` for finer steps).
    pub fn run_until(&self, limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
        let deadline = self.now() + limit;
        loop {
            if pred() {
                return true;
            }
            if self.now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(100));
        }
    }
}
