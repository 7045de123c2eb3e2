"""Perspective 2, internal states: what changes inside the model across training.

:mod:`~triphase.internal.measures` (pure functions on arrays) -> :mod:`~triphase.internal.sweep`
(every checkpoint, ``internal.parquet``) -> :mod:`~triphase.internal.plots`.
"""
