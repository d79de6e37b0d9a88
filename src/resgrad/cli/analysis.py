"""The commands that read run and sweep folders: report, export, lesion, shatter, landscape."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from resgrad.cli.args import add_options, config_from, examples, paragraph

log = logging.getLogger("resgrad")

# ---------------------------------------------------------------- report


def epilog_report() -> str:
    from resgrad.report.figures import FIGURES, GAIN_FIGURE
    from resgrad.report.landscape import FIGURES as LANDSCAPE_FIGURES
    from resgrad.report.lesion import FIGURES as LESION_FIGURES
    from resgrad.report.page import TABLES
    from resgrad.report.theory_page import FIGURES as THEORY_FIGURES

    figures = [name for name, _, _ in [*FIGURES, GAIN_FIGURE]] + list(THEORY_FIGURES)
    figures += [f"{n} (with a lesion study)" for n in LESION_FIGURES]
    figures += [f"{n} (with a landscape study)" for n in LANDSCAPE_FIGURES]
    tables = "; ".join(f"{name}: {what}" for name, what in TABLES.items())
    return examples(
        "resgrad report runs/depth",
        "resgrad report results/mnist-depth-sweep --out /tmp/depth-report",
    ) + paragraph(
        f"DIR (default SWEEP_DIR/report) gets report.md, a self-contained report.html (figures embedded), "
        f"figures/*.png ({', '.join(figures)}) and tables/*.csv ({tables}). Missing, diverged and failed runs "
        "are listed as such. DIR is written whole and swapped in at the end: an earlier report there is replaced, "
        "a folder holding anything else is refused. In Python, resgrad.report.load_sweep(SWEEP_DIR) returns the "
        "same data as pandas frames. Prints the path of report.html and the headline table."
    )


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="tables, figures and an HTML report from a sweep folder",
        description="Summarise a sweep folder made by `resgrad sweep`: gradient-norm figures, "
        "tables over seeds, report.md and a self-contained report.html.",
        epilog=epilog_report(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="a sweep folder (holds sweep.json and runs/)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="report folder: new, empty or an earlier report (default: SWEEP_DIR/report)",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from resgrad.report.page import make_report
    from resgrad.report.tables import headline_markdown

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


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write runs or a sweep as TensorBoard event files",
        description="Export a run folder or every finished run of a sweep folder to TensorBoard.",
        epilog=EPILOG_EXPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, metavar="SWEEP_OR_RUN_DIR", help="a run folder or a sweep folder")
    p.add_argument(
        "--tensorboard",
        type=Path,
        metavar="LOGDIR",
        required=True,
        help="TensorBoard log folder; each run goes to LOGDIR/<run_id>",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from resgrad.integrations.tensorboard import export_tensorboard

    done = export_tensorboard(args.source, args.tensorboard)
    for note in done.skipped:
        log.warning("skipped %s", note)
    print(f"{len(done.written)} run(s) -> {done.logdir}; view them with: tensorboard --logdir {done.logdir}")
    return 0


# ---------------------------------------------------------------- lesion


def epilog_lesion() -> str:
    from resgrad.report.lesion import COLUMNS, FIGURES

    return examples(
        "resgrad lesion runs/depth",
        "resgrad lesion results/lesion --max-deleted 10 --draws 5",
        "resgrad lesion runs/residual-d56-w16-s0-3f9c1a --out /tmp/lesion-56",
    ) + paragraph(
        "Deleting a block replaces it by its shortcut: the identity, or where the block changes the shape, its "
        "option A (subsample, zero-pad) or B (1x1 projection) shortcut. The same operation for both twins (Veit "
        "et al. 2016). For every complete run with saved weights (model.pt): the intact net; each single block "
        "deleted; and k = 2..K random non-downsampling blocks deleted, N draws per k from --seed (the twins of "
        "one depth get the same sets). Test accuracy on the run's own test subset unless --test-subset is given, "
        "in eval mode (batch norm uses its running statistics).",
        f"DIR (default SWEEP_DIR/lesion, or RUN_DIR-lesion) gets lesion.csv ({', '.join(COLUMNS)}; kind is "
        "intact, single or random; a random set lists its blocks separated by ';'; accuracies are fractions) and "
        f"{', '.join(f'{n}.png' for n in FIGURES)}, written whole; an earlier lesion folder there is replaced, "
        "a folder holding anything else is refused. `resgrad report` adds a lesion section when SWEEP_DIR/lesion "
        "exists. Runs that are not complete or have no model.pt (made before resgrad saved weights) are left out "
        "with a note. Prints the lesion table, test accuracy in %: every count of deleted blocks (one block, k "
        "blocks) counts the identity-shortcut blocks only, as in lesion_n_deleted.png; deleting one downsampling "
        "block has its own column.",
    )


def _saved_nets_parser(
    sub: argparse._SubParsersAction, name: str, cls: type, quiet: str, **parser: str
) -> argparse.ArgumentParser:
    """The parser of an experiment on saved nets: SWEEP_OR_RUN_DIR, --out (default beside it), cls's options, --quiet."""
    p = sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **parser)
    p.add_argument("source", type=Path, metavar="SWEEP_OR_RUN_DIR", help="a sweep folder or a run folder")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"{name} folder (default: SWEEP_DIR/{name}, or RUN_DIR-{name} beside a run folder)",
    )
    add_options(p, cls)
    p.add_argument("--quiet", action="store_true", help=quiet)
    return p


def add_lesion(sub: argparse._SubParsersAction) -> None:
    from resgrad.experiments.lesion import LesionConfig

    p = _saved_nets_parser(
        sub,
        "lesion",
        LesionConfig,
        "no progress (bar or lines) and no table; warnings only",
        help="delete blocks of trained nets at test time (Veit et al. 2016)",
        description="Block lesions: test accuracy of trained nets with single blocks and random sets of blocks "
        "replaced by their shortcuts, plain vs residual.",
        epilog=epilog_lesion(),
    )
    p.set_defaults(func=cmd_lesion)


def cmd_lesion(args: argparse.Namespace) -> int:
    from resgrad.experiments.lesion import LesionConfig, check_out, default_out, run_lesion, write_lesion
    from resgrad.report.lesion import lesion_display, lesion_table
    from resgrad.report.markdown import markdown_table

    config = config_from(LesionConfig, args)
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


def epilog_shatter() -> str:
    from resgrad.report.shatter import COLUMNS, FIGURES

    return examples(
        "resgrad shatter --depths 8 20 56 110 --inits kaiming --seeds 0 1 2 --out runs/shatter",
        "resgrad shatter --depths 20 56 --norms batch --sweep results/lesion --out runs/shatter-trained",
    ) + paragraph(
        "For N test images x, a random direction d per image (unit L2 norm over the 784 normalised pixels, from "
        "--direction-seed, the same for every net; a test image has norm about 28 there) and each distance t: the "
        "gradient of the true class's logit with respect to the input at x and at x + t*d, and their Pearson "
        "correlation over pixels, averaged over the images (Balduzzi et al. 2017). 1: the gradient does not "
        'change; 0: unrelated, "shattered". Nets at init are built as `resgrad train` builds them '
        "(torch.manual_seed(seed), then the model); --sweep adds every complete run with saved weights, trained "
        "and at its own init. Nets run in eval mode (each point's gradient its own; batch norm uses its running "
        "statistics, the identity at init). float64 by default: a deep plain net's input gradient falls below "
        "float32's range.",
        f"DIR (default SWEEP_DIR/shatter with --sweep, RUN_DIR-shatter beside a run folder, else runs/shatter) "
        f"gets shatter.csv ({', '.join(COLUMNS)}; state is init or trained; correlation is the mean over "
        f"images; NaN for a net whose input gradient is constant, e.g. zero, at every pixel) and "
        f"{', '.join(f'{n}.png' for n in FIGURES)}, written whole; an earlier shatter folder there is replaced, "
        "anything else is refused. Nets without a correlation are named in a warning and left out of the figures.",
    )


def add_shatter(sub: argparse._SubParsersAction) -> None:
    from resgrad.experiments.shatter import ShatterConfig

    p = sub.add_parser(
        "shatter",
        help="correlation of input gradients at nearby inputs (Balduzzi et al. 2017)",
        description="Shattered gradients: how the gradient of a net's output with respect to its input "
        "decorrelates along a line through a test image, plain vs residual, at init and trained.",
        epilog=epilog_shatter(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, ShatterConfig)
    p.add_argument("--quiet", action="store_true", help="no progress (bar or lines) and no table; warnings only")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="shatter folder (default: SWEEP_DIR/shatter with --sweep, RUN_DIR-shatter beside a run folder, "
        "else runs/shatter)",
    )
    p.set_defaults(func=cmd_shatter)


def cmd_shatter(args: argparse.Namespace) -> int:
    from resgrad.experiments.shatter import ShatterConfig, check_out, default_out, run_shatter, write_shatter
    from resgrad.report.markdown import markdown_table

    config = config_from(ShatterConfig, args)
    out = args.out or default_out(config.sweep)
    check_out(out)  # before the work, not after it
    frame = run_shatter(config, progress=False if args.quiet else None)
    paths = write_shatter(frame, out)
    nets = frame.groupby(["arch", "depth", "width", "norm", "init", "seed", "state", "run_id"]).ngroups
    print(f"shatter: {nets} nets x {frame['distance'].nunique()} distances -> {paths[0]} and {len(paths) - 1} figures")
    if not args.quiet:
        at = frame[frame["distance"] == config.at_distance]
        keys = ["state", "norm", "width", "init", "depth"]
        # groupby + unstack, not pivot_table: a net without a correlation keeps its column, shown as "—"
        table = at.groupby([*keys, "arch"])["correlation"].mean().unstack("arch").reset_index()
        table.columns.name = None
        print(f"mean correlation at t = {config.at_distance:g}:")
        print(markdown_table(table, lambda v, c: _correlation(v) if c not in keys else str(v)))
        if at["correlation"].isna().any():
            print("—: no correlation (the input gradient is constant, e.g. zero, at every pixel)")
    return 0


def _correlation(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


# ---------------------------------------------------------------- landscape


def epilog_landscape() -> str:
    from resgrad.report.landscape import COLUMNS, CURVATURE_COLUMNS, FIGURES

    return examples(
        "resgrad landscape results/lesion --threads 2",
        "resgrad landscape runs/residual-d56-w8-s0-6bc904 --grid 11 --out /tmp/landscape-56",
    ) + paragraph(
        "For every complete run with saved weights (model.pt), on the first N training images with batch norm in "
        "eval mode (its running statistics; the loss is the mean cross-entropy, without weight decay): the loss "
        "and accuracy at theta + a*d + b*e on a G x G grid over [-S, S]^2, d and e random Gaussian directions "
        "filter-normalised as in Li et al. (2018) (each filter of a conv, each row of a linear layer rescaled to "
        "the norm of the same filter of the weights; biases and batch-norm parameters not moved), the same random "
        "draws for every net of the same shape (the twins of one depth); the same along d alone at 2G-1 points; "
        "the straight line from the run's initial state, rebuilt from its seed as `resgrad train` builds it, to "
        "its trained state at 2G-1 points (Goodfellow et al. 2015); and the largest and smallest eigenvalue of the "
        "loss's Hessian with respect to the conv and linear weights (as Li et al.'s code) at the trained weights by K "
        "Lanczos steps on Hessian-vector products; "
        "they bound the spectrum from inside. The surface is evaluated on a copy with batch norm folded into "
        "the convolutions (the same function; channels-last on the CPU).",
        f"DIR (default SWEEP_DIR/landscape, or RUN_DIR-landscape) gets landscape.csv ({', '.join(COLUMNS)}; kind "
        "is 2d, 1d or init-final, whose alpha is t from 0 at init to 1 trained and beta empty; accuracies are "
        f"fractions), curvature.csv (one row per run: {', '.join(CURVATURE_COLUMNS)}; the errors are Lanczos "
        "residual bounds; seconds is the wall time of the run's whole measurement) and "
        f"{', '.join(f'{n}.png' for n in FIGURES)}, written whole; an earlier landscape folder there is replaced, "
        "a folder holding anything else is refused. `resgrad report` adds a loss "
        "landscape section when SWEEP_DIR/landscape exists. Runs that are not complete or have no model.pt are "
        "left out with a note.",
    )


def add_landscape(sub: argparse._SubParsersAction) -> None:
    from resgrad.experiments.landscape import LandscapeConfig

    p = _saved_nets_parser(
        sub,
        "landscape",
        LandscapeConfig,
        "no progress bar, no table",
        help="loss surfaces, the path from init and Hessian extremes of trained nets (Li et al. 2018)",
        description="Loss landscapes: the training loss of trained nets on a plane of filter-normalised random "
        "directions, along one of them and on the straight line from init, and the extreme eigenvalues of its "
        "Hessian, plain vs residual.",
        epilog=epilog_landscape(),
    )
    p.set_defaults(func=cmd_landscape)


def cmd_landscape(args: argparse.Namespace) -> int:
    from resgrad.experiments.landscape import LandscapeConfig, check_out, default_out, run_landscape, write_landscape
    from resgrad.report.landscape import landscape_display, landscape_table
    from resgrad.report.markdown import markdown_table

    config = config_from(LandscapeConfig, args)
    out = args.out or default_out(args.source)
    check_out(out)  # before the work, not after it
    result = run_landscape(args.source, config, progress=False if args.quiet else None)
    paths = write_landscape(result, out)
    n_runs = result.frame["run_id"].nunique()
    print(
        f"landscape: {n_runs} run(s), {len(result.frame)} points -> {paths[0]}, {paths[1]} and {len(paths) - 2} figures"
    )
    if not args.quiet:
        print(markdown_table(landscape_display(landscape_table(result.frame, result.curvature))))
    return 0
