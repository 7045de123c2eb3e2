"""Brain datasets behind one interface (:class:`Dataset`), looked up by name."""
from triphase.datasets._base import Dataset, VoxelSpace, WordTimings
from triphase.datasets._registry import get_dataset, list_datasets

__all__ = ["Dataset", "VoxelSpace", "WordTimings", "get_dataset", "list_datasets"]
