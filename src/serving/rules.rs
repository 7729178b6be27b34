//! vLLM's rules, one table: what a Linear layer must satisfy, split N ways, for vLLM to
//! create its weights and find a kernel, and which GPU generations run each scheme. Every
//! rule names the vLLM 0.32.0 file it comes from (docs/serving.md lists them); the messages
//! are vLLM's own wording where it has one.

use super::model::{Dims, Layer, Parallel};
use super::scheme::VllmScheme;

/// The vLLM version the rules were read from.
pub const VLLM_VERSION: &str = "0.32.0";

/// One layer as a tensor-parallel rank holds it (vLLM's `create_weights` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub tp: usize,
    pub parallel: Parallel,
    /// `input_size`: the layer's input features.
    pub input_size: usize,
    pub input_size_per_partition: usize,
    /// `output_size`: the layer's output features (all parts; for q/k/v with replicated KV
    /// heads, the per-rank sizes times tp, as `QKVParallelLinear` computes it).
    pub output_size: usize,
    /// `output_partition_sizes`: each part's output features on one rank.
    pub output_partition_sizes: Vec<usize>,
}

impl Partition {
    pub fn output_size_per_partition(&self) -> usize {
        self.output_partition_sizes.iter().sum()
    }
}

/// KV heads on one rank: vLLM replicates KV heads when there are fewer than ranks.
pub fn kv_heads_per_rank(dims: &Dims, tp: usize) -> usize {
    (dims.kv_heads / tp).max(1)
}

/// The shape vLLM gives `layer` on one of `tp` ranks, or the failed tensor-parallel rule
/// (checked first: the shapes only exist once heads and features divide).
pub fn partition(dims: &Dims, layer: &Layer, tp: usize) -> Result<Partition, Violation> {
    for rule in TP_RULES {
        if let Some(message) = (rule.check)(dims, layer, tp) {
            return Err(Violation {
                rule: rule.id,
                source: rule.source,
                message,
            });
        }
    }
    let (inputs, outputs) = match layer.parallel {
        Parallel::Row => (layer.in_features / tp, layer.out_features.clone()),
        Parallel::MergedColumn => (
            layer.in_features,
            layer.out_features.iter().map(|o| o / tp).collect(),
        ),
        Parallel::Qkv => {
            let kv = kv_heads_per_rank(dims, tp) * dims.head_dim;
            (
                layer.in_features,
                vec![dims.heads / tp * dims.head_dim, kv, kv],
            )
        }
    };
    // QKVParallelLinear's output_size is its per-rank sizes times tp (KV heads replicated),
    // not the checkpoint's q + k + v.
    let output_size = match layer.parallel {
        Parallel::Qkv => outputs.iter().sum::<usize>() * tp,
        _ => layer.out_features.iter().sum(),
    };
    Ok(Partition {
        tp,
        parallel: layer.parallel,
        input_size: layer.in_features,
        input_size_per_partition: inputs,
        output_size,
        output_partition_sizes: outputs,
    })
}

/// A rule that does not hold: its id, the vLLM file it comes from, and the message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub source: &'static str,
    pub message: String,
}

/// A rule of the model's split, whatever the quantization.
pub struct TpRule {
    pub id: &'static str,
    pub source: &'static str,
    check: fn(&Dims, &Layer, usize) -> Option<String>,
}

/// A rule on one quantized layer's partition.
pub struct Rule {
    pub id: &'static str,
    /// What it asks, for `docs/serving.md` and `--json`.
    pub what: &'static str,
    pub source: &'static str,
    /// `None` when the rule holds (or does not concern this scheme).
    check: fn(&VllmScheme, &Partition) -> Option<String>,
}

const LLAMA: &str = "vllm/model_executor/models/llama.py (LlamaAttention.__init__)";
const LINEAR: &str = "vllm/model_executor/layers/linear.py (MergedColumnParallelLinear, \
                      RowParallelLinear: divide)";
const FP8_UTILS: &str = "vllm/model_executor/layers/quantization/utils/fp8_utils.py \
                         (validate_fp8_block_shape)";
const WNA16: &str = "vllm/model_executor/layers/quantization/compressed_tensors/schemes/\
                     compressed_tensors_wNa16.py (create_weights)";
const MARLIN: &str = "vllm/model_executor/kernels/linear/mixed_precision/marlin.py \
                      (MarlinLinearKernel.can_implement), utils/marlin_utils.py";
const NVFP4: &str = "vllm/model_executor/layers/quantization/compressed_tensors/schemes/\
                     compressed_tensors_w4a4_nvfp4.py (create_weights)";
const MXFP4: &str = "vllm/model_executor/layers/quantization/compressed_tensors/schemes/\
                     compressed_tensors_w4a4_mxfp4.py (create_weights)";

fn not_divisible(n: usize, d: usize) -> Option<String> {
    (n % d != 0).then(|| format!("{n} is not divisible by {d}"))
}

/// The split of the model itself (any scheme, unquantized too).
pub static TP_RULES: &[TpRule] = &[
    TpRule {
        id: "tp.attention_heads",
        source: LLAMA,
        check: |d, l, tp| {
            (l.parallel == Parallel::Qkv && d.heads % tp != 0).then(|| {
                format!(
                    "num_attention_heads = {} is not divisible by tensor_parallel_size = {tp}",
                    d.heads
                )
            })
        },
    },
    TpRule {
        id: "tp.kv_heads",
        source: LLAMA,
        check: |d, l, tp| {
            let ok = if d.kv_heads >= tp {
                d.kv_heads % tp == 0
            } else {
                tp % d.kv_heads == 0
            };
            (l.parallel == Parallel::Qkv && !ok).then(|| {
                format!(
                    "num_key_value_heads = {} and tensor_parallel_size = {tp}: one must divide \
                     the other (KV heads are split, or replicated when fewer than ranks)",
                    d.kv_heads
                )
            })
        },
    },
    TpRule {
        id: "tp.split",
        source: LINEAR,
        check: |_, l, tp| {
            let sizes = match l.parallel {
                Parallel::Qkv => return None,
                Parallel::MergedColumn => &l.out_features[..],
                Parallel::Row => std::slice::from_ref(&l.in_features),
            };
            let what = match l.parallel {
                Parallel::Row => "input_size",
                _ => "output_size",
            };
            sizes.iter().find_map(|&n| {
                not_divisible(n, tp).map(|m| format!("{what} {m} (tensor_parallel_size)"))
            })
        },
    },
];

/// The quantized layers' rules, in the order vLLM meets them while creating the weights.
pub static RULES: &[Rule] = &[
    Rule {
        id: "fp8_block.block_k",
        what: "FP8 block: a row-parallel layer's input_size_per_partition is a multiple of \
               block_k (tensor-parallel > 1)",
        source: FP8_UTILS,
        check: |s, p| {
            let (_, k) = s.fp8_block()?;
            let split = p.tp > 1 && p.input_size / p.input_size_per_partition == p.tp;
            (split && p.input_size_per_partition % k != 0).then(|| {
                format!(
                    "Weight input_size_per_partition = {} is not divisible by weight \
                     quantization block_k = {k}.",
                    p.input_size_per_partition
                )
            })
        },
    },
    Rule {
        id: "fp8_block.block_n",
        what: "FP8 block: each output partition is a multiple of block_n, when split across \
               ranks or fused (q/k/v, gate/up; at tensor-parallel 1 the last fused part may \
               be ragged)",
        source: FP8_UTILS,
        check: |s, p| {
            let (n, _) = s.fp8_block()?;
            let sizes = &p.output_partition_sizes;
            let split = p.tp > 1 && p.output_size / p.output_size_per_partition() == p.tp;
            let checked = match (split, sizes.len() > 1) {
                (true, _) => &sizes[..],
                (false, true) => &sizes[..sizes.len() - 1],
                (false, false) => &[],
            };
            checked.iter().find(|&&o| o % n != 0).map(|o| {
                format!(
                    "Weight output_partition_size = {o} is not divisible by weight quantization \
                     block_n = {n}."
                )
            })
        },
    },
    Rule {
        id: "wna16.group_size",
        what: "int4/int8 weight-only: a group size a kernel implements (Marlin -1, 32, 64, \
               128; for int4 also Triton's 256)",
        source: MARLIN,
        check: |s, _| {
            let VllmScheme::Wna16 { bits, group, .. } = *s else {
                return None;
            };
            let g = group.map_or(-1, |g| g as i64);
            let marlin = [-1, 32, 64, 128].contains(&g);
            let triton = bits == 4 && g == 256;
            (!marlin && !triton).then(|| {
                format!(
                    "Group size ({g}) not supported by Marlin, supported group sizes are: \
                     [-1, 32, 64, 128]"
                )
            })
        },
    },
    Rule {
        id: "wna16.group_partition",
        what: "int4/int8 weight-only: each rank holds whole groups (input_size_per_partition \
               a multiple of group_size; channel-wise scales are replicated instead)",
        source: WNA16,
        check: |s, p| {
            let VllmScheme::Wna16 { group, .. } = *s else {
                return None;
            };
            // Group scales are always split with the inputs (only channel-wise scales of a
            // row-parallel layer are replicated), so each rank must hold whole groups.
            let g = group?;
            (p.input_size_per_partition % g != 0).then(|| {
                format!(
                    "Weight input_size_per_partition={} is not divisible by group_size={g}. \
                     This happens when tensor_parallel_size splits the layer input into \
                     shards that are not a whole number of quant groups.",
                    p.input_size_per_partition
                )
            })
        },
    },
    Rule {
        id: "wna16.pack_input",
        what: "int4/int8 weight-only: 32/bits codes per int32 along the input features, so \
               input_size_per_partition is a multiple of the pack factor (8 for int4)",
        source: WNA16,
        check: |s, p| {
            let VllmScheme::Wna16 { bits, .. } = *s else {
                return None;
            };
            let pack = 32 / bits as usize;
            (p.input_size_per_partition % pack != 0).then(|| {
                format!(
                    "input_size_per_partition = {} is not a multiple of the pack factor {pack} \
                     (weight_packed holds {pack} int{bits} codes per int32)",
                    p.input_size_per_partition
                )
            })
        },
    },
    Rule {
        id: "wna16.pack_zero_points",
        what: "asymmetric int4: zero points are packed 8 per int32 along the output \
               features, so each output partition is a multiple of 8",
        source: WNA16,
        check: |s, p| {
            let VllmScheme::Wna16 {
                bits,
                symmetric: false,
                ..
            } = *s
            else {
                return None;
            };
            let pack = 32 / bits as usize;
            let bad = p.output_partition_sizes.iter().find(|&&o| o % pack != 0)?;
            Some(format!(
                "output_partition_size = {bad} is not a multiple of the pack factor {pack} \
                 (weight_zero_point packs {pack} zero points per int32 along the outputs)"
            ))
        },
    },
    Rule {
        id: "nvfp4.group_partition",
        what: "NVFP4: input_size_per_partition is a multiple of 16 (one E4M3 scale per 16 \
               inputs, two FP4 codes per byte)",
        source: NVFP4,
        check: |s, p| {
            let nvfp4 = matches!(s, VllmScheme::W4A16Nvfp4 | VllmScheme::W4A4Nvfp4);
            (nvfp4 && p.input_size_per_partition % 16 != 0).then(|| {
                format!(
                    "input_size_per_partition = {} is not divisible by the NVFP4 group size 16",
                    p.input_size_per_partition
                )
            })
        },
    },
    Rule {
        id: "mxfp4.group_partition",
        what: "MXFP4: input_size_per_partition is a multiple of 32 (one E8M0 scale per 32 \
               inputs)",
        source: MXFP4,
        check: |s, p| {
            let mx = matches!(s, VllmScheme::W4A16Mxfp4);
            (mx && p.input_size_per_partition % 32 != 0).then(|| {
                format!(
                    "input_size_per_partition = {} is not divisible by the MXFP4 group size 32",
                    p.input_size_per_partition
                )
            })
        },
    },
];

/// The first rule `scheme` breaks on partition `p`.
pub fn first_violation(scheme: &VllmScheme, p: &Partition) -> Option<Violation> {
    RULES.iter().find_map(|r| {
        (r.check)(scheme, p).map(|message| Violation {
            rule: r.id,
            source: r.source,
            message,
        })
    })
}

/// A kernel path of a scheme and the GPU generations it runs on (compute capability
/// `min_sm..=max_sm`, as `major * 10 + minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GpuPath {
    pub kernel: &'static str,
    pub min_sm: u32,
    pub max_sm: Option<u32>,
    pub source: &'static str,
}

const fn path(
    kernel: &'static str,
    min_sm: u32,
    max_sm: Option<u32>,
    source: &'static str,
) -> GpuPath {
    GpuPath {
        kernel,
        min_sm,
        max_sm,
        source,
    }
}

const CT: &str =
    "vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py \
                  (_get_scheme_from_parts), schemes/*.py (get_min_capability)";
const MP: &str = "vllm/model_executor/kernels/linear/__init__.py (_POSSIBLE_KERNELS), \
                  kernels/linear/mixed_precision/{machete,marlin}.py";
const FP4: &str = "vllm/model_executor/kernels/linear/__init__.py (init_nvfp4_linear_kernel), \
                   utils/marlin_utils_fp4.py (is_fp4_marlin_supported), utils/nvfp4_utils.py";

const FP8_W8A8: &[GpuPath] = &[
    path("FP8 W8A8 (CUTLASS / DeepGEMM / Triton)", 89, None, CT),
    path(
        "FP8 Marlin, weight-only (CompressedTensorsW8A16Fp8)",
        75,
        Some(88),
        CT,
    ),
];
const FP8_W8A16: &[GpuPath] = &[path("FP8 Marlin, weight-only", 75, None, CT)];
const INT8_W8A8: &[GpuPath] = &[path("INT8 W8A8 (CUTLASS)", 75, None, CT)];
const INT_WNA16: &[GpuPath] = &[
    path("Machete", 90, Some(90), MP),
    path("Marlin", 75, None, MP),
];
const NVFP4_A16: &[GpuPath] = &[
    path("FlashInfer CuTe-DSL NVFP4 W4A16", 100, Some(103), FP4),
    path("Marlin FP4", 75, None, FP4),
];
const NVFP4_A4: &[GpuPath] = &[
    path("NVFP4 W4A4 (CUTLASS / FlashInfer)", 100, None, FP4),
    path("Marlin FP4, weight-only", 75, Some(99), FP4),
];
const MXFP4_A16: &[GpuPath] = &[path("Marlin MXFP4", 80, None, FP4)];

/// Where each scheme runs, newest kernels first.
pub fn gpu_paths(s: &VllmScheme) -> &'static [GpuPath] {
    match s {
        VllmScheme::W8A8Fp8 { .. } => FP8_W8A8,
        VllmScheme::W8A16Fp8 { .. } => FP8_W8A16,
        VllmScheme::W8A8Int8 => INT8_W8A8,
        VllmScheme::Wna16 { .. } => INT_WNA16,
        VllmScheme::W4A16Nvfp4 => NVFP4_A16,
        VllmScheme::W4A4Nvfp4 => NVFP4_A4,
        VllmScheme::W4A16Mxfp4 => MXFP4_A16,
    }
}

/// The lowest compute capability that runs every scheme of a model.
pub fn min_sm(schemes: &[VllmScheme]) -> Option<u32> {
    schemes
        .iter()
        .map(|s| {
            gpu_paths(s)
                .iter()
                .map(|p| p.min_sm)
                .min()
                .unwrap_or(u32::MAX)
        })
        .max()
}

/// `sm_89+` / `sm_75–sm_88` / `sm_90`.
pub fn sm_range(p: &GpuPath) -> String {
    match p.max_sm {
        None => format!("sm_{}+", p.min_sm),
        Some(max) if max == p.min_sm => format!("sm_{max}"),
        Some(max) => format!("sm_{}–sm_{max}", p.min_sm),
    }
}
