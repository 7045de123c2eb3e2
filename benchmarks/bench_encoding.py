"""Benchmark: voxelwise encoding fit of all layers, himalaya vs scikit-learn.

For each of ``--layers`` synthetic layers (``--features`` features x 4 FIR
delays, ``--stories`` training stories totalling ``--trs`` TRs, ``--voxels``
voxels) it fits

* triphase ``LeaveStoriesOutRidgeCV`` (leave-stories-out CV, per-voxel alpha,
  refit; the default ridge solver) on the numpy and torch (CPU) himalaya
  backends, float32, and himalaya's own ``RidgeCV`` (numpy) for reference;
* scikit-learn ``RidgeCV(alphas, alpha_per_target=True)`` (efficient
  leave-one-out GCV, per-voxel alpha), same float32 data and alpha grid;

and reports wall times, speed-up, and agreement of predictions on a held-out
test story: (a) model-selected predictions of each (they use different CV
schemes, so alphas may differ), (b) at equal alphas: scikit-learn ``Ridge``
(float64) with the per-voxel alphas chosen here vs our predictions. It also prints the
achieved rate of the dominant matrix products as a share of this machine's
float32 matmul peak (``<repository>/../shared/tools/machine_peak.py``, the shared
machine-peak tool next to the checkout) when available.

Usage::

    python benchmarks/bench_encoding.py            # 5 layers x 1500 TRs x 512 features x 5000 voxels
    python benchmarks/bench_encoding.py --quick    # small smoke run
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from triphase.brain.encoding import DEFAULT_ALPHAS, DEFAULT_N_SPLITS, fit_encoding_model, score_voxels
from triphase.brain.timeseries import make_delayed, zscore
from _peak import machine_peak  # benchmarks/_peak.py (run as a script: its folder is on sys.path)

N_DELAYS = 4


def simulate_layers(n_layers, n_stories, n_trs, n_test_trs, n_features, n_voxels, seed=0):
    """Per layer: dict story -> delayed design; shared responses driven by a mix of layers."""
    rng = np.random.default_rng(seed)
    rows = np.full(n_stories, n_trs // n_stories)
    rows[: n_trs - rows.sum()] += 1
    names = [f"story{i:02d}" for i in range(n_stories)] + ["test"]
    lengths = dict(zip(names, list(rows) + [n_test_trs]))
    # Latent "semantic" drive per story; each layer is a noisy random rotation of it.
    latent = {s: rng.standard_normal((n, n_features)).astype(np.float32) for s, n in lengths.items()}
    designs = []
    for _ in range(n_layers):
        mixing = rng.standard_normal((n_features, n_features)).astype(np.float32) / np.sqrt(n_features)
        layer = {}
        for s, z in latent.items():
            raw = z @ mixing + 0.5 * rng.standard_normal(z.shape).astype(np.float32)
            layer[s] = make_delayed(zscore(raw).astype(np.float32), delays=range(1, N_DELAYS + 1))
        designs.append(layer)
    weights = rng.standard_normal((n_features * N_DELAYS, n_voxels)).astype(np.float32)
    weights *= rng.uniform(0, 1, n_voxels).astype(np.float32) / np.sqrt(n_features * N_DELAYS)
    responses = {
        s: (designs[-1][s] @ weights + rng.standard_normal((n, n_voxels)).astype(np.float32)).astype(np.float32)
        for s, n in lengths.items()
    }
    return designs, responses, names[:-1], "test"


def dominant_flops(n_samples, n_features, n_voxels, n_alphas, n_splits):
    """Approximate FLOPs of the matrix products of leave-stories-out RidgeCV (SVD route).

    Per split: U^T Y (2 n_train p V) and one validation prediction per alpha
    (2 n_val p V each); refit: 2 n p V + 2 p^2 V. SVDs (O(n p^2)) are left out,
    so this is a lower bound on the work done.
    """
    n_val = n_samples / n_splits
    n_train = n_samples - n_val
    per_split = 2 * n_train * n_features * n_voxels + n_alphas * 2 * n_val * n_features * n_voxels
    refit = 2 * n_samples * n_features * n_voxels + 2 * n_features**2 * n_voxels
    return n_splits * per_split + refit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--stories", type=int, default=10)
    parser.add_argument("--trs", type=int, default=1500, help="training TRs over all stories")
    parser.add_argument("--test-trs", type=int, default=300)
    parser.add_argument("--features", type=int, default=128, help="features per layer before the 4 delays")
    parser.add_argument("--voxels", type=int, default=5000)
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.stories, args.trs, args.test_trs, args.features, args.voxels = 2, 5, 300, 100, 16, 200

    import torch
    from sklearn.linear_model import Ridge, RidgeCV

    warnings.simplefilter("ignore")
    alphas = DEFAULT_ALPHAS
    designs, responses, train, test = simulate_layers(
        args.layers, args.stories, args.trs, args.test_trs, args.features, args.voxels
    )
    n_features = designs[0][test].shape[1]
    print(
        f"data: {args.layers} layers x {args.trs} training TRs ({args.stories} stories) x {n_features} delayed "
        f"features x {args.voxels} voxels; test story {args.test_trs} TRs; {len(alphas)} alphas; float32"
    )
    print(f"threads: torch {torch.get_num_threads()}, cpu_count {os.cpu_count()}")
    peak = machine_peak()
    if peak:
        print(f"machine peak: {peak}")

    Y_train = np.vstack([responses[s] for s in train])
    Y_test = responses[test]
    results = {}
    predictions = {}
    runs = [(backend, "svd") for backend in args.backends] + [("numpy", "himalaya")]
    for backend, solver in runs:
        label = f"{solver}/{backend}"
        start = time.perf_counter()
        models = [
            fit_encoding_model(layer, responses, train, alphas=alphas, backend=backend, solver=solver)
            for layer in designs
        ]
        elapsed = time.perf_counter() - start
        predictions[label] = [m.predict(layer[test]) for m, layer in zip(models, designs)]
        results[label] = dict(seconds=elapsed, models=models)
        flops = args.layers * dominant_flops(args.trs, n_features, args.voxels, len(alphas), DEFAULT_N_SPLITS)
        rate = flops / elapsed / 1e9
        peak_key = "matmul_gflops_torch" if backend.startswith("torch") else "matmul_gflops_numpy"
        share = f", {100 * rate / peak[peak_key]:.0f}% of the {peak_key} peak" if peak and peak.get(peak_key) else ""
        mean_r = np.mean([np.nanmean(score_voxels(Y_test, p)) for p in predictions[label]])
        name = "triphase LeaveStoriesOutRidgeCV" if solver == "svd" else "himalaya.ridge.RidgeCV"
        print(
            f"{name} [{backend}]: {elapsed:.2f} s for {args.layers} layers "
            f"(~{rate:.1f} GFLOP/s of the necessary products{share}); mean test r over layers {mean_r:.4f}"
        )

    if args.no_sklearn:
        return results
    start = time.perf_counter()
    sk_preds = []
    for layer in designs:
        X_train = np.vstack([layer[s] for s in train])
        sk = RidgeCV(alphas=alphas, alpha_per_target=True, fit_intercept=True).fit(X_train, Y_train)
        sk_preds.append(sk.predict(layer[test]))
    sk_seconds = time.perf_counter() - start
    sk_r = np.mean([np.nanmean(score_voxels(Y_test, p)) for p in sk_preds])
    print(f"scikit-learn RidgeCV(alpha_per_target=True, GCV): {sk_seconds:.2f} s; mean test r {sk_r:.4f}")

    for label, res in results.items():
        print(f"speed-up {label} vs scikit-learn: {sk_seconds / res['seconds']:.2f}x")
        # (a) each with its own model selection
        corr = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(predictions[label], sk_preds)])
        r_h = np.concatenate([score_voxels(Y_test, p) for p in predictions[label]])
        r_s = np.concatenate([score_voxels(Y_test, p) for p in sk_preds])
        print(
            f"  own alphas: prediction correlation {corr:.4f}; voxel r max |diff| {np.nanmax(np.abs(r_h - r_s)):.4f}, "
            f"mean diff {np.nanmean(r_h - r_s):+.5f}"
        )
        # (b) equal alphas: scikit-learn Ridge (float64) refit with the per-voxel alphas chosen here,
        # one Ridge per distinct alpha (identical to a per-target alpha array, without a loop per voxel)
        max_abs, scale = 0.0, 0.0
        for model, layer, pred in zip(res["models"], designs, predictions[label]):
            X_train = np.vstack([layer[s] for s in train]).astype(np.float64)
            ref_pred = np.empty_like(pred, dtype=np.float64)
            for alpha in np.unique(model.best_alphas_):
                cols = model.best_alphas_ == alpha
                ref = Ridge(alpha=alpha, fit_intercept=True).fit(X_train, Y_train[:, cols].astype(np.float64))
                ref_pred[:, cols] = ref.predict(layer[test].astype(np.float64)).reshape(len(pred), -1)
            max_abs = max(max_abs, float(np.max(np.abs(ref_pred - pred))))
            scale = max(scale, float(np.max(np.abs(ref_pred))))
        print(f"  equal alphas (sklearn Ridge, float64): max |pred diff| {max_abs:.2e} (max |pred| {scale:.2f})")
    return results


if __name__ == "__main__":
    main()
