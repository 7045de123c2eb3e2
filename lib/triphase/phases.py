"""Phase detection on training curves and alignment of phase boundaries across perspectives.

A curve ``y(x)`` with ``x = log10(tokens seen)`` (see :func:`log_tokens`) is
fitted with continuous piecewise-linear models with 0 to 4 breakpoints; the
number of breakpoints is chosen by BIC, each segment is labelled rising /
flat / falling by its slope's bootstrap confidence interval, and the *triple
phase pattern* (a rise, a significant fall, a rise again; Nakagi et al. 2025)
is tested against a monotone null.

Methods (quoted by the methods page)
------------------------------------
Fit. With breakpoints ``t_1 < ... < t_k`` the model is the hinge basis
``f(x) = a + b (x - x_min) + sum_j c_j (x - t_j)_+``, fitted by least squares.
Breakpoints are found in two stages. (1) An *exhaustive* search over a grid:
every interior distinct data value of ``x`` plus ``grid_per_gap`` equally
spaced points inside each gap (default 0: the data values only). Every
combination of ``k`` grid positions is tried (vectorised: one QR per
combination, one matrix product for all curves), subject to each segment
``[t_j, t_j+1]`` (closed, with ``t_0 = x_min`` and ``t_k+1 = x_max``) holding
at least ``min_points`` data points. (2) A local refinement: coordinate-wise,
each breakpoint is moved over ``refine_steps + 1`` subdivisions of the two
gaps around it (default quarter-gap steps), the others held, until nothing
moves. The RSS never increases; positions are resolved to a quarter of the
local data spacing.

Model choice. ``BIC = n log(RSS / (n - p)) + p log n`` with ``p = 2 + 2k``:
intercept, slope, one slope change and one *position* per breakpoint
(positions are estimated, so they count). The residual variance is the
unbiased ``RSS / (n - p)`` rather than the maximum-likelihood ``RSS / n``:
this adds ``n log(n / (n - p))``, which vanishes as ``n`` grows (the usual BIC
asymptotically) but matters at the 15-40 checkpoints of a training run, where
the textbook form overfits badly (in our simulations with 16 points it put
breakpoints into a straight line in ~40% of noise draws; this form in ~10%).
Levels with ``n <= p`` are not considered. RSS is floored at ``1e-12`` of the total sum of
squares so that noise-free curves do not reward extra breakpoints through
rounding error. Ties go to fewer breakpoints.

Bootstrap. Replicate curves are either supplied (``replicates``: an
``(n_boot, n_points)`` array, e.g. brain scores re-computed on resampled test
blocks or voxels) or drawn by a residual bootstrap of the selected fit
(``fitted + resampled centred residuals * sqrt(n / (n - k - 2))``). Each
replicate is re-fitted twice from the same search:

* with its own ``k`` chosen by BIC. The slope interval of a segment of the
  point estimate is the percentile interval of the replicate fits' slopes *at
  the segment's midpoint*; the segment is *rising* if that interval lies above
  0, *falling* if below, *flat* otherwise. Reading slopes at a position, not
  by segment index, keeps the interval meaningful when replicates choose a
  different k or move a breakpoint, and carries the uncertainty of the model
  choice into the label (a spurious short segment comes out flat).
  Each replicate's own segments are labelled by their conditional OLS
  t-interval (breakpoints held fixed, ``df = n - k - 2``, same level), and the
  replicate "shows the pattern" by the rule below; ``pattern_share`` is the
  share of replicates that do. Conditional intervals ignore the search over
  breakpoints, so this share is liberal: curves without the pattern give
  shares of roughly 5-10% in our simulations; read it next to ``pattern`` and
  ``p_monotone``.
* with ``k`` fixed at the selected number (breakpoints free): percentile
  intervals of the ordered breakpoints.

With ``n_boot=0`` and no replicates, the point estimate is labelled by the
conditional t-interval too (``label_source == "t-interval"``).

Pattern rule. Flat segments are skipped and consecutive equal labels merged;
the pattern is present when the remaining sequence contains *rising, falling,
rising*, i.e. some falling segment has a rising segment somewhere before it
and somewhere after it (plateaus between the phases are allowed).

Monotone null. An increasing isotonic regression ``m(x)`` is fitted to the
curve; null curves are ``m(x) + e``. The noise ``e`` (``null_noise``):

* ``"fit-gaussian"`` (default): Gaussian with the residual sd of the selected
  piecewise-linear fit, ``sqrt(RSS / (n - k - 2))``. Under the null both fits
  estimate the same noise; under the alternative the isotonic residuals also
  hold the dip the test is looking for, which would inflate the null's noise
  and cost most of the power.
* ``"isotonic-gaussian"``: Gaussian with the isotonic residual sd
  (``RSS / (n - L)``, ``L`` = number of distinct fitted levels, the isotonic
  fit's degrees of freedom; Meyer & Woodroofe 2000). Conservative.
* ``"isotonic-residuals"``: resampled centred isotonic residuals (scaled by
  ``sqrt(n / (n - L))``). Conservative.
* ``"replicates"``: rows of the supplied replicates minus their mean
  (keeps the replicates' covariance across checkpoints).
 The statistic is the *largest dip* of the BIC-selected
piecewise-linear fit, ``max_{s<t} f(s) - f(t)`` (0 for a non-decreasing fit);
``p = (1 + #{T_null >= T_obs}) / (1 + n_null)``. The null is "non-decreasing";
a curve that only falls also rejects it.

Examples
--------
>>> import numpy as np
>>> x = np.linspace(0, 4, 21)
>>> y = np.where(x < 2, x, 4 - x)            # a rise then a fall, breakpoint at 2
>>> rng = np.random.default_rng(0)
>>> result = detect_phases(x, y + rng.normal(0, 0.05, x.size), n_boot=99, n_null=0, seed=0)
>>> result.n_breakpoints, result.breakpoints.round(1).tolist(), result.segments["label"].tolist()
(1, [2.0], ['rising', 'falling'])
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

#: Most breakpoints the model search considers by default (the design's 0-4).
DEFAULT_MAX_BREAKPOINTS = 4
#: Fewest data points per segment (closed interval, breakpoints included).
DEFAULT_MIN_POINTS = 2
#: Extra candidate breakpoint positions inside each gap between data x values (exhaustive stage).
DEFAULT_GRID_PER_GAP = 0
#: Subdivisions of each gap tried by the local refinement (3: quarter-gap resolution).
DEFAULT_REFINE_STEPS = 3
#: Bootstrap replicates and monotone-null draws by default.
DEFAULT_N_BOOT = 200
DEFAULT_N_NULL = 199
#: Two-sided level of slope and breakpoint intervals.
DEFAULT_CI_LEVEL = 0.95
#: Where step0 goes when only one positive token count exists: one doubling before it.
FALLBACK_STEP0_SPACING = np.log10(2.0)
#: RSS floor as a fraction of the total sum of squares (see "Model choice").
RSS_FLOOR_FRACTION = 1e-12
#: A hinge design whose smallest |R_ii| falls below this fraction of its largest is rank-deficient.
RANK_TOLERANCE = 1e-9
#: Upper bound on array elements materialised per chunk of the search (~128 MB in float64).
MAX_CHUNK_ELEMENTS = 2**24
#: Search plans (design QRs) smaller than this many elements are cached for re-use on the same x.
MAX_CACHED_PLAN_ELEMENTS = 2**23
#: Fewest points a curve needs at all.
MIN_CURVE_POINTS = 4

#: Noise models of the monotone null (see the module docstring).
NULL_NOISES = ("fit-gaussian", "isotonic-gaussian", "isotonic-residuals", "replicates")

RISING, FLAT, FALLING = "rising", "flat", "falling"
SEGMENT_COLOURS = {RISING: "tab:green", FLAT: "0.6", FALLING: "tab:red"}
#: Name of the pooled row over all tasks.
OVERALL_TASK = "all"
#: Perspective names used in the alignment table.
BRAIN, INSTRUCTION, ACCURACY, INTERNAL = "brain", "instruction_following", "task_accuracy", "internal"
JOIN_COLUMNS = ["series", "checkpoint", "step", "tokens_seen", "tier"]


# --------------------------------------------------------------------------- x axis

def log_tokens(tokens_seen, steps=None) -> np.ndarray:
    """``x = log10(tokens seen)``, with step0 (zero tokens) placed one log spacing early.

    Convention: with ``t1 < t2`` the two smallest distinct positive token
    counts, zero-token checkpoints get ``x0 = log10(t1) - (log10(t2) -
    log10(t1))``, i.e. as far before the first checkpoint as the second is
    after it. On Pythia's doubling schedule (steps 1, 2, 4, ...) step0 thus
    sits where "step 1/2" would, as in the brain-score figures. With a single
    positive count step0 is one doubling (``log10 2``) before it. The x axis
    therefore depends on which checkpoints are present: compute it once on the
    union of the checkpoints you compare.

    Parameters
    ----------
    tokens_seen : array-like of int or float, shape (n_points,)
        Non-decreasing, non-negative token counts, at least one positive.
    steps : array-like, shape (n_points,), optional
        Training steps, checked for consistency: non-decreasing, and zero
        tokens exactly where the step is 0 (zero tokens at a later step means
        the token count is missing).

    Returns
    -------
    numpy.ndarray of float, shape (n_points,)

    Examples
    --------
    >>> log_tokens([0, 1000, 2000, 4000]).round(3).tolist()
    [2.699, 3.0, 3.301, 3.602]
    """
    tokens = np.asarray(tokens_seen, dtype=float)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens_seen must be a non-empty 1-D array, got shape {tokens.shape}")
    if not np.all(np.isfinite(tokens)) or np.any(tokens < 0):
        raise ValueError("tokens_seen must be finite and >= 0 (got NaN, inf or a negative count)")
    if np.any(np.diff(tokens) < 0):
        first = int(np.argmax(np.diff(tokens) < 0))
        raise ValueError(f"tokens_seen must be non-decreasing (sort checkpoints by step); "
                         f"position {first + 1} has {tokens[first + 1]:g} after {tokens[first]:g}")
    if steps is not None:
        steps = np.asarray(steps, dtype=float)
        if steps.shape != tokens.shape:
            raise ValueError(f"steps has shape {steps.shape} but tokens_seen has {tokens.shape}; expected equal")
        if not np.all(np.isfinite(steps)) or np.any(np.diff(steps) < 0):
            raise ValueError("steps must be finite and non-decreasing")
        if np.any((tokens == 0) != (steps == 0)):
            raise ValueError("tokens_seen is 0 exactly where steps is 0 expected; a later step with 0 tokens "
                             "means its token count is missing")
    positive = np.unique(tokens[tokens > 0])
    if positive.size == 0:
        raise ValueError("tokens_seen needs at least one positive count to define a log axis")
    spacing = np.log10(positive[1] / positive[0]) if positive.size > 1 else FALLBACK_STEP0_SPACING
    step0_x = np.log10(positive[0]) - spacing
    return np.where(tokens > 0, np.log10(np.where(tokens > 0, tokens, 1.0)), step0_x)


# --------------------------------------------------------------------------- search

def _check_curve(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"x has {x.size} points but y has {y.size}; expected equal lengths")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
        raise ValueError(f"x and y must be finite; NaN or inf at positions {bad.tolist()[:10]}")
    if x.size < MIN_CURVE_POINTS:
        raise ValueError(f"a curve needs at least {MIN_CURVE_POINTS} points, got {x.size}")
    if np.unique(x).size < 2:
        raise ValueError("x needs at least two distinct values")
    return x, y


def _candidate_positions(x_sorted: np.ndarray, grid_per_gap: int) -> np.ndarray:
    """Interior distinct data values plus ``grid_per_gap`` equally spaced points inside each gap."""
    distinct = np.unique(x_sorted)
    fractions = np.arange(grid_per_gap + 1) / (grid_per_gap + 1)
    grid = (distinct[:-1, None] + np.diff(distinct)[:, None] * fractions).ravel()
    return grid[1:]  # drops x_min; x_max is never reached


def _hinge_design(x: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """Design ``[1, x - x_min, (x - t_1)_+, ...]`` of shape ``breaks.shape[:-1] + (n, k + 2)``."""
    lead = breaks.shape[:-1]
    n = x.size
    ones = np.ones(lead + (n, 1))
    linear = np.broadcast_to((x - x.min())[:, None], lead + (n, 1))
    hinges = np.maximum(x[:, None] - breaks[..., None, :], 0.0)
    return np.concatenate([ones, linear, hinges], axis=-1)


@dataclass(frozen=True)
class _Level:
    """Everything the search needs for one number of breakpoints."""

    k: int
    breaks: np.ndarray          # (n_combos, k) candidate breakpoint positions
    q: np.ndarray | None        # (n_combos, n, k + 2) orthonormal bases, None when not cached


@functools.lru_cache(maxsize=8)
def _plan_cached(x_bytes: bytes, max_k: int, min_points: int, grid_per_gap: int) -> tuple[_Level, ...]:
    x = np.frombuffer(x_bytes, dtype=float)
    return _plan(x, max_k, min_points, grid_per_gap)


def _plan(x: np.ndarray, max_k: int, min_points: int, grid_per_gap: int) -> tuple[_Level, ...]:
    candidates = _candidate_positions(x, grid_per_gap)
    levels = []
    for k in range(max_k + 1):
        if k == 0:
            index = np.zeros((1, 0), dtype=int)
        else:
            index = np.array(list(itertools.combinations(range(candidates.size), k)), dtype=int).reshape(-1, k)
        breaks = candidates[index]
        bounds = np.concatenate([np.full((len(breaks), 1), x[0]), breaks, np.full((len(breaks), 1), x[-1])], axis=1)
        counts = np.searchsorted(x, bounds[:, 1:], side="right") - np.searchsorted(x, bounds[:, :-1], side="left")
        breaks = breaks[np.all(counts >= min_points, axis=1)]
        q = None
        if len(breaks) * x.size * (k + 2) <= MAX_CACHED_PLAN_ELEMENTS:
            q, keep = _orthonormal_bases(x, breaks)
            breaks, q = breaks[keep], q[keep]
        levels.append(_Level(k, breaks, q))
    return tuple(levels)


def _orthonormal_bases(x: np.ndarray, breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QR of each hinge design; second value marks full-rank designs."""
    q, r = np.linalg.qr(_hinge_design(x, breaks))
    diag = np.abs(np.diagonal(r, axis1=-2, axis2=-1))
    keep = diag.min(axis=-1) > RANK_TOLERANCE * diag.max(axis=-1)
    return q, keep


def _search(x: np.ndarray, curves: np.ndarray, max_k: int, min_points: int, grid_per_gap: int):
    """Best breakpoints for every curve and every k.

    ``x`` sorted, shape (n,); ``curves`` shape (n, n_curves). Returns lists (one
    entry per k) of breakpoints (n_curves, k) and RSS (n_curves,), inf where no
    admissible combination exists.
    """
    n, n_curves = curves.shape
    assert x.shape == (n,)
    levels = _plan_cached(np.ascontiguousarray(x).tobytes(), max_k, min_points, grid_per_gap)
    total = np.einsum("nb,nb->b", curves, curves)
    best_breaks, best_rss = [], []
    for level in levels:
        p = level.k + 2
        rss = np.full(n_curves, np.inf)
        where = np.zeros(n_curves, dtype=int)
        chunk = max(1, MAX_CHUNK_ELEMENTS // (p * (n + n_curves)))
        for start in range(0, len(level.breaks), chunk):
            if level.q is not None:
                q = level.q[start:start + chunk]
                offset = np.arange(start, start + len(q))
            else:
                q, keep = _orthonormal_bases(x, level.breaks[start:start + chunk])
                q, offset = q[keep], np.arange(start, start + len(keep))[keep]
            if len(q) == 0:
                continue
            # ||Q^T y||^2 for every combination x curve in one matrix product
            projected = (q.transpose(0, 2, 1).reshape(-1, n) @ curves).reshape(len(q), p, n_curves)
            chunk_rss = total[None, :] - np.einsum("cpb,cpb->cb", projected, projected)
            arg = np.argmin(chunk_rss, axis=0)
            value = chunk_rss[arg, np.arange(n_curves)]
            better = value < rss
            rss[better], where[better] = value[better], offset[arg[better]]
        breaks = level.breaks[where] if len(level.breaks) else np.full((n_curves, level.k), np.nan)
        best_breaks.append(breaks)
        best_rss.append(np.maximum(rss, 0.0))
    return best_breaks, best_rss


def _admissible(x: np.ndarray, breaks: np.ndarray, min_points: int) -> np.ndarray:
    """Breakpoints strictly increasing, inside (x_min, x_max), each closed segment with >= min_points points."""
    lead = breaks.shape[:-1]
    bounds = np.concatenate([np.full(lead + (1,), x[0]), breaks, np.full(lead + (1,), x[-1])], axis=-1)
    counts = np.searchsorted(x, bounds[..., 1:], side="right") - np.searchsorted(x, bounds[..., :-1], side="left")
    return np.all(np.diff(bounds, axis=-1) > 0, axis=-1) & np.all(counts >= min_points, axis=-1)


def _rss_moving_one(x: np.ndarray, curves: np.ndarray, others: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """RSS of each curve (n, m) when one hinge at each of ``positions`` (m, G) joins the fixed ``others`` (m, k-1).

    Adding one column ``h`` to a design with orthonormal basis ``Q`` lowers the
    RSS by ``(r_y . r_h)^2 / |r_h|^2`` (``r`` = residual after projecting on
    ``Q``), so one QR per curve serves all its candidate positions.
    """
    q, keep = _orthonormal_bases(x, others)                                   # (m, n, k + 1)
    resid_y = curves.T - np.einsum("mnp,mp->mn", q, np.einsum("mnp,nm->mp", q, curves))
    hinge = np.maximum(x[None, None, :] - positions[:, :, None], 0.0)           # (m, G, n)
    resid_h = hinge - np.einsum("mnp,mgp->mgn", q, np.einsum("mnp,mgn->mgp", q, hinge))
    norm_h = (resid_h**2).sum(axis=-1)
    usable = norm_h > RANK_TOLERANCE * np.maximum((hinge**2).sum(axis=-1), np.finfo(float).tiny)
    gain = np.einsum("mgn,mn->mg", resid_h, resid_y) ** 2 / np.where(usable, norm_h, 1.0)
    rss = (resid_y**2).sum(axis=-1)[:, None] - gain
    return np.where(usable & keep[:, None], np.maximum(rss, 0.0), np.inf)


def _refine(x: np.ndarray, curves: np.ndarray, breaks: np.ndarray, rss: np.ndarray, min_points: int,
            refine_steps: int, max_sweeps: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate-wise local search of each breakpoint on a grid finer than the data.

    Breakpoint j is moved, the others held, over ``refine_steps + 1`` equal
    subdivisions of the two gaps around its nearest interior data value (its
    current position included, so the RSS never increases); sweeps repeat until
    nothing moves.
    """
    m, k = breaks.shape
    distinct = np.unique(x)
    if k == 0 or refine_steps == 0 or distinct.size < 3 or m == 0:
        return breaks, rss
    fractions = np.arange(refine_steps + 1) / (refine_steps + 1)
    breaks, rss = breaks.copy(), rss.copy()
    for _ in range(max_sweeps):
        moved = False
        for j in range(k):
            nearest = np.clip(np.abs(distinct[None, :] - breaks[:, j:j + 1]).argmin(axis=1), 1, distinct.size - 2)
            low, mid, high = distinct[nearest - 1], distinct[nearest], distinct[nearest + 1]
            positions = np.concatenate([low[:, None] + (mid - low)[:, None] * fractions,
                                        mid[:, None] + (high - mid)[:, None] * fractions,
                                        high[:, None], breaks[:, j:j + 1]], axis=1)      # (m, G)
            candidates = np.repeat(breaks[:, None, :], positions.shape[1], axis=1)
            candidates[:, :, j] = positions
            others = np.delete(breaks, j, axis=1)
            value = np.where(_admissible(x, candidates, min_points),
                             _rss_moving_one(x, curves, others, positions), np.inf)
            best = value.argmin(axis=1)
            improved = value[np.arange(m), best] < rss * (1 - 1e-12)
            if improved.any():
                moved = True
                breaks[improved, j] = positions[improved, best[improved]]
                rss[improved] = value[improved, best[improved]]
        if not moved:
            break
    return breaks, rss


def _bic(rss: np.ndarray, k: int, n: int, floor: np.ndarray) -> np.ndarray:
    """``n log(RSS / (n - p)) + p log n`` with ``p = 2 + 2k``; inf where ``n <= p`` or no fit exists."""
    n_params = 2 + 2 * k
    if n <= n_params:
        return np.full(rss.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = n * np.log(np.maximum(rss, floor) / (n - n_params)) + n_params * np.log(n)
    return np.where(np.isfinite(rss), value, np.inf)


@dataclass
class _Fits:
    """Least-squares fits of many curves, each with its own breakpoints (same k)."""

    breaks: np.ndarray      # (m, k)
    slopes: np.ndarray      # (m, k + 1)
    slope_se: np.ndarray    # (m, k + 1), conditional on the breakpoints
    fitted: np.ndarray      # (m, n)
    knot_values: np.ndarray  # (m, k + 2): f at x_min, t_1..t_k, x_max
    rss: np.ndarray         # (m,)


def _fit_given(x: np.ndarray, curves: np.ndarray, breaks: np.ndarray) -> _Fits:
    """Fit ``curves`` (n, m) with per-curve breakpoints ``breaks`` (m, k)."""
    n, m = curves.shape
    k = breaks.shape[1]
    assert breaks.shape == (m, k)
    design = _hinge_design(x, breaks)                       # (m, n, p)
    q, r = np.linalg.qr(design)
    coef = np.linalg.solve(r, np.einsum("mnp,nm->mp", q, curves)[..., None])[..., 0]
    fitted = np.einsum("mnp,mp->mn", design, coef)
    rss = ((curves.T - fitted) ** 2).sum(axis=1)
    slopes = np.cumsum(coef[:, 1:], axis=1)
    # var(slope_j) = sigma^2 * l_j' (X'X)^-1 l_j with l_j = (0, 1, ..., 1, 0, ...)
    r_inv = np.linalg.inv(r)
    contrast = np.tril(np.ones((k + 1, k + 1)))
    contrast = np.concatenate([np.zeros((k + 1, 1)), contrast], axis=1)  # (k+1, p)
    projected = np.einsum("jp,mpq->mjq", contrast, r_inv)
    dof = max(n - (k + 2), 1)
    slope_se = np.sqrt((projected**2).sum(axis=-1) * (rss / dof)[:, None])
    knots = np.concatenate([np.full((m, 1), x.min()), breaks, np.full((m, 1), x.max())], axis=1)
    knot_design = np.concatenate([np.ones((m, k + 2, 1)), (knots - x.min())[..., None],
                                  np.maximum(knots[..., None] - breaks[:, None, :], 0.0)], axis=-1)
    knot_values = np.einsum("mjp,mp->mj", knot_design, coef)
    return _Fits(breaks, slopes, slope_se, fitted, knot_values, rss)


def _labels_from_interval(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.where(low > 0, RISING, np.where(high < 0, FALLING, FLAT))


def has_triple_pattern(labels) -> bool:
    """Whether a sequence of segment labels shows rise, significant fall, rise.

    Flat segments are skipped: some ``"falling"`` segment must have a
    ``"rising"`` one somewhere before it and somewhere after it.

    Examples
    --------
    >>> has_triple_pattern(["rising", "flat", "falling", "rising"])
    True
    >>> has_triple_pattern(["rising", "falling", "flat"])
    False
    """
    labels = list(labels)
    unknown = set(labels) - {RISING, FLAT, FALLING}
    if unknown:
        raise ValueError(f"labels must be {RISING!r}, {FLAT!r} or {FALLING!r}; got {sorted(unknown)}")
    for i, label in enumerate(labels):
        if label == FALLING and RISING in labels[:i] and RISING in labels[i + 1:]:
            return True
    return False


def _largest_dip(knot_values: np.ndarray) -> np.ndarray:
    """``max_{i<j} v_i - v_j`` per row (0 for non-decreasing rows)."""
    running_max = np.maximum.accumulate(knot_values, axis=1)
    return np.max(running_max - knot_values, axis=1)


def _select(x, curves, max_k, min_points, grid_per_gap, refine_steps):
    """Search (+ local refinement), BIC per k and the chosen k for every curve."""
    n = x.size
    breaks, rss = _search(x, curves, max_k, min_points, grid_per_gap)
    for k in range(1, max_k + 1):
        ok = np.isfinite(rss[k])
        if ok.any():
            refined, refined_rss = _refine(x, curves[:, ok], breaks[k][ok], rss[k][ok], min_points, refine_steps)
            breaks[k][ok], rss[k][ok] = refined, refined_rss
    centred_total = ((curves - curves.mean(axis=0)) ** 2).sum(axis=0)
    floor = np.maximum(RSS_FLOOR_FRACTION * centred_total, np.finfo(float).tiny)
    bic = np.stack([_bic(rss[k], k, n, floor) for k in range(max_k + 1)])  # (K, n_curves)
    if np.any(np.all(~np.isfinite(bic), axis=0)):
        raise ValueError(f"no admissible piecewise-linear fit for {n} points with min_points={min_points}")
    return breaks, rss, bic, np.argmin(bic, axis=0)


def _fit_chosen(x, curves, breaks, chosen) -> list[tuple[np.ndarray, _Fits]]:
    """Fit every curve at its chosen k, in groups of equal k: [(member columns, fits), ...]."""
    groups = []
    for k in np.unique(chosen):
        members = np.flatnonzero(chosen == k)
        groups.append((members, _fit_given(x, curves[:, members], breaks[k][members])))
    return groups


LABEL_CODES = {RISING: 1, FLAT: 0, FALLING: -1}


def _pattern_codes(codes: np.ndarray) -> np.ndarray:
    """Vectorised :func:`has_triple_pattern` on label codes (m, n_segments) -> (m,) bool."""
    rising = codes == LABEL_CODES[RISING]
    before = (np.cumsum(rising, axis=1) - rising) > 0
    after = (np.cumsum(rising[:, ::-1], axis=1)[:, ::-1] - rising) > 0
    return np.any((codes == LABEL_CODES[FALLING]) & before & after, axis=1)


def _t_interval_codes(fits: _Fits, n: int, ci_level: float) -> np.ndarray:
    """Label codes from the conditional OLS t-interval of each slope."""
    k = fits.breaks.shape[-1]
    crit = stats.t.ppf(0.5 + ci_level / 2, max(n - (k + 2), 1))
    low, high = fits.slopes - crit * fits.slope_se, fits.slopes + crit * fits.slope_se
    return np.where(low > 0, 1, np.where(high < 0, -1, 0))


# --------------------------------------------------------------------------- result

@dataclass
class PhaseResult:
    """Phases of one curve: breakpoints, segment labels, pattern statistics.

    Attributes
    ----------
    x, y, fitted : numpy.ndarray
        The curve (sorted by x) and the selected piecewise-linear fit.
    n_breakpoints : int
        Number of breakpoints chosen by BIC.
    breakpoints : numpy.ndarray, shape (n_breakpoints,)
        Breakpoint positions on the x axis.
    breakpoint_ci : numpy.ndarray, shape (n_breakpoints, 2)
        Percentile bootstrap interval (low, high) of each ordered breakpoint
        (NaN without bootstrap).
    segments : pandas.DataFrame
        One row per segment: start_x, end_x, slope, slope_ci_low,
        slope_ci_high, label.
    pattern : bool
        Whether the point estimate's labels show rise, significant fall, rise.
    pattern_share : float
        Share of bootstrap replicates (each with its own BIC choice) showing it.
    p_monotone : float
        p-value against the non-decreasing (isotonic) null; NaN if not run.
    monotone_statistic : float
        Largest dip of the selected fit (the test statistic).
    bic : pandas.DataFrame
        Per k: rss, n_params, bic, breakpoints.
    replicate_k_share : dict
        Share of replicates choosing each k.
    """

    x: np.ndarray
    y: np.ndarray
    fitted: np.ndarray
    n_breakpoints: int
    breakpoints: np.ndarray
    breakpoint_ci: np.ndarray
    segments: pd.DataFrame
    pattern: bool
    pattern_share: float
    p_monotone: float
    monotone_statistic: float
    bic: pd.DataFrame
    n_boot: int = 0
    n_null: int = 0
    bootstrap: str = "none"
    null_noise: str = "fit-gaussian"
    ci_level: float = DEFAULT_CI_LEVEL
    label_source: str = "bootstrap"
    replicate_k_share: dict = field(default_factory=dict)

    def breakpoint_frame(self) -> pd.DataFrame:
        """One row per breakpoint: index, x, ci_low, ci_high, tokens (10**x) and the labels around it."""
        labels = self.segments["label"].tolist()
        return pd.DataFrame({
            "breakpoint": np.arange(1, self.n_breakpoints + 1),
            "x": self.breakpoints,
            "ci_low": self.breakpoint_ci[:, 0],
            "ci_high": self.breakpoint_ci[:, 1],
            "tokens": 10.0 ** self.breakpoints,
            "transition": [f"{labels[i]}->{labels[i + 1]}" for i in range(self.n_breakpoints)],
        })

    def to_frame(self) -> pd.DataFrame:
        """One row per segment with the curve-level numbers repeated (tidy, for Parquet)."""
        frame = self.segments.copy()
        frame.insert(0, "segment", np.arange(1, len(frame) + 1))
        frame["n_breakpoints"] = self.n_breakpoints
        frame["pattern"] = self.pattern
        frame["pattern_share"] = self.pattern_share
        frame["p_monotone"] = self.p_monotone
        frame["monotone_statistic"] = self.monotone_statistic
        frame["n_boot"] = self.n_boot
        frame["n_null"] = self.n_null
        frame["ci_level"] = self.ci_level
        frame["label_source"] = self.label_source
        return frame


def detect_phases(x, y, replicates=None, n_boot: int = DEFAULT_N_BOOT, n_null: int = DEFAULT_N_NULL,
                  seed: int = 0, max_breakpoints: int = DEFAULT_MAX_BREAKPOINTS,
                  min_points: int = DEFAULT_MIN_POINTS, grid_per_gap: int = DEFAULT_GRID_PER_GAP,
                  refine_steps: int = DEFAULT_REFINE_STEPS, ci_level: float = DEFAULT_CI_LEVEL,
                  null_noise: str = "fit-gaussian") -> PhaseResult:
    """Piecewise-linear phases of a curve with bootstrap CIs and a monotone-null test.

    See the module docstring for the method.

    Parameters
    ----------
    x, y : array-like, shape (n_points,)
        Positions (e.g. :func:`log_tokens`) and values; sorted by x internally.
    replicates : array-like, shape (n_boot, n_points), optional
        Bootstrap replicate curves in the same point order as ``y``. If None,
        ``n_boot`` residual-bootstrap replicates of the selected fit are drawn.
    n_boot : int
        Residual-bootstrap replicates (ignored when ``replicates`` is given);
        0 labels segments by the conditional t-interval instead.
    n_null : int
        Curves drawn under the monotone null; 0 skips the test (``p_monotone`` NaN).
    seed : int
        Seed of all random draws.
    max_breakpoints : int
        Largest number of breakpoints tried (0..4 is cheap; 5+ grows fast).
    min_points : int
        Fewest points per segment (closed interval, >= 2).
    grid_per_gap : int
        Extra candidate positions inside each gap in the exhaustive stage.
    refine_steps : int
        Subdivisions per gap of the local refinement (0: grid positions only).
    ci_level : float
        Two-sided level of the intervals.
    null_noise : {"fit-gaussian", "isotonic-gaussian", "isotonic-residuals", "replicates"}
        Noise of the null curves (module docstring, "Monotone null").

    Returns
    -------
    PhaseResult

    Examples
    --------
    >>> x = np.linspace(0, 3, 16)
    >>> detect_phases(x, 2 * x + 1, n_boot=0, n_null=0).n_breakpoints
    0
    """
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one curve), got shape {y.shape}; use detect_phases_many for several")
    if replicates is not None:
        replicates = np.asarray(replicates, dtype=float)
        if replicates.ndim != 2 or replicates.shape[1] != y.size:
            raise ValueError(f"replicates must have shape (n_boot, {y.size}) (one row per replicate curve), "
                             f"got {replicates.shape}")
        replicates = replicates[None]
    return detect_phases_many(x, y[None], replicates=replicates, n_boot=n_boot, n_null=n_null, seed=seed,
                              max_breakpoints=max_breakpoints, min_points=min_points, grid_per_gap=grid_per_gap,
                              refine_steps=refine_steps, ci_level=ci_level, null_noise=null_noise)[0]


def detect_phases_many(x, curves, replicates=None, n_boot: int = DEFAULT_N_BOOT, n_null: int = DEFAULT_N_NULL,
                       seed: int = 0, max_breakpoints: int = DEFAULT_MAX_BREAKPOINTS,
                       min_points: int = DEFAULT_MIN_POINTS, grid_per_gap: int = DEFAULT_GRID_PER_GAP,
                       refine_steps: int = DEFAULT_REFINE_STEPS, ci_level: float = DEFAULT_CI_LEVEL,
                       null_noise: str = "fit-gaussian") -> list[PhaseResult]:
    """:func:`detect_phases` on several curves sharing one x, vectorised (layers, subjects, simulations).

    Parameters
    ----------
    x : array-like, shape (n_points,)
    curves : array-like, shape (n_curves, n_points)
    replicates : array-like, shape (n_curves, n_boot, n_points), optional
    Other parameters as :func:`detect_phases`.

    Returns
    -------
    list of PhaseResult, one per curve

    Examples
    --------
    >>> x = np.linspace(0, 3, 16)
    >>> [r.n_breakpoints for r in detect_phases_many(x, [x, np.abs(x - 1.5)], n_boot=0, n_null=0)]
    [0, 1]
    """
    from sklearn.isotonic import IsotonicRegression

    curves = np.asarray(curves, dtype=float)
    if curves.ndim != 2:
        raise ValueError(f"curves must be 2-D (n_curves, n_points), got shape {curves.shape}")
    for row in curves:
        x_checked, _ = _check_curve(x, row)
    x = x_checked
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    if max_breakpoints < 0 or min_points < 2 or grid_per_gap < 0 or refine_steps < 0:
        raise ValueError(f"need max_breakpoints >= 0, min_points >= 2, grid_per_gap >= 0, refine_steps >= 0; "
                         f"got {max_breakpoints}, {min_points}, {grid_per_gap}, {refine_steps}")
    if n_boot < 0 or n_null < 0:
        raise ValueError(f"n_boot and n_null must be >= 0, got {n_boot} and {n_null}")
    if null_noise not in NULL_NOISES:
        raise ValueError(f"null_noise must be one of {NULL_NOISES}, got {null_noise!r}")
    if null_noise == "replicates" and replicates is None:
        raise ValueError("null_noise='replicates' needs replicates")
    n_curves, n = curves.shape
    order = np.argsort(x, kind="stable")
    x, curves = x[order], curves[:, order]
    if replicates is not None:
        replicates = np.asarray(replicates, dtype=float)
        if replicates.ndim != 3 or replicates.shape[0] != n_curves or replicates.shape[2] != n:
            raise ValueError(f"replicates must have shape ({n_curves}, n_boot, {n}), got {replicates.shape}")
        if not np.all(np.isfinite(replicates)):
            raise ValueError("replicates must be finite (NaN or inf found)")
        replicates = replicates[:, :, order]
    rng = np.random.default_rng(seed)
    alpha = 1 - ci_level
    quantiles = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    search = dict(max_k=max_breakpoints, min_points=min_points, grid_per_gap=grid_per_gap,
                  refine_steps=refine_steps)

    # point estimates
    observed = curves.T                                                   # (n, n_curves)
    breaks, rss, bic, k_hat = _select(x, observed, **search)
    point: list = [None] * n_curves
    for members, fits in _fit_chosen(x, observed, breaks, k_hat):
        for row, c in enumerate(members):
            point[c] = (fits.breaks[row], fits.slopes[row], fits.slope_se[row], fits.fitted[row],
                        fits.knot_values[row], fits.rss[row])

    # bootstrap replicates: columns c * n_rep + b
    if replicates is not None:
        n_rep, bootstrap = replicates.shape[1], "supplied"
        boot = replicates.transpose(2, 0, 1).reshape(n, n_curves * n_rep)
    elif n_boot > 0:
        n_rep, bootstrap = n_boot, "residual"
        boot = np.empty((n, n_curves * n_rep))
        for c in range(n_curves):
            fitted = point[c][3]
            residuals = curves[c] - fitted
            residuals = (residuals - residuals.mean()) * np.sqrt(n / max(n - (int(k_hat[c]) + 2), 1))
            boot[:, c * n_rep:(c + 1) * n_rep] = fitted[:, None] + residuals[rng.integers(0, n, size=(n, n_rep))]
    else:
        n_rep, bootstrap, boot = 0, "none", np.empty((n, 0))

    # monotone-null curves: columns c * n_null + j
    null = np.empty((n, n_curves * n_null))
    for c in range(n_curves):
        if n_null == 0:
            break
        iso = IsotonicRegression(increasing=True).fit(x, curves[c]).predict(x)
        iso_residuals = curves[c] - iso
        iso_dof = max(n - np.unique(np.round(iso, 12)).size, 1)
        if null_noise == "fit-gaussian":
            noise = rng.normal(0.0, np.sqrt(point[c][5] / max(n - (int(k_hat[c]) + 2), 1)), size=(n, n_null))
        elif null_noise == "isotonic-gaussian":
            noise = rng.normal(0.0, np.sqrt((iso_residuals**2).sum() / iso_dof), size=(n, n_null))
        elif null_noise == "isotonic-residuals":
            centred = (iso_residuals - iso_residuals.mean()) * np.sqrt(n / iso_dof)
            noise = centred[rng.integers(0, n, size=(n, n_null))]
        else:
            deviations = replicates[c] - replicates[c].mean(axis=0)
            noise = deviations[rng.integers(0, len(deviations), size=n_null)].T
        null[:, c * n_null:(c + 1) * n_null] = iso[:, None] + noise

    extra = np.concatenate([boot, null], axis=1)
    pattern_shows = np.zeros(boot.shape[1], dtype=bool)
    null_dips = np.zeros(null.shape[1])
    # midpoints of each curve's segments, where replicate slopes are read (NaN-padded)
    midpoints = np.full((n_curves, max_breakpoints + 1), np.nan)
    for c in range(n_curves):
        edges = np.concatenate([[x[0]], point[c][0], [x[-1]]])
        midpoints[c, :edges.size - 1] = (edges[:-1] + edges[1:]) / 2
    local_slopes = np.full((boot.shape[1], max_breakpoints + 1), np.nan)
    if extra.shape[1]:
        ex_breaks, _, _, ex_k = _select(x, extra, **search)
        for members, fits in _fit_chosen(x, extra, ex_breaks, ex_k):
            is_boot = members < boot.shape[1]
            # each replicate with its own k, labelled by its conditional t-interval
            pattern_shows[members[is_boot]] = _pattern_codes(_t_interval_codes(fits, n, ci_level))[is_boot]
            null_dips[members[~is_boot] - boot.shape[1]] = _largest_dip(fits.knot_values)[~is_boot]
            if is_boot.any():
                where = midpoints[members[is_boot] // max(n_rep, 1)]                      # (m, K + 1)
                segment = (where[:, :, None] >= fits.breaks[is_boot][:, None, :]).sum(axis=2)
                local_slopes[members[is_boot]] = np.take_along_axis(fits.slopes[is_boot], segment, axis=1)

    results = []
    for c in range(n_curves):
        k = int(k_hat[c])
        c_breaks, slopes, slope_se, fitted, knot_values, c_rss = point[c]
        if n_rep > 0:
            cols = np.arange(c * n_rep, (c + 1) * n_rep)
            # replicates re-fitted with k fixed at the point estimate's (breakpoints free)
            fixed = _fit_given(x, boot[:, cols], ex_breaks[k][cols])
            slope_ci = np.percentile(local_slopes[cols, :k + 1], quantiles, axis=0).T
            breakpoint_ci = np.percentile(np.sort(fixed.breaks, axis=1), quantiles, axis=0).T if k else np.empty((0, 2))
            label_source = "bootstrap"
            pattern_share = float(pattern_shows[cols].mean())
            k_share = {kk: float(np.mean(ex_k[cols] == kk)) for kk in range(max_breakpoints + 1)}
        else:
            crit = stats.t.ppf(0.5 + ci_level / 2, max(n - (k + 2), 1))
            slope_ci = np.stack([slopes - crit * slope_se, slopes + crit * slope_se], axis=1)
            breakpoint_ci = np.full((k, 2), np.nan)
            label_source, pattern_share, k_share = "t-interval", float("nan"), {}
        labels = _labels_from_interval(slope_ci[:, 0], slope_ci[:, 1])
        edges = np.concatenate([[x[0]], c_breaks, [x[-1]]])
        segments = pd.DataFrame({"start_x": edges[:-1], "end_x": edges[1:], "slope": slopes,
                                 "slope_ci_low": slope_ci[:, 0], "slope_ci_high": slope_ci[:, 1], "label": labels})
        observed_dip = float(_largest_dip(knot_values[None])[0])
        if n_null > 0:
            dips = null_dips[c * n_null:(c + 1) * n_null]
            # tolerance so that rounding noise on a non-decreasing fit does not count as a dip
            tolerance = 1e-12 * max(np.ptp(curves[c]), np.finfo(float).tiny)
            p_monotone = float((1 + np.sum(dips >= observed_dip - tolerance)) / (1 + n_null))
        else:
            p_monotone = float("nan")
        bic_table = pd.DataFrame({
            "n_breakpoints": np.arange(max_breakpoints + 1),
            "rss": [r[c] for r in rss],
            "n_params": [2 + 2 * kk for kk in range(max_breakpoints + 1)],
            "bic": bic[:, c],
            "breakpoints": [b[c].tolist() for b in breaks],
            "selected": np.arange(max_breakpoints + 1) == k,
        })
        results.append(PhaseResult(
            x=x.copy(), y=curves[c].copy(), fitted=fitted, n_breakpoints=k, breakpoints=c_breaks.copy(),
            breakpoint_ci=breakpoint_ci, segments=segments, pattern=has_triple_pattern(labels),
            pattern_share=pattern_share, p_monotone=p_monotone, monotone_statistic=observed_dip, bic=bic_table,
            n_boot=n_rep, n_null=n_null, bootstrap=bootstrap, null_noise=null_noise, ci_level=ci_level,
            label_source=label_source, replicate_k_share=k_share,
        ))
    return results


def _fmt(value: float, digits: int = 2) -> str:
    return "NaN" if not np.isfinite(value) else f"{value:.{digits}f}"


def describe_phases(result: PhaseResult, name: str = "the curve", x_name: str = "log10 tokens") -> str:
    """A readable paragraph generated from the numbers of a :class:`PhaseResult`.

    Examples
    --------
    >>> x = np.linspace(0, 3, 12)
    >>> text = describe_phases(detect_phases(x, x, n_boot=0, n_null=0), "a line")
    >>> text.startswith("For a line, BIC selects 0 breakpoints")
    True
    """
    level = int(round(100 * result.ci_level))
    parts = [f"For {name}, BIC selects {result.n_breakpoints} breakpoint"
             f"{'' if result.n_breakpoints == 1 else 's'} (of 0-{len(result.bic) - 1} tried)"]
    if result.n_breakpoints:
        where = [f"{_fmt(b)} [{_fmt(lo)}, {_fmt(hi)}] (~{10 ** b:.2g} tokens)"
                 for b, (lo, hi) in zip(result.breakpoints, result.breakpoint_ci)]
        parts[0] += f" at {x_name} " + ", ".join(where)
    parts[0] += "."
    segs = [f"{row.label} (slope {row.slope:.3g}, {level}% CI [{row.slope_ci_low:.3g}, {row.slope_ci_high:.3g}])"
            for row in result.segments.itertuples()]
    parts.append(f"Segments ({result.label_source} intervals): " + "; ".join(segs) + ".")
    verdict = "shows" if result.pattern else "does not show"
    parts.append(f"The point estimate {verdict} the triple phase pattern (rise, significant fall, rise).")
    if result.n_boot:
        parts.append(f"{100 * result.pattern_share:.0f}% of {result.n_boot} {result.bootstrap} bootstrap "
                     f"replicates show it.")
    if result.n_null:
        parts.append(f"Against a non-decreasing (isotonic) null ({result.null_noise} noise), the largest dip "
                     f"of the fit ({result.monotone_statistic:.3g}) has p = {result.p_monotone:.3g} "
                     f"({result.n_null} null curves).")
    return " ".join(parts)


# --------------------------------------------------------------------------- tables

def _require(table: pd.DataFrame, columns, name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} table lacks column(s) {missing}; it has {list(table.columns)}")


def _one_tier(rows: pd.DataFrame, name: str) -> str:
    tiers = sorted(set(rows["tier"]))
    if len(tiers) != 1:
        raise ValueError(f"{name} rows of one series must share one tier, found {tiers}")
    return tiers[0]


def _axis(*tables: pd.DataFrame) -> pd.DataFrame:
    """Checkpoints of all tables (one series) with a common x from :func:`log_tokens`."""
    frames = [t[["checkpoint", "step", "tokens_seen"]] for t in tables if t is not None and len(t)]
    axis = pd.concat(frames).drop_duplicates().sort_values(["step", "tokens_seen"]).reset_index(drop=True)
    if axis["checkpoint"].duplicated().any():
        dup = axis.loc[axis["checkpoint"].duplicated(), "checkpoint"].tolist()
        raise ValueError(f"checkpoint(s) {dup[:5]} appear with different step/tokens_seen across tables")
    axis["x"] = log_tokens(axis["tokens_seen"].to_numpy(), axis["step"].to_numpy())
    return axis


def _nearest_checkpoint(axis: pd.DataFrame, x: float) -> dict:
    if not np.isfinite(x):
        return {"checkpoint": None, "step": np.nan, "tokens_seen": np.nan}
    row = axis.iloc[int(np.argmin(np.abs(axis["x"].to_numpy() - x)))]
    return {"checkpoint": row["checkpoint"], "step": row["step"], "tokens_seen": row["tokens_seen"]}


def _wilson(successes: float, n: float, level: float) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def _pooled_tasks(rows: pd.DataFrame, ci_level: float) -> pd.DataFrame:
    """Per checkpoint, the item-weighted mean over tasks with a Wilson interval.

    Where ``n_items`` is missing the mean of the values and of the CI bounds is
    used (averaging bounds gives an interval at least as wide as the mean's).
    """
    out = []
    for checkpoint, group in rows.groupby("checkpoint", sort=False):
        first = group.iloc[0]
        if "n_items" in group and group["n_items"].notna().all() and group["n_items"].sum() > 0:
            n_items = group["n_items"].sum()
            value = float((group["value"] * group["n_items"]).sum() / n_items)
            low, high = _wilson(value * n_items, n_items, ci_level)
        else:
            n_items = np.nan
            value, low, high = group["value"].mean(), group["ci_low"].mean(), group["ci_high"].mean()
        out.append({"series": first["series"], "checkpoint": checkpoint, "step": first["step"],
                    "tokens_seen": first["tokens_seen"], "tier": first["tier"], "task": OVERALL_TASK,
                    "metric": first["metric"], "value": value, "ci_low": low, "ci_high": high,
                    "n_items": n_items})
    return pd.DataFrame(out)


def _task_curves(tasks_df: pd.DataFrame, metric: str, ci_level: float, include_overall: bool = True):
    """Yield (series, task, rows sorted by step) for one metric, plus the pooled task."""
    _require(tasks_df, JOIN_COLUMNS + ["task", "metric", "value", "ci_low", "ci_high"], "tasks")
    rows = tasks_df[tasks_df["metric"] == metric]
    if rows.empty:
        raise ValueError(f"tasks table has no rows with metric {metric!r}; metrics present: "
                         f"{sorted(tasks_df['metric'].unique())}")
    for series, srows in rows.groupby("series", sort=True):
        tasks = sorted(set(srows["task"]))
        for task in tasks:
            yield series, task, srows[srows["task"] == task].sort_values("step")
        if include_overall and OVERALL_TASK not in tasks:
            pooled = _pooled_tasks(srows[srows["task"] != OVERALL_TASK].sort_values("step"), ci_level)
            yield series, OVERALL_TASK, pooled.sort_values("step")


def instruction_following_onset(tasks_df: pd.DataFrame, threshold: float = 0.5,
                                metric: str = "instruction_following",
                                ci_level: float = DEFAULT_CI_LEVEL) -> pd.DataFrame:
    """First checkpoint whose compliance CI lies above ``threshold``, per task and pooled.

    The onset lies between the previous checkpoint and that one: ``x`` is the
    onset checkpoint's position, ``ci_low`` the previous checkpoint's
    (checkpoint resolution, no bootstrap). The pooled row (task ``"all"``) uses
    the item-weighted share over tasks with a Wilson interval at
    ``ci_level``.

    Parameters
    ----------
    tasks_df : DataFrame
        ``tasks.parquet`` rows (series, checkpoint, step, tokens_seen, task,
        metric, value, ci_low, ci_high, n_items, tier).
    threshold : float
        Compliance level the CI's lower bound must exceed.
    metric : str
        The metric holding compliance.

    Returns
    -------
    DataFrame
        One row per series x task: series, tier, task, metric, threshold,
        found, checkpoint, step, tokens_seen, x, ci_low, ci_high.

    Examples
    --------
    >>> t = pd.DataFrame({"series": "s", "checkpoint": ["step0", "step1", "step2"], "step": [0, 1, 2],
    ...                   "tokens_seen": [0, 10, 20], "tier": "embedded", "task": "copy",
    ...                   "metric": "instruction_following", "value": [0.0, 0.5, 0.9],
    ...                   "ci_low": [0.0, 0.3, 0.8], "ci_high": [0.1, 0.7, 1.0], "n_items": 50})
    >>> instruction_following_onset(t)[["task", "checkpoint"]].values.tolist()
    [['copy', 'step2'], ['all', 'step2']]
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a share in [0, 1], got {threshold}")
    out = []
    for series, task, rows in _task_curves(tasks_df, metric, ci_level):
        axis = _axis(tasks_df[tasks_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        xs = np.array([x_of[c] for c in rows["checkpoint"]])
        above = np.flatnonzero(rows["ci_low"].to_numpy() > threshold)
        base = {"series": series, "tier": _one_tier(tasks_df[tasks_df["series"] == series], "tasks"),
                "task": task, "metric": metric, "threshold": threshold}
        if above.size == 0:
            out.append({**base, "found": False, "checkpoint": None, "step": np.nan, "tokens_seen": np.nan,
                        "x": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            continue
        i = int(above[0])
        row = rows.iloc[i]
        out.append({**base, "found": True, "checkpoint": row["checkpoint"], "step": row["step"],
                    "tokens_seen": row["tokens_seen"], "x": xs[i], "ci_low": xs[max(i - 1, 0)], "ci_high": xs[i]})
    return pd.DataFrame(out)


def _binomial_replicates(rows: pd.DataFrame, n_boot: int, rng) -> np.ndarray | None:
    """Parametric bootstrap of shares: Binomial(n_items, value) / n_items per checkpoint."""
    if "n_items" not in rows or rows["n_items"].isna().any() or (rows["n_items"] <= 0).any() or n_boot == 0:
        return None
    n_items = rows["n_items"].to_numpy(dtype=int)
    share = np.clip(rows["value"].to_numpy(dtype=float), 0, 1)
    return rng.binomial(n_items[None, :], share[None, :], size=(n_boot, len(rows))) / n_items[None, :]


def accuracy_phases(tasks_df: pd.DataFrame, metric: str = "accuracy", tasks=None, replicates: str = "binomial",
                    n_boot: int = DEFAULT_N_BOOT, seed: int = 0, return_results: bool = False, **detect_kwargs):
    """Stagnation and consolidation of task accuracy from :func:`detect_phases`.

    Stagnation is the first *flat* segment that is immediately followed by a
    *rising* one (consolidation). Boundaries reported: ``stagnation_start``
    (the breakpoint opening the flat segment, absent when it starts at the
    first checkpoint) and ``consolidation_onset`` (the breakpoint between
    them), each with its bootstrap CI. When there is no flat -> rising pair a
    row with ``found == False`` and NaN x says so.

    Parameters
    ----------
    tasks_df : DataFrame
        ``tasks.parquet`` rows.
    metric : str
        Accuracy metric (``"accuracy"``, ``"accuracy_given_compliance"``, ``"mc_accuracy"``).
    tasks : list of str, optional
        Tasks to analyse (default: every task and the pooled ``"all"``).
    replicates : {"binomial", "residual"}
        ``"binomial"``: replicate curves drawn as Binomial(n_items, value) /
        n_items per checkpoint (needs ``n_items``; falls back to residual);
        ``"residual"``: the residual bootstrap of :func:`detect_phases`.
    n_boot, seed, **detect_kwargs
        Passed to :func:`detect_phases` (``n_null`` defaults to 0 here).
    return_results : bool
        Also return ``{(series, task): PhaseResult}``.

    Returns
    -------
    DataFrame (and dict if ``return_results``)
        Rows: series, tier, task, metric, boundary, found, x, ci_low, ci_high.
    """
    if replicates not in ("binomial", "residual"):
        raise ValueError(f"replicates must be 'binomial' or 'residual', got {replicates!r}")
    detect_kwargs.setdefault("n_null", 0)
    rng = np.random.default_rng(seed)
    rows_out, results = [], {}
    for series, task, rows in _task_curves(tasks_df, metric, DEFAULT_CI_LEVEL):
        if tasks is not None and task not in tasks:
            continue
        axis = _axis(tasks_df[tasks_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        x = np.array([x_of[c] for c in rows["checkpoint"]])
        reps = _binomial_replicates(rows, n_boot, rng) if replicates == "binomial" else None
        result = detect_phases(x, rows["value"].to_numpy(dtype=float), replicates=reps, n_boot=n_boot,
                               seed=seed, **detect_kwargs)
        results[(series, task)] = result
        base = {"series": series, "tier": _one_tier(tasks_df[tasks_df["series"] == series], "tasks"),
                "task": task, "metric": metric}
        labels = result.segments["label"].tolist()
        pair = next((i for i in range(len(labels) - 1) if labels[i] == FLAT and labels[i + 1] == RISING), None)
        if pair is None:
            rows_out.append({**base, "boundary": "consolidation_onset", "found": False,
                             "x": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            continue
        if pair > 0:
            rows_out.append({**base, "boundary": "stagnation_start", "found": True,
                             "x": result.breakpoints[pair - 1], "ci_low": result.breakpoint_ci[pair - 1, 0],
                             "ci_high": result.breakpoint_ci[pair - 1, 1]})
        rows_out.append({**base, "boundary": "consolidation_onset", "found": True,
                         "x": result.breakpoints[pair], "ci_low": result.breakpoint_ci[pair, 0],
                         "ci_high": result.breakpoint_ci[pair, 1]})
    frame = pd.DataFrame(rows_out)
    return (frame, results) if return_results else frame


def internal_change_points(internal_df: pd.DataFrame, layer=None, measures=None,
                           change_keyword: str = "previous", onset_keyword: str = "induction") -> pd.DataFrame:
    """Largest changes of internal measures between consecutive checkpoints.

    For each measure (averaged over layers when ``layer`` is None):

    * ``largest_change``: the pair of consecutive checkpoints with the largest
      ``|value_i - value_i-1|``; for measures whose name contains
      ``change_keyword`` (similarities to the previous checkpoint, e.g.
      ``cka_previous``) the value already describes a change, so it is the
      checkpoint where the similarity is lowest.
    * ``onset`` (measures containing ``onset_keyword``, e.g. an induction
      score): the first checkpoint whose value exceeds the midpoint between the
      curve's minimum and maximum.

    The boundary lies between the two checkpoints: ``x`` is their midpoint and
    ``ci_low``/``ci_high`` their positions (checkpoint resolution).

    Returns
    -------
    DataFrame
        Rows: series, tier, measure, layer, boundary, found, x, ci_low, ci_high.
    """
    _require(internal_df, JOIN_COLUMNS + ["layer", "measure", "value"], "internal")
    rows = internal_df if layer is None else internal_df[internal_df["layer"] == layer]
    if rows.empty:
        raise ValueError(f"internal table has no rows for layer {layer!r}; layers: "
                         f"{sorted(internal_df['layer'].dropna().unique().tolist())}")
    out = []
    for series, srows in rows.groupby("series", sort=True):
        axis = _axis(internal_df[internal_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        tier = _one_tier(srows, "internal")
        chosen = sorted(set(srows["measure"])) if measures is None else list(measures)
        for measure in chosen:
            mrows = srows[srows["measure"] == measure]
            if mrows.empty:
                raise ValueError(f"internal table has no measure {measure!r} for series {series!r}")
            curve = (mrows.groupby(["checkpoint", "step"], sort=False)["value"].mean().reset_index()
                     .sort_values("step").dropna(subset=["value"]))
            x = np.array([x_of[c] for c in curve["checkpoint"]])
            value = curve["value"].to_numpy(dtype=float)
            base = {"series": series, "tier": tier, "measure": measure,
                    "layer": "mean" if layer is None else str(layer)}
            if len(value) < 2:
                out.append({**base, "boundary": "largest_change", "found": False, "x": np.nan,
                            "ci_low": np.nan, "ci_high": np.nan})
                continue
            if change_keyword and change_keyword in measure:
                # the value at checkpoint i compares it with checkpoint i-1
                i = int(np.argmin(value[1:])) + 1
            else:
                i = int(np.argmax(np.abs(np.diff(value)))) + 1
            out.append({**base, "boundary": "largest_change", "found": True, "x": (x[i - 1] + x[i]) / 2,
                        "ci_low": x[i - 1], "ci_high": x[i]})
            if onset_keyword and onset_keyword in measure:
                midpoint = (value.min() + value.max()) / 2
                above = np.flatnonzero(value > midpoint)
                found = above.size > 0 and value.max() > value.min()
                j = int(above[0]) if found else 0
                out.append({**base, "boundary": "onset", "found": bool(found),
                            "x": (x[max(j - 1, 0)] + x[j]) / 2 if found else np.nan,
                            "ci_low": x[max(j - 1, 0)] if found else np.nan, "ci_high": x[j] if found else np.nan})
    return pd.DataFrame(out)


def brain_curve(brain_df: pd.DataFrame, score: str = "score_mean", region: str = "all", layer=None,
                features: str = "model") -> pd.DataFrame:
    """The brain-score curve of one (series, dataset, subject): one row per checkpoint, sorted by step.

    With ``layer=None`` the layer is picked per checkpoint by ``cv_score_mean``
    (cross-validated on training stories, so the test score is not inflated)
    when that column exists; otherwise one fixed layer is used, the one with
    the highest mean ``score`` over checkpoints (stated in the ``layer``
    column).
    """
    _require(brain_df, JOIN_COLUMNS + ["layer", "region", "features", score], "brain")
    rows = brain_df[(brain_df["region"] == region) & (brain_df["features"] == features)]
    if rows.empty:
        raise ValueError(f"brain table has no rows with region={region!r}, features={features!r}")
    if layer is not None:
        rows = rows[rows["layer"] == layer]
        if rows.empty:
            raise ValueError(f"brain table has no rows for layer {layer!r}")
    elif "cv_score_mean" in rows and rows["cv_score_mean"].notna().all():
        rows = rows.loc[rows.groupby("checkpoint", sort=False)["cv_score_mean"].idxmax()]
    else:
        best = rows.groupby("layer")[score].mean().idxmax()
        rows = rows[rows["layer"] == best]
    if rows["checkpoint"].duplicated().any():
        raise ValueError("brain rows are not unique per checkpoint; filter to one dataset and subject")
    return rows.sort_values("step").reset_index(drop=True)


def brain_phases(brain_df: pd.DataFrame, score: str = "score_mean", region: str = "all", layer=None,
                 replicates: str = "ci", n_boot: int = DEFAULT_N_BOOT, seed: int = 0, x=None,
                 **detect_kwargs) -> PhaseResult:
    """:func:`detect_phases` on a brain-score curve (one series, dataset, subject).

    Parameters
    ----------
    replicates : {"ci", "residual"}
        ``"ci"``: replicate curves drawn independently per checkpoint from a
        normal with the sd implied by the 95% bootstrap CI,
        ``(ci_high - ci_low) / (2 * 1.96)`` (the block bootstrap over test
        blocks of :mod:`triphase.brainstats`); ``"residual"``: the residual
        bootstrap of the fit.
    x : array-like, optional
        Positions of the curve's checkpoints (default: :func:`log_tokens` of them).
    """
    if replicates not in ("ci", "residual"):
        raise ValueError(f"replicates must be 'ci' or 'residual', got {replicates!r}")
    curve = brain_curve(brain_df, score=score, region=region, layer=layer)
    if x is None:
        x = log_tokens(curve["tokens_seen"].to_numpy(), curve["step"].to_numpy())
    reps = None
    if replicates == "ci" and n_boot > 0:
        _require(curve, ["ci_low", "ci_high"], "brain")
        z = stats.norm.ppf(0.5 + DEFAULT_CI_LEVEL / 2)
        sd = (curve["ci_high"] - curve["ci_low"]).to_numpy(dtype=float) / (2 * z)
        if not np.all(np.isfinite(sd)):
            raise ValueError("brain ci_low/ci_high must be finite to draw replicates (use replicates='residual')")
        rng = np.random.default_rng(seed)
        reps = curve[score].to_numpy(dtype=float)[None, :] + rng.normal(size=(n_boot, len(curve))) * sd[None, :]
    return detect_phases(x, curve[score].to_numpy(dtype=float), replicates=reps, n_boot=n_boot, seed=seed,
                         **detect_kwargs)


def alignment_table(brain_df: pd.DataFrame, tasks_df: pd.DataFrame | None = None,
                    internal_df: pd.DataFrame | None = None, threshold: float = 0.5,
                    score: str = "score_mean", region: str = "all", layer=None,
                    accuracy_metric: str = "accuracy", n_boot: int = DEFAULT_N_BOOT, n_null: int = DEFAULT_N_NULL,
                    seed: int = 0, **detect_kwargs) -> pd.DataFrame:
    """Phase boundaries of the three perspectives on one x axis, and whether they meet the brain's.

    Per series, x is :func:`log_tokens` over the union of the checkpoints of
    all three tables. Rows: the brain score's breakpoints (with bootstrap CIs,
    the curve's pattern, pattern_share and p_monotone), the onset of
    instruction following (:func:`instruction_following_onset`), accuracy
    stagnation and consolidation (:func:`accuracy_phases`) and the internal
    measures' largest changes (:func:`internal_change_points`).
    ``overlaps_brain`` says whether a boundary's [ci_low, ci_high] intersects
    any brain breakpoint's CI of the same series (NA for brain rows and for
    boundaries not found); ``nearest_brain_x`` is the closest brain
    breakpoint. ``checkpoint``, ``step`` and ``tokens_seen`` name the
    checkpoint nearest the boundary; ``boundary_tokens = 10 ** x``.

    Returns
    -------
    DataFrame
        Ready to be written as ``phases.parquet``.
    """
    _require(brain_df, JOIN_COLUMNS, "brain")
    columns = ["series", "tier", "perspective", "source", "boundary", "found", "x", "ci_low", "ci_high",
               "boundary_tokens", "checkpoint", "step", "tokens_seen", "overlaps_brain", "nearest_brain_x",
               "dataset", "subject", "pattern", "pattern_share", "p_monotone"]
    out = []
    for series, brows in brain_df.groupby("series", sort=True):
        trows = tasks_df[tasks_df["series"] == series] if tasks_df is not None else None
        irows = internal_df[internal_df["series"] == series] if internal_df is not None else None
        axis = _axis(brows, trows, irows)
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        tier = _one_tier(brows, "brain")
        series_rows = []
        group_keys = [c for c in ("dataset", "subject") if c in brows.columns]
        groups = brows.groupby(group_keys, sort=True) if group_keys else [((), brows)]
        for key, grows in groups:
            key = key if isinstance(key, tuple) else (key,)
            ident = dict(zip(group_keys, key))
            curve = brain_curve(grows, score=score, region=region, layer=layer)
            x = np.array([x_of[c] for c in curve["checkpoint"]])
            result = brain_phases(grows, score=score, region=region, layer=layer, n_boot=n_boot, seed=seed, x=x,
                                  n_null=n_null, **detect_kwargs)
            for bp in result.breakpoint_frame().itertuples():
                series_rows.append({"perspective": BRAIN, "source": f"{score} ({region})",
                                    "boundary": f"breakpoint {bp.breakpoint} ({bp.transition})", "found": True,
                                    "x": bp.x, "ci_low": bp.ci_low, "ci_high": bp.ci_high,
                                    "dataset": ident.get("dataset"), "subject": ident.get("subject"),
                                    "pattern": result.pattern, "pattern_share": result.pattern_share,
                                    "p_monotone": result.p_monotone})
            if result.n_breakpoints == 0:
                series_rows.append({"perspective": BRAIN, "source": f"{score} ({region})",
                                    "boundary": "no breakpoint", "found": False, "x": np.nan, "ci_low": np.nan,
                                    "ci_high": np.nan, "dataset": ident.get("dataset"),
                                    "subject": ident.get("subject"), "pattern": result.pattern,
                                    "pattern_share": result.pattern_share, "p_monotone": result.p_monotone})
        if trows is not None and len(trows):
            if (trows["metric"] == "instruction_following").any():
                onset = instruction_following_onset(trows, threshold=threshold)
                for r in onset.itertuples():
                    series_rows.append({"perspective": INSTRUCTION, "source": r.task,
                                        "boundary": f"onset (CI low > {threshold:g})", "found": r.found,
                                        "x": r.x, "ci_low": r.ci_low, "ci_high": r.ci_high})
            if (trows["metric"] == accuracy_metric).any():
                acc = accuracy_phases(trows, metric=accuracy_metric, n_boot=n_boot, seed=seed, **detect_kwargs)
                for r in acc.itertuples():
                    series_rows.append({"perspective": ACCURACY, "source": f"{r.task} ({accuracy_metric})",
                                        "boundary": r.boundary, "found": r.found, "x": r.x,
                                        "ci_low": r.ci_low, "ci_high": r.ci_high})
        if irows is not None and len(irows):
            for r in internal_change_points(irows).itertuples():
                series_rows.append({"perspective": INTERNAL, "source": f"{r.measure} (layer {r.layer})",
                                    "boundary": r.boundary, "found": r.found, "x": r.x,
                                    "ci_low": r.ci_low, "ci_high": r.ci_high})
        brain_ci = [(r["ci_low"], r["ci_high"], r["x"]) for r in series_rows
                    if r["perspective"] == BRAIN and r["found"]]
        for r in series_rows:
            r.update(series=series, tier=tier, boundary_tokens=10.0 ** r["x"] if np.isfinite(r["x"]) else np.nan,
                     **_nearest_checkpoint(axis, r["x"]))
            if r["perspective"] == BRAIN or not r["found"] or not brain_ci:
                r["overlaps_brain"], r["nearest_brain_x"] = pd.NA, (np.nan if not brain_ci else
                                                                   min((b[2] for b in brain_ci),
                                                                       key=lambda b: abs(b - r["x"]))
                                                                   if np.isfinite(r["x"]) else np.nan)
            else:
                # a boundary without a finite CI (e.g. n_boot=0) is compared as a point
                low = r["ci_low"] if np.isfinite(r["ci_low"]) else r["x"]
                high = r["ci_high"] if np.isfinite(r["ci_high"]) else r["x"]
                r["overlaps_brain"] = any(
                    (low <= (bh if np.isfinite(bh) else bx)) and ((bl if np.isfinite(bl) else bx) <= high)
                    for bl, bh, bx in brain_ci)
                r["nearest_brain_x"] = min((b[2] for b in brain_ci), key=lambda b: abs(b - r["x"]))
        out.extend(series_rows)
    frame = pd.DataFrame(out).reindex(columns=columns)
    frame["overlaps_brain"] = frame["overlaps_brain"].astype("boolean")
    frame["found"] = frame["found"].astype(bool)
    for name in ("dataset", "subject", "source", "boundary", "checkpoint", "perspective"):
        frame[name] = frame[name].astype(object)
    return frame


# --------------------------------------------------------------------------- figure

def plot_phases(ax, x, y, result: PhaseResult, tier: str | None = None, title: str | None = None,
                yerr=None, label: str | None = None):
    """Draw a curve, its piecewise-linear fit, segments shaded by label and breakpoints with CI bands.

    Parameters
    ----------
    ax : matplotlib Axes
    x, y : array-like
        The curve (as passed to :func:`detect_phases`).
    result : PhaseResult
    tier : {"embedded", "real"}, optional
        Written in the title (:func:`triphase.plotting.tier_label`).
    yerr : array-like, shape (2, n_points), optional
        Lower and upper CI bounds of y, drawn as a band.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> x = np.linspace(0, 3, 12)
    >>> r = detect_phases(x, x, n_boot=0, n_null=0)
    >>> ax = plot_phases(plt.figure().gca(), x, x, r, tier="embedded")
    >>> "embedded" in ax.get_title()
    True
    """
    from .plotting import tier_label

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    order = np.argsort(x, kind="stable")
    if yerr is not None:
        low, high = np.asarray(yerr, dtype=float)
        ax.fill_between(x[order], low[order], high[order], color="0.8", lw=0, label="CI of each point")
    ax.plot(x[order], y[order], "o", ms=4, color="k", label=label or "observed")
    ax.plot(result.x, result.fitted, "-", color="tab:blue", lw=1.5,
            label=f"piecewise-linear fit ({result.n_breakpoints} breakpoints, BIC)")
    for row in result.segments.itertuples():
        ax.axvspan(row.start_x, row.end_x, color=SEGMENT_COLOURS[row.label], alpha=0.12, lw=0)
        ax.annotate(row.label, ((row.start_x + row.end_x) / 2, 1.0), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8, color=SEGMENT_COLOURS[row.label])
    for b, (lo, hi) in zip(result.breakpoints, result.breakpoint_ci):
        ax.axvline(b, color="tab:blue", ls="--", lw=1)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvspan(lo, hi, color="tab:blue", alpha=0.15, lw=0)
    heading = title or "Phases"
    stats_line = f"pattern: {'yes' if result.pattern else 'no'}"
    if result.n_boot:
        stats_line += f", bootstrap share {100 * result.pattern_share:.0f}%"
    if result.n_null:
        stats_line += f", p(monotone) = {result.p_monotone:.3g}"
    lines = [heading, stats_line] + ([tier_label(tier)] if tier is not None else [])
    ax.set_title("\n".join(lines), fontsize=9)
    ax.set_xlabel("log10 tokens seen")
    ax.legend(frameon=False, fontsize=7)
    return ax
