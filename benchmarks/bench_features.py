"""Benchmark: windowed word-feature extraction vs a plain forward pass over the same tokens.

The windowed extraction (:func:`triphase.models.features.word_hidden_states`) runs
overlapping windows of ``C`` tokens with stride ``C/2`` so that every word has
at least ``C/2`` tokens of left context, each window opened by the model's
document-start token(s). The reference is a plain base-model forward (the
backbone, no LM head, no hidden-state outputs, no cache) over the same story
tokens cut into non-overlapping windows of ``C`` tokens (each token once; the
least work any extraction with context ``C`` can do), batched the same way.

Reported: tokens in the stories, tokens processed by the windowed extraction
(overhead ratio = processed / story tokens; target <= 2.1x), wall times, story
tokens/s of both, ``throughput_vs_plain`` = the windowed extraction's rate in
*processed* tokens/s over the plain pass's rate (target >= 0.9: the bookkeeping
of windows, word indexing and copying out costs < 10%), and both rates as a
fraction of the machine's float32 matmul ceiling
(``<repository>/../shared/tools/machine_peak.py``), from the forward FLOPs
``2 N_params + 4 n_layers L hidden`` per token (``N_params`` without
embeddings, ``L`` the window length: the ``Q K^T`` and ``A V`` products of
attention, counted in full as a dense kernel computes them).

Uses the default organism's final checkpoint when it has been trained
(``triphase train``), else a randomly initialised model of the same
architecture and tokenizer-free random token ids; stories are the default
simulated participant's when the story world is available.

Usage::

    python benchmarks/bench_features.py             # default organism, default participant
    python benchmarks/bench_features.py --quick     # small smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from triphase.models.features import backbone, document_start_ids, tokenize_words, tokens_processed, word_hidden_states
from _peak import machine_peak  # benchmarks/_peak.py (run as a script: its folder is on sys.path)

#: targets of issue 12 (point 6)
MAX_OVERHEAD_RATIO, MIN_THROUGHPUT_VS_PLAIN = 2.1, 0.9
#: FLOPs per multiply-add
FLOPS_PER_MAC = 2
#: attention products per layer whose cost grows with the window (Q K^T and A V)
ATTENTION_PRODUCTS = 2


def _load_model(config: str):
    from triphase.models.loading import load_checkpoint
    from triphase.models.series import organism_series

    try:
        series = organism_series("organism", config=config)
        model, tokenizer = load_checkpoint(series.final, device="cpu")
        return model, tokenizer, f"organism ({config}) {series.final.name}"
    except FileNotFoundError:
        pass
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from triphase.models.organism import OrganismConfig

    # Not trained: the same architecture, randomly initialised, with the tokenizer of any trained organism
    # (throughput does not depend on the weights).
    cfg = OrganismConfig.preset(config)
    tokenizer = None
    for other in ("tiny", "default"):
        try:
            tokenizer = load_checkpoint(organism_series("organism", config=other).final, device="cpu")[1]
            break
        except FileNotFoundError:
            continue
    if tokenizer is None:
        return None, None, "no organism trained"
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.context_length, rotary_pct=cfg.rotary_pct)).eval()
    return model, tokenizer, (f"untrained GPTNeoX with the {config!r} organism architecture "
                              f"(that organism is not trained; weights do not affect throughput)")


def _stories(tokenizer, preset: str, n_fallback_tokens: int, vocab: int):
    try:
        from triphase.datasets.simulated import SimulatedParticipant

        ds = SimulatedParticipant(preset)
        return {name: list(s.words) for name, s in ds.stimuli.items()}, "simulated participant " + preset
    except ImportError:  # the story world is not installed: synthetic words
        words = [f"w{i % vocab}" for i in range(n_fallback_tokens)]
        return {"synthetic": words}, "synthetic words"


def plain_pass(model, ids: np.ndarray, context: int, batch_size: int) -> float:
    """Base-model forward over non-overlapping windows of ``context`` tokens, batched; returns seconds."""
    net = backbone(model)
    n_full = len(ids) // context
    chunks = [ids[i * context:(i + 1) * context] for i in range(n_full)]
    tail = ids[n_full * context:]
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(chunks), batch_size):
            net(input_ids=torch.as_tensor(np.stack(chunks[b:b + batch_size])), use_cache=False)
        if len(tail):
            net(input_ids=torch.as_tensor(tail)[None], use_cache=False)
    return time.perf_counter() - start


def flops_per_token(model, window: int) -> float:
    """Forward FLOPs per token: weights (embeddings excluded) plus attention over a window of ``window`` tokens."""
    config = model.config
    embedding_params = sum(p.numel() for p in model.get_input_embeddings().parameters())
    backbone_params = sum(p.numel() for p in backbone(model).parameters()) - embedding_params
    attention = ATTENTION_PRODUCTS * FLOPS_PER_MAC * config.num_hidden_layers * window * config.hidden_size
    return FLOPS_PER_MAC * backbone_params + attention


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="organism config (default: default)")
    parser.add_argument("--preset", default="default", help="participant preset (default: default)")
    parser.add_argument("--context", type=int, default=None, help="context C (default: model max positions)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best of)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None,
                        help="a local Hugging Face folder to benchmark instead (e.g. an organism step folder)")
    parser.add_argument("--document-start", default="eos",
                        help="document-start convention (default: eos, the organism's; see triphase.models.features)")
    parser.add_argument("--max-stories", type=int, default=None, help="use only the first N stories")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.config, args.preset, args.repeats = "tiny", "tiny", 1

    if args.checkpoint:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
        tokenizer, model_label = AutoTokenizer.from_pretrained(args.checkpoint), args.checkpoint
    else:
        model, tokenizer, model_label = _load_model(args.config)
    if model is None:
        raise SystemExit("this benchmark needs a trained organism (its tokenizer): run `triphase train` first")
    context = args.context or model.config.max_position_embeddings
    stories, story_label = _stories(tokenizer, args.preset, 20000, 500)
    if args.max_stories:
        stories = dict(list(stories.items())[:args.max_stories])
    n_start = len(document_start_ids(tokenizer, args.document_start))
    peak = machine_peak()

    story_tokens = processed = 0
    t_windowed = t_plain = 0.0
    for words in stories.values():
        ids, _ = tokenize_words(tokenizer, words)
        # Windows actually run: those serving at least one word (all of them in practice).
        processed += tokens_processed(len(ids), context, n_start)
        story_tokens += len(ids)
        best_w = best_p = np.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            word_hidden_states(model, tokenizer, words, context=context, batch_size=args.batch_size,
                               document_start=args.document_start)
            best_w = min(best_w, time.perf_counter() - start)
            best_p = min(best_p, plain_pass(model, ids, context, args.batch_size))
        t_windowed += best_w
        t_plain += best_p

    overhead = processed / story_tokens
    result = {
        "model": model_label,
        "stories": f"{len(stories)} stories of the {story_label}",
        "context": context,
        "story_tokens": story_tokens,
        "windowed_tokens_processed": processed,
        "overhead_tokens_ratio": round(overhead, 3),
        "windowed_seconds": round(t_windowed, 3),
        "plain_seconds": round(t_plain, 3),
        "windowed_story_tokens_per_s": round(story_tokens / t_windowed, 1),
        "plain_story_tokens_per_s": round(story_tokens / t_plain, 1),
        "windowed_processed_tokens_per_s": round(processed / t_windowed, 1),
        "throughput_vs_plain": round((processed / t_windowed) / (story_tokens / t_plain), 3),
        "document_start_tokens": n_start,
        "threads": torch.get_num_threads(),
        "targets": {"overhead_tokens_ratio <=": MAX_OVERHEAD_RATIO, "throughput_vs_plain >=": MIN_THROUGHPUT_VS_PLAIN},
    }
    result["meets_targets"] = bool(result["overhead_tokens_ratio"] <= MAX_OVERHEAD_RATIO
                                   and result["throughput_vs_plain"] >= MIN_THROUGHPUT_VS_PLAIN)
    flops = flops_per_token(model, context)
    result["gflops_per_s_windowed"] = round(flops * processed / t_windowed / 1e9, 2)
    result["gflops_per_s_plain"] = round(flops * story_tokens / t_plain / 1e9, 2)
    if peak and peak.get("matmul_gflops_torch"):
        result["machine_peak"] = peak
        result["fraction_of_torch_matmul_peak_windowed"] = round(
            result["gflops_per_s_windowed"] / peak["matmul_gflops_torch"], 3)
        result["fraction_of_torch_matmul_peak_plain"] = round(
            result["gflops_per_s_plain"] / peak["matmul_gflops_torch"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
