"""Scale-out on Dask: the notebook -> sweep mapping, units on a LocalCluster (also with a worker killed),
the SLURM job script, and deleting a checkpoint's weights once its results are cached."""
from __future__ import annotations

import ast
import contextlib
import os
import shutil
import signal
import threading
from importlib import resources
from inspect import signature

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures_real import ENGLISH_TEXT, tiny_model_folder, train_bpe_tokenizer, write_hub_revision

from triphase._home import results_dir
from triphase.models import hub
from triphase.models.series import get_series
from triphase.runs import engine
from triphase.runs.config import ConfigError, check_scheduler, load_run_config
from triphase.runs.runner import notebook_jobs
from triphase.runs.template import book_root

distributed = pytest.importorskip("distributed")

#: names a notebook binds to objects built from its parameters (the sweep gets the parameters instead)
NOTEBOOK_OBJECTS = {"data": {"dataset", "dataset_options"}, "checkpoint_series": {"series"}, "ser": {"series"}}
#: sweep keywords a notebook's object stands for (dataset=data carries the dataset options)
IMPLIED_KEYWORDS = {"01_brain_alignment": {"dataset_options"}}
TABLES = ("brain.parquet", "internal.parquet", "tasks.parquet", "tasks_samples.parquet")
#: the tiny run, reduced: two checkpoints, one layer, few permutations, items and stories
REDUCED = {
    "checkpoints": ["step0", "step60"],
    "notebooks": ["01_brain_alignment", "02_internal_states", "03_downstream_tasks"],
    "parameters": {
        "01_brain_alignment": {"n_perm": 10, "n_boot": 10, "controls": ["random"], "layers": [1],
                               "alphas": [1.0, 100.0]},
        "02_internal_states": {"n_stories": 2, "token_budget": 128, "probes": ["pos"], "probe_splits": 2,
                               "induction_sequences": 2, "layers": [1]},
        "03_downstream_tasks": {"n_items": 3, "few_shot": 0},
    },
}
KILL_DELAY_S = 1.0
REPO = "EleutherAI/pythia-14m"


def _sweep_call(notebook: str) -> ast.Call:
    nb = nbformat.read(book_root() / "notebooks" / f"{notebook}.ipynb", as_version=4)
    name = engine.SWEEPS[notebook].__name__
    calls = [node for cell in nb.cells if cell.cell_type == "code" for node in ast.walk(ast.parse(cell.source))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name]
    assert len(calls) == 1, f"{notebook} calls {name} {len(calls)} times"
    return calls[0]


@pytest.mark.parametrize("notebook", list(engine.SWEEP_ARGUMENTS))
def test_the_mapping_matches_the_notebooks_sweep_call_and_parameters(notebook):
    """Every keyword the notebook passes reads the same parameters in the mapping; every parameter is used."""
    call = _sweep_call(notebook)
    declared = set(engine.notebook_defaults(notebook))
    mapping = engine.SWEEP_ARGUMENTS[notebook]
    read = {k: {v if isinstance(v, str) else v[0]} for k, v in mapping.items()}
    passed = {}
    positional = {"series": call.args[0]} if call.args else {}
    for keyword, value in {**positional, **{kw.arg: kw.value for kw in call.keywords}}.items():
        names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
        expanded = set().union(*[NOTEBOOK_OBJECTS.get(n, {n}) for n in names]) & declared
        passed[keyword] = expanded
    assert set(mapping) == set(passed) | IMPLIED_KEYWORDS.get(notebook, set())
    for keyword, params in passed.items():
        implied = {k for k in IMPLIED_KEYWORDS.get(notebook, ()) if read[k] <= params}
        assert params == read[keyword] | set().union(*[read[k] for k in implied]), keyword
    assert set().union(*read.values()) == declared  # no notebook parameter is left out of the units
    assert set(mapping) <= set(signature(engine.SWEEPS[notebook]).parameters)


@pytest.mark.slow
def test_units_one_per_checkpoint_final_first_with_every_subjects_calls(tiny_organism):
    cfg = {"series": ["organism-tiny"], "subjects": ["sim01", "sim02"], "checkpoints": ["step0", "step8", "step60"],
           "notebooks": ["00_organism", "01_brain_alignment", "03_downstream_tasks", "04_phases"]}
    units = engine.plan_units(notebook_jobs(cfg))
    assert [u.checkpoint for u in units] == ["step60", "step0", "step8"]
    assert [u.final for u in units] == [True, False, False] and not any(u.hub for u in units)
    first = units[0]
    assert [(nb, kw["subject"]) for nb, kw in first.calls] == [
        ("01_brain_alignment", "sim01"), ("01_brain_alignment", "sim02"),
        ("03_downstream_tasks", "sim01"), ("03_downstream_tasks", "sim02")]
    assert all(kw["checkpoints"] == ["step60"] for _, kw in first.calls)


@pytest.mark.parametrize("value, message", [
    ({"lokal": {}}, "field 'scheduler' must be 'local' or a mapping with exactly one of local, address, slurm"),
    ({"local": {"n_workers": 0}}, "field 'scheduler.local.n_workers' must be a positive integer, got 0"),
    ({"local": {"workers": 2}}, "field 'scheduler.local': unknown field 'workers'"),
    ({"local": {"gpus": 2, "n_workers": 3}}, "field 'scheduler.local.n_workers' must equal gpus"),
    ({"address": "localhost"}, "field 'scheduler.address' must be a scheduler address"),
    ({"slurm": {"cores": 4}}, "field 'scheduler.slurm' lacks memory"),
    ({"slurm": {"cores": 4, "memory": "8GB", "walltime": 3600}}, "scheduler.slurm.walltime' must be a time"),
    ({"slurm": {"cores": 4, "memory": "8GB", "adapt": {"minimum": 3, "maximum": 1}}}, "minimum 3 exceeds maximum 1"),
    ({"slurm": {"cores": 4, "memory": "8GB", "gpus": 2, "processes": 1}}, "field 'scheduler.slurm.processes' must equal gpus"),
])
def test_scheduler_errors_name_the_field(value, message):
    with pytest.raises(ConfigError) as err:
        check_scheduler(value, "run.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_scheduler_runs_without_a_cluster():
    cfg = load_run_config("tiny")
    assert cfg.scheduler == check_scheduler("local") and cfg.delete_weights is False
    assert not engine.uses_cluster(cfg.scheduler)
    assert engine.uses_cluster(check_scheduler({"local": {"n_workers": 2}}))


def test_slurm_job_script_from_yaml(tmp_path):
    """The job script dask-jobqueue renders from a run YAML's slurm block (no SLURM needed)."""
    pytest.importorskip("dask_jobqueue")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"series": ["organism-tiny"], "device": "cuda", "scheduler": {"slurm": {
        "cores": 8, "memory": "64GB", "gpus": 2, "walltime": "04:00:00", "queue": "gpu", "account": "lab",
        "adapt": {"minimum": 0, "maximum": 10}, "job_extra_directives": ["--constraint=h100"],
        "scheduler_options": {"host": "127.0.0.1"}}}}))  # the tests' no-network guard: no outward probe
    spec = load_run_config(run_yaml).scheduler
    cluster = engine.slurm_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for expected in ("#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=60G",
                     "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --constraint=h100"):
        assert expected in lines, (expected, script)
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nworkers 2" in worker and "--resources GPU=1" in worker and "--nthreads 4" in worker


# --------------------------------------------------------------------------- units on a LocalCluster
def _tiny_reduced(scheduler=None) -> dict:
    cfg = yaml.safe_load(resources.files("triphase").joinpath("presets", "run_tiny.yaml").read_text())
    cfg.update(REDUCED)
    if scheduler is not None:
        cfg["scheduler"] = scheduler
    return cfg


def _home_with_organism(path, session_home, monkeypatch):
    shutil.copytree(session_home / "organism", path / "organism")
    monkeypatch.setenv("TRIPHASE_HOME", str(path))
    return path


def _reduce(cfg) -> dict:
    """What the notebooks do: call each sweep with their arguments (writing the tables); return the tables."""
    for notebook, params in notebook_jobs(cfg):
        engine.SWEEPS[notebook](**engine.sweep_arguments(notebook, params), progress=False)
    folder = results_dir("organism-tiny", "simulated", "sim01", create=False)
    return {name: pd.read_parquet(folder / name) for name in TABLES}


@contextlib.contextmanager
def _one_thread():
    """One BLAS and one torch thread, as each Dask worker has: GEMMs split over another number of threads
    round differently in the last bits (measured: every brain score differed after 2 threads here)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def serial_tables(tiny_organism, session_home, tmp_path_factory):
    """The tables of the reduced tiny run computed serially, in-process, as the notebooks would, with the
    workers' thread count (bit-for-bit equality holds at equal thread counts)."""
    with pytest.MonkeyPatch.context() as monkeypatch, _one_thread():
        _home_with_organism(tmp_path_factory.mktemp("serial"), session_home, monkeypatch)
        return _reduce(_tiny_reduced())


def _no_model_loads(monkeypatch):
    """After the units, the reduce step must find everything cached: loading a model fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the reduce step loaded a model: a unit did not cache what the notebook needs")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _assert_identical(tables, reference):
    """Bit for bit, but for wall times (``fit_seconds``): those measure the machine, not the result."""
    for name in TABLES:
        timing = [c for c in reference[name].columns if c.endswith("seconds")]
        assert list(tables[name].columns) == list(reference[name].columns), name
        pd.testing.assert_frame_equal(tables[name].drop(columns=timing), reference[name].drop(columns=timing),
                                      check_exact=True, obj=name)


@pytest.mark.slow
def test_local_cluster_of_two_workers_gives_the_serial_tables(serial_tables, session_home, tmp_path, monkeypatch,
                                                              caplog):
    _home_with_organism(tmp_path / "home", session_home, monkeypatch)
    cfg = _tiny_reduced({"local": {"n_workers": 2, "threads_per_worker": 1}})
    spec = load_run_config(cfg).scheduler
    with caplog.at_level("INFO", logger="triphase"):
        results = engine.run_units(engine.plan_units(notebook_jobs(cfg)), spec)
    assert sorted(r["checkpoint"] for r in results) == ["step0", "step60"]
    assert all(r["status"] == "done" for r in results)
    assert "dashboard http" in caplog.text and "[2/2] organism-tiny" in caplog.text
    assert not (tmp_path / "home" / "results" / "organism-tiny" / "simulated-sim01").exists()  # units write no tables
    _no_model_loads(monkeypatch)
    _assert_identical(_reduce(cfg), serial_tables)


def _cached_results(home) -> dict:
    """Every file the sweeps cached under ``home`` (all but the organism), read: relative path -> content."""
    cached = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home)
        if not path.is_file() or relative.parts[0] == "organism":
            continue
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
            cached[str(relative)] = table.drop(columns=[c for c in table.columns if c.endswith("seconds")])
        elif path.suffix == ".npy":
            cached[str(relative)] = np.load(path, allow_pickle=False)
        else:
            cached[str(relative)] = path.read_bytes()
    return cached


@pytest.mark.slow
def test_a_unit_reads_the_weights_once_and_caches_what_separate_loads_cache(tiny_organism, session_home, tmp_path,
                                                                            monkeypatch, weight_reads):
    home = _home_with_organism(tmp_path / "home", session_home, monkeypatch)
    unit = engine.plan_units(notebook_jobs(_tiny_reduced()))[0]  # the final checkpoint: its own CKA reference
    assert unit.final and [notebook for notebook, _ in unit.calls] == list(engine.SWEEP_ORDER)
    weight_reads.clear()  # count from here on
    reads = weight_reads
    with monkeypatch.context() as separately:  # as before the shared scope: each sweep loads for itself
        separately.setattr(engine, "one_load_per_checkpoint", contextlib.nullcontext)
        assert engine.run_unit(unit, {})["status"] == "done"
    checkpoint = next(c for c in get_series(unit.series).checkpoints if c.name == unit.checkpoint)  # in this home
    assert reads == [checkpoint.source] * 3  # brain, tasks, internal states
    separate = _cached_results(home)
    assert any(name.endswith(".npy") for name in separate) and any("tasks" in name for name in separate)
    for folder in home.iterdir():
        if folder.name != "organism":
            shutil.rmtree(folder)
    reads.clear()
    assert engine.run_unit(unit, {})["status"] == "done"
    assert reads == [checkpoint.source]
    shared = _cached_results(home)
    assert sorted(shared) == sorted(separate)
    for name, content in separate.items():
        if isinstance(content, pd.DataFrame):
            pd.testing.assert_frame_equal(shared[name], content, check_exact=True, obj=name)
        elif isinstance(content, np.ndarray):
            np.testing.assert_array_equal(shared[name], content, err_msg=name, strict=True)
        else:
            assert shared[name] == content, name


class KillOnce(distributed.WorkerPlugin):
    """Kill (SIGKILL) the worker process that starts ``key`` first, a moment after it started it."""

    def __init__(self, key: str, marker: str):
        self.key, self.marker = key, marker

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if key == self.key and finish == "executing" and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
            threading.Timer(KILL_DELAY_S, os.kill, (os.getpid(), signal.SIGKILL)).start()


@pytest.mark.slow
def test_a_worker_killed_mid_unit_is_retried_and_the_tables_match(serial_tables, session_home, tmp_path,
                                                                  monkeypatch):
    _home_with_organism(tmp_path / "home", session_home, monkeypatch)
    marker = tmp_path / "killed"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, \
            distributed.Client(cluster) as client:
        cfg = _tiny_reduced({"address": cluster.scheduler_address})
        units = engine.plan_units(notebook_jobs(cfg))
        victim = units[0]  # the final checkpoint's unit: submitted first
        client.register_plugin(KillOnce(victim.key, str(marker)))
        results = engine.run_units(units, load_run_config(cfg).scheduler)
    killed_pid = int(marker.read_text())
    finished = {r["checkpoint"]: r for r in results}
    assert finished[victim.checkpoint]["status"] == "done"
    assert finished[victim.checkpoint]["pid"] != killed_pid  # it ran again, in another (restarted) process
    _no_model_loads(monkeypatch)
    _assert_identical(_reduce(cfg), serial_tables)


# --------------------------------------------------------------------------- delete_weights
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline hub cache with step0, step1 (own weights) and step2 (the same weights blob as step0)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = train_bpe_tokenizer([ENGLISH_TEXT])
    w0 = tiny_model_folder(tmp_path / "w0", seed=0, tokenizer=tokenizer)
    w1 = tiny_model_folder(tmp_path / "w1", seed=1, tokenizer=tokenizer)
    cache = tmp_path / "hf" / "hub"
    for rev, folder in (("step0", w0), ("step1", w1), ("step2", w0)):
        write_hub_revision(cache, REPO, rev, folder, commit=f"{int(rev[-1]) + 1:040x}")
    return cache


def _snapshot(cache, revision):
    repo = cache / "models--EleutherAI--pythia-14m"
    return repo / "snapshots" / (repo / "refs" / revision).read_text()


def test_deleting_weights_keeps_config_tokenizer_refs_and_shared_blobs(hub_cache):
    from triphase.models.loading import load_checkpoint

    ckpts = {c.name: c for c in get_series("pythia-14m").checkpoints}
    weights = _snapshot(hub_cache, "step1") / "model.safetensors"
    size = weights.stat().st_size
    assert hub.delete_checkpoint_weights(REPO, "step1") == size
    assert not weights.exists() and not weights.is_symlink()
    assert (_snapshot(hub_cache, "step1") / "config.json").exists()
    assert hub.cached_commit(REPO, "step1") == f"{2:040x}"
    assert hub.weights_deleted(REPO, "step1") and not hub.weights_deleted(REPO, "step0")
    hub.ensure_available(ckpts["step1"])  # a results cache key may still read its configuration
    with pytest.raises(hub.CheckpointMissingError, match="pythia-14m@step1 is incomplete"):
        load_checkpoint(ckpts["step1"], device="cpu")
    # step2 shares step0's weights blob: deleting step2's weights keeps step0 complete
    assert hub.delete_checkpoint_weights(REPO, "step2") == 0
    assert hub.cached_snapshot(REPO, "step0") == _snapshot(hub_cache, "step0")
    load_checkpoint(ckpts["step0"], device="cpu")


def test_a_unit_deletes_hub_weights_only_when_it_completed(hub_cache, monkeypatch):
    calls = [("03_downstream_tasks", {"checkpoints": ["step1"]})]
    unit = engine.Unit("pythia-14m", "step1", 1, final=False, hub=True, calls=calls)
    monkeypatch.setattr(engine, "_call_sweep", lambda *a: (_ for _ in ()).throw(RuntimeError("sweep failed")))
    with pytest.raises(RuntimeError, match="sweep failed"):
        engine.run_unit(unit, {}, delete_weights=True)
    assert hub.cached_snapshot(REPO, "step1") is not None  # a failed unit keeps its weights
    monkeypatch.setattr(engine, "_call_sweep", lambda *a: None)
    assert engine.run_unit(unit, {}, delete_weights=False)["freed_bytes"] == 0
    assert hub.cached_snapshot(REPO, "step1") is not None  # off by default
    final = engine.Unit("pythia-14m", "step0", 0, final=True, hub=True, calls=calls)
    assert engine.run_unit(final, {}, delete_weights=True)["freed_bytes"] == 0  # the driver deletes it at the end
    assert engine.run_unit(unit, {}, delete_weights=True)["freed_bytes"] > 0
    assert hub.weights_deleted(REPO, "step1")
    organism = engine.Unit("organism-tiny", "step0", 0, final=False, hub=False, calls=calls)
    assert engine.run_unit(organism, {}, delete_weights=True)["freed_bytes"] == 0
