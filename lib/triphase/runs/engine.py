"""Scale-out: one unit of work per checkpoint, run by Dask; the notebooks are the reduce step.

A *unit* is everything the chapters 01-03 compute for one checkpoint of one
series: the brain sweep for every subject, the internal-states sweep and the
task sweep, each called with ``checkpoints=[that checkpoint]`` and *exactly*
the keyword arguments its notebook will pass (:func:`sweep_arguments`, one
table, :data:`SWEEP_ARGUMENTS`, checked against the notebooks' calls by the
tests). The sweeps cache every per-checkpoint result under a key of all their
settings, so when the runner then executes the notebooks as before, each
notebook finds every checkpoint cached and only reads, tabulates and plots.

Where the units run is the run's ``scheduler`` (:func:`triphase.runs.config.check_scheduler`):

* ``local`` with one worker (the default): nothing here runs; the notebooks
  compute in-process as they always did, and no Dask is needed;
* ``local`` with ``n_workers > 1``: a :class:`distributed.LocalCluster` of
  worker processes (``gpus: N``: N workers, one GPU each);
* ``address``: any running Dask scheduler;
* ``slurm``: a :class:`dask_jobqueue.SLURMCluster` (:func:`slurm_cluster`).

A worker killed mid-unit is replaced and the unit re-run by Dask (the
scheduler's ``allowed-failures``); results already cached are not recomputed
and a concurrent finisher of the same cache key is harmless
(:func:`triphase._io.atomic_dir`).
"""
from __future__ import annotations

import ast
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from triphase._home import data_home
from triphase.brain.encoding import DEFAULT_ALPHAS
from triphase.brain.sweep import brain_alignment
from triphase.internal.sweep import internal_states
from triphase.models.checkpoints import select_checkpoints
from triphase.models.hub import delete_checkpoint_weights, is_hub_checkpoint
from triphase.models.loading import one_load_per_checkpoint
from triphase.models.series import get_series
from triphase.runs.template import notebook_parameters
from triphase.tasks.sweep import downstream_tasks

logger = logging.getLogger(__name__)

#: the sweep function each chapter notebook calls
SWEEPS = {"01_brain_alignment": brain_alignment, "02_internal_states": internal_states,
          "03_downstream_tasks": downstream_tasks}
#: order of the sweeps inside a unit: the internal-states sweep last, by when the final checkpoint's unit
#: (submitted first) has usually cached the CKA reference the others need
SWEEP_ORDER = ("01_brain_alignment", "03_downstream_tasks", "02_internal_states")


def _alphas(value):
    return DEFAULT_ALPHAS if value is None else value


def _options(value):
    return dict(value or {})


#: per notebook, the sweep's keyword arguments as the notebook's call cell computes them:
#: keyword -> notebook parameter, or (parameter, the notebook's transformation of it)
SWEEP_ARGUMENTS = {
    "01_brain_alignment": {
        "series": "series", "checkpoints": "checkpoints", "dataset": "dataset",
        "dataset_options": ("dataset_options", _options), "subject": "subject", "context": "context",
        "layers": "layers", "alphas": ("alphas", _alphas), "n_perm": "n_perm", "n_boot": "n_boot", "seed": "seed",
        "controls": "controls", "device": "device",
    },
    "02_internal_states": {
        "series": "series", "checkpoints": "checkpoints", "dataset": "dataset", "subject": "subject",
        "layers": "layers", "text_source": "text_source", "n_stories": "n_stories", "token_budget": "token_budget",
        "probes": "probes", "probe_splits": "probe_splits", "probe_components": "probe_components",
        "induction_length": "induction_length", "induction_sequences": "induction_sequences",
        "context": "context", "seed": "seed", "device": "device",
        "dataset_options": ("dataset_options", _options),
    },
    "03_downstream_tasks": {
        "series": "series", "checkpoints": "checkpoints", "tasks": "tasks", "n_items": "n_items",
        "few_shot": "few_shot", "max_new_tokens": "max_new_tokens", "stop": ("stop", tuple), "seed": "seed",
        "device": "device", "dataset": "dataset", "subject": "subject",
    },
}
#: Dask resource a GPU worker offers and a unit asks for: one checkpoint per GPU
GPU_RESOURCE = "GPU"
#: environment a worker takes over from the driver: where the caches are and whether to go online
FORWARDED_ENVIRONMENT = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_WORKER_INDEX = re.compile(r"-(\d+)$")


@dataclass
class Unit:
    """The work of one checkpoint: ``calls`` are (notebook, sweep keyword arguments) in :data:`SWEEP_ORDER`."""

    series: str
    checkpoint: str
    step: int
    final: bool
    hub: bool
    calls: list = field(default_factory=list)

    @property
    def key(self) -> str:
        """The Dask key (shown on the dashboard and in the log)."""
        return f"checkpoint-{self.series}-{self.checkpoint}"


class UnitsFailed(RuntimeError):
    """One or more checkpoint units raised (the message names each and its error)."""


def notebook_defaults(notebook: str, root: Path | None = None) -> dict:
    """The defaults of a notebook's ``parameters`` cell as Python values (expressions: left out).

    Examples
    --------
    >>> notebook_defaults("01_brain_alignment")["n_perm"]
    1000
    """
    values = {}
    for name, text in notebook_parameters(notebook, root).items():
        try:
            values[name] = ast.literal_eval(text or "None")
        except (ValueError, SyntaxError):
            continue
    return values


def sweep_arguments(notebook: str, parameters: dict, root: Path | None = None) -> dict:
    """The keyword arguments ``notebook`` passes to its sweep when run with ``parameters`` (over its defaults).

    Examples
    --------
    >>> kwargs = sweep_arguments("03_downstream_tasks", {"series": "organism-tiny", "n_items": 40})
    >>> kwargs["n_items"], kwargs["stop"], kwargs["few_shot"]
    (40, ('\\n',), [0, 2])
    """
    values = {**notebook_defaults(notebook, root), **parameters}
    kwargs = {}
    for keyword, source in SWEEP_ARGUMENTS[notebook].items():
        name, transform = (source, None) if isinstance(source, str) else source
        kwargs[keyword] = values[name] if transform is None else transform(values[name])
    return kwargs


def plan_units(jobs, root: Path | None = None) -> list[Unit]:
    """One :class:`Unit` per checkpoint that ``jobs`` (``(notebook, parameters)`` as the runner passes them) touch.

    Notebooks without a sweep (00, 04) are ignored. Units come final checkpoint
    first (its internal states are the others' CKA reference), then by step.
    """
    units: dict[tuple, Unit] = {}
    for notebook, parameters in jobs:
        if notebook not in SWEEPS:
            continue
        kwargs = sweep_arguments(notebook, parameters, root)
        series = get_series(kwargs["series"])
        final = series.checkpoints[-1].name
        for ckpt in select_checkpoints(series.checkpoints, kwargs["checkpoints"]):
            unit = units.setdefault((series.name, ckpt.name), Unit(
                series.name, ckpt.name, ckpt.step, ckpt.name == final, is_hub_checkpoint(ckpt)))
            call = (notebook, {**kwargs, "checkpoints": [ckpt.name]})
            if call not in unit.calls:
                unit.calls.append(call)
    for unit in units.values():
        unit.calls.sort(key=lambda call: SWEEP_ORDER.index(call[0]))
    return sorted(units.values(), key=lambda u: (not u.final, u.series, u.step))


# --------------------------------------------------------------------------- the worker side
def gpu_slot(worker_name, visible: list[str]) -> str | None:
    """The GPU a worker takes: the i-th of the machine's ``visible`` ones for its i-th worker process.

    A LocalCluster names its workers 0, 1, ...; dask-jobqueue names the
    processes of one job ``<job>-0``, ``<job>-1``, ...; a single-process job
    (no index) takes the first GPU.

    Examples
    --------
    >>> gpu_slot(1, ["0", "1"]), gpu_slot("SLURMCluster-3-1", ["4", "5"]), gpu_slot("SLURMCluster-3", ["6"])
    ('1', '5', '6')
    >>> gpu_slot(0, []) is None
    True
    """
    if not visible:
        return None
    if isinstance(worker_name, int):
        index = worker_name
    else:
        match = _WORKER_INDEX.search(str(worker_name))
        index = int(match[1]) if match else 0
    return visible[index % len(visible)]


def _pin_gpu(gpus: int) -> None:
    """Make this worker process see one GPU only (``CUDA_VISIBLE_DEVICES``), before torch starts CUDA."""
    # deferred: optional dependency (Dask), imported only where units run on a cluster
    from distributed import get_worker

    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        return  # already pinned by this process's first unit (CUDA cannot be re-pointed afterwards)
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [v for v in listed.split(",") if v] if listed else [str(i) for i in range(gpus)]
    slot = gpu_slot(get_worker().name, visible)
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot


def _call_sweep(notebook: str, kwargs: dict) -> None:
    """Call a notebook's sweep without writing its results tables (the notebook writes them)."""
    SWEEPS[notebook](**kwargs, write=False, progress=False)


def run_unit(unit: Unit, environment: dict, delete_weights: bool = False, gpus: int = 0) -> dict:
    """Run one checkpoint's unit where it is called (a Dask worker); return what it did.

    ``environment`` (``TRIPHASE_HOME``, the Hugging Face variables) is set
    first, so a worker on another machine uses the driver's shared caches.
    ``gpus``: the worker process pins one of that many GPUs first. A
    checkpoint whose files are missing is reported (``status`` ``missing``)
    and left to the notebooks, which skip it by name. With ``delete_weights``,
    a hub checkpoint's weight files are deleted from the Hugging Face cache
    once every sweep of the unit has returned (each writes its cache before
    returning); the final checkpoint's are deleted by the driver at the end
    (other units may still read them for the CKA reference).

    The sweeps run inside
    :func:`triphase.models.loading.one_load_per_checkpoint`: the checkpoint's
    weights are read once for all of them (the internal-states sweep gets the
    same model switched to eager attention) and freed when the unit ends;
    every cached result is identical to that of separate loads.
    """
    os.environ.update(environment)
    if gpus:
        _pin_gpu(gpus)
    started = time.perf_counter()
    result = {"series": unit.series, "checkpoint": unit.checkpoint, "status": "done", "freed_bytes": 0,
              "pid": os.getpid()}
    with one_load_per_checkpoint():  # the sweeps share one read of the weights (freed when the unit ends)
        for notebook, kwargs in unit.calls:
            try:
                _call_sweep(notebook, kwargs)
            except FileNotFoundError as exc:  # a missing branch or snapshot: the notebook skips it by name
                result.update(status="missing", reason=" ".join(str(exc).split()))
                break
    if delete_weights and unit.hub and not unit.final and result["status"] == "done":
        result["freed_bytes"] = _delete_weights(unit)
    result["seconds"] = time.perf_counter() - started
    return result


def _delete_weights(unit: Unit) -> int:
    ckpt = next(c for c in get_series(unit.series).checkpoints if c.name == unit.checkpoint)
    return delete_checkpoint_weights(ckpt.source, ckpt.revision)


def worker_environment() -> dict:
    """The environment :func:`run_unit` sets on a worker: this process's data home and Hugging Face settings."""
    env = {"TRIPHASE_HOME": str(data_home())}
    env.update({name: os.environ[name] for name in FORWARDED_ENVIRONMENT if name in os.environ})
    return env


# --------------------------------------------------------------------------- the driver side
def uses_cluster(scheduler: dict) -> bool:
    """False for the default (one local worker): the notebooks then compute in-process, no Dask involved.

    Examples
    --------
    >>> uses_cluster({"kind": "local", "n_workers": 1, "gpus": 0}), uses_cluster({"kind": "address"})
    (False, True)
    """
    return not (scheduler["kind"] == "local" and scheduler.get("n_workers", 1) == 1 and not scheduler.get("gpus"))


def slurm_cluster(spec: dict):
    """A :class:`dask_jobqueue.SLURMCluster` from a normalised ``scheduler.slurm`` spec (not yet scaled).

    ``gpus: N`` asks SLURM for N GPUs per job (``--gres=gpu:N``), starts N
    worker processes per job and gives each the resource ``GPU=1``.
    """
    # deferred: optional dependency (dask-jobqueue), needed only for a SLURM scheduler
    from dask_jobqueue import SLURMCluster

    kwargs = {k: v for k, v in spec.items() if k not in ("kind", "gpus", "adapt", "jobs")}
    if spec.get("gpus"):
        kwargs["job_extra_directives"] = [*spec.get("job_extra_directives", []), f"--gres=gpu:{spec['gpus']}"]
        kwargs["worker_extra_args"] = [*spec.get("worker_extra_args", []), "--resources", f"{GPU_RESOURCE}=1"]
    return SLURMCluster(**kwargs)


def _start_client(scheduler: dict, n_units: int):
    """A Dask client (and the cluster it owns, or None) for a normalised scheduler spec."""
    # deferred: optional dependency (Dask), imported only when a run asks for a cluster
    from distributed import Client, LocalCluster

    if scheduler["kind"] == "address":
        return Client(scheduler["address"]), None
    if scheduler["kind"] == "local":
        options = {"n_workers": scheduler["n_workers"], "threads_per_worker": scheduler.get("threads_per_worker") or 1,
                   "processes": True}
        if scheduler.get("gpus"):
            options["resources"] = {GPU_RESOURCE: 1}
        for key in ("memory_limit", "dashboard_address"):
            if scheduler.get(key):
                options[key] = scheduler[key]
        cluster = LocalCluster(**options)
        return Client(cluster), cluster
    cluster = slurm_cluster(scheduler)
    if "jobs" in scheduler:
        cluster.scale(jobs=scheduler["jobs"])
    else:
        adapt = scheduler.get("adapt", {})
        most = adapt.get("maximum", -(-n_units // scheduler["processes"]))  # enough jobs for every unit at once
        cluster.adapt(minimum_jobs=adapt.get("minimum", 0), maximum_jobs=most)
    return Client(cluster), cluster


def describe_scheduler(scheduler: dict) -> str:
    """One line naming a scheduler spec, for the log.

    Examples
    --------
    >>> describe_scheduler({"kind": "local", "n_workers": 2, "threads_per_worker": None, "gpus": 0})
    'a local cluster of 2 worker processes'
    """
    if scheduler["kind"] == "address":
        return f"the Dask scheduler at {scheduler['address']}"
    if scheduler["kind"] == "local":
        gpus = ", one GPU each" if scheduler.get("gpus") else ""
        return f"a local cluster of {scheduler['n_workers']} worker processes{gpus}"
    gpus = f", {scheduler['gpus']} GPUs" if scheduler.get("gpus") else ""
    return f"SLURM jobs of {scheduler['cores']} cores, {scheduler['memory']}{gpus}"


def run_units(units: list[Unit], scheduler: dict, delete_weights: bool = False) -> list[dict]:
    """Run every unit on the scheduler; log one line per finished checkpoint; return their results.

    Raises
    ------
    UnitsFailed
        After every unit has finished or failed, naming each that raised.
    """
    # deferred: optional dependency (Dask), imported only when a run asks for a cluster
    from distributed import as_completed

    if not units:
        return []
    gpus = scheduler.get("gpus", 0)
    client, cluster = _start_client(scheduler, len(units))
    results, failures = [], []
    started = time.perf_counter()
    try:
        logger.info("dask: %d checkpoint unit(s) on %s; dashboard %s", len(units), describe_scheduler(scheduler),
                    client.dashboard_link)
        environment = worker_environment()
        futures = {}
        for unit in units:
            future = client.submit(run_unit, unit, environment, delete_weights, gpus, key=unit.key, pure=False,
                                   priority=1 if unit.final else 0,
                                   resources={GPU_RESOURCE: 1} if gpus else None)
            futures[future] = unit
        for index, future in enumerate(as_completed(futures), start=1):
            unit = futures[future]
            where = f"[{index}/{len(units)}] {unit.series} {unit.checkpoint}"
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - every unit's error is reported, then the run fails
                failures.append(f"{unit.key}: {type(exc).__name__}: {' '.join(str(exc).split())}")
                logger.error("%s failed: %s", where, failures[-1])
                continue
            results.append(result)
            if result["status"] == "missing":
                logger.warning("%s skipped (the notebooks report it): %s", where, result["reason"])
            else:
                logger.info("%s ... %.1f s", where, result["seconds"])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if failures:
        raise UnitsFailed(f"{len(failures)} of {len(units)} checkpoint units failed: " + "; ".join(failures))
    if delete_weights:  # the final checkpoints' weights, once no unit can read them any more
        done = {(r["series"], r["checkpoint"]) for r in results if r["status"] == "done"}
        for unit in units:
            if unit.final and unit.hub and (unit.series, unit.checkpoint) in done:
                _delete_weights(unit)
    logger.info("dask: %d checkpoint unit(s) in %.1f s", len(units), time.perf_counter() - started)
    return results
