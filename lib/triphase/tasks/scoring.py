"""Scoring answers: instruction following (format compliance), accuracy, multiple-choice log-likelihood, Wilson intervals.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from triphase._taskitem import TaskItem
from triphase.tasks.generation import cut_at_stop, greedy_generate, model_max_length, option_loglikelihoods
from triphase.tasks.items import mc_options

#: Confidence level of every interval in the tasks table.
DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_STOP = ("\n",)
CONFIDENCE = 0.95
#: Metric names of the tasks table (embedded suite).
METRICS = ("instruction_following", "accuracy", "accuracy_given_compliance", "mc_accuracy", "mc_chance",
           "truncated_prompts")


# --------------------------------------------------------------------------- statistics
def wilson_interval(successes, n, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    .. math:: \\frac{\\hat p + z^2/2n \\pm z\\sqrt{\\hat p(1-\\hat p)/n + z^2/4n^2}}{1 + z^2/n}

    Parameters
    ----------
    successes : int
        Number of successes k (0 <= k <= n).
    n : int
        Number of trials; ``n == 0`` gives ``(nan, nan)``.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    (low, high) : tuple of float

    Examples
    --------
    >>> [round(x, 4) for x in wilson_interval(15, 148)]  # Newcombe (1998), table I
    [0.0624, 0.1605]
    """

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    # at k = 0 (k = n) the bound is exactly 0 (1); floating point would leave ~1e-17
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


def proportion_row(metric: str, outcomes) -> dict:
    """``metric, value, ci_low, ci_high, n_items`` of a share of binary outcomes (NaN when empty)."""
    outcomes = np.asarray(outcomes, dtype=bool)
    n, k = int(outcomes.size), int(outcomes.sum())
    low, high = wilson_interval(k, n)
    return {"metric": metric, "value": k / n if n else math.nan, "ci_low": low, "ci_high": high, "n_items": n}


# --------------------------------------------------------------------------- scoring
def score_generations(items: Sequence[TaskItem], generations: Sequence[str],
                      stop: Sequence[str] = DEFAULT_STOP) -> pd.DataFrame:
    """Score generated continuations against the items' formats and gold answers.

    The answer is the continuation before the first stop string, stripped
    (:func:`triphase.tasks.generation.cut_at_stop`). It *complies* when it fully
    matches the item's format and is *correct* when it complies and equals the
    gold answer.

    Returns
    -------
    DataFrame, one row per item: ``item_id, family, gold, generation, answer, compliant, correct``.
    """

    items, generations = list(items), list(generations)
    if len(items) != len(generations):
        raise ValueError(f"got {len(items)} items but {len(generations)} generations")
    rows = []
    for item, text in zip(items, generations):
        answer = cut_at_stop(text, stop)
        compliant = item.complies(answer)
        rows.append({"item_id": item.item_id, "family": item.family, "gold": item.answer, "generation": text,
                     "answer": answer, "compliant": compliant, "correct": compliant and answer == item.answer})
    return pd.DataFrame(rows, columns=["item_id", "family", "gold", "generation", "answer", "compliant", "correct"])


def summarize_scores(per_item: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Metric rows (value, Wilson CI, n_items) from per-item outcomes, per group.

    ``per_item`` needs ``compliant`` and ``correct``; with ``mc_correct`` (NaN where
    multiple choice is undefined), ``mc_chance`` and ``truncated`` it also gives
    ``mc_accuracy``, ``mc_chance`` and ``truncated_prompts``.
    ``accuracy_given_compliance`` counts only compliant items (its ``n_items``).
    """
    by = list(by)
    rows = []
    for key, group in per_item.groupby(by, sort=False) if by else [((), per_item)]:
        key = key if isinstance(key, tuple) else (key,)
        base = dict(zip(by, key))
        compliant = group["compliant"].to_numpy(bool)
        correct = group["correct"].to_numpy(bool)
        rows.append({**base, **proportion_row("instruction_following", compliant)})
        rows.append({**base, **proportion_row("accuracy", correct)})
        rows.append({**base, **proportion_row("accuracy_given_compliance", correct[compliant])})
        if "mc_correct" in group:
            defined = group["mc_correct"].notna().to_numpy()
            if defined.any():
                rows.append({**base, **proportion_row("mc_accuracy", group["mc_correct"].to_numpy()[defined].astype(bool))})
                rows.append({**base, "metric": "mc_chance", "value": float(group["mc_chance"].to_numpy()[defined].mean()),
                             "ci_low": math.nan, "ci_high": math.nan, "n_items": int(defined.sum())})
        if "truncated" in group:
            rows.append({**base, **proportion_row("truncated_prompts", group["truncated"].to_numpy(bool))})
    return pd.DataFrame(rows)


def evaluate_items(model, tokenizer, items: Sequence[TaskItem], prompts: Sequence[str],
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop: Sequence[str] = DEFAULT_STOP,
                   batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
    """Greedy answers and log-likelihood choices of one model on items with their prompts.

    Returns
    -------
    DataFrame, one row per item: the columns of :func:`score_generations` plus
    ``n_new_tokens``, ``prompt_tokens``, ``truncated`` (the prompt did not fit
    the model context and lost its beginning), ``mc_choice`` (chosen option),
    ``mc_correct`` (NaN where undefined) and ``mc_chance`` (1 / number of options).
    """

    items, prompts = list(items), list(prompts)
    if len(items) != len(prompts):
        raise ValueError(f"got {len(items)} items but {len(prompts)} prompts")
    _, raw, n_new = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop,
                                    batch_size=batch_size, progress=progress, return_raw=True)
    table = score_generations(items, raw, stop)
    table["n_new_tokens"] = n_new
    prompt_tokens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    table["prompt_tokens"] = prompt_tokens
    # generation keeps the last (context - max_new_tokens) prompt tokens
    table["truncated"] = [n > model_max_length(model, tokenizer) - max_new_tokens for n in prompt_tokens]
    mc = [mc_options(item) for item in items]
    defined = [i for i, m in enumerate(mc) if m is not None]
    choice, correct, chance = [None] * len(items), [math.nan] * len(items), [math.nan] * len(items)
    if defined:
        ll = option_loglikelihoods(model, tokenizer, [prompts[i] for i in defined], [mc[i][0] for i in defined],
                                   batch_size=batch_size, progress=progress)
        for i, scores in zip(defined, ll):
            options, gold = mc[i]
            best = int(np.argmax(scores))
            choice[i], correct[i], chance[i] = options[best], float(best == gold), 1.0 / len(options)
    table["mc_choice"] = choice
    table["mc_correct"] = correct
    table["mc_chance"] = chance
    return table
