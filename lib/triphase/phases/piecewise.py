"""Continuous piecewise-linear fits of a training curve: the hinge basis, the breakpoint search, BIC, segment labels.

The methods are described in :mod:`triphase.phases.inference`.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

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
NULL_NOISES = ("ar1-gaussian", "fit-gaussian", "isotonic-gaussian", "isotonic-residuals", "replicates")
#: How replicate curves are drawn when none are supplied (see the module docstring of inference).
BOOTSTRAPS = ("ar1", "residual")
#: Largest AR(1) coefficient the noise model uses (closer to 1 the process is a random walk, not noise).
MAX_AR1 = 0.95
#: Grid of AR(1) coefficients over which the residual autocorrelation is matched.
AR1_GRID_SIZE = 96

#: Segment labels. "flat" needs an equivalence bound (the slope interval inside +-flat_bound);
#: a segment that is neither rising, falling nor shown flat has "no evidence of change".
RISING, FLAT, FALLING, NO_CHANGE = "rising", "flat", "falling", "no evidence of change"
SEGMENT_LABELS = (RISING, FLAT, FALLING, NO_CHANGE)
SEGMENT_COLOURS = {RISING: "tab:green", FLAT: "0.6", FALLING: "tab:red", NO_CHANGE: "0.85"}


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


def labels_from_interval(low, high, flat_bound: float | None = None) -> np.ndarray:
    """Segment labels from slope intervals: rising, falling, flat (within ``+-flat_bound``) or no evidence of change.

    ``flat_bound`` is the smallest slope of interest (y units per x unit); an
    interval inside ``[-flat_bound, flat_bound]`` shows the segment flat (an
    equivalence test at the interval's level). Without it no segment is called flat.

    Examples
    --------
    >>> labels_from_interval([0.1, -0.3, -0.01, -0.5], [0.4, -0.1, 0.02, 0.5], flat_bound=0.05).tolist()
    ['rising', 'falling', 'flat', 'no evidence of change']
    """
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if flat_bound is not None and not flat_bound > 0:
        raise ValueError(f"flat_bound must be a positive slope (smallest effect of interest), got {flat_bound}")
    bound = np.inf if flat_bound is None else flat_bound
    flat = (low >= -bound) & (high <= bound) & np.isfinite(bound)
    return np.where(low > 0, RISING, np.where(high < 0, FALLING, np.where(flat, FLAT, NO_CHANGE)))


def has_triple_pattern(labels) -> bool:
    """Whether a sequence of segment labels shows rise, significant fall, rise.

    Flat segments (and those with no evidence of change) are skipped: some
    ``"falling"`` segment must have a ``"rising"`` one somewhere before it and
    somewhere after it.

    Examples
    --------
    >>> has_triple_pattern(["rising", "flat", "falling", "rising"])
    True
    >>> has_triple_pattern(["rising", "falling", "flat"])
    False
    """
    labels = list(labels)
    unknown = set(labels) - set(SEGMENT_LABELS)
    if unknown:
        raise ValueError(f"labels must be among {SEGMENT_LABELS}; got {sorted(unknown)}")
    for i, label in enumerate(labels):
        if label == FALLING and RISING in labels[:i] and RISING in labels[i + 1:]:
            return True
    return False


def ar1_whitening(n: int, phi: float) -> np.ndarray:
    """Prais-Winsten transform ``W`` of AR(1) errors: ``W e`` is white when ``e`` is AR(1) with ``phi``.

    Row 0 is ``sqrt(1 - phi^2) e_0``, row ``t`` is ``e_t - phi e_(t-1)``, so
    ``W' W = (1 - phi^2) R(phi)^-1`` with ``R_ij = phi^|i-j|``: least squares
    on ``W y``, ``W X`` is the generalised least-squares fit under AR(1) noise.

    Examples
    --------
    >>> ar1_whitening(3, 0.5).round(3).tolist()
    [[0.866, 0.0, 0.0], [-0.5, 1.0, 0.0], [0.0, -0.5, 1.0]]
    """
    if not 0 <= phi < 1:
        raise ValueError(f"phi must be in [0, 1), got {phi}")
    w = np.eye(n) - phi * np.eye(n, k=-1)
    w[0, 0] = np.sqrt(1 - phi**2)
    return w


def _whitened_rss(x: np.ndarray, curves: np.ndarray, breaks: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """RSS of the GLS fits of ``curves`` (n, m) with per-curve breakpoints (m, k): inf where none exists."""
    m = curves.shape[1]
    out = np.full(m, np.inf)
    ok = np.all(np.isfinite(breaks), axis=1)
    if not ok.any():
        return out
    design = whitening @ _hinge_design(x, breaks[ok])                  # (m_ok, n, p)
    white = (whitening @ curves[:, ok]).T                              # (m_ok, n)
    q, _ = np.linalg.qr(design)
    projected = np.einsum("mnp,mn->mp", q, white)
    # the residual itself, not ||Wy||^2 - ||Q'Wy||^2: a difference of two large numbers loses an exact fit
    residual = white - np.einsum("mnp,mp->mn", q, projected)
    out[ok] = (residual**2).sum(axis=1)
    return out


def _select(x, curves, max_k, min_points, grid_per_gap, refine_steps, selection_phi: float = 0.0):
    """Search (+ local refinement), RSS, the RSS the BIC uses, BIC per k and the chosen k for every curve.

    With ``selection_phi > 0`` the BIC of each k uses the RSS of the GLS fit
    under AR(1) noise of that coefficient at the breakpoints the search found
    (the Gaussian AR(1) likelihood up to a constant shared by every k), so
    slow noise is not taken for extra breakpoints.
    """
    n = x.size
    breaks, rss = _search(x, curves, max_k, min_points, grid_per_gap)
    for k in range(1, max_k + 1):
        ok = np.isfinite(rss[k])
        if ok.any():
            refined, refined_rss = _refine(x, curves[:, ok], breaks[k][ok], rss[k][ok], min_points, refine_steps)
            breaks[k][ok], rss[k][ok] = refined, refined_rss
    if selection_phi > 0:
        whitening = ar1_whitening(n, selection_phi)
        criterion = [np.where(np.isfinite(rss[k]), _whitened_rss(x, curves, breaks[k], whitening), np.inf)
                     for k in range(max_k + 1)]
        # the floor scales with the whitened *total* (not with the k = 0 fit, which is ~0 for an exact line)
        white = whitening @ curves
        floor = np.maximum(RSS_FLOOR_FRACTION * ((white - white.mean(axis=0)) ** 2).sum(axis=0),
                           np.finfo(float).tiny)
    else:
        criterion = rss
        centred_total = ((curves - curves.mean(axis=0)) ** 2).sum(axis=0)
        floor = np.maximum(RSS_FLOOR_FRACTION * centred_total, np.finfo(float).tiny)
    bic = np.stack([_bic(criterion[k], k, n, floor) for k in range(max_k + 1)])  # (K, n_curves)
    if np.any(np.all(~np.isfinite(bic), axis=0)):
        raise ValueError(f"no admissible piecewise-linear fit for {n} points with min_points={min_points}")
    return breaks, rss, criterion, bic, np.argmin(bic, axis=0)


def _fit_chosen(x, curves, breaks, chosen) -> list[tuple[np.ndarray, _Fits]]:
    """Fit every curve at its chosen k, in groups of equal k: [(member columns, fits), ...]."""
    groups = []
    for k in np.unique(chosen):
        members = np.flatnonzero(chosen == k)
        groups.append((members, _fit_given(x, curves[:, members], breaks[k][members])))
    return groups


#: Codes of the vectorised pattern rule (flat and "no evidence of change" are both 0: skipped).
LABEL_CODES = {RISING: 1, FLAT: 0, NO_CHANGE: 0, FALLING: -1}


def _pattern_codes(codes: np.ndarray) -> np.ndarray:
    """Vectorised :func:`has_triple_pattern` on label codes (m, n_segments) -> (m,) bool."""
    rising = codes == LABEL_CODES[RISING]
    before = (np.cumsum(rising, axis=1) - rising) > 0
    after = (np.cumsum(rising[:, ::-1], axis=1)[:, ::-1] - rising) > 0
    return np.any((codes == LABEL_CODES[FALLING]) & before & after, axis=1)


