//! The simulated network: connections as pairs of ordered pipes of chunks,
//! partitions, resets.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Side {
    /// The connecting side.
    A,
    /// The accepted side.
    B,
}

#[derive(Default)]
pub(super) struct Pipe {
    /// (deliver at, bytes); an empty chunk is the end of stream (FIN).
    pub(super) chunks: VecDeque<(u64, Vec<u8>)>,
    pub(super) bytes: usize,
    pub(super) last_at: u64,
    pub(super) fin: bool,
}

pub(super) struct Conn {
    pub(super) a_fd: RawFd,
    pub(super) b_fd: Option<RawFd>,
    pub(super) a_node: u32,
    pub(super) b_node: u32,
    pub(super) a_addr: SocketAddr,
    pub(super) b_addr: SocketAddr,
    pub(super) to_a: Pipe,
    pub(super) to_b: Pipe,
    pub(super) reset: bool,
    pub(super) established: bool,
    pub(super) refused: bool,
    /// Cut by a silent partition: it never delivers anything again.
    pub(super) silent: bool,
}

impl Conn {
    pub(super) fn inbound(&mut self, side: Side) -> &mut Pipe {
        match side {
            Side::A => &mut self.to_a,
            Side::B => &mut self.to_b,
        }
    }

    pub(super) fn outbound(&mut self, side: Side) -> &mut Pipe {
        match side {
            Side::A => &mut self.to_b,
            Side::B => &mut self.to_a,
        }
    }

    pub(super) fn peer_fd(&self, side: Side) -> Option<RawFd> {
        match side {
            Side::A => self.b_fd,
            Side::B => Some(self.a_fd),
        }
    }
}

impl SimState {
    pub(super) fn node_ip(&self, node: u32) -> IpAddr {
        self.nodes[node as usize].ip
    }

    pub(super) fn node_of_ip(&self, ip: IpAddr) -> Option<u32> {
        self.nodes.iter().position(|n| n.ip == ip).map(|i| i as u32)
    }

    pub(super) fn partitioned(&self, a: u32, b: u32) -> Option<PartitionKind> {
        self.partitions.get(&(a.min(b), a.max(b))).copied()
    }

    /// Maps loopback and unspecified addresses to the node's own address.
    pub(super) fn own_addr(&self, node: u32, addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_loopback() || addr.ip().is_unspecified() {
            SocketAddr::new(self.node_ip(node), addr.port())
        } else {
            addr
        }
    }

    pub(super) fn ephemeral_port(&mut self) -> u16 {
        self.next_port = self.next_port.checked_add(1).unwrap_or(40000);
        self.next_port
    }

    pub(super) fn stream(&self, fd: RawFd) -> io::Result<(u64, Side)> {
        match self.fds.get(&fd) {
            Some(SimFd::Stream { conn, side, .. }) => Ok((*conn, *side)),
            Some(_) => Err(err(libc::ENOTSOCK)),
            None => Err(err(libc::EBADF)),
        }
    }

    /// Resets a connection: both ends see ECONNRESET; their waiters wake.
    pub(super) fn reset_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.reset {
            return;
        }
        c.reset = true;
        let fds = [Some(c.a_fd), c.b_fd];
        mix(&mut self.trace, &[0xdead, id]);
        let now = self.now;
        for fd in fds.into_iter().flatten() {
            self.at(now, EvKind::Ready(fd, Interest::Read));
            self.at(now, EvKind::Ready(fd, Interest::Write));
        }
    }

    pub(super) fn arrive(&mut self, id: u64) -> usize {
        let Some(c) = self.conns.get(&id) else {
            return 0;
        };
        let (a_fd, a_node, b_addr) = (c.a_fd, c.a_node, c.b_addr);
        let listener = self.listeners.get(&b_addr).copied();
        let target = listener.and_then(|l| match self.fds.get(&l) {
            Some(SimFd::Listener { node, .. }) => Some((l, *node)),
            _ => None,
        });
        let cut = target.and_then(|(_, node)| self.partitioned(a_node, node));
        if cut == Some(PartitionKind::Silent) {
            // The SYN is lost: the connect never completes; only its timeout ends it.
            self.sim_stats.silent_connects_lost += 1;
            mix(&mut self.trace, &[0x5c, id]);
            return 0;
        }
        let ok = match target {
            Some((_, node)) => self.nodes[node as usize].alive && cut.is_none(),
            None => false,
        };
        let mut woken = 0;
        match (ok, target) {
            (true, Some((lfd, lnode))) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.established = true;
                    c.b_node = lnode;
                }
                if let Some(SimFd::Listener { backlog, .. }) = self.fds.get_mut(&lfd) {
                    backlog.push_back(id);
                }
                woken += usize::from(self.wake(lfd, Interest::Read));
            }
            _ => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.refused = true;
                }
            }
        }
        woken += usize::from(self.wake(a_fd, Interest::Write));
        woken
    }

    pub(super) fn close_fd(&mut self, fd: RawFd, reset: bool) {
        self.waiters.remove(&(fd, 0));
        self.waiters.remove(&(fd, 1));
        match self.fds.remove(&fd) {
            Some(SimFd::Listener { addr, backlog, .. }) => {
                self.listeners.remove(&addr);
                for id in backlog {
                    self.reset_conn(id);
                }
            }
            Some(SimFd::Stream { conn, side, .. }) => {
                if reset {
                    self.reset_conn(conn);
                } else {
                    // Orderly close: the peer reads what was sent, then end of stream.
                    self.send_fin(conn, side);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    match side {
                        Side::A => c.a_fd = -1,
                        Side::B => c.b_fd = None,
                    }
                    if c.a_fd == -1 && c.b_fd.is_none() {
                        self.conns.remove(&conn);
                    }
                }
            }
            Some(SimFd::File { node, path, .. }) => self.unlock((node, path), fd),
            Some(SimFd::Event { .. }) | None => {}
        }
    }

    /// Queues the end of stream of `side` of connection `id` (once), behind what it
    /// sent; a silently cut connection drops it.
    pub(super) fn send_fin(&mut self, id: u64, side: Side) {
        let now = self.now;
        let lat = latency(&mut self.rng, self.config.net_latency);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let silent = c.silent;
        let peer = c.peer_fd(side);
        let pipe = c.outbound(side);
        if pipe.fin {
            return;
        }
        pipe.fin = true;
        if silent {
            self.sim_stats.silent_chunks_dropped += 1;
            return;
        }
        let at = (now + lat).max(pipe.last_at);
        pipe.last_at = at;
        pipe.chunks.push_back((at, Vec::new()));
        if let Some(peer) = peer {
            self.at(at, EvKind::Ready(peer, Interest::Read));
        }
    }

    /// Cuts the network between `a` and `b` (`kind` None: a seeded choice of reset
    /// or silent, half and half) until `heal`.
    pub(crate) fn partition(&mut self, a: u32, b: u32, kind: Option<PartitionKind>) {
        let kind = kind.unwrap_or_else(|| {
            if self.rng.chance(0.5) {
                PartitionKind::Silent
            } else {
                PartitionKind::Reset
            }
        });
        mix(&mut self.trace, &[0x9a, a as u64, b as u64, kind as u64]);
        match kind {
            PartitionKind::Reset => self.sim_stats.partitions_reset += 1,
            PartitionKind::Silent => self.sim_stats.partitions_silent += 1,
        }
        self.partitions.insert((a.min(b), a.max(b)), kind);
        let crossing: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| (c.a_node, c.b_node) == (a, b) || (c.a_node, c.b_node) == (b, a))
            .map(|(id, _)| *id)
            .collect();
        for id in crossing {
            match kind {
                PartitionKind::Reset => self.reset_conn(id),
                PartitionKind::Silent => self.silence_conn(id),
            }
        }
    }

    /// A connection cut by a silent partition: what is in flight is lost (what has
    /// arrived stays readable), and nothing it carries later arrives. Nobody is
    /// woken: only timeouts notice.
    fn silence_conn(&mut self, id: u64) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.reset || c.silent {
            return;
        }
        c.silent = true;
        let mut dropped = 0;
        for pipe in [&mut c.to_a, &mut c.to_b] {
            // Their bytes stay counted: the sender's buffer is never acknowledged.
            let before = pipe.chunks.len();
            pipe.chunks.retain(|(at, _)| *at <= now);
            dropped += (before - pipe.chunks.len()) as u64;
        }
        self.sim_stats.silent_chunks_dropped += dropped;
        mix(&mut self.trace, &[0x51, id, dropped]);
    }

    pub(crate) fn heal(&mut self, a: u32, b: u32) {
        self.partitions.remove(&(a.min(b), a.max(b)));
    }
}

impl SimState {
    /// Queues `fault` for the next chunk `from` sends `to`.
    pub(crate) fn inject_net(&mut self, from: u32, to: u32, fault: NetFault) {
        self.net_injected
            .entry((from, to))
            .or_default()
            .push_back(fault);
    }

    /// Applies the next fault injected between the ends of connection `id` to the
    /// chunk `side` just queued (the last of its outbound pipe).
    pub(super) fn mangle_sent(&mut self, id: u64, side: Side) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let key = match side {
            Side::A => (c.a_node, c.b_node),
            Side::B => (c.b_node, c.a_node),
        };
        let Some(fault) = self
            .net_injected
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
        else {
            return;
        };
        let SimState {
            conns,
            rng,
            trace,
            sim_stats,
            ..
        } = self;
        let Some(pipe) = conns.get_mut(&id).map(|c| c.outbound(side)) else {
            return;
        };
        let Some((_, chunk)) = pipe.chunks.back_mut() else {
            return;
        };
        assert!(
            !chunk.is_empty(),
            "a data chunk is never empty (that is a FIN)"
        );
        match fault {
            NetFault::Corrupt => {
                let at = rng.index(chunk.len());
                chunk[at] ^= 1 + rng.below(255) as u8;
                sim_stats.net_chunks_corrupted += 1;
                mix(trace, &[0xbad, id, at as u64]);
            }
            NetFault::Truncate => {
                let keep = rng.index(chunk.len());
                let lost = chunk.len() - keep;
                chunk.truncate(keep);
                pipe.bytes -= lost;
                if keep == 0 {
                    // An empty chunk would read as the end of stream.
                    pipe.chunks.pop_back();
                }
                sim_stats.net_chunks_truncated += 1;
                mix(trace, &[0xc07, id, lost as u64]);
            }
        }
    }
}
