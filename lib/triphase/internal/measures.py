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
  :func:`linear_cka` (Kornblith et al. 2019).
* Attention: :func:`attention_entropy` per query row and
  :func:`mean_attention_entropy` per head.
* In-context learning (Olsson et al. 2022): :func:`repeated_random_tokens`,
  :func:`prefix_matching_targets`, :func:`prefix_matching_score` and
  :func:`repeat_losses` (the in-context loss gain).
* Linear probes: :func:`ridge_probes` (many targets, one SVD per fold),
  :func:`probe_accuracy` and :func:`probe_r2` (cross-validated with groups
  held out; ``shuffle=True`` is the shuffled-label control).

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
def linear_cka(x, y) -> float:
    """Linear centred kernel alignment between two representations of the same n points.

    ``CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with
    column-centred ``X_c, Y_c`` (Kornblith et al. 2019). Computed in the
    feature space or, when there are fewer points than features, with the
    ``n x n`` Gram matrices (``||Y^T X||_F^2 = tr(K_X K_Y)``), whichever is smaller.

    Parameters
    ----------
    x : array (n, d1)
    y : array (n, d2)

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 5))
    >>> q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    >>> round(linear_cka(x, 3 * x @ q), 6)
    1.0
    """
    x = _as_points(x, "x")
    y = _as_points(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same points: {x.shape[0]} vs {y.shape[0]} rows")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = x.shape[0]
    if n < max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        cross = np.sum(kx * ky)
        norm_x, norm_y = np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        cross = np.linalg.norm(y.T @ x) ** 2
        norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        raise ValueError("CKA undefined: one representation has zero variance")
    return float(cross / (norm_x * norm_y))


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


def chance_accuracy(labels) -> float:
    """Accuracy of always predicting the most frequent label (the probe's chance level).

    Examples
    --------
    >>> chance_accuracy(["a", "a", "b"])
    0.6666666666666666
    """
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())
