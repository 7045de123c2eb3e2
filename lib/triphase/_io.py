"""Atomic writes: a file or folder appears complete or not at all.

Everything expensive is written to a temporary name beside its destination and
renamed into place, so an interrupted run leaves no half-written output and a
re-run simply finishes the work.

Concurrent writers and shared data homes
----------------------------------------
Caches are keyed by everything that determines them, so two processes that
finish the same key hold the same result. :func:`atomic_path` renames a file
with ``os.replace`` (atomic: the last writer wins, both succeed);
:func:`atomic_dir` takes a per-key file lock (:func:`key_lock`) around the
final rename and keeps a result another writer put there first unless asked
to replace it. Temporary files and folders get the mode the user's umask gives
ordinary files (``0o666 & ~umask``) and folders (``0o777 & ~umask``), so a
group-writable data home (umask ``002``) stays usable by the whole group.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; key_lock then serialises nothing (documented there)
    fcntl = None


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status`` (``Umask:``). Elsewhere it is read
    by setting and restoring it (``os.umask``), which is not thread-safe: a file
    another thread creates in between gets the temporary mask.

    Examples
    --------
    >>> old = os.umask(0o027)
    >>> oct(current_umask())
    '0o27'
    >>> _ = os.umask(old)
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def key_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the cache key ``path`` (``fcntl.flock`` on ``.<name>.lock`` beside it).

    Processes and threads that lock the same key run the block one at a time.
    The lock file is removed on release; a waiter that acquired a lock on a
    removed file notices and locks the new one, so removal is safe. Locks are
    advisory (only writers that call this wait), not re-entrant (locking the
    same key again inside the block waits forever), and on network file
    systems as reliable as their ``flock``; without ``fcntl`` (Windows) no
    lock is taken.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> key = pathlib.Path(tempfile.mkdtemp()) / "result"
    >>> with key_lock(key) as lock:
    ...     lock.name
    '.result.lock'
    >>> lock.exists()
    False
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    if fcntl is None:
        yield lock
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # mode 0o666 & ~umask: the group can lock it too
        except PermissionError:  # a killed writer of another user left it read-only to us: flock needs no write
            fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the holder before us removed this file: lock the one that is there now
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still held: waiters on this file retry on a fresh one
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path that is renamed to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    Two writers of the same file both succeed (``os.replace`` is atomic; the
    last one wins). The temporary file has mode ``0o666 & ~umask``, as a file
    created with ``open`` would.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0o600
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` when the block succeeds.

    The final step runs under :func:`key_lock`. When ``path`` already exists
    (another writer of the same cache key finished first) it is kept and the
    temporary folder discarded: keys are content-addressed, so both hold the
    same result, and both writers return normally. ``replace=True`` swaps the
    new folder in instead (for a caller that overwrites on purpose); readers
    may briefly find ``path`` absent during the swap. On an exception the
    temporary folder is removed and ``path`` is untouched. The folder has mode
    ``0o777 & ~umask``.

    Parameters
    ----------
    path : str or PathLike
        The destination folder (a cache key).
    replace : bool
        Replace an existing ``path`` (default: keep it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> key = pathlib.Path(tempfile.mkdtemp()) / "result"
    >>> with atomic_dir(key) as tmp:
    ...     _ = (tmp / "a.txt").write_text("first")
    >>> with atomic_dir(key) as tmp:  # a second finisher of the same key: the first result stays
    ...     _ = (tmp / "a.txt").write_text("second")
    >>> (key / "a.txt").read_text()
    'first'
    >>> with atomic_dir(key, replace=True) as tmp:
    ...     _ = (tmp / "a.txt").write_text("third")
    >>> (key / "a.txt").read_text(), sorted(p.name for p in key.parent.iterdir())
    ('third', ['result'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0o700
        yield tmp
        with key_lock(path):
            exists = path.exists() or path.is_symlink()
            if exists and replace:
                aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
                os.replace(path, aside)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(aside, path)
                    raise
                _remove(aside)
            elif not exists:
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    # a writer that does not take the lock (an older version) finished first: keep its result
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or replace:
                        raise
            # else: a concurrent writer of the same key finished first; its complete result is kept
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame to Parquet atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (sorted keys, indented) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    return path


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short SHA-256 of a JSON-serialisable object, independent of key order.

    Used to key caches by everything that determines a result.

    Examples
    --------
    >>> stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    True
    """
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
