"""Perspective 3, downstream tasks: following the instructions vs solving the task.

:mod:`~triphase.tasks.items` (items, prompts, few-shot) -> :mod:`~triphase.tasks.generation`
(greedy decoding, option log-likelihoods) -> :mod:`~triphase.tasks.scoring` -> :mod:`~triphase.tasks.lmeval`
(real models through lm-evaluation-harness) -> :mod:`~triphase.tasks.sweep` (``tasks.parquet``)
-> :mod:`~triphase.tasks.plots`.
"""
