"""Runs lm-evaluation-harness (`--model hf`, CPU) and `qforge eval` on the same model and the
same local documents (the --data-dir layout: DIR/<repo id>/<config>/<split>.jsonl), then
compares every request's log-likelihood, every document's metrics, and the time each took.

lm_eval reads the files through task YAMLs that `include` its own task YAML (so prompts,
choices, metrics and process_docs are lm_eval's) and override only the data source
(`dataset_path: json`) and the openllm group's settings (fewshot_split, num_fewshot).

Both sides get the same threads (THREADS, default 1: OMP/MKL for torch, rayon for qforge) and
are timed as whole processes (model load included): wall seconds and CPU seconds (user +
system of the process and its children). On a shared machine the CPU seconds are the fair
measure; both are printed.

usage: python eval_vs_lm_eval.py MODEL LIMIT DATA_DIR TASKS [--per-task] [--num-fewshot N]
                                [--reuse OUT]
  --reuse OUT: the work folder of an earlier run with the same arguments; lm_eval is not run
  again where OUT holds its samples and times (qforge is), so a changed qforge can be timed
  against the same lm_eval run.
  exit 0 when every |Δ log-likelihood| <= 1e-3 and no document's acc/acc_norm/exact_match
  differs; prints a table of throughput ratios (lm_eval time / qforge time).
"""
import argparse, glob, json, os, resource, subprocess, sys, tempfile, time

import lm_eval

LM = os.path.dirname(lm_eval.__file__)

# qforge task -> (lm_eval task YAML to include, {split: file under DATA}, openllm overrides).
TASKS = {
    "arc_challenge": ("arc/arc_challenge.yaml", "allenai/ai2_arc/ARC-Challenge",
                      ["train", "test"], {"fewshot_split": "train", "num_fewshot": 25}),
    "hellaswag": ("hellaswag/hellaswag.yaml", "Rowan/hellaswag/default",
                  ["train", "validation"], {"fewshot_split": "train", "num_fewshot": 10}),
    "winogrande": ("winogrande/default.yaml", "allenai/winogrande/winogrande_xl",
                   ["train", "validation"], {"fewshot_split": "train", "num_fewshot": 5}),
    "mmlu_abstract_algebra": ("mmlu/default/mmlu_abstract_algebra.yaml",
                              "cais/mmlu/abstract_algebra", ["dev", "test"], {"num_fewshot": 5}),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml",
                       "truthfulqa/truthful_qa/multiple_choice", ["validation"],
                       {"num_fewshot": 0}),
    "gsm8k": ("gsm8k/gsm8k.yaml", "openai/gsm8k/main", ["train", "test"], {"num_fewshot": 5}),
}

# qforge metric name -> lm_eval sample key (and filter, for gsm8k).
LM_KEY = {"mc2": "acc", "exact_match,strict-match": "exact_match",
          "exact_match,flexible-extract": "exact_match"}
FILTER = {"exact_match,strict-match": "strict-match",
          "exact_match,flexible-extract": "flexible-extract"}


def write_yaml(out, task, data):
    include, folder, splits, overrides = TASKS[task]
    files = {s: os.path.join(data, folder, f"{s}.jsonl") for s in splits}
    cfg = {"include": os.path.join(LM, "tasks", include), "task": f"{task}_local",
           "tag": [], "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": files}, **overrides}
    # JSON is YAML; absolute include paths are allowed by lm_eval's loader.
    with open(os.path.join(out, f"{task}_local.yaml"), "w") as f:
        json.dump(cfg, f)


def timed(cmd, env, log):
    """Runs cmd; returns (wall s, CPU s of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"{cmd[0]} failed (exit {rc}); see {log}:\n" + open(log).read()[-3000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run_pair(a, tasks, out, env):
    os.makedirs(f"{out}/tasks", exist_ok=True)
    for t in tasks:
        write_yaml(f"{out}/tasks", t, a.data)
    shots = [] if a.num_fewshot is None else ["--num_fewshot", str(a.num_fewshot)]
    lm_cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
              f"pretrained={a.model},dtype=float32", "--tasks",
              ",".join(f"{t}_local" for t in tasks), "--include_path", f"{out}/tasks",
              "--limit", str(a.limit), "--device", "cpu", "--batch_size", "1",
              "--log_samples", "--output_path", f"{out}/lm_eval", *shots]
    q_shots = [] if a.num_fewshot is None else ["--num-fewshot", str(a.num_fewshot)]
    q_cmd = [a.qforge, "eval", "--model", a.model, "--tasks", ",".join(tasks), "--limit",
             str(a.limit), "--data-dir", a.data, "--device", "cpu", "--log-samples",
             "--output", f"{out}/qforge.json", *q_shots]
    # lm_eval's samples and times are kept in OUT, so --reuse can time a new qforge against them.
    saved = f"{out}/lm_eval_time.json"
    if os.path.exists(saved):
        lm_t = tuple(json.load(open(saved)))
    else:
        lm_t = timed(lm_cmd, env, f"{out}/lm_eval.log")
        json.dump(lm_t, open(saved, "w"))
    q_t = timed(q_cmd, env, f"{out}/qforge.log")
    return lm_t, q_t


def compare(out, tasks):
    q = json.load(open(f"{out}/qforge.json"))["model"]
    qt = {t["task"]: t for t in q["tasks"]}
    rows = {}
    for task in tasks:
        pattern = f"{out}/lm_eval/**/samples_{task}_local_*.jsonl"
        f = sorted(glob.glob(pattern, recursive=True))[-1]
        samples = [json.loads(l) for l in open(f)]
        worst, n_req, diff, mc2 = 0.0, 0, 0, 0.0
        docs = qt[task]["docs"]
        names = {"arc_challenge": ["acc", "acc_norm"], "hellaswag": ["acc", "acc_norm"],
                 "gsm8k": list(FILTER)}.get(task, ["mc2"] if task == "truthfulqa_mc2" else ["acc"])
        for d in docs:
            mine = dict(zip(names, d["metrics"]))
            theirs = [s for s in samples if s["doc_id"] == d["doc_id"]]
            if not task == "gsm8k":
                resps = [r[0] for r in theirs[0]["resps"]]
                for (ll, _), (qll, _) in zip(resps, d["loglikelihoods"]):
                    worst = max(worst, abs(float(ll) - qll))
                    n_req += 1
            differs = False
            for m in names:
                s = next(s for s in theirs if s.get("filter", "none") == FILTER.get(m, "none"))
                if m == "mc2":
                    mc2 = max(mc2, abs(float(s["acc"]) - mine[m]))
                elif float(s[LM_KEY.get(m, m)]) != mine[m]:
                    differs = True
            diff += differs
        rows[task] = {"requests": n_req, "max_dll": worst, "docs": len(docs),
                      "docs_differing": diff, "max_dmc2": mc2,
                      "tokens_forwarded": q["tokens_forwarded"]}
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model"), p.add_argument("limit", type=int), p.add_argument("data")
    p.add_argument("tasks"), p.add_argument("--per-task", action="store_true")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--reuse", help="work folder of an earlier run: lm_eval is not re-run")
    p.add_argument("--qforge", default=os.environ.get("QFORGE", "target/release/qforge"))
    a = p.parse_args()
    a.data, a.qforge = os.path.realpath(a.data), os.path.realpath(a.qforge)
    tasks = a.tasks.split(",")
    threads = os.environ.get("THREADS", "1")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, RAYON_NUM_THREADS=threads)
    out = a.reuse or tempfile.mkdtemp(prefix="eval_vs_lm_eval.")
    print(f"work files in {out}", flush=True)
    groups = [[t] for t in tasks] if a.per_task else [tasks]
    results, ok = [], True
    for g in groups:
        d = f"{out}/{'_'.join(g)}"
        (lw, lc), (qw, qc) = run_pair(a, g, d, env)
        for task, r in compare(d, g).items():
            ok &= r["max_dll"] <= 1e-3 and r["docs_differing"] == 0
            print(f"{task}: {r['requests']} requests, max |Δ log-likelihood| = "
                  f"{r['max_dll']:.2e} nats; {r['docs']} documents, {r['docs_differing']} "
                  f"with another metric" + (f"; max |Δ mc2| = {r['max_dmc2']:.1e}"
                                            if task == "truthfulqa_mc2" else ""), flush=True)
        results.append((",".join(g), lw, lc, qw, qc))
        print(f"  lm_eval {lw:.1f} s wall, {lc:.1f} s CPU; qforge {qw:.1f} s wall, "
              f"{qc:.1f} s CPU", flush=True)
    print(f"\nthreads per side: {threads}; --limit {a.limit}; work files in {out}")
    print(f"| tasks | lm_eval wall s | qforge wall s | wall ratio | lm_eval CPU s | "
          f"qforge CPU s | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, lw, lc, qw, qc in results:
        print(f"| {name} | {lw:.1f} | {qw:.1f} | {lw / qw:.2f}x | {lc:.1f} | {qc:.1f} | "
              f"{lc / qc:.2f}x |")
    if len(results) > 1:
        tot = [sum(r[i] for r in results) for i in range(1, 5)]
        print(f"| all | {tot[0]:.1f} | {tot[2]:.1f} | {tot[0] / tot[2]:.2f}x | {tot[1]:.1f} | "
              f"{tot[3]:.1f} | {tot[1] / tot[3]:.2f}x |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
