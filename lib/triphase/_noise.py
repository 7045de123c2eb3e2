"""AR(1) noise between checkpoints, shared by the internal-states change points and the phase analysis.

Every checkpoint of a run is measured on the same text, test story and task
items, so the errors of neighbouring checkpoints are correlated. Both the
phase analysis (:mod:`triphase.phases.inference`) and the internal change
points (:mod:`triphase.internal.change_points`) model that as AR(1) noise in
checkpoint order: the phase analysis with an estimated coefficient floored at
:data:`ASSUMED_MIN_PHI`, the change points with that coefficient.
"""
from __future__ import annotations

import numpy as np

#: Assumed floor of the AR(1) coefficient of the noise between checkpoints: the largest dependence of the
#: validation grid. With 12-40 checkpoints it cannot be estimated well (a fit absorbs slow noise), so the
#: methods assume it; it costs power under independent noise (methods pages).
ASSUMED_MIN_PHI = 0.6


def ar1_noise(rng, n: int, n_draws: int, phi: float, sigma: float) -> np.ndarray:
    """Gaussian AR(1) noise, stationary from the first value, shape ``(n, n_draws)``.

    ``e_t = phi e_(t-1) + sqrt(1 - phi^2) sigma z_t``, so every value has sd ``sigma``.

    Examples
    --------
    >>> e = ar1_noise(np.random.default_rng(0), 2, 200_000, 0.5, 2.0)
    >>> round(float(e.std()), 1), round(float(np.corrcoef(e)[0, 1]), 2)
    (2.0, 0.5)
    """
    if not 0 <= phi < 1:
        raise ValueError(f"phi must be in [0, 1), got {phi}")
    z = rng.normal(size=(n, n_draws))
    e = np.empty((n, n_draws))
    e[0] = z[0]
    innovation = np.sqrt(1 - phi**2)
    for t in range(1, n):
        e[t] = phi * e[t - 1] + innovation * z[t]
    return sigma * e
