"""docs/performance.md shows what the committed measurements in results/profile and results/bf16 give."""

from __future__ import annotations

from pathlib import Path

import bf16_effect
import profile_step

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "performance.md"


def test_the_profile_tables_are_those_of_the_committed_profile() -> None:
    block = profile_step.render(ROOT / "results" / "profile")
    assert block in DOCS.read_text(), "docs/performance.md is not current: run `make profile` (or its --docs)"


def test_the_bfloat16_tables_are_those_of_the_committed_measurements() -> None:
    block = bf16_effect.render(ROOT / "results" / "bf16")
    assert block in DOCS.read_text(), "docs/performance.md is not current: run `make bf16` (or its --docs)"
