"""Internal-state measures against closed forms, planted ground truth and reference implementations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from triphase._noise import ar1_noise
from triphase.internal import change_points
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


def _debiased_cka_reference(x, y):
    """Song et al. (2012)'s unbiased HSIC written out with n x n matrices (no centring of the data)."""
    def hsic(k, l):
        n = k.shape[0]
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _kornblith_unbiased_centring_cka(x, y):
    """Kornblith et al.'s reference code: unbiased centring of the Gram matrices, then CKA."""
    def centre(gram):
        n = gram.shape[0]
        gram = gram.copy()
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None] + means[None, :]
        np.fill_diagonal(gram, 0.0)
        return gram
    k, l = centre(x @ x.T), centre(y @ y.T)
    return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


@pytest.mark.parametrize("n, d1, d2", [(30, 4, 6), (25, 60, 40)])  # feature-space and Gram-matrix paths
def test_debiased_cka_matches_two_independent_references(n, d1, d2):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d1)) + 2.0  # uncentred on purpose: the estimator is shift-invariant
    y = x[:, :2] @ rng.standard_normal((2, d2)) + rng.standard_normal((n, d2))
    ours = internal.linear_cka(x, y)
    assert ours == pytest.approx(_debiased_cka_reference(x, y), rel=1e-9)
    assert ours == pytest.approx(_kornblith_unbiased_centring_cka(x, y), rel=1e-9)


@pytest.mark.parametrize("ratio", [1 / 16, 1 / 2, 2])
def test_debiased_cka_of_independent_matrices_is_zero_where_the_biased_one_is_not(ratio):
    n, n_sim = 128, 12
    d = int(ratio * n)
    rng = np.random.default_rng(int(ratio * 64))
    biased, debiased = [], []
    for _ in range(n_sim):
        x, y = rng.standard_normal((2, n, d))
        biased.append(internal.linear_cka(x, y, debiased=False))
        debiased.append(internal.linear_cka(x, y))
    se = np.std(debiased, ddof=1) / np.sqrt(n_sim)
    assert abs(np.mean(debiased)) < max(4 * se, 0.005)  # unbiased: E[HSIC_1] = 0 exactly
    # the biased estimator's closed-form approximation d / (n + d) for two independent d-dimensional matrices
    assert np.mean(biased) == pytest.approx(d / (n + d), abs=0.03)
    if ratio >= 1:
        assert 0.3 < np.mean(biased) < 0.7
    assert internal.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_null_table_has_goals_and_passes():
    table = internal.cka_null_table(ratios=(1 / 16, 2), n=96, n_sim=6, seed=1)
    assert list(table.columns) == ["ratio", "d", "n", "estimator", "mean", "sd", "mc_se", "goal", "pass"]
    assert table.loc[table["estimator"] == "debiased", "pass"].tolist() == [True, True]
    assert table.loc[table["estimator"] == "biased", "pass"].isna().all()
    biased_at_2 = table.query("estimator == 'biased' and ratio == 2")["mean"].item()
    assert biased_at_2 == pytest.approx(2 / 3, abs=0.03)
    with pytest.raises(ValueError, match="ratios"):
        internal.cka_null_table(ratios=(0,))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_identity_rotation_scaling(debiased):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    rotation, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    linear_cka = lambda a, b: internal.linear_cka(a, b, debiased=debiased)  # noqa: E731
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 0.1 * x @ rotation + 3.0) == pytest.approx(1.0, abs=1e-12)  # shifts are centred away
    y = rng.standard_normal((300, 9))
    assert linear_cka(x, y) == pytest.approx(linear_cka(x @ rotation, 2 * y), rel=1e-10)


def test_cka_near_zero_for_independent_matrices():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4000, 20)), rng.standard_normal((4000, 20))
    # expectation ~ sqrt(p1 p2) / sqrt((n + p1)(n + p2)) = 0.005
    assert internal.linear_cka(x, y, debiased=False) < 0.02
    assert internal.linear_cka(x, x[:, :10], debiased=False) > 0.5  # while shared structure is seen


@pytest.mark.parametrize("n, d1, d2", [(60, 5, 8), (40, 100, 70)])  # feature-space and Gram-matrix paths
def test_cka_matches_centring_matrix_reference(n, d1, d2):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d1))
    y = x[:, :1] @ rng.standard_normal((1, d2)) + rng.standard_normal((n, d2))
    assert internal.linear_cka(x, y, debiased=False) == pytest.approx(_cka_reference(x, y), rel=1e-10)
    assert internal.linear_cka(x, y) == pytest.approx(_debiased_cka_reference(x, y), rel=1e-9)


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


# --------------------------------------------------------------------------- probe control task
def test_control_task_gives_one_label_per_type_from_the_label_distribution():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 50, 5000)
    labels = np.where(rng.random(5000) < 0.7, "N", "V")
    control = internal.control_task_labels(labels, types, seed=1)
    for t in np.unique(types):
        assert len(set(control[types == t])) == 1
    per_type = np.array([control[types == t][0] for t in np.unique(types)])
    assert abs(np.mean(per_type == "N") - 0.7) < 0.2  # 50 draws from the 70/30 distribution
    assert not np.array_equal(control, internal.control_task_labels(labels, types, seed=2))
    with pytest.raises(ValueError, match="one length"):
        internal.control_task_labels(labels, types[:10])


def test_selectivity_zero_for_a_random_embedding_per_type_high_for_a_label_embedding():
    table = internal.probe_selectivity_random_embedding(d=96, n_sim=2, seed=3, n_types=200, n_stories=8,
                                                        words_per_story=120).set_index("representation")
    random = table.loc["random_per_type"]
    assert random["accuracy"] > 0.75  # memorising types suffices: the label is a function of the type
    assert abs(random["selectivity"]) < 0.05
    assert table.loc["encodes_label", "selectivity"] > 0.3
    assert table["pass"].all()


def test_selectivity_of_a_type_embedding_when_labels_vary_within_types():
    """Planted ground truth: labels independent of the type, states that only know the type: negative selectivity."""
    rng = np.random.default_rng(7)
    n, n_types = 1500, 60
    types = rng.integers(0, n_types, n)
    labels = rng.integers(0, 2, n)  # not a function of the type at all
    x_type = rng.standard_normal((n_types, 40))[types]
    groups = np.arange(n) // 150
    only_type = internal.probe_selectivity(x_type, labels, types, groups)
    assert only_type["score"] < 0.6  # the type says nothing about these labels
    assert only_type["control"] > 0.8  # while the per-type control labels are memorised
    assert only_type["selectivity"] < -0.25


# --------------------------------------------------------------------------- change points
def _table(curves: dict, n: int = 12, per_head: dict | None = None) -> pd.DataFrame:
    """A tidy internal table: measure -> {layer: values}; per_head: measure -> {(layer, head): values}."""
    rows = []
    for measure, by_layer in curves.items():
        for layer, values in by_layer.items():
            rows += [{"series": "s", "checkpoint": f"step{i}", "step": i, "tokens_seen": 100 * 2 ** i,
                      "tier": "embedded", "layer": layer, "head": -1, "measure": measure, "value": v}
                     for i, v in enumerate(values)]
    for measure, by_head in (per_head or {}).items():
        for (layer, head), values in by_head.items():
            rows += [{"series": "s", "checkpoint": f"step{i}", "step": i, "tokens_seen": 100 * 2 ** i,
                      "tier": "embedded", "layer": layer, "head": head, "measure": measure, "value": v}
                     for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_change_points_never_found_for_a_constant_measure():
    n = 12
    table = _table({"probe_pos_chance": {1: [0.4] * n, 2: [0.4] * n}, "anisotropy": {1: [0.3] * n},
                    "lm_loss_heldout": {-1: [2.0] * n}, "cka_previous": {1: [np.nan] + [0.99] * (n - 1)},
                    "induction_score_max": {1: [0.05] * n}})
    table = table.dropna(subset=["value"])
    result = change_points.internal_change_points(table, measures=sorted(set(table["measure"])))
    assert len(result) == 6  # one largest_change per measure, plus the induction onset
    assert not result["found"].any()
    assert (result["reason"] == "constant").all()


def test_change_points_noise_only_false_positive_rate_at_nominal_level():
    rng = np.random.default_rng(11)
    x = np.arange(23.0)
    n_sim, alpha = 300, 0.05
    for kind in ("level", "change"):
        found = [change_points.largest_change(x, 0.5 + 0.01 * rng.standard_normal(23), kind, alpha=alpha,
                                              n_null=199, n_boot=20, seed=i)["found"] for i in range(n_sim)]
        # at most nominal + 2 Monte-Carlo standard errors
        assert np.mean(found) <= alpha + 2 * np.sqrt(alpha * (1 - alpha) / n_sim), kind
    found = [change_points.onset(x, rng.standard_normal(23), alpha=alpha, n_null=199, n_boot=20, seed=i)["found"]
             for i in range(n_sim)]
    assert np.mean(found) <= alpha + 2 * np.sqrt(alpha * (1 - alpha) / n_sim)


def test_change_points_hold_their_level_under_ar1_noise_and_the_independent_null_does_not():
    """Slow noise (AR(1) phi 0.6, the assumed floor) at the organism's 23 checkpoints: the default AR(1) null keeps
    both tests at nominal 5 %; the independent null (null_phi=0) lets the onset test reject about 29 %."""
    x = np.arange(23.0)
    n_sim, alpha = 300, 0.05
    bound = alpha + 2 * np.sqrt(alpha * (1 - alpha) / n_sim)
    rates = change_points.false_positive_rates(x, phis=(0.6,), n_sim=n_sim, alpha=alpha, seed=3).set_index("boundary")
    assert rates.loc["largest_change", "rate"] <= bound and rates.loc["onset", "rate"] <= bound, rates
    curves = ar1_noise(np.random.default_rng(4), 23, n_sim, 0.6, 1.0).T
    naive = np.mean([change_points.onset(x, c, n_null=199, n_boot=0, seed=i, null_phi=0.0)["found"]
                     for i, c in enumerate(curves)])
    assert naive > 0.15
    with pytest.raises(ValueError, match="null_phi"):
        change_points.onset(x, curves[0], null_phi=1.0)
    # no bootstrap, no interval (and no error)
    result = change_points.largest_change(x, curves[0], n_boot=0)
    assert np.isnan(result["ci_low"]) and np.isnan(result["ci_high"])


def test_change_points_find_a_planted_jump_and_its_interval_covers_it():
    rng = np.random.default_rng(12)
    x = np.log10(100 * 2.0 ** np.arange(20))
    truth = (x[11] + x[12]) / 2
    covered, found = [], []
    for i in range(100):
        values = np.where(np.arange(20) >= 12, 1.0, 0.0) + 0.1 * rng.standard_normal(20)
        result = change_points.largest_change(x, values, n_null=199, n_boot=200, seed=i)
        found.append(result["found"] and result["x"] == pytest.approx(truth))
        covered.append(result["ci_low"] <= truth <= result["ci_high"])
    assert np.mean(found) > 0.9
    assert np.mean(covered) >= 0.95  # nominal 95 % interval
    # a smooth rise moves a lot but has no abrupt change
    smooth = 0.05 * np.arange(20.0) + 0.005 * rng.standard_normal(20)
    assert not change_points.largest_change(x, smooth, seed=0)["found"]


def test_change_points_lowest_similarity_is_the_change_of_a_previous_measure():
    x = np.arange(10.0)
    similarity = np.array([np.nan, 0.99, 0.98, 0.99, 0.4, 0.985, 0.99, 0.98, 0.99, 0.985])
    result = change_points.largest_change(x, similarity, kind="change")
    assert result["found"] and result["x"] == 3.5 and (result["ci_low"], result["ci_high"]) == (3.0, 4.0)


def test_change_points_keep_per_head_rows_apart_from_layer_means():
    n = 12
    step = [0.0] * 6 + [1.0] * 6
    flat = (0.2 + 0.001 * np.random.default_rng(3).standard_normal(n)).tolist()
    # the layer mean (head -1) is flat; one head jumps: averaging them together would invent a change
    table = _table({"attention_entropy": {1: flat, 2: flat}}, per_head={"attention_entropy": {(1, 0): step,
                                                                                              (1, 1): flat}})
    default = change_points.internal_change_points(table)
    assert default[["layer", "head"]].values.tolist() == [["mean", -1]]
    assert not default["found"].item()
    with_heads = change_points.internal_change_points(table, heads=True).set_index(["layer", "head"])
    assert with_heads.loc[("1", 0), "found"] and not with_heads.loc[("1", 1), "found"]
    assert not with_heads.loc[("mean", -1), "found"]
    each = change_points.internal_change_points(table, layer="each")
    assert each["layer"].tolist() == ["1", "2"]


def test_change_points_table_output_and_errors():
    n = 12
    rise = [0.05] * 6 + [0.6] * 6
    table = _table({"induction_score_max": {1: rise}, "probe_pos_accuracy_control": {1: rise}})
    result = change_points.internal_change_points(table)
    assert list(result.columns) == change_points.OUTPUT_COLUMNS + ["reason"]
    assert result["measure"].unique().tolist() == ["induction_score_max"]  # controls left out by default
    assert result["boundary"].tolist() == ["largest_change", "onset"]
    assert result["found"].all() and (result["ci_low"] <= result["x"]).all() and (result["x"] <= result["ci_high"]).all()
    with pytest.raises(ValueError, match="layer=7"):
        change_points.internal_change_points(table, layer=7)
    with pytest.raises(ValueError, match="lacks column"):
        change_points.internal_change_points(table.drop(columns="head"))
    with pytest.raises(ValueError, match="strictly increasing"):
        change_points.largest_change([0.0, 0.0, 1.0, 2.0, 3.0], np.arange(5.0))
    assert change_points.largest_change(np.arange(4.0), np.arange(4.0))["reason"].startswith("fewer than")
