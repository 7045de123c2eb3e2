"""From word-level features to a TR-level design matrix.

Stimulus features arrive one row per word, at the word's time; fMRI responses
arrive one row per TR. This module follows the Huth lab pipeline
(HuthLab/deep-fMRI-dataset, ``ridge_utils``; Huth et al. 2016, LeBel et al.
2023) step by step:

1. :func:`lanczos_downsample` - Lanczos-windowed sinc low-pass filter evaluated
   at the TR times (cutoff = 1 / TR, window = 3 lobes), *not* renormalised,
   so a downsampled feature is a sum over the words near a TR and carries
   word rate, exactly as in the reference ``lanczosinterp2D``.
2. :func:`trim` - drop the rows that have no matching response.
3. :func:`zscore` - z-score each feature within the story.
4. :func:`make_delayed` - finite impulse response (FIR) delays, zero padded,
   applied per story by :func:`stack_design` so that no delay reaches across a
   story boundary.

Examples
--------
>>> import numpy as np
>>> tr_times = np.arange(20) * 2.0 + 1.0
>>> word_times = np.linspace(0.0, 40.0, 120)
>>> features = np.random.default_rng(0).standard_normal((120, 3))
>>> design = story_design(features, word_times, tr_times, trim_rows=(2, 2))
>>> design.shape
(16, 3)
>>> stack_design([design, design], delays=(1, 2, 3, 4)).shape
(32, 12)
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

#: Lanczos window (number of lobes) used by the reference pipeline.
DEFAULT_LANCZOS_WINDOW = 3
#: FIR delays in TRs (2-8 s at TR = 2 s, the span of the haemodynamic response).
DEFAULT_DELAYS = (1, 2, 3, 4)


class ConstantColumnWarning(UserWarning):
    """A column had zero variance and was set to 0 by :func:`zscore`."""


def lanczos_kernel(t: np.ndarray, cutoff: float, window: int = DEFAULT_LANCZOS_WINDOW) -> np.ndarray:
    """Lanczos kernel with first zero crossing at ``1 / cutoff`` seconds.

    With ``x = t * cutoff``::

        L(x) = window * sin(pi x) * sin(pi x / window) / (pi^2 x^2)   for 0 < |x| <= window
        L(0) = 1,  L(x) = 0 for |x| > window

    i.e. ``sinc(x) * sinc(x / window)`` truncated to ``window`` lobes; the
    definition of ``lanczosfun`` in the Huth lab reference.

    Parameters
    ----------
    t : array
        Time differences in seconds (any shape).
    cutoff : float
        Cutoff frequency in Hz (> 0).
    window : int
        Number of lobes.

    Returns
    -------
    array of the shape of ``t``.

    Examples
    --------
    >>> lanczos_kernel(np.array([0.0, 2.0, 1.0]), cutoff=0.5).round(4)
    array([1.    , 0.    , 0.6079])
    """
    x = np.asarray(t, dtype=float) * cutoff
    with np.errstate(divide="ignore", invalid="ignore"):
        values = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi**2 * x**2)
    values = np.where(x == 0, 1.0, values)
    return np.where(np.abs(x) > window, 0.0, values)


def lanczos_matrix(
    old_times: np.ndarray,
    new_times: np.ndarray,
    window: int = DEFAULT_LANCZOS_WINDOW,
    cutoff_mult: float = 1.0,
) -> np.ndarray:
    """The (n_new x n_old) interpolation matrix of :func:`lanczos_downsample`."""
    old_times = np.asarray(old_times, dtype=float)
    new_times = np.asarray(new_times, dtype=float)
    if new_times.ndim != 1 or len(new_times) < 2:
        raise ValueError(f"new_times must be a 1-D array of at least 2 TR times, got shape {new_times.shape}")
    if old_times.ndim != 1:
        raise ValueError(f"old_times must be 1-D (one time per word), got shape {old_times.shape}")
    steps = np.diff(new_times)
    if np.any(steps <= 0):
        raise ValueError("new_times must be strictly increasing (TR times)")
    # The reference takes the mean TR spacing as the sampling period.
    cutoff = cutoff_mult / float(np.mean(steps))
    return lanczos_kernel(new_times[:, None] - old_times[None, :], cutoff, window)


def lanczos_downsample(
    values: np.ndarray,
    old_times: np.ndarray,
    new_times: np.ndarray,
    window: int = DEFAULT_LANCZOS_WINDOW,
    cutoff_mult: float = 1.0,
) -> np.ndarray:
    """Resample word-level features onto the TR grid with a Lanczos filter.

    ``out[i] = sum_j L((new_times[i] - old_times[j]) * f_c) * values[j]`` with
    ``f_c = cutoff_mult / mean(diff(new_times))`` (1 / TR by default) and
    ``L`` from :func:`lanczos_kernel`. As in the reference ``lanczosinterp2D``
    the weights are **not** normalised to sum to one: a TR with more words gets
    a larger value, so downsampled features carry word rate. Consequences: a
    feature sampled on the TR grid itself is returned unchanged (``L`` is 1 at
    0 and 0 at every other integer); a constant ``c`` sampled every ``dt``
    seconds becomes about ``c * TR / dt`` away from the edges.

    Parameters
    ----------
    values : array of shape (n_words, n_features) or (n_words,)
    old_times : array of shape (n_words,)
        Time of each row of ``values`` (word midpoints in the reference), s.
    new_times : array of shape (n_trs,)
        Evenly spaced TR times, s.
    window : int
        Number of Lanczos lobes.
    cutoff_mult : float
        Multiplier of the cutoff frequency 1 / TR.

    Returns
    -------
    array of shape (n_trs, n_features) (or (n_trs,) for 1-D input), float64.

    Examples
    --------
    >>> tr = np.arange(5) * 2.0
    >>> lanczos_downsample(np.arange(5.0), tr, tr).round(12) + 0.0
    array([0., 1., 2., 3., 4.])
    """
    values = np.asarray(values, dtype=float)
    old_times = np.asarray(old_times, dtype=float)
    if values.shape[0] != old_times.shape[0]:
        raise ValueError(
            f"values has {values.shape[0]} rows but old_times has {old_times.shape[0]} entries; "
            "expected one time per row"
        )
    matrix = lanczos_matrix(old_times, new_times, window=window, cutoff_mult=cutoff_mult)
    return matrix @ values


def zscore(x: np.ndarray, axis: int = 0, return_constant: bool = False):
    """Z-score along ``axis`` (population std, ``ddof=0``), constant columns -> 0.

    ``z = (x - mean) / std``. A column whose std is 0 (or not finite) would give
    NaN; it is set to 0 instead and reported with a
    :class:`ConstantColumnWarning` naming how many columns were affected.

    Parameters
    ----------
    x : array
    axis : int
    return_constant : bool
        Also return the boolean mask of constant columns.

    Examples
    --------
    >>> zscore(np.array([[1.0, 5.0], [3.0, 5.0]]), return_constant=True)[1]
    array([False,  True])
    """
    x = np.asarray(x, dtype=float)
    mean = x.mean(axis=axis, keepdims=True)
    std = x.std(axis=axis, keepdims=True)
    constant = ~(np.isfinite(std) & (std > 0))
    safe_std = np.where(constant, 1.0, std)
    z = np.where(constant, 0.0, (x - mean) / safe_std)
    constant_mask = np.squeeze(constant, axis=axis)
    n_constant = int(np.count_nonzero(constant_mask))
    if n_constant:
        warnings.warn(
            f"zscore: {n_constant} of {constant_mask.size} columns have zero variance; set to 0",
            ConstantColumnWarning,
            stacklevel=2,
        )
    if return_constant:
        return z, constant_mask
    return z


def trim(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Drop ``start`` rows from the beginning and ``stop`` rows from the end.

    Returns ``x[start: len(x) - stop]`` (``stop = 0`` keeps the end).

    Examples
    --------
    >>> trim(np.arange(10), 2, 3)
    array([2, 3, 4, 5, 6])
    """
    x = np.asarray(x)
    start, stop = int(start), int(stop)
    if start < 0 or stop < 0:
        raise ValueError(f"trim: start={start} and stop={stop} must be >= 0")
    if start + stop >= len(x):
        raise ValueError(f"trim: removing {start}+{stop} rows leaves nothing of {len(x)} rows")
    return x[start: len(x) - stop]


def make_delayed(x: np.ndarray, delays: Sequence[int] = DEFAULT_DELAYS) -> np.ndarray:
    """Concatenate delayed copies of ``x`` (FIR model), padding with zeros.

    For each delay ``d`` (in rows), ``out_d[t] = x[t - d]`` when ``0 <= t - d < n``
    and 0 otherwise: a positive delay shifts rows down (the first ``d`` rows are
    zero), a negative delay shifts them up (the last ``|d|`` rows are zero).
    Blocks are stacked along columns in the order of ``delays``, so the output
    is ``n x (n_features * len(delays))`` and column ``k * n_features + j`` is
    feature ``j`` at delay ``delays[k]``; as ``make_delayed`` in the reference
    (without circular padding).

    Examples
    --------
    >>> make_delayed(np.array([[1.0], [2.0], [3.0]]), delays=(1, -1))
    array([[0., 2.],
           [1., 3.],
           [2., 0.]])
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"make_delayed expects a 2-D array (rows x features), got shape {x.shape}")
    delays = [int(d) for d in delays]
    if not delays:
        raise ValueError("make_delayed: delays must not be empty")
    n_rows, n_features = x.shape
    out = np.zeros((n_rows, n_features * len(delays)), dtype=x.dtype)
    for k, d in enumerate(delays):
        block = out[:, k * n_features:(k + 1) * n_features]
        if abs(d) >= n_rows:
            continue  # every row falls off the end: the block stays zero
        if d > 0:
            block[d:] = x[:-d]
        elif d < 0:
            block[:d] = x[-d:]
        else:
            block[:] = x
    return out


def check_rows(story: str, n_stim: int, n_resp: int) -> None:
    """Raise if stimulus and response rows of ``story`` disagree.

    Examples
    --------
    >>> check_rows("s1", 10, 10)
    """
    if int(n_stim) != int(n_resp):
        raise ValueError(
            f"story {story!r}: stimulus has {n_stim} rows (TRs) but responses have {n_resp}; "
            "check the TR grid, trimming and the response file"
        )


def story_design(
    word_features: np.ndarray,
    word_times: np.ndarray,
    tr_times: np.ndarray,
    trim_rows: tuple[int, int] = (0, 0),
    window: int = DEFAULT_LANCZOS_WINDOW,
    cutoff_mult: float = 1.0,
    standardise: bool = True,
    story: str = "story",
) -> np.ndarray:
    """Word features of one story -> its TR-level design (before delays).

    Lanczos downsampling to ``tr_times``, then :func:`trim` by
    ``trim_rows = (start, stop)``, then :func:`zscore` within the story.

    Parameters
    ----------
    word_features : array (n_words, n_features)
    word_times : array (n_words,)
        Seconds, on the clock of ``tr_times`` (word midpoints).
    tr_times : array (n_trs_untrimmed,)
    trim_rows : (int, int)
    window, cutoff_mult : see :func:`lanczos_downsample`
    standardise : bool
        Z-score each feature within the story.
    story : str
        Name used in error messages.

    Returns
    -------
    array (n_trs_untrimmed - start - stop, n_features)
    """
    word_features = np.asarray(word_features, dtype=float)
    if word_features.ndim != 2:
        raise ValueError(f"story {story!r}: word features must be 2-D (words x features), got {word_features.shape}")
    if word_features.shape[0] == 0:
        raise ValueError(f"story {story!r} has no words: cannot build a design matrix")
    if len(word_times) != word_features.shape[0]:
        raise ValueError(
            f"story {story!r}: {word_features.shape[0]} feature rows but {len(word_times)} word times"
        )
    design = lanczos_downsample(word_features, word_times, tr_times, window=window, cutoff_mult=cutoff_mult)
    design = trim(design, *trim_rows)
    if standardise:
        design = zscore(design, axis=0)
    return design


def stack_design(
    story_arrays: Sequence[np.ndarray] | dict,
    delays: Sequence[int] = DEFAULT_DELAYS,
) -> np.ndarray:
    """Apply FIR delays within each story, then concatenate stories along rows.

    Delaying each story separately keeps the zero padding at every story start,
    so no row of one story leaks into the next.

    Parameters
    ----------
    story_arrays : list of arrays (n_trs_s, n_features), or dict story -> array
    delays : sequence of int

    Returns
    -------
    array (sum_s n_trs_s, n_features * len(delays))
    """
    arrays = list(story_arrays.values()) if isinstance(story_arrays, dict) else list(story_arrays)
    if not arrays:
        raise ValueError("stack_design: no stories given")
    widths = {np.asarray(a).shape[1] for a in arrays}
    if len(widths) != 1:
        raise ValueError(f"stack_design: stories have different feature counts {sorted(widths)}")
    return np.vstack([make_delayed(np.asarray(a), delays) for a in arrays])
