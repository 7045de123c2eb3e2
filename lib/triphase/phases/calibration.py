"""The phase method's own report card: error rates, power and coverage measured on simulated curves.

Curves with a planted shape are drawn at a real checkpoint schedule, with
Gaussian AR(1) noise in checkpoint order (``phi = 0`` is independent noise),
and analysed by :func:`~triphase.phases.inference.detect_phases_many` with the
library's defaults. Each function returns a tidy DataFrame, one row per
statistic, with the measured ``rate``, its Monte-Carlo standard error
``mc_se``, the ``goal`` in words and ``passed``. A rate bounded above (a
false-positive rate) passes when it is not significantly above its goal,
``rate - MC_Z * mc_se <= goal``; one bounded below (power, coverage) when
``rate + MC_Z * mc_se >= goal``; ``mc_se`` uses the goal's binomial sd.

Shapes (``SHAPES``), with knots placed at fractions of the checkpoints (so
that every segment holds checkpoints on an uneven schedule) and a total rise
of about 1 (``noise_sd`` is in the same units):

* ``"monotone"``: a logistic rise (no dip: the monotone test and the triple
  label should not fire);
* ``"plateau"``: rise, flat, rise (no dip);
* ``"peak"``: rise then fall (the monotone test *should* reject; the triple
  label should not fire);
* ``"rise-fall-rise"``: the planted triple pattern (power, breakpoint coverage).

Schedules (``schedule``): ``"organism"``, the default organism's 23
checkpoints, and ``"pythia"``, :data:`PYTHIA_CHECKPOINTS` log-spaced
checkpoints of Pythia's 154; or an array of training steps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from triphase.models.checkpoints import Checkpoint, pythia_steps, select_checkpoints
from triphase.models.organism import OrganismConfig
from triphase.phases.inference import detect_phases_many
from triphase.phases.noise import ar1_noise
from triphase.phases.piecewise import DEFAULT_CI_LEVEL, log_tokens

#: Pythia's final step and checkpoint spacing.
PYTHIA_FINAL_STEP, PYTHIA_EVERY = 143_000, 1_000
#: Log-spaced Pythia checkpoints a real-tier run analyses.
PYTHIA_CHECKPOINTS = 20
#: Monte-Carlo z for pass/fail (a rate passes unless it differs from its goal by more than this many se).
MC_Z = 2.0
#: Nominal level of the tests.
NOMINAL_ALPHA = 1 - DEFAULT_CI_LEVEL
#: Goals of the report card.
POWER_GOAL = 0.80
COVERAGE_GOAL = 0.90
#: Knots of the shapes: (fractions of the checkpoints, values).
SHAPES = {
    "monotone": None,                                                 # logistic, see _shape_values
    "plateau": ((0.0, 0.35, 0.7, 1.0), (0.0, 0.5, 0.5, 1.0)),
    "peak": ((0.0, 0.55, 1.0), (0.0, 1.0, 0.6)),
    "rise-fall-rise": ((0.0, 0.4, 0.7, 1.0), (0.0, 1.0, 0.6, 1.4)),
}
#: Steepness of the logistic (per unit of the normalised axis).
LOGISTIC_STEEPNESS = 10.0
#: Simulations per batch passed to the vectorised detector (bounds memory).
BATCH = 50


def schedule_x(schedule) -> np.ndarray:
    """The x positions (:func:`log_tokens`) of a checkpoint schedule: a name or an array of steps.

    Examples
    --------
    >>> schedule_x("organism").size, schedule_x("pythia").size
    (23, 20)
    >>> schedule_x([0, 1, 2, 4]).round(2).tolist()
    [-0.3, 0.0, 0.3, 0.6]
    """
    if isinstance(schedule, str):
        if schedule == "organism":
            steps = OrganismConfig.preset("default").checkpoint_steps
        elif schedule == "pythia":
            every = pythia_steps(PYTHIA_FINAL_STEP, PYTHIA_EVERY)
            checkpoints = [Checkpoint("pythia", f"step{s}", s, s, "hub") for s in every]
            steps = [c.step for c in select_checkpoints(checkpoints, PYTHIA_CHECKPOINTS)]
        else:
            raise ValueError(f"schedule must be 'organism', 'pythia' or a list of steps, got {schedule!r}")
    else:
        steps = list(schedule)
    steps = np.asarray(steps, dtype=float)
    return log_tokens(steps, steps)


def shape_values(shape: str, x) -> np.ndarray:
    """The noise-free curve of a planted shape at positions ``x`` (knots at fractions of the checkpoints).

    Examples
    --------
    >>> shape_values("peak", np.arange(5.0)).round(2).tolist()
    [0.0, 0.45, 0.91, 0.82, 0.6]
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    x = np.sort(np.asarray(x, dtype=float))
    rank = np.linspace(0.0, 1.0, x.size)
    if SHAPES[shape] is None:
        return 1 / (1 + np.exp(-LOGISTIC_STEEPNESS * (rank - 0.5)))
    fractions, values = SHAPES[shape]
    knots_x = np.interp(fractions, rank, x)
    return np.interp(x, knots_x, values)


def planted_breakpoints(shape: str, x) -> np.ndarray:
    """x positions of a piecewise-linear shape's interior knots."""
    if SHAPES.get(shape) is None:
        raise ValueError(f"shape {shape!r} has no planted breakpoints")
    x = np.sort(np.asarray(x, dtype=float))
    fractions = np.asarray(SHAPES[shape][0][1:-1])
    return np.interp(fractions, np.linspace(0.0, 1.0, x.size), x)


def simulate(shape: str, schedule, phi: float, noise_sd: float, n_sim: int, seed: int = 0, n_boot: int = 49,
             n_null: int = 49, **detect_kwargs):
    """Draw ``n_sim`` noisy curves of a shape and detect their phases: ``(x, results)``."""
    if n_sim < 1:
        raise ValueError(f"n_sim must be >= 1, got {n_sim}")
    if noise_sd <= 0:
        raise ValueError(f"noise_sd must be > 0, got {noise_sd}")
    x = schedule_x(schedule)
    truth = shape_values(shape, x)
    rng = np.random.default_rng(seed)
    results = []
    for start in range(0, n_sim, BATCH):
        size = min(BATCH, n_sim - start)
        curves = truth[None, :] + ar1_noise(rng, x.size, size, phi, noise_sd).T
        results += detect_phases_many(x, curves, n_boot=n_boot, n_null=n_null, seed=seed + start,
                                      **detect_kwargs)
    return x, results


def _row(statistic: str, shape: str, schedule, phi: float, noise_sd: float, hits, goal: float,
         bound: str) -> dict:
    hits = np.asarray(hits, dtype=bool)
    n = hits.size
    rate = float(hits.mean()) if n else float("nan")
    mc_se = float(np.sqrt(goal * (1 - goal) / n)) if n else float("nan")
    if bound == "at_most":
        passed, goal_text = bool(rate - MC_Z * mc_se <= goal), f"<= {goal:.0%}"
    else:
        passed, goal_text = bool(rate + MC_Z * mc_se >= goal), f">= {goal:.0%}"
    return {"statistic": statistic, "shape": shape, "schedule": schedule if isinstance(schedule, str) else "custom",
            "phi": phi, "noise_sd": noise_sd, "n_sim": n, "rate": rate, "mc_se": mc_se, "goal": goal_text,
            "passed": passed}


def false_positive_rate(shape: str, schedule="organism", phi: float = 0.0, noise_sd: float = 0.05,
                        n_sim: int = 200, seed: int = 0, n_boot: int = 49, n_null: int = 99,
                        alpha: float = NOMINAL_ALPHA, **detect_kwargs) -> pd.DataFrame:
    """False-positive rates of the monotone test and the triple label on curves without a triple pattern.

    Rows: ``monotone test`` (``p_monotone <= alpha``; not for ``"peak"``,
    which is not monotone) and ``triple label`` (:attr:`PhaseResult.triple`).
    Goal: at most ``alpha``.

    Examples
    --------
    >>> frame = false_positive_rate("monotone", n_sim=4, n_boot=9, n_null=9)
    >>> frame[["statistic", "goal"]].values.tolist()
    [['monotone test', '<= 5%'], ['triple label', '<= 5%']]
    """
    if shape == "rise-fall-rise":
        raise ValueError("shape 'rise-fall-rise' has the triple pattern; use power() for it")
    _, results = simulate(shape, schedule, phi, noise_sd, n_sim, seed, n_boot, n_null, **detect_kwargs)
    rows = []
    if shape != "peak":
        rows.append(_row("monotone test", shape, schedule, phi, noise_sd,
                         [r.p_monotone <= alpha for r in results], alpha, "at_most"))
    rows.append(_row("triple label", shape, schedule, phi, noise_sd, [r.triple for r in results], alpha, "at_most"))
    return pd.DataFrame(rows)


def power(schedule="organism", phi: float = 0.0, noise_sd: float = 0.05, n_sim: int = 200, seed: int = 0,
          n_boot: int = 49, n_null: int = 99, goal: float = POWER_GOAL, shape: str = "rise-fall-rise",
          **detect_kwargs) -> pd.DataFrame:
    """Share of planted rise-fall-rise curves labelled triple, and rejecting the monotone null.

    Examples
    --------
    >>> power(n_sim=3, n_boot=9, n_null=9)["statistic"].tolist()
    ['power: triple label', 'power: monotone test']
    """
    _, results = simulate(shape, schedule, phi, noise_sd, n_sim, seed, n_boot, n_null, **detect_kwargs)
    alpha = 1 - results[0].ci_level
    return pd.DataFrame([
        _row("power: triple label", shape, schedule, phi, noise_sd, [r.triple for r in results], goal, "at_least"),
        _row("power: monotone test", shape, schedule, phi, noise_sd, [r.p_monotone <= alpha for r in results],
             goal, "at_least"),
    ])


def breakpoint_coverage(schedule="organism", phi: float = 0.0, noise_sd: float = 0.05, n_sim: int = 200,
                        seed: int = 0, n_boot: int = 99, goal: float = COVERAGE_GOAL,
                        shape: str = "rise-fall-rise", **detect_kwargs) -> pd.DataFrame:
    """Coverage of the planted breakpoints by their bootstrap intervals (nominal ``ci_level``).

    Coverage is measured where it is defined: over the draws whose fit
    selects the planted number of breakpoints, the share of planted
    breakpoints inside their (ordered) breakpoint's interval (goal
    :data:`COVERAGE_GOAL`). A second row gives the share of draws selecting
    the planted number (goal :data:`POWER_GOAL`): a draw with another number
    has no interval for the planted breakpoint, so the two rows together
    describe the intervals.

    Examples
    --------
    >>> breakpoint_coverage(n_sim=3, n_boot=9)["statistic"].tolist()
    ['breakpoint coverage', 'planted number of breakpoints selected']
    """
    x, results = simulate(shape, schedule, phi, noise_sd, n_sim, seed, n_boot, 0, **detect_kwargs)
    truth = planted_breakpoints(shape, x)
    covered, right_k = [], []
    for r in results:
        ok = r.n_breakpoints == truth.size
        right_k.append(ok)
        if ok:
            covered += list((r.breakpoint_ci[:, 0] <= truth) & (truth <= r.breakpoint_ci[:, 1]))
    return pd.DataFrame([
        _row("breakpoint coverage", shape, schedule, phi, noise_sd, covered, goal, "at_least"),
        _row("planted number of breakpoints selected", shape, schedule, phi, noise_sd, right_k, POWER_GOAL,
             "at_least"),
    ])


def report_card(schedules=("organism", "pythia"), phis=(0.0, 0.3, 0.6), noise_sd: float = 0.05,
                n_sim: int = 200, seed: int = 0, n_boot: int = 49, n_null: int = 99) -> pd.DataFrame:
    """Every false-positive, power and coverage row over schedules and AR(1) coefficients (one table)."""
    frames = []
    for schedule in schedules:
        for phi in phis:
            for shape in ("monotone", "plateau", "peak"):
                frames.append(false_positive_rate(shape, schedule, phi, noise_sd, n_sim, seed, n_boot, n_null))
            frames.append(power(schedule, phi, noise_sd, n_sim, seed, n_boot, n_null))
            frames.append(breakpoint_coverage(schedule, phi, noise_sd, n_sim, seed, n_boot))
    return pd.concat(frames, ignore_index=True)


def summary_sentence(card: pd.DataFrame) -> str:
    """One sentence generated from a report card's pass/fail column.

    Examples
    --------
    >>> summary_sentence(pd.DataFrame({"statistic": ["a", "b"], "passed": [True, False]}))
    '1 of 2 checks meet their goal; not met: b.'
    """
    failed = card.loc[~card["passed"].astype(bool), "statistic"].drop_duplicates().tolist()
    text = f"{int(card['passed'].sum())} of {len(card)} checks meet their goal"
    return text + (f"; not met: {', '.join(failed)}." if failed else ".")
