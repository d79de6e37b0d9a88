"""GitHub-flavoured Markdown tables from pandas frames (used by the report and the benchmark write-ups)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd


def _cell(text: str) -> str:
    """A cell's text with ``|`` escaped and line breaks turned into spaces, so it cannot break the row."""
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, fmt: Callable[[Any, str], str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``frame``.

    Numeric columns are right-aligned, the others left-aligned; ``|`` in a header or
    cell is escaped. The text ends with a newline, so joining it with ``"\\n"`` to the
    next block leaves the blank line Markdown needs to end the table.

    Args:
        frame: the rows to show (the index is not shown).
        fmt: ``fmt(value, column) -> str`` for each cell; default ``str(value)``.
    """
    fmt = fmt or (lambda value, column: str(value))
    cols = [str(c) for c in frame.columns]
    right = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]
    lines = [
        "| " + " | ".join(_cell(c) for c in cols) + " |",
        "|" + "|".join("---:" if r else ":---" for r in right) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(fmt(v, c)) for v, c in zip(row, cols)) + " |")
    return "\n".join(lines) + "\n"
