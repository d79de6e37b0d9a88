"""The lesion table and figures (resgrad.report.lesion) on a hand-made lesion.csv: one definition of "k blocks
deleted" in every number and heading, fractions in the table's CSV form, percent where a person reads it."""

from __future__ import annotations

import pandas as pd
import pytest

from resgrad.report.lesion import (
    COLUMNS,
    TABLE_HEADINGS,
    figure_n_deleted,
    figure_single_block,
    lesion_curve,
    lesion_display,
    lesion_table,
)
from resgrad.report.plotting import png

# residual-14: six blocks; blocks 2 and 4 downsample. Accuracies per seed (fractions).
SINGLE = {0: [0.80, 0.60, 0.20, 0.70, 0.30, 0.90], 1: [0.70, 0.50, 0.40, 0.90, 0.10, 0.70]}
DOWN = {2, 4}
RANDOM = {0: {2: [0.40, 0.30], 3: [0.25, 0.15]}, 1: {2: [0.50, 0.20], 3: [0.35, 0.05]}}
INTACT = {0: 0.95, 1: 0.97}


def _frame() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        head = dict(run_id=f"r{seed}", arch="residual", depth=14, width=4, norm="batch", seed=seed)
        tail = dict(intact_test_acc=INTACT[seed], recorded_test_acc=INTACT[seed], test_images=100)
        rows.append({**head, "kind": "intact", "n_deleted": 0, "test_acc": INTACT[seed], **tail})
        for i, acc in enumerate(SINGLE[seed]):
            rows.append(
                {**head, "kind": "single", "n_deleted": 1, "block": f"b{i}", "block_index": i}
                | {"downsampling": i in DOWN, "test_acc": acc, **tail}
            )
        for k, accs in RANDOM[seed].items():
            for d, acc in enumerate(accs):
                rows.append(
                    {**head, "kind": "random", "n_deleted": k, "draw": d, "downsampling": False, "test_acc": acc} | tail
                )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"draw": "Int64", "block_index": "Int64", "downsampling": "boolean"})


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_the_table_counts_identity_shortcut_blocks_only_and_keeps_fractions() -> None:
    table = lesion_table(_frame()).iloc[0]
    identity = {s: [a for i, a in enumerate(SINGLE[s]) if i not in DOWN] for s in (0, 1)}
    assert table["intact_acc"] == pytest.approx(_mean(list(INTACT.values())))
    assert table["one_deleted_acc_mean"] == pytest.approx(_mean(identity[0] + identity[1]))
    assert table["one_deleted_acc_worst"] == pytest.approx(_mean([min(identity[0]), min(identity[1])]))
    down = [a for s in (0, 1) for i, a in enumerate(SINGLE[s]) if i in DOWN]
    assert table["one_downsampling_deleted_acc_mean"] == pytest.approx(_mean(down))
    assert table["most_deleted_k"] == 3
    assert table["most_deleted_acc_mean"] == pytest.approx(_mean(RANDOM[0][3] + RANDOM[1][3]))


def test_the_curve_and_the_table_give_one_number_for_one_block_deleted() -> None:
    frame = _frame()
    curve = lesion_curve(frame).set_index("n_deleted")
    table = lesion_table(frame).iloc[0]
    assert curve.loc[0, "test_acc_mean"] == pytest.approx(table["intact_acc"])
    assert curve.loc[1, "test_acc_mean"] == pytest.approx(table["one_deleted_acc_mean"])
    assert curve.loc[1, "evaluations"] == 8  # 4 identity-shortcut blocks x 2 seeds, no downsampling block
    assert curve.loc[3, "test_acc_mean"] == pytest.approx(table["most_deleted_acc_mean"])
    assert curve.loc[2, "test_acc_min"] == 0.20 and curve.loc[2, "test_acc_max"] == 0.50


def test_the_displayed_table_is_in_percent_names_its_blocks_and_prints_k_whole() -> None:
    shown = lesion_display(lesion_table(_frame())).iloc[0]
    assert list(shown.index) == list(TABLE_HEADINGS.values())
    assert shown["intact (%)"] == "96.00"
    assert (
        shown["1 identity-shortcut block deleted: mean over blocks (%)"] == "72.50"
    )  # (0.8 + 0.6 + 0.7 + 0.9 + 0.7 + 0.5 + 0.9 + 0.7) / 8
    assert shown["k (most identity-shortcut blocks deleted)"] == "3"
    for heading in TABLE_HEADINGS.values():
        if "deleted" in heading:
            assert "identity-shortcut" in heading or "downsampling" in heading, heading
        if "acc" in heading or "deleted:" in heading or heading.startswith("intact"):
            assert heading.endswith("(%)"), heading


def test_the_figure_of_accuracy_against_k_draws_the_tables_numbers_and_labels_chance() -> None:
    frame = _frame()
    fig, caption = figure_n_deleted(frame)
    png(fig)
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.lines if len(ln.get_xdata()) > 2]
    drawn = dict(zip(line.get_xdata(), line.get_ydata()))
    table = lesion_table(frame).iloc[0]
    assert drawn[1] == pytest.approx(100 * table["one_deleted_acc_mean"])  # the table's number, in percent
    assert drawn[3] == pytest.approx(100 * table["most_deleted_acc_mean"])
    assert "identity-shortcut" in ax.get_xlabel() and "identity-shortcut" in fig._suptitle.get_text()
    assert ax.get_ylabel() == "test accuracy (%)" and ax.get_ylim() == (0, 100)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "chance (10 %)" in labels
    assert "identity-shortcut" in caption and "as in the lesion table" in caption


def test_the_single_block_figure_labels_its_lines() -> None:
    fig, _ = figure_single_block(_frame())
    png(fig)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert {"chance (10 %)", "downsampling block"} <= set(labels)
    assert [ln for ln in fig.axes[0].lines if list(ln.get_ydata()) == [10.0, 10.0]]  # the chance line at 10 %
