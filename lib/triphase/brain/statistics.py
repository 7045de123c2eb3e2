"""Statistics of voxelwise encoding scores: noise ceiling, permutation null, FDR, bootstrap.

All functions work on ``(n_trs, n_voxels)`` arrays and are vectorised over
voxels (and over permutations / bootstrap replicates in memory-bounded chunks).

Formulas (quoted by the methods page)
-------------------------------------
Noise ceiling (:func:`noise_ceiling`), from ``N`` repeats ``y_1..y_N`` of the
test story, for each voxel (Sahani & Linden 2003; Schoppe et al. 2016)::

    ybar   = mean_n y_n                                    (the test response)
    SP     = (N * Var(ybar) - mean_n Var(y_n)) / (N - 1)   (signal power, unbiased)
    EV     = SP / mean_n Var(y_n)                          (explainable variance of one repeat)
    CC_max = sqrt(SP / Var(ybar))                          (highest r any model can reach on ybar)

``SP`` is clipped at 0 (then ``CC_max = 0``); ``CC_max`` is in [0, 1].

Block permutation test (:func:`block_permutation_test`): the prediction's
time course is cut into consecutive blocks of ``block`` TRs, the blocks are
shuffled, and r is recomputed; ``p = (1 + #{r_perm >= r_obs}) / (1 + n_perm)``
(one-sided, positive r). Rows after the last whole block stay in place.

Circular-shift test (:func:`circular_shift_test`, the pipeline's test): the
prediction is rotated by every shift ``s`` with ``min_shift <= s <= T - min_shift``
(a rotation keeps both series' autocorrelation except at one seam); the null
SD of r is ``sd0 = sqrt(mean_s r_s^2)`` (by Parseval, Bartlett's variance
``(1/T) sum_k rho_x(k) rho_y(k)`` with periodogram estimates), ``T_eff = 1 / sd0^2``
and ``p = P(t_nu >= r / sd0)`` with ``nu = (2/3) T_eff`` degrees of freedom (the
SD is itself estimated; a sum of products of two periodogram ordinates has 3/2
times the relative variance of a chi-square sum). No resolution floor.

Block length (:func:`choose_block_length`): the first lag at which the mean
autocorrelation of the test responses over voxels falls below
:data:`ACF_THRESHOLD`, at least :data:`MIN_BLOCK` TRs, at most ``n_trs // MIN_BLOCKS``.

Bootstrap (:func:`bootstrap_score_ci`): consecutive blocks of ``block`` TRs of
the (true, predicted) pair are resampled with replacement, voxelwise r is
recomputed on the resampled rows and averaged over valid voxels; the CI is the
basic (reflected) interval ``[2 est - q_hi, 2 est - q_lo]`` of the replicates' quantiles. The draws (:func:`bootstrap_block_counts`)
depend only on (n_trs, block, n_boot, seed): every checkpoint of a run uses the
same draws, so replicates are paired across checkpoints.

Split-half ceiling (:func:`split_half_ceiling`): voxels are chosen on the even
repeats (their r passes BH-FDR with the circular-shift test), the ceiling of
the chosen voxels is estimated on the odd repeats only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats
from scipy.signal import lfilter

#: Default block length in TRs for permutations and bootstrap (20 s at TR = 2 s,
#: longer than the haemodynamic autocorrelation).
DEFAULT_BLOCK = 10
#: Shortest block chosen from the data (the haemodynamic response spans ~20 s).
MIN_BLOCK = DEFAULT_BLOCK
#: Fewest whole blocks a chosen block length leaves in the test series (a
#: bootstrap over fewer blocks has too few distinct replicates).
MIN_BLOCKS = 8
#: Block length = first lag whose mean autocorrelation is below this value
#: (dependence then is small against the sampling SD of r on ~200 TRs).
ACF_THRESHOLD = 0.1
#: Degrees of freedom of the null t per effective sample: the null SD is
#: estimated from periodogram products, whose relative variance is 3/2 that of
#: a chi-square sum, so nu = T_eff / (3/2).
DF_PER_EFFECTIVE_SAMPLE = 2.0 / 3.0
#: Fewest degrees of freedom of the null t (very slow series).
MIN_DF = 1.0
#: Repeats a split-half ceiling needs: two to choose voxels, two for the ceiling.
MIN_SPLIT_REPEATS = 4
#: Share of a series' sum of squares below which its centred sum of squares counts as rounding (constant)
CONSTANT_TOLERANCE = 1e-10
#: Upper bound on array elements materialised per chunk (~256 MB in float64).
MAX_CHUNK_ELEMENTS = 2**25


def check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed and predicted responses as float arrays (TRs x voxels) of equal shape."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}; expected equal (TRs x voxels)")
    return y_true, y_pred


def _standardise_columns(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to mean 0 and sum of squares 1; second value marks unusable columns."""
    centred = y - y.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    bad = ~(np.isfinite(norm) & (norm > 0))
    return np.where(bad, 0.0, centred / np.where(bad, 1.0, norm)), bad


def _block_bounds(n_trs: int, block: int) -> int:
    if block < 1:
        raise ValueError(f"block must be >= 1 TR, got {block}")
    n_blocks = n_trs // block
    if n_blocks < 2:
        raise ValueError(f"need at least 2 whole blocks of {block} TRs, got {n_trs} TRs")
    return n_blocks


# --------------------------------------------------------------------------- ceiling


@dataclass(frozen=True)
class NoiseCeiling:
    """Per-voxel noise ceiling from repeats (see module docstring for formulas).

    Attributes
    ----------
    cc_max : array (n_voxels,)
        Highest Pearson r any prediction can reach on the mean of the repeats.
    explainable_variance : array (n_voxels,)
        Fraction of a single repeat's variance that is stimulus-driven.
    signal_power : array (n_voxels,)
        Unbiased estimate of the stimulus-driven variance (before clipping).
    n_repeats : int
    """

    cc_max: np.ndarray
    explainable_variance: np.ndarray
    signal_power: np.ndarray
    n_repeats: int


def noise_ceiling(repeats: np.ndarray) -> NoiseCeiling:
    """Estimate each voxel's noise ceiling from repeated presentations.

    Sahani & Linden (2003) signal power and Schoppe et al. (2016) ``CC_max``::

        SP     = (N Var(ybar) - mean_n Var(y_n)) / (N - 1)
        EV     = max(SP, 0) / mean_n Var(y_n)
        CC_max = sqrt(max(SP, 0) / Var(ybar))

    Variances are over TRs (``ddof=0`` throughout; the ratio makes the choice
    immaterial). Voxels with NaN or zero variance get NaN.

    Parameters
    ----------
    repeats : array (n_repeats, n_trs, n_voxels)

    Returns
    -------
    NoiseCeiling

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.standard_normal((1, 2000, 3))
    >>> rep = signal + rng.standard_normal((4, 2000, 3))  # SNR 1, 4 repeats
    >>> bool(np.allclose(noise_ceiling(rep).cc_max, np.sqrt(1 / 1.25), atol=0.05))
    True
    """
    repeats = np.asarray(repeats, dtype=float)
    if repeats.ndim != 3:
        raise ValueError(f"repeats must be (n_repeats, n_trs, n_voxels), got shape {repeats.shape}")
    n_repeats = repeats.shape[0]
    if n_repeats < 2:
        raise ValueError(f"a noise ceiling needs at least 2 repeats, got {n_repeats}")
    mean_response = repeats.mean(axis=0)
    var_of_mean = mean_response.var(axis=0)
    mean_single_var = repeats.var(axis=1).mean(axis=0)
    signal_power = (n_repeats * var_of_mean - mean_single_var) / (n_repeats - 1)
    clipped = np.clip(signal_power, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = ~(np.isfinite(var_of_mean) & (var_of_mean > 0))
        cc_max = np.where(bad, np.nan, np.sqrt(clipped / np.where(bad, 1.0, var_of_mean)))
        explainable = np.where(bad, np.nan, clipped / np.where(bad, 1.0, mean_single_var))
    return NoiseCeiling(
        cc_max=np.clip(cc_max, 0.0, 1.0),
        explainable_variance=explainable,
        signal_power=np.where(bad, np.nan, signal_power),
        n_repeats=n_repeats,
    )


# --------------------------------------------------------------------------- permutation


def block_permutations(n_blocks: int, n_perm: int, seed: int | None = 0) -> np.ndarray:
    """``n_perm`` random orderings of ``n_blocks`` blocks, array (n_perm, n_blocks)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n_perm, n_blocks)), axis=1)


def block_permutation_test(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    block: int = DEFAULT_BLOCK,
    n_perm: int = 1000,
    seed: int | None = 0,
    return_null: bool = False,
):
    """Voxelwise p-values of Pearson r under a block-permutation null.

    The prediction is cut into ``B = n_trs // block`` whole blocks; each
    permutation reorders the blocks (the same order for all voxels, which keeps
    the spatial correlation of the null), rows past the last whole block stay
    in place. Because a permutation only reorders rows, the standardised
    prediction keeps its mean and norm and ``r_perm = sum_t zt[t] zp[perm(t)]``.
    Vectorised through block cross-products ``C[a, b, v] = sum_k zt[a*block+k, v]
    * zp[b*block+k, v]``, so one permutation costs ``O(B * n_voxels)``:
    ``r_perm = tail + sum_a C[a, perm(a), v]``.

    ``p = (1 + #{r_perm >= r_obs}) / (1 + n_perm)`` (one-sided: a model is of
    interest when it predicts positively). NaN for voxels constant in either array.

    Parameters
    ----------
    y_true, y_pred : array (n_trs, n_voxels)
    block : int
        Block length in TRs.
    n_perm : int
        Number of permutations.
    seed : int or None
    return_null : bool
        Also return the null r values, array (n_perm, n_voxels).

    Returns
    -------
    pvalues : array (n_voxels,)
    null : array (n_perm, n_voxels), only if ``return_null``

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = rng.standard_normal((200, 4))
    >>> p = block_permutation_test(y, y + rng.standard_normal((200, 4)), n_perm=200)
    >>> bool((p < 0.01).all())
    True
    """
    y_true, y_pred = check_pair(y_true, y_pred)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    n_trs, n_voxels = y_true.shape
    n_blocks = _block_bounds(n_trs, block)
    z_true, bad_true = _standardise_columns(y_true)
    z_pred, bad_pred = _standardise_columns(y_pred)
    bad = bad_true | bad_pred
    r_obs = (z_true * z_pred).sum(axis=0)

    whole = n_blocks * block
    perms = block_permutations(n_blocks, n_perm, seed)
    # Flat index of C[a, perm(a)] in a (B*B) axis, for every permutation.
    flat_index = np.arange(n_blocks)[None, :] * n_blocks + perms
    exceed = np.zeros(n_voxels, dtype=np.int64)
    null = np.empty((n_perm, n_voxels)) if return_null else None
    voxel_chunk = max(1, MAX_CHUNK_ELEMENTS // (n_blocks * n_blocks))
    for v0 in range(0, n_voxels, voxel_chunk):
        cols = slice(v0, v0 + voxel_chunk)
        zt, zp = z_true[:, cols], z_pred[:, cols]
        n_cols = zt.shape[1]
        # Rows past the last whole block are never moved: a constant added to every r.
        tail = (zt[whole:] * zp[whole:]).sum(axis=0)
        blocks_true = zt[:whole].reshape(n_blocks, block, n_cols).transpose(2, 0, 1)
        blocks_pred = zp[:whole].reshape(n_blocks, block, n_cols).transpose(2, 1, 0)
        cross = np.matmul(blocks_true, blocks_pred)  # (voxels, a, b)
        cross = cross.reshape(n_cols, n_blocks * n_blocks).T  # (a*B + b, voxels)
        perm_chunk = max(1, MAX_CHUNK_ELEMENTS // (n_blocks * n_cols))
        for p0 in range(0, n_perm, perm_chunk):
            r_perm = cross[flat_index[p0:p0 + perm_chunk]].sum(axis=1) + tail
            # Tolerance so that a permutation reproducing r_obs counts as reaching it.
            exceed[cols] += (r_perm >= r_obs[cols] - 1e-12).sum(axis=0)
            if return_null:
                null[p0:p0 + perm_chunk, cols] = r_perm
    pvalues = (1.0 + exceed) / (1.0 + n_perm)
    pvalues = np.where(bad, np.nan, pvalues)
    if return_null:
        return pvalues, np.where(bad[None, :], np.nan, null)
    return pvalues


# --------------------------------------------------------------------------- block length


def mean_autocorrelation(y: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation at lags 0..max_lag of each column, averaged over the usable columns.

    ``rho(k) = sum_t z_t z_{t+k}`` with columns standardised to mean 0 and sum of squares 1.

    Examples
    --------
    >>> t = np.arange(400.0)
    >>> acf = mean_autocorrelation(np.sin(2 * np.pi * t / 40)[:, None], 20)
    >>> round(float(acf[20]), 2)  # half a period: anticorrelated (380 of 400 products)
    -0.95
    """
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    n_trs = y.shape[0]
    if not 0 <= max_lag < n_trs:
        raise ValueError(f"max_lag must lie in [0, {n_trs - 1}] for {n_trs} TRs, got {max_lag}")
    z, bad = _standardise_columns(np.where(np.isfinite(y), y, 0.0))
    z = z[:, ~bad]
    if z.shape[1] == 0:
        raise ValueError("mean_autocorrelation: every column is constant or non-finite")
    return np.array([(z[k:] * z[:n_trs - k]).sum(axis=0).mean() for k in range(max_lag + 1)])


def choose_block_length(y: np.ndarray, threshold: float = ACF_THRESHOLD, min_block: int = MIN_BLOCK,
                        min_blocks: int = MIN_BLOCKS) -> int:
    """Block length (TRs) from the data's autocorrelation.

    The first lag ``k`` at which the autocorrelation of the responses,
    averaged over voxels, falls below ``threshold``; at least ``min_block``
    and at most ``n_trs // min_blocks`` TRs (so that at least ``min_blocks``
    blocks remain). Depends on the data only, never on a prediction, so every
    checkpoint of a run gets the same block length and the same bootstrap draws.

    Parameters
    ----------
    y : array (n_trs, n_voxels)
        Test responses.
    threshold : float in (0, 1)
    min_block, min_blocks : int

    Returns
    -------
    int

    Examples
    --------
    >>> from scipy.signal import lfilter
    >>> rng = np.random.default_rng(0)
    >>> slow = lfilter([1.0], [1.0, -0.9], rng.standard_normal((2000, 50)), axis=0)  # rho(k) = 0.9^k
    >>> choose_block_length(slow)  # 0.9^22 = 0.098; the sample autocorrelation is a little lower
    21
    """
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    n_trs = y.shape[0]
    longest = n_trs // min_blocks
    if longest < min_block:
        raise ValueError(f"y has {n_trs} TRs: too short for {min_blocks} blocks of at least {min_block} TRs")
    acf = mean_autocorrelation(y, longest)
    below = np.flatnonzero(acf < threshold)
    lag = int(below[0]) if below.size else longest
    return int(min(max(lag, min_block), longest))


# --------------------------------------------------------------------------- circular-shift test


@dataclass(frozen=True)
class ShiftTest:
    """Result of :func:`circular_shift_test`.

    Attributes
    ----------
    pvalues : array (n_voxels,)
        One-sided p (positive r), NaN for constant voxels.
    r : array (n_voxels,)
        Observed Pearson r.
    null_sd : array (n_voxels,)
        SD of r under the null (root mean square of the shifted r).
    df : array (n_voxels,)
        Degrees of freedom of the null t.
    n_shifts : int
    """

    pvalues: np.ndarray
    r: np.ndarray
    null_sd: np.ndarray
    df: np.ndarray
    n_shifts: int


def allowed_shifts(n_trs: int, min_shift: int, n_shifts: int | None = None) -> np.ndarray:
    """Shifts ``min_shift..n_trs - min_shift`` (evenly thinned to ``n_shifts`` if fewer are asked for).

    Examples
    --------
    >>> allowed_shifts(30, 10).tolist()
    [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    >>> allowed_shifts(30, 10, n_shifts=3).tolist()
    [10, 15, 20]
    """
    if min_shift < 1:
        raise ValueError(f"min_shift must be >= 1 TR, got {min_shift}")
    shifts = np.arange(min_shift, n_trs - min_shift + 1)
    if shifts.size < 2:
        raise ValueError(f"min_shift={min_shift} leaves fewer than 2 shifts of {n_trs} TRs")
    if n_shifts is not None:
        if n_shifts < 2:
            raise ValueError(f"n_shifts must be >= 2, got {n_shifts}")
        if n_shifts < shifts.size:
            shifts = shifts[np.unique(np.round(np.linspace(0, shifts.size - 1, n_shifts)).astype(int))]
    return shifts


def circular_shift_test(y_true: np.ndarray, y_pred: np.ndarray, min_shift: int = DEFAULT_BLOCK,
                        n_shifts: int | None = None) -> ShiftTest:
    """Voxelwise p-values of Pearson r against a circular-shift null with a t tail (module docstring).

    All circular shifts' r come from one FFT cross-correlation per voxel:
    ``r_s = sum_t z_true[(t + s) mod T] z_pred[t]`` for standardised columns.
    The null SD is the root mean square of ``r_s`` over the allowed shifts, and
    ``p = P(t_nu >= r / sd0)``, ``nu = max(1, (2/3) / sd0^2)``: continuous, so
    BH-FDR is never limited by a p-value floor.

    Parameters
    ----------
    y_true, y_pred : array (n_trs, n_voxels)
    min_shift : int
        Smallest shift (TRs) in either direction; at least the series' dependence length.
    n_shifts : int or None
        Use this many evenly spaced shifts (None: all allowed ones).

    Returns
    -------
    ShiftTest

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = rng.standard_normal((200, 4))
    >>> res = circular_shift_test(y, y + rng.standard_normal((200, 4)))
    >>> bool((res.pvalues < 1e-6).all())
    True
    """
    y_true, y_pred = check_pair(y_true, y_pred)
    n_trs = y_true.shape[0]
    shifts = allowed_shifts(n_trs, min_shift, n_shifts)
    z_true, bad_true = _standardise_columns(y_true)
    z_pred, bad_pred = _standardise_columns(y_pred)
    bad = bad_true | bad_pred
    r_obs = (z_true * z_pred).sum(axis=0)
    spectrum = np.fft.rfft(z_true, axis=0) * np.conj(np.fft.rfft(z_pred, axis=0))
    cross = np.fft.irfft(spectrum, n=n_trs, axis=0)  # cross[s] = sum_t z_true[t + s] z_pred[t]
    null_sd = np.sqrt((cross[shifts] ** 2).mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.maximum(DF_PER_EFFECTIVE_SAMPLE / null_sd**2, MIN_DF)
        pvalues = scipy.stats.t.sf(r_obs / null_sd, df)
    pvalues = np.where(bad | ~np.isfinite(pvalues), np.nan, pvalues)
    return ShiftTest(pvalues=pvalues, r=np.where(bad, np.nan, r_obs), null_sd=np.where(bad, np.nan, null_sd),
                     df=np.where(bad, np.nan, df), n_shifts=int(shifts.size))


def ar1_series(rng: np.random.Generator, shape: tuple[int, ...], phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series along axis 0, ``e_t = phi e_{t-1} + sqrt(1 - phi^2) eta_t``.

    Examples
    --------
    >>> x = ar1_series(np.random.default_rng(0), (20000, 1), 0.5)
    >>> round(float(np.corrcoef(x[1:, 0], x[:-1, 0])[0, 1]), 1), round(float(x.std()), 1)
    (0.5, 1.0)
    """
    if not -1 < phi < 1:
        raise ValueError(f"phi must lie in (-1, 1) for a stationary AR(1), got {phi}")
    innovations = rng.standard_normal(shape)
    innovations[1:] *= np.sqrt(1.0 - phi**2)  # the first value is drawn from the stationary law
    return lfilter([1.0], [1.0, -phi], innovations, axis=0)


@dataclass(frozen=True)
class FalsePositiveRate:
    """Monte-Carlo false-positive rate of a voxelwise test under an AR(1) null.

    Attributes
    ----------
    rate : float
        Share of null voxels with ``p <= alpha``.
    mc_se : float
        Monte-Carlo standard error, ``sqrt(rate (1 - rate) / n_voxels)``.
    phi, n_trs, n_voxels, alpha, method, block
    """

    rate: float
    mc_se: float
    phi: float
    n_trs: int
    n_voxels: int
    alpha: float
    method: str
    block: int


def permutation_false_positive_rate(phi: float, n_trs: int, n_voxels: int = 4000, alpha: float = 0.05,
                                    method: str = "circular", block: int | None = None, n_perm: int = 1000,
                                    seed: int = 0) -> FalsePositiveRate:
    """False-positive rate of the voxelwise test when truth and prediction are independent AR(1) series.

    Both series of every voxel are independent stationary AR(1) with
    coefficient ``phi`` (the hardest case: both slow), so every rejection is
    a false positive.

    Parameters
    ----------
    phi : float in (-1, 1)
    n_trs, n_voxels : int
    alpha : float in (0, 1)
    method : {"circular", "block"}
        :func:`circular_shift_test` (the pipeline's test) or :func:`block_permutation_test`.
    block : int or None
        Block length / smallest shift; None chooses it from the simulated
        responses (:func:`choose_block_length`), as the pipeline does.
    n_perm : int
        Permutations (``"block"``) or the largest number of shifts (``"circular"``).
    seed : int

    Returns
    -------
    FalsePositiveRate

    Examples
    --------
    >>> res = permutation_false_positive_rate(0.5, 200, n_voxels=2000)
    >>> abs(res.rate - 0.05) < 4 * res.mc_se
    True
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if method not in ("circular", "block"):
        raise ValueError(f"method={method!r}; expected 'circular' or 'block'")
    rng = np.random.default_rng(seed)
    y_true = ar1_series(rng, (n_trs, n_voxels), phi)
    y_pred = ar1_series(rng, (n_trs, n_voxels), phi)
    if block is None:
        block = choose_block_length(y_true)
    if method == "circular":
        pvalues = circular_shift_test(y_true, y_pred, min_shift=block, n_shifts=n_perm).pvalues
    else:
        pvalues = block_permutation_test(y_true, y_pred, block=block, n_perm=n_perm, seed=seed)
    rate = float(np.mean(pvalues <= alpha))
    return FalsePositiveRate(rate=rate, mc_se=float(np.sqrt(rate * (1 - rate) / n_voxels)), phi=float(phi),
                             n_trs=int(n_trs), n_voxels=int(n_voxels), alpha=float(alpha), method=method,
                             block=int(block))


def fdr_bh(pvals: np.ndarray, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg false discovery rate control.

    Adjusted p-values ``p_adj(i) = min_{j >= i} min(1, m p(j) / j)`` over the
    ``m`` finite p-values sorted ascending; a voxel is significant when
    ``p_adj <= q``. NaN p-values (invalid voxels) are not counted in ``m`` and
    are never significant; their adjusted value is NaN.

    Parameters
    ----------
    pvals : array (n,)
    q : float in (0, 1)

    Returns
    -------
    reject : bool array (n,)
    p_adjusted : array (n,)

    Examples
    --------
    >>> fdr_bh(np.array([0.01, 0.03, 0.02, 0.5]), q=0.05)[0]
    array([ True,  True,  True, False])
    """
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    pvals = np.asarray(pvals, dtype=float)
    finite = np.isfinite(pvals)
    if np.any((pvals[finite] < 0) | (pvals[finite] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(pvals.shape, np.nan)
    p = pvals[finite]
    m = p.size
    if m:
        order = np.argsort(p)
        scaled = p[order] * m / np.arange(1, m + 1)
        monotone = np.minimum.accumulate(scaled[::-1])[::-1]
        values = np.empty(m)
        values[order] = np.minimum(monotone, 1.0)
        adjusted[finite] = values
    reject = np.zeros(pvals.shape, dtype=bool)
    reject[finite] = adjusted[finite] <= q
    return reject, adjusted


def fraction_significant(pvals: np.ndarray, q: float = 0.05) -> float:
    """Share of valid (finite-p) voxels significant under BH-FDR at level ``q``.

    Examples
    --------
    >>> fraction_significant(np.array([0.001, 0.9, np.nan]))
    0.5
    """
    pvals = np.asarray(pvals, dtype=float)
    n_valid = int(np.isfinite(pvals).sum())
    if n_valid == 0:
        return float("nan")
    reject, _ = fdr_bh(pvals, q)
    return float(reject.sum() / n_valid)


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """Bootstrap confidence interval of the whole-brain mean r.

    Attributes
    ----------
    estimate : float
        Mean r over valid voxels on the original data.
    ci_low, ci_high : float
        Basic bootstrap interval at level ``ci``: ``2 estimate`` minus the replicates' upper and lower quantiles.
    replicates : array (n_boot,)
        Mean r of each bootstrap replicate.
    ci : float
    block : int
    """

    estimate: float
    ci_low: float
    ci_high: float
    replicates: np.ndarray
    ci: float
    block: int


def bootstrap_block_counts(n_trs: int, block: int, n_boot: int, seed: int | None = 0) -> np.ndarray:
    """The shared bootstrap draws: how often each block is drawn in each replicate.

    The TRs are cut into ``ceil(n_trs / block)`` consecutive blocks (the last
    may be shorter); each replicate draws as many blocks with replacement.
    The draws depend only on ``(n_trs, block, n_boot, seed)``: every checkpoint
    and layer of a run scored on the same test TRs gets the same draws, so
    their replicates are paired (a difference between checkpoints is computed
    replicate by replicate).

    Returns
    -------
    array (n_boot, n_blocks) of int

    Examples
    --------
    >>> c = bootstrap_block_counts(25, 10, n_boot=4, seed=0)
    >>> c.shape, c.sum(axis=1).tolist()
    ((4, 3), [3, 3, 3, 3])
    >>> bool((c == bootstrap_block_counts(25, 10, n_boot=4, seed=0)).all())
    True
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if block < 1 or n_trs < 2 * block:
        raise ValueError(f"need at least 2 blocks of {block} TRs, got {n_trs} TRs")
    n_blocks = -(-n_trs // block)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_blocks, (n_boot, n_blocks))
    return np.stack([np.bincount(row, minlength=n_blocks) for row in draws])


def bootstrap_score_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    block: int = DEFAULT_BLOCK,
    n_boot: int = 1000,
    seed: int | None = 0,
    ci: float = 0.95,
    voxels: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> BootstrapCI:
    """Block-bootstrap CI of the mean voxelwise r (the brain score).

    The TRs are cut into consecutive blocks of ``block`` rows (the last one may
    be shorter); a replicate draws as many blocks with replacement
    (:func:`bootstrap_block_counts`), recomputes each voxel's Pearson r on the
    drawn rows and averages r over the valid voxels. Vectorised with per-block
    sums (of x, y, x^2, y^2, xy): a replicate is a vector of block counts ``c``
    and its sums are ``c @ S``. Voxels are not resampled: the score is the mean
    over this brain's fixed set of voxels (not a sample from a population of
    voxels), and the test-time noise that the blocks resample already carries
    the voxels' shared variability.

    Parameters
    ----------
    y_true, y_pred : array (n_trs, n_voxels)
    block : int
    n_boot : int
    seed : int or None
    ci : float in (0, 1)
    voxels : bool array (n_voxels,) or None
        Voxels to average over (default: all voxels not constant in either array).
    counts : int array (n_boot, n_blocks) or None
        Draws to use (from :func:`bootstrap_block_counts`); default: drawn from
        ``(n_trs, block, n_boot, seed)``, which gives the same draws.

    Returns
    -------
    BootstrapCI

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.standard_normal((300, 50))
    >>> res = bootstrap_score_ci(s, s + rng.standard_normal((300, 50)), n_boot=200)
    >>> bool(res.ci_low < res.estimate < res.ci_high)
    True
    """
    y_true, y_pred = check_pair(y_true, y_pred)
    mask = np.ones(y_true.shape[1], dtype=bool) if voxels is None else np.asarray(voxels, dtype=bool)
    if mask.shape != (y_true.shape[1],):
        raise ValueError(f"voxels mask has shape {mask.shape}, expected ({y_true.shape[1]},)")
    if counts is None:
        counts = bootstrap_block_counts(y_true.shape[0], block, n_boot, seed)
    return bootstrap_region_scores(y_true, y_pred, {"voxels": mask}, counts, block=block, ci=ci)["voxels"]


def bootstrap_region_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    masks: dict[str, np.ndarray],
    counts: np.ndarray,
    block: int = DEFAULT_BLOCK,
    ci: float = 0.95,
) -> dict[str, BootstrapCI]:
    """:func:`bootstrap_score_ci` for several voxel sets at once, on the same draws.

    Each voxel's replicate r is computed once and averaged over every mask, so
    scoring the whole brain, its regions and their ceiling voxels costs about
    one bootstrap instead of one per set; the result for each mask equals
    :func:`bootstrap_score_ci` with ``voxels=mask`` and the same ``counts``.

    Parameters
    ----------
    y_true, y_pred : array (n_trs, n_voxels)
    masks : dict name -> bool array (n_voxels,)
        Voxel sets; voxels constant in either array are left out of each.
    counts : int array (n_boot, n_blocks)
        The draws (:func:`bootstrap_block_counts`).
    block : int
    ci : float in (0, 1)

    Returns
    -------
    dict name -> BootstrapCI, in the order of ``masks``

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.standard_normal((300, 40))
    >>> p = s + rng.standard_normal((300, 40))
    >>> halves = {"left": np.arange(40) < 20, "right": np.arange(40) >= 20}
    >>> c = bootstrap_block_counts(300, 10, n_boot=100, seed=0)
    >>> both = bootstrap_region_scores(s, p, halves, c, block=10)
    >>> one = bootstrap_score_ci(s, p, block=10, voxels=halves["left"], counts=c)
    >>> bool(np.allclose(both["left"].replicates, one.replicates))
    True
    """
    y_true, y_pred = check_pair(y_true, y_pred)
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    n_trs, n_voxels = y_true.shape
    counts = np.asarray(counts, dtype=float)
    starts = np.arange(0, n_trs, block)
    n_blocks = len(starts)
    if counts.ndim != 2 or counts.shape[1] != n_blocks or counts.shape[0] < 2:
        raise ValueError(f"counts has shape {counts.shape}, expected (n_boot >= 2, {n_blocks}) for "
                         f"{n_trs} TRs in blocks of {block}")
    if not masks:
        raise ValueError("bootstrap_region_scores: no voxel set given")
    n_boot = counts.shape[0]
    _, bad_true = _standardise_columns(y_true)
    _, bad_pred = _standardise_columns(y_pred)
    usable = ~(bad_true | bad_pred)
    names = list(masks)
    member = np.empty((n_voxels, len(names)), dtype=bool)
    for k, name in enumerate(names):
        mask = np.asarray(masks[name], dtype=bool)
        if mask.shape != (n_voxels,):
            raise ValueError(f"voxel set {name!r} has shape {mask.shape}, expected ({n_voxels},)")
        member[:, k] = mask & usable
        if not member[:, k].any():
            raise ValueError(f"bootstrap_region_scores: no valid voxel to average over in {name!r}")
    used = member.any(axis=1)
    weights = member[used].astype(float)  # (voxels used, sets): a mean over a set is a product with its column
    x = y_true[:, used]
    y = y_pred[:, used]
    # Centring first keeps the sums-of-products formula numerically stable.
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)

    lengths = np.diff(np.append(starts, n_trs)).astype(float)
    sums = [np.add.reduceat(a, starts, axis=0) for a in (x, y, x * x, y * y, x * y)]
    replicates = np.empty((n_boot, len(names)))
    chunk = max(1, MAX_CHUNK_ELEMENTS // (5 * x.shape[1]))
    sum_x, sum_y, sum_xx, sum_yy, sum_xy = sums
    for start in range(0, n_boot, chunk):
        c = counts[start:start + chunk]
        inverse_n = 1.0 / (c @ lengths)[:, None]
        # r = (Sxy - Sx Sy / n) / sqrt((Sxx - Sx^2 / n)(Syy - Sy^2 / n)), in place: the arrays are
        # replicates x voxels, and fresh temporaries of that size cost more than the arithmetic
        sx, sy = c @ sum_x, c @ sum_y
        r = c @ sum_xy
        centring = sx * sy
        centring *= inverse_n
        r -= centring
        var_x, var_y = c @ sum_xx, c @ sum_yy  # sums of squares, centred below
        np.multiply(sx, sx, out=sx)
        sx *= inverse_n
        np.multiply(sy, sy, out=sy)
        sy *= inverse_n
        # A series constant over a replicate's rows is left with a variance of rounding size, not 0:
        # call it constant (r undefined) when centring removes all but a tiny share of its sum of squares.
        flat = sx >= (1.0 - CONSTANT_TOLERANCE) * var_x
        flat |= sy >= (1.0 - CONSTANT_TOLERANCE) * var_y
        var_x -= sx
        var_y -= sy
        var_x *= var_y
        with np.errstate(divide="ignore", invalid="ignore"):
            np.sqrt(var_x, out=var_x)
            r /= var_x
        r[flat] = np.nan
        # A replicate can make a voxel constant (rare): leave it out of that replicate's means.
        finite = np.isfinite(r)
        if finite.all():
            counted = weights.sum(0)
        else:
            r[~finite] = 0.0
            counted = finite @ weights
        with np.errstate(divide="ignore", invalid="ignore"):
            replicates[start:start + chunk] = (r @ weights) / counted

    voxel_r = (x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0))
    estimates = (voxel_r @ weights) / weights.sum(0)
    tail = (1.0 - ci) / 2.0
    quantiles = np.quantile(replicates, [tail, 1.0 - tail], axis=0)
    results = {}
    for k, name in enumerate(names):
        estimate = float(estimates[k])
        # Basic (reflected) interval: r is biased towards 0 on short autocorrelated series and the replicates
        # repeat that bias, so reflecting about the estimate removes it (Davison & Hinkley 1997, eq. 5.6).
        results[name] = BootstrapCI(
            estimate=estimate, ci_low=float(2.0 * estimate - quantiles[1, k]),
            ci_high=float(2.0 * estimate - quantiles[0, k]), replicates=replicates[:, k].copy(), ci=ci,
            block=block)
    return results


# --------------------------------------------------------------------------- split-half ceiling


@dataclass(frozen=True)
class SplitHalfCeiling:
    """Voxels chosen on one half of the repeats, their ceiling from the other half.

    Attributes
    ----------
    selected : bool array (n_voxels,)
        Voxels whose even-repeat reliability passes BH-FDR at ``q``.
    cc_max : array (n_voxels,)
        Ceiling on the mean of all repeats estimated from the odd repeats only,
        ``sqrt(SP_odd / (SP_odd + (V_odd - SP_odd) / N))`` (NaN where undefined).
    reliability_p : array (n_voxels,)
        p-value of the even repeats' mutual correlation (:func:`circular_shift_test`).
    n_repeats : int
    q : float
    """

    selected: np.ndarray
    cc_max: np.ndarray
    reliability_p: np.ndarray
    n_repeats: int
    q: float


def split_half_ceiling(repeats: np.ndarray, q: float = 0.05, min_shift: int = DEFAULT_BLOCK) -> SplitHalfCeiling:
    """Choose voxels and estimate their ceiling on independent halves of the repeats.

    Selection (even repeats 0, 2, ...): the correlation of the mean of the
    first half of the even repeats with the mean of the second half, tested
    with :func:`circular_shift_test` and BH-FDR at ``q``. Ceiling (odd repeats
    1, 3, ...): the unbiased signal power ``SP`` and mean single-repeat
    variance ``V`` of :func:`noise_ceiling` on the odd repeats give the ceiling
    on the mean of all ``N`` repeats, ``CC_max = sqrt(SP / (SP + (V - SP) / N))``
    (``SP`` clipped at 0). Because the two halves have independent noise, the
    selection does not bias the ceiling upwards (clipping on noise voxels is
    what inflated the all-voxel ceiling).

    Parameters
    ----------
    repeats : array (n_repeats >= 4, n_trs, n_voxels)
    q : float in (0, 1)
    min_shift : int
        Smallest circular shift of the reliability test (TRs).

    Returns
    -------
    SplitHalfCeiling

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> signal = np.concatenate([rng.standard_normal((1, 300, 20)), np.zeros((1, 300, 20))], axis=2)
    >>> res = split_half_ceiling(signal + rng.standard_normal((4, 300, 40)))
    >>> int(res.selected[:20].sum()), int(res.selected[20:].sum())
    (20, 0)
    """
    repeats = np.asarray(repeats, dtype=float)
    if repeats.ndim != 3:
        raise ValueError(f"repeats must be (n_repeats, n_trs, n_voxels), got shape {repeats.shape}")
    n_repeats = repeats.shape[0]
    if n_repeats < MIN_SPLIT_REPEATS:
        raise ValueError(f"a split-half ceiling needs at least {MIN_SPLIT_REPEATS} repeats, got {n_repeats}")
    even, odd = repeats[0::2], repeats[1::2]
    half = even.shape[0] // 2
    reliability = circular_shift_test(even[:half].mean(axis=0), even[half:].mean(axis=0), min_shift=min_shift)
    selected, _ = fdr_bh(reliability.pvalues, q)
    odd_ceiling = noise_ceiling(odd)
    power = np.clip(odd_ceiling.signal_power, 0.0, None)
    single_var = odd.var(axis=1).mean(axis=0)
    expected_var_of_mean = power + (single_var - power) / n_repeats
    with np.errstate(divide="ignore", invalid="ignore"):
        cc_max = np.sqrt(power / expected_var_of_mean)
    cc_max = np.where(np.isfinite(cc_max), np.clip(cc_max, 0.0, 1.0), np.nan)
    return SplitHalfCeiling(selected=selected & np.isfinite(cc_max), cc_max=cc_max,
                            reliability_p=reliability.pvalues, n_repeats=n_repeats, q=q)
