"""Downstream tasks (perspective 3): following the instruction vs solving the task.

The paper's first phase coincides with models starting to answer in the format
a task asks for, its third with their becoming able to solve the tasks. This
module measures both, separately, per checkpoint and task family:

* **instruction following**: share of greedy answers that match the item's
  answer format (a regular expression, full match);
* **accuracy**: share of answers equal to the gold answer (a non-compliant
  answer counts as wrong);
* **accuracy given compliance**: accuracy among the compliant answers;
* **solving**: accuracy given compliance corrected for chance,
  ``(p - chance) / (1 - chance)``: 0 for a model that follows the format but
  answers item-blind, 1 when every compliant answer is right; it cannot rise by
  format alone (:mod:`triphase.tasks.scoring` defines the chance levels);
* **log-likelihood multiple-choice accuracy**: share of items whose gold
  option has the highest total log-likelihood as the continuation
  ``" " + option`` (format-free: no generation involved), and
  **mc_above_chance**, the same minus its chance level;

each with a 95% Wilson score interval (:func:`wilson_interval`; solving and
mc_above_chance carry it through their map). Few-shot examples are separated by
the model's document separator (its end-of-text token,
:func:`triphase.tasks.items.document_separator`). Per-item outcomes go to
``tasks_items.parquet`` (the same item ids at every checkpoint, so items can be
resampled jointly across checkpoints).

Items are :class:`triphase.TaskItem`: the organism's embedded suite comes from
held-out story-world text (:func:`triphase.models.storyworld.task_items`); any other
suite can be given as a task file (JSON lines or YAML, :func:`load_task_file`).
Real (hub) models are evaluated with lm-evaluation-harness instead
(:mod:`triphase.tasks.lmeval`); :func:`downstream_tasks` dispatches on the task preset.

Examples
--------
>>> from triphase._taskitem import TaskItem
>>> from triphase.tasks.scoring import score_generations, wilson_interval
>>> items = [TaskItem("yesno", "Is it red? Answer with yes or no.", "A red hat.", "^(yes|no)$", "yes")]
>>> score_generations(items, [" yes\\nInstruction: ..."])[["answer", "compliant", "correct"]].values.tolist()
[['yes', True, True]]
>>> [round(x, 4) for x in wilson_interval(81, 263)]
[0.2553, 0.3662]
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from triphase._home import cache_dir, results_dir
from triphase._io import stable_hash, write_parquet
from triphase._progress import tqdm
from triphase._taskitem import TaskItem
from triphase.models.checkpoints import select_checkpoints
from triphase.models.features import model_config_hash
from triphase.models.integrity import SweepLog, attach_identity, checkpoint_flags, remember_identity, write_flags
from triphase.models.loading import load_checkpoint, release, resolve_device
from triphase.models.series import get_series
from triphase.models.storyworld import TASK_FAMILIES
from triphase.tasks.items import (_plain, build_prompt, document_separator, embedded_items, few_shot_examples,
                                  load_task_file)
from triphase.tasks.lmeval import lmeval_sweep
from triphase.tasks.scoring import DEFAULT_MAX_NEW_TOKENS, DEFAULT_STOP, evaluate_items, summarize_scores

DEFAULT_N_ITEMS = 200
DEFAULT_FEW_SHOT = (0, 2)
#: Bump when per-item scoring changes (keys the per-checkpoint cache).
#: 2: few-shot examples separated by the model's end-of-text token; chance levels per item.
#: 3: the LM head runs on the scored positions only (the same values up to rounding).
TASKS_RESULTS_VERSION = 3
TASK_PRESETS_FILE = "tasks.yaml"
SAMPLES_FILE = "tasks_samples.parquet"
ITEMS_FILE = "tasks_items.parquet"
RESULTS_FILE = "tasks.parquet"
#: Columns of ``tasks_items.parquet``: one row per checkpoint x task x few-shot count x item.
ITEM_COLUMNS = ("series", "checkpoint", "step", "task", "few_shot", "item", "compliant", "correct", "mc_correct",
                "chance", "mc_chance")
#: ``few_shot_separator`` value meaning "the model's own document separator".
MODEL_SEPARATOR = "model"


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
    """Per-item outcomes of one checkpoint on the whole suite, cached on disk.

    ``settings["few_shot_separator"]`` is :data:`MODEL_SEPARATOR` (the tokenizer's
    end-of-text token, a property of the checkpoint, which is keyed) or a string.
    """

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
        separator = settings["few_shot_separator"]
        separator = document_separator(tokenizer) if separator == MODEL_SEPARATOR else separator
        tables = []
        for family, items in suite.items():
            for k in few_shots:
                examples = few_shot_examples(items, k, seed=seed)
                prompts = [build_prompt(item, ex, separator=separator) for item, ex in zip(items, examples)]
                table = evaluate_items(model, tokenizer, items, prompts, max_new_tokens=settings["max_new_tokens"],
                                       stop=tuple(settings["stop"]), batch_size=batch_size, progress=progress)
                table.insert(0, "few_shot", k)
                table["few_shot_separator"] = separator
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
                     progress: bool = True, lmeval_options: dict | None = None,
                     few_shot_separator: str = MODEL_SEPARATOR, write: bool = True) -> pd.DataFrame:
    """Downstream-task metrics of every chosen checkpoint: the tasks table.

    Parameters
    ----------
    series : str, dict or CheckpointSeries
        Checkpoint series (see :func:`triphase.models.series.get_series`).
    checkpoints : "all", int or list
        Which checkpoints (see :func:`triphase.models.checkpoints.select_checkpoints`).
    tasks : None, str or list of str
        A preset of ``presets/tasks.yaml`` (default: ``embedded`` for the embedded
        tier, ``real`` for the real tier), story-world families, a task file, or
        lm-evaluation-harness task names (run through :mod:`triphase.tasks.lmeval`).
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
        Extra keyword arguments for :func:`triphase.tasks.lmeval.lmeval_checkpoint`.
    few_shot_separator : str
        What joins few-shot examples and the question: ``"model"`` (default) the
        model's document separator, its end-of-text token as in its training text
        (:func:`triphase.tasks.items.document_separator`), or a literal string.
        lm-eval tasks use lm-eval's own few-shot delimiter (a blank line).
    write : bool
        Write the tables to the results folder (False: only fill the per-checkpoint
        caches, as the scale-out workers do).

    Returns
    -------
    DataFrame
        One row per checkpoint x task x few_shot x metric with columns series,
        checkpoint, step, tokens_seen, task, few_shot, metric, value, ci_low,
        ci_high, n_items, tier. Written atomically to ``tasks.parquet`` in the
        results folder; every item's generation and outcomes go to
        ``tasks_samples.parquet`` (embedded tier) and the per-item outcomes in the
        columns :data:`ITEM_COLUMNS` to ``tasks_items.parquet`` (both tiers).

    Examples
    --------
    >>> df = downstream_tasks("organism-tiny", checkpoints=3, n_items=50, few_shot=0)  # doctest: +SKIP
    >>> df.query("metric == 'instruction_following'")[["checkpoint", "task", "value"]]  # doctest: +SKIP
    """


    ser = get_series(series) if isinstance(series, (str, dict)) else series
    chosen = select_checkpoints(ser.checkpoints, checkpoints)
    kind, names = resolve_tasks(tasks, ser.tier)
    device = resolve_device(device)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    few_shots = _few_shot_list(few_shot)
    if not isinstance(few_shot_separator, str) or not few_shot_separator:
        raise ValueError(f"few_shot_separator must be {MODEL_SEPARATOR!r} or a non-empty string, "
                         f"got {few_shot_separator!r}")
    log = SweepLog("downstream tasks")
    if kind == "lmeval":
        table, items_table = lmeval_sweep(chosen, names, device=device, dtype=dtype, num_fewshot=few_shots,
                                          progress=progress, log=log, return_items=True, **(lmeval_options or {}))
        samples = None
    else:
        suite = _suite(kind, names, n_items, seed)
        settings = {"max_new_tokens": int(max_new_tokens), "stop": list(stop),
                    "few_shot_separator": few_shot_separator}
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
        items_table = samples.rename(columns={"item_id": "item"})
    columns = ["series", "checkpoint", "step", "tokens_seen", "task", "few_shot", "metric", "value",
               "ci_low", "ci_high", "n_items", "tier"]
    flags = checkpoint_flags(chosen, log, device=device, dtype=dtype)
    table = attach_identity(table[columns], flags)
    if not write:
        return table
    out = results_dir(ser.name, dataset, subject)
    write_flags(flags, out, "tasks")
    write_parquet(table, out / RESULTS_FILE)
    write_parquet(items_table[list(ITEM_COLUMNS)].reset_index(drop=True), out / ITEMS_FILE)
    if samples is not None:
        write_parquet(samples, out / SAMPLES_FILE)
    return table


def load_tasks_results(series: str, dataset: str = "simulated", subject: str = "sim01",
                       samples: bool = False, items: bool = False) -> pd.DataFrame:
    """Read ``tasks.parquet`` (``tasks_samples.parquet`` with ``samples``, ``tasks_items.parquet`` with ``items``)."""

    if samples and items:
        raise ValueError("samples and items name different files; ask for one of them")
    name = SAMPLES_FILE if samples else ITEMS_FILE if items else RESULTS_FILE
    path = results_dir(series, dataset, subject, create=False) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run triphase.tasks.sweep.downstream_tasks({series!r}, ...) first")
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
