"""Hugging Face hub checkpoint series: revisions, the local cache, identity and integrity.

The real tier loads public checkpoints by revision
(``from_pretrained(repo, revision="step1000")``). This module holds what that
needs besides the call itself:

* **revision lists** of the presets in ``presets/series.yaml``: explicit lists,
  *patterns* generated here (Pythia's ``step0, step1, 2, 4, ..., 512,
  step1000 ... step143000``; Amber's ``ckpt_000 ... ckpt_359``), or lists that
  can only be read online with ``huggingface_hub.list_repo_refs`` (OLMo,
  LLM-jp), cached in the data home once read (:func:`expand_revisions`);
* the **local cache**, laid out by the hub as
  ``<HF_HOME>/hub/models--<org>--<name>/refs/<revision>`` (a commit hash) and
  ``snapshots/<commit>/`` (the files). ``HF_HOME``, ``HF_HUB_CACHE`` and
  ``HF_HUB_OFFLINE`` are read when a function is called, not at import
  (:func:`hub_cache_dir`, :func:`is_offline`). Offline and missing: a
  :class:`CheckpointMissingError` names the repo, the revision and the command
  that fetches it (:func:`ensure_available`);
* **identity and integrity**: public checkpoint branches are known to be
  missing or to serve the wrong weights (Pythia's tracker reports step0 equal
  to step1 and branches serving final-era weights). Every loaded checkpoint
  gets its resolved commit and a cheap weight fingerprint
  (:func:`checkpoint_identity`); :func:`integrity_flags` flags consecutive
  identical fingerprints and any checkpoint identical to the final one;
  :func:`iter_loaded` loads a sweep one checkpoint at a time and reports a
  missing branch by name instead of stopping.

Examples
--------
>>> revs = expand_revisions("demo", {"template": "step{step}", "steps": [0, 1, 2], "range": [1000, 3000, 1000]})
>>> [(r.name, r.step) for r in revs]
[('step0', 0), ('step1', 1), ('step2', 2), ('step1000', 1000), ('step2000', 2000), ('step3000', 3000)]
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple, Sequence

from huggingface_hub import HfApi, list_repo_refs, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RevisionNotFoundError

from triphase._home import cache_dir
from triphase._io import write_json
from triphase._progress import tqdm
from triphase.models.checkpoints import Checkpoint

#: Environment values that switch a flag on (as huggingface_hub reads them).
_TRUE_VALUES = {"1", "on", "yes", "true", "y"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: Weight files a checkpoint folder must hold (one of).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
#: Single weights files and the indexes of sharded ones (whose ``weight_map`` names the shards).
SINGLE_WEIGHT_PATTERNS, INDEX_PATTERNS = WEIGHT_PATTERNS[:2], WEIGHT_PATTERNS[2:]
#: A shard's name as transformers writes it (``model-00001-of-00004.safetensors``): never a single weights file.
_SHARD_NAME = re.compile(r"-\d+-of-\d+\.(safetensors|bin)$")
#: Files fetched for a checkpoint: configuration, tokenizer and safetensors weights.
FETCH_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*")
#: Fallback when a revision has no safetensors (older branches hold PyTorch pickles only).
FETCH_PATTERNS_BIN = ("*.bin",)
#: Marker a snapshot gets when its weights were deleted on purpose (``delete_weights``), its results cached.
WEIGHTS_DELETED = ".triphase-weights-deleted.json"
#: Default regex that reads a step number from a revision name.
DEFAULT_STEP_REGEX = r"step[_-]?(?P<step>\d+)|(?P<trailing>\d+)$"


# --------------------------------------------------------------------------- environment
def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read at call time."""
    return _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """The hub cache folder: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``.

    Examples
    --------
    >>> hub_cache_dir().name == "hub" or "HF_HUB_CACHE" in os.environ
    True
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "huggingface" / "hub"


def repo_folder(repo_id: str, cache_dir=None) -> Path:
    """``<cache>/models--<org>--<name>`` for a model repo id ``org/name``."""
    if not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo id {repo_id!r} is not of the form 'org/name'")
    return Path(cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def is_hub_checkpoint(checkpoint) -> bool:
    """True for a hub repo + revision, False for a local folder (e.g. the organism)."""
    return bool(checkpoint.revision) and not Path(str(checkpoint.source)).exists()


def hub_load_kwargs(checkpoint) -> dict:
    """Keyword arguments for ``from_pretrained`` (model *and* tokenizer) honouring the environment now.

    ``revision``, plus for hub checkpoints ``cache_dir`` (from ``HF_HOME``/``HF_HUB_CACHE``
    read at call time) and ``local_files_only`` when ``HF_HUB_OFFLINE`` is set.
    Local folders get ``{}`` (or only the revision if one is set).
    """
    extra = {"revision": checkpoint.revision} if checkpoint.revision else {}
    if is_hub_checkpoint(checkpoint):
        extra["cache_dir"] = str(hub_cache_dir())
        if is_offline():
            extra["local_files_only"] = True
    return extra


# --------------------------------------------------------------------------- the local cache
def cached_commit(repo_id: str, revision: str, cache_dir=None) -> str | None:
    """Commit hash a revision resolves to in the local cache (``refs/<revision>``), or None."""
    folder = repo_folder(repo_id, cache_dir)
    if _COMMIT.match(revision or ""):
        return revision if (folder / "snapshots" / revision).is_dir() else None
    ref = folder / "refs" / (revision or "main")
    if not ref.is_file():
        return None
    commit = ref.read_text().strip()
    if not _COMMIT.match(commit):
        raise ValueError(f"{ref} holds {commit!r}, not a 40-character commit hash: the hub cache is damaged")
    return commit


def missing_weight_files(folder) -> list[str] | None:
    """Weight files a checkpoint folder lacks: ``[]`` when one complete set of weights is there.

    A complete set is a single weights file (``*.safetensors``, ``*.bin``) or
    an index (``*.safetensors.index.json``, ``*.bin.index.json``) together
    with every shard its ``weight_map`` names. A file that is a dangling
    symlink (a hub snapshot link whose blob is gone) counts as missing, and
    shards (named in an index, or named ``*-0000i-of-0000n.*``) are not single
    weights files.

    Returns
    -------
    list of str or None
        ``[]`` when complete; else the shards (or the unreadable index) the
        most complete index lacks; None when the folder holds no weights at all.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> index = {"weight_map": {"a": "model-1-of-2.safetensors", "b": "model-2-of-2.safetensors"}}
    >>> _ = (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    >>> _ = (folder / "model-1-of-2.safetensors").write_bytes(b"")
    >>> missing_weight_files(folder)
    ['model-2-of-2.safetensors']
    """
    folder = Path(folder)
    shards: set[str] = set()
    gaps: list[list[str]] = []
    for pattern in INDEX_PATTERNS:
        for index in sorted(folder.glob(pattern)):
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                gaps.append([index.name])  # dangling, unreadable or not an index: fetch it again
                continue
            shards.update(names)
            missing = [name for name in names if not (folder / name).exists()]
            if not missing:
                return []
            gaps.append(missing)
    for pattern in SINGLE_WEIGHT_PATTERNS:
        for path in folder.glob(pattern):
            is_shard = path.name in shards or _SHARD_NAME.search(path.name)
            if not is_shard and path.exists():  # exists() follows a blob link: a dangling one is missing
                return []
    return min(gaps, key=len) if gaps else None


def cached_snapshot(repo_id: str, revision: str, cache_dir=None) -> Path | None:
    """The snapshot folder of a cached revision holding a config and a complete set of weights, or None.

    A sharded checkpoint counts only with every shard its index names
    (:func:`missing_weight_files`); a snapshot link whose blob is gone is missing.
    """
    commit = cached_commit(repo_id, revision, cache_dir)
    if commit is None:
        return None
    folder = repo_folder(repo_id, cache_dir) / "snapshots" / commit
    if not (folder / "config.json").exists():
        return None
    if missing_weight_files(folder) != []:
        return None
    return folder


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a snapshot folder: single files, indexes and the shards they name."""
    files = {path for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern)}
    for index in [path for pattern in INDEX_PATTERNS for path in folder.glob(pattern)]:
        try:
            files.update(folder / name for name in json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(path for path in files if path.exists() or path.is_symlink())


def delete_checkpoint_weights(repo_id: str, revision: str, cache_dir=None) -> int:
    """Delete a cached revision's weight files from the hub cache; return the bytes freed.

    The snapshot keeps its configuration and tokenizer (a results cache key
    reads the configuration) and its ``refs/`` entry (the commit stays known),
    and gets a marker :data:`WEIGHTS_DELETED` listing what went. A weight
    blob another snapshot still links to is kept. Loading the weights offline
    afterwards raises :class:`CheckpointMissingError` naming the fetch command
    (:func:`ensure_weights`); online they are downloaded again.

    Examples
    --------
    >>> import tempfile
    >>> delete_checkpoint_weights("org/absent", "step1", cache_dir=tempfile.mkdtemp())
    0
    """
    commit = cached_commit(repo_id, revision, cache_dir)
    if commit is None:
        return 0
    folder = repo_folder(repo_id, cache_dir) / "snapshots" / commit
    files = _weight_files(folder)
    snapshots = repo_folder(repo_id, cache_dir) / "snapshots"
    others = {path.resolve() for path in snapshots.glob("*/*") if path.is_symlink() and path.parent != folder}
    freed = 0
    for path in files:
        target = path.resolve() if path.is_symlink() else None
        if target is not None and target.exists() and target not in others:
            freed += target.stat().st_size
            target.unlink()
        elif target is None and path.exists():
            freed += path.stat().st_size
        path.unlink(missing_ok=True)
    if files:
        write_json({"deleted": [path.name for path in files], "bytes": freed}, folder / WEIGHTS_DELETED)
    return freed


def weights_deleted(repo_id: str, revision: str, cache_dir=None) -> bool:
    """True when :func:`delete_checkpoint_weights` removed this revision's weights and they are still gone."""
    commit = cached_commit(repo_id, revision, cache_dir)
    if commit is None:
        return False
    folder = repo_folder(repo_id, cache_dir) / "snapshots" / commit
    return (folder / WEIGHTS_DELETED).exists() and missing_weight_files(folder) != []


class CheckpointMissingError(FileNotFoundError):
    """A hub checkpoint is not in the local cache and the hub cannot be reached (offline)."""

    def __init__(self, repo_id: str, revision: str, series: str | None = None, cache_dir=None,
                 missing_files: Sequence[str] | None = None):
        self.repo_id, self.revision, self.series = repo_id, revision, series
        self.missing_files = list(missing_files or [])
        cache = Path(cache_dir or hub_cache_dir())
        where = (f"is incomplete in the local Hugging Face cache {cache} (lacks {', '.join(self.missing_files)})"
                 if self.missing_files else f"is not in the local Hugging Face cache {cache}")
        super().__init__(
            f"checkpoint {repo_id}@{revision} {where} and "
            f"HF_HUB_OFFLINE is set. Fetch it on a machine with internet: "
            f"`{fetch_command(series or repo_id, [revision])}` (or `huggingface-cli download {repo_id} "
            f"--revision {revision}`), then copy {repo_folder(repo_id, cache).name}/ into {cache} "
            f"(or point HF_HOME at the cache that holds it)."
        )


def fetch_command(series: str, revisions: Sequence[str] | None = None) -> str:
    """The ``triphase fetch model`` command line that downloads these revisions."""
    command = f"triphase fetch model {series}"
    if revisions:
        command += " --checkpoints " + " ".join(revisions)
    return command


def ensure_available(checkpoint) -> None:
    """Raise :class:`CheckpointMissingError` when offline and a hub checkpoint is not cached (or incomplete).

    Local folders and online sessions pass (online, ``from_pretrained`` downloads).
    A checkpoint whose weights were deleted on purpose after its results were
    cached (:func:`delete_checkpoint_weights`) passes too: its configuration is
    there, and loading its weights is refused by :func:`ensure_weights`.
    """
    if not is_hub_checkpoint(checkpoint) or not is_offline():
        return
    if weights_deleted(checkpoint.source, checkpoint.revision):
        return
    if cached_snapshot(checkpoint.source, checkpoint.revision) is None:
        commit = cached_commit(checkpoint.source, checkpoint.revision)
        folder = repo_folder(checkpoint.source) / "snapshots" / commit if commit else None
        missing = missing_weight_files(folder) if folder is not None and folder.is_dir() else None
        raise CheckpointMissingError(checkpoint.source, checkpoint.revision, checkpoint.series, missing_files=missing)


def ensure_weights(checkpoint) -> None:
    """:func:`ensure_available`, and, offline, refuse a checkpoint whose weights were deleted (``delete_weights``)."""
    ensure_available(checkpoint)
    if is_hub_checkpoint(checkpoint) and is_offline() and weights_deleted(checkpoint.source, checkpoint.revision):
        commit = cached_commit(checkpoint.source, checkpoint.revision)
        folder = repo_folder(checkpoint.source) / "snapshots" / commit
        raise CheckpointMissingError(checkpoint.source, checkpoint.revision, checkpoint.series,
                                     missing_files=missing_weight_files(folder) or ["weights (deleted by delete_weights)"])


def resolve_commit(repo_id: str, revision: str, cache_dir=None, online: bool | None = None) -> str | None:
    """Commit hash of ``repo_id@revision``: from the cache's refs, else (online) from the hub API.

    Returns None when it cannot be known (offline and not cached).
    """
    commit = cached_commit(repo_id, revision, cache_dir)
    if commit is not None:
        return commit
    if online is None:
        online = not is_offline()
    if not online:
        return None

    return HfApi().model_info(repo_id, revision=revision).sha


# --------------------------------------------------------------------------- revisions
class Revision(NamedTuple):
    """One revision of a series with its optimiser step."""

    name: str
    step: int


def step_from_revision(revision: str, regex: str | None = None) -> int:
    """Optimiser step encoded in a revision name.

    ``regex`` needs a group named ``step`` (or one group); the default reads
    ``step1000``/``step-1000`` anywhere, else trailing digits (``ckpt_100``).

    Examples
    --------
    >>> step_from_revision("stage1-step1000-tokens5B"), step_from_revision("ckpt_042")
    (1000, 42)
    """
    match = re.search(regex or DEFAULT_STEP_REGEX, str(revision))
    if match is None:
        raise ValueError(f"cannot read a step number from revision {revision!r} (pattern {regex or DEFAULT_STEP_REGEX!r})")
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    value = groups.get("step") or groups.get("trailing") or (match.group(1) if match.groups() else None)
    if value is None:
        raise ValueError(f"pattern {regex!r} matched {revision!r} but captured no step number")
    return int(value)


def _template_revisions(name: str, spec: dict) -> list[Revision]:
    template = spec["template"]
    steps = [int(s) for s in spec.get("steps", [])]
    ranges = spec.get("range")
    if ranges is not None:
        if isinstance(ranges[0], (int, float)):
            ranges = [ranges]
        for item in ranges:
            if len(item) != 3:
                raise ValueError(f"series {name!r}: revisions.range must be [start, stop, every] (stop included), got {item!r}")
            start, stop, every = (int(v) for v in item)
            if every < 1 or stop < start:
                raise ValueError(f"series {name!r}: revisions.range {item!r} is empty")
            steps += list(range(start, stop + 1, every))
    if not steps:
        raise ValueError(f"series {name!r}: revisions.template needs 'steps' and/or 'range'")
    try:
        return [Revision(template.format(step=s), s) for s in sorted(set(steps))]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"series {name!r}: revisions.template {template!r} must use only {{step}}: {exc}") from None


def refs_cache_path(repo_id: str) -> Path:
    """Where the revision list read online for a repo is kept (``<data home>/hub_refs/``)."""

    return cache_dir("hub_refs") / (repo_id.replace("/", "--") + ".json")


def list_branches(repo_id: str, refresh: bool = False) -> list[str]:
    """Branch names of a hub repo: read online with ``list_repo_refs``, cached in the data home.

    Offline, the cached list is used; without one the error says how to get it.
    """
    path = refs_cache_path(repo_id)
    if path.exists() and not refresh:
        return json.loads(path.read_text())["branches"]
    if is_offline():
        raise FileNotFoundError(
            f"the revision list of {repo_id} is not known offline (no {path}). Run "
            f"`python -c \"import triphase.models.hub as h; h.list_branches('{repo_id}')\"` once with internet "
            f"(it is cached to {path}), or give the revisions explicitly in the run YAML "
            f"(series: [{{name: ..., repo: {repo_id}, revisions: [...], tokens_per_step: ...}}])."
        )


    refs = list_repo_refs(repo_id)
    branches = sorted(b.name for b in refs.branches)
    write_json({"repo": repo_id, "branches": branches}, path)
    return branches


def expand_revisions(name: str, spec) -> list[Revision]:
    """The ordered revisions of a series from its ``revisions`` field.

    ``spec`` is either

    * a list of names (steps read with :func:`step_from_revision`, optional
      ``step_regex``), or
    * a mapping ``{template: "step{step}", steps: [...], range: [start, stop, every]}``
      (generated; ``stop`` included), or
    * a mapping ``{discover: list_repo_refs, match: REGEX, repo: ...}``: the
      repo's branches matching ``REGEX`` (group ``step``), read online
      (:func:`list_branches`) and cached.

    Returns
    -------
    list of Revision, sorted by step (names unique).
    """
    if isinstance(spec, dict) and "revisions" in spec and "loader" in spec:
        spec = spec["revisions"]
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"series {name!r}: field 'revisions' is an empty list")
        out = [Revision(str(r), step_from_revision(str(r))) for r in spec]
    elif isinstance(spec, dict) and "template" in spec:
        out = _template_revisions(name, spec)
    elif isinstance(spec, dict) and spec.get("discover") == "list_repo_refs":
        repo = spec.get("repo")
        if not repo:
            raise ValueError(f"series {name!r}: revisions.discover needs the repo")
        pattern = re.compile(spec.get("match", DEFAULT_STEP_REGEX))
        out = []
        for branch in list_branches(repo):
            if pattern.search(branch):
                out.append(Revision(branch, step_from_revision(branch, spec.get("match"))))
        if not out:
            raise ValueError(f"series {name!r}: no branch of {repo} matches {pattern.pattern!r}; "
                             "give the revisions explicitly in the run YAML")
    else:
        raise ValueError(
            f"series {name!r}: field 'revisions' must be a list of names, a pattern "
            "{template, steps, range} or {discover: list_repo_refs, match}, got " + repr(spec)
        )
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"series {name!r}: duplicate revisions {dupes}")
    return sorted(out, key=lambda r: (r.step, r.name))


def build_hub_checkpoints(name: str, spec: dict):
    """Checkpoints of a hub series spec (the body of ``series._hub_loader``)."""

    for key in ("repo", "revisions"):
        if key not in spec:
            raise ValueError(f"series {name!r}: hub series need the field {key!r}")
    if "tokens_per_step" not in spec:
        raise ValueError(f"series {name!r}: hub series need the field 'tokens_per_step' "
                         "(null when unknown: tokens_seen then counts steps)")
    revisions_spec = spec["revisions"]
    if isinstance(revisions_spec, dict) and revisions_spec.get("discover"):
        revisions_spec = {"repo": spec["repo"], **revisions_spec}
    if isinstance(revisions_spec, list) and spec.get("step_regex"):
        revisions = sorted((Revision(str(r), step_from_revision(str(r), spec["step_regex"])) for r in revisions_spec),
                           key=lambda r: r.step)
    else:
        revisions = expand_revisions(name, revisions_spec)
    tokens_per_step = spec["tokens_per_step"]
    per_step = 1 if tokens_per_step is None else int(tokens_per_step)
    if per_step < 1:
        raise ValueError(f"series {name!r}: tokens_per_step must be >= 1 or null, got {tokens_per_step!r}")
    return [Checkpoint(name, r.name, r.step, r.step * per_step, spec["repo"], r.name, "real") for r in revisions]


def _is_missing_revision_error(exc: BaseException, checkpoint) -> bool:
    if isinstance(exc, (CheckpointMissingError, RevisionNotFoundError, EntryNotFoundError, LocalEntryNotFoundError)):
        return True
    # transformers wraps hub errors in OSError whose message names the revision.
    return isinstance(exc, OSError) and bool(checkpoint.revision) and str(checkpoint.revision) in str(exc)


# --------------------------------------------------------------------------- download
def snapshot_fetch(repo_id: str, revisions: Sequence[str], cache_dir=None, max_workers: int = 8,
                   progress: bool = True) -> dict[str, Path]:
    """Download revisions of a repo into the hub cache (config, tokenizer, weights); skip cached ones.

    Safetensors are preferred; a revision without them gets its ``*.bin``
    weights. Resumable: ``snapshot_download`` skips complete files and resumes
    partial ones. A cached revision counts only when complete
    (:func:`cached_snapshot`): one with a missing shard or a dangling blob
    link is fetched again.

    Returns
    -------
    dict revision -> snapshot folder
    """
    if is_offline():
        raise RuntimeError(
            f"HF_HUB_OFFLINE is set: cannot download {repo_id} revisions {', '.join(revisions)}. Run "
            f"`{fetch_command(repo_id, list(revisions))}` on a machine with internet, then copy "
            f"{repo_folder(repo_id, cache_dir).name}/ into {Path(cache_dir or hub_cache_dir())}."
        )

    cache = str(cache_dir or hub_cache_dir())
    out = {}
    if progress:
        revisions = tqdm(list(revisions), desc=f"fetch {repo_id}", unit="revision")
    for rev in revisions:
        done = cached_snapshot(repo_id, rev, cache)
        if done is not None:
            out[rev] = done
            continue
        # not cached, or incomplete (a shard missing, a dangling blob link): snapshot_download fetches what lacks
        folder = Path(snapshot_download(repo_id, revision=rev, allow_patterns=list(FETCH_PATTERNS),
                                        cache_dir=cache, max_workers=max_workers))
        if missing_weight_files(folder) != []:
            folder = Path(snapshot_download(repo_id, revision=rev,
                                            allow_patterns=list(FETCH_PATTERNS + FETCH_PATTERNS_BIN),
                                            cache_dir=cache, max_workers=max_workers))
        missing = missing_weight_files(folder)
        if missing:
            raise FileNotFoundError(f"{repo_id}@{rev}: the download is incomplete, {folder} lacks {', '.join(missing)} "
                                    "(named in its weight index); run the fetch again")
        out[rev] = folder
    return out
