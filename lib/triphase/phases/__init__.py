"""Phases: piecewise-linear fits of training curves, their inference and the boundaries of every perspective.

:mod:`~triphase.phases.piecewise` (fits, BIC) -> :mod:`~triphase.phases.inference` (bootstrap,
monotone null, ``detect_phases``) -> :mod:`~triphase.phases.boundaries` (each perspective's boundaries)
-> :mod:`~triphase.phases.table` (the alignment table); :mod:`~triphase.phases.text` and
:mod:`~triphase.phases.plots` present them; :mod:`~triphase.phases.synthesis` reads the tables of a run
and assembles the cross-perspective inputs of the synthesis chapter (``04_phases``);
:mod:`~triphase.phases.learning` checks what a model learned against issue 14's goals (the organism chapter).
"""
