"""Low-level baseline and the model's unique variance (banded ridge), checked on planted ground truth."""
from __future__ import annotations

import numpy as np
import pytest
from himalaya.ridge import BandedRidgeCV
from himalaya.scoring import r2_score

from triphase.brain.baseline import (
    PHONEME_RATE,
    VOXEL_COLUMNS,
    JointRidgeCV,
    baseline_columns,
    baseline_design,
    baseline_features,
    dataset_phone_times,
    heldout_r2,
    unique_variance,
    word_baseline_features,
)
from triphase.brain.encoding import fit_encoding_model, leave_stories_out_splits, using_backend
from triphase.brain.timeseries import lanczos_downsample, trim, zscore
from triphase.datasets._base import WordTimings

N_STORIES, N_TRS, N_VOXELS = 6, 120, 60
#: Voxels 0-19: baseline only; 20-39: baseline + model; 40-59: noise only.
BASELINE_ONLY, MIXED, NOISE = slice(0, 20), slice(20, 40), slice(40, 60)
#: Tolerance on the recovered unique variance (R^2 units) for 600 training TRs and 120 test TRs.
TOLERANCE = 0.06


def _timings(story="s", n_words=60, seed=0):
    rng = np.random.default_rng(seed)
    onsets = np.cumsum(rng.uniform(0.2, 0.6, n_words)) + 2.0
    words = tuple(rng.choice(["a", "fox", "little", "river", "sang"], n_words))
    return WordTimings(story, words, onsets, onsets + 0.15, tr_times=np.arange(20) * 2.0 + 1.0, trim=(2, 2))


def test_baseline_features_are_lanczos_downsampled_word_rate_length_and_phone_rate():
    t = _timings()
    design = baseline_features(t)
    assert design.shape == (t.n_rows, 2)
    per_word = word_baseline_features(t.words)
    assert per_word[:, 0].tolist() == [1.0] * len(t.words)
    assert per_word[:, 1].tolist() == [float(len(w)) for w in t.words]
    # Same route as the model's features: Lanczos sum at the TR times, trim, z-score within the story.
    expected = zscore(trim(lanczos_downsample(per_word, t.midpoints, t.tr_times), *t.trim))
    np.testing.assert_allclose(design, expected, atol=1e-12)
    phones = np.sort(np.concatenate([t.onsets + 0.05, t.onsets + 0.1]))
    with_phones = baseline_features(t, phones)
    assert with_phones.shape == (t.n_rows, 3) and baseline_columns(True)[2] == PHONEME_RATE
    np.testing.assert_allclose(with_phones[:, 2],
                               zscore(trim(lanczos_downsample(np.ones(phones.size), phones, t.tr_times), *t.trim)))
    with pytest.raises(ValueError, match="phone_times"):
        baseline_features(t, np.array([]))
    with pytest.raises(ValueError, match="lacks stories"):
        baseline_design({"s": t, "u": _timings("u", seed=1)}, {"s": phones})


def test_phone_times_come_from_the_dataset_when_it_has_them():
    class WithPhones:
        def phone_times(self, story):
            return [1.0, 2.0]

    assert dataset_phone_times(object(), ["s"]) is None
    assert dataset_phone_times(WithPhones(), ["s"])["s"].tolist() == [1.0, 2.0]


def _planted(model_scale, duplicate=False, seed=0):
    """Responses = baseline part + model part + unit noise, with known variance shares per voxel."""
    rng = np.random.default_rng(seed)
    stories = [f"s{i}" for i in range(N_STORIES)]
    baseline = {s: rng.standard_normal((N_TRS, 3)) for s in stories}
    own = {s: rng.standard_normal((N_TRS, 8)) for s in stories}
    model = {s: np.concatenate([baseline[s], rng.standard_normal((N_TRS, 5))], axis=1) for s in stories} \
        if duplicate else own
    w_base = rng.standard_normal((3, N_VOXELS)) / np.sqrt(3)
    w_base[:, NOISE] = 0
    w_model = rng.standard_normal((8, N_VOXELS)) / np.sqrt(8) * model_scale
    w_model[:, BASELINE_ONLY] = 0
    w_model[:, NOISE] = 0
    responses = {s: baseline[s] @ w_base + own[s] @ w_model + rng.standard_normal((N_TRS, N_VOXELS))
                 for s in stories}
    if duplicate:
        responses = {s: baseline[s] @ w_base + rng.standard_normal((N_TRS, N_VOXELS)) for s in stories}
    # True share of the model part in the variance of a mixed voxel: var(model) / (var(base) + var(model) + 1).
    var_base = (w_base**2).sum(0)
    var_model = (w_model**2).sum(0)
    true_unique = var_model / (var_base + var_model + 1.0)
    return stories, baseline, model, responses, true_unique


def test_unique_variance_recovers_the_planted_model_share():
    stories, baseline, model, responses, true_unique = _planted(model_scale=1.0)
    result = unique_variance(responses, stories[:-1], stories[-1:], baseline, model, delays=(0,), n_splits=5,
                             region_masks={"mixed": np.arange(N_VOXELS) // 20 == 1})
    voxels = result.voxels
    assert list(voxels.columns) == list(VOXEL_COLUMNS) and len(voxels) == N_VOXELS
    # Mean over the mixed voxels: the planted share (about 0.4) within tolerance.
    recovered = voxels["r2_unique"].to_numpy()[MIXED].mean()
    assert abs(recovered - true_unique[MIXED].mean()) < TOLERANCE, (recovered, true_unique[MIXED].mean())
    # Baseline-only and noise voxels: the model adds nothing.
    assert abs(voxels["r2_unique"].to_numpy()[BASELINE_ONLY].mean()) < TOLERANCE / 2
    assert abs(voxels["r2_unique"].to_numpy()[NOISE].mean()) < TOLERANCE / 2
    # The joint model explains the mixed voxels far better than the baseline alone.
    assert voxels["r_joint"].to_numpy()[MIXED].mean() > voxels["r_baseline"].to_numpy()[MIXED].mean() + 0.2
    regions = result.regions.set_index("region")
    assert list(regions.index) == ["all", "mixed"]
    np.testing.assert_allclose(regions.loc["mixed", "r2_unique"], recovered)
    assert regions.loc["all", "n_valid"] == N_VOXELS
    assert result.n_baseline_features == 3 and result.n_model_features == 8
    # Band penalties per voxel: the baseline kept (small penalty) where it drives the voxel, shrunk away on noise.
    assert np.median(result.baseline_alphas[BASELINE_ONLY]) <= 1e2
    assert np.median(result.baseline_alphas[NOISE]) >= 1e4
    weight = voxels["model_band_weight"].to_numpy()
    np.testing.assert_allclose(weight, result.baseline_alphas / (result.baseline_alphas + result.model_alphas))
    assert np.median(weight[MIXED]) > np.median(weight[BASELINE_ONLY])


def test_a_model_band_that_duplicates_the_baseline_has_no_unique_variance():
    stories, baseline, model, responses, _ = _planted(model_scale=0.0, duplicate=True)
    result = unique_variance(responses, stories[:-1], stories[-1:], baseline, model, delays=(0,), n_splits=5)
    unique = result.voxels["r2_unique"].to_numpy()
    assert abs(unique[BASELINE_ONLY].mean()) < 0.02
    # The joint model is not worse than the baseline where the baseline explains something.
    assert result.voxels["r2_joint"].to_numpy()[BASELINE_ONLY].mean() > 0.3


def test_bad_input_and_bad_voxels():
    stories, baseline, model, responses, _ = _planted(model_scale=1.0)
    responses = {s: y.copy() for s, y in responses.items()}
    responses[stories[0]][:, 0] = np.nan
    result = unique_variance(responses, stories[:-1], stories[-1:], baseline, model, delays=(0,), n_splits=3)
    assert np.isnan(result.voxels.loc[0, "r2_unique"]) and result.regions.loc[0, "n_valid"] == N_VOXELS - 1
    with pytest.raises(ValueError, match="both train_stories and test_stories"):
        unique_variance(responses, stories, stories[-1:], baseline, model)
    with pytest.raises(KeyError, match="model lacks"):
        unique_variance(responses, stories[:-1], stories[-1:], baseline, {s: model[s] for s in stories[:2]})
    with pytest.raises(ValueError, match="baseline_alphas"):
        unique_variance(responses, stories[:-1], stories[-1:], baseline, model, baseline_alphas=[0.0])
    with pytest.raises(ValueError, match="alphas must"):
        unique_variance(responses, stories[:-1], stories[-1:], baseline, model, alphas=[np.inf])
    with pytest.raises(ValueError, match="NaN or inf"):
        unique_variance(responses, stories[:-1], stories[-1:], baseline, {s: m * np.nan for s, m in model.items()})
    np.testing.assert_allclose(heldout_r2(np.array([[1.0], [3.0]]), np.array([[1.0], [3.0]])), [1.0])


# --------------------------------------------------------------------------- the solver against references
def _small_problem(seed=0, n_rows=(50, 40, 45, 55), n_base=3, n_model=12, n_targets=7):
    """Stacked training rows of a few stories: baseline B, model X (partly collinear with B), responses Y."""
    rng = np.random.default_rng(seed)
    n = sum(n_rows)
    B = rng.standard_normal((n, n_base)) + 0.5
    X = np.concatenate([B @ rng.standard_normal((n_base, 2)), rng.standard_normal((n, n_model - 2))], axis=1) + 1.0
    Y = B @ rng.standard_normal((n_base, n_targets)) + X @ rng.standard_normal((n_model, n_targets)) * 0.3 \
        + rng.standard_normal((n, n_targets)) * 2.0 + 3.0
    cv = leave_stories_out_splits([(f"s{i}", k) for i, k in enumerate(n_rows)], len(n_rows))
    return B, X, Y, cv


def _closed_form(B, X, Y, baseline_alpha, alpha, B_new, X_new):
    """Joint ridge with an unpenalised intercept and band penalties, solved directly (normal equations)."""
    design = np.concatenate([B, X], axis=1)
    mean_design, mean_y = design.mean(0), Y.mean(0)
    centred = design - mean_design
    penalty = np.diag([baseline_alpha] * B.shape[1] + [alpha] * X.shape[1])
    weights = np.linalg.solve(centred.T @ centred + penalty, centred.T @ (Y - mean_y))
    return (np.concatenate([B_new, X_new], axis=1) - mean_design) @ weights + mean_y


def _himalaya_banded(alphas, baseline_alpha, cv):
    """himalaya's banded ridge with penalties (baseline_alpha, alpha) for each alpha: band weights 1 / penalty."""
    gammas = np.stack([np.full(alphas.size, 1.0 / baseline_alpha), 1.0 / alphas], axis=1)
    solver_params = {"n_iter": gammas, "alphas": np.array([1.0]), "score_func": r2_score, "local_alpha": True,
                     "progress_bar": False}
    return BandedRidgeCV(groups="input", solver="random_search", fit_intercept=True, cv=cv,
                         solver_params=solver_params)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_joint_ridge_is_the_closed_form_banded_ridge(backend):
    B, X, Y, cv = _small_problem()
    rng = np.random.default_rng(1)
    B_new, X_new = rng.standard_normal((20, B.shape[1])), rng.standard_normal((20, X.shape[1]))
    for baseline_alpha, alpha in [(1e-2, 1.0), (30.0, 1e3), (1e6, 0.1)]:
        with using_backend(backend):
            fit = JointRidgeCV([alpha], cv, [baseline_alpha]).fit(B, X, Y)
            baseline_only, joint = fit.predict(B_new, X_new)
        np.testing.assert_allclose(joint, _closed_form(B, X, Y, baseline_alpha, alpha, B_new, X_new), atol=1e-8)
        # The baseline model: the same ridge without the model band.
        no_model = _closed_form(B, X[:, :0], Y, baseline_alpha, alpha, B_new, X_new[:, :0])
        np.testing.assert_allclose(baseline_only, no_model, atol=1e-8)


def test_joint_ridge_cv_agrees_with_himalaya_banded_ridge():
    """Same splits, same R^2 criterion, penalties (baseline_alpha, alpha) as himalaya band weights 1 / penalty."""
    B, X, Y, cv = _small_problem(seed=2)
    alphas, baseline_alpha = np.logspace(-1, 4, 6), 1e-2
    ours = JointRidgeCV(alphas, cv, [baseline_alpha]).fit(B, X, Y)
    himalaya = _himalaya_banded(alphas, baseline_alpha, cv)
    with using_backend("numpy"):
        himalaya.fit([B, X], Y)
        chosen = 1.0 / np.exp(np.asarray(himalaya.deltas_)[1])
        np.testing.assert_allclose(ours.best_alphas_, chosen, rtol=1e-6)
        np.testing.assert_allclose(ours.cv_scores_, np.asarray(himalaya.cv_scores_).max(0), atol=1e-8)
        _, joint = ours.predict(B, X)
        np.testing.assert_allclose(joint, np.asarray(himalaya.predict([B, X])), atol=1e-6)


def test_unique_variance_r2_agrees_with_himalaya_when_the_baseline_penalty_is_small():
    B, X, Y, cv = _small_problem(seed=3)
    stories = ["s0", "s1", "s2", "s3", "test"]
    edges = np.cumsum([0, 50, 40, 45, 55])
    rng = np.random.default_rng(4)
    B_test, X_test = rng.standard_normal((60, B.shape[1])) + 0.5, rng.standard_normal((60, X.shape[1])) + 1.0
    weights = np.linalg.lstsq(np.concatenate([B, X], axis=1), Y, rcond=None)[0]
    Y_test = np.concatenate([B_test, X_test], axis=1) @ weights + rng.standard_normal((60, Y.shape[1])) * 2.0

    def split(A, A_test):
        return {**{s: A[edges[i]:edges[i + 1]] for i, s in enumerate(stories[:-1])}, "test": A_test}

    alphas, baseline_alpha = np.logspace(-1, 4, 6), 1e-3
    result = unique_variance(split(Y, Y_test), stories[:-1], ["test"], split(B, B_test), split(X, X_test),
                             alphas=alphas, baseline_alphas=[baseline_alpha], delays=(0,), n_splits=4)
    himalaya = _himalaya_banded(alphas, baseline_alpha, cv)
    with using_backend("numpy"):
        himalaya.fit([B, X], Y)
        expected = heldout_r2(Y_test, np.asarray(himalaya.predict([B_test, X_test])))
    # float32 in unique_variance, float64 in himalaya
    np.testing.assert_allclose(result.voxels["r2_joint"], expected, atol=1e-4)


def test_the_baseline_penalty_and_baseline_model_are_the_encoding_fit_of_the_baseline():
    """Step 1 of JointRidgeCV is the tested leave-stories-out ridge (R^2 criterion) on the baseline alone."""
    B, X, Y, cv = _small_problem(seed=5, n_targets=30)
    grid = np.logspace(-2, 8, 6)
    ours = JointRidgeCV([1.0, 100.0], cv, grid).fit(B, X, Y)
    stories = {f"s{i}": slice(train_val[1][0], train_val[1][-1] + 1) for i, train_val in enumerate(cv)}
    reference = fit_encoding_model({s: B[rows] for s, rows in stories.items()},
                                   {s: Y[rows] for s, rows in stories.items()},
                                   list(stories), alphas=grid, n_splits=len(cv), score="r2", dtype="float64")
    np.testing.assert_array_equal(ours.best_baseline_alphas_, reference.best_alphas_)
    baseline_only, _ = ours.predict(B, X)
    np.testing.assert_allclose(baseline_only, reference.predict(B), atol=1e-8)
    assert len({float(a) for a in ours.best_baseline_alphas_}) > 1  # the groups path is exercised


def test_float32_matches_float64_and_a_rank_deficient_baseline_is_handled():
    """Penalties chosen in float32 (the default) match a float64 run; collinear baseline columns are handled."""
    B, X, Y, cv = _small_problem(seed=6, n_model=40, n_targets=50)
    B = np.concatenate([B, B[:, :1]], axis=1)  # a duplicated baseline column: rank-deficient baseline
    grid, baseline_grid = np.logspace(-2, 8, 11), np.logspace(-2, 8, 6)
    double = JointRidgeCV(grid, cv, baseline_grid).fit(B, X, Y)
    single = JointRidgeCV(grid, cv, baseline_grid).fit(B, X.astype(np.float32), Y.astype(np.float32))
    np.testing.assert_allclose(single.cv_scores_, double.cv_scores_, atol=1e-4)
    np.testing.assert_allclose(single.predict(B, X)[1], double.predict(B, X)[1], rtol=1e-3, atol=1e-3)


def test_torch_backend_gives_the_numpy_result():
    stories, baseline, model, responses, _ = _planted(model_scale=1.0)
    results = [unique_variance(responses, stories[:-1], stories[-1:], baseline, model, delays=(0,), n_splits=5,
                               backend=backend).voxels for backend in ("numpy", "torch")]
    np.testing.assert_allclose(results[1].to_numpy(), results[0].to_numpy(), atol=1e-5)
