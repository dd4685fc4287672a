//! What `bench` and `verify` show while they run: an indicatif bar (IOPS, MB/s,
//! elapsed/ETA) on a terminal, a plain line a second otherwise.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the plain lines come.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// How far a run is: by time or by operations.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    Time(Duration),
    Ops(u64),
}

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    last_plain: Instant,
    /// Operations the last plain line showed (the closing line is not repeated).
    shown_ops: Option<u64>,
    goal: Goal,
    label: &'static str,
    /// Plain lines when there is no bar (not with --json: stdout is the document).
    plain: bool,
}

impl Progress {
    pub fn new(label: &'static str, goal: Goal, interactive: bool, quiet: bool) -> Progress {
        let bar = (interactive && !quiet).then(|| {
            let len = match goal {
                Goal::Time(d) => d.as_millis() as u64,
                Goal::Ops(n) => n,
            };
            let b = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {msg} {elapsed_precise}/ETA {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(label);
            b
        });
        let now = Instant::now();
        Progress {
            bar,
            start: now,
            last_plain: now,
            shown_ops: None,
            goal,
            label,
            plain: !quiet,
        }
    }

    /// Shows `ops` operations and `bytes` bytes done so far.
    pub fn update(&mut self, ops: u64, bytes: u64) {
        self.show(ops, bytes, false);
    }

    /// The bar cleared; without one, the last plain line.
    pub fn finish(&mut self, ops: u64, bytes: u64) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None if self.shown_ops == Some(ops) => {}
            None => self.show(ops, bytes, true),
        }
    }

    fn show(&mut self, ops: u64, bytes: u64, last: bool) {
        let elapsed = self.start.elapsed();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let text = format!(
            "{:.0} IOPS, {:.1} MB/s",
            ops as f64 / secs,
            bytes as f64 / secs / 1e6
        );
        match &self.bar {
            Some(b) => {
                b.set_position(match self.goal {
                    Goal::Time(_) => elapsed.as_millis() as u64,
                    Goal::Ops(_) => ops,
                });
                b.set_message(text);
            }
            None if self.plain && (last || self.last_plain.elapsed() >= PLAIN_EVERY) => {
                self.last_plain = Instant::now();
                self.shown_ops = Some(ops);
                println!(
                    "{}: {:.1}s {ops} ops, {text}",
                    self.label,
                    elapsed.as_secs_f64()
                );
            }
            None => {}
        }
    }
}
