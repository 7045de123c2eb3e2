import multiprocessing
import os
import stat
import time
from pathlib import Path

import pandas as pd
import pytest

from triphase._home import data_home, results_dir
from triphase._io import atomic_dir, atomic_path, current_umask, key_lock, stable_hash, write_parquet


def test_data_home_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPHASE_HOME", str(tmp_path / "h"))
    assert data_home() == (tmp_path / "h").resolve()
    assert results_dir("organism", "simulated", "sim01") == (tmp_path / "h" / "results" / "organism" / "simulated-sim01").resolve()
    with pytest.raises(ValueError, match="series"):
        results_dir("a/b", "simulated", "sim01")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise KeyboardInterrupt
    assert (target / "a").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_write_parquet_roundtrip_and_hash(tmp_path):
    df = pd.DataFrame({"x": [1, 2]})
    pd.testing.assert_frame_equal(pd.read_parquet(write_parquet(df, tmp_path / "t.parquet")), df)
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


# --------------------------------------------------------------------------- concurrent writers, umask
ROUNDS = 25
N_FILES = 40


def _race_atomic_dir(root, writer, barrier, replace, queue):
    """Finish atomic_dir on keys key0..key{ROUNDS-1}, in step with the other writer (barrier)."""
    errors = []
    for i in range(ROUNDS):
        try:
            with atomic_dir(Path(root) / f"key{i}", replace=replace) as tmp:
                for j in range(N_FILES):
                    (tmp / f"f{j}.txt").write_text(f"{writer}:{j}")
                barrier.wait(timeout=60)  # both hold a complete temporary copy: finish together
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"round {i}: {exc!r}")
    queue.put((writer, errors))


def _race_atomic_path(root, writer, barrier, queue):
    errors = []
    payload = str(writer) * 200_000
    for i in range(ROUNDS):
        try:
            with atomic_path(Path(root) / f"key{i}.txt") as tmp:
                tmp.write_text(payload)
                barrier.wait(timeout=60)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"round {i}: {exc!r}")
    queue.put((writer, errors))


def _race(target, folder: str, **options) -> dict:
    """Run ``target(folder, writer, barrier, [options...], queue)`` in two spawned processes released together;
    return {writer: errors}."""
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    procs = [context.Process(target=target, args=(folder, w, barrier, *options.values(), queue)) for w in (0, 1)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return results


@pytest.mark.parametrize("replace", [False, True])
def test_two_writers_of_one_atomic_dir_key_both_succeed(tmp_path, replace):
    assert _race(_race_atomic_dir, str(tmp_path), replace=replace) == {0: [], 1: []}
    # one complete folder per key, every file from the same writer; no temporary folder or lock file left
    assert sorted(os.listdir(tmp_path)) == sorted(f"key{i}" for i in range(ROUNDS))
    for i in range(ROUNDS):
        files = sorted(os.listdir(tmp_path / f"key{i}"))
        assert files == sorted(f"f{j}.txt" for j in range(N_FILES))
        writers = {(tmp_path / f"key{i}" / name).read_text().split(":")[0] for name in files}
        assert len(writers) == 1, (i, writers)


def test_two_writers_of_one_atomic_path_both_succeed(tmp_path):
    assert _race(_race_atomic_path, str(tmp_path)) == {0: [], 1: []}
    assert sorted(os.listdir(tmp_path)) == sorted(f"key{i}.txt" for i in range(ROUNDS))
    for i in range(ROUNDS):
        text = (tmp_path / f"key{i}.txt").read_text()
        assert text in ("0" * 200_000, "1" * 200_000)


def _hold_lock(key, log, seconds, ready):
    with key_lock(key):
        ready.set()
        with open(log, "a") as handle:
            handle.write("in\n")
        time.sleep(seconds)
        with open(log, "a") as handle:
            handle.write("out\n")


def test_key_lock_excludes_another_process(tmp_path):
    context = multiprocessing.get_context("spawn")
    key, log = tmp_path / "key", tmp_path / "log.txt"
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(key), str(log), 1.0, ready))
    holder.start()
    assert ready.wait(timeout=60)
    with key_lock(key):  # waits for the holder to leave
        lines = log.read_text().split()
    holder.join(timeout=60)
    assert lines == ["in", "out"]
    assert sorted(os.listdir(tmp_path)) == ["log.txt"]


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o002, 0o664, 0o775), (0o077, 0o600, 0o700),
                                                      (0o022, 0o644, 0o755)])
def test_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    path = write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "t.parquet")
    assert stat.S_IMODE(os.stat(path).st_mode) == file_mode
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "a").write_text("1")
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == dir_mode
    assert stat.S_IMODE(os.stat(tmp_path / "folder" / "a").st_mode) == file_mode
    with atomic_dir(tmp_path / "folder", replace=True) as tmp:
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == dir_mode
