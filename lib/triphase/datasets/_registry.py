"""Datasets looked up by name; implementations are imported lazily."""
from __future__ import annotations

import importlib

from triphase.datasets._base import Dataset

#: name -> "module:Class" (relative to triphase.datasets)
DATASETS = {
    "simulated": "simulated:SimulatedParticipant",
    "lebel2023": "lebel2023:LeBel2023",
    "generic": "generic:GenericDataset",
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_dataset(name: str, **options) -> Dataset:
    """Instantiate a dataset adapter by name.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets`.
    **options
        Passed to the adapter (e.g. ``root=`` for real datasets, the simulation
        preset for ``simulated``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    module_name, class_name = DATASETS[name].split(":")
    module = importlib.import_module(f"triphase.datasets.{module_name}")
    return getattr(module, class_name)(**options)
