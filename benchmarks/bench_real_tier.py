"""Benchmark: what one real-tier checkpoint costs on this machine's CPU, measured where possible.

No download is needed: the model is randomly initialised with the architecture
of a Pythia preset (throughput does not depend on the weights) and the
responses are random numbers of LeBel-like size (the ridge's cost does not
depend on the values). Two things are *measured* here:

1. feature extraction: the windowed extraction
   (:func:`triphase.models.features.word_hidden_states`, context ``C``, stride ``C/2``)
   over ``--words`` words of story-like text, in processed tokens/s;
2. voxelwise ridge fits (:func:`triphase.brain.encoding.fit_encoding_model`, the
   default 21 alphas, 5 leave-stories-out folds) with ``n_train`` TRs x
   (hidden x 4 delays) features on ``--voxels`` and twice as many voxels, which
   separates the fixed cost (eigendecompositions) from the cost per voxel.

Then it *extrapolates*, linearly and labelled so, to one checkpoint of the
brain chapter on LeBel UTS03: the stories' tokens (``--story-tokens``) and all
voxels (``--all-voxels``) for every hidden state (layers + embeddings). The
extrapolation is linear in tokens and (after the fixed cost) in voxels, which
is what the computation is (per-voxel GEMM columns; windows independent). It
also prints the floating-point work of one layer's fit, so a GPU's time can be
estimated as that work over the GPU's sustained float32 rate.

Usage::

    python benchmarks/bench_real_tier.py                   # pythia-160m architecture
    python benchmarks/bench_real_tier.py --model pythia-70m --voxels 1000
    python benchmarks/bench_real_tier.py --quick           # small smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

#: Pythia architectures (Biderman et al. 2023, table 1 and the hub configs): layers, hidden, heads.
PYTHIA = {
    "pythia-14m": (6, 128, 4),
    "pythia-70m": (6, 512, 8),
    "pythia-160m": (12, 768, 12),
    "pythia-410m": (24, 1024, 16),
}
PYTHIA_VOCAB = 50304
#: Assumed size of LeBel et al. 2023 UTS03's brain chapter (override on the command line).
DEFAULT_TRAIN_TRS = 9000
DEFAULT_STORY_TOKENS = 70_000
DEFAULT_ALL_VOXELS = 95_000


def random_pythia(name: str):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, hidden, heads = PYTHIA[name]
    config = GPTNeoXConfig(vocab_size=PYTHIA_VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=2048,
                           rotary_pct=0.25, use_parallel_residual=True)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).eval(), layers, hidden


class _WordTokenizer:
    """Maps each word to a fixed pseudo-random token (one token per word; enough for throughput)."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False, **_):
        ids, offsets, start = [], [], 0
        for word in text.split(" "):
            ids.append(sum(map(ord, word)) * 7919 % self.vocab)
            offsets.append((start, start + len(word)))
            start += len(word) + 1
        return {"input_ids": ids, "offset_mapping": offsets}


def measure_features(model, n_words: int, context: int) -> dict:
    from triphase.models.features import tokens_processed, word_hidden_states

    rng = np.random.default_rng(0)
    words = [f"w{int(i)}" for i in rng.integers(0, 5000, n_words)]
    tokenizer = _WordTokenizer(PYTHIA_VOCAB)
    start = time.perf_counter()
    states = word_hidden_states(model, tokenizer, words, context=context)
    seconds = time.perf_counter() - start
    processed = tokens_processed(n_words, context)
    return {"words": n_words, "tokens_processed": processed, "seconds": seconds,
            "tokens_processed_per_s": processed / seconds, "states_shape": list(states.shape)}


def measure_ridge(n_train: int, n_features: int, n_voxels: int, n_stories: int = 10) -> dict:
    from triphase.brain.encoding import DEFAULT_ALPHAS, fit_encoding_model

    rng = np.random.default_rng(0)
    per_story = n_train // n_stories
    stories = [f"s{i}" for i in range(n_stories)]
    X = {s: rng.standard_normal((per_story, n_features), dtype=np.float32) for s in stories}
    Y = {s: rng.standard_normal((per_story, n_voxels), dtype=np.float32) for s in stories}
    start = time.perf_counter()
    model = fit_encoding_model(X, Y, stories, alphas=DEFAULT_ALPHAS)
    seconds = time.perf_counter() - start
    return {"train_trs": per_story * n_stories, "features": n_features, "voxels": n_voxels, "kind": model.kind,
            "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pythia-160m", choices=sorted(PYTHIA))
    parser.add_argument("--words", type=int, default=4000, help="words for the feature measurement")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--voxels", type=int, default=2000, help="voxels for the ridge measurement")
    parser.add_argument("--train-trs", type=int, default=DEFAULT_TRAIN_TRS)
    parser.add_argument("--story-tokens", type=int, default=DEFAULT_STORY_TOKENS)
    parser.add_argument("--all-voxels", type=int, default=DEFAULT_ALL_VOXELS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.words, args.voxels, args.train_trs = "pythia-14m", 300, 200, 600

    torch.set_grad_enabled(False)
    model, layers, hidden = random_pythia(args.model)
    features = measure_features(model, args.words, args.context)
    n_features = 4 * hidden  # FIR delays 1-4 TRs
    # Two voxel counts separate the fixed cost (eigendecompositions of the Gram matrices) from the per-voxel cost.
    ridge = measure_ridge(args.train_trs, n_features, args.voxels)
    ridge_double = measure_ridge(args.train_trs, n_features, 2 * args.voxels)
    del model

    from triphase.models.features import tokens_processed

    processed_all = tokens_processed(args.story_tokens, args.context)
    feature_s = processed_all / features["tokens_processed_per_s"]
    per_voxel_s = max(ridge_double["seconds"] - ridge["seconds"], 0.0) / args.voxels
    fixed_s = max(ridge["seconds"] - per_voxel_s * args.voxels, 0.0)
    fit_s = fixed_s + per_voxel_s * args.all_voxels
    # The products that dominate the fit (validation predictions for every alpha, plus X^T Y): a GPU estimate
    # divides this by the GPU's sustained float32 rate.
    n_alphas = 21
    ridge_flops = 2.0 * args.train_trs * n_features * args.all_voxels * (n_alphas + 2)
    hidden_states = layers + 1
    result = {
        "device": "cpu", "threads": torch.get_num_threads(), "model_architecture": args.model,
        "measured": {"features": features, "ridge_fit": ridge, "ridge_fit_double_voxels": ridge_double},
        "extrapolated_per_checkpoint": {
            "assumptions": {"story_tokens": args.story_tokens, "train_trs": args.train_trs,
                            "all_voxels": args.all_voxels, "hidden_states": hidden_states},
            "feature_extraction_s": round(feature_s, 1),
            "ridge_fit_fixed_s": round(fixed_s, 1),
            "ridge_fit_per_1000_voxels_s": round(1000 * per_voxel_s, 2),
            "ridge_fit_per_layer_s": round(fit_s, 1),
            "ridge_tflop_per_layer": round(ridge_flops / 1e12, 1),
            "ridge_fits_all_layers_s": round(fit_s * hidden_states, 1),
            "total_h": round((feature_s + fit_s * hidden_states) / 3600, 2),
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
