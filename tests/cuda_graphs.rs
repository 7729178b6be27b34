//! Decode steps replayed as a captured CUDA graph give the very logits the step gives launch
//! by launch, at every position (the graph reads the position from device memory, and its
//! split attention covers the whole cache); and a capture refuses what CUDA would refuse.
//! On the emulator and on a real GPU when present.
#![cfg(feature = "cuda")]

mod common;
mod cuda_util;

use cuda_util::{devices, same_device};
use qforge::runtime::cuda::model::{load_cuda_on, CudaModel, CudaOptions};
use qforge::runtime::Backend;

/// Prefill `prompt`, then `steps` greedy decode steps: every step's logits, and the ids.
fn decode(m: &mut CudaModel, prompt: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    m.reset();
    let (mut logits, mut ids) = (vec![m.forward(prompt, 0, false).unwrap()], Vec::new());
    for s in 0..steps {
        let id = qforge::runtime::sampler::argmax(&logits[s]);
        ids.push(id);
        logits.push(m.forward(&[id], prompt.len() + s, false).unwrap());
    }
    (logits, ids)
}

#[test]
fn graph_replay_equals_launch_by_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::quantize_bundled(tmp.path(), "fp8_dynamic");
    let prompt: Vec<u32> = (0..21u32).map(|i| (i * 7919 + 13) % 49152).collect();
    for (label, g) in devices() {
        // Split attention over 32-key chunks: a 96-position cache is 3 splits, of which the
        // first steps use 1 and the last ones all 3.
        let opts = CudaOptions {
            max_seq: Some(96),
            split_keys: Some(32),
            ..CudaOptions::default()
        };
        let mut m = load_cuda_on(g, &dir, &opts).unwrap();
        assert!(
            m.graphs() && !m.graph_captured(),
            "{label}: graphs on by default"
        );
        let (with, ids) = decode(&mut m, &prompt, 60);
        assert!(
            m.graph_captured(),
            "{label}: the first decode step captured"
        );
        assert!(
            m.describe().contains("decode as a CUDA graph"),
            "{}",
            m.describe()
        );
        // A prefill returning every row's logits grows (reallocates) the logits buffer the
        // graph writes: the next decode step must capture anew, not write the freed buffer.
        m.reset();
        m.forward(&prompt, 0, true).unwrap();
        let (again, _) = decode(&mut m, &prompt, 60);
        assert!(with == again, "{label}: decode after a reallocation");
        m.set_graphs(false);
        let (without, ids2) = decode(&mut m, &prompt, 60);
        assert_eq!(ids, ids2, "{label}");
        for (s, (a, b)) in with.iter().zip(&without).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{label}: step {s} logits differ"
            );
        }
        // The same again on a model that never captured: the graph changes nothing.
        let fresh = CudaOptions {
            graphs: false,
            ..opts.clone()
        };
        let mut plain = load_cuda_on(same_device(label), &dir, &fresh).unwrap();
        assert!(plain.describe().contains("CUDA graphs off"));
        assert_eq!(decode(&mut plain, &prompt, 60).1, ids, "{label}");
    }
}

#[test]
fn capture_refuses_host_copies_waits_and_allocations() {
    for (label, g) in devices() {
        let buf = g.alloc(64).unwrap();
        g.begin_capture().unwrap();
        let mut back = [0u8; 4];
        let errors = [
            g.upload(buf.ptr, &[1, 2, 3, 4]).unwrap_err(),
            g.download(buf.ptr, &mut back).unwrap_err(),
            g.sync().unwrap_err(),
            g.alloc(16).map(|_| ()).unwrap_err(),
            g.begin_capture().unwrap_err(),
        ];
        g.copy(buf.ptr + 32, buf.ptr, 4).unwrap();
        let graph = g.end_capture().unwrap();
        for e in errors {
            assert!(
                e.to_string().contains("during a CUDA graph capture"),
                "{label}: {e}"
            );
        }
        // The copy was recorded, not run: it happens at each replay.
        g.upload(buf.ptr, &[9, 8, 7, 6]).unwrap();
        g.replay(&graph).unwrap();
        g.download(buf.ptr + 32, &mut back).unwrap();
        assert_eq!(back, [9, 8, 7, 6], "{label}");
        assert!(g.end_capture().is_err(), "{label}: no capture in progress");
    }
}

/// The decode breakdown's tools (`gpu bench`): `record_names` lists the kernels launched
/// (which still run), `only` runs one kernel's launches and skips the others, and a capture
/// whose launches were all skipped replays as nothing.
#[test]
fn launches_can_be_listed_and_filtered() {
    use qforge::runtime::cuda::ops;
    for (label, g) in devices() {
        let (a, b) = (g.alloc(64).unwrap(), g.alloc(64).unwrap());
        let f32s = |buf: &qforge::runtime::cuda::gpu::DBuf| g.download_f32(buf.ptr, 16).unwrap();
        g.record_names();
        ops::fill_f32(&g, a.ptr, 16, 1.0).unwrap();
        ops::fill_bf16_normal(&g, b.ptr, 32, 1, 0.0, 1.0).unwrap();
        ops::fill_f32(&g, a.ptr, 16, 2.0).unwrap();
        assert_eq!(
            g.take_names(),
            ["fill_f32", "fill_bf16_normal", "fill_f32"],
            "{label}"
        );
        assert_eq!(f32s(&a), [2.0; 16], "{label}: recorded launches ran");
        g.only(Some("fill_f32"));
        ops::fill_f32(&g, a.ptr, 16, 3.0).unwrap();
        ops::fill_bf16_normal(&g, a.ptr, 32, 1, 0.0, 1.0).unwrap(); // skipped
        assert_eq!(f32s(&a), [3.0; 16], "{label}: only fill_f32 ran");
        g.only(Some("no such kernel"));
        g.begin_capture().unwrap();
        ops::fill_f32(&g, a.ptr, 16, 4.0).unwrap();
        let graph = g.end_capture().unwrap();
        g.only(None);
        g.replay(&graph).unwrap();
        assert_eq!(f32s(&a), [3.0; 16], "{label}: the empty graph ran nothing");
        ops::fill_f32(&g, a.ptr, 16, 5.0).unwrap();
        assert_eq!(f32s(&a), [5.0; 16], "{label}: all run again");
        assert!(g.take_names().is_empty(), "{label}: nothing recorded");
    }
}

/// A block bigger than the one a kernel is declared for (kernels::FUNCTIONS) is refused
/// before it reaches the device, with the numbers; the declared block itself runs.
#[test]
fn launches_past_the_declared_block_are_refused() {
    use qforge::runtime::cuda::gpu::{cfg, Arg};
    use qforge::runtime::cuda::kernels::max_threads;
    assert_eq!(max_threads("fill_f32"), Some(256));
    assert_eq!(max_threads("no_such_kernel"), None);
    for (label, g) in devices() {
        let a = g.alloc(4 * 512).unwrap();
        let args = [Arg::U64(a.ptr), Arg::U64(512), Arg::F32(7.0)];
        let e = g
            .launch("fill_f32", cfg((1, 1), 512, 0), &args)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fill_f32") && e.contains("512 threads") && e.contains("256"),
            "{label}: {e}"
        );
        g.launch("fill_f32", cfg((2, 1), 256, 0), &args).unwrap();
        assert_eq!(g.download_f32(a.ptr, 512).unwrap(), [7.0; 512], "{label}");
        let e = g
            .launch("no_such_kernel", cfg((1, 1), 32, 0), &[])
            .unwrap_err();
        assert_eq!(e.to_string(), "no kernel no_such_kernel", "{label}");
    }
}
