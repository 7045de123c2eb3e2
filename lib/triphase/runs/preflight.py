"""Preflight: before anything is trained or executed, check that a run can find what it needs.

``triphase check RUN.yaml`` prints the report; ``triphase run`` runs the same
checks first and stops on a problem. Nothing here touches the network:

* **dataset**: the adapter opens with the run's ``dataset_options`` (its
  files are where it looks for them), every configured subject is one the
  dataset offers and, for real-tier datasets, each subject's stories have a
  train/test split and readable word timings;
* **checkpoints**: every series is known and the ``checkpoints`` field selects
  existing checkpoints. An organism series not trained yet is checked against
  the checkpoint schedule of its configuration (``triphase run`` trains it).
  With ``HF_HUB_OFFLINE`` set, every chosen hub checkpoint must be in the local
  Hugging Face cache; online, missing ones are downloaded when used.

Examples
--------
>>> from triphase.runs.config import load_run_config
>>> result = preflight(load_run_config({"series": ["organism-tiny"], "dataset_options": {"preset": "tiny"}}))
>>> result.problems
[]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from triphase.datasets import get_dataset
from triphase.models.checkpoints import Checkpoint, select_checkpoints
from triphase.models.hub import cached_snapshot, fetch_command, is_offline, refs_cache_path, weights_deleted
from triphase.models.organism import RUN_FILE, OrganismConfig, run_dir
from triphase.models.series import get_series, load_presets

#: how many missing names a problem line lists before "..."
SHOWN = 6


class PreflightFailed(RuntimeError):
    """A run cannot start: the message holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"preflight found {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


@dataclass
class PreflightResult:
    """What :func:`preflight` found: ``notes`` (fine, for the report) and ``problems`` (one line each)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = list(self.notes)
        lines.append("ok: the run can start" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def _names(items) -> str:
    items = list(items)
    return ", ".join(items[:SHOWN]) + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def organism_trained(config) -> bool:
    """True when the organism run of ``config`` is complete (``run.json`` says so)."""
    path = run_dir(config) / RUN_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def preflight(cfg) -> PreflightResult:
    """Check a loaded :class:`~triphase.runs.config.RunConfig` (see the module docstring)."""
    result = PreflightResult()
    _check_dataset(cfg, result)
    for spec in cfg.series:
        _check_series(spec, cfg.checkpoints, result)
    return result


def _check_dataset(cfg, result: PreflightResult) -> None:
    where = f"dataset {cfg.dataset}"
    try:
        dataset = get_dataset(cfg.dataset, **cfg.dataset_options)
        available = list(dataset.subjects)
    except TypeError as exc:  # an option the adapter does not take
        result.problems.append(f"{where}: dataset_options {cfg.dataset_options!r} do not fit: {exc}")
        return
    except (OSError, ValueError, KeyError) as exc:
        result.problems.append(f"{where}: {' '.join(str(exc).split())}")
        return
    for subject in cfg.subjects:
        if subject not in available:
            result.problems.append(f"{where}: no subject {subject!r}; available: {_names(available) or 'none'}")
            continue
        if getattr(dataset, "tier", "real") != "real":
            result.notes.append(f"{where}, subject {subject}: ok (generated here)")
            continue
        try:
            train, test = dataset.split(subject)
        except (OSError, ValueError, KeyError) as exc:
            result.problems.append(f"{where}, subject {subject}: {' '.join(str(exc).split())}")
            continue
        broken = {}
        for story in list(train) + list(test):
            try:
                dataset.word_timings(story)
            except (OSError, ValueError, KeyError) as exc:
                broken[story] = " ".join(str(exc).split())
        if broken:
            first = next(iter(broken.values()))
            result.problems.append(f"{where}, subject {subject}: {len(broken)} of {len(train) + len(test)} stories "
                                   f"lack word timings ({_names(broken)}); first: {first}")
        else:
            result.notes.append(f"{where}, subject {subject}: {len(train)} training and {len(test)} test stories")


def _check_series(spec, checkpoints, result: PreflightResult) -> None:
    name = spec if isinstance(spec, str) else spec.get("name", "?")
    preset = load_presets().get(spec, {}) if isinstance(spec, str) else {}
    if preset.get("loader") == "organism":
        _check_organism(name, preset.get("config", "default"), checkpoints, result)
        return
    hub_spec = preset or dict(spec)
    revisions = hub_spec.get("revisions")
    if isinstance(revisions, dict) and revisions.get("discover") and not refs_cache_path(hub_spec["repo"]).exists():
        if is_offline():
            result.problems.append(f"series {name}: its revision list is read online (list_repo_refs) and is not "
                                   "cached; HF_HUB_OFFLINE is set: give `revisions:` in an inline series")
        else:
            result.notes.append(f"series {name}: revision list read online on first use")
        return
    try:
        series = get_series(spec)
        chosen = select_checkpoints(series.checkpoints, checkpoints)
    except (OSError, ValueError, TypeError) as exc:
        result.problems.append(f"series {name}: {' '.join(str(exc).split())}")
        return
    hub = [c for c in chosen if c.revision]
    # weights deleted on purpose (delete_weights) once the results were cached: present for a re-run
    deleted = [c.revision for c in hub if weights_deleted(c.source, c.revision)]
    missing = [c.revision for c in hub if cached_snapshot(c.source, c.revision) is None and c.revision not in deleted]
    if deleted:
        result.notes.append(f"series {name}: the weights of {len(deleted)} checkpoint(s) were deleted after their "
                            f"results were cached ({_names(deleted)}); settings that need new results need them "
                            f"fetched again: `{fetch_command(name, deleted if len(deleted) <= SHOWN else None)}`")
    if missing and is_offline():
        result.problems.append(
            f"series {name}: {len(missing)} of {len(chosen)} chosen checkpoints are not in the local Hugging Face "
            f"cache and HF_HUB_OFFLINE is set ({_names(missing)}); fetch them with "
            f"`{fetch_command(name, missing if len(missing) <= SHOWN else None)}`"
        )
        return
    state = f", {len(missing)} to download" if missing else (", all cached" if hub else "")
    result.notes.append(f"series {name}: {len(chosen)} of {len(series.checkpoints)} checkpoints chosen{state}")


def _check_organism(name: str, config: str, checkpoints, result: PreflightResult) -> None:
    try:
        cfg = OrganismConfig.preset(config)
    except (KeyError, ValueError) as exc:
        result.problems.append(f"series {name}: organism config {config!r}: {' '.join(str(exc).split())}")
        return
    trained = organism_trained(cfg)
    if trained:
        schedule = get_series(name).checkpoints
    else:  # not trained yet: check the choice against the checkpoints training will save
        schedule = [Checkpoint(name, f"step{s}", s, s * cfg.tokens_per_step, "") for s in cfg.checkpoint_steps]
    try:
        chosen = select_checkpoints(schedule, checkpoints)
    except (ValueError, TypeError) as exc:
        result.problems.append(f"series {name}: {' '.join(str(exc).split())}")
        return
    state = "trained" if trained else f"not trained yet: it will be trained (config {config})"
    result.notes.append(f"series {name}: {state}; {len(chosen)} of {len(schedule)} checkpoints chosen")
