//! Host to GPU: a Linear's weight on the host ([`HostWeight`], borrowed from the mmap where it
//! can be), fused uploads (q/k/v and gate/up become one matrix each), and the checkpoint
//! streamer behind [`super::device_weights::DWeights::from_checkpoint`].

use super::device_weights::{DLayer, DLinear, DWeight};
use super::gpu::{DBuf, Gpu};
use super::grouped::{self, GroupKind, GroupedHost, Scales};
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{self, Dense, LinearWeight};
use crate::{Error, Result};
use std::borrow::Cow;

/// A Linear's weight on the host, borrowed where it can be.
pub enum HostWeight<'a> {
    Fp8 {
        codes: Cow<'a, [u8]>,
        scales: Vec<f32>,
    },
    /// Int8 codes as bytes (two's complement).
    Int8 {
        codes: Cow<'a, [u8]>,
        scales: Vec<f32>,
    },
    /// FP8_BLOCK codes with 128-column blocks, and each row's block scales `[rows, cols/128]`.
    Fp8Block {
        codes: Cow<'a, [u8]>,
        scales: Vec<f32>,
    },
    /// BF16 values as little-endian bytes.
    Bf16(Cow<'a, [u8]>),
    /// A packed weight-only grouped preset.
    Grouped(GroupedHost),
}

/// One part of a fused Linear.
pub struct HostPart<'a> {
    pub rows: usize,
    pub cols: usize,
    pub w: HostWeight<'a>,
    pub bias: Option<Vec<f32>>,
}

impl HostPart<'_> {
    /// The same part owning its bytes.
    pub fn into_owned(self) -> HostPart<'static> {
        let w = match self.w {
            HostWeight::Fp8 { codes, scales } => HostWeight::Fp8 {
                codes: Cow::Owned(codes.into_owned()),
                scales,
            },
            HostWeight::Int8 { codes, scales } => HostWeight::Int8 {
                codes: Cow::Owned(codes.into_owned()),
                scales,
            },
            HostWeight::Fp8Block { codes, scales } => HostWeight::Fp8Block {
                codes: Cow::Owned(codes.into_owned()),
                scales,
            },
            HostWeight::Bf16(b) => HostWeight::Bf16(Cow::Owned(b.into_owned())),
            HostWeight::Grouped(h) => HostWeight::Grouped(h),
        };
        HostPart {
            rows: self.rows,
            cols: self.cols,
            w,
            bias: self.bias,
        }
    }
}

/// The little-endian bytes of `v` (the crate builds only for little-endian targets).
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn bf16_bytes_of(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

impl HostWeight<'_> {
    /// 0 FP8, 1 INT8, 2 BF16, 3 grouped, 4 FP8_BLOCK: parts of one fused Linear must agree.
    fn kind(&self) -> u8 {
        match self {
            HostWeight::Fp8 { .. } => 0,
            HostWeight::Int8 { .. } => 1,
            HostWeight::Bf16(_) => 2,
            HostWeight::Grouped(_) => 3,
            HostWeight::Fp8Block { .. } => 4,
        }
    }
}

/// Uploads the parts as one matrix (rows concatenated). All parts must share the column
/// count and the kind (FP8, INT8, dense, or grouped of one format), and all or none have a
/// bias.
pub fn upload_fused(g: &Gpu, name: &str, parts: &[HostPart]) -> Result<DLinear> {
    let k = parts[0].cols;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let kind = parts[0].w.kind();
    if parts.iter().any(|p| p.cols != k || p.w.kind() != kind) {
        return Err(Error::Unsupported(format!(
            "{name}: the CUDA backend fuses these Linears and needs them all FP8, all INT8, \
             all FP8_BLOCK, all dense or all of one grouped format"
        )));
    }
    let w = match kind {
        3 => {
            let hosts: Vec<&GroupedHost> = parts
                .iter()
                .filter_map(|p| match &p.w {
                    HostWeight::Grouped(h) => Some(h),
                    _ => None,
                })
                .collect();
            upload_grouped(g, name, &hosts)?
        }
        _ => upload_matrix(g, name, parts, n, k, kind)?,
    };
    let bias = match parts.iter().filter(|p| p.bias.is_some()).count() {
        0 => None,
        c if c == parts.len() => {
            let all: Vec<f32> = parts
                .iter()
                .flat_map(|p| p.bias.clone().unwrap_or_default())
                .collect();
            Some(g.upload_new(&f32_bytes(&all))?)
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "{name}: some fused parts have a bias and some do not"
            )))
        }
    };
    Ok(DLinear {
        name: name.to_string(),
        n,
        k,
        w,
        bias,
    })
}

/// FP8 / INT8 codes with per-row scales, FP8_BLOCK codes with per-row block scales, or BF16
/// values, rows concatenated.
fn upload_matrix(
    g: &Gpu,
    name: &str,
    parts: &[HostPart],
    n: usize,
    k: usize,
    kind: u8,
) -> Result<DWeight> {
    let codes = kind != 2;
    let elem = if codes { 1 } else { 2 };
    // Scales per row: one, or one per 128-column block.
    let per_row = if kind == 4 { k / 128 } else { 1 };
    if (k * elem) % 16 != 0 {
        return Err(Error::Unsupported(format!(
            "{name}: in_features {k} must be a multiple of {} for the CUDA kernels",
            16 / elem
        )));
    }
    let wbuf = g.alloc(n * k * elem)?;
    let sbuf = if codes {
        Some(g.alloc(n * per_row * 4)?)
    } else {
        None
    };
    let mut row = 0;
    for p in parts {
        match &p.w {
            HostWeight::Fp8 { codes, scales }
            | HostWeight::Int8 { codes, scales }
            | HostWeight::Fp8Block { codes, scales } => {
                g.upload(wbuf.at(row * k), codes)?;
                if let Some(s) = &sbuf {
                    g.upload(s.at(row * per_row * 4), &f32_bytes(scales))?;
                }
            }
            HostWeight::Bf16(b) => g.upload(wbuf.at(row * k * 2), b)?,
            HostWeight::Grouped(_) => unreachable!("upload_fused sends grouped parts elsewhere"),
        }
        row += p.rows;
    }
    Ok(match sbuf {
        Some(scales) if kind == 0 => DWeight::Fp8 {
            codes: wbuf,
            scales,
        },
        Some(scales) if kind == 4 => DWeight::Fp8Block {
            codes: wbuf,
            scales,
        },
        Some(scales) => DWeight::Int8 {
            codes: wbuf,
            scales,
        },
        None => DWeight::Bf16(wbuf),
    })
}

/// Grouped parts of one format, rows concatenated; symmetric parts fused with asymmetric
/// ones get their implicit offset `2^(bits−1)`.
fn upload_grouped(g: &Gpu, name: &str, parts: &[&GroupedHost]) -> Result<DWeight> {
    let (kind, group) = (parts[0].kind, parts[0].group);
    if parts.iter().any(|p| p.kind != kind || p.group != group) {
        return Err(Error::Unsupported(format!(
            "{name}: the CUDA backend fuses these Linears and needs one grouped format"
        )));
    }
    if parts[0].cols % 8 != 0 {
        return Err(Error::Unsupported(format!(
            "{name}: in_features {} must be a multiple of 8 for the CUDA kernels",
            parts[0].cols
        )));
    }
    let cat = |f: &dyn Fn(&GroupedHost) -> Vec<u8>| -> Vec<u8> {
        parts.iter().flat_map(|p| f(p)).collect()
    };
    let codes = g.upload_new(&cat(&|p| p.codes.clone()))?;
    let scales = g.upload_new(&cat(&|p| match &p.scales {
        Scales::F32(v) => f32_bytes(v),
        Scales::Codes { codes, .. } => codes.clone(),
    }))?;
    // FP4: each part's table of byte values, and each row's table (its offset in floats).
    let tables = match &parts[0].scales {
        Scales::F32(_) => None,
        Scales::Codes { .. } => {
            let mut values = Vec::new();
            let mut rows = Vec::new();
            for p in parts {
                let Scales::Codes { table, .. } = &p.scales else {
                    return Err(Error::Runtime(format!("{name}: mixed FP4 scale kinds")));
                };
                let at = values.len() as u32;
                values.extend_from_slice(table);
                rows.extend(std::iter::repeat_n(at, p.rows));
            }
            let rows: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
            Some((g.upload_new(&f32_bytes(&values))?, g.upload_new(&rows)?))
        }
    };
    let offsets = match parts.iter().any(|p| p.offsets.is_some()) {
        false => None,
        true => {
            let half = (1u32 << (kind.bits() - 1)) as f32;
            let offs = |p: &GroupedHost| match &p.offsets {
                Some(o) => f32_bytes(o),
                None => f32_bytes(&vec![half; p.scales.values().len()]),
            };
            Some(g.upload_new(&cat(&offs))?)
        }
    };
    let values = parts.iter().flat_map(|p| {
        let offsets = p.offsets.iter().flatten();
        p.scales.values().iter().chain(offsets)
    });
    let kind = kind.for_values(values);
    Ok(DWeight::Grouped {
        codes,
        scales,
        offsets,
        tables,
        kind,
        group,
    })
}

pub(super) fn vector(g: &Gpu, v: &[f32]) -> Result<DBuf> {
    g.upload_new(&f32_bytes(v))
}

/// The host-side part of a loaded [`weights::Linear`].
pub(super) fn host_part(l: &weights::Linear) -> HostPart<'_> {
    let w = match &l.weight {
        LinearWeight::Fp8 { codes, scales } => HostWeight::Fp8 {
            codes: Cow::Borrowed(codes),
            scales: scales.clone(),
        },
        LinearWeight::Dense(Dense::Bf16(v)) => {
            HostWeight::Bf16(Cow::Owned(v.iter().flat_map(|b| b.to_le_bytes()).collect()))
        }
        LinearWeight::Dense(Dense::F16(v)) => HostWeight::Bf16(Cow::Owned(bf16_bytes_of(
            v.iter().map(|&b| half::f16::from_bits(b).to_f32()),
        ))),
        LinearWeight::Dense(Dense::F32(v)) => {
            HostWeight::Bf16(Cow::Owned(bf16_bytes_of(v.iter().copied())))
        }
        LinearWeight::Int8 { codes, scales } => HostWeight::Int8 {
            codes: Cow::Owned(codes.iter().map(|&c| c as u8).collect()),
            scales: scales.clone(),
        },
        // vLLM's block path with 128-column groups (the CPU's too); other block widths run
        // weight-only on their BF16 dequantization.
        LinearWeight::Fp8Block {
            codes,
            scales,
            block_rows,
            block_cols: 128,
        } => {
            let groups = l.cols / 128;
            let per_row = (0..l.rows)
                .flat_map(|r| {
                    scales[(r / block_rows) * groups..][..groups]
                        .iter()
                        .copied()
                })
                .collect();
            HostWeight::Fp8Block {
                codes: Cow::Borrowed(codes),
                scales: per_row,
            }
        }
        LinearWeight::Fp8Block { .. } => HostWeight::Bf16(Cow::Owned(
            l.to_bf16().iter().flat_map(|b| b.to_le_bytes()).collect(),
        )),
    };
    HostPart {
        rows: l.rows,
        cols: l.cols,
        w,
        bias: l.bias.clone(),
    }
}

/// Reads modules of a checked checkpoint and uploads them, releasing their pages.
pub(super) struct Streamer<'a> {
    pub g: &'a Gpu,
    pub ck: &'a Checkpoint,
    pub cfg: &'a ModelConfig,
}

impl Streamer<'_> {
    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.ck.get(name).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: tensor {name} is missing",
                self.ck.dir.display()
            ))
        })
    }

    pub fn vector(&self, name: &str) -> Result<DBuf> {
        let t = self.tensor(name)?;
        let v = crate::numerics::to_f32(t.dtype, self.ck.data(t))?;
        vector(self.g, &v)
    }

    /// The quantization scheme of `module`; the embedding is not a Linear: its table is dense
    /// whatever the scheme targets.
    fn scheme(&self, module: &str) -> Result<Option<crate::runtime::config::WeightScheme>> {
        match module == "model.embed_tokens" {
            true => Ok(None),
            false => self.cfg.quantization.scheme_for(module),
        }
    }

    /// One module as a host part, borrowing the mmap for FP8 channel codes and BF16 weights;
    /// a grouped preset stays packed when `packed` (its fused set shares the format); every
    /// other quantized format goes through the CPU loader (INT8 stays INT8, the dequantized
    /// formats become BF16, see [`host_part`]).
    fn part(
        &self,
        module: &str,
        bias: bool,
        packed: bool,
    ) -> Result<(HostPart<'_>, Vec<&TensorInfo>)> {
        use crate::runtime::config::WeightScheme;
        match self.scheme(module)? {
            None | Some(WeightScheme::Fp8Channel) => {}
            Some(sch) if packed => {
                let (rows, cols) = weights::linear_shape(self.cfg, module)?;
                let h = grouped::load(self.ck, sch, module, rows, cols)?;
                let bias = match bias {
                    true => {
                        let b = self.tensor(&format!("{module}.bias"))?;
                        Some(crate::numerics::to_f32(b.dtype, self.ck.data(b))?)
                    }
                    false => None,
                };
                let part = HostPart {
                    rows,
                    cols,
                    w: HostWeight::Grouped(h),
                    bias,
                };
                return Ok((part, self.tensors_of(module)));
            }
            Some(_) => {
                let lin = weights::load_linear(self.ck, self.cfg, module, bias)?;
                let used = self.tensors_of(module);
                return Ok((host_part(&lin).into_owned(), used));
            }
        }
        let t = self.tensor(&format!("{module}.weight"))?;
        let data = self.ck.data(t);
        let mut used = vec![t];
        let w = match t.dtype {
            DType::F8_E4M3 => {
                let s = self.tensor(&format!("{module}.weight_scale"))?;
                used.push(s);
                HostWeight::Fp8 {
                    codes: Cow::Borrowed(data),
                    scales: crate::numerics::to_f32(s.dtype, self.ck.data(s))?,
                }
            }
            DType::BF16 => HostWeight::Bf16(Cow::Borrowed(data)),
            other => HostWeight::Bf16(Cow::Owned(bf16_bytes_of(
                crate::numerics::to_f32(other, data)?.into_iter(),
            ))),
        };
        let bias = match bias {
            true => {
                let b = self.tensor(&format!("{module}.bias"))?;
                used.push(b);
                Some(crate::numerics::to_f32(b.dtype, self.ck.data(b))?)
            }
            false => None,
        };
        let part = HostPart {
            rows: t.shape[0],
            cols: t.shape[1],
            w,
            bias,
        };
        Ok((part, used))
    }

    /// Every checkpoint tensor of `module` (`<module>.*`), to release after upload.
    fn tensors_of(&self, module: &str) -> Vec<&TensorInfo> {
        let prefix = format!("{module}.");
        self.ck
            .tensors()
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
            .collect()
    }

    pub fn linear(&self, name: &str, modules: &[&str], bias: bool) -> Result<DLinear> {
        let mut parts = Vec::new();
        let mut used = Vec::new();
        // A fused set stays packed only if all its parts share one grouped format.
        let native = |m: &&str| -> Result<Option<(GroupKind, usize)>> {
            Ok(self.scheme(m)?.and_then(grouped::native))
        };
        let formats = modules.iter().map(native).collect::<Result<Vec<_>>>()?;
        let packed = formats[0].is_some() && formats.iter().all(|f| *f == formats[0]);
        for m in modules {
            let (p, u) = self.part(m, bias, packed)?;
            parts.push(p);
            used.extend(u);
        }
        let lin = upload_fused(self.g, name, &parts)?;
        self.g.sync()?; // the copies have read the pages: they may go
        for t in used {
            self.ck.release(t);
        }
        Ok(lin)
    }

    pub fn layer(&self, i: usize) -> Result<(DLayer, u64)> {
        let c = self.cfg;
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        let norm = |which: &str| -> Result<Option<DBuf>> {
            match c.qk_norm {
                true => Ok(Some(self.vector(&format!("{a}.{which}.weight"))?)),
                false => Ok(None),
            }
        };
        let (q, k, v) = (
            format!("{a}.q_proj"),
            format!("{a}.k_proj"),
            format!("{a}.v_proj"),
        );
        let (gp, up) = (format!("{m}.gate_proj"), format!("{m}.up_proj"));
        let layer = DLayer {
            input_norm: self.vector(&format!("{p}.input_layernorm.weight"))?,
            post_norm: self.vector(&format!("{p}.post_attention_layernorm.weight"))?,
            qkv: self.linear(&format!("{a}.qkv"), &[&q, &k, &v], c.qkv_bias)?,
            o: self.linear(&format!("{a}.o_proj"), &[&format!("{a}.o_proj")], c.o_bias)?,
            gate_up: self.linear(&format!("{m}.gate_up"), &[&gp, &up], c.mlp_bias)?,
            down: self.linear(
                &format!("{m}.down_proj"),
                &[&format!("{m}.down_proj")],
                c.mlp_bias,
            )?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
        };
        let bytes = [&layer.qkv, &layer.o, &layer.gate_up, &layer.down]
            .iter()
            .map(|l| l.weight_bytes())
            .sum();
        Ok((layer, bytes))
    }
}
