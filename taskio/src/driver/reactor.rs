//! The real driver: one epoll instance, one kernel AIO context and one eventfd per
//! runtime (the seed's taskio_init and aiotask, with fixes #2 and #4).
//!
//! - Sockets (and other pollable fds, such as a `Remote`'s eventfd) are registered
//!   once by their owner, edge-triggered, for both directions, and stay registered
//!   until closed: a wait costs no epoll_ctl (libtask's fdwait did an ADD and a DEL
//!   per wait). Callers try the I/O first and wait only on EAGAIN. Registration is
//!   the owner's act (not the table's memory), so an fd number reused after a close
//!   the table never saw is registered afresh.
//! - Several tasks may wait on one fd in one direction (two acceptors on a listener);
//!   an event wakes them all and each retries its call.
//! - File I/O goes through kernel AIO ([`super::aio`]); completions are signalled on an
//!   eventfd registered in the same epoll set, so one epoll_wait sleeps for everything.
//! - Timers are the scheduler's: `park` sleeps until the next deadline with
//!   epoll_pwait2 (nanosecond timeout) when it is near (within FAR_DEADLINE). A far
//!   deadline (an idle or I/O timeout, which moves on with every read and rarely
//!   fires) is left to a timerfd in the epoll set, armed only when the deadline comes
//!   earlier than the one it holds: a park then arms no kernel timer at all (one
//!   per park cost 5-8% of the CPU of an rpc round trip, `tdrv bench rpc`), and the
//!   timerfd may wake the scheduler early, which finds nothing due and parks again.
//! - Parking: blocks in epoll at once by default. `IoConfig::poll_before_park`, when
//!   set, spins on the AIO completion ring (and epoll) for a bounded time before
//!   blocking, when file I/O is in flight: waking a halted vCPU costs latency at
//!   queue depth 1, but the spin holds a CPU that another runtime (or the kernel's
//!   work for this one) may need, and on the 2-vCPU machine it is measured on it
//!   loses (see DEFAULT_POLL_BEFORE_PARK).
//! - `IoConfig::poll_sockets_before_park`, when set, polls epoll (sockets, AIO
//!   completions, timers) before blocking whenever a task waits on a socket, giving
//!   the CPU away (sched_yield) between polls, for a window that adapts to what it
//!   catches ([`SpinWindow`]). A server answering one request at a time waits for the
//!   client's next request, and a halted vCPU takes tens of microseconds to wake: the
//!   poll catches the request instead. Measured with `cargo xtask bench nbd` and
//!   `bench e2e` (see DEVELOPERS.md).
//!
//! The fd table (the seed's ContextContainer) is a vector indexed by fd, bounded by
//! `IoConfig::max_fds`.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use super::aio::{AioQueue, FileOp};
use super::{Driver, Interest, Io, IoStats};
use crate::task::TaskRef;
use crate::timer::Instant;

/// ioctl: size of a block device in bytes (_IOR(0x12, 114, u64)).
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;
/// epoll token of the AIO eventfd (socket tokens are their fd).
const AIO_TOKEN: u64 = u64::MAX;
/// epoll token of the far-deadline timerfd.
const TIMER_TOKEN: u64 = u64::MAX - 1;
/// A deadline at least this far is waited for with the timerfd (see the module doc).
const FAR_DEADLINE: Duration = Duration::from_millis(100);
/// Events taken from the kernel per epoll_wait.
const EPOLL_BATCH: usize = 64;

/// Settings of the real driver.
#[derive(Debug, Clone)]
pub struct IoConfig {
    /// File operations in flight at once (the AIO context's size); more wait.
    pub aio_depth: usize,
    /// Largest fd number the driver will track (the fd table's bound).
    pub max_fds: usize,
    /// How long to poll for events before blocking in epoll_wait. Zero: block at once.
    pub poll_before_park: Duration,
    /// The longest poll of epoll before blocking while a task waits on a socket
    /// (yielding the CPU between polls; the window adapts below it, see
    /// [`SpinWindow`]). Zero: block at once.
    pub poll_sockets_before_park: Duration,
}

impl Default for IoConfig {
    fn default() -> IoConfig {
        IoConfig {
            aio_depth: 256,
            max_fds: 65536,
            poll_before_park: DEFAULT_POLL_BEFORE_PARK,
            poll_sockets_before_park: Duration::ZERO,
        }
    }
}

/// Default bounded poll before blocking while file I/O is in flight: none. A poll must
/// show it wins where it runs, and on the shared 2-vCPU machine of `tdrv bench io` a
/// 50 us poll did not: at qd1 (`aio_randread_4k_qd1` against its `_poll50us` variant,
/// three runs) 1.52x, 1.32x and 0.99x the reads per second without it, and 1.4-2.4x
/// the CPU per read with it (p99 4 ms with it, 0.4-3.3 ms without). An earlier
/// measurement gave the poll 1.03-1.19x the reads at twice the CPU: it depends on
/// idle CPUs, which a runtime cannot count on.
pub const DEFAULT_POLL_BEFORE_PARK: Duration = Duration::ZERO;

/// The window a [`SpinWindow`] grows back from once it has shrunk below it.
const SPIN_GROW_START: Duration = Duration::from_micros(10);

/// How long a park polls for socket events before it blocks: at most `max`, adapting
/// like the kernel's haltpoll governor. A poll that catches an event keeps the
/// window. One that catches nothing is followed by a blocking wait: if the event
/// then came within `max` of the poll's start, a longer poll would have caught it
/// and the window doubles (from [`SPIN_GROW_START`] when it had shrunk below it);
/// if it came later (an idle spell), the window halves, down to none. So an idle
/// runtime stops spending CPU on polls after a few wake-ups, and a request-reply
/// load at any pace under `max` brings the window back within a few round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpinWindow {
    max: Duration,
    now: Duration,
}

impl SpinWindow {
    pub(crate) fn new(max: Duration) -> SpinWindow {
        SpinWindow { max, now: max }
    }

    /// How long the next park polls (zero: it blocks at once).
    pub(crate) fn window(&self) -> Duration {
        self.now
    }

    /// Whether polling is configured at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// The poll (of the current window) caught nothing, and the event that ended
    /// the blocking wait after it came `waited` after the poll began.
    pub(crate) fn missed(&mut self, waited: Duration) {
        if waited <= self.max {
            self.now = (self.now * 2).max(SPIN_GROW_START).min(self.max);
        } else {
            self.now /= 2;
            if self.now < SPIN_GROW_START {
                self.now = Duration::ZERO;
            }
        }
    }
}

#[derive(Default)]
struct FdSlot {
    registered: bool,
    /// An RDHUP, HUP or ERR event was seen: the peer closed or the socket failed.
    closed: bool,
    /// A read-readiness event came with no reader waiting (see `take_missed_read`).
    missed_read: bool,
    readers: Vec<TaskRef>,
    writers: Vec<TaskRef>,
}

impl FdSlot {
    fn waiters(&self) -> usize {
        self.readers.len() + self.writers.len()
    }
}

pub struct Reactor {
    /// First, so that it is dropped first: io_destroy waits for the I/O in flight
    /// while the eventfd it signals is still open.
    aio: AioQueue,
    _aio_eventfd: OwnedFd,
    epfd: OwnedFd,
    /// The far-deadline timer (CLOCK_MONOTONIC, absolute), and when it is armed to
    /// fire (None: disarmed or fired).
    timerfd: OwnedFd,
    timer_armed: Option<Instant>,
    fds: Vec<FdSlot>,
    max_fds: usize,
    fd_waiters: usize,
    events: Vec<libc::epoll_event>,
    poll_before_park: Duration,
    spin: SpinWindow,
    stats: IoStats,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A system call made directly, for the calls of every round trip (recv, send,
/// epoll_pwait2): glibc's wrappers of these are cancellation points, and each
/// brackets the call with two calls that switch asynchronous thread cancellation
/// on and off (2.4% of the CPU of `tdrv bench rpc`'s rpc_ping_1conn, perf), which
/// taskio, never cancelling threads, does not need. glibc's `syscall` sets errno
/// and returns -1 on failure, like the wrappers.
///
/// # Safety
/// `args` must be valid arguments of system call `nr`, as for the call's wrapper.
unsafe fn raw_syscall(nr: libc::c_long, args: [libc::c_long; 6]) -> libc::ssize_t {
    let [a, b, c, d, e, f] = args;
    // SAFETY: the caller's contract.
    unsafe { libc::syscall(nr, a, b, c, d, e, f) as libc::ssize_t }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

impl Reactor {
    pub fn new(config: &IoConfig) -> io::Result<Reactor> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `epfd` is a fresh fd that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let efd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `efd` is a fresh fd that nothing else owns.
        let aio_eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let aio = AioQueue::new(config.aio_depth, aio_eventfd.as_raw_fd())?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: AIO_TOKEN,
        };
        // SAFETY: both fds are open and `ev` is a valid epoll_event.
        cvt(unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                aio_eventfd.as_raw_fd(),
                &mut ev,
            )
        })?;
        // SAFETY: timerfd_create has no memory preconditions; the result is checked.
        let tfd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: `tfd` is a fresh fd that nothing else owns.
        let timerfd = unsafe { OwnedFd::from_raw_fd(tfd) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: TIMER_TOKEN,
        };
        // SAFETY: both fds are open and `ev` is a valid epoll_event.
        cvt(unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                timerfd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(Reactor {
            timerfd,
            timer_armed: None,
            epfd,
            _aio_eventfd: aio_eventfd,
            aio,
            fds: Vec::new(),
            max_fds: config.max_fds,
            fd_waiters: 0,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_BATCH],
            poll_before_park: config.poll_before_park,
            spin: SpinWindow::new(config.poll_sockets_before_park),
            stats: IoStats::default(),
        })
    }

    fn slot(&mut self, fd: RawFd) -> io::Result<&mut FdSlot> {
        let i = usize::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        if i >= self.max_fds {
            return Err(io::Error::other(format!(
                "fd {fd} over the reactor's fd table bound ({})",
                self.max_fds
            )));
        }
        if i >= self.fds.len() {
            self.fds.resize_with(i + 1, FdSlot::default);
        }
        Ok(&mut self.fds[i])
    }

    /// Clears what the table knows of `fd`; returns whether it was registered.
    fn reset_slot(&mut self, fd: RawFd) -> bool {
        let Ok(slot) = self.slot(fd) else {
            return false;
        };
        let waiters = slot.waiters();
        let registered = slot.registered;
        *slot = FdSlot::default();
        self.fd_waiters -= waiters;
        registered
    }

    /// One epoll_wait with `timeout` (None: forever), waking what is ready, then a
    /// reap of AIO completions. Returns how many events or completions it handled.
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.stats.polls += 1;
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` has room for EPOLL_BATCH entries; `ts_ptr` is null or points
        // to a live timespec (the kernel's __kernel_timespec on x86_64); a null
        // sigmask leaves the mask unchanged (its size is then not read).
        let n = unsafe {
            raw_syscall(
                libc::SYS_epoll_pwait2,
                [
                    self.epfd.as_raw_fd() as libc::c_long,
                    self.events.as_mut_ptr() as libc::c_long,
                    EPOLL_BATCH as libc::c_long,
                    ts_ptr as libc::c_long,
                    0,
                    0,
                ],
            )
        };
        let n = match cvt_size(n) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        let mut handled = 0;
        for i in 0..n {
            let ev = self.events[i];
            let token = ev.u64;
            if token == AIO_TOKEN {
                continue; // reaped below
            }
            if token == TIMER_TOKEN {
                // Fired: read it to clear its level; the scheduler fires what is due.
                let mut expirations = 0u64;
                // SAFETY: `expirations` is a live u64, the 8 bytes a timerfd read
                // writes. EAGAIN (already read) changes nothing.
                unsafe {
                    libc::read(
                        self.timerfd.as_raw_fd(),
                        (&mut expirations as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                self.timer_armed = None;
                handled += 1;
                continue;
            }
            handled += 1;
            let bits = ev.events as i32;
            let Some(slot) = self.fds.get_mut(token as usize) else {
                continue;
            };
            let err = bits & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
            if err || bits & libc::EPOLLRDHUP != 0 {
                slot.closed = true;
            }
            if err || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 {
                // Edge-triggered: this event will not come again for the bytes now
                // pending, so a reader that is elsewhere must learn of it.
                slot.missed_read |= slot.readers.is_empty();
                self.fd_waiters -= slot.readers.len();
                for t in slot.readers.drain(..) {
                    t.wake();
                }
            }
            if err || bits & libc::EPOLLOUT != 0 {
                self.fd_waiters -= slot.writers.len();
                for t in slot.writers.drain(..) {
                    t.wake();
                }
            }
        }
        handled += self.aio.reap()?;
        if handled == 0 {
            self.stats.polls_empty += 1;
        }
        Ok(handled)
    }

    /// Makes sure the timerfd fires no later than `deadline`: arms it when it is
    /// disarmed or set later (a timer set earlier only wakes the scheduler early).
    fn arm_far(&mut self, deadline: Instant) -> io::Result<()> {
        if self.timer_armed.is_some_and(|armed| armed <= deadline) {
            return Ok(());
        }
        let nanos = deadline.as_nanos();
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (nanos / 1_000_000_000) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; a null old value is allowed.
        cvt(unsafe {
            libc::timerfd_settime(
                self.timerfd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        self.timer_armed = Some(deadline);
        Ok(())
    }

    /// Spins on the AIO ring and epoll until something happens or `until` passes.
    /// With `give_way`, gives the CPU to any other runnable thread between polls: on
    /// a machine of few CPUs the thread that would send the event (a socket peer)
    /// may be waiting for this one.
    fn busy_poll(&mut self, until: Instant, give_way: bool) -> io::Result<usize> {
        loop {
            let n = if self.fd_waiters > 0 {
                self.poll(Some(Duration::ZERO))?
            } else {
                self.aio.reap()?
            };
            if n > 0 || Instant::monotonic() >= until {
                return Ok(n);
            }
            if give_way {
                // SAFETY: sched_yield has no preconditions; its result (always 0
                // on Linux) says nothing to act on.
                unsafe { libc::sched_yield() };
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Driver for Reactor {
    fn now(&self) -> Instant {
        Instant::monotonic()
    }

    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        // The file I/O the tasks queued since the last park goes to the kernel now,
        // together (see `aio`'s module documentation). One it refused has completed
        // with its error and woken its task: no waiting then.
        if self.aio.flush() > 0 {
            return Ok(());
        }
        // The clock is read only for a deadline, and once unless a spin ran.
        let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::monotonic()));
        if timeout == Some(Duration::ZERO) {
            // A poll between busy tasks: with no socket waiting, the AIO completion
            // ring says all there is to know without a syscall.
            if self.fd_waiters == 0 {
                self.aio.reap()?;
            } else {
                self.poll(Some(Duration::ZERO))?;
            }
            return Ok(());
        }
        // Spin only for file I/O: an AIO completion lands within microseconds, while
        // a socket peer may take any time (and on a 2-vCPU machine a spinning
        // thread delays a peer thread that the kernel woke on the same CPU; see
        // `tdrv bench io`, the *_xthread figures).
        // Not while an fsync/fdatasync is in flight either: the kernel runs it on a
        // worker of this CPU, and spinning here delays it (measured with `tdrv bench
        // vssd`: a write + fdatasync at qd 1 took 195 us with the spin, 158 without).
        if !self.poll_before_park.is_zero()
            && self.aio.in_flight() > 0
            && self.aio.syncs_in_flight() == 0
        {
            let mut until = Instant::monotonic() + self.poll_before_park;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            if self.busy_poll(until, false)? > 0 {
                return Ok(());
            }
            timeout = deadline.map(|d| d.saturating_duration_since(Instant::monotonic()));
        }
        // A task waits on a socket: poll for a while before blocking (module doc).
        let spin_from = if self.spin.enabled() && self.fd_waiters > 0 {
            let start = Instant::monotonic();
            let window = self.spin.window();
            if !window.is_zero() {
                let until = deadline.map_or(start + window, |d| d.min(start + window));
                if self.busy_poll(until, true)? > 0 {
                    self.stats.spins_caught += 1;
                    return Ok(());
                }
                timeout = deadline.map(|d| d.saturating_duration_since(Instant::monotonic()));
            }
            Some(start)
        } else {
            None
        };
        match (deadline, timeout) {
            (Some(d), Some(t)) if t >= FAR_DEADLINE => {
                self.arm_far(d)?;
                self.poll(None)?;
            }
            _ => {
                self.poll(timeout)?;
            }
        }
        if let Some(start) = spin_from {
            self.spin
                .missed(Instant::monotonic().saturating_duration_since(start));
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.aio.in_flight() + self.fd_waiters
    }

    fn io(&mut self) -> Option<&mut dyn Io> {
        Some(self)
    }

    fn flush(&mut self) {
        self.aio.flush();
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Ok(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        f => Err(io::Error::other(format!("unexpected address family {f}"))),
    }
}

fn std_to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn new_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) has no memory preconditions; the result is checked.
    cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn close_fd(fd: RawFd) {
    // SAFETY: the caller owns `fd` and gives it up here.
    unsafe { libc::close(fd) };
}

impl Io for Reactor {
    fn listen(&mut self, addr: SocketAddr, backlog: u32) -> io::Result<RawFd> {
        let fd = new_socket(&addr)?;
        let setup = (|| {
            set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            let (sa, len) = std_to_sockaddr(&addr);
            // SAFETY: `sa` is a valid sockaddr of `len` bytes.
            cvt(unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) })?;
            // SAFETY: listen(2) on a bound socket we own.
            cvt(unsafe { libc::listen(fd, backlog.min(i32::MAX as u32) as i32) })?;
            Ok(())
        })();
        match setup {
            Ok(()) => Ok(fd),
            Err(e) => {
                close_fd(fd);
                Err(e)
            }
        }
    }

    fn accept(&mut self, fd: RawFd) -> io::Result<(RawFd, SocketAddr)> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` has room for `len` bytes of address.
        let conn = cvt(unsafe {
            libc::accept4(
                fd,
                storage.as_mut_ptr().cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: accept4 succeeded, so it wrote a valid address (zeroed before).
        let peer = sockaddr_to_std(unsafe { storage.assume_init_ref() });
        let nodelay = set_int_opt(conn, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        match (peer, nodelay) {
            (Ok(peer), Ok(())) => Ok((conn, peer)),
            (Err(e), _) | (_, Err(e)) => {
                close_fd(conn);
                Err(e)
            }
        }
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<RawFd> {
        let fd = new_socket(&addr)?;
        let (sa, len) = std_to_sockaddr(&addr);
        let r = set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).and_then(|()| {
            // SAFETY: `sa` is a valid sockaddr of `len` bytes.
            match cvt(unsafe {
                libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len)
            }) {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
                Err(e) => Err(e),
            }
        });
        match r {
            Ok(()) => Ok(fd),
            Err(e) => {
                close_fd(fd);
                Err(e)
            }
        }
    }

    fn connect_result(&mut self, fd: RawFd) -> io::Result<()> {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live and sized for SO_ERROR.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut i32).cast(),
                &mut len,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        // Not yet connected (spurious wakeup) shows as ENOTCONN from getpeername.
        self.peer_addr(fd).map(|_| ())
    }

    fn local_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` has room for `len` bytes.
        cvt(unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) })?;
        // SAFETY: zeroed, then written by the kernel.
        sockaddr_to_std(unsafe { storage.assume_init_ref() })
    }

    fn peer_addr(&mut self, fd: RawFd) -> io::Result<SocketAddr> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` has room for `len` bytes.
        cvt(unsafe { libc::getpeername(fd, storage.as_mut_ptr().cast(), &mut len) })?;
        // SAFETY: zeroed, then written by the kernel.
        sockaddr_to_std(unsafe { storage.assume_init_ref() })
    }

    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length; no address is asked for.
        let n = cvt_size(unsafe {
            raw_syscall(
                libc::SYS_recvfrom,
                [
                    fd as libc::c_long,
                    buf.as_mut_ptr() as libc::c_long,
                    buf.len() as libc::c_long,
                    0,
                    0,
                    0,
                ],
            )
        })?;
        self.stats.bytes_read += n as u64;
        Ok(n)
    }

    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of its length. MSG_NOSIGNAL: a closed peer
        // is an EPIPE error, not a SIGPIPE that kills the process.
        let n = cvt_size(unsafe {
            raw_syscall(
                libc::SYS_sendto,
                [
                    fd as libc::c_long,
                    buf.as_ptr() as libc::c_long,
                    buf.len() as libc::c_long,
                    libc::MSG_NOSIGNAL as libc::c_long,
                    0,
                    0,
                ],
            )
        })?;
        self.stats.bytes_written += n as u64;
        Ok(n)
    }

    fn shutdown(&mut self, fd: RawFd, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown(2) has no memory preconditions.
        cvt(unsafe { libc::shutdown(fd, how) })?;
        Ok(())
    }

    fn register(&mut self, fd: RawFd) -> io::Result<()> {
        // Whatever the table remembers of this fd number belongs to a closed fd.
        self.reset_slot(fd);
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: `fd` is open (its owner registers it) and `ev` is valid.
        let rc =
            unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        match cvt(rc) {
            Ok(_) => {}
            // Registered already (a dup of the same file): the events still come.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.slot(fd)?.registered = true;
        Ok(())
    }

    fn wait(&mut self, fd: RawFd, interest: Interest, task: TaskRef) -> io::Result<()> {
        let slot = self.slot(fd)?;
        if !slot.registered {
            return Err(io::Error::other(format!(
                "wait on fd {fd}, which is not registered"
            )));
        }
        let list = match interest {
            Interest::Read => &mut slot.readers,
            Interest::Write => &mut slot.writers,
        };
        list.push(task);
        self.fd_waiters += 1;
        Ok(())
    }

    fn take_missed_read(&mut self, fd: RawFd) -> bool {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get_mut(i))
            .is_some_and(|slot| std::mem::take(&mut slot.missed_read))
    }

    fn peer_closed(&self, fd: RawFd) -> bool {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get(i))
            .is_some_and(|s| s.closed)
    }

    fn cancel_wait(&mut self, fd: RawFd, interest: Interest) {
        let Ok(slot) = self.slot(fd) else {
            return;
        };
        let list = match interest {
            Interest::Read => &mut slot.readers,
            Interest::Write => &mut slot.writers,
        };
        // The withdrawn wait is the one that is no longer current (its task timed
        // out or is unwinding); live waits of other tasks stay.
        let before = list.len();
        list.retain(TaskRef::is_current_wait);
        self.fd_waiters -= before - list.len();
    }

    fn close(&mut self, fd: RawFd) {
        self.reset_slot(fd);
        // Closing removes the fd from the epoll set (we never dup it).
        close_fd(fd);
    }

    fn forget(&mut self, fd: RawFd) {
        if self.reset_slot(fd) {
            // SAFETY: removing an fd we registered; a null event is allowed for DEL.
            unsafe {
                libc::epoll_ctl(
                    self.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
    }

    fn open(&mut self, path: &std::path::Path, flags: i32, mode: u32) -> io::Result<RawFd> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: `c` is a NUL-terminated path; open(2) has no other preconditions.
        cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
    }

    fn file_len(&mut self, fd: RawFd) -> io::Result<u64> {
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: `st` has room for a struct stat.
        cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
        // SAFETY: fstat succeeded and filled it.
        let st = unsafe { st.assume_init() };
        if st.st_mode & libc::S_IFMT == libc::S_IFBLK {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes a u64 to the pointer given.
            cvt(unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size) })?;
            return Ok(size);
        }
        Ok(st.st_size as u64)
    }

    fn set_file_len(&mut self, fd: RawFd, len: u64) -> io::Result<()> {
        let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: ftruncate(2) has no memory preconditions.
        cvt(unsafe { libc::ftruncate(fd, len) })?;
        Ok(())
    }

    fn lock_exclusive(&mut self, fd: RawFd) -> io::Result<()> {
        // SAFETY: flock(2) has no memory preconditions.
        cvt(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) })?;
        Ok(())
    }

    fn unlock(&mut self, fd: RawFd) -> io::Result<()> {
        // SAFETY: flock(2) has no memory preconditions.
        cvt(unsafe { libc::flock(fd, libc::LOCK_UN) })?;
        Ok(())
    }

    fn submit(&mut self, op: Rc<FileOp>) -> io::Result<()> {
        self.aio.submit(op)
    }

    fn submit_slots(&self) -> usize {
        self.aio.slots()
    }

    fn wait_slot(&mut self, task: TaskRef) {
        self.aio.wait_slot(task);
    }

    fn count_bytes(&mut self, read: u64, written: u64) {
        self.stats.bytes_read += read;
        self.stats.bytes_written += written;
    }

    fn stats(&self) -> IoStats {
        IoStats {
            aio_submitted: self.aio.submitted,
            aio_submit_calls: self.aio.submit_calls,
            aio_completed: self.aio.completed,
            aio_in_flight: self.aio.in_flight(),
            fd_waiters: self.fd_waiters,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SPIN_GROW_START, SpinWindow};
    use std::time::Duration;

    const MAX: Duration = Duration::from_micros(200);

    #[test]
    fn a_spin_window_starts_at_its_bound_and_halves_to_none_while_idle() {
        let mut w = SpinWindow::new(MAX);
        assert!(w.enabled());
        assert_eq!(w.window(), MAX);
        let idle = Duration::from_millis(5);
        let mut windows = Vec::new();
        for _ in 0..6 {
            w.missed(idle);
            windows.push(w.window().as_micros());
        }
        assert_eq!(windows, [100, 50, 25, 12, 0, 0]);
    }

    #[test]
    fn an_event_just_after_the_window_grows_it_back_up_to_the_bound() {
        let mut w = SpinWindow::new(MAX);
        for _ in 0..8 {
            w.missed(Duration::from_secs(1));
        }
        assert_eq!(w.window(), Duration::ZERO);
        // A client answering within 30 us: a few round trips bring the poll back.
        let mut windows = Vec::new();
        for _ in 0..6 {
            w.missed(Duration::from_micros(30));
            windows.push(w.window().as_micros());
        }
        assert_eq!(windows, [10, 20, 40, 80, 160, 200]);
        assert_eq!(SPIN_GROW_START.as_micros(), 10);
        // An event at the bound itself still counts as one a longer poll catches.
        w.missed(MAX);
        assert_eq!(w.window(), MAX);
    }

    #[test]
    fn a_zero_bound_never_polls() {
        let mut w = SpinWindow::new(Duration::ZERO);
        assert!(!w.enabled());
        w.missed(Duration::ZERO);
        assert_eq!(w.window(), Duration::ZERO);
    }
}
