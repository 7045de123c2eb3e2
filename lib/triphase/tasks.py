"""Downstream tasks (perspective 3): following the instruction vs solving the task.

The paper's first phase coincides with models starting to answer in the format
a task asks for, its third with their becoming able to solve the tasks. This
module measures both, separately, per checkpoint and task family:

* **instruction following**: share of greedy answers that match the item's
  answer format (a regular expression, full match);
* **accuracy**: share of answers equal to the gold answer (a non-compliant
  answer counts as wrong);
* **accuracy given compliance**: accuracy among the compliant answers;
* **log-likelihood multiple-choice accuracy**: share of items whose gold
  option has the highest total log-likelihood as the continuation
  ``" " + option`` (format-free: no generation involved);

each with a 95% Wilson score interval (:func:`wilson_interval`).

Items are :class:`triphase.TaskItem`: the organism's embedded suite comes from
held-out story-world text (:func:`triphase.storyworld.task_items`); any other
suite can be given as a task file (JSON lines or YAML, :func:`load_task_file`).
Real (hub) models are evaluated with lm-evaluation-harness instead
(:mod:`triphase.lmeval`); :func:`downstream_tasks` dispatches on the task preset.

Examples
--------
>>> items = [TaskItem("yesno", "Is it red? Answer with yes or no.", "A red hat.", "^(yes|no)$", "yes")]
>>> score_generations(items, [" yes\\nInstruction: ..."])[["answer", "compliant", "correct"]].values.tolist()
[['yes', True, True]]
>>> [round(x, 4) for x in wilson_interval(81, 263)]
[0.2553, 0.3662]
"""
from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from ._taskitem import TaskItem
from .integrity import SweepLog, attach_identity, checkpoint_flags, write_flags

#: Confidence level of every interval in the tasks table.
CONFIDENCE = 0.95
#: Metric names of the tasks table (embedded suite).
METRICS = ("instruction_following", "accuracy", "accuracy_given_compliance", "mc_accuracy", "mc_chance",
           "truncated_prompts")
#: Fields every task item needs in a task file (``options`` and ``item_id`` are optional).
REQUIRED_FIELDS = ("family", "instruction", "input", "answer_format", "answer")
OPTIONAL_FIELDS = ("options", "item_id")
#: Few-shot examples come from a seed this far from the evaluation seed: a disjoint stream.
FEW_SHOT_SEED_OFFSET = 1_000_003
#: Size of the pool each item's few-shot examples are drawn from.
FEW_SHOT_POOL = 64
#: Blank line between few-shot examples and the question (documents are separated alike).
FEW_SHOT_SEPARATOR = "\n\n"
DEFAULT_N_ITEMS = 200
DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_STOP = ("\n",)
DEFAULT_FEW_SHOT = (0, 2)
#: Multiple-choice option sets for formats without listed options.
YES_NO = ("yes", "no")
LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
DIGITS = tuple(str(d) for d in range(10))
#: At most this many distractor lists for the copy family (rotations / reversal of the gold list).
COPY_DISTRACTORS = 3
#: Bump when per-item scoring changes (keys the per-checkpoint cache).
TASKS_RESULTS_VERSION = 1
TASK_PRESETS_FILE = "tasks.yaml"
SAMPLES_FILE = "tasks_samples.parquet"
RESULTS_FILE = "tasks.parquet"


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
    from scipy.stats import norm

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


# --------------------------------------------------------------------------- task files
def _item_from_record(record, where: str) -> TaskItem:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a task item must be a mapping with fields {', '.join(REQUIRED_FIELDS)}, "
                         f"got {type(record).__name__}")
    name = record.get("item_id") or "?"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"{where} (item {name}): missing field(s) {', '.join(map(repr, missing))}; "
                         f"a task item needs {', '.join(REQUIRED_FIELDS)} (optional: {', '.join(OPTIONAL_FIELDS)})")
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"{where} (item {name}): unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    options = record.get("options") or ()
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"{where} (item {name}): field 'options' must be a list of strings, got {options!r}")
    values = {f: record[f] for f in REQUIRED_FIELDS}
    if not isinstance(values["input"], str):
        raise ValueError(f"{where} (item {name}): field 'input' must be a string, got {values['input']!r}")
    try:
        return TaskItem(**values, options=tuple(options), item_id=str(record.get("item_id") or ""))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_task_file(path) -> list[TaskItem]:
    """Load task items from a JSON-lines or YAML file, validating every item.

    A JSON-lines file (``.jsonl``/``.json``) holds one item per line; a YAML file
    (``.yaml``/``.yml``) a list of items or a mapping with an ``items`` list.
    Fields: ``family``, ``instruction``, ``input``, ``answer_format`` (a regex the
    answer must fully match), ``answer`` (gold; must match the format), optional
    ``options`` (list of str) and ``item_id`` (defaults to ``<file stem>-<n>``).

    Raises
    ------
    ValueError
        Naming the file, the line (JSON lines) or position (YAML), the item and
        the field: a missing field, an invalid regex, a gold answer that does not
        match its format, duplicate item ids.

    Examples
    --------
    >>> items = load_task_file("my_tasks.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    suffix = path.suffix.lower()
    records: list[tuple[str, object]] = []
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}, line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        if isinstance(data, dict) and "items" in data:
            data = data["items"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of task items (or a mapping with an 'items' list)")
        records = [(f"{path}, item #{i + 1}", rec) for i, rec in enumerate(data)]
    else:
        raise ValueError(f"task file {path}: unknown extension {path.suffix!r}; use .jsonl, .json, .yaml or .yml")
    items, seen = [], {}
    for k, (where, record) in enumerate(records):
        if isinstance(record, dict) and not record.get("item_id"):
            record = {**record, "item_id": f"{path.stem}-{k}"}
        item = _item_from_record(record, where)
        if item.item_id in seen:
            raise ValueError(f"{where}: duplicate item_id {item.item_id!r} (first at {seen[item.item_id]})")
        seen[item.item_id] = where
        items.append(item)
    if not items:
        raise ValueError(f"task file {path} holds no task items")
    return items


def write_task_file(items: Sequence[TaskItem], path) -> Path:
    """Write task items as JSON lines (atomically); :func:`load_task_file` reads them back."""
    from ._io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(_plain(item.to_dict())) + "\n" for item in items))
    return path


def _plain(d: dict) -> dict:
    # numpy strings (np.str_) in options are str subclasses; json wants plain values
    return {k: ([str(o) for o in v] if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


# --------------------------------------------------------------------------- suites and prompts
def embedded_items(families: Sequence[str], n_items: int, seed: int = 0) -> dict[str, list[TaskItem]]:
    """The embedded suite: ``n_items`` held-out story-world items per family.

    Examples
    --------
    >>> suite = embedded_items(["yesno"], 3, seed=0)
    >>> len(suite["yesno"])
    3
    """
    from . import storyworld

    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    unknown = [f for f in families if f not in storyworld.TASK_FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; the embedded suite has {', '.join(storyworld.TASK_FAMILIES)}")
    return {f: storyworld.task_items(f, n_items, seed=seed, stream=storyworld.HELDOUT_STREAM) for f in families}


def task_text(item: TaskItem, with_answer: bool = True) -> str:
    """An item as text: ``Instruction: ...\\nInput: ...\\nAnswer:`` (+ ``" " + answer``).

    The story world writes its task documents in this form, so the organism has
    seen it (:func:`triphase.storyworld.format_task_text`).
    """
    from .storyworld import format_task_text

    return format_task_text(item, with_answer=with_answer)


def build_prompt(item: TaskItem, examples: Sequence[TaskItem] = ()) -> str:
    """Prompt for one item: solved examples (k-shot), a blank line between, then the question.

    Examples
    --------
    >>> item = TaskItem("yesno", "Is it red? Answer with yes or no.", "A red hat.", "^(yes|no)$", "yes")
    >>> print(build_prompt(item, [item]))
    Instruction: Is it red? Answer with yes or no.
    Input: A red hat.
    Answer: yes
    <BLANKLINE>
    Instruction: Is it red? Answer with yes or no.
    Input: A red hat.
    Answer:
    """
    parts = [task_text(e, with_answer=True) for e in examples] + [task_text(item, with_answer=False)]
    return FEW_SHOT_SEPARATOR.join(parts)


def few_shot_examples(items: Sequence[TaskItem], k: int, seed: int = 0,
                      pool: Sequence[TaskItem] | None = None) -> list[list[TaskItem]]:
    """``k`` solved examples for each item, drawn (seeded) from a pool disjoint from the items.

    Parameters
    ----------
    items : sequence of TaskItem
        The evaluation items (one family).
    k : int
        Examples per item (0: zero-shot).
    seed : int
        Seed of the evaluation items; the embedded pool uses ``seed + FEW_SHOT_SEED_OFFSET``.
    pool : sequence of TaskItem, optional
        Where examples come from. Default for story-world families: a fresh
        held-out sample from the disjoint seed; for other items: the other items
        of the same list (never the item itself).

    Returns
    -------
    list (one per item) of lists of k TaskItem. Pool items whose question text
    equals an evaluation item's are dropped, so no example answers its own question.
    """
    from . import storyworld

    if k < 0:
        raise ValueError(f"few_shot must be >= 0, got {k}")
    items = list(items)
    if k == 0 or not items:
        return [[] for _ in items]
    family = items[0].family
    same_list = pool is None and family not in storyworld.TASK_FAMILIES
    if pool is None and not same_list:
        pool = storyworld.task_items(family, max(FEW_SHOT_POOL, k), seed=seed + FEW_SHOT_SEED_OFFSET)
    rng = np.random.default_rng([seed, k, FEW_SHOT_SEED_OFFSET])
    questions = [task_text(i, with_answer=False) for i in items]
    if not same_list:
        asked = set(questions)
        shared = [p for p in pool if task_text(p, with_answer=False) not in asked]
    out = []
    for item, question in zip(items, questions):
        if same_list:  # examples from the item list itself: other items, never the question itself
            candidates = [p for p in items if p.item_id != item.item_id
                          and task_text(p, with_answer=False) != question]
        else:
            candidates = shared
        if len(candidates) < k:
            raise ValueError(f"family {family!r}: only {len(candidates)} candidate examples for {k}-shot prompts")
        chosen = rng.choice(len(candidates), size=k, replace=False)
        out.append([candidates[int(c)] for c in chosen])
    return out


def mc_options(item: TaskItem) -> tuple[tuple[str, ...], int] | None:
    """Options scored for log-likelihood multiple choice, and the gold option's index.

    * yes/no items (family ``yesno`` or format ``^(yes|no)$``): ``("yes", "no")``;
    * items with listed options whose gold answer is a letter: the letters
      ``A, B, ...`` (the model names the option, as the format asks);
    * items with listed options containing the gold answer: the options;
    * digit answers (family ``count`` or format ``^[0-9]$``): ``"0"`` ... ``"9"``;
    * family ``copy``: the gold word list against up to three distractor lists
      made of the same words (rotations, then the reversal), so the choice tests
      the order, not the vocabulary; the gold list sits at a position fixed by
      the item id (``np.argmax`` breaks ties towards the first option);
    * anything else: None (multiple choice undefined for the item).

    Examples
    --------
    >>> item = TaskItem("yesno", "Is it red? Answer with yes or no.", "A red hat.", "^(yes|no)$", "no")
    >>> mc_options(item)
    (('yes', 'no'), 1)
    """
    answer = item.answer
    options = tuple(str(o) for o in item.options)
    if item.family == "yesno" or item.answer_format == r"^(yes|no)$":
        return (YES_NO, YES_NO.index(answer)) if answer in YES_NO else None
    if options and answer in LETTERS[:len(options)]:
        letters = LETTERS[:len(options)]
        return letters, letters.index(answer)
    if options and answer in options:
        return options, options.index(answer)
    if item.family == "count" or item.answer_format == r"^[0-9]$":
        return (DIGITS, DIGITS.index(answer)) if answer in DIGITS else None
    if item.family == "copy":
        words = answer.split()
        variants = [" ".join(words[r:] + words[:r]) for r in range(1, len(words))] + [" ".join(reversed(words))]
        distractors = []
        for v in variants:
            if v != answer and v not in distractors:
                distractors.append(v)
        distractors = distractors[:COPY_DISTRACTORS]
        if not distractors:
            return None
        from ._io import stable_hash

        position = int(stable_hash(item.item_id or answer), 16) % (len(distractors) + 1)
        opts = tuple(distractors[:position] + [answer] + distractors[position:])
        return opts, position
    return None


# --------------------------------------------------------------------------- scoring
def score_generations(items: Sequence[TaskItem], generations: Sequence[str],
                      stop: Sequence[str] = DEFAULT_STOP) -> pd.DataFrame:
    """Score generated continuations against the items' formats and gold answers.

    The answer is the continuation before the first stop string, stripped
    (:func:`triphase.generation.cut_at_stop`). It *complies* when it fully
    matches the item's format and is *correct* when it complies and equals the
    gold answer.

    Returns
    -------
    DataFrame, one row per item: ``item_id, family, gold, generation, answer, compliant, correct``.
    """
    from .generation import cut_at_stop

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
    from .generation import greedy_generate, model_max_length, option_loglikelihoods

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


# --------------------------------------------------------------------------- presets
def load_task_presets() -> dict:
    """Task presets from ``presets/tasks.yaml`` (name -> spec with ``kind``)."""
    text = resources.files("triphase").joinpath("presets", TASK_PRESETS_FILE).read_text()
    presets = yaml.safe_load(text) or {}
    for name, spec in presets.items():
        if spec.get("kind") not in ("embedded", "lmeval"):
            raise ValueError(f"{TASK_PRESETS_FILE}: preset {name!r} needs kind 'embedded' or 'lmeval'")
    return presets


def resolve_tasks(tasks, tier: str = "embedded") -> tuple[str, list[str]]:
    """``(kind, names)`` for a tasks argument.

    ``None`` -> the preset ``embedded`` (embedded tier) or ``real`` (real tier);
    a preset name; a task-file path (``.jsonl``/``.json``/``.yaml``/``.yml``);
    a list of story-world families; or a list of lm-evaluation-harness task names.

    Examples
    --------
    >>> resolve_tasks(None, "embedded")
    ('embedded', ['yesno', 'choice', 'count', 'copy'])
    >>> resolve_tasks(["arc_easy", "piqa"])
    ('lmeval', ['arc_easy', 'piqa'])
    """
    from .storyworld import TASK_FAMILIES

    presets = load_task_presets()
    if tasks is None:
        tasks = "real" if tier == "real" else "embedded"
    if isinstance(tasks, (str, Path)):
        text = str(tasks)
        if text in presets:
            spec = presets[text]
            return spec["kind"], list(spec["families"] if spec["kind"] == "embedded" else spec["tasks"])
        if Path(text).suffix.lower() in (".jsonl", ".json", ".yaml", ".yml"):
            return "file", [text]
        if text in TASK_FAMILIES:
            return "embedded", [text]
        raise ValueError(f"tasks={text!r} is neither a preset ({', '.join(presets)}), a task family "
                         f"({', '.join(TASK_FAMILIES)}) nor a task file (.jsonl/.json/.yaml/.yml)")
    names = [str(t) for t in tasks]
    if not names:
        raise ValueError("tasks is empty")
    if all(n in TASK_FAMILIES for n in names):
        return "embedded", names
    if any(n in TASK_FAMILIES for n in names):
        raise ValueError(f"tasks={names} mixes story-world families with other task names; run them separately")
    return "lmeval", names


# --------------------------------------------------------------------------- pipeline
def _few_shot_list(few_shot) -> list[int]:
    values = [few_shot] if isinstance(few_shot, (int, np.integer)) else list(few_shot)
    if not values or any(int(k) < 0 for k in values):
        raise ValueError(f"few_shot must be a non-negative integer or a list of them, got {few_shot!r}")
    return sorted(set(int(k) for k in values))


def _suite(kind: str, names: list[str], n_items: int, seed: int) -> dict[str, list[TaskItem]]:
    if kind == "embedded":
        return embedded_items(names, n_items, seed)
    items = load_task_file(names[0])
    suite: dict[str, list[TaskItem]] = {}
    for item in items:
        suite.setdefault(item.family, []).append(item)
    return {f: v[:n_items] if n_items else v for f, v in suite.items()}


def _checkpoint_items(checkpoint, suite, few_shots, seed, settings, device, dtype, batch_size,
                      progress) -> pd.DataFrame:
    """Per-item outcomes of one checkpoint on the whole suite, cached on disk."""
    from ._home import cache_dir
    from ._io import stable_hash, write_parquet
    from .checkpoints import load_checkpoint, release
    from .features import model_config_hash
    from .hub import remember_identity

    key = stable_hash({
        "version": TASKS_RESULTS_VERSION, "checkpoint": checkpoint.to_dict(),
        "model_config": model_config_hash(checkpoint), "seed": seed, "few_shot": few_shots,
        "items": {f: stable_hash([_plain(i.to_dict()) for i in items]) for f, items in suite.items()},
        **settings,
    })
    path = cache_dir("tasks") / checkpoint.series / checkpoint.name / f"{key}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    model, tokenizer = load_checkpoint(checkpoint, device=device, dtype=dtype)
    try:
        remember_identity(checkpoint, model)
        tables = []
        for family, items in suite.items():
            for k in few_shots:
                examples = few_shot_examples(items, k, seed=seed)
                prompts = [build_prompt(item, ex) for item, ex in zip(items, examples)]
                table = evaluate_items(model, tokenizer, items, prompts, max_new_tokens=settings["max_new_tokens"],
                                       stop=tuple(settings["stop"]), batch_size=batch_size, progress=progress)
                table.insert(0, "few_shot", k)
                tables.append(table)
    finally:
        release(model)
    out = pd.concat(tables, ignore_index=True)
    write_parquet(out, path)
    return out


def downstream_tasks(series="organism", checkpoints="all", tasks=None, n_items: int = DEFAULT_N_ITEMS,
                     few_shot=DEFAULT_FEW_SHOT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     stop: Sequence[str] = DEFAULT_STOP, seed: int = 0, device: str = "auto", dtype=None,
                     dataset: str = "simulated", subject: str = "sim01", batch_size: int = 32,
                     progress: bool = True, lmeval_options: dict | None = None) -> pd.DataFrame:
    """Downstream-task metrics of every chosen checkpoint: the tasks table.

    Parameters
    ----------
    series : str, dict or CheckpointSeries
        Checkpoint series (see :func:`triphase.series.get_series`).
    checkpoints : "all", int or list
        Which checkpoints (see :func:`triphase.checkpoints.select_checkpoints`).
    tasks : None, str or list of str
        A preset of ``presets/tasks.yaml`` (default: ``embedded`` for the embedded
        tier, ``real`` for the real tier), story-world families, a task file, or
        lm-evaluation-harness task names (run through :mod:`triphase.lmeval`).
    n_items : int
        Items per family (embedded suite; first ``n_items`` of each family of a
        task file; ``limit`` for lm-eval tasks when given in ``lmeval_options``).
    few_shot : int or list of int
        Solved examples before each question; a list evaluates each count.
    max_new_tokens : int
        Greedy decoding budget per answer.
    stop : sequence of str
        Stop strings; the answer is the text before the first one.
    seed : int
        Seed of the embedded items and of the few-shot draws.
    device, dtype : str
        Where and in which precision models run (``"auto"``: cuda if available).
    dataset, subject : str
        Name the results folder (``results_dir(series, dataset, subject)``).
    batch_size : int
        Sequences per forward pass.
    progress : bool
        tqdm bars.
    lmeval_options : dict, optional
        Extra keyword arguments for :func:`triphase.lmeval.lmeval_checkpoint`.

    Returns
    -------
    DataFrame
        One row per checkpoint x task x few_shot x metric with columns series,
        checkpoint, step, tokens_seen, task, few_shot, metric, value, ci_low,
        ci_high, n_items, tier. Written atomically to ``tasks.parquet`` in the
        results folder; the per-item outcomes go to ``tasks_samples.parquet``.

    Examples
    --------
    >>> df = downstream_tasks("organism-tiny", checkpoints=3, n_items=50, few_shot=0)  # doctest: +SKIP
    >>> df.query("metric == 'instruction_following'")[["checkpoint", "task", "value"]]  # doctest: +SKIP
    """
    from ._progress import tqdm

    from ._home import results_dir
    from ._io import write_parquet
    from .checkpoints import resolve_device, select_checkpoints
    from .series import get_series

    ser = get_series(series) if isinstance(series, (str, dict)) else series
    chosen = select_checkpoints(ser.checkpoints, checkpoints)
    kind, names = resolve_tasks(tasks, ser.tier)
    device = resolve_device(device)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    few_shots = _few_shot_list(few_shot)
    log = SweepLog("downstream tasks")
    if kind == "lmeval":
        from .lmeval import lmeval_sweep

        table = lmeval_sweep(chosen, names, device=device, dtype=dtype, num_fewshot=few_shots,
                             progress=progress, log=log, **(lmeval_options or {}))
        samples = None
    else:
        suite = _suite(kind, names, n_items, seed)
        settings = {"max_new_tokens": int(max_new_tokens), "stop": list(stop)}
        rows, samples_list = [], []
        for ckpt in tqdm(chosen, desc="downstream tasks", unit="checkpoint", disable=not progress):
            with log.skip_if_missing(ckpt):
                per_item = _checkpoint_items(ckpt, suite, few_shots, seed, settings, device, dtype, batch_size,
                                             progress=False)
                per_item = per_item.assign(task=per_item["family"])
                summary = summarize_scores(per_item, by=("task", "few_shot"))
                for col, value in reversed(list(ckpt.columns().items())):
                    summary.insert(0, col, value)
                    per_item.insert(0, col, value)
                rows.append(summary)
                samples_list.append(per_item)
        log.check_any_done(chosen)  # (lmeval_sweep checks its own)
        table = pd.concat(rows, ignore_index=True)
        samples = pd.concat(samples_list, ignore_index=True)
    columns = ["series", "checkpoint", "step", "tokens_seen", "task", "few_shot", "metric", "value",
               "ci_low", "ci_high", "n_items", "tier"]
    flags = checkpoint_flags(chosen, log, device=device, dtype=dtype)
    table = attach_identity(table[columns], flags)
    out = results_dir(ser.name, dataset, subject)
    write_flags(flags, out, "tasks")
    write_parquet(table, out / RESULTS_FILE)
    if samples is not None:
        write_parquet(samples, out / SAMPLES_FILE)
    return table


def load_tasks_results(series: str, dataset: str = "simulated", subject: str = "sim01",
                       samples: bool = False) -> pd.DataFrame:
    """Read ``tasks.parquet`` (or ``tasks_samples.parquet``) of a finished run."""
    from ._home import results_dir

    path = results_dir(series, dataset, subject, create=False) / (SAMPLES_FILE if samples else RESULTS_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run triphase.tasks.downstream_tasks({series!r}, ...) first")
    return pd.read_parquet(path)


def example_answers(samples: pd.DataFrame, checkpoint: str, task: str, few_shot: int = 0) -> dict:
    """One non-compliant, one compliant-but-wrong and one correct answer of a checkpoint (None where absent).

    Returns
    -------
    dict mapping ``"non-compliant"``, ``"compliant, wrong"``, ``"correct"`` to a row (Series) or None.
    """
    sel = samples[(samples["checkpoint"] == checkpoint) & (samples["task"] == task)
                  & (samples["few_shot"] == few_shot)]
    kinds = {
        "non-compliant": sel[~sel["compliant"]],
        "compliant, wrong": sel[sel["compliant"] & ~sel["correct"]],
        "correct": sel[sel["correct"]],
    }
    return {name: (rows.iloc[0] if len(rows) else None) for name, rows in kinds.items()}


# --------------------------------------------------------------------------- figures
#: Metrics drawn on the same axes per family, and their styles.
PLOT_METRICS = {
    "instruction_following": {"color": "tab:blue", "marker": "o", "label": "instruction following"},
    "accuracy": {"color": "tab:red", "marker": "s", "label": "accuracy"},
    "mc_accuracy": {"color": "tab:green", "marker": "^", "label": "log-likelihood MC accuracy"},
}


def plot_task_metrics(table: pd.DataFrame, few_shot: int = 0, metrics: Sequence[str] = tuple(PLOT_METRICS),
                      tasks: Sequence[str] | None = None, chance: bool = True):
    """Instruction following and accuracy against tokens seen (log x), one panel per task, with 95% CIs.

    Parameters
    ----------
    table : DataFrame
        ``tasks.parquet`` rows (:func:`downstream_tasks`).
    few_shot : int
        Which few-shot count to draw.
    metrics : sequence of str
        Metrics to draw on the same axes.
    tasks : sequence of str, optional
        Panels (default: all tasks in the table).
    chance : bool
        Draw the multiple-choice chance level (``mc_chance``) as a dashed line.

    Returns
    -------
    matplotlib Figure (stamped with the tier).
    """
    import matplotlib.pyplot as plt

    from .plotting import stamp_tier
    from .plotting_brain import log_positions

    sel = table[table["few_shot"] == few_shot]
    if sel.empty:
        raise ValueError(f"no rows with few_shot={few_shot}; available: {sorted(table['few_shot'].unique())}")
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(sel["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = sel[sel["task"] == task].sort_values("tokens_seen")
        for metric in metrics:
            m = rows[rows["metric"] == metric]
            if m.empty:
                continue
            style = PLOT_METRICS.get(metric, {"label": metric})
            x = log_positions(m["tokens_seen"].to_numpy())
            ax.plot(x, m["value"], marker=style.get("marker", "o"), ms=4, color=style.get("color"),
                    label=style["label"])
            ax.fill_between(x, m["ci_low"], m["ci_high"], color=style.get("color"), alpha=0.15, lw=0)
        c = rows[rows["metric"] == "mc_chance"]
        if chance and not c.empty:
            ax.axhline(float(c["value"].mean()), color="0.4", ls="--", lw=1, label="MC chance")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{task} ({few_shot}-shot)")
        ax.set_xlabel("tokens seen (step0 at left edge)")
    axes[0, 0].set_ylabel("share of items")
    axes[0, -1].legend(fontsize=7, loc="best")
    tier = str(sel["tier"].iloc[0])
    fig.suptitle(f"Downstream tasks: {sel['series'].iloc[0]}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    stamp_tier(fig, tier)
    return fig
