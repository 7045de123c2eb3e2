"""What the language model adds: a low-level baseline and banded ridge.

A language model's hidden states, downsampled with the (unnormalised) Lanczos
sum of :mod:`triphase.brain.timeseries`, carry word rate and other low-level
properties of the speech; part of any brain score is theirs. This module fits,
on the same training stories, folds and test story as the encoding models:

* the **baseline** alone, a ridge model of low-level features
  (:func:`baseline_features`): word rate (a 1 per word), word length (letters
  per word) and, where the dataset gives phone timings, phoneme rate (a 1 per
  phone), each downsampled to the TRs exactly like the model's features
  (:func:`triphase.brain.timeseries.story_design`: Lanczos, trim, z-score within
  the story; FIR delays per story);
* the **joint** model, banded ridge over two bands, baseline and model, each
  with its own penalty per voxel (:class:`JointRidgeCV`): the baseline band
  keeps the penalty chosen for the baseline alone (CV ``R^2``), so the baseline
  model is the joint model without its model band (nested models); the model
  band's penalty is chosen by the joint model's leave-stories-out CV ``R^2``.
  Within each training fold the baseline ridge is regressed out of the model
  features and the responses (Frisch-Waugh-Lovell, generalised to a penalised
  baseline by :class:`BaselineSVD`), and one plain ridge of the residuals is
  solved through one eigendecomposition of the fold's model Gram, which
  serves every baseline penalty (rank-k Woodbury updates): about the cost of
  one plain encoding fit, where himalaya's ``BandedRidgeCV`` over a grid of
  band ratios took 14 times as long (tests check the two agree when himalaya
  is given the same penalties, and against the closed form);

and reports per voxel the test ``r`` and ``R^2`` of both, and the model's
**unique variance** ``R^2_joint - R^2_baseline`` (variance partitioning, de
Heer et al. 2017; Lebel et al. 2021). Test ``R^2 = 1 - sum (y - p)^2 / sum (y -
mean y)^2`` over the test TRs, himalaya's ``r2_score``.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> stories = [f"s{i}" for i in range(4)]
>>> base = {s: rng.standard_normal((80, 2)) for s in stories}
>>> model = {s: rng.standard_normal((80, 3)) for s in stories}
>>> Y = {s: base[s][:, :1] + model[s][:, :1] + 0.5 * rng.standard_normal((80, 1)) for s in stories}
>>> result = unique_variance(Y, stories[:3], stories[3:], base, model, delays=(0,), n_splits=3)
>>> row = result.regions.iloc[0]
>>> bool(row["r2_joint"] > row["r2_baseline"] + 0.2)
True
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from himalaya.backend import get_backend
from himalaya.scoring import r2_score

from triphase.brain.encoding import (
    ALL_REGIONS,
    DEFAULT_N_SPLITS,
    PREDICTION_BLOCK_ELEMENTS,
    _sum_of_squares,
    find_bad_voxels,
    leave_stories_out_splits,
    score_voxels,
    using_backend,
)
from triphase.brain.timeseries import DEFAULT_DELAYS, check_rows, make_delayed, story_design
from triphase.datasets._base import WordTimings

#: Baseline columns, in order (phoneme rate only where the dataset has phone timings).
WORD_RATE, WORD_LENGTH, PHONEME_RATE = "word_rate", "word_length", "phoneme_rate"
#: Penalties tried per voxel for the model band: every other value of the encoding grid (1e-2 to 1e8 in
#: factors of 10); the cost of the fit grows with their number (predictions per alpha).
DEFAULT_BANDED_ALPHAS = np.logspace(-2, 8, 11)
#: Penalties tried for the baseline band, 1e-2 (practically unpenalised beside the eigenvalues of its Gram
#: matrix, about n_train for a z-scored column) to 1e8 (the baseline shrunk away, as noise voxels want) in
#: factors of 100: each value chosen by some voxel costs one eigendecomposition per fold.
DEFAULT_BASELINE_ALPHAS = np.logspace(-2, 8, 6)
#: Baseline directions with a singular value below this share of the largest carry nothing and are dropped.
RANK_TOLERANCE = 1e-10
#: As himalaya: a tiny slope in log(alpha) breaks ties between alphas towards the larger one.
TIE_BREAK_SLOPE = 1e-10
#: Per-voxel result columns of :class:`UniqueVariance`.
VOXEL_COLUMNS = ("r_joint", "r_baseline", "r2_joint", "r2_baseline", "r2_unique", "model_band_weight")


# --------------------------------------------------------------------------- features
def word_letters(word: str) -> int:
    """Letters of a word (alphabetic characters, any script; punctuation and digits do not count).

    Examples
    --------
    >>> word_letters("don't"), word_letters("fox."), word_letters("猫")
    (4, 3, 1)
    """
    return sum(character.isalpha() for character in str(word))


def word_baseline_features(words: Sequence[str]) -> np.ndarray:
    """Per-word low-level features: (word rate impulse = 1, word length in letters).

    Returns
    -------
    array (n_words, 2), columns (:data:`WORD_RATE`, :data:`WORD_LENGTH`)

    Examples
    --------
    >>> word_baseline_features(["the", "fox"]).tolist()
    [[1.0, 3.0], [1.0, 3.0]]
    """
    words = list(words)
    if not words:
        raise ValueError("words is empty: a baseline needs at least one word")
    return np.array([[1.0, float(word_letters(w))] for w in words])


def baseline_features(timings: WordTimings, phone_times: np.ndarray | None = None) -> np.ndarray:
    """TR-level low-level features of one story (before delays), aligned with its responses.

    Word rate and word length are per-word values at the word midpoints, phoneme
    rate a 1 at each phone's time; each goes through
    :func:`triphase.brain.timeseries.story_design` (Lanczos sum to the TR times,
    trim, z-score within the story), as the model's features do.

    Parameters
    ----------
    timings : WordTimings
    phone_times : array (n_phones,) or None
        Time of each phone (s, the clock of ``timings``; e.g. phone midpoints);
        None: no phoneme-rate column.

    Returns
    -------
    array (timings.n_rows, 2 or 3), columns ``baseline_columns(phone_times is not None)``

    Examples
    --------
    >>> t = WordTimings("s", ("a", "little", "fox"), np.array([1.0, 5.0, 9.0]), np.array([1.4, 5.6, 9.5]),
    ...                 tr_times=np.arange(8) * 2.0 + 1.0, trim=(1, 1))
    >>> baseline_features(t).shape, baseline_features(t, np.array([1.1, 1.3, 5.2, 9.0])).shape
    ((6, 2), (6, 3))
    """
    words = word_baseline_features(timings.words)
    design = story_design(words, timings.midpoints, timings.tr_times, timings.trim, story=timings.story)
    if phone_times is None:
        return design
    phone_times = np.asarray(phone_times, dtype=float)
    if phone_times.ndim != 1 or phone_times.size == 0:
        raise ValueError(f"story {timings.story!r}: phone_times must be a non-empty 1-D array of times, "
                         f"got shape {phone_times.shape}")
    phones = story_design(np.ones((phone_times.size, 1)), phone_times, timings.tr_times, timings.trim,
                          story=timings.story)
    return np.concatenate([design, phones], axis=1)


def baseline_columns(with_phones: bool) -> list[str]:
    """Names of the columns of :func:`baseline_features`."""
    return [WORD_RATE, WORD_LENGTH] + ([PHONEME_RATE] if with_phones else [])


def dataset_phone_times(dataset, stories: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Phone times of every story from ``dataset.phone_times(story)`` where the adapter provides it, else None.

    Datasets without phones (the simulated participant) give None: the baseline
    then has word rate and word length only.
    """
    reader = getattr(dataset, "phone_times", None)
    if reader is None:
        return None
    return {story: np.asarray(reader(story), dtype=float) for story in stories}


def baseline_design(timings: dict[str, WordTimings],
                    phone_times: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """:func:`baseline_features` of every story: dict story -> array (n_rows, n_baseline_features).

    ``timings`` is e.g. ``BrainData.timings``; ``phone_times`` from
    :func:`dataset_phone_times` (None: no phoneme rate).
    """
    if phone_times is not None:
        missing = [s for s in timings if s not in phone_times]
        if missing:
            raise ValueError(f"phone_times lacks stories {missing}: give phones for every story or none")
    return {s: baseline_features(t, None if phone_times is None else phone_times[s]) for s, t in timings.items()}


# --------------------------------------------------------------------------- banded ridge
@dataclass(frozen=True)
class UniqueVariance:
    """Joint (baseline + model) and baseline-only encoding models on the test stories.

    Attributes
    ----------
    voxels : DataFrame
        One row per voxel (response column), columns :data:`VOXEL_COLUMNS`:
        test r and R^2 of the joint and baseline models and ``r2_unique =
        r2_joint - r2_baseline``, and ``model_band_weight`` = the model band's
        share ``gamma_model / (gamma_baseline + gamma_model)`` in himalaya's
        parametrisation (band ``i`` penalised by ``alpha / gamma_i``), i.e.
        ``baseline_alpha / (baseline_alpha + model_alpha)`` of the penalties
        chosen by CV. NaN for voxels excluded from the fit (NaN or constant
        training responses).
    regions : DataFrame
        One row per region (``all`` first): region, n_voxels, n_valid, and the
        means over valid voxels r_joint, r_baseline, r2_joint, r2_baseline,
        r2_unique, model_band_weight.
    n_baseline_features, n_model_features : int
        Columns per band after the delays.
    fit_seconds : float
        Wall time of the cross-validation, the refit and the predictions.
    model_alphas, baseline_alphas : array (n_voxels,)
        Ridge penalties of the two bands chosen per voxel by CV (NaN for excluded voxels).
    """

    voxels: pd.DataFrame
    regions: pd.DataFrame
    n_baseline_features: int
    n_model_features: int
    fit_seconds: float
    model_alphas: np.ndarray | None = None
    baseline_alphas: np.ndarray | None = None


def _delayed(design: dict[str, np.ndarray], stories: Sequence[str], delays, name: str) -> dict[str, np.ndarray]:
    missing = [s for s in stories if s not in design]
    if missing:
        raise KeyError(f"{name} lacks stories {missing}")
    return {s: make_delayed(np.asarray(design[s], dtype=np.float32), delays) for s in stories}


class BaselineSVD:
    """Thin SVD of the centred baseline of some training rows, and its ridge for any penalty.

    With the centred training baseline ``B = U diag(s) W^T`` (float64;
    directions with ``s <= RANK_TOLERANCE * max(s)`` carry nothing and are
    dropped), the ridge coefficients of targets ``Z`` centred on the same rows,
    penalty ``a``, are ``C = W diag(s / (s^2 + a)) U^T Z`` (:meth:`coefficients`),
    and minimising ``||Z - B C||^2 + a ||C||^2`` over ``C`` leaves ``Z^T M Z``
    with ``M = I - B (B^T B + a I)^{-1} B^T = I - U diag(s^2 / (s^2 + a)) U^T``
    (:meth:`captured` gives the diagonal). This is how the baseline is regressed
    out of the model features and the responses (Frisch-Waugh-Lovell for ``a =
    0``). ``U``, ``W`` and the mean live on the current himalaya backend.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> B = rng.standard_normal((50, 2))
    >>> svd = BaselineSVD(B, "float64")
    >>> Z = B @ np.array([[1.0], [2.0]]) + 3.0
    >>> svd.coefficients(Z - Z.mean(0), 0.0).ravel().round(6).tolist()
    [1.0, 2.0]
    """

    def __init__(self, baseline_rows: np.ndarray, dtype):
        backend = get_backend()
        rows = np.asarray(backend.to_numpy(baseline_rows), dtype=np.float64)
        mean = rows.mean(0)
        U, s, Wt = np.linalg.svd(rows - mean, full_matrices=False)
        keep = s > RANK_TOLERANCE * s.max() if s.size and s.max() > 0 else np.zeros(s.shape, dtype=bool)
        self.singular_values = s[keep]
        self.U = backend.asarray(U[:, keep], dtype=dtype)
        self.W = backend.asarray(Wt[keep].T, dtype=dtype)
        self.mean = backend.asarray(mean, dtype=dtype)

    def captured(self, penalty: float) -> np.ndarray:
        """``s^2 / (s^2 + penalty)`` (float64): the share of each direction that the baseline ridge takes."""
        return self.singular_values**2 / (self.singular_values**2 + penalty)

    def scale(self, penalty: float):
        """``s / (s^2 + penalty)`` as a column on the backend: coefficients = ``W (scale * U^T Z)``."""
        backend = get_backend()
        return backend.asarray((self.singular_values / (self.singular_values**2 + penalty))[:, None],
                               dtype=self.U.dtype)

    def coefficients(self, centred, penalty: float):
        """Ridge coefficients (n_baseline_features, n_targets) of targets centred on the training rows."""
        backend = get_backend()
        return backend.matmul(self.W, self.scale(penalty) * backend.matmul(self.U.T, backend.asarray(centred)))

    def centre(self, baseline_rows):
        """Any baseline rows minus the training mean, on the backend."""
        return get_backend().asarray(np.asarray(baseline_rows), dtype=self.U.dtype) - self.mean


class _Products:
    """What every penalty pair needs from one set of training rows (and its validation rows).

    The eigendecomposition ``X^T X = V diag(lambda) V^T`` of the centred
    training model features (float64) and products in its basis. Regressing a
    baseline ridge out (metric ``M = I - U diag(g) U^T``, see
    :class:`BaselineSVD`) changes the Gram by a rank-k term,
    ``X^T M X = V (diag(lambda) - A^T A) V^T`` with ``A = diag(sqrt(g)) U^T X V``,
    so by the Woodbury identity
    ``(X^T M X + alpha I)^{-1} = V (S + S A^T (I - A S A^T)^{-1} A S) V^T``,
    ``S = diag(1 / (lambda + alpha))``: one eigendecomposition per fold serves
    every baseline penalty, and each penalty adds only k x k solves.
    """

    def __init__(self, B, X, Y, train, val=None):
        backend = get_backend()
        self.svd = BaselineSVD(B[train], "float64")
        rows = backend.asarray(train)
        X_train, Y_train = X[rows], Y[rows]
        self.x_mean, self.y_mean = X_train.mean(0), Y_train.mean(0)
        X_train, Y_train = X_train - self.x_mean, Y_train - self.y_mean
        X64 = backend.asarray(X_train, dtype="float64")
        gram = backend.matmul(X64.T, X64)
        # numpy's LAPACK driver (syevd) is about twice as fast as scipy's default here (as in encoding.py)
        eigenvalues, V64 = np.linalg.eigh(gram) if backend.name == "numpy" else backend.eigh(gram)
        self.eigenvalues = np.clip(np.asarray(backend.to_numpy(eigenvalues), dtype=np.float64), 0, None)
        self.V = backend.asarray(V64, dtype=X.dtype)
        self.UtX = backend.matmul(self.svd.U.T, X64)  # (k, p) float64, original feature basis
        self.UtXV = backend.to_numpy(backend.matmul(self.UtX, V64))  # (k, p) float64, numpy: the k x k algebra
        self.UtY = backend.matmul(self.svd.U.T, backend.asarray(Y_train, dtype="float64"))  # (k, n_targets)
        self.VtXtY = backend.matmul(backend.matmul(X_train, self.V).T, Y_train)  # (p, n_targets)
        if val is not None:
            rows = backend.asarray(val)
            self.XV_val = backend.matmul(X[rows] - self.x_mean, self.V)  # (n_val, p)
            self.Y_val = Y[rows] - self.y_mean
            self.BW_val = backend.matmul(self.svd.centre(B[val]), self.svd.W)  # (n_val, k) float64
            # float64 for the baseline's own CV: its R^2 differences between large penalties are ~1e-7
            self.Y_val64 = backend.asarray(self.Y_val, dtype="float64")
            own = self.Y_val64 - self.Y_val64.mean(0)
            self.total_sq = backend.to_numpy((own * own).sum(0))  # R^2 denominator

    def band(self, penalty: float, columns) -> _ResidualBand:
        """The model band of the targets ``columns`` once the baseline ridge with ``penalty`` is regressed out."""
        return _ResidualBand(self, penalty, columns)

    def baseline_r2(self, penalty: float) -> np.ndarray:
        """Validation R^2 of the baseline ridge alone, per target."""
        backend = get_backend()
        residual = self.Y_val64 - backend.matmul(self.BW_val, self.svd.scale(penalty) * self.UtY)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = 1.0 - backend.to_numpy((residual * residual).sum(0)) / self.total_sq
        return np.where(self.total_sq > 0, r2, 0.0)  # himalaya's r2_score: 0 for a constant validation fold


class _ResidualBand:
    """Ridge of the residualised responses on the residualised model features, for any model penalty.

    In the basis ``V`` of the fold's (unresidualised) model Gram the weights
    for penalty ``alpha`` are ``S (Q + A^T T)`` with ``Q = V^T X^T M Y``,
    ``S = diag(1 / (lambda + alpha))`` and the k x n_targets correction
    ``T = (I - A S A^T)^{-1} A S Q`` (Woodbury, see ``_Products``). The
    validation sums of the plain part ``P S Q`` (``P`` the residualised
    validation features) are formed as in ``LeaveStoriesOutRidgeCV``, all
    alphas at once; the correction enters through k-row products only.
    """

    def __init__(self, products: _Products, penalty: float, columns):
        backend = get_backend()
        self.products = products
        self.dtype = products.V.dtype
        captured = products.svd.captured(penalty)
        self.A = np.sqrt(captured)[:, None] * products.UtXV  # (k, p) numpy float64
        self.scale = products.svd.scale(penalty)  # (k, 1) float64 on the backend
        UtY = products.UtY[:, columns]
        # V^T X^T M Y = V^T X^T Y - (U^T X V)^T diag(g) U^T Y
        correction = backend.matmul(backend.asarray(products.UtXV.T), backend.asarray(captured[:, None]) * UtY)
        self.Q = products.VtXtY[:, columns] - backend.asarray(correction, dtype=self.dtype)  # (p, n_targets)
        self.Q64 = backend.asarray(self.Q, dtype="float64")
        self.UtY = UtY

    def _woodbury(self, alpha: float):
        """``S`` (p,) and ``A S`` and ``(I - A S A^T)^{-1}`` (numpy float64) for one model penalty."""
        shrink = 1.0 / (self.products.eigenvalues + alpha)
        AS = self.A * shrink[None, :]
        return shrink, AS, np.linalg.inv(np.eye(self.A.shape[0]) - AS @ self.A.T)

    def _correction(self, AS, inner, Q64):
        """``T = (I - A S A^T)^{-1} A S Q`` on the backend, float64 (k, n_targets)."""
        backend = get_backend()
        return backend.matmul(backend.asarray(inner), backend.matmul(backend.asarray(AS), Q64))

    def validation_r2(self, alphas: np.ndarray, columns) -> np.ndarray:
        """Validation R^2 of the joint prediction per (alpha, target), array (n_alphas, n_targets)."""
        backend = get_backend()
        fold = self.products
        scaled_A = backend.asarray(self.scale * backend.asarray(fold.UtXV), dtype=self.dtype)
        BW_val = backend.asarray(fold.BW_val, dtype=self.dtype)
        projected = fold.XV_val - backend.matmul(BW_val, scaled_A)  # residualised X_val in the V basis, P
        baseline_part = backend.matmul(fold.BW_val, self.scale * self.UtY)
        Y_val = fold.Y_val[:, columns] - backend.asarray(baseline_part, dtype=self.dtype)
        PtY = backend.matmul(projected.T, Y_val)  # (p, n_targets)
        PtY64 = backend.asarray(PtY, dtype="float64")
        P64 = backend.asarray(projected, dtype="float64")
        gram_val = backend.to_numpy(backend.matmul(P64.T, P64))  # (p, p) numpy float64
        y_sq = backend.to_numpy((Y_val * Y_val).sum(0)).astype(np.float64)
        n_val, n_targets = projected.shape[0], self.Q.shape[1]

        # plain part P S Q, all alphas (as LeaveStoriesOutRidgeCV)
        shrink = backend.asarray(1.0 / (fold.eigenvalues[None, :] + alphas[:, None]), dtype=self.dtype)
        cross = backend.to_numpy(backend.matmul(shrink, self.Q * PtY)).astype(np.float64)  # (n_alphas, n_targets)
        pred_sq = np.zeros_like(cross)
        alpha_step = max(1, PREDICTION_BLOCK_ELEMENTS // max(1, n_val * n_targets))
        for a0 in range(0, len(alphas), alpha_step):
            block = shrink[a0:a0 + alpha_step]
            # one 2-D GEMM with alphas stacked along rows (numpy's broadcast batched matmul is slower)
            scaled = (projected[None] * block[:, None, :]).reshape(len(block) * n_val, -1)
            predictions = backend.matmul(scaled, self.Q).reshape(len(block), n_val, -1)
            pred_sq[a0:a0 + alpha_step] = backend.to_numpy(_sum_of_squares(backend, predictions))
            del predictions

        # the correction P S A^T T: cross term with y, with the plain part, and its own square
        for index, alpha in enumerate(alphas):
            diagonal, AS, inner = self._woodbury(alpha)
            T = self._correction(AS, inner, self.Q64)
            ASGS = (AS @ gram_val) * diagonal[None, :]  # A S P^T P S, (k, p)
            with_y = backend.matmul(backend.asarray(AS), PtY64)  # A S P^T y~
            with_plain = backend.matmul(backend.asarray(ASGS), self.Q64)  # A S P^T P S Q
            own = backend.matmul(backend.asarray(ASGS @ self.A.T), T)  # A S P^T P S A^T T
            cross[index] += backend.to_numpy((T * with_y).sum(0))
            pred_sq[index] += backend.to_numpy((T * (2 * with_plain + own)).sum(0))
        total_sq = fold.total_sq[backend.to_numpy(columns)]
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = 1.0 - (y_sq[None] - 2 * cross + pred_sq) / total_sq[None]
        return np.where(total_sq[None] > 0, r2, 0.0)  # himalaya's r2_score: 0 for a constant validation fold

    def model_coefficients(self, alphas: np.ndarray) -> object:
        """Model-band weights (n_model_features, n_targets) for one penalty per target."""
        backend = get_backend()
        coef = backend.zeros_like(self.Q)
        for alpha in np.unique(alphas):
            targets = backend.asarray(np.flatnonzero(alphas == alpha))
            diagonal, AS, inner = self._woodbury(alpha)
            T = self._correction(AS, inner, self.Q64[:, targets])
            corrected = self.Q[:, targets] + backend.asarray(backend.matmul(backend.asarray(self.A.T), T),
                                                            dtype=self.dtype)
            coef[:, targets] = backend.matmul(self.products.V,
                                              corrected * backend.asarray(diagonal[:, None], dtype=self.dtype))
        return coef


def _best(scores: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the best mean CV score per target (ties to the larger penalty, as himalaya) and that score."""
    mean_scores = scores.mean(0)
    mean_scores = np.where(np.isnan(mean_scores), -np.inf, mean_scores)
    best = np.argmax(mean_scores + np.log(grid)[:, None] * TIE_BREAK_SLOPE, axis=0)
    return best, mean_scores[best, np.arange(scores.shape[2])]


class JointRidgeCV:
    """Banded ridge of a baseline band and a model band, penalties chosen per target by given CV splits.

    1. **Baseline penalty** per target: validation R^2 of the baseline ridge
       alone over ``baseline_alphas`` (cheap: a few columns).
    2. **Model penalty** per target, for the target's baseline penalty: within
       each fold the baseline ridge is regressed out of the model features and
       the responses (:class:`BaselineSVD`), so the joint ridge is a plain
       ridge of the residuals; one eigendecomposition of the fold's model Gram
       serves every baseline penalty (rank-k Woodbury update, see
       ``_Products``), and the validation R^2 of the joint prediction
       ``B_val C(w) + X_val w`` is formed from sums as in
       :class:`triphase.brain.encoding.LeaveStoriesOutRidgeCV` (predictions are
       never stored).

    The R^2 denominator is the variance of the fold's own validation
    responses (himalaya's ``r2_score``); ties go to the larger penalty; the
    refit uses all rows. The joint model with the model band removed is the
    baseline model (same baseline penalty), so the two are nested. With one
    value in ``baseline_alphas`` this is himalaya's banded ridge with
    penalties ``(baseline_alpha, alpha)`` for every alpha (tested). Runs on the
    current himalaya backend (k x k algebra in numpy).

    Parameters
    ----------
    alphas : array
        Penalties tried for the model band.
    cv : list of (train_idx, val_idx)
        E.g. :func:`triphase.brain.encoding.leave_stories_out_splits`.
    baseline_alphas : array
        Penalties tried for the baseline band.

    Attributes after :meth:`fit`: ``best_alphas_``, ``best_baseline_alphas_``,
    ``cv_scores_`` (joint) and ``baseline_cv_scores_``, each (n_targets,).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> B, X = rng.standard_normal((90, 2)), rng.standard_normal((90, 4))
    >>> Y = B[:, :1] + X[:, :1] + 0.1 * rng.standard_normal((90, 1))
    >>> cv = [(np.arange(30, 90), np.arange(30)), (np.arange(30), np.arange(30, 90))]
    >>> fit = JointRidgeCV([0.1, 10.0, 1e3], cv, baseline_alphas=[0.1, 1e3]).fit(B, X, Y)
    >>> baseline_only, joint = fit.predict(B, X)
    >>> bool(np.corrcoef(joint[:, 0], Y[:, 0])[0, 1] > 0.99 > 0.8 > np.corrcoef(baseline_only[:, 0], Y[:, 0])[0, 1])
    True
    """

    def __init__(self, alphas, cv, baseline_alphas):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.baseline_alphas = np.asarray(baseline_alphas, dtype=np.float64)
        self.cv = cv

    def fit(self, B, X, Y):
        backend = get_backend()
        X, Y = backend.asarray(X), backend.asarray(Y)
        B = np.asarray(B, dtype=np.float64)
        n_targets = Y.shape[1]
        folds = [_Products(B, X, Y, np.asarray(train), np.asarray(val)) for train, val in self.cv]
        baseline_scores = np.stack([np.stack([fold.baseline_r2(a) for a in self.baseline_alphas]) for fold in folds])
        best, self.baseline_cv_scores_ = _best(baseline_scores, self.baseline_alphas)
        self.best_baseline_alphas_ = self.baseline_alphas[best]
        # targets grouped by the baseline penalty they chose: one rank-k update per group and fold
        self.groups_ = [(penalty, np.flatnonzero(best == index)) for index, penalty in enumerate(self.baseline_alphas)
                        if (best == index).any()]
        scores = np.zeros((len(folds), len(self.alphas), n_targets))
        for split, fold in enumerate(folds):
            for penalty, targets in self.groups_:
                columns = backend.asarray(targets)
                scores[split][:, targets] = fold.band(penalty, columns).validation_r2(self.alphas, columns)
            del fold.XV_val, fold.Y_val, fold.Y_val64  # the validation rows of this fold are no longer needed
        best, self.cv_scores_ = _best(scores, self.alphas)
        self.best_alphas_ = self.alphas[best]

        everything = _Products(B, X, Y, np.arange(X.shape[0]))
        self.refit_ = []
        for penalty, targets in self.groups_:
            columns = backend.asarray(targets)
            band = everything.band(penalty, columns)
            scale = everything.svd.scale(penalty)
            self.refit_.append({
                "targets": targets,
                "model": band.model_coefficients(self.best_alphas_[targets]),  # (n_model_features, n_group)
                "baseline": backend.matmul(everything.svd.W, scale * band.UtY),  # the baseline model
                "features": backend.matmul(everything.svd.W, scale * everything.UtX),  # baseline -> model features
            })
        self.svd_, self.x_mean_, self.y_mean_ = everything.svd, everything.x_mean, everything.y_mean
        return self

    def predict(self, B, X) -> tuple[np.ndarray, np.ndarray]:
        """Baseline-only and joint predictions for new rows, numpy arrays (n_rows, n_targets)."""
        backend = get_backend()
        dtype = self.x_mean_.dtype
        B_centred = self.svd_.centre(np.asarray(B, dtype=np.float64))
        X_centred = backend.asarray(np.asarray(X), dtype=dtype) - self.x_mean_
        baseline_only = np.zeros((X_centred.shape[0], self.y_mean_.shape[0]))
        joint = np.zeros_like(baseline_only)
        y_mean = backend.to_numpy(self.y_mean_)
        for group in self.refit_:
            targets = group["targets"]
            base = backend.to_numpy(backend.matmul(B_centred, group["baseline"]))
            residual_features = X_centred - backend.asarray(backend.matmul(B_centred, group["features"]), dtype=dtype)
            model_part = backend.to_numpy(backend.matmul(residual_features, group["model"]))
            baseline_only[:, targets] = base + y_mean[targets]
            joint[:, targets] = base + model_part + y_mean[targets]
        return baseline_only, joint


def heldout_r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-voxel test R^2 (himalaya ``r2_score``; 0 for a constant voxel), NaN where a prediction is NaN.

    Examples
    --------
    >>> heldout_r2(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [4.0]])).round(3)
    array([0.5])
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    usable = np.isfinite(y_pred).all(axis=0) & np.isfinite(y_true).all(axis=0)
    out = np.full(y_true.shape[1], np.nan)
    with using_backend("numpy"):
        out[usable] = np.asarray(r2_score(y_true[:, usable], y_pred[:, usable]))
    return out


def _region_rows(voxels: pd.DataFrame, region_masks: dict[str, np.ndarray] | None) -> pd.DataFrame:
    n_voxels = len(voxels)
    masks = {ALL_REGIONS: np.ones(n_voxels, dtype=bool)}
    for name, mask in (region_masks or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n_voxels,):
            raise ValueError(f"region_masks[{name!r}] has shape {mask.shape}, expected ({n_voxels},)")
        masks[str(name)] = mask
    valid = np.isfinite(voxels["r2_joint"].to_numpy()) & np.isfinite(voxels["r2_baseline"].to_numpy())
    rows = []
    for name, mask in masks.items():
        chosen = mask & valid
        row = {"region": name, "n_voxels": int(mask.sum()), "n_valid": int(chosen.sum())}
        for column in VOXEL_COLUMNS:
            values = voxels[column].to_numpy()[chosen]
            row[column] = float(values.mean()) if values.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def unique_variance(
    responses: dict[str, np.ndarray],
    train_stories: Sequence[str],
    test_stories: Sequence[str],
    baseline: dict[str, np.ndarray],
    model: dict[str, np.ndarray],
    region_masks: dict[str, np.ndarray] | None = None,
    alphas: Sequence[float] = DEFAULT_BANDED_ALPHAS,
    baseline_alphas: Sequence[float] = DEFAULT_BASELINE_ALPHAS,
    delays: Sequence[int] = DEFAULT_DELAYS,
    n_splits: int = DEFAULT_N_SPLITS,
    backend: str = "numpy",
) -> UniqueVariance:
    """Test R^2 of baseline + model (banded ridge) and of the baseline alone, and their difference.

    The joint model is :class:`JointRidgeCV` (banded ridge; the baseline band
    keeps the baseline model's penalty, the model band's penalty is chosen by
    the joint CV), so the joint prediction is the baseline model's prediction
    plus the model band's part, and ``r2_unique`` compares nested models.

    Parameters
    ----------
    responses : dict story -> array (n_trs, n_voxels)
        E.g. ``BrainData.responses``; for a repeated test story the mean over repeats.
    train_stories, test_stories : sequence of str
        E.g. ``BrainData.train`` and ``BrainData.test``.
    baseline : dict story -> array (n_trs, n_baseline_features)
        Undelayed TR-level baseline (:func:`baseline_design`).
    model : dict story -> array (n_trs, n_model_features)
        Undelayed TR-level model design (``story_design`` of one layer's features).
    region_masks : dict name -> bool array (n_voxels,), optional
        E.g. ``BrainData.region_masks()``; ``all`` is always added first.
    alphas : array
        Penalties tried for the model band (:data:`DEFAULT_BANDED_ALPHAS`).
    baseline_alphas : array
        Penalties tried for the baseline band, by the baseline model's CV R^2
        (:data:`DEFAULT_BASELINE_ALPHAS`; one value fixes it).
    delays : sequence of int
        FIR delays (TRs), applied per story to both bands.
    n_splits : int
        Leave-stories-out folds.
    backend : str
        himalaya backend of the computation.

    Returns
    -------
    UniqueVariance
    """
    train_stories, test_stories = list(train_stories), list(test_stories)
    if not test_stories:
        raise ValueError("test_stories is empty: the unique variance is measured on held-out stories")
    overlap = sorted(set(train_stories) & set(test_stories))
    if overlap:
        raise ValueError(f"stories {overlap} are in both train_stories and test_stories")
    alphas = np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0) or not np.isfinite(alphas).all():
        raise ValueError("alphas must be a non-empty 1-D array of positive finite penalties")
    baseline_alphas = np.asarray(baseline_alphas, dtype=float)
    if baseline_alphas.ndim != 1 or baseline_alphas.size == 0 or np.any(baseline_alphas <= 0) \
            or not np.isfinite(baseline_alphas).all():
        raise ValueError("baseline_alphas must be a non-empty 1-D array of positive finite penalties")
    stories = train_stories + test_stories
    for story in stories:
        if story not in responses:
            raise KeyError(f"responses lack story {story!r}")
        for design in (baseline, model):
            if story in design:
                check_rows(story, np.asarray(design[story]).shape[0], np.asarray(responses[story]).shape[0])
    X_base = _delayed(baseline, stories, delays, "baseline")
    X_model = _delayed(model, stories, delays, "model")
    if not all(np.isfinite(X_base[s]).all() and np.isfinite(X_model[s]).all() for s in stories):
        raise ValueError("baseline or model contains NaN or inf; check the designs of the stories")

    start = time.perf_counter()
    Y_train = np.concatenate([np.asarray(responses[s], dtype=np.float32) for s in train_stories])
    y_test = np.concatenate([np.asarray(responses[s], dtype=np.float32) for s in test_stories])
    non_finite, constant = find_bad_voxels(Y_train)
    valid = ~(non_finite | constant)
    splits = leave_stories_out_splits([(s, X_base[s].shape[0]) for s in train_stories], n_splits)
    base_train, base_test = (np.concatenate([X_base[s] for s in group]) for group in (train_stories, test_stories))
    model_train, model_test = (np.concatenate([X_model[s] for s in group]) for group in (train_stories, test_stories))
    base_prediction = np.full(y_test.shape, np.nan, dtype=np.float32)
    joint_prediction = np.full(y_test.shape, np.nan, dtype=np.float32)
    model_alphas = np.full(y_test.shape[1], np.nan)
    chosen_baseline_alphas = np.full(y_test.shape[1], np.nan)
    if valid.any():
        with using_backend(backend):
            joint = JointRidgeCV(alphas, splits, baseline_alphas).fit(base_train, model_train, Y_train[:, valid])
            base_prediction[:, valid], joint_prediction[:, valid] = joint.predict(base_test, model_test)
        model_alphas[valid] = joint.best_alphas_
        chosen_baseline_alphas[valid] = joint.best_baseline_alphas_
    fit_seconds = time.perf_counter() - start

    r2_joint = heldout_r2(y_test, joint_prediction)
    r2_base = heldout_r2(y_test, base_prediction)
    voxels = pd.DataFrame({
        "r_joint": score_voxels(y_test, joint_prediction),
        "r_baseline": score_voxels(y_test, base_prediction),
        "r2_joint": r2_joint,
        "r2_baseline": r2_base,
        "r2_unique": r2_joint - r2_base,
        "model_band_weight": chosen_baseline_alphas / (chosen_baseline_alphas + model_alphas),
    })
    return UniqueVariance(voxels=voxels, regions=_region_rows(voxels, region_masks),
                          n_baseline_features=int(X_base[stories[0]].shape[1]),
                          n_model_features=int(X_model[stories[0]].shape[1]), fit_seconds=fit_seconds,
                          model_alphas=model_alphas, baseline_alphas=chosen_baseline_alphas)
