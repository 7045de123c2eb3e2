"""Voxelwise encoding models (himalaya ridge) and brain scores.

An encoding model predicts every voxel's response from the TR-level design
matrix (delayed, z-scored features, see :mod:`triphase.brain.timeseries`) with ridge
regression. For each voxel the ridge penalty ``alpha`` is chosen by
cross-validation that leaves whole stories out (rows of one story are
autocorrelated, so random row splits would leak), then the model is refit on
all training stories with each voxel's best alpha and predicts the held-out
test story. All voxels are solved at once on a himalaya backend (numpy, or
torch on CPU/GPU): ridge through one SVD of X per split when there are no more
features than samples (:class:`LeaveStoriesOutRidgeCV`, the same model as
himalaya's ``RidgeCV`` with fewer FLOPs; ``solver="himalaya"`` runs
``himalaya.ridge.RidgeCV`` itself), himalaya's ``KernelRidgeCV`` (eigen
decomposition of the linear kernel ``X X^T``) otherwise.

Scores (:func:`score_voxels`, :func:`brain_scores`)
---------------------------------------------------
* voxel score: Pearson ``r`` between the measured and predicted test response
  (``r``, not ``r^2``; NaN for a voxel constant in either series);
* ``score_mean``: mean ``r`` over all valid voxels of the brain (or region);
* ``score_top10``: mean test ``r`` over the 10% of valid voxels with the highest
  cross-validated ``r`` on the *training* stories (no peeking at the test story);
* ``score_ceiling_normalised = mean_v r_v / mean_v CC_max_v`` over the valid
  voxels with a finite ceiling: a ratio of means, not a mean of ratios (per
  voxel ratios explode where the ceiling is near 0, i.e. most of the brain),
  **not capped** (values above 1 mean the ceiling estimate is noisy).
  ``CC_max`` is the Schoppe et al. (2016) ceiling from the repeats, see
  :func:`triphase.brain.statistics.noise_ceiling`. The raw score is always kept
  beside the normalised one. Over *all* voxels this ratio is deflated (clipping
  signal power at 0 biases CC_max upward on noise voxels, which then dominate
  the denominator), so the brain sweep replaces the column by the ratio over
  voxels chosen on independent repeats
  (:func:`triphase.brain.statistics.split_half_ceiling`).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = {f"s{i}": rng.standard_normal((100, 5)) for i in range(4)}
>>> W = rng.standard_normal((5, 3))
>>> Y = {k: x @ W + rng.standard_normal((100, 3)) for k, x in X.items()}
>>> model = fit_encoding_model(X, Y, train_stories=["s0", "s1", "s2"], n_splits=3)
>>> model.kind
'ridge'
>>> r = score_voxels(Y["s3"], model.predict(X["s3"]))
>>> bool((r > 0.8).all())
True
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from himalaya.backend import get_backend, set_backend
from himalaya.kernel_ridge import KernelRidgeCV
from himalaya.ridge import RidgeCV
from himalaya.scoring import correlation_score, r2_score

from triphase.brain.statistics import check_pair
from triphase.brain.timeseries import check_rows

#: Ridge penalties tried per voxel: 21 values log-spaced from 1e-2 to 1e8. The
#: grid is wide because the best alpha scales with the number of samples and
#: with the voxel's SNR (noise-only voxels pick the largest).
DEFAULT_ALPHAS = np.logspace(-2, 8, 21)
#: Number of leave-stories-out cross-validation folds.
DEFAULT_N_SPLITS = 5
#: Share of voxels in the "top" score, chosen on training data.
DEFAULT_TOP_FRACTION = 0.1
#: Region label of the whole-brain rows in result tables.
ALL_REGIONS = "all"
#: Elements of one block of validation predictions (alphas x TRs x voxels) in
#: :class:`LeaveStoriesOutRidgeCV` (~32 MB in float32; measured faster than
#: 128 MB blocks on numpy and torch, and than one alpha at a time on torch).
PREDICTION_BLOCK_ELEMENTS = 2**23
#: A column whose max - min is below this share of its magnitude is constant
#: (float32 rounding of equal values stays far below it).
CONSTANT_RELATIVE_TOLERANCE = 1e-7
KNOWN_BACKENDS = ("numpy", "torch", "torch_cuda", "cupy", "torch_mps")


class BadVoxelWarning(UserWarning):
    """Some voxels were NaN or constant and were excluded."""


@contextlib.contextmanager
def using_backend(name: str) -> Iterator[object]:
    """Set a himalaya backend for the duration of a block, then restore the previous one.

    himalaya keeps its backend in a global; restoring it keeps callers that
    rely on the default (numpy) unaffected.
    """

    if name not in KNOWN_BACKENDS:
        raise ValueError(f"backend={name!r} is not a himalaya backend; expected one of {KNOWN_BACKENDS}")
    previous = get_backend()
    backend = set_backend(name)
    try:
        yield backend
    finally:
        set_backend(previous)


# --------------------------------------------------------------------------- splits


def leave_stories_out_splits(
    story_rows: dict[str, int] | Sequence[tuple[str, int]],
    n_splits: int = DEFAULT_N_SPLITS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation splits that hold out whole stories.

    Stories (in the given order, which is the row order of the concatenated
    training data) are dealt into ``min(n_splits, n_stories)`` contiguous groups;
    split ``k`` validates on the rows of group ``k`` and trains on the rest.

    Parameters
    ----------
    story_rows : dict story -> number of rows, or list of (story, rows)
    n_splits : int

    Returns
    -------
    list of (train_idx, val_idx) integer arrays

    Examples
    --------
    >>> [v.tolist() for _, v in leave_stories_out_splits({"a": 2, "b": 1, "c": 2}, 3)]
    [[0, 1], [2], [3, 4]]
    """
    items = list(story_rows.items()) if isinstance(story_rows, dict) else list(story_rows)
    if len(items) < 2:
        raise ValueError(f"leave-stories-out cross-validation needs at least 2 training stories, got {len(items)}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    offsets = np.cumsum([0] + [int(n) for _, n in items])
    n_total = offsets[-1]
    groups = np.array_split(np.arange(len(items)), min(n_splits, len(items)))
    splits = []
    for group in groups:
        val = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in group])
        train = np.setdiff1d(np.arange(n_total), val, assume_unique=True)
        splits.append((train, val))
    return splits


# --------------------------------------------------------------------------- model


@dataclass
class EncodingModel:
    """A fitted voxelwise encoding model (all voxels of one feature space).

    Attributes
    ----------
    estimator : himalaya RidgeCV or KernelRidgeCV
        Fitted on the valid voxels only.
    kind : str
        ``"ridge"`` (RidgeCV, n_features <= n_samples) or ``"kernel_ridge"``.
    backend : str
        himalaya backend used for fit and predict.
    best_alphas_ : array (n_voxels,)
        Selected alpha per voxel (NaN for excluded voxels).
    cv_scores_ : array (n_voxels,)
        Cross-validated score (Pearson r by default) of the best alpha,
        averaged over the leave-stories-out splits; NaN for excluded voxels.
    valid_voxels_ : bool array (n_voxels,)
    excluded_nan_, excluded_constant_ : int
        Voxels left out because their training responses contain NaN/inf, or
        have zero variance over the training rows.
    train_stories, splits, alphas, n_features_in_, n_samples_
    """

    estimator: object
    kind: str
    backend: str
    best_alphas_: np.ndarray
    cv_scores_: np.ndarray
    valid_voxels_: np.ndarray
    excluded_nan_: int
    excluded_constant_: int
    train_stories: list[str]
    splits: list[tuple[np.ndarray, np.ndarray]]
    alphas: np.ndarray
    n_features_in_: int
    n_samples_: int
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        return int(self.valid_voxels_.size)

    @property
    def n_excluded_(self) -> int:
        return int(self.excluded_nan_ + self.excluded_constant_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict responses, array (n_rows, n_voxels); NaN columns for excluded voxels."""
        X = np.asarray(X, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}, expected (n_rows, {self.n_features_in_}) like the training design"
            )
        with using_backend(self.backend) as backend:
            pred = backend.to_numpy(self.estimator.predict(X))
        out = np.full((X.shape[0], self.n_voxels), np.nan, dtype=pred.dtype)
        out[:, self.valid_voxels_] = pred.reshape(X.shape[0], -1)
        return out


def _training_matrices(X_by_story, Y_by_story, train_stories, dtype):
    missing = [s for s in train_stories if s not in X_by_story or s not in Y_by_story]
    if missing:
        raise KeyError(f"training stories missing from X_by_story or Y_by_story: {missing}")
    widths_x, widths_y = set(), set()
    for story in train_stories:
        x, y = np.asarray(X_by_story[story]), np.asarray(Y_by_story[story])
        if x.ndim != 2 or y.ndim != 2:
            raise ValueError(f"story {story!r}: X and Y must be 2-D, got {x.shape} and {y.shape}")
        check_rows(story, x.shape[0], y.shape[0])
        widths_x.add(x.shape[1])
        widths_y.add(y.shape[1])
    if len(widths_x) != 1 or len(widths_y) != 1:
        raise ValueError(f"stories disagree on feature counts {sorted(widths_x)} or voxel counts {sorted(widths_y)}")
    X = np.concatenate([np.asarray(X_by_story[s], dtype=dtype) for s in train_stories])
    Y = np.concatenate([np.asarray(Y_by_story[s], dtype=dtype) for s in train_stories])
    rows = [(s, np.asarray(X_by_story[s]).shape[0]) for s in train_stories]
    return X, Y, rows


def _is_constant(Y: np.ndarray) -> np.ndarray:
    """Columns whose spread is zero up to float rounding (relative 1e-7 of their magnitude)."""
    spread = Y.max(axis=0) - Y.min(axis=0)
    magnitude = np.abs(Y).max(axis=0)
    return spread <= CONSTANT_RELATIVE_TOLERANCE * magnitude


def find_bad_voxels(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of voxels (columns) with any NaN/inf value, and of finite constant voxels.

    Examples
    --------
    >>> find_bad_voxels(np.array([[1.0, np.nan, 3.0], [2.0, 1.0, 3.0]]))
    (array([False,  True, False]), array([False, False,  True]))
    """
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[0] == 0:
        raise ValueError(f"responses must be 2-D (TRs x voxels) with at least one row, got shape {Y.shape}")
    non_finite = ~np.isfinite(Y).all(axis=0)
    constant = ~non_finite & _is_constant(np.where(np.isfinite(Y), Y, 0.0))
    return non_finite, constant


def _sum_of_squares(backend, predictions):
    """``(predictions ** 2).sum(1)`` for a 3-D block, by the fastest route of the backend."""
    if backend.name == "numpy":
        # einsum reduces without the squared temporary: several times faster than (p * p).sum(1) in numpy
        return np.einsum("atv,atv->av", predictions, predictions)
    return (predictions * predictions).sum(1)  # torch's einsum is the slow route here


class LeaveStoriesOutRidgeCV:
    """Ridge with per-target alpha chosen by given CV splits, solved through one eigendecomposition per split.

    Numerically the same model as himalaya's ``RidgeCV(solver="svd")`` with
    ``local_alpha=True`` (same splits, score, tie-breaking towards larger
    alphas, refit on all rows; the tests check the two agree), written on
    himalaya's backend so it runs on numpy, torch, cupy. With
    ``X^T X = V diag(lambda) V^T`` (decomposed in float64), validation
    predictions are formed as ``(X_val V) diag(1 / (lambda + alpha)) (V^T X^T Y_train)``
    (inner dimension ``n_features`` instead of ``n_train``), and the refit
    builds each voxel's weights from the same decomposition,
    ``W = V diag(1 / (lambda + alpha_v)) V^T X^T Y``, instead of one full
    product per distinct alpha.

    Attributes after :meth:`fit`: ``coef_`` (n_features, n_targets),
    ``intercept_`` (n_targets,), ``best_alphas_`` and ``cv_scores_`` (n_targets,).
    """

    def __init__(self, alphas, cv, score="correlation", fit_intercept=True, n_targets_batch=None):
        if score not in ("correlation", "r2"):
            raise ValueError(f"score={score!r}; expected 'correlation' or 'r2'")
        self.alphas = alphas
        self.cv = cv
        self.score = score
        self.fit_intercept = fit_intercept
        self.n_targets_batch = n_targets_batch

    def fit(self, X, Y):
        backend = get_backend()
        X = backend.asarray(X)
        Y = backend.asarray(Y)
        n_samples, n_targets = Y.shape
        alphas = backend.asarray(np.asarray(self.alphas, dtype=np.float64), dtype=X.dtype)
        batch = self.n_targets_batch or n_targets
        scores = backend.zeros_like(X, shape=(len(self.cv), len(self.alphas), n_targets))
        for split, (train, val) in enumerate(self.cv):
            train = backend.asarray(np.asarray(train))
            val = backend.asarray(np.asarray(val))
            X_train, X_val = X[train], X[val]
            if self.fit_intercept:
                x_mean = X_train.mean(0)
                X_train, X_val = X_train - x_mean, X_val - x_mean
            eigenvalues, V = self._eigh_gram(X_train)
            projected = backend.matmul(X_val, V)  # (n_val, k)
            train_projected = backend.matmul(X_train, V)  # (n_train, k), = U diag(s)
            shrink = 1.0 / (eigenvalues[None, :] + alphas[:, None])  # (n_alphas, k)
            n_val = X_val.shape[0]
            # Alphas per product so that one block of predictions stays under the element budget.
            alpha_step = max(1, PREDICTION_BLOCK_ELEMENTS // max(1, n_val * min(batch, n_targets)))
            for t0 in range(0, n_targets, batch):
                cols = slice(t0, t0 + batch)
                Y_train, Y_val = Y[train][:, cols], Y[val][:, cols]
                if self.fit_intercept:
                    y_mean = Y_train.mean(0)
                    Y_train, Y_val = Y_train - y_mean, Y_val - y_mean
                VtXtY = backend.matmul(train_projected.T, Y_train)  # (k, batch)
                # Validation statistics that need no predictions: with c = shrink * VtXtY,
                # sum_t y_t pred_t = sum_k shrink_k (VtXtY * P^T y)_k and sum_t pred_t = sum_k shrink_k (VtXtY * P^T 1)_k.
                cross = backend.matmul(shrink, VtXtY * backend.matmul(projected.T, Y_val))  # (n_alphas, batch)
                pred_sum = backend.matmul(shrink, VtXtY * projected.sum(0)[:, None])
                y_sum = Y_val.sum(0)
                y_sq = (Y_val * Y_val).sum(0)
                pred_sq = backend.zeros_like(cross)
                for a0 in range(0, len(self.alphas), alpha_step):
                    block = shrink[a0:a0 + alpha_step]
                    # One 2-D GEMM with alphas stacked along rows (numpy's broadcast batched
                    # matmul does not reach BLAS speed).
                    scaled = (projected[None] * block[:, None, :]).reshape(len(block) * n_val, -1)
                    predictions = backend.matmul(scaled, VtXtY).reshape(len(block), n_val, -1)
                    pred_sq[a0:a0 + alpha_step] = _sum_of_squares(backend, predictions)
                    del predictions
                scores[split, :, cols] = self._score(cross, pred_sum, pred_sq, y_sum, y_sq, n_val)
        mean_scores = backend.to_numpy(scores).astype(np.float64).mean(0)
        mean_scores = np.where(np.isnan(mean_scores), -np.inf, mean_scores)
        # As himalaya: a tiny slope in log(alpha) breaks ties towards the larger alpha.
        tie_break = np.log(np.asarray(self.alphas, dtype=np.float64))[:, None] * 1e-10
        best_index = np.argmax(mean_scores + tie_break, axis=0)
        self.cv_scores_ = mean_scores[best_index, np.arange(n_targets)]
        self.best_alphas_ = np.asarray(self.alphas, dtype=np.float64)[best_index]

        if self.fit_intercept:
            x_mean, y_mean = X.mean(0), Y.mean(0)
            Xc, Yc = X - x_mean, Y - y_mean
        else:
            Xc, Yc = X, Y
        eigenvalues, V = self._eigh_gram(Xc)
        train_projected = backend.matmul(Xc, V)
        best = backend.asarray(self.best_alphas_, dtype=X.dtype)
        coef = backend.zeros_like(X, shape=(X.shape[1], n_targets))
        for t0 in range(0, n_targets, batch):
            cols = slice(t0, t0 + batch)
            VtXtY = backend.matmul(train_projected.T, Yc[:, cols])
            shrink = 1.0 / (eigenvalues[:, None] + best[None, cols])
            coef[:, cols] = backend.matmul(V, VtXtY * shrink)
        self.coef_ = coef
        self.intercept_ = (y_mean - backend.matmul(x_mean, coef)) if self.fit_intercept else None
        return self

    @staticmethod
    def _eigh_gram(X):
        """Eigenvalues (clipped at 0) and eigenvectors of ``X^T X``, decomposed in float64.

        The ridge solution is ``V diag(1 / (lambda + alpha)) V^T X^T Y``; working
        from the small (n_features x n_features) Gram matrix is several times
        cheaper than an SVD of the tall ``X``, and float64 keeps the small
        eigenvalues accurate when ``X`` is float32.
        """

        backend = get_backend()
        X64 = backend.asarray(X, dtype="float64")
        gram = backend.matmul(X64.T, X64)
        # numpy's LAPACK driver (syevd) is about twice as fast as scipy's default (syevr) here.
        eigenvalues, V = np.linalg.eigh(gram) if backend.name == "numpy" else backend.eigh(gram)
        eigenvalues = backend.clip(eigenvalues, 0, None)
        return backend.asarray(eigenvalues, dtype=X.dtype), backend.asarray(V, dtype=X.dtype)

    def _score(self, cross, pred_sum, pred_sq, y_sum, y_sq, n):
        """Validation score per (alpha, target) from sums, as himalaya's correlation_score / r2_score."""

        backend = get_backend()
        y_var = y_sq - y_sum**2 / n  # n * variance of the validation responses
        # Masks by arithmetic (backends share no `where`): adding (x <= 0) makes the divisor safe,
        # multiplying by (x > 0) gives 0 where it was not, as himalaya's scores do for constant series.
        if self.score == "r2":
            residual = y_sq[None] - 2 * cross + pred_sq
            valid = y_var[None] > 0
            return (1 - residual / (y_var[None] + ~valid)) * valid
        pred_var = pred_sq - pred_sum**2 / n
        covariance = cross - y_sum[None] * pred_sum / n
        denominator = backend.sqrt(backend.clip(y_var[None] * pred_var, 0, None))
        valid = denominator > 0
        return covariance / (denominator + ~valid) * valid

    def predict(self, X):
        backend = get_backend()
        prediction = backend.matmul(backend.asarray(X, dtype=self.coef_.dtype), self.coef_)
        if self.intercept_ is not None:
            prediction = prediction + self.intercept_
        return prediction


def fit_encoding_model(
    X_by_story: dict[str, np.ndarray],
    Y_by_story: dict[str, np.ndarray],
    train_stories: Sequence[str],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_splits: int = DEFAULT_N_SPLITS,
    backend: str = "numpy",
    kind: str = "auto",
    score: str = "correlation",
    fit_intercept: bool = True,
    dtype: str = "float32",
    n_targets_batch: int | None = None,
    solver: str = "svd",
) -> EncodingModel:
    """Fit a voxelwise ridge encoding model with leave-stories-out CV.

    Parameters
    ----------
    X_by_story : dict story -> array (n_trs, n_features)
        Final design per story (delayed, z-scored; see :func:`triphase.brain.timeseries.stack_design`).
    Y_by_story : dict story -> array (n_trs, n_voxels)
        Responses; rows must match ``X_by_story`` story by story.
    train_stories : sequence of str
        Stories used for CV and refit, in this row order.
    alphas : array
        Ridge penalties tried (default :data:`DEFAULT_ALPHAS`).
    n_splits : int
        Number of leave-stories-out folds (at most the number of stories).
    backend : {"numpy", "torch", ...}
        himalaya backend (``"torch"`` is torch on CPU).
    kind : {"auto", "ridge", "kernel_ridge"}
        ``auto``: ``ridge`` when n_features <= n_samples else ``kernel_ridge``.
    score : {"correlation", "r2"}
        CV criterion for alpha per voxel (Huth lab convention: correlation).
    fit_intercept : bool
        Fit an intercept (harmless for z-scored data, needed otherwise).
    dtype : str
        Floating type of the computation.
    n_targets_batch : int or None
        Voxels per batch inside himalaya (memory bound); None = all at once.
    solver : {"svd", "himalaya"}
        For ``kind="ridge"``: ``"svd"`` uses :class:`LeaveStoriesOutRidgeCV`
        (the same model as himalaya's ``RidgeCV``, solved with fewer FLOPs on
        the himalaya backend); ``"himalaya"`` uses ``himalaya.ridge.RidgeCV``
        itself. ``kind="kernel_ridge"`` always uses ``himalaya.kernel_ridge.KernelRidgeCV``.

    Returns
    -------
    EncodingModel

    Notes
    -----
    Voxels whose training responses contain NaN/inf or have zero variance are
    excluded before the fit (reported with a :class:`BadVoxelWarning`); their
    predictions, alphas and CV scores are NaN and their number is kept on the
    model (``excluded_nan_``, ``excluded_constant_``).
    """

    train_stories = list(train_stories)
    score_funcs = {"correlation": correlation_score, "r2": r2_score}
    if score not in score_funcs:
        raise ValueError(f"score={score!r}; expected one of {sorted(score_funcs)}")
    alphas = np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0):
        raise ValueError("alphas must be a non-empty 1-D array of positive penalties")
    X, Y, rows = _training_matrices(X_by_story, Y_by_story, train_stories, dtype)
    if not np.isfinite(X).all():
        raise ValueError("the training design contains NaN or inf; check the features of the training stories")
    n_samples, n_features = X.shape
    n_voxels = Y.shape[1]

    non_finite, constant = find_bad_voxels(Y)
    valid = ~(non_finite | constant)
    if not valid.any():
        raise ValueError(f"all {n_voxels} voxels are NaN or constant in the training responses")
    if (~valid).any():
        warnings.warn(
            f"excluded {int(non_finite.sum())} voxels with NaN/inf and {int(constant.sum())} constant voxels "
            f"of {n_voxels} from the encoding fit",
            BadVoxelWarning,
            stacklevel=2,
        )
    splits = leave_stories_out_splits(rows, n_splits)

    if kind == "auto":
        kind = "ridge" if n_features <= n_samples else "kernel_ridge"
    solver_params = dict(score_func=score_funcs[score], local_alpha=True)
    if n_targets_batch:
        solver_params.update(n_targets_batch=n_targets_batch, n_targets_batch_refit=n_targets_batch)
    if solver not in ("svd", "himalaya"):
        raise ValueError(f"solver={solver!r}; expected 'svd' or 'himalaya'")
    if kind == "ridge" and solver == "svd":
        estimator = LeaveStoriesOutRidgeCV(
            alphas=alphas, cv=splits, score=score, fit_intercept=fit_intercept,
            n_targets_batch=n_targets_batch,
        )
    elif kind == "ridge":
        estimator = RidgeCV(alphas=alphas, cv=splits, fit_intercept=fit_intercept, solver_params=solver_params)
    elif kind == "kernel_ridge":
        estimator = KernelRidgeCV(
            alphas=alphas, kernel="linear", cv=splits, fit_intercept=fit_intercept, solver_params=solver_params,
            warn=False,  # kind="kernel_ridge" was asked for explicitly or chosen because n_features > n_samples
        )
    else:
        raise ValueError(f"kind={kind!r}; expected 'auto', 'ridge' or 'kernel_ridge'")

    with using_backend(backend) as himalaya_backend:
        estimator.fit(X, Y[:, valid])
        best = np.asarray(himalaya_backend.to_numpy(estimator.best_alphas_), dtype=float)
        cv_scores = np.asarray(himalaya_backend.to_numpy(estimator.cv_scores_), dtype=float)

    # himalaya returns exp(-log alpha) in the working dtype; snap back to the exact grid value.
    grid_index = np.argmin(np.abs(np.log(np.asarray(best, dtype=float))[:, None] - np.log(alphas)[None, :]), axis=1)
    best_alphas = np.full(n_voxels, np.nan)
    best_alphas[valid] = alphas[grid_index]
    cv_full = np.full(n_voxels, np.nan)
    cv_full[valid] = cv_scores
    return EncodingModel(
        estimator=estimator,
        kind=kind,
        backend=backend,
        best_alphas_=best_alphas,
        cv_scores_=cv_full,
        valid_voxels_=valid,
        excluded_nan_=int(non_finite.sum()),
        excluded_constant_=int(constant.sum()),
        train_stories=train_stories,
        splits=splits,
        alphas=alphas,
        n_features_in_=n_features,
        n_samples_=n_samples,
        dtype=dtype,
        extra=dict(solver=solver if kind == "ridge" else "himalaya-kernel"),
    )


# --------------------------------------------------------------------------- scores


def score_voxels(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Voxelwise Pearson correlation between measured and predicted responses.

    ``r_v = sum_t (y_tv - mean_v)(p_tv - mean_pv) / sqrt(sum_t (y_tv - mean_v)^2 sum_t (p_tv - mean_pv)^2)``.
    Voxels that are constant or contain NaN/inf in either array get NaN (count
    them with ``np.isnan``); they never raise.

    Parameters
    ----------
    y_true, y_pred : array (n_trs, n_voxels)

    Returns
    -------
    array (n_voxels,), float64

    Examples
    --------
    >>> y = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    >>> score_voxels(y, 2 * y)
    array([ 1., nan])
    """
    y_true, y_pred = check_pair(y_true, y_pred)
    finite = np.isfinite(y_true).all(axis=0) & np.isfinite(y_pred).all(axis=0)
    yt = np.where(finite, y_true, 0.0)
    yp = np.where(finite, y_pred, 0.0)
    # Constant up to rounding (e.g. a float32 column of equal values) counts as constant.
    usable = finite & ~_is_constant(yt) & ~_is_constant(yp)
    yt = yt - yt.mean(axis=0)
    yp = yp - yp.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (yt * yp).sum(axis=0) / np.sqrt((yt**2).sum(axis=0) * (yp**2).sum(axis=0))
    return np.where(usable, np.clip(r, -1.0, 1.0), np.nan)


@dataclass(frozen=True)
class BrainScores:
    """Summary of voxelwise test scores (see module docstring for formulas).

    Attributes
    ----------
    voxel_r : array (n_voxels,)
        Test Pearson r per voxel (NaN: invalid voxel).
    n_voxels, n_valid, n_invalid : int
    score_mean : float
        Mean r over valid voxels.
    score_top10 : float
        Mean test r over the ``top_fraction`` of valid voxels ranked by the
        training-data selection score (NaN without one).
    top_voxels : bool array (n_voxels,)
    top_fraction : float
    ceiling_mean : float
        Mean CC_max over valid voxels with a finite ceiling (NaN without repeats).
    score_ceiling_normalised : float
        ``mean r / mean CC_max`` over valid voxels with a finite ceiling (uncapped; deflated
        by noise voxels: the brain sweep reports the split-half version instead).
    score_top10_ceiling_normalised : float
        The same over the top voxels.
    regions : pandas.DataFrame
        One row per region (``all`` first) with the columns of :meth:`to_frame`.
    """

    voxel_r: np.ndarray
    n_voxels: int
    n_valid: int
    n_invalid: int
    score_mean: float
    score_top10: float
    top_voxels: np.ndarray
    top_fraction: float
    ceiling_mean: float
    score_ceiling_normalised: float
    score_top10_ceiling_normalised: float
    regions: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per region (``all`` = whole brain).

        Columns: region, n_voxels, n_valid, n_invalid, score_mean, score_top10,
        ceiling_mean, score_ceiling_normalised, score_top10_ceiling_normalised.
        """
        return self.regions.copy()


def _top_mask(selection: np.ndarray, candidates: np.ndarray, top_fraction: float) -> np.ndarray:
    """The ceil(top_fraction * n) candidates with the highest finite selection score."""
    usable = candidates & np.isfinite(selection)
    n_top = math.ceil(top_fraction * int(candidates.sum()))
    mask = np.zeros(selection.shape, dtype=bool)
    if n_top == 0 or not usable.any():
        return mask
    index = np.flatnonzero(usable)
    order = np.argsort(-selection[index], kind="stable")
    mask[index[order[:n_top]]] = True
    return mask


def _summary_row(name, r, selection, ceiling, subset, top_fraction):
    valid = subset & np.isfinite(r)
    n_sub = int(subset.sum())
    row = dict(region=name, n_voxels=n_sub, n_valid=int(valid.sum()), n_invalid=n_sub - int(valid.sum()))
    row["score_mean"] = float(r[valid].mean()) if valid.any() else float("nan")
    top = _top_mask(selection, valid, top_fraction) if selection is not None else np.zeros_like(valid)
    row["score_top10"] = float(r[top].mean()) if top.any() else float("nan")
    nan = float("nan")
    row["ceiling_mean"] = row["score_ceiling_normalised"] = row["score_top10_ceiling_normalised"] = nan
    if ceiling is not None:
        with_ceiling = valid & np.isfinite(ceiling)
        if with_ceiling.any() and ceiling[with_ceiling].mean() > 0:
            row["ceiling_mean"] = float(ceiling[with_ceiling].mean())
            row["score_ceiling_normalised"] = float(r[with_ceiling].mean() / ceiling[with_ceiling].mean())
        top_ceiling = top & np.isfinite(ceiling)
        if top_ceiling.any() and ceiling[top_ceiling].mean() > 0:
            row["score_top10_ceiling_normalised"] = float(r[top_ceiling].mean() / ceiling[top_ceiling].mean())
    return row, top


def brain_scores(
    voxel_r: np.ndarray,
    selection_scores: np.ndarray | None = None,
    regions: np.ndarray | None = None,
    ceiling: np.ndarray | None = None,
    top_fraction: float = DEFAULT_TOP_FRACTION,
) -> BrainScores:
    """Summarise voxelwise test r into whole-brain, top-voxel, regional and normalised scores.

    Parameters
    ----------
    voxel_r : array (n_voxels,)
        Test r per voxel (from :func:`score_voxels`; NaN = invalid, excluded and counted).
    selection_scores : array (n_voxels,) or None
        Training-data score used to pick the top voxels, e.g.
        ``EncodingModel.cv_scores_``. Never pass test scores here.
    regions : array (n_voxels,) of labels or None
        Region of each voxel; a row per distinct label is added after ``all``.
    ceiling : array (n_voxels,) or None
        Per-voxel CC_max (``noise_ceiling(repeats).cc_max``).
    top_fraction : float in (0, 1]

    Returns
    -------
    BrainScores

    Examples
    --------
    >>> r = np.array([0.1, 0.3, np.nan, 0.5])
    >>> s = brain_scores(r, selection_scores=np.array([0.0, 0.1, 0.2, 0.9]), top_fraction=0.3)
    >>> round(s.score_mean, 3), s.score_top10, s.n_invalid
    (0.3, 0.5, 1)
    """
    r = np.asarray(voxel_r, dtype=float)
    if r.ndim != 1:
        raise ValueError(f"voxel_r must be 1-D (one r per voxel), got shape {r.shape}")
    n_voxels = r.size
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")

    def _check(name, arr):
        if arr is None:
            return None
        arr = np.asarray(arr)
        if arr.shape != (n_voxels,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n_voxels},) like voxel_r")
        return arr

    selection = _check("selection_scores", selection_scores)
    selection = None if selection is None else selection.astype(float)
    ceiling = _check("ceiling", ceiling)
    ceiling = None if ceiling is None else ceiling.astype(float)
    regions = _check("regions", regions)

    everything = np.ones(n_voxels, dtype=bool)
    row_all, top_all = _summary_row(ALL_REGIONS, r, selection, ceiling, everything, top_fraction)
    rows = [row_all]
    if regions is not None:
        for label in pd.unique(regions):
            if str(label) == ALL_REGIONS:
                raise ValueError(f"region label {ALL_REGIONS!r} is reserved for the whole brain")
            row, _ = _summary_row(str(label), r, selection, ceiling, regions == label, top_fraction)
            rows.append(row)
    frame = pd.DataFrame(rows)
    return BrainScores(
        voxel_r=r,
        n_voxels=n_voxels,
        n_valid=row_all["n_valid"],
        n_invalid=row_all["n_invalid"],
        score_mean=row_all["score_mean"],
        score_top10=row_all["score_top10"],
        top_voxels=top_all,
        top_fraction=top_fraction,
        ceiling_mean=row_all["ceiling_mean"],
        score_ceiling_normalised=row_all["score_ceiling_normalised"],
        score_top10_ceiling_normalised=row_all["score_top10_ceiling_normalised"],
        regions=frame,
    )
