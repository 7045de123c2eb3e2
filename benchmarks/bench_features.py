"""Benchmark: windowed word-feature extraction vs a plain forward pass over the same tokens.

The windowed extraction (:func:`triphase.models.features.word_hidden_states`) runs
overlapping windows of ``C`` tokens with stride ``C/2`` so that every word has
at least ``C/2`` tokens of left context. The baseline is a plain forward pass
over the same story tokens cut into non-overlapping windows of ``C`` tokens
(each token once; the least work any extraction with context ``C`` can do),
batched the same way, also with ``output_hidden_states=True``.

Reported: tokens in the stories, tokens processed by the windowed extraction
(overhead ratio = processed / story tokens; target <= 2.1x), wall times, story
tokens/s of both, and ``throughput_vs_plain`` = the windowed extraction's rate
in *processed* tokens/s over the plain pass's rate (target >= 0.8: the
bookkeeping of windows, word indexing and copying out costs < 20%).

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

from triphase.models.features import plan_windows, tokenize_words, word_hidden_states


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
    """Non-overlapping windows of ``context`` tokens, batched; returns seconds."""
    n_full = len(ids) // context
    chunks = [ids[i * context:(i + 1) * context] for i in range(n_full)]
    tail = ids[n_full * context:]
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(chunks), batch_size):
            batch = torch.as_tensor(np.stack(chunks[b:b + batch_size]))
            hidden = model(input_ids=batch, output_hidden_states=True).hidden_states
            torch.stack(hidden).float().numpy()
        if len(tail):
            model(input_ids=torch.as_tensor(tail)[None], output_hidden_states=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="organism config (default: default)")
    parser.add_argument("--preset", default="default", help="participant preset (default: default)")
    parser.add_argument("--context", type=int, default=None, help="context C (default: model max positions)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best of)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.config, args.preset, args.repeats = "tiny", "tiny", 1

    model, tokenizer, model_label = _load_model(args.config)
    if model is None:
        raise SystemExit("this benchmark needs a trained organism (its tokenizer): run `triphase train` first")
    context = args.context or model.config.max_position_embeddings
    stories, story_label = _stories(tokenizer, args.preset, 20000, 500)

    story_tokens = processed = 0
    t_windowed = t_plain = 0.0
    for words in stories.values():
        ids, _ = tokenize_words(tokenizer, words)
        windows, token_window = plan_windows(len(ids), context)
        # Windows actually run: those serving at least one word (all of them in practice).
        processed += sum(w.stop - w.start for w in windows)
        story_tokens += len(ids)
        best_w = best_p = np.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            word_hidden_states(model, tokenizer, words, context=context, batch_size=args.batch_size)
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
        "targets": {"overhead_tokens_ratio <=": 2.1, "throughput_vs_plain >=": 0.8},
    }
    result["meets_targets"] = bool(result["overhead_tokens_ratio"] <= 2.1 and result["throughput_vs_plain"] >= 0.8)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
