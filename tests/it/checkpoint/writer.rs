//! Safetensors writer: headers and whole files rebuilt from the fixtures byte for byte, shard
//! planning as huggingface_hub does it, the index as transformers writes it, and a sharded
//! round trip through the reader.

use crate::support::fixture;

use qforge::checkpoint::writer::{index_json_with, safetensors_header};
use qforge::checkpoint::{index_json, plan_shards, Checkpoint, DType, OutTensor, ShardWriter};
use std::fs;
use std::path::{Path, PathBuf};

/// The tensor list of a checkpoint in name order (deliberately not file order).
fn out_tensors(ck: &Checkpoint) -> Vec<OutTensor> {
    let mut v: Vec<OutTensor> = ck
        .tensors()
        .iter()
        .map(|t| OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Every fixture output: the two tiny FP8 models and all scheme outputs/inputs.
fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        fixture("tiny-llama3-fp8-dynamic"),
        fixture("tiny-tied-fp8-dynamic"),
        fixture("tiny-llama3-bf16"),
    ];
    let mut schemes: Vec<PathBuf> = fs::read_dir(fixture("schemes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    schemes.sort();
    assert_eq!(schemes.len(), 15);
    dirs.extend(schemes);
    dirs
}

#[test]
fn headers_rebuilt_byte_for_byte() {
    let mut dtypes = std::collections::BTreeSet::new();
    for dir in fixture_dirs() {
        let ck = Checkpoint::open(&dir).unwrap();
        let file = fs::read(&ck.files()[0]).unwrap();
        let tensors = out_tensors(&ck);
        dtypes.extend(tensors.iter().map(|t| t.dtype));
        let h = safetensors_header(&tensors).unwrap();
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        assert_eq!(h.json.len(), n, "{}", dir.display());
        assert!(
            h.json == file[8..8 + n],
            "{}: header differs",
            dir.display()
        );
        assert_eq!(h.file_size, file.len() as u64);
    }
    // The schemes exercise the dtype sort order beyond BF16/F8_E4M3.
    for d in [
        DType::I64,
        DType::I32,
        DType::F32,
        DType::F8_E4M3,
        DType::U8,
        DType::BF16,
    ] {
        assert!(dtypes.contains(&d), "{d}");
    }
}

/// Copies every tensor of `ck` into a new shard file written in reverse header order.
fn rewrite(ck: &Checkpoint, plan: &qforge::checkpoint::ShardPlan, path: &Path) {
    let w = ShardWriter::create(path, plan).unwrap();
    for t in plan.tensors.iter().rev() {
        let info = ck.get(&t.name).unwrap();
        let data = ck.data(info);
        // Write in two pieces to exercise write_at.
        let half = data.len() / 2;
        w.write_at(&t.name, half as u64, &data[half..]).unwrap();
        w.write_at(&t.name, 0, &data[..half]).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn whole_files_rebuilt_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixture_dirs() {
        let ck = Checkpoint::open(&dir).unwrap();
        let plans = plan_shards(&out_tensors(&ck), 20_000_000_000);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].file_name, "model.safetensors");
        let out = tmp.path().join("model.safetensors");
        rewrite(&ck, &plans[0], &out);
        assert!(
            fs::read(&out).unwrap() == fs::read(&ck.files()[0]).unwrap(),
            "{}: file differs",
            dir.display()
        );
    }
}

#[test]
fn writer_rejects_misuse() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = &plan_shards(
        &[
            OutTensor::new("a", DType::BF16, vec![2, 2]),
            OutTensor::new("b", DType::U8, vec![3]),
        ],
        1 << 30,
    )[0];
    let path = tmp.path().join("x.safetensors");
    let w = ShardWriter::create(&path, plan).unwrap();
    let e = w.write_tensor("zz", &[0; 3]).unwrap_err().to_string();
    assert!(e.contains("tensor zz is not in this shard"), "{e}");
    let e = w.write_tensor("b", &[0; 4]).unwrap_err().to_string();
    assert!(e.contains("tensor b needs 3 bytes, got 4"), "{e}");
    w.write_tensor("b", &[1, 2, 3]).unwrap();
    let e = w.write_at("b", 2, &[9]).unwrap_err().to_string();
    assert!(e.contains("tensor b written more than once"), "{e}");
    let e = w.write_at("a", 6, &[9; 3]).unwrap_err().to_string();
    assert!(e.contains("overruns tensor a"), "{e}");
    w.write_at("a", 0, &[0; 4]).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("tensor a was not (completely) written"), "{e}");
    // An unfinished file has a zero header length: the reader refuses it.
    fs::copy(
        fixture("tiny-tied-bf16/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = Checkpoint::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("invalid header length 0"), "{e}");
    let dup = [
        OutTensor::new("a", DType::BF16, vec![1]),
        OutTensor::new("a", DType::BF16, vec![2]),
    ];
    assert!(safetensors_header(&dup).is_err());
}

fn t(name: &str, bytes: usize) -> OutTensor {
    OutTensor::new(name, DType::U8, vec![bytes])
}

fn layout(plans: &[qforge::checkpoint::ShardPlan]) -> Vec<(String, Vec<String>)> {
    plans
        .iter()
        .map(|p| {
            (
                p.file_name.clone(),
                p.tensors.iter().map(|t| t.name.clone()).collect(),
            )
        })
        .collect()
}

#[test]
fn shard_plan_follows_huggingface_hub() {
    // huggingface_hub's docstring example: limit 10, sizes [6, 6, 2, 6, 2, 2] → [6], [6+2], [6+2+2].
    let ts = [
        t("a", 6),
        t("b", 6),
        t("c", 2),
        t("d", 6),
        t("e", 2),
        t("f", 2),
    ];
    let got = layout(&plan_shards(&ts, 10));
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            ("model-00001-of-00003.safetensors".into(), names(&["a"])),
            (
                "model-00002-of-00003.safetensors".into(),
                names(&["b", "c"])
            ),
            (
                "model-00003-of-00003.safetensors".into(),
                names(&["d", "e", "f"])
            ),
        ]
    );
    // Exactly at the limit stays in the shard; an oversized tensor gets its own shard, placed
    // before the shard that is still open.
    let ts = [t("a", 4), t("big", 11), t("b", 6), t("c", 1)];
    let got = layout(&plan_shards(&ts, 10));
    assert_eq!(got[0].1, names(&["big"]));
    assert_eq!(got[1].1, names(&["a", "b"]));
    assert_eq!(got[2].1, names(&["c"]));
    assert_eq!(plan_shards(&ts, 100)[0].file_name, "model.safetensors");
    assert!(plan_shards(&[], 10).is_empty());
}

#[test]
fn index_json_matches_python() {
    let ts = [
        OutTensor::new("model.norm.weight", DType::BF16, vec![4]),
        OutTensor::new("lm_head.weight", DType::BF16, vec![8, 4]),
        OutTensor::new("model.layers.0.q.weight", DType::F8_E4M3, vec![4, 4]),
    ];
    let plans = plan_shards(&ts, 72);
    assert_eq!(plans.len(), 2);
    let want = r#"{
  "metadata": {
    "total_parameters": 52,
    "total_size": 88
  },
  "weight_map": {
    "lm_head.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.q.weight": "model-00002-of-00002.safetensors",
    "model.norm.weight": "model-00001-of-00002.safetensors"
  }
}
"#;
    assert_eq!(index_json(&plans), want);
    let odd = [OutTensor::new("é\"x", DType::U8, vec![1])];
    let s = index_json_with(&plan_shards(&odd, 64), 7);
    assert!(s.contains(r#""\u00e9\"x": "model.safetensors""#), "{s}");
    assert!(s.contains("\"total_parameters\": 7,"));
}

#[test]
fn sharded_round_trip_through_the_reader() {
    let src = Checkpoint::open(&fixture("tiny-llama3-bf16")).unwrap();
    // State-dict order = the source file order; the limit splits it in two.
    let ts: Vec<OutTensor> = src
        .tensors()
        .iter()
        .map(|t| OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let plans = plan_shards(&ts, 4_000_000);
    assert_eq!(plans.len(), 2);
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(
        fixture("tiny-llama3-bf16/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    for p in &plans {
        rewrite(&src, p, &tmp.path().join(&p.file_name));
    }
    fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index_json(&plans),
    )
    .unwrap();
    let ck = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(ck.files().len(), 2);
    assert_eq!(ck.tensors().len(), src.tensors().len());
    for t in src.tensors() {
        let got = ck.get(&t.name).unwrap();
        assert_eq!((got.dtype, &got.shape), (t.dtype, &t.shape));
        assert!(ck.data(got) == src.data(t), "{}", t.name);
    }
    let total: u64 = src.tensors().iter().map(|t| t.nbytes() as u64).sum();
    let idx: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(tmp.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(idx["metadata"]["total_size"], total);
}
