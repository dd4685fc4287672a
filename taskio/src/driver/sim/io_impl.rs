//! The [`Io`] implementation of the simulated driver: what `net` and `file` call.

use super::*;
use crate::driver::Io;

impl Io for SimDriver {
    fn listen(&mut self, addr: SocketAddr, _backlog: u32) -> io::Result<RawFd> {
        let node = node_now();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.refuse_dead()?;
        let mut addr = s.own_addr(node, addr);
        if addr.ip() != s.node_ip(node) {
            return Err(err(libc::EADDRNOTAVAIL));
        }
        if addr.port() == 0 {
            addr.set_port(s.ephemeral_port());
        }
        if s.listeners.contains_key(&addr) {
            return Err(err(libc::EADDRINUSE));
        }
        let fd = s.alloc_fd(SimFd::Listener {
            node,
            addr,
            backlog: VecDeque::new(),
        });
        s.listeners.insert(addr, fd);
        Ok(fd)
    }

    fn accept(&mut self, fd: RawFd) -> io::Result<(RawFd, SocketAddr)> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (node, id) = match s.fds.get_mut(&fd) {
            Some(SimFd::Listener { node, backlog, .. }) => match backlog.pop_front() {
                Some(id) => (*node, id),
                None => return Err(err(libc::EAGAIN)),
            },
            Some(_) => return Err(err(libc::EINVAL)),
            None => return Err(err(libc::EBADF)),
        };
        let conn_fd = s.alloc_fd(SimFd::Stream {
            node,
            conn: id,
            side: Side::B,
        });
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ECONNABORTED));
        };
        c.b_fd = Some(conn_fd);
        let peer = c.a_addr;
        let reset = c.reset;
        mix(&mut s.trace, &[5, conn_fd as u64, id]);
        if reset {
            s.at(s.now, EvKind::Ready(conn_fd, Interest::Read));
        }
        Ok((conn_fd, peer))
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<RawFd> {
        let node = node_now();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.refuse_dead()?;
        let b_addr = s.own_addr(node, addr);
        let port = s.ephemeral_port();
        let a_addr = SocketAddr::new(s.node_ip(node), port);
        let id = s.next_conn;
        s.next_conn += 1;
        let fd = s.alloc_fd(SimFd::Stream {
            node,
            conn: id,
            side: Side::A,
        });
        let b_node = s.node_of_ip(b_addr.ip()).unwrap_or(u32::MAX);
        s.conns.insert(
            id,
            Conn {
                a_fd: fd,
                b_fd: None,
                a_node: node,
                b_node,
                a_addr,
                b_addr,
                to_a: Pipe::default(),
                to_b: Pipe::default(),
                reset: false,
                established: false,
                refused: false,
                silent: false,
            },
        );
        let lat = latency(&mut s.rng, s.config.net_latency);
        let at = s.now + lat;
        s.at(at, EvKind::Arrive(id));
        Ok(fd)
    }

    fn connect_result(&mut self, fd: RawFd) -> io::Result<()> {
        let s = self.state.borrow();
        let (id, _) = s.stream(fd)?;
        let Some(c) = s.conns.get(&id) else {
            return Err(err(libc::ECONNRESET));
        };
        if c.refused {
            Err(err(libc::ECONNREFUSED))
        } else if c.reset {
            Err(err(libc::ECONNRESET))
        } else if c.established {
            Ok(())
        } else {
            Err(err(libc::ENOTCONN))
        }
    }

    fn local_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr> {
        let s = self.state.borrow();
        match s.fds.get(&fd) {
            Some(SimFd::Listener { addr, .. }) => Ok(*addr),
            Some(SimFd::Stream { conn, side, .. }) => {
                let c = s.conns.get(conn).ok_or_else(|| err(libc::ENOTCONN))?;
                Ok(if *side == Side::A { c.a_addr } else { c.b_addr })
            }
            Some(SimFd::File { .. } | SimFd::Event { .. }) => Err(err(libc::ENOTSOCK)),
            None => Err(err(libc::EBADF)),
        }
    }

    fn peer_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr> {
        let s = self.state.borrow();
        let (id, side) = s.stream(fd)?;
        let c = s.conns.get(&id).ok_or_else(|| err(libc::ENOTCONN))?;
        Ok(if side == Side::A { c.b_addr } else { c.a_addr })
    }

    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (id, side) = s.stream(fd)?;
        let now = s.now;
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ECONNRESET));
        };
        if c.reset {
            return Err(err(libc::ECONNRESET));
        }
        let was_full = c.inbound(side).bytes >= PIPE_BYTES_MAX;
        let pipe = c.inbound(side);
        let mut n = 0;
        while n < buf.len() {
            let Some((at, chunk)) = pipe.chunks.front_mut() else {
                break;
            };
            if *at > now {
                break;
            }
            if chunk.is_empty() {
                // End of stream: report it only when nothing was read in this call.
                if n == 0 {
                    return Ok(0);
                }
                break;
            }
            let take = chunk.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&chunk[..take]);
            chunk.drain(..take);
            n += take;
            pipe.bytes -= take;
            if chunk.is_empty() {
                pipe.chunks.pop_front();
            }
        }
        if n == 0 {
            return Err(err(libc::EAGAIN));
        }
        let peer = c.peer_fd(side);
        if was_full && let Some(peer) = peer {
            s.at(now, EvKind::Ready(peer, Interest::Write));
        }
        s.stats.bytes_read += n as u64;
        Ok(n)
    }

    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.refuse_dead()?;
        let (id, side) = s.stream(fd)?;
        let reset_now = s.rng.chance(s.config.faults.net_reset);
        let lat = latency(&mut s.rng, s.config.net_latency);
        let now = s.now;
        let Some(c) = s.conns.get_mut(&id) else {
            return Err(err(libc::ECONNRESET));
        };
        if c.reset {
            return Err(err(libc::ECONNRESET));
        }
        if !c.established {
            return Err(err(libc::ENOTCONN));
        }
        if reset_now {
            s.reset_conn(id);
            return Err(err(libc::ECONNRESET));
        }
        let peer = c.peer_fd(side);
        let silent = c.silent;
        let pipe = c.outbound(side);
        if pipe.fin {
            return Err(err(libc::EPIPE));
        }
        let room = PIPE_BYTES_MAX.saturating_sub(pipe.bytes);
        if room == 0 {
            return Err(err(libc::EAGAIN));
        }
        let n = room.min(buf.len());
        // Over a silently cut connection the bytes fill the sender's buffer (no
        // acknowledgement ever frees it) and never arrive.
        pipe.bytes += n;
        s.stats.bytes_written += n as u64;
        if silent {
            s.sim_stats.silent_chunks_dropped += 1;
            mix(&mut s.trace, &[0x5d, fd as u64, n as u64]);
            return Ok(n);
        }
        let at = (now + lat).max(pipe.last_at);
        pipe.last_at = at;
        pipe.chunks.push_back((at, buf[..n].to_vec()));
        if let Some(peer) = peer {
            s.at(at, EvKind::Ready(peer, Interest::Read));
        }
        mix(&mut s.trace, &[6, fd as u64, n as u64, at]);
        s.mangle_sent(id, side);
        // The sender sent `n` bytes, whatever the wire did to them.
        Ok(n)
    }

    fn shutdown(&mut self, fd: RawFd, how: Shutdown) -> io::Result<()> {
        if how == Shutdown::Read {
            return Ok(());
        }
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let (id, side) = s.stream(fd)?;
        if !s.conns.contains_key(&id) {
            return Err(err(libc::ENOTCONN));
        }
        s.send_fin(id, side);
        Ok(())
    }

    fn register(&mut self, fd: RawFd) -> io::Result<()> {
        if self.state.borrow().fds.contains_key(&fd) {
            Ok(())
        } else {
            Err(err(libc::EBADF))
        }
    }

    fn wait(&mut self, fd: RawFd, interest: Interest, task: TaskRef) -> io::Result<()> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        if !s.fds.contains_key(&fd) {
            return Err(err(libc::EBADF));
        }
        s.waiters
            .entry((fd, interest_key(interest)))
            .or_default()
            .push(task);
        // Readiness that is already there (data delivered, a reset) wakes at once.
        let ready_now = match s.fds.get(&fd) {
            Some(SimFd::Stream { conn, side, .. }) => match s.conns.get(conn) {
                None => true,
                Some(c) if c.reset || c.refused => true,
                Some(c) => match interest {
                    Interest::Read => {
                        // Data already on its way wakes the reader when it lands (a
                        // send before the accept had no reader fd to schedule).
                        let p = if *side == Side::A { &c.to_a } else { &c.to_b };
                        match p.chunks.front() {
                            Some((at, _)) if *at > s.now => {
                                let at = *at;
                                s.at(at, EvKind::Ready(fd, interest));
                                false
                            }
                            Some(_) => true,
                            None => false,
                        }
                    }
                    Interest::Write => {
                        let p = if *side == Side::A { &c.to_b } else { &c.to_a };
                        c.established && p.bytes < PIPE_BYTES_MAX
                    }
                },
            },
            Some(SimFd::Listener { backlog, .. }) => !backlog.is_empty(),
            Some(SimFd::Event { pending, .. }) => *pending && interest == Interest::Read,
            _ => false,
        };
        if ready_now {
            let now = s.now;
            s.at(now, EvKind::Ready(fd, interest));
        }
        Ok(())
    }

    fn cancel_wait(&mut self, fd: RawFd, interest: Interest) {
        self.state
            .borrow_mut()
            .waiters
            .remove(&(fd, interest_key(interest)));
    }

    fn close(&mut self, fd: RawFd) {
        self.state.borrow_mut().close_fd(fd, false);
    }

    fn forget(&mut self, fd: RawFd) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.waiters.remove(&(fd, 0));
        s.waiters.remove(&(fd, 1));
    }

    fn open(&mut self, path: &Path, flags: i32, _mode: u32) -> io::Result<RawFd> {
        let node = node_now();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.refuse_dead()?;
        let key = s.disk_key(node, path);
        if !s.disks.contains_key(&key) {
            if flags & libc::O_CREAT == 0 {
                return Err(err(libc::ENOENT));
            }
            s.disks.insert(key.clone(), Disk::default());
        }
        if flags & libc::O_TRUNC != 0
            && let Some(d) = s.disks.get_mut(&key)
        {
            *d = Disk::default();
        }
        let fd = s.alloc_fd(SimFd::File {
            node,
            path: path.to_path_buf(),
            dsync: flags & libc::O_DSYNC != 0,
        });
        Ok(fd)
    }

    fn lock_exclusive(&mut self, fd: RawFd) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let key = s.lock_key(fd)?;
        match s.locks.get(&key) {
            Some(&holder) if holder != fd => Err(err(libc::EWOULDBLOCK)),
            _ => {
                s.locks.insert(key, fd);
                Ok(())
            }
        }
    }

    fn unlock(&mut self, fd: RawFd) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let key = s.lock_key(fd)?;
        s.unlock(key, fd);
        Ok(())
    }

    fn file_len(&mut self, fd: RawFd) -> io::Result<u64> {
        let s = self.state.borrow();
        let key = s.file_key(fd)?;
        Ok(s.disks.get(&key).map_or(0, |d| d.len))
    }

    fn set_file_len(&mut self, fd: RawFd, len: u64) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.refuse_dead()?;
        let key = s.file_key(fd)?;
        let d = s.disks.entry(key).or_default();
        // Metadata changes are durable at once in this model.
        d.len = len;
        d.durable.resize(len as usize, 0);
        d.cache.retain(|sector, _| sector * (SECTOR as u64) < len);
        Ok(())
    }

    fn submit(&mut self, op: Rc<FileOp>) -> io::Result<()> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.refuse_dead()?;
        let fd = op.iocb().aio_fildes as RawFd;
        let (node, path, dsync) = match s.fds.get(&fd) {
            Some(SimFd::File { node, path, dsync }) => (*node, path.clone(), *dsync),
            _ => return Err(err(libc::EBADF)),
        };
        if s.file_ops >= FILE_OPS_MAX {
            return Err(err(libc::EAGAIN));
        }
        let mut lat = latency(&mut s.rng, s.config.disk_latency);
        if s.rng.chance(s.config.faults.disk_latency_spike) {
            lat += 10_000_000 + s.rng.below(90_000_000);
        }
        let epoch = s.nodes[node as usize].epoch;
        let at = s.now + lat;
        s.file_ops += 1;
        s.stats.aio_submitted += 1;
        mix(&mut s.trace, &[7, fd as u64, at]);
        s.at(
            at,
            EvKind::FileDone {
                op,
                node,
                epoch,
                path,
                dsync,
                barrier: s.next_write,
            },
        );
        Ok(())
    }

    fn submit_slots(&self) -> usize {
        FILE_OPS_MAX - self.state.borrow().file_ops
    }

    fn wait_slot(&mut self, task: TaskRef) {
        self.state.borrow_mut().slot_waiters.push_back(task);
    }

    fn notifier(&mut self) -> io::Result<crate::driver::Notifier> {
        let node = node_now();
        let mut s = self.state.borrow_mut();
        s.refuse_dead()?;
        let fd = s.alloc_fd(SimFd::Event {
            node,
            pending: false,
        });
        Ok(crate::driver::Notifier::in_driver(fd))
    }

    fn notify(&mut self, fd: RawFd) {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let Some(SimFd::Event { pending, .. }) = s.fds.get_mut(&fd) else {
            return; // its node crashed: no one is left to wake
        };
        *pending = true;
        let (lo, hi) = NOTIFY_LATENCY_NS;
        let at = s.now + s.rng.between(lo, hi);
        mix(&mut s.trace, &[0x707, fd as u64, at]);
        s.at(at, EvKind::Ready(fd, Interest::Read));
    }

    fn notify_clear(&mut self, fd: RawFd) {
        if let Some(SimFd::Event { pending, .. }) = self.state.borrow_mut().fds.get_mut(&fd) {
            *pending = false;
        }
    }

    fn notify_close(&mut self, fd: RawFd) {
        let mut s = self.state.borrow_mut();
        if matches!(s.fds.get(&fd), Some(SimFd::Event { .. })) {
            s.close_fd(fd, false);
        }
    }

    fn count_bytes(&mut self, _read: u64, _written: u64) {
        // The simulator counts bytes where it moves them.
    }

    fn stats(&self) -> IoStats {
        let s = self.state.borrow();
        IoStats {
            aio_in_flight: s.file_ops,
            fd_waiters: s.waiters.values().map(Vec::len).sum(),
            ..s.stats
        }
    }
}
