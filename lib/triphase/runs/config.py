"""Run configuration: which series, checkpoints, dataset and subjects to run.

A run configuration is data (YAML). Presets ship in ``presets/run_<name>.yaml``
(``default``, ``tiny``); users pass a path to their own file. Validation names
the field and the allowed values on any error.

Fields
------
series : list of (str or dict)
    Preset series names (``triphase models``) or inline hub series
    (``{name, repo, revisions, tokens_per_step}``).
checkpoints : "all", int or list
    All checkpoints, N log-spaced in tokens seen, or explicit names.
dataset : str
    A dataset name (``simulated``, ``lebel2023``, ``generic``).
subjects : list of str
dataset_options : dict
    Passed to the dataset adapter (e.g. ``root``).
notebooks : list of str
    Source notebooks to run, by stem (``01_brain_alignment``).
parameters : dict
    Extra notebook parameters: ``{notebook stem: {name: value}}``, or
    ``{name: value}`` under the key ``all`` for every notebook.
device : str
    ``auto``, ``cpu``, ``cuda``...
seed : int
output : str
    Where executed notebooks go, relative to the book root (default ``book/executed``).
scheduler : str or dict
    Where the per-checkpoint work runs (:mod:`triphase.runs.engine`): ``local``
    (default), ``{local: {n_workers, threads_per_worker, gpus, memory_limit,
    dashboard_address}}``, ``{address: "tcp://host:8786"}`` (a running Dask
    scheduler) or ``{slurm: {cores, memory, gpus, walltime, queue, ...}}``
    (:data:`SLURM_FIELDS`). The default, one local worker, runs everything in
    the notebooks as before, with no Dask at all.
delete_weights : bool
    After a hub checkpoint's unit of work, delete its weight files from the
    Hugging Face cache (default false; never the organism).
notebook_workers : int or "auto"
    How many notebooks execute at the same time (each kernel then gets
    ``cores // notebook_workers`` BLAS and torch threads). ``auto`` (default):
    2 when the machine has at least 2 cores, else 1. Every notebook but the
    synthesis reads only what training wrote, so they are independent; the
    synthesis runs after them. Measured on a 2-core machine: one brain
    checkpoint takes 16.5 s with 2 threads and 18.5 s with 1, so two notebooks
    side by side finish far sooner than one after the other.

Notebook parameters are checked when the configuration is loaded, before
anything is trained: every name must be one the notebook declares, and every
value must have the declared type. A parameter's type is its annotation in the
notebook's ``parameters`` cell (``layer: Union[str, int] = "best"``, read by
:func:`papermill.inspect_notebook`, whose parser takes ``typing`` forms, not
``str | int``); the book's notebooks annotate every parameter. An unannotated
parameter takes the type of its default (an int is fine where a float is
expected); a default of ``None`` accepts any value. The run-level parameters
the runner passes (``series``, ``checkpoints``, ...) take the types of the run fields.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import papermill
import yaml

from triphase.datasets import list_datasets
from triphase.models.series import list_series
from triphase.runs.template import book_root, source_notebooks

#: field -> (allowed python types, human description)
SCHEMA = {
    "series": ((list, str), "a list of series names or inline series"),
    "checkpoints": ((str, int, list), "'all', an integer or a list of checkpoint names"),
    "dataset": ((str,), "a dataset name"),
    "subjects": ((list, str), "a list of subject ids"),
    "dataset_options": ((dict,), "a mapping of adapter options"),
    "notebooks": ((list,), "a list of notebook names"),
    "parameters": ((dict,), "a mapping {notebook: {parameter: value}}"),
    "device": ((str,), "'auto', 'cpu' or 'cuda'"),
    "seed": ((int,), "an integer"),
    "output": ((str,), "a folder relative to the book root"),
    "scheduler": ((str, dict), "'local' or a mapping with one of local, address, slurm"),
    "delete_weights": ((bool,), "true or false"),
    "notebook_workers": ((int, str), "'auto' or a positive integer"),
}
#: fields whose value is a YAML boolean (every other field rejects true/false)
BOOLEAN_FIELDS = ("delete_weights",)
SCHEDULER_KINDS = ("local", "address", "slurm")
#: scheduler.local fields -> (type, what it must be); n_workers defaults to gpus, else 1
LOCAL_FIELDS = {
    "n_workers": (int, "a positive integer"), "threads_per_worker": (int, "a positive integer"),
    "gpus": (int, "an integer >= 0"), "memory_limit": (str, "a size such as '8GB'"),
    "dashboard_address": (str, "an address such as ':8787'"),
}
#: scheduler.slurm fields -> (type, what it must be); passed to dask_jobqueue.SLURMCluster except gpus/adapt/jobs
SLURM_FIELDS = {
    "cores": (int, "a positive integer"), "memory": (str, "a size such as '64GB'"),
    "gpus": (int, "an integer >= 0"), "walltime": (str, "a time such as '04:00:00'"),
    "queue": (str, "a partition name"), "account": (str, "an account name"),
    "processes": (int, "a positive integer"), "jobs": (int, "a positive integer"),
    "adapt": (dict, "a mapping {minimum, maximum}"), "job_extra_directives": (list, "a list of strings"),
    "job_script_prologue": (list, "a list of strings"), "worker_extra_args": (list, "a list of strings"),
    "local_directory": (str, "a folder"), "log_directory": (str, "a folder"), "interface": (str, "an interface name"),
    "python": (str, "a python executable"), "job_name": (str, "a name"),
    "scheduler_options": (dict, "a mapping such as {interface: ib0} or {host: 10.0.0.5}"),
}
SLURM_REQUIRED = ("cores", "memory")
ADAPT_FIELDS = ("minimum", "maximum")
DEFAULT_SCHEDULER = {"kind": "local", "n_workers": 1, "threads_per_worker": None, "gpus": 0}
DEFAULT_OUTPUT = "book/executed"
#: notebooks side by side under notebook_workers: auto (more would split the cores of one machine thinner
#: while the synthesis waits for the slowest anyway)
AUTO_NOTEBOOK_WORKERS = 2
NoneType = type(None)
#: notebook parameters the runner fills from the run fields, and the types those fields allow
BASE_PARAMETER_TYPES = {
    "series": (str, dict, list), "checkpoints": (str, int, list), "dataset": (str,), "subject": (str,),
    "subjects": (list,), "dataset_options": (dict,), "device": (str,), "seed": (int,),
}
#: annotation names -> the YAML value types they accept
_ANNOTATION_TYPES = {
    "int": (int,), "float": (int, float), "complex": (int, float), "str": (str,), "bool": (bool,),
    "list": (list,), "List": (list,), "tuple": (list,), "Tuple": (list,), "Sequence": (list,),
    "dict": (dict,), "Dict": (dict,), "Mapping": (dict,), "None": (NoneType,), "NoneType": (NoneType,),
}
_TYPE_LABELS = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict", NoneType: "None"}


class ConfigError(ValueError):
    """A run configuration is invalid (the message names the field)."""


@dataclass
class RunConfig:
    series: list = field(default_factory=lambda: ["organism"])
    checkpoints: object = "all"
    dataset: str = "simulated"
    subjects: list = field(default_factory=lambda: ["sim01"])
    dataset_options: dict = field(default_factory=dict)
    notebooks: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    output: str = DEFAULT_OUTPUT
    scheduler: object = "local"
    delete_weights: bool = False
    notebook_workers: object = "auto"
    source: str = "<dict>"

    def series_names(self) -> list[str]:
        return [s if isinstance(s, str) else s["name"] for s in self.series]

    def notebook_parameters(self, notebook: str) -> dict:
        params = dict(self.parameters.get("all", {}))
        params.update(self.parameters.get(notebook, {}))
        return params


def available_run_presets() -> list[str]:
    folder = resources.files("triphase").joinpath("presets")
    return sorted(p.name[4:-5] for p in folder.iterdir() if p.name.startswith("run_") and p.name.endswith(".yaml"))


def load_run_config(path_or_preset: str | Path | dict = "default", root: Path | None = None) -> RunConfig:
    """Read and validate a run configuration (a path, a preset name or a dict).

    ``root`` is the book root whose notebooks the parameters are checked
    against (default :func:`~triphase.runs.template.book_root`).

    Examples
    --------
    >>> cfg = load_run_config({"series": ["organism-tiny"], "checkpoints": 3})
    >>> cfg.checkpoints
    3
    >>> load_run_config({"serie": ["organism"]})
    Traceback (most recent call last):
    ...
    triphase.runs.config.ConfigError: <dict>: unknown field 'serie'; allowed fields: series, checkpoints, dataset, subjects, dataset_options, notebooks, parameters, device, seed, output, scheduler, delete_weights, notebook_workers
    """
    if isinstance(path_or_preset, dict):
        values, source = dict(path_or_preset), "<dict>"
    else:
        text_path = Path(path_or_preset)
        if text_path.suffix in (".yaml", ".yml") or text_path.exists():
            if not text_path.exists():
                raise ConfigError(f"run configuration file {text_path} does not exist")
            source = str(text_path)
            values = _read_yaml(text_path)
        else:
            presets = available_run_presets()
            if str(path_or_preset) not in presets:
                raise ConfigError(
                    f"{path_or_preset!r} is neither a YAML file nor a run preset; presets: {', '.join(presets)}"
                )
            source = f"preset {path_or_preset}"
            values = yaml.safe_load(
                resources.files("triphase").joinpath("presets", f"run_{path_or_preset}.yaml").read_text()
            )
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a run configuration must be a mapping of fields, got {type(values).__name__}")
    return _validate(values, source, root)


def _read_yaml(path: Path):
    """The YAML document of a run file; syntax errors and empty files are one-line ConfigErrors."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if values is None:
        raise ConfigError(f"{path}: the run file is empty (or only comments); give at least 'series', e.g. "
                          "`series: [organism]` (fields: " + ", ".join(SCHEMA) + ")")
    return values


def _validate(values: dict, source: str, root: Path | None = None) -> RunConfig:
    for key, value in values.items():
        if key not in SCHEMA:
            raise ConfigError(f"{source}: unknown field {key!r}; allowed fields: {', '.join(SCHEMA)}")
        types, description = SCHEMA[key]
        if (isinstance(value, bool) and key not in BOOLEAN_FIELDS) or not isinstance(value, types):
            raise ConfigError(f"{source}: field {key!r} must be {description}, got {value!r}")
    values = dict(values)
    for key in ("series", "subjects"):
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    cfg = RunConfig(**values, source=source)
    _check_series(cfg)
    _check_checkpoints(cfg)
    _check_dataset(cfg)
    _check_notebooks(cfg, root)
    cfg.scheduler = check_scheduler(cfg.scheduler, cfg.source)
    cfg.notebook_workers = resolve_notebook_workers(cfg.notebook_workers, cfg.source)
    return cfg


def resolve_notebook_workers(value, source: str = "<dict>", cores: int | None = None) -> int:
    """The ``notebook_workers`` field as a number: ``auto`` = 2 on a machine with 2 or more cores, else 1.

    Examples
    --------
    >>> resolve_notebook_workers("auto", cores=16), resolve_notebook_workers("auto", cores=1)
    (2, 1)
    >>> resolve_notebook_workers(0)
    Traceback (most recent call last):
    ...
    triphase.runs.config.ConfigError: <dict>: field 'notebook_workers' must be 'auto' or a positive integer, got 0
    """
    if value == "auto":
        if cores is None:
            cores = os.cpu_count() or 1
        return min(AUTO_NOTEBOOK_WORKERS, cores)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: field 'notebook_workers' must be 'auto' or a positive integer, got {value!r}")
    return value


def check_scheduler(value, source: str = "<dict>") -> dict:
    """The ``scheduler`` field validated and normalised to ``{"kind": ..., field: value}``.

    Examples
    --------
    >>> check_scheduler("local")
    {'kind': 'local', 'n_workers': 1, 'threads_per_worker': None, 'gpus': 0}
    >>> check_scheduler({"local": {"gpus": 2}})["n_workers"]
    2
    >>> check_scheduler({"slurm": {"cores": 8}})
    Traceback (most recent call last):
    ...
    triphase.runs.config.ConfigError: <dict>: field 'scheduler.slurm' lacks memory (required: cores, memory)
    """
    if isinstance(value, dict) and "kind" in value:
        # an already normalised scheduler (a RunConfig validated twice, or written by hand in that form):
        # turned back into the YAML form and validated like any other, never trusted as it is
        kind = value["kind"]
        if kind not in SCHEDULER_KINDS:
            raise ConfigError(f"{source}: field 'scheduler.kind' must be one of {', '.join(SCHEDULER_KINDS)}, "
                              f"got {kind!r}")
        rest = {key: option for key, option in value.items() if key != "kind" and option is not None}
        if kind == "address" and set(rest) - {"address"}:
            raise ConfigError(f"{source}: field 'scheduler.address' takes no other fields, got "
                              f"{sorted(set(rest) - {'address'})}")
        value = {kind: rest.get("address")} if kind == "address" else {kind: rest}
    if value == "local" or value is None:
        return dict(DEFAULT_SCHEDULER)
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in SCHEDULER_KINDS:
        raise ConfigError(f"{source}: field 'scheduler' must be 'local' or a mapping with exactly one of "
                          f"{', '.join(SCHEDULER_KINDS)}, got {value!r}")
    kind, options = next(iter(value.items()))
    where = f"{source}: field 'scheduler.{kind}'"

    def field_of(name: str) -> str:  # the full dotted name of a sub-field, quoted as one
        return f"{source}: field 'scheduler.{kind}.{name}'"

    if kind == "address":
        if not isinstance(options, str) or "://" not in options:
            raise ConfigError(f"{where} must be a scheduler address such as 'tcp://10.0.0.5:8786', got {options!r}")
        return {"kind": "address", "address": options}
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ConfigError(f"{where} must be a mapping of fields, got {options!r}")
    fields = LOCAL_FIELDS if kind == "local" else SLURM_FIELDS
    for key, option in options.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown field {key!r}; allowed: {', '.join(fields)}")
        kind_type, description = fields[key]
        bad = isinstance(option, bool) or not isinstance(option, kind_type)
        if kind_type is int and not bad:
            bad = option < (0 if key == "gpus" else 1)
        if kind_type is list and not bad:
            bad = not all(isinstance(item, str) for item in option)
        if bad:
            raise ConfigError(f"{field_of(key)} must be {description}, got {option!r}")
    if kind == "local":
        normal = {**DEFAULT_SCHEDULER, **options}
        normal["n_workers"] = options.get("n_workers", normal["gpus"] or 1)
        if normal["gpus"] and normal["n_workers"] != normal["gpus"]:
            raise ConfigError(f"{field_of('n_workers')} must equal gpus ({normal['gpus']}): one worker per GPU, "
                              f"got {normal['n_workers']}")
        return normal
    missing = [key for key in SLURM_REQUIRED if key not in options]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)} (required: {', '.join(SLURM_REQUIRED)})")
    normal = {"kind": "slurm", "gpus": 0, **options}
    normal.setdefault("processes", normal["gpus"] or 1)
    if normal["gpus"] and normal["processes"] != normal["gpus"]:
        raise ConfigError(f"{field_of('processes')} must equal gpus ({normal['gpus']}): one worker per GPU, "
                          f"got {normal['processes']}")
    if "adapt" in options and "jobs" in options:
        raise ConfigError(f"{where}: give either jobs (a fixed number) or adapt (minimum, maximum), not both")
    adapt = options.get("adapt")
    if adapt is not None:
        unknown = [key for key in adapt if key not in ADAPT_FIELDS]
        if unknown:
            raise ConfigError(f"{field_of('adapt')}: unknown field {unknown[0]!r}; allowed: {', '.join(ADAPT_FIELDS)}")
        for key in ADAPT_FIELDS:
            if key in adapt and (isinstance(adapt[key], bool) or not isinstance(adapt[key], int) or adapt[key] < 0):
                raise ConfigError(f"{field_of('adapt.' + key)} must be an integer >= 0, got {adapt[key]!r}")
        if adapt.get("minimum", 0) > adapt.get("maximum", adapt.get("minimum", 0)):
            raise ConfigError(f"{field_of('adapt')}: minimum {adapt['minimum']} exceeds maximum {adapt['maximum']}")
    return normal


def _check_series(cfg: RunConfig) -> None:
    if not cfg.series:
        raise ConfigError(f"{cfg.source}: field 'series' is empty; presets: {', '.join(list_series())}")
    presets = list_series()
    for item in cfg.series:
        if isinstance(item, str):
            if item not in presets:
                raise ConfigError(
                    f"{cfg.source}: field 'series': unknown series {item!r}; presets: {', '.join(presets)} "
                    "(or an inline series with name, repo, revisions, tokens_per_step)"
                )
        elif isinstance(item, dict):
            missing = [k for k in ("name", "repo", "revisions", "tokens_per_step") if k not in item]
            if missing:
                raise ConfigError(f"{cfg.source}: field 'series': inline series {item.get('name', '?')!r} "
                                  f"lacks {', '.join(missing)}")
        else:
            raise ConfigError(f"{cfg.source}: field 'series' entries must be names or mappings, got {item!r}")


def _check_checkpoints(cfg: RunConfig) -> None:
    spec = cfg.checkpoints
    if isinstance(spec, str) and spec != "all":
        raise ConfigError(f"{cfg.source}: field 'checkpoints' must be 'all', an integer or a list, got {spec!r}")
    if isinstance(spec, int) and spec < 2:
        raise ConfigError(f"{cfg.source}: field 'checkpoints' asks for {spec} log-spaced checkpoints; use >= 2")
    if isinstance(spec, list) and not spec:
        raise ConfigError(f"{cfg.source}: field 'checkpoints' is an empty list")


def _check_dataset(cfg: RunConfig) -> None:
    if cfg.dataset not in list_datasets():
        raise ConfigError(f"{cfg.source}: field 'dataset': unknown dataset {cfg.dataset!r}; "
                          f"allowed: {', '.join(list_datasets())}")
    if not cfg.subjects or not all(isinstance(s, str) for s in cfg.subjects):
        raise ConfigError(f"{cfg.source}: field 'subjects' must be a non-empty list of subject ids")


def _check_notebooks(cfg: RunConfig, root: Path | None = None) -> None:
    root = root or book_root()
    available = source_notebooks(root)
    for name in cfg.notebooks:
        if name not in available:
            raise ConfigError(f"{cfg.source}: field 'notebooks': unknown notebook {name!r}; "
                              f"allowed: {', '.join(available)}")
    for name, params in cfg.parameters.items():
        if name != "all" and name not in available:
            raise ConfigError(f"{cfg.source}: field 'parameters': unknown notebook {name!r}; "
                              f"allowed: all, {', '.join(available)}")
        if not isinstance(params, dict):
            raise ConfigError(f"{cfg.source}: field 'parameters.{name}' must be a mapping of parameter values")
    if not cfg.notebooks:
        cfg.notebooks = list(available)
    _check_parameters(cfg, root)


def _check_parameters(cfg: RunConfig, root: Path) -> None:
    """Every configured notebook parameter is declared by its notebook and has the declared type."""
    for name, params in cfg.parameters.items():
        targets = cfg.notebooks if name == "all" else [name]
        for notebook in targets:
            declared = notebook_parameter_types(notebook, root)
            for key, value in params.items():
                where = f"{cfg.source}: field 'parameters.{name}'"
                if key not in declared:
                    raise ConfigError(f"{where}: notebook {notebook} has no parameter {key!r}; "
                                      f"valid: {', '.join(sorted(declared))}")
                types = declared[key]
                if not _has_type(value, types):
                    raise ConfigError(f"{where}: notebook {notebook}, parameter {key!r} must be "
                                      f"{_describe(types)}, got {_TYPE_LABELS.get(type(value), type(value).__name__)} "
                                      f"{value!r}")


def notebook_parameter_types(name: str, root: Path | None = None) -> dict:
    """``{parameter: accepted types}`` of a source notebook (``None``: any value); see the module docstring.

    Examples
    --------
    >>> types = notebook_parameter_types("01_brain_alignment")
    >>> types["n_perm"], types["context"], types["checkpoints"]
    ((<class 'int'>,), (<class 'NoneType'>, <class 'int'>), (<class 'str'>, <class 'int'>, <class 'list'>))
    """
    path = (root or book_root()) / "notebooks" / f"{name}.ipynb"
    return dict(_inspect(str(path), path.stat().st_mtime_ns))


@lru_cache(maxsize=64)
def _inspect(path: str, mtime_ns: int) -> tuple:
    declared = papermill.inspect_notebook(path)
    if not declared:
        raise ConfigError(f"{path}: no cell tagged 'parameters'")
    return tuple((key, _parameter_types(key, info)) for key, info in declared.items())


def _parameter_types(name: str, info: dict):
    """The value types one declared parameter accepts, or None for any (see the module docstring)."""
    annotation = info.get("inferred_type_name") or "None"
    if annotation != "None":
        return _annotation_types(annotation)
    if name in BASE_PARAMETER_TYPES:
        return BASE_PARAMETER_TYPES[name]
    try:
        default = ast.literal_eval(info.get("default") or "None")
    except (ValueError, SyntaxError):
        return None  # an expression default (np.inf, 2 ** 10): its type is not knowable here
    if default is None:
        return None
    types = [t for t in (bool, int, float, str, list, dict) if isinstance(default, t)][:1] or [type(default)]
    if isinstance(default, tuple):
        types = [list]
    if types == [float]:
        types = [int, float]
    return tuple(types)


def _annotation_types(annotation: str):
    """Types named by an annotation (``int``, ``Optional[int]``, ``str | int``, ``list[str]``); None for any."""
    try:
        tree = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None

    def walk(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = walk(node.left), walk(node.right)
            return None if left is None or right is None else left + right
        if isinstance(node, ast.Constant) and node.value is None:
            return (NoneType,)
        if isinstance(node, ast.Subscript):
            base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            if base in ("Optional", "Union"):
                items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                parts = [walk(item) for item in items]
                if any(p is None for p in parts):
                    return None
                return sum(parts, (NoneType,) if base == "Optional" else ())
            return walk(node.value)
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        return _ANNOTATION_TYPES.get(name)  # Any, object and unknown names: any value

    return walk(tree)


def _has_type(value, types) -> bool:
    if types is None:
        return True
    if isinstance(value, bool):  # YAML true/false is a bool, never an int here
        return bool in types
    return isinstance(value, tuple(types))


def _describe(types) -> str:
    labels = []
    for t in types:
        label = _TYPE_LABELS.get(t, getattr(t, "__name__", str(t)))
        if label not in labels and not (t is int and float in types):
            labels.append(label)
    return " or ".join(labels)
