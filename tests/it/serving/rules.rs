//! Each rule of `serving::rules` on both sides of its limit, on partitions built here.

use qforge::serving::model::Parallel;
use qforge::serving::rules::{first_violation, Partition};
use qforge::serving::scheme::{Fp8Weights, VllmScheme};

const FP8_BLOCK: VllmScheme = VllmScheme::W8A8Fp8 {
    weights: Fp8Weights::Block { n: 128, k: 128 },
};

fn wna16(bits: u32, group: Option<usize>, symmetric: bool) -> VllmScheme {
    VllmScheme::Wna16 {
        bits,
        group,
        symmetric,
        actorder: false,
    }
}

/// A row-parallel layer of `input` features split `tp` ways.
fn row(input: usize, tp: usize, output: usize) -> Partition {
    Partition {
        tp,
        parallel: Parallel::Row,
        input_size: input,
        input_size_per_partition: input / tp,
        output_size: output,
        output_partition_sizes: vec![output],
    }
}

/// A column-parallel layer (fused when several parts) split `tp` ways.
fn column(input: usize, parts: &[usize], tp: usize) -> Partition {
    Partition {
        tp,
        parallel: Parallel::MergedColumn,
        input_size: input,
        input_size_per_partition: input,
        output_size: parts.iter().sum(),
        output_partition_sizes: parts.iter().map(|p| p / tp).collect(),
    }
}

fn rule(s: &VllmScheme, p: &Partition) -> Option<(&'static str, String)> {
    first_violation(s, p).map(|v| (v.rule, v.message))
}

#[test]
fn fp8_block_n_on_fused_and_split_outputs() {
    // At TP 1 a fused layer's parts but the last must be whole blocks (SmolLM2's q is 576).
    let (id, msg) = rule(&FP8_BLOCK, &column(576, &[576, 192, 192], 1)).unwrap();
    assert_eq!(id, "fp8_block.block_n");
    assert_eq!(
        msg,
        "Weight output_partition_size = 576 is not divisible by weight quantization block_n = 128."
    );
    assert_eq!(rule(&FP8_BLOCK, &column(512, &[512, 128, 128], 1)), None);
    // The last part may be ragged at TP 1, not once split.
    assert_eq!(rule(&FP8_BLOCK, &column(512, &[512, 256, 192], 1)), None);
    let (id, msg) = rule(&FP8_BLOCK, &column(512, &[512, 256, 192], 2)).unwrap();
    assert_eq!(id, "fp8_block.block_n");
    assert!(msg.contains("output_partition_size = 96"), "{msg}");
    // An unfused column layer is only checked when split.
    assert_eq!(rule(&FP8_BLOCK, &column(512, &[200], 1)), None);
    assert_eq!(rule(&FP8_BLOCK, &column(512, &[512], 4)), None);
    assert!(rule(&FP8_BLOCK, &column(512, &[512], 8)).is_some());
}

#[test]
fn fp8_block_k_on_row_parallel_inputs() {
    assert_eq!(rule(&FP8_BLOCK, &row(1536, 4, 576)), None); // 384 = 3 blocks
    let (id, msg) = rule(&FP8_BLOCK, &row(1536, 8, 576)).unwrap(); // 192
    assert_eq!(id, "fp8_block.block_k");
    assert_eq!(
        msg,
        "Weight input_size_per_partition = 192 is not divisible by weight quantization block_k = 128."
    );
    // Unsplit, a ragged input is padded by the block scales: no rule.
    assert_eq!(rule(&FP8_BLOCK, &row(576, 1, 576)), None);
}

#[test]
fn fp8_per_channel_has_no_shape_rule() {
    let s = VllmScheme::W8A8Fp8 {
        weights: Fp8Weights::Channel,
    };
    assert_eq!(rule(&s, &row(100, 4, 576)), None);
    assert_eq!(rule(&s, &column(576, &[576, 192, 192], 3)), None);
}

#[test]
fn wna16_groups_whole_on_each_rank() {
    let s = wna16(4, Some(128), true);
    assert_eq!(rule(&s, &row(1536, 4, 576)), None); // 384 = 3 groups
    let (id, msg) = rule(&s, &row(1536, 8, 576)).unwrap(); // 192
    assert_eq!(id, "wna16.group_partition");
    assert!(
        msg.starts_with("Weight input_size_per_partition=192 is not divisible by group_size=128.")
    );
    // Channel-wise scales have no group to split.
    assert_eq!(rule(&wna16(4, None, true), &row(1536, 8, 576)), None);
}

#[test]
fn wna16_group_sizes_a_kernel_implements() {
    let p = row(4096, 1, 4096);
    for g in [32, 64, 128] {
        assert_eq!(rule(&wna16(8, Some(g), true), &p), None, "group {g}");
    }
    // 256: only Triton's int4 kernel.
    assert_eq!(rule(&wna16(4, Some(256), true), &p), None);
    let (id, _) = rule(&wna16(8, Some(256), true), &p).unwrap();
    assert_eq!(id, "wna16.group_size");
    assert_eq!(
        rule(&wna16(4, Some(16), true), &p).unwrap().0,
        "wna16.group_size"
    );
}

#[test]
fn wna16_packing() {
    // int4: 8 codes per int32 along the inputs (channel-wise, so no group rule first).
    assert_eq!(rule(&wna16(4, None, true), &row(832, 8, 64)), None); // 104
    let (id, _) = rule(&wna16(4, None, true), &row(800, 8, 64)).unwrap(); // 100
    assert_eq!(id, "wna16.pack_input");
    // int8: 4 per int32.
    assert_eq!(rule(&wna16(8, None, true), &row(800, 8, 64)), None);
    // Asymmetric int4: zero points 8 per int32 along each output partition.
    assert_eq!(rule(&wna16(4, None, false), &column(512, &[832], 8)), None); // 104
    let (id, _) = rule(&wna16(4, None, false), &column(512, &[800], 8)).unwrap();
    assert_eq!(id, "wna16.pack_zero_points");
    assert_eq!(rule(&wna16(4, None, true), &column(512, &[800], 8)), None);
}

#[test]
fn fp4_groups_on_each_rank() {
    for s in [VllmScheme::W4A16Nvfp4, VllmScheme::W4A4Nvfp4] {
        assert_eq!(rule(&s, &row(96, 2, 64)), None); // 48 = 3 groups of 16
        assert_eq!(
            rule(&s, &row(80, 2, 64)).unwrap().0,
            "nvfp4.group_partition"
        ); // 40
    }
    let mx = VllmScheme::W4A16Mxfp4;
    assert_eq!(rule(&mx, &row(128, 2, 64)), None); // 64
    assert_eq!(
        rule(&mx, &row(96, 2, 64)).unwrap().0,
        "mxfp4.group_partition"
    ); // 48
}
