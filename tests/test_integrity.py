"""Integrity columns and summaries (pure tables; the sweeps themselves are tested in test_hub)."""
from __future__ import annotations

import pandas as pd
import pytest

from triphase.models.integrity import attach_identity, integrity_summary, missing_reason


def _flags(rows):
    return pd.DataFrame(rows, columns=["checkpoint", "step", "fingerprint", "commit", "missing", "flag"])


def test_attach_identity_joins_per_checkpoint_and_replaces_stale_columns():
    table = pd.DataFrame({"checkpoint": ["a", "a", "b"], "value": [1.0, 2.0, 3.0], "fingerprint": ["old"] * 3})
    flags = _flags([("a", 0, "fa", "c" * 40, False, ""), ("b", 1, "fa", None, False, "identical weights to the previous checkpoint a"),
                    ("z", 2, None, None, True, "missing: gone")])
    out = attach_identity(table, flags)
    assert out["fingerprint"].tolist() == ["fa", "fa", "fa"]
    assert out["commit"].tolist()[:2] == ["c" * 40] * 2
    assert out["integrity_flag"].tolist() == ["", "", "identical weights to the previous checkpoint a"]
    assert out["value"].tolist() == [1.0, 2.0, 3.0]  # rows untouched, no row for the missing checkpoint


def test_attach_identity_refuses_results_without_identity():
    table = pd.DataFrame({"checkpoint": ["a", "q"], "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"no identity for checkpoints \['q'\]"):
        attach_identity(table, _flags([("a", 0, "fa", None, False, "")]))


def test_integrity_summary_names_every_flagged_checkpoint():
    clean = _flags([("a", 0, "f1", None, False, ""), ("b", 1, "f2", None, False, "")])
    assert integrity_summary(clean).startswith("Checkpoint integrity: all 2 checkpoints loaded")
    flagged = _flags([("a", 0, "f1", None, False, ""), ("b", 1, "f1", None, False, "identical weights to the previous checkpoint a"),
                      ("c", 2, None, None, True, "missing: repo@c missing"), ("d", 3, "f2", None, False, "")])
    text = integrity_summary(flagged)
    assert "2 of 4 checkpoints flagged" in text and "1 missing" in text
    assert "- `b`: identical weights" in text and "- `c`: missing: repo@c missing" in text
    assert "`a`" not in text and "`d`" not in text


def test_missing_reason_only_for_missing_branches():
    from types import SimpleNamespace

    from triphase.models.hub import CheckpointMissingError

    ckpt = SimpleNamespace(name="step16", source="EleutherAI/pythia-14m", revision="step16", series="pythia-14m")
    reason = missing_reason(CheckpointMissingError(ckpt.source, ckpt.revision, ckpt.series), ckpt)
    assert reason.startswith("EleutherAI/pythia-14m@step16 missing: ")
    assert missing_reason(ValueError("shapes do not match"), ckpt) is None
    assert missing_reason(RuntimeError("CUDA out of memory"), ckpt) is None


def test_skip_if_missing_records_missing_branches_only():
    from types import SimpleNamespace

    from triphase.models.hub import CheckpointMissingError
    from triphase.models.integrity import MissingCheckpointWarning, SweepLog

    ckpt = SimpleNamespace(name="step16", source="EleutherAI/pythia-14m", revision="step16", series="pythia-14m")
    missing = CheckpointMissingError(ckpt.source, ckpt.revision, ckpt.series)
    log, done = SweepLog("demo"), []
    with pytest.warns(MissingCheckpointWarning, match="demo: skipped checkpoint step16"):
        with log.skip_if_missing(ckpt):
            raise missing
            done.append(ckpt.name)  # never reached
    assert done == [] and list(log.skipped) == ["step16"]
    with pytest.raises(CheckpointMissingError):  # the reference checkpoint of a sweep cannot be skipped
        with log.skip_if_missing(ckpt, required=True):
            raise missing
    with pytest.raises(ValueError, match="other"):
        with log.skip_if_missing(ckpt):
            raise ValueError("other")
    with pytest.raises(FileNotFoundError, match="every chosen checkpoint is missing: step16"):
        log.check_any_done([ckpt])
