#!/usr/bin/env bash
# The CUDA benchmarks in one go, for a machine with a GPU and no network:
#
#     bash benchmarks/gpu.sh                 # at most 8 minutes (fits a 10-minute slot); BUDGET_S=600 for more
#
# writes results/bench/<gpu-name-slug>/ (e.g. results/bench/nvidia-h200/):
#   graphs/                          eager vs CUDA graphs side by side: train_step, plain and residual,
#                                    depths 8-110, width 16, batch 128 (bench.md: "Eager vs CUDA graphs")
#   train-eager/, train-graphed/     resgrad train --arch seed-residual --batch-size 64, 2 epochs, each way
#   sweep-eager/, sweep-graphed/     the 8-run sweep (plain, residual x depths 8 20 56 110, 300 steps,
#                                    4 workers on the one GPU), each way
#   bench.csv, bench.md, bench.png   the eager CUDA grid: float32 and bfloat16, plain and residual,
#                                    depths 8-110, batch 128 and 512, all three modes
#   recorder_overhead.txt            benchmarks/recorder_overhead.py --device cuda, eager and --cuda-graphs
#   cpu-vs-cuda/                     a small grid on both devices, with speedup.csv
#   compiled/                        --compile at depth 56: training step, bfloat16, batch 512
#   goals.md                         issue 12's goals, eager vs graphed (benchmarks/gpu_goals.py)
#   stages.csv, PROVENANCE.md        each stage's limit, exit status and seconds; commit, machine, commands
#   gpu.log                          everything this script printed
#
# Stages run in that order of importance under one deadline, BUDGET_S (default 480 s)
# for the whole script. Each stage has a limit sized to what it needs (the grid: 168
# points in 111 s on an H200, limit 150 s), cut to what is left of the budget; the
# compile stage, whose compilations take what they take, gets all that is left. A bench
# stage that runs out of time leaves the rows it measured in its bench.partial.csv.
# Nothing is installed from the internet.
set -uo pipefail  # no -e: a stage that fails or runs out of time does not stop the next
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
BUDGET_S=${BUDGET_S:-480}
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

STAGES=$OUT/stages.csv  # one row per stage: what provenance and benchmarks/gpu_goals.py read
echo "stage,limit_s,exit,seconds" > "$STAGES"
STEPS=$(mktemp)          # PROVENANCE.md's list of stages, filled in as they run
trap 'rm -f "$STEPS"' EXIT

# run LIMIT_S STAGE COMMAND...: run under min(LIMIT_S, what is left of the budget less RESERVE_S);
# skip when the budget would cut it below 20 s. LIMIT_S 0: all that is left. STAGE names a row of stages.csv.
run() {
    local cap=$1 what=$2; shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) - RESERVE_S ))
    local limit=$(( cap > 0 && cap < left ? cap : left ))
    if [ "$limit" -lt $(( cap > 0 && cap < 20 ? cap : 20 )) ]; then
        echo "gpu.sh: SKIPPED $what: it would get ${limit} s (${left} s of the budget left)"
        echo "$what,$cap,skipped," >> "$STAGES"
        printf -- '- %s: skipped, %s s of the budget left\n' "$what" "$left" >> "$STEPS"
        return 0
    fi
    echo "gpu.sh: $what (limit ${limit} s)"
    local t0=$(date +%s%N)
    timeout --signal=INT --kill-after=$KILL_AFTER_S "$limit" "$@"
    local rc=$?
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local secs=$(printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )))
    echo "gpu.sh: $what: exit $rc after $secs s"
    echo "$what,$limit,$rc,$secs" >> "$STAGES"
    { printf -- '- %s: exit %s after %s s (limit %s s)\n\n      ' "$what" "$rc" "$secs" "$limit"
      printf '%q ' "$@"; printf '\n\n'; } >> "$STEPS"
    [ $rc -eq 124 ] && echo "gpu.sh: $what ran out of time; a bench stage's rows so far are in its bench.partial.csv"
    return 0
}

# MNIST for the stages that train or read real batches: copied in only if it is missing.
RAW=data/MNIST/raw
if [ ! -e "$RAW/t10k-images-idx3-ubyte.gz" ] && [ ! -e "$RAW/t10k-images-idx3-ubyte" ]; then
    for mirror in "${RESGRAD_DATA:-}/MNIST" shared/data/MNIST ../shared/data/MNIST; do
        if [ -d "$mirror/raw" ]; then
            mkdir -p data && cp -r "$mirror" data/ && chmod -R u+w data && echo "gpu.sh: copied MNIST from $mirror"
            break
        fi
    done
fi
MNIST=no
if [ -e "$RAW/t10k-images-idx3-ubyte.gz" ] || [ -e "$RAW/t10k-images-idx3-ubyte" ]; then MNIST=yes
else echo "gpu.sh: no MNIST in $RAW and no mirror to copy (this machine has no network): training stages skipped"; fi

# 1. Eager vs CUDA graphs, side by side (issue 12's goals). First the step alone:
#    2 archs x 4 depths x eager/graphed = 16 points, about a second each.
run 50 "eager vs graphed bench" "$PY" -m resgrad bench --devices cuda --archs plain residual \
    --depths 8 20 56 110 --widths 16 --batch-sizes 128 --dtype float32 --modes train_step \
    --cuda-graphs off on --min-run-time 0.3 --warmup 2 --quiet --out "$OUT/graphs"

if [ "$MNIST" = yes ]; then
    # Then whole runs: the seed ResNet at batch 64 (2 epochs, 1,876 steps; eager took 3.2 ms a step
    # on an H200), and the 8-run sweep (eager: 2.3-23.6 s a run). Start-up is about 10 s each.
    TRAIN=(--arch seed-residual --epochs 2 --batch-size 64 --device cuda --data-dir data --force)
    run 45 "train eager" "$PY" -m resgrad train "${TRAIN[@]}" --cuda-graphs off --out "$OUT/train-eager"
    run 40 "train graphed" "$PY" -m resgrad train "${TRAIN[@]}" --cuda-graphs on --out "$OUT/train-graphed"
    SWEEP=(--archs plain residual --depths 8 20 56 110 --seeds 0 --steps 300 --batch-size 128 --eval-every 100
           --device cuda --workers 4 --data-dir data --force)
    run 80 "sweep eager" "$PY" -m resgrad sweep "${SWEEP[@]}" --cuda-graphs off --out "$OUT/sweep-eager"
    run 60 "sweep graphed" "$PY" -m resgrad sweep "${SWEEP[@]}" --cuda-graphs on --out "$OUT/sweep-graphed"
fi

# 2. The eager CUDA grid: 2 dtypes x 2 batch sizes x 3 modes x 7 depths x 2 archs = 168 points,
#    111 s on an H200.
run 150 "CUDA grid" "$PY" -m resgrad bench --devices cuda --archs plain residual \
    --depths 8 14 20 32 44 56 110 --batch-sizes 128 512 --dtype float32 bfloat16 \
    --modes forward forward_backward train_step --min-run-time 0.2 --warmup 2 --quiet --out "$OUT"

# 3. Recorder overhead on CUDA, eager and graphed: 3 rounds x 2 variants x 1 s of timing each,
#    plus start-up and reading a real MNIST batch.
if [ "$MNIST" = yes ] && [ -f benchmarks/recorder_overhead.py ]; then
    : > "$OUT/recorder_overhead.txt"
    for graphs in "" "--cuda-graphs"; do
        run 30 "recorder overhead${graphs:+ graphed}" bash -c "'$PY' benchmarks/recorder_overhead.py --device cuda \
            --data-dir data --rounds 3 --min-run-time 1 $graphs | tee -a '$OUT/recorder_overhead.txt'"
    done
fi

# 4. CPU vs CUDA on a few points (the CPU is this machine's, not the development machine's):
#    the only source of the speedup table, so before the compile stage.
run 45 "CPU vs CUDA" "$PY" -m resgrad bench --devices cpu cuda --archs plain residual --depths 8 20 56 \
    --batch-sizes 128 --dtype float32 --modes train_step --min-run-time 0.3 --warmup 2 --quiet \
    --out "$OUT/cpu-vs-cuda"

# 5. torch.compile at depth 56: each point compiles afresh (tens of seconds), so one dtype
#    and the training step only; it gets the rest of the budget.
run 0 "compiled, depth 56" "$PY" -m resgrad bench --devices cuda --compile --archs plain residual \
    --depths 56 --batch-sizes 512 --dtype bfloat16 --modes train_step --min-run-time 0.3 --warmup 3 --quiet \
    --out "$OUT/compiled"

# The goals, from what the stages left, and how this folder was made.
"$PY" benchmarks/gpu_goals.py "$OUT" || echo "gpu.sh: benchmarks/gpu_goals.py failed"
PROV=$OUT/.PROVENANCE.md.tmp
{
    echo "# How this folder was made"
    echo
    echo "\`BUDGET_S=$BUDGET_S bash benchmarks/gpu.sh\` at commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(
        git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'), finished $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "after $(( $(date +%s) - START )) s."
    echo
    echo "- GPU: $NAME; $(nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi absent')"
    echo "- $("$PY" -c "import platform, os, torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, '
        f'cuDNN {torch.backends.cudnn.version()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores')")"
    echo
    echo "## Stages (in the order they ran; the times are also in stages.csv)"
    echo
    cat "$STEPS"
    echo "A stage that did not exit 0 left no complete output: a bench folder's bench.csv is then from an"
    echo "earlier run, if any (its measured rows are in bench.partial.csv)."
} > "$PROV" && mv "$PROV" "$OUT/PROVENANCE.md"

echo "gpu.sh: done in $(( $(date +%s) - START )) s -> $OUT"
ls -la "$OUT"
