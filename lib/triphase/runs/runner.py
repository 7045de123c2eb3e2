"""The runner: execute the source notebooks with papermill, then build the book.

Each source notebook in ``notebooks/`` runs once per configured series (and, for
brain-data notebooks, per dataset subject); executed copies land in the book tree
(``book/executed/...``), which ``_toc.yml`` picks up by glob. The book build
itself never executes notebooks (``execute_notebooks: off``).

* Unknown notebook parameters are an error listing the valid names (papermill
  itself only warns).
* Parameters pass as real Python/YAML values (lists stay lists).
* The kernel is this environment's own: a kernelspec ``triphase`` pointing at
  ``sys.executable`` is installed into ``sys.prefix`` when missing, so a virtual
  environment never silently runs another Python.
* A failing notebook raises :class:`NotebookFailed` naming the notebook and the
  cell's error; its executed copy is kept under ``<data home>/failed/`` and
  nothing half-written reaches the book.
* A notebook whose inputs did not change and whose results tables are there
  is not re-executed; ``force`` re-runs it. Its inputs are its source,
  parameters, the library code, the data home, the checkpoints (organism: the
  configuration hash and checkpoint names; hub: the commit each chosen
  revision resolves to in the local cache), the data it reads
  (:meth:`~triphase.datasets.Dataset.identity`) and, for the synthesis, the
  upstream tables. The tables it wrote (:data:`NOTEBOOK_TABLES`) are recorded
  in the executed copy; one of them missing (a results folder deleted) re-runs it.
* With a ``scheduler`` other than the default (one local worker), the
  per-checkpoint work of the notebooks that will run is done first on Dask,
  one unit per checkpoint (:mod:`triphase.runs.engine`); the notebooks then
  find every checkpoint cached and only reduce. The default runs it all in
  the notebooks, with no Dask.
* Before anything is trained or executed, :func:`triphase.runs.preflight.preflight`
  checks that the dataset, its subjects and the chosen checkpoints are there.
* The executed copy shows one parameters cell holding the values that ran
  (papermill's injected cell is folded into it, :func:`fold_injected_parameters`).
* Progress goes through the ``triphase`` logger: one line per notebook
  (``[i/N] name (label) ... 12.3 s`` or ``reused (inputs unchanged)``; a re-run
  says why: ``... (inputs changed)``, ``... (tables missing: ...)``, ``... (forced)``) and,
  inside a sweep, which checkpoint it is on (read from the kernel's progress
  bars whose unit or description says ``checkpoint``). Kernels talk to the
  runner over local IPC sockets where the platform has them (no TCP ports, and
  no "running over TCP without encryption" warning on the terminal).
"""
from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import nbformat
import papermill
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from papermill.exceptions import PapermillExecutionError
from traitlets import default

from triphase._home import data_home, results_dir
from triphase._io import atomic_path, stable_hash
from triphase.brain.sweep import REPLICATES_TABLE as BRAIN_REPLICATES_FILE
from triphase.datasets import get_dataset
from triphase.models.checkpoints import select_checkpoints
from triphase.models.hub import cached_commit
from triphase.models.organism import train_organism
from triphase.models.series import get_series, load_presets
from triphase.phases.synthesis import PHASES_FILE, TABLE_FILES
from triphase.runs.config import load_run_config
from triphase.runs.engine import plan_units, run_units, uses_cluster
from triphase.runs.preflight import PreflightFailed, organism_trained, preflight
from triphase.runs.template import book_root, notebook_parameters, source_notebooks
from triphase.tasks.sweep import ITEMS_FILE as TASKS_ITEMS_FILE
from triphase.tasks.sweep import SAMPLES_FILE as TASKS_SAMPLES_FILE

KERNEL_NAME = "triphase"
#: which loop a notebook runs in: once per series, per (series, subject), or once overall
NOTEBOOK_SCOPE = {"00_organism": "series", "04_phases": "synthesis", "05_validation": "once"}
DEFAULT_SCOPE = "subject"
#: side by side (notebook_workers > 1) these start first in their wave, slowest first (measured on the default
#: run: brain 312 s, tasks 136 s, internal 71 s, validation 57 s, organism 11 s; the synthesis, which shares the
#: last wave with the organism, resamples curves and is put before it)
LONGEST_FIRST = ("01_brain_alignment", "03_downstream_tasks", "02_internal_states", "05_validation", "04_phases",
                 "00_organism")
#: notebooks that read the tables of the others (besides the synthesis): they run in the last wave, with it.
#: 00_organism shows what the organism learned from internal.parquet and tasks.parquet (issue 14).
READS_TABLES = ("00_organism",)
#: the tables those notebooks read (their hashes are inputs: a new table re-runs them, a brain re-run does not)
READ_TABLE_FILES = (TABLE_FILES["internal"], TABLE_FILES["tasks"])
#: the thread counts a kernel's BLAS and torch read when they start
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: the results tables each notebook writes into a model's results folder (the synthesis: into every model's);
#: 00_organism writes none. A table it wrote gone missing re-runs it.
NOTEBOOK_TABLES = {
    "01_brain_alignment": (TABLE_FILES["brain"], BRAIN_REPLICATES_FILE),
    "02_internal_states": (TABLE_FILES["internal"],),
    "03_downstream_tasks": (TABLE_FILES["tasks"], TASKS_SAMPLES_FILE, TASKS_ITEMS_FILE),
    "04_phases": (PHASES_FILE,),
}
#: a per-subject notebook taking this parameter opens the dataset: its data's identity is one of its inputs
DATA_PARAMETER = "dataset_options"
#: how many missing tables a log line names before "..."
SHOWN_TABLES = 3
SYNTHESIS_FOLDER = "synthesis"
#: where a notebook that reads no model or data (the validation by simulation) is executed, once per run
ONCE_FOLDER = "validation"
METADATA_KEY = "triphase"
INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"

logger = logging.getLogger(__name__)


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it."""


@dataclass
class RunReport:
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{k}: {v:.1f} s" for k, v in self.seconds.items()]
        return (f"executed {len(self.executed)} notebook(s), reused {len(self.skipped)} unchanged; "
                + ", ".join(parts))


#: one kernelspec install at a time (notebooks side by side would otherwise both rewrite its folder)
_KERNEL_INSTALL = threading.Lock()


def ensure_kernel() -> str:
    """Install (if needed) a kernelspec named ``triphase`` running this Python."""
    with _KERNEL_INSTALL:
        return _ensure_kernel()


def _ensure_kernel() -> str:
    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
         "--display-name", "Python (triphase)"],
        check=True, capture_output=True,
    )
    return KERNEL_NAME


class LocalKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels listen on IPC (Unix) sockets instead of TCP ports, where available."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc" if os.name == "posix" else "tcp"

    @default("ip")
    def _default_ip(self) -> str:
        # jupyter_client's IPC default ("kernel-ipc" in the working folder, ports counted from 1 by checking
        # which socket files exist) collides when kernels start side by side; a private prefix per kernel
        # cannot (a short folder: Unix socket paths are limited to about 100 characters)
        if self.transport != "ipc":
            return super()._ip_default()
        return os.path.join(tempfile.gettempdir(), f"triphase-{os.getpid()}-{uuid.uuid4().hex[:12]}-ipc")


#: one rendered tqdm bar: "desc:  40%|####      | 2/5 [00:10<00:15, 5.0s/checkpoint, step1000 fitting]"
_BAR = re.compile(r"^(?P<desc>.*?):\s*\d+%\|.*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<stats>.*)\]\s*$")


class SweepProgress:
    """Reads the kernel's stderr stream and logs which checkpoint a sweep is on.

    Only progress bars counting checkpoints (``unit="checkpoint"`` or a
    description naming checkpoints) are followed; a line is logged when the
    checkpoint named in the bar's postfix changes (or, without a postfix, the count).

    Examples
    --------
    >>> seen = []
    >>> sp = SweepProgress(seen.append)
    >>> sp.write("\\rbrain alignment:   0%|          | 0/3 [00:00<?, ?checkpoint/s, step0 features]")
    >>> sp.write("\\rbrain alignment:   0%|          | 0/3 [00:01<?, ?checkpoint/s, step0 fitting]")
    >>> sp.write("\\rbrain alignment:  33%|###3      | 1/3 [00:02<00:04, 2.0s/checkpoint, step0 fitting]")
    >>> sp.write("\\rbrain alignment:  33%|###3      | 1/3 [00:02<00:04, 2.0s/checkpoint, step60 features]\\n")
    >>> sp.write("\\rstories: 100%|##########| 8/8 [00:01<00:00, 8.0it/s]")
    >>> seen
    ['brain alignment: checkpoint 1/3 (step0 features)', 'brain alignment: checkpoint 2/3 (step60 features)']
    """

    def __init__(self, emit=None):
        self.emit = emit or (lambda text: logger.info("      %s", text))
        self.last: dict[str, tuple] = {}

    def write(self, text: str) -> None:
        for segment in re.split(r"[\r\n]", text):
            match = _BAR.match(segment.strip())
            if match is None:
                continue
            desc, n, total = match["desc"].strip(), int(match["n"]), int(match["total"])
            stats = [part.strip() for part in match["stats"].split(",")]
            unit = re.sub(r"^[\d.?]+(s/)?|/s$", "", stats[1]) if len(stats) > 1 else ""
            if "checkpoint" not in unit and "checkpoint" not in desc.lower():
                continue
            postfix = ", ".join(stats[2:])
            current = min(n + 1, total)
            # a bar naming its checkpoint in the postfix counts it up before renaming it: follow the name
            state = postfix.split(" ", 1)[0] if postfix else current
            if self.last.get(desc) == state:
                continue
            self.last[desc] = state
            self.emit(f"{desc}: checkpoint {current}/{total}" + (f" ({postfix})" if postfix else ""))

    def flush(self) -> None:
        pass


def _library_hash() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "absent"


def execute_notebook(name: str, parameters: dict, output: Path, force: bool = False,
                     root: Path | None = None, extra_inputs: dict | Callable[[], dict] | None = None,
                     title_suffix: str = "", progress: bool = True, step: str = "",
                     tables: Sequence[Path] = (), cell_bar: bool | None = None) -> bool:
    """Execute one source notebook into ``output`` (atomically); return True if it ran.

    An existing ``output`` is reused (nothing runs) when its stored key matches
    this run's inputs (source, parameters, library, data home, ``extra_inputs``)
    and every table it recorded as written still exists; ``force`` runs it anyway.

    ``extra_inputs`` are the run's other inputs (checkpoints, data identity,
    upstream tables): a dict, or a function returning one, called before the
    run (to decide) and again after it (the key stored is of the inputs the
    notebook ended with, e.g. a hub checkpoint it downloaded now resolves to
    its commit). ``tables`` are the results tables the notebook should write;
    those that exist after the run are recorded in the executed copy.
    ``step`` prefixes the log lines (the runner passes ``"[i/N] "``);
    ``progress`` shows papermill's cell bar and the sweeps' checkpoint lines
    (``cell_bar=False`` keeps the lines without the bar, as when notebooks run
    side by side).

    Raises
    ------
    ValueError
        For parameters the notebook does not declare (the message lists the valid ones).
    NotebookFailed
        When a cell raises; the executed copy is kept under ``<data home>/failed/``.
    """

    root = root or book_root()
    source = root / "notebooks" / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"no source notebook {source}; available: {', '.join(source_notebooks(root))}")
    declared = notebook_parameters(name, root)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"notebook {name}: unknown parameter(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(declared))}")
    home = data_home()
    key = _input_key(source, parameters, home, extra_inputs)
    output = Path(output)
    tables = [Path(t) for t in tables]
    what = f"{step}{name}" + (f" ({title_suffix})" if title_suffix else "")
    reason = _rerun_reason(output, key, tables, home, force)
    if reason is None:
        logger.info("%s reused (inputs unchanged)", what)
        return False
    logger.info("%s ...%s", what, f" ({reason})" if reason else "")
    kernel = ensure_kernel()
    try:
        label = output.resolve().relative_to(root.resolve()).with_suffix("").as_posix()
    except ValueError:  # an output outside the book tree
        label = output.with_suffix("").as_posix().strip("/")
    failed = (data_home() / "failed" / label.replace("/", "__")).with_suffix(".ipynb")
    # one scratch file per execution: notebooks of one process may run side by side
    scratch = data_home() / "runs" / f".{label.replace('/', '__')}.{os.getpid()}.ipynb"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(scratch), parameters=parameters, kernel_name=kernel,
            # the kernel's working folder, given to the kernel only: papermill's cwd= would chdir the whole
            # process, which notebooks running side by side share
            resources={"metadata": {"path": str(root / "notebooks")}},
            progress_bar=progress if cell_bar is None else cell_bar, report_mode=False,
            kernel_manager_class=LocalKernelManager, stderr_file=SweepProgress() if progress else None,
        )
    except PapermillExecutionError as exc:
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(scratch, failed)
        raise NotebookFailed(
            f"notebook {name} ({title_suffix or 'no label'}) failed in cell {exc.exec_count}: "
            f"{exc.ename}: {exc.evalue}\nexecuted copy kept for debugging: {failed}"
        ) from None
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    notebook = nbformat.read(scratch, as_version=4)
    if callable(extra_inputs):  # the inputs the notebook ended with (checkpoints it downloaded, ...)
        key = _input_key(source, parameters, home, extra_inputs)
    notebook.metadata[METADATA_KEY] = {"input_key": key, "parameters": parameters, "seconds": round(seconds, 1),
                                       "tables": [_home_relative(t, home) for t in tables if t.exists()]}
    _retitle(notebook, title_suffix)
    fold_injected_parameters(notebook)
    collapse_progress_output(notebook)
    with atomic_path(output) as tmp:
        nbformat.write(notebook, tmp)
    scratch.unlink(missing_ok=True)
    logger.info("%s ... %.1f s", what, seconds)
    return True


def _input_key(source: Path, parameters: dict, home: Path, extra_inputs) -> str:
    inputs = extra_inputs() if callable(extra_inputs) else extra_inputs
    return stable_hash({
        "source": _file_hash(source), "parameters": parameters, "library": _library_hash(),
        "home": str(home), "inputs": inputs or {},
    })


def _home_relative(path: Path, home: Path) -> str:
    """A table's path as recorded in an executed notebook: relative to the data home (no machine path)."""
    try:
        return path.relative_to(home).as_posix()
    except ValueError:
        return path.as_posix()


def _rerun_reason(output: Path, key: str, tables: list[Path], home: Path, force: bool) -> str | None:
    """Why ``output`` has to be (re)made: ``""`` (not there), ``"forced"``, ``"inputs changed"``,
    ``"tables missing: ..."``; None when it can be reused.

    The tables checked are those the executed copy recorded as written (a
    notebook that legitimately writes none of ``tables``, e.g. no phases to
    tabulate, is not re-run for them); a copy recording none checks ``tables``.
    """
    if not output.exists():
        return ""
    if force:
        return "forced"
    previous = nbformat.read(output, as_version=4).metadata.get(METADATA_KEY, {})
    if previous.get("input_key") != key:
        return "inputs changed"
    recorded = previous.get("tables")
    expected = tables if recorded is None else [home / t for t in recorded]
    missing = [_home_relative(t, home) for t in expected if not t.exists()]
    if missing:
        shown = ", ".join(missing[:SHOWN_TABLES]) + (f", ... ({len(missing)} in all)" if len(missing) > SHOWN_TABLES
                                                      else "")
        return f"tables missing: {shown}"
    return None


def fold_injected_parameters(notebook) -> None:
    """Show the parameters once: fold papermill's injected values into the ``parameters`` cell.

    Papermill executes a copy with its own ``injected-parameters`` cell after
    the source's ``parameters`` cell, so a rendered page would show both. Here
    (after execution: nothing that ran changes) each top-level assignment of
    the parameters cell that the run overrode gets the injected value
    expression, comments kept; a first comment line names the values the run
    set, and the injected cell is dropped.

    Examples
    --------
    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[
    ...     nbformat.v4.new_code_cell("n = 1000     # permutations\\nname = 'a'   # a name",
    ...                               metadata={"tags": ["parameters"]}),
    ...     nbformat.v4.new_code_cell("# Parameters\\nn = 20\\n", metadata={"tags": ["injected-parameters"]}),
    ...     nbformat.v4.new_code_cell("print(n)")])
    >>> fold_injected_parameters(nb)
    >>> print(nb.cells[0].source)
    # values set by this run (papermill): n
    n = 20       # permutations
    name = 'a'   # a name
    >>> len(nb.cells)
    2
    """
    tagged = [(i, cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    injected = [i for i, cell in tagged if INJECTED_TAG in cell.metadata.get("tags", [])]
    original = [cell for _, cell in tagged if PARAMETERS_TAG in cell.metadata.get("tags", [])]
    if not injected or not original:
        return
    values = _assigned_values(notebook.cells[injected[0]].source)
    if values is None:
        return  # not plain assignments: leave papermill's cell as it is
    cell = original[0]
    folded = _replace_assignments(cell.source, values)
    if folded is None:
        return
    if values:
        folded = f"# values set by this run (papermill): {', '.join(values)}\n" + folded
    cell.source = folded
    del notebook.cells[injected[0]]


def _assigned_values(source: str) -> dict | None:
    """``{name: value source}`` of the top-level single-name assignments of a cell (None if it has others)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.get_source_segment(source, node.value)
        else:
            return None
    return values


def _replace_assignments(source: str, values: dict) -> str | None:
    """The cell source with the value expression of each assignment named in ``values`` replaced."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines(keepends=True)
    edits, seen = [], set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
        else:
            continue
        if name in values:
            seen.add(name)
            value = node.value
            edits.append((value.lineno - 1, value.col_offset, value.end_lineno - 1, value.end_col_offset, values[name]))
    for first, start, last, end, text in reversed(edits):
        head = lines[first].encode()[:start].decode()
        old_end_column = len(lines[last].encode()[:end].decode())
        tail = lines[last].encode()[end:].decode()
        comment = re.match(r"^([ \t]+)(#.*)$", tail, flags=re.S)
        if comment and first == last:  # keep the comment column where the new value allows
            pad = max(1, old_end_column + len(comment[1]) - len(head + text))
            tail = " " * pad + comment[2]
        lines[first:last + 1] = [head + text + tail]
    extra = [name for name in values if name not in seen]
    folded = "".join(lines)
    if extra:
        folded = folded.rstrip("\n") + "\n" + "".join(f"{name} = {values[name]}\n" for name in extra)
    return folded


def collapse_progress_output(notebook) -> None:
    r"""Merge runs of stream outputs and keep what a terminal would show after carriage returns.

    A text progress bar redraws itself with ``\r``; the kernel sends each redraw
    as its own stream output, which a rendered page shows as hundreds of lines.
    Adjacent outputs of the same stream are merged and, line by line, only the
    text after the last ``\r`` is kept (the bar's final state); other output
    and its order are unchanged.

    Examples
    --------
    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[
    ...     nbformat.v4.new_output("stream", name="stderr", text="\rbar 1/2"),
    ...     nbformat.v4.new_output("stream", name="stderr", text="\rbar 2/2\n"),
    ...     nbformat.v4.new_output("stream", name="stdout", text="done\n")])])
    >>> collapse_progress_output(nb)
    >>> [(o.name, o.text) for o in nb.cells[0].outputs]
    [('stderr', 'bar 2/2\n'), ('stdout', 'done\n')]
    """
    for cell in notebook.cells:
        if cell.cell_type != "code" or not cell.get("outputs"):
            continue
        merged = []
        for out in cell.outputs:
            if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                    and merged[-1].get("name") == out.get("name")):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream" and "\r" in out["text"]:
                lines = [line.rsplit("\r", 1)[-1] for line in out["text"].split("\n")]
                out["text"] = "\n".join(lines)
        cell.outputs = [o for o in merged if not (o.get("output_type") == "stream" and not o["text"].strip())]


def _retitle(notebook, suffix: str) -> None:
    """Append the run label (series, subject) to the notebook's first heading."""
    if not suffix:
        return
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            first, _, rest = cell.source.lstrip().partition("\n")
            cell.source = f"{first} ({suffix})\n{rest}"
            return


def _series_inputs(series_spec, checkpoints="all") -> dict:
    """What a series' results depend on: its checkpoints (and config hash) and, for hub checkpoints,
    the commit each chosen revision resolves to in the local cache (None while not cached)."""
    series = get_series(series_spec)
    inputs = {"series": series.name, "checkpoints": [c.name for c in series.checkpoints],
              "info": {k: v for k, v in series.info.items() if k in ("config_hash", "repo", "tokens_per_step")}}
    if any(c.revision for c in series.checkpoints):
        chosen = select_checkpoints(series.checkpoints, checkpoints)
        inputs["commits"] = {c.name: cached_commit(c.source, c.revision) for c in chosen if c.revision}
    return inputs


def _data_identity(dataset: str, options: dict, subject: str) -> dict:
    """:meth:`Dataset.identity` of a subject; a dataset that does not open gives its error (the notebook
    then fails with it)."""
    try:
        return get_dataset(dataset, **options).identity(subject)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"dataset": dataset, "subject": subject, "unavailable": " ".join(str(exc).split())}


def _job_inputs(series_spec, checkpoints, data: tuple | None = None) -> dict:
    inputs = _series_inputs(series_spec, checkpoints)
    if data is not None:
        inputs["data"] = _data_identity(*data)
    return inputs


def _reader_inputs(series_spec, checkpoints, folder: Path) -> dict:
    """A series' inputs plus the hashes of the tables a :data:`READS_TABLES` notebook reads from ``folder``."""
    inputs = _series_inputs(series_spec, checkpoints)
    inputs["tables"] = {table: _file_hash(folder / table) for table in READ_TABLE_FILES}
    return inputs


def _synthesis_inputs(cfg) -> dict:
    tables = {}
    for series in cfg.series_names():
        for subject in cfg.subjects:
            folder = results_dir(series, cfg.dataset, subject, create=False)
            tables.update({f"{series}/{subject}/{t}": _file_hash(folder / t) for t in TABLE_FILES.values()})
    return tables


def prepare_series(series_spec, progress: bool = True, device: str = "auto") -> None:
    """Make a series usable: train an organism series that is not trained yet (on ``device``)."""

    if isinstance(series_spec, str):
        spec = load_presets().get(series_spec, {})
        if spec.get("loader") == "organism":
            if not organism_trained(spec.get("config", "default")):
                logger.info("training the organism for series %s (config %s) ...", series_spec,
                            spec.get("config", "default"))
            train_organism(spec.get("config", "default"), progress=progress, device=device)


def run(config="default", force=(), build: bool = True, root: Path | None = None,
        progress: bool = True, check: bool = True) -> RunReport:
    """Run a configuration end to end: train what is missing, execute notebooks, build.

    Parameters
    ----------
    config : str, path or dict
        A run preset name (``default``, ``tiny``), a YAML path or a dict.
    force : iterable of str
        Notebook names to re-execute even if their inputs did not change
        (``"all"`` for every one).
    build : bool
        Build the book afterwards.
    check : bool
        Run the preflight checks first (:func:`triphase.runs.preflight.preflight`).

    Raises
    ------
    ValueError
        For a ``force`` name that is no source notebook.
    PreflightFailed
        When the dataset, its subjects or the chosen checkpoints are missing.
    """

    root = root or book_root()
    cfg = load_run_config(config, root=root)
    report = RunReport()
    force = set([force] if isinstance(force, str) else force)
    check_force(force, root)
    if check:
        result = preflight(cfg)
        for note in result.notes:
            logger.info("%s", note)
        if result.problems:
            raise PreflightFailed(result.problems)
    t0 = time.perf_counter()
    for series in cfg.series:
        prepare_series(series, progress=progress, device=cfg.device)
    report.seconds["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_root = root / cfg.output
    declared = {name: notebook_parameters(name, root) for name in cfg.notebooks}
    plan = [(name, job, _notebook_params(cfg, name, job, declared[name])) for name in cfg.notebooks
            for job in _jobs(cfg, NOTEBOOK_SCOPE.get(name, DEFAULT_SCOPE), name, declared[name])]
    if uses_cluster(cfg.scheduler):
        todo = [(name, params) for name, job, params in plan
                if _rerun_reason_of(name, params, out_root / job["folder"] / f"{name}.ipynb", job,
                                    bool({name, "all"} & force), root) is not None]
        run_units(plan_units(todo, root), cfg.scheduler, delete_weights=cfg.delete_weights)
        report.seconds["checkpoints"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    def execute(index: int, name: str, job: dict, params: dict, side_by_side: bool) -> bool:
        return execute_notebook(
            name, params, out_root / job["folder"] / f"{name}.ipynb",
            force=bool({name, "all"} & force), root=root, extra_inputs=job["inputs"], title_suffix=job["label"],
            progress=progress, cell_bar=progress and not side_by_side, step=f"[{index}/{len(plan)}] ",
            tables=job["tables"],
        )

    ran = {}
    for wave in notebook_waves(plan):
        ran.update(_execute_wave(wave, cfg.notebook_workers, execute))
    for index, (name, job, _) in enumerate(plan, start=1):
        (report.executed if ran[index] else report.skipped).append(f"{job['folder']}/{name}")
    report.seconds["execute"] = time.perf_counter() - t0
    if build:
        t0 = time.perf_counter()
        logger.info("building the book ...")
        build_book(root)
        report.seconds["build"] = time.perf_counter() - t0
    return report


def notebook_waves(plan: list) -> list[list]:
    """The plan's executions in the order they may run: the notebooks that write tables, then those that read them.

    Each wave is a list of ``(index, name, job, params)`` (``index`` 1-based in
    the plan), longest notebooks first (:data:`LONGEST_FIRST`) so that side by
    side the slowest starts at once. The synthesis and the notebooks of
    :data:`READS_TABLES` (the organism chapter) read the tables the others
    write, so they wait for the first wave; the others read what training wrote.

    Examples
    --------
    >>> plan = [(n, {}, {}) for n in ("00_organism", "01_brain_alignment", "04_phases", "05_validation")]
    >>> [[name for _, name, _, _ in wave] for wave in notebook_waves(plan)]
    [['01_brain_alignment', '05_validation'], ['04_phases', '00_organism']]
    """
    numbered = [(index, name, job, params) for index, (name, job, params) in enumerate(plan, start=1)]

    def rank(item):
        return LONGEST_FIRST.index(item[1]) if item[1] in LONGEST_FIRST else len(LONGEST_FIRST)

    def reads_tables(item):
        return NOTEBOOK_SCOPE.get(item[1]) == "synthesis" or item[1] in READS_TABLES

    first = sorted((item for item in numbered if not reads_tables(item)), key=rank)
    last = sorted((item for item in numbered if reads_tables(item)), key=rank)
    return [wave for wave in (first, last) if wave]


def _kernel_threads(workers: int) -> dict:
    """Thread settings for kernels that share the machine's cores ``workers`` ways (the user's own win)."""
    per_kernel = str(max(1, (os.cpu_count() or 1) // workers))
    return {var: os.environ.get(var, per_kernel) for var in THREAD_VARIABLES}


def _execute_wave(wave: list, workers: int, execute) -> dict[int, bool]:
    """Run one wave's notebooks, ``workers`` at a time; {plan index: ran}. The first failure is raised
    once the notebooks already running have finished (none is started after it)."""
    if workers <= 1 or len(wave) <= 1:
        return {index: execute(index, name, job, params, False) for index, name, job, params in wave}
    saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    os.environ.update(_kernel_threads(workers))  # kernels inherit the environment when they start
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {}
    try:
        futures = {pool.submit(execute, index, name, job, params, True): index for index, name, job, params in wave}
        ran = {}
        for future in as_completed(futures):
            ran[futures[future]] = future.result()  # the first failure leaves the loop
        return ran
    except BaseException:  # a failing notebook, or Ctrl-C while waiting: start nothing more
        for future in futures:
            future.cancel()  # only the queued ones; the running ones finish (the pool waits for them)
        raise
    finally:
        pool.shutdown(wait=True)
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _notebook_params(cfg, name: str, job: dict, declared: dict) -> dict:
    """The parameters the runner passes to one execution of a notebook (the job's base ones it declares,
    then the run's ``parameters``)."""
    base = {k: v for k, v in job["parameters"].items() if k in declared}
    return {**base, **cfg.notebook_parameters(name)}


def _rerun_reason_of(name: str, params: dict, output: Path, job: dict, force: bool, root: Path) -> str | None:
    """Why :func:`execute_notebook` would run this job (see :func:`_rerun_reason`); None when it would reuse it."""
    home = data_home()
    key = _input_key(root / "notebooks" / f"{name}.ipynb", params, home, job["inputs"])
    return _rerun_reason(output, key, [Path(t) for t in job["tables"]], home, force)


def notebook_jobs(config, root: Path | None = None) -> list[tuple[str, dict]]:
    """``(notebook, parameters)`` of every notebook execution a run configuration makes, in order.

    Examples
    --------
    >>> jobs = notebook_jobs({"series": ["organism-tiny"], "notebooks": ["01_brain_alignment"],
    ...                       "parameters": {"01_brain_alignment": {"n_perm": 20}}})
    >>> [(name, params["series"], params["n_perm"]) for name, params in jobs]
    [('01_brain_alignment', 'organism-tiny', 20)]
    """
    root = root or book_root()
    cfg = load_run_config(config, root=root)
    jobs = []
    for name in cfg.notebooks:
        declared = notebook_parameters(name, root)
        for job in _jobs(cfg, NOTEBOOK_SCOPE.get(name, DEFAULT_SCOPE), name, declared):
            jobs.append((name, _notebook_params(cfg, name, job, declared)))
    return jobs


def check_force(names, root: Path | None = None) -> None:
    """Raise ValueError naming any ``force`` entry that is neither ``all`` nor a source notebook."""
    available = source_notebooks(root)
    unknown = sorted(set(names) - set(available) - {"all"})
    if unknown:
        raise ValueError(f"--force: no notebook named {', '.join(unknown)}; valid: all, {', '.join(available)}")


def _jobs(cfg, scope: str, notebook: str | None = None, declared=None) -> list[dict]:
    """The executions of one notebook: output folder, label, parameters, inputs and the tables it writes.

    ``inputs`` is a function (:func:`execute_notebook` calls it before and after
    a run): the series' inputs, plus the data's identity for a per-subject
    notebook that opens the dataset (it takes ``dataset_options``; with
    ``declared`` None every per-subject notebook counts), or for the synthesis
    the hashes of the upstream tables. ``tables`` are the files of
    :data:`NOTEBOOK_TABLES` in the results folders the notebook writes.
    """
    common = {"checkpoints": cfg.checkpoints, "device": cfg.device, "seed": cfg.seed,
              "dataset": cfg.dataset, "dataset_options": cfg.dataset_options}
    files = NOTEBOOK_TABLES.get(notebook, ())
    checkpoints = cfg.notebook_parameters(notebook).get("checkpoints", cfg.checkpoints) if notebook else cfg.checkpoints
    if scope == "synthesis":
        tables = [results_dir(series, cfg.dataset, subject, create=False) / f
                  for series in cfg.series_names() for subject in cfg.subjects for f in files]
        return [{"folder": SYNTHESIS_FOLDER, "label": "all models",
                 "parameters": {**common, "series": cfg.series_names(), "subjects": list(cfg.subjects)},
                 "inputs": partial(_synthesis_inputs, cfg), "tables": tables}]
    if scope == "once":
        return [{"folder": ONCE_FOLDER, "label": "simulation", "parameters": common, "inputs": dict, "tables": []}]
    reads_data = declared is None or DATA_PARAMETER in declared
    jobs = []
    for series_spec, name in zip(cfg.series, cfg.series_names()):
        series_param = name if isinstance(series_spec, str) else series_spec
        if scope == "series":
            parameters = {**common, "series": series_param}
            inputs = partial(_job_inputs, series_spec, checkpoints)
            if notebook in READS_TABLES:
                # it shows the first subject's tables: they are inputs, so new tables re-run it
                parameters["subject"] = cfg.subjects[0]
                inputs = partial(_reader_inputs, series_spec, checkpoints,
                                 results_dir(name, cfg.dataset, cfg.subjects[0], create=False))
            jobs.append({"folder": name, "label": name, "inputs": inputs, "parameters": parameters, "tables": []})
            continue
        for subject in cfg.subjects:
            data = (cfg.dataset, dict(cfg.dataset_options), subject) if reads_data else None
            folder = results_dir(name, cfg.dataset, subject, create=False)
            jobs.append({"folder": f"{name}/{cfg.dataset}-{subject}", "label": f"{name}, {cfg.dataset} {subject}",
                         "inputs": partial(_job_inputs, series_spec, checkpoints, data),
                         "parameters": {**common, "series": series_param, "subject": subject},
                         "tables": [folder / f for f in files]})
    return jobs


def build_book(root: Path | None = None) -> Path:
    """Build the Jupyter Book (HTML, no execution) and return ``_build/html``."""
    root = root or book_root()
    # jupyter-book's own entry point, run by this interpreter: an environment whose bin/ is not on PATH
    # (or that has no console script of its own) builds with the jupyter-book it imports
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root)]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}):\n{tail}")
    html = root / "_build" / "html"
    if not (html / "index.html").exists():
        raise RuntimeError(f"jupyter-book build finished but {html / 'index.html'} is missing")
    return html
