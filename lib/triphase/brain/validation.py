"""The brain statistics' report card: calibration of the voxelwise test and the ceiling's oracle check.

Both are simulations with a known answer, run from the library's own
functions, so the validation chapter (``05_validation``) and the tests check
the same code the brain chapter runs:

* :func:`permutation_calibration` -- false-positive rate of the voxelwise test
  at ``alpha`` when truth and prediction are independent AR(1) series
  (:func:`triphase.brain.statistics.permutation_false_positive_rate`);
* :func:`ceiling_oracle` -- the split-half ceiling on a simulated participant:
  its noise-free signal must score about 1, and its own generating features
  must score what the ground-truth ceiling says they should.

Each returns rows of the validation table: ``section, statistic, setting,
value, mc_se, goal, passed``.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from triphase.brain.encoding import score_voxels
from triphase.brain.statistics import permutation_false_positive_rate
from triphase.brain.sweep import BrainData, evaluate_design
from triphase.brain.timeseries import story_design
from triphase.datasets.simulated import NO_REGION, SimulatedParticipant, participant_presets

#: Columns of every validation row (the validation chapter concatenates them).
VALIDATION_COLUMNS = ["section", "statistic", "setting", "value", "mc_se", "goal", "passed"]
#: Issue 12's bound on the false-positive rate at alpha = 0.05.
MAX_FALSE_POSITIVE_RATE = 0.06
#: A rate passes when it lies within this many Monte-Carlo standard errors (computed at the goal) of the goal,
#: the rule of :mod:`triphase.phases.calibration` too.
MC_Z = 2.0
#: How far the normalised score may lie from its target (1 for the noise-free signal, the truth for the oracle).
CEILING_TOLERANCE = 0.1
#: The oracle's participant: the tiny preset at 12 mm with a longer test story (about 190 TRs), so that the
#: ceiling voxels (chosen on half the repeats) are numerous enough to average over.
ORACLE_RESOLUTION_MM = 12
ORACLE_TEST_SENTENCES = 150
ORACLE_SUBJECT = "sim01"


def _row(section, statistic, setting, value, mc_se, goal, passed) -> dict:
    return dict(zip(VALIDATION_COLUMNS, (section, statistic, setting, float(value), float(mc_se), goal,
                                         bool(passed))))


def permutation_calibration(phis: Sequence[float] = (0.0, 0.3, 0.6, 0.9), n_trs: int = 200,
                            n_voxels: int = 4000, alpha: float = 0.05, goal: float = MAX_FALSE_POSITIVE_RATE,
                            seed: int = 0) -> pd.DataFrame:
    """False-positive rate of the voxelwise test under AR(1) nulls, one row per ``phi``.

    A row passes when the rate is at most ``goal`` within Monte-Carlo error:
    ``rate - MC_Z * se <= goal`` with ``se`` the standard error of a rate equal
    to the goal over ``n_voxels`` voxels (the rule of the phase rows).

    Examples
    --------
    >>> card = permutation_calibration(phis=(0.0,), n_voxels=1000)
    >>> card[["statistic", "setting", "goal"]].values.tolist()
    [['voxelwise false-positive rate', 'AR(1) phi = 0.0, 200 TRs, 1000 voxels', '<= 0.06 at alpha 0.05']]
    """
    rows = []
    for phi in phis:
        res = permutation_false_positive_rate(phi, n_trs, n_voxels=n_voxels, alpha=alpha, seed=seed)
        se_at_goal = np.sqrt(goal * (1 - goal) / n_voxels)
        rows.append(_row("brain", "voxelwise false-positive rate", f"AR(1) phi = {phi}, {n_trs} TRs, "
                         f"{n_voxels} voxels", res.rate, res.mc_se, f"<= {goal} at alpha {alpha}",
                         res.rate - MC_Z * se_at_goal <= goal))
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


@dataclass(frozen=True)
class CeilingOracle:
    """The split-half ceiling checked against a simulated participant's ground truth.

    Attributes
    ----------
    n_ceiling_voxels : int
        Voxels chosen on the even repeats.
    n_chosen_outside_regions : int
        Of those, voxels without signal (noise-only): false selections.
    perfect : float
        Normalised score of the noise-free signal (target 1).
    oracle : float
        Normalised score of the participant's generating features, fitted by the pipeline.
    oracle_truth : float
        The same test r divided by the ground-truth ceiling of the same voxels (the target of ``oracle``).
    oracle_ci : tuple of float
        The pipeline's interval of ``oracle``.
    all_voxel_ratio : float
        The former all-voxel ratio ``mean r / mean CC_max`` of the oracle (deflated).
    noise_false_positive_rate : float
        Share of noise-only voxels with ``p <= alpha`` in the oracle's fit.
    n_noise_voxels : int
    """

    n_ceiling_voxels: int
    n_chosen_outside_regions: int
    perfect: float
    oracle: float
    oracle_truth: float
    oracle_ci: tuple[float, float]
    all_voxel_ratio: float
    noise_false_positive_rate: float
    n_noise_voxels: int


def oracle_participant(resolution_mm: int = ORACLE_RESOLUTION_MM,
                       test_sentences: int = ORACLE_TEST_SENTENCES) -> SimulatedParticipant:
    """The tiny simulated participant at a coarser grid with a longer test story."""
    params = copy.deepcopy(participant_presets()["tiny"])
    params["space"]["resolution_mm"] = resolution_mm
    params["stimuli"]["test_sentences"] = test_sentences
    return SimulatedParticipant(params)


def ceiling_oracle(participant: SimulatedParticipant | None = None, subject: str = ORACLE_SUBJECT,
                   n_boot: int = 200, alpha: float = 0.05) -> CeilingOracle:
    """Score the participant's noise-free signal and its generating features with the brain pipeline.

    Parameters
    ----------
    participant : SimulatedParticipant, optional
        Default :func:`oracle_participant`.
    subject : str
    n_boot : int
        Bootstrap replicates of the oracle's interval.
    alpha : float
        Level of the noise-voxel false-positive rate.

    Returns
    -------
    CeilingOracle
    """
    ds = oracle_participant() if participant is None else participant
    data = BrainData(ds, subject)
    if data.split_ceiling is None:
        raise ValueError(f"{ds.name} / {subject}: the test story needs at least 4 repeats for the split-half "
                         f"ceiling")
    truth = ds.ground_truth(subject)
    chosen = data.split_ceiling.selected
    inside = truth.regions != NO_REGION
    r_perfect = np.nan_to_num(score_voxels(data.y_test, truth.signal_test))  # noise-only voxels: r = 0
    perfect = float(r_perfect[chosen].mean() / data.split_ceiling.cc_max[chosen].mean())

    families = list(ds.params["families"])

    def generating_design(story):
        timings = ds.word_timings(story)
        words = np.concatenate([ds.true_word_features(story, family) for family in families], axis=1)
        return story_design(words, timings.midpoints, timings.tr_times, timings.trim, story=story)

    rows, voxel_r, details = evaluate_design(data, {s: generating_design(s) for s in data.stories},
                                             n_boot=n_boot, return_details=True)
    whole = rows.set_index("region").loc["all"]
    noise_p = details["pvalues"][~inside]
    noise_p = noise_p[np.isfinite(noise_p)]
    return CeilingOracle(
        n_ceiling_voxels=int(chosen.sum()), n_chosen_outside_regions=int((chosen & ~inside).sum()),
        perfect=perfect, oracle=float(whole["score_ceiling_normalised"]),
        oracle_truth=float(voxel_r[chosen].mean() / truth.cc_max[chosen].mean()),
        oracle_ci=(float(whole["ci_low_ceiling_normalised"]), float(whole["ci_high_ceiling_normalised"])),
        all_voxel_ratio=float(np.nanmean(voxel_r) / np.nanmean(data.ceiling)),
        noise_false_positive_rate=float(np.mean(noise_p <= alpha)), n_noise_voxels=int(noise_p.size),
    )


def ceiling_oracle_table(oracle: CeilingOracle, tolerance: float = CEILING_TOLERANCE,
                         alpha: float = 0.05, goal: float = MAX_FALSE_POSITIVE_RATE) -> pd.DataFrame:
    """Rows of the validation table from a :class:`CeilingOracle`.

    Examples
    --------
    >>> o = CeilingOracle(40, 1, 1.02, 0.66, 0.70, (0.55, 0.8), 0.2, 0.05, 900)
    >>> ceiling_oracle_table(o)["passed"].tolist()
    [True, True, True]
    """
    setting = f"{oracle.n_ceiling_voxels} ceiling voxels chosen on even repeats"
    fpr_se = np.sqrt(max(oracle.noise_false_positive_rate * (1 - oracle.noise_false_positive_rate), 1e-12)
                     / max(oracle.n_noise_voxels, 1))
    se_at_goal = np.sqrt(goal * (1 - goal) / max(oracle.n_noise_voxels, 1))
    return pd.DataFrame([
        _row("brain", "normalised score of the noise-free signal", setting, oracle.perfect, np.nan,
             f"1 +/- {tolerance}", abs(oracle.perfect - 1) <= tolerance),
        _row("brain", "normalised score of the generating features (oracle)",
             f"{setting}; truth {oracle.oracle_truth:.2f}, all-voxel ratio {oracle.all_voxel_ratio:.2f}",
             oracle.oracle, np.nan, f"truth +/- {tolerance}", abs(oracle.oracle - oracle.oracle_truth) <= tolerance),
        _row("brain", "false-positive rate on noise-only voxels (oracle fit)", f"{oracle.n_noise_voxels} voxels",
             oracle.noise_false_positive_rate, fpr_se, f"<= {goal} at alpha {alpha}",
             oracle.noise_false_positive_rate - MC_Z * se_at_goal <= goal),
    ], columns=VALIDATION_COLUMNS)
