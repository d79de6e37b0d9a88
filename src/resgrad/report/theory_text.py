"""The words of "Theory and measurement": the report's display table and sentences, and docs/theory.md's values.

Every number here is read from :func:`resgrad.report.theory.theory_table` (``gain_vs_theory.csv``) or
:func:`resgrad.report.theory.tap_table` (``theory_tap_shape.csv``), so the report and the docs say
what the committed tables hold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resgrad.report.gain import WHEN
from resgrad.report.markdown import markdown_table
from resgrad.report.theory import AGREEMENT

WHEN_LABEL = dict(zip(WHEN, ("first recorded step", "last recorded step")))


def _two(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{x:.2f}"


def theory_display(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """:func:`theory_table` as the report shows it: ratios to two decimals, quartiles in brackets."""
    rows = []
    for _, r in table.iterrows():
        row = {k: (f"{r[k]:g}" if k == "lr" else str(r[k])) for k in keys}
        row["step"] = f"{r['when'].split()[0]} ({r['step']})"
        row["blocks compared"] = f"{r['n_compared']} of {r['n_blocks']}"
        row["measured / predicted: median [quartiles]"] = (
            f"{_two(r['median_ratio'])} [{_two(r['q25_ratio'])}–{_two(r['q75_ratio'])}]"
        )
        row["min–max"] = f"{_two(r['min_ratio'])}–{_two(r['max_ratio'])}"
        row["median, no option-A stride-2 blocks"] = _two(r["median_ratio_exact"])
        row["median gain measured / predicted"] = (
            f"{r['median_measured_gain']:.3g} / {r['median_predicted_gain']:.3g}" if r["n_compared"] else "—"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_sentences(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """What the table says, in sentences: the first-step medians against the 0.85–1.15 band, the last-step ones."""
    low, high = AGREEMENT
    out = []
    for when in WHEN:
        t = table[(table["when"] == when) & (table["n_compared"] > 0)]
        if t.empty:
            continue
        inside = t["median_ratio"].between(low, high)
        outside = "; ".join(f"{_where(r, keys)}: {r['median_ratio']:.2f}" for _, r in t[~inside].iterrows())
        out.append(
            f"At the {WHEN_LABEL[when]}, the median measured/predicted gain per group lies between "
            f"{t['median_ratio'].min():.2f} and {t['median_ratio'].max():.2f}: {int(inside.sum())} of {len(t)} "
            f"groups inside {low:g}–{high:g}" + (f"; outside: {outside}." if outside else ".")
        )
    return out


def _where(r: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k} {r[k]}" if k == "depth" else str(r[k]) for k in keys)


def exact_sentence(table: pd.DataFrame) -> str:
    """The first- and last-step medians over the blocks that need no stand-in for E2ˢᶜ (not option A with stride 2)."""
    parts = []
    for when in WHEN:
        v = table.loc[table["when"] == when, "median_ratio_exact"].dropna()
        if len(v):
            parts.append(f"{v.min():.2f}–{v.max():.2f} at the {WHEN_LABEL[when]}")
    return ("Without the option-A stride-2 blocks, the medians lie in " + " and ".join(parts) + ".") if parts else ""


def training_sentence(table: pd.DataFrame, keys: list[str]) -> str:
    """How far each group's median moved from the first to the last recorded step: the largest moves."""
    first = table[table["when"] == WHEN[0]].set_index(keys)["median_ratio"]
    last = table[table["when"] == WHEN[1]].set_index(keys)["median_ratio"]
    both = pd.concat({"first": first, "last": last}, axis=1).dropna()
    if both.empty:
        return ""
    both["change"] = both["last"] / both["first"]
    up = both.sort_values("change").iloc[[-1, 0]].reset_index()
    moves = [f"{_where(r, keys)}: {r['first']:.2f} → {r['last']:.2f}" for _, r in up.iterrows()]
    return (
        f"From the first to the last recorded step the groups' medians changed by factors between "
        f"{both['change'].min():.2f} and {both['change'].max():.2f} (largest rise {moves[0]}; largest fall {moves[1]})."
    )


def tap_sentence(taps: pd.DataFrame) -> str:
    """The size of the tap-shape approximation and of the one-update offset of model.pt (:func:`tap_table`)."""
    if taps.empty:
        return ""
    return (
        "Tap shape: between step 0 and the final weights the border factors of the weighted layers moved by at "
        f"most {100 * taps['max_border_change'].max():.2f} % (the interpolation between the two is exact at both "
        f"ends); equal tap energies would be off by up to {100 * taps['max_equal_taps_error'].max():.2f} % at step 0. "
        "model.pt holds the weights one update after the last recorded step: their ‖W‖ differs from the recorded "
        f"one by at most {100 * taps['max_norm_offset'].max():.2f} %. CSV: `tables/theory_tap_shape.csv`."
    )


def docs_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The agreement per group as docs/theory.md shows it: medians [quartiles] at the first and last recorded step."""
    rows = []
    for values, group in table.groupby(keys, sort=False):
        row = dict(zip(keys, (str(v) for v in values)))
        for when in WHEN:
            r = group[group["when"] == when]
            if r.empty:
                continue
            r = r.iloc[0]
            label = when + " step"
            row[f"{label}: median [quartiles]"] = f"{r['median_ratio']:.2f} [{r['q25_ratio']:.2f}–{r['q75_ratio']:.2f}]"
            row[f"{label}, no option-A stride-2 blocks"] = _two(r["median_ratio_exact"])
            row[f"{label}: blocks compared"] = f"{r['n_compared']} of {r['n_blocks']}"
            if when == WHEN[0]:
                gains = (
                    f"{r['median_measured_gain']:.3g} / {r['median_predicted_gain']:.3g}" if r["n_compared"] else "—"
                )
                row["first step: median gain, measured / predicted"] = gains
        rows.append(row)
    return pd.DataFrame(rows)


def docs_values(table: pd.DataFrame, taps: pd.DataFrame) -> dict[str, str]:
    """The generated blocks of docs/theory.md (results/make_docs.py's section ``theory``), from the two tables as read back.

    Keys: ``agreement`` (the first- and last-step sentences, the one without option-A stride-2 blocks
    and the one on training), ``table`` (:func:`docs_table` as Markdown) and ``taps`` (:func:`tap_sentence`).
    """
    keys = list(table.columns[: list(table.columns).index("when")])
    sentences = [*agreement_sentences(table, keys), exact_sentence(table), training_sentence(table, keys)]
    return {
        "agreement": "\n\n".join(s for s in sentences if s),
        "table": markdown_table(docs_table(table, keys)).rstrip("\n"),
        "taps": tap_sentence(taps).replace(" CSV: `tables/theory_tap_shape.csv`.", ""),
    }
