"""Noise ceiling, permutation null, FDR and bootstrap against planted truth and references."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from signals import ar1
from triphase.brain.encoding import score_voxels
from triphase.brain.statistics import (
    allowed_shifts,
    ar1_series,
    block_permutation_test,
    block_permutations,
    bootstrap_block_counts,
    bootstrap_region_scores,
    bootstrap_score_ci,
    choose_block_length,
    circular_shift_test,
    fdr_bh,
    fraction_significant,
    mean_autocorrelation,
    noise_ceiling,
    split_half_ceiling,
)


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


@pytest.mark.parametrize("phi", [0.4, 0.6])
def test_bootstrap_ci_covers_planted_mean_r(phi):
    """Basic block-bootstrap interval, block length chosen from the data, AR(1) signal and noise.

    Measured (100 datasets x 60 voxels, 200 TRs): coverage 0.95 at phi 0.4 and 0.91-0.93 at phi 0.7;
    at phi 0.9 it falls to ~0.8 (about 20 effective samples), which the methods page states.
    """
    rng = np.random.default_rng(6)
    n_trs, n_voxels, n_datasets = 200, 60, 100
    noise_sd = rng.uniform(0.5, 2.0, n_voxels)
    true_mean_r = np.mean(1 / np.sqrt(1 + noise_sd**2))  # corr(s, s + noise) for unit-variance s
    covered = 0
    for i in range(n_datasets):
        signal = ar1_series(rng, (n_trs, n_voxels), phi)
        measured = signal + noise_sd * ar1_series(rng, (n_trs, n_voxels), phi)
        block = choose_block_length(measured)
        res = bootstrap_score_ci(measured, signal, block=block, n_boot=300, seed=i)
        covered += res.ci_low <= true_mean_r <= res.ci_high
        if i == 0:
            assert res.replicates.shape == (300,)
            assert res.estimate == pytest.approx(np.mean(score_voxels(measured, signal)))
            assert res.ci_low < res.estimate < res.ci_high
            # basic interval: the replicates' quantiles reflected about the estimate
            q_low, q_high = np.quantile(res.replicates, [0.025, 0.975])
            assert res.ci_low == pytest.approx(2 * res.estimate - q_high)
            assert res.ci_high == pytest.approx(2 * res.estimate - q_low)
    assert covered / n_datasets >= 0.9


def test_bootstrap_draws_are_shared_and_paired():
    """Same (n_trs, block, n_boot, seed): same draws, so replicates of two predictions are paired."""
    counts = bootstrap_block_counts(203, 10, n_boot=50, seed=3)
    assert counts.shape == (50, 21) and (counts.sum(axis=1) == 21).all()
    np.testing.assert_array_equal(counts, bootstrap_block_counts(203, 10, n_boot=50, seed=3))
    assert not np.array_equal(counts, bootstrap_block_counts(203, 10, n_boot=50, seed=4))
    rng = np.random.default_rng(8)
    truth = ar1(rng, (203, 40))
    measured = truth + 2.0 * ar1(rng, (203, 40))
    early = truth + 1.5 * rng.standard_normal((203, 40))  # two "checkpoints" predicting the same test data
    late = truth + 1.0 * rng.standard_normal((203, 40))
    a = bootstrap_score_ci(measured, early, block=10, n_boot=400, seed=3)
    b = bootstrap_score_ci(measured, late, block=10, n_boot=400, seed=3)
    explicit = bootstrap_score_ci(measured, late, block=10, seed=3, counts=bootstrap_block_counts(203, 10, 400, 3))
    np.testing.assert_array_equal(b.replicates, explicit.replicates)
    # Paired replicates move together (the test blocks drive both), so the difference is far more precise
    # than two independent intervals suggest.
    assert np.corrcoef(a.replicates, b.replicates)[0, 1] > 0.5
    assert np.std(b.replicates - a.replicates) < 0.8 * np.hypot(np.std(a.replicates), np.std(b.replicates))
    with pytest.raises(ValueError, match="counts has shape"):
        bootstrap_score_ci(measured, late, block=20, counts=counts)  # 11 blocks of 20 TRs, not 21


def test_bootstrap_excludes_invalid_voxels():
    rng = np.random.default_rng(7)
    y = rng.standard_normal((100, 4))
    pred = y + rng.standard_normal((100, 4))
    pred[:, 2] = 0.0
    res = bootstrap_score_ci(y, pred, n_boot=50)
    assert np.isfinite(res.replicates).all()
    assert res.estimate == pytest.approx(np.nanmean(score_voxels(y, pred)))


def _resampled_mean_r(y_true, y_pred, counts_row, block, mask):
    """Reference: materialise one replicate's rows and average np.corrcoef's r over the mask."""
    n_trs = y_true.shape[0]
    rows = np.concatenate([np.arange(b * block, min((b + 1) * block, n_trs))
                           for b, k in enumerate(counts_row) for _ in range(int(k))])
    rs = [np.corrcoef(y_true[rows, v], y_pred[rows, v])[0, 1] for v in np.flatnonzero(mask)]
    return np.nanmean(rs)


def test_region_bootstrap_matches_materialised_replicates():
    """Several voxel sets in one pass equal, replicate by replicate, r recomputed on explicitly resampled rows."""
    rng = np.random.default_rng(11)
    n_trs, n_voxels, block = 97, 12, 10
    truth = ar1(rng, (n_trs, n_voxels))
    measured = truth + rng.standard_normal((n_trs, n_voxels))
    predicted = truth + 1.5 * rng.standard_normal((n_trs, n_voxels))
    predicted[:, 5] = 1.0  # a constant prediction: left out of every set it belongs to
    predicted[:, 9] = 0.0  # varies in one block only: constant in the replicates that do not draw it
    predicted[30:40, 9] = rng.standard_normal(10)
    sets = {"all": np.ones(n_voxels, bool), "odd": np.arange(n_voxels) % 2 == 1,
            "first": np.arange(n_voxels) < 4, "one": np.arange(n_voxels) == 7}
    counts = bootstrap_block_counts(n_trs, block, n_boot=30, seed=2)
    assert (counts[:, 3] == 0).any() and (counts[:, 3] > 0).any()
    result = bootstrap_region_scores(measured, predicted, sets, counts, block=block)
    assert list(result) == list(sets)
    for name, mask in sets.items():
        usable = mask & (np.arange(n_voxels) != 5)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = [_resampled_mean_r(measured, predicted, row, block, usable) for row in counts]
        np.testing.assert_allclose(result[name].replicates, expected, rtol=1e-9, atol=1e-12)
        assert result[name].estimate == pytest.approx(np.nanmean(score_voxels(measured, predicted)[usable]))
        single = bootstrap_score_ci(measured, predicted, block=block, voxels=mask, counts=counts)
        np.testing.assert_allclose(single.replicates, result[name].replicates, rtol=1e-12)
    with pytest.raises(ValueError, match="no valid voxel.*'const'"):
        bootstrap_region_scores(measured, predicted, {"const": np.arange(n_voxels) == 5}, counts, block=block)


# --------------------------------------------------------------------------- block length


@pytest.mark.parametrize("phi, expected", [(0.3, 10), (0.9, 22)])
def test_block_length_follows_the_autocorrelation(phi, expected):
    rng = np.random.default_rng(9)
    y = ar1_series(rng, (3000, 60), phi)
    # rho(k) = phi^k: below 0.1 from k = 2 (0.3, so the 10-TR minimum) and k = 22 (0.9: 0.9^21 = 0.109,
    # 0.9^22 = 0.098)
    acf = mean_autocorrelation(y, 25)
    np.testing.assert_allclose(acf[:6], phi ** np.arange(6), atol=0.03)
    assert choose_block_length(y) == expected
    assert choose_block_length(y[:120]) <= 120 // 8  # at least 8 blocks remain
    with pytest.raises(ValueError, match="too short"):
        choose_block_length(y[:50])


# --------------------------------------------------------------------------- circular-shift test


def test_circular_shift_null_matches_naive_rolls():
    rng = np.random.default_rng(10)
    n_trs, min_shift = 90, 12
    y_true = ar1(rng, (n_trs, 5))
    y_pred = 0.3 * y_true + ar1(rng, (n_trs, 5))
    y_pred[:, 4] = 2.0  # constant: NaN
    res = circular_shift_test(y_true, y_pred, min_shift=min_shift)
    shifts = allowed_shifts(n_trs, min_shift)
    assert res.n_shifts == shifts.size == n_trs - 2 * min_shift + 1
    for v in range(4):
        rolled = np.array([np.corrcoef(np.roll(y_true[:, v], -s), y_pred[:, v])[0, 1] for s in shifts])
        sd = np.sqrt(np.mean(rolled**2))
        assert res.null_sd[v] == pytest.approx(sd, rel=1e-9)
        assert res.r[v] == pytest.approx(np.corrcoef(y_true[:, v], y_pred[:, v])[0, 1])
        df = max(2 / 3 / sd**2, 1.0)
        assert res.pvalues[v] == pytest.approx(scipy.stats.t.sf(res.r[v] / sd, df))
    assert np.isnan(res.pvalues[4]) and np.isnan(res.r[4])
    assert allowed_shifts(n_trs, min_shift, n_shifts=5).size == 5


def test_circular_shift_pvalues_are_not_floor_limited():
    """A strong signal gets p far below 1/(1 + n_perm), so BH-FDR is never decided by resolution."""
    rng = np.random.default_rng(11)
    y = ar1(rng, (200, 30))
    pred = y + rng.standard_normal((200, 30))
    res = circular_shift_test(y, pred, min_shift=10)
    assert (res.pvalues < 1e-4).all()  # ten times below the floor of 1,000 permutations
    # With 270 null voxels beside them, every signal voxel survives BH.
    reject, _ = fdr_bh(np.concatenate([res.pvalues, rng.uniform(size=270)]))
    assert reject[:30].all() and reject[30:].mean() < 0.05


# --------------------------------------------------------------------------- split-half ceiling


def test_split_half_ceiling_normalises_a_perfect_model_to_one():
    """Planted signal in 300 of 1,500 voxels: a perfect prediction scores ~1 over the chosen voxels."""
    rng = np.random.default_rng(12)
    n_repeats, n_trs, n_voxels, n_signal = 4, 300, 1500, 300
    power = np.zeros(n_voxels)
    power[:n_signal] = rng.uniform(0.3, 2.0, n_signal)
    signal = ar1(rng, (n_trs, n_voxels)) * np.sqrt(power)
    repeats = signal[None] + np.stack([ar1(rng, (n_trs, n_voxels), phi=0.4) for _ in range(n_repeats)])
    split = split_half_ceiling(repeats)
    chosen = split.selected
    assert chosen[:n_signal].mean() > 0.9
    assert chosen[n_signal:].mean() < 0.01  # FDR 5%: at most a handful of noise voxels
    true_cc = np.sqrt(power / (power + 1.0 / n_repeats))
    r_perfect = np.nan_to_num(score_voxels(repeats.mean(0), signal))  # a constant prediction on noise voxels: 0
    normalised = r_perfect[chosen].mean() / split.cc_max[chosen].mean()
    assert normalised == pytest.approx(1.0, abs=0.05)
    assert split.cc_max[chosen].mean() == pytest.approx(true_cc[chosen].mean(), abs=0.03)
    # The all-voxel ratio of the old score is deflated by the clipped ceilings of noise voxels.
    all_voxels = noise_ceiling(repeats).cc_max
    assert np.nanmean(r_perfect) / np.nanmean(all_voxels) < 0.7
    with pytest.raises(ValueError, match="at least 4 repeats"):
        split_half_ceiling(repeats[:3])
