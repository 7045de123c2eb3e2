import os

import pandas as pd
import pytest

from triphase._home import data_home, results_dir
from triphase._io import atomic_dir, atomic_path, stable_hash, write_parquet


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
