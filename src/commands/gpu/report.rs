//! The result table the GPU checks print (and write as JSON): one row per measurement, with
//! its limit and verdict, so a log shows at a glance what is wrong.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One measured value.
#[derive(Debug, Clone)]
pub struct Row {
    pub stage: String,
    pub check: String,
    pub value: String,
    pub limit: String,
    /// None = information only.
    pub pass: Option<bool>,
}

/// Rows gathered by a check run; printed as they come.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub extra: Vec<Value>,
    /// Where the JSON is rewritten after every row: a run killed by its time limit (the
    /// GPU check gives each stage one) still leaves what it measured.
    pub json: Option<PathBuf>,
}

impl Report {
    /// Adds and prints a row.
    pub fn row(
        &mut self,
        stage: &str,
        check: &str,
        value: String,
        limit: &str,
        pass: Option<bool>,
    ) {
        let verdict = match pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "info",
        };
        println!("| {stage} | {check} | {value} | {limit} | {verdict} |");
        self.rows.push(Row {
            stage: stage.into(),
            check: check.into(),
            value,
            limit: limit.into(),
            pass,
        });
        self.write_json(self.json.as_deref());
    }

    /// An information row.
    pub fn info(&mut self, stage: &str, check: &str, value: String) {
        self.row(stage, check, value, "", None);
    }

    /// A row that passes when `value <= limit`.
    pub fn at_most(&mut self, stage: &str, check: &str, value: f64, limit: f64) {
        let pass = value <= limit; // NaN fails
        self.row(
            stage,
            check,
            format!("{value:.3e}"),
            &format!("<= {limit:.1e}"),
            Some(pass),
        );
    }

    /// A stage that could not run (counts as a failure).
    pub fn error(&mut self, stage: &str, err: &str) {
        self.row(stage, "error", err.replace('|', "/"), "", Some(false));
    }

    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    pub fn header(title: &str) {
        println!(
            "\n### {title}\n\n| stage | check | value | limit | result |\n|---|---|---|---|---|"
        );
    }

    /// Writes rows and extra records to `path` as JSON (errors are printed, not fatal).
    pub fn write_json(&self, path: Option<&Path>) {
        let Some(path) = path else { return };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| json!({"stage": r.stage, "check": r.check, "value": r.value, "limit": r.limit, "pass": r.pass}))
            .collect();
        let v = json!({"rows": rows, "records": self.extra});
        let text = serde_json::to_string_pretty(&v).unwrap_or_default();
        // Through a sibling file and a rename: a run killed mid-write keeps the last whole
        // JSON.
        let tmp = path.with_extension("json.partial");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            eprintln!("qforge: cannot write {}: {e}", path.display());
        }
    }
}

/// `‖a − b‖₂ / ‖b‖₂` over the entries finite in both, the largest |a − b| there, and how
/// many entries are finite in only one of the two.
pub fn compare(a: &[f32], b: &[f32]) -> (f64, f64, usize) {
    let (mut num, mut den, mut max, mut odd) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        match (x.is_finite(), y.is_finite()) {
            (true, true) => {
                let d = (x as f64 - y as f64).abs();
                num += d * d;
                den += (y as f64) * (y as f64);
                max = max.max(d);
            }
            (false, false) => {}
            _ => odd += 1,
        }
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    (rel, max, odd + a.len().abs_diff(b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a JSON path, each row is on disk as soon as it is added: what a stage killed by
    /// its time limit measured before is kept.
    #[test]
    fn rows_reach_the_json_file_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut r = Report {
            json: Some(path.clone()),
            ..Report::default()
        };
        r.info("bench", "decode tokens/s", "41.0".into());
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["rows"][0]["value"], "41.0");
        r.extra.push(json!({"kind": "model"}));
        r.at_most("bench", "rel", 0.5, 0.1);
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["rows"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["rows"][1]["pass"], false);
        assert_eq!(v["records"][0]["kind"], "model");
    }
}
