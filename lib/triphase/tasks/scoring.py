"""Scoring answers: instruction following (format compliance), accuracy, solving, multiple-choice log-likelihood, Wilson intervals.

Chance levels are those of the best *item-blind* strategy, so that no metric
measured against them can rise by format or label frequency alone:

* generation (:func:`answer_chance`): the share of items whose gold answer is the
  family's most frequent gold answer, i.e. the accuracy of always giving that
  answer. Every gold answer matches the format, so this is at least
  1 / (number of answers the format admits): 1/2 for balanced yes/no items, 1/4 for
  balanced letters A-D, the share of the commonest count for digits (not 1/10), and
  about 1/n for copy items, whose n gold lists all differ.
* multiple choice (:func:`mc_chance_level`): the larger of the same rate on the
  gold *option texts* and the mean of 1 / number of options (a uniform guess), so
  options that differ per item (copy, ARC, SciQ) give 1 / number of options.
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

DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_STOP = ("\n",)
#: Confidence level of every interval in the tasks table.
CONFIDENCE = 0.95
#: Metric names of the tasks table (embedded suite).
METRICS = ("instruction_following", "accuracy", "accuracy_given_compliance", "solving", "mc_accuracy",
           "mc_chance", "mc_above_chance", "truncated_prompts")


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


# --------------------------------------------------------------------------- chance levels
def answer_chance(golds) -> float:
    """Accuracy of the best constant answer: the share of the most frequent gold answer.

    Examples
    --------
    >>> answer_chance(["yes", "no", "no", "yes"])
    0.5
    >>> answer_chance(["1", "1", "2", "3"])
    0.5
    """
    golds = [str(g) for g in golds]
    if not golds:
        raise ValueError("golds is empty: the chance level of no items is undefined")
    return float(pd.Series(golds).value_counts().iloc[0] / len(golds))


def mc_chance_level(gold_options, n_options) -> float:
    """Multiple-choice chance: max(best constant option's accuracy, mean 1 / number of options).

    Parameters
    ----------
    gold_options : sequence of str
        The text of each item's gold option.
    n_options : sequence of int
        Number of options of each item.

    Examples
    --------
    >>> mc_chance_level(["yes", "no", "no", "yes"], [2, 2, 2, 2])
    0.5
    >>> mc_chance_level(["red box", "cat map", "a b", "x y"], [4, 4, 4, 4])  # options differ per item
    0.25
    """
    n_options = np.asarray(n_options, dtype=float)
    if len(gold_options) != n_options.size:
        raise ValueError(f"got {len(gold_options)} gold options but {n_options.size} option counts")
    if (n_options < 1).any():
        raise ValueError("n_options must be >= 1 for every item")
    return max(answer_chance(gold_options), float(np.mean(1.0 / n_options)))


def chance_corrected(value: float, chance: float) -> float:
    """``(value - chance) / (1 - chance)``: 0 at chance, 1 when all right (NaN when chance is 1).

    Examples
    --------
    >>> chance_corrected(0.625, 0.25)
    0.5
    """
    if not 1 - chance > 0:
        return math.nan
    return (value - chance) / (1 - chance)


def _family_chance(families, golds) -> np.ndarray:
    """Per item: :func:`answer_chance` over the items of its family."""
    table = pd.DataFrame({"family": list(families), "gold": [str(g) for g in golds]})
    return table.groupby("family", sort=False)["gold"].transform(answer_chance).to_numpy(float)


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
    DataFrame, one row per item: ``item_id, family, gold, generation, answer, compliant, correct,
    chance`` (:func:`answer_chance` of the item's family among the given items).
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
    table = pd.DataFrame(rows, columns=["item_id", "family", "gold", "generation", "answer", "compliant", "correct"])
    table["chance"] = _family_chance(table["family"], table["gold"]) if len(table) else []
    return table


def summarize_scores(per_item: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Metric rows (value, Wilson CI, n_items) from per-item outcomes, per group.

    ``per_item`` needs ``compliant`` and ``correct``; with ``chance`` (the family's
    chance level, constant within a group) it also gives ``solving``; with
    ``mc_correct`` (NaN where multiple choice is undefined), ``mc_chance`` and
    ``truncated`` it also gives ``mc_accuracy``, ``mc_chance``, ``mc_above_chance`` and
    ``truncated_prompts``. ``accuracy_given_compliance`` and ``solving`` count only
    compliant items (their ``n_items``).

    ``solving`` is accuracy given compliance corrected for chance,
    ``(p - c) / (1 - c)``, and ``mc_above_chance`` is ``mc_accuracy - c``: both
    carry the Wilson interval of their share through the same (monotone) map, so
    the intervals keep the Wilson coverage (the chance level is fixed by the items,
    not estimated from the answers).
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
        given = proportion_row("accuracy_given_compliance", correct[compliant])
        rows.append({**base, **given})
        if "chance" in group:
            chance = _group_chance(group["chance"], "chance")
            rows.append({**base, **_mapped_row("solving", given, lambda p: chance_corrected(p, chance))})
        if "mc_correct" in group:
            defined = group["mc_correct"].notna().to_numpy()
            if defined.any():
                mc = proportion_row("mc_accuracy", group["mc_correct"].to_numpy()[defined].astype(bool))
                mc_chance = _group_chance(group["mc_chance"][defined], "mc_chance")
                rows.append({**base, **mc})
                rows.append({**base, "metric": "mc_chance", "value": mc_chance,
                             "ci_low": math.nan, "ci_high": math.nan, "n_items": int(defined.sum())})
                rows.append({**base, **_mapped_row("mc_above_chance", mc, lambda p: p - mc_chance)})
        if "truncated" in group:
            rows.append({**base, **proportion_row("truncated_prompts", group["truncated"].to_numpy(bool))})
    return pd.DataFrame(rows)


def _group_chance(values, name: str) -> float:
    values = pd.Series(values, dtype=float)
    if values.isna().any() or not np.allclose(values, values.iloc[0]):
        raise ValueError(f"column {name!r} must hold one chance level per group (a family's items share it)")
    return float(values.iloc[0])


def _mapped_row(metric: str, row: dict, transform) -> dict:
    """A share's row carried through a monotone increasing map (value and both bounds)."""
    return {**row, "metric": metric, **{k: transform(row[k]) for k in ("value", "ci_low", "ci_high")}}


def evaluate_items(model, tokenizer, items: Sequence[TaskItem], prompts: Sequence[str],
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop: Sequence[str] = DEFAULT_STOP,
                   batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
    """Greedy answers and log-likelihood choices of one model on items with their prompts.

    Returns
    -------
    DataFrame, one row per item: the columns of :func:`score_generations` plus
    ``n_new_tokens``, ``prompt_tokens``, ``truncated`` (the prompt did not fit
    the model context and lost its beginning), ``mc_choice`` (chosen option),
    ``mc_correct`` (NaN where undefined) and ``mc_chance`` (:func:`mc_chance_level`
    over the family's items whose multiple choice is defined).
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
    choice, correct = [None] * len(items), [math.nan] * len(items)
    if defined:
        ll = option_loglikelihoods(model, tokenizer, [prompts[i] for i in defined], [mc[i][0] for i in defined],
                                   batch_size=batch_size, progress=progress)
        for i, scores in zip(defined, ll):
            options, gold = mc[i]
            best = int(np.argmax(scores))
            choice[i], correct[i] = options[best], float(best == gold)
    table["mc_choice"] = choice
    table["mc_correct"] = correct
    table["mc_chance"] = mc_chance_column(items)
    return table


def mc_chance_column(items: Sequence[TaskItem]) -> np.ndarray:
    """Per item: :func:`mc_chance_level` over its family's items with multiple choice (NaN where undefined)."""
    mc = [mc_options(item) for item in items]
    out = np.full(len(items), math.nan)
    families = {item.family for item in items}
    for family in families:
        members = [i for i, item in enumerate(items) if item.family == family and mc[i] is not None]
        if members:
            level = mc_chance_level([mc[i][0][mc[i][1]] for i in members], [len(mc[i][0]) for i in members])
            out[members] = level
    return out
