//! Seeded random Llama-shaped checkpoints: the bundled default model, the benchmark inputs and
//! the `--synthetic` shapes. Values are a deterministic function of (seed, tensor name, index),
//! so the same command always writes the same bytes, whatever the thread count.

use crate::checkpoint::writer::{self, OutTensor};
use crate::checkpoint::DType;
use crate::{Error, Result};

pub mod weights;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

/// The dimensions of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
    /// The llama3 RoPE scaling factor (32 for Llama-3.2, 8 for Llama-3.1).
    pub rope_factor: f64,
}

/// Named shapes: `tiny` (the bundled default model: SmolLM2's vocabulary, 2 layers),
/// `llama-1b` (Llama-3.2-1B), `llama-8b` (Llama-3.1-8B), `llama-70b` (Llama-3.1-70B /
/// DeepSeek-R1-Distill-Llama-70B).
pub fn named_shape(name: &str) -> Option<LlamaShape> {
    let s = |hidden, intermediate, layers, heads, kv_heads, vocab, tied, rope_factor| LlamaShape {
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        vocab,
        tied,
        rope_factor,
    };
    Some(match name {
        "tiny" => s(48, 128, 2, 3, 1, 49152, true, 32.0),
        "llama-1b" => s(2048, 8192, 16, 32, 8, 128256, true, 32.0),
        "llama-8b" => s(4096, 14336, 32, 32, 8, 128256, false, 8.0),
        "llama-70b" => s(8192, 28672, 80, 64, 8, 128256, false, 8.0),
        _ => return None,
    })
}

/// Names accepted by [`named_shape`], for help texts and errors.
pub const SHAPE_NAMES: &str = "tiny, llama-1b, llama-8b, llama-70b";

impl LlamaShape {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// A transformers-4 style config.json (as meta-llama's Hub repos have), BF16.
    pub fn config(&self) -> Value {
        let (bos, eos) = if self.vocab == 49152 {
            (1, 2)
        } else {
            (128000, 128001)
        };
        json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": 131072,
            "mlp_bias": false,
            "model_type": "llama",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "factor": self.rope_factor,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3"
            },
            "rope_theta": 500000.0,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0",
            "use_cache": true,
            "vocab_size": self.vocab
        })
    }

    /// Number of parameters (elements of all tensors).
    pub fn parameters(&self) -> u64 {
        self.tensors().iter().map(|t| t.numel()).sum()
    }

    /// Every tensor of the checkpoint, in state-dict (module) order.
    pub fn tensors(&self) -> Vec<OutTensor> {
        let t = |name: String, shape: Vec<usize>| OutTensor {
            name,
            dtype: DType::BF16,
            shape,
        };
        let (h, kv) = (self.hidden, self.kv_heads * self.head_dim());
        let mut out = vec![t("model.embed_tokens.weight".into(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push(t(format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push(t(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push(t(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push(t(format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push(t(
                format!("{p}.mlp.gate_proj.weight"),
                vec![self.intermediate, h],
            ));
            out.push(t(
                format!("{p}.mlp.up_proj.weight"),
                vec![self.intermediate, h],
            ));
            out.push(t(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, self.intermediate],
            ));
            out.push(t(format!("{p}.input_layernorm.weight"), vec![h]));
            out.push(t(format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(t("model.norm.weight".into(), vec![h]));
        if !self.tied {
            out.push(t("lm_head.weight".into(), vec![self.vocab, h]));
        }
        out
    }
}

/// How the random values are drawn: uniform with the given standard deviation around `mean`.
fn distribution(name: &str, shape: &LlamaShape) -> (f32, f32) {
    if name.ends_with("norm.weight") {
        (1.0, 0.1)
    } else if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
        // Large enough that the logits of the tied head have clear winners (so greedy decoding
        // is stable under FP8 noise), yet far from any overflow.
        (0.0, 1.0)
    } else {
        // Residual branches scaled like a trained model's, so each layer moves the stream a
        // little and the forward pass stays finite for any depth.
        (0.0, 1.2 / (shape.hidden as f32).sqrt())
    }
}

/// SplitMix64: tiny, fast, and good enough for weights nobody trains.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(splitmix(seed), |h, b| splitmix(h ^ u64::from(b)))
}

const CHUNK: usize = 1 << 16;

/// Elements generated and written at a time (a multiple of `CHUNK`, so values do not depend on it).
const WRITE_CHUNK: usize = 64 * CHUNK;

/// Fills `out` (BF16 little-endian bytes of tensor `name`, elements `first ..`) with its values.
pub fn fill_bf16(seed: u64, name: &str, shape: &LlamaShape, first: usize, out: &mut [u8]) {
    let (mean, std) = distribution(name, shape);
    let half_width = std * 3f32.sqrt();
    let base = name_seed(seed, name);
    out.par_chunks_mut(2 * CHUNK)
        .enumerate()
        .for_each(|(c, bytes)| {
            let start = first + c * CHUNK;
            for (i, pair) in bytes.chunks_exact_mut(2).enumerate() {
                let r = splitmix(base ^ (start + i) as u64);
                let u = (r >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                let v = mean + half_width * (2.0 * u - 1.0);
                pair.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
        });
}

/// Writes a random BF16 checkpoint of `shape` into `dir` (config.json, generation_config.json,
/// safetensors shards + index), streaming tensor by tensor.
pub fn write_checkpoint(
    shape: &LlamaShape,
    dir: &Path,
    seed: u64,
    max_shard_bytes: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = shape.tensors();
    let shards = writer::plan_shards(&tensors, max_shard_bytes);
    let mut buf = Vec::new();
    let total = tensors.iter().map(|t| t.nbytes()).sum();
    let bar = crate::progress::progress_bar("writing", total, true);
    for shard in &shards {
        let w = writer::ShardWriter::create(&dir.join(&shard.file_name), shard)?;
        for t in &shard.tensors {
            let n = t.numel() as usize;
            let mut first = 0;
            while first < n {
                let len = (n - first).min(WRITE_CHUNK);
                buf.resize(len * 2, 0);
                fill_bf16(seed, &t.name, shape, first, &mut buf);
                w.write_at(&t.name, 2 * first as u64, &buf)?;
                bar.inc(buf.len() as u64);
                first += len;
            }
        }
        w.finish()?;
    }
    bar.finish_and_clear();
    if shards.len() > 1 {
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, writer::index_json(&shards)).map_err(|e| Error::io(&path, e))?;
    }
    let cfg = crate::format::pyjson::dumps(&shape.config(), true);
    let path = dir.join("config.json");
    std::fs::write(&path, cfg).map_err(|e| Error::io(&path, e))?;
    let cfg = shape.config();
    let gen = json!({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "do_sample": false});
    let path = dir.join("generation_config.json");
    std::fs::write(&path, crate::format::pyjson::dumps(&gen, true)).map_err(|e| Error::io(&path, e))
}

/// Copies the tokenizer and chat-template files of the model at `src` into `dst`.
pub fn copy_tokenizer(src: &Path, dst: &Path) -> Result<()> {
    let names = [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens_map.json",
    ];
    for name in names {
        let from = src.join(name);
        if from.is_file() {
            crate::output::copy_file(&from, &dst.join(name))?;
        }
    }
    Ok(())
}
