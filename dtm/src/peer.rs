//! [`ReplicaService`]: the peer side of [`crate::remote::RemoteReplica`], an
//! [`rpc::Service`] serving PROTOCOL.md's VSSD_* messages for the vSSDs this runtime
//! holds for other hosts' devices ([`Vssds`]).
//!
//! It is a thin wire layer over [`LocalReplica`]: each VSSD_OPEN makes a
//! `LocalReplica` opened at the request's epoch, and every later request on its
//! handle is one [`Replica`] call, so what a vSSD means to a replica (the epoch
//! fence, the error kinds) lives in `local.rs` alone. Here: names to vSSDs, handles
//! to openings, requests to calls, [`ReplicaErrorKind`]s to statuses.
//!
//! Handles belong to the session (one `ReplicaService` per session); the session
//! drops its service when it ends, and with it every opening it held. A session
//! holds at most [`HANDLES_PER_SESSION_MAX`]. PING is echoed (liveness); any other
//! type is NOT_SUPPORTED.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use rpc::limits::{DATA_LEN_MAX, MEMBERS_MAX};
use rpc::{
    DirtyLine, Header, InDoubt, MsgType, Request, Response, SessionInfo, Status, TranState,
    VssdInfo,
};
use taskio::AlignedBuf;
use vssd::{TranOutcome, Vssd};

use crate::local::LocalReplica;
use crate::replica::{Replica, ReplicaError, ReplicaErrorKind};

/// Openings (VSSD_OPEN handles) one session may hold at once; one more is BUSY.
pub const HANDLES_PER_SESSION_MAX: usize = 64;

// Every membership a vSSD can record fits a VSSD_OPEN reply.
const _: () = assert!(vssd::record::EPOCH_MEMBERS_MAX <= MEMBERS_MAX);

/// The member id a peer's opening reports in errors: the wire does not carry the
/// opener's numbering of its replicas, and nothing here needs it.
const PEER_MEMBER: u64 = 0;

/// The vSSDs this runtime serves to peers, by name (shared by the sessions of one
/// runtime: clone it into each session's [`ReplicaService`]).
#[derive(Clone, Default)]
pub struct Vssds {
    by_name: Rc<RefCell<BTreeMap<String, Vssd>>>,
}

impl Vssds {
    pub fn new() -> Vssds {
        Vssds::default()
    }

    /// Serves `vssd` as `name` (a PROTOCOL.md name); returns the one it replaces.
    pub fn insert(&self, name: impl Into<String>, vssd: Vssd) -> Option<Vssd> {
        self.by_name.borrow_mut().insert(name.into(), vssd)
    }

    /// Stops serving `name` to new openings (those open keep their vSSD).
    pub fn remove(&self, name: &str) -> Option<Vssd> {
        self.by_name.borrow_mut().remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Vssd> {
        self.by_name.borrow().get(name).cloned()
    }
}

/// One session's service: the VSSD_* messages over [`Vssds`]. See the module
/// documentation.
pub struct ReplicaService {
    vssds: Vssds,
    handles: RefCell<HashMap<u64, Rc<LocalReplica>>>,
    next_handle: Cell<u64>,
}

impl ReplicaService {
    pub fn new(vssds: Vssds) -> ReplicaService {
        ReplicaService {
            vssds,
            handles: RefCell::new(HashMap::new()),
            next_handle: Cell::new(1),
        }
    }

    /// Openings held now.
    pub fn handles(&self) -> usize {
        self.handles.borrow().len()
    }

    /// The opening of `handle`, out of the map: a call parks, and other handler
    /// tasks of the session may open or close meanwhile.
    fn opening(&self, handle: u64) -> Option<Rc<LocalReplica>> {
        self.handles.borrow().get(&handle).cloned()
    }

    fn open<'s>(&self, name: &str, epoch: u64) -> Response<'s> {
        let t = MsgType::VssdOpen;
        let Some(vssd) = self.vssds.get(name) else {
            return refuse(t, Status::NoDevice, "no vSSD of that name here");
        };
        let replica_epoch = vssd.epoch();
        if epoch < replica_epoch {
            return Response::StaleEpoch {
                msg_type: t,
                epoch: replica_epoch,
                reason: "the opener's epoch is older than the replica's",
            };
        }
        if self.handles.borrow().len() >= HANDLES_PER_SESSION_MAX {
            return refuse(t, Status::Busy, "HANDLES_PER_SESSION_MAX vSSDs open");
        }
        let replica = LocalReplica::new(vssd, PEER_MEMBER, name, epoch);
        let i = replica.info();
        let info = VssdInfo {
            line_count: i.lines,
            epoch: i.epoch,
            tran_lines_max: i.tran_lines_max,
            line_size: i.line_size,
            members: i.members.clone(),
        };
        let handle = self.next_handle.get();
        // Handles are never reused within a session (u64: never exhausted).
        self.next_handle.set(handle + 1);
        self.handles.borrow_mut().insert(handle, Rc::new(replica));
        Response::VssdOpen { handle, info }
    }

    /// One request on an open handle: one [`Replica`] call. Data to send back is
    /// returned owned; the caller puts it in the session's scratch buffer.
    fn call(&self, r: &LocalReplica, request: Request<'_>) -> Result<Answer, ReplicaError> {
        Ok(Answer::Done(match request {
            Request::VssdWritep1 {
                tran, line, data, ..
            } => {
                r.writep1(tran, line, &aligned(data))?;
                Response::VssdWritep1
            }
            Request::VssdCommit { trans, .. } => {
                r.commit(&trans)?;
                Response::VssdCommit
            }
            Request::VssdAbort { tran, .. } => {
                r.abort(tran)?;
                Response::VssdAbort
            }
            Request::VssdRead { line, length, .. } => {
                if length != r.info().line_size {
                    return Err(failure(
                        r,
                        "read",
                        refused("VSSD_READ reads one whole line"),
                    ));
                }
                let mut buf = AlignedBuf::new(length as usize);
                let Some(version) = r.read(line, &mut buf)? else {
                    let why = format!("line {line} is not held");
                    return Err(failure(r, "read", ReplicaErrorKind::NotFound(why)));
                };
                return Ok(Answer::Line { version, buf });
            }
            Request::VssdReadPrepared { tran, .. } => {
                let payload = r.read_prepared(tran)?;
                if payload.is_empty() || payload.len() > DATA_LEN_MAX as usize {
                    // Only a tran written locally can be larger than a VSSD_WRITEP1.
                    let why = refused("the payload does not fit one VSSD_READ_PREPARED");
                    return Err(failure(r, "read_prepared", why));
                }
                return Ok(Answer::Prepared(payload));
            }
            Request::VssdRepair { tran, data, .. } => {
                r.repair(tran, &aligned(data))?;
                Response::VssdRepair
            }
            Request::VssdCopyIn {
                version,
                line,
                data,
                ..
            } => {
                r.copy_in(version, line, &aligned(data))?;
                Response::VssdCopyIn
            }
            Request::VssdClean { line, version, .. } => Response::VssdClean {
                cleaned: r.clean(line, version)?,
            },
            Request::VssdInvalidate { first, count, .. } => Response::VssdInvalidate {
                held: r.invalidate(first, count)?,
            },
            Request::VssdEpoch { epoch, members, .. } => {
                r.set_epoch(epoch, &members)?;
                Response::VssdEpoch
            }
            Request::VssdOutcome { tran, .. } => Response::VssdOutcome {
                state: state_of(r.outcome(tran)?),
            },
            Request::VssdRecover {
                after_tran, max, ..
            } => {
                let (trans, more) = r.in_doubt(after_tran, max as usize)?;
                let in_doubt = trans
                    .into_iter()
                    .map(|d| InDoubt {
                        tran: d.tran,
                        line: d.line,
                        line_count: d.line_count,
                        payload_len: d.payload_len,
                        damaged: d.damaged,
                    })
                    .collect();
                Response::VssdRecover { in_doubt, more }
            }
            Request::VssdDirty { from, max, .. } => Response::VssdDirty {
                lines: r
                    .dirty(from, max as usize)?
                    .into_iter()
                    .map(|(line, version)| DirtyLine { line, version })
                    .collect(),
            },
            other => unreachable!("{} routed as a call on a handle", other.msg_type()),
        }))
    }
}

/// What a call on a handle answers.
enum Answer {
    Done(Response<'static>),
    /// VSSD_READ: the line's version and payload.
    Line {
        version: u64,
        buf: AlignedBuf,
    },
    /// VSSD_READ_PREPARED: the tran's payload.
    Prepared(AlignedBuf),
}

impl rpc::Service for ReplicaService {
    /// The answers no client write waits for: a lazy COMMIT (the write was
    /// acknowledged already) and a destage's CLEAN (background work). Each then
    /// rides with the answer of a writep1 in flight instead of waking the primary
    /// by itself in the middle of that writep1 (`tdrv bench dtm`, qd 1).
    fn lazy(&self, msg_type: MsgType) -> bool {
        matches!(msg_type, MsgType::VssdCommit | MsgType::VssdClean)
    }

    fn handle<'s>(
        &self,
        _session: &SessionInfo,
        header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        let t = request.msg_type();
        match request {
            Request::VssdOpen { name, epoch } => self.open(name, epoch),
            Request::VssdClose { handle } => match self.handles.borrow_mut().remove(&handle) {
                Some(_) => Response::VssdClose,
                None => refuse(t, Status::NoDevice, "no such vSSD handle"),
            },
            Request::VssdWritep1 { .. }
            | Request::VssdCommit { .. }
            | Request::VssdAbort { .. }
            | Request::VssdRead { .. }
            | Request::VssdClean { .. }
            | Request::VssdRecover { .. }
            | Request::VssdEpoch { .. }
            | Request::VssdInvalidate { .. }
            | Request::VssdOutcome { .. }
            | Request::VssdDirty { .. }
            | Request::VssdReadPrepared { .. }
            | Request::VssdRepair { .. }
            | Request::VssdCopyIn { .. } => {
                let Some(r) = self.opening(header.handle) else {
                    return refuse(t, Status::NoDevice, "no such vSSD handle");
                };
                scratch.clear();
                match self.call(&r, request) {
                    Ok(Answer::Done(response)) => response,
                    Ok(Answer::Line { version, buf }) => {
                        scratch.extend_from_slice(&buf);
                        Response::VssdRead {
                            version,
                            data: scratch,
                        }
                    }
                    Ok(Answer::Prepared(payload)) => {
                        scratch.extend_from_slice(&payload);
                        Response::VssdReadPrepared { data: scratch }
                    }
                    Err(e) => error_response(t, &e, scratch),
                }
            }
            Request::Ping { data } => {
                scratch.clear();
                scratch.extend_from_slice(data);
                Response::Ping { data: scratch }
            }
            _ => refuse(
                t,
                Status::NotSupported,
                "a replica peer serves VSSD_* and PING",
            ),
        }
    }
}

/// The answer to a failed call (PROTOCOL.md's replica messages), its reason the
/// error's text in `scratch`; `RemoteReplica` maps the status back. A replica that
/// is closed or failed (Unreachable) is NO_DEVICE: it is gone until reopened.
fn error_response<'s>(t: MsgType, e: &ReplicaError, scratch: &'s mut Vec<u8>) -> Response<'s> {
    let status = match e.kind {
        ReplicaErrorKind::StaleEpoch { replica_epoch } => {
            return Response::StaleEpoch {
                msg_type: t,
                epoch: replica_epoch,
                reason: "the replica moved to a newer epoch",
            };
        }
        ReplicaErrorKind::NotFound(_) => Status::NotFound,
        ReplicaErrorKind::Timeout => Status::Timeout,
        ReplicaErrorKind::Unreachable(_) => Status::NoDevice,
        ReplicaErrorKind::Io(_) => Status::IoError,
        ReplicaErrorKind::Refused(_) => Status::InvalidArgument,
    };
    let text = e.to_string();
    scratch.clear();
    scratch.extend_from_slice(rpc::truncate_reason(&text).as_bytes());
    Response::Error {
        msg_type: t,
        status,
        // Cut at a character boundary above: always UTF-8.
        reason: std::str::from_utf8(scratch).unwrap_or_default(),
    }
}

fn refuse<'s>(msg_type: MsgType, status: Status, reason: &'static str) -> Response<'s> {
    Response::Error {
        msg_type,
        status,
        reason,
    }
}

fn refused(why: &str) -> ReplicaErrorKind {
    ReplicaErrorKind::Refused(why.to_string())
}

fn failure(r: &LocalReplica, op: &'static str, kind: ReplicaErrorKind) -> ReplicaError {
    ReplicaError {
        op,
        replica: r.name().to_string(),
        kind,
    }
}

/// `data` in a buffer the vSSD can write with O_DIRECT (the frame's is not aligned).
fn aligned(data: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::new(data.len());
    b.set_len(data.len());
    b.copy_from_slice(data);
    b
}

/// A vSSD's outcome as the wire says it.
pub(crate) fn state_of(o: TranOutcome) -> TranState {
    match o {
        TranOutcome::Prepared => TranState::Prepared,
        TranOutcome::Committed => TranState::Committed,
        TranOutcome::Aborted => TranState::Aborted,
        TranOutcome::Forgotten => TranState::Forgotten,
        TranOutcome::Unknown => TranState::Unknown,
    }
}

/// The wire's outcome as a vSSD's.
pub(crate) fn outcome_of(s: TranState) -> TranOutcome {
    match s {
        TranState::Prepared => TranOutcome::Prepared,
        TranState::Committed => TranOutcome::Committed,
        TranState::Aborted => TranOutcome::Aborted,
        TranState::Forgotten => TranOutcome::Forgotten,
        TranState::Unknown => TranOutcome::Unknown,
    }
}
