//! File I/O through kernel AIO (`taskio::file`), on real files in a temp directory:
//! `OpenOptions` (create, truncate, size, read-only, O_DIRECT, O_DSYNC), pread / pwrite
//! / pread_exact at offsets, end of file, O_DIRECT alignment refused before anything is
//! submitted, many tasks with operations in flight at once on one fd, vectored I/O,
//! durability calls, plain-slice I/O, a full AIO queue, len / set_len, teardown with
//! AIO in flight, a task that panics next to others doing I/O, `AlignedBuf`, error
//! messages, and `RuntimeStats.io`.
//!
//! Data is checked byte for byte against patterns that differ at every position and per
//! block, and where it matters against the file as std reads it (an oracle that does
//! not go through taskio). Concurrency is shown by counters the tasks keep, never by
//! timing: the ready queue is FIFO and `spawn` does not switch, so tasks spawned
//! together all reach their first submission before any of them is resumed.

mod common;

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;

use common::io_rt::{HANG_LIMIT, assert_same, pattern, within};
use common::{TempDir, drop_flag};
use taskio::file::{File, OpenOptions};
use taskio::{
    ALIGN, AlignedBuf, Barrier, Builder, Config, IoConfig, IoError, IoStats, RunError, Runtime,
    spawn, yield_now,
};

// ---------------------------------------------------------------------------------
// Helpers

/// Size of a block in the multi-task tests: one O_DIRECT granule.
const BLOCK_BYTES: usize = 4096;
const _: () = assert!(BLOCK_BYTES.is_multiple_of(ALIGN));

fn io_runtime() -> Runtime {
    Runtime::with_io(Config::default(), IoConfig::default()).expect("Runtime::with_io")
}

/// Runs `main` on `rt`; any `RunError` (a panic in main, a deadlock) fails the test
/// with its message.
fn run_on<T: 'static>(rt: &mut Runtime, main: impl FnOnce() -> T + 'static) -> T {
    match rt.run(main) {
        Ok(v) => v,
        Err(e) => panic!("Runtime::run failed: {e}"),
    }
}

/// Runs `main` on a fresh runtime with the real driver, on a thread of its own within
/// `HANG_LIMIT` (a lost wakeup fails the test instead of hanging it); returns main's
/// value and the runtime's I/O counters after the run.
fn run_io<T: Send + 'static>(main: impl FnOnce() -> T + Send + 'static) -> (T, IoStats) {
    within(HANG_LIMIT, move || {
        let mut rt = io_runtime();
        let v = run_on(&mut rt, main);
        (v, rt.stats().io)
    })
}

/// An aligned buffer of exactly `len` bytes holding `pattern(seed, len)`.
fn patterned(seed: u64, len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::new(len);
    buf.set_len(len);
    buf.copy_from_slice(&pattern(seed, len));
    buf
}

/// An aligned buffer of `len` bytes filled with `byte`, to show what a read overwrote.
fn filled(byte: u8, len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::new(len);
    buf.set_len(len);
    buf.fill(byte);
    buf
}

/// The file's flags as the kernel sees them (F_GETFL), and whether it is close-on-exec.
fn fd_flags(fd: RawFd) -> (i32, bool) {
    // SAFETY: fcntl with F_GETFL / F_GETFD reads flags of an fd the caller keeps open.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(fl >= 0 && fdfl >= 0, "fcntl on fd {fd} failed");
    (fl, fdfl & libc::FD_CLOEXEC != 0)
}

/// Checks that the I/O of a finished run is all accounted for.
#[track_caller]
fn assert_io_settled(io: &IoStats) {
    assert_eq!(io.aio_submitted, io.aio_completed, "{io:?}");
    assert_eq!(io.aio_in_flight, 0, "{io:?}");
}

// ---------------------------------------------------------------------------------
// OpenOptions

#[test]
fn create_sets_mode_and_size_and_truncate_empties() {
    let dir = TempDir::new("open");
    let path = dir.file("f");
    let p = path.clone();
    run_io(move || {
        // Missing file, create + size: made, sized by ftruncate, mode as asked.
        let f = OpenOptions::new()
            .create(true)
            .mode(0o600)
            .size(3 * 4096 + 5)
            .open(&p)
            .unwrap();
        assert_eq!(f.path(), p.as_path());
        assert!(!f.is_direct());
        assert_eq!(f.len().unwrap(), 3 * 4096 + 5);
        assert!(!f.is_empty().unwrap());
        let (flags, cloexec) = fd_flags(f.fd());
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(flags & libc::O_DIRECT, 0);
        assert!(cloexec, "file fds must be close-on-exec");
        f.pwrite(&patterned(1, 100), 7).unwrap();
        drop(f);
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(md.len(), 3 * 4096 + 5);

        // create(true) on an existing file keeps its contents.
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        assert_eq!(f.len().unwrap(), 3 * 4096 + 5);
        let mut back = filled(0xee, 100);
        f.pread_exact(&mut back, 7).unwrap();
        assert_same(&back, &pattern(1, 100), "kept by create(true)");
        drop(f);

        // File::open: existing file, read-write.
        let f = File::open(&p).unwrap();
        assert_eq!(fd_flags(f.fd()).0 & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(f.len().unwrap(), 3 * 4096 + 5);
        drop(f);

        // truncate(true) empties it.
        let f = OpenOptions::new().truncate(true).open(&p).unwrap();
        assert_eq!(f.len().unwrap(), 0);
        assert!(f.is_empty().unwrap());
        drop(f);

        // truncate and size together: truncated, then sized (zeroes).
        let f = OpenOptions::new()
            .truncate(true)
            .size(8192)
            .open(&p)
            .unwrap();
        assert_eq!(f.len().unwrap(), 8192);
        let mut back = filled(0xee, 8192);
        f.pread_exact(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0), "sized file must read zeroes");
    });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
}

#[test]
fn opening_a_missing_file_is_a_path_error_with_not_found() {
    let dir = TempDir::new("missing");
    let path = dir.file("no-such-file");
    let p = path.clone();
    let err = run_io(move || OpenOptions::new().open(&p).err().expect("open succeeded")).0;
    match &err {
        IoError::Path {
            op,
            path: ep,
            source,
        } => {
            assert_eq!(*op, "open");
            assert_eq!(ep, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("want IoError::Path, got {other:?}"),
    }
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("open"), "{msg}");
    // Nothing was made: create was not asked for.
    assert!(!path.exists());
}

#[test]
fn opening_a_directory_read_write_is_a_path_error() {
    let dir = TempDir::new("isdir");
    let d = dir.path.clone();
    let err = run_io(move || {
        OpenOptions::new()
            .open(&d)
            .err()
            .expect("opened a directory")
    })
    .0;
    assert!(
        matches!(&err, IoError::Path { op: "open", path, .. } if *path == dir.path),
        "{err:?}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory);
}

#[test]
fn read_only_file_reads_and_refuses_pwrite_naming_path_fd_and_offset() {
    let dir = TempDir::new("readonly");
    let path = dir.file("ro");
    std::fs::write(&path, pattern(7, 3 * 4096)).unwrap();
    let p = path.clone();
    let ((err, fd), io) = run_io(move || {
        let f = OpenOptions::new().write(false).open(&p).unwrap();
        assert_eq!(fd_flags(f.fd()).0 & libc::O_ACCMODE, libc::O_RDONLY);
        // Reading works.
        let mut back = filled(0, 4096);
        f.pread_exact(&mut back, 4096).unwrap();
        assert_same(&back, &pattern(7, 3 * 4096)[4096..8192], "read-only pread");
        // Writing is refused, as an error, not a panic.
        let buf = patterned(8, 4096);
        let err = f.pwrite(&buf, 12288).unwrap_err();
        // So is a durable write, a vectored one and a plain-slice one.
        assert!(f.pwrite_durable(&buf, 0).is_err());
        assert!(f.pwritev(&[&buf, &buf], 0, false).is_err());
        assert!(f.write_at(b"xyz", 1).is_err());
        // A buffer whose operation failed at submission is ours again at once.
        let mut buf = buf;
        buf[0] ^= 1;
        // ftruncate on a read-only fd is refused too.
        let e = f.set_len(0).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::Path {
                    op: "ftruncate",
                    ..
                }
            ),
            "{e:?}"
        );
        (err, f.fd())
    });
    match &err {
        IoError::At {
            op,
            path: ep,
            fd: efd,
            offset,
            len,
            source,
        } => {
            assert_eq!(*op, "pwrite");
            assert_eq!(ep, &path);
            assert_eq!(*efd, fd);
            assert_eq!(*offset, 12288);
            assert_eq!(*len, 4096);
            assert_eq!(source.raw_os_error(), Some(libc::EBADF), "{source}");
        }
        other => panic!("want IoError::At, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("fd {fd}")), "{msg}");
    assert!(msg.contains("offset 12288"), "{msg}");
    assert_io_settled(&io);
    assert_eq!(io.bytes_written, 0, "{io:?}");
    assert_eq!(io.bytes_read, 4096, "{io:?}");
    // The file is untouched.
    assert_same(
        &std::fs::read(&path).unwrap(),
        &pattern(7, 3 * 4096),
        "file after refused writes",
    );
}

#[test]
fn direct_and_dsync_opens_work_on_this_file_system() {
    let dir = TempDir::new("flags");
    let direct = dir.file("direct");
    let dsync = dir.file("dsync");
    let (d, s) = (direct.clone(), dsync.clone());
    run_io(move || {
        let f = OpenOptions::new()
            .create(true)
            .direct(true)
            .size(4 * 4096)
            .open(&d)
            .unwrap_or_else(|e| panic!("O_DIRECT open: {e}"));
        assert!(f.is_direct());
        let (flags, _) = fd_flags(f.fd());
        assert_ne!(flags & libc::O_DIRECT, 0, "O_DIRECT not set on the fd");
        let buf = patterned(11, 4096);
        f.pwrite(&buf, 8192).unwrap();
        let mut back = filled(0, 4096);
        f.pread_exact(&mut back, 8192).unwrap();
        assert_same(&back, &buf, "O_DIRECT round trip");
        // Plain slices go through an aligned bounce buffer: aligned offset and length
        // work on O_DIRECT too.
        let plain = pattern(13, 8192);
        f.write_at(&plain, 0).unwrap();
        let mut back = vec![0u8; 8192];
        assert_eq!(f.read_at(&mut back, 0).unwrap(), 8192);
        assert_same(&back, &plain, "O_DIRECT read_at / write_at");

        let g = OpenOptions::new()
            .create(true)
            .dsync(true)
            .open(&s)
            .unwrap_or_else(|e| panic!("O_DSYNC open: {e}"));
        assert!(!g.is_direct());
        let (flags, _) = fd_flags(g.fd());
        assert_eq!(flags & libc::O_DSYNC, libc::O_DSYNC, "O_DSYNC not set");
        assert_eq!(flags & libc::O_DIRECT, 0);
        let buf = patterned(12, 777);
        g.pwrite(&buf, 3).unwrap();
        let mut back = filled(0, 777);
        g.pread_exact(&mut back, 3).unwrap();
        assert_same(&back, &buf, "O_DSYNC round trip");
    });
    let on_disk = std::fs::read(&direct).unwrap();
    assert_same(
        &on_disk[..8192],
        &pattern(13, 8192),
        "O_DIRECT slices seen by std",
    );
    assert_same(
        &on_disk[8192..12288],
        &pattern(11, 4096),
        "O_DIRECT data seen by std",
    );
    let on_disk = std::fs::read(&dsync).unwrap();
    assert_eq!(on_disk.len(), 780);
    assert_same(&on_disk[3..], &pattern(12, 777), "O_DSYNC data seen by std");
}

#[test]
fn an_io_runtime_is_needed_for_files() {
    let dir = TempDir::new("nodriver");
    let p = dir.file("f");
    let err = common::run(move || OpenOptions::new().create(true).open(&p).err())
        .expect("open without a driver succeeded");
    assert!(matches!(err, IoError::NoDriver { op: "open" }), "{err:?}");
    assert!(!dir.file("f").exists());
}

// ---------------------------------------------------------------------------------
// pread / pwrite / pread_exact

#[test]
fn pread_and_pwrite_at_offsets_byte_for_byte() {
    let dir = TempDir::new("offsets");
    let path = dir.file("f");
    let p = path.clone();
    // (offset, length): unaligned offsets and lengths, overlapping none of the others.
    const WRITES: [(u64, usize); 6] = [
        (0, 1),
        (1, 4095),
        (4096, 4096),
        (10_000, 100),
        (12_289, 8191),
        (65_536 + 3, 5),
    ];
    let ((), io) = run_io(move || {
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        for (i, &(off, len)) in WRITES.iter().enumerate() {
            f.pwrite(&patterned(i as u64, len), off).unwrap();
        }
        assert_eq!(f.len().unwrap(), 65_536 + 3 + 5);
        // Read back in reverse order, each exactly.
        for (i, &(off, len)) in WRITES.iter().enumerate().rev() {
            let mut back = filled(0xa5, len);
            assert_eq!(f.pread(&mut back, off).unwrap(), len);
            assert_same(&back, &pattern(i as u64, len), &format!("write {i}"));
            let mut back = filled(0xa5, len);
            f.pread_exact(&mut back, off).unwrap();
            assert_same(&back, &pattern(i as u64, len), &format!("exact {i}"));
        }
        // A read spanning two writes and the gap between them (zeroes).
        let mut span = filled(0xa5, 4096 + 4096);
        f.pread_exact(&mut span, 4096).unwrap();
        assert_same(&span[..4096], &pattern(2, 4096), "span, first write");
        assert!(span[4096..10_000 - 4096].iter().all(|&b| b == 0), "gap");
        assert_same(
            &span[10_000 - 4096..10_100 - 4096],
            &pattern(3, 100),
            "span, second write",
        );
        assert!(span[10_100 - 4096..].iter().all(|&b| b == 0), "gap after");
    });
    assert_io_settled(&io);
    // std's view of the file agrees, gaps included.
    let mut want = vec![0u8; 65_536 + 3 + 5];
    for (i, &(off, len)) in WRITES.iter().enumerate() {
        want[off as usize..off as usize + len].copy_from_slice(&pattern(i as u64, len));
    }
    assert_same(&std::fs::read(&path).unwrap(), &want, "file seen by std");
}

#[test]
fn pread_uses_the_buffers_length_not_its_capacity() {
    let dir = TempDir::new("buflen");
    let p = dir.file("f");
    run_io(move || {
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        // A write of a 100-byte buffer with an 8 KiB capacity writes 100 bytes.
        let mut w = AlignedBuf::new(8192);
        w.fill(0x77);
        w.set_len(100);
        f.pwrite(&w, 50).unwrap();
        assert_eq!(f.len().unwrap(), 150);
        std::fs::write(f.path(), pattern(3, 8192)).unwrap();
        // A read into a 100-byte buffer with an 8 KiB capacity leaves the rest alone.
        let mut r = filled(0xc3, 8192);
        r.set_len(100);
        assert_eq!(f.pread(&mut r, 1000).unwrap(), 100);
        r.set_len(8192);
        assert_same(&r[..100], &pattern(3, 8192)[1000..1100], "read part");
        assert!(r[100..].iter().all(|&b| b == 0xc3), "read beyond len()");
    });
}

#[test]
fn reading_past_end_of_file_is_short_for_pread_and_an_error_for_pread_exact() {
    let dir = TempDir::new("eof");
    let path = dir.file("f");
    let content = pattern(21, 10_000);
    std::fs::write(&path, &content).unwrap();
    let direct = dir.file("d");
    std::fs::write(&direct, pattern(22, 6000)).unwrap();
    let (p, d) = (path.clone(), direct.clone());
    let (err, io) = run_io(move || {
        let f = OpenOptions::new().write(false).open(&p).unwrap();
        // Straddling the end: the bytes that exist.
        let mut buf = filled(0xee, 8192);
        assert_eq!(f.pread(&mut buf, 8192).unwrap(), 10_000 - 8192);
        assert_same(&buf[..10_000 - 8192], &content[8192..], "tail");
        assert!(buf[10_000 - 8192..].iter().all(|&b| b == 0xee), "past eof");
        // At and beyond the end: nothing.
        assert_eq!(f.pread(&mut filled(0, 10), 10_000).unwrap(), 0);
        assert_eq!(f.pread(&mut filled(0, 10), 1 << 40).unwrap(), 0);
        // pread_exact: Short, naming what it got.
        let err = f.pread_exact(&mut filled(0, 8192), 8192).unwrap_err();
        match &err {
            IoError::Short {
                path,
                offset,
                done,
                want,
                ..
            } => {
                assert_eq!(path, &p);
                assert_eq!(*offset, 8192);
                assert_eq!(*done, 10_000 - 8192);
                assert_eq!(*want, 8192);
            }
            other => panic!("want IoError::Short, got {other:?}"),
        }
        let e = f.pread_exact(&mut filled(0, 1), 10_000).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::Short {
                    done: 0,
                    want: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        // O_DIRECT: an aligned read over the end of a 6000-byte file gets 6000.
        let g = OpenOptions::new()
            .write(false)
            .direct(true)
            .open(&d)
            .unwrap();
        let mut buf = filled(0xee, 8192);
        assert_eq!(g.pread(&mut buf, 0).unwrap(), 6000);
        assert_same(&buf[..6000], &pattern(22, 6000), "O_DIRECT tail");
        err
    });
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("offset 8192"), "{msg}");
    assert!(msg.contains("1808 of 8192"), "{msg}");
    assert_io_settled(&io);
}

// ---------------------------------------------------------------------------------
// O_DIRECT alignment

#[test]
fn direct_unaligned_offset_or_length_is_refused_before_submission() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("unaligned");
        let path = dir.file("f");
        let p = path.clone();
        let mut rt = io_runtime();
        let errors = run_on(&mut rt, move || {
            let f = OpenOptions::new()
                .create(true)
                .direct(true)
                .size(64 * 1024)
                .open(&p)
                .unwrap();
            let mut errs: Vec<(&str, IoError)> = Vec::new();
            let aligned = patterned(1, 4096);
            let short = patterned(2, 1000);
            let mut r_aligned = filled(0, 4096);
            let mut r_short = filled(0, 1000);
            errs.push(("pread offset", f.pread(&mut r_aligned, 512).unwrap_err()));
            errs.push(("pread len", f.pread(&mut r_short, 4096).unwrap_err()));
            errs.push((
                "pread_exact offset",
                f.pread_exact(&mut r_aligned, 1).unwrap_err(),
            ));
            errs.push(("pwrite offset", f.pwrite(&aligned, 4095).unwrap_err()));
            errs.push(("pwrite len", f.pwrite(&short, 0).unwrap_err()));
            errs.push((
                "pwrite_durable offset",
                f.pwrite_durable(&aligned, 100).unwrap_err(),
            ));
            errs.push((
                "pwritev total len",
                f.pwritev(&[&aligned, &short], 0, false).unwrap_err(),
            ));
            errs.push((
                "preadv offset",
                f.preadv(&mut [&mut r_aligned], 2048).unwrap_err(),
            ));
            let mut plain = [0u8; 4096];
            errs.push(("read_at offset", f.read_at(&mut plain, 8).unwrap_err()));
            errs.push(("write_at len", f.write_at(&plain[..10], 0).unwrap_err()));
            // The buffers are untouched and still ours to write.
            r_aligned[0] = 1;
            r_short[0] = 1;
            errs
        });
        let io = rt.stats().io;
        assert_eq!(
            io.aio_submitted, 0,
            "an unaligned transfer was submitted: {io:?}"
        );
        assert_eq!(io.bytes_read + io.bytes_written, 0, "{io:?}");
        for (what, e) in &errors {
            match e {
                IoError::Unaligned {
                    path: ep, align, ..
                } => {
                    assert_eq!(ep, &path, "{what}");
                    assert_eq!(*align, 4096, "{what}");
                }
                other => panic!("{what}: want IoError::Unaligned, got {other:?}"),
            }
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{what}");
        }
        // The message names path, offset, length and the rule.
        let msg = errors[0].1.to_string();
        for want in [
            &path.display().to_string(),
            "offset 512",
            "4096 bytes",
            "multiples of 4096",
        ] {
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
        // Aligned transfers on the same runtime go through.
        let p = path.clone();
        run_on(&mut rt, move || {
            let f = OpenOptions::new().direct(true).open(&p).unwrap();
            let w = patterned(9, 3 * 4096);
            f.pwrite(&w, 4096).unwrap();
            let mut r = filled(0, 3 * 4096);
            f.pread_exact(&mut r, 4096).unwrap();
            assert_same(&r, &w, "aligned O_DIRECT");
            let mut r = filled(0, 4096);
            f.pread_exact(&mut r, 8192).unwrap();
            assert_same(&r, &w[4096..8192], "aligned O_DIRECT, middle block");
        });
        let io = rt.stats().io;
        assert_eq!(io.aio_submitted, 3, "{io:?}");
        assert_io_settled(&io);
        assert_same(
            &std::fs::read(&path).unwrap()[4096..4 * 4096],
            &pattern(9, 3 * 4096),
            "O_DIRECT data seen by std",
        );
    });
}

/// O_DIRECT wants every piece of a transfer aligned, not just its total: a vectored
/// transfer whose buffers have unaligned lengths (100 + 3996 = 4096) must be refused
/// like any other unaligned transfer, before it is submitted.
#[test]
fn direct_vectored_transfer_with_unaligned_buffer_lengths_is_refused_before_submission() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("unaligned-iov");
        let p = dir.file("f");
        let mut rt = io_runtime();
        let (w, r) = run_on(&mut rt, move || {
            let f = OpenOptions::new()
                .create(true)
                .direct(true)
                .size(64 * 1024)
                .open(&p)
                .unwrap();
            let a = patterned(1, 100);
            let b = patterned(2, 3996);
            let w = f.pwritev(&[&a, &b], 0, false);
            let mut c = filled(0, 100);
            let mut d = filled(0, 3996);
            let r = f.preadv(&mut [&mut c, &mut d], 0);
            (w, r)
        });
        let io = rt.stats().io;
        assert!(
            // The error names the first unaligned piece (100 bytes).
            matches!(w, Err(IoError::Unaligned { len: 100, .. })),
            "pwritev of 100 + 3996 bytes on O_DIRECT: want IoError::Unaligned, got {w:?}"
        );
        assert!(
            matches!(r, Err(IoError::Unaligned { len: 100, .. })),
            "preadv of 100 + 3996 bytes on O_DIRECT: want IoError::Unaligned, got {r:?}"
        );
        assert_eq!(io.aio_submitted, 0, "{io:?}");
    });
}

// ---------------------------------------------------------------------------------
// Many tasks, one fd

/// 64 tasks share one fd. Each owns two 4 KiB blocks (i and i + 64) with its own
/// patterns, writes them, meets the others at a barrier, reads its own blocks and two
/// blocks of other tasks, and checks every byte. All 64 first writes are submitted
/// before any returns (the AIO queue, 256 deep, has room for all, so a task inside
/// pwrite has submitted and is waiting for its completion).
fn sixty_four_tasks_on_one_fd(direct: bool) {
    const TASKS: usize = 64;
    const BLOCKS: usize = 2 * TASKS;
    fn seed(block: usize) -> u64 {
        1000 + block as u64
    }
    let dir = TempDir::new(if direct { "many-direct" } else { "many" });
    let path = dir.file("f");
    let p = path.clone();
    let ((started_at_first_return, max_inside), io) = run_io(move || {
        let f = Rc::new(
            OpenOptions::new()
                .create(true)
                .direct(direct)
                .size((BLOCKS * BLOCK_BYTES) as u64)
                .open(&p)
                .unwrap(),
        );
        let barrier = Rc::new(Barrier::new(TASKS));
        let started = Rc::new(Cell::new(0usize));
        let inside = Rc::new(Cell::new(0usize));
        let max_inside = Rc::new(Cell::new(0usize));
        let started_at_first_return = Rc::new(Cell::new(None::<usize>));
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let (f, barrier) = (f.clone(), barrier.clone());
                let (started, inside, max_inside, first) = (
                    started.clone(),
                    inside.clone(),
                    max_inside.clone(),
                    started_at_first_return.clone(),
                );
                spawn(move || {
                    let mine = [i, i + TASKS];
                    for (k, &block) in mine.iter().enumerate() {
                        let buf = patterned(seed(block), BLOCK_BYTES);
                        if k == 0 {
                            started.set(started.get() + 1);
                        }
                        inside.set(inside.get() + 1);
                        max_inside.set(max_inside.get().max(inside.get()));
                        f.pwrite(&buf, (block * BLOCK_BYTES) as u64).unwrap();
                        inside.set(inside.get() - 1);
                        if first.get().is_none() {
                            first.set(Some(started.get()));
                        }
                    }
                    barrier.wait();
                    // Own blocks, then blocks written by two other tasks.
                    let others = [(i + 1) % TASKS + TASKS, (i + TASKS / 2) % TASKS];
                    for block in mine.into_iter().chain(others) {
                        let mut back = filled(0xee, BLOCK_BYTES);
                        f.pread_exact(&mut back, (block * BLOCK_BYTES) as u64)
                            .unwrap();
                        assert_same(
                            &back,
                            &pattern(seed(block), BLOCK_BYTES),
                            &format!("task {i} reading block {block}"),
                        );
                    }
                })
                .unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        (started_at_first_return.get().unwrap(), max_inside.get())
    });
    assert_eq!(
        started_at_first_return, TASKS,
        "a write returned before every task had submitted its first"
    );
    assert_eq!(
        max_inside, TASKS,
        "fewer writes in flight at once than tasks"
    );
    assert_eq!(io.aio_submitted, (BLOCKS + TASKS * 4) as u64, "{io:?}");
    // Gathered: operations the tasks submit in one round go to the kernel in one
    // io_submit (the 64 first writes in one call, and so on).
    assert!(
        io.aio_submit_calls > 0 && io.aio_submit_calls * 4 <= io.aio_submitted,
        "{} io_submit calls for {} operations: not gathered ({io:?})",
        io.aio_submit_calls,
        io.aio_submitted
    );
    assert_io_settled(&io);
    assert_eq!(io.bytes_written, (BLOCKS * BLOCK_BYTES) as u64, "{io:?}");
    assert_eq!(io.bytes_read, (TASKS * 4 * BLOCK_BYTES) as u64, "{io:?}");
    // The oracle: std reads the whole file.
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), BLOCKS * BLOCK_BYTES);
    for (block, data) in on_disk.chunks(BLOCK_BYTES).enumerate() {
        assert_same(
            data,
            &pattern(seed(block), BLOCK_BYTES),
            &format!("block {block} seen by std"),
        );
    }
}

#[test]
fn sixty_four_tasks_share_one_buffered_fd() {
    sixty_four_tasks_on_one_fd(false);
}

#[test]
fn sixty_four_tasks_share_one_direct_fd() {
    sixty_four_tasks_on_one_fd(true);
}

/// One runtime per OS thread, each with its own AIO context: two threads (one per
/// core here) run 32 tasks each against files of their own, and against one file
/// they share, at the same time.
#[test]
fn runtimes_on_two_threads_do_file_io_independently() {
    const TASKS: usize = 32;
    let dir = TempDir::new("threads");
    let shared = dir.file("shared");
    std::fs::write(&shared, vec![0u8; 2 * TASKS * BLOCK_BYTES]).unwrap();
    let threads: Vec<_> = (0..2usize)
        .map(|t| {
            let own = dir.file(&format!("own{t}"));
            let shared = shared.clone();
            std::thread::spawn(move || {
                run_io(move || {
                    let own = Rc::new(OpenOptions::new().create(true).open(&own).unwrap());
                    let shared = Rc::new(OpenOptions::new().direct(true).open(&shared).unwrap());
                    let hs: Vec<_> = (0..TASKS)
                        .map(|i| {
                            let (own, shared) = (own.clone(), shared.clone());
                            spawn(move || {
                                let block = t * TASKS + i;
                                let seed = 5000 + block as u64;
                                let w = patterned(seed, BLOCK_BYTES);
                                let off = (block * BLOCK_BYTES) as u64;
                                own.pwrite(&w, (i * BLOCK_BYTES) as u64).unwrap();
                                shared.pwrite(&w, off).unwrap();
                                let mut r = filled(0, BLOCK_BYTES);
                                own.pread_exact(&mut r, (i * BLOCK_BYTES) as u64).unwrap();
                                assert_same(&r, &w, &format!("thread {t} task {i} own"));
                                let mut r = filled(0, BLOCK_BYTES);
                                shared.pread_exact(&mut r, off).unwrap();
                                assert_same(&r, &w, &format!("thread {t} task {i} shared"));
                            })
                            .unwrap()
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                })
                .1
            })
        })
        .collect();
    for (t, h) in threads.into_iter().enumerate() {
        let io = h.join().unwrap_or_else(|_| panic!("thread {t} failed"));
        assert_io_settled(&io);
        assert_eq!(io.aio_submitted, 4 * TASKS as u64, "thread {t}: {io:?}");
    }
    let on_disk = std::fs::read(&shared).unwrap();
    for (block, data) in on_disk.chunks(BLOCK_BYTES).enumerate() {
        assert_same(
            data,
            &pattern(5000 + block as u64, BLOCK_BYTES),
            &format!("shared block {block}"),
        );
    }
}

/// With room for only `depth` operations in flight, `tasks` tasks doing I/O at once
/// all succeed: a full queue makes callers wait, never fail.
fn full_queue_makes_callers_wait(depth: usize, tasks: usize, direct: bool) {
    let dir = TempDir::new(&format!("depth{depth}-{tasks}"));
    let path = dir.file("f");
    let p = path.clone();
    let mut rt = Runtime::with_io(
        Config::default(),
        IoConfig {
            aio_depth: depth,
            ..Default::default()
        },
    )
    .unwrap();
    let max_inside = run_on(&mut rt, move || {
        let f = Rc::new(
            OpenOptions::new()
                .create(true)
                .direct(direct)
                .size((tasks * BLOCK_BYTES) as u64)
                .open(&p)
                .unwrap(),
        );
        let inside = Rc::new(Cell::new(0usize));
        let max_inside = Rc::new(Cell::new(0usize));
        let handles: Vec<_> = (0..tasks)
            .map(|i| {
                let (f, inside, max_inside) = (f.clone(), inside.clone(), max_inside.clone());
                spawn(move || {
                    let off = (i * BLOCK_BYTES) as u64;
                    let buf = patterned(i as u64, BLOCK_BYTES);
                    inside.set(inside.get() + 1);
                    max_inside.set(max_inside.get().max(inside.get()));
                    let w = f.pwrite(&buf, off);
                    inside.set(inside.get() - 1);
                    w.unwrap_or_else(|e| panic!("task {i}: pwrite with a full queue: {e}"));
                    let mut back = filled(0, BLOCK_BYTES);
                    f.pread_exact(&mut back, off)
                        .unwrap_or_else(|e| panic!("task {i}: pread with a full queue: {e}"));
                    assert_same(&back, &buf, &format!("task {i}"));
                })
                .unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        max_inside.get()
    });
    assert_eq!(max_inside, tasks, "the tasks did not all wait at once");
    let io = rt.stats().io;
    assert_eq!(io.aio_submitted, 2 * tasks as u64, "{io:?}");
    assert_io_settled(&io);
    let on_disk = std::fs::read(&path).unwrap();
    for (i, data) in on_disk.chunks(BLOCK_BYTES).enumerate() {
        assert_same(data, &pattern(i as u64, BLOCK_BYTES), &format!("block {i}"));
    }
}

#[test]
fn full_aio_queue_of_four_makes_sixty_four_tasks_wait_not_fail() {
    within(HANG_LIMIT, || {
        full_queue_makes_callers_wait(4, 64, false);
        full_queue_makes_callers_wait(4, 64, true);
    });
}

#[test]
fn full_aio_queue_of_one_with_hundreds_of_waiters() {
    // Over 64 slot waiters: the wait list is pruned on the way (see AioQueue).
    within(HANG_LIMIT, || full_queue_makes_callers_wait(1, 300, false));
}

// ---------------------------------------------------------------------------------
// Vectored I/O, durability, plain slices

#[test]
fn preadv_and_pwritev_with_three_buffers_of_different_sizes() {
    let dir = TempDir::new("vectored");
    let path = dir.file("f");
    let p = path.clone();
    let (_, io) = run_io(move || {
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        let (a, b, c) = (patterned(1, 100), patterned(2, 5000), patterned(3, 4096));
        let mut whole = Vec::new();
        for buf in [&a, &b, &c] {
            whole.extend_from_slice(buf);
        }
        f.pwritev(&[&a, &b, &c], 777, false).unwrap();
        f.pwritev(&[&c, &a, &b], 20_000, true).unwrap();
        assert_eq!(f.len().unwrap(), 20_000 + 9196);
        let mut back = filled(0, 9196);
        f.pread_exact(&mut back, 777).unwrap();
        assert_same(&back, &whole, "pwritev a b c");
        // Read it back split differently: 3000 + 10 + 6186 bytes.
        let (mut x, mut y, mut z) = (filled(0xee, 3000), filled(0xee, 10), filled(0xee, 6186));
        assert_eq!(f.preadv(&mut [&mut x, &mut y, &mut z], 777).unwrap(), 9196);
        assert_same(&x, &whole[..3000], "preadv first");
        assert_same(&y, &whole[3000..3010], "preadv second");
        assert_same(&z, &whole[3010..], "preadv third");
        // The durable one, read with preadv in its own split.
        let (mut x, mut y, mut z) = (filled(0xee, 4096), filled(0xee, 100), filled(0xee, 5000));
        assert_eq!(
            f.preadv(&mut [&mut x, &mut y, &mut z], 20_000).unwrap(),
            9196
        );
        assert_same(&x, &c, "durable pwritev, c");
        assert_same(&y, &a, "durable pwritev, a");
        assert_same(&z, &b, "durable pwritev, b");
        // preadv over the end: fewer bytes, filled in order.
        let (mut x, mut y, mut z) = (filled(0xee, 4096), filled(0xee, 4096), filled(0xee, 4096));
        assert_eq!(
            f.preadv(&mut [&mut x, &mut y, &mut z], 20_000 + 5000)
                .unwrap(),
            4196
        );
        let tail = [&c[..], &a[..], &b[..]].concat();
        assert_same(&x, &tail[5000..9096], "preadv over eof, first");
        assert_same(&y[..100], &tail[9096..], "preadv over eof, second");
        assert!(y[100..].iter().all(|&v| v == 0xee), "preadv past eof");
        assert!(z.iter().all(|&v| v == 0xee), "preadv past eof, third");
        // O_DIRECT: aligned buffers of 4, 8 and 12 KiB.
        drop(f);
        let d = OpenOptions::new().direct(true).open(&p).unwrap();
        let (a, b, c) = (patterned(4, 4096), patterned(5, 8192), patterned(6, 12_288));
        d.pwritev(&[&a, &b, &c], 64 * 1024, true).unwrap();
        let (mut x, mut y, mut z) = (filled(0, 12_288), filled(0, 4096), filled(0, 8192));
        assert_eq!(
            d.preadv(&mut [&mut x, &mut y, &mut z], 64 * 1024).unwrap(),
            24_576
        );
        let whole = [&a[..], &b[..], &c[..]].concat();
        assert_same(
            &[&x[..], &y[..], &z[..]].concat(),
            &whole,
            "O_DIRECT vectored",
        );
    });
    assert_io_settled(&io);
    assert_eq!(io.bytes_written, 2 * 9196 + 24_576, "{io:?}");
}

#[test]
fn vectored_io_with_no_buffers_or_too_many_buffers() {
    let dir = TempDir::new("iovmax");
    let p = dir.file("f");
    let (_, io) = run_io(move || {
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        // No buffers: nothing moved, no error.
        f.pwritev(&[], 0, false).unwrap();
        assert_eq!(f.preadv(&mut [], 0).unwrap(), 0);
        assert_eq!(f.len().unwrap(), 0);
        // IOV_MAX (1024) one-byte buffers: each byte lands in its own buffer.
        let bytes = pattern(5, 1024);
        let bufs: Vec<AlignedBuf> = bytes.iter().map(|&b| filled(b, 1)).collect();
        let refs: Vec<&AlignedBuf> = bufs.iter().collect();
        f.pwritev(&refs, 10, false).unwrap();
        let mut back: Vec<AlignedBuf> = (0..1024).map(|_| filled(0, 1)).collect();
        let mut refs: Vec<&mut AlignedBuf> = back.iter_mut().collect();
        assert_eq!(f.preadv(&mut refs, 10).unwrap(), 1024);
        let got: Vec<u8> = back.iter().map(|b| b[0]).collect();
        assert_same(&got, &bytes, "1024 one-byte buffers");
        // One more than IOV_MAX: refused with the file and offset named.
        let refs: Vec<&AlignedBuf> = bufs.iter().chain(&bufs[..1]).collect();
        let e = f.pwritev(&refs, 77, false).unwrap_err();
        assert!(
            matches!(
                &e,
                IoError::At {
                    op: "pwritev",
                    offset: 77,
                    len: 1025,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let mut more: Vec<AlignedBuf> = (0..1025).map(|_| filled(0, 1)).collect();
        let mut refs: Vec<&mut AlignedBuf> = more.iter_mut().collect();
        let e = f.preadv(&mut refs, 78).unwrap_err();
        assert!(
            matches!(
                &e,
                IoError::At {
                    op: "preadv",
                    offset: 78,
                    len: 1025,
                    ..
                }
            ),
            "{e:?}"
        );
    });
    assert_io_settled(&io);
    // pwritev(0), preadv(0), the 1024-buffer pair; the refused ones are not submitted.
    assert_eq!(io.aio_submitted, 4, "{io:?}");
}

#[test]
fn pwrite_durable_fsync_and_fdatasync_complete() {
    let dir = TempDir::new("durable");
    let path = dir.file("f");
    let dpath = dir.file("d");
    let (p, dp) = (path.clone(), dpath.clone());
    let (_, io) = run_io(move || {
        for (p, direct, dsync) in [(&p, false, false), (&dp, true, true)] {
            let f = OpenOptions::new()
                .create(true)
                .direct(direct)
                .dsync(dsync)
                .open(p)
                .unwrap();
            f.pwrite_durable(&patterned(1, 4096), 0).unwrap();
            f.pwrite(&patterned(2, 4096), 4096).unwrap();
            f.fsync().unwrap();
            f.pwrite(&patterned(3, 4096), 8192).unwrap();
            f.fdatasync().unwrap();
            // Durability calls on a file with nothing new to flush are fine too.
            f.fsync().unwrap();
            f.fdatasync().unwrap();
            let mut back = filled(0, 3 * 4096);
            f.pread_exact(&mut back, 0).unwrap();
            let want = [pattern(1, 4096), pattern(2, 4096), pattern(3, 4096)].concat();
            assert_same(&back, &want, "after durability calls");
        }
        // fsync and fdatasync on a read-only file work too (they flush, not write).
        let f = OpenOptions::new().write(false).open(&p).unwrap();
        f.fsync().unwrap();
        f.fdatasync().unwrap();
    });
    assert_io_settled(&io);
    // 2 files x (3 writes + 4 syncs + 1 read) + 2 syncs.
    assert_eq!(io.aio_submitted, 2 * 8 + 2, "{io:?}");
    assert_eq!(io.bytes_written, 2 * 3 * 4096, "{io:?}");
    for p in [&path, &dpath] {
        assert_same(
            &std::fs::read(p).unwrap(),
            &[pattern(1, 4096), pattern(2, 4096), pattern(3, 4096)].concat(),
            "durable file seen by std",
        );
    }
}

#[test]
fn read_at_and_write_at_with_plain_slices() {
    let dir = TempDir::new("slices");
    let path = dir.file("f");
    let p = path.clone();
    let (want, io) = run_io(move || {
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        let big = pattern(31, 10_000);
        f.write_at(&big, 3).unwrap();
        f.write_at(b"hello", 5000).unwrap();
        f.write_at(&[], 20_000).unwrap(); // nothing written, file not grown
        assert_eq!(f.len().unwrap(), 10_003);
        let mut want = vec![0u8; 3];
        want.extend_from_slice(&big);
        want[5000..5005].copy_from_slice(b"hello");
        let mut back = vec![0xeeu8; 10_003];
        assert_eq!(f.read_at(&mut back, 0).unwrap(), 10_003);
        assert_same(&back, &want, "read_at whole");
        let mut small = [0u8; 7];
        assert_eq!(f.read_at(&mut small, 4999).unwrap(), 7);
        assert_eq!(&small, &want[4999..5006]);
        // Past the end: fewer bytes, the rest untouched.
        let mut tail = [0xeeu8; 10];
        assert_eq!(f.read_at(&mut tail, 10_000).unwrap(), 3);
        assert_eq!(&tail[..3], &want[10_000..]);
        assert_eq!(&tail[3..], &[0xee; 7]);
        assert_eq!(f.read_at(&mut tail, 50_000).unwrap(), 0);
        assert_eq!(f.read_at(&mut [], 0).unwrap(), 0);
        want
    });
    assert_io_settled(&io);
    assert_same(&std::fs::read(&path).unwrap(), &want, "file seen by std");
    assert_eq!(io.bytes_written, 10_005, "{io:?}");
    assert_eq!(io.bytes_read, 10_003 + 7 + 3, "{io:?}");
}

#[test]
fn len_and_set_len() {
    let dir = TempDir::new("len");
    let p = dir.file("f");
    run_io(move || {
        let f = OpenOptions::new().create(true).open(&p).unwrap();
        assert_eq!(f.len().unwrap(), 0);
        assert!(f.is_empty().unwrap());
        f.write_at(&pattern(1, 5000), 0).unwrap();
        assert_eq!(f.len().unwrap(), 5000);
        // Shrink: the cut bytes are gone.
        f.set_len(1234).unwrap();
        assert_eq!(f.len().unwrap(), 1234);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1234);
        let mut back = vec![0u8; 5000];
        assert_eq!(f.read_at(&mut back, 0).unwrap(), 1234);
        assert_same(&back[..1234], &pattern(1, 1234), "kept part");
        // Grow: the new bytes read as zeroes, also where data was cut.
        f.set_len(1 << 20).unwrap();
        assert_eq!(f.len().unwrap(), 1 << 20);
        let mut back = vec![0xeeu8; 8192];
        assert_eq!(f.read_at(&mut back, 0).unwrap(), 8192);
        assert_same(&back[..1234], &pattern(1, 1234), "kept part after grow");
        assert!(back[1234..].iter().all(|&b| b == 0), "grown part");
        assert_eq!(f.read_at(&mut back, (1 << 20) - 10).unwrap(), 10);
        // Writing past the end grows the file.
        f.write_at(b"x", (1 << 20) + 99).unwrap();
        assert_eq!(f.len().unwrap(), (1 << 20) + 100);
        f.set_len(0).unwrap();
        assert!(f.is_empty().unwrap());
        // A size no file can have is an error naming the file, not a panic.
        let e = f.set_len(u64::MAX).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::Path {
                    op: "ftruncate",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    });
}

// ---------------------------------------------------------------------------------
// Teardown and panics with AIO in flight

/// Size of the operation a system task leaves in flight at teardown.
const BIG_READ_BYTES: usize = 8 << 20;

/// Writes `BIG_READ_BYTES` of 0x5a to `path` with O_DIRECT, then starts a system task
/// that calls `op` on that file, and main returns 42 while `op`'s operation is still
/// in flight; run() then unwinds the system task. Nothing reaps between the system
/// task's submission and main's return: the ready queue goes main -> system -> main,
/// and the per-round I/O tick comes only every 64 switches. Checks that run returned
/// main's value, the task was unwound and its operation is still in flight.
fn leave_op_in_flight(rt: &mut Runtime, path: &Path, op: impl FnOnce(&File) + 'static) {
    let (unwound, guard) = drop_flag();
    let p = path.to_path_buf();
    let v = run_on(rt, move || {
        let f = OpenOptions::new()
            .create(true)
            .direct(true)
            .size(BIG_READ_BYTES as u64)
            .open(&p)
            .unwrap();
        f.pwrite(&filled(0x5a, BIG_READ_BYTES), 0).unwrap();
        let started = Rc::new(Cell::new(false));
        let s = started.clone();
        let sys = Builder::new()
            .name("in-flight-at-teardown")
            .system(true)
            .spawn(move || {
                let _guard = guard;
                s.set(true);
                // Parks with the operation in flight; main returns; teardown unwinds
                // this task in there, dropping the file and the buffer (or its borrow)
                // while the kernel still owns the operation.
                op(&f);
                unreachable!("the operation returned before teardown");
            })
            .unwrap();
        drop(sys);
        yield_now();
        assert!(started.get(), "the system task did not run");
        42
    });
    assert_eq!(v, 42, "run must return main's value");
    assert!(unwound.get(), "the system task was not unwound");
    let io = rt.stats().io;
    assert_eq!(
        io.aio_in_flight, 1,
        "the test's premise: the operation is still in flight after run: {io:?}"
    );
    assert_eq!(io.aio_submitted, io.aio_completed + 1, "{io:?}");
}

/// A system task reads `BIG_READ_BYTES` with O_DIRECT into a buffer of its own and is
/// unwound with the read in flight.
fn leave_big_read_in_flight(rt: &mut Runtime, path: &Path) {
    leave_op_in_flight(rt, path, |f| {
        let mut buf = AlignedBuf::new(BIG_READ_BYTES);
        let r = f.pread(&mut buf, 0);
        panic!("the big read returned before teardown: {r:?}");
    });
}

/// Runs `rt` until the driver has reaped every orphaned operation. Each run does one
/// small read of `path` and so polls the driver at least once; the bound only turns a
/// lost completion into a failure instead of a hang.
fn reap_orphans(rt: &mut Runtime, path: &Path) {
    let mut runs = 0;
    while rt.stats().io.aio_in_flight > 0 {
        runs += 1;
        assert!(
            runs <= 100_000,
            "orphaned operation never reaped: {:?}",
            rt.stats().io
        );
        let p = path.to_path_buf();
        run_on(rt, move || {
            let f = OpenOptions::new().write(false).open(&p).unwrap();
            f.pread_exact(&mut filled(0, 4096), 0).unwrap();
        });
    }
    assert_io_settled(&rt.stats().io);
}

/// Whether `f` panics (the panic message goes to stderr as usual).
fn panics(f: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
}

#[test]
fn system_task_unwound_with_aio_in_flight_then_the_runtime_runs_again() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("teardown");
        let big = dir.file("big");
        let small = dir.file("small");
        let mut rt = io_runtime();
        leave_big_read_in_flight(&mut rt, &big);

        // A second run on the same runtime does I/O normally.
        let s = small.clone();
        let v = run_on(&mut rt, move || {
            let f = OpenOptions::new().create(true).open(&s).unwrap();
            let w = patterned(77, 3 * 4096);
            f.pwrite(&w, 0).unwrap();
            let mut r = filled(0, 3 * 4096);
            f.pread_exact(&mut r, 0).unwrap();
            assert_same(&r, &w, "second run");
            "second"
        });
        assert_eq!(v, "second");
        // The orphaned read is reaped by a later run's polling.
        reap_orphans(&mut rt, &small);
        let io = rt.stats().io;
        assert_io_settled(&io);
        // The orphan's bytes are not counted as read: nobody received them.
        assert_eq!(io.bytes_written, BIG_READ_BYTES as u64 + 3 * 4096, "{io:?}");
        drop(rt);
        assert_same(
            &std::fs::read(&small).unwrap(),
            &pattern(77, 3 * 4096),
            "second run's file seen by std",
        );
    });
}

#[test]
fn runtime_dropped_with_aio_in_flight_waits_for_it() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("drop");
        let big = dir.file("big");
        let mut rt = io_runtime();
        leave_big_read_in_flight(&mut rt, &big);
        // io_destroy waits for the read; its buffer is freed only after.
        drop(rt);
        // The thread and the process go on: a new runtime does I/O on the same file.
        let b = big.clone();
        let (_, io) = run_io(move || {
            let f = OpenOptions::new().direct(true).open(&b).unwrap();
            let mut r = filled(0, 4096);
            f.pread_exact(&mut r, (BIG_READ_BYTES - 4096) as u64)
                .unwrap();
            assert!(r.iter().all(|&x| x == 0x5a));
        });
        assert_io_settled(&io);
    });
}

/// A buffer lent (through a RefCell) to a write that outlives its task: once teardown
/// has given the buffer back, writing to it must panic until the driver has reaped
/// the write, and work after.
#[test]
fn buffer_of_an_orphaned_write_refuses_mutation_until_reaped() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("orphan-write");
        let path = dir.file("f");
        let mut rt = io_runtime();
        let cell = Rc::new(RefCell::new(filled(0x33, BIG_READ_BYTES)));
        let c = cell.clone();
        leave_op_in_flight(&mut rt, &path, move |f| {
            let b = c.borrow();
            let r = f.pwrite(&b, 0);
            panic!("the big write returned before teardown: {r:?}");
        });
        // Reading a buffer the kernel only reads from is fine.
        assert_eq!(cell.borrow()[BIG_READ_BYTES - 1], 0x33);
        assert!(
            panics(|| cell.borrow_mut()[0] = 1),
            "a buffer was writable while an orphaned pwrite still held it"
        );
        reap_orphans(&mut rt, &path);
        cell.borrow_mut()[0] = 1;
        assert_eq!(cell.borrow()[0], 1);
        drop(rt);
        // The orphaned write landed in full.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), BIG_READ_BYTES);
        assert!(
            on_disk.iter().all(|&b| b == 0x33),
            "orphaned write not all there"
        );
    });
}

/// A buffer lent (through a RefCell) to an O_DIRECT read that outlives its task: once
/// teardown has given the buffer back, the kernel may still be writing into it, so
/// neither writing nor reading it may be allowed until the driver has reaped the
/// read (`Deref` hands out a `&[u8]`, which must not change under its holder).
#[test]
fn buffer_of_an_orphaned_read_refuses_access_until_reaped() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("orphan-read");
        let path = dir.file("f");
        let mut rt = io_runtime();
        let cell = Rc::new(RefCell::new(AlignedBuf::new(BIG_READ_BYTES)));
        let c = cell.clone();
        leave_op_in_flight(&mut rt, &path, move |f| {
            let mut b = c.borrow_mut();
            let r = f.pread(&mut b, 0);
            panic!("the big read returned before teardown: {r:?}");
        });
        assert!(
            panics(|| cell.borrow_mut()[0] = 1),
            "a buffer was writable while an orphaned pread still held it"
        );
        let readable = !panics(|| {
            let b = cell.borrow();
            std::hint::black_box(&b[..]);
        });
        // Settle before asserting, so that a failure leaves nothing in flight.
        reap_orphans(&mut rt, &path);
        assert!(
            !readable,
            "Deref gave a &[u8] of a buffer an orphaned pread was still writing into"
        );
        // Once reaped, the buffer is the caller's again, holding what was read.
        assert!(cell.borrow().iter().all(|&b| b == 0x5a));
        cell.borrow_mut()[0] = 1;
    });
}

#[test]
fn task_panicking_after_its_pwrite_is_a_join_error_and_siblings_io_goes_on() {
    const SIBLINGS: usize = 8;
    const ROUNDS: usize = 16;
    let dir = TempDir::new("panic");
    let path = dir.file("f");
    let p = path.clone();
    let (inside_at_panic, io) = run_io(move || {
        let f = Rc::new(
            OpenOptions::new()
                .create(true)
                .size(((SIBLINGS + 1) * BLOCK_BYTES) as u64)
                .open(&p)
                .unwrap(),
        );
        let inside = Rc::new(Cell::new(0usize));
        let inside_at_panic = Rc::new(Cell::new(usize::MAX));
        let siblings: Vec<_> = (0..SIBLINGS)
            .map(|i| {
                let (f, inside) = (f.clone(), inside.clone());
                spawn(move || {
                    let off = (i * BLOCK_BYTES) as u64;
                    for round in 0..ROUNDS {
                        let seed = (i * ROUNDS + round) as u64;
                        inside.set(inside.get() + 1);
                        f.pwrite(&patterned(seed, BLOCK_BYTES), off).unwrap();
                        let mut back = filled(0, BLOCK_BYTES);
                        f.pread_exact(&mut back, off).unwrap();
                        inside.set(inside.get() - 1);
                        assert_same(
                            &back,
                            &pattern(seed, BLOCK_BYTES),
                            &format!("sibling {i} round {round}"),
                        );
                    }
                    ROUNDS
                })
                .unwrap()
            })
            .collect();
        let (f2, inside2, at_panic) = (f.clone(), inside.clone(), inside_at_panic.clone());
        let panicker = Builder::new()
            .name("panicker")
            .spawn(move || {
                let buf = patterned(999, BLOCK_BYTES);
                f2.pwrite(&buf, (SIBLINGS * BLOCK_BYTES) as u64).unwrap();
                at_panic.set(inside2.get());
                panic!("boom right after pwrite");
            })
            .unwrap();
        let err = panicker.join().expect_err("the panicking task joined Ok");
        assert_eq!(err.name, "panicker");
        assert!(err.message.contains("boom right after pwrite"), "{err}");
        for (i, h) in siblings.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), ROUNDS, "sibling {i}");
        }
        // The panicker's write landed.
        let mut back = filled(0, BLOCK_BYTES);
        f.pread_exact(&mut back, (SIBLINGS * BLOCK_BYTES) as u64)
            .unwrap();
        assert_same(&back, &pattern(999, BLOCK_BYTES), "panicker's block");
        inside_at_panic.get()
    });
    assert!(
        inside_at_panic > 0 && inside_at_panic <= SIBLINGS,
        "siblings were not mid-I/O when the task panicked: {inside_at_panic}"
    );
    assert_io_settled(&io);
    assert_eq!(
        io.aio_submitted,
        (SIBLINGS * ROUNDS * 2 + 2) as u64,
        "{io:?}"
    );
    let on_disk = std::fs::read(&path).unwrap();
    for i in 0..SIBLINGS {
        assert_same(
            &on_disk[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES],
            &pattern((i * ROUNDS + ROUNDS - 1) as u64, BLOCK_BYTES),
            &format!("sibling {i} last round seen by std"),
        );
    }
}

#[test]
fn main_panicking_after_io_ends_the_run_with_main_panicked_and_io_settled() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("mainpanic");
        let p = dir.file("f");
        let mut rt = io_runtime();
        let err = rt
            .run(move || {
                let f = OpenOptions::new().create(true).open(&p).unwrap();
                f.pwrite(&patterned(1, 4096), 0).unwrap();
                panic!("main gives up");
            })
            .unwrap_err();
        assert!(
            matches!(&err, RunError::MainPanicked(e) if e.message.contains("main gives up")),
            "{err}"
        );
        assert_io_settled(&rt.stats().io);
    });
}

// ---------------------------------------------------------------------------------
// AlignedBuf

#[test]
fn aligned_buf_is_page_aligned_zeroed_and_rounds_its_capacity() {
    for (asked, cap) in [
        (0, 4096),
        (1, 4096),
        (100, 4096),
        (4095, 4096),
        (4096, 4096),
        (4097, 8192),
        (65_537, 69_632),
        (1 << 20, 1 << 20),
    ] {
        let buf = AlignedBuf::new(asked);
        assert_eq!(buf.capacity(), cap, "AlignedBuf::new({asked})");
        assert_eq!(
            buf.len(),
            cap,
            "AlignedBuf::new({asked}): length is the capacity"
        );
        assert_eq!(
            buf[..].as_ptr() as usize % ALIGN,
            0,
            "AlignedBuf::new({asked})"
        );
        assert!(
            buf.iter().all(|&b| b == 0),
            "AlignedBuf::new({asked}) zeroed"
        );
    }
    assert_eq!(ALIGN, 4096);
    // set_len within the capacity; the pointer stays aligned at any length.
    let mut buf = AlignedBuf::new(10_000);
    for len in [0, 1, 4095, 12_288] {
        buf.set_len(len);
        assert_eq!(buf.len(), len);
        assert_eq!(buf.is_empty(), len == 0);
        assert_eq!(buf[..].as_ptr() as usize % ALIGN, 0);
    }
    // Bytes beyond len() are kept across set_len.
    buf.set_len(12_288);
    buf[12_287] = 9;
    buf.set_len(1);
    buf.set_len(12_288);
    assert_eq!(buf[12_287], 9);
    // A pool hands out aligned buffers of the size asked.
    let pool = AlignedBuf::pool(2, 5000);
    assert_eq!(pool.capacity(), 2);
}

#[test]
#[should_panic(expected = "over capacity")]
fn aligned_buf_set_len_beyond_capacity_panics() {
    let mut buf = AlignedBuf::new(4096);
    buf.set_len(4097);
}

#[test]
#[should_panic(expected = "size overflow")]
fn aligned_buf_too_large_for_a_layout_panics_with_its_size() {
    // Rounds up to 2^63, more than any allocation may be.
    let _ = AlignedBuf::new(isize::MAX as usize);
}

/// A capacity whose rounding up to 4 KiB overflows usize must panic with the same
/// message, in every build: in a release build the rounding wraps to 0 and
/// `alloc_zeroed` is called with a zero-size layout (undefined behaviour), giving a
/// "buffer" of capacity 0.
#[test]
#[should_panic(expected = "size overflow")]
fn aligned_buf_whose_rounded_capacity_overflows_panics_with_its_size() {
    let buf = AlignedBuf::new(usize::MAX);
    // Only reached when no panic came: show what was made.
    eprintln!("AlignedBuf::new(usize::MAX) gave {buf:?}");
}

#[test]
fn aligned_buf_is_writable_after_an_operation_completed() {
    let dir = TempDir::new("derefmut");
    let p = dir.file("f");
    run_io(move || {
        let f = Rc::new(
            OpenOptions::new()
                .create(true)
                .direct(true)
                .size(16 * 4096)
                .open(&p)
                .unwrap(),
        );
        // After a write: change the buffer and write it again.
        let mut buf = patterned(1, 4096);
        f.pwrite(&buf, 0).unwrap();
        buf[0] ^= 0xff;
        buf[4095] ^= 0xff;
        f.pwrite(&buf, 4096).unwrap();
        // After a read: change what was read.
        let mut r = filled(0, 8192);
        f.pread_exact(&mut r, 0).unwrap();
        assert_same(&r[4096..], &buf, "second write");
        r[1] = 0;
        r.fill(7);
        // After a failed operation (unaligned) and a read over the end.
        assert!(f.pread(&mut r, 1).is_err());
        r[0] = 1;
        assert_eq!(f.pread(&mut r, 16 * 4096).unwrap(), 0);
        r[0] = 2;
        // A buffer written by one task and changed by another after the write.
        let shared = Rc::new(RefCell::new(patterned(2, 4096)));
        let (f2, s2) = (f.clone(), shared.clone());
        spawn(move || f2.pwrite(&s2.borrow(), 8192).unwrap())
            .unwrap()
            .join()
            .unwrap();
        shared.borrow_mut().fill(3);
        // The same buffer in many operations at once from many tasks (writes only
        // read it), then written to once they are all done.
        let shared = Rc::new(patterned(4, 4096));
        let hs: Vec<_> = (0..8u64)
            .map(|i| {
                let (f, s) = (f.clone(), shared.clone());
                spawn(move || f.pwrite(&s, (8 + i) * 4096).unwrap()).unwrap()
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let mut only = Rc::try_unwrap(shared).expect("a task kept the buffer");
        only[0] = 5;
        let mut r = filled(0, 8 * 4096);
        f.pread_exact(&mut r, 8 * 4096).unwrap();
        for i in 0..8 {
            assert_same(
                &r[i * 4096..(i + 1) * 4096],
                &pattern(4, 4096),
                &format!("shared write {i}"),
            );
        }
    });
}

// ---------------------------------------------------------------------------------
// Errors and stats

#[test]
fn io_errors_name_the_operation_path_fd_and_offset() {
    let dir = TempDir::new("errors");
    let path = dir.file("ro");
    std::fs::write(&path, b"0123456789").unwrap();
    let p = path.clone();
    let (errs, io) = run_io(move || {
        let f = OpenOptions::new().write(false).open(&p).unwrap();
        let fd = f.fd();
        let mut errs = vec![
            (
                f.pwrite(&patterned(1, 512), 987_654).unwrap_err(),
                vec![
                    "pwrite".to_string(),
                    format!("fd {fd}"),
                    "offset 987654".into(),
                ],
            ),
            (
                f.pread_exact(&mut filled(0, 100), 5).unwrap_err(),
                vec!["pread".into(), "offset 5".into(), "5 of 100".into()],
            ),
        ];
        // An offset no file can have: an error before submission, not a panic.
        errs.push((
            f.pread(&mut filled(0, 16), u64::MAX).unwrap_err(),
            vec!["pread".into(), format!("offset {}", u64::MAX)],
        ));
        errs.push((
            f.pread(&mut filled(0, 16), i64::MAX as u64 - 4)
                .unwrap_err(),
            vec!["pread".into(), format!("offset {}", i64::MAX - 4)],
        ));
        let d = OpenOptions::new()
            .write(false)
            .direct(true)
            .open(&p)
            .unwrap();
        errs.push((
            d.pread(&mut filled(0, 4096), 4097).unwrap_err(),
            vec!["pread".into(), "offset 4097".into(), "4096".into()],
        ));
        errs
    });
    for (e, wants) in &errs {
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "{msg:?} lacks the path"
        );
        for w in wants {
            assert!(msg.contains(w.as_str()), "{msg:?} lacks {w:?}");
        }
    }
    // The OS error is kept as the source.
    let src = std::error::Error::source(&errs[0].0).expect("pwrite error has a source");
    assert!(src.to_string().contains("Bad file descriptor"), "{src}");
    assert_io_settled(&io);
}

#[test]
fn runtime_stats_count_aio_operations_and_bytes() {
    within(HANG_LIMIT, || {
        let dir = TempDir::new("stats");
        let p = dir.file("f");
        let mut rt = io_runtime();
        let before = rt.stats().io;
        assert_eq!(before.aio_submitted, 0);
        assert_eq!(before.bytes_read + before.bytes_written, 0);
        run_on(&mut rt, move || {
            let f = OpenOptions::new().create(true).open(&p).unwrap();
            f.pwrite(&patterned(1, 4096), 0).unwrap(); // 1 op, 4096 written
            f.pwrite(&patterned(2, 100), 4096).unwrap(); // 1 op, 100 written
            f.pwritev(&[&patterned(3, 10), &patterned(4, 20)], 4196, false)
                .unwrap(); // 1 op, 30 written
            f.pwrite_durable(&patterned(5, 1), 4226).unwrap(); // 1 op, 1 written
            f.write_at(b"abc", 4227).unwrap(); // 1 op, 3 written
            f.fsync().unwrap(); // 1 op
            f.fdatasync().unwrap(); // 1 op
            f.pread_exact(&mut filled(0, 4096), 0).unwrap(); // 1 op, 4096 read
            assert_eq!(f.pread(&mut filled(0, 8192), 4000).unwrap(), 230); // 1 op, 230 read
            let (mut a, mut b) = (filled(0, 7), filled(0, 9));
            assert_eq!(f.preadv(&mut [&mut a, &mut b], 0).unwrap(), 16); // 1 op, 16 read
            let mut s = [0u8; 5];
            assert_eq!(f.read_at(&mut s, 4225).unwrap(), 5); // 1 op, 5 read
            assert_eq!(f.pread(&mut filled(0, 10), 1 << 30).unwrap(), 0); // 1 op, 0 read
            // Refused before submission: not counted.
            let d = OpenOptions::new().direct(true).open(f.path()).unwrap();
            assert!(d.pread(&mut filled(0, 4096), 1).is_err());
        });
        let io = rt.stats().io;
        assert_eq!(io.aio_submitted, 12, "{io:?}");
        assert_io_settled(&io);
        assert_eq!(io.bytes_written, 4096 + 100 + 30 + 1 + 3, "{io:?}");
        assert_eq!(io.bytes_read, 4096 + 230 + 16 + 5, "{io:?}");
        assert!(io.polls > 0, "{io:?}");
        // Counters accumulate over runs of the same runtime.
        let p = dir.file("f");
        run_on(&mut rt, move || {
            let f = File::open(&p).unwrap();
            f.pread_exact(&mut filled(0, 4096), 0).unwrap();
        });
        let io2 = rt.stats().io;
        assert_eq!(io2.aio_submitted, 13, "{io2:?}");
        assert_eq!(io2.bytes_read, io.bytes_read + 4096, "{io2:?}");
        assert_io_settled(&io2);
    });
}
