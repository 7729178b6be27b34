#!/usr/bin/env bash
# Quantize benchmark: a random Llama-3.2-1B-shaped BF16 checkpoint (hidden 2048, intermediate
# 8192, 16 layers, 32/8 heads, vocab 128256, tied) is generated once, then this prints the wall
# time, input GB/s and peak RSS of `qforge quantize` next to the I/O floor measured in the same
# run: reading the input and writing the same number of bytes as the output (fsynced, as qforge
# does). Each is run 3 times; the table shows the median.
#
#   scripts/bench_quantize.sh [WORKDIR]        (default ~/.cache/qforge/bench; needs ~7 GB)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}/bench}
mkdir -p "$work"
cd "$root"
cargo build --release --quiet
q=$root/target/release/qforge
model=$work/llama-1b-bf16
if [ ! -f "$model/config.json" ]; then
    echo "== generating $model (once)"
    "$q" make-model --shape llama-1b --output "$model" --force
fi
out=$work/llama-1b-fp8
runs=3

# Peak RSS in MB and wall seconds of a command, from GNU time's format, or /proc fallback.
measure() { # label cmd...
    local label=$1; shift
    local t0 t1 rss
    t0=$(date +%s.%N)
    rss=$(python3 - "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
PY
)
    t1=$(date +%s.%N)
    echo "$label $(python3 -c "print(f'{$t1-$t0:.3f}')") $rss"
}

floor_py=$(cat <<'PY'
import os, sys
src, dst, nout = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
buf = bytearray(16 << 20)
with open(dst, "wb") as w:
    written = 0
    for f in files:
        with open(os.path.join(src, f), "rb", buffering=0) as r:
            while True:
                n = r.readinto(buf)
                if not n:
                    break
                take = min(n, nout - written)
                if take > 0:
                    w.write(memoryview(buf)[:take])
                    written += take
    while written < nout:
        take = min(len(buf), nout - written)
        w.write(memoryview(buf)[:take]); written += take
    w.flush(); os.fsync(w.fileno())
os.remove(dst)
PY
)

in_bytes=$(du -cb "$model"/*.safetensors | tail -1 | cut -f1)
# One warm-up quantize so both contenders start with the input in the page cache.
rm -rf "$out"; "$q" quantize --model "$model" --recipe recipes/fp8_dynamic.yaml --output "$out" --json >/dev/null
out_bytes=$(du -cb "$out"/*.safetensors | tail -1 | cut -f1)

results=()
for i in $(seq $runs); do
    results+=("$(measure floor python3 -c "$floor_py" "$model" "$work/floor.bin" "$out_bytes")")
    rm -rf "$out"
    results+=("$(measure qforge "$q" quantize --model "$model" --recipe recipes/fp8_dynamic.yaml --output "$out" --json)")
done
python3 - "$in_bytes" "$out_bytes" "${results[@]}" <<'PY'
import statistics, sys
inb, outb = int(sys.argv[1]), int(sys.argv[2])
rows = {}
for r in sys.argv[3:]:
    label, secs, rss = r.split()
    rows.setdefault(label, []).append((float(secs), int(rss)))
med = {k: (statistics.median(s for s, _ in v), max(m for _, m in v)) for k, v in rows.items()}
print(f"\ninput {inb/1e9:.2f} GB BF16 -> output {outb/1e9:.2f} GB FP8 (llama-1b shape), median of {len(rows['qforge'])} runs, {__import__('os').cpu_count()} cores\n")
print("| step | wall s | input GB/s | peak RSS MB | vs I/O floor |")
print("|---|---:|---:|---:|---:|")
for k, name in (("floor", "I/O floor (read input + write output bytes, fsync)"), ("qforge", "qforge quantize (FP8_DYNAMIC)")):
    s, m = med[k]
    print(f"| {name} | {s:.2f} | {inb/1e9/s:.2f} | {m} | {s/med['floor'][0]:.2f}x |")
PY
rm -rf "$out"
