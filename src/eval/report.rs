//! The model card's table (task, metric, shots, reference, quantized, recovery, stderr) and
//! the progress bar over requests.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

use super::run::Aggregate;
use super::EvalReport;

/// A progress bar with ETA over requests, on stderr, drawn only on a terminal.
pub fn request_bar(label: &str, total: u64, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{label} {{bar:40}} {{pos}}/{{len}} requests {{per_sec}} eta {{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Rows of the table: groups first in the card's order, MMLU's subjects folded into `mmlu`.
fn shown(aggs: &[Aggregate]) -> Vec<&Aggregate> {
    aggs.iter()
        .filter(|a| !(a.task.starts_with("mmlu_") && aggs.iter().any(|b| b.task == "mmlu")))
        .collect()
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// The table as text.
pub fn table(r: &EvalReport) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "task",
        "metric",
        "shots",
        "reference",
        "quantized",
        "recovery %",
        "± stderr",
    ]
    .map(String::from)];
    let mut recoveries = Vec::new();
    for a in shown(&r.model.aggregates) {
        let reference = r.reference.as_ref().and_then(|m| {
            m.aggregates
                .iter()
                .find(|b| b.task == a.task && b.metric == a.metric)
        });
        let recovery = reference
            .filter(|b| b.value > 0.0)
            .map(|b| 100.0 * a.value / b.value);
        recoveries.extend(recovery);
        rows.push([
            a.task.clone(),
            a.metric.clone(),
            a.num_fewshot.to_string(),
            reference.map_or("-".into(), |b| pct(b.value)),
            pct(a.value),
            recovery.map_or("-".into(), |x| format!("{x:.2}")),
            a.stderr.map_or("N/A".into(), pct),
        ]);
    }
    if !recoveries.is_empty() {
        let mean = recoveries.iter().sum::<f64>() / recoveries.len() as f64;
        rows.push(["average", "", "", "", "", &format!("{mean:.2}"), ""].map(String::from));
    }
    render(&rows)
}

fn render(rows: &[[String; 7]]) -> String {
    let mut width = [0usize; 7];
    for row in rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(width)
            .enumerate()
            .map(|(j, (c, w))| match j {
                0 | 1 => format!("{c:<w$}"),
                _ => format!("{c:>w$}"),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let total = width.iter().sum::<usize>() + 2 * 6;
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// The perplexity report as text.
pub fn perplexity_table(r: &super::perplexity::PerplexityReport) -> String {
    let mut out = format!("rolling windows of {} tokens\n", r.context);
    let line = |name: &str, p: &super::perplexity::Perplexity| {
        format!(
            "{name:<10} tokens {}  word_perplexity {:.4}  byte_perplexity {:.4}  bits_per_byte {:.4}\n",
            p.tokens, p.word_perplexity, p.byte_perplexity, p.bits_per_byte
        )
    };
    if let Some(reference) = &r.reference {
        out.push_str(&line("reference", reference));
    }
    out.push_str(&line("model", &r.model));
    if let Some(kl) = &r.kl {
        out.push_str(&format!(
            "KL(reference || model) per token: mean {:.6}  median {:.6}  p99 {:.6}  p99.9 {:.6}\n\
             top-1 agreement {:.2}%  mean Δp {:+.4}%\n",
            kl.mean,
            kl.median,
            kl.p99,
            kl.p999,
            100.0 * kl.top1_agreement,
            100.0 * kl.mean_delta_p
        ));
    }
    out
}
