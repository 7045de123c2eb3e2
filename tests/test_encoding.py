"""Encoding models: closed-form ridge, planted ground truth, null controls, bad voxels, scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from signals import ar1
from triphase.brain.encoding import DEFAULT_ALPHAS, BadVoxelWarning, brain_scores, fit_encoding_model, leave_stories_out_splits, score_voxels

BACKENDS = ["numpy", "torch"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)




def simulate(seed=0, n_train=5, n_trs=200, n_test_trs=300, n_true=20, n_distractor=10, n_voxels=300):
    """Stories whose responses are X_true @ W scaled per voxel, plus AR(1) noise.

    Returns designs (true + distractor features), responses, noise-free signals, train and test names.
    """
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((n_true, n_voxels)) / np.sqrt(n_true)
    amplitude = rng.uniform(0.0, 1.5, n_voxels)  # voxel SNR from 0 (noise only) to ~2
    names = [f"story{i}" for i in range(n_train)] + ["test"]
    X, Y, S = {}, {}, {}
    for name in names:
        n = n_test_trs if name == "test" else n_trs
        true = ar1(rng, (n, n_true))
        S[name] = true @ weights * amplitude
        Y[name] = S[name] + ar1(rng, (n, n_voxels))
        X[name] = np.hstack([true, ar1(rng, (n, n_distractor))])
    return X, Y, S, names[:-1], "test"


def test_splits_leave_whole_stories_out():
    rows = {"a": 3, "b": 4, "c": 2, "d": 5, "e": 1}
    splits = leave_stories_out_splits(rows, n_splits=3)
    assert len(splits) == 3
    story_of_row = np.repeat(list(rows), list(rows.values()))
    seen = []
    for train, val in splits:
        assert not set(story_of_row[train]) & set(story_of_row[val])
        assert len(train) + len(val) == sum(rows.values())
        seen.extend(val)
    assert sorted(seen) == list(range(sum(rows.values())))
    with pytest.raises(ValueError, match="at least 2 training stories"):
        leave_stories_out_splits({"a": 3})


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_alpha_matches_closed_form_ridge(backend):
    rng = np.random.default_rng(1)
    X = {f"s{i}": rng.standard_normal((40, 6)) + 3.0 for i in range(3)}
    Y = {k: x @ rng.standard_normal((6, 4)) + rng.standard_normal((40, 4)) + 5.0 for k, x in X.items()}
    alpha = 7.0
    model = fit_encoding_model(X, Y, ["s0", "s1"], alphas=[alpha], n_splits=2, backend=backend, dtype="float64")
    Xtr = np.vstack([X["s0"], X["s1"]])
    Ytr = np.vstack([Y["s0"], Y["s1"]])
    mx, my = Xtr.mean(0), Ytr.mean(0)
    Xc = Xtr - mx
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(6), Xc.T @ (Ytr - my))
    expected = (X["s2"] - mx) @ coef + my
    np.testing.assert_allclose(model.predict(X["s2"]), expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(model.best_alphas_, alpha)
    assert model.kind == "ridge"
    from himalaya.backend import get_backend

    assert get_backend().name == "numpy"  # the backend was restored


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_ridge_agrees_with_ridge(backend):
    X, Y, _, train, test = simulate(seed=2, n_train=3, n_trs=60, n_test_trs=60, n_voxels=40)
    kwargs = dict(alphas=np.logspace(-1, 4, 6), n_splits=3, backend=backend, dtype="float64")
    ridge = fit_encoding_model(X, Y, train, kind="ridge", **kwargs)
    kernel = fit_encoding_model(X, Y, train, kind="kernel_ridge", **kwargs)
    np.testing.assert_allclose(kernel.predict(X[test]), ridge.predict(X[test]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernel.cv_scores_, ridge.cv_scores_, atol=1e-6)
    # More features than samples: auto chooses the kernel form.
    wide = {k: np.hstack([x] * 8) for k, x in X.items()}
    assert fit_encoding_model(wide, Y, train, **kwargs).kind == "kernel_ridge"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_recovery(backend):
    X, Y, S, train, test = simulate(seed=3)
    model = fit_encoding_model(X, Y, train, backend=backend)
    r_hat = score_voxels(Y[test], model.predict(X[test]))
    r_true = score_voxels(Y[test], S[test])  # noise-free predictivity: corr(signal, signal + noise)
    assert np.corrcoef(r_hat, r_true)[0, 1] >= 0.9
    assert np.mean(r_true - r_hat) < 0.05  # little lost to estimation
    # Noise-only voxels pick large penalties, strong voxels small ones.
    snr_order = np.argsort(r_true)
    assert np.median(model.best_alphas_[snr_order[:30]]) > np.median(model.best_alphas_[snr_order[-30:]])
    # Training CV scores rank voxels like the test does (this is what top-10% selection uses).
    assert np.corrcoef(model.cv_scores_, r_true)[0, 1] > 0.9
    assert model.best_alphas_.shape == (Y[test].shape[1],)
    assert set(np.unique(model.best_alphas_)) <= set(DEFAULT_ALPHAS)  # exact grid values


def test_gaussian_noise_design_scores_zero():
    X, Y, _, train, test = simulate(seed=4, n_test_trs=1500, n_voxels=1000)
    rng = np.random.default_rng(40)
    noise = {k: rng.standard_normal(x.shape) for k, x in X.items()}
    model = fit_encoding_model(noise, Y, train)
    r = score_voxels(Y[test], model.predict(noise[test]))
    assert abs(np.nanmean(r)) <= 0.02


def test_features_from_another_story_score_zero():
    X, Y, _, train, test = simulate(seed=5, n_test_trs=1500, n_voxels=1000)
    model = fit_encoding_model(X, Y, train)
    aligned = score_voxels(Y[test], model.predict(X[test]))
    # Features of a different story (another draw of the same generative process), time-misaligned.
    other, _, _, _, other_test = simulate(seed=50, n_test_trs=1500, n_voxels=1000)
    misaligned = score_voxels(Y[test], model.predict(other[other_test]))
    assert abs(np.nanmean(misaligned)) <= 0.02
    assert np.nanmean(aligned) > 0.3  # the same model is good on aligned features


def test_bad_voxels_are_excluded_and_counted():
    X, Y, _, train, test = simulate(seed=6, n_train=3, n_trs=80, n_test_trs=80, n_voxels=20)
    Y = {k: v.copy() for k, v in Y.items()}
    Y[train[1]][5, 3] = np.nan  # one NaN sample in one training story
    for k in Y:
        Y[k][:, 7] = 4.0  # a dead voxel
    with pytest.warns(BadVoxelWarning, match="1 voxels with NaN/inf and 1 constant"):
        model = fit_encoding_model(X, Y, train)
    assert (model.excluded_nan_, model.excluded_constant_, model.n_excluded_) == (1, 1, 2)
    assert not model.valid_voxels_[[3, 7]].any()
    pred = model.predict(X[test])
    assert np.isnan(pred[:, [3, 7]]).all() and np.isfinite(np.delete(pred, [3, 7], axis=1)).all()
    assert np.isnan(model.best_alphas_[[3, 7]]).all()
    r = score_voxels(Y[test], pred)
    scores = brain_scores(r, selection_scores=model.cv_scores_)
    assert scores.n_invalid == 2 and scores.n_valid == 18
    assert np.isfinite(scores.score_mean)
    assert scores.score_mean == pytest.approx(np.nanmean(r))


def test_fit_errors_are_explicit():
    X, Y, _, train, _ = simulate(seed=7, n_train=2, n_trs=30, n_test_trs=30, n_voxels=5)
    short = dict(Y)
    short[train[0]] = Y[train[0]][:-1]
    with pytest.raises(ValueError, match=r"'story0'.*30 rows.*29"):
        fit_encoding_model(X, short, train)
    with pytest.raises(KeyError, match="nope"):
        fit_encoding_model(X, Y, train + ["nope"])
    with pytest.raises(ValueError, match="at least 2 training stories"):
        fit_encoding_model(X, Y, train[:1])
    with pytest.raises(ValueError, match="not a himalaya backend"):
        fit_encoding_model(X, Y, train, backend="jax")
    nan_voxels = {k: np.full_like(v, np.nan) for k, v in Y.items()}
    with pytest.raises(ValueError, match="all 5 voxels"):
        fit_encoding_model(X, nan_voxels, train)


def test_score_voxels_matches_corrcoef_and_flags_constants():
    rng = np.random.default_rng(8)
    y = rng.standard_normal((50, 5))
    p = y + rng.standard_normal((50, 5))
    p[:, 1] = 3.0
    p[4, 2] = np.nan
    r = score_voxels(y, p)
    for v in (0, 3, 4):
        assert r[v] == pytest.approx(np.corrcoef(y[:, v], p[:, v])[0, 1])
    assert np.isnan(r[[1, 2]]).all()
    # float32 rounding of a constant column is still constant
    assert np.isnan(score_voxels(y[:, :1], np.full((50, 1), 0.1, dtype=np.float32)))[0]


def test_brain_scores_formulas():
    r = np.array([0.1, 0.2, 0.3, 0.4, np.nan, 0.6, 0.0, -0.1, 0.2, 0.5])
    selection = np.array([0.9, 0.8, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # training-data ranking
    ceiling = np.array([0.5, 0.5, 0.6, 0.8, 0.7, 0.9, 0.1, 0.1, np.nan, 0.7])
    regions = np.array(["A", "A", "A", "B", "B", "B", "none", "none", "none", "none"])
    s = brain_scores(r, selection_scores=selection, regions=regions, ceiling=ceiling, top_fraction=0.2)
    valid = np.isfinite(r)
    assert s.score_mean == pytest.approx(np.nanmean(r))
    # top 20% of 9 valid voxels = ceil(1.8) = 2, by the *training* score: voxels 0 and 1 (voxel 4 is invalid)
    np.testing.assert_array_equal(np.flatnonzero(s.top_voxels), [0, 1])
    assert s.score_top10 == pytest.approx(0.15)
    both = valid & np.isfinite(ceiling)
    assert s.ceiling_mean == pytest.approx(ceiling[both].mean())
    assert s.score_ceiling_normalised == pytest.approx(r[both].mean() / ceiling[both].mean())
    assert s.score_top10_ceiling_normalised == pytest.approx(0.15 / 0.5)
    frame = s.to_frame()
    assert list(frame["region"]) == ["all", "A", "B", "none"]
    row_b = frame.set_index("region").loc["B"]
    assert (row_b["n_voxels"], row_b["n_valid"], row_b["n_invalid"]) == (3, 2, 1)
    assert row_b["score_mean"] == pytest.approx(0.5)
    assert isinstance(frame, pd.DataFrame)
    # Without a ceiling the normalised values are NaN but the raw ones remain.
    plain = brain_scores(r)
    assert np.isnan(plain.score_ceiling_normalised) and np.isnan(plain.score_top10)
    assert plain.score_mean == pytest.approx(s.score_mean)
    with pytest.raises(ValueError, match="reserved"):
        brain_scores(r, regions=np.array(["all"] * 10))
    with pytest.raises(ValueError, match="ceiling has shape"):
        brain_scores(r, ceiling=ceiling[:3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["correlation", "r2"])
def test_svd_solver_matches_himalaya_ridgecv(backend, score):
    X, Y, _, train, test = simulate(seed=9, n_train=4, n_trs=80, n_test_trs=60, n_voxels=60)
    kwargs = dict(alphas=np.logspace(-1, 5, 13), n_splits=4, backend=backend, score=score, dtype="float64")
    ours = fit_encoding_model(X, Y, train, solver="svd", **kwargs)
    reference = fit_encoding_model(X, Y, train, solver="himalaya", **kwargs)
    np.testing.assert_array_equal(ours.best_alphas_, reference.best_alphas_)
    np.testing.assert_allclose(ours.cv_scores_, reference.cv_scores_, atol=1e-8)
    np.testing.assert_allclose(ours.predict(X[test]), reference.predict(X[test]), rtol=1e-6, atol=1e-8)
    # float32 and batching over voxels give the same model up to rounding
    batched = fit_encoding_model(X, Y, train, solver="svd", n_targets_batch=7, **{**kwargs, "dtype": "float32"})
    np.testing.assert_allclose(batched.predict(X[test]), reference.predict(X[test]), rtol=1e-3, atol=1e-3)
