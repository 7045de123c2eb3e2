"""Internal-state measures against closed forms, planted ground truth and reference implementations."""
from __future__ import annotations

import numpy as np
import pytest

from triphase.internal import measures as internal


def _embedded_gaussian(n, d, ambient, seed):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, d)))  # orthonormal d-frame in the ambient space
    return rng.standard_normal((n, d)) @ basis.T + rng.standard_normal(ambient)


# --------------------------------------------------------------------------- TwoNN
@pytest.mark.parametrize("d", [2, 5, 10])
@pytest.mark.parametrize("method", ["fit", "mle"])
def test_twonn_recovers_dimension_of_embedded_gaussian(d, method):
    x = _embedded_gaussian(2000, d, 40, seed=d)
    estimate = internal.twonn_dimension(x, method=method)
    assert abs(estimate - d) <= 0.1 * d, (d, method, estimate)


def test_twonn_ignores_duplicates_and_sees_no_dimension_in_a_line():
    rng = np.random.default_rng(0)
    line = np.outer(rng.standard_normal(1000), rng.standard_normal(8))
    assert internal.twonn_dimension(line) == pytest.approx(1.0, rel=0.1)
    with_duplicates = np.concatenate([line, line[:300]])  # identical points: r1 = 0 must not break the ratio
    assert internal.twonn_dimension(with_duplicates) == pytest.approx(internal.twonn_dimension(line))


def test_two_nearest_distances_matches_scipy_in_blocks(monkeypatch):
    from scipy.spatial import cKDTree

    x = np.random.default_rng(1).standard_normal((130, 3))
    monkeypatch.setattr(internal, "DISTANCE_BLOCK", 17)  # several blocks, the last one partial
    ours = internal.two_nearest_distances(x)
    reference, _ = cKDTree(x).query(x, k=3)
    np.testing.assert_allclose(ours, reference[:, 1:], rtol=1e-9)


def test_twonn_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        internal.twonn_dimension(np.eye(5), method="median")
    with pytest.raises(ValueError, match="2-D"):
        internal.twonn_dimension(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        internal.twonn_dimension(np.full((5, 2), np.nan))


# --------------------------------------------------------------------------- PCA
def _exact_spectrum(eigenvalues, n, ambient, seed=0):
    """Points whose sample covariance has exactly the given eigenvalues (others 0)."""
    rng = np.random.default_rng(seed)
    k = len(eigenvalues)
    scores = rng.standard_normal((n, k))
    scores -= scores.mean(axis=0)
    q, _ = np.linalg.qr(scores)  # orthonormal, centred columns
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, k)))
    return (q * np.sqrt((n - 1) * np.asarray(eigenvalues))) @ basis.T


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_participation_ratio_of_isotropic_data_is_k(k):
    x = _embedded_gaussian(20000, k, 40, seed=k)
    assert internal.participation_ratio(x) == pytest.approx(k, rel=0.03)
    assert internal.participation_ratio(_exact_spectrum(np.ones(k), 500, 40)) == pytest.approx(k, rel=1e-9)


def test_pca_spectrum_ratio_and_components_on_planted_eigenvalues():
    eigenvalues = np.array([5.0, 3.0, 1.0, 0.5, 0.5])
    x = _exact_spectrum(eigenvalues, 300, 12)
    np.testing.assert_allclose(internal.pca_eigenvalues(x)[:5], eigenvalues, rtol=1e-9)
    assert internal.participation_ratio(x) == pytest.approx(eigenvalues.sum() ** 2 / np.sum(eigenvalues ** 2))
    # cumulative shares 0.5, 0.8, 0.9, 0.95, 1.0
    assert internal.n_components_for_variance(x, 0.5) == 1
    assert internal.n_components_for_variance(x, 0.85) == 3
    assert internal.n_components_for_variance(x, 0.9) == 3
    assert internal.n_components_for_variance(x, 0.91) == 4
    assert internal.n_components_for_variance(x, 1.0) == 5
    # fewer points than dimensions: the Gram-matrix path gives the same spectrum
    wide = _exact_spectrum(eigenvalues, 20, 64)
    np.testing.assert_allclose(internal.pca_eigenvalues(wide)[:5], eigenvalues, rtol=1e-9)
    assert internal.pca_eigenvalues(wide).shape == (20,)


def test_principal_components_keep_the_planted_spectrum():
    eigenvalues = np.array([5.0, 3.0, 1.0, 0.5, 0.5])
    x = _exact_spectrum(eigenvalues, 300, 40)
    scores = internal.principal_components(x, 3)
    np.testing.assert_allclose(np.var(scores, axis=0, ddof=1), eigenvalues[:3], rtol=1e-6)
    assert internal.principal_components(x[:, :2], 3).shape == (300, 2)


# --------------------------------------------------------------------------- CKA
def _cka_reference(x, y):
    """CKA through the centring matrix H (Kornblith et al. 2019, eq. 1-2)."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_identity_rotation_scaling():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    rotation, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert internal.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert internal.linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-12)
    assert internal.linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert internal.linear_cka(x, 0.1 * x @ rotation + 3.0) == pytest.approx(1.0, abs=1e-12)  # shifts are centred away
    y = rng.standard_normal((300, 9))
    assert internal.linear_cka(x, y) == pytest.approx(internal.linear_cka(x @ rotation, 2 * y), rel=1e-10)


def test_cka_near_zero_for_independent_matrices():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4000, 20)), rng.standard_normal((4000, 20))
    # expectation ~ sqrt(p1 p2) / sqrt((n + p1)(n + p2)) = 0.005
    assert internal.linear_cka(x, y) < 0.02
    assert internal.linear_cka(x, x[:, :10]) > 0.5  # while shared structure is seen


@pytest.mark.parametrize("n, d1, d2", [(60, 5, 8), (40, 100, 70)])  # feature-space and Gram-matrix paths
def test_cka_matches_centring_matrix_reference(n, d1, d2):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d1))
    y = x[:, :1] @ rng.standard_normal((1, d2)) + rng.standard_normal((n, d2))
    assert internal.linear_cka(x, y) == pytest.approx(_cka_reference(x, y), rel=1e-10)


def test_cka_rejects_mismatched_points():
    with pytest.raises(ValueError, match="same points"):
        internal.linear_cka(np.ones((4, 2)), np.ones((5, 2)))


# --------------------------------------------------------------------------- anisotropy, norm
def test_anisotropy_equals_brute_force_mean_cosine():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6)) + 2.0
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosines = units @ units.T
    brute = cosines[~np.eye(50, dtype=bool)].mean()
    assert internal.anisotropy(x) == pytest.approx(brute, rel=1e-12)
    assert internal.anisotropy(np.tile([[1.0, 2.0]], (5, 1))) == pytest.approx(1.0)
    assert internal.mean_norm(x) == pytest.approx(np.linalg.norm(x, axis=1).mean())


# --------------------------------------------------------------------------- attention entropy
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_uniform_attention_entropy_is_log_n(n):
    assert internal.attention_entropy(np.full((1, n), 1.0 / n))[0] == pytest.approx(np.log(n), abs=1e-12)


def test_causal_uniform_attention_row_i_has_entropy_log_i_plus_1():
    n = 9
    causal = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(internal.attention_entropy(causal), np.log(np.arange(1, n + 1)), atol=1e-12)
    pattern = np.stack([causal, np.eye(n)])[None]  # (batch 1, heads 2, n, n); head 2 is one-hot: entropy 0
    mean = internal.mean_attention_entropy(pattern)
    np.testing.assert_allclose(mean, [np.log(np.arange(1, n + 1)).mean(), 0.0], atol=1e-12)
    mask = np.zeros((1, n), dtype=bool)
    mask[0, 4:] = True
    np.testing.assert_allclose(internal.mean_attention_entropy(pattern, mask)[0], np.log(np.arange(5, n + 1)).mean())


def test_attention_entropy_rejects_non_distributions():
    with pytest.raises(ValueError, match="probability"):
        internal.attention_entropy(np.ones((2, 3)))


# --------------------------------------------------------------------------- induction
def test_prefix_matching_targets_on_repeats():
    tokens = internal.repeated_random_tokens(3, 6, range(50), seed=1)
    assert tokens.shape == (3, 12)
    assert all(len(set(row[:6])) == 6 for row in tokens)
    targets = internal.prefix_matching_targets(tokens)
    np.testing.assert_array_equal(targets[:, :6], -1)
    np.testing.assert_array_equal(targets[:, 6:], np.tile(np.arange(1, 7), (3, 1)))


def _induction_pattern(tokens):
    """A perfect induction head: all attention on the token after the previous occurrence (else on itself)."""
    batch, n = tokens.shape
    targets = internal.prefix_matching_targets(tokens)
    attention = np.zeros((batch, 1, n, n))
    for b in range(batch):
        for q in range(n):
            attention[b, 0, q, targets[b, q] if targets[b, q] >= 0 else q] = 1.0
    return attention


@pytest.mark.parametrize("length", [4, 16, 32])
def test_induction_score_is_one_for_induction_head_and_closed_form_for_uniform(length):
    tokens = internal.repeated_random_tokens(5, length, range(1000), seed=length)
    n = 2 * length
    uniform = np.broadcast_to(np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None], (5, 1, n, n))
    previous_token = np.broadcast_to(np.eye(n, k=-1) + np.eye(n) * (np.arange(n) == 0)[:, None], (5, 1, n, n))
    attention = np.concatenate([_induction_pattern(tokens), uniform, previous_token], axis=1)
    scores = internal.prefix_matching_score(attention, tokens)
    # uniform causal attention from query q puts 1 / (q + 1) on each key: mean over q = T .. 2T - 1
    closed_form = np.mean(1.0 / (np.arange(length, 2 * length) + 1))
    np.testing.assert_allclose(scores, [1.0, closed_form, 0.0], atol=1e-12)


def test_repeat_losses_split_first_and_second_repeat():
    losses = np.array([[3.0, 3.0, 3.0, 0.5, 0.5, 0.5, 0.5]])  # length 4: 3 targets in repeat 1, 4 in repeat 2
    assert internal.repeat_losses(losses, 4) == (3.0, 0.5)
    with pytest.raises(ValueError, match="token_losses"):
        internal.repeat_losses(losses, 3)


# --------------------------------------------------------------------------- probes
def _planted_classes(n=1200, k=4, d=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    means = 2.0 * rng.standard_normal((k, d))
    x = means[labels] + rng.standard_normal((n, d))
    groups = rng.permutation(np.arange(n) // (n // 12))
    return x, labels, groups


def test_probe_accuracy_high_on_planted_labels_and_at_chance_when_shuffled():
    x, labels, groups = _planted_classes()
    assert internal.probe_accuracy(x, labels, groups) > 0.9
    for seed in range(3):
        shuffled = internal.probe_accuracy(x, labels, groups, shuffle=True, seed=seed)
        assert abs(shuffled - 0.25) < 0.05, shuffled  # 4 balanced classes: chance 1/4
    assert internal.chance_accuracy(labels) == pytest.approx(0.25)


def test_probe_r2_high_on_planted_target_and_near_zero_when_shuffled():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 8))
    target = x @ rng.standard_normal(8) + 0.5 * rng.standard_normal(1000)
    groups = np.arange(1000) // 100
    assert internal.probe_r2(x, target, groups) > 0.9
    assert abs(internal.probe_r2(x, target, groups, shuffle=True)) < 0.03


@pytest.mark.parametrize("n, d", [(400, 12), (150, 300)])  # the d x d and the n x n decompositions
def test_ridge_probes_match_scikit_learn(n, d):
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, d))
    target = x[:, :12] @ rng.standard_normal(12) + 3 * rng.standard_normal(n)
    labels = np.digitize(x[:, :3].sum(axis=1) + rng.standard_normal(n), [-1, 0, 1])
    groups = np.arange(n) // (n // 10)
    ours = internal.ridge_probes(x, {"r": ("regression", target), "c": ("classification", labels)}, groups)
    folds = GroupKFold(internal.PROBE_SPLITS)
    alphas = internal.PROBE_ALPHAS
    pred_r = cross_val_predict(make_pipeline(StandardScaler(), RidgeCV(alphas=alphas)), x, target, groups=groups, cv=folds)
    pred_c = cross_val_predict(make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=alphas)), x, labels,
                               groups=groups, cv=folds)
    r2 = 1 - np.sum((target - pred_r) ** 2) / np.sum((target - target.mean()) ** 2)
    assert ours["r"] == pytest.approx(r2, rel=1e-8)
    assert ours["c"] == pytest.approx(np.mean(pred_c == labels), abs=1e-12)


def test_probes_reject_bad_input():
    x = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match="held-out groups"):
        internal.probe_accuracy(x, np.arange(20) % 2, np.zeros(20))
    with pytest.raises(ValueError, match="constant"):
        internal.probe_r2(x, np.ones(20), np.arange(20) // 5)
    with pytest.raises(ValueError, match="kind"):
        internal.ridge_probes(x, {"y": ("ordinal", np.arange(20))}, np.arange(20) // 5)
