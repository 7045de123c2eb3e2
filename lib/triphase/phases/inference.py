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
rounding error. Ties go to fewer breakpoints. Under dependent noise
(``selection="ar1"``, the default) the RSS in the BIC is that of the
generalised least-squares fit under AR(1) noise with ``phi = min_phi`` at the
breakpoints the search found (least squares on Prais-Winsten-whitened curve
and design, :func:`triphase.phases.piecewise.ar1_whitening`): the Gaussian
AR(1) likelihood up to a constant that is the same for every k. Ordinary
least squares takes slow noise for extra breakpoints: at AR(1) ``phi = 0.6``
the planted number of breakpoints of rise-fall-rise curves was selected in
61 % (organism schedule) and 52.5 % (Pythia) of 200 draws, against 82.5 %
and 77 % with this criterion (and 86 % -> 94 % on the organism's schedule
under independent noise; methods page). ``selection="ols"`` gives the
ordinary BIC.

Dependent noise. Every checkpoint is scored on the same test story and task
items, so errors of neighbouring checkpoints are correlated. Without supplied
replicates, noise is modelled as AR(1) in checkpoint order
(:mod:`triphase.phases.noise`), with ``phi`` and the marginal sd estimated
from the selected fit's residuals, corrected for what a fit of that design
absorbs. With 12-23 checkpoints the estimate of ``phi`` is still biased
towards 0 (the breakpoint search absorbs slow noise: true 0.6 is estimated at
about 0.15 on the organism's schedule), so ``phi`` is floored at ``min_phi``
(default :data:`DEFAULT_MIN_PHI` = 0.6, the largest dependence of the
validation grid; the sd is then estimated given that ``phi``). This is an
assumption, stated; it costs power under independent noise, and joint
replicates make it unnecessary.

Bootstrap. Replicate curves are either supplied (``replicates``: an
``(n_boot, n_points)`` array of *joint* replicates, e.g. brain scores
re-computed on one set of resampled test blocks at every checkpoint, or task
metrics on one resampled item set) or drawn around the selected fit
(``bootstrap="ar1"``: fitted + AR(1) noise; ``"residual"``: resampled
independent residuals, which ignore the dependence). Each replicate is
re-fitted twice from the same search:

* with its own ``k`` chosen by BIC. The slope interval of a segment of the
  point estimate is the percentile interval of the replicate fits' slopes *at
  the segment's midpoint*; the segment is *rising* if that interval lies above
  0, *falling* if below, *flat* if inside ``+-flat_bound`` (the smallest slope
  of interest; an equivalence test at the interval's level) and *no evidence
  of change* otherwise (always, without ``flat_bound``). Reading slopes at a
  position, not by segment index, keeps the interval meaningful when
  replicates choose a different k or move a breakpoint, and carries the
  uncertainty of the model choice into the label.
  Each replicate is labelled by the *same rule*: the point estimate's
  interval moved to the replicate's own slope at the same midpoint (what its
  own bootstrap would give if the interval's shape did not depend on the
  curve). ``pattern_stability`` is the share of replicates showing the
  pattern: a stability of the verdict under resampling, **not** a probability
  that the pattern is real (it is not calibrated as one; replicates are built
  around the point estimate, so a curve showing the pattern tends to have a
  high stability whether or not the pattern is real).
* with ``k`` fixed at the selected number (breakpoints free): percentile
  intervals of the ordered breakpoints.

With ``n_boot=0`` and no replicates, the point estimate is labelled by the
conditional t-interval (``label_source == "t-interval"``).

Pattern rule. Flat segments and those without evidence of change are
skipped; the pattern is present when some falling segment has a rising
segment somewhere before it and somewhere after it (plateaus between the
phases are allowed).

Monotone null. The statistic is the largest dip ``max_{s<t} S_s - S_t`` of
the curve's centred moving average ``S`` over ``monotone_window`` checkpoints
(:func:`smoothed_dip`). A moving average of a non-decreasing mean is
non-decreasing, so for any non-decreasing mean the statistic is at most that
of the noise alone: the constant mean is the least favourable null, and null
curves are noise only. (The previous statistic, the dip of the BIC-selected
fit against an isotonic fit plus noise, over-rejected: 10-27 % at nominal
5 % on plateau curves.) The noise (``null_noise``):

* ``"ar1-gaussian"`` (default): Gaussian AR(1) with the estimated ``phi``
  (floored at ``min_phi``) and sd;
* ``"replicates"``: rows of the supplied joint replicates minus their mean
  (keeps their covariance across checkpoints; the default of brain curves
  with joint replicates);
* ``"fit-gaussian"``: independent Gaussian with the fit's residual sd;
  ``"isotonic-gaussian"``, ``"isotonic-residuals"``: independent noise
  from the residuals of an increasing isotonic fit (``RSS / (n - L)``,
  ``L`` the number of distinct fitted levels). These ignore dependence.

``p = (1 + #{T_null >= T_obs}) / (1 + n_null)``. The null is "non-decreasing";
a curve that only falls also rejects it. The *triple* label requires both the
pattern and ``p_monotone <= 1 - ci_level``. Its false-positive rate, the
test's, power and breakpoint coverage are measured by
:mod:`triphase.phases.calibration`.

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

from triphase._noise import ASSUMED_MIN_PHI
from triphase.phases.noise import ar1_noise, estimate_ar1
from triphase.phases.piecewise import (
    BOOTSTRAPS,
    DEFAULT_CI_LEVEL,
    DEFAULT_GRID_PER_GAP,
    DEFAULT_MAX_BREAKPOINTS,
    DEFAULT_MIN_POINTS,
    DEFAULT_N_BOOT,
    DEFAULT_N_NULL,
    DEFAULT_REFINE_STEPS,
    LABEL_CODES,
    NULL_NOISES,
    _check_curve,
    _fit_chosen,
    _fit_given,
    _hinge_design,
    _pattern_codes,
    _select,
    has_triple_pattern,
    labels_from_interval,
)

#: Checkpoints in the moving average of the monotone test's statistic (centred; truncated at the ends).
MONOTONE_WINDOW = 3
#: Assumed floor of the AR(1) coefficient of the noise between checkpoints (see "Dependent noise").
DEFAULT_MIN_PHI = ASSUMED_MIN_PHI
#: Model choice: BIC of the GLS fit under AR(1) noise with ``min_phi``, or of the ordinary least-squares fit.
SELECTIONS = ("ar1", "ols")


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
    pattern_stability : float
        Share of bootstrap replicates whose labels, by the point estimate's
        rule, show the pattern: a stability measure, not a probability that
        the pattern is real (module docstring).
    p_monotone : float
        p-value against the non-decreasing (isotonic) null; NaN if not run.
    triple : bool
        The "triple" label: ``pattern`` and ``p_monotone <= 1 - ci_level``
        (False when the monotone test was not run).
    noise_phi, noise_sd : float
        The AR(1) coefficient and marginal sd estimated from the fit's
        residuals (:func:`triphase.phases.noise.estimate_ar1`).
    monotone_statistic : float
        Largest dip of the selected fit (the test statistic).
    bic : pandas.DataFrame
        Per k: rss (least squares), criterion_rss (the RSS in the BIC: of the
        GLS fit under AR(1) noise with ``selection="ar1"``, else rss), n_params,
        bic, breakpoints.
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
    pattern_stability: float
    p_monotone: float
    monotone_statistic: float
    bic: pd.DataFrame
    triple: bool = False
    noise_phi: float = float("nan")
    noise_sd: float = float("nan")
    flat_bound: float | None = None
    n_boot: int = 0
    n_null: int = 0
    bootstrap: str = "none"
    null_noise: str = "ar1-gaussian"
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
        frame["pattern_stability"] = self.pattern_stability
        frame["p_monotone"] = self.p_monotone
        frame["triple"] = self.triple
        frame["noise_phi"] = self.noise_phi
        frame["noise_sd"] = self.noise_sd
        frame["flat_bound"] = np.nan if self.flat_bound is None else self.flat_bound
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
                  null_noise: str = "ar1-gaussian", bootstrap: str = "ar1",
                  flat_bound: float | None = None, monotone_window: int = MONOTONE_WINDOW,
                  min_phi: float = DEFAULT_MIN_PHI, selection: str = "ar1") -> PhaseResult:
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
    null_noise : {"ar1-gaussian", "fit-gaussian", "isotonic-gaussian", "isotonic-residuals", "replicates"}
        Noise of the null curves (module docstring, "Monotone null").
    bootstrap : {"ar1", "residual"}
        How replicates are drawn when none are supplied: AR(1) noise around
        the fit (keeps the dependence between checkpoints) or resampled
        independent residuals.
    flat_bound : float, optional
        Smallest slope of interest (y units per x unit): a segment is "flat"
        only when its slope interval lies inside ``+-flat_bound``; otherwise
        it is rising, falling or "no evidence of change".
    monotone_window : int
        Checkpoints averaged by the moving average of the monotone test's statistic.
    min_phi : float
        Assumed floor of the AR(1) coefficient of the noise (module docstring, "Dependent noise").
    selection : {"ar1", "ols"}
        Model choice by the BIC of the GLS fit under AR(1) noise with ``min_phi``
        (default) or of the ordinary least-squares fit (module docstring, "Model choice").

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
                              refine_steps=refine_steps, ci_level=ci_level, null_noise=null_noise,
                              bootstrap=bootstrap, flat_bound=flat_bound, monotone_window=monotone_window,
                              min_phi=min_phi, selection=selection)[0]


def detect_phases_many(x, curves, replicates=None, n_boot: int = DEFAULT_N_BOOT, n_null: int = DEFAULT_N_NULL,
                       seed: int = 0, max_breakpoints: int = DEFAULT_MAX_BREAKPOINTS,
                       min_points: int = DEFAULT_MIN_POINTS, grid_per_gap: int = DEFAULT_GRID_PER_GAP,
                       refine_steps: int = DEFAULT_REFINE_STEPS, ci_level: float = DEFAULT_CI_LEVEL,
                       null_noise: str = "ar1-gaussian", bootstrap: str = "ar1",
                       flat_bound: float | None = None, monotone_window: int = MONOTONE_WINDOW,
                       min_phi: float = DEFAULT_MIN_PHI, selection: str = "ar1") -> list[PhaseResult]:
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
    if not (isinstance(monotone_window, (int, np.integer)) and monotone_window >= 1):
        raise ValueError(f"monotone_window must be an integer >= 1, got {monotone_window!r}")
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {bootstrap!r}")
    if flat_bound is not None and not flat_bound > 0:
        raise ValueError(f"flat_bound must be a positive slope (smallest effect of interest), got {flat_bound}")
    if null_noise == "replicates" and replicates is None:
        raise ValueError("null_noise='replicates' needs replicates")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
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
                  refine_steps=refine_steps, selection_phi=min_phi if selection == "ar1" else 0.0)

    # point estimates
    observed = curves.T                                                   # (n, n_curves)
    breaks, rss, criterion_rss, bic, k_hat = _select(x, observed, **search)
    point: list = [None] * n_curves
    for members, fits in _fit_chosen(x, observed, breaks, k_hat):
        for row, c in enumerate(members):
            point[c] = (fits.breaks[row], fits.slopes[row], fits.slope_se[row], fits.fitted[row],
                        fits.knot_values[row], fits.rss[row])
    # dependent noise of each curve, estimated from its fit's residuals given the fit's design
    noise = [estimate_ar1(curves[c] - point[c][3], _hinge_design(x, point[c][0][None])[0], min_phi)
             for c in range(n_curves)]

    # bootstrap replicates: columns c * n_rep + b
    if replicates is not None:
        n_rep, bootstrap = replicates.shape[1], "supplied"
        boot = replicates.transpose(2, 0, 1).reshape(n, n_curves * n_rep)
    elif n_boot > 0 and bootstrap == "ar1":
        n_rep = n_boot
        boot = np.empty((n, n_curves * n_rep))
        for c in range(n_curves):
            phi, sigma = noise[c]
            boot[:, c * n_rep:(c + 1) * n_rep] = point[c][3][:, None] + ar1_noise(rng, n, n_rep, phi, sigma)
    elif n_boot > 0:
        n_rep = n_boot
        boot = np.empty((n, n_curves * n_rep))
        for c in range(n_curves):
            fitted = point[c][3]
            residuals = curves[c] - fitted
            residuals = (residuals - residuals.mean()) * np.sqrt(n / max(n - (int(k_hat[c]) + 2), 1))
            boot[:, c * n_rep:(c + 1) * n_rep] = fitted[:, None] + residuals[rng.integers(0, n, size=(n, n_rep))]
    else:
        n_rep, boot = 0, np.empty((n, 0))

    # monotone-null curves: columns c * n_null + j
    null = np.empty((n, n_curves * n_null))
    for c in range(n_curves):
        if n_null == 0:
            break
        iso = IsotonicRegression(increasing=True).fit(x, curves[c]).predict(x)
        iso_residuals = curves[c] - iso
        iso_dof = max(n - np.unique(np.round(iso, 12)).size, 1)
        if null_noise == "ar1-gaussian":
            noise_draws = ar1_noise(rng, n, n_null, *noise[c])
        elif null_noise == "fit-gaussian":
            noise_draws = rng.normal(0.0, np.sqrt(point[c][5] / max(n - (int(k_hat[c]) + 2), 1)), size=(n, n_null))
        elif null_noise == "isotonic-gaussian":
            noise_draws = rng.normal(0.0, np.sqrt((iso_residuals**2).sum() / iso_dof), size=(n, n_null))
        elif null_noise == "isotonic-residuals":
            centred = (iso_residuals - iso_residuals.mean()) * np.sqrt(n / iso_dof)
            noise_draws = centred[rng.integers(0, n, size=(n, n_null))]
        else:
            deviations = replicates[c] - replicates[c].mean(axis=0)
            noise_draws = deviations[rng.integers(0, len(deviations), size=n_null)].T
        # the statistic is shift-invariant and a constant mean is the least favourable monotone mean,
        # so the null curves are the noise alone
        null[:, c * n_null:(c + 1) * n_null] = noise_draws

    extra = boot
    null_dips = smoothed_dip(null.T, monotone_window)
    # midpoints of each curve's segments, where replicate slopes are read (NaN-padded)
    midpoints = np.full((n_curves, max_breakpoints + 1), np.nan)
    for c in range(n_curves):
        edges = np.concatenate([[x[0]], point[c][0], [x[-1]]])
        midpoints[c, :edges.size - 1] = (edges[:-1] + edges[1:]) / 2
    local_slopes = np.full((boot.shape[1], max_breakpoints + 1), np.nan)
    if extra.shape[1]:
        ex_breaks, _, _, _, ex_k = _select(x, extra, **search)
        for members, fits in _fit_chosen(x, extra, ex_breaks, ex_k):
            is_boot = members < boot.shape[1]
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
            pattern_stability = _replicate_pattern_share(local_slopes[cols, :k + 1], slopes, slope_ci, flat_bound)
            k_share = {kk: float(np.mean(ex_k[cols] == kk)) for kk in range(max_breakpoints + 1)}
        else:
            crit = stats.t.ppf(0.5 + ci_level / 2, max(n - (k + 2), 1))
            slope_ci = np.stack([slopes - crit * slope_se, slopes + crit * slope_se], axis=1)
            breakpoint_ci = np.full((k, 2), np.nan)
            label_source, pattern_stability, k_share = "t-interval", float("nan"), {}
        labels = labels_from_interval(slope_ci[:, 0], slope_ci[:, 1], flat_bound)
        edges = np.concatenate([[x[0]], c_breaks, [x[-1]]])
        segments = pd.DataFrame({"start_x": edges[:-1], "end_x": edges[1:], "slope": slopes,
                                 "slope_ci_low": slope_ci[:, 0], "slope_ci_high": slope_ci[:, 1], "label": labels})
        observed_dip = float(smoothed_dip(curves[c][None], monotone_window)[0])
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
            "criterion_rss": [r[c] for r in criterion_rss],
            "n_params": [2 + 2 * kk for kk in range(max_breakpoints + 1)],
            "bic": bic[:, c],
            "breakpoints": [b[c].tolist() for b in breaks],
            "selected": np.arange(max_breakpoints + 1) == k,
        })
        pattern = has_triple_pattern(labels)
        results.append(PhaseResult(
            x=x.copy(), y=curves[c].copy(), fitted=fitted, n_breakpoints=k, breakpoints=c_breaks.copy(),
            breakpoint_ci=breakpoint_ci, segments=segments, pattern=pattern,
            pattern_stability=pattern_stability, p_monotone=p_monotone, monotone_statistic=observed_dip,
            bic=bic_table, triple=bool(pattern and n_null > 0 and p_monotone <= alpha),
            noise_phi=noise[c][0], noise_sd=noise[c][1], flat_bound=flat_bound,
            n_boot=n_rep, n_null=n_null, bootstrap=bootstrap if n_rep else "none", null_noise=null_noise,
            ci_level=ci_level,
            label_source=label_source, replicate_k_share=k_share,
        ))
    return results


def _replicate_pattern_share(local_slopes: np.ndarray, slopes: np.ndarray, slope_ci: np.ndarray,
                             flat_bound: float | None) -> float:
    """Share of replicates showing the pattern when labelled by the point estimate's rule.

    The point estimate's interval of segment ``j`` is the percentile interval
    ``[q_lo, q_hi]`` of the replicates' slopes at the segment's midpoint. A
    replicate ``b`` gets the same interval moved to its own slope there,
    ``[s_b - (s_hat - q_lo), s_b + (q_hi - s_hat)]`` (what its own bootstrap
    would give if the interval's shape did not depend on the curve), and the
    same labels and pattern rule follow.
    """
    below, above = slopes - slope_ci[:, 0], slope_ci[:, 1] - slopes
    labels = labels_from_interval(local_slopes - below, local_slopes + above, flat_bound)
    codes = np.vectorize(LABEL_CODES.get)(labels) if labels.size else np.zeros(labels.shape, dtype=int)
    return float(_pattern_codes(codes).mean())


def smoothed_dip(curves, window: int = MONOTONE_WINDOW) -> np.ndarray:
    """Largest dip ``max_{s<t} S_s - S_t`` of each curve's centred moving average ``S`` (0 if non-decreasing).

    The window holds ``window`` checkpoints, truncated at the ends. A moving
    average of a non-decreasing sequence is non-decreasing, so for curves
    ``m + e`` with ``m`` non-decreasing the statistic is at most that of the
    noise ``e`` alone: a constant mean is the least favourable null.

    Parameters
    ----------
    curves : array-like, shape (n_curves, n_points)

    Examples
    --------
    >>> smoothed_dip([[0, 1, 2, 3], [0, 3, 0, 0]], window=1).tolist()
    [0.0, 3.0]
    """
    curves = np.asarray(curves, dtype=float)
    n = curves.shape[-1]
    half_left = (window - 1) // 2
    half_right = window - 1 - half_left
    cumulative = np.concatenate([np.zeros(curves.shape[:-1] + (1,)), np.cumsum(curves, axis=-1)], axis=-1)
    start = np.clip(np.arange(n) - half_left, 0, n)
    stop = np.clip(np.arange(n) + half_right + 1, 0, n)
    smooth = (cumulative[..., stop] - cumulative[..., start]) / (stop - start)
    running_max = np.maximum.accumulate(smooth, axis=-1)
    return np.max(running_max - smooth, axis=-1)
