//! Every preset on SmolLM2-135M-Instruct (needs `QFORGE_SMOLLM2`, the BF16 directory): quantize,
//! then `verify` against the BF16 model over a 64-token continuation on the CPU. Prints the
//! table of README.md's "Presets on SmolLM2" and gates each preset. The group-128 presets
//! must refuse the model (hidden size 576 is not a multiple of 128).

use crate::support::*;
use qforge::quantize::{quantize, QuantizeJob};
use qforge::runtime::verify::verify;
use qforge::runtime::Device;

/// `(preset, recipe, minimum top-1 agreement, maximum mean KL)`. Measured with this test
/// (README.md, "Presets on SmolLM2"): top-1 58, 60, 56, 51, 61 of 64, mean KL 0.033, 0.014,
/// 0.042, 0.27, 0.26 (W8A8 with its per-token int8 activations). Each top-1 gate sits about six tokens below its measurement (low-margin
/// tokens flip between correct implementations, see tests/verify_smollm2.rs), each KL gate at
/// about twice it (FP8_DYNAMIC keeps verify_smollm2.rs's gates).
const ACCEPTED: [(&str, &str, f64, f64); 5] = [
    ("FP8_DYNAMIC", "fp8_dynamic", 0.80, 0.10),
    ("FP8_BLOCK", "fp8_block", 0.84, 0.03),
    ("W8A8", "w8a8", 0.78, 0.085),
    ("NVFP4A16", "nvfp4a16", 0.70, 0.55),
    ("MXFP4A16", "mxfp4a16", 0.80, 0.55),
];

const REFUSED: [&str; 3] = ["w8a16", "w4a16", "w4a16_asym"];

fn recipe(name: &str) -> std::path::PathBuf {
    crate::support::recipe(&format!("{name}.yaml"))
}

#[requires(smollm2)]
#[test]
fn smollm2_every_preset() {
    let bf16 = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    for name in REFUSED {
        let out = tmp.path().join(name);
        let e = quantize(&QuantizeJob::new(&bf16, recipe(name), &out))
            .unwrap_err()
            .to_string();
        assert!(e.contains("576") && e.contains("128"), "{name}: {e}");
        assert!(
            !out.join("model.safetensors").exists(),
            "{name}: wrote output"
        );
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (preset, name, min_top1, max_kl) in ACCEPTED {
        let out = tmp.path().join(name);
        quantize(&QuantizeJob::new(&bf16, recipe(name), &out)).unwrap();
        let size = std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .len();
        let mut o = silent(&out, 64);
        o.min_new_tokens = 64;
        o.device = Device::Cpu;
        o.reference = Some(bf16.to_string_lossy().into_owned());
        let r = verify(&o).unwrap();
        let a = &r.reference.as_ref().unwrap().agreement;
        let kl = a.kl_mean.unwrap();
        let row = format!(
            "| {preset} | {:.1} MB | {}/{} = {:.3} | {kl:.4} |",
            size as f64 / 1e6,
            a.top1_matches,
            a.tokens,
            a.top1_agreement
        );
        eprintln!("{row}");
        rows.push(row);
        assert_eq!(a.nonfinite_positions, 0, "{preset}");
        if a.top1_agreement < min_top1 || kl > max_kl {
            failed.push(format!("{preset}: top-1 {} KL {kl}", a.top1_agreement));
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    eprintln!("| preset | model.safetensors | top-1 agreement | mean KL |\n|---|---|---|---|");
    for r in &rows {
        eprintln!("{r}");
    }
    assert!(failed.is_empty(), "{failed:?}");
}
