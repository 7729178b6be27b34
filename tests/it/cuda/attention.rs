//! The attention kernels against each other: the split (flash-decoding) attention against one
//! pass, the tensor-core prefill attention against the CUDA-core one, and the split policy;
//! and the CUDA-core one against the CPU's.
//! On the emulator and on a real GPU when present.

use crate::support::cuda::devices;
use crate::support::requires;
use qforge::commands::gpu::report::compare;
use qforge::runtime::cuda::gpu::{DBuf, Gpu};
use qforge::runtime::cuda::ops;

/// BF16 values in [-2, 2), deterministic per `seed`.
fn bf16s(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let v = (((i * 7919 + seed) % 2003) as f32 / 2003.0 - 0.5) * 4.0;
            half::bf16::from_f32(v).to_le_bytes()
        })
        .collect()
}

/// q `[rows, H*d]`, the K and V caches holding `pos + rows` positions, and `pos` on the device.
struct Inputs {
    q: DBuf,
    k: DBuf,
    v: DBuf,
    pos: DBuf,
}

impl Inputs {
    /// The attention of these inputs' `rows` rows into `out`.
    fn io(&self, out: &DBuf, rows: usize, scale: f32) -> ops::AttnIo {
        ops::AttnIo {
            q: self.q.ptr,
            cache: (self.k.ptr, self.v.ptr),
            out: out.ptr,
            rows,
            pos: self.pos.ptr,
            scale,
        }
    }
}

fn inputs(g: &Gpu, dims: ops::AttnDims, rows: usize, pos: usize) -> Inputs {
    let kv = (pos + rows) * dims.kv_heads * dims.head_dim;
    Inputs {
        q: g.upload_new(&bf16s(rows * dims.heads * dims.head_dim, 1))
            .unwrap(),
        k: g.upload_new(&bf16s(kv, 2)).unwrap(),
        v: g.upload_new(&bf16s(kv, 3)).unwrap(),
        pos: g.upload_new(&(pos as u32).to_le_bytes()).unwrap(),
    }
}

fn download_bf16(g: &Gpu, b: &DBuf, n: usize) -> Vec<f32> {
    let mut raw = vec![0u8; n * 2];
    g.download(b.ptr, &mut raw).unwrap();
    raw.chunks(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Flash-decoding: the keys split over several blocks and merged by `attention_combine`
/// give the one-pass result (up to f32 rounding of the rescaling: BF16 outputs within 1e-3
/// relative RMS), for decode and for a few rows, head dims 64 and 128, GQA 8:1 and 2:1;
/// also with splits past the last key (as a decode graph, split for the whole cache, has).
#[requires(cuda_device)]
#[test]
fn split_attention_equals_one_pass() {
    for (label, g) in devices() {
        for (heads, kv_heads, head_dim) in [(8, 1, 128), (4, 2, 64)] {
            let dims = ops::AttnDims {
                heads,
                kv_heads,
                head_dim,
            };
            for (rows, pos) in [(1, 150), (3, 97), (16, 40)] {
                let kmax = pos + rows;
                let x = inputs(&g, dims, rows, pos);
                let part = g.alloc(ops::attention_part_len(dims) * 4).unwrap();
                let n = rows * heads * head_dim;
                let run = |split: Option<ops::Split>| {
                    let out = g.alloc(n * 2).unwrap();
                    let split = split.map(|s| (s, part.ptr));
                    ops::attention(&g, dims, x.io(&out, rows, 0.1), split).unwrap();
                    download_bf16(&g, &out, n)
                };
                let one = run(None);
                for splits in [kmax.div_ceil(32), kmax.div_ceil(32) + 9] {
                    let split = run(Some(ops::Split { chunk: 32, splits }));
                    let (rel, max, odd) = compare(&split, &one);
                    let what = format!(
                        "{label} {heads}/{kv_heads}x{head_dim} rows {rows} pos {pos} splits {splits}"
                    );
                    assert!(
                        rel <= 1e-3 && odd == 0,
                        "{what}: rel {rel:.3e} max {max:.3e}"
                    );
                }
                let what = format!("{label} {heads}/{kv_heads}x{head_dim} rows {rows} pos {pos}");
                assert!(one.iter().any(|&x| x != 0.0), "{what}: output written");
            }
        }
    }
}

/// A split sized for a whole cache (as a captured decode step's is) shares out the keys
/// there are now among its splits, in whole 32-key tiles, instead of giving them all to
/// the first: at 151 keys, 4 splits of at most 1024 keys take 64, 64, 23 and none; the
/// merged result is the one-pass one.
#[requires(cuda_device)]
#[test]
fn a_split_shares_out_the_keys_seen_so_far() {
    for (label, g) in devices() {
        let dims = ops::AttnDims {
            heads: 8,
            kv_heads: 1,
            head_dim: 128,
        };
        let (rows, pos, splits) = (1, 150, 4);
        let x = inputs(&g, dims, rows, pos);
        let part = g.alloc(ops::attention_part_len(dims) * 4).unwrap();
        let n = rows * dims.heads * dims.head_dim;
        let (one, split) = (g.alloc(n * 2).unwrap(), g.alloc(n * 2).unwrap());
        ops::attention(&g, dims, x.io(&one, rows, 0.1), None).unwrap();
        let s = ops::Split {
            chunk: 1024,
            splits,
        };
        ops::attention(&g, dims, x.io(&split, rows, 0.1), Some((s, part.ptr))).unwrap();
        // part[z][row][head] = (max score, sum, P.V): a split without keys has max -inf.
        let states = g.download_f32(part.ptr, splits * n / dims.head_dim * (dims.head_dim + 2));
        let stride = rows * dims.heads * (dims.head_dim + 2);
        let maxes: Vec<f32> = (0..splits)
            .map(|z| states.as_ref().unwrap()[z * stride])
            .collect();
        assert!(
            maxes[..3].iter().all(|m| m.is_finite()) && maxes[3] == f32::NEG_INFINITY,
            "{label}: split maxima {maxes:?}"
        );
        let (a, b) = (download_bf16(&g, &split, n), download_bf16(&g, &one, n));
        let (rel, max, odd) = compare(&a, &b);
        assert!(
            rel <= 1e-3 && odd == 0,
            "{label}: rel {rel:.3e} max {max:.3e}"
        );
    }
}

/// When decode splits its keys: long contexts on many SMs, never prefill or short contexts.
#[test]
fn attention_split_policy() {
    let d70 = ops::AttnDims {
        heads: 64,
        kv_heads: 8,
        head_dim: 128,
    };
    let split = |chunk, splits| Some(ops::Split { chunk, splits });
    // 8 blocks of work at decode → ~2 per SM on an H200 (132 SMs): 32 splits of 352 keys.
    assert_eq!(
        ops::attention_split(d70, 1, 11000, 132, 256),
        split(352, 32)
    );
    assert_eq!(ops::attention_split(d70, 1, 300, 132, 256), split(256, 2));
    assert_eq!(ops::attention_split(d70, 1, 201, 132, 256), None);
    assert_eq!(ops::attention_split(d70, 17, 10017, 132, 256), None);
    // Enough blocks already: no split.
    assert_eq!(ops::attention_split(d70, 1, 11000, 4, 256), None);
}

/// The tensor-core prefill attention against the CUDA-core kernel: head dims 64, 128, 256;
/// GQA 8:1, 7:1, 2:1 and none; row counts that are and are not multiples of the 64-row
/// block and 32-key tile; with and without cached positions before the chunk. The
/// probabilities are rounded to BF16 before P·V (as in FlashAttention), so the two agree to
/// within 4e-3 relative RMS, not exactly.
#[requires(cuda_device)]
#[test]
fn tensor_core_attention_equals_cuda_core_attention() {
    for (label, g) in devices() {
        for (heads, kv_heads, head_dim) in [(8, 1, 128), (7, 1, 64), (4, 2, 256), (2, 2, 64)] {
            let dims = ops::AttnDims {
                heads,
                kv_heads,
                head_dim,
            };
            let (name, smem) = ops::attention_mma_kernel(head_dim);
            let simt = ops::attention_smem(dims, ops::attention_rows_per_block(dims, 131));
            for (kernel, bytes) in [(name, smem), ("attention", simt)] {
                if bytes > 48 << 10 {
                    g.set_max_smem(kernel, bytes).unwrap();
                }
            }
            for (rows, pos) in [(17, 0), (70, 0), (64, 45), (131, 7)] {
                for scale in [0.1, (head_dim as f32).powf(-0.5)] {
                    let x = inputs(&g, dims, rows, pos);
                    let n = rows * heads * head_dim;
                    let (a, b) = (g.alloc(n * 2).unwrap(), g.alloc(n * 2).unwrap());
                    ops::attention_mma(&g, dims, x.io(&a, rows, scale)).unwrap();
                    ops::attention_simt(&g, dims, x.io(&b, rows, scale), None).unwrap();
                    let (mma, simt) = (download_bf16(&g, &a, n), download_bf16(&g, &b, n));
                    let (rel, max, odd) = compare(&mma, &simt);
                    let what = format!(
                        "{label} {heads}/{kv_heads}x{head_dim} rows {rows} pos {pos} scale {scale}"
                    );
                    eprintln!("{what}: rel {rel:.2e} max {max:.2e}");
                    assert!(
                        rel <= 4e-3 && odd == 0,
                        "{what}: rel {rel:.3e} max {max:.3e}"
                    );
                }
            }
        }
    }
}

/// The CUDA-core attention (decode and short chunks) against the CPU's, for head dims that
/// move K/V in 16-byte pieces with the next tile prefetched (40, 128) and ones that move
/// them 4 bytes at a time (36, 256); a split decode too. BF16 outputs within 4e-3 relative
/// RMS.
#[requires(cuda_device)]
#[test]
fn cuda_core_attention_matches_the_cpu() {
    use qforge::runtime::cpu::attention::{attention, AttnShape, KvView};
    let f32s = |b: Vec<u8>| -> Vec<f32> {
        b.chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    };
    for (heads, kv_heads, head_dim) in [(4, 2, 36), (4, 1, 40), (8, 2, 128), (2, 1, 256)] {
        let dims = ops::AttnDims {
            heads,
            kv_heads,
            head_dim,
        };
        for (rows, pos, split) in [(1, 150, false), (1, 150, true), (3, 70, false)] {
            let len = pos + rows;
            let kvn = len * kv_heads * head_dim;
            let q = f32s(bf16s(rows * heads * head_dim, 1));
            let (k, v) = (f32s(bf16s(kvn, 2)), f32s(bf16s(kvn, 3)));
            let shape = AttnShape {
                heads,
                kv_heads,
                head_dim,
            };
            let n = rows * heads * head_dim;
            let (mut scores, mut heads_out, mut want) =
                (vec![0f32; heads * len], vec![0f32; n], vec![0f32; n]);
            let kv = KvView { k: &k, v: &v };
            attention(
                shape,
                &q,
                kv,
                pos,
                rows,
                &mut scores,
                &mut heads_out,
                &mut want,
            );
            for (label, g) in devices() {
                let x = inputs(&g, dims, rows, pos);
                let out = g.alloc(n * 2).unwrap();
                let part = g.alloc(ops::attention_part_len(dims) * 4).unwrap();
                let split = split.then_some((
                    ops::Split {
                        chunk: 32,
                        splits: 6,
                    },
                    part.ptr,
                ));
                let scale = (head_dim as f64).powf(-0.5) as f32;
                ops::attention(&g, dims, x.io(&out, rows, scale), split).unwrap();
                let got = download_bf16(&g, &out, n);
                let (rel, max, odd) = compare(&got, &want);
                let what = format!("{label} {heads}/{kv_heads}x{head_dim} rows {rows} pos {pos}");
                assert!(
                    rel <= 4e-3 && odd == 0,
                    "{what}: rel {rel:.3e} max {max:.3e}"
                );
            }
        }
    }
}
