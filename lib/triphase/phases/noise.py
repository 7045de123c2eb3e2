"""Dependent noise between checkpoints: an AR(1) model estimated from fit residuals, and draws from it.

Every checkpoint of a run is scored on the same test story and the same task
items, so the errors of neighbouring checkpoints are correlated. The null and
bootstrap curves of :mod:`triphase.phases.inference` draw AR(1) noise in
checkpoint order, ``e_t = phi e_(t-1) + sqrt(1 - phi^2) sigma z_t``.

Estimation. Residuals ``r = M y`` of a least-squares fit with design ``X``
(``M = I - X (X'X)^-1 X'``) under noise with covariance ``sigma^2 R(phi)``
(``R_ij = phi^|i-j|``) have ``E[r'r] = sigma^2 tr(M R)`` and
``E[sum_t r_t r_(t+1)] = sigma^2 tr(M L M R)`` (``L``: 1/2 on the first off
diagonals). ``phi`` is the grid value whose expected lag-1 ratio
``tr(M L M R) / tr(M R)`` is nearest the observed one, and
``sigma^2 = r'r / tr(M R(phi))``. This corrects the fit's absorption of slow
noise exactly for a fixed design (the plain lag-1 autocorrelation of
residuals is biased towards negative values by ``~ -p/n``, large with 12-23
checkpoints); the breakpoint search absorbs a little more, which the
simulation checks of :mod:`triphase.phases.calibration` measure.
"""
from __future__ import annotations

import numpy as np

from triphase._noise import ar1_noise
from triphase.phases.piecewise import AR1_GRID_SIZE, MAX_AR1

__all__ = ["ar1_correlation", "ar1_noise", "estimate_ar1"]


def ar1_correlation(n: int, phi: float) -> np.ndarray:
    """Correlation matrix ``phi ** |i - j|`` of ``n`` AR(1) values.

    Examples
    --------
    >>> ar1_correlation(3, 0.5).tolist()
    [[1.0, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 1.0]]
    """
    lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    return np.power(float(phi), lag)


def estimate_ar1(residuals, design, min_phi: float = 0.0) -> tuple[float, float]:
    """AR(1) coefficient and marginal sd of the noise behind fit residuals, corrected for the fit.

    Parameters
    ----------
    residuals : array-like, shape (n,)
        Residuals of the least-squares fit, in checkpoint order.
    design : array-like, shape (n, p)
        The fit's design matrix.
    min_phi : float
        Smallest coefficient considered (an assumed floor on the dependence;
        ``sigma`` is then estimated given it).

    Returns
    -------
    (phi, sigma) : tuple of float
        ``phi`` in ``[0, MAX_AR1]`` (negative dependence is not modelled: it
        would only narrow the null), ``sigma`` the marginal sd.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n, phi = 400, 0.6
    >>> e = np.zeros(n)
    >>> for t in range(1, n):
    ...     e[t] = phi * e[t - 1] + np.sqrt(1 - phi**2) * rng.normal()
    >>> design = np.column_stack([np.ones(n), np.arange(n)])
    >>> r = e - design @ np.linalg.lstsq(design, e, rcond=None)[0]
    >>> phi_hat, sigma_hat = estimate_ar1(r, design)
    >>> abs(phi_hat - phi) < 0.1, abs(sigma_hat - 1) < 0.2
    (True, True)
    """
    r = np.asarray(residuals, dtype=float)
    x = np.asarray(design, dtype=float)
    n = r.size
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"design must have shape ({n}, p), got {x.shape}")
    q, _ = np.linalg.qr(x)
    m = np.eye(n) - q @ q.T
    lag = (np.eye(n, k=1) + np.eye(n, k=-1)) / 2
    total = float(r @ r)
    if total <= 0:
        return 0.0, 0.0
    observed = float(r @ lag @ r) / total
    if not 0 <= min_phi <= MAX_AR1:
        raise ValueError(f"min_phi must be in [0, {MAX_AR1}], got {min_phi}")
    grid = np.linspace(min_phi, MAX_AR1, AR1_GRID_SIZE)
    # tr(A R) = sum(A * R) for symmetric A and R: one elementwise product per grid value
    distance = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    correlations = np.power(grid[:, None, None], distance[None])                  # (grid, n, n)
    expected_total = np.einsum("ij,gij->g", m, correlations)
    expected_ratio = np.einsum("ij,gij->g", m @ lag @ m, correlations) / expected_total
    best = int(np.argmin(np.abs(expected_ratio - observed)))
    return float(grid[best]), float(np.sqrt(total / expected_total[best]))
