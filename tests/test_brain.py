"""Brain alignment pipeline on the tiny organism and a small simulated participant."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from triphase import results_dir
from triphase.brain.baseline import baseline_columns
from triphase.brain.sweep import (
    BRAIN_TABLE,
    REPLICATE_COLUMNS,
    REPLICATES_TABLE,
    BrainData,
    best_layers,
    brain_alignment,
    load_replicates,
    load_voxel_p,
    load_voxel_r,
)
from triphase.brain.timeseries import DEFAULT_DELAYS
from triphase.datasets import WordTimings
from triphase.datasets.simulated import SimulatedParticipant, participant_presets

SUBJECT = "sim01"
CONTRACT = ["series", "checkpoint", "step", "tokens_seen", "tier", "dataset", "subject", "layer", "region",
            "features", "score_mean", "score_top10", "score_ceiling_normalised", "ci_low", "ci_high",
            "frac_significant", "n_voxels", "n_excluded", "alpha_median", "block_trs", "n_ceiling_voxels",
            "score_ceiling_voxels", "ci_low_ceiling_normalised", "ci_high_ceiling_normalised"]
NULL_CONTROLS = ["shuffled-stories", "random"]
#: How far the model's lower 95% bound must clear a null control's upper bound (normalised score units):
#: disjoint intervals, i.e. a difference of about 2.8 standard errors. Measured on the tiny organism's final
#: checkpoint: 0.048 above the random control.
MODEL_MARGIN = 0.0
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


def test_baseline_and_unique_variance_at_each_checkpoints_best_layer(run):
    _, _, chosen, table = run
    model = table[table["features"] == "model"]
    with_unique = model[model["r2_unique"].notna()]
    picks = best_layers(table).set_index("checkpoint")["layer"]
    # exactly one layer per checkpoint carries the columns: the chapter's best layer
    per_checkpoint = with_unique.groupby("checkpoint")["layer"].unique()
    assert sorted(per_checkpoint.index) == sorted(chosen)
    assert all(list(layers) == [picks[c]] for c, layers in per_checkpoint.items())
    np.testing.assert_allclose(with_unique["r2_unique"], with_unique["r2_joint"] - with_unique["r2_baseline"],
                               atol=1e-6)
    assert table.loc[table["features"] != "model", "r2_unique"].isna().all()
    # word rate and word length (no phones in the simulated participant), each at every delay
    assert (with_unique["n_baseline_features"] == len(baseline_columns(False)) * len(DEFAULT_DELAYS)).all()


def test_controls_on_signal_voxels_relative_to_their_interval(run):
    """Null controls, judged on the independently chosen ceiling voxels (the former |score| <= 0.02 on the
    whole brain could not fail: the participant's own features score 0.019 there).

    * no voxel of a null control is significant (BH-FDR 5%, circular-shift null);
    * the model's interval lies above each null control's interval by a margin.

    A null control's bootstrap interval need not contain 0: on a few voxels that share one signal, the
    chance correlation of two fixed time courses (measured: about -0.07 in normalised units here) is part
    of the estimand the test-time bootstrap is conditional on; the alignment null of the test is what
    judges it.
    """
    _, _, chosen, table = run
    final = table[(table["region"] == "all") & (table["checkpoint"] == chosen[-1])]
    model = final[final["features"] == "model"].set_index("layer")
    assert (final["n_ceiling_voxels"] > 0).all()
    best = int(model["cv_score_mean"].idxmax())
    for kind in NULL_CONTROLS:
        control = final[final["features"] == kind].set_index("layer")
        assert len(control) == len(model)
        assert (control["n_significant"] == 0).all(), kind
        margin = model.loc[best, "ci_low_ceiling_normalised"] - control.loc[best, "ci_high_ceiling_normalised"]
        assert margin > MODEL_MARGIN, kind


def test_shuffled_stories_pvalues_are_calibrated(run):
    """The shuffled-stories model predicts nothing: its voxelwise p-values reject at about alpha."""
    series, ds, chosen, table = run
    n_states = series.info["config"]["num_hidden_layers"] + 1
    p = np.concatenate([load_voxel_p("organism-tiny", "simulated", SUBJECT, chosen[-1], layer, "shuffled-stories")
                        for layer in range(n_states)])
    p = p[np.isfinite(p)]
    alpha = 0.05
    # Voxels are independent within a layer (~1,000 per map); layers share the test noise, so the
    # Monte-Carlo SE is taken over one map's voxels (conservative).
    mc_se = np.sqrt(alpha * (1 - alpha) / ds.n_voxels)
    assert np.mean(p <= alpha) <= alpha + 3 * mc_se


def test_replicates_are_stored_and_paired(run):
    _, ds, chosen, table = run
    replicates = load_replicates("organism-tiny", "simulated", SUBJECT)
    out = results_dir("organism-tiny", "simulated", SUBJECT)
    pd.testing.assert_frame_equal(pd.read_parquet(out / REPLICATES_TABLE), replicates)
    assert list(replicates.columns) == REPLICATE_COLUMNS
    n_boot = FAST["n_boot"]
    keys = ["checkpoint", "layer", "region", "features"]
    assert (replicates.groupby(keys)["replicate"].apply(lambda x: sorted(x) == list(range(n_boot)))).all()
    # Every score row has its replicates, and its interval is the basic interval of those replicates.
    merged = table.merge(replicates.groupby(keys)["score_mean"].quantile([0.025, 0.975]).unstack().reset_index(),
                         on=keys)
    assert len(merged) == len(table)
    np.testing.assert_allclose(merged["ci_low"], 2 * merged["score_mean"] - merged[0.975], atol=1e-6)
    np.testing.assert_allclose(merged["ci_high"], 2 * merged["score_mean"] - merged[0.025], atol=1e-6)
    # Paired: replicate i of two checkpoints comes from the same test blocks, so they move together.
    whole = replicates[(replicates["region"] == "all") & (replicates["features"] == "model")
                       & (replicates["layer"] == 1)].pivot(index="replicate", columns="checkpoint", values="score_mean")
    assert np.corrcoef(whole[chosen[1]], whole[chosen[-1]])[0, 1] > 0.3
    assert (table["block_trs"] == BrainData(ds, SUBJECT).block).all()


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
