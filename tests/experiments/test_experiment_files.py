"""The lists that describe the files of lesion and shatter are the code's: lesion.csv and shatter.csv have the
header of their COLUMNS, and the folders hold exactly the files resgrad.ownership.OWN_NAMES lists for them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from resgrad.experiments.lesion import LesionConfig, run_lesion, write_lesion
from resgrad.experiments.shatter import ShatterConfig, run_shatter, write_shatter
from resgrad.ownership import MARKER, OWN_NAMES
from resgrad.report import lesion, shatter


def _listed(kind: str) -> list[str]:
    return sorted(name for name in OWN_NAMES[kind] if not name.startswith("."))  # less the folder marker


def test_lesion_writes_its_columns_and_its_listed_files(tiny_sweep: Path, tmp_path: Path, data_dir: Path) -> None:
    result = run_lesion(tiny_sweep, LesionConfig(max_deleted=1, draws=1, test_subset=20, data_dir=str(data_dir)))
    written = write_lesion(result, tmp_path / "lesion")
    assert list(pd.read_csv(tmp_path / "lesion" / "lesion.csv").columns) == lesion.COLUMNS
    # and the manifest, .resgrad.json: every file resgrad wrote there
    assert sorted(p.name for p in (tmp_path / "lesion").iterdir()) == sorted([MARKER, *(p.name for p in written)])
    assert sorted(p.name for p in written) == _listed("lesion")
    assert sorted(f"{name}.png" for name in lesion.FIGURES) == sorted(p.name for p in written if p.suffix == ".png")


def test_shatter_writes_its_columns_and_its_listed_files(tiny_sweep: Path, tmp_path: Path, data_dir: Path) -> None:
    config = ShatterConfig(
        sweep=str(tiny_sweep), archs=["residual"], depths=[8], widths=[2], images=2, data_dir=str(data_dir)
    )
    written = write_shatter(run_shatter(config, progress=False), tmp_path / "shatter")
    assert list(pd.read_csv(tmp_path / "shatter" / "shatter.csv").columns) == shatter.COLUMNS
    # and the manifest, .resgrad.json: every file resgrad wrote there
    assert sorted(p.name for p in (tmp_path / "shatter").iterdir()) == sorted([MARKER, *(p.name for p in written)])
    assert sorted(p.name for p in written) == _listed("shatter")
    assert sorted(f"{name}.png" for name in shatter.FIGURES) == sorted(p.name for p in written if p.suffix == ".png")
