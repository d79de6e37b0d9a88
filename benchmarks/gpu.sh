#!/usr/bin/env bash
# The CUDA benchmarks in one go, for a machine with a GPU and no network:
#
#     bash benchmarks/gpu.sh                 # at most 5 minutes; BUDGET_S=420 bash benchmarks/gpu.sh for more
#
# writes results/bench/<gpu-name-slug>/ (e.g. results/bench/nvidia-h200/):
#   bench.csv, bench.md, bench.png   the CUDA grid: float32 and bfloat16, plain and residual,
#                                    depths 8-110, batch 128 and 512, all three modes
#   recorder_overhead.txt            python benchmarks/recorder_overhead.py --device cuda
#   cpu-vs-cuda/                     a small grid on both devices, with speedup.csv
#   compiled/                        --compile at depth 56: training step, bfloat16, batch 512
#   gpu.log                          everything this script printed
#
# Stages run in that order of importance under one deadline, BUDGET_S (default 300 s)
# for the whole script. Each of the first three gets at most its share of the budget
# (40 %, 10 %, 12 %), so that the later ones are never starved; the compile stage,
# whose compilations take what they take, gets all that is left. A stage that runs out
# of time leaves the rows it measured in its bench.partial.csv.
# Nothing is installed from the internet.
set -uo pipefail  # no -e: a stage that fails or runs out of time does not stop the next
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
BUDGET_S=${BUDGET_S:-300}
KILL_AFTER_S=10  # a stage that ignores SIGINT is killed this long after it
RESERVE_S=15     # kept back from the last stage: its kill grace and the closing listing

# --- Python: the repo's .venv when it has torch, else python3 (or $PYTHON).
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi
# resgrad itself: if it is not installed, run it from src/ (the same as an editable install;
# `python3 -m pip install --no-deps --no-build-isolation -e .` would also work offline).
if ! "$PY" -c "import resgrad" 2>/dev/null; then
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import resgrad, torch, pandas, seaborn, tqdm" ; then
    echo "gpu.sh: $PY lacks a package resgrad needs (torch, pandas, seaborn, tqdm); nothing run." >&2
    exit 1
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: torch sees no CUDA device here; nothing run." >&2
    exit 1
fi

NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
SLUG=$(printf '%s' "$NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
OUT=results/bench/$SLUG
# Claim the folder for bench output before the log goes in, so that `resgrad bench --out "$OUT"`
# takes it as its own (a folder holding anything else is refused, and left alone).
"$PY" - "$OUT" <<'PYEOF' || exit 1
import sys
from resgrad.errors import UsageError
from resgrad.files import mark_output
try:
    mark_output(sys.argv[1], "bench")
except UsageError as exc:
    sys.exit(f"gpu.sh: {exc}")
PYEOF
exec > >(tee "$OUT/gpu.log") 2>&1
echo "gpu.sh: $NAME -> $OUT (budget ${BUDGET_S} s, python $PY)"
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
                             'cuDNN', torch.backends.cudnn.version())"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true

# run SHARE_PCT DESCRIPTION COMMAND...: run under min(SHARE_PCT % of the budget, what is left of it
# less RESERVE_S); skip when < 20 s would be left. SHARE_PCT 100: all that is left.
run() {
    local cap=$(( BUDGET_S * $1 / 100 )) what=$2; shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) - RESERVE_S ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 20 ]; then
        echo "gpu.sh: SKIPPED $what: it would get ${limit} s (${left} s of the budget left)"; return 0
    fi
    echo "gpu.sh: $what (limit ${limit} s)"
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=$KILL_AFTER_S "$limit" "$@"
    local rc=$?
    echo "gpu.sh: $what: exit $rc after $(( $(date +%s) - t0 )) s"
    [ $rc -eq 124 ] && echo "gpu.sh: $what ran out of time; rows measured so far are in its bench.partial.csv"
    return 0
}

# 1. The CUDA grid: 2 dtypes x 2 batch sizes x 3 modes x 7 depths x 2 archs = 168 points,
#    about half a second each.
run 40 "CUDA grid" "$PY" -m resgrad bench --devices cuda --archs plain residual \
    --depths 8 14 20 32 44 56 110 --batch-sizes 128 512 --dtype float32 bfloat16 \
    --modes forward forward_backward train_step --min-run-time 0.2 --warmup 2 --quiet --out "$OUT"

# 2. Recorder overhead on CUDA (reads a real MNIST batch: copy MNIST in only if it is missing).
if [ ! -f benchmarks/recorder_overhead.py ]; then
    echo "gpu.sh: SKIPPED recorder overhead: benchmarks/recorder_overhead.py is not in this checkout"
else
    RAW=data/MNIST/raw
    if [ ! -e "$RAW/t10k-images-idx3-ubyte.gz" ] && [ ! -e "$RAW/t10k-images-idx3-ubyte" ]; then
        for mirror in "${RESGRAD_DATA:-}/MNIST" shared/data/MNIST ../shared/data/MNIST; do
            if [ -d "$mirror/raw" ]; then
                mkdir -p data && cp -r "$mirror" data/ && chmod -R u+w data && echo "gpu.sh: copied MNIST from $mirror"
                break
            fi
        done
    fi
    if [ -e "$RAW/t10k-images-idx3-ubyte.gz" ] || [ -e "$RAW/t10k-images-idx3-ubyte" ]; then
        # 3 rounds x 2 variants x 1 s of timing, plus start-up and reading MNIST
        run 10 "recorder overhead" bash -c "'$PY' benchmarks/recorder_overhead.py --device cuda --data-dir data \
            --rounds 3 --min-run-time 1 | tee '$OUT/recorder_overhead.txt'"
    else
        echo "gpu.sh: SKIPPED recorder overhead: no MNIST in $RAW and no mirror to copy (this machine has no network)"
    fi
fi

# 3. CPU vs CUDA on a few points (the CPU is this machine's, not the development machine's):
#    the only source of the speedup table, so before the compile stage.
run 12 "CPU vs CUDA" "$PY" -m resgrad bench --devices cpu cuda --archs plain residual --depths 8 20 56 \
    --batch-sizes 128 --dtype float32 --modes train_step --min-run-time 0.3 --warmup 2 --quiet \
    --out "$OUT/cpu-vs-cuda"

# 4. torch.compile at depth 56: each point compiles afresh (tens of seconds), so one dtype
#    and the training step only; it gets the rest of the budget.
run 100 "compiled, depth 56" "$PY" -m resgrad bench --devices cuda --compile --archs plain residual \
    --depths 56 --batch-sizes 512 --dtype bfloat16 --modes train_step --min-run-time 0.3 --warmup 3 --quiet \
    --out "$OUT/compiled"

echo "gpu.sh: done in $(( $(date +%s) - START )) s -> $OUT"
ls -la "$OUT"
