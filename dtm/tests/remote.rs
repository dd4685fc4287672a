//! `RemoteReplica` against a `ReplicaService` on real loopback sockets (port 0), the
//! served vSSD a real file: every `Replica` method gives what `LocalReplica` gives
//! on a vSSD of its own; the epoch fence across the wire; a call to a peer that
//! stops answering ends `Timeout` within its timeout.

mod support;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dtm::peer::HANDLES_PER_SESSION_MAX;
use dtm::{
    LocalReplica, RemoteReplica, Replica, ReplicaError, ReplicaErrorKind, ReplicaService, Vssds,
};
use rpc::{Client, ClientConfig, Header, Request, Response, SessionInfo, Status};
use support::{
    LINE, TempDir, damage_slot, formatted, in_doubt_slot, open_vssd, payload, run_io, serve,
    serve_vssds,
};
use taskio::{AlignedBuf, Rendez};
use vssd::TranOutcome;

const VSSD: &str = "replica-a";
/// Bound of every call of these tests (they run on loopback).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The short timeout of the stalled-peer test.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);
/// How far past its timeout a call may end (scheduling, the timer's grain).
const TIMEOUT_SLACK: Duration = Duration::from_millis(200);
/// How long a stalled handler waits for its release at most.
const STALL_MAX: Duration = Duration::from_secs(10);

fn config(call_timeout: Duration) -> ClientConfig {
    ClientConfig {
        name: "dtm-test".into(),
        call_timeout,
        ..ClientConfig::default()
    }
}

fn line_buf() -> AlignedBuf {
    AlignedBuf::new(LINE as usize)
}

/// What a call gave, comparable across replicas: the value, or the error's kind
/// (its variant and the epoch of a stale one; texts name different replicas).
fn said<T: std::fmt::Debug>(r: Result<T, ReplicaError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => match e.kind {
            ReplicaErrorKind::StaleEpoch { replica_epoch } => format!("stale {replica_epoch}"),
            ReplicaErrorKind::NotFound(_) => "not found".into(),
            ReplicaErrorKind::Timeout => "timeout".into(),
            ReplicaErrorKind::Unreachable(_) => "unreachable".into(),
            ReplicaErrorKind::Io(_) => "io".into(),
            ReplicaErrorKind::Refused(_) => "refused".into(),
        },
    }
}

/// Every method, successes and failures, on `r`: what each call gave, in order.
fn script(r: &dyn Replica) -> Vec<String> {
    let mut out = Vec::new();
    let mut log = |what: &str, s: String| out.push(format!("{what}: {s}"));
    let info = r.info();
    log(
        "info",
        format!(
            "{} {} {} {:?} {}",
            info.line_size,
            info.lines,
            info.epoch,
            info.members,
            info.tran_lines_max >= 2
        ),
    );
    log("writep1 5", said(r.writep1(5, 10, &payload(10, 2, 5))));
    log("writep1 6", said(r.writep1(6, 20, &payload(20, 1, 6))));
    let max = r.info().tran_lines_max;
    log(
        "writep1 long",
        said(r.writep1(9, 0, &payload(0, max + 1, 9))),
    );
    log("outcome 5", said(r.outcome(5)));
    log("outcome 77", said(r.outcome(77)));
    log("in_doubt", said(r.in_doubt(0, 10)));
    log("in_doubt 1", said(r.in_doubt(0, 1)));
    log("in_doubt after 5", said(r.in_doubt(5, 10)));
    log("in_doubt none", said(r.in_doubt(0, 0)));
    log(
        "read_prepared 5",
        said(r.read_prepared(5).map(|b| b[..] == payload(10, 2, 5)[..])),
    );
    log("read_prepared 99", said(r.read_prepared(99)));
    log("repair 6 (intact)", said(r.repair(6, &payload(20, 1, 6))));
    log("commit 5 6", said(r.commit(&[5, 6])));
    log("commit 5 again", said(r.commit(&[5])));
    log("commit none", said(r.commit(&[])));
    log("commit 99", said(r.commit(&[99])));
    log("outcome 6", said(r.outcome(6)));
    let mut buf = line_buf();
    log("read 11", said(r.read(11, &mut buf)));
    log(
        "read 11 data",
        format!("{}", buf[..] == payload(10, 2, 5)[LINE as usize..]),
    );
    log("read 30", said(r.read(30, &mut buf)));
    log("dirty", said(r.dirty(0, 10)));
    log("dirty 11 1", said(r.dirty(11, 1)));
    log("dirty none", said(r.dirty(0, 0)));
    log("clean old", said(r.clean(10, 4)));
    log("clean", said(r.clean(10, 5)));
    log("clean not held", said(r.clean(40, 5)));
    log("dirty after clean", said(r.dirty(0, 10)));
    log("invalidate", said(r.invalidate(0, 64)));
    log(
        "invalidate past the end",
        said(r.invalidate(u64::MAX - 1, 5)),
    );
    log("read 20", said(r.read(20, &mut buf)));
    log("writep1 7", said(r.writep1(7, 1, &payload(1, 1, 7))));
    log("abort 7", said(r.abort(7)));
    log("abort 7 again", said(r.abort(7)));
    log("commit aborted 7", said(r.commit(&[7])));
    log("outcome 7", said(r.outcome(7)));
    log("set_epoch", said(r.set_epoch(3, &[1, 2, 3])));
    log("set_epoch older", said(r.set_epoch(2, &[1])));
    log("writep1 8 at 3", said(r.writep1(8, 2, &payload(2, 1, 8))));
    log("commit 8", said(r.commit(&[8])));
    log("copy_in 8", said(r.copy_in(8, 30, &payload(30, 1, 8))));
    log(
        "copy_in aborted 7",
        said(r.copy_in(7, 31, &payload(31, 1, 7))),
    );
    log("copy_in 50", said(r.copy_in(50, 32, &payload(32, 1, 50))));
    log("read 32", said(r.read(32, &mut buf)));
    log(
        "read 32 data",
        format!("{}", buf[..] == payload(32, 1, 50)[..]),
    );
    log(
        "copy_in older 40",
        said(r.copy_in(40, 32, &payload(32, 1, 40))),
    );
    log("outcome 50", said(r.outcome(50)));
    out
}

#[test]
fn every_method_answers_over_the_wire_as_it_does_locally() {
    let dir = TempDir::new("remote-calls");
    let local_path = formatted(&dir, "local");
    let served_path = formatted(&dir, "served");
    run_io(move || {
        let v = open_vssd(&local_path);
        let local = LocalReplica::new(v.clone(), 1, "local", v.epoch());
        let want = script(&local);
        v.close();
        // The script does what it means to (so that two equal transcripts say
        // something): a few anchors.
        for anchor in [
            "writep1 5: ok ()",
            "writep1 long: refused",
            "commit 99: not found",
            "read 11: ok Some(5)",
            "read 11 data: true",
            "read 30: ok None",
            "clean: ok true",
            "invalidate: ok 3",
            "set_epoch older: refused",
            "read 32: ok Some(50)",
            "commit 8: ok ()",
        ] {
            assert!(want.iter().any(|l| l == anchor), "{anchor} in {want:#?}");
        }

        let served = open_vssd(&served_path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let addr = serve_vssds(&vssds);
        let remote = RemoteReplica::open(addr, VSSD, 0, 1, &config(CALL_TIMEOUT)).unwrap();
        assert_eq!(remote.member(), 1);
        assert_eq!(remote.name(), format!("{addr}/{VSSD}"));
        let got = script(&remote);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g);
        }
        assert_eq!(want.len(), got.len());
        // What the calls did is in the served vSSD, as in the local one.
        assert_eq!((served.epoch(), served.members()), (3, vec![1, 2, 3]));
        assert_eq!(served.tran_outcome(8), TranOutcome::Committed);
        remote.close().unwrap();
        served.close();
    });
}

/// A commit batch larger than one VSSD_COMMIT goes out in several; a dirty listing
/// larger than one VSSD_DIRTY reply comes back whole.
#[test]
fn batches_beyond_one_message_are_split() {
    let dir = TempDir::new("remote-batches");
    let path = formatted(&dir, "served");
    run_io(move || {
        let served = open_vssd(&path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let addr = serve_vssds(&vssds);
        let remote = RemoteReplica::open(addr, VSSD, 0, 1, &config(CALL_TIMEOUT)).unwrap();
        let lines = 40u64;
        for line in 0..lines {
            remote
                .writep1(line + 1, line, &payload(line, 1, line + 1))
                .unwrap();
        }
        // Each tran many times over: more than COMMIT_TRANS_MAX ids, idempotent.
        let trans: Vec<u64> = (0..rpc::limits::COMMIT_TRANS_MAX as u64 + 7)
            .map(|i| 1 + i % lines)
            .collect();
        remote.commit(&trans).unwrap();
        let dirty = remote.dirty(0, usize::MAX).unwrap();
        assert_eq!(dirty, (0..lines).map(|l| (l, l + 1)).collect::<Vec<_>>());
        drop(remote);
        served.close();
    });
}

/// Two primaries open one served vSSD: once the second moves it to a newer epoch,
/// every call of the first is answered STALE_EPOCH with that epoch, and an opening
/// at the old epoch is refused.
#[test]
fn a_newer_epoch_fences_the_older_opening_off_across_the_wire() {
    let dir = TempDir::new("remote-fence");
    let path = formatted(&dir, "served");
    run_io(move || {
        let served = open_vssd(&path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let addr = serve_vssds(&vssds);
        let first = RemoteReplica::open(addr, VSSD, 0, 1, &config(CALL_TIMEOUT)).unwrap();
        first.writep1(5, 1, &payload(1, 1, 5)).unwrap();
        // A takeover: opened at the replica's epoch, moved on.
        let second = RemoteReplica::open(addr, VSSD, 0, 2, &config(CALL_TIMEOUT)).unwrap();
        assert_eq!(second.info().epoch, 0, "the replica's epoch as opened");
        second.set_epoch(1, &[2, 3]).unwrap();

        let stale = |e: ReplicaError| {
            assert!(
                matches!(e.kind, ReplicaErrorKind::StaleEpoch { replica_epoch: 1 }),
                "{e}"
            );
            assert!(!e.kind.is_loss());
        };
        stale(first.writep1(6, 2, &payload(2, 1, 6)).unwrap_err());
        stale(first.commit(&[5]).unwrap_err());
        stale(first.abort(5).unwrap_err());
        stale(first.read(1, &mut line_buf()).unwrap_err());
        stale(first.read_prepared(5).unwrap_err());
        stale(first.repair(5, &payload(1, 1, 5)).unwrap_err());
        stale(first.copy_in(5, 3, &payload(3, 1, 5)).unwrap_err());
        stale(first.clean(1, 5).unwrap_err());
        stale(first.invalidate(0, 64).unwrap_err());
        stale(first.set_epoch(1, &[1]).unwrap_err());
        stale(first.outcome(5).unwrap_err());
        stale(first.in_doubt(0, 4).unwrap_err());
        stale(first.dirty(0, 4).unwrap_err());
        stale(
            RemoteReplica::open(addr, VSSD, 0, 1, &config(CALL_TIMEOUT))
                .err()
                .expect("an opening at the old epoch is refused"),
        );
        // Nothing the fenced opening asked for was done.
        assert_eq!(served.tran_outcome(5), TranOutcome::Prepared);
        assert_eq!(served.tran_outcome(6), TranOutcome::Unknown);
        second.commit(&[5]).unwrap();
        assert_eq!(served.members(), vec![2, 3]);
        drop((first, second));
        served.close();
    });
}

/// Unknown names and handles: NO_DEVICE, a lost replica.
#[test]
fn an_unknown_vssd_or_a_closed_one_is_unreachable() {
    let dir = TempDir::new("remote-nodevice");
    let path = formatted(&dir, "served");
    run_io(move || {
        let served = open_vssd(&path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let addr = serve_vssds(&vssds);
        let e = RemoteReplica::open(addr, "no-such-vssd", 0, 1, &config(CALL_TIMEOUT))
            .err()
            .expect("no such vSSD");
        assert!(matches!(e.kind, ReplicaErrorKind::Unreachable(_)), "{e}");
        let remote = RemoteReplica::open(addr, VSSD, 0, 1, &config(CALL_TIMEOUT)).unwrap();
        served.close();
        let e = remote.writep1(5, 1, &payload(1, 1, 5)).unwrap_err();
        assert!(matches!(e.kind, ReplicaErrorKind::Unreachable(_)), "{e}");
        assert!(e.kind.is_loss());
        // Nobody listening: the connection cannot be made.
        drop(remote);
        let free = taskio::net::listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let nobody = free.local_addr();
        drop(free);
        let e = RemoteReplica::open(nobody, VSSD, 0, 1, &config(CALL_TIMEOUT))
            .err()
            .expect("nobody listens");
        assert!(matches!(e.kind, ReplicaErrorKind::Unreachable(_)), "{e}");
    });
}

/// A damaged in-doubt tran on the served replica, listed DAMAGED over the wire and
/// repaired with the payload read from an intact local copy.
#[test]
fn a_damaged_tran_is_listed_and_repaired_over_the_wire() {
    let dir = TempDir::new("remote-repair");
    let intact = formatted(&dir, "intact");
    let served_path = formatted(&dir, "served");
    for path in [&intact, &served_path] {
        let p = path.clone();
        run_io(move || {
            let v = open_vssd(&p);
            let r = LocalReplica::new(v.clone(), 1, "writer", 0);
            r.writep1(5, 3, &payload(3, 2, 5)).unwrap();
            v.close();
        });
    }
    damage_slot(&served_path, in_doubt_slot(&served_path, 5));
    run_io(move || {
        let v = open_vssd(&intact);
        let good = LocalReplica::new(v.clone(), 1, "intact", 0);
        let served = open_vssd(&served_path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let addr = serve_vssds(&vssds);
        let remote = RemoteReplica::open(addr, VSSD, 0, 2, &config(CALL_TIMEOUT)).unwrap();
        let (listed, more) = remote.in_doubt(0, 10).unwrap();
        assert!(!more);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].tran, listed[0].line, listed[0].line_count),
            (5, 3, 2)
        );
        assert_eq!(listed[0].payload_len, 2 * LINE);
        assert!(listed[0].damaged);
        let e = remote.read_prepared(5).unwrap_err();
        assert!(!matches!(e.kind, ReplicaErrorKind::NotFound(_)), "{e}");
        let copy = good.read_prepared(5).unwrap();
        remote.repair(5, &copy).unwrap();
        assert_eq!(remote.outcome(5).unwrap(), TranOutcome::Committed);
        let mut buf = line_buf();
        assert_eq!(remote.read(4, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..], &payload(3, 2, 5)[LINE as usize..]);
        drop(remote);
        served.close();
        v.close();
    });
}

/// A `ReplicaService` whose handlers stop answering while `stalled` is set: each
/// waits for `release` (at most STALL_MAX) before it serves its request.
struct Stalling {
    inner: ReplicaService,
    stalled: Rc<Cell<bool>>,
    release: Rc<Rendez>,
}

impl rpc::Service for Stalling {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        if self.stalled.get() {
            self.release.sleep_until(taskio::now() + STALL_MAX);
        }
        self.inner.handle(session, header, request, scratch)
    }
}

#[test]
fn a_call_to_a_peer_that_stops_answering_times_out_within_its_timeout() {
    let dir = TempDir::new("remote-timeout");
    let path = formatted(&dir, "served");
    run_io(move || {
        let served = open_vssd(&path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let stalled = Rc::new(Cell::new(false));
        let release = Rc::new(Rendez::new());
        let addr = {
            let (stalled, release) = (stalled.clone(), release.clone());
            serve(move || Stalling {
                inner: ReplicaService::new(vssds.clone()),
                stalled: stalled.clone(),
                release: release.clone(),
            })
        };
        let remote = RemoteReplica::open(addr, VSSD, 0, 1, &config(SHORT_TIMEOUT)).unwrap();
        remote.writep1(5, 1, &payload(1, 1, 5)).unwrap();

        stalled.set(true);
        let start = Instant::now();
        let e = remote.commit(&[5]).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e.kind, ReplicaErrorKind::Timeout), "{e}");
        assert!(e.kind.is_loss());
        assert!(
            took >= SHORT_TIMEOUT && took < SHORT_TIMEOUT + TIMEOUT_SLACK,
            "timed out after {took:?}"
        );
        // The peer answers again: its late answer is dropped, the connection goes on.
        stalled.set(false);
        assert_eq!(release.wakeup_all(), 1, "the stalled handler");
        assert_eq!(remote.outcome(5).unwrap(), TranOutcome::Committed);
        drop(remote);
        served.close();
    });
}

/// A `ReplicaService` that says, when its session drops it, how many handles it
/// still held (and wakes `ended`).
struct Counted {
    inner: ReplicaService,
    held_at_end: Rc<Cell<Option<usize>>>,
    ended: Rc<Rendez>,
}

impl rpc::Service for Counted {
    fn handle<'s>(
        &self,
        session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        self.inner.handle(session, header, request, scratch)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.held_at_end.set(Some(self.inner.handles()));
        self.ended.wakeup_all();
    }
}

/// Handles on the raw wire: a session holds at most HANDLES_PER_SESSION_MAX (one
/// more is BUSY), a closed handle is NO_DEVICE, PING is answered, another type is
/// NOT_SUPPORTED, and the session's end drops its service with its handles.
#[test]
fn handles_belong_to_their_session_and_are_bounded() {
    let dir = TempDir::new("remote-handles");
    let path = formatted(&dir, "served");
    run_io(move || {
        let served = open_vssd(&path);
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let held_at_end = Rc::new(Cell::new(None));
        let ended = Rc::new(Rendez::new());
        let addr = {
            let (held_at_end, ended) = (held_at_end.clone(), ended.clone());
            serve(move || Counted {
                inner: ReplicaService::new(vssds.clone()),
                held_at_end: held_at_end.clone(),
                ended: ended.clone(),
            })
        };
        let c = Client::connect(addr, &config(CALL_TIMEOUT)).unwrap();
        let open = |c: &Client| {
            let reply = c
                .call(Request::VssdOpen {
                    name: VSSD,
                    epoch: 0,
                })
                .unwrap();
            match reply.response().unwrap() {
                Response::VssdOpen { handle, .. } => Ok(handle),
                Response::Error { status, .. } => Err(status),
                other => panic!("{other:?}"),
            }
        };
        let handles: Vec<u64> = (0..HANDLES_PER_SESSION_MAX)
            .map(|_| open(&c).unwrap())
            .collect();
        assert_eq!(open(&c), Err(Status::Busy));
        let reply = c.call(Request::VssdClose { handle: handles[0] }).unwrap();
        assert_eq!(reply.status(), Status::Ok);
        let reply = c
            .call(Request::VssdAbort {
                handle: handles[0],
                tran: 1,
            })
            .unwrap();
        assert_eq!(reply.status(), Status::NoDevice);
        let reply = c.call(Request::VssdClose { handle: handles[0] }).unwrap();
        assert_eq!(reply.status(), Status::NoDevice);
        assert!(open(&c).is_ok(), "a closed handle's room is free again");
        let reply = c.call(Request::Ping { data: b"alive" }).unwrap();
        assert_eq!(reply.response().unwrap(), Response::Ping { data: b"alive" });
        let reply = c.call(Request::Flush { handle: 1 }).unwrap();
        assert_eq!(reply.status(), Status::NotSupported);
        assert_eq!(held_at_end.get(), None);
        drop(c);
        // The session ends once it reads the connection's close.
        if held_at_end.get().is_none() {
            assert!(
                ended.sleep_until(taskio::now() + CALL_TIMEOUT),
                "session ended"
            );
        }
        assert_eq!(held_at_end.get(), Some(HANDLES_PER_SESSION_MAX));
        served.close();
    });
}

/// A member lagging at an older epoch (fences that failed on it), opened by a
/// recovering primary at the newest epoch: recovery's fence moves it from where it
/// is; a second opening at that epoch is fenced off once it moved.
#[test]
fn a_lagging_member_opened_at_a_newer_epoch_moves_with_the_fence() {
    let dir = TempDir::new("remote-lagging");
    let path = formatted(&dir, "served");
    run_io(move || {
        let served = open_vssd(&path);
        served.set_epoch(1, &[0, 1, 2]).unwrap();
        let vssds = Vssds::new();
        vssds.insert(VSSD, served.clone());
        let addr = serve_vssds(&vssds);
        let first = RemoteReplica::open(addr, VSSD, 3, 2, &config(CALL_TIMEOUT)).unwrap();
        let second = RemoteReplica::open(addr, VSSD, 3, 2, &config(CALL_TIMEOUT)).unwrap();
        first.set_epoch(4, &[1, 2]).unwrap();
        assert_eq!(served.epoch(), 4);
        assert_eq!(served.members(), vec![1, 2]);
        let e = second.set_epoch(4, &[0, 2]).unwrap_err();
        assert!(
            matches!(e.kind, ReplicaErrorKind::StaleEpoch { replica_epoch: 4 }),
            "{e}"
        );
        assert_eq!(served.members(), vec![1, 2]);
        drop((first, second));
        served.close();
    });
}
