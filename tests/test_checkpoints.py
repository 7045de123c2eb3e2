import pytest

from triphase.models.checkpoints import Checkpoint, pythia_steps, select_checkpoints
from triphase.models.series import get_series, list_series


def test_pythia_schedule_matches_published_revisions():
    steps = pythia_steps(143000, 1000)
    assert len(steps) == 154  # Pythia publishes 154 revisions
    assert steps[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert steps[11:14] == [1000, 2000, 3000] and steps[-1] == 143000


def test_schedule_keeps_only_early_steps_below_interval_and_ends_at_final():
    assert pythia_steps(60, 20) == [0, 1, 2, 4, 8, 16, 20, 40, 60]
    assert pythia_steps(150, 100) == [0, 1, 2, 4, 8, 16, 32, 64, 100, 150]
    with pytest.raises(ValueError, match="final_step"):
        pythia_steps(0, 10)


def _series(steps):
    return [Checkpoint("s", f"step{s}", s, s * 100, "x") for s in steps]


def test_select_all_log_spaced_and_explicit():
    cks = _series(pythia_steps(10000, 1000))
    assert select_checkpoints(cks, "all") == cks
    five = select_checkpoints(cks, 5)
    assert five[0] is cks[0] and five[-1] is cks[-1] and len(five) == 5
    assert [c.step for c in five] == sorted(c.step for c in five)
    assert [c.name for c in select_checkpoints(cks, ["step2000", 512])] == ["step512", "step2000"]


def test_unknown_checkpoint_lists_nearest_names():
    cks = _series(pythia_steps(10000, 1000))
    with pytest.raises(ValueError, match=r"unknown checkpoint 'step1500'.*step1000"):
        select_checkpoints(cks, ["step1500"])


def test_inline_hub_series_and_unknown_preset():
    s = get_series({"name": "mine", "repo": "org/m", "revisions": ["step0", "step3"], "tokens_per_step": 7})
    assert [(c.step, c.tokens_seen, c.revision, c.tier) for c in s.checkpoints] == [
        (0, 0, "step0", "real"), (3, 21, "step3", "real")]
    assert "organism" in list_series()
    with pytest.raises(ValueError, match="unknown series 'nope'"):
        get_series("nope")
