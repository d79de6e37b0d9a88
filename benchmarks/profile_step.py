"""Where a training step's time goes, and where a sweep run's time goes, on this machine.

    python benchmarks/profile_step.py --threads 1                    # both profiles, printed (~15 min on 2 cores)
    python benchmarks/profile_step.py --threads 1 --quick            # fewer steps: a rough look in ~3 min
    python benchmarks/profile_step.py --threads 1 --out results/profile --docs docs/performance.md   # `make profile`

1. The step: ``torch.profiler`` over steps of ``resgrad.train.train_step`` (batch 64,
   SGD with momentum 0.9, the recorder on every 10th step, as the committed depth sweep
   trains), for seed-residual and plain/residual-56 at width 8 and 16 (batch norm),
   contiguous (the memory format before) and channels-last (the CPU's default now).
   The ops' own time is grouped: convolutions, batch norm, activations, residual add and
   shortcut, head and loss, the optimizer (ops under ``Optimizer.step``/``zero_grad``),
   the recorder (ops of its hooks and of ``end_step``), the autograd engine, copies,
   other ops, and what no op holds (Python, dispatch, the profiler itself).
2. The run: the depth sweep's run (300 steps, test on 2,000 images every 50 steps) in a
   fresh process that trains it twice, as a warm sweep worker does: start-up (Python,
   torch and resgrad imports), reading MNIST (the first run, then the second), building
   the model, the steps, recording (``end_step`` and the frame), evaluation, saving the run
   folder, and the rest of the loop. ``--before REF`` also profiles the code of a git ref
   (default: the commit before this work) with its own defaults.

``--out DIR`` writes ``step_profile.csv``, ``top_ops.csv`` and ``run_profile.csv``;
``--docs FILE`` replaces the block between ``<!-- profile:begin -->`` and
``<!-- profile:end -->`` with the tables made from those files (:func:`render`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "7c24061"  # main before the CPU work of issue 23: contiguous, 1,000-image evaluation, MNIST read per run
MODELS = {  # label -> TrainConfig fields
    "seed-residual": dict(arch="seed-residual"),
    "plain-56 w8": dict(arch="plain", depth=56, width=8, norm="batch"),
    "residual-56 w8": dict(arch="residual", depth=56, width=8, norm="batch"),
    "plain-56 w16": dict(arch="plain", depth=56, width=16, norm="batch"),
    "residual-56 w16": dict(arch="residual", depth=56, width=16, norm="batch"),
}
SWEEP_RUN = dict(steps=300, batch_size=64, lr=0.01, momentum=0.9, eval_every=50, test_subset=2000, record_every=10)
CATEGORIES = [
    "convolutions",
    "batch norm",
    "activations",
    "residual add, shortcut",
    "head, pooling, loss",
    "optimizer",
    "recorder",
    "autograd engine",
    "copies, layout",
    "other ops",
    "no op: Python, dispatch",
]
PHASES = ["start-up", "data (1st run)", "data (2nd run)", "model", "steps", "recording", "evaluation", "saving", "rest"]
RECORDER_OPS = ("linalg_vector_norm", "_foreach_norm", "hypot", "count_nonzero", "aten::stack")
BEGIN, END = "<!-- profile:begin -->", "<!-- profile:end -->"


# ---------------------------------------------------------------- 1. the step


def _category(event) -> str:
    """The group of one profiled event, by its ancestors (optimizer, recorder) and then by its name."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        if parent.name == "recorder":
            return "recorder"
        parent = parent.cpu_parent
    name = event.name
    if any(op in name for op in RECORDER_OPS):
        return "recorder"
    if name.startswith("Optimizer."):
        return "optimizer"
    if "conv" in name:
        return "convolutions"
    if "batch_norm" in name:
        return "batch norm"
    if any(op in name for op in ("relu", "clamp_min", "threshold", "tanh", "sigmoid")):
        return "activations"
    if name in ("aten::add", "aten::constant_pad_nd", "aten::slice", "aten::pad"):
        return "residual add, shortcut"
    if any(op in name for op in ("pool", "linear", "addmm", "aten::mm", "softmax", "nll_loss", "cross_entropy")):
        return "head, pooling, loss"
    if name.startswith("autograd::engine"):
        return "autograd engine"
    if any(op in name for op in ("copy_", "clone", "contiguous", "_to_copy", "aten::index")):
        return "copies, layout"
    return "other ops"


def profile_step(label: str, channels_last: bool, steps: int, data_dir: str | None) -> tuple[list[dict], list[dict]]:
    """Profile ``steps`` training steps (after warm-up); rows by category, and the top ops by own time."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from resgrad.compute import keep_freed_memory
    from resgrad.config import TrainConfig
    from resgrad.data import endless_batches, load_split
    from resgrad.gradients import GradientRecorder
    from resgrad.train import initial_model, make_optimizer, train_step

    if channels_last:  # today's CPU step, as train() runs it; before, glibc's malloc kept its default thresholds
        keep_freed_memory()
    config = TrainConfig(**MODELS[label], **SWEEP_RUN, channels_last=channels_last).validate()
    split = load_split(True, data_dir, 6400)
    model = initial_model(config)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(config, model.parameters())
    batches = endless_batches(len(split), config.batch_size, 0)
    with GradientRecorder(model, config.record_every) as rec:
        end_step = rec.end_step

        def labelled_end_step() -> None:
            with record_function("recorder"):
                end_step()

        rec.end_step = labelled_end_step  # this instance only: its ops are grouped as the recorder's

        def run(first: int, n: int) -> tuple[float, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            for step in range(first, first + n):
                _, idx = next(batches)
                train_step(model, opt, split.images[idx], split.labels[idx], rec, step, 0, "float32", channels_last)
            return time.perf_counter() - t0, time.process_time() - c0

        run(0, 10)  # warm-up: oneDNN's first calls, the recorder's first step
        unprofiled, cpu = run(10, steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall, _ = run(10 + steps, steps)
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    per_step = {c: 0.0 for c in CATEGORIES}
    by_op: dict[str, float] = {}
    for e in events:
        own = e.self_cpu_time_total / 1e3 / steps  # ms per step
        per_step[_category(e)] += own
        if not e.name.startswith(("Optimizer.", "recorder")):
            by_op[e.name] = by_op.get(e.name, 0.0) + own
    wall_ms = wall * 1e3 / steps
    per_step["no op: Python, dispatch"] = max(wall_ms - sum(per_step.values()), 0.0)
    layout = "now: channels-last" if channels_last else "before: contiguous"
    common = dict(
        model=label,
        layout=layout,
        step_ms=wall_ms,
        unprofiled_step_ms=unprofiled * 1e3 / steps,
        cpu_ms=cpu * 1e3 / steps,
    )
    rows = [dict(common, category=c, ms=per_step[c], fraction=per_step[c] / wall_ms) for c in CATEGORIES]
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:5]
    tops = [dict(common, rank=i + 1, op=op, ms=ms, fraction=ms / wall_ms) for i, (op, ms) in enumerate(top)]
    return rows, tops


# ---------------------------------------------------------------- 2. the run


def profile_step_apart(label: str, channels_last: bool, steps: int, threads: int, data_dir: str | None):
    """:func:`profile_step` in a fresh process (each with glibc's malloc as it starts), so that one does not set
    the next one's allocator."""
    args = [label, str(int(channels_last)), str(steps), str(threads)]
    cmd = [sys.executable, __file__, "--child-step", *args, "--data-dir", str(data_dir or "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"the step profile of {label} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["rows"], out["tops"]


def _child(config_json: str, data_dir: str | None, t_spawn: float) -> None:
    """In a fresh process: time the imports, then train the run twice with its phases timed; print JSON."""
    import torch  # noqa: F401

    import resgrad.rundir
    import resgrad.train
    from resgrad.config import TrainConfig
    from resgrad.gradients import GradientRecorder

    startup = time.time() - t_spawn
    startup_cpu = time.process_time()  # the interpreter's start and the imports
    spent: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
                cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0

        return wrapper

    for name, key in (("load_split", "data"), ("initial_model", "model"), ("evaluate", "evaluation")):
        setattr(resgrad.train, name, timed(key, getattr(resgrad.train, name)))
    resgrad.train.train_step = timed("steps", resgrad.train.train_step)
    GradientRecorder.end_step = timed("recording", GradientRecorder.end_step)
    GradientRecorder.to_frame = timed("frame", GradientRecorder.to_frame)
    config = TrainConfig.from_dict({**json.loads(config_json), "data_dir": data_dir})
    out: dict[str, dict[str, float]] = {"wall": {"start-up": startup}, "cpu": {"start-up": startup_cpu}}
    for run in (1, 2):
        spent.clear()
        cpu.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        result = resgrad.train.train(config, progress=False)
        spent["total"], cpu["total"] = time.perf_counter() - t0, time.process_time() - c0
        with tempfile.TemporaryDirectory() as tmp:
            t1, c1 = time.perf_counter(), time.process_time()
            resgrad.rundir.save_run(result, Path(tmp) / "run")
            spent["saving"], cpu["saving"] = time.perf_counter() - t1, time.process_time() - c1
        for kind, got in (("wall", spent), ("cpu", cpu)):
            phases = out[kind]
            if run == 1:
                phases["data (1st run)"] = got.get("data", 0.0)
                continue
            parts = ("data", "model", "steps", "evaluation", "frame")
            phases.update(
                {
                    "data (2nd run)": got.get("data", 0.0),
                    "model": got.get("model", 0.0),
                    "steps": got.get("steps", 0.0) - got.get("recording", 0.0),
                    "recording": got.get("recording", 0.0) + got.get("frame", 0.0),
                    "evaluation": got.get("evaluation", 0.0),
                    "saving": got["saving"],
                    "rest": got["total"] - sum(got.get(k, 0.0) for k in parts),
                }
            )
    print(json.dumps(out))


def _source(ref: str, into: Path) -> Path:
    """``src/`` of git ref ``ref``, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def profile_run(label: str, path: str, src: Path, threads: int, steps: int, data_dir: str | None) -> list[dict]:
    """One run profile in a fresh process whose ``resgrad`` is imported from ``src``."""
    fields = {**MODELS[label], **SWEEP_RUN, "steps": steps, "threads": threads, "device": "cpu"}
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, __file__, "--child", json.dumps(fields), "--data-dir", str(data_dir or ""), "--t0"]
    proc = subprocess.run([*cmd, repr(time.time())], env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"the run profile of {label} ({path}) failed:\n{proc.stderr[-3000:]}")
    phases = json.loads(proc.stdout.strip().splitlines()[-1])
    wall, cpu = phases["wall"], phases["cpu"]
    return [dict(model=label, path=path, steps=steps, phase=p, seconds=wall[p], cpu_seconds=cpu[p]) for p in PHASES]


# ---------------------------------------------------------------- tables


def render(folder: Path) -> str:
    """The docs block: the tables made from ``step_profile.csv``, ``top_ops.csv`` and ``run_profile.csv``."""
    step, top, run = (pd.read_csv(folder / f) for f in ("step_profile.csv", "top_ops.csv", "run_profile.csv"))
    meta = json.loads((folder / "machine.json").read_text())
    lines = [
        BEGIN,
        f"Measured by `benchmarks/profile_step.py` on {meta['cpu']}, {meta['threads']} torch thread(s), torch "
        f"{meta['torch']}, {meta['date']}{' (' + meta['note'] + ')' if meta.get('note') else ''}.",
        "",
        "**The step** (batch 64, recorder every 10th step): % of a step's wall time, and ms per step.",
        "",
    ]
    cols = step[["model", "layout"]].drop_duplicates().itertuples(index=False)
    cols = [(m, lay) for m, lay in cols]
    lines.append("| | " + " | ".join(f"{m}, {lay}" for m, lay in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for cat in CATEGORIES:
        cells = []
        for m, lay in cols:
            r = step[(step.model == m) & (step.layout == lay) & (step.category == cat)].iloc[0]
            cells.append(f"{100 * r.fraction:.0f} %")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    for column, label in (("unprofiled_step_ms", "**ms per step**, wall"), ("cpu_ms", "**ms per step**, CPU time")):
        ms = [step[(step.model == m) & (step.layout == lay)][column].iloc[0] for m, lay in cols]
        lines.append(f"| {label} (unprofiled) | " + " | ".join(f"**{v:.1f}**" for v in ms) + " |")
    lines += ["", "**Top five ops** by own time, ms per step (% of the step):", ""]
    lines.append("| model | layout | 1 | 2 | 3 | 4 | 5 |")
    lines.append("|---|---|---|---|---|---|---|")
    for (m, lay), g in top.groupby(["model", "layout"], sort=False):
        cells = [f"`{r.op.removeprefix('aten::')}` {r.ms:.1f} ({100 * r.fraction:.0f} %)" for r in g.itertuples()]
        lines.append(f"| {m} | {lay} | " + " | ".join(cells) + " |")
    steps = int(run.steps.iloc[0])
    lines += [
        "",
        f"**The run** ({steps} steps of 64, test on 2,000 images every 50 steps, trained twice in one process as a "
        "warm sweep worker does): seconds per phase of the second run, wall / CPU time (start-up is the process's: "
        "the interpreter and the imports). The recorder's hooks run inside the steps; recording is `end_step` and "
        "the frame.",
        "",
    ]
    paths = [(m, p) for m, p in run[["model", "path"]].drop_duplicates().itertuples(index=False)]
    lines.append("| | " + " | ".join(f"{m}, {p}" for m, p in paths) + " |")
    lines.append("|---|" + "---:|" * len(paths))
    for phase in PHASES:
        cells = []
        for m, p in paths:
            r = run[(run.model == m) & (run.path == p) & (run.phase == phase)].iloc[0]
            cells.append(f"{r.seconds:.1f} / {r.cpu_seconds:.1f}")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    cells = []
    for m, p in paths:
        later = run[(run.model == m) & (run.path == p) & ~run.phase.isin(["start-up", "data (1st run)"])]
        cells.append(f"**{later.seconds.sum():.1f} / {later.cpu_seconds.sum():.1f}**")
    lines.append("| **a warm worker's later run** | " + " | ".join(cells) + " |")
    lines.append(END)
    return "\n".join(lines)


def write_docs(docs: Path, block: str) -> None:
    text = docs.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{docs} has no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    docs.write_text(head + block + rest.split(END, 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the sweeps' runs)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    p.add_argument("--steps", type=int, default=20, help="1: profiled steps per model and layout (default: 20)")
    p.add_argument("--run-steps", type=int, default=300, help="2: steps of the profiled run (default: 300)")
    p.add_argument("--quick", action="store_true", help="10 profiled steps and runs of 60 steps")
    p.add_argument("--skip", choices=["1", "2"], help="leave one profile out")
    p.add_argument("--before", default=BEFORE, help=f"2: also profile the run at this git ref (default: {BEFORE})")
    p.add_argument("--no-before", action="store_true", help="2: profile today's code only")
    p.add_argument("--out", type=Path, help="write the CSV files here")
    p.add_argument("--docs", type=Path, help="replace the profile block of this markdown file (needs --out)")
    p.add_argument("--note", default="", help="a note on the conditions, printed with the tables")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-step", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return _child(a.child, a.data_dir or None, a.t0)
    import torch

    if a.child_step:
        label, last, n, threads = a.child_step
        torch.set_num_threads(int(threads))
        rows, tops = profile_step(label, bool(int(last)), int(n), a.data_dir or None)
        print(json.dumps({"rows": rows, "tops": tops}))
        return None

    from resgrad.train import device_name

    torch.set_num_threads(a.threads)
    steps, run_steps = (10, 60) if a.quick else (a.steps, a.run_steps)
    step_rows, top_rows, run_rows = [], [], []
    if a.skip != "1":
        for label in a.models:
            for channels_last in (False, True):
                rows, tops = profile_step_apart(label, channels_last, steps, a.threads, a.data_dir)
                step_rows += rows
                top_rows += tops
                r = rows[0]
                ms, cpu = r["unprofiled_step_ms"], r["cpu_ms"]
                print(f"1. {label}, {r['layout']}: {ms:.1f} ms per step ({cpu:.1f} CPU)", flush=True)
    if a.skip != "2":
        with tempfile.TemporaryDirectory() as tmp:
            paths = [("now", ROOT / "src")] + (
                [] if a.no_before else [(f"before ({a.before})", _source(a.before, Path(tmp)))]
            )
            for i, label in enumerate(a.models):
                for path, src in paths if i % 2 == 0 else paths[::-1]:  # alternating, so that drift hits both
                    rows = profile_run(label, path, src, a.threads, run_steps, a.data_dir)
                    run_rows += rows
                    print(
                        f"2. {label}, {path}: " + ", ".join(f"{r['phase']} {r['seconds']:.1f} s" for r in rows),
                        flush=True,
                    )
    folder = a.out or Path(tempfile.mkdtemp(prefix="profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    if step_rows:
        pd.DataFrame(step_rows).to_csv(folder / "step_profile.csv", index=False)
        pd.DataFrame(top_rows).to_csv(folder / "top_ops.csv", index=False)
    if run_rows:
        pd.DataFrame(run_rows).to_csv(folder / "run_profile.csv", index=False)
    meta = dict(
        cpu=device_name(torch.device("cpu")),
        threads=a.threads,
        torch=torch.__version__,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d"),
        note=a.note,
    )
    (folder / "machine.json").write_text(json.dumps(meta, indent=2) + "\n")
    if all((folder / f).exists() for f in ("step_profile.csv", "top_ops.csv", "run_profile.csv")):
        block = render(folder)
        print(block)
        if a.docs:
            write_docs(a.docs, block)
    print(f"CSV files in {folder}")


if __name__ == "__main__":
    main()
