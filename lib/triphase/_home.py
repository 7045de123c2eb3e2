"""The data home: one folder for everything generated or cached.

Checkpoints, features, brain data and results all live under the data home,
``$TRIPHASE_HOME`` when set, else ``<user cache dir>/triphase``
(``$XDG_CACHE_HOME/triphase`` or ``~/.cache/triphase``). Nothing in it is tracked
by git.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TRIPHASE_HOME"


def data_home(create: bool = True) -> Path:
    """Return the data home folder.

    Parameters
    ----------
    create : bool
        Create the folder if it does not exist.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import os, tempfile
    >>> os.environ["TRIPHASE_HOME"] = tempfile.mkdtemp()
    >>> data_home().exists()
    True
    """
    env = os.environ.get(ENV_VAR)
    if env:
        home = Path(env).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = Path(cache) / "triphase"
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


def results_dir(series: str, dataset: str, subject: str, create: bool = True) -> Path:
    """Folder of the tidy result tables of one (series, dataset, subject) run.

    ``<data home>/results/<series>/<dataset>-<subject>/`` holds ``brain.parquet``,
    ``internal.parquet``, ``tasks.parquet`` and ``phases.parquet``.
    """
    for name, value in (("series", series), ("dataset", dataset), ("subject", subject)):
        if not value or "/" in str(value) or str(value).startswith("."):
            raise ValueError(f"{name}={value!r} is not usable as a folder name in the results path")
    path = data_home(create) / "results" / series / f"{dataset}-{subject}"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str, create: bool = True) -> Path:
    """Folder for one kind of cache (``features``, ``organism``, ``datasets``, ...)."""
    path = data_home(create) / kind
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
