"""triphase: LLM checkpoints vs the human brain, internal states and tasks.

A thin helper library behind the Triple Phase book (Nakagi et al., 2025,
arXiv 2502.20779). The public API is re-exported here; implementation modules
are private or named by domain.
"""
from ._home import cache_dir, data_home, results_dir
from ._io import atomic_dir, atomic_path, stable_hash, write_parquet
from ._taskitem import TaskItem

__version__ = "0.1.0"

__all__ = [
    "TaskItem",
    "atomic_dir",
    "atomic_path",
    "cache_dir",
    "data_home",
    "results_dir",
    "stable_hash",
    "write_parquet",
]
