"""Progress bars: tqdm's notebook widget when ipywidgets can draw it, else the text bar.

``tqdm.auto`` inside a Jupyter kernel without ipywidgets warns ("IProgress not
found") when it is first imported, by this library or by transformers /
huggingface_hub, and falls back to the text bar. Importing it here once with
that warning silenced (``import triphase`` does, inside a kernel) keeps executed notebooks free
of it. The runner keeps only the final state of each text bar in the executed
notebooks (see :func:`triphase.runs.runner.collapse_progress_output`).
"""
from __future__ import annotations

import importlib
import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)
    # tqdm.auto warns when it is imported: import it inside the filter (an import statement here would be
    # hoisted to the top by the import sorter, out of the filter, as happened once)
    tqdm = importlib.import_module("tqdm.auto").tqdm

__all__ = ["tqdm"]
