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

from triphase._home import cache_dir, data_home, results_dir
from triphase._io import atomic_dir, atomic_path, stable_hash, write_parquet
from triphase._taskitem import TaskItem
from triphase.models.checkpoints import Checkpoint, pythia_steps, select_checkpoints

if "IPython" in sys.modules:
    # In a Jupyter kernel, import tqdm.auto now with its "IProgress not found" warning silenced, before
    # transformers or huggingface_hub import it and print the warning into the notebook.
    from triphase import _progress  # noqa: F401

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use: most of them pull in torch)
_LAZY = {
    # models: checkpoint series, loading, integrity, the organism, word features
    "load_checkpoint": "models.loading", "release": "models.loading",
    "CheckpointSeries": "models.series", "get_series": "models.series", "list_series": "models.series",
    "models_table": "models.series",
    "OrganismConfig": "models.organism", "train_organism": "models.organism", "training_log": "models.organism",
    "checkpoint_identity": "models.integrity", "integrity_flags": "models.integrity",
    "checkpoint_flags": "models.integrity", "integrity_summary": "models.integrity", "iter_loaded": "models.integrity",
    "word_hidden_states": "models.features", "document_start_ids": "models.features",
    # datasets
    "get_dataset": "datasets", "list_datasets": "datasets", "Dataset": "datasets",
    # perspective 1: brain alignment
    "lanczos_downsample": "brain.timeseries", "make_delayed": "brain.timeseries", "story_design": "brain.timeseries",
    "fit_encoding_model": "brain.encoding", "score_voxels": "brain.encoding", "brain_scores": "brain.encoding",
    "noise_ceiling": "brain.statistics", "block_permutation_test": "brain.statistics", "fdr_bh": "brain.statistics",
    "bootstrap_score_ci": "brain.statistics", "circular_shift_test": "brain.statistics",
    "split_half_ceiling": "brain.statistics", "choose_block_length": "brain.statistics",
    "permutation_false_positive_rate": "brain.statistics", "brain_alignment": "brain.sweep",
    "baseline_design": "brain.baseline", "unique_variance": "brain.baseline",
    # perspective 2: internal states
    "internal_states": "internal.sweep", "linear_cka": "internal.measures", "probe_selectivity": "internal.measures",
    "cka_null_table": "internal.measures", "internal_change_points": "internal.change_points",
    # perspective 3: downstream tasks
    "downstream_tasks": "tasks.sweep",
    # phases
    "detect_phases": "phases.inference", "describe_phases": "phases.text", "alignment_table": "phases.table",
    "learning_report": "phases.learning", "learning_sentences": "phases.learning",
    # runs
    "load_run_config": "runs.config", "run": "runs.runner", "execute_notebook": "runs.runner",
    "build_book": "runs.runner",
    # plotting
    "tier_label": "plotting",
}

__all__ = sorted([
    "Checkpoint", "TaskItem", "atomic_dir", "atomic_path", "cache_dir", "data_home",
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
