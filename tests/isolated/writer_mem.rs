//! Streaming: writing a 1 GiB shard in 4 MiB pieces, then reading it back through the reader
//! piece by piece (releasing each piece), keeps peak RSS far below the shard size. (It runs
//! alone, after resetting the process' peak RSS to its current RSS.)

use crate::alone;
use qforge::checkpoint::{plan_shards, Checkpoint, DType, OutTensor, ShardWriter};
use std::fs;

/// Peak resident set size of this process in MiB (Linux).
fn peak_rss_mib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

#[test]
fn one_gib_shard_with_small_peak_rss() {
    let _alone = alone();
    const GIB: usize = 1 << 30;
    const PIECE: usize = 4 << 20;
    // The tests before this one may have raised the peak; "5" resets it (Linux 4.0+). Where
    // that is refused, the growth is still measured from the peak so far.
    let _ = fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_mib();
    let tmp = tempfile::tempdir().unwrap();
    let ts = [
        OutTensor::new("big", DType::BF16, vec![GIB / 2 / 4096, 4096]),
        OutTensor::new("small", DType::F32, vec![3]),
    ];
    let plan = &plan_shards(&ts, 20_000_000_000)[0];
    let w = ShardWriter::create(&tmp.path().join("model.safetensors"), plan).unwrap();
    let mut buf = vec![0u8; PIECE];
    for (i, off) in (0..GIB).step_by(PIECE).enumerate() {
        buf.fill(i as u8);
        w.write_at("big", off as u64, &buf).unwrap();
    }
    w.write_tensor("small", &[7; 12]).unwrap();
    w.finish().unwrap();
    let grew = peak_rss_mib().saturating_sub(before);
    eprintln!("writing: peak RSS grew by {grew} MiB");
    assert!(grew < 64, "writing: peak RSS grew by {grew} MiB");
    fs::write(tmp.path().join("config.json"), "{}").unwrap();

    let ck = Checkpoint::open(tmp.path()).unwrap();
    let big = ck.get("big").unwrap().clone();
    let data = ck.data(&big);
    assert_eq!(data.len(), GIB);
    for (i, piece) in data.chunks(PIECE).enumerate() {
        assert!(piece.iter().all(|&b| b == i as u8), "piece {i}");
        // Mapped file pages count as RSS until released.
        ck.release_range(&big, i * PIECE..(i + 1) * PIECE);
    }
    let grew = peak_rss_mib().saturating_sub(before);
    eprintln!("writing + reading back: peak RSS grew by {grew} MiB");
    assert!(grew < 64, "reading back: peak RSS grew by {grew} MiB");
}
