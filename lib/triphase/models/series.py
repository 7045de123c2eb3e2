"""Checkpoint series: a loader plus an ordered list of checkpoints.

Presets are data (``presets/series.yaml``), looked up by name; a user can also
describe a series inline (a dict with ``repo``, ``revisions`` and
``tokens_per_step``) in the run YAML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

#: Environment values that switch a flag on (as huggingface_hub reads them).
# --------------------------------------------------------------------------- presets table
import pandas as pd
import yaml

from triphase.models.checkpoints import Checkpoint
from triphase.models.hub import build_hub_checkpoints, expand_revisions, refs_cache_path
from triphase.models.organism import RUN_FILE, _as_config, complete_steps, run_dir

#: bump when the training procedure changes in a way that changes the weights


PRESETS_FILE = "series.yaml"
_STEP_IN_REVISION = re.compile(r"(\d+)$")


@dataclass
class CheckpointSeries:
    """A named, ordered list of checkpoints.

    Attributes
    ----------
    name : str
    tier : str
        ``"embedded"`` (trained here) or ``"real"`` (hub).
    checkpoints : list of Checkpoint
    description : str
    info : dict
        Loader-specific facts (config hash, repo, tokens per step, ...).
    """

    name: str
    tier: str
    checkpoints: list[Checkpoint]
    description: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.checkpoints)

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]

    def table(self):
        """Checkpoints as a DataFrame (one row each)."""

        return pd.DataFrame([c.to_dict() for c in self.checkpoints])


def load_presets() -> dict:
    """All series presets from the package's YAML file."""
    text = resources.files("triphase").joinpath("presets", PRESETS_FILE).read_text()
    presets = yaml.safe_load(text) or {}
    for name, spec in presets.items():
        if "loader" not in spec:
            raise ValueError(f"{PRESETS_FILE}: preset {name!r} lacks the field 'loader'")
    return presets


def list_series() -> list[str]:
    """Names of all preset series."""
    return sorted(load_presets())


def _organism_loader(name: str, spec: dict) -> CheckpointSeries:
    return organism_series(name, config=spec.get("config", "default"), description=spec.get("description", ""))


def _hub_loader(name: str, spec: dict) -> CheckpointSeries:
    # Revision lists may be explicit, generated from a pattern or read online: see triphase.models.hub.

    checkpoints = build_hub_checkpoints(name, spec)
    return CheckpointSeries(name, "real", checkpoints, spec.get("description", ""), dict(spec))


LOADERS: dict[str, Callable[[str, dict], CheckpointSeries]] = {
    "organism": _organism_loader,
    "hub": _hub_loader,
}


def get_series(name_or_spec) -> CheckpointSeries:
    """Look up a series by preset name, or build one from an inline spec.

    Parameters
    ----------
    name_or_spec : str or dict
        A preset name (see :func:`list_series`) or a dict with ``name``,
        ``loader`` (default ``"hub"``) and the loader's fields.

    Examples
    --------
    >>> s = get_series({"name": "mine", "repo": "org/model", "revisions": ["step0", "step10"],
    ...                 "tokens_per_step": 100})
    >>> [(c.name, c.tokens_seen) for c in s.checkpoints]
    [('step0', 0), ('step10', 1000)]
    """
    if isinstance(name_or_spec, dict):
        spec = dict(name_or_spec)
        name = spec.pop("name", None)
        if not name:
            raise ValueError("an inline series needs a 'name'")
        spec.setdefault("loader", "hub")
    else:
        presets = load_presets()
        if name_or_spec not in presets:
            raise ValueError(
                f"unknown series {name_or_spec!r}; presets: {', '.join(sorted(presets))} "
                "(or give an inline series with repo, revisions and tokens_per_step)"
            )
        name, spec = name_or_spec, presets[name_or_spec]
    loader = spec.get("loader")
    if loader not in LOADERS:
        raise ValueError(f"series {name!r}: unknown loader {loader!r}; allowed: {', '.join(LOADERS)}")
    return LOADERS[loader](name, spec)


def _revision_count(name: str, spec: dict):
    revisions = spec.get("revisions")
    if isinstance(revisions, dict) and revisions.get("discover"):
        path = refs_cache_path(spec["repo"])
        if path.exists():
            try:
                return len(build_hub_checkpoints(name, spec))
            except ValueError:
                return 0
        return "online"
    return len(expand_revisions(name, revisions))


def models_table():
    """Every series preset: name, hub repo, number of checkpoints, tokens per step, status.

    ``checkpoints`` is ``"online"`` for lists read with ``list_repo_refs`` and
    not cached yet; ``revisions`` says whether the list is ``verified``
    (published list/pattern checked against the model card), a ``pattern``
    (generated, not checked against the hub) or ``online``.

    Returns
    -------
    pandas.DataFrame
    """


    rows = []
    for name, spec in load_presets().items():
        if spec["loader"] != "hub":
            rows.append({"name": name, "loader": spec["loader"], "repo": "(trained here)", "checkpoints": "local",
                         "tokens_per_step": "", "params": "", "bf16_weights_gb": "", "revisions": "embedded",
                         "languages": ""})
            continue
        params = spec.get("params")
        tps = spec.get("tokens_per_step")
        rows.append({
            "name": name, "loader": "hub", "repo": spec["repo"], "checkpoints": _revision_count(name, spec),
            "tokens_per_step": "unknown" if tps is None else int(tps),
            "params": params if params is not None else "",
            "bf16_weights_gb": round(bf16_weight_gb(params), 1) if params else "",
            "revisions": spec.get("revisions_status", "unverified"),
            "languages": ",".join(spec.get("languages", [])),
        })
    return pd.DataFrame(rows)


def bf16_weight_gb(params: float) -> float:
    """Memory for weights in bfloat16: 2 bytes per parameter (GB = 1e9 bytes)."""
    return 2.0 * float(params) / 1e9


def organism_series(name: str = "organism", config="default", description: str = ""):
    """The checkpoint series of a trained organism run."""
    cfg = _as_config(config)
    path = run_dir(cfg)
    steps = complete_steps(path)
    if not (path / RUN_FILE).exists() or not steps:
        preset = config if isinstance(config, str) else "<config>"
        raise FileNotFoundError(
            f"series {name!r}: the organism (config {preset!r}, hash {cfg.hash}) has not been trained under "
            f"{path.parent}; run `triphase train --config {preset}` (or `make book`) first"
        )
    checkpoints = [
        Checkpoint(name, f"step{s}", s, s * cfg.tokens_per_step, str(path / f"step{s}"), None, "embedded")
        for s in steps
    ]
    return _series(name, checkpoints, description, cfg)


def _series(name, checkpoints, description, cfg):
    return CheckpointSeries(
        name=name, tier="embedded", checkpoints=checkpoints, description=description,
        info={"config_hash": cfg.hash, "tokens_per_step": cfg.tokens_per_step, "run_dir": str(run_dir(cfg)),
              "config": cfg.to_dict()},
    )
