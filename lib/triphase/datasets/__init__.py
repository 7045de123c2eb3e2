"""Brain datasets behind one interface (:class:`Dataset`), looked up by name."""
from ._base import Dataset, VoxelSpace, WordTimings
from ._registry import get_dataset, list_datasets

__all__ = ["Dataset", "VoxelSpace", "WordTimings", "get_dataset", "list_datasets"]
