"""Benchmark: what one real-tier checkpoint costs on this machine (CPU, or a GPU with --device cuda).

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

On a GPU (``--device cuda``, bf16 weights by default there) the features'
rate is also given as model FLOP/s (2 x non-embedding parameters + attention
per processed token) and as a fraction of the GPU's bf16 peak
(``--peak-tflops``; looked up for H100/H200/A100 by name), and the ridge runs
on himalaya's ``torch_cuda`` backend; the goals of the project are at most
60 s per checkpoint for Pythia-160M and 5 minutes for Pythia-1B on one
H200-class GPU (``goal_s`` in the output).

Usage::

    python benchmarks/bench_real_tier.py                   # pythia-160m architecture, CPU
    python benchmarks/bench_real_tier.py --model pythia-70m --voxels 1000
    python benchmarks/bench_real_tier.py --device cuda --model pythia-1b --voxels 20000
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
    "pythia-1b": (16, 2048, 8),
}
#: Dense bf16 peak (TFLOP/s) of GPUs by a substring of their name (vendor data sheets, without sparsity).
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
#: The project's goals per checkpoint on one H200-class GPU (issue: the real tier at GPU speed).
GOAL_SECONDS = {"pythia-160m": 60.0, "pythia-1b": 300.0}
PYTHIA_VOCAB = 50304
#: Assumed size of LeBel et al. 2023 UTS03's brain chapter (override on the command line).
DEFAULT_TRAIN_TRS = 9000
DEFAULT_STORY_TOKENS = 70_000
DEFAULT_ALL_VOXELS = 95_000


def random_pythia(name: str, device: str = "cpu", dtype=torch.float32):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, hidden, heads = PYTHIA[name]
    config = GPTNeoXConfig(vocab_size=PYTHIA_VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=2048,
                           rotary_pct=0.25, use_parallel_residual=True)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).to(device=device, dtype=dtype).eval(), layers, hidden


def model_flops_per_token(layers: int, hidden: int, context: int) -> float:
    """Forward FLOPs per processed token: 2 x non-embedding parameters (12 h^2 per layer) + attention (2 n_ctx h
    per layer for the scores and as much for the weighted sum), as in Kaplan et al. (2020), table 1."""
    return 2.0 * 12 * layers * hidden**2 + 2.0 * layers * context * hidden


def gpu_peak_tflops(device: str, given: float | None) -> float | None:
    if given is not None or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in GPU_BF16_PEAK_TFLOPS.items() if key in name), None)


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


def measure_features(model, n_words: int, context: int, device: str = "cpu") -> dict:
    from triphase.models.features import tokens_processed, word_hidden_states

    rng = np.random.default_rng(0)
    words = [f"w{int(i)}" for i in rng.integers(0, 5000, n_words)]
    tokenizer = _WordTokenizer(PYTHIA_VOCAB)
    word_hidden_states(model, tokenizer, words[: min(n_words, 2 * context)], context=context)  # warm-up
    _synchronise(device)
    start = time.perf_counter()
    states = word_hidden_states(model, tokenizer, words, context=context)
    _synchronise(device)
    seconds = time.perf_counter() - start
    processed = tokens_processed(n_words, context)
    return {"words": n_words, "tokens_processed": processed, "seconds": seconds,
            "tokens_processed_per_s": processed / seconds, "states_shape": list(states.shape)}


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_ridge(n_train: int, n_features: int, n_voxels: int, n_stories: int = 10, backend: str = "numpy",
                  device: str = "cpu") -> dict:
    from triphase.brain.encoding import DEFAULT_ALPHAS, fit_encoding_model

    rng = np.random.default_rng(0)
    per_story = n_train // n_stories
    stories = [f"s{i}" for i in range(n_stories)]
    X = {s: rng.standard_normal((per_story, n_features), dtype=np.float32) for s in stories}
    Y = {s: rng.standard_normal((per_story, n_voxels), dtype=np.float32) for s in stories}
    _synchronise(device)
    start = time.perf_counter()
    model = fit_encoding_model(X, Y, stories, alphas=DEFAULT_ALPHAS, backend=backend)
    _synchronise(device)
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0, ...)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="weights' dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak (default: looked up by its name)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.words, args.voxels, args.train_trs = "pythia-14m", 300, 200, 600
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device on this machine")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    backend = "torch_cuda" if on_gpu else "numpy"

    torch.set_grad_enabled(False)
    model, layers, hidden = random_pythia(args.model, args.device, dtype)
    features = measure_features(model, args.words, args.context, args.device)
    n_features = 4 * hidden  # FIR delays 1-4 TRs
    # Two voxel counts separate the fixed cost (eigendecompositions of the Gram matrices) from the per-voxel cost.
    ridge = measure_ridge(args.train_trs, n_features, args.voxels, backend=backend, device=args.device)
    ridge_double = measure_ridge(args.train_trs, n_features, 2 * args.voxels, backend=backend, device=args.device)
    del model
    flops_per_token = model_flops_per_token(layers, hidden, args.context)
    achieved = features["tokens_processed_per_s"] * flops_per_token
    peak = gpu_peak_tflops(args.device, args.peak_tflops)
    features["model_tflops_per_s"] = round(achieved / 1e12, 3)
    features["fraction_of_bf16_peak"] = round(achieved / (peak * 1e12), 4) if peak else None

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
        "device": torch.cuda.get_device_name(torch.device(args.device)) if on_gpu else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "model_architecture": args.model,
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
            "total_s": round(feature_s + fit_s * hidden_states, 1),
            "goal_s": GOAL_SECONDS.get(args.model),
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
