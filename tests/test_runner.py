"""The runner: papermill execution into the book tree, caching, failures, the book build."""
import json
import os
import shutil
import threading

import nbformat
import numpy as np
import pytest
from conftest import REPO_ROOT

import triphase.runs.runner as runner_module
from triphase._home import data_home, results_dir
from triphase.runs.config import load_run_config
from triphase.runs.runner import (
    NOTEBOOK_SCOPE,
    NotebookFailed,
    SweepProgress,
    _jobs,
    _rerun_reason,
    collapse_progress_output,
    execute_notebook,
    fold_injected_parameters,
    notebook_waves,
    run,
)
from triphase.runs.template import notebook_parameters

BOOK_FILES = ("_config.yml", "_toc.yml")
BOOK_DIRS = ("book", "notebooks")


@pytest.fixture
def book_copy(tmp_path, monkeypatch):
    """A copy of the book sources, so tests never write into the checkout's book."""
    root = tmp_path / "bookroot"
    root.mkdir()
    for name in BOOK_FILES:
        shutil.copy(REPO_ROOT / name, root / name)
    for name in BOOK_DIRS:
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("executed", "_build"))
    monkeypatch.setenv("TRIPHASE_BOOK_ROOT", str(root))
    return root


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_every_source_notebook_is_parameterised_and_clean():
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert not _outputs(nb), f"{path.name}: source notebooks must not store outputs"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        params = notebook_parameters(path.stem, REPO_ROOT)
        base = {"seed", "device"} | (set() if NOTEBOOK_SCOPE.get(path.stem) == "once" else {"series"})
        assert base <= set(params), f"{path.name}: base parameters missing"


def test_unknown_parameter_is_an_error_listing_valid_names(book_copy):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) promt; valid: .*prompt"):
        execute_notebook("00_organism", {"promt": "x"}, book_copy / "out.ipynb", root=book_copy)


@pytest.mark.slow
def test_run_executes_once_then_reuses_and_force_reruns(tiny_organism, book_copy, caplog, capfd):
    config = {"series": ["organism-tiny"], "checkpoints": ["step0", "step20", "step60"],
              "notebooks": ["00_organism"], "device": "cpu", "dataset_options": {"preset": "tiny"},
              "parameters": {"00_organism": {"max_new_tokens": 5, "n_sample_checkpoints": 2}}}
    with caplog.at_level("INFO", logger="triphase"):
        report = run(config, root=book_copy, build=False, progress=False)
    assert report.executed == ["organism-tiny/00_organism"]
    assert "running over TCP" not in capfd.readouterr().err  # the kernel talks over local sockets
    assert any(r.getMessage().startswith("[1/1] 00_organism (organism-tiny) ... ") and r.getMessage().endswith(" s")
               for r in caplog.records), caplog.text
    out = book_copy / "book" / "executed" / "organism-tiny" / "00_organism.ipynb"
    nb = nbformat.read(out, as_version=4)
    # one parameters cell showing the values that ran; papermill's injected cell is folded into it
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert sum("parameters" in t for t in tags) == 1 and not any("injected-parameters" in t for t in tags)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "max_new_tokens: int = 5" in params.source and "n_sample_checkpoints: int = 2" in params.source
    assert 'checkpoints: Union[str, int, list] = ["step0", "step20", "step60"]' in params.source
    assert params.source.startswith("# values set by this run (papermill): ")
    # the list parameter arrived as a list, not a string
    assert nb.metadata["triphase"]["parameters"]["checkpoints"] == ["step0", "step20", "step60"]
    text = "".join(o.get("text", "") for o in _outputs(nb))
    assert "9 checkpoints, 3 chosen" in text
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb)), "training curve figure missing"
    assert nb.cells[0].source.startswith("# The model organism (organism-tiny)")
    caplog.clear()
    with caplog.at_level("INFO", logger="triphase"):
        again = run(config, root=book_copy, build=False, progress=False)
    assert again.executed == [] and again.skipped == ["organism-tiny/00_organism"]
    assert "[1/1] 00_organism (organism-tiny) reused (inputs unchanged)" in caplog.text
    forced = run(config, root=book_copy, build=False, progress=False, force=["00_organism"])
    assert forced.executed == ["organism-tiny/00_organism"]


@pytest.mark.slow
def test_failing_notebook_names_cell_keeps_copy_and_writes_nothing(book_copy, session_home):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Fails"),
                nbformat.v4.new_code_cell("series = 'x'\nseed = 0\ndevice = 'cpu'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise ValueError('boom in cell')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, book_copy / "notebooks" / "98_fails.ipynb")
    out = book_copy / "book" / "executed" / "x" / "98_fails.ipynb"
    with pytest.raises(NotebookFailed, match=r"notebook 98_fails .*ValueError: boom in cell") as err:
        execute_notebook("98_fails", {"series": "x"}, out, root=book_copy, progress=False)
    kept = str(err.value).rsplit("executed copy kept for debugging: ", 1)[1].strip()
    assert nbformat.read(kept, as_version=4).cells[-1].outputs[0]["ename"] == "ValueError"
    assert not out.exists()  # nothing half-written reaches the book


def test_progress_redraws_collapse_to_the_final_state_in_order():
    out = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell(outputs=[
        out("stream", name="stderr", text="\rload:   0%"), out("stream", name="stderr", text="\rload: 100%\n"),
        out("stream", name="stdout", text="loaded 3 files\n"),
        out("stream", name="stderr", text="\rfit 1/2"), out("stream", name="stderr", text="\rfit 2/2"),
        out("stream", name="stderr", text="\n"),
        out("display_data", data={"text/plain": "<Figure>"}),
        out("stream", name="stdout", text="a\rb\nc\n"),
    ])
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    collapse_progress_output(nb)
    got = [(o.output_type, o.get("name"), o.get("text")) for o in nb.cells[0].outputs]
    assert got == [("stream", "stderr", "load: 100%\n"), ("stream", "stdout", "loaded 3 files\n"),
                   ("stream", "stderr", "fit 2/2\n"), ("display_data", None, None), ("stream", "stdout", "b\nc\n")]


def _parameters_notebook(source, injected):
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(series)"),
    ])


def test_injected_parameters_fold_into_the_parameters_cell():
    source = ("# Parameters (papermill overrides these)\n"
              'series = "organism"          # checkpoint series preset name\n'
              "layers = None                # hidden-state indices, None for all\n"
              'controls = ["shuffled-stories",\n            "random"]   # scored for the final checkpoint\n'
              "n_perm: int = 1000           # block permutations per fit\n"
              "seed = 0                     # seed\n")
    injected = ('# Parameters\nseries = "organism-tiny"\nlayers = [1, 2]\ncontrols = ["random"]\n'
                "n_perm = 20\n")
    nb = _parameters_notebook(source, injected)
    fold_injected_parameters(nb)
    assert [c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"] == [["parameters"], []]
    assert nb.cells[1].source == (
        "# values set by this run (papermill): series, layers, controls, n_perm\n"
        "# Parameters (papermill overrides these)\n"
        'series = "organism-tiny"     # checkpoint series preset name\n'
        "layers = [1, 2]              # hidden-state indices, None for all\n"
        'controls = ["random"]   # scored for the final checkpoint\n'
        "n_perm: int = 20             # block permutations per fit\n"
        "seed = 0                     # seed\n")
    # the folded cell runs to the same values as the two cells did
    ran, folded = {}, {}
    exec(source + injected, ran)
    exec(nb.cells[1].source, folded)
    assert {k: ran[k] for k in ("series", "layers", "controls", "n_perm", "seed")} == \
        {k: folded[k] for k in ("series", "layers", "controls", "n_perm", "seed")}


def test_fold_leaves_notebooks_without_an_injected_cell_alone():
    nb = _parameters_notebook("x = 1\n", "x = 2\n")
    nb.cells[2].metadata["tags"] = []
    before = nbformat.writes(nb)
    fold_injected_parameters(nb)
    assert nbformat.writes(nb) == before


def test_sweep_progress_names_the_checkpoint_once_per_change():
    seen = []
    progress = SweepProgress(seen.append)
    progress.write("\rdownstream tasks:   0%|          | 0/2 [00:00<?, ?checkpoint/s]")
    progress.write("\rstories:  50%|#####     | 4/8 [00:01<00:01, 4.0it/s]")
    progress.write("\rdownstream tasks:  50%|#####     | 1/2 [00:03<00:03, 3.0s/checkpoint]\n")
    progress.write("\rcheckpoints: 100%|##########| 2/2 [00:03<00:00, 1.5s/checkpoint]\n")
    progress.write("plain text\n")
    assert seen == ["downstream tasks: checkpoint 1/2", "downstream tasks: checkpoint 2/2",
                    "checkpoints: checkpoint 2/2"]


# --------------------------------------------------------------------------- what re-runs a notebook
STUB_PARAMETERS = '''series: Union[str, dict] = "x"
checkpoints: Union[str, int, list] = "all"
dataset: str = "generic"
subject: str = "sub01"
dataset_options: dict = {}
device: str = "cpu"
seed: int = 0'''
STUB_SERIES = {"name": "stub", "repo": "org/stub", "revisions": ["step0", "step10"], "tokens_per_step": 100}


@pytest.fixture
def stub_book(tmp_path, fresh_home, monkeypatch):
    """A book root whose 01_brain_alignment is a stub writing brain.parquet, a generic dataset and a run config."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    root = tmp_path / "stubbook"
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: notebooks/01_brain_alignment\n")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Stub"),
        nbformat.v4.new_code_cell("from typing import Union"),
        nbformat.v4.new_code_cell(STUB_PARAMETERS, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import triphase\n"
                                  "name = series if isinstance(series, str) else series['name']\n"
                                  "(triphase.results_dir(name, dataset, subject) / 'brain.parquet').write_text('t')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "notebooks" / "01_brain_alignment.ipynb")
    data = tmp_path / "lab"
    (data / "stimuli").mkdir(parents=True)
    (data / "responses" / "sub01").mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"tr": 2.0, "split": {"test": ["b"]}}))
    for story in ("a", "b"):
        (data / "stimuli" / f"{story}_events.tsv").write_text("onset\tduration\tword\n1.0\t0.5\thello\n")
        np.save(data / "responses" / "sub01" / f"{story}.npy", np.zeros((4, 3), dtype=np.float32))
    config = {"series": [STUB_SERIES], "dataset": "generic", "subjects": ["sub01"],
              "dataset_options": {"root": str(data)}, "notebooks": ["01_brain_alignment"], "device": "cpu"}
    return root, data, config


def _run_stub(root, config, caplog):
    caplog.clear()
    with caplog.at_level("INFO", logger="triphase"):
        report = run(config, root=root, build=False, progress=False, check=False)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("[1/1] 01_brain_alignment"))
    return report, line


STUB = "[1/1] 01_brain_alignment (stub, generic sub01)"


def test_unchanged_inputs_are_reused_and_a_deleted_results_table_reruns(stub_book, fresh_home, caplog):
    root, _, config = stub_book
    table = fresh_home / "results" / "stub" / "generic-sub01" / "brain.parquet"
    report, line = _run_stub(root, config, caplog)
    assert report.executed == ["stub/generic-sub01/01_brain_alignment"] and line == f"{STUB} ..."
    assert table.exists()
    executed = root / "book" / "executed" / "stub" / "generic-sub01" / "01_brain_alignment.ipynb"
    assert nbformat.read(executed, as_version=4).metadata["triphase"]["tables"] == [
        "results/stub/generic-sub01/brain.parquet"]  # relative to the data home: no machine path in the book
    report, line = _run_stub(root, config, caplog)
    assert report.skipped == ["stub/generic-sub01/01_brain_alignment"] and line == f"{STUB} reused (inputs unchanged)"
    shutil.rmtree(fresh_home / "results")
    report, line = _run_stub(root, config, caplog)
    assert report.executed == ["stub/generic-sub01/01_brain_alignment"]
    assert line == f"{STUB} ... (tables missing: results/stub/generic-sub01/brain.parquet)"
    assert table.exists()
    report, line = _run_stub(root, config, caplog)
    assert report.executed == [] and line.endswith("reused (inputs unchanged)")


def test_a_new_data_home_or_changed_dataset_files_rerun(stub_book, tmp_path, monkeypatch, caplog):
    root, data, config = stub_book
    assert _run_stub(root, config, caplog)[0].executed
    # a dataset file replaced under the same root (same size; timestamps may be coarser than the test's pace)
    path = data / "responses" / "sub01" / "a.npy"
    before = path.stat()
    np.save(path, np.ones((4, 3), dtype=np.float32))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    report, line = _run_stub(root, config, caplog)
    assert report.executed and line == f"{STUB} ... (inputs changed)"
    # a new data home: the notebook runs again and writes its table there
    home = tmp_path / "second_home"
    monkeypatch.setenv("TRIPHASE_HOME", str(home))
    report, line = _run_stub(root, config, caplog)
    assert report.executed and line == f"{STUB} ... (inputs changed)"
    assert (home / "results" / "stub" / "generic-sub01" / "brain.parquet").exists()
    assert _run_stub(root, config, caplog)[0].skipped


def test_job_inputs_hold_the_data_identity_and_the_cached_hub_commits(stub_book, tmp_path):
    root, data, config = stub_book
    cfg = load_run_config(config, root=root)
    declared = notebook_parameters("01_brain_alignment", root)
    (job,) = _jobs(cfg, "subject", "01_brain_alignment", declared)
    assert job["tables"] == [results_dir("stub", "generic", "sub01", create=False) / name
                             for name in ("brain.parquet", "brain_replicates.parquet")]
    inputs = job["inputs"]()
    assert inputs["commits"] == {"step0": None, "step10": None}  # not cached
    assert [e[0] for e in inputs["data"]["files"]][0] == "dataset.json"
    # the revision step10 resolves to a commit in the local cache
    refs = tmp_path / "hub" / "models--org--stub" / "refs"
    refs.mkdir(parents=True)
    (refs / "step10").write_text("a" * 40)
    assert job["inputs"]()["commits"] == {"step0": None, "step10": "a" * 40}
    (refs / "step10").write_text("b" * 40)
    assert job["inputs"]()["commits"]["step10"] == "b" * 40
    # a per-subject notebook that does not open the dataset (no dataset_options) is not keyed by its data
    (tasks_job,) = _jobs(cfg, "subject", "03_downstream_tasks", {"series", "dataset", "subject"})
    assert "data" not in tasks_job["inputs"]() and [t.name for t in tasks_job["tables"]] == [
        "tasks.parquet", "tasks_samples.parquet", "tasks_items.parquet"]
    (organism_job,) = _jobs(cfg, "series", "00_organism", {"series"})
    assert organism_job["tables"] == [] and "data" not in organism_job["inputs"]()
    (synthesis,) = _jobs(cfg, "synthesis", "04_phases")
    assert synthesis["tables"] == [results_dir("stub", "generic", "sub01", create=False) / "phases.parquet"]


def test_the_tables_checked_are_those_the_executed_copy_recorded(tmp_path, fresh_home):
    out = tmp_path / "nb.ipynb"
    table = data_home() / "results" / "s" / "d-x" / "phases.parquet"

    def executed(**meta):
        nb = nbformat.v4.new_notebook()
        nb.metadata["triphase"] = {"input_key": "k", **meta}
        nbformat.write(nb, out)

    home = data_home()
    assert _rerun_reason(out, "k", [table], home, False) == ""  # not there yet
    executed(tables=[])  # it wrote none of them (e.g. no phases to tabulate): not re-run for them
    assert _rerun_reason(out, "k", [table], home, False) is None
    assert _rerun_reason(out, "other", [table], home, False) == "inputs changed"
    assert _rerun_reason(out, "k", [table], home, True) == "forced"
    executed(tables=["results/s/d-x/phases.parquet"])
    assert _rerun_reason(out, "k", [table], home, False) == "tables missing: results/s/d-x/phases.parquet"
    table.parent.mkdir(parents=True)
    table.write_text("t")
    assert _rerun_reason(out, "k", [table], home, False) is None
    executed()  # written before tables were recorded: the expected ones are checked
    assert _rerun_reason(out, "k", [table, table.with_name("other.parquet")], home, False) == (
        "tables missing: results/s/d-x/other.parquet")


def test_notebooks_of_a_wave_run_side_by_side_with_their_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner_module.os, "cpu_count", lambda: 4)
    barrier = threading.Barrier(2, timeout=10)  # both must be running at once, or this times out
    seen = {}

    def execute(index, name, job, params, side_by_side):
        seen[name] = (os.environ.get("OMP_NUM_THREADS"), side_by_side)
        barrier.wait()
        return index != 2

    wave = [(1, "01_brain_alignment", {}, {}), (2, "03_downstream_tasks", {}, {})]
    assert runner_module._execute_wave(wave, 2, execute) == {1: True, 2: False}
    assert seen == {"01_brain_alignment": ("2", True), "03_downstream_tasks": ("2", True)}
    assert "OMP_NUM_THREADS" not in os.environ  # restored afterwards


def test_a_failing_notebook_of_a_wave_stops_the_run():
    started = []

    def execute(index, name, job, params, side_by_side):
        started.append(name)
        if name == "bad":
            raise NotebookFailed("notebook bad failed in cell 3")
        return True

    wave = [(i, name, {}, {}) for i, name in enumerate(["bad", "a", "b", "c"], start=1)]
    with pytest.raises(NotebookFailed, match="notebook bad failed"):
        runner_module._execute_wave(wave, 1, execute)
    assert started == ["bad"]  # serial: nothing after the failure
    with pytest.raises(NotebookFailed, match="notebook bad failed"):
        runner_module._execute_wave(wave, 2, execute)


def test_synthesis_and_organism_wait_for_the_tables():
    plan = [(n, {}, {}) for n in ("00_organism", "04_phases", "02_internal_states", "01_brain_alignment",
                                  "03_downstream_tasks")]
    first, last = notebook_waves(plan)
    # the notebooks that write internal.parquet / tasks.parquet / brain.parquet run first, slowest first
    assert [name for _, name, _, _ in first] == ["01_brain_alignment", "03_downstream_tasks", "02_internal_states"]
    # the organism chapter reads internal.parquet and tasks.parquet: it waits with the synthesis
    assert [(index, name) for index, name, _, _ in last] == [(2, "04_phases"), (1, "00_organism")]


def test_organism_alone_is_one_wave():
    plan = [(n, {}, {}) for n in ("00_organism",)]
    assert [[name for _, name, _, _ in wave] for wave in notebook_waves(plan)] == [["00_organism"]]


def test_the_organism_chapter_is_keyed_by_the_tables_it_reads(stub_book, fresh_home):
    """00_organism shows internal.parquet and tasks.parquet: a new or changed table changes its inputs."""
    root, _, config = stub_book
    cfg = load_run_config({**config, "subjects": ["sub01", "sub02"]}, root=root)
    (job,) = _jobs(cfg, "series", "00_organism")
    assert job["parameters"]["subject"] == "sub01"
    before = job["inputs"]()
    assert before["tables"] == {"internal.parquet": "absent", "tasks.parquet": "absent"}  # brain.parquet: not read
    folder = results_dir("stub", "generic", "sub01")
    (folder / "tasks.parquet").write_text("first")
    first = job["inputs"]()
    (folder / "tasks.parquet").write_text("second")
    second = job["inputs"]()
    assert len({str(before), str(first), str(second)}) == 3
    assert first["commits"] == before["commits"]
    # a notebook that reads no tables is keyed by its series alone
    (plain,) = _jobs(cfg, "series", "05_validation")
    assert "tables" not in plain["inputs"]() and "subject" not in plain["parameters"]
