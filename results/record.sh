#!/usr/bin/env bash
# Run a command that fills a results folder, then add to OUT/PROVENANCE.md: the exact
# command, the resgrad/torch/Python versions, the machine, the wall time.
#   usage: results/record.sh OUT_DIR COMMAND [ARG...]
# Each call adds one section, so a folder made by several commands lists them in order;
# `make results` starts each folder's file afresh.
set -euo pipefail
out=$1; shift
python=${PYTHON:-.venv/bin/python}
start=$(date +%s)
"$@"
seconds=$(( $(date +%s) - start ))
mkdir -p "$out"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || uname -m)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
versions=$("$python" -c 'import platform, resgrad, torch; print(f"resgrad {resgrad.__version__}, torch {torch.__version__}, Python {platform.python_version()}")')
file="$out/PROVENANCE.md"
{
  if [ -s "$file" ]; then cat "$file"; echo; else echo "# How this folder was made"; echo; echo "From the repository root, after \`make setup\`, in this order:"; echo; fi
  echo '```bash'
  echo "$*"
  echo '```'
  echo
  echo "- versions: $versions"
  echo "- machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB memory${gpu:+, GPU: $gpu}"
  echo "- finished: $(date -u '+%Y-%m-%d %H:%M UTC'), wall time $((seconds / 60)) min $((seconds % 60)) s"
} > "$out/.PROVENANCE.md.tmp"
mv "$out/.PROVENANCE.md.tmp" "$file"
