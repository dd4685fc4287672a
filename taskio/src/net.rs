//! Pseudo-blocking TCP (libtask's netannounce / netaccept / netdial and the seed's
//! task_netread / task_netwrite), on the driver's non-blocking primitives.
//!
//! Every call tries the system call first and parks only on EAGAIN, until the driver
//! reports readiness (edge-triggered, registered once per socket). A stream has one
//! reader and one writer at a time, as the seed says; a second concurrent reader (or
//! writer) gets [`IoError::Busy`] at once, never a hang. End of stream in the middle of
//! a transfer and connection resets are errors that name the fd.

use std::cell::Cell;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use crate::driver::Interest;
use crate::error::IoError;
use crate::sched::core;
use crate::task::{TaskRef, WaitReason, park, park_until};
use crate::timer::{Deadline, Instant};

/// Default backlog of a listening socket.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Bytes a stream reads ahead of its reader (allocated at the first small read).
/// A recv that returns less than it asked for has emptied the socket, so the next
/// read waits for readiness at once instead of paying a recv that says EAGAIN.
pub const READ_AHEAD_BYTES: usize = 16 * 1024;

/// Read-ahead of a stream: bytes received but not yet read, `data[start..end]`.
#[derive(Default)]
struct ReadAhead {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

/// Registers `fd` with the driver the first time its owner waits on it.
pub(crate) fn ensure_registered(
    fd: RawFd,
    registered: &Cell<bool>,
    op: &'static str,
) -> Result<(), IoError> {
    if !registered.get() {
        core()
            .with_io(op, |io| io.register(fd))?
            .map_err(|source| IoError::Fd { op, fd, source })?;
        registered.set(true);
    }
    Ok(())
}

/// Withdraws a wait if the task leaves it other than by being woken (a timeout, or
/// an unwind when its runtime tears it down), so no stale wait is left counted.
struct WaitGuard {
    fd: RawFd,
    interest: Interest,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if crate::sched::is_running() {
            let _ = core().with_io("cancel wait", |io| io.cancel_wait(self.fd, self.interest));
        }
    }
}

/// Parks the running task until `fd` (registered) may be ready for `interest`, or
/// `deadline`. Returns false on timeout (the wait is then withdrawn).
pub(crate) fn wait_ready(
    fd: RawFd,
    interest: Interest,
    op: &'static str,
    deadline: Option<Instant>,
) -> Result<bool, IoError> {
    let core = core();
    let me = TaskRef::current();
    core.with_io(op, |io| io.wait(fd, interest, me))?
        .map_err(|source| IoError::Fd { op, fd, source })?;
    let guard = WaitGuard { fd, interest };
    let woken = match deadline {
        None => {
            park(WaitReason::Io(op));
            true
        }
        Some(d) => park_until(WaitReason::Io(op), d),
    };
    if woken {
        // The driver removed the wait when it woke us.
        std::mem::forget(guard);
    }
    Ok(woken)
}

fn close(fd: RawFd) {
    if crate::sched::is_running() {
        let _ = core().with_io("close", |io| io.close(fd));
    } else {
        // Dropped outside its runtime (after `run` returned): nothing waits on it.
        // SAFETY: the owner gives up `fd` here.
        unsafe { libc::close(fd) };
    }
}

/// Listens on `addr` (netannounce). Port 0 picks an ephemeral port; see
/// [`TcpListener::local_addr`]. Addresses are numeric: name resolution would block
/// the thread, so it is the caller's business, outside the runtime.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, IoError> {
    let fd = core()
        .with_io("listen", |io| io.listen(addr, LISTEN_BACKLOG))?
        .map_err(|source| IoError::Addr {
            op: "listen",
            addr,
            source,
        })?;
    let local = core().with_io("listen", |io| io.local_addr(fd))?;
    match local {
        Ok(local) => Ok(TcpListener {
            fd,
            local,
            registered: Cell::new(false),
        }),
        Err(source) => {
            close(fd);
            Err(IoError::Addr {
                op: "listen",
                addr,
                source,
            })
        }
    }
}

/// A listening socket.
pub struct TcpListener {
    fd: RawFd,
    local: SocketAddr,
    registered: Cell<bool>,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.fd)
            .field("local", &self.local)
            .finish()
    }
}

impl TcpListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Waits for a connection (netaccept): a stream with TCP_NODELAY set.
    pub fn accept(&self) -> Result<(TcpStream, SocketAddr), IoError> {
        loop {
            let r = core().with_io("accept", |io| io.accept(self.fd))?;
            match r {
                Ok((fd, peer)) => return Ok((TcpStream::from_fd(fd, peer), peer)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ensure_registered(self.fd, &self.registered, "accept")?;
                    wait_ready(self.fd, Interest::Read, "accept", None)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The peer gave up before we accepted: not the listener's failure.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(source) => {
                    return Err(IoError::Fd {
                        op: "accept",
                        fd: self.fd,
                        source,
                    });
                }
            }
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// Connects to `addr` (netdial) without blocking the thread; `timeout` bounds the
/// whole connect.
pub fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, IoError> {
    let core = core();
    let deadline = Deadline::after(timeout);
    let fd = core
        .with_io("connect", |io| io.connect(addr))?
        .map_err(|source| IoError::Addr {
            op: "connect",
            addr,
            source,
        })?;
    // From here the stream owns the fd and closes it on every error path.
    let stream = TcpStream::from_fd(fd, addr);
    loop {
        let r = core.with_io("connect", |io| io.connect_result(fd))?;
        match r {
            Ok(()) => return Ok(stream),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTCONN)
                    || e.kind() == io::ErrorKind::WouldBlock =>
            {
                ensure_registered(fd, &stream.registered, "connect")?;
                if !wait_ready(fd, Interest::Write, "connect", deadline.at())? {
                    return Err(IoError::ConnectTimedOut {
                        addr,
                        timeout: timeout.unwrap_or_default(),
                    });
                }
            }
            Err(source) => {
                return Err(IoError::Addr {
                    op: "connect",
                    addr,
                    source,
                });
            }
        }
    }
}

/// A connected TCP stream. Methods take `&self` so that one reader task and one
/// writer task can share it (in an `Rc`).
pub struct TcpStream {
    fd: RawFd,
    peer: SocketAddr,
    registered: Cell<bool>,
    reading: Cell<bool>,
    writing: Cell<bool>,
    /// Touched only by the one reader (see `reading`).
    ahead: std::cell::RefCell<ReadAhead>,
    /// The last recv emptied the socket: wait for readiness before the next one.
    drained: Cell<bool>,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

/// Clears a stream's reading/writing flag when the call ends, however it ends.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.fd)
            .field("peer", &self.peer)
            .finish()
    }
}

impl TcpStream {
    /// Adopts a connected std stream, e.g. one accepted by another thread and handed
    /// over through a `Remote`: makes it non-blocking, sets TCP_NODELAY.
    pub fn from_std(stream: std::net::TcpStream) -> Result<TcpStream, IoError> {
        Ok(TcpStream::adopt(Detached::from_std(stream, Vec::new())?))
    }

    /// Adopts a stream handed over from another runtime (or thread): it is
    /// registered with this runtime's driver when it first waits, and its reads
    /// return the bytes its previous owner had read but not consumed first.
    pub fn adopt(mut detached: Detached) -> TcpStream {
        let (fd, peer) = (detached.fd, detached.peer);
        let already_read = std::mem::take(&mut detached.already_read);
        std::mem::forget(detached);
        let s = TcpStream::from_fd(fd, peer);
        let end = already_read.len();
        if end > 0 {
            let mut data = already_read;
            // The read-ahead buffer is never shorter than READ_AHEAD_BYTES: a recv
            // that fills less of it than that is taken to have emptied the socket.
            data.resize(end.max(READ_AHEAD_BYTES), 0);
            *s.ahead.borrow_mut() = ReadAhead {
                data,
                start: 0,
                end,
            };
        }
        s
    }

    /// Gives the stream up for another runtime: the driver of this one forgets it
    /// (no readiness of it is watched here any more), and the bytes it had read
    /// ahead but not handed to a reader go with it. Taking `self` means no task of
    /// this runtime is reading, writing or waiting on it.
    pub fn detach(self) -> Detached {
        if self.registered.get() {
            // Registered means this runtime has a driver with I/O.
            let _ = core().with_io("detach", |io| io.forget(self.fd));
        }
        let ahead = std::mem::take(&mut *self.ahead.borrow_mut());
        let mut already_read = ahead.data;
        already_read.truncate(ahead.end);
        already_read.drain(..ahead.start);
        let d = Detached {
            fd: self.fd,
            peer: self.peer,
            already_read,
        };
        std::mem::forget(self);
        d
    }

    fn from_fd(fd: RawFd, peer: SocketAddr) -> TcpStream {
        TcpStream {
            fd,
            peer,
            registered: Cell::new(false),
            reading: Cell::new(false),
            writing: Cell::new(false),
            ahead: std::cell::RefCell::new(ReadAhead::default()),
            drained: Cell::new(false),
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> Result<SocketAddr, IoError> {
        core()
            .with_io("local_addr", |io| io.local_addr(self.fd))?
            .map_err(|source| IoError::Fd {
                op: "local_addr",
                fd: self.fd,
                source,
            })
    }

    /// Bounds the waiting of each read call (`read`, `read_exact`) as a whole, from
    /// its first wait (a call that never waits reads no clock); None: no bound.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.read_timeout.set(timeout);
    }

    /// Bounds the waiting of each `write_all` call as a whole, from its first wait;
    /// None: no bound.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.write_timeout.set(timeout);
    }

    fn begin(&self, flag: &'static str, op: &'static str) -> Result<Busy<'_>, IoError> {
        let cell = if flag == "reading" {
            &self.reading
        } else {
            &self.writing
        };
        if cell.replace(true) {
            return Err(IoError::Busy {
                op,
                fd: self.fd,
                busy: flag,
            });
        }
        Ok(Busy(cell))
    }

    /// Reads at least one byte (up to `buf.len()`); end of stream is
    /// [`IoError::Eof`]. An empty `buf` returns 0 at once.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, IoError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let _busy = self.begin("reading", "read")?;
        let deadline = Deadline::after(self.read_timeout.get());
        self.read_some(buf, "read", &deadline, 0, buf.len())
    }

    fn read_some(
        &self,
        buf: &mut [u8],
        op: &'static str,
        deadline: &Deadline,
        done: usize,
        want: usize,
    ) -> Result<usize, IoError> {
        loop {
            {
                let mut ahead = self.ahead.borrow_mut();
                if ahead.end > ahead.start {
                    let n = (ahead.end - ahead.start).min(buf.len());
                    let start = ahead.start;
                    buf[..n].copy_from_slice(&ahead.data[start..start + n]);
                    ahead.start += n;
                    return Ok(n);
                }
            }
            if self.drained.get()
                && core().with_io(op, |io| {
                    io.peer_closed(self.fd) || io.take_missed_read(self.fd)
                })?
            {
                // The end of stream (or a reset) arrived with data we already took,
                // or bytes arrived while this stream's reader was not waiting (the
                // edge woke nobody): no new event will announce them, only a recv will.
                self.drained.set(false);
            }
            if !self.drained.get() {
                // Large reads go straight to the caller; small ones fill the
                // read-ahead, so that several small frames cost one recv.
                let direct = buf.len() >= READ_AHEAD_BYTES;
                let r = if direct {
                    core().with_io(op, |io| io.recv(self.fd, buf))?
                } else {
                    let mut ahead = self.ahead.borrow_mut();
                    if ahead.data.is_empty() {
                        ahead.data = vec![0u8; READ_AHEAD_BYTES];
                    }
                    let r = core().with_io(op, |io| io.recv(self.fd, &mut ahead.data))?;
                    if let Ok(n) = r {
                        ahead.start = 0;
                        ahead.end = n;
                    }
                    r
                };
                let asked = if direct { buf.len() } else { READ_AHEAD_BYTES };
                match r {
                    Ok(0) => {
                        return Err(IoError::Eof {
                            op,
                            fd: self.fd,
                            done,
                            want,
                        });
                    }
                    Ok(n) => {
                        self.drained.set(n < asked);
                        if direct {
                            return Ok(n);
                        }
                        continue; // serve from the read-ahead
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained.set(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(IoError::Fd {
                            op,
                            fd: self.fd,
                            source,
                        });
                    }
                }
            }
            ensure_registered(self.fd, &self.registered, op)?;
            if !wait_ready(self.fd, Interest::Read, op, deadline.at())? {
                return Err(IoError::TimedOut {
                    op,
                    fd: self.fd,
                    timeout: deadline.timeout().unwrap_or_default(),
                    done,
                    want,
                });
            }
            self.drained.set(false);
        }
    }

    /// Reads exactly `buf.len()` bytes (task_netread).
    pub fn read_exact(&self, buf: &mut [u8]) -> Result<(), IoError> {
        let _busy = self.begin("reading", "read_exact")?;
        let deadline = Deadline::after(self.read_timeout.get());
        let want = buf.len();
        let mut done = 0;
        while done < want {
            done += self.read_some(&mut buf[done..], "read_exact", &deadline, done, want)?;
        }
        Ok(())
    }

    /// Writes all of `buf` (task_netwrite).
    pub fn write_all(&self, buf: &[u8]) -> Result<(), IoError> {
        let _busy = self.begin("writing", "write_all")?;
        let deadline = Deadline::after(self.write_timeout.get());
        let mut done = 0;
        while done < buf.len() {
            let r = core().with_io("write_all", |io| io.send(self.fd, &buf[done..]))?;
            match r {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ensure_registered(self.fd, &self.registered, "write_all")?;
                    if !wait_ready(self.fd, Interest::Write, "write_all", deadline.at())? {
                        return Err(IoError::TimedOut {
                            op: "write_all",
                            fd: self.fd,
                            timeout: deadline.timeout().unwrap_or_default(),
                            done,
                            want: buf.len(),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(IoError::Fd {
                        op: "write_all",
                        fd: self.fd,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn shutdown(&self, how: Shutdown) -> Result<(), IoError> {
        core()
            .with_io("shutdown", |io| io.shutdown(self.fd, how))?
            .map_err(|source| IoError::Fd {
                op: "shutdown",
                fd: self.fd,
                source,
            })
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// A connected socket between two runtimes: a plain fd that no driver watches, its
/// peer, and the bytes already read from it that no reader consumed (a handshake
/// an acceptor looked at, the read-ahead of the runtime that gave it up).
/// [`TcpStream::adopt`] makes it a stream of the current runtime; dropped, it is
/// closed. The fd is one of the driver kind it came from (a kernel socket, or a
/// simulated one under the simulator, where runtimes of a node share the driver).
pub struct Detached {
    fd: RawFd,
    peer: SocketAddr,
    already_read: Vec<u8>,
}

impl std::fmt::Debug for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached")
            .field("fd", &self.fd)
            .field("peer", &self.peer)
            .field("already_read", &self.already_read.len())
            .finish()
    }
}

impl Detached {
    /// A connected std stream (one a blocking acceptor thread took) and the bytes
    /// that thread already read from it: made non-blocking, TCP_NODELAY set.
    pub fn from_std(
        stream: std::net::TcpStream,
        already_read: Vec<u8>,
    ) -> Result<Detached, IoError> {
        use std::os::fd::IntoRawFd;
        let peer = stream.peer_addr().map_err(|source| IoError::Fd {
            op: "adopt stream",
            fd: -1,
            source,
        })?;
        let setup = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true));
        if let Err(source) = setup {
            return Err(IoError::Addr {
                op: "adopt stream",
                addr: peer,
                source,
            });
        }
        Ok(Detached {
            fd: stream.into_raw_fd(),
            peer,
            already_read,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The bytes the next owner's reads return before the socket's.
    pub fn already_read(&self) -> &[u8] {
        &self.already_read
    }

    /// A duplicate of the kernel socket (dup(2)), for another thread to shut the
    /// connection down while a runtime serves it. Only for a socket of the real
    /// driver: under the simulator the fd is no kernel fd.
    pub fn try_clone_std(&self) -> io::Result<std::net::TcpStream> {
        // SAFETY: `self` owns `fd` and keeps it open for the whole borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        Ok(std::net::TcpStream::from(fd.try_clone_to_owned()?))
    }

    /// The kernel socket as a std stream (blocking again), for a thread with no
    /// runtime; the bytes already read are dropped. Only for a socket of the real
    /// driver.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        use std::os::fd::FromRawFd;
        // SAFETY: `self` owns `fd`, an open socket, and gives it up here (forgotten,
        // so its Drop does not close it).
        let stream = unsafe { std::net::TcpStream::from_raw_fd(self.fd) };
        std::mem::forget(self);
        stream.set_nonblocking(false)?;
        Ok(stream)
    }

    /// Puts `bytes` back in front of those already read (a frame its reader took
    /// and leaves for the next owner to read again).
    pub fn unread(&mut self, bytes: &[u8]) {
        self.already_read.splice(0..0, bytes.iter().copied());
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        close(self.fd);
    }
}
