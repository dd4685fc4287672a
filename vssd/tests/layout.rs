//! The on-disk layout (`vssd::layout`): format and open on real files (O_DIRECT where
//! the file system allows it) and on the simulator's disks, refusals that leave every
//! byte as it was, one or both superblock copies damaged, crashes in the middle of a
//! superblock update or of a format, and properties of the geometry and of the
//! superblock codec.

mod common;

use common::{TempDir, open_dev, run_io};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;
use taskio::file::{File, OpenOptions};
use taskio::rand::Rng;
use taskio::sim::{Sim, SimConfig};
use taskio::{Rendez, sleep};
use vssd::VssdError;
use vssd::layout::{
    BLOCK_BYTES, CHECKPOINT_ENTRIES_PER_BLOCK, FORMAT_VERSION, FormatParams, Geometry,
    LINE_SIZE_MAX, LINE_SIZE_MIN, LINES_MAX, LOG_BYTES_MAX, LOG_BYTES_MIN, LOG_OFFSET,
    LOG_ZERO_BYTES, SPARE_SLOTS_MIN, SUPERBLOCK_BYTES, SUPERBLOCK_CRC_OFFSET,
    SUPERBLOCK_VERSION_OFFSET, Superblock, SuperblockCopy, format, open_superblock,
    write_superblock,
};

// ---------------------------------------------------------------------------------
// Helpers

const DEV: &str = "cdev-0";
const OTHER_DEV: &str = "cdev-1";

/// A small vSSD: 64 lines of 4 KiB, the smallest log.
fn params(device_id: &str, uuid_byte: u8) -> FormatParams {
    FormatParams {
        line_size: 4096,
        lines: 64,
        log_bytes: LOG_BYTES_MIN,
        device_id: device_id.to_string(),
        uuid: [uuid_byte; 16],
        force: false,
    }
}

fn total_bytes() -> u64 {
    params(DEV, 1).geometry().unwrap().total_bytes()
}

/// `len` bytes of the seeded generator's stream picked by `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// Formats a new file of `len` bytes (the layout's size if `None`) at `path`.
fn format_file(path: &Path, p: &FormatParams, len: Option<u64>) -> Result<Geometry, VssdError> {
    let len = len.unwrap_or_else(total_bytes);
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
    let (path, p) = (path.to_path_buf(), p.clone());
    run_io(move || format(&open_dev(&path), &p))
}

fn open_file(path: &Path, dev: Option<&str>) -> Result<vssd::layout::Opened, VssdError> {
    let (path, dev) = (path.to_path_buf(), dev.map(str::to_string));
    run_io(move || open_superblock(&open_dev(&path), dev.as_deref()))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Rewrites `bytes` at `offset` of the file, outside any runtime.
fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Flips one byte of a copy of the superblock.
fn flip(path: &Path, copy: SuperblockCopy, at: usize) {
    let data = read(path);
    let pos = copy.offset() as usize + at;
    patch(path, pos as u64, &[data[pos] ^ 0x5a]);
}

// ---------------------------------------------------------------------------------
// Real files

#[test]
fn format_then_open_round_trips_on_a_real_file_with_o_direct() {
    let dir = TempDir::new("round-trip");
    let path = dir.file("vssd");
    let p = params(DEV, 7);
    let g = format_file(&path, &p, None).unwrap();
    assert_eq!(g, p.geometry().unwrap());
    let direct = {
        let path = path.clone();
        run_io(move || open_dev(&path).is_direct())
    };
    eprintln!("O_DIRECT on {}: {direct}", dir.path.display());

    let opened = open_file(&path, Some(DEV)).unwrap();
    assert_eq!(opened.repair, None);
    let sb = opened.superblock;
    assert_eq!(sb.uuid, [7; 16]);
    assert_eq!(sb.device_id, DEV);
    assert_eq!(sb.generation, 1);
    assert_eq!(sb.geometry, g);
    // No expectation of a device: opens whatever vSSD it is.
    assert_eq!(open_file(&path, None).unwrap().superblock, sb);

    // An empty log and no checkpoint: the log head and both checkpoint headers zero.
    let data = read(&path);
    let log = LOG_OFFSET as usize;
    assert!(
        data[log..log + LOG_ZERO_BYTES as usize]
            .iter()
            .all(|&b| b == 0)
    );
    for off in g.checkpoint_offsets() {
        let off = off as usize;
        assert!(
            data[off..off + BLOCK_BYTES as usize]
                .iter()
                .all(|&b| b == 0)
        );
    }
}

#[test]
fn format_zeroes_the_log_head_and_checkpoint_headers_over_old_bytes() {
    let dir = TempDir::new("zeroes");
    let len = total_bytes();
    let path = dir.file_with("vssd", len, &pattern(3, len as usize));
    let p = params(DEV, 1);
    let g = {
        let (path, p) = (path.clone(), p.clone());
        run_io(move || format(&open_dev(&path), &p)).unwrap()
    };
    let old = pattern(3, len as usize);
    let data = read(&path);
    let log = g.log_offset() as usize;
    assert!(
        data[log..log + LOG_ZERO_BYTES as usize]
            .iter()
            .all(|&b| b == 0)
    );
    let [ck_a, ck_b] = g.checkpoint_offsets().map(|o| o as usize);
    assert!(data[ck_a..ck_a + 4096].iter().all(|&b| b == 0));
    assert!(data[ck_b..ck_b + 4096].iter().all(|&b| b == 0));
    // The rest of the log, the checkpoint entries and the data slots are not touched.
    let log_rest = log + LOG_ZERO_BYTES as usize..log + g.log_bytes() as usize;
    assert_eq!(data[log_rest.clone()], old[log_rest]);
    let data_region = g.data_offset() as usize..len as usize;
    assert_eq!(data[data_region.clone()], old[data_region]);
}

#[test]
fn open_refuses_what_is_not_a_vssd_and_changes_no_byte() {
    let dir = TempDir::new("not-a-vssd");
    let len = total_bytes();
    let text = b"# fstab\n/dev/sda1 / ext4 defaults 0 1\n".repeat(5);
    let mut magic_then_junk = b"CVA-VSSD".to_vec();
    magic_then_junk.extend(pattern(9, 8192));
    let cases: Vec<(&str, PathBuf)> = vec![
        ("zeros", dir.file_with("zeros", len, &[])),
        (
            "random",
            dir.file_with("random", len, &pattern(1, len as usize)),
        ),
        ("text", dir.file_with("text", 0, &text)),
        ("empty", dir.file_with("empty", 0, &[])),
        (
            "magic then junk",
            dir.file_with("magic", len, &magic_then_junk),
        ),
    ];
    for (what, path) in cases {
        let before = read(&path);
        let e = open_file(&path, Some(DEV)).unwrap_err();
        match &e {
            VssdError::NotAVssd { path: p, why } => {
                assert_eq!(p, &path, "{what}");
                assert!(
                    why.contains("superblock A") && why.contains("superblock B"),
                    "{what}: {e}"
                );
            }
            _ => panic!("{what}: {e}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("is not a vSSD"), "{what}: {msg}");
        assert_eq!(read(&path), before, "{what}: open changed the file");
    }
}

#[test]
fn open_refuses_another_format_version_untouched() {
    let dir = TempDir::new("version");
    let path = dir.file("vssd");
    format_file(&path, &params(DEV, 1), None).unwrap();
    // Both copies become a well-formed superblock of the next version.
    for copy in SuperblockCopy::BOTH {
        let off = copy.offset() as usize;
        let mut block = read(&path)[off..off + SUPERBLOCK_BYTES as usize].to_vec();
        block[SUPERBLOCK_VERSION_OFFSET..SUPERBLOCK_VERSION_OFFSET + 4]
            .copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&block[..SUPERBLOCK_CRC_OFFSET]);
        block[SUPERBLOCK_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        patch(&path, off as u64, &block);
    }
    let before = read(&path);
    let e = open_file(&path, Some(DEV)).unwrap_err();
    assert!(
        matches!(e, VssdError::Version { got, want, .. } if got == FORMAT_VERSION + 1 && want == FORMAT_VERSION),
        "{e}"
    );
    let named = format!("format version {}", FORMAT_VERSION + 1);
    assert!(e.to_string().contains(&named), "{e}");
    assert_eq!(read(&path), before);

    // Without force, format will not overwrite it either; with force it will.
    let mut p = params(DEV, 2);
    let e = format_file_keep(&path, &p).unwrap_err();
    assert!(matches!(e, VssdError::Refused { .. }), "{e}");
    assert_eq!(read(&path), before);
    p.force = true;
    format_file_keep(&path, &p).unwrap();
    assert_eq!(
        open_file(&path, Some(DEV)).unwrap().superblock.uuid,
        [2; 16]
    );
}

/// Formats the existing file at `path` as it is.
fn format_file_keep(path: &Path, p: &FormatParams) -> Result<Geometry, VssdError> {
    let (path, p) = (path.to_path_buf(), p.clone());
    run_io(move || format(&open_dev(&path), &p))
}

#[test]
fn open_refuses_a_vssd_of_another_device_untouched() {
    let dir = TempDir::new("device");
    let path = dir.file("vssd");
    format_file(&path, &params(OTHER_DEV, 1), None).unwrap();
    let before = read(&path);
    let e = open_file(&path, Some(DEV)).unwrap_err();
    assert!(
        matches!(&e, VssdError::WrongDevice { got, want, .. } if got == OTHER_DEV && want == DEV),
        "{e}"
    );
    assert!(e.to_string().contains(OTHER_DEV), "{e}");
    assert_eq!(read(&path), before);
}

#[test]
fn one_corrupt_copy_opens_from_the_other_and_says_so_then_write_superblock_repairs() {
    for (copy, at) in [
        (SuperblockCopy::A, 0),    // the magic
        (SuperblockCopy::A, 130),  // a layout field
        (SuperblockCopy::B, 50),   // the device id
        (SuperblockCopy::B, 4094), // the CRC itself
    ] {
        let dir = TempDir::new("one-copy");
        let path = dir.file("vssd");
        format_file(&path, &params(DEV, 1), None).unwrap();
        flip(&path, copy, at);
        let before = read(&path);
        let opened = open_file(&path, Some(DEV)).unwrap();
        assert_eq!(opened.superblock.generation, 1);
        let repair = opened.repair.clone().expect("a copy to repair");
        assert_eq!(repair.copy, copy, "byte {at}: {repair}");
        assert_eq!(read(&path), before, "open wrote to the device");

        let mut sb = opened.superblock;
        {
            let path = path.clone();
            let sb =
                run_io(move || write_superblock(&open_dev(&path), &mut sb).map(|()| sb)).unwrap();
            assert_eq!(sb.generation, 2);
        }
        let opened = open_file(&path, Some(DEV)).unwrap();
        assert_eq!(opened.repair, None, "{copy:?} byte {at}");
        assert_eq!(opened.superblock.generation, 2);
    }
}

#[test]
fn an_older_copy_loses_to_the_newer_and_is_named_for_repair() {
    let dir = TempDir::new("older");
    let path = dir.file("vssd");
    format_file(&path, &params(DEV, 1), None).unwrap();
    let gen1 = read(&path)[..SUPERBLOCK_BYTES as usize].to_vec();
    let mut sb = open_file(&path, Some(DEV)).unwrap().superblock;
    {
        let path = path.clone();
        sb = run_io(move || write_superblock(&open_dev(&path), &mut sb).map(|()| sb)).unwrap();
    }
    // Copy A back at generation 1: as if a crash came between the two copies.
    patch(&path, 0, &gen1);
    let opened = open_file(&path, Some(DEV)).unwrap();
    assert_eq!(opened.superblock, sb);
    assert_eq!(opened.superblock.generation, 2);
    let repair = opened.repair.expect("copy A is older");
    assert_eq!(repair.copy, SuperblockCopy::A);
    assert!(repair.why.contains("generation 1"), "{repair}");
}

#[test]
fn a_copy_written_in_the_other_copys_place_is_caught() {
    let dir = TempDir::new("misdirected");
    let path = dir.file("vssd");
    format_file(&path, &params(DEV, 1), None).unwrap();
    let a = read(&path)[..SUPERBLOCK_BYTES as usize].to_vec();
    patch(&path, SUPERBLOCK_BYTES, &a);
    let opened = open_file(&path, Some(DEV)).unwrap();
    let repair = opened.repair.expect("copy B holds A");
    assert_eq!(repair.copy, SuperblockCopy::B);
    assert!(repair.why.contains("misdirected"), "{repair}");
}

#[test]
fn both_copies_corrupt_is_not_a_vssd_untouched() {
    let dir = TempDir::new("both");
    let path = dir.file("vssd");
    format_file(&path, &params(DEV, 1), None).unwrap();
    flip(&path, SuperblockCopy::A, 20);
    flip(&path, SuperblockCopy::B, 3000);
    let before = read(&path);
    let e = open_file(&path, Some(DEV)).unwrap_err();
    let VssdError::NotAVssd { why, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        why.contains("superblock A") && why.contains("superblock B"),
        "{e}"
    );
    assert!(why.contains("CRC32C"), "{e}");
    assert_eq!(read(&path), before);
}

#[test]
fn a_too_small_device_is_refused_with_the_size_it_needs() {
    let dir = TempDir::new("small");
    let path = dir.file("vssd");
    let p = params(DEV, 1);
    let need = total_bytes();
    let e = format_file(&path, &p, Some(need - BLOCK_BYTES)).unwrap_err();
    assert!(
        matches!(e, VssdError::TooSmall { got, need: n, .. } if got == need - BLOCK_BYTES && n == need),
        "{e}"
    );
    assert!(e.to_string().contains(&need.to_string()), "{e}");
    assert!(
        read(&path).iter().all(|&b| b == 0),
        "refused format wrote something"
    );

    // A formatted vSSD whose device shrank: open refuses it the same way.
    format_file(&path, &p, Some(need)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(need - 4 * BLOCK_BYTES)
        .unwrap();
    let e = open_file(&path, Some(DEV)).unwrap_err();
    assert!(
        matches!(e, VssdError::TooSmall { need: n, .. } if n == need),
        "{e}"
    );

    // A larger device is fine.
    format_file(&path, &p, Some(need + 1_000_000)).unwrap();
    open_file(&path, Some(DEV)).unwrap();
}

#[test]
fn format_refuses_another_devices_vssd_unless_forced_and_never_reuses_a_uuid() {
    let dir = TempDir::new("force");
    let path = dir.file("vssd");
    format_file(&path, &params(OTHER_DEV, 1), None).unwrap();
    let before = read(&path);

    let mut p = params(DEV, 2);
    let e = format_file_keep(&path, &p).unwrap_err();
    let VssdError::Refused { why, .. } = &e else {
        panic!("{e}")
    };
    assert!(why.contains(OTHER_DEV) && why.contains("force"), "{e}");
    assert_eq!(read(&path), before);

    // The same uuid is refused even with force.
    let mut same_uuid = params(DEV, 1);
    same_uuid.force = true;
    let e = format_file_keep(&path, &same_uuid).unwrap_err();
    assert!(matches!(e, VssdError::Refused { .. }), "{e}");
    assert_eq!(read(&path), before);

    p.force = true;
    format_file_keep(&path, &p).unwrap();
    let sb = open_file(&path, Some(DEV)).unwrap().superblock;
    assert_eq!((sb.uuid, sb.generation), ([2; 16], 1));

    // The owner reformats its own vSSD without force (new uuid, new layout).
    let mut own = params(DEV, 3);
    own.lines = 32;
    format_file_keep(&path, &own).unwrap();
    let sb = open_file(&path, Some(DEV)).unwrap().superblock;
    assert_eq!(sb.uuid, [3; 16]);
    assert_eq!(sb.geometry.lines(), 32);
}

#[test]
fn write_superblock_refuses_a_device_formatted_again_since() {
    let dir = TempDir::new("stale-sb");
    let path = dir.file("vssd");
    format_file(&path, &params(DEV, 1), None).unwrap();
    let mut stale = open_file(&path, Some(DEV)).unwrap().superblock;
    format_file_keep(&path, &params(DEV, 2)).unwrap();
    let before = read(&path);
    let e = {
        let path = path.clone();
        run_io(move || write_superblock(&open_dev(&path), &mut stale)).unwrap_err()
    };
    assert!(matches!(e, VssdError::Refused { .. }), "{e}");
    assert_eq!(read(&path), before);

    // Nor does it write a superblock over a device that holds none.
    let zeros = dir.file_with("zeros", total_bytes(), &[]);
    let mut sb = open_file(&path, Some(DEV)).unwrap().superblock;
    let e = {
        let zeros = zeros.clone();
        run_io(move || write_superblock(&open_dev(&zeros), &mut sb)).unwrap_err()
    };
    assert!(e.to_string().contains("no valid superblock"), "{e}");
    assert!(read(&zeros).iter().all(|&b| b == 0));
}

#[test]
fn bad_format_parameters_are_refused_with_what_was_wrong() {
    let good = params(DEV, 1);
    let cases: Vec<(&str, FormatParams)> = vec![
        (
            "line size",
            FormatParams {
                line_size: 6000,
                ..good.clone()
            },
        ),
        (
            "line size",
            FormatParams {
                line_size: 2048,
                ..good.clone()
            },
        ),
        (
            "line size",
            FormatParams {
                line_size: 128 * 1024,
                ..good.clone()
            },
        ),
        (
            "capacity",
            FormatParams {
                lines: 0,
                ..good.clone()
            },
        ),
        (
            "capacity",
            FormatParams {
                lines: LINES_MAX + 1,
                ..good.clone()
            },
        ),
        (
            "log size",
            FormatParams {
                log_bytes: LOG_BYTES_MIN + 512,
                ..good.clone()
            },
        ),
        (
            "log size",
            FormatParams {
                log_bytes: LOG_BYTES_MIN - BLOCK_BYTES,
                ..good.clone()
            },
        ),
        (
            "log size",
            FormatParams {
                log_bytes: LOG_BYTES_MAX + BLOCK_BYTES,
                ..good.clone()
            },
        ),
        (
            "device id",
            FormatParams {
                device_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "device id",
            FormatParams {
                device_id: "x".repeat(65),
                ..good.clone()
            },
        ),
        (
            "device id",
            FormatParams {
                device_id: "a\nb".into(),
                ..good.clone()
            },
        ),
        (
            "uuid",
            FormatParams {
                uuid: [0; 16],
                ..good.clone()
            },
        ),
    ];
    for (what, p) in cases {
        let e = p.geometry().unwrap_err();
        assert!(matches!(e, VssdError::BadGeometry { .. }), "{e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    assert!(good.geometry().is_ok());
    assert!(
        FormatParams {
            device_id: "é".repeat(32),
            ..good
        }
        .geometry()
        .is_ok(),
        "64 bytes of UTF-8"
    );
}

// ---------------------------------------------------------------------------------
// The simulator

const SIM_PATH: &str = "/vssd";

fn sim_ip() -> std::net::IpAddr {
    "10.0.0.1".parse().unwrap()
}

/// Opens the simulated device (O_DIRECT: the alignment rules hold there too), sized
/// for the small layout on first use.
fn sim_dev() -> File {
    let f = OpenOptions::new()
        .create(true)
        .direct(true)
        .open(SIM_PATH)
        .unwrap();
    if f.len().unwrap() == 0 {
        f.set_len(total_bytes()).unwrap();
    }
    f
}

#[test]
fn format_and_open_run_unchanged_on_the_simulator() {
    let mut sim = Sim::new(SimConfig::new(1));
    let out: Rc<RefCell<Vec<String>>> = Rc::default();
    let o = out.clone();
    let node = sim
        .run(move |h| {
            let o2 = o.clone();
            let n = h.add_node("v", sim_ip(), move || {
                let f = sim_dev();
                // Junk first: open refuses it and changes nothing.
                let junk = pattern(5, total_bytes() as usize);
                f.write_at(&junk, 0).unwrap();
                f.fdatasync().unwrap();
                let e = open_superblock(&f, Some(DEV)).unwrap_err();
                o2.borrow_mut().push(format!("junk: {e}"));
                let mut back = vec![0u8; junk.len()];
                f.read_at(&mut back, 0).unwrap();
                o2.borrow_mut().push(format!("unchanged: {}", back == junk));

                let g = format(&f, &params(DEV, 9)).unwrap();
                let opened = open_superblock(&f, Some(DEV)).unwrap();
                o2.borrow_mut().push(format!(
                    "opened: {} {} {:?}",
                    opened.superblock.geometry == g,
                    opened.superblock.generation,
                    opened.repair
                ));
                let e = open_superblock(&f, Some(OTHER_DEV)).unwrap_err();
                o2.borrow_mut().push(format!("other: {e}"));
            });
            assert!(h.run_until(Duration::from_secs(10), || o.borrow().len() == 4));
            n
        })
        .unwrap();
    let out = out.borrow();
    assert!(
        out[0].starts_with("junk: /vssd is not a vSSD"),
        "{}",
        out[0]
    );
    assert_eq!(out[1], "unchanged: true");
    assert_eq!(out[2], "opened: true 1 None");
    assert!(out[3].contains("expected \"cdev-1\""), "{}", out[3]);
    // What format wrote is durable: the durable image alone opens.
    let durable = sim.disk_durable(node, SIM_PATH).unwrap();
    let sb = Superblock::decode(
        &durable[..SUPERBLOCK_BYTES as usize],
        SuperblockCopy::A,
        Path::new(SIM_PATH),
    )
    .unwrap();
    assert_eq!(sb.uuid, [9; 16]);
}

/// What the node of a crash test reports to the controller.
#[derive(Default)]
struct Probe {
    /// 0: first boot (the work), 1: after the crash (reopen).
    boot: Cell<u8>,
    ready: Cell<bool>,
    /// The controller's word to go on.
    go: Cell<bool>,
    /// Woken at every change of `ready` and `go`.
    signal: Rendez,
    /// The generation of the write_superblock in progress, and of the last one
    /// returned.
    started: Cell<u64>,
    acked: Cell<u64>,
    reopened: RefCell<Option<Result<vssd::layout::Opened, String>>>,
}

/// A crash at a random instant while a node rewrites its superblock in a loop:
/// reopening finds a valid superblock, of a generation between the last one
/// acknowledged and the one being written. Returns whether it needed a repair.
fn crash_during_write_superblock(seed: u64) -> bool {
    let mut sim = Sim::new(SimConfig::new(seed));
    let probe = Rc::new(Probe::default());
    let pr = probe.clone();
    sim.run(move |h| {
        let p = pr.clone();
        let n = h.add_node("v", sim_ip(), move || {
            let f = sim_dev();
            if p.boot.get() == 1 {
                let r = open_superblock(&f, Some(DEV)).map_err(|e| e.to_string());
                *p.reopened.borrow_mut() = Some(r);
                return;
            }
            format(&f, &params(DEV, 4)).unwrap();
            let mut sb = open_superblock(&f, Some(DEV)).unwrap().superblock;
            p.acked.set(sb.generation);
            p.ready.set(true);
            p.signal.wakeup_all();
            while !p.go.get() {
                p.signal.sleep();
            }
            loop {
                p.started.set(sb.generation + 1);
                write_superblock(&f, &mut sb).unwrap();
                p.acked.set(sb.generation);
            }
        });
        while !pr.ready.get() {
            pr.signal.sleep();
        }
        pr.go.set(true);
        pr.signal.wakeup_all();
        sleep(Duration::from_micros(h.random(8_000)));
        h.crash(n);
        pr.boot.set(1);
        h.restart(n);
        assert!(h.run_until(Duration::from_secs(10), || pr.reopened.borrow().is_some()));
    })
    .unwrap();
    let (acked, started) = (probe.acked.get(), probe.started.get());
    let reopened = probe.reopened.borrow_mut().take().unwrap();
    let opened = reopened
        .unwrap_or_else(|e| panic!("seed {seed}: no valid superblock after the crash: {e}"));
    let generation = opened.superblock.generation;
    assert!(
        (acked..=started).contains(&generation),
        "seed {seed}: generation {generation}, acknowledged {acked}, writing {started}"
    );
    assert_eq!(opened.superblock.uuid, [4; 16], "seed {seed}");
    assert_eq!(opened.superblock.device_id, DEV, "seed {seed}");
    opened.repair.is_some()
}

#[test]
fn a_crash_during_write_superblock_always_leaves_a_valid_superblock() {
    const SEEDS: u64 = 64;
    let repairs = (0..SEEDS)
        .filter(|&s| crash_during_write_superblock(s))
        .count();
    eprintln!("{repairs} of {SEEDS} crashes left one copy to repair");
    assert!(
        repairs > 0,
        "no crash landed between the two copies: the test does not test"
    );
}

/// A crash at a random instant while a node formats over its own older vSSD: reopening
/// finds the old vSSD, the new one (with an empty log), or no vSSD; nothing else.
fn crash_during_format(seed: u64) -> &'static str {
    let mut sim = Sim::new(SimConfig::new(seed));
    let probe = Rc::new(Probe::default());
    let pr = probe.clone();
    let node = sim
        .run(move |h| {
            let p = pr.clone();
            let n = h.add_node("v", sim_ip(), move || {
                let f = sim_dev();
                if p.boot.get() == 1 {
                    let r = open_superblock(&f, Some(DEV)).map_err(|e| e.to_string());
                    *p.reopened.borrow_mut() = Some(r);
                    return;
                }
                format(&f, &params(DEV, 1)).unwrap();
                // Some log bytes for the new format to wipe.
                f.write_at(&[0xee; 4096], LOG_OFFSET).unwrap();
                f.fdatasync().unwrap();
                p.ready.set(true);
                p.signal.wakeup_all();
                while !p.go.get() {
                    p.signal.sleep();
                }
                format(&f, &params(DEV, 2)).unwrap();
                sleep(Duration::from_secs(3600));
            });
            while !pr.ready.get() {
                pr.signal.sleep();
            }
            pr.go.set(true);
            pr.signal.wakeup_all();
            sleep(Duration::from_micros(h.random(3_000)));
            h.crash(n);
            pr.boot.set(1);
            h.restart(n);
            assert!(h.run_until(Duration::from_secs(10), || pr.reopened.borrow().is_some()));
            n
        })
        .unwrap();
    let reopened = probe.reopened.borrow_mut().take().unwrap();
    let durable = sim.disk_durable(node, SIM_PATH).unwrap();
    let log_head = &durable[LOG_OFFSET as usize..(LOG_OFFSET + 4096) as usize];
    match reopened {
        Ok(o) if o.superblock.uuid == [1; 16] => {
            assert_eq!(o.superblock.generation, 1, "seed {seed}");
            assert!(
                log_head.iter().all(|&b| b == 0xee),
                "seed {seed}: old log wiped"
            );
            "old"
        }
        Ok(o) if o.superblock.uuid == [2; 16] => {
            assert!(
                log_head.iter().all(|&b| b == 0),
                "seed {seed}: log not empty"
            );
            "new"
        }
        Ok(o) => panic!("seed {seed}: a vSSD nobody formatted: {:?}", o.superblock),
        Err(e) if e.contains("is not a vSSD") => "none",
        Err(e) => panic!("seed {seed}: {e}"),
    }
}

#[test]
fn a_crash_during_format_leaves_the_old_vssd_the_new_one_or_none() {
    let outcomes: Vec<&str> = (0..48).map(crash_during_format).collect();
    let count = |o| outcomes.iter().filter(|&&x| x == o).count();
    let (old, new, none) = (count("old"), count("new"), count("none"));
    eprintln!("crash during format: old {old}, new {new}, none {none}");
    assert!(
        [old, new, none].iter().filter(|&&n| n > 0).count() >= 2,
        "the crashes all landed alike: old {old}, new {new}, none {none}"
    );
}

// ---------------------------------------------------------------------------------
// Properties

fn line_size() -> impl Strategy<Value = u32> {
    (LINE_SIZE_MIN.trailing_zeros()..=LINE_SIZE_MAX.trailing_zeros()).prop_map(|s| 1u32 << s)
}

fn lines() -> impl Strategy<Value = u64> {
    prop_oneof![1..=4096u64, 1..=LINES_MAX, Just(LINES_MAX)]
}

fn log_bytes() -> impl Strategy<Value = u64> {
    prop_oneof![
        (LOG_BYTES_MIN / BLOCK_BYTES..=1024u64).prop_map(|b| b * BLOCK_BYTES),
        (LOG_BYTES_MIN / BLOCK_BYTES..=LOG_BYTES_MAX / BLOCK_BYTES).prop_map(|b| b * BLOCK_BYTES),
    ]
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (line_size(), lines(), log_bytes()).prop_map(|(s, l, g)| Geometry::new(s, l, g).unwrap())
}

fn superblock() -> impl Strategy<Value = Superblock> {
    (
        any::<[u8; 16]>().prop_filter("zero uuid", |u| *u != [0; 16]),
        prop_oneof!["[a-zA-Z0-9._:/-]{1,64}", "[a-zé漢-]{1,21}"],
        geometry(),
        1..=u64::MAX,
    )
        .prop_map(|(uuid, device_id, geometry, generation)| Superblock {
            uuid,
            device_id,
            geometry,
            generation,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn geometry_regions_are_aligned_ordered_disjoint_and_within_the_total(
        line_size in line_size(), lines in lines(), log_bytes in log_bytes()
    ) {
        let g = Geometry::new(line_size, lines, log_bytes).unwrap();
        prop_assert_eq!(g.check(), Ok(()));
        let regions = g.regions();
        prop_assert_eq!(regions[0].offset, 0);
        for r in &regions {
            prop_assert!(r.offset.is_multiple_of(BLOCK_BYTES), "{:?}", r);
            prop_assert!(r.bytes.is_multiple_of(BLOCK_BYTES), "{:?}", r);
            prop_assert!(r.bytes > 0, "{:?}", r);
            prop_assert!(r.end() <= g.total_bytes(), "{:?}", r);
        }
        for w in regions.windows(2) {
            prop_assert!(w[0].end() <= w[1].offset, "{:?} overlaps {:?}", w[0], w[1]);
        }
        prop_assert_eq!(regions[5].end(), g.total_bytes());
        prop_assert_eq!(g.log_bytes(), log_bytes);
        prop_assert!(g.data_offset().is_multiple_of(u64::from(line_size)));
        prop_assert!(g.spare_slots() >= lines.div_ceil(16).max(SPARE_SLOTS_MIN));
        prop_assert!(g.checkpoint_entry_blocks() * CHECKPOINT_ENTRIES_PER_BLOCK >= g.slot_count());
        prop_assert_eq!(g.slot_offset(0), g.data_offset());
        prop_assert_eq!(
            g.slot_offset(g.slot_count() - 1) + u64::from(line_size),
            g.total_bytes()
        );
        prop_assert!(g.total_bytes() < i64::MAX as u64);
    }

    #[test]
    fn a_superblock_decodes_to_what_was_encoded(sb in superblock()) {
        for copy in SuperblockCopy::BOTH {
            let block = sb.encode(copy);
            prop_assert_eq!(block.len() as u64, SUPERBLOCK_BYTES);
            let back = Superblock::decode(&block, copy, Path::new("/p")).unwrap();
            prop_assert_eq!(&back, &sb);
        }
    }

    #[test]
    fn any_single_changed_byte_of_a_superblock_is_detected(
        sb in superblock(), at in 0..SUPERBLOCK_BYTES as usize, xor in 1..=255u8, b_copy in any::<bool>()
    ) {
        let copy = if b_copy { SuperblockCopy::B } else { SuperblockCopy::A };
        let mut block = sb.encode(copy).to_vec();
        block[at] ^= xor;
        let r = Superblock::decode(&block, copy, Path::new("/p"));
        prop_assert!(r.is_err(), "byte {} ^ {:#x} went unnoticed", at, xor);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Blocks that pass the magic and the CRC but hold anything else: decode refuses
    /// them (or accepts a consistent one) and never panics.
    #[test]
    fn decode_survives_any_block_with_a_good_magic_and_crc(
        sb in superblock(),
        edits in prop::collection::vec((0..SUPERBLOCK_CRC_OFFSET, any::<u8>()), 1..8),
        b_copy in any::<bool>(),
    ) {
        let copy = if b_copy { SuperblockCopy::B } else { SuperblockCopy::A };
        let mut block = sb.encode(copy).to_vec();
        for (at, v) in edits {
            block[at] = v;
        }
        block[..8].copy_from_slice(b"CVA-VSSD");
        block[SUPERBLOCK_VERSION_OFFSET..SUPERBLOCK_VERSION_OFFSET + 4]
            .copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&block[..SUPERBLOCK_CRC_OFFSET]);
        block[SUPERBLOCK_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(back) = Superblock::decode(&block, copy, Path::new("/p")) {
            // Whatever decodes is a consistent superblock that encodes to these bytes.
            prop_assert_eq!(&back.encode(copy)[..], &block[..]);
        }
    }
}

#[test]
fn a_copy_decoded_as_the_other_copy_is_refused() {
    let sb = Superblock {
        uuid: [1; 16],
        device_id: DEV.into(),
        geometry: params(DEV, 1).geometry().unwrap(),
        generation: 3,
    };
    let a = sb.encode(SuperblockCopy::A);
    let e = Superblock::decode(&a, SuperblockCopy::B, Path::new("/p")).unwrap_err();
    assert!(
        matches!(
            e,
            VssdError::Corrupt {
                what: "superblock B",
                ..
            }
        ),
        "{e}"
    );
}
