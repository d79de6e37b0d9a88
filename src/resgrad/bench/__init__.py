"""Benchmarks: ``resgrad bench`` times forward, backward and training steps.

Data flow: :mod:`~resgrad.bench.config` (what to time) -> :mod:`~resgrad.bench.timing` (one
step, timed; a device's peak) -> :mod:`~resgrad.bench.run` (the run loop: one row per point)
-> :mod:`~resgrad.bench.report` (tables, bench.md, bench.png, the files).
"""
