//! Checkpoint regions on a real file: round trip, the newest of two wins, a torn
//! header falls back to the other region, a valid header over bad entries is an
//! error (never a silent fallback), and another format's checkpoint is never read.

mod common;

use common::{TempDir, run_io};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use taskio::file::{File, OpenOptions};
use vssd::Membership;
use vssd::VssdError;
use vssd::checkpoint::{Loaded, Snapshot, read_newest, write};
use vssd::layout::{Geometry, LOG_BYTES_MIN};
use vssd::map::{Entry, Prepared, State};
use vssd::record::EPOCH_MEMBERS_MAX;

const SEED: u32 = 0x1234_abcd;

fn geometry() -> Geometry {
    Geometry::new(4096, 300, LOG_BYTES_MIN).unwrap()
}

fn open(path: &Path) -> File {
    OpenOptions::new().open(path).unwrap()
}

/// 300 entries (3 entry blocks) and 2 prepared trans (one of them partly) at `seq`, a tran high-water
/// mark and a membership of the most members.
fn snapshot(seq: u64) -> Snapshot {
    Snapshot {
        seq,
        entries: (0..300u64)
            .map(|i| {
                let e = Entry {
                    slot: i,
                    version: seq * 1000 + i,
                    crc: (i as u32).wrapping_mul(0x9e37_79b9),
                    len: if i % 7 == 0 { 65536 } else { 4096 },
                    state: if i % 3 == 0 {
                        State::Clean
                    } else {
                        State::Dirty
                    },
                };
                (i * 10, e)
            })
            .collect(),
        prepared: vec![
            (
                seq + 5,
                Prepared {
                    line: 7,
                    slot: 300,
                    crc: 1,
                    len: 100,
                    part: 0,
                    parts: 1,
                },
            ),
            // The first two lines of a tran of 256 whose writep1 was appending
            // its PREPAREs when the log was cut: a checkpoint keeps its parts.
            (
                seq + 6,
                Prepared {
                    line: 8,
                    slot: 301,
                    crc: 2,
                    len: 4096,
                    part: 0,
                    parts: 256,
                },
            ),
            (
                seq + 6,
                Prepared {
                    line: 9,
                    slot: 302,
                    crc: 3,
                    len: 4096,
                    part: 1,
                    parts: 256,
                },
            ),
        ],
        tran_high: seq * 1000 + 300,
        membership: Membership {
            epoch: seq + 2,
            members: (0..EPOCH_MEMBERS_MAX as u64).map(|m| m * 3 + seq).collect(),
        },
    }
}

fn poke(path: &Path, offset: u64, xor: u8) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= xor;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
}

#[test]
fn round_trip_and_the_newest_of_two_wins() {
    let g = geometry();
    let dir = TempDir::new("ckpt-round");
    let f = dir.file_with("vssd", g.total_bytes(), &[]);
    let p = f.clone();
    run_io(move || {
        let file = open(&p);
        assert_eq!(
            read_newest(&file, &g, SEED).unwrap(),
            None,
            "zeroed regions"
        );
        write(&file, &g, SEED, 0, &snapshot(10)).unwrap();
        let got = read_newest(&file, &g, SEED).unwrap();
        assert_eq!(
            got,
            Some(Loaded {
                which: 0,
                snapshot: snapshot(10)
            })
        );
        write(&file, &g, SEED, 1, &snapshot(20)).unwrap();
        assert_eq!(read_newest(&file, &g, SEED).unwrap().unwrap().which, 1);
        // Another format of the device (another seed) finds no checkpoint.
        assert_eq!(read_newest(&file, &g, SEED ^ 1).unwrap(), None);
        // An empty map is a valid checkpoint too.
        let empty = Snapshot {
            seq: 30,
            ..Snapshot::default()
        };
        write(&file, &g, SEED, 0, &empty).unwrap();
        let got = read_newest(&file, &g, SEED).unwrap().unwrap();
        assert_eq!((got.which, got.snapshot), (0, empty));
    });
}

#[test]
fn a_torn_header_falls_back_to_the_other_region() {
    let g = geometry();
    let dir = TempDir::new("ckpt-torn");
    let f = dir.file_with("vssd", g.total_bytes(), &[]);
    let p = f.clone();
    run_io(move || {
        let file = open(&p);
        write(&file, &g, SEED, 0, &snapshot(10)).unwrap();
        write(&file, &g, SEED, 1, &snapshot(20)).unwrap();
    });
    // A byte of B's header (its seq) flipped, as a torn write would leave it.
    poke(&f, g.checkpoint_offsets()[1] + 17, 0x40);
    let p = f.clone();
    let got = run_io(move || read_newest(&open(&p), &g, SEED).unwrap());
    assert_eq!(got.map(|l| (l.which, l.snapshot.seq)), Some((0, 10)));
}

#[test]
fn a_valid_header_over_bad_entries_is_an_error() {
    let g = geometry();
    let dir = TempDir::new("ckpt-entries");
    let f = dir.file_with("vssd", g.total_bytes(), &[]);
    let p = f.clone();
    run_io(move || {
        let file = open(&p);
        write(&file, &g, SEED, 0, &snapshot(10)).unwrap();
        write(&file, &g, SEED, 1, &snapshot(20)).unwrap();
    });
    // The second entry block of B, one entry byte.
    poke(&f, g.checkpoint_offsets()[1] + 2 * 4096 + 100, 0x01);
    let p = f.clone();
    let e = run_io(move || read_newest(&open(&p), &g, SEED).unwrap_err());
    assert!(matches!(e, VssdError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("checkpoint B (seq 20)") && msg.contains("entry block 1"),
        "{msg}"
    );
}
