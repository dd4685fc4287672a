//! The command line (clap) and the commands that are one or a few calls.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use rpc::{Request, Response};

use crate::conn::{CliError, Conn, Op};
use crate::load::{BenchArgs, VerifyArgs};
use crate::units::parse_bytes;

/// Lines of a script at most (a runaway file is refused, not run).
const SCRIPT_LINES_MAX: usize = 100_000;
/// Bytes `read` prints as a hex dump when no `-o` is given, at most.
const HEXDUMP_MAX: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "cvacli",
    about = "CVA remote client: administers, exercises and measures a cvad"
)]
pub struct Cli {
    /// The cvad to talk to.
    #[arg(long, default_value = "127.0.0.1:7450", global = true)]
    pub server: SocketAddr,
    /// A file holding the server's shared secret.
    #[arg(long, global = true)]
    pub secret_file: Option<PathBuf>,
    /// Open devices read-only (for read, stat, bench and verify --check: the
    /// server refuses a write, discard or flush on them).
    #[arg(long, global = true)]
    pub read_only: bool,
    /// Microseconds to poll for the server's answers before sleeping, yielding the
    /// CPU between polls (the window adapts below this bound; 0: sleep at once).
    /// Like fio's `hipri`: the answer at queue depth 1 finds cvacli awake.
    #[arg(
        long,
        default_value_t = rpc::BUSY_POLL_US_DEFAULT,
        global = true,
        value_parser = clap::value_parser!(u64).range(0..=rpc::BUSY_POLL_US_MAX)
    )]
    pub busy_poll_us: u64,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// One line of a script: a command without the connection flags.
#[derive(Parser, Debug)]
#[command(name = "script-line", no_binary_name = true)]
struct ScriptLine {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Round trip to the server.
    Ping,
    /// A device's counters (or the server's, without DEV), grouped by prefix.
    Stat {
        dev: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Reads LEN bytes at OFF (hex dump, or to FILE).
    Read {
        dev: String,
        #[arg(value_parser = parse_bytes)]
        off: u64,
        #[arg(value_parser = parse_bytes)]
        len: u64,
        #[arg(short = 'o')]
        output: Option<PathBuf>,
    },
    /// Writes FILE's bytes, or LEN bytes of BYTE, at OFF.
    Write {
        dev: String,
        #[arg(value_parser = parse_bytes)]
        off: u64,
        #[arg(short = 'i', conflicts_with_all = ["pattern", "len"])]
        input: Option<PathBuf>,
        #[arg(long, value_parser = parse_byte, requires = "len")]
        pattern: Option<u8>,
        #[arg(long, value_parser = parse_bytes, requires = "pattern")]
        len: Option<u64>,
    },
    /// Makes every acknowledged write durable down to where the cache mode writes.
    Flush { dev: String },
    /// Discards LEN bytes at OFF.
    Discard {
        dev: String,
        #[arg(value_parser = parse_bytes)]
        off: u64,
        #[arg(value_parser = parse_bytes)]
        len: u64,
    },
    /// Runs FILE's commands, one a line (# comments), on one connection; stops at
    /// the first that fails.
    Script { file: PathBuf },
    /// Creates, lists, shows, changes and deletes devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Sets a device's cache mode (write-back, write-through, write-around, pass-through).
    Mode { dev: String, mode: String },
    /// Measures I/O with fio's words.
    Bench(BenchArgs),
    /// Writes self-describing blocks under a journal, or checks them (--check).
    Verify(VerifyArgs),
}

#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// Creates a device from its configuration file (TOML).
    Create {
        config: PathBuf,
    },
    List,
    Show {
        name: String,
    },
    /// Changes settings: KEY=VALUE ... (mode, destage_high_pct, ...).
    Set {
        name: String,
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Deletes a device; one holding dirty lines only with --dirty-lines naming how many.
    Delete {
        name: String,
        #[arg(long)]
        dirty_lines: Option<u64>,
    },
    /// Takes a device over on the server (--server) holding its replica vSSD: that
    /// server serves it from now on (recovery, a new epoch fencing the old primary).
    Takeover {
        name: String,
    },
}

fn parse_byte(text: &str) -> Result<u8, String> {
    let t = text.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => t.parse::<u8>(),
    };
    v.map_err(|e| format!("{text:?}: not a byte (0..=255 or 0x00..=0xff): {e}"))
}

/// Connects and runs the command.
pub fn run_cli(cli: Cli) -> Result<(), CliError> {
    let secret = match &cli.secret_file {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|source| CliError::File {
                what: "read the secret file",
                path: p.display().to_string(),
                source,
            })?;
            let secret = rpc::auth::secret_from_file(bytes)
                .map_err(|e| CliError::Usage(format!("secret file {}: {e}", p.display())))?;
            Some(secret)
        }
        None => None,
    };
    let io = taskio::IoConfig {
        poll_sockets_before_park: std::time::Duration::from_micros(cli.busy_poll_us),
        ..taskio::IoConfig::default()
    };
    let mut rt = taskio::Runtime::with_io(taskio::Config::default(), io)
        .map_err(|e| CliError::Runtime(format!("start the I/O runtime: {e}")))?;
    let steps = match cli.cmd {
        Cmd::Script { file } => script_steps(&file)?,
        cmd => vec![Step {
            at: String::new(),
            words: String::new(),
            cmd,
        }],
    };
    let (server, read_only) = (cli.server, cli.read_only);
    rt.run(move || -> Result<(), CliError> {
        let conn = Conn::connect(server, secret, read_only)?;
        let out = &mut std::io::stdout().lock();
        match steps.as_slice() {
            [one] if one.at.is_empty() => run(&conn, &one.cmd, out),
            _ => run_steps(&conn, &steps, out),
        }
    })
    .map_err(|e| CliError::Runtime(format!("runtime: {e}")))?
}

fn op<'a>(op: &'static str, device: &'a str, value: String) -> Op<'a> {
    Op { op, device, value }
}

/// Runs one command on `conn`, its output to `out`.
pub fn run(conn: &Conn, cmd: &Cmd, out: &mut dyn Write) -> Result<(), CliError> {
    let o = |e: std::io::Error| CliError::File {
        what: "write",
        path: "stdout".into(),
        source: e,
    };
    match cmd {
        Cmd::Ping => {
            let start = std::time::Instant::now();
            conn.call(
                &op("ping", "(server)", String::new()),
                Request::Ping { data: b"cvacli" },
                |r| matches!(r, Response::Ping { .. }).then_some(()),
            )?;
            let us = start.elapsed().as_micros();
            writeln!(out, "pong from {} in {us} us", conn.client.server_name()).map_err(o)
        }
        Cmd::Stat { dev, json } => {
            let counters = conn.stat(dev.as_deref())?;
            out.write_all(stat_text(&counters, *json).as_bytes())
                .map_err(o)
        }
        Cmd::Read {
            dev,
            off,
            len,
            output,
        } => {
            if output.is_none() && *len > HEXDUMP_MAX {
                return Err(CliError::Usage(format!(
                    "read {dev} {len}: more than {HEXDUMP_MAX} bytes to dump: give -o FILE"
                )));
            }
            match output {
                Some(p) => {
                    let path = p.display().to_string();
                    let file_err = |source| CliError::File {
                        what: "write the read data to",
                        path: path.clone(),
                        source,
                    };
                    let mut f = std::fs::File::create(p).map_err(file_err)?;
                    read(conn, dev, *off, *len, &mut |_, d: &[u8]| {
                        f.write_all(d).map_err(file_err)
                    })?;
                    f.sync_all().map_err(file_err)
                }
                None => read(conn, dev, *off, *len, &mut |at, d: &[u8]| {
                    out.write_all(hexdump(at, d).as_bytes()).map_err(o)
                }),
            }
        }
        Cmd::Write {
            dev,
            off,
            input,
            pattern,
            len,
        } => {
            let written = match (input, pattern, len) {
                (Some(p), _, _) => {
                    let path = p.display().to_string();
                    let mut f = std::fs::File::open(p).map_err(|source| CliError::File {
                        what: "open the data to write",
                        path: path.clone(),
                        source,
                    })?;
                    write(conn, dev, *off, &mut f, &path)?
                }
                (None, Some(b), Some(n)) => {
                    let mut pattern = std::io::repeat(*b).take(*n);
                    write(conn, dev, *off, &mut pattern, "--pattern")?
                }
                _ => {
                    return Err(CliError::Usage(format!(
                        "write {dev} {off}: give -i FILE or --pattern BYTE --len N"
                    )));
                }
            };
            writeln!(out, "wrote {written} bytes at {off} of {dev}").map_err(o)
        }
        Cmd::Flush { dev } => {
            let handle = conn.open(dev)?.handle;
            conn.call(
                &op("flush", dev, String::new()),
                Request::Flush { handle },
                |r| matches!(r, Response::Flush).then_some(()),
            )?;
            writeln!(out, "flushed {dev}").map_err(o)
        }
        Cmd::Discard { dev, off, len } => {
            let handle = conn.open(dev)?.handle;
            // The wire's DISCARD length is a u32: longer ranges go in pieces.
            let piece_max = u64::from(u32::MAX) / 2 + 1;
            let (mut at, end) = (*off, off.saturating_add(*len));
            while at < end {
                let n = (end - at).min(piece_max);
                conn.call(
                    &op("discard", dev, format!("offset {at} length {n}")),
                    Request::Discard {
                        handle,
                        offset: at,
                        length: n as u32,
                    },
                    |r| matches!(r, Response::Discard).then_some(()),
                )?;
                at += n;
            }
            writeln!(out, "discarded {len} bytes at {off} of {dev}").map_err(o)
        }
        // Parsed before the runtime starts (run_cli).
        Cmd::Script { file } => Err(CliError::Usage(format!(
            "script {}: a script does not run scripts",
            file.display()
        ))),
        Cmd::Device(d) => device(conn, d, out),
        Cmd::Mode { dev, mode } => {
            let settings = format!("mode = {}\n", toml_value(mode));
            set(conn, dev, &settings)?;
            writeln!(out, "{dev}: mode {mode}").map_err(o)
        }
        Cmd::Bench(args) => crate::load::bench(conn, args, out),
        Cmd::Verify(args) => crate::load::verify(conn, args, out),
    }
}

/// Reads `len` bytes at `off`, in pieces of the device's largest I/O, each handed
/// to `sink` with its offset (nothing held beyond one piece).
pub fn read(
    conn: &Conn,
    dev: &str,
    off: u64,
    len: u64,
    mut sink: impl FnMut(u64, &[u8]) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let open = conn.open(dev)?;
    let piece_max = u64::from(open.info.io_len_max.min(conn.client.data_len_max()));
    let (mut at, end) = (off, off.saturating_add(len));
    while at < end {
        let n = (end - at).min(piece_max);
        conn.call(
            &op("read", dev, format!("offset {at} length {n}")),
            Request::Read {
                handle: open.handle,
                offset: at,
                length: n as u32,
            },
            |r| match r {
                Response::Read { data } => Some(sink(at, data)),
                _ => None,
            },
        )??;
        at += n;
    }
    Ok(())
}

/// Writes what `source` holds at `off`, in pieces of the device's largest I/O
/// (nothing held beyond one piece); the bytes written.
pub fn write(
    conn: &Conn,
    dev: &str,
    off: u64,
    source: &mut dyn Read,
    source_name: &str,
) -> Result<u64, CliError> {
    let open = conn.open(dev)?;
    let piece_max = open.info.io_len_max.min(conn.client.data_len_max()) as usize;
    let mut piece = vec![0; piece_max];
    let mut at = off;
    // Bounded by the source's length: each pass writes a piece of it or ends.
    loop {
        let n = fill(source, &mut piece).map_err(|e| CliError::File {
            what: "read the data to write from",
            path: source_name.into(),
            source: e,
        })?;
        if n == 0 {
            return Ok(at - off);
        }
        conn.call(
            &op("write", dev, format!("offset {at} length {n}")),
            Request::Write {
                handle: open.handle,
                offset: at,
                data: &piece[..n],
            },
            |r| matches!(r, Response::Write).then_some(()),
        )?;
        at += n as u64;
    }
}

/// Reads until `buf` is full or the source ends; the bytes read.
fn fill(source: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn set(conn: &Conn, dev: &str, settings: &str) -> Result<(), CliError> {
    conn.call(
        &op("device set", dev, settings.trim().replace('\n', "; ")),
        Request::DeviceSet {
            name: dev,
            settings,
        },
        |r| matches!(r, Response::DeviceSet).then_some(()),
    )
}

/// A setting's value as TOML: numbers and booleans bare, the rest a string.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.into()
    } else {
        format!("{v:?}")
    }
}

fn device(conn: &Conn, cmd: &DeviceCmd, out: &mut dyn Write) -> Result<(), CliError> {
    let o = |e: std::io::Error| CliError::File {
        what: "write",
        path: "stdout".into(),
        source: e,
    };
    match cmd {
        DeviceCmd::Create { config } => {
            let text = std::fs::read_to_string(config).map_err(|source| CliError::File {
                what: "read the device configuration",
                path: config.display().to_string(),
                source,
            })?;
            let shown = config.display().to_string();
            conn.call(
                &op("device create", &shown, String::new()),
                Request::DeviceCreate { config: &text },
                |r| matches!(r, Response::DeviceCreate).then_some(()),
            )?;
            writeln!(out, "created the device of {shown}").map_err(o)
        }
        DeviceCmd::List => {
            let names = conn.call(
                &op("device list", "(server)", String::new()),
                Request::DeviceList,
                |r| match r {
                    Response::DeviceList { names } => {
                        Some(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    }
                    _ => None,
                },
            )?;
            for n in names {
                writeln!(out, "{n}").map_err(o)?;
            }
            Ok(())
        }
        DeviceCmd::Show { name } => {
            let text = conn.call(
                &op("device show", name, String::new()),
                Request::DeviceShow { name },
                |r| match r {
                    Response::DeviceShow { text } => Some(text.to_string()),
                    _ => None,
                },
            )?;
            writeln!(out, "{}", text.trim_end()).map_err(o)
        }
        DeviceCmd::Set { name, settings } => {
            let mut text = String::new();
            for s in settings {
                let (k, v) = s.split_once('=').ok_or_else(|| {
                    CliError::Usage(format!("device set {name}: {s:?} is not KEY=VALUE"))
                })?;
                let _ = writeln!(text, "{} = {}", k.trim(), toml_value(v.trim()));
            }
            set(conn, name, &text)?;
            writeln!(out, "{name}: set {}", settings.join(" ")).map_err(o)
        }
        DeviceCmd::Delete { name, dirty_lines } => {
            conn.call(
                &op(
                    "device delete",
                    name,
                    dirty_lines
                        .map(|n| format!("dirty lines {n}"))
                        .unwrap_or_default(),
                ),
                Request::DeviceDelete {
                    name,
                    dirty_lines: *dirty_lines,
                },
                |r| matches!(r, Response::DeviceDelete).then_some(()),
            )?;
            writeln!(out, "deleted {name}").map_err(o)
        }
        DeviceCmd::Takeover { name } => {
            let (epoch, committed, aborted, repaired) = conn.call(
                &op("device takeover", name, String::new()),
                Request::DeviceTakeover { name },
                |r| match r {
                    Response::DeviceTakeover {
                        epoch,
                        committed,
                        aborted,
                        repaired,
                    } => Some((epoch, committed, aborted, repaired)),
                    _ => None,
                },
            )?;
            writeln!(
                out,
                "took {name} over: epoch {epoch}; recovery committed {committed}, \
                 aborted {aborted}, repaired {repaired}"
            )
            .map_err(o)
        }
    }
}

/// One command of a script: where it is, its words, the command.
struct Step {
    at: String,
    words: String,
    cmd: Cmd,
}

/// Parses a script whole before anything runs (a typo on its last line stops it
/// before its first; and clap's parsing needs more stack than a task's).
fn script_steps(file: &Path) -> Result<Vec<Step>, CliError> {
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| CliError::File {
        what: "read the script",
        path: path.clone(),
        source,
    })?;
    if text.lines().count() > SCRIPT_LINES_MAX {
        return Err(CliError::Usage(format!(
            "{path}: more than {SCRIPT_LINES_MAX} lines"
        )));
    }
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if words.is_empty() {
            continue;
        }
        let at = format!("{path}:{}", i + 1);
        let parsed = ScriptLine::try_parse_from(&words)
            .map_err(|e| CliError::Usage(format!("{at}: {}", e.to_string().trim_end())))?;
        if matches!(parsed.cmd, Cmd::Script { .. }) {
            return Err(CliError::Usage(format!(
                "{at}: a script does not run scripts"
            )));
        }
        steps.push(Step {
            at,
            words: words.join(" "),
            cmd: parsed.cmd,
        });
    }
    Ok(steps)
}

fn run_steps(conn: &Conn, steps: &[Step], out: &mut dyn Write) -> Result<(), CliError> {
    for s in steps {
        writeln!(out, "> {}", s.words).map_err(|source| CliError::File {
            what: "write",
            path: "stdout".into(),
            source,
        })?;
        run(conn, &s.cmd, out).map_err(|e| CliError::Failed(format!("{}: {e}", s.at)))?;
    }
    Ok(())
}

/// Counters grouped by the prefix before their first '.' (`general` without one):
/// a table, or JSON `{group: {name: value}}`.
pub fn stat_text(counters: &[(String, u64)], json: bool) -> String {
    let mut groups: std::collections::BTreeMap<&str, Vec<(&str, u64)>> = Default::default();
    for (name, v) in counters {
        let (g, n) = name.split_once('.').unwrap_or(("general", name));
        groups.entry(g).or_default().push((n, *v));
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = groups
            .iter()
            .map(|(g, cs)| {
                let inner: serde_json::Map<String, serde_json::Value> = cs
                    .iter()
                    .map(|(n, v)| (n.to_string(), (*v).into()))
                    .collect();
                (g.to_string(), inner.into())
            })
            .collect();
        return format!("{}\n", serde_json::Value::from(obj));
    }
    let width = counters.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut s = String::new();
    for (g, cs) in &groups {
        let _ = writeln!(s, "{g}");
        for (n, v) in cs {
            let _ = writeln!(s, "  {n:<width$}  {v:>14}");
        }
    }
    s
}

fn hexdump(base: u64, data: &[u8]) -> String {
    let mut s = String::new();
    for (i, row) in data.chunks(16).enumerate() {
        let _ = write!(s, "{:012x} ", base + (i * 16) as u64);
        for b in row {
            let _ = write!(s, " {b:02x}");
        }
        let _ = write!(s, "{:width$}  |", "", width = (16 - row.len()) * 3);
        for &b in row {
            s.push(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            });
        }
        s.push_str("|\n");
    }
    s
}

/// Whether progress may redraw a bar (stdout is a terminal).
pub fn interactive() -> bool {
    std::io::stdout().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cvacli").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_parses_sizes_and_defaults() {
        let c = parse(&["read", "dev0", "4k", "1m", "-o", "/tmp/x"]).unwrap();
        assert_eq!(c.server.to_string(), "127.0.0.1:7450");
        match c.cmd {
            Cmd::Read {
                dev,
                off,
                len,
                output,
            } => {
                assert_eq!((dev.as_str(), off, len), ("dev0", 4096, 1 << 20));
                assert_eq!(output, Some(PathBuf::from("/tmp/x")));
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&[
            "--server",
            "10.0.0.1:9",
            "write",
            "d",
            "0",
            "--pattern",
            "0xab",
            "--len",
            "8k",
        ])
        .unwrap();
        assert_eq!(c.server.to_string(), "10.0.0.1:9");
        assert!(matches!(
            c.cmd,
            Cmd::Write {
                pattern: Some(0xab),
                len: Some(8192),
                input: None,
                ..
            }
        ));
        // A pattern without a length, a file and a pattern, a bad size: refused.
        assert!(parse(&["write", "d", "0", "--pattern", "1"]).is_err());
        assert!(parse(&["write", "d", "0", "-i", "f", "--pattern", "1", "--len", "1"]).is_err());
        assert!(parse(&["read", "d", "4q", "1"]).is_err());
        let c = parse(&[
            "bench",
            "d",
            "--rw",
            "randrw",
            "--rwmixread",
            "70",
            "--bs",
            "4k",
            "--iodepth",
            "32",
            "--runtime",
            "30s",
        ])
        .unwrap();
        match c.cmd {
            Cmd::Bench(b) => {
                assert_eq!((b.bs, b.iodepth, b.rwmixread), (4096, 32, 70));
                assert_eq!(b.runtime, Some(std::time::Duration::from_secs(30)));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["bench", "d", "--runtime", "1s", "--ops", "10"]).is_err());
        assert!(parse(&["device", "set", "d", "mode=write-through"]).is_ok());
        assert!(parse(&["verify", "d", "--journal", "j", "--check"]).is_ok());
    }

    #[test]
    fn stat_groups_by_prefix() {
        let c = vec![
            ("hits".to_string(), 5),
            ("latency.read_p50_us".to_string(), 12),
            ("latency.write_p50_us".to_string(), 40),
        ];
        let t = stat_text(&c, false);
        assert!(t.starts_with("general\n  hits"), "{t}");
        assert!(t.contains("latency\n  read_p50_us"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&stat_text(&c, true)).unwrap();
        assert_eq!(j["latency"]["write_p50_us"], 40);
        assert_eq!(j["general"]["hits"], 5);
    }

    #[test]
    fn settings_become_toml() {
        assert_eq!(toml_value("70"), "70");
        assert_eq!(toml_value("write-back"), "\"write-back\"");
        assert_eq!(parse_byte("0xff"), Ok(255));
        assert!(parse_byte("256").is_err());
    }

    #[test]
    fn hexdump_rows() {
        let d = hexdump(16, b"AB\x00");
        assert_eq!(
            d,
            format!("000000000010  41 42 00{}  |AB.|\n", " ".repeat(39))
        );
    }
}
