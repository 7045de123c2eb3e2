"""The figure functions the notebooks call: each returns its Figure/Axes, draws the data it is given,
and carries the tier that produced it."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in the test runs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from triphase.brain.plots import plot_brain_score, plot_brain_score_per_region, plot_ceiling_vs_truth  # noqa: E402
from triphase.internal.plots import plot_head_maps, plot_measures  # noqa: E402
from triphase.models.plots import plot_training_curve  # noqa: E402
from triphase.phases.plots import plot_three_perspectives  # noqa: E402
from triphase.phases.synthesis import (  # noqa: E402
    fit_brain_phases,
    pooled_task_curve,
    prepare_model,
    read_run_tables,
    write_phases_table,
)
from triphase.plotting import tier_label  # noqa: E402
from triphase.tasks.plots import plot_task_metrics  # noqa: E402
from test_synthesis_notebook import DATASET, X, internal_table, run_home, tasks_table  # noqa: E402,F401,F811 (run_home: a fixture)

EMBEDDED = tier_label("embedded")
REAL = tier_label("real")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _brain_rows():
    rows = [{"checkpoint": f"step{s}", "step": s, "tokens_seen": 10 * s, "layer": layer, "region": region,
             "features": "model", "tier": "embedded", "score_mean": score * (layer + 1) * s,
             "cv_score_mean": 0.1 * layer, "ci_low": 0.0, "ci_high": 1.0, "score_ceiling_normalised": 0.5 * s}
            for s in (0, 1, 2) for layer in (0, 1) for region, score in (("all", 0.01), ("HG", 0.02), ("STG", 0.03))]
    return pd.DataFrame(rows)


def test_brain_score_per_region_draws_the_best_layer_of_each_region():
    table = _brain_rows()
    ax = plot_brain_score_per_region(table, tier="real")
    lines = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines() if not line.get_label().startswith("_")}
    # layer 1 wins on cv_score_mean: its scores are 2 x region score x step
    assert lines == {"HG": pytest.approx([0.0, 0.04, 0.08]), "STG": pytest.approx([0.0, 0.06, 0.12])}
    assert ax.get_title() == f"Brain score per region\n{REAL}"
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="no regions"):
        plot_brain_score_per_region(table[table["region"] == "all"])


def test_brain_score_title_and_ceiling_labels():
    table = _brain_rows()
    ax = plot_brain_score(table, score="score_ceiling_normalised", controls=False, title=f"normalised\n{EMBEDDED}")
    assert ax.get_title() == f"normalised\n{EMBEDDED}"
    assert ax.get_lines()[0].get_ydata().tolist() == [0.0, 0.5, 1.0]
    assert plot_brain_score(table).get_title() == f"Brain score through training\n{EMBEDDED}"
    ax = plot_ceiling_vs_truth(np.array([0.1, 0.2, 0.3, 0.5]), np.array([0.1, 0.25, 0.3, 0.4]), tier="real",
                               xlabel="true CC_max", ylabel="test r")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("true CC_max", "test r")
    assert ax.get_title().endswith(f"({REAL})")


def test_internal_measures_reference_line_and_head_maps():
    rng = np.random.default_rng(0)
    table = internal_table("s", rng)
    grid = plot_measures(table, ["cka_previous", "induction_score_max"], col_wrap=2,
                         references={"induction_score_max": 0.07, "not drawn": 1.0})
    ax = grid.axes_dict["induction_score_max"]
    flat = [line for line in ax.get_lines() if np.ptp(line.get_ydata()) == 0 and len(line.get_ydata()) == 2]
    assert [line.get_ydata()[0] for line in flat] == [0.07]
    assert not [line for line in grid.axes_dict["cka_previous"].get_lines() if len(line.get_ydata()) == 2]
    assert grid.figure._suptitle.get_text() == EMBEDDED
    fig = plot_head_maps(table, ["induction_score"])
    (ax,) = fig.axes[:1]
    assert ax.get_title() == f"induction_score per head\n{EMBEDDED}"
    heads = table[table["measure"] == "induction_score"]
    expected = heads.pivot_table(index=["step", "checkpoint"], columns=["layer", "head"], values="value").sort_index()
    np.testing.assert_allclose(ax.images[0].get_array(), expected.to_numpy())


def test_training_curve_and_task_metrics_carry_the_tier():
    log = pd.DataFrame({"tokens_seen": [0, 100, 200], "train_loss": [6.0, 4.0, 3.0], "heldout_loss": [6.1, None, 3.2]})
    ax = plot_training_curve(log, unigram_entropy=4.5, tier="real")
    assert ax.get_title() == f"Training curve ({REAL})"
    assert ax.get_lines()[0].get_ydata().tolist() == [4.0, 3.0]
    fig = plot_task_metrics(tasks_table("s"), few_shot=0)
    assert [a.get_title() for a in fig.axes] == ["yesno (0-shot)", "choice (0-shot)"]
    assert fig.texts[-1].get_text() == EMBEDDED


def test_training_curve_marks_every_checkpoint():
    log = pd.DataFrame({"tokens_seen": [0, 100, 200, 300, 400], "train_loss": [None, 5.0, 4.0, 3.5, 3.0],
                        "heldout_loss": [6.1, 5.1, None, None, 3.2], "checkpoint": [True, True, False, True, True]})
    ax = plot_training_curve(log)
    ticks = ax.get_lines()[2]
    # the flagged checkpoints after step0 (step0 has no place on this log axis), in axes coordinates at the bottom
    assert ticks.get_xdata().tolist() == [100, 300, 400] and ticks.get_ydata().tolist() == [0.0, 0.0, 0.0]
    assert ticks.get_label() == "checkpoints (3 after step 0)"
    without_flag = plot_training_curve(log.drop(columns="checkpoint"), ax=plt.figure().gca())
    assert without_flag.get_lines()[2].get_xdata().tolist() == [100, 400]  # the rows with a held-out loss


@pytest.fixture()
def records(run_home):
    models, _ = read_run_tables(["synthetic-a", "synthetic-b"], DATASET, ["sim01", "sim02"])
    for m in models:
        notes = prepare_model(m, "all", internal_measures=["cka_previous", "induction_score_max"])
        fit_brain_phases(m, notes, n_boot=20, n_null=19)
        write_phases_table(m, n_boot=20, n_null=19)
    return {(m["series"], m["subject"]): m for m in models}


def test_three_perspectives_draws_every_perspective(records):
    m = records[("synthetic-a", "sim01")]
    fig = plot_three_perspectives(m, threshold=0.5)
    top, middle, bottom = fig.axes
    assert fig.texts[-1].get_text() == EMBEDDED
    assert top.get_title().splitlines()[0] == ("synthetic-a / simulated-sim01: score_mean (all), best layer per "
                                              "checkpoint by cross-validated training score")
    assert top.get_title().splitlines()[-1] == EMBEDDED
    fit = [line for line in top.get_lines() if line.get_label().startswith("piecewise-linear fit")]
    np.testing.assert_allclose(fit[0].get_ydata(), m["result"].fitted)
    # middle: each chosen measure, min-max scaled, in the order of their names
    labels = [line.get_label() for line in middle.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["cka_previous", "induction_score_max"]
    induction = middle.get_lines()[[line.get_label() for line in middle.get_lines()].index("induction_score_max")]
    assert induction.get_ydata().min() == 0 and induction.get_ydata().max() == 1
    # bottom: the pooled curves of the tasks table
    drawn = {line.get_label(): line for line in bottom.get_lines()}
    pooled = pooled_task_curve(m["tasks"], "instruction_following")
    np.testing.assert_allclose(drawn["instruction_following (all tasks)"].get_ydata(), pooled["value"])
    np.testing.assert_allclose(drawn["instruction_following (all tasks)"].get_xdata(),
                               X[np.argsort(pooled["step"].to_numpy())])
    assert "instruction-following onset (CI > 0.5)" in drawn
    assert bottom.get_ylabel() == "share of items / chance-corrected (0-shot)"
    # brain breakpoints dashed in the lower panels
    dashed = sorted(line.get_xdata()[0] for line in bottom.get_lines() if line.get_linestyle() == "--")
    np.testing.assert_allclose(dashed, sorted(m["result"].breakpoints))


def test_three_perspectives_says_what_was_not_computed(records):
    fig = plot_three_perspectives(records[("synthetic-b", "sim01")])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "internal states: not computed" in texts and "downstream tasks: not computed" in texts
    with pytest.raises(ValueError, match="has no table"):
        plot_three_perspectives(records[("synthetic-a", "sim02")])


def test_copy_warmup_is_shaded_where_the_log_says_and_only_there():
    import pandas as pd
    from matplotlib.patches import Polygon, Rectangle

    from triphase.models.organism import COPY_WARMUP_DATA, CORPUS_DATA
    from triphase.models.plots import plot_training_curve

    log = pd.DataFrame({"tokens_seen": [0, 100, 200, 300, 400], "train_loss": [None, 5.0, 4.0, 3.0, 2.0],
                        "heldout_loss": [6.0, None, 4.1, None, 2.1], "checkpoint": [True, False, True, False, True],
                        "data": [CORPUS_DATA, COPY_WARMUP_DATA, COPY_WARMUP_DATA, CORPUS_DATA, CORPUS_DATA]})
    ax = plot_training_curve(log)
    spans = [p for p in ax.patches if isinstance(p, (Polygon, Rectangle))]
    assert len(spans) == 1
    span = spans[0]
    xs = span.get_xy()[:, 0] if isinstance(span, Polygon) else [span.get_x(), span.get_x() + span.get_width()]
    assert max(xs) == 200 and min(xs) == 100
    assert not plot_training_curve(log.drop(columns="data")).patches
