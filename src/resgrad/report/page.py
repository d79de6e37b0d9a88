"""The report of a sweep folder: ``report.md`` and a self-contained ``report.html``.

:func:`make_report` writes ``report.md``, ``report.html`` (figures embedded as
base64 PNG), ``figures/*.png`` (drawn by :mod:`resgrad.report.figures`) and ``tables/*.csv``
into a report folder, swapped in whole. The numbers come from
:mod:`resgrad.report.sweepdata` (:func:`load_sweep`, the :class:`Sweep` frames) and
:mod:`resgrad.report.tables` (the tables and their display forms); this module
lays them out.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from resgrad.errors import UsageError
from resgrad.files import atomic_dir, prepare_output
from resgrad.report.figures import GAIN_FIGURE, render_figures
from resgrad.report.gain import gain_display, sweep_gain_table, table_keys
from resgrad.report.lesion import COUNTED, lesion_display, lesion_figures, lesion_table, read_lesion
from resgrad.report.markdown import markdown_table
from resgrad.report.sweepdata import FINISHED, STATUSES, Sweep, load_sweep, option_text
from resgrad.report.tables import (
    acc_by_eval_display,
    acc_by_eval_table,
    headline_display,
    headline_table,
    runs_display,
    summary_display,
    summary_table,
)

log = logging.getLogger(__name__)

# The tables a report writes (tables/<name>.csv), in the order it shows them; lesion only with lesion/lesion.csv.
TABLES = {
    "headline": "plain vs residual per depth",
    "by_arch_depth": "mean and std over seeds per arch and depth",
    "block_gain": "the backward gain per block beside the activations' mean derivative",
    "test_acc_by_eval": "test accuracy at every evaluation",
    "lesion": "block-lesion accuracies, with identity-shortcut blocks deleted (when SWEEP_DIR/lesion/lesion.csv "
    "exists)",
    "runs": "one row per grid point with its status",
}

MAX_EVALS_SHOWN = 15  # the report shows test accuracy per evaluation as a table up to this many evaluations per run


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`make_report` wrote."""

    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path]
    tables: list[Path]
    headline: pd.DataFrame = field(repr=False)


NOTES = [
    "**log10 grad ratio** = log10(‖∂L/∂W‖ of the first weighted layer / ‖∂L/∂W‖ of the last, the fc layer), "
    "at each run's first and at its last recorded step: −2 means the first layer's gradient is 100 times smaller "
    "than the last layer's. A zero or non-finite norm is kept: −inf (first-layer norm zero), inf, or NaN.",
    "**Means and spreads** are over seeds: mean ± sample standard deviation (a single run shows its value alone). "
    "Test accuracy, training loss (mean of the last 50 steps), updates to 90 % and the gradient ratio at the last "
    "recorded step come from complete runs only: a diverged run stops early, often on a non-finite record. "
    "The gradient ratio at the first recorded step (step 0, before any update) comes from every finished run, "
    "complete or diverged. Diverged runs are counted in their own column.",
    "**Updates to 90 % acc** = step + 1 of the first test evaluation with accuracy ≥ 90 %, so it is only as fine "
    "as the sweep's evaluation interval; runs that never got there are counted as not reached.",
    "**Units**: accuracies are in % on this page and fractions (0.9812 for 98.12 %) in every CSV file "
    "(`final_test_acc_mean`, `test_acc_mean`, `intact_acc` ...).",
    "Full numbers: `tables/by_arch_depth.csv` (one row per arch and depth, separate mean and std columns), "
    "`tables/headline.csv`, `tables/test_acc_by_eval.csv` (test accuracy at every evaluation) and "
    "`tables/runs.csv` (one row per run, with its status and error). "
    "In Python: `resgrad.report.load_sweep(path)` returns these frames and every metric and gradient norm.",
]


def _run_values(sweep: Sweep, key: str, values: list) -> list:
    """The grid's values of ``key`` that the runs have, in grid order, then any other the runs have.

    A grid value no run has is left out: the seed archs have one depth whatever the grid says.
    """
    if key not in sweep.runs.columns or not len(sweep.runs):
        return values
    present = {v.item() if hasattr(v, "item") else v for v in sweep.runs[key].dropna()}
    return [v for v in values if v in present] + sorted(present.difference(values), key=str) or values


def _sweep_paragraphs(sweep: Sweep) -> list[str]:
    """Paragraphs describing the sweep: grid, fixed options, run counts, versions."""
    grid = {k: _run_values(sweep, k, vals) for k, vals in sweep.spec.validate().grid.items()}
    varied = [f"{k} ∈ {{{', '.join(option_text(k, v) for v in vals)}}}" for k, vals in grid.items() if len(vals) > 1]
    same = [f"{k}={option_text(k, vals[0])}" for k, vals in grid.items() if len(vals) == 1]
    same += [f"{k}={v}" for k, v in sweep.spec.fixed.items() if k != "data_dir" and v is not None]
    counts = ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in STATUSES)
    fin = sweep.finished
    made = "; ".join(
        f"{name} {', '.join(sorted(map(str, fin[col].dropna().unique())))}"
        for name, col in (("resgrad", "resgrad_version"), ("torch", "torch_version"), ("on", "device_name"))
        if fin[col].notna().any()
    )
    out = [
        f"Sweep folder `{sweep.path}`: {len(sweep.runs)} runs ({counts}).",
        f"Varied: {'; '.join(varied) or 'nothing'}. The same for every run: {', '.join(same)}.",
    ]
    if made:
        out.append(f"Made with {made}.")
    return out


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    # A table wider than the page scrolls sideways inside its own box; the page itself never does.
    return f'<div class="table-box"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# No element wider than the window (tests/report/test_report_html.py checks this in a real browser at 1280 x 800):
# the page's width includes its padding, tables scroll in their box, long words and paths break.
_CSS = """
*,*::before,*::after{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}
h1,h2,h3,p,li,figcaption{overflow-wrap:anywhere}
.table-box{max-width:100%;overflow-x:auto;margin:.5em 0 1.5em}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2;white-space:normal;min-width:4.5em;vertical-align:bottom}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0 2em}img{max-width:100%;height:auto}figcaption{font-size:.9em;color:#444;max-width:60em}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
"""


class _Page:
    """report.md and report.html side by side: each piece is added to both."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def paragraph(self, text: str) -> None:
        self.md.extend([text, ""])
        self.html.append(f"<p>{_inline_html(text)}</p>")

    def heading(self, level: int, text: str) -> None:
        self.md.extend([f"{'#' * level} {text}", ""])
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def table(self, frame: pd.DataFrame, csv: str) -> None:
        self.md.extend([markdown_table(frame), f"CSV: `tables/{csv}.csv`", ""])
        self.html.extend([_html_table(frame), f"<p>CSV: <code>tables/{csv}.csv</code></p>"])

    def figure(self, name: str, heading: str, png: bytes, caption: str) -> None:
        self.md.extend([f"![{heading}](figures/{name}.png)", "", f"*{caption}*", ""])
        data = base64.b64encode(png).decode("ascii")
        self.html.append(
            f'<figure><img alt="{html.escape(heading)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
        )

    def bullets(self, items: list[str]) -> None:
        self.md.extend([*(f"- {n}" for n in items), ""])
        self.html.extend(["<ul>", *(f"<li>{_inline_html(n)}</li>" for n in items), "</ul>"])

    def markdown(self) -> str:
        return "\n".join(self.md)

    def page(self) -> str:
        return (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(self.html)
            + "\n</body></html>\n"
        )


def _check_out(out: Path) -> None:
    """Refuse a report folder that would replace something other than an earlier report (see prepare_output)."""
    prepare_output(out, "report")


def _test_acc_section(page: _Page, sweep: Sweep, table: pd.DataFrame) -> None:
    evals = table.groupby(["arch", "depth", *sweep.facets])["step"].nunique().max() if len(table) else 0
    page.heading(2, "Test accuracy during training")
    if table.empty:
        page.paragraph("No complete run: no test accuracy to show. CSV: `tables/test_acc_by_eval.csv`")
    elif evals > MAX_EVALS_SHOWN:
        page.paragraph(
            f"{evals} evaluations per run, too many for a table here: see figure 5 and "
            "`tables/test_acc_by_eval.csv` (mean, std and count of complete runs at every evaluation)."
        )
    else:
        page.paragraph(
            "Test accuracy (%) of the complete runs at each evaluation, mean ± std over seeds; "
            "columns: the evaluation after that many updates (or at the end of that epoch)."
        )
        page.table(acc_by_eval_display(table, sweep.facets, sweep.steps_per_epoch), "test_acc_by_eval")


def _lesion_section(
    page: _Page, sweep: Sweep, tables: dict[str, pd.DataFrame], first: int
) -> list[tuple[str, str, bytes, str]]:
    """The block-lesion section when ``SWEEP_DIR/lesion/lesion.csv`` exists (``resgrad lesion``); its figures."""
    path = sweep.path / "lesion" / "lesion.csv"
    if not path.is_file():
        return []
    page.heading(2, "Block lesions")
    try:
        frame = read_lesion(path)
    except (OSError, ValueError, KeyError) as exc:
        page.paragraph(f"`lesion/lesion.csv` cannot be read ({exc}); rerun `resgrad lesion {sweep.path}`.")
        return []
    table = lesion_table(frame)
    tables["lesion"] = table
    page.paragraph(
        f"Test accuracy (%) of {frame['run_id'].nunique()} trained runs with blocks deleted at test time, "
        "each replaced by its shortcut (Veit et al. 2016), from `lesion/lesion.csv` (`resgrad lesion`); "
        f"means over seeds. Every count of deleted blocks counts the {COUNTED} only (the downsampling blocks "
        "have a shortcut of their own and are never among them): one such block deleted, the mean over those "
        "blocks and the worst of them; k deleted, random sets of k of them. The table and the figure "
        "of accuracy against k use these same numbers; deleting one downsampling block has its own column."
    )
    page.table(lesion_display(table), "lesion")
    figures = [(name, heading, png, caption) for name, (heading, png, caption) in lesion_figures(frame).items()]
    for i, (name, heading, png, caption) in enumerate(figures, first):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png, caption)
    return figures


def _gain_section(
    page: _Page, sweep: Sweep, tables: dict[str, pd.DataFrame], first: int
) -> list[tuple[str, str, bytes, str]]:
    """The backward gain per block next to the activations' mean σ′ (:mod:`resgrad.report.gain`); its figure."""
    table = sweep_gain_table(sweep)
    tables["block_gain"] = table
    page.heading(2, "Backward gain per block")
    page.paragraph(
        "The vanishing-gradient argument: going back through a layer multiplies the backward signal by "
        "about σ′(z)·w, and σ′ ≤ 1/4 for a sigmoid (≤ 1 for tanh; 0 or 1 for ReLU). Measured here: the "
        "**gain** of block l, ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖ from the recorded backward signal (below 1: the "
        "signal shrinks through the block; block 0's input is not recorded), and the mean σ′ over the "
        "input elements of the block's activation modules (`act_deriv`). Table: medians over every "
        "block l ≥ 1 of every run, at each run's first recorded step (complete and diverged runs) and "
        "at its last (complete runs only)."
    )
    figures = render_figures(sweep, [GAIN_FIGURE])
    for i, (name, heading, png, caption) in enumerate(figures, first):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png, caption)
    page.table(gain_display(table, table_keys(sweep)), "block_gain")
    return figures


def make_report(sweep_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Report:
    """Write the report of a sweep folder.

    The report folder is written whole: it is filled beside its place and swapped in at the
    end, so a crash leaves the earlier report as it was. An earlier report in ``out_dir``
    is replaced; any other non-empty folder is refused.

    Args:
        sweep_dir: a sweep folder (``sweep.json``, ``runs/``).
        out_dir: where to write (default ``SWEEP_DIR/report``).

    Returns:
        A :class:`Report` with the paths written and the headline table.

    Raises:
        UsageError: ``sweep_dir`` is not a sweep folder or holds no finished run, or ``out_dir`` is
            a file or a folder that is not an earlier report (nothing is written).
    """
    sweep = load_sweep(sweep_dir)
    if sweep.finished.empty:
        counts = ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in STATUSES if s not in FINISHED)
        raise UsageError(f"sweep folder {sweep_dir} holds no finished run ({counts}); run `resgrad sweep` on it first.")
    out = Path(out_dir) if out_dir is not None else sweep.path / "report"
    _check_out(out)

    figures = render_figures(sweep)
    headline = headline_table(sweep)
    by_depth = summary_table(sweep)
    test_acc = acc_by_eval_table(sweep)
    tables = {"by_arch_depth": by_depth, "headline": headline, "test_acc_by_eval": test_acc, "runs": sweep.runs}

    page = _Page(f"resgrad report: {sweep.path.resolve().name}")
    for text in _sweep_paragraphs(sweep):
        page.paragraph(text)
    page.heading(2, "Headline: plain vs residual")
    page.paragraph(
        "Mean over seeds of the final test accuracy and of log10(first-layer / last-layer weight-gradient "
        "norm) at the first and the last recorded step."
    )
    page.table(headline_display(headline), "headline")
    page.heading(2, "Figures")
    for i, (name, heading, png, caption) in enumerate(figures, 1):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png, caption)
    page.heading(2, "Per arch and depth")
    page.table(summary_display(by_depth, sweep.facets), "by_arch_depth")
    figures = figures + _gain_section(page, sweep, tables, len(figures) + 1)
    _test_acc_section(page, sweep, test_acc)
    figures = figures + _lesion_section(page, sweep, tables, len(figures) + 1)
    page.heading(2, "Runs")
    page.table(runs_display(sweep), "runs")
    page.heading(2, "How to read the tables")
    page.bullets(NOTES)

    with atomic_dir(out) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "tables").mkdir()
        for name, _, png, _ in figures:
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        for name, frame in tables.items():
            _write_table(tmp / "tables" / f"{name}.csv", frame)
        (tmp / "report.md").write_text(page.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(page.page(), encoding="utf-8")
    log.info("report written to %s", out)
    return Report(
        out,
        out / "report.md",
        out / "report.html",
        [out / "figures" / f"{name}.png" for name, _, _, _ in figures],
        [out / "tables" / f"{name}.csv" for name in tables],
        headline,
    )


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    """CSV with NaN written as ``NaN`` (visible, and read back as NaN by pandas), inf as ``inf``."""
    frame.to_csv(path, index=False, na_rep="NaN")
