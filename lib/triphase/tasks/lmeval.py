"""Real models on standard benchmarks: lm-evaluation-harness, one checkpoint at a time.

Real (hub) checkpoints are evaluated with lm-evaluation-harness through its
Python API, ``lm_eval.simple_evaluate(model="hf", model_args={"pretrained": repo,
"revision": rev, "dtype": ...}, tasks=[...])``:

* multiple-choice log-likelihood tasks (ARC-Easy, ARC-Challenge, PIQA, SciQ,
  HellaSwag; metric ``acc`` -> ``mc_accuracy``, ``acc_norm`` -> ``mc_accuracy_norm``),
  plus ``mc_chance`` and ``mc_above_chance`` computed from the logged samples;
* generative versions of the multiple-choice tasks, shipped with triphase
  (``data/lmeval/triphase_*_gen.yaml``: options listed with letters, "Answer with
  one letter."): ``exact_match`` -> ``accuracy`` and, from the logged answers and
  the task's ``metadata.answer_format``, ``instruction_following`` (the answer
  matches the requested pattern), ``accuracy_given_compliance`` and ``solving``:
  the same metrics, with the same definitions, as the embedded suite;
* IFEval (0-shot only, as the task fixes; its metrics keep IFEval's names with an
  ``ifeval_`` prefix: verifiable constraints are not the answer format).

Rows go into the same tidy tasks table as the embedded suite, with Wilson
intervals computed from the per-item outcomes lm-eval logs; the per-item
outcomes themselves (:func:`sample_outcomes`) go to ``tasks_items.parquet``.

Two pitfalls handled here:

* lm-eval's request cache (``use_cache``/``cache_requests``) is not keyed by
  the model revision, so a checkpoint sweep can silently reuse the previous
  checkpoint's answers. It is never used; results are cached by
  :func:`lmeval_cache_key` instead: repo + *resolved commit hash* (a content
  hash of the weights for local folders) + the task configuration files +
  the lm-eval version + every evaluation setting.
* IFEval needs NLTK's ``punkt_tab`` at run time (and lm-eval tries to download
  it on import): :func:`check_nltk_data` fails before a sweep starts, with the
  command that installs it.

:func:`write_lmeval_task` turns task items into an lm-eval task (YAML over a
local JSON-lines file) so lm-eval can score the embedded suite; the test suite
checks that its accuracy equals :func:`triphase.tasks.scoring.evaluate_items`'s
``mc_accuracy`` on the same items.

Examples
--------
>>> from triphase.models.series import get_series
>>> ser = get_series({"name": "pythia-160m", "repo": "EleutherAI/pythia-160m",
...                   "revisions": ["step1000", "step143000"], "tokens_per_step": 2097152})
>>> df = lmeval_sweep(ser.checkpoints, ["arc_easy", "ifeval"], device="cuda")  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from triphase._home import cache_dir
from triphase._io import atomic_path, stable_hash, write_parquet
from triphase._progress import tqdm
from triphase._taskitem import TaskItem
from triphase.models.hub import ensure_available, is_hub_checkpoint, resolve_commit
from triphase.models.integrity import SweepLog
from triphase.models.loading import resolve_device
from triphase.tasks.items import mc_options
from triphase.tasks.scoring import (CONFIDENCE, answer_chance, mc_chance_level, proportion_row, summarize_scores,
                                    wilson_interval)

#: Our metric names for lm-eval's (others keep lm-eval's name). IFEval's accuracies measure
#: verifiable constraints (word counts, forbidden words), not answering in a requested format,
#: so they do not take the name instruction_following.
METRIC_NAMES = {
    "acc": "mc_accuracy",
    "acc_norm": "mc_accuracy_norm",
    "prompt_level_strict_acc": "ifeval_prompt_level_strict",
    "inst_level_strict_acc": "ifeval_instruction_level_strict",
    "prompt_level_loose_acc": "ifeval_prompt_level_loose",
    "inst_level_loose_acc": "ifeval_instruction_level_loose",
    "exact_match": "accuracy",
}
#: Metrics computed here from the logged samples, per kind of task (beside lm-eval's own).
MC_SAMPLE_METRICS = ("mc_chance", "mc_above_chance")
GENERATIVE_SAMPLE_METRICS = ("instruction_following", "accuracy_given_compliance", "solving")
#: Tasks that fix their own few-shot count at 0: run once, at 0 shots, whatever few_shot asks.
ZERO_SHOT_TASKS = ("ifeval",)
#: Tasks that need NLTK data, and which.
NLTK_REQUIREMENTS = {"ifeval": ("tokenizers/punkt_tab", "punkt_tab")}
#: The YAML template of an lm-eval task over local task items.
EMBEDDED_TASK_TEMPLATE = "embedded_mc.yaml"
#: Generative versions of multiple-choice tasks shipped with triphase (data/lmeval/<name>.yaml).
GENERATIVE_TASK_PREFIX = "triphase_"
GENERATIVE_TASK_SUFFIX = "_gen"
#: Bump when rows are computed differently from lm-eval's output (keys the cache).
#: 2: IFEval renamed; mc_chance, mc_above_chance, compliance and solving from the samples; per-item outcomes.
LMEVAL_RESULTS_VERSION = 2
#: Bytes read per chunk when hashing local weight files.
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------- checks
def check_nltk_data(tasks: Sequence[str]) -> None:
    """Raise before a sweep when a task needs NLTK data that is not installed.

    Raises
    ------
    RuntimeError
        Naming the task, the resource and the install command
        (``python -m nltk.downloader punkt_tab``).
    """
    for task in tasks:
        for prefix, (resource, package) in NLTK_REQUIREMENTS.items():
            if not str(task).startswith(prefix) and not str(task).endswith(prefix):
                continue
            try:  # optional: nltk comes with lm-eval's IFEval, needed by no other task
                import nltk
            except ImportError as exc:
                raise RuntimeError(f"task {task!r} needs the package nltk: pip install nltk") from exc
            try:
                nltk.data.find(resource)
            except LookupError as exc:
                raise RuntimeError(
                    f"task {task!r} needs the NLTK data {package!r}, which is not installed. "
                    f"Install it before the sweep: `python -m nltk.downloader {package}` "
                    f"(or set NLTK_DATA to a folder that holds {resource})."
                ) from exc


# --------------------------------------------------------------------------- identity and cache
def weights_fingerprint(folder) -> str:
    """SHA-256 over the weight and config files of a local model folder (content, not dates)."""
    folder = Path(folder)
    files = sorted(p for pattern in ("*.safetensors", "*.bin", "config.json") for p in folder.glob(pattern))
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{folder} holds no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_identity(checkpoint) -> dict:
    """Where a checkpoint's weights come from, pinned: repo and commit, or folder and content hash.

    Raises
    ------
    RuntimeError
        For a hub checkpoint whose commit cannot be resolved (offline and not cached).
    """

    if is_hub_checkpoint(checkpoint):
        commit = resolve_commit(checkpoint.source, checkpoint.revision)
        if commit is None:
            raise RuntimeError(
                f"cannot resolve {checkpoint.source}@{checkpoint.revision} to a commit: it is not in the local "
                "Hugging Face cache and HF_HUB_OFFLINE is set (fetch it first: triphase fetch model ...)"
            )
        return {"repo": checkpoint.source, "revision": checkpoint.revision, "commit": commit}
    return {"folder": str(Path(checkpoint.source).resolve()), "weights_sha256": weights_fingerprint(checkpoint.source)}


def task_config_hash(task: str, task_manager) -> str:
    """Hash of the files that define an lm-eval task (its YAML folder: includes, utils.py)."""

    entry = task_manager.task_index.get(task)
    if entry is None:
        raise ValueError(f"lm-eval knows no task {task!r}; see lm_eval.tasks.TaskManager().all_tasks")
    if entry.yaml_path is None:
        return stable_hash({"task": task, "config": repr(getattr(entry, "cfg", None))})
    folder = Path(entry.yaml_path).parent
    files = sorted(p for pattern in ("*.yaml", "*.py") for p in folder.glob(pattern))
    return stable_hash({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})


def lmeval_cache_key(identity: dict, tasks: Sequence[str], task_manager, settings: dict) -> str:
    """Cache key of one lm-eval run: model identity, task configs, lm-eval version, settings."""
    import lm_eval  # optional: the `real` extra


    return stable_hash({
        "version": LMEVAL_RESULTS_VERSION, "lm_eval": lm_eval.__version__, "model": identity,
        "tasks": {t: task_config_hash(t, task_manager) for t in tasks}, **settings,
    })


# --------------------------------------------------------------------------- embedded suite as an lm-eval task
def write_lmeval_task(items: Sequence[TaskItem], prompts: Sequence[str], folder, task: str = "triphase_embedded"):
    """Write task items as an lm-eval multiple-choice task: ``<task>.yaml`` + ``<task>.jsonl``.

    Parameters
    ----------
    items : sequence of TaskItem
        Items whose multiple choice is defined (:func:`triphase.tasks.items.mc_options`).
    prompts : sequence of str
        The prompt of each item (few-shot examples included; lm-eval adds none).
    folder : path
        Where to write; pass it as ``TaskManager(include_path=folder)``.
    task : str
        lm-eval task name.

    Returns
    -------
    pathlib.Path of the YAML file.

    Examples
    --------
    >>> yaml_path = write_lmeval_task(items, prompts, "lmeval_tasks")  # doctest: +SKIP
    """


    if len(items) != len(prompts):
        raise ValueError(f"got {len(items)} items but {len(prompts)} prompts")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for item, prompt in zip(items, prompts):
        mc = mc_options(item)
        if mc is None:
            raise ValueError(f"task item {item.item_id!r} (family {item.family!r}) has no multiple-choice options")
        options, gold = mc
        lines.append(json.dumps({"item_id": item.item_id, "prompt": prompt, "choices": list(options), "gold": gold}))
    data_file = folder / f"{task}.jsonl"
    with atomic_path(data_file) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    template = resources.files("triphase").joinpath("data", "lmeval", EMBEDDED_TASK_TEMPLATE).read_text()
    yaml_path = folder / f"{task}.yaml"
    with atomic_path(yaml_path) as tmp:
        tmp.write_text(Template(template).substitute(task=task, data_file=json.dumps(str(data_file.resolve()))))
    return yaml_path


# --------------------------------------------------------------------------- generative versions of MC tasks
def shipped_tasks() -> dict[str, str]:
    """The lm-eval tasks shipped with triphase: task name -> YAML text (``data/lmeval/triphase_*_gen.yaml``).

    Examples
    --------
    >>> sorted(shipped_tasks())[:2]
    ['triphase_arc_challenge_gen', 'triphase_arc_easy_gen']
    """
    folder = resources.files("triphase").joinpath("data", "lmeval")
    out = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(GENERATIVE_TASK_PREFIX) and name.endswith(GENERATIVE_TASK_SUFFIX + ".yaml"):
            out[name[:-len(".yaml")]] = entry.read_text()
    return out


def shipped_tasks_folder() -> Path:
    """A folder holding the shipped task YAMLs (keyed by their content), for ``TaskManager(include_path=...)``.

    The package folder itself also holds the template :data:`EMBEDDED_TASK_TEMPLATE`,
    which is no task, so the YAMLs are copied out.
    """
    tasks = shipped_tasks()
    folder = cache_dir("lmeval") / "shipped_tasks" / stable_hash(tasks)
    for name, text in tasks.items():
        path = folder / f"{name}.yaml"
        if not path.exists():
            with atomic_path(path) as tmp:
                tmp.write_text(text)
    return folder


def _include_paths(tasks: Sequence[str], include_path) -> list | None:
    """``include_path`` plus the shipped tasks' folder when a shipped task is asked for."""
    paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
        else [include_path]
    if set(tasks) & set(shipped_tasks()):
        paths.append(str(shipped_tasks_folder()))
    return [str(p) for p in paths] or None


# --------------------------------------------------------------------------- per-item outcomes
def _answer_text(sample: dict) -> str:
    """The (filtered) generated answer of a generate_until sample."""
    answer = sample["filtered_resps"][0] if sample.get("filtered_resps") else sample["resps"][0]
    while isinstance(answer, (list, tuple)):  # unfiltered responses are lists of generations
        answer = answer[0]
    return str(answer)


def sample_outcomes(task: str, samples: list[dict], config: dict | None) -> pd.DataFrame | None:
    """Per-item outcomes of one lm-eval task from its logged samples (None for other kinds of task).

    * multiple-choice log-likelihood tasks (``output_type: multiple_choice``): ``mc_correct``
      (lm-eval's ``acc`` of the item) and ``mc_chance``
      (:func:`triphase.tasks.scoring.mc_chance_level` over the gold option texts);
    * generative tasks whose config states ``metadata.answer_format``: ``compliant`` (the
      stripped answer matches the format in full), ``correct`` (compliant and equal to the
      target) and ``chance`` (:func:`triphase.tasks.scoring.answer_chance` of the targets).

    Returns
    -------
    DataFrame with columns task, item (``"<task>:<doc_id>"``, the same at every checkpoint),
    compliant, correct (nullable booleans, NA for MC tasks), mc_correct (NaN for generative
    tasks), chance, mc_chance.

    Examples
    --------
    >>> samples = [{"doc_id": i, "target": t, "filtered_resps": [a]} for i, (t, a) in
    ...            enumerate([("A", " A"), ("B", " A"), ("B", "B."), ("A", " B")])]
    >>> out = sample_outcomes("t", samples, {"output_type": "generate_until",
    ...                                      "metadata": {"answer_format": "^[AB]$"}})
    >>> out[["compliant", "correct", "chance"]].values.tolist()
    [[True, True, 0.5], [True, False, 0.5], [False, False, 0.5], [True, False, 0.5]]
    """
    config = config or {}
    if not samples:
        return None
    ids = [f"{task}:{s['doc_id']}" for s in samples]
    output_type = config.get("output_type")
    answer_format = (config.get("metadata") or {}).get("answer_format")
    if output_type == "multiple_choice" and all("acc" in s for s in samples):
        targets = [s["target"] for s in samples]
        n_options = [len(s["arguments"]) for s in samples]
        if all(isinstance(t, (int, np.integer)) for t in targets):
            golds = [str(s["arguments"][t][1]).strip() for s, t in zip(samples, targets)]
            chance = mc_chance_level(golds, n_options)
        else:  # several gold options per item: no single constant answer to compare with
            chance = math.nan
        return pd.DataFrame({"task": task, "item": ids, "compliant": pd.array([pd.NA] * len(ids), dtype="boolean"),
                             "correct": pd.array([pd.NA] * len(ids), dtype="boolean"),
                             "mc_correct": [float(s["acc"]) for s in samples], "chance": math.nan,
                             "mc_chance": chance})
    if output_type == "generate_until" and answer_format:
        answers = [_answer_text(s).strip() for s in samples]
        targets = [str(s["target"]).strip() for s in samples]
        compliant = [re.fullmatch(answer_format, a) is not None for a in answers]
        correct = [c and a == t for c, a, t in zip(compliant, answers, targets)]
        return pd.DataFrame({"task": task, "item": ids, "compliant": pd.array(compliant, dtype="boolean"),
                             "correct": pd.array(correct, dtype="boolean"), "mc_correct": math.nan,
                             "chance": answer_chance(targets), "mc_chance": math.nan})
    return None


def _sample_rows(task: str, per_item: pd.DataFrame, lmeval_values: dict) -> list[dict]:
    """Rows computed from per-item outcomes: chance-corrected metrics, and compliance for generative tasks."""
    if per_item["mc_correct"].notna().all():
        mc = proportion_row("mc_accuracy", per_item["mc_correct"].to_numpy(bool))
        chance = float(per_item["mc_chance"].iloc[0])
        shift = {k: mc[k] - chance for k in ("value", "ci_low", "ci_high")}
        return [{"task": task, "metric": "mc_chance", "value": chance, "ci_low": math.nan, "ci_high": math.nan,
                 "n_items": mc["n_items"]},
                {"task": task, **mc, "metric": "mc_above_chance", **shift}]
    table = per_item.astype({"compliant": bool, "correct": bool})
    summary = summarize_scores(table, by=()).set_index("metric")
    accuracy = lmeval_values.get("accuracy")
    if accuracy is not None and not math.isclose(summary.loc["accuracy", "value"], accuracy, abs_tol=1e-9):
        raise RuntimeError(f"lm-eval task {task}: exact_match={accuracy} but the logged answers give "
                           f"{summary.loc['accuracy', 'value']} (the task's metric and answer_format disagree)")
    return [{"task": task, "metric": m, **summary.loc[m].to_dict()} for m in GENERATIVE_SAMPLE_METRICS]


# --------------------------------------------------------------------------- running
def _binary_outcomes(samples: list[dict], metric: str) -> list[bool] | None:
    """Per-item (or per-instruction) binary outcomes of a metric from lm-eval's logged samples."""
    outcomes: list[bool] = []
    for sample in samples:
        value = sample.get(metric)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or (isinstance(v, (int, float)) and float(v) in (0.0, 1.0)):
                outcomes.append(bool(v))
            else:
                return None
    return outcomes


def results_rows(results: dict, per_item: dict[str, pd.DataFrame] | None = None) -> list[dict]:
    """Tidy rows (task, metric, value, ci_low, ci_high, n_items) from ``simple_evaluate``'s output.

    Binary metrics get a Wilson interval from the logged per-item outcomes; others
    a normal interval from lm-eval's standard error where it has one. Tasks with
    per-item outcomes (:func:`sample_outcomes`; computed here unless given) also get
    :data:`MC_SAMPLE_METRICS` or :data:`GENERATIVE_SAMPLE_METRICS`.
    """


    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    rows = []
    for task, metrics in results["results"].items():
        samples = results.get("samples", {}).get(task, [])
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            name = METRIC_NAMES.get(metric, metric)
            if filt != "none":
                name = f"{name}[{filt}]"
            outcomes = _binary_outcomes(samples, metric) if samples else None
            if outcomes:
                k, n = sum(outcomes), len(outcomes)
                low, high = wilson_interval(k, n)
                if not math.isclose(k / n, float(value), abs_tol=1e-9):
                    raise RuntimeError(f"lm-eval task {task}: {metric}={value} but its logged samples give {k}/{n}")
            else:
                stderr = metrics.get(f"{metric}_stderr,{filt}")
                n = len(samples) or int(results.get("n-samples", {}).get(task, {}).get("effective", 0))
                ok = isinstance(stderr, (int, float)) and math.isfinite(stderr)
                low, high = (value - z * stderr, value + z * stderr) if ok else (math.nan, math.nan)
            rows.append({"task": task, "metric": name, "value": float(value), "ci_low": low, "ci_high": high,
                         "n_items": int(n)})
        outcomes = (per_item or {}).get(task) if per_item is not None else \
            sample_outcomes(task, samples, results.get("configs", {}).get(task))
        if outcomes is not None:
            values = {r["metric"]: r["value"] for r in rows if r["task"] == task}
            rows.extend(_sample_rows(task, outcomes, values))
    return rows


def lmeval_checkpoint(checkpoint, tasks: Sequence[str], device: str = "auto", dtype=None, num_fewshot: int = 0,
                      batch_size: int | str = 8, limit: int | None = None, include_path=None,
                      include_defaults: bool = True, seed: int = 0, gen_kwargs: dict | None = None,
                      cache: bool = True, return_items: bool = False):
    """Run lm-eval tasks on one checkpoint (cached by commit and task config).

    Parameters
    ----------
    checkpoint : Checkpoint
        A hub checkpoint (repo + revision) or a local Hugging Face folder.
    tasks : sequence of str
        lm-eval task names.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:0"``...
    dtype : str or None
        Model dtype (default: bfloat16 on GPU, float32 on CPU).
    num_fewshot : int
        lm-eval's few-shot count (tasks that fix their own, like IFEval, keep it).
    batch_size : int or "auto"
    limit : int, optional
        At most this many items per task (quick looks; reported in ``n_items``).
    include_path : path, optional
        Folder(s) of extra task YAML files (e.g. :func:`write_lmeval_task`).
    include_defaults : bool
        Also index lm-eval's built-in tasks (slower to start).
    seed : int
        lm-eval's random, numpy, torch and few-shot seeds.
    gen_kwargs : dict, optional
        Generation settings for generative tasks.
    cache : bool
        Read/write the triphase result cache.
    return_items : bool
        Also return the per-item outcomes (:func:`sample_outcomes`, with the join columns and few_shot).

    Returns
    -------
    DataFrame with the join columns and task, few_shot, metric, value, ci_low, ci_high, n_items
    (and, with ``return_items``, the per-item DataFrame).
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    # optional: lm-evaluation-harness is the `real` extra, needed only for hub models
    import lm_eval
    from lm_eval.tasks import TaskManager


    tasks = list(tasks)
    check_nltk_data(tasks)
    device = resolve_device(device)
    if dtype is None:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    dtype = str(dtype).replace("torch.", "")
    task_manager = TaskManager(include_path=_include_paths(tasks, include_path), include_defaults=include_defaults)
    settings = {"device": device.split(":")[0], "dtype": dtype, "num_fewshot": int(num_fewshot), "limit": limit,
                "seed": seed, "gen_kwargs": gen_kwargs or {}}
    ensure_available(checkpoint)  # offline and not cached: CheckpointMissingError naming the fetch command
    identity = model_identity(checkpoint)
    key = lmeval_cache_key(identity, tasks, task_manager, settings)
    path = cache_dir("lmeval") / checkpoint.series / checkpoint.name / f"{key}.parquet"
    items_path = path.with_name(f"{key}_items.parquet")
    if cache and path.exists() and items_path.exists():
        rows = pd.read_parquet(path)
        return (rows, pd.read_parquet(items_path)) if return_items else rows
    model_args = {"pretrained": str(checkpoint.source), "dtype": dtype}
    if checkpoint.revision:
        model_args["revision"] = checkpoint.revision
    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=tasks, num_fewshot=int(num_fewshot), batch_size=batch_size,
        device=device, use_cache=None, cache_requests=False, limit=limit, log_samples=True, bootstrap_iters=0,
        task_manager=task_manager, gen_kwargs=gen_kwargs, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results (not rank 0?)")
    per_item = {}
    for task in results["results"]:
        outcomes = sample_outcomes(task, results.get("samples", {}).get(task, []),
                                   results.get("configs", {}).get(task))
        if outcomes is not None:
            per_item[task] = outcomes
    rows = pd.DataFrame(results_rows(results, per_item))
    items = pd.concat(per_item.values(), ignore_index=True) if per_item else pd.DataFrame(
        columns=["task", "item", "compliant", "correct", "mc_correct", "chance", "mc_chance"])
    for table in (rows, items):
        table.insert(1, "few_shot", int(num_fewshot))
        for col, value in reversed(list(checkpoint.columns().items())):
            table.insert(0, col, value)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if cache:
        write_parquet(items, items_path)
        write_parquet(rows, path)
    return (rows, items) if return_items else rows


def few_shot_plan(tasks: Sequence[str], num_fewshot) -> dict[int, list[str]]:
    """Which tasks run at which few-shot count: :data:`ZERO_SHOT_TASKS` run once, at 0 shots.

    Examples
    --------
    >>> few_shot_plan(["arc_easy", "ifeval"], [0, 2])
    {0: ['arc_easy', 'ifeval'], 2: ['arc_easy']}
    >>> few_shot_plan(["arc_easy", "ifeval"], 2)
    {0: ['ifeval'], 2: ['arc_easy']}
    """
    shots = [int(num_fewshot)] if isinstance(num_fewshot, (int, np.integer)) else [int(k) for k in num_fewshot]
    plan = {k: [t for t in tasks if k == 0 or t not in ZERO_SHOT_TASKS] for k in sorted(set(shots))}
    zero_only = [t for t in tasks if t in ZERO_SHOT_TASKS]
    if zero_only and 0 not in plan:
        plan[0] = zero_only
    return {k: plan[k] for k in sorted(plan) if plan[k]}


def lmeval_sweep(checkpoints, tasks: Sequence[str], device: str = "auto", dtype=None, num_fewshot=0,
                 progress: bool = True, log=None, return_items: bool = False, **options):
    """:func:`lmeval_checkpoint` over checkpoints (and few-shot counts); NLTK checked first.

    A checkpoint whose branch is missing is skipped by name (recorded in ``log``,
    a :class:`triphase.models.integrity.SweepLog`, when given) and the sweep goes on.
    Tasks that fix 0 shots (IFEval) run once per checkpoint, at 0 shots
    (:func:`few_shot_plan`).

    Returns
    -------
    DataFrame: one row per checkpoint x task x few_shot x metric (and, with
    ``return_items``, the per-item outcomes of :func:`lmeval_checkpoint`).
    """


    log = log if log is not None else SweepLog("lm-eval")
    checkpoints = list(checkpoints)
    tasks = list(tasks)
    check_nltk_data(tasks)
    plan = few_shot_plan(tasks, num_fewshot)
    tables, item_tables = [], []
    for ckpt in tqdm(checkpoints, desc="lm-eval", unit="checkpoint", disable=not progress):
        with log.skip_if_missing(ckpt):
            for k, names in plan.items():
                rows, items = lmeval_checkpoint(ckpt, names, device=device, dtype=dtype, num_fewshot=k,
                                                return_items=True, **options)
                tables.append(rows)
                item_tables.append(items)
    log.check_any_done(checkpoints)
    table = pd.concat(tables, ignore_index=True)
    return (table, pd.concat(item_tables, ignore_index=True)) if return_items else table
