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

import yaml

from .checkpoints import Checkpoint

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
        import pandas as pd

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
    from .organism import organism_series

    return organism_series(name, config=spec.get("config", "default"), description=spec.get("description", ""))


def _hub_loader(name: str, spec: dict) -> CheckpointSeries:
    # Revision lists may be explicit, generated from a pattern or read online: see triphase.hub.
    from .hub import build_hub_checkpoints

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
