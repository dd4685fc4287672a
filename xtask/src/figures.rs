//! Benchmark figures of the benches xtask runs itself (`bench e2e`, `bench nbd`):
//! samples by name, printed as DEVELOPERS.md says (a table, then one JSON line per
//! figure: bench, unit, median, min, max, n).

use serde_json::Value;

/// One figure: its samples.
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
}

impl Figure {
    pub fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    pub fn median(&self) -> f64 {
        let s = self.sorted();
        assert!(!s.is_empty(), "figure {} has no samples", self.name);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }

    pub fn json(&self) -> String {
        let s = self.sorted();
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        format!(
            "{{\"bench\":{},\"unit\":{},\"median\":{},\"min\":{},\"max\":{},\"n\":{}}}",
            Value::from(self.name.as_str()),
            Value::from(self.unit),
            Value::from(r(self.median())),
            Value::from(r(s[0])),
            Value::from(r(s[s.len() - 1])),
            s.len()
        )
    }
}

#[derive(Default)]
pub struct Figures(pub Vec<Figure>);

impl Figures {
    pub fn add(&mut self, name: &str, unit: &'static str, value: f64) {
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push(value),
            None => self.0.push(Figure {
                name: name.to_string(),
                unit,
                samples: vec![value],
            }),
        }
    }

    pub fn median(&self, name: &str) -> Result<f64, String> {
        self.0
            .iter()
            .find(|f| f.name == name)
            .map(Figure::median)
            .ok_or_else(|| format!("no figure {name}"))
    }

    /// The table, then the JSON lines.
    pub fn print(&self) {
        println!(
            "\n{:<44} {:>7} {:>12} {:>12} {:>12} {:>3}",
            "bench", "unit", "median", "min", "max", "n"
        );
        for f in &self.0 {
            let s = f.sorted();
            println!(
                "{:<44} {:>7} {:>12.1} {:>12.1} {:>12.1} {:>3}",
                f.name,
                f.unit,
                f.median(),
                s[0],
                s[s.len() - 1],
                s.len()
            );
        }
        println!();
        for f in &self.0 {
            println!("{}", f.json());
        }
        println!();
    }
}

pub fn parse(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what}: not JSON ({e}): {text}"))
}

pub fn number(what: &str, v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("{what}: no number at {v}"))
}

/// `read` or `write`: the side of fio's JSON a run fills.
pub fn side(rw: &str) -> &'static str {
    if rw == "randread" { "read" } else { "write" }
}
