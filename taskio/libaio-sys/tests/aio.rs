//! The kernel AIO binding against real files in the temp directory: reads and
//! writes at offsets (with `O_DIRECT` where the filesystem allows it), vectored I/O,
//! fsync, per-write flags, eventfd completion, cookies, errors and many requests in
//! flight at once.
//!
//! Memory rule of these tests: every test declares its buffers and iocbs *before*
//! its [`Ctx`], so that if an assertion unwinds while requests are in flight the
//! `Ctx` is dropped first, and its `io_destroy` waits for those requests before the
//! buffers are freed.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::ptr::{self, NonNull};
use std::time::Duration;

use libaio_sys::{
    IOCB_CMD_NOOP, RWF_DSYNC, aio_context_t, io_cancel, io_destroy, io_event, io_getevents,
    io_set_eventfd, io_setup, io_submit, iocb,
};

/// The I/O unit, and the alignment of buffers and offsets for `O_DIRECT`.
const BLOCK_SIZE: usize = 4096;
/// The longest one `io_getevents` waits for requests a test has submitted; reaching
/// it means the kernel lost a completion, and the test fails.
const REAP_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a wait is repeated after a signal (EINTR) or a partial batch.
const WAIT_ATTEMPTS_MAX: u32 = 1000;
/// An fd number that can never be open: the kernel caps descriptors below
/// `sysctl_nr_open_max`, which is less than `i32::MAX`.
const FD_NEVER_OPEN: RawFd = i32::MAX;

/// A file in a directory of its own under the temp directory, both removed on drop
/// (also when the test panics).
struct TempFile {
    file: File,
    path: PathBuf,
    /// Whether `file` is open with `O_DIRECT`.
    direct: bool,
    _dir: tempfile::TempDir,
}

impl TempFile {
    /// A new empty file, opened `O_DIRECT` unless the filesystem refuses that.
    fn new(name: &str) -> TempFile {
        let dir = tempfile::Builder::new()
            .prefix(&format!("libaio-sys-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create a temp dir for {name}: {e}"));
        let path = dir.path().join(name);
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(&path)
        };
        match open(libc::O_DIRECT) {
            Ok(file) => TempFile {
                file,
                path,
                direct: true,
                _dir: dir,
            },
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                println!(
                    "{name}: the filesystem of {} refuses O_DIRECT ({error}); using buffered I/O",
                    path.display()
                );
                let file = open(0).expect("open the temp file buffered");
                TempFile {
                    file,
                    path,
                    direct: false,
                    _dir: dir,
                }
            }
            Err(error) => panic!("open {}: {error}", path.display()),
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A zeroed heap buffer aligned to `BLOCK_SIZE`, as `O_DIRECT` requires.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        assert!(len > 0);
        assert_eq!(len % BLOCK_SIZE, 0);
        let layout = Layout::from_size_align(len, BLOCK_SIZE).expect("a valid layout");
        // SAFETY: `layout` has a non-zero size (asserted above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// A block of the file's pattern: see [`fill_block`].
    fn with_block(block_index: u64) -> AlignedBuf {
        let mut buf = AlignedBuf::new(BLOCK_SIZE);
        fill_block(buf.as_mut_slice(), block_index);
        buf
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    /// The address handed to the kernel. Taking `&mut self` keeps Rust references
    /// to the buffer from coexisting with the kernel's access in these tests.
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed at allocation) bytes
        // until drop; `&self` rules out a `&mut` to them, and the tests read only
        // after the kernel's access has been reaped.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    fn iovec(&mut self) -> libc::iovec {
        libc::iovec {
            iov_base: self.as_mut_ptr().cast(),
            iov_len: self.len(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Block `block_index` of the test files: its index, then bytes that differ between
/// neighbouring blocks and positions, so a block read from the wrong offset, or bytes
/// shifted within a block, are caught.
fn fill_block(block: &mut [u8], block_index: u64) {
    assert_eq!(block.len(), BLOCK_SIZE);
    for (position, byte) in block.iter_mut().enumerate() {
        *byte = (position as u64)
            .wrapping_mul(7)
            .wrapping_add(block_index.wrapping_mul(13))
            .wrapping_add(position as u64 >> 8) as u8;
    }
    block[..8].copy_from_slice(&block_index.to_le_bytes());
}

/// Asserts `block` is block `block_index` of the pattern, naming the first
/// differing byte.
fn assert_block(block: &[u8], block_index: u64) {
    let mut expected = [0u8; BLOCK_SIZE];
    fill_block(&mut expected, block_index);
    assert_eq!(block.len(), BLOCK_SIZE);
    if let Some(position) = (0..BLOCK_SIZE).find(|&i| block[i] != expected[i]) {
        panic!(
            "block {block_index}: byte {position} is {:#04x}, expected {:#04x}",
            block[position], expected[position]
        );
    }
}

fn block_offset(block_index: u64) -> i64 {
    i64::try_from(block_index * BLOCK_SIZE as u64).expect("offset fits i64")
}

/// An AIO context destroyed on drop; `io_destroy` waits for requests still in flight,
/// which keeps buffers declared before the `Ctx` alive until the kernel is done.
struct Ctx(aio_context_t);

impl Ctx {
    fn new(nr_events: u32) -> Ctx {
        Ctx(io_setup(nr_events).expect("io_setup"))
    }

    /// Submits every iocb of `iocbs` and reaps exactly as many completions,
    /// returned in completion order.
    ///
    /// # Safety
    /// Every buffer the iocbs name is valid for the access of its command for as
    /// long as this `Ctx` lives (all are reaped before a normal return; on a panic,
    /// dropping the `Ctx` waits for them).
    unsafe fn run(&self, iocbs: &mut [iocb]) -> Vec<io_event> {
        let pointers: Vec<*mut iocb> = iocbs.iter_mut().map(ptr::from_mut).collect();
        // SAFETY: `iocbs` is borrowed mutably, so not moved or touched by anyone else,
        // until this function has reaped all completions; its buffers are the
        // caller's contract.
        let accepted = unsafe { io_submit(self.0, &pointers) }.expect("io_submit");
        assert_eq!(
            accepted,
            iocbs.len(),
            "io_submit accepted only part of the batch"
        );
        self.reap(iocbs.len())
    }

    /// Waits for exactly `count` completions.
    fn reap(&self, count: usize) -> Vec<io_event> {
        let mut events = vec![io_event::default(); count];
        let mut reaped = 0;
        for _ in 0..WAIT_ATTEMPTS_MAX {
            if reaped == count {
                break;
            }
            match io_getevents(
                self.0,
                count - reaped,
                &mut events[reaped..],
                Some(REAP_TIMEOUT),
            ) {
                Ok(0) => panic!(
                    "{} completions missing after {REAP_TIMEOUT:?}",
                    count - reaped
                ),
                Ok(n) => reaped += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => panic!("io_getevents: {error}"),
            }
        }
        assert_eq!(reaped, count);
        events
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let destroyed = io_destroy(self.0);
        if !std::thread::panicking() {
            destroyed.expect("io_destroy");
        }
    }
}

/// Asserts every event succeeded with `res == bytes`.
fn assert_all_completed(events: &[io_event], bytes: u64) {
    for event in events {
        assert_eq!(event.result().expect("request failed"), bytes, "{event:?}");
        assert_eq!(event.res2, 0, "{event:?}");
    }
}

/// Writes blocks `0..count` of the pattern to `file` through AIO.
fn write_pattern(file: &TempFile, count: u64) {
    let mut bufs: Vec<AlignedBuf> = (0..count).map(AlignedBuf::with_block).collect();
    let mut iocbs: Vec<iocb> = bufs
        .iter_mut()
        .zip(0..)
        .map(|(buf, i)| {
            iocb::io_prep_pwrite(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, block_offset(i))
        })
        .collect();
    let ctx = Ctx::new(u32::try_from(count).expect("count fits u32"));
    // SAFETY: `bufs` is declared before `ctx` and outlives every request.
    let events = unsafe { ctx.run(&mut iocbs) };
    assert_all_completed(&events, BLOCK_SIZE as u64);
}

#[test]
fn io_setup_and_io_destroy() {
    let ctx = io_setup(8).expect("io_setup");
    assert_ne!(ctx, 0);
    io_destroy(ctx).expect("io_destroy");

    assert_eq!(io_setup(0).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    // A handle that is no context (not even mapped memory) is refused, not trusted.
    // (A destroyed handle is not used here: another test's io_setup may reuse it.)
    assert_eq!(
        io_destroy(1).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    let mut events = [io_event::default(); 1];
    let error = io_getevents(1, 0, &mut events, Some(Duration::ZERO)).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn pwrite_then_pread_blocks_at_different_offsets() {
    const BLOCK_INDICES: [u64; 4] = [0, 5, 2, 9];
    let file = TempFile::new("offsets");
    println!("offsets: O_DIRECT {}", file.direct);
    let mut write_bufs: Vec<AlignedBuf> = BLOCK_INDICES
        .iter()
        .map(|&i| AlignedBuf::with_block(i))
        .collect();
    let mut read_bufs: Vec<AlignedBuf> = BLOCK_INDICES
        .iter()
        .map(|_| AlignedBuf::new(BLOCK_SIZE))
        .collect();
    let mut writes: Vec<iocb> = write_bufs
        .iter_mut()
        .zip(BLOCK_INDICES)
        .map(|(buf, i)| {
            iocb::io_prep_pwrite(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, block_offset(i))
        })
        .collect();
    let mut reads: Vec<iocb> = read_bufs
        .iter_mut()
        .zip(BLOCK_INDICES)
        .map(|(buf, i)| {
            iocb::io_prep_pread(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, block_offset(i))
        })
        .collect();
    let ctx = Ctx::new(8);

    // SAFETY: the buffers are declared before `ctx` and outlive every request.
    let events = unsafe { ctx.run(&mut writes) };
    assert_all_completed(&events, BLOCK_SIZE as u64);
    let file_len = file.file.metadata().expect("metadata").len();
    assert_eq!(file_len, 10 * BLOCK_SIZE as u64);

    // SAFETY: as above.
    let events = unsafe { ctx.run(&mut reads) };
    assert_all_completed(&events, BLOCK_SIZE as u64);
    for (buf, i) in read_bufs.iter().zip(BLOCK_INDICES) {
        assert_block(buf.as_slice(), i);
    }
    // The holes between the written blocks read back as zeros.
    let mut hole = AlignedBuf::new(BLOCK_SIZE);
    hole.as_mut_slice().fill(0xaa);
    let mut read_hole = [iocb::io_prep_pread(
        file.fd(),
        hole.as_mut_ptr(),
        BLOCK_SIZE,
        block_offset(1),
    )];
    let hole_ctx = Ctx::new(1);
    // SAFETY: `hole` is declared before `hole_ctx`.
    let events = unsafe { hole_ctx.run(&mut read_hole) };
    assert_all_completed(&events, BLOCK_SIZE as u64);
    assert!(hole.as_slice().iter().all(|&byte| byte == 0));
}

#[test]
fn pwritev_then_preadv() {
    let file = TempFile::new("vectored");
    let mut sources: Vec<AlignedBuf> = (0..3).map(AlignedBuf::with_block).collect();
    let source_iov: Vec<libc::iovec> = sources.iter_mut().map(AlignedBuf::iovec).collect();
    // Read back into two buffers of one and two blocks: the split differs from the
    // write's, so the scatter is checked, not just mirrored.
    let mut first = AlignedBuf::new(BLOCK_SIZE);
    let mut rest = AlignedBuf::new(2 * BLOCK_SIZE);
    let target_iov = [first.iovec(), rest.iovec()];
    let offset = block_offset(2);
    let mut write = [iocb::io_prep_pwritev(
        file.fd(),
        source_iov.as_ptr(),
        source_iov.len(),
        offset,
    )];
    let mut read = [iocb::io_prep_preadv(
        file.fd(),
        target_iov.as_ptr(),
        target_iov.len(),
        offset,
    )];
    let ctx = Ctx::new(2);

    // SAFETY: the iovec arrays and the buffers they name are declared before `ctx`.
    let events = unsafe { ctx.run(&mut write) };
    assert_all_completed(&events, 3 * BLOCK_SIZE as u64);
    // SAFETY: as above.
    let events = unsafe { ctx.run(&mut read) };
    assert_all_completed(&events, 3 * BLOCK_SIZE as u64);

    assert_block(first.as_slice(), 0);
    assert_block(&rest.as_slice()[..BLOCK_SIZE], 1);
    assert_block(&rest.as_slice()[BLOCK_SIZE..], 2);
}

#[test]
fn fsync_and_fdatasync_complete_with_zero() {
    let file = TempFile::new("fsync");
    write_pattern(&file, 2);
    let mut syncs = [
        iocb::io_prep_fsync(file.fd()),
        iocb::io_prep_fdsync(file.fd()),
    ];
    syncs[0].set_data(1);
    syncs[1].set_data(2);
    let ctx = Ctx::new(2);
    // SAFETY: fsync and fdatasync name no buffer.
    let events = unsafe { ctx.run(&mut syncs) };
    assert_all_completed(&events, 0);
    let mut cookies: Vec<u64> = events.iter().map(|event| event.data).collect();
    cookies.sort_unstable();
    assert_eq!(cookies, [1, 2]);
}

#[test]
fn rwf_dsync_pwrite_completes_and_reads_back() {
    let file = TempFile::new("dsync");
    let mut source = AlignedBuf::with_block(3);
    let mut target = AlignedBuf::new(BLOCK_SIZE);
    let mut write = [iocb::io_prep_pwrite(
        file.fd(),
        source.as_mut_ptr(),
        BLOCK_SIZE,
        0,
    )];
    write[0].set_rw_flags(RWF_DSYNC);
    let mut read = [iocb::io_prep_pread(
        file.fd(),
        target.as_mut_ptr(),
        BLOCK_SIZE,
        0,
    )];
    let ctx = Ctx::new(1);
    // SAFETY: both buffers are declared before `ctx`.
    let events = unsafe { ctx.run(&mut write) };
    assert_all_completed(&events, BLOCK_SIZE as u64);
    // SAFETY: as above.
    let events = unsafe { ctx.run(&mut read) };
    assert_all_completed(&events, BLOCK_SIZE as u64);
    assert_block(target.as_slice(), 3);

    // The flag is for reads and writes only: on fsync the kernel refuses it.
    let mut fsync = iocb::io_prep_fsync(file.fd());
    fsync.set_rw_flags(RWF_DSYNC);
    // SAFETY: a refused request is not queued, and fsync names no buffer.
    let error = unsafe { io_submit(ctx.0, &[&raw mut fsync]) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
}

/// Creates a non-blocking eventfd.
fn eventfd() -> File {
    // SAFETY: eventfd takes no pointer; it returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `REAP_TIMEOUT` for `eventfd` to be readable; true if it is.
fn wait_readable(eventfd: &File) -> bool {
    let mut pollfd = libc::pollfd {
        fd: eventfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = i32::try_from(REAP_TIMEOUT.as_millis()).expect("timeout fits i32");
    for _ in 0..WAIT_ATTEMPTS_MAX {
        // SAFETY: poll reads and writes the one live pollfd it is given.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, timeout_ms) };
        match ready {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            -1 => panic!("poll: {}", io::Error::last_os_error()),
            0 => return false,
            _ => return true,
        }
    }
    false
}

/// Reads and resets the eventfd's counter; 0 if it was 0.
fn take_counter(mut eventfd: &File) -> u64 {
    let mut counter = [0u8; 8];
    match eventfd.read(&mut counter) {
        Ok(8) => u64::from_ne_bytes(counter),
        Ok(n) => panic!("eventfd read returned {n} bytes"),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(error) => panic!("eventfd read: {error}"),
    }
}

#[test]
fn completions_signal_an_eventfd() {
    const REQUEST_COUNT: u64 = 8;
    let file = TempFile::new("eventfd");
    write_pattern(&file, REQUEST_COUNT);
    let eventfd = eventfd();
    let mut bufs: Vec<AlignedBuf> = (0..REQUEST_COUNT)
        .map(|_| AlignedBuf::new(BLOCK_SIZE))
        .collect();
    let mut iocbs: Vec<iocb> = bufs
        .iter_mut()
        .zip(0..)
        .map(|(buf, i)| {
            let mut cb =
                iocb::io_prep_pread(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, block_offset(i));
            io_set_eventfd(&mut cb, eventfd.as_raw_fd());
            cb.set_data(i);
            cb
        })
        .collect();
    let pointers: Vec<*mut iocb> = iocbs.iter_mut().map(ptr::from_mut).collect();
    let ctx = Ctx::new(REQUEST_COUNT as u32);

    // SAFETY: `bufs` and `iocbs` are declared before `ctx` and are neither moved nor
    // touched until the completions are reaped below.
    let accepted = unsafe { io_submit(ctx.0, &pointers) }.expect("io_submit");
    assert_eq!(accepted, REQUEST_COUNT as usize);

    // The counter adds up to exactly one per completion.
    let mut completed = 0;
    while completed < REQUEST_COUNT {
        assert!(
            wait_readable(&eventfd),
            "eventfd saw {completed} of {REQUEST_COUNT} completions"
        );
        completed += take_counter(&eventfd);
        assert!(
            completed <= REQUEST_COUNT,
            "eventfd counted {completed} completions"
        );
    }
    assert_eq!(take_counter(&eventfd), 0);

    // The kernel signals the eventfd after the event is in the ring, so they are
    // all there for a wait that never sleeps.
    let mut events = [io_event::default(); REQUEST_COUNT as usize];
    let reaped = io_getevents(ctx.0, 0, &mut events, Some(Duration::ZERO)).expect("io_getevents");
    assert_eq!(reaped, REQUEST_COUNT as usize);
    assert_all_completed(&events, BLOCK_SIZE as u64);
    for event in &events {
        assert_block(bufs[event.data as usize].as_slice(), event.data);
    }
}

#[test]
fn aio_data_and_iocb_address_come_back_in_the_event() {
    const REQUEST_COUNT: u64 = 16;
    const COOKIE_BASE: u64 = 0xc0ff_ee00_0000_0000;
    let file = TempFile::new("cookies");
    write_pattern(&file, REQUEST_COUNT);
    let mut bufs: Vec<AlignedBuf> = (0..REQUEST_COUNT)
        .map(|_| AlignedBuf::new(BLOCK_SIZE))
        .collect();
    let mut iocbs: Vec<iocb> = bufs
        .iter_mut()
        .zip(0..)
        .map(|(buf, i)| {
            let mut cb =
                iocb::io_prep_pread(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, block_offset(i));
            cb.set_data(COOKIE_BASE + i);
            // Not ours to set: the kernel overwrites it at submission.
            cb.aio_key = 0x1234;
            cb
        })
        .collect();
    let ctx = Ctx::new(REQUEST_COUNT as u32);
    // SAFETY: `bufs` is declared before `ctx`.
    let events = unsafe { ctx.run(&mut iocbs) };

    assert_all_completed(&events, BLOCK_SIZE as u64);
    let mut seen = [false; REQUEST_COUNT as usize];
    for event in &events {
        let index = usize::try_from(event.data - COOKIE_BASE).expect("index");
        assert!(!seen[index], "request {index} completed twice");
        seen[index] = true;
        let address = ptr::from_ref(&iocbs[index]).addr() as u64;
        assert_eq!(event.obj, address, "request {index}");
        assert_block(bufs[index].as_slice(), index as u64);
    }
    assert!(seen.iter().all(|&s| s));
    // The kernel wrote KIOCB_KEY (0) into every iocb it accepted.
    assert!(iocbs.iter().all(|cb| cb.aio_key == 0));
}

#[test]
fn errors_found_at_submission_fail_io_submit() {
    let file = TempFile::new("errors");
    write_pattern(&file, 1);
    let mut buf = AlignedBuf::new(BLOCK_SIZE);
    let mut bad_fd = iocb::io_prep_pread(FD_NEVER_OPEN, buf.as_mut_ptr(), BLOCK_SIZE, 0);
    let mut good = iocb::io_prep_pread(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, 0);
    good.set_data(7);
    let mut noop = iocb {
        aio_lio_opcode: IOCB_CMD_NOOP,
        ..iocb::io_prep_fsync(file.fd())
    };
    let mut bad_resfd = iocb::io_prep_fsync(file.fd());
    io_set_eventfd(&mut bad_resfd, FD_NEVER_OPEN);
    let read_only = File::open(&file.path).expect("open read-only");
    let mut write_to_read_only =
        iocb::io_prep_pwrite(read_only.as_raw_fd(), buf.as_mut_ptr(), BLOCK_SIZE, 0);
    let ctx = Ctx::new(4);

    // A bad descriptor is found while the request is built, so io_submit itself
    // fails and no event is ever produced.
    // SAFETY: a refused request is not queued.
    let error = unsafe { io_submit(ctx.0, &[&raw mut bad_fd]) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    // So is a bad eventfd, an opcode the kernel lacks, and a write to a file not
    // open for writing.
    // SAFETY: as above.
    let error = unsafe { io_submit(ctx.0, &[&raw mut bad_resfd]) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    // SAFETY: as above.
    let error = unsafe { io_submit(ctx.0, &[&raw mut noop]) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    // SAFETY: as above.
    let error = unsafe { io_submit(ctx.0, &[&raw mut write_to_read_only]) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));

    // Behind a good request, the bad one makes the submission partial: one accepted,
    // no error reported for the rest.
    // SAFETY: `buf` and `good` are declared before `ctx` and untouched until reaped.
    let accepted =
        unsafe { io_submit(ctx.0, &[&raw mut good, &raw mut bad_fd]) }.expect("io_submit");
    assert_eq!(accepted, 1);
    let events = ctx.reap(1);
    assert_eq!(events[0].data, 7);
    assert_all_completed(&events, BLOCK_SIZE as u64);
    assert_block(buf.as_slice(), 0);
    let mut none = [io_event::default(); 1];
    assert_eq!(
        io_getevents(ctx.0, 0, &mut none, Some(Duration::ZERO)).expect("io_getevents"),
        0
    );
}

#[test]
fn errors_found_by_the_file_come_back_in_the_event() {
    let file = TempFile::new("event-errors");
    write_pattern(&file, 1);
    let mut buf = AlignedBuf::new(2 * BLOCK_SIZE);
    // Past the end of the file: not an error, 0 bytes.
    let mut past_end = [iocb::io_prep_pread(
        file.fd(),
        buf.as_mut_ptr(),
        BLOCK_SIZE,
        block_offset(4),
    )];
    // One byte into an aligned buffer: O_DIRECT needs block alignment.
    // SAFETY: 1 < the buffer's 2 blocks, so the pointer stays inside it.
    let misaligned = unsafe { buf.as_mut_ptr().add(1) };
    let mut unaligned = [iocb::io_prep_pread(file.fd(), misaligned, BLOCK_SIZE, 0)];
    let ctx = Ctx::new(2);

    // SAFETY: `buf` is declared before `ctx`.
    let events = unsafe { ctx.run(&mut past_end) };
    assert_all_completed(&events, 0);

    // The misaligned read is accepted either way: whether the alignment is wrong is
    // the filesystem's business, found after submission.
    // SAFETY: as above; the read stays within the buffer's 2 blocks.
    let events = unsafe { ctx.run(&mut unaligned) };
    let mem_align = dio_mem_align(&file);
    println!(
        "event-errors: O_DIRECT {}, statx dio_mem_align {mem_align:?}",
        file.direct
    );
    if file.direct && mem_align.is_some_and(|align| align > 1) {
        assert_eq!(events[0].res, -i64::from(libc::EINVAL), "{:?}", events[0]);
        assert_eq!(
            events[0].result().unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    } else {
        // Buffered, or an O_DIRECT that goes through the page cache (tmpfs since
        // Linux 6.6): any alignment is fine.
        assert_all_completed(&events, BLOCK_SIZE as u64);
        assert_block(&buf.as_slice()[1..=BLOCK_SIZE], 0);
    }
}

/// The memory alignment `O_DIRECT` needs on `file`, if the kernel reports one
/// (`statx` with `STATX_DIOALIGN`, Linux 6.1 and later).
fn dio_mem_align(file: &TempFile) -> Option<u32> {
    // SAFETY: `statx` is plain integers, for which all zeros is a valid value.
    let mut statx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated empty string (with AT_EMPTY_PATH, the fd
    // itself is queried) and `statx` is a live struct the kernel may fill.
    let ret = unsafe {
        libc::statx(
            file.fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &raw mut statx,
        )
    };
    assert_eq!(ret, 0, "statx: {}", io::Error::last_os_error());
    (statx.stx_mask & libc::STATX_DIOALIGN != 0).then_some(statx.stx_dio_mem_align)
}

#[test]
fn io_getevents_with_nothing_in_flight_returns_zero_at_once() {
    let ctx = Ctx::new(4);
    let mut events = [io_event::default(); 4];
    assert_eq!(
        io_getevents(ctx.0, 0, &mut events, Some(Duration::ZERO)).expect("min 0"),
        0
    );
    assert_eq!(
        io_getevents(ctx.0, 1, &mut events, Some(Duration::ZERO)).expect("min 1"),
        0
    );
    assert_eq!(
        io_getevents(ctx.0, 0, &mut [], Some(Duration::ZERO)).expect("no room"),
        0
    );
    assert_eq!(events, [io_event::default(); 4]);
}

#[test]
#[should_panic(expected = "min_nr 2 exceeds the 1 events of room")]
fn io_getevents_wanting_more_than_room_is_a_bug() {
    let ctx = Ctx::new(1);
    let mut events = [io_event::default(); 1];
    let _ = io_getevents(ctx.0, 2, &mut events, Some(Duration::ZERO));
}

#[test]
fn sixty_four_reads_in_flight_on_one_fd() {
    const REQUEST_COUNT: u64 = 64;
    let file = TempFile::new("many");
    println!("many: O_DIRECT {}", file.direct);
    write_pattern(&file, REQUEST_COUNT);
    let mut bufs: Vec<AlignedBuf> = (0..REQUEST_COUNT)
        .map(|_| AlignedBuf::new(BLOCK_SIZE))
        .collect();
    // Buffer i reads block (i * 37) mod 64, so buffers and offsets are in different
    // orders and a completion credited to the wrong request shows.
    let block_of = |i: u64| (i * 37) % REQUEST_COUNT;
    let mut iocbs: Vec<iocb> = bufs
        .iter_mut()
        .zip(0..)
        .map(|(buf, i)| {
            let mut cb = iocb::io_prep_pread(
                file.fd(),
                buf.as_mut_ptr(),
                BLOCK_SIZE,
                block_offset(block_of(i)),
            );
            cb.set_data(i);
            cb
        })
        .collect();
    let ctx = Ctx::new(REQUEST_COUNT as u32);
    // One io_submit, so all 64 are in flight before the first is reaped.
    // SAFETY: `bufs` is declared before `ctx`.
    let events = unsafe { ctx.run(&mut iocbs) };

    assert_all_completed(&events, BLOCK_SIZE as u64);
    let mut seen = [false; REQUEST_COUNT as usize];
    for event in &events {
        let index = usize::try_from(event.data).expect("index");
        assert!(!seen[index], "request {index} completed twice");
        seen[index] = true;
        assert_eq!(event.obj, ptr::from_ref(&iocbs[index]).addr() as u64);
    }
    assert!(seen.iter().all(|&s| s));
    for (buf, i) in bufs.iter().zip(0..) {
        assert_block(buf.as_slice(), block_of(i));
    }
}

#[test]
fn io_cancel_of_a_read_is_refused_and_of_a_poll_is_in_progress() {
    let file = TempFile::new("cancel");
    write_pattern(&file, 1);
    let eventfd = eventfd();
    let mut buf = AlignedBuf::new(BLOCK_SIZE);
    let mut read = iocb::io_prep_pread(file.fd(), buf.as_mut_ptr(), BLOCK_SIZE, 0);
    // The eventfd is never written, so this poll would wait forever.
    let mut poll = iocb::io_prep_poll(eventfd.as_raw_fd(), libc::POLLIN);
    poll.set_data(42);
    let ctx = Ctx::new(2);
    let mut result = io_event::default();

    // File reads are not cancellable, in flight or done.
    // SAFETY: `buf` and `read` are declared before `ctx`, untouched until reaped.
    let accepted = unsafe { io_submit(ctx.0, &[&raw mut read]) }.expect("io_submit read");
    assert_eq!(accepted, 1);
    // SAFETY: `read` is a live iocb.
    let error = unsafe { io_cancel(ctx.0, &raw mut read, &mut result) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    assert_all_completed(&ctx.reap(1), BLOCK_SIZE as u64);

    // A poll is: the kernel says the cancellation is in progress and delivers the
    // completion through the ring, with an empty ready mask.
    // SAFETY: a poll names no buffer; `poll` is declared before `ctx`.
    let accepted = unsafe { io_submit(ctx.0, &[&raw mut poll]) }.expect("io_submit poll");
    assert_eq!(accepted, 1);
    let mut none = [io_event::default(); 1];
    assert_eq!(
        io_getevents(ctx.0, 0, &mut none, Some(Duration::ZERO)).expect("io_getevents"),
        0
    );
    // SAFETY: `poll` is a live iocb.
    let error = unsafe { io_cancel(ctx.0, &raw mut poll, &mut result) }.unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINPROGRESS));
    assert_eq!(
        result,
        io_event::default(),
        "current kernels leave `result` alone"
    );
    let events = ctx.reap(1);
    println!("cancelled poll completed with {:?}", events[0]);
    assert_eq!(events[0].data, 42);
    assert_eq!(events[0].obj, ptr::from_ref(&poll).addr() as u64);
    assert_eq!(events[0].res, 0);
}
