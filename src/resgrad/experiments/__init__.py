"""Experiments on saved nets: each reads the runs of a sweep (or one run) and writes a folder of its own.

- :mod:`~resgrad.experiments.saved`: the runs with usable weights (:func:`saved_runs`);
- :mod:`~resgrad.experiments.lesion`: block lesions (Veit et al. 2016);
- :mod:`~resgrad.experiments.shatter`: shattered gradients (Balduzzi et al. 2017);
- :mod:`~resgrad.experiments.landscape`: loss landscapes and Hessian extremes (Li et al. 2018), with
  its numerics in :mod:`~resgrad.experiments.landscape_numerics`.

A new experiment is a module here (its measurement and its output folder), its tables and
figures in :mod:`resgrad.report`, and a command in :mod:`resgrad.cli.analysis`.
"""
