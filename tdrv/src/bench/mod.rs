//! The benchmark harness: each figure is measured over several samples, and reported
//! as its median, min and max, first as a table for people, then as one JSON line per
//! figure for machines (the format of DEVELOPERS.md):
//! `{"bench":"NAME","unit":"ns/op","median":F,"min":F,"max":F,"n":N}`.

mod cdev;
mod dtm;
mod io;
mod lat;
mod rpc;
mod taskio;
mod vssd;

use std::path::PathBuf;

/// One figure: its samples and what it is compared against.
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// The figure to reach, for the table ("<= 12").
    pub target: Option<&'static str>,
    /// Reference figures measured elsewhere, or details of this one, for the table.
    pub reference: Option<String>,
}

impl Figure {
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    pub fn median(&self) -> f64 {
        let s = self.sorted();
        let n = s.len();
        assert!(n > 0, "figure {} has no samples", self.name);
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }

    /// The JSON line, keys in the documented order.
    pub fn json(&self) -> String {
        let s = self.sorted();
        format!(
            "{{\"bench\":{},\"unit\":{},\"median\":{},\"min\":{},\"max\":{},\"n\":{}}}",
            serde_json::Value::from(self.name),
            serde_json::Value::from(self.unit),
            serde_json::Value::from(round3(self.median())),
            serde_json::Value::from(round3(s[0])),
            serde_json::Value::from(round3(s[s.len() - 1])),
            s.len()
        )
    }

    /// Whether the plan asks for this figure.
    pub fn wanted(plan: &Plan, name: &str) -> bool {
        plan.only.as_deref().is_none_or(|o| name.contains(o))
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// How much to measure.
#[derive(Clone)]
pub struct Plan {
    /// `--quick`: few, short samples.
    pub quick: bool,
    /// Only figures whose name contains this.
    pub only: Option<String>,
    /// `--file`: the file (or block device) the file I/O benchmarks (`io`, `vssd`) use.
    pub file: Option<PathBuf>,
    pub samples: usize,
    /// Operations per sample for cheap operations (scaled down for costly ones).
    pub ops: u64,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                only: None,
                file: None,
                samples: 3,
                ops: 10_000,
            }
        } else {
            Plan {
                quick,
                only: None,
                file: None,
                samples: 21,
                ops: 1_000_000,
            }
        }
    }
}

/// The bench areas `run` knows.
pub const AREAS: &[&str] = &["taskio", "io", "rpc", "vssd", "dtm", "cdev"];

pub fn run(
    area: &str,
    quick: bool,
    only: Option<&str>,
    file: Option<PathBuf>,
) -> Result<(), String> {
    let mut plan = Plan::new(quick);
    plan.only = only.map(str::to_string);
    if file.is_some() && area != "io" && area != "vssd" {
        return Err(format!(
            "--file applies to `bench io` and `bench vssd`, not to {area:?}"
        ));
    }
    plan.file = file;
    let figures = match area {
        "taskio" => taskio::run(&plan)?,
        "io" => io::run(&plan)?,
        "rpc" => rpc::run(&plan)?,
        "vssd" => vssd::run(&plan)?,
        "dtm" => dtm::run(&plan)?,
        "cdev" => cdev::run(&plan)?,
        other => {
            return Err(format!(
                "unknown bench area {other:?} (known: {})",
                AREAS.join(", ")
            ));
        }
    };
    print_table(area, &figures);
    for f in &figures {
        println!("{}", f.json());
    }
    Ok(())
}

fn print_table(area: &str, figures: &[Figure]) {
    let w = figures
        .iter()
        .map(|f| f.name.len())
        .chain([22])
        .max()
        .unwrap_or(22);
    let u = figures
        .iter()
        .map(|f| f.unit.len())
        .chain([8])
        .max()
        .unwrap_or(8);
    println!("tdrv bench {area} (median of n samples, release build)");
    println!(
        "{:<w$} {:>12} {:>12} {:>12} {:>6} {:>u$}  {:<10} reference",
        "bench", "median", "min", "max", "n", "unit", "target"
    );
    for f in figures {
        let s = f.sorted();
        println!(
            "{:<w$} {:>12.1} {:>12.1} {:>12.1} {:>6} {:>u$}  {:<10} {}",
            f.name,
            f.median(),
            s[0],
            s[s.len() - 1],
            s.len(),
            f.unit,
            f.target.unwrap_or("-"),
            f.reference.as_deref().unwrap_or("")
        );
    }
    println!();
}
