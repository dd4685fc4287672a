//! `verify`'s journal: a header naming the run, then one line per acknowledged
//! write, each made durable (fdatasync) before the write counts. The check reads it
//! back and judges every sector of every acknowledged region.
//!
//! Appends go through the taskio runtime's file I/O and commit in groups: the
//! records of the tasks that appended while an fdatasync ran are written and synced
//! together by the first of them, the others wait for it (one fdatasync per write
//! stalled the runtime thread when blocking, and serialised the writers when not).
//! A crash may tear the last group: `read` ignores a torn last line, and skips NULs
//! (a hole where a file system lost an unsynced write), records that never counted.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::block::{self, SECTOR, Sector};

const HEADER_WORD: &str = "cvacli-verify-journal-1";
/// Problems listed one by one in a report; past it they are only counted.
pub const PROBLEMS_LISTED_MAX: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path}: {op}: {source}")]
    Append {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<taskio::IoError>,
    },
    #[error("journal {path}: an earlier group of records failed: {why}")]
    Failed { path: PathBuf, why: String },
    #[error("journal {path} line {line}: {why}")]
    Bad {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// What the run wrote to: its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub device: String,
    pub seed: u64,
    /// Every write is one region of `bs` bytes at a multiple of it from `offset`.
    pub bs: u64,
    pub offset: u64,
    pub size: u64,
}

/// A journal read back: the run and, per region offset, its newest acknowledged
/// generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub run: Run,
    pub newest: BTreeMap<u64, u64>,
}

/// A journal open for appending (inside a taskio runtime).
pub struct Journal {
    file: taskio::file::File,
    path: PathBuf,
    /// Where the next group goes.
    end: Cell<u64>,
    /// Records appended but not yet written: at most one per appending task, each
    /// waits until its record is durable.
    pending: RefCell<Vec<u8>>,
    /// Records appended, and records durable (numbered from 1 in append order).
    appended: Cell<u64>,
    durable: Cell<u64>,
    /// A task is writing and syncing a group.
    syncing: Cell<bool>,
    /// Why a group failed: every later append fails too (what it waited for may be lost).
    failed: RefCell<Option<String>>,
    synced: taskio::Rendez,
    /// Groups synced so far (one fdatasync each).
    groups: Cell<u64>,
}

impl Journal {
    /// Creates the journal of a new run (refusing to overwrite one), or opens an
    /// existing one of the same run to go on with it.
    pub fn create_or_resume(path: &Path, run: &Run) -> Result<(Journal, Acked), JournalError> {
        let io = |op| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { op, path, source }
        };
        let acked = if path.exists() {
            let acked = read(path)?;
            if acked.run.device != run.device || acked.run.bs != run.bs {
                return Err(JournalError::Bad {
                    path: path.into(),
                    line: 1,
                    why: format!(
                        "written for device {} bs {}, not device {} bs {}",
                        acked.run.device, acked.run.bs, run.device, run.bs
                    ),
                });
            }
            acked
        } else {
            let mut f = File::create_new(path).map_err(io("create"))?;
            writeln!(
                f,
                "{HEADER_WORD} device={} seed={} bs={} offset={} size={}",
                run.device, run.seed, run.bs, run.offset, run.size
            )
            .map_err(io("write the header"))?;
            f.sync_all().map_err(io("fsync"))?;
            Acked {
                run: run.clone(),
                newest: BTreeMap::new(),
            }
        };
        let end = std::fs::metadata(path).map_err(io("stat"))?.len();
        let file = taskio::file::File::open(path).map_err(|e| JournalError::Append {
            op: "open for appending",
            path: path.into(),
            source: Box::new(e),
        })?;
        Ok((
            Journal {
                file,
                path: path.into(),
                end: Cell::new(end),
                pending: RefCell::new(Vec::new()),
                appended: Cell::new(0),
                durable: Cell::new(0),
                syncing: Cell::new(false),
                failed: RefCell::new(None),
                synced: taskio::Rendez::new(),
                groups: Cell::new(0),
            },
            acked,
        ))
    }

    /// Records an acknowledged write, durably: it counts once this returns.
    /// Many tasks may append at once (group commit).
    pub fn append(&self, offset: u64, generation: u64) -> Result<(), JournalError> {
        let mine = self.appended.get() + 1;
        self.appended.set(mine);
        self.pending
            .borrow_mut()
            .extend_from_slice(format!("w {offset} {generation}\n").as_bytes());
        // Bounded: each pass returns, or waits for the group being synced, after
        // which either this record is durable or this task syncs the next group.
        loop {
            if let Some(why) = self.failed.borrow().clone() {
                return Err(JournalError::Failed {
                    path: self.path.clone(),
                    why,
                });
            }
            if self.durable.get() >= mine {
                return Ok(());
            }
            if self.syncing.get() {
                self.synced.sleep();
                continue;
            }
            self.syncing.set(true);
            let group = std::mem::take(&mut *self.pending.borrow_mut());
            let upto = self.appended.get();
            let r = self.write_group(&group);
            self.syncing.set(false);
            match r {
                Ok(()) => {
                    self.durable.set(upto);
                    self.groups.set(self.groups.get() + 1);
                }
                Err(e) => {
                    *self.failed.borrow_mut() = Some(e.to_string());
                    self.synced.wakeup_all();
                    return Err(e);
                }
            }
            self.synced.wakeup_all();
        }
    }

    /// Groups synced so far (one fdatasync each).
    pub fn groups(&self) -> u64 {
        self.groups.get()
    }

    fn write_group(&self, group: &[u8]) -> Result<(), JournalError> {
        let io = |op| {
            let path = self.path.clone();
            move |e| JournalError::Append {
                op,
                path,
                source: Box::new(e),
            }
        };
        let at = self.end.get();
        self.end.set(at + group.len() as u64);
        self.file.write_at(group, at).map_err(io("append"))?;
        self.file.fdatasync().map_err(io("fdatasync"))
    }
}

/// Reads a journal back.
pub fn read(path: &Path) -> Result<Acked, JournalError> {
    let f = File::open(path).map_err(|source| JournalError::Io {
        op: "open",
        path: path.into(),
        source,
    })?;
    let bad = |line, why: String| JournalError::Bad {
        path: path.into(),
        line,
        why,
    };
    let mut lines = Vec::new();
    for l in BufReader::new(f).split(b'\n') {
        lines.push(l.map_err(|source| JournalError::Io {
            op: "read",
            path: path.into(),
            source,
        })?);
    }
    let complete = |i: usize| i + 1 < lines.len() || ends_with_newline(path);
    let head = lines.first().ok_or_else(|| bad(1, "empty".into()))?;
    let head = String::from_utf8_lossy(head);
    let mut words = head.split(' ');
    if words.next() != Some(HEADER_WORD) {
        return Err(bad(1, format!("not a verify journal (no {HEADER_WORD})")));
    }
    let mut field = |name: &str| -> Result<String, JournalError> {
        let w = words.next().unwrap_or_default();
        w.strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .map(String::from)
            .ok_or_else(|| bad(1, format!("{name}= expected, found {w:?}")))
    };
    let num = |v: String| v.parse::<u64>().map_err(|e| bad(1, format!("{v:?}: {e}")));
    let device = field("device")?;
    let run = Run {
        device,
        seed: num(field("seed")?)?,
        bs: num(field("bs")?)?,
        offset: num(field("offset")?)?,
        size: num(field("size")?)?,
    };
    let mut newest = BTreeMap::new();
    for (i, l) in lines.iter().enumerate().skip(1) {
        // NULs: a hole where a record's write never landed (see the module doc).
        let l = &l[l.iter().take_while(|&&b| b == 0).count()..];
        if l.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(l);
        let parts: Vec<&str> = text.split(' ').collect();
        let parsed = match parts.as_slice() {
            ["w", o, g] => o.parse::<u64>().ok().zip(g.parse::<u64>().ok()),
            _ => None,
        };
        match parsed {
            Some((o, g)) => {
                let e = newest.entry(o).or_insert(g);
                *e = (*e).max(g);
            }
            // A torn last line: its write was never acknowledged to the run.
            None if !complete(i) => {}
            None => return Err(bad(i + 1, format!("not a write record: {text:?}"))),
        }
    }
    Ok(Acked { run, newest })
}

fn ends_with_newline(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.last() == Some(&b'\n'))
}

/// What a check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub regions: u64,
    pub sectors_ok: u64,
    /// Not a verify sector where an acknowledged write was.
    pub lost: u64,
    /// An older generation than the newest acknowledged.
    pub stale: u64,
    /// Another place's, another run's, or a generation never written.
    pub foreign: u64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.lost + self.stale + self.foreign > 0
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(what);
        }
    }

    /// Judges the data read back of the region at `offset`, whose newest
    /// acknowledged generation is `acked`. Accepted: that generation, or the next
    /// one (in flight when the run stopped: one write per region at a time).
    pub fn judge(&mut self, seed: u64, offset: u64, acked: u64, data: &[u8]) {
        self.regions += 1;
        for (i, s) in data.chunks_exact(SECTOR).enumerate() {
            let at = offset + (i * SECTOR) as u64;
            match block::decode(s) {
                Sector::Garbage => {
                    self.lost += 1;
                    self.problem(format!(
                        "lost: sector {at}: not a verify sector (generation {acked} acknowledged)"
                    ));
                }
                Sector::Ours {
                    offset: o,
                    seed: sd,
                    generation: g,
                } if o != at || sd != seed || g > acked + 1 => {
                    self.foreign += 1;
                    self.problem(format!(
                        "foreign: sector {at}: holds offset {o} seed {sd} generation {g} (want offset {at} seed {seed} generation {acked})"
                    ));
                }
                Sector::Ours { generation: g, .. } if g < acked => {
                    self.stale += 1;
                    self.problem(format!(
                        "stale: sector {at}: generation {g}, {acked} acknowledged"
                    ));
                }
                Sector::Ours { .. } => self.sectors_ok += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::fill;
    use std::fs::OpenOptions;

    /// Runs `f` in a taskio runtime (the journal appends through it).
    fn in_runtime(f: impl FnOnce() + 'static) {
        taskio::Runtime::with_io(taskio::Config::default(), taskio::IoConfig::default())
            .unwrap()
            .run(f)
            .unwrap();
    }

    fn run() -> Run {
        Run {
            device: "dev0".into(),
            seed: 42,
            bs: 4096,
            offset: 0,
            size: 1 << 20,
        }
    }

    #[test]
    fn appended_writes_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        in_runtime(move || appended(&p));
    }

    fn appended(p: &Path) {
        let p = p.to_path_buf();
        let (j, acked) = Journal::create_or_resume(&p, &run()).unwrap();
        assert!(acked.newest.is_empty());
        j.append(4096, 1).unwrap();
        j.append(0, 1).unwrap();
        j.append(4096, 2).unwrap();
        drop(j);
        let a = read(&p).unwrap();
        assert_eq!(a.run, run());
        assert_eq!(a.newest, BTreeMap::from([(0, 1), (4096, 2)]));
        // Resumed: the same generations, appended to.
        let (j, again) = Journal::create_or_resume(&p, &run()).unwrap();
        assert_eq!(again, a);
        j.append(0, 2).unwrap();
        assert_eq!(read(&p).unwrap().newest[&0], 2);
        // Another device's run is refused.
        let other = Run {
            device: "dev1".into(),
            ..run()
        };
        assert!(Journal::create_or_resume(&p, &other).is_err());
    }

    #[test]
    fn tasks_appending_at_once_commit_in_groups() {
        const TASKS: u64 = 32;
        const EACH: u64 = 10;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let q = p.clone();
        in_runtime(move || {
            let (j, _) = Journal::create_or_resume(&q, &run()).unwrap();
            let j = std::rc::Rc::new(j);
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let j = j.clone();
                    taskio::spawn(move || {
                        for g in 1..=EACH {
                            j.append(t * 4096, g).unwrap();
                        }
                    })
                    .unwrap()
                })
                .collect();
            for t in tasks {
                t.join().unwrap();
            }
            assert!(j.groups() < TASKS * EACH / 2, "{} groups", j.groups());
        });
        let a = read(&p).unwrap();
        assert_eq!(a.newest.len() as u64, TASKS);
        assert!(a.newest.values().all(|&g| g == EACH), "{:?}", a.newest);
        let records = std::fs::read_to_string(&p).unwrap().lines().count() as u64 - 1;
        assert_eq!(records, TASKS * EACH);
    }

    #[test]
    fn a_torn_last_line_is_ignored_a_torn_middle_line_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let q = p.clone();
        in_runtime(move || {
            let (j, _) = Journal::create_or_resume(&q, &run()).unwrap();
            j.append(0, 1).unwrap();
        });
        // A hole where a record never landed, before one that did.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"\0\0\0\0\0\0\0\0\0w 8192 1\n\0\0\0\0\n")
            .unwrap();
        f.write_all(b"w 40").unwrap();
        assert_eq!(
            read(&p).unwrap().newest,
            BTreeMap::from([(0, 1), (8192, 1)])
        );
        f.write_all(b"96 x\nw 0 2\n").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 5") && e.contains("not a write record"),
            "{e}"
        );
    }

    #[test]
    fn the_check_tells_lost_stale_foreign_and_in_flight() {
        let bs = 4096;
        let mut r = Report::default();
        let mut b = vec![0; bs];
        // The acknowledged generation, and the one in flight: fine.
        fill(&mut b, 0, 42, 3);
        r.judge(42, 0, 3, &b);
        fill(&mut b, 0, 42, 4);
        r.judge(42, 0, 3, &b);
        assert!(!r.failed(), "{r:?}");
        assert_eq!(r.sectors_ok, 16);
        // Lost: zeros where a write was acknowledged.
        r.judge(42, 8192, 1, &vec![0; bs]);
        assert_eq!(r.lost, 8);
        // Stale: an older generation.
        fill(&mut b, 0, 42, 2);
        r.judge(42, 0, 3, &b);
        assert_eq!(r.stale, 8);
        // Foreign: another place's block, another run's, a generation never written.
        fill(&mut b, 4096, 42, 3);
        r.judge(42, 0, 3, &b);
        fill(&mut b, 0, 41, 3);
        r.judge(42, 0, 3, &b);
        fill(&mut b, 0, 42, 5);
        r.judge(42, 0, 3, &b);
        assert_eq!(r.foreign, 24);
        assert!(r.failed());
        assert_eq!(r.problems.len(), PROBLEMS_LISTED_MAX);
        assert!(
            r.problems[0].starts_with("lost: sector 8192"),
            "{:?}",
            r.problems
        );
    }
}
