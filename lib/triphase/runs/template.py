"""The book template: where the source notebooks, ``_toc.yml`` and ``_config.yml`` live, and the parameters a notebook declares.
"""
from __future__ import annotations

import os
from pathlib import Path

import papermill


def book_root() -> Path:
    """The repository root holding ``_toc.yml`` (``$TRIPHASE_BOOK_ROOT``, the
    checkout this package was installed from, or the nearest parent of cwd)."""
    env = os.environ.get("TRIPHASE_BOOK_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3])
    cwd = Path.cwd().resolve()
    candidates.extend([cwd, *cwd.parents])
    for candidate in candidates:
        if (candidate / "_toc.yml").exists() and (candidate / "notebooks").is_dir():
            return candidate
    raise FileNotFoundError("cannot find the book root (a folder with _toc.yml and notebooks/); "
                            "run from the repository or set TRIPHASE_BOOK_ROOT")


def source_notebooks(root: Path | None = None) -> list[str]:
    """Stems of the source notebooks, in order (``00_organism``, ...)."""
    root = root or book_root()
    return sorted(p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(name: str, root: Path | None = None) -> dict:
    """The parameters a source notebook declares: ``{name: default as written}``."""

    path = (root or book_root()) / "notebooks" / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(path))
    if not declared:
        raise ValueError(f"{path}: no cell tagged 'parameters'")
    return {k: v.get("default") for k, v in declared.items()}
