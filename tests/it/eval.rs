//! `qforge eval`: the scoring core on a real (tiny) model, lm_eval's prompts on the fixture
//! documents (tests/data/eval, lm_eval datasets' schemas), and bad input.

use crate::support;
use qforge::eval::score::{Encoded, Session};
use qforge::eval::tasks::{self, Family};
use qforge::runtime::tokenizer::TextTokenizer;
use qforge::runtime::{self, Device};
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/eval"))
}

fn tiny() -> PathBuf {
    support::bundled_model()
}

fn eval_cmd(extra: &[&str]) -> std::process::Output {
    let model = tiny();
    let data = data_dir();
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    support::qforge().args(&args).output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Scores the same requests with the KV-cache prefix reused and from an empty cache each
/// time: the shared-prefix path must give the same log-likelihoods.
#[test]
fn shared_prefix_scores_equal_fresh_scores() {
    let tok = TextTokenizer::load(&tiny()).unwrap();
    let mut model = runtime::load(&tiny(), Device::Cpu, Some(256)).unwrap();
    let pairs = [
        ("Question: Which is a rock?\nAnswer:", " granite"),
        ("Question: Which is a rock?\nAnswer:", " a salmon swimming"),
        ("Question: Which is a rock?\nAnswer: ", "moss"),
        ("Another context entirely.", " end"),
    ];
    let mut shared = Vec::new();
    {
        let mut s = Session::new(model.as_mut(), &tok, 256);
        for (c, x) in pairs {
            let enc = s.encode_pair(c, x).unwrap();
            shared.push(s.loglikelihood(&enc).unwrap());
        }
    }
    for ((c, x), want) in pairs.iter().zip(&shared) {
        let mut s = Session::new(model.as_mut(), &tok, 256);
        let enc = s.encode_pair(c, x).unwrap();
        let got = s.loglikelihood(&enc).unwrap();
        assert!(
            (got.ll - want.ll).abs() < 1e-4,
            "{c:?}+{x:?}: {} vs {}",
            got.ll,
            want.ll
        );
        assert_eq!(got.is_greedy, want.is_greedy);
        assert!(got.ll < 0.0);
    }
    // Different continuations give different scores (the test can fail).
    assert_ne!(shared[0].ll, shared[1].ll);
}

/// `_encode_pair`: the context's trailing space moves into the continuation, and the split
/// is at the context's own token count.
#[test]
fn encode_pair_moves_trailing_space() {
    let tok = TextTokenizer::load(&tiny()).unwrap();
    let mut model = runtime::load(&tiny(), Device::Cpu, Some(64)).unwrap();
    let s = Session::new(model.as_mut(), &tok, 64);
    let a = s.encode_pair("Answer: ", "moss").unwrap();
    let b = s.encode_pair("Answer:", " moss").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.context, tok.encode("Answer:", true).unwrap());
    assert_eq!(
        [a.context.clone(), a.continuation.clone()].concat(),
        tok.encode("Answer: moss", true).unwrap()
    );
}

/// Left truncation: a request longer than max_length is scored on its last max_length + 1
/// tokens, i.e. exactly like the same request with the dropped tokens removed.
#[test]
fn long_requests_are_cut_on_the_left() {
    let tok = TextTokenizer::load(&tiny()).unwrap();
    let mut model = runtime::load(&tiny(), Device::Cpu, Some(16)).unwrap();
    let mut s = Session::new(model.as_mut(), &tok, 16);
    let enc = s
        .encode_pair("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen", " eighteen")
        .unwrap();
    assert!(s.truncates(&enc));
    let whole = [enc.context.clone(), enc.continuation.clone()].concat();
    let kept = whole[whole.len() - 17..].to_vec();
    let cut = Encoded {
        context: kept[..kept.len() - enc.continuation.len()].to_vec(),
        continuation: enc.continuation.clone(),
    };
    let a = s.loglikelihood(&enc).unwrap();
    let b = s.loglikelihood(&cut).unwrap();
    assert!((a.ll - b.ll).abs() < 1e-5);
}

#[test]
fn prompts_follow_lm_eval() {
    let doc = |path: &str, i: usize| {
        let text = std::fs::read_to_string(data_dir().join(path)).unwrap();
        qforge::eval::data::parse_jsonl(&text).unwrap()[i].clone()
    };
    // hellaswag/utils.py: ctx_b capitalized (rest lower-cased), brackets removed.
    let h = Family::Hellaswag
        .prepare(&doc("Rowan/hellaswag/default/validation.jsonl", 1))
        .unwrap();
    assert_eq!(
        h.text[0],
        "Making tea: A person fills a kettle with water. They"
    );
    assert_eq!(h.choices[3], "climb a mountain. with the cup.");
    // winogrande: the option in the context, the suffix scored.
    let w = Family::Winogrande
        .prepare(&doc("allenai/winogrande/winogrande_xl/validation.jsonl", 0))
        .unwrap();
    assert_eq!(
        w.text,
        [
            "Lisa lent her pen to Kate because Lisa",
            "Lisa lent her pen to Kate because Kate"
        ]
    );
    let reqs = tasks::requests(&w, "");
    assert_eq!(reqs[1].1, " had forgotten hers.");
    // mmlu: the question stripped, letters as choices, the subject's description.
    let m = Family::Mmlu
        .prepare(&doc("cais/mmlu/abstract_algebra/test.jsonl", 0))
        .unwrap();
    assert_eq!(
        m.text[0],
        "What is the order of 2 in Z_5 under addition?\nA. 1\nB. 2\nC. 5\nD. 10\nAnswer:"
    );
    let t = &tasks::resolve("mmlu_abstract_algebra").unwrap()[0];
    assert_eq!(
        t.description,
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    );
    // arc: numeric labels map through answerKey.
    let a = Family::ArcChallenge
        .prepare(&doc("allenai/ai2_arc/ARC-Challenge/test.jsonl", 0))
        .unwrap();
    assert_eq!(
        a.text[0],
        "Question: Which category best describes a fern?\nAnswer:"
    );
    assert_eq!(a.target, tasks::Target::Index(1));
    // openllm: the six at the card's shot counts; mmlu is its 57 subjects.
    let all = tasks::resolve("openllm").unwrap();
    assert_eq!(all.len(), 5 + 57);
    let shots = |n: &str| all.iter().find(|t| t.name == n).unwrap().num_fewshot;
    assert_eq!(
        [
            shots("arc_challenge"),
            shots("hellaswag"),
            shots("winogrande"),
            shots("truthfulqa_mc2"),
            shots("gsm8k"),
            shots("mmlu_anatomy")
        ],
        [25, 10, 5, 0, 5, 5]
    );
}

#[test]
fn every_task_runs_on_the_fixtures() {
    let o = eval_cmd(&[
        "--tasks",
        "arc_challenge,hellaswag,winogrande,mmlu_abstract_algebra,truthfulqa_mc2,gsm8k",
        "--num-fewshot",
        "2",
        "--limit",
        "2",
        "--max-length",
        "512",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let aggs = v["model"]["aggregates"].as_array().unwrap();
    let names: Vec<&str> = aggs.iter().map(|a| a["task"].as_str().unwrap()).collect();
    for want in [
        "arc_challenge",
        "hellaswag",
        "winogrande",
        "mmlu_abstract_algebra",
        "mmlu",
        "truthfulqa_mc2",
        "gsm8k",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for a in aggs {
        let x = a["value"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{a}");
        assert_eq!(a["n"], 2);
    }
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let o = eval_cmd(&["--tasks", "hellaswag,arc_easy"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("unknown task 'arc_easy'")
            && e.contains("winogrande")
            && e.contains("mmlu_<subject>"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn dataset_missing_from_data_dir_names_the_file() {
    let empty = tempfile::tempdir().unwrap();
    let o = support::qforge()
        .args([
            "eval",
            "--model",
            tiny().to_str().unwrap(),
            "--tasks",
            "gsm8k",
            "--device",
            "cpu",
            "--data-dir",
        ])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("openai/gsm8k/main/test.jsonl: not found"), "{e}");
    // Without --data-dir: see eval_without_data_dir_uses_the_hub (offline, not cached).
}

#[test]
fn limit_zero_is_refused() {
    let o = eval_cmd(&["--tasks", "hellaswag", "--limit", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--limit 0"), "{}", stderr(&o));
}

#[test]
fn fewshot_prompt_longer_than_the_model_is_cut_and_said() {
    let o = eval_cmd(&[
        "--tasks",
        "arc_challenge",
        "--limit",
        "1",
        "--max-length",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(
            "arc_challenge: 4 requests longer than the model's 64 tokens were cut on the left"
        ),
        "{e}"
    );
}

#[test]
fn reference_with_another_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = support::copy_model(&tiny(), &dir.path().join("other"));
    let path = other.join("tokenizer.json");
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Two tokens swap ids: same strings, other numbers.
    let vocab = tj["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["Ġmoss"].clone(), vocab["Ġrock"].clone());
    vocab.insert("Ġmoss".into(), b);
    vocab.insert("Ġrock".into(), a);
    std::fs::write(&path, serde_json::to_string(&tj).unwrap()).unwrap();
    let o = eval_cmd(&[
        "--tasks",
        "hellaswag",
        "--limit",
        "1",
        "--reference",
        other.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the reference has another tokenizer"),
        "{}",
        stderr(&o)
    );
    // The same tokenizer is accepted, and the table has the recovery column filled.
    let o = eval_cmd(&[
        "--tasks",
        "hellaswag",
        "--num-fewshot",
        "1",
        "--limit",
        "2",
        "--reference",
        tiny().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same model as its own reference: both columns hold the same value.
    let table = String::from_utf8_lossy(&o.stdout);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("hellaswag"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[3], row[4], "{table}");
}

/// Perplexity of a text: the quantities follow from one total log-likelihood (wikitext's
/// formulas), and the model against itself has zero KL and full agreement.
#[test]
fn perplexity_and_kl_against_itself() {
    let dir = tempfile::tempdir().unwrap();
    let text = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.\n";
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text.repeat(3)).unwrap();
    let model = tiny();
    let r =
        qforge::eval::perplexity::perplexity(&model, Some(&model), &file, 16, Device::Cpu).unwrap();
    let p = &r.model;
    assert!(p.loglikelihood < 0.0 && p.tokens > 32, "{p:?}");
    assert_eq!(p.bytes, 3 * text.len());
    assert!((p.byte_perplexity.ln() - (-p.loglikelihood / p.bytes as f64)).abs() < 1e-9);
    assert!((p.bits_per_byte - p.byte_perplexity.log2()).abs() < 1e-9);
    let kl = r.kl.unwrap();
    assert!(kl.mean.abs() < 1e-9 && kl.p999.abs() < 1e-9, "{kl:?}");
    assert_eq!(kl.top1_agreement, 1.0);
    // Longer windows see more context: a different total.
    let wide = qforge::eval::perplexity::perplexity(&model, None, &file, 64, Device::Cpu).unwrap();
    assert_ne!(wide.model.loglikelihood, p.loglikelihood);
    assert_eq!(wide.model.tokens, p.tokens);
}

/// The fixture documents as the Hub serves them (tests/data/eval/hub, written by
/// make_hub_fixtures.py): `(repo id, files)` for the mock Hub.
fn hub_repos() -> Vec<(&'static str, crate::hub::mock::Files)> {
    let root = data_dir().join("hub");
    ["allenai/ai2_arc", "Rowan/hellaswag"]
        .into_iter()
        .map(|id| {
            let dir = root.join(id);
            let files = qforge::checkpoint::hub::list_files(&dir)
                .unwrap()
                .into_iter()
                .map(|f| {
                    let bytes = std::fs::read(dir.join(&f)).unwrap();
                    (f, bytes)
                })
                .collect();
            (id, files)
        })
        .collect()
}

fn mock_hub() -> crate::hub::mock::MockHub {
    use crate::hub::mock::{MockHub, MockRepo};
    let repos = hub_repos()
        .into_iter()
        .map(|(id, files)| MockRepo::single(&format!("datasets/{id}"), files).0)
        .collect();
    MockHub::start(repos)
}

/// Without --data-dir the tasks' datasets come from the Hub (parquet, the split's files as
/// the dataset card or the default layout names them) into the HF cache, and give the same
/// documents as the JSONL files; offline mode then reads them from the cache.
#[test]
fn hub_datasets_give_the_documents_of_the_local_files() {
    use qforge::checkpoint::hub::{RepoCache, RepoKind};
    use qforge::eval::data::DataSource;
    use qforge::eval::run::{load_tasks, RunOptions};
    let hub = mock_hub();
    let home = tempfile::tempdir().unwrap();
    let cfg = crate::hub::mock::fixtures::config(&hub, home.path());
    let list = tasks::resolve("arc_challenge,hellaswag").unwrap();
    let opts = |data| RunOptions {
        data,
        num_fewshot: None,
        limit: None,
        log_samples: false,
    };
    let dir = data_dir();
    let local = load_tasks(&list, &opts(DataSource::Dir(&dir))).unwrap();
    let from_hub = load_tasks(&list, &opts(DataSource::Hub(&cfg))).unwrap();
    for (l, h) in local.iter().zip(&from_hub) {
        assert_eq!(l.docs, h.docs, "{}", l.task.name);
        assert_eq!(l.fewshot, h.fewshot, "{}", l.task.name);
        assert!(l.docs.len() > 1 && l.fewshot.len() > 1);
    }
    // Only the ARC-Challenge config's files were fetched, into the datasets cache folder.
    let arc = RepoCache::of_kind(&cfg.cache_dir, "allenai/ai2_arc", RepoKind::Dataset);
    let commit = arc.read_ref("main").expect("ref written");
    let snap = arc.snapshot(&commit);
    assert!(snap
        .join("ARC-Challenge/test-00000-of-00001.parquet")
        .is_file());
    assert!(!snap.join("ARC-Easy/test-00000-of-00001.parquet").exists());

    let mut offline = cfg.clone();
    offline.offline = true;
    hub.clear_log();
    let cached = load_tasks(&list, &opts(DataSource::Hub(&offline))).unwrap();
    assert_eq!(cached[1].docs, local[1].docs);
    assert!(hub.log().is_empty(), "offline mode asked the hub");
}

fn eval_hub_cmd(
    hub: &str,
    home: &std::path::Path,
    offline: bool,
    extra: &[&str],
) -> std::process::Output {
    let model = tiny();
    let mut cmd = support::qforge();
    cmd.args([
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ])
    .args(extra)
    .env("HF_ENDPOINT", hub)
    .env("HF_HOME", home)
    .env("HF_HUB_CACHE", home.join("hub"))
    .env_remove("HF_TOKEN")
    .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" });
    cmd.output().unwrap()
}

/// `qforge eval` without --data-dir downloads the task's dataset and scores exactly as from
/// the local files; offline with an empty cache it fails with one line naming the dataset.
#[test]
fn eval_without_data_dir_uses_the_hub() {
    let hub = mock_hub();
    let home = tempfile::tempdir().unwrap();
    let args = [
        "--tasks",
        "arc_challenge",
        "--limit",
        "3",
        "--num-fewshot",
        "2",
        "--json",
    ];

    let offline = eval_hub_cmd(&hub.endpoint(), home.path(), true, &args);
    assert!(!offline.status.success());
    let err = stderr(&offline);
    assert!(
        err.contains("allenai/ai2_arc (ARC-Challenge)")
            && err.contains("offline mode (HF_HUB_OFFLINE=1)")
            && err.contains("is not in the cache"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let online = eval_hub_cmd(&hub.endpoint(), home.path(), false, &args);
    assert!(online.status.success(), "{}", stderr(&online));
    let local = eval_cmd(&args);
    assert!(local.status.success(), "{}", stderr(&local));
    let tasks_of = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["model"]["tasks"].clone()
    };
    assert_eq!(tasks_of(&online), tasks_of(&local));
    assert!(home.path().join("hub/datasets--allenai--ai2_arc").is_dir());
}

/// The packed-GEMM prefill `qforge eval` turns on gives the logits of the default path up to
/// the order of f32 additions, on a prompt long enough to use it.
#[test]
fn fast_prefill_matches_the_default_path() {
    let tok = TextTokenizer::load(&tiny()).unwrap();
    let text = "The quick brown fox jumps over the lazy dog while the cat sleeps. ".repeat(6);
    let ids = tok.encode(&text, true).unwrap();
    assert!(ids.len() >= qforge::runtime::cpu::prefill::GEMM_MIN_ROWS);
    let mut model = runtime::load(&tiny(), Device::Cpu, Some(256)).unwrap();
    let slow = model.forward(&ids, 0, true).unwrap();
    model.reset();
    model.set_fast_prefill(true);
    let fast = model.forward(&ids, 0, true).unwrap();
    assert_eq!(slow.len(), fast.len());
    let worst = slow
        .iter()
        .zip(&fast)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = slow.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(worst <= 1e-4 * scale.max(1.0), "max |Δ logit| {worst:e}");
}
