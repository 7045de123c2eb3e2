"""The method's report card: every calibration check of the book in one table.

The validation chapter (``05_validation``) runs these simulations from the
library's own functions, so what it checks is what the other chapters run:

* phases (:mod:`triphase.phases.calibration`): false-positive rates of the
  monotone test and of the triple label on monotone, plateau and peak curves,
  power on planted rise-fall-rise curves and coverage of breakpoint intervals,
  at the organism's and Pythia's schedules under AR(1) noise;
* brain (:mod:`triphase.brain.validation`): the voxelwise test under AR(1)
  nulls and the split-half ceiling against a simulated participant's truth;
* internal states (:mod:`triphase.internal.measures`,
  :mod:`triphase.internal.change_points`): debiased CKA of independent
  matrices, probe selectivity of a random embedding, and false-positive rates
  of the change points under AR(1) noise.

Every row has the columns :data:`VALIDATION_COLUMNS` (``section, statistic,
setting, value, mc_se, goal, passed``); ``passed`` is None for rows shown
for contrast (the biased CKA).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from triphase.brain.validation import VALIDATION_COLUMNS, ceiling_oracle, ceiling_oracle_table, permutation_calibration
from triphase.internal.change_points import false_positive_rates as change_point_false_positive_rates
from triphase.internal.measures import cka_null_table, probe_selectivity_random_embedding
from triphase.phases.calibration import (
    MC_Z,
    NOMINAL_ALPHA,
    breakpoint_coverage,
    false_positive_rate,
    power,
    schedule_x,
)

#: Curves without a triple pattern whose false-positive rates are checked.
NULL_SHAPES = ("monotone", "plateau", "peak")


@dataclass(frozen=True)
class ValidationSettings:
    """Sizes of the validation simulations (the book's default keeps the chapter within its time budget).

    Attributes
    ----------
    schedules : checkpoint schedules ("organism": 23 checkpoints, "pythia": 20)
    phis : AR(1) coefficients of the noise between checkpoints
    noise_sd : noise of the null curves and of the goals (a rise of about 1)
    power_noise_sds : noise levels of the power rows (the goal applies at ``noise_sd``)
    n_sim, n_boot, n_null : simulated curves per row, bootstrap and null replicates per curve
    coverage_sims, coverage_boot : draws and bootstrap replicates of the coverage rows (a 95 % interval
        needs more replicates than a label: too few make the intervals too short)
    brain_phis : AR(1) coefficients of the voxelwise nulls
    brain_voxels : null voxels per coefficient
    cka_ratios, cka_n, cka_sims : d/n ratios, n and pairs for the CKA null
    probe_dim, probe_sims : embedding size and repeats of the probe check
    seed : int
    """

    schedules: tuple = ("organism", "pythia")
    phis: tuple = (0.0, 0.3, 0.6)
    noise_sd: float = 0.05
    power_noise_sds: tuple = (0.05, 0.1)
    n_sim: int = 100
    n_boot: int = 19
    n_null: int = 199
    coverage_sims: int = 50
    coverage_boot: int = 49
    brain_phis: tuple = (0.0, 0.3, 0.6, 0.9)
    brain_voxels: int = 4000
    cka_ratios: tuple = (1 / 16, 1 / 2, 2)
    cka_n: int = 256
    cka_sims: int = 20
    probe_dim: int = 128
    probe_sims: int = 3
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _phase_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of :mod:`triphase.phases.calibration` in the validation columns."""
    # coverage is counted over the planted breakpoints of the draws that found their number, not over draws
    units = np.where(frame["statistic"] == "breakpoint coverage", "planted breakpoints", "draws")
    setting = [f"{r['shape']} curve, {r['schedule']} schedule, AR(1) phi = {r['phi']}, noise sd {r['noise_sd']}, "
               f"{r['n_sim']} {unit}" for r, unit in zip(frame.to_dict("records"), units)]
    statistic = np.where(frame["statistic"].isin(["monotone test", "triple label"]),
                         "false-positive rate: " + frame["statistic"], frame["statistic"])
    return pd.DataFrame({"section": "phases", "statistic": statistic, "setting": setting, "value": frame["rate"],
                         "mc_se": frame["mc_se"], "goal": frame["goal"], "passed": frame["passed"].astype(bool)},
                        columns=VALIDATION_COLUMNS)


def phase_checks(settings: ValidationSettings, progress=None) -> pd.DataFrame:
    """False-positive, power and coverage rows over the schedules and AR(1) coefficients."""
    frames = []
    for schedule in settings.schedules:
        for phi in settings.phis:
            if progress is not None:
                progress(f"phases: {schedule} schedule, phi = {phi}")
            for shape in NULL_SHAPES:
                frames.append(false_positive_rate(shape, schedule, phi, settings.noise_sd, settings.n_sim,
                                                  settings.seed, settings.n_boot, settings.n_null))
            for noise_sd in settings.power_noise_sds:
                frames.append(power(schedule, phi, noise_sd, settings.n_sim, settings.seed, settings.n_boot,
                                    settings.n_null))
            frames.append(breakpoint_coverage(schedule, phi, settings.noise_sd, settings.coverage_sims,
                                              settings.seed, settings.coverage_boot))
    frame = pd.concat(frames, ignore_index=True)
    rows = _phase_rows(frame)
    # the power goal holds at the book's noise level; other levels trace the power curve
    curve = frame["statistic"].str.startswith("power") & (frame["noise_sd"] != settings.noise_sd)
    rows.loc[curve, "goal"] = "none (power at another noise level)"
    rows["passed"] = rows["passed"].astype(object)
    rows.loc[curve, "passed"] = None
    return rows


def internal_checks(settings: ValidationSettings) -> pd.DataFrame:
    """CKA of independent matrices (biased vs debiased), probe selectivity of a random embedding, and the
    false-positive rates of the internal change points under AR(1) noise."""
    cka = cka_null_table(ratios=settings.cka_ratios, n=settings.cka_n, n_sim=settings.cka_sims, seed=settings.seed)
    rows = [{"section": "internal", "statistic": f"CKA of independent matrices ({r['estimator']})",
             "setting": f"d/n = {r['ratio']:g} (d = {r['d']}, n = {r['n']})", "value": r["mean"],
             "mc_se": r["mc_se"], "goal": r["goal"], "passed": None if pd.isna(r["pass"]) else bool(r["pass"])}
            for r in cka.to_dict("records")]
    probe = probe_selectivity_random_embedding(d=settings.probe_dim, n_sim=settings.probe_sims, seed=settings.seed)
    rows += [{"section": "internal", "statistic": f"probe selectivity: {r['representation'].replace('_', ' ')}",
              "setting": f"d = {r['d']}; accuracy {r['accuracy']:.2f}, control task {r['control']:.2f}",
              "value": r["selectivity"], "mc_se": r["selectivity_sd"] / np.sqrt(settings.probe_sims),
              "goal": r["goal"], "passed": bool(r["pass"])} for r in probe.to_dict("records")]
    rates = change_point_false_positive_rates(schedule_x("organism"), settings.phis, settings.n_sim,
                                              NOMINAL_ALPHA, settings.n_null, settings.seed)
    for r in rates.to_dict("records"):
        mc_se = float(np.sqrt(NOMINAL_ALPHA * (1 - NOMINAL_ALPHA) / r["n_sim"]))
        rows.append({"section": "internal", "statistic": f"false-positive rate: change point ({r['boundary']})",
                     "setting": f"AR(1) noise without a change, phi = {r['phi']}, organism schedule, "
                                f"{r['n_sim']} draws", "value": r["rate"], "mc_se": mc_se,
                     "goal": f"<= {NOMINAL_ALPHA:.0%}", "passed": bool(r["rate"] - MC_Z * mc_se <= NOMINAL_ALPHA)})
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


def brain_checks(settings: ValidationSettings) -> pd.DataFrame:
    """Voxelwise false-positive rates under AR(1) nulls and the ceiling's oracle check."""
    permutation = permutation_calibration(phis=settings.brain_phis, n_voxels=settings.brain_voxels,
                                          seed=settings.seed)
    return pd.concat([permutation, ceiling_oracle_table(ceiling_oracle())], ignore_index=True)


def validation_table(settings: ValidationSettings | None = None, sections: Sequence[str] = ("phases", "brain",
                                                                                             "internal"),
                     progress=None) -> pd.DataFrame:
    """Every check of the chosen sections, one row each (:data:`VALIDATION_COLUMNS`).

    Parameters
    ----------
    settings : ValidationSettings, optional
    sections : sequence of {"phases", "brain", "internal"}
    progress : callable, optional
        Called with a short message before each group of simulations.
    """
    settings = ValidationSettings() if settings is None else settings
    unknown = [s for s in sections if s not in ("phases", "brain", "internal")]
    if unknown:
        raise ValueError(f"unknown validation section(s) {unknown}; available: phases, brain, internal")
    frames = []
    if "phases" in sections:
        frames.append(phase_checks(settings, progress))
    if "brain" in sections:
        if progress is not None:
            progress("brain: voxelwise nulls and the ceiling oracle")
        frames.append(brain_checks(settings))
    if "internal" in sections:
        if progress is not None:
            progress("internal: CKA and probe selectivity")
        frames.append(internal_checks(settings))
    return pd.concat(frames, ignore_index=True)


def validation_summary(table: pd.DataFrame) -> str:
    """One paragraph generated from the table's pass/fail column.

    Examples
    --------
    >>> t = pd.DataFrame({"section": ["brain", "brain", "internal"], "statistic": ["a", "b", "c"],
    ...                   "setting": ["s", "t", "u"], "passed": [True, False, None]})
    >>> validation_summary(t)
    '1 of 2 checks meet their goal (1 row is shown for contrast only). Not met: b (t).'
    """
    judged = table[table["passed"].notna()]
    met = judged["passed"].astype(bool)
    contrast = len(table) - len(judged)
    text = f"{int(met.sum())} of {len(judged)} checks meet their goal"
    if contrast:
        text += f" ({contrast} row{'s are' if contrast > 1 else ' is'} shown for contrast only)"
    failed = judged[~met]
    if failed.empty:
        return text + "."
    listed = "; ".join(f"{r.statistic} ({r.setting})" for r in failed.itertuples())
    return f"{text}. Not met: {listed}."
