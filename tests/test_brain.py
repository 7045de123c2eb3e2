"""Brain alignment pipeline on the tiny organism and a small simulated participant."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from triphase import results_dir
from triphase.brain.sweep import BRAIN_TABLE, BrainData, brain_alignment, best_layers, load_voxel_r
from triphase.datasets import WordTimings
from triphase.datasets.simulated import SimulatedParticipant, participant_presets

SUBJECT = "sim01"
CONTRACT = ["series", "checkpoint", "step", "tokens_seen", "tier", "dataset", "subject", "layer", "region",
            "features", "score_mean", "score_top10", "score_ceiling_normalised", "ci_low", "ci_high",
            "frac_significant", "n_voxels", "n_excluded", "alpha_median"]
FAST = dict(n_perm=100, n_boot=100, alphas=np.logspace(-1, 7, 9), progress=False)


def small_params() -> dict:
    """Tiny participant at 12 mm with a longer test story (~270 TRs) so that null scores are precise."""
    params = copy.deepcopy(participant_presets()["tiny"])
    params["space"]["resolution_mm"] = 12
    params["stimuli"]["test_sentences"] = 150
    return params


class BrokenParticipant(SimulatedParticipant):
    """A participant whose responses are damaged on purpose."""

    def __init__(self, params, damage):
        super().__init__(params)
        self.damage = damage

    def responses(self, subject, story):
        y = super().responses(subject, story).copy()
        return self.damage(story, y)


@pytest.fixture(scope="module")
def run(tiny_organism):
    ds = SimulatedParticipant(small_params())
    names = [c.name for c in tiny_organism.checkpoints]
    chosen = [names[0], names[len(names) // 2], names[-1]]
    table = brain_alignment("organism-tiny", checkpoints=chosen, dataset=ds, subject=SUBJECT,
                            controls=("shuffled-stories", "random", "random-words"), device="cpu", **FAST)
    return tiny_organism, ds, chosen, table


def test_contract_columns_rows_and_files(run):
    series, ds, chosen, table = run
    assert set(CONTRACT) <= set(table.columns)
    n_states = series.info["config"]["num_hidden_layers"] + 1
    regions = ["all"] + sorted(set(ds.voxel_space(SUBJECT).regions) - {"none"})
    model = table[table["features"] == "model"]
    assert len(model) == len(chosen) * n_states * len(regions)
    assert sorted(model["region"].unique()) == sorted(regions)
    assert list(model.drop_duplicates("checkpoint")["checkpoint"]) == chosen
    assert set(model["layer"]) == set(range(n_states))
    assert (table["tier"] == "embedded").all() and (table["dataset"] == "simulated").all()
    assert model.loc[model["checkpoint"] == "step0", "tokens_seen"].eq(0).all()
    # Controls only for the final checkpoint.
    controls = table[table["features"] != "model"]
    assert set(controls["features"]) == {"shuffled-stories", "random", "random-words"}
    assert set(controls["checkpoint"]) == {chosen[-1]}
    whole = table[table["region"] == "all"]
    assert whole[["score_mean", "ci_low", "ci_high", "frac_significant", "alpha_median"]].notna().all().all()
    assert (whole["ci_low"] <= whole["ci_high"]).all()
    assert (whole["n_voxels"] == ds.n_voxels).all() and (whole["n_excluded"] == 0).all()
    # Written atomically to the results folder, voxel maps beside it.
    out = results_dir("organism-tiny", "simulated", SUBJECT)
    pd.testing.assert_frame_equal(pd.read_parquet(out / BRAIN_TABLE), table)
    r = load_voxel_r("organism-tiny", "simulated", SUBJECT, chosen[-1], 1)
    assert r.shape == (ds.n_voxels,)
    row = whole[(whole["checkpoint"] == chosen[-1]) & (whole["layer"] == 1) & (whole["features"] == "model")]
    assert float(row["score_mean"].iloc[0]) == pytest.approx(float(np.nanmean(r)), abs=1e-6)
    assert list(best_layers(table)["checkpoint"]) == chosen


def test_controls_score_near_zero(run):
    _, _, chosen, table = run
    null = table[(table["region"] == "all") & table["features"].isin(["shuffled-stories", "random"])]
    assert len(null) > 0
    assert null["score_mean"].abs().max() <= 0.02


def test_rerun_recomputes_nothing(run, monkeypatch):
    series, ds, chosen, table = run
    import triphase.brain.sweep

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached result was recomputed")

    monkeypatch.setattr(triphase.brain.sweep, "load_checkpoint", forbidden)
    monkeypatch.setattr(triphase.brain.sweep, "fit_encoding_model", forbidden)
    again = brain_alignment("organism-tiny", checkpoints=chosen, dataset=ds, subject=SUBJECT,
                            controls=("shuffled-stories", "random", "random-words"), device="cpu", **FAST)
    pd.testing.assert_frame_equal(again, table)


def test_nan_and_constant_voxels_are_excluded_and_counted(tiny_organism, fresh_home):
    def damage(story, y):
        if story == "story01":
            y[3, 0] = np.nan  # one NaN sample poisons voxel 0
        y[:, 1] = 0.5  # voxel 1 constant everywhere
        return y

    ds = BrokenParticipant(small_params(), damage)
    table = brain_alignment(tiny_organism, checkpoints=["step0"], dataset=ds, subject=SUBJECT, controls=(),
                            layers=[1], device="cpu", write=False, **FAST)
    whole = table[table["region"] == "all"].iloc[0]
    assert whole["n_excluded"] == 2 and whole["n_excluded_train"] == 2
    assert np.isfinite(whole["score_mean"]) and np.isfinite(whole["ci_low"])
    regions = ds.voxel_space(SUBJECT).regions
    per_region = table.set_index("region")["n_excluded"]
    for label in {regions[0], regions[1]} - {"none"}:
        assert per_region[label] >= 1


def test_bad_input_is_named(tiny_organism, fresh_home):
    params = small_params()

    def drop_row(story, y):
        return y[:-1] if story == "story02" else y

    ds = BrokenParticipant(params, drop_row)
    expected_rows = ds.word_timings("story02").n_rows
    with pytest.raises(ValueError, match=f"story 'story02'.*{expected_rows} rows.*{expected_rows - 1}"):
        BrainData(ds, SUBJECT)
    with pytest.raises(ValueError, match="unknown subject 'UTS01'"):
        brain_alignment(tiny_organism, dataset=SimulatedParticipant(params), subject="UTS01", **FAST)
    with pytest.raises(ValueError, match="unknown control"):
        brain_alignment(tiny_organism, dataset=SimulatedParticipant(params), subject=SUBJECT,
                        controls=("scrambled",), **FAST)
    with pytest.raises(ValueError, match="story 'empty' has no words"):
        WordTimings("empty", (), np.array([]), np.array([]), np.arange(10.0))


@pytest.mark.slow
def test_notebook_runs_on_the_tiny_organism(tiny_organism, tmp_path):
    import papermill
    from conftest import REPO_ROOT

    out = tmp_path / "01_brain_alignment.ipynb"
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks" / "01_brain_alignment.ipynb"), str(out), kernel_name="python3",
        progress_bar=False,
        parameters=dict(series="organism-tiny", checkpoints=3, dataset_options={"preset": "tiny"}, n_perm=100,
                        n_boot=100, device="cpu"),
    )
    import nbformat

    notebook = nbformat.read(out, as_version=4)
    markdown = [o["data"]["text/markdown"] for c in notebook.cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert any("Starting point (step0" in m for m in markdown)
