"""Measures of a language model's internal states (perspective 2), as pure functions on arrays.

Every function here takes NumPy arrays (representations, attention patterns,
token ids, labels) and returns numbers; nothing loads a model. The pipeline that
runs the forward passes and tabulates these measures per checkpoint and layer is
:mod:`triphase.internal.sweep`; the formulas and citations are on the methods
page (``book/methods_internal.md``).

* Geometry of representations ``X`` (n points x d dims):
  :func:`twonn_dimension` (Facco et al. 2017), :func:`participation_ratio`,
  :func:`n_components_for_variance`, :func:`anisotropy` (mean pairwise cosine,
  Ethayarajh 2019), :func:`mean_norm`.
* Similarity between two representations of the same points:
  :func:`linear_cka` (Kornblith et al. 2019), debiased by default (Song et al.
  2012's unbiased HSIC); :func:`cka_null_table` checks it on independent matrices.
* Attention: :func:`attention_entropy` per query row and
  :func:`mean_attention_entropy` per head.
* In-context learning (Olsson et al. 2022): :func:`repeated_random_tokens`,
  :func:`prefix_matching_targets`, :func:`prefix_matching_score` and
  :func:`repeat_losses` (the in-context loss gain).
  Probes that a positional copy cannot pass: :func:`induction_probe_tokens`
  (held-out random blocks repeated at several periods,
  :data:`INDUCTION_PROBE_PERIODS`), :func:`period_robust_induction_score`
  (the lowest score over periods), :func:`offset_attention_score` (attention a
  fixed distance back) and :func:`periodic_repeat_losses`.
* Linear probes: :func:`ridge_probes` (many targets, one SVD per fold),
  :func:`probe_accuracy` and :func:`probe_r2` (cross-validated with groups
  held out; ``shuffle=True`` permutes the labels), :func:`control_task_labels`
  and :func:`probe_selectivity` (Hewitt & Liang 2019's control task: a random
  label per word type; selectivity = accuracy - control accuracy), checked by
  :func:`probe_selectivity_random_embedding`.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 20))
>>> round(linear_cka(x, 2.0 * x), 6)
1.0
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import entr
from sklearn.model_selection import GroupKFold
from sklearn.utils.extmath import randomized_svd

#: Fraction of the largest ratios mu = r2 / r1 that TwoNN's linear fit discards
#: (Facco et al. 2017 discard the 10% largest: their empirical CDF is noisy).
TWONN_DISCARD_FRACTION = 0.1
#: Rows per block when computing pairwise distances (bounds memory at block x n floats).
DISTANCE_BLOCK = 1024
#: Share of variance the "number of components" measure must reach.
VARIANCE_SHARE = 0.9
#: Ridge penalties searched (efficient leave-one-out) inside each probe's training folds.
PROBE_ALPHAS = tuple(np.logspace(-2, 6, 9))
#: Eigenvalues below this share of the largest are treated as zero (rank deficiency) in the probes.
RANK_TOLERANCE = 1e-10
#: Default number of cross-validation folds (groups = stories) for probes.
PROBE_SPLITS = 5


def _as_points(x, name: str = "X", min_points: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n points x d dims), got shape {x.shape}")
    if x.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


# --------------------------------------------------------------------------- dimension
def two_nearest_distances(x) -> np.ndarray:
    """Distances of every point to its first and second nearest neighbour.

    Brute force in blocks of :data:`DISTANCE_BLOCK` rows (exact, float64), so
    memory stays at ``DISTANCE_BLOCK x n`` whatever ``n``.

    Parameters
    ----------
    x : array (n, d)

    Returns
    -------
    array (n, 2)
        ``r1 <= r2`` per point (the point itself excluded).

    Examples
    --------
    >>> two_nearest_distances(np.array([[0.0], [1.0], [3.0]])).tolist()
    [[1.0, 3.0], [1.0, 2.0], [2.0, 3.0]]
    """
    x = _as_points(x, min_points=3)
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((n, 2))
    for start in range(0, n, DISTANCE_BLOCK):
        stop = min(start + DISTANCE_BLOCK, n)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * x[start:stop] @ x.T
        np.maximum(d2, 0.0, out=d2)  # rounding can make tiny squared distances negative
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # exclude the point itself
        two = np.partition(d2, 1, axis=1)[:, :2]
        out[start:stop] = np.sqrt(np.sort(two, axis=1))
    return out


def twonn_dimension(x, discard_fraction: float = TWONN_DISCARD_FRACTION, method: str = "fit") -> float:
    """Intrinsic dimension by the TwoNN estimator (Facco et al. 2017).

    For each point, ``mu = r2 / r1`` (second over first nearest-neighbour
    distance) follows a Pareto law ``F(mu) = 1 - mu^(-d)`` when the density is
    locally constant. Duplicate points (``r1 = 0``) are removed first.

    Parameters
    ----------
    x : array (n, d)
    discard_fraction : float
        ``method="fit"``: the largest ``discard_fraction`` of the ``mu`` are left
        out of the fit (the paper's 10%).
    method : {"fit", "mle"}
        ``"fit"`` (the paper): least-squares line through the origin of
        ``-log(1 - F_emp(mu_(i)))`` against ``log mu_(i)``, with
        ``F_emp(mu_(i)) = i / N`` over the sorted ``mu``;
        ``"mle"``: the maximum-likelihood estimate ``(N - 1) / sum(log mu)``.

    Returns
    -------
    float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> plane = rng.standard_normal((2000, 2)) @ rng.standard_normal((2, 10))
    >>> round(twonn_dimension(plane), 1)
    2.0
    """
    if method not in ("fit", "mle"):
        raise ValueError(f"method must be 'fit' or 'mle', got {method!r}")
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    x = _as_points(x, min_points=3)
    x = np.unique(x, axis=0)  # identical points (e.g. one token type at the embedding layer) have r1 = 0
    if x.shape[0] < 3:
        raise ValueError("TwoNN needs at least 3 distinct points")
    r = two_nearest_distances(x)
    r = r[r[:, 0] > 0]
    mu = np.sort(r[:, 1] / r[:, 0])
    n = mu.size
    log_mu = np.log(mu)
    if method == "mle":
        return float((n - 1) / np.sum(log_mu))
    keep = int(np.floor(n * (1.0 - discard_fraction)))
    # F_emp = i / N for i = 1..N; the last point (F = 1) is always excluded (log 0).
    keep = min(keep, n - 1)
    if keep < 2:
        raise ValueError(f"TwoNN fit needs more points: only {keep} ratios left after discarding")
    f_emp = np.arange(1, n + 1) / n
    xs = log_mu[:keep]
    ys = -np.log1p(-f_emp[:keep])
    return float(np.dot(xs, ys) / np.dot(xs, xs))


def pca_eigenvalues(x) -> np.ndarray:
    """Eigenvalues of the sample covariance of ``x``, in decreasing order.

    Examples
    --------
    >>> pca_eigenvalues(np.array([[1.0, 0.0], [-1.0, 0.0]])).round(6).tolist()
    [2.0, 0.0]
    """
    x = _as_points(x)
    centred = x - x.mean(axis=0)
    n, d = centred.shape
    # the non-zero spectrum of X^T X equals that of X X^T: decompose the smaller one
    gram = centred @ centred.T if n < d else centred.T @ centred
    eig = np.linalg.eigvalsh(gram)[::-1].clip(min=0.0)
    return np.concatenate([eig, np.zeros(max(0, min(n, d) - eig.size))]) / (n - 1)


def participation_ratio(x) -> float:
    """PCA participation ratio ``(sum_i lambda_i)^2 / sum_i lambda_i^2``.

    Equals ``k`` for isotropic variance in ``k`` dimensions, 1 when a single
    direction carries all variance.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(participation_ratio(rng.standard_normal((20000, 4))), 1)
    4.0
    """
    eig = pca_eigenvalues(x)
    total = eig.sum()
    if total <= 0:
        raise ValueError("participation ratio undefined: the points have zero variance")
    return float(total ** 2 / np.sum(eig ** 2))


def n_components_for_variance(x, share: float = VARIANCE_SHARE) -> int:
    """Smallest number of principal components that explain ``share`` of the variance.

    Examples
    --------
    >>> x = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # variances 6 and 2/3 (x3/2)
    >>> n_components_for_variance(x, 0.8), n_components_for_variance(x, 0.95)
    (1, 2)
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    eig = pca_eigenvalues(x)
    total = eig.sum()
    if total <= 0:
        raise ValueError("number of components undefined: the points have zero variance")
    cumulative = np.cumsum(eig) / total
    # tolerance: a share of exactly 1.0 must be reachable despite rounding
    return int(np.searchsorted(cumulative, share - 1e-12) + 1)


# --------------------------------------------------------------------------- similarity
def _centred_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = _as_points(x, "x")
    y = _as_points(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same points: {x.shape[0]} vs {y.shape[0]} rows")
    return x - x.mean(axis=0), y - y.mean(axis=0)


def _cross_trace(x: np.ndarray, y: np.ndarray) -> float:
    """``tr(K_X K_Y) = ||Y^T X||_F^2`` for column-centred ``x, y``, in the cheaper space."""
    n = x.shape[0]
    if n < max(x.shape[1], y.shape[1]):
        return float(np.sum((x @ x.T) * (y @ y.T)))
    return float(np.linalg.norm(y.T @ x) ** 2)


def _hsic(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Linear-kernel HSIC of column-centred ``x, y`` (up to a factor common to all pairs of one ``n``).

    ``debiased=False``: ``tr(K_X H K_Y H)`` (biased, Gretton et al. 2005).
    ``debiased=True``: the unbiased U-statistic of Song et al. (2012),
    ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2 / (n-2) 1'K~L~1] / (n (n-3))``
    with ``K~, L~`` the Gram matrices with zeroed diagonals. For centred
    ``x`` (``X^T 1 = 0``) with squared row norms ``a``: ``1'K~1 = -sum a`` and
    ``K~1 = -a``, so every term is ``O(n d)`` besides ``tr(KL)``.
    """
    cross = _cross_trace(x, y)
    if not debiased:
        return cross
    n = x.shape[0]
    a = np.einsum("ij,ij->i", x, x)
    b = np.einsum("ij,ij->i", y, y)
    ab = float(a @ b)
    return (cross - ab + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2.0 * ab / (n - 2)) / (n * (n - 3))


#: The unbiased HSIC needs at least this many points (its normaliser is n (n - 3)).
DEBIASED_MIN_POINTS = 4


def linear_cka(x, y, debiased: bool = True) -> float:
    """Linear centred kernel alignment between two representations of the same n points.

    ``CKA = HSIC(K_X, K_Y) / sqrt(HSIC(K_X, K_X) HSIC(K_Y, K_Y))`` with linear
    kernels ``K = X X^T``. The biased estimator (``debiased=False``, Kornblith
    et al. 2019) is ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``;
    it is inflated when the dimension is not small against ``n``: two
    independent Gaussian matrices score about ``sqrt(d1 d2 / ((n + d1)(n + d2)))``,
    0.5 at ``d = n``. The default plugs in the unbiased HSIC of Song et al.
    (2012) instead (debiased CKA, Nguyen et al. 2021; Kornblith et al. 2019's
    code): about 0 for independent matrices at any ``d / n``, 1 for identical
    ones; it can fall slightly below 0 or, for tiny ``n``, above 1.
    Computed in the feature space or, when there are fewer points than
    features, with the ``n x n`` Gram matrices, whichever is smaller.

    Parameters
    ----------
    x : array (n, d1)
    y : array (n, d2)
    debiased : bool
        Unbiased HSIC (needs ``n >= 4``) or the biased one.

    Returns
    -------
    float
        In [0, 1] for the biased estimator.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 5))
    >>> q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    >>> round(linear_cka(x, 3 * x @ q), 6), round(linear_cka(x, 3 * x @ q, debiased=False), 6)
    (1.0, 1.0)
    >>> noise_x, noise_y = rng.standard_normal((2, 64, 128))  # independent, d = 2 n
    >>> round(linear_cka(noise_x, noise_y, debiased=False), 1), abs(linear_cka(noise_x, noise_y)) < 0.05
    (0.7, True)
    """
    x, y = _centred_pair(x, y)
    if debiased and x.shape[0] < DEBIASED_MIN_POINTS:
        raise ValueError(f"debiased CKA needs at least {DEBIASED_MIN_POINTS} points, got {x.shape[0]}")
    cross = _hsic(x, y, debiased)
    self_x, self_y = _hsic(x, x, debiased), _hsic(y, y, debiased)
    if self_x <= 0 or self_y <= 0:
        raise ValueError("CKA undefined: one representation has zero variance")
    return float(cross / np.sqrt(self_x * self_y))


#: Goal of the validation table: |mean debiased CKA of independent matrices| stays below this.
CKA_NULL_TOLERANCE = 0.02
#: d / n ratios of the CKA null check (the organism's 128 / 2048, half, and 7B-class 4096 / 2048).
CKA_NULL_RATIOS = (1 / 16, 1 / 2, 2)


def cka_null_table(ratios: Sequence[float] = CKA_NULL_RATIOS, n: int = 256, n_sim: int = 50,
                   seed: int = 0, tolerance: float = CKA_NULL_TOLERANCE) -> pd.DataFrame:
    """CKA of two independent Gaussian matrices (true CKA 0) at several ``d / n``, both estimators.

    Parameters
    ----------
    ratios : sequence of float
        ``d / n`` of both matrices.
    n : int
        Points (rows).
    n_sim : int
        Independent pairs per ratio.
    seed : int
    tolerance : float
        Goal of the debiased rows: ``|mean| <= tolerance`` (the biased rows
        carry no goal; they show the bias the debiased estimator removes).

    Returns
    -------
    DataFrame
        Columns ratio, d, n, estimator ("biased" / "debiased"), mean, sd,
        mc_se (``sd / sqrt(n_sim)``), goal, pass (NA where there is no goal).

    Examples
    --------
    >>> table = cka_null_table((0.5,), n=64, n_sim=5)
    >>> table[["estimator", "pass"]].values.tolist()
    [['biased', <NA>], ['debiased', True]]
    """
    if n < DEBIASED_MIN_POINTS or n_sim < 2:
        raise ValueError(f"need n >= {DEBIASED_MIN_POINTS} and n_sim >= 2, got n={n}, n_sim={n_sim}")
    if any(r <= 0 for r in ratios):
        raise ValueError(f"ratios must be positive, got {list(ratios)}")
    rng = np.random.default_rng(seed)
    rows = []
    for ratio in ratios:
        d = max(1, int(round(ratio * n)))
        values = {"biased": [], "debiased": []}
        for _ in range(n_sim):
            x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
            for name in values:
                values[name].append(linear_cka(x, y, debiased=name == "debiased"))
        for name, v in values.items():
            v = np.asarray(v)
            mean, sd = float(v.mean()), float(v.std(ddof=1))
            debiased = name == "debiased"
            rows.append({"ratio": float(ratio), "d": d, "n": n, "estimator": name, "mean": mean, "sd": sd,
                         "mc_se": sd / np.sqrt(n_sim),
                         "goal": f"|mean| <= {tolerance:g}" if debiased else "none (shows the bias)",
                         "pass": bool(abs(mean) <= tolerance) if debiased else pd.NA})
    return pd.DataFrame(rows)


def anisotropy(x) -> float:
    """Mean cosine similarity over all pairs of distinct points (Ethayarajh 2019).

    With unit vectors ``u_i``: ``(||sum_i u_i||^2 - n) / (n (n - 1))``, exact
    and O(n d). Zero vectors are left out.

    Examples
    --------
    >>> round(anisotropy(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])), 4)
    0.3333
    """
    x = _as_points(x)
    norms = np.linalg.norm(x, axis=1)
    units = x[norms > 0] / norms[norms > 0, None]
    n = units.shape[0]
    if n < 2:
        raise ValueError("anisotropy needs at least 2 non-zero vectors")
    total = units.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def mean_norm(x) -> float:
    """Mean Euclidean norm of the rows of ``x``.

    Examples
    --------
    >>> mean_norm(np.array([[3.0, 4.0], [0.0, 1.0]]))
    3.0
    """
    x = _as_points(x, min_points=1)
    return float(np.linalg.norm(x, axis=1).mean())


# --------------------------------------------------------------------------- attention
def attention_entropy(attention) -> np.ndarray:
    """Shannon entropy (nats) of each attention distribution (the last axis).

    ``H = -sum_j a_j log a_j`` with ``0 log 0 = 0``, so causally masked keys
    (weight 0) do not count: uniform causal attention from query ``i`` over
    ``i + 1`` positions has entropy ``log(i + 1)``.

    Parameters
    ----------
    attention : array (..., n_queries, n_keys)
        Rows are probability distributions.

    Returns
    -------
    array (..., n_queries)

    Examples
    --------
    >>> attention_entropy(np.full((1, 4), 0.25)).round(4).tolist()
    [1.3863]
    """
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"attention must have at least 2 axes (queries x keys), got shape {a.shape}")
    if np.any(a < 0) or not np.allclose(a.sum(axis=-1), 1.0, atol=1e-3):
        raise ValueError("attention rows must be probability distributions (non-negative, summing to 1)")

    return entr(a).sum(axis=-1)


def mean_attention_entropy(attention, query_mask=None) -> np.ndarray:
    """Mean attention entropy per head.

    Parameters
    ----------
    attention : array (batch, heads, queries, keys)
    query_mask : bool array (batch, queries), optional
        Which query rows count (default: all).

    Returns
    -------
    array (heads,)

    Examples
    --------
    >>> causal = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]
    >>> mean_attention_entropy(causal[None, None]).round(4).tolist()  # (log 1 + log 2 + log 3) / 3
    [0.5973]
    """
    a = np.asarray(attention)
    if a.ndim != 4:
        raise ValueError(f"attention must be (batch, heads, queries, keys), got shape {a.shape}")
    h = attention_entropy(a)  # (batch, heads, queries)
    if query_mask is None:
        return h.mean(axis=(0, 2))
    mask = np.asarray(query_mask, dtype=bool)
    if mask.shape != (a.shape[0], a.shape[2]):
        raise ValueError(f"query_mask must have shape {(a.shape[0], a.shape[2])}, got {mask.shape}")
    if not mask.any():
        raise ValueError("query_mask selects no query row")
    return (h * mask[:, None, :]).sum(axis=(0, 2)) / mask.sum()


# --------------------------------------------------------------------------- induction
def repeated_random_tokens(n_sequences: int, length: int, vocabulary, seed: int = 0) -> np.ndarray:
    """Sequences of ``length`` random tokens followed by the same tokens again.

    Tokens within a repeat are distinct (drawn without replacement), so the only
    earlier occurrence of a token in the second repeat is its copy in the first.

    Parameters
    ----------
    n_sequences, length : int
    vocabulary : sequence of int
        Token ids to draw from (e.g. every id except special tokens).
    seed : int

    Returns
    -------
    int array (n_sequences, 2 * length)

    Examples
    --------
    >>> seq = repeated_random_tokens(2, 5, range(100))
    >>> seq.shape, bool((seq[:, :5] == seq[:, 5:]).all())
    ((2, 10), True)
    """
    vocabulary = np.unique(np.asarray(list(vocabulary), dtype=np.int64))
    if length < 2 or n_sequences < 1:
        raise ValueError(f"need length >= 2 and n_sequences >= 1, got length={length}, n_sequences={n_sequences}")
    if vocabulary.size < length:
        raise ValueError(f"vocabulary of {vocabulary.size} ids is smaller than the sequence length {length}")
    rng = np.random.default_rng(seed)
    first = np.stack([rng.choice(vocabulary, size=length, replace=False) for _ in range(n_sequences)])
    return np.concatenate([first, first], axis=1)


def prefix_matching_targets(tokens) -> np.ndarray:
    """For each position, the position right after the previous occurrence of its token.

    An induction head attends from token ``A`` (current) to the token that
    followed the last earlier ``A`` (Olsson et al. 2022). ``-1`` where the token
    has not occurred before.

    Parameters
    ----------
    tokens : int array (..., n)

    Returns
    -------
    int array (..., n)

    Examples
    --------
    >>> prefix_matching_targets([7, 8, 9, 7, 8, 9]).tolist()
    [-1, -1, -1, 1, 2, 3]
    """
    tokens = np.asarray(tokens)
    flat = tokens.reshape(-1, tokens.shape[-1])
    out = np.full(flat.shape, -1, dtype=np.int64)
    for row, seq in enumerate(flat):
        last_seen: dict = {}
        for position, token in enumerate(seq.tolist()):
            if token in last_seen:
                out[row, position] = last_seen[token] + 1
            last_seen[token] = position
    return out.reshape(tokens.shape)


def prefix_matching_score(attention, tokens) -> np.ndarray:
    """Induction (prefix-matching) score per head: mean attention to the induction target.

    The score of a head is the attention weight, averaged over every query
    position whose token occurred before, on the position right after that
    earlier occurrence (:func:`prefix_matching_targets`). A perfect induction
    head scores 1; uniform causal attention scores the mean of ``1 / (q + 1)``
    over those query positions ``q``.

    Parameters
    ----------
    attention : array (batch, heads, n, n)
    tokens : int array (batch, n)

    Returns
    -------
    array (heads,)

    Examples
    --------
    >>> tokens = np.array([[5, 6, 5, 6]])
    >>> uniform = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    >>> prefix_matching_score(uniform[None, None], tokens).round(4).tolist()  # (1/3 + 1/4) / 2
    [0.2917]
    """
    a = np.asarray(attention)
    tokens = np.asarray(tokens)
    if a.ndim != 4 or a.shape[2] != a.shape[3]:
        raise ValueError(f"attention must be (batch, heads, n, n), got shape {a.shape}")
    if tokens.shape != (a.shape[0], a.shape[2]):
        raise ValueError(f"tokens must have shape {(a.shape[0], a.shape[2])} (batch, n), got {tokens.shape}")
    targets = prefix_matching_targets(tokens)
    batch, query = np.nonzero(targets >= 0)
    if batch.size == 0:
        raise ValueError("no token repeats in `tokens`: the prefix-matching score is undefined")
    weights = a[batch, :, query, targets[batch, query]]  # (n_pairs, heads)
    return weights.mean(axis=0)


def repeat_losses(token_losses, length: int) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second repeat of a repeated sequence.

    Parameters
    ----------
    token_losses : array (batch, 2 * length - 1)
        Cross-entropy of predicting token ``t + 1`` from position ``t``.
    length : int
        Length of one repeat.

    Returns
    -------
    (first, second) : floats
        ``first`` averages the targets ``1 .. length - 1`` (token 0 has no
        prediction), ``second`` the targets ``length .. 2 length - 1``.
        The in-context loss gain is ``second - first`` (negative when the
        model uses the first repeat to predict the second).

    Examples
    --------
    >>> repeat_losses(np.array([[4.0, 4.0, 1.0, 1.0, 1.0]]), 3)
    (4.0, 1.0)
    """
    losses = np.asarray(token_losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[1] != 2 * length - 1:
        raise ValueError(f"token_losses must be (batch, {2 * length - 1}) for repeats of length {length}, "
                         f"got shape {losses.shape}")
    # column t predicts token t + 1: targets 1..length-1 are columns 0..length-2
    return float(losses[:, :length - 1].mean()), float(losses[:, length - 1:].mean())


#: Periods of the induction probe (tokens per repeated block). The story-world corpus has no fixed
#: period (spans recur at variable distances), and these differ from each other, so a head that copies
#: from a fixed distance back scores high at one period at most: only matching content scores at all.
INDUCTION_PROBE_PERIODS = (7, 12, 19, 31)
#: Repeats of the block in each probe sequence (the first shows it, the later ones can be predicted)
INDUCTION_PROBE_REPEATS = 3


def periodic_random_tokens(n_sequences: int, period: int, n_repeats: int, vocabulary, seed: int = 0) -> np.ndarray:
    """Sequences of a block of ``period`` distinct random tokens repeated ``n_repeats`` times.

    Examples
    --------
    >>> seq = periodic_random_tokens(2, 4, 3, range(100))
    >>> seq.shape, bool((seq[:, :4] == seq[:, 4:8]).all() and (seq[:, :4] == seq[:, 8:]).all())
    ((2, 12), True)
    """
    if n_repeats < 2:
        raise ValueError(f"n_repeats must be >= 2 (a block and its copy), got {n_repeats}")
    block = repeated_random_tokens(n_sequences, period, vocabulary, seed)[:, :period]
    return np.tile(block, (1, n_repeats))


def induction_probe_tokens(n_sequences: int, vocabulary, periods: Sequence[int] = INDUCTION_PROBE_PERIODS,
                           n_repeats: int = INDUCTION_PROBE_REPEATS, seed: int = 0,
                           training_periods: Sequence[int] = ()) -> dict[int, np.ndarray]:
    """Held-out probe sequences for induction, one batch per period.

    Fresh random tokens (drawn for the probe, so never seen in training as a
    sequence) repeated at several periods. A model that predicts the repeats by
    matching content (an induction head) does so at every period; one that
    copies from a fixed distance back, learnt from text repeating at that
    distance, at that period only. Periods that occur in training
    (``training_periods``) are refused: they could be solved positionally.

    Parameters
    ----------
    n_sequences : int
        Sequences per period.
    vocabulary : sequence of int
        Token ids to draw from (every id except special tokens).
    periods : sequence of int
        Block lengths, distinct, each >= 2.
    n_repeats : int
        Repeats of the block per sequence (>= 2).
    seed : int
    training_periods : sequence of int
        Fixed periods present in the training text, if any.

    Returns
    -------
    dict period -> int array (n_sequences, period * n_repeats)

    Examples
    --------
    >>> probe = induction_probe_tokens(2, range(200), periods=(5, 8))
    >>> {p: t.shape for p, t in probe.items()}
    {5: (2, 15), 8: (2, 24)}
    """
    periods = [int(p) for p in periods]
    if not periods or len(set(periods)) != len(periods) or min(periods) < 2:
        raise ValueError(f"periods must be distinct integers >= 2, got {periods}")
    if len(periods) < 2:
        raise ValueError("periods needs two periods at least: one period cannot tell content from position")
    shared = sorted(set(periods) & {int(p) for p in training_periods})
    if shared:
        raise ValueError(f"periods {shared} occur in the training text (training_periods): a positional copy "
                         "solves them; choose other periods")
    return {p: periodic_random_tokens(n_sequences, p, n_repeats, vocabulary,
                                      int(np.random.SeedSequence([seed, p]).generate_state(1)[0]))
            for p in periods}


def offset_attention_score(attention, offset: int) -> np.ndarray:
    """Mean attention, per head, from each query ``q >= offset`` to position ``q - offset``.

    A head that copies from a fixed distance back scores near 1 at its offset.

    Examples
    --------
    >>> a = np.eye(4)[None, None]                   # attends to itself
    >>> offset_attention_score(a, 0).tolist(), offset_attention_score(a, 1).tolist()
    ([1.0], [0.0])
    """
    a = np.asarray(attention)
    if a.ndim != 4 or a.shape[2] != a.shape[3]:
        raise ValueError(f"attention must be (batch, heads, n, n), got shape {a.shape}")
    n = a.shape[2]
    if not 0 <= offset < n:
        raise ValueError(f"offset must be in [0, {n}), got {offset}")
    queries = np.arange(offset, n)
    return a[:, :, queries, queries - offset].mean(axis=(0, 2))


def period_robust_induction_score(scores_by_period: dict) -> np.ndarray:
    """Induction score that a positional copy cannot earn: per head, the lowest prefix-matching score over periods.

    Parameters
    ----------
    scores_by_period : dict period -> array (..., heads)
        :func:`prefix_matching_score` on the probe sequences of each period
        (:func:`induction_probe_tokens`).

    Examples
    --------
    >>> period_robust_induction_score({7: np.array([0.9, 1.0]), 12: np.array([0.8, 0.0])}).tolist()
    [0.8, 0.0]
    """
    if len(scores_by_period) < 2:
        raise ValueError("scores_by_period needs two periods at least")
    return np.min(np.stack([np.asarray(v, dtype=float) for v in scores_by_period.values()]), axis=0)


def periodic_repeat_losses(token_losses, period: int) -> tuple[float, float]:
    """Mean next-token loss on the first block and on the later repeats of a periodic sequence.

    The in-context loss gain is ``later - first``; with two repeats this is
    :func:`repeat_losses`.

    Parameters
    ----------
    token_losses : array (batch, n - 1)
        Cross-entropy of predicting token ``t + 1`` from position ``t``; ``n`` a multiple of ``period``.
    period : int

    Examples
    --------
    >>> periodic_repeat_losses(np.array([[4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]), 3)
    (4.0, 1.0)
    """
    losses = np.asarray(token_losses, dtype=np.float64)
    if losses.ndim != 2 or (losses.shape[1] + 1) % period or (losses.shape[1] + 1) // period < 2:
        raise ValueError(f"token_losses must be (batch, k * {period} - 1) with k >= 2 repeats of period {period}, "
                         f"got shape {losses.shape}")
    return float(losses[:, :period - 1].mean()), float(losses[:, period - 1:].mean())


# --------------------------------------------------------------------------- probes
def _group_folds(groups, n_splits: int):
    groups = np.asarray(groups)
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise ValueError(f"probes need held-out groups (stories): got {n_groups} group")
    return list(GroupKFold(n_splits=min(n_splits, n_groups)).split(np.zeros(len(groups)), groups=groups))


def _shuffled(y, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(y)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0  # constant features carry nothing; leave them at 0
    return (train - mean) / scale, (test - mean) / scale


def _ridge_fold(x_train, y_train, x_test, alphas, blocks) -> np.ndarray:
    """Fit ridge on one training fold, alpha per block by efficient leave-one-out; predict the test fold.

    With ``X = U S V^T`` the hat matrix is ``H(a) = U diag(s^2 / (s^2 + a)) U^T``
    and the leave-one-out residual is ``(y - H y) / (1 - h_ii)`` (Golub et al.
    1979), so one decomposition serves every penalty and every target column.
    ``U, S, V`` come from the eigendecomposition of the smaller of ``X^T X``
    (d x d) and ``X X^T`` (n x n), much cheaper than an SVD of ``X``.
    """
    y_mean = y_train.mean(axis=0)
    yc = y_train - y_mean
    n, d = x_train.shape
    if n >= d:
        s2, v = np.linalg.eigh(x_train.T @ x_train)
        keep = s2 > RANK_TOLERANCE * max(s2.max(), 0.0)
        s2, v = s2[keep], v[:, keep]
        s = np.sqrt(s2)
        u = (x_train @ v) / s
        projected = x_test @ v  # (n_test, rank) = X_test V
    else:
        s2, u = np.linalg.eigh(x_train @ x_train.T)
        keep = s2 > RANK_TOLERANCE * max(s2.max(), 0.0)
        s2, u = s2[keep], u[:, keep]
        s = np.sqrt(s2)
        projected = (x_test @ x_train.T) @ u / s  # X_test V with V = X^T U / s
    uty = u.T @ yc
    uu = u * u
    errors, shrink = [], []
    for alpha in alphas:
        factor = s2 / (s2 + alpha)
        fitted = u @ (factor[:, None] * uty)
        # the intercept (centring) adds 1/n to every leverage
        leverage = uu @ factor + 1.0 / n
        loo = (yc - fitted) / (1.0 - leverage)[:, None]
        errors.append(np.mean(loo ** 2, axis=0))
        shrink.append(s / (s2 + alpha))
    errors = np.asarray(errors)  # (alphas, columns)
    prediction = np.empty((x_test.shape[0], y_train.shape[1]))
    for columns in blocks:
        best = int(np.argmin(errors[:, columns].sum(axis=1)))
        prediction[:, columns] = projected @ (shrink[best][:, None] * uty[:, columns]) + y_mean[columns]
    return prediction


def principal_components(x, n_components: int, seed: int = 0) -> np.ndarray:
    """Scores of ``x`` on its top ``n_components`` principal components (randomised SVD).

    Used to bound the cost of probes on wide models (``d`` in the thousands);
    returns the centred ``x`` unchanged when it has no more columns than that.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((50, 8))
    >>> principal_components(x, 3).shape, principal_components(x, 10).shape
    ((50, 3), (50, 8))
    """

    x = _as_points(x)
    centred = x - x.mean(axis=0)
    if centred.shape[1] <= n_components:
        return centred
    u, s, _ = randomized_svd(centred, n_components, random_state=seed)
    return u * s


def ridge_probes(x, targets: dict, groups, n_splits: int = PROBE_SPLITS,
                 alphas: Sequence[float] = PROBE_ALPHAS) -> dict[str, float]:
    """Cross-validated linear probes of several targets sharing one representation.

    In each fold (groups held out together, :class:`sklearn.model_selection.GroupKFold`)
    the features are standardised on the training part and a ridge model is fit
    for every target at once (one SVD per fold); the penalty is chosen per
    target by leave-one-out error on the training part. Classification targets
    are one-hot coded as +-1 (one-vs-rest least squares, as scikit-learn's
    ``RidgeClassifier``) and predicted by the largest score.

    Parameters
    ----------
    x : array (n, d)
    targets : dict name -> (kind, values)
        ``kind`` is ``"classification"`` (labels) or ``"regression"`` (floats).
    groups : array (n,)
    n_splits : int
    alphas : sequence of float

    Returns
    -------
    dict name -> score
        Accuracy (classification) or R^2 (regression) of the pooled
        out-of-fold predictions; ``R^2 = 1 - SS_res / SS_tot``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((300, 4))
    >>> scores = ridge_probes(x, {"sign": ("classification", x[:, 0] > 0),
    ...                           "sum": ("regression", x.sum(axis=1))}, np.arange(300) // 30)
    >>> scores["sign"] > 0.95, scores["sum"] > 0.99
    (True, True)
    """
    x = _as_points(x)
    groups = np.asarray(groups)
    if groups.shape[0] != x.shape[0]:
        raise ValueError(f"groups has {groups.shape[0]} values for {x.shape[0]} rows of x")
    columns, blocks, meta = [], [], {}
    for name, (kind, values) in targets.items():
        values = np.asarray(values)
        if values.shape != (x.shape[0],):
            raise ValueError(f"probe target {name!r} has shape {values.shape}, expected ({x.shape[0]},)")
        start = sum(c.shape[1] for c in columns)
        if kind == "classification":
            classes, coded = np.unique(values, return_inverse=True)
            columns.append(np.where(np.arange(classes.size)[None, :] == coded[:, None], 1.0, -1.0))
            meta[name] = (kind, coded)
        elif kind == "regression":
            values = values.astype(np.float64)
            if np.all(values == values[0]):
                raise ValueError(f"probe target {name!r} is constant: R^2 undefined")
            columns.append(values[:, None])
            meta[name] = (kind, values)
        else:
            raise ValueError(f"probe target {name!r}: kind must be 'classification' or 'regression', got {kind!r}")
        blocks.append(np.arange(start, start + columns[-1].shape[1]))
    y = np.concatenate(columns, axis=1)
    predicted = np.empty_like(y)
    for train, test in _group_folds(groups, n_splits):
        x_train, x_test = _standardise(x[train], x[test])
        predicted[test] = _ridge_fold(x_train, y[train], x_test, alphas, blocks)
    scores = {}
    for (name, (kind, values)), columns_of in zip(meta.items(), blocks):
        guess = predicted[:, columns_of]
        if kind == "classification":
            scores[name] = float(np.mean(np.argmax(guess, axis=1) == values))
        else:
            residual = np.sum((values - guess[:, 0]) ** 2)
            scores[name] = float(1.0 - residual / np.sum((values - values.mean()) ** 2))
    return scores


def probe_accuracy(x, labels, groups, n_splits: int = PROBE_SPLITS, alphas: Sequence[float] = PROBE_ALPHAS,
                   shuffle: bool = False, seed: int = 0) -> float:
    """Cross-validated accuracy of a linear (ridge) classifier, groups held out (see :func:`ridge_probes`).

    Parameters
    ----------
    x : array (n, d)
    labels : array (n,)
    groups : array (n,)
        E.g. story ids: no group is in both a training and a test fold.
    n_splits : int
        Folds (at most the number of groups).
    alphas : sequence of float
    shuffle : bool
        Control: permute the labels first (seeded), which breaks any relation
        to ``x``; the accuracy should then be at chance.
    seed : int

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 600)
    >>> x = np.eye(3)[y] + 0.1 * rng.standard_normal((600, 3))
    >>> probe_accuracy(x, y, np.arange(600) // 100) > 0.95
    True
    """
    labels = np.asarray(labels)
    if shuffle:
        labels = _shuffled(labels, seed)
    return ridge_probes(x, {"y": ("classification", labels)}, groups, n_splits, alphas)["y"]


def probe_r2(x, target, groups, n_splits: int = PROBE_SPLITS, alphas: Sequence[float] = PROBE_ALPHAS,
             shuffle: bool = False, seed: int = 0) -> float:
    """Cross-validated R^2 of a linear (ridge) regression probe, groups held out (see :func:`ridge_probes`).

    Can be negative for a useless probe. ``shuffle`` as in :func:`probe_accuracy`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((400, 5))
    >>> y = x @ np.arange(5.0) + 0.1 * rng.standard_normal(400)
    >>> probe_r2(x, y, np.arange(400) // 50) > 0.99
    True
    """
    target = np.asarray(target, dtype=np.float64)
    if shuffle:
        target = _shuffled(target, seed)
    return ridge_probes(x, {"y": ("regression", target)}, groups, n_splits, alphas)["y"]


def control_task_labels(values, types, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang (2019)'s control task: one random label per word *type*.

    Each distinct type gets a value drawn from the empirical distribution of
    ``values`` over all words (so the class balance, or the spread of a
    regression target, is kept); every occurrence of the type carries it. A
    probe that reaches the real labels' accuracy on these labels does so by
    memorising word types, not by reading the property from the representation.

    Parameters
    ----------
    values : array (n,)
        The real labels (classes or floats).
    types : array (n,)
        Word type of each word (e.g. its lower-cased form).
    seed : int

    Returns
    -------
    array (n,)

    Examples
    --------
    >>> control = control_task_labels(["N", "V", "N", "D"], ["dog", "runs", "dog", "the"])
    >>> bool(control[0] == control[2]), set(control) <= {"N", "V", "D"}
    (True, True)
    """
    values = np.asarray(values)
    types = np.asarray(types)
    if values.shape != types.shape or values.ndim != 1:
        raise ValueError(f"values and types must be 1-D of one length, got shapes {values.shape} and {types.shape}")
    unique_types, type_index = np.unique(types, return_inverse=True)
    rng = np.random.default_rng(seed)
    per_type = values[rng.integers(0, values.size, size=unique_types.size)]
    return per_type[type_index]


def probe_selectivity(x, values, types, groups, kind: str = "classification", n_splits: int = PROBE_SPLITS,
                      alphas: Sequence[float] = PROBE_ALPHAS, seed: int = 0) -> dict[str, float]:
    """Probe score, control-task score and selectivity = score - control (Hewitt & Liang 2019).

    Both probes are fit together by :func:`ridge_probes` (same folds, same
    features); the control labels come from :func:`control_task_labels`.

    Returns
    -------
    dict with ``score``, ``control`` and ``selectivity``
        Accuracy (classification) or R^2 (regression).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> types = rng.integers(0, 40, 800)
    >>> labels = types % 2  # the label is a function of the word type
    >>> x = np.c_[labels + 0.3 * rng.standard_normal(800), rng.standard_normal(800)]
    >>> result = probe_selectivity(x, labels, types, np.arange(800) // 80)
    >>> result["score"] > 0.9, result["selectivity"] > 0.3
    (True, True)
    """
    control = control_task_labels(values, types, seed)
    scores = ridge_probes(x, {"score": (kind, values), "control": (kind, control)}, groups, n_splits, alphas)
    return {**scores, "selectivity": scores["score"] - scores["control"]}


#: Synthetic vocabulary of the selectivity check: types, Zipf exponent, classes, stories x words.
SELECTIVITY_TYPES, SELECTIVITY_ZIPF, SELECTIVITY_CLASSES = 300, 1.1, 6
SELECTIVITY_STORIES, SELECTIVITY_WORDS = 12, 150
#: Goals of the selectivity check: the random embedding reaches this accuracy with |selectivity| at most
#: the tolerance; the label-encoding embedding reaches at least the minimum selectivity.
SELECTIVITY_MIN_ACCURACY, SELECTIVITY_TOLERANCE, SELECTIVITY_MIN = 0.6, 0.05, 0.3
#: Noise (standard deviation) added to the one-hot label code of the label-encoding embedding.
LABEL_CODE_NOISE = 0.25


def probe_selectivity_random_embedding(d: int = 128, n_sim: int = 3, seed: int = 0,
                                       n_types: int = SELECTIVITY_TYPES, n_stories: int = SELECTIVITY_STORIES,
                                       words_per_story: int = SELECTIVITY_WORDS) -> pd.DataFrame:
    """Probe accuracy and selectivity of a random embedding per word type vs an embedding of the label.

    Words are drawn from ``n_types`` types with Zipfian frequencies; each type
    has one fixed class (as part of speech is fixed by word form in the story
    world), so the labels can be learnt by memorising types. Two
    representations of ``d`` dimensions are probed, ``n_sim`` times each:

    * ``random_per_type``: an independent Gaussian vector per type (knows the
      type, nothing about its class): high accuracy, selectivity about 0.
    * ``encodes_label``: the one-hot class plus Gaussian noise per word (knows
      the class, not the type): high accuracy and high selectivity.

    Returns
    -------
    DataFrame
        Columns representation, d, accuracy, control, selectivity (means over
        ``n_sim``), selectivity_sd, goal, pass.

    Examples
    --------
    >>> table = probe_selectivity_random_embedding(d=64, n_sim=1, n_types=100, n_stories=6, words_per_story=80)
    >>> table["pass"].tolist()
    [True, True]
    """
    if d < SELECTIVITY_CLASSES or n_sim < 1:
        raise ValueError(f"need d >= {SELECTIVITY_CLASSES} and n_sim >= 1, got d={d}, n_sim={n_sim}")
    rng = np.random.default_rng(seed)
    n = n_stories * words_per_story
    groups = np.repeat(np.arange(n_stories), words_per_story)
    zipf = 1.0 / np.arange(1, n_types + 1) ** SELECTIVITY_ZIPF
    results = {"random_per_type": [], "encodes_label": []}
    for _ in range(n_sim):
        type_class = rng.integers(0, SELECTIVITY_CLASSES, n_types)
        types = rng.choice(n_types, size=n, p=zipf / zipf.sum())
        labels = type_class[types]
        random_per_type = rng.standard_normal((n_types, d))[types]
        code = np.zeros((n, d))
        code[np.arange(n), labels] = 1.0
        encodes_label = code + LABEL_CODE_NOISE * rng.standard_normal((n, d))
        for name, x in (("random_per_type", random_per_type), ("encodes_label", encodes_label)):
            results[name].append(probe_selectivity(x, labels, types, groups, seed=int(rng.integers(2**31))))
    rows = []
    for name, runs in results.items():
        accuracy = float(np.mean([r["score"] for r in runs]))
        selectivity = np.array([r["selectivity"] for r in runs])
        if name == "random_per_type":
            goal = f"accuracy >= {SELECTIVITY_MIN_ACCURACY:g} and |selectivity| <= {SELECTIVITY_TOLERANCE:g}"
            ok = accuracy >= SELECTIVITY_MIN_ACCURACY and abs(selectivity.mean()) <= SELECTIVITY_TOLERANCE
        else:
            goal = f"selectivity >= {SELECTIVITY_MIN:g}"
            ok = selectivity.mean() >= SELECTIVITY_MIN
        rows.append({"representation": name, "d": d, "accuracy": accuracy,
                     "control": float(np.mean([r["control"] for r in runs])),
                     "selectivity": float(selectivity.mean()),
                     "selectivity_sd": float(selectivity.std(ddof=1)) if n_sim > 1 else np.nan,
                     "goal": goal, "pass": bool(ok)})
    return pd.DataFrame(rows)


def chance_accuracy(labels) -> float:
    """Accuracy of always predicting the most frequent label (the probe's chance level).

    Examples
    --------
    >>> chance_accuracy(["a", "a", "b"])
    0.6666666666666666
    """
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())
