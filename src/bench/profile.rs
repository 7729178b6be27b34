//! Use-case profiles (prompt tokens / generated tokens) and the seed model card's latencies.

use crate::{Error, Result};
use serde::Serialize;

/// One single-stream request shape: `prompt` random tokens, then exactly `generate` new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub prompt: usize,
    pub generate: usize,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.prompt, self.generate)
    }
}

/// The seed model card's vLLM single-stream latencies for DeepSeek-R1-Distill-Llama-70B
/// FP8-dynamic on 2×H100: (prompt, generated, seconds).
pub const SEED: [(usize, usize, f64); 8] = [
    (256, 128, 2.7),
    (512, 256, 5.3),
    (768, 128, 2.7),
    (1024, 128, 2.8),
    (256, 1024, 21.1),
    (1024, 1024, 21.4),
    (4096, 512, 11.5),
    (10240, 1536, 47.2),
];

/// The seed's latency for `p`, when the model card lists that profile.
pub fn seed_latency(p: Profile) -> Option<f64> {
    SEED.iter()
        .find(|&&(a, b, _)| a == p.prompt && b == p.generate)
        .map(|&(_, _, s)| s)
}

/// Parses `--profiles`: a comma-separated list of `PROMPT/GENERATED` pairs and/or `seed`
/// (the model card's eight profiles), e.g. `seed`, `32/8,128/32`.
pub fn parse_profiles(text: &str) -> Result<Vec<Profile>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.eq_ignore_ascii_case("seed") {
            out.extend(
                SEED.iter()
                    .map(|&(prompt, generate, _)| Profile { prompt, generate }),
            );
            continue;
        }
        out.push(parse_one(item)?);
    }
    Ok(out)
}

fn parse_one(item: &str) -> Result<Profile> {
    let bad = |why: &str| {
        Error::Unsupported(format!(
            "--profiles: `{item}` {why} (expected PROMPT/GENERATED like 256/128, or `seed`)"
        ))
    };
    let (a, b) = item.split_once('/').ok_or_else(|| bad("has no `/`"))?;
    let num = |s: &str| s.trim().parse::<usize>().ok().filter(|&n| n > 0);
    match (num(a), num(b)) {
        (Some(prompt), Some(generate)) => Ok(Profile { prompt, generate }),
        _ => Err(bad("is not two positive whole numbers")),
    }
}
