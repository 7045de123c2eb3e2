"""The book template: the source notebooks, ``_toc.yml``, ``_config.yml`` and the narrative pages.

A book folder holds ``_config.yml``, ``_toc.yml``, ``notebooks/`` (the
parameterised source notebooks) and ``book/`` (narrative pages and the
bibliography); ``triphase run`` executes the notebooks into
``book/executed/`` and ``triphase build`` renders ``_build/html``.

The template ships inside the package (``triphase/_template``, copied there
when a wheel is built; see ``setup.py``), so an installed ``triphase`` works
outside this repository: ``triphase init DIR`` writes a ready book folder. In a
source checkout (an editable install) the repository itself is the template.

Examples
--------
>>> import tempfile
>>> folder = init_book(Path(tempfile.mkdtemp()) / "my-book")
>>> sorted(p.name for p in folder.iterdir())
['_config.yml', '_toc.yml', 'book', 'notebooks', 'run.yaml']
>>> book_root(folder) == folder
True
"""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

import papermill

#: Files and folders of a book folder, relative to its root.
TEMPLATE_FILES = ("_config.yml", "_toc.yml")
TEMPLATE_DIRS = ("notebooks", "book")
#: What never belongs to the template: executed copies, builds, editor litter.
TEMPLATE_IGNORE = ("executed", "_build", ".ipynb_checkpoints", "__pycache__")
#: Where a wheel carries the template, inside the package.
PACKAGED_TEMPLATE = "_template"
#: The run configuration ``init_book`` writes for the user to edit (a copy of the default preset).
RUN_FILE = "run.yaml"
BOOK_ROOT_ENV = "TRIPHASE_BOOK_ROOT"


def is_book_folder(folder: Path) -> bool:
    """True when ``folder`` holds ``_toc.yml`` and ``notebooks/``."""
    return (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir()


def _checkout_root() -> Path:
    # lib/triphase/runs/template.py -> the repository root of a source checkout
    return Path(__file__).resolve().parents[3]


def template_root() -> Path:
    """The template this installation carries: the packaged copy (wheel) or the source checkout."""
    packaged = Path(str(resources.files("triphase").joinpath(PACKAGED_TEMPLATE)))
    for candidate in (packaged, _checkout_root()):
        if is_book_folder(candidate):
            return candidate
    raise FileNotFoundError(f"this triphase installation carries no book template (looked in {packaged} and "
                            f"{_checkout_root()}); reinstall the package from a wheel or a source checkout")


def book_root(start: Path | str | None = None) -> Path:
    """The book folder to work in.

    ``$TRIPHASE_BOOK_ROOT`` if set; else ``start`` (default: the current
    folder) or its nearest parent that is a book folder; else the source
    checkout this package was installed from (editable installs).

    Raises
    ------
    FileNotFoundError
        When none is found (the message says how to make one).
    """
    env = os.environ.get(BOOK_ROOT_ENV)
    if env:
        if not is_book_folder(Path(env)):
            raise FileNotFoundError(f"{BOOK_ROOT_ENV}={env} is not a book folder (no _toc.yml and notebooks/)")
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents, _checkout_root()):
        if is_book_folder(candidate):
            return candidate
    raise FileNotFoundError(f"no book folder (with _toc.yml and notebooks/) at or above {here}; create one with "
                            f"`triphase init DIR` and run from there, or set {BOOK_ROOT_ENV}")


def init_book(folder: Path | str, force: bool = False) -> Path:
    """Write a ready book folder: notebooks, ``_config.yml``, ``_toc.yml``, narrative pages, ``run.yaml``.

    Parameters
    ----------
    folder : path
        Created if missing; it must not already hold a book unless ``force``.
    force : bool
        Overwrite the template files of an existing book folder (executed
        notebooks and builds are left alone).

    Returns
    -------
    Path of the book folder.
    """
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if is_book_folder(folder) and not force:
        raise FileExistsError(f"{folder} already holds a book (_toc.yml, notebooks/); use --force to overwrite "
                              "its template files")
    source = template_root()
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        shutil.copy2(source / name, folder / name)
    for name in TEMPLATE_DIRS:
        shutil.copytree(source / name, folder / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*TEMPLATE_IGNORE))
    run_file = folder / RUN_FILE
    if force or not run_file.exists():
        preset = resources.files("triphase").joinpath("presets", "run_default.yaml").read_text()
        run_file.write_text("# A run of this book: edit, then `triphase run run.yaml` in this folder.\n" + preset)
    return folder


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
