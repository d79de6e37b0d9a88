"""The ``resgrad`` command: argparse lives here and nowhere else.

Each subcommand turns its flags into a typed config at once and calls library code.
Bad input (``UsageError``) prints one sentence and exits with code 2; an OS error (a write
that failed: full disk, permission lost) one sentence and exit code 1. ``--debug`` or
``RESGRAD_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from resgrad import __version__
from resgrad.errors import OutputError, UsageError

if TYPE_CHECKING:
    from resgrad.bench_config import BenchConfig

log = logging.getLogger("resgrad")

EPILOG_TRAIN = """\
examples:
  resgrad train --arch residual --depth 20 --steps 500 --train-subset 10000
  resgrad train --arch seed-residual --epochs 10 --batch-size 64
  resgrad train --arch plain --depth 56 --norm batch --record-every 1 --out runs/plain56

The run directory holds config.json, metrics.csv (step, epoch, train_loss,
test_loss, test_acc), grad_norms.parquet (step, epoch, layer_index, layer,
quantity, norm) and summary.json. Steps count from 0; a test evaluation on row
`step` is made after that step's update.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


# Where `sweep` says more than the field's own help.
SWEEP_HELP = {"threads": "torch threads per run on the CPU (default: the CPU cores divided among the workers)"}


def add_config_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """One flag per :class:`~resgrad.config.TrainConfig` field, derived from its declaration.

    ``train`` gets one value per flag; ``sweep`` gets a list flag (``--depths``) for each
    field that is a sweep axis. Every flag defaults to None, so that a value left out
    takes the field's default (or, in a sweep, the --config file's value); the help
    names the default.
    """
    from resgrad import config

    for group, fields in config.groups():
        g = p.add_argument_group("the grid and the runs" if sweep and group == "model" else group)
        for f in fields:
            meta, axis = f.metadata, sweep and f.metadata["axis"]
            name = meta["axis"] if axis else f.name
            default = (meta["grid"] or [f.default]) if axis else f.default
            help_text = SWEEP_HELP.get(f.name) if sweep else None
            shown = " ".join(map(str, default)) if axis else None if default is None or default is False else default
            help_text = help_text or meta["help"] + ("" if shown is None or "(default" in meta["help"]
                                                     else f" (default: {shown})")
            kw: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
            if isinstance(f.default, bool):
                kw["action"] = "store_true"
            else:
                kinds = config.kinds(f.name)
                kw["type"] = _whole_number if int in kinds else float if float in kinds else str
                kw["metavar"] = meta["metavar"] or name.upper().replace("_", "-")
                choices = config.choices(f.name)
                if choices and not axis:  # a sweep's lists are checked whole, with the rest of the grid
                    kw["choices"], kw["metavar"] = choices, None
                elif choices:
                    kw["help"] += f"; from {', '.join(map(str, choices))}"
                if axis:
                    kw["nargs"] = "+"
            g.add_argument("--" + name.replace("_", "-"), **kw)
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")


# ---------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train one model on MNIST and record its gradient norms",
        description="Train one plain or residual net on MNIST, recording per-layer gradient norms.",
        epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p)
    p.add_argument("--out", type=Path, help="run directory to write: new, empty, or an earlier run with --force "
                   "(default: runs/<run_id>)")
    p.add_argument("--force", action="store_true",
                   help="replace the run folder already at --out (a folder holding other files is never replaced)")
    p.add_argument("--tensorboard", type=Path, metavar="LOGDIR",
                   help="also write the run's TensorBoard events to LOGDIR/<run_id> when it ends (as resgrad export)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from resgrad.files import prepare_output
    from resgrad.train import TrainConfig, save_run, train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None}).validate()
    out = args.out or Path("runs") / config.run_id()
    prepare_output(out, "run", force=args.force)  # refused before training, not after
    if args.tensorboard:  # a bad log folder too
        from resgrad.export import check_logdir, write_run

        check_logdir(args.tensorboard, [config.run_id()], [out])
    result = train(config, progress=False if args.quiet else None)
    save_run(result, out, force=args.force)
    if args.tensorboard:
        write_run(result, args.tensorboard, source=str(out))
    s = result.summary
    if s["status"] == "complete":
        if not args.quiet:
            print(
                f"{s['run_id']}: complete after {s['steps']} steps: test acc {s['final_test_acc']:.4f}, "
                f"test loss {s['final_test_loss']:.4f}, {s['images_per_s']:.0f} images/s, "
                f"{s['wall_seconds']:.1f} s -> {out}"
            )
    else:
        log.warning("%s: diverged at step %d -> %s", s["run_id"], s["diverged_at_step"], out)
    return 0


# ---------------------------------------------------------------- sweep

EPILOG_SWEEP = """\
examples:
  resgrad sweep --out runs/depth --archs plain residual --depths 8 14 20 32 --seeds 0 1 --steps 300 --train-subset 10000
  resgrad sweep --config sweeps/example.toml
  resgrad sweep --config sweeps/example.toml --depths 8 14 20 --workers 2 --threads 1
  resgrad sweep --config big.toml --out runs/big --executor ray --ray-address auto

The grid is the cross product of the list flags. A --config file (TOML) takes the
long flag names with '_' for '-' (archs, depths, steps, batch_size, out, workers, ...);
flags given on the command line override it.

DIR holds sweep.json (the grid), runs/<run_id>/ (one run directory per point, as
`resgrad train` writes it) and summary.csv (run_id, arch, depth, width, norm,
activation, init, lr, seed, status, final_test_acc, final_test_loss,
final_train_loss, steps, wall_seconds, images_per_s, error). Rerunning the command
skips runs already complete or diverged and retries failed ones; --force reruns all.
Each run gets --threads torch threads (default: CPU cores // workers); a warning
says when workers x threads is more than the CPU cores.
Exit code: 0 when no run failed, 1 when some run failed (rerun to retry), 2 on bad input.
"""


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a resumable grid of training runs (archs x depths x seeds x ...)",
        description="Train every point of a grid of runs, locally in parallel processes or on Ray; "
        "a rerun completes what is missing. The list flags (--archs, --depths, ...) take one or more values.",
        epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p, sweep=True)  # no defaults here: a flag left out can come from --config
    g = p.add_argument_group("the sweep")
    g.add_argument("--out", type=Path, metavar="DIR", help="the sweep folder (created, or resumed when it is one)")
    g.add_argument("--config", type=Path, metavar="FILE", help="a sweep TOML file, e.g. sweeps/example.toml")
    g.add_argument("--executor", choices=["local", "ray"], help="local processes or Ray tasks (default: local)")
    g.add_argument("--workers", type=_positive_int,
                   help="runs at a time; local: processes, 1 = in this process (default: 1); ray: CPUs of a local Ray")
    g.add_argument("--ray-address", metavar="ADDR", help="a Ray cluster (e.g. auto, ray://host:10001); default: start a local Ray")
    g.add_argument("--force", action="store_true", help="rerun points already complete or diverged")
    g.add_argument("--tensorboard", type=Path, metavar="LOGDIR",
                   help="also write each finished run's TensorBoard events to LOGDIR/<run_id> (as resgrad export)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from resgrad.sweep import CONFIG_KEYS, LIST_FLAGS, RUN_KEYS, SweepSpec, count_statuses, read_config, run_sweep

    opts = read_config(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS and v is not None}
    if "steps" in given or "epochs" in given:  # the run length given here replaces the file's, whichever kind
        opts.pop("steps", None)
        opts.pop("epochs", None)
    opts.update(given)
    if "out" not in opts:
        raise UsageError("give the sweep folder with --out DIR (or out = \"DIR\" in the --config file).")
    spec = SweepSpec(
        grid={option: opts[flag] for flag, option in LIST_FLAGS.items() if flag in opts},
        fixed={k: opts[k] for k in RUN_KEYS if k in opts},
    )
    out = Path(opts["out"])
    summary = run_sweep(
        spec, out, executor=opts.get("executor", "local"), workers=opts.get("workers", 1), force=args.force,
        ray_address=opts.get("ray_address"), progress=False if args.quiet else None, tensorboard=args.tensorboard,
    )
    counts = count_statuses(summary)
    line = (
        f"sweep {out}: {len(summary)} runs: {counts['complete']} complete, {counts['diverged']} diverged, "
        f"{counts['failed']} failed ({summary.attrs['ran']} run now, {summary.attrs['skipped']} already done"
        + (f", {summary.attrs['earlier']} kept from earlier grids" if summary.attrs.get("earlier") else "")
        + f") in {summary.attrs['wall_seconds']:.1f} s -> {out / 'summary.csv'}"
    )
    if counts["failed"]:
        log.warning("%s", line)
        return 1
    if not args.quiet:
        print(line)
    return 0


# ---------------------------------------------------------------- bench

EPILOG_BENCH = """\
examples:
  resgrad bench --out runs/bench
  resgrad bench --devices cpu --depths 8 14 20 32 44 56 --batch-sizes 32 128 --out results/bench/cpu
  resgrad bench --devices cuda --dtype float32 bfloat16 --depths 8 56 110 --batch-sizes 128 512 --out runs/bench-gpu
  resgrad bench --devices cuda --compile --depths 56 --modes train_step --out runs/bench-compiled
  resgrad bench --devices cuda --cuda-graphs off on --depths 8 56 --modes train_step --out runs/bench-graphs

DIR gets bench.csv (one row per point: device, device_name, arch, depth, width,
batch_size, mode, dtype, channels_last, compiled, cuda_graphs, median_ms, iqr_ms,
images_per_s, gflop, gflop_per_s, pct_of_peak, params, threads, torch_version,
then status [ok|oom] and error), bench.md (readable table, peaks, command and
machine, eager vs CUDA graphs where both ran), bench.png (throughput vs depth)
and, when CPU and CUDA both ran, speedup.csv; a speedup.csv or bench.png an
earlier run left in DIR is removed when this run makes none, other files there
are kept. Inputs are random tensors on the device: compute only, no data
loading. A listed device that is absent is skipped with a warning.
"""


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from resgrad.bench_config import FIELDS, flag

    p = sub.add_parser(
        "bench", help="time forward, backward and training steps per device, arch, depth and batch size",
        description="Time plain and residual nets with torch.utils.benchmark: forward, forward+backward and the "
        "full training step, per device, arch, depth, width, batch size and dtype; FLOPs per step and % of a "
        "dense-matmul peak measured in the same run.",
        epilog=EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in FIELDS.items():  # one flag per BenchConfig field, all from its declaration
        group = groups.get(f.metadata["group"]) or groups.setdefault(
            f.metadata["group"], p.add_argument_group(f.metadata["group"])
        )
        group.add_argument(flag(name), **_bench_argument(name))
    g = groups["timing and output"]
    g.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    g.add_argument("--out", type=Path, default=Path("runs/bench"), metavar="DIR",
                   help="folder to write (default: runs/bench)")
    p.set_defaults(func=cmd_bench)


def _bench_argument(name: str) -> dict[str, object]:
    """argparse keywords of one ``BenchConfig`` field (type, nargs, choices, default, help), from its metadata."""
    from resgrad.bench_config import FIELDS, choices, is_list, kind

    f = FIELDS[name]
    meta = f.metadata
    if kind(name) is bool:  # a switch, off by default
        return {"dest": name, "action": "store_true", "help": meta["help"]}
    allowed = choices(name)
    help = meta["help"]
    if allowed is not None and meta["metavar"] and meta["metavar"] != "|".join(allowed):  # the placeholder hides them
        help += f"; from {', '.join(map(str, allowed))}"
    default = list(f.default) if is_list(name) else f.default
    if default is not None:
        shown = " ".join(map(str, default)) if is_list(name) else format(default, "g")
        help += f" (default: {shown})"
    kw: dict[str, object] = dict(dest=name, type=kind(name), default=default, choices=allowed, metavar=meta["metavar"],
                                 help=help)
    if is_list(name):
        kw["nargs"] = "*" if meta["alone"] is not None else "+"
    return kw


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The checked ``BenchConfig`` that ``resgrad bench``'s flags give (raises ``UsageError``)."""
    from resgrad.bench_config import FIELDS, BenchConfig

    values = {name: getattr(args, name) for name in FIELDS}
    for name, f in FIELDS.items():
        if values[name] == [] and f.metadata["alone"] is not None:  # a list flag given alone
            values[name] = f.metadata["alone"]
    return BenchConfig(**values).validate()


def cmd_bench(args: argparse.Namespace) -> int:
    from resgrad.bench import run_bench
    from resgrad.bench_config import PARTIAL_NAME
    from resgrad.bench_report import write_bench
    from resgrad.files import prepare_output

    config = bench_config(args)
    prepare_output(args.out, "bench")  # refused before timing, not after
    result = run_bench(config, progress=False if args.quiet else None, checkpoint=args.out / PARTIAL_NAME)
    write_bench(result, args.out)
    if not args.quiet:
        rows = result.rows
        oom = int((rows["status"] == "oom").sum())
        print(
            f"{len(rows)} points on {', '.join(rows['device'].unique())} in {result.wall_seconds:.0f} s"
            + (f" ({oom} out of memory)" if oom else "")
            + f" -> {args.out}/bench.csv, bench.md, bench.png"
        )
    return 0


# ---------------------------------------------------------------- report

EPILOG_REPORT = """\
examples:
  resgrad report runs/depth
  resgrad report results/mnist-depth-sweep --out /tmp/depth-report

DIR (default SWEEP_DIR/report) gets report.md, a self-contained report.html
(figures embedded), figures/*.png (weight_grad_by_layer, activation_grad_by_block,
grad_norm_over_steps, train_loss, test_acc_over_steps, test_error_vs_depth) and
tables/*.csv (by_arch_depth: mean and std over seeds per arch and depth; headline:
plain vs residual per depth; test_acc_by_eval: test accuracy at every evaluation;
runs: one row per grid point with its status). Missing, diverged and failed runs
are listed as such. DIR is written whole and swapped in at the end: an earlier
report there is replaced, a folder holding anything else is refused. In Python,
resgrad.report.load_sweep(SWEEP_DIR) returns the same data as pandas frames.
Prints the path of report.html and the headline table.
"""


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="tables, figures and an HTML report from a sweep folder",
        description="Summarise a sweep folder made by `resgrad sweep`: gradient-norm figures, "
        "tables over seeds, report.md and a self-contained report.html.",
        epilog=EPILOG_REPORT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="a sweep folder (holds sweep.json and runs/)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report folder: new, empty or an earlier report (default: SWEEP_DIR/report)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from resgrad.report import headline_markdown, make_report

    report = make_report(args.sweep_dir, args.out)
    print(f"report: {report.html}")
    print(headline_markdown(report.headline))
    return 0


# ---------------------------------------------------------------- export

EPILOG_EXPORT = """\
examples:
  resgrad export runs/demo --tensorboard runs/tb && tensorboard --logdir runs/tb
  resgrad export runs/residual-d20-w16-s0-3f9c1a --tensorboard runs/tb

LOGDIR/<run_id>/ gets one TensorBoard run per finished run: scalars loss/train,
loss/test, accuracy/test, weight_grad/<index>_<layer>, activation_grad/<index>_<block>
(and any other recorded quantity), and the config with the final metrics in the
HPARAMS tab. Exporting again replaces those runs whole; other folders in LOGDIR are
left alone. Failed and missing runs are skipped with a note. Needs tensorboard
(pip install 'resgrad[tensorboard]').
"""


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write runs or a sweep as TensorBoard event files",
        description="Export a run folder or every finished run of a sweep folder to TensorBoard.",
        epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, metavar="SWEEP_OR_RUN_DIR", help="a run folder or a sweep folder")
    p.add_argument("--tensorboard", type=Path, metavar="LOGDIR", required=True,
                   help="TensorBoard log folder; each run goes to LOGDIR/<run_id>")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from resgrad.export import export_tensorboard

    done = export_tensorboard(args.source, args.tensorboard)
    for note in done.skipped:
        log.warning("skipped %s", note)
    print(f"{len(done.written)} run(s) -> {done.logdir}; view them with: tensorboard --logdir {done.logdir}")
    return 0


# ---------------------------------------------------------------- lesion

EPILOG_LESION = """\
examples:
  resgrad lesion runs/depth
  resgrad lesion results/lesion --max-deleted 10 --draws 5
  resgrad lesion runs/residual-d56-w16-s0-3f9c1a --out /tmp/lesion-56

Deleting a block replaces it by its shortcut: the identity, or where the block
changes the shape, its option A (subsample, zero-pad) or B (1x1 projection)
shortcut. The same operation for both twins (Veit et al. 2016). For every complete
run with saved weights (model.pt): the intact net; each single block deleted; and
k = 2..K random non-downsampling blocks deleted, N draws per k from --seed (the
twins of one depth get the same sets). Test accuracy on the run's own test subset
unless --test-subset is given, in eval mode (batch norm uses its running statistics).

DIR (default SWEEP_DIR/lesion, or RUN_DIR-lesion) gets lesion.csv (run_id, arch, depth, width,
norm, seed, kind = intact|single|random, n_deleted, draw, block (names; a random set
lists them separated by ';'), block_index, downsampling, test_acc, intact_test_acc,
recorded_test_acc, test_images), lesion_single_block.png and lesion_n_deleted.png,
written whole; an earlier lesion folder there is replaced, a folder holding anything
else is refused. `resgrad report` adds a lesion section when SWEEP_DIR/lesion exists.
Runs that are not complete or have no model.pt (made before resgrad saved weights)
are left out with a note.
"""


def _add_lesion(sub: argparse._SubParsersAction) -> None:
    from resgrad.lesion import LesionConfig

    d = LesionConfig()
    p = sub.add_parser(
        "lesion", help="delete blocks of trained nets at test time (Veit et al. 2016)",
        description="Block lesions: test accuracy of trained nets with single blocks and random sets of blocks "
        "replaced by their shortcuts, plain vs residual.",
        epilog=EPILOG_LESION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, metavar="SWEEP_OR_RUN_DIR", help="a sweep folder or a run folder")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="lesion folder (default: SWEEP_DIR/lesion, or RUN_DIR-lesion beside a run folder)")
    p.add_argument("--max-deleted", type=_positive_int, default=d.max_deleted, metavar="K",
                   help=f"random sets of up to K blocks, capped at the non-downsampling blocks there are (default: {d.max_deleted})")
    p.add_argument("--draws", type=_positive_int, default=d.draws, metavar="N", help=f"random sets per size (default: {d.draws})")
    p.add_argument("--test-subset", type=_positive_int, metavar="N", help="the first N test images (default: each run's own)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seeds the random sets (default: {d.seed})")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="test images per forward pass (default: 100 on the CPU, 4000 on CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=d.device, help="(default: auto = CUDA if present)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    p.add_argument("--threads", type=_positive_int,
                   help="torch threads on the CPU (default: torch's choice; 1 where other work shares the cores, "
                   "since oversubscribed threads spin)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    p.set_defaults(func=cmd_lesion)


def cmd_lesion(args: argparse.Namespace) -> int:
    from resgrad.lesion import LesionConfig, check_out, default_out, lesion_display, lesion_table, run_lesion, write_lesion
    from resgrad.markdown import markdown_table

    config = LesionConfig(max_deleted=args.max_deleted, draws=args.draws, test_subset=args.test_subset,
                          seed=args.seed, device=args.device, batch_size=args.batch_size, data_dir=args.data_dir,
                          threads=args.threads)
    out = args.out or default_out(args.source)
    check_out(out)  # before the work, not after it
    result = run_lesion(args.source, config, progress=False if args.quiet else None)
    paths = write_lesion(result, out)
    n_runs = result.frame["run_id"].nunique()
    print(f"lesion: {n_runs} run(s), {len(result.frame)} evaluations -> {paths[0]} and {len(paths) - 1} figures")
    if not args.quiet:
        print(markdown_table(lesion_display(lesion_table(result.frame))))
    return 0


# ---------------------------------------------------------------- shatter

EPILOG_SHATTER = """\
examples:
  resgrad shatter --depths 8 20 56 110 --inits kaiming --seeds 0 1 2 --out runs/shatter
  resgrad shatter --depths 20 56 --norms batch --sweep results/lesion --out runs/shatter-trained

For N test images x, a random direction d per image (unit L2 norm over the 784
normalised pixels, from --direction-seed, the same for every net; a test image has
norm about 28 there) and each distance t: the gradient of the true class's logit
with respect to the input at x and at x + t*d, and their Pearson correlation over
pixels, averaged over the images (Balduzzi et al. 2017). 1: the gradient does not
change; 0: unrelated, "shattered". Nets at init are built as `resgrad train` builds
them (torch.manual_seed(seed), then the model); --sweep adds every complete run with
saved weights, trained and at its own init. Nets run in eval mode (each point's
gradient its own; batch norm uses its running statistics, the identity at init).
float64 by default: a deep plain net's input gradient falls below float32's range.

DIR gets shatter.csv (arch, depth, width, norm, activation, init, seed, state =
init|trained, run_id, distance, correlation (mean over images), correlation_std,
images), shatter_correlation_vs_distance.png and shatter_correlation_vs_depth.png,
written whole; an earlier shatter folder there is replaced, anything else is refused.
"""


def _add_shatter(sub: argparse._SubParsersAction) -> None:
    from resgrad.models import INITS, NORMS
    from resgrad.shatter import DTYPES, ShatterConfig

    d = ShatterConfig()
    p = sub.add_parser(
        "shatter", help="correlation of input gradients at nearby inputs (Balduzzi et al. 2017)",
        description="Shattered gradients: how the gradient of a net's output with respect to its input "
        "decorrelates along a line through a test image, plain vs residual, at init and trained.",
        epilog=EPILOG_SHATTER, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("the nets at init (each flag takes one or more values)")
    g.add_argument("--archs", nargs="+", default=d.archs, metavar="ARCH", help="plain, residual (default: plain residual)")
    g.add_argument("--depths", nargs="+", type=int, default=d.depths, metavar="D",
                   help="weighted layers, 6n+2 each (default: 8 20 56)")
    g.add_argument("--widths", nargs="+", type=int, default=d.widths, metavar="W", help="channels of the first stage (default: 16)")
    g.add_argument("--norms", nargs="+", default=d.norms, metavar="NORM", help=f"{', '.join(NORMS)} (default: none)")
    g.add_argument("--inits", nargs="+", default=d.inits, metavar="INIT",
                   help=f"{', '.join(INITS)}; kaiming is He et al.'s, as in Balduzzi et al. (default: default)")
    g.add_argument("--seeds", nargs="+", type=int, default=d.seeds, metavar="S", help="seeds of the initial weights (default: 0)")
    g.add_argument("--sweep", metavar="DIR", help="also every complete run of this sweep (or run) folder, trained and at init")
    g = p.add_argument_group("the measurement")
    g.add_argument("--images", type=_positive_int, default=d.images, metavar="N", help=f"the first N test images (default: {d.images})")
    g.add_argument("--distances", nargs="*", type=float, default=d.distances, metavar="T",
                   help=f"distances t along the unit direction (default: {' '.join(f'{t:g}' for t in d.distances)})")
    g.add_argument("--figure-distance", type=float, metavar="T",
                   help="the distance of the correlation-vs-depth figure, one of --distances (default: 1, else the middle one)")
    g.add_argument("--direction-seed", type=int, default=d.direction_seed, help="seeds the directions d (default: 0)")
    g.add_argument("--dtype", choices=tuple(DTYPES), default=d.dtype, help="(default: float64)")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="points per forward/backward pass (default: 64 on the CPU, 4096 on CUDA)")
    g.add_argument("--device", choices=["cpu", "cuda", "auto"], default=d.device, help="(default: auto = CUDA if present)")
    g.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    g.add_argument("--threads", type=_positive_int,
                   help="torch threads on the CPU (default: torch's choice; 1 where other work shares the cores, "
                   "since oversubscribed threads spin)")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    p.add_argument("--out", type=Path, metavar="DIR", required=True, help="the shatter folder to write")
    p.set_defaults(func=cmd_shatter)


def cmd_shatter(args: argparse.Namespace) -> int:
    from resgrad.markdown import markdown_table
    from resgrad.shatter import ShatterConfig, check_out, run_shatter, write_shatter

    config = ShatterConfig(
        archs=args.archs, depths=args.depths, widths=args.widths, norms=args.norms, inits=args.inits, seeds=args.seeds,
        sweep=args.sweep, images=args.images, distances=args.distances, figure_distance=args.figure_distance,
        direction_seed=args.direction_seed, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        data_dir=args.data_dir, threads=args.threads,
    ).validate()
    check_out(args.out)  # before the work, not after it
    frame = run_shatter(config, progress=False if args.quiet else None)
    paths = write_shatter(frame, args.out)
    nets = frame.groupby(["arch", "depth", "width", "norm", "init", "seed", "state", "run_id"]).ngroups
    print(f"shatter: {nets} nets x {frame['distance'].nunique()} distances -> {paths[0]} and {len(paths) - 1} figures")
    if not args.quiet:
        at = frame[frame["distance"] == config.at_distance]
        table = at.pivot_table(index=["state", "norm", "width", "init", "depth"], columns="arch",
                               values="correlation", aggfunc="mean").reset_index()
        table.columns.name = None
        print(f"mean correlation at t = {config.at_distance:g}:")
        print(markdown_table(table, lambda v, c: f"{v:.3f}" if isinstance(v, float) else str(v)))
    return 0


# ---------------------------------------------------------------- main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resgrad",
        description="Measure why residual connections make deep networks trainable: "
        "train plain/residual twins on MNIST, record per-layer gradient norms, sweep depths, report, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"resgrad {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback too (also: RESGRAD_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # `resgrad train ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train, _add_bench, _add_sweep, _add_report, _add_export, _add_lesion, _add_shatter]


def _describe(exc: OSError) -> str:
    """One sentence for an OS error: the path and the reason (OutputError says it already)."""
    if isinstance(exc, OutputError):
        return str(exc)
    code = errno.errorcode.get(exc.errno or -1)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}{f' ({code})' if code else ''}."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resgrad`` console script; returns the exit code."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    parser = make_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RESGRAD_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except UsageError as exc:
        if debug:
            raise
        print(f"resgrad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that failed (full disk, permission lost, read-only filesystem), or a read
        if debug:
            raise
        print(f"resgrad {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"resgrad {args.command}: interrupted", file=sys.stderr)
        return 130
