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

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from triphase.phases.piecewise import (
    DEFAULT_CI_LEVEL,
    DEFAULT_GRID_PER_GAP,
    DEFAULT_MAX_BREAKPOINTS,
    DEFAULT_MIN_POINTS,
    DEFAULT_N_BOOT,
    DEFAULT_N_NULL,
    DEFAULT_REFINE_STEPS,
    NULL_NOISES,
    _check_curve,
    _fit_chosen,
    _fit_given,
    _labels_from_interval,
    _largest_dip,
    _pattern_codes,
    _select,
    _t_interval_codes,
    has_triple_pattern,
)

#: Most breakpoints the model search considers by default (the design's 0-4).


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
