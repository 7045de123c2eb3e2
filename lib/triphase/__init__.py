"""triphase: LLM checkpoints vs the human brain, internal states and tasks.

A thin helper library behind the Triple Phase book (Nakagi et al., 2025,
arXiv 2502.20779). The public API is re-exported here (flat, himalaya style);
heavy modules are imported on first use so ``import triphase`` stays quick.

Examples
--------
>>> import triphase
>>> triphase.pythia_steps(3000, 1000)[-3:]
[1000, 2000, 3000]
"""
from __future__ import annotations

import importlib
import sys

from ._home import cache_dir, data_home, results_dir
from ._io import atomic_dir, atomic_path, stable_hash, write_parquet
from ._taskitem import TaskItem
from .checkpoints import Checkpoint, load_checkpoint, pythia_steps, select_checkpoints

if "IPython" in sys.modules:
    # In a Jupyter kernel, import tqdm.auto now with its "IProgress not found" warning silenced, before
    # transformers or huggingface_hub import it and print the warning into the notebook.
    from . import _progress  # noqa: F401

__version__ = "0.1.0"

#: public name -> module that defines it (imported lazily)
_LAZY = {
    # checkpoint series and the organism
    "CheckpointSeries": "series", "get_series": "series", "list_series": "series",
    "OrganismConfig": "organism", "train_organism": "organism", "training_log": "organism",
    # configuration and the runner
    "load_run_config": "config", "run": "runner", "execute_notebook": "runner", "build_book": "runner",
    # datasets
    "get_dataset": "datasets", "list_datasets": "datasets", "Dataset": "datasets",
    # perspective 1: brain alignment
    "word_hidden_states": "features", "lanczos_downsample": "timeseries", "make_delayed": "timeseries",
    "story_design": "timeseries", "fit_encoding_model": "encoding", "score_voxels": "encoding",
    "brain_scores": "encoding", "noise_ceiling": "brainstats", "block_permutation_test": "brainstats",
    "fdr_bh": "brainstats", "bootstrap_score_ci": "brainstats", "brain_alignment": "brain",
    # the real tier
    "checkpoint_identity": "hub", "integrity_flags": "hub", "models_table": "hub",
    "checkpoint_flags": "integrity", "integrity_summary": "integrity",
    # phases
    "detect_phases": "phases", "describe_phases": "phases", "alignment_table": "phases",
    # plotting
    "tier_label": "plotting",
}

__all__ = sorted([
    "Checkpoint", "TaskItem", "atomic_dir", "atomic_path", "cache_dir", "data_home", "load_checkpoint",
    "pythia_steps", "results_dir", "select_checkpoints", "stable_hash", "write_parquet", *_LAZY,
])


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'triphase' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
