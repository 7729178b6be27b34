//! The benchmark's results: rows with the roofline and seed comparison, printed as a table or
//! JSON; and the memory bandwidth of known GPUs.

use super::profile::{seed_latency, Profile};
use super::runner::Timing;
use serde::Serialize;

/// Datasheet peak memory bandwidth (GB/s) of the GPUs the issue names, by CUDA device name.
pub fn peak_bandwidth(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let table: [(&[&str], f64); 6] = [
        (&["H200"], 4800.0),
        (&["H100", "PCIE"], 2000.0),
        (&["H100"], 3350.0),
        (&["A100", "80GB"], 2039.0),
        (&["A100"], 1555.0),
        (&["L40S"], 864.0),
    ];
    table
        .iter()
        .find(|(keys, _)| keys.iter().all(|k| n.contains(k)))
        .map(|&(_, bw)| bw)
}

/// One profile's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub profile: String,
    #[serde(flatten)]
    pub timing: Timing,
    /// Decode weight traffic as % of the bandwidth in [`BenchReport::bandwidth_gbps`].
    pub roofline_pct: f64,
    /// The seed model card's latency for this profile (seed-shaped models only).
    pub seed_latency_s: Option<f64>,
    pub faster_than_seed: Option<bool>,
}

impl Row {
    pub fn new(p: Profile, timing: Timing, bytes: u64, bw_gbps: f64, seed: bool) -> Row {
        let roofline_pct = 100.0 * bytes as f64 * timing.decode_tokens_per_s / (bw_gbps * 1e9);
        let seed_latency_s = seed.then(|| seed_latency(p)).flatten();
        Row {
            profile: p.to_string(),
            faster_than_seed: seed_latency_s.map(|s| timing.latency_s < s),
            roofline_pct,
            seed_latency_s,
            timing,
        }
    }
}

/// Everything `qforge bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `--model` as given, or `synthetic <shape>`.
    pub model: String,
    pub device: String,
    pub weight_bytes_per_token: u64,
    pub bandwidth_gbps: f64,
    /// Where the bandwidth comes from (datasheet peak, measured copy, ...).
    pub bandwidth_source: String,
    /// Whether the seed's figures are compared (the model has the seed's shape).
    pub seed_compared: bool,
    pub profiles: Vec<Row>,
}

impl BenchReport {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "qforge bench: {} on {}\nweights read per decode token: {:.2} GB; bandwidth {:.0} GB/s ({})\n\n",
            self.model,
            self.device,
            self.weight_bytes_per_token as f64 / 1e9,
            self.bandwidth_gbps,
            self.bandwidth_source
        );
        s += &format!(
            "{:>12} {:>11} {:>9} {:>12} {:>10}",
            "profile", "latency s", "TTFT s", "decode tok/s", "roofline %"
        );
        if self.seed_compared {
            s += &format!(" {:>16} {:>8}", "seed 2xH100 s", "vs seed");
        }
        s.push('\n');
        for r in &self.profiles {
            let t = &r.timing;
            s += &format!(
                "{:>12} {:>11.3} {:>9.3} {:>12.2} {:>10.1}",
                r.profile, t.latency_s, t.ttft_s, t.decode_tokens_per_s, r.roofline_pct
            );
            if self.seed_compared {
                let (seed, verdict) = match (r.seed_latency_s, r.faster_than_seed) {
                    (Some(v), Some(true)) => (format!("{v:.1}"), "faster"),
                    (Some(v), _) => (format!("{v:.1}"), "slower"),
                    _ => ("-".to_string(), ""),
                };
                s += &format!(" {seed:>16} {verdict:>8}");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_gpus_have_datasheet_bandwidth() {
        assert_eq!(peak_bandwidth("NVIDIA H200"), Some(4800.0));
        assert_eq!(peak_bandwidth("NVIDIA H100 80GB HBM3"), Some(3350.0));
        assert_eq!(peak_bandwidth("NVIDIA H100 PCIe"), Some(2000.0));
        assert_eq!(peak_bandwidth("NVIDIA A100-SXM4-80GB"), Some(2039.0));
        assert_eq!(peak_bandwidth("NVIDIA L40S"), Some(864.0));
        assert_eq!(peak_bandwidth("NVIDIA GeForce RTX 4090"), None);
    }

    #[test]
    fn rows_compare_with_the_seed() {
        let t = |latency_s| Timing {
            prompt_tokens: 256,
            generated_tokens: 128,
            latency_s,
            ttft_s: 0.1,
            decode_tokens_per_s: 50.0,
        };
        let p = Profile {
            prompt: 256,
            generate: 128,
        };
        let r = Row::new(p, t(2.0), 70_000_000_000, 4800.0, true);
        assert_eq!(
            (r.seed_latency_s, r.faster_than_seed),
            (Some(2.7), Some(true))
        );
        assert!((r.roofline_pct - 100.0 * 70.0 * 50.0 / 4800.0).abs() < 1e-9);
        let r = Row::new(p, t(3.0), 1, 1.0, true);
        assert_eq!(r.faster_than_seed, Some(false));
        let r = Row::new(p, t(3.0), 1, 1.0, false);
        assert_eq!((r.seed_latency_s, r.faster_than_seed), (None, None));
    }
}
