"""Perspective 1, brain alignment: voxelwise encoding models of fMRI responses from word features.

:mod:`~triphase.brain.timeseries` (Lanczos, delays) -> :mod:`~triphase.brain.encoding` (ridge)
-> :mod:`~triphase.brain.statistics` (ceiling, permutations, bootstrap, FDR)
-> :mod:`~triphase.brain.sweep` (every checkpoint, ``brain.parquet``) -> :mod:`~triphase.brain.plots`.
"""
