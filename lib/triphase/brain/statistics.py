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

Bootstrap (:func:`bootstrap_score_ci`): consecutive blocks of ``block`` TRs of
the (true, predicted) pair are resampled with replacement, voxelwise r is
recomputed on the resampled rows and averaged over valid voxels; the CI is the
percentile interval of the replicates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Default block length in TRs for permutations and bootstrap (20 s at TR = 2 s,
#: longer than the haemodynamic autocorrelation).
DEFAULT_BLOCK = 10
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
        Percentile interval at level ``ci``.
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


def bootstrap_score_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    block: int = DEFAULT_BLOCK,
    n_boot: int = 1000,
    seed: int | None = 0,
    ci: float = 0.95,
    voxels: np.ndarray | None = None,
) -> BootstrapCI:
    """Block-bootstrap CI of the mean voxelwise r (the brain score).

    The TRs are cut into consecutive blocks of ``block`` rows (the last one may
    be shorter); a replicate draws as many blocks with replacement, recomputes
    each voxel's Pearson r on the drawn rows and averages r over the valid
    voxels. Vectorised with per-block sums (of x, y, x^2, y^2, xy): a replicate
    is a vector of block counts ``c`` and its sums are ``c @ S``.

    Parameters
    ----------
    y_true, y_pred : array (n_trs, n_voxels)
    block : int
    n_boot : int
    seed : int or None
    ci : float in (0, 1)
    voxels : bool array (n_voxels,) or None
        Voxels to average over (default: all voxels not constant in either array).

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
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    n_trs, n_voxels = y_true.shape
    if block < 1 or n_trs < 2 * block:
        raise ValueError(f"need at least 2 blocks of {block} TRs, got {n_trs} TRs")
    _, bad_true = _standardise_columns(y_true)
    _, bad_pred = _standardise_columns(y_pred)
    valid = ~(bad_true | bad_pred)
    if voxels is not None:
        voxels = np.asarray(voxels, dtype=bool)
        if voxels.shape != (n_voxels,):
            raise ValueError(f"voxels mask has shape {voxels.shape}, expected ({n_voxels},)")
        valid &= voxels
    if not valid.any():
        raise ValueError("bootstrap_score_ci: no valid voxel to average over")
    x = y_true[:, valid]
    y = y_pred[:, valid]
    # Centring first keeps the sums-of-products formula numerically stable.
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)

    starts = np.arange(0, n_trs, block)
    n_blocks = len(starts)
    lengths = np.diff(np.append(starts, n_trs)).astype(float)
    sums = [np.add.reduceat(a, starts, axis=0) for a in (x, y, x * x, y * y, x * y)]

    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n_blocks, n_blocks), minlength=n_blocks) for _ in range(n_boot)])
    counts = counts.astype(float)
    replicates = np.empty(n_boot)
    chunk = max(1, MAX_CHUNK_ELEMENTS // (5 * x.shape[1]))
    for start in range(0, n_boot, chunk):
        c = counts[start:start + chunk]
        n = c @ lengths
        sx, sy, sxx, syy, sxy = (c @ s for s in sums)
        n = n[:, None]
        cov = sxy - sx * sy / n
        var_x = sxx - sx**2 / n
        var_y = syy - sy**2 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(var_x * var_y)
        # A replicate can make a voxel constant (rare): leave it out of that mean.
        replicates[start:start + chunk] = np.nanmean(np.where(np.isfinite(r), r, np.nan), axis=1)

    estimate = float(np.mean((x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0))))
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return BootstrapCI(
        estimate=estimate, ci_low=float(low), ci_high=float(high), replicates=replicates, ci=ci, block=block
    )
