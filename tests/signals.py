"""Synthetic signals shared by the numerical tests."""
import numpy as np


def ar1(rng, shape, phi=0.5):
    """Unit-variance AR(1) series along axis 0 (fMRI-like autocorrelation)."""
    eps = rng.standard_normal(shape)
    out = np.empty(shape)
    out[0] = eps[0]
    for t in range(1, shape[0]):
        out[t] = phi * out[t - 1] + np.sqrt(1 - phi**2) * eps[t]
    return out
