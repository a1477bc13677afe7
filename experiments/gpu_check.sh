#!/usr/bin/env bash
# The GPU benchmarks of issue 20 in one short run (about 8 minutes on one GPU, compile time
# included), for a machine lent for a few minutes:
#
#   experiments/gpu_check.sh OUT_DIR
#
# Runs bench_ops (MobileNetV1-CIFAR depthwise layers and the two shapes users report slow on
# GPU), bench_infer (mobilenet_v2 at batch 1 and 32), bench_grouped (G = 2 and 16, and the
# ShuffleNet 1x1 layers) and bench_train (width 1.0, with the plain-loop row), each with small
# round counts and --device gpu, under its own time limit, most important first. Each writes
# its .md/.json into OUT_DIR after every row (--write-each), so one cut short by its limit
# keeps what it measured (its table says "Partial"). OUT_DIR also gets the autotune cache of
# the run (autotune.json: every candidate's milliseconds per shape), the commit, nvidia-smi,
# the installed packages, each benchmark's log, and status.txt with each exit code (124: cut
# short by its limit). Requires jax with CUDA; torch with CUDA is the yardstick when present
# (else the torch columns read "n/a").
set -u

out="${1:?usage: experiments/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."  # the repository root
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# A fresh autotune cache, kept with the results: the run measures auto's choices on this GPU.
export JAXSEP_AUTOTUNE_CACHE="$out/autotune.json"
rm -f "$JAXSEP_AUTOTUNE_CACHE"
# JAX takes 75% of GPU memory at start by default; torch, in the same process, needs some.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

python - <<'EOF' || { echo "gpu_check: JAX sees no GPU; nothing run" | tee "$out/status.txt"; exit 1; }
import jax
assert jax.default_backend() == "gpu", jax.devices()
print("JAX devices:", jax.devices())
EOF
git rev-parse HEAD > "$out/commit.txt" 2>&1 || true
git status --short >> "$out/commit.txt" 2>&1 || true
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python -m pip freeze > "$out/pip-freeze.txt" 2>&1 || true
: > "$out/status.txt"

run() {  # run NAME SECONDS ARGS...: one benchmark under a time limit, logged
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout --signal=TERM --kill-after=10 "$limit" \
        python "experiments/$name.py" --device gpu --write-each --out "$out" "$@" \
        > "$out/$name.log" 2>&1
    local code=$?
    echo "$name: exit $code" | tee -a "$out/status.txt"
    tail -n 5 "$out/$name.log"
}

start=$SECONDS
run bench_ops 170 --layers all --rounds 2 --calls 3
run bench_infer 70 --models mobilenet_v2 --batches 1 32 --rounds 3 --calls 5
run bench_grouped 110 --groups 2 16 --rounds 2 --calls 3
run bench_train 140 --widths 1.0 --rounds 2 --steps 3
echo "gpu_check: done in $((SECONDS - start)) s; results in $out" | tee -a "$out/status.txt"
