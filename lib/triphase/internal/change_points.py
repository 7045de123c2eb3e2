"""Change points of internal measures along training, with a noise test and intervals.

An internal measure (one value per checkpoint) has two kinds of boundary:

* ``largest_change``: the *abrupt* change, the consecutive pair of
  checkpoints whose difference stands out from the curve's typical
  step-to-step change. Statistic: ``T = max_i |d_i - median(d)| / s`` over the
  differences ``d_i = v_i - v_(i-1)``, with ``s`` the scaled median absolute
  deviation of ``d`` (robust to the jump itself). A smooth curve (every step
  alike) has no abrupt change, however much it moves. For a measure that
  already compares a checkpoint with the previous one (``cka_previous``) the
  values themselves are the ``d_i`` and the change is the lowest one
  (one-sided).
* ``onset`` (measures that switch on, e.g. induction scores): the first
  checkpoint above the midpoint of the curve's range; tested by the range
  against the noise, ``R = (max v - min v) / s``.

p-values are Monte-Carlo p-values against the null of a constant (or, for
``largest_change``, linearly trending) curve plus noise (both statistics are
scale-free, so the null needs no scale): ``p = (1 + #{T* >= T}) / (1 + n_null)``.
A boundary is ``found`` when ``p < alpha``; a constant curve (range within
:data:`CONSTANT_TOLERANCE` of its scale) is never found.

Dependent noise. Every checkpoint is measured on the same text and the same
random sequences, so errors of neighbouring checkpoints are correlated. Slow
noise wanders far relative to its step-to-step spread, so against an
independent-noise null the onset's range statistic over-rejects
(false-positive rate at nominal 5 %, 23 checkpoints: 0.055 / 0.12 / 0.29 /
0.72 at AR(1) ``phi`` 0 / 0.3 / 0.6 / 0.9) and the largest change slightly
(0.052 / 0.058 / 0.070 / 0.055, 1,000 draws). The null noise of both is
therefore AR(1) with ``phi`` = :data:`triphase._noise.ASSUMED_MIN_PHI` (0.6,
the assumption of the phase analysis; parameter ``null_phi``): measured
0.004 / 0.013 / 0.043 / 0.28 (onset) and 0.043 / 0.050 / 0.053 / 0.046
(largest change) on the organism's schedule: about 5 % or below up to that
dependence, above it beyond (the validation chapter repeats the check at
every build). For
``cka_previous`` (values that are already differences) the null stays
independent.

Intervals: a parametric bootstrap adds noise with the estimated level
(AR(1) with ``null_phi``, except for ``cka_previous``) to the observed curve and locates the
boundary again; the interval
runs from the ``alpha_ci / 2`` quantile of the replicate's left checkpoint to
the ``1 - alpha_ci / 2`` quantile of its right checkpoint. The observed curve
already holds noise, so replicates carry it twice: the intervals are
conservative. The internal table stores one value per checkpoint, not the
per-word values a bootstrap over words would need.

Rows of the internal table are never mixed: checkpoint-level measures
(``layer = -1``), layer measures (``head = -1``; their mean over layers or one
layer) and per-head measures (``head >= 0``, only with ``heads=True``, one
curve per layer and head) are separate curves.

Examples
--------
>>> x = np.arange(12.0)
>>> step = np.r_[np.zeros(6), np.ones(6)] + 0.01 * np.random.default_rng(0).standard_normal(12)
>>> result = largest_change(x, step)
>>> result["found"], result["x"], (result["ci_low"], result["ci_high"])
(True, 5.5, (5.0, 6.0))
>>> largest_change(x, np.full(12, 0.3))["found"]
False
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from triphase._noise import ASSUMED_MIN_PHI, ar1_noise
from triphase.plotting import log_positions

#: Level of the noise tests and (1 - level) of the intervals.
DEFAULT_ALPHA = 0.05
#: Monte-Carlo draws of the null and bootstrap replicates of the interval.
DEFAULT_N_NULL, DEFAULT_N_BOOT = 999, 500
#: A curve whose range is within this share of its scale (max |value|, at least 1) counts as constant.
CONSTANT_TOLERANCE = 1e-9
#: Fewest checkpoints for a test: the noise scale needs several differences.
MIN_CHECKPOINTS = 5
#: Median absolute deviation -> standard deviation of a Gaussian.
MAD_TO_SD = 1.0 / stats.norm.ppf(0.75)
#: Mean absolute deviation -> standard deviation of a Gaussian.
MEAN_DEVIATION_TO_SD = np.sqrt(np.pi / 2)
#: Measures whose value at a checkpoint already describes the change from the previous one.
CHANGE_KEYWORD = "previous"
#: Measures that switch on: they also get an ``onset`` row.
ONSET_KEYWORD = "induction"
#: Controls and reference levels, not perspectives: left out unless named in ``measures``.
CONTROL_SUFFIXES = ("_control", "_chance")
#: Sentinel of the internal table for checkpoint-level measures (layer) and non-head measures (head).
NO_LAYER = NO_HEAD = -1
OUTPUT_COLUMNS = ["series", "tier", "measure", "layer", "head", "boundary", "found", "x", "ci_low", "ci_high",
                  "p_value", "statistic", "n_checkpoints"]


# --------------------------------------------------------------------------- arrays
def _robust_scale(d: np.ndarray) -> np.ndarray:
    """Scaled MAD of the last axis (the standard deviation for Gaussian ``d``).

    Where more than half the values are equal (a quantised measure such as a
    number of components, or a noise-free curve) the MAD is 0; the scaled mean
    absolute deviation stands in, so a single departure is not infinitely
    significant unless everything else is exactly equal.
    """
    centre = np.median(d, axis=-1, keepdims=True)
    deviation = np.abs(d - centre)
    mad = MAD_TO_SD * np.median(deviation, axis=-1)
    return np.where(mad > 0, mad, MEAN_DEVIATION_TO_SD * deviation.mean(axis=-1))


def _jump_statistic(d: np.ndarray, one_sided_low: bool) -> tuple[np.ndarray, np.ndarray]:
    """Largest standardised departure of ``d`` (last axis) from its median, and where it is."""
    centre = np.median(d, axis=-1, keepdims=True)
    departure = (centre - d) if one_sided_low else np.abs(d - centre)
    scale = _robust_scale(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = departure / scale[..., None]
    z = np.where(departure == 0, 0.0, z)  # 0 / 0: no departure at all
    return z.max(axis=-1), z.argmax(axis=-1)


def _differences(value: np.ndarray, kind: str) -> np.ndarray:
    return value[..., 1:] if kind == "change" else np.diff(value, axis=-1)


def _null_noise(rng, n_draws: int, n_points: int, kind: str, phi: float) -> np.ndarray:
    """Null curves: levels of AR(1) noise; for ``kind="change"`` (the values are the differences) independent."""
    if kind == "change":
        return rng.standard_normal((n_draws, n_points))
    return ar1_noise(rng, n_points, n_draws, phi, 1.0).T


def _check_curve(x, value, first_ignored: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    if x.ndim != 1 or x.shape != value.shape:
        raise ValueError(f"x and value must be 1-D of one length, got shapes {x.shape} and {value.shape}")
    if first_ignored and value.size:
        value = value.copy()
        value[0] = 0.0  # never used: it has no previous checkpoint
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(value))):
        raise ValueError("x and value must be finite")
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must be strictly increasing (one value per checkpoint, in training order)")
    return x, value


def _is_constant(value: np.ndarray) -> bool:
    return bool(np.ptp(value) <= CONSTANT_TOLERANCE * max(1.0, float(np.max(np.abs(value)))))


def _not_found(reason: str, n: int) -> dict:
    return {"found": False, "x": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
            "statistic": np.nan, "n_checkpoints": n, "reason": reason}


def _interval(x: np.ndarray, left: np.ndarray, alpha: float) -> tuple[float, float]:
    """Checkpoint-resolution interval from bootstrap positions ``left`` (index of the left checkpoint)."""
    if left.size == 0:  # no bootstrap replicates (n_boot=0): no interval
        return np.nan, np.nan
    low = float(np.quantile(x[left], alpha / 2, method="lower"))
    high = float(np.quantile(x[left + 1], 1 - alpha / 2, method="higher"))
    return low, high


def largest_change(x, value, kind: str = "level", alpha: float = DEFAULT_ALPHA, n_null: int = DEFAULT_N_NULL,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0, null_phi: float = ASSUMED_MIN_PHI) -> dict:
    """The abrupt change of a curve: where, whether it stands out from the noise, and an interval.

    Parameters
    ----------
    x : array (n,)
        Checkpoint positions (e.g. log10 tokens), increasing.
    value : array (n,)
        The measure at each checkpoint.
    kind : {"level", "change"}
        ``"level"``: the change is between consecutive values (two-sided);
        ``"change"``: ``value[i]`` already compares checkpoint ``i`` with
        ``i - 1`` (a similarity; ``value[0]`` is ignored and may be NaN) and
        the change is the lowest one.
    alpha : float
        Test level and ``1 - `` interval level.
    n_null, n_boot : int
        Monte-Carlo null draws and bootstrap replicates.
    seed : int
    null_phi : float
        AR(1) coefficient of the null and bootstrap noise of ``kind="level"``
        (module docstring, "Dependent noise").

    Returns
    -------
    dict
        found, x (midpoint of the pair), ci_low, ci_high, p_value, statistic,
        n_checkpoints, reason ("" when tested).

    Examples
    --------
    >>> noise = np.random.default_rng(1).standard_normal(20)
    >>> largest_change(np.arange(20.0), noise)["found"]
    False
    """
    if kind not in ("level", "change"):
        raise ValueError(f"kind must be 'level' or 'change', got {kind!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    x, value = _check_curve(x, value, first_ignored=kind == "change")
    n = value.size
    if n < MIN_CHECKPOINTS:
        return _not_found(f"fewer than {MIN_CHECKPOINTS} checkpoints", n)
    if _is_constant(value[1:] if kind == "change" else value):
        return _not_found("constant", n)
    low_side = kind == "change"
    d = _differences(value, kind)
    statistic, where = _jump_statistic(d, low_side)
    rng = np.random.default_rng(seed)
    if not 0 <= null_phi < 1:
        raise ValueError(f"null_phi must be in [0, 1), got {null_phi}")
    null_levels = _null_noise(rng, n_null, n, kind, null_phi)
    null_stat, _ = _jump_statistic(_differences(null_levels, kind), low_side)
    p_value = float((1 + np.sum(null_stat >= statistic)) / (1 + n_null))
    if kind == "change":
        replicates = value + float(_robust_scale(d)) * rng.standard_normal((n_boot, n))
    else:
        # differences of AR(1) noise with sd sigma have sd sigma * sqrt(2 (1 - phi))
        noise_sd = float(_robust_scale(d)) / np.sqrt(2.0 * (1.0 - null_phi))
        replicates = value + ar1_noise(rng, n, n_boot, null_phi, noise_sd).T
    _, boot_where = _jump_statistic(_differences(replicates, kind), low_side)
    ci_low, ci_high = _interval(x, boot_where, alpha)
    return {"found": p_value < alpha, "x": float((x[where] + x[where + 1]) / 2), "ci_low": ci_low,
            "ci_high": ci_high, "p_value": p_value, "statistic": float(statistic), "n_checkpoints": n, "reason": ""}


def _range_statistic(value: np.ndarray) -> np.ndarray:
    scale = _robust_scale(np.diff(value, axis=-1)) / np.sqrt(2.0)
    spread = np.ptp(value, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread == 0, 0.0, spread / scale)


def _midpoint_crossing(value: np.ndarray) -> np.ndarray:
    """Index of the first value above the midpoint of each curve's range (last axis)."""
    midpoint = (value.min(axis=-1, keepdims=True) + value.max(axis=-1, keepdims=True)) / 2
    return np.argmax(value > midpoint, axis=-1)


def onset(x, value, alpha: float = DEFAULT_ALPHA, n_null: int = DEFAULT_N_NULL, n_boot: int = DEFAULT_N_BOOT,
          seed: int = 0, null_phi: float = ASSUMED_MIN_PHI) -> dict:
    """Where a measure switches on: the first checkpoint above the midpoint of its range.

    Found when the range stands out from the noise (module docstring); the
    interval brackets the crossing between the checkpoint before and the one
    after, over bootstrap replicates. ``null_phi``: AR(1) coefficient of the
    null and bootstrap noise (0: independent noise, which over-rejects when
    the real noise is correlated between checkpoints).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rise = 1 / (1 + np.exp(-(np.arange(15.0) - 7))) + 0.02 * rng.standard_normal(15)
    >>> result = onset(np.arange(15.0), rise)
    >>> result["found"], result["ci_low"] <= 7 <= result["ci_high"]
    (True, True)
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    x, value = _check_curve(x, value)
    n = value.size
    if n < MIN_CHECKPOINTS:
        return _not_found(f"fewer than {MIN_CHECKPOINTS} checkpoints", n)
    if _is_constant(value):
        return _not_found("constant", n)
    if not 0 <= null_phi < 1:
        raise ValueError(f"null_phi must be in [0, 1), got {null_phi}")
    statistic = float(_range_statistic(value))
    rng = np.random.default_rng(seed)
    null_stat = _range_statistic(ar1_noise(rng, n, n_null, null_phi, 1.0).T)
    p_value = float((1 + np.sum(null_stat >= statistic)) / (1 + n_null))
    j = int(_midpoint_crossing(value))
    # differences of AR(1) noise with sd sigma have sd sigma * sqrt(2 (1 - phi))
    noise_sd = float(_robust_scale(np.diff(value))) / np.sqrt(2.0 * (1.0 - null_phi))
    replicates = value + ar1_noise(rng, n, n_boot, null_phi, noise_sd).T
    crossing = np.maximum(_midpoint_crossing(replicates), 1)  # the crossing lies between j - 1 and j
    ci_low, ci_high = _interval(x, crossing - 1, alpha)
    return {"found": p_value < alpha, "x": float((x[max(j - 1, 0)] + x[j]) / 2), "ci_low": ci_low,
            "ci_high": ci_high, "p_value": p_value, "statistic": statistic, "n_checkpoints": n, "reason": ""}


def false_positive_rates(x, phis: Sequence[float] = (0.0, 0.3, 0.6), n_sim: int = 200,
                         alpha: float = DEFAULT_ALPHA, n_null: int = 199, seed: int = 0) -> pd.DataFrame:
    """How often :func:`largest_change` and :func:`onset` find a boundary in AR(1) noise without one.

    Parameters
    ----------
    x : array (n,)
        Checkpoint positions (a real schedule: the rates depend on ``n`` only).
    phis : sequence of float
        AR(1) coefficients of the noise between checkpoints.
    n_sim : int
        Noise curves per coefficient.
    alpha, n_null, seed
        Level, null draws of each test, seed.

    Returns
    -------
    DataFrame
        Columns boundary, phi, n_sim, rate (share of curves with ``found``).

    Examples
    --------
    >>> rates = false_positive_rates(np.arange(12.0), phis=(0.0,), n_sim=20, n_null=19)
    >>> rates["boundary"].tolist(), bool(rates["rate"].between(0, 1).all())
    (['largest_change', 'onset'], True)
    """
    if n_sim < 1:
        raise ValueError(f"n_sim must be >= 1, got {n_sim}")
    x = np.asarray(x, dtype=np.float64)
    rows = []
    for k, phi in enumerate(phis):
        curves = ar1_noise(np.random.default_rng([seed, k]), x.size, n_sim, float(phi), 1.0).T
        for boundary, test in (("largest_change", largest_change), ("onset", onset)):
            # one independent stream per (base seed, coefficient, curve): no draw is shared across rows
            seeds = np.random.SeedSequence([seed, k]).generate_state(len(curves))
            found = [test(x, curve, alpha=alpha, n_null=n_null, n_boot=0, seed=int(curve_seed))["found"]
                     for curve, curve_seed in zip(curves, seeds)]
            rows.append({"boundary": boundary, "phi": float(phi), "n_sim": n_sim, "rate": float(np.mean(found))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the table
def _default_x(table: pd.DataFrame) -> dict:
    """checkpoint -> log10 tokens seen (step0 at half the first positive count, as the figures)."""
    axis = table[["checkpoint", "step", "tokens_seen"]].drop_duplicates().sort_values(["step", "tokens_seen"])
    return dict(zip(axis["checkpoint"], np.log10(log_positions(axis["tokens_seen"].to_numpy()))))


def _curves(rows: pd.DataFrame, layer, heads: bool):
    """(layer label, head, rows of one curve) of one measure, never mixing levels."""
    checkpoint_rows = rows[rows["layer"] == NO_LAYER]
    layer_rows = rows[(rows["layer"] != NO_LAYER) & (rows["head"] == NO_HEAD)]
    head_rows = rows[rows["head"] != NO_HEAD]
    if len(checkpoint_rows):
        yield "model", NO_HEAD, checkpoint_rows
    if len(layer_rows):
        if layer is None:
            yield "mean", NO_HEAD, layer_rows
        elif layer == "each":
            for value, group in layer_rows.groupby("layer", sort=True):
                yield str(value), NO_HEAD, group
        elif (layer_rows["layer"] == layer).any():
            yield str(layer), NO_HEAD, layer_rows[layer_rows["layer"] == layer]
    if heads and len(head_rows):
        chosen = head_rows if layer in (None, "each") else head_rows[head_rows["layer"] == layer]
        for (value, head), group in chosen.groupby(["layer", "head"], sort=True):
            yield str(value), int(head), group


def _with_previous(curve: pd.DataFrame, series_rows: pd.DataFrame) -> pd.DataFrame:
    """``curve`` with the checkpoint before its first one (value NaN) in front, when the series has one."""
    axis = series_rows[["checkpoint", "step"]].drop_duplicates().sort_values("step")
    before = axis[axis["step"] < curve["step"].min()]
    if before.empty:
        return curve
    return pd.concat([before.tail(1).assign(value=np.nan), curve], ignore_index=True)


def internal_change_points(internal_df: pd.DataFrame, layer=None, measures: Sequence[str] | None = None,
                           heads: bool = False, x_of: dict | None = None, alpha: float = DEFAULT_ALPHA,
                           n_null: int = DEFAULT_N_NULL, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                           change_keyword: str = CHANGE_KEYWORD, onset_keyword: str = ONSET_KEYWORD,
                           null_phi: float = ASSUMED_MIN_PHI) -> pd.DataFrame:
    """Change points (with p-values and intervals) of the measures of an internal table.

    Parameters
    ----------
    internal_df : DataFrame
        ``internal.parquet`` rows (columns series, checkpoint, step,
        tokens_seen, tier, layer, head, measure, value).
    layer : None, "each" or int
        Layer measures: their mean over layers (None), one curve per layer
        ("each") or one layer. Checkpoint-level measures are used as they are.
    measures : sequence of str, optional
        Default: every measure but controls and reference levels
        (:data:`CONTROL_SUFFIXES`).
    heads : bool
        Also test per-head rows (``head >= 0``), one curve per layer and head
        (never averaged with the layer rows).
    x_of : dict checkpoint -> x, optional
        Positions of the checkpoints (e.g. the phase analysis' common axis);
        default ``log10`` tokens seen with step0 half a first step early.
    alpha, n_null, n_boot, seed, null_phi
        See :func:`largest_change`.
    change_keyword, onset_keyword : str
        Measures whose name contains these are ``kind="change"`` curves
        (similarity to the previous checkpoint) / also get an ``onset`` row.

    Returns
    -------
    DataFrame
        Columns :data:`OUTPUT_COLUMNS`: one ``largest_change`` row per curve
        (plus ``onset`` for onset measures); ``layer`` is "model", "mean" or
        the layer number as text, ``head`` -1 unless per head.

    Examples
    --------
    >>> rows = [{"series": "s", "checkpoint": f"step{i}", "step": i, "tokens_seen": 10 * i, "tier": "embedded",
    ...          "layer": 1, "head": -1, "measure": "anisotropy", "value": 0.4} for i in range(8)]
    >>> internal_change_points(pd.DataFrame(rows))[["measure", "layer", "found"]].values.tolist()
    [['anisotropy', 'mean', False]]
    """
    required = ["series", "checkpoint", "step", "tokens_seen", "tier", "layer", "head", "measure", "value"]
    missing = [c for c in required if c not in internal_df.columns]
    if missing:
        raise ValueError(f"internal_df lacks column(s) {missing}")
    if layer is not None and layer != "each" and not (internal_df["layer"] == layer).any():
        raise ValueError(f"layer={layer!r} is not in the internal table; layers: "
                         f"{sorted(internal_df['layer'].unique().tolist())}")
    out = []
    for series, srows in internal_df.groupby("series", sort=True):
        positions = _default_x(srows) if x_of is None else x_of
        tiers = sorted(set(srows["tier"]))
        if len(tiers) != 1:
            raise ValueError(f"internal rows of series {series!r} must share one tier, found {tiers}")
        chosen = (sorted(m for m in set(srows["measure"]) if not m.endswith(CONTROL_SUFFIXES))
                  if measures is None else list(measures))
        for k, measure in enumerate(chosen):
            mrows = srows[srows["measure"] == measure]
            if mrows.empty:
                raise ValueError(f"internal table has no measure {measure!r} for series {series!r}")
            for layer_label, head, rows in _curves(mrows, layer, heads):
                curve = (rows.groupby(["checkpoint", "step"], sort=False)["value"].mean().reset_index()
                         .sort_values("step").dropna(subset=["value"]))
                kind = "change" if change_keyword and change_keyword in measure else "level"
                if kind == "change":
                    # value i compares checkpoint i with the previous one: put that one (no value) in front
                    curve = _with_previous(curve, srows)
                unknown = sorted(set(curve["checkpoint"]) - set(positions))
                if unknown:
                    raise ValueError(f"x_of has no position for checkpoint(s) {unknown[:5]}")
                x = np.array([positions[c] for c in curve["checkpoint"]], dtype=np.float64)
                value = curve["value"].to_numpy(dtype=np.float64)
                base = {"series": series, "tier": tiers[0], "measure": measure, "layer": layer_label, "head": head}
                curve_seed = [seed, k, head + 1, len(out)]
                result = largest_change(x, value, kind, alpha, n_null, n_boot,
                                        int(np.random.SeedSequence(curve_seed).generate_state(1)[0]), null_phi)
                out.append({**base, "boundary": "largest_change", **result})
                if onset_keyword and onset_keyword in measure:
                    result = onset(x, value, alpha, n_null, n_boot,
                                   int(np.random.SeedSequence(curve_seed + [1]).generate_state(1)[0]), null_phi)
                    out.append({**base, "boundary": "onset", **result})
    frame = pd.DataFrame(out, columns=OUTPUT_COLUMNS + ["reason"])
    return frame.astype({"found": bool, "head": np.int64})
