//! [`RemoteReplica`]: the [`Replica`] seam over an rpc connection to the peer CVA
//! that serves the vSSD ([`crate::peer::ReplicaService`], PROTOCOL.md's VSSD_*
//! messages, one per method).
//!
//! One connection per replica, pipelined: many tasks of the DTM call at once, each
//! call bounded by the connection's `ClientConfig::call_timeout`. What goes wrong
//! comes back as a [`ReplicaErrorKind`]: a call that outlived its timeout (or a
//! TIMEOUT answer) is `Timeout`; a connection that broke, or a vSSD the peer closed
//! (NO_DEVICE), is `Unreachable`; STALE_EPOCH is `StaleEpoch` with the epoch the
//! answer carries (0 when the peer did not know it); NOT_FOUND is `NotFound`;
//! IO_ERROR and NO_SPACE, and an answer that arrived damaged, are `Io`; anything
//! else the peer refused, and a request this side cannot encode, is `Refused`.

use std::cell::RefCell;
use std::net::SocketAddr;

use rpc::limits::{COMMIT_TRANS_MAX, DIRTY_PER_REPLY_MAX, IN_DOUBT_PER_REPLY_MAX};
use rpc::{Client, ClientConfig, Reply, Request, Response, RpcError, Status};
use taskio::AlignedBuf;
use vssd::TranOutcome;

use crate::peer::outcome_of;
use crate::replica::{InDoubtTran, Replica, ReplicaError, ReplicaErrorKind, ReplicaInfo};

/// One replica vSSD on a peer CVA. See the module documentation.
pub struct RemoteReplica {
    client: Client,
    handle: u64,
    member: u64,
    name: String,
    /// Updated by `set_epoch`: the opening then belongs to that epoch.
    info: RefCell<ReplicaInfo>,
}

impl RemoteReplica {
    /// Connects to the peer at `addr` and opens its vSSD `vssd` at `epoch`, as member
    /// `member` of the device. `config.call_timeout` bounds every call, this one's
    /// VSSD_OPEN too. `info().tran_lines_max` is at most what one VSSD_WRITEP1 of this
    /// connection can carry.
    pub fn open(
        addr: SocketAddr,
        vssd: &str,
        epoch: u64,
        member: u64,
        config: &ClientConfig,
    ) -> Result<RemoteReplica, ReplicaError> {
        const OP: &str = "open";
        let name = format!("{addr}/{vssd}");
        let client = Client::connect(addr, config).map_err(|e| ReplicaError {
            op: OP,
            replica: name.clone(),
            kind: ReplicaErrorKind::Unreachable(e.to_string()),
        })?;
        let mut r = RemoteReplica {
            client,
            handle: 0,
            member,
            name,
            info: RefCell::new(ReplicaInfo {
                line_size: 0,
                lines: 0,
                epoch: 0,
                members: Vec::new(),
                tran_lines_max: 0,
            }),
        };
        let reply = r.call(OP, Request::VssdOpen { name: vssd, epoch })?;
        let (handle, info) = match r.response(OP, &reply)? {
            Response::VssdOpen { handle, info } => (handle, info),
            other => return Err(r.unexpected(OP, &other)),
        };
        let per_write = u64::from(r.client.data_len_max() / info.line_size).max(1);
        r.handle = handle;
        *r.info.get_mut() = ReplicaInfo {
            line_size: info.line_size,
            lines: info.line_count,
            epoch: info.epoch,
            members: info.members,
            tran_lines_max: info.tran_lines_max.min(per_write),
        };
        Ok(r)
    }

    /// Closes the opening on the peer (VSSD_CLOSE) and the connection. Dropping a
    /// `RemoteReplica` closes the connection, which closes the opening too.
    pub fn close(self) -> Result<(), ReplicaError> {
        const OP: &str = "close";
        let reply = self.call(
            OP,
            Request::VssdClose {
                handle: self.handle,
            },
        )?;
        match self.response(OP, &reply)? {
            Response::VssdClose => Ok(()),
            other => Err(self.unexpected(OP, &other)),
        }
    }

    fn error(&self, op: &'static str, kind: ReplicaErrorKind) -> ReplicaError {
        ReplicaError {
            op,
            replica: self.name.clone(),
            kind,
        }
    }

    /// Sends `request` and waits for its answer, whatever its status.
    fn call(&self, op: &'static str, request: Request<'_>) -> Result<Reply, ReplicaError> {
        self.client.call(request).map_err(|e| {
            let kind = match e {
                RpcError::TimedOut { .. } => ReplicaErrorKind::Timeout,
                e if e.closes_connection() => ReplicaErrorKind::Unreachable(e.to_string()),
                // Nothing was sent: the request does not fit the wire.
                e => ReplicaErrorKind::Refused(e.to_string()),
            };
            self.error(op, kind)
        })
    }

    /// The answer of an OK reply; a failure status as its kind.
    fn response<'r>(
        &self,
        op: &'static str,
        reply: &'r Reply,
    ) -> Result<Response<'r>, ReplicaError> {
        let response = reply
            .response()
            .map_err(|e| self.error(op, ReplicaErrorKind::Io(format!("damaged answer: {e}"))))?;
        let kind = match response {
            Response::StaleEpoch { epoch, .. } => ReplicaErrorKind::StaleEpoch {
                replica_epoch: epoch,
            },
            Response::Error { status, reason, .. } => {
                let why = format!("{status}: {reason}");
                match status {
                    Status::NotFound => ReplicaErrorKind::NotFound(why),
                    Status::Timeout => ReplicaErrorKind::Timeout,
                    Status::NoDevice => ReplicaErrorKind::Unreachable(why),
                    Status::IoError | Status::NoSpace => ReplicaErrorKind::Io(why),
                    _ => ReplicaErrorKind::Refused(why),
                }
            }
            ok => return Ok(ok),
        };
        Err(self.error(op, kind))
    }

    /// An OK answer that does not answer the request (the client already checked
    /// its type): the peer broke the protocol.
    fn unexpected(&self, op: &'static str, got: &Response<'_>) -> ReplicaError {
        self.protocol(op, format!("unexpected answer {got:?}"))
    }

    fn protocol(&self, op: &'static str, what: String) -> ReplicaError {
        self.error(
            op,
            ReplicaErrorKind::Io(format!("peer broke the protocol: {what}")),
        )
    }

    /// Calls `request`, which answers with no payload.
    fn call_done(&self, op: &'static str, request: Request<'_>) -> Result<(), ReplicaError> {
        let reply = self.call(op, request)?;
        match self.response(op, &reply)? {
            Response::VssdWritep1
            | Response::VssdCommit
            | Response::VssdAbort
            | Response::VssdEpoch
            | Response::VssdRepair
            | Response::VssdCopyIn => Ok(()),
            other => Err(self.unexpected(op, &other)),
        }
    }
}

impl Replica for RemoteReplica {
    fn member(&self) -> u64 {
        self.member
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> ReplicaInfo {
        self.info.borrow().clone()
    }

    fn writep1(&self, tran: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.call_done(
            "writep1",
            Request::VssdWritep1 {
                handle: self.handle,
                tran,
                line,
                data,
            },
        )
    }

    fn commit(&self, trans: &[u64]) -> Result<(), ReplicaError> {
        // Bounded: one request per COMMIT_TRANS_MAX trans.
        for batch in trans.chunks(COMMIT_TRANS_MAX) {
            self.call_done(
                "commit",
                Request::VssdCommit {
                    handle: self.handle,
                    trans: batch.to_vec(),
                },
            )?;
        }
        Ok(())
    }

    fn abort(&self, tran: u64) -> Result<(), ReplicaError> {
        self.call_done(
            "abort",
            Request::VssdAbort {
                handle: self.handle,
                tran,
            },
        )
    }

    fn read(&self, line: u64, buf: &mut AlignedBuf) -> Result<Option<u64>, ReplicaError> {
        const OP: &str = "read";
        let line_size = self.info.borrow().line_size;
        assert!(
            buf.capacity() >= line_size as usize,
            "read into a buffer of {} bytes, lines are {line_size}",
            buf.capacity(),
        );
        let reply = self.call(
            OP,
            Request::VssdRead {
                handle: self.handle,
                line,
                length: line_size,
            },
        )?;
        match self.response(OP, &reply) {
            Ok(Response::VssdRead { version, data }) => {
                // The client checked it is at most the line size asked for.
                buf.set_len(data.len());
                buf.copy_from_slice(data);
                Ok(Some(version))
            }
            Ok(other) => Err(self.unexpected(OP, &other)),
            Err(ReplicaError {
                kind: ReplicaErrorKind::NotFound(_),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_prepared(&self, tran: u64) -> Result<AlignedBuf, ReplicaError> {
        const OP: &str = "read_prepared";
        let reply = self.call(
            OP,
            Request::VssdReadPrepared {
                handle: self.handle,
                tran,
            },
        )?;
        match self.response(OP, &reply)? {
            Response::VssdReadPrepared { data } => {
                let mut b = AlignedBuf::new(data.len());
                b.set_len(data.len());
                b.copy_from_slice(data);
                Ok(b)
            }
            other => Err(self.unexpected(OP, &other)),
        }
    }

    fn repair(&self, tran: u64, payload: &AlignedBuf) -> Result<(), ReplicaError> {
        self.call_done(
            "repair",
            Request::VssdRepair {
                handle: self.handle,
                tran,
                data: payload,
            },
        )
    }

    fn copy_in(&self, version: u64, line: u64, data: &AlignedBuf) -> Result<(), ReplicaError> {
        self.call_done(
            "copy_in",
            Request::VssdCopyIn {
                handle: self.handle,
                version,
                line,
                data,
            },
        )
    }

    fn clean(&self, line: u64, version: u64) -> Result<bool, ReplicaError> {
        const OP: &str = "clean";
        let reply = self.call(
            OP,
            Request::VssdClean {
                handle: self.handle,
                line,
                version,
            },
        )?;
        match self.response(OP, &reply)? {
            Response::VssdClean { cleaned } => Ok(cleaned),
            other => Err(self.unexpected(OP, &other)),
        }
    }

    fn invalidate(&self, first: u64, count: u64) -> Result<u64, ReplicaError> {
        const OP: &str = "invalidate";
        // As the vSSD does: a range running past the last line id ends there.
        let count = count.min(u64::MAX - first);
        if count == 0 {
            return Ok(0);
        }
        let reply = self.call(
            OP,
            Request::VssdInvalidate {
                handle: self.handle,
                first,
                count,
            },
        )?;
        match self.response(OP, &reply)? {
            Response::VssdInvalidate { held } => Ok(held),
            other => Err(self.unexpected(OP, &other)),
        }
    }

    fn set_epoch(&self, epoch: u64, members: &[u64]) -> Result<(), ReplicaError> {
        self.call_done(
            "set_epoch",
            Request::VssdEpoch {
                handle: self.handle,
                epoch,
                members: members.to_vec(),
            },
        )?;
        // The opening now belongs to that epoch (as a LocalReplica's does).
        let mut info = self.info.borrow_mut();
        info.epoch = epoch;
        info.members = members.to_vec();
        Ok(())
    }

    fn outcome(&self, tran: u64) -> Result<TranOutcome, ReplicaError> {
        const OP: &str = "outcome";
        let reply = self.call(
            OP,
            Request::VssdOutcome {
                handle: self.handle,
                tran,
            },
        )?;
        match self.response(OP, &reply)? {
            Response::VssdOutcome { state } => Ok(outcome_of(state)),
            other => Err(self.unexpected(OP, &other)),
        }
    }

    fn in_doubt(&self, after: u64, max: usize) -> Result<(Vec<InDoubtTran>, bool), ReplicaError> {
        const OP: &str = "in_doubt";
        // The wire asks for one or more; for none, one says whether any follow.
        let ask = max.clamp(1, IN_DOUBT_PER_REPLY_MAX);
        let reply = self.call(
            OP,
            Request::VssdRecover {
                handle: self.handle,
                after_tran: after,
                max: ask as u32,
            },
        )?;
        let (listed, more) = match self.response(OP, &reply)? {
            Response::VssdRecover { in_doubt, more } => (in_doubt, more),
            other => return Err(self.unexpected(OP, &other)),
        };
        if listed.len() > ask || listed.first().is_some_and(|d| d.tran <= after) {
            return Err(self.protocol(OP, format!("{listed:?} answers {ask} after {after}")));
        }
        if max == 0 {
            return Ok((Vec::new(), more || !listed.is_empty()));
        }
        let trans = listed
            .into_iter()
            .map(|d| InDoubtTran {
                tran: d.tran,
                line: d.line,
                line_count: d.line_count,
                payload_len: d.payload_len,
                damaged: d.damaged,
            })
            .collect();
        Ok((trans, more))
    }

    fn dirty(&self, from: u64, max: usize) -> Result<Vec<(u64, u64)>, ReplicaError> {
        const OP: &str = "dirty";
        let mut lines: Vec<(u64, u64)> = Vec::new();
        let mut next = from;
        // Bounded: each round adds DIRTY_PER_REPLY_MAX lines or ends.
        while lines.len() < max {
            let ask = (max - lines.len()).min(DIRTY_PER_REPLY_MAX);
            let reply = self.call(
                OP,
                Request::VssdDirty {
                    handle: self.handle,
                    from: next,
                    max: ask as u32,
                },
            )?;
            let got = match self.response(OP, &reply)? {
                Response::VssdDirty { lines } => lines,
                other => return Err(self.unexpected(OP, &other)),
            };
            if got.len() > ask || got.first().is_some_and(|d| d.line < next) {
                return Err(self.protocol(OP, format!("{got:?} answers {ask} from {next}")));
            }
            let last = got.last().map(|d| d.line);
            lines.extend(got.iter().map(|d| (d.line, d.version)));
            match last {
                Some(line) if got.len() == ask && line < u64::MAX => next = line + 1,
                _ => break,
            }
        }
        Ok(lines)
    }
}
