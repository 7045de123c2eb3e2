"""Progress bars: tqdm's notebook widget when ipywidgets can draw it, else the text bar.

``tqdm.auto`` inside a Jupyter kernel without ipywidgets warns ("IProgress not
found") when it is first imported, by this library or by transformers /
huggingface_hub, and falls back to the text bar. Importing it here once with
that warning silenced (``import triphase`` does, inside a kernel) keeps executed notebooks free
of it. The runner keeps only the final state of each text bar in the executed
notebooks (see :func:`triphase.runs.runner.collapse_progress_output`).
"""
from __future__ import annotations

import warnings

from tqdm import TqdmWarning
from tqdm.auto import tqdm

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)

__all__ = ["tqdm"]
