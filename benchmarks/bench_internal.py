"""Benchmark: cost of the internal-state measures, and of the whole chapter on a series.

Part 1 times the per-layer measures on random data at the sizes that matter:
the organism (``d = 128``) and a 7B-class model (``d = 4096``), for the TwoNN /
PCA / CKA subsample budget ``B`` and the probe set of ``n`` words:
TwoNN (exact nearest neighbours, blocked), participation ratio (SVD), linear
CKA, and the ridge probes (all targets at once, 5 folds). Multiply the per-layer
time by layers x checkpoints for a run's measure cost (forward passes excluded).

Part 2 (``--series``) runs :func:`triphase.internal.sweep.internal_states` on
a series in a scratch data home (``--home``; the series must be trained there)
and reports the wall time of the whole chapter, cold (nothing cached) and warm
(everything cached).

Usage::

    python benchmarks/bench_internal.py                      # part 1
    python benchmarks/bench_internal.py --series organism    # + the chapter on the default organism
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from triphase.internal import measures as internal


def _time(fn, *args, repeat: int = 1, **kwargs) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


def bench_measures(budgets=(1024, 2048), dims=(128, 4096), n_probe_words=4000, seed=0) -> None:
    rng = np.random.default_rng(seed)
    print(f"{'d':>5} {'B':>5} {'TwoNN s':>8} {'PR s':>7} {'CKA s':>7}")
    for d in dims:
        for budget in budgets:
            x = rng.standard_normal((budget, 20)) @ rng.standard_normal((20, d)) + 0.1 * rng.standard_normal((budget, d))
            y = x + rng.standard_normal((budget, d))
            print(f"{d:>5} {budget:>5} {_time(internal.twonn_dimension, x):>8.2f} "
                  f"{_time(internal.participation_ratio, x):>7.2f} {_time(internal.linear_cka, x, y):>7.2f}")
    print(f"\n{'d':>5} {'n words':>8} {'probes s (4 targets + 4 shuffled, 5 folds)':>44}")
    for d in dims:
        x = rng.standard_normal((n_probe_words, d)).astype(np.float32)
        groups = np.arange(n_probe_words) * 8 // n_probe_words
        targets = {}
        for name, kind, values in (("pos", "classification", rng.integers(0, 12, n_probe_words)),
                                   ("depth", "regression", rng.standard_normal(n_probe_words)),
                                   ("freq", "regression", rng.standard_normal(n_probe_words)),
                                   ("position", "regression", rng.standard_normal(n_probe_words))):
            targets[name] = (kind, values)
            targets[name + "_shuffled"] = (kind, rng.permutation(values))
        print(f"{d:>5} {n_probe_words:>8} {_time(internal.ridge_probes, x, targets, groups):>44.2f}")


def bench_chapter(series: str) -> None:
    import torch

    from triphase.internal.sweep import internal_states

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    for label in ("cold", "warm"):
        start = time.perf_counter()
        table = internal_states(series, progress=False, device="cpu")
        print(f"chapter {series} ({label}): {time.perf_counter() - start:.1f} s, {table['checkpoint'].nunique()} "
              f"checkpoints, {table.shape[0]} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", help="also time the whole chapter on this series (cold, then warm)")
    parser.add_argument("--home", help="data home (TRIPHASE_HOME) holding the trained series")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    if args.home:
        os.environ["TRIPHASE_HOME"] = args.home
    if args.quick:
        bench_measures(budgets=(512,), dims=(128,), n_probe_words=1000)
    else:
        bench_measures()
    if args.series:
        bench_chapter(args.series)


if __name__ == "__main__":
    main()
