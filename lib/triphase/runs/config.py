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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from triphase.datasets import list_datasets
from triphase.models.series import list_series
from triphase.runs.template import source_notebooks

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
}
DEFAULT_OUTPUT = "book/executed"


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


def load_run_config(path_or_preset: str | Path | dict = "default") -> RunConfig:
    """Read and validate a run configuration (a path, a preset name or a dict).

    Examples
    --------
    >>> cfg = load_run_config({"series": ["organism-tiny"], "checkpoints": 3})
    >>> cfg.checkpoints
    3
    >>> load_run_config({"serie": ["organism"]})
    Traceback (most recent call last):
    ...
    triphase.runs.config.ConfigError: <dict>: unknown field 'serie'; allowed fields: series, checkpoints, dataset, subjects, dataset_options, notebooks, parameters, device, seed, output
    """
    if isinstance(path_or_preset, dict):
        values, source = dict(path_or_preset), "<dict>"
    else:
        text_path = Path(path_or_preset)
        if text_path.suffix in (".yaml", ".yml") or text_path.exists():
            if not text_path.exists():
                raise ConfigError(f"run configuration file {text_path} does not exist")
            source = str(text_path)
            values = yaml.safe_load(text_path.read_text()) or {}
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
    return _validate(values, source)


def _validate(values: dict, source: str) -> RunConfig:
    for key, value in values.items():
        if key not in SCHEMA:
            raise ConfigError(f"{source}: unknown field {key!r}; allowed fields: {', '.join(SCHEMA)}")
        types, description = SCHEMA[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"{source}: field {key!r} must be {description}, got {value!r}")
    values = dict(values)
    for key in ("series", "subjects"):
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    cfg = RunConfig(**values, source=source)
    _check_series(cfg)
    _check_checkpoints(cfg)
    _check_dataset(cfg)
    _check_notebooks(cfg)
    return cfg


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


def _check_notebooks(cfg: RunConfig) -> None:

    available = source_notebooks()
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
