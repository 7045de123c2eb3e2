"""Downloads for the real tier (need internet): hub checkpoints and LeBel et al. 2023.

Both download only what a run needs and are resumable (a second call skips
complete files and resumes partial ones). Offline, both stop with the command
to run on a machine with internet and where to put the files.

Command line (wired in :mod:`triphase.cli`)::

    triphase fetch model pythia-160m --checkpoints step0 step1000 step143000
    triphase fetch lebel2023 --subjects UTS03 [--stories wheretheressmoke ...] [--root DIR]

Examples
--------
>>> lebel2023_include_patterns(["UTS03"], ["wheretheressmoke"])
['derivative/respdict.json', 'derivative/TextGrids/wheretheressmoke.TextGrid', 'derivative/preprocessed_data/UTS03/wheretheressmoke.hf5']
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from triphase.datasets.lebel2023 import DATASET_ID, default_root
from triphase.models.checkpoints import select_checkpoints
from triphase.models.hub import is_offline, snapshot_fetch
from triphase.models.series import get_series

#: Where the DataLad mirror of OpenNeuro datasets lives.
DATALAD_URL = f"https://github.com/OpenNeuroDatasets/{DATASET_ID}.git"


def fetch_model(series, checkpoints="all", cache_dir=None, progress: bool = True) -> dict:
    """Download the chosen checkpoints of a hub series into the Hugging Face cache.

    Parameters
    ----------
    series : str or dict
        A preset name (``triphase models``) or an inline series spec.
    checkpoints : "all", int, list of str, or list of one str
        As in :func:`triphase.models.checkpoints.select_checkpoints`. From the command
        line ``--checkpoints 20`` (one integer-like string) means 20 log-spaced.
    cache_dir : str, optional
        Hub cache folder (default: ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``).
    progress : bool

    Returns
    -------
    dict revision -> snapshot folder
    """

    ser = get_series(series)
    if ser.tier != "real":
        raise ValueError(f"series {ser.name!r} is trained here (embedded tier): nothing to download; "
                         "run `triphase train` instead")
    chosen = select_checkpoints(ser.checkpoints, _parse_checkpoints(checkpoints))
    repo = chosen[0].source
    return snapshot_fetch(repo, [c.revision for c in chosen], cache_dir=cache_dir, progress=progress)


def _parse_checkpoints(spec):
    """Command-line values: ``None``/``[]`` -> all, ``["20"]`` -> 20, names pass through."""
    if spec is None or spec == []:
        return "all"
    if isinstance(spec, (list, tuple)) and len(spec) == 1:
        spec = spec[0]
    if isinstance(spec, str) and spec.isdigit():
        return int(spec)
    return list(spec) if isinstance(spec, tuple) else spec


def lebel2023_include_patterns(subjects: Sequence[str], stories: Sequence[str] | None = None) -> list[str]:
    """The ds003020 paths (globs) a run needs: respdict, TextGrids, responses of the subjects."""
    if not subjects:
        raise ValueError("give at least one subject (UTS01 ... UTS08)")
    bad = [s for s in subjects if not (len(s) == 5 and s.startswith("UTS") and s[3:].isdigit())]
    if bad:
        raise ValueError(f"subjects {bad} are not ds003020 subject ids (UTS01 ... UTS08)")
    patterns = ["derivative/respdict.json"]
    if stories:
        patterns += [f"derivative/TextGrids/{story}.TextGrid" for story in stories]
        patterns += [f"derivative/preprocessed_data/{subj}/{story}.hf5" for subj in subjects for story in stories]
    else:
        patterns += ["derivative/TextGrids/*"]
        patterns += [f"derivative/preprocessed_data/{subj}/*" for subj in subjects]
    return patterns


def _offline_message(patterns: list[str], root: Path, reason: str) -> str:
    includes = " ".join(f"--include={p}" for p in patterns)
    return (
        f"could not download LeBel et al. 2023 ({reason}). On a machine with internet run\n"
        f"    pip install openneuro-py\n"
        f"    openneuro-py download --dataset={DATASET_ID} --target-dir={DATASET_ID} {includes}\n"
        f"(or: datalad clone {DATALAD_URL} && cd {DATASET_ID} && datalad get {' '.join(patterns)})\n"
        f"then copy the folder so that {root / 'derivative'} holds respdict.json, TextGrids/ and "
        f"preprocessed_data/ (or pass --root / dataset_options.root pointing at it)."
    )


def fetch_lebel2023(subjects: Sequence[str] = ("UTS03",), stories: Sequence[str] | None = None, root=None,
                    tool: str = "auto") -> Path:
    """Download the parts of ds003020 a run needs (resumable).

    Parameters
    ----------
    subjects : sequence of str
        ``UTS01`` ... ``UTS08``.
    stories : sequence of str, optional
        Only these stories (default: all stories of the subjects).
    root : str or Path, optional
        Target folder (default ``<data home>/datasets/ds003020``).
    tool : ``"auto"``, ``"openneuro"`` or ``"datalad"``
        ``auto``: openneuro-py when installed, else DataLad when on the PATH.

    Returns
    -------
    Path
        The dataset root (pass it as ``dataset_options: {root: ...}``).
    """

    subjects = list(subjects or ["UTS03"])
    stories = list(stories) if stories else None
    root = Path(root).expanduser() if root else default_root()
    patterns = lebel2023_include_patterns(subjects, stories)
    if is_offline():
        raise RuntimeError(_offline_message(patterns, root, "HF_HUB_OFFLINE is set: this session is offline"))
    if tool == "auto":
        if importlib.util.find_spec("openneuro") is not None:
            tool = "openneuro"
        elif shutil.which("datalad"):
            tool = "datalad"
        else:
            raise RuntimeError("neither openneuro-py nor DataLad is installed: `pip install openneuro-py` "
                               "(or install DataLad), then run the fetch again.\n"
                               + _offline_message(patterns, root, "no download tool"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if tool == "openneuro":
            try:  # optional: openneuro-py is needed only to download LeBel 2023
                import openneuro
            except ImportError:
                raise RuntimeError("openneuro-py is not installed: `pip install openneuro-py`") from None
            # openneuro-py skips complete files and resumes partial ones, so re-running resumes.
            openneuro.download(dataset=DATASET_ID, target_dir=str(root), include=patterns)
        elif tool == "datalad":
            if not (root / ".datalad").exists():
                if any(root.iterdir()):
                    raise RuntimeError(f"{root} is not empty and not a DataLad dataset; choose another --root")
                subprocess.run(["datalad", "clone", DATALAD_URL, str(root)], check=True)
            # datalad get takes paths, not globs: 'folder/*' becomes the folder.
            paths = [p[:-2] if p.endswith("/*") else p for p in patterns]
            subprocess.run(["datalad", "get", *paths], cwd=root, check=True)
        else:
            raise ValueError(f"tool={tool!r}; allowed: auto, openneuro, datalad")
    except (RuntimeError, ValueError):
        raise
    except Exception as exc:  # noqa: BLE001 - network failures come in many types; the advice is the same
        raise RuntimeError(_offline_message(patterns, root, f"{type(exc).__name__}: {exc}")) from exc
    return root
