"""Reports: a sweep folder read into pandas frames, its tables and figures, and the page.

Data flow: :mod:`~resgrad.report.sweepdata` (:func:`load_sweep`: the frames) ->
:mod:`~resgrad.report.tables`, :mod:`~resgrad.report.gain` (tables over seeds) and
:mod:`~resgrad.report.figures`, :mod:`~resgrad.report.figures_grad` (figures, drawn with
:mod:`~resgrad.report.plotting`) -> :mod:`~resgrad.report.page` (:func:`make_report`:
report.md and report.html). :mod:`~resgrad.report.lesion`, :mod:`~resgrad.report.shatter` and
:mod:`~resgrad.report.landscape` draw the experiments' results. A new figure goes in a ``figures*`` module.
"""

# The README's `resgrad.report.load_sweep`; the page (and seaborn) loads only where a module needs it.
from resgrad.report.sweepdata import Sweep, load_sweep

__all__ = ["Sweep", "load_sweep"]
