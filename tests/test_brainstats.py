"""Noise ceiling, permutation null, FDR and bootstrap against planted truth and references."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from triphase.brain.statistics import block_permutation_test, block_permutations, bootstrap_score_ci, fdr_bh, fraction_significant, noise_ceiling
from signals import ar1
from triphase.brain.encoding import score_voxels




# --------------------------------------------------------------------------- noise ceiling


def test_noise_ceiling_recovers_planted_snr():
    rng = np.random.default_rng(0)
    n_repeats, n_trs, n_voxels = 4, 400, 1500
    signal_var = rng.uniform(0.0, 2.0, n_voxels)
    signal = ar1(rng, (n_trs, n_voxels)) * np.sqrt(signal_var)
    repeats = signal[None] + rng.standard_normal((n_repeats, n_trs, n_voxels))  # noise variance 1
    nc = noise_ceiling(repeats)
    true_cc_max = np.sqrt(signal_var / (signal_var + 1.0 / n_repeats))
    true_ev = signal_var / (signal_var + 1.0)
    assert np.corrcoef(nc.cc_max, true_cc_max)[0, 1] > 0.97
    assert np.abs(nc.cc_max - true_cc_max)[signal_var > 0.3].mean() < 0.03
    assert np.abs(nc.explainable_variance - true_ev).mean() < 0.04
    # CC_max is the correlation that the noise-free signal itself reaches on the repeat mean.
    r_signal = score_voxels(repeats.mean(0), signal)
    strong = signal_var > 0.3
    assert np.abs(nc.cc_max[strong] - r_signal[strong]).mean() < 0.03
    assert nc.n_repeats == n_repeats


def test_noise_ceiling_edge_cases():
    rng = np.random.default_rng(1)
    repeats = rng.standard_normal((3, 200, 4))  # pure noise
    repeats[:, :, 1] = 2.0  # constant voxel
    nc = noise_ceiling(repeats)
    assert np.isnan(nc.cc_max[1]) and np.isnan(nc.explainable_variance[1])
    finite = np.isfinite(nc.cc_max)
    assert np.all((nc.cc_max[finite] >= 0) & (nc.cc_max[finite] <= 1))
    with pytest.raises(ValueError, match="at least 2 repeats"):
        noise_ceiling(repeats[:1])
    with pytest.raises(ValueError, match="n_repeats, n_trs, n_voxels"):
        noise_ceiling(repeats[0])


# --------------------------------------------------------------------------- permutations


def test_permutation_pvalues_match_naive_loop():
    rng = np.random.default_rng(2)
    n_trs, n_voxels, block, n_perm, seed = 105, 6, 10, 200, 7  # 5 tail rows stay in place
    y_true = rng.standard_normal((n_trs, n_voxels))
    y_pred = 0.2 * y_true + rng.standard_normal((n_trs, n_voxels))
    pvals, null = block_permutation_test(y_true, y_pred, block=block, n_perm=n_perm, seed=seed, return_null=True)
    perms = block_permutations(n_trs // block, n_perm, seed)
    r_obs = score_voxels(y_true, y_pred)
    for v in range(n_voxels):
        naive_null = []
        for perm in perms:
            rows = np.concatenate([np.arange(b * block, (b + 1) * block) for b in perm] + [np.arange(100, n_trs)])
            naive_null.append(np.corrcoef(y_true[:, v], y_pred[rows, v])[0, 1])
        naive_null = np.array(naive_null)
        np.testing.assert_allclose(null[:, v], naive_null, atol=1e-10)
        expected_p = (1 + np.sum(naive_null >= r_obs[v] - 1e-12)) / (1 + n_perm)
        assert pvals[v] == pytest.approx(expected_p)


def test_permutation_false_positive_rate_under_null():
    rng = np.random.default_rng(3)
    n_trs, n_voxels = 300, 3000
    y_true = ar1(rng, (n_trs, n_voxels))
    y_pred = ar1(rng, (n_trs, n_voxels))
    pvals = block_permutation_test(y_true, y_pred, block=10, n_perm=1000, seed=0)
    false_positive_rate = np.mean(pvals <= 0.05)
    assert false_positive_rate <= 0.06
    assert false_positive_rate >= 0.03  # not vacuously conservative
    assert fraction_significant(pvals) < 0.01


def test_permutation_detects_signal_and_flags_constant_voxels():
    rng = np.random.default_rng(4)
    y = ar1(rng, (200, 5))
    pred = y + 0.5 * rng.standard_normal((200, 5))
    pred[:, 3] = 1.0
    pvals = block_permutation_test(y, pred, n_perm=500, seed=1)
    assert np.all(pvals[[0, 1, 2, 4]] == pytest.approx(1 / 501))
    assert np.isnan(pvals[3])
    with pytest.raises(ValueError, match="2 whole blocks"):
        block_permutation_test(y[:15], pred[:15], block=10)


# --------------------------------------------------------------------------- FDR


def test_fdr_matches_scipy_and_hand_example():
    # Hand example: sorted p = .001 .008 .039 .041 .042 .06 .074 .205, m = 8, q = .05
    # m p / rank = .008 .032 .104 .082 .0672 .08 .0846 .205 -> step-up: first two significant.
    p = np.array([0.042, 0.001, 0.205, 0.039, 0.008, 0.06, 0.041, 0.074])
    reject, adjusted = fdr_bh(p, q=0.05)
    np.testing.assert_array_equal(np.flatnonzero(reject), [1, 4])
    np.testing.assert_allclose(adjusted, scipy.stats.false_discovery_control(p, method="bh"))
    rng = np.random.default_rng(5)
    many = np.concatenate([rng.uniform(size=900), rng.uniform(0, 1e-3, 100)])
    np.testing.assert_allclose(fdr_bh(many)[1], scipy.stats.false_discovery_control(many, method="bh"))


def test_fdr_ignores_nan_and_validates():
    p = np.array([0.001, np.nan, 0.02, 0.9])
    reject, adjusted = fdr_bh(p)
    np.testing.assert_array_equal(reject, [True, False, True, False])
    np.testing.assert_allclose(adjusted[[0, 2, 3]], scipy.stats.false_discovery_control(p[[0, 2, 3]]))
    assert np.isnan(adjusted[1])
    assert fraction_significant(p) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="q must"):
        fdr_bh(p, q=1.5)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_planted_mean_r():
    rng = np.random.default_rng(6)
    # Percentile block bootstrap: about 0.92 coverage at nominal 0.95 in this setting (150 datasets).
    n_trs, n_voxels, n_datasets = 300, 60, 100
    noise_sd = rng.uniform(0.5, 2.0, n_voxels)
    true_mean_r = np.mean(1 / np.sqrt(1 + noise_sd**2))  # corr(s, s + noise) for unit-variance s
    covered = 0
    for i in range(n_datasets):
        signal = ar1(rng, (n_trs, n_voxels), phi=0.3)
        measured = signal + noise_sd * ar1(rng, (n_trs, n_voxels), phi=0.3)
        res = bootstrap_score_ci(measured, signal, block=10, n_boot=300, seed=i)
        covered += res.ci_low <= true_mean_r <= res.ci_high
        if i == 0:
            assert res.replicates.shape == (300,)
            assert res.estimate == pytest.approx(np.mean(score_voxels(measured, signal)))
            assert res.ci_low < res.estimate < res.ci_high
    assert covered / n_datasets >= 0.85


def test_bootstrap_excludes_invalid_voxels():
    rng = np.random.default_rng(7)
    y = rng.standard_normal((100, 4))
    pred = y + rng.standard_normal((100, 4))
    pred[:, 2] = 0.0
    res = bootstrap_score_ci(y, pred, n_boot=50)
    assert np.isfinite(res.replicates).all()
    assert res.estimate == pytest.approx(np.nanmean(score_voxels(y, pred)))
