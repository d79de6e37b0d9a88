"""Sweeps: a grid of runs, resumable, on local processes or Ray.

- :mod:`~resgrad.sweeps.grid`: the grid (:class:`SweepSpec`), from flags, TOML or ``sweep.json``;
- :mod:`~resgrad.sweeps.folder`: the sweep folder on disk and :func:`sweep_runs`, the runs it holds;
- :mod:`~resgrad.sweeps.executors`: where runs train (this process, a process pool, Ray);
- :mod:`~resgrad.sweeps.sweep`: :func:`run_sweep`, the driver that writes the folder.

A new executor goes in ``executors.py``.
"""
