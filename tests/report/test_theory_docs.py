"""docs/theory.md's numbers are those of the committed activation sweep's tables (results/activation-sweep/report).

Its generated blocks (``<!-- make_docs: theory.KEY -->`` … ``<!-- /make_docs -->``) hold
:func:`resgrad.report.theory_text.docs_values` of ``gain_vs_theory.csv`` and ``theory_tap_shape.csv``.
To rewrite them after the sweep is remade: ``python tests/report/test_theory_docs.py`` (with ``PYTHONPATH=src``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from resgrad.report.theory_text import docs_values

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "theory.md"
TABLES = ROOT / "results" / "activation-sweep" / "report" / "tables"
BLOCK = re.compile(r"(<!-- make_docs: theory\.([a-z0-9_]+) -->\n)(.*?)(<!-- /make_docs -->)", re.S)


def _values() -> dict[str, str]:
    return docs_values(pd.read_csv(TABLES / "gain_vs_theory.csv"), pd.read_csv(TABLES / "theory_tap_shape.csv"))


def filled(text: str, values: dict[str, str]) -> str:
    """``text`` with every theory block holding its value (a block without a value raises KeyError)."""
    return BLOCK.sub(lambda m: m[1] + values[m[2]] + m[4], text)


def test_every_generated_block_of_docs_theory_is_current() -> None:
    text = DOC.read_text()
    values = _values()
    assert set(m[2] for m in BLOCK.finditer(text)) == set(values), "docs/theory.md lacks a block, or has an unknown one"
    assert filled(text, values) == text, "docs/theory.md is stale: python tests/report/test_theory_docs.py rewrites it"


def test_the_blocks_hold_what_the_tables_say() -> None:
    values = _values()
    table = pd.read_csv(TABLES / "gain_vs_theory.csv")
    first = table[table["when"] == "first"]
    assert f"{first['median_ratio'].min():.2f} and {first['median_ratio'].max():.2f}" in values["agreement"]
    assert values["table"].count("\n") == 2 + len(table) // 2  # header, rule, a row per activation, arch and depth


if __name__ == "__main__":
    DOC.write_text(filled(DOC.read_text(), _values()))
