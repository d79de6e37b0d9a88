"""The lists that describe a report are the code's: it writes exactly the tables of resgrad.report.page.TABLES
that apply and the figures of resgrad.report.figures.FIGURES, GAIN_FIGURE and the theory section's (and the lesion
or landscape figures with such a study), in that order; `resgrad report --help` names them from the same lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import copy_sweep, exit_code

from resgrad.experiments.landscape import LandscapeConfig, run_landscape, write_landscape
from resgrad.experiments.lesion import LesionConfig, run_lesion, write_lesion
from resgrad.report.figures import FIGURES, GAIN_FIGURE
from resgrad.report.landscape import FIGURES as LANDSCAPE_FIGURES
from resgrad.report.lesion import FIGURES as LESION_FIGURES
from resgrad.report.page import TABLES, make_report
from resgrad.report.theory_page import FIGURES as THEORY_FIGURES

MAIN_FIGURES = [name for name, _, _ in [*FIGURES, GAIN_FIGURE]] + list(THEORY_FIGURES)


def _written(out: Path) -> tuple[list[str], list[str], list[str]]:
    """The report's table files, its figure files, and its figures in the order report.md shows them."""
    tables = sorted(p.stem for p in (out / "tables").iterdir())
    figures = sorted(p.stem for p in (out / "figures").iterdir())
    shown = re.findall(r"\(figures/([\w-]+)\.png\)", (out / "report.md").read_text())
    return tables, figures, shown


@pytest.mark.slow
def test_a_report_writes_the_listed_tables_and_figures_and_with_a_lesion_or_landscape_study_its_own(
    tiny_sweep: Path, tmp_path: Path, data_dir: Path
) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    report = make_report(sweep, tmp_path / "plain-report")
    tables, figures, shown = _written(report.out_dir)
    assert tables == sorted(set(TABLES) - {"lesion", "landscape"})  # each only with its study in SWEEP_DIR
    assert figures == sorted(MAIN_FIGURES) and shown == MAIN_FIGURES
    assert sorted(p.stem for p in report.tables) == tables and [p.stem for p in report.figures] == MAIN_FIGURES

    lesion = run_lesion(
        sweep, LesionConfig(max_deleted=1, draws=1, test_subset=20, device="cpu", data_dir=str(data_dir))
    )
    write_lesion(lesion, sweep / "lesion")
    report = make_report(sweep, tmp_path / "lesion-report")
    tables, figures, shown = _written(report.out_dir)
    assert tables == sorted(set(TABLES) - {"landscape"})
    assert figures == sorted([*MAIN_FIGURES, *LESION_FIGURES]) and shown == [*MAIN_FIGURES, *LESION_FIGURES]

    config = LandscapeConfig(grid=3, images=8, hessian_steps=2, device="cpu", data_dir=str(data_dir))
    write_landscape(run_landscape(sweep, config, progress=False), sweep / "landscape")
    report = make_report(sweep, tmp_path / "landscape-report")
    tables, figures, shown = _written(report.out_dir)
    assert tables == sorted(TABLES)
    everything = [*MAIN_FIGURES, *LESION_FIGURES, *LANDSCAPE_FIGURES]
    assert figures == sorted(everything) and shown == everything


def test_report_help_names_every_listed_table_and_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["report", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in [*MAIN_FIGURES, *LESION_FIGURES, *LANDSCAPE_FIGURES, *TABLES]:
        assert name in text, name
