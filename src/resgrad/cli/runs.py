"""`resgrad train` and `resgrad sweep`: their flags come from the TrainConfig field declarations."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from resgrad.cli.args import add_options, config_from, examples, paragraph
from resgrad.errors import UsageError

log = logging.getLogger("resgrad")


def epilog_train() -> str:
    from resgrad.ownership import OWN_NAMES
    from resgrad.records import COLUMNS
    from resgrad.rundir import METRIC_COLUMNS

    files = {
        "metrics.csv": f"metrics.csv ({', '.join(METRIC_COLUMNS)})",
        "grad_norms.parquet": f"grad_norms.parquet ({', '.join(COLUMNS)})",
        "model.pt": "model.pt (the final weights)",
        "summary.json": "summary.json (written last: the final numbers and each file's size and SHA-256)",
    }
    listed = [files.get(name, name) for name in OWN_NAMES["run"] if not name.startswith(".")]
    return examples(
        "resgrad train --arch residual --depth 20 --steps 500 --train-subset 10000",
        "resgrad train --arch seed-residual --epochs 10 --batch-size 64",
        "resgrad train --arch plain --depth 56 --norm batch --record-every 1 --out runs/plain56",
    ) + paragraph(
        f"The run directory holds {', '.join(listed)}. Steps count from 0; a test evaluation on row `step` is "
        "made after that step's update. Accuracies and losses in the files are fractions (test_acc 0.9812), "
        "as pandas reads them; what resgrad prints shows percent."
    )


SWEEP_HELP = {"threads": "torch threads per run on the CPU (default: the CPU cores divided among the workers)"}


def add_config_flags(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """One flag per :class:`~resgrad.config.TrainConfig` field, derived from its declaration.

    ``train`` gets one value per flag; ``sweep`` gets a list flag (``--depths``) for each
    field that is a sweep axis. A value left out takes the field's default (or, in a
    sweep, the --config file's value); the help names the default.
    """
    from resgrad.config import TrainConfig

    add_options(
        p,
        TrainConfig,
        sweep=sweep,
        titles={"model": "the grid and the runs"} if sweep else None,
        helps=SWEEP_HELP if sweep else None,
    )
    p.add_argument("--quiet", action="store_true", help="no progress (bar or lines), warnings only")


# ---------------------------------------------------------------- train


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one model on MNIST and record its gradient norms",
        description="Train one plain or residual net on MNIST, recording per-layer gradient norms.",
        epilog=epilog_train(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p)
    p.add_argument(
        "--out",
        type=Path,
        help="run directory to write: new, empty, or an earlier run with --force (default: runs/<run_id>)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the run folder already at --out (a folder holding other files is never replaced)",
    )
    p.add_argument(
        "--tensorboard",
        type=Path,
        metavar="LOGDIR",
        help="also write the run's TensorBoard events to LOGDIR/<run_id> when it ends (as resgrad export)",
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from resgrad.config import TrainConfig
    from resgrad.files import prepare_output
    from resgrad.rundir import save_run
    from resgrad.train import train

    config = config_from(TrainConfig, args)
    out = args.out or Path("runs") / config.run_id()
    prepare_output(out, "run", force=args.force)  # refused before training, not after
    if args.tensorboard:  # a bad log folder too
        from resgrad.integrations.tensorboard import check_logdir, write_run

        check_logdir(args.tensorboard, [config.run_id()], [out])
    result = train(config, progress=False if args.quiet else None)
    save_run(result, out, force=args.force)
    if args.tensorboard:
        write_run(result, args.tensorboard, source=str(out))
    s = result.summary
    if s["status"] == "complete":
        if not args.quiet:
            print(
                f"{s['run_id']}: complete after {s['steps']} steps: test acc {100 * s['final_test_acc']:.2f} %, "
                f"test loss {s['final_test_loss']:.4f}, {s['images_per_s']:.0f} images/s, "
                f"{s['wall_seconds']:.1f} s -> {out}"
            )
    else:
        log.warning("%s: diverged at step %d -> %s", s["run_id"], s["diverged_at_step"], out)
    return 0


# ---------------------------------------------------------------- sweep


def epilog_sweep() -> str:
    from resgrad.sweeps.folder import SUMMARY_COLUMNS

    return examples(
        "resgrad sweep --out runs/depth --archs plain residual --depths 8 14 20 32 --seeds 0 1 --steps 300 "
        "--train-subset 10000",
        "resgrad sweep --config sweeps/example.toml",
        "resgrad sweep --config sweeps/example.toml --depths 8 14 20 --workers 2 --threads 1",
        "resgrad sweep --config big.toml --out runs/big --executor ray --ray-address auto",
    ) + paragraph(
        "The grid is the cross product of the list flags. A --config file (TOML) takes the long flag names with "
        "'_' for '-' (archs, depths, steps, batch_size, out, workers, ...); flags given on the command line "
        "override it.",
        "DIR holds sweep.json (the grid), runs/<run_id>/ (one run directory per point, as `resgrad train` writes "
        f"it) and summary.csv ({', '.join(SUMMARY_COLUMNS)}; accuracies are fractions, 0.9812 for 98.12 %). "
        "Without a terminal (make, CI, a pipe), a line per finished run says the time elapsed and about how long "
        "the rest will take; --quiet leaves it out. Rerunning the command skips runs already complete "
        "or diverged and retries failed ones; --force reruns all. Each run gets --threads torch threads (default: "
        "CPU cores // workers); a warning says when workers x threads is more than the CPU cores.",
        "Exit code: 0 when no run failed, 1 when some run failed (rerun to retry), 2 on bad input.",
    )


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a resumable grid of training runs (archs x depths x seeds x ...)",
        description="Train every point of a grid of runs, locally in parallel processes or on Ray; "
        "a rerun completes what is missing. The list flags (--archs, --depths, ...) take one or more values.",
        epilog=epilog_sweep(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(p, sweep=True)  # no defaults here: a flag left out can come from --config
    from resgrad.sweeps.grid import SweepOptions

    g = add_options(p, SweepOptions)["the sweep"]
    g.add_argument("--config", type=Path, metavar="FILE", help="a sweep TOML file, e.g. sweeps/example.toml")
    g.add_argument("--force", action="store_true", help="rerun points already complete or diverged")
    g.add_argument(
        "--tensorboard",
        type=Path,
        metavar="LOGDIR",
        help="also write each finished run's TensorBoard events to LOGDIR/<run_id> (as resgrad export)",
    )
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from resgrad.sweeps.grid import CONFIG_KEYS, LIST_FLAGS, RUN_KEYS, SWEEP_KEYS, SweepOptions, SweepSpec, read_config
    from resgrad.sweeps.sweep import count_statuses, run_sweep

    opts = read_config(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS and v is not None}
    if "steps" in given or "epochs" in given:  # the run length given here replaces the file's, whichever kind
        opts.pop("steps", None)
        opts.pop("epochs", None)
    opts.update(given)
    if "out" not in opts:
        raise UsageError('give the sweep folder with --out DIR (or out = "DIR" in the --config file).')
    spec = SweepSpec(
        grid={option: opts[flag] for flag, option in LIST_FLAGS.items() if flag in opts},
        fixed={k: opts[k] for k in RUN_KEYS if k in opts},
    )
    how = SweepOptions(**{k: opts[k] for k in SWEEP_KEYS if k in opts})
    out = Path(how.out)
    summary = run_sweep(
        spec,
        out,
        executor=how.executor,
        workers=how.workers,
        force=args.force,
        ray_address=how.ray_address,
        gpus_per_run=how.gpus_per_run,
        progress=False if args.quiet else None,
        tensorboard=args.tensorboard,
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
