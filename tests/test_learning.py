"""What the organism learned: issue 14's goals checked on planted internal and task tables, the sentences
generated from the report, and the at-a-glance figure."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from triphase.phases.learning import (
    FOLLOWING_GOAL,
    INDUCTION_SCORE_GOAL,
    KINDS,
    PROBE_RISE_GOAL,
    REPORT_COLUMNS,
    learning_report,
    learning_sentences,
    uniform_induction_score,
)
from triphase.phases.plots import GLANCE_PANELS, plot_learning_at_a_glance
from triphase.plotting import STEP0_POSITION, tier_label

matplotlib.use("Agg")  # no display in the test runs (before any figure is made)

STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
TOKENS_PER_STEP = 100
#: uniform attention on the default random sequences (the induction score of an untrained model)
UNIFORM = uniform_induction_score(32)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _internal(values: dict, series: str = "organism") -> pd.DataFrame:
    """Internal-table rows from {(measure, layer): [value per step in STEPS]}."""
    rows = [{"series": series, "checkpoint": f"step{s}", "step": s, "tokens_seen": TOKENS_PER_STEP * s,
             "tier": "embedded", "layer": layer, "head": -1, "measure": measure, "value": v}
            for (measure, layer), curve in values.items() for s, v in zip(STEPS, curve)]
    return pd.DataFrame(rows)


def _flat(value):
    return [value] * len(STEPS)


def _from(step: int, before: float, after: float) -> list[float]:
    return [before if s < step else after for s in STEPS]


def _tasks(families: dict, few_shot: int = 0, n_items: int = 50) -> pd.DataFrame:
    """Task-table rows from {family: (following curve, solving curve, solving ci_low curve)}.

    Possible data only: accuracy is never above compliance (a correct answer is a compliant one), here the
    accuracy among all items is following * (chance + (1 - chance) * solving) with chance 0.5, and 0 where
    solving is undefined (no compliant answer).
    """
    rows = []
    for family, (following, solving, solving_low) in families.items():
        for s, f, sol, low in zip(STEPS, following, solving, solving_low):
            accuracy = f * (0.5 + 0.5 * sol) if np.isfinite(sol) else 0.0  # undefined solving: no compliant answer
            common = {"series": "organism", "checkpoint": f"step{s}", "step": s, "tokens_seen": TOKENS_PER_STEP * s,
                      "task": family, "few_shot": few_shot, "n_items": n_items, "tier": "embedded"}
            rows += [
                {**common, "metric": "instruction_following", "value": f, "ci_low": max(f - 0.08, 0.0),
                 "ci_high": min(f + 0.05, 1.0)},
                {**common, "metric": "accuracy", "value": accuracy, "ci_low": max(accuracy - 0.1, 0.0),
                 "ci_high": min(accuracy + 0.1, 1.0)},
                {**common, "metric": "solving", "value": sol, "ci_low": low, "ci_high": min(sol + 0.2, 1.0)},
            ]
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["task", "step"], columns="metric", values="value")
    assert (wide["accuracy"] <= wide["instruction_following"] + 1e-12).all()  # the fixture is possible data
    return table


def _row(report: pd.DataFrame, capability: str) -> pd.Series:
    (index,) = np.flatnonzero(report["capability"] == capability)
    return report.iloc[index]


# --------------------------------------------------------------------------- induction and in-context gain

def test_an_induction_head_forming_at_a_known_checkpoint_is_met_there():
    internal = _internal({
        ("induction_score_max", 1): _flat(UNIFORM),
        ("induction_score_max", 2): _from(16, UNIFORM, 0.45),  # forms at step16, in layer 2
        ("icl_loss_gain", -1): _from(16, 0.0, -0.6),
    })
    report = learning_report(internal, None)
    assert list(report.columns) == REPORT_COLUMNS
    head = _row(report, "induction head")
    assert head["met"] and head["first_checkpoint"] == "step16"
    assert head["value_final"] == pytest.approx(0.45) and head["checkpoint_final"] == "step64"
    gain = _row(report, "in-context gain")
    assert gain["met"] and gain["first_checkpoint"] == "step16" and gain["value_final"] == pytest.approx(-0.6)
    text = learning_sentences(report)
    learned, not_learned = text.splitlines()[:2]
    assert "induction head (0.45 at step64" in learned and "first met at step16" in learned
    assert "in-context gain" in learned and "induction head" not in not_learned


def test_nothing_forms_so_the_sentence_says_did_not_learn():
    internal = _internal({("induction_score_max", layer): _flat(UNIFORM) for layer in (1, 2, 3)}
                         | {("icl_loss_gain", -1): _flat(0.01)})
    report = learning_report(internal, None)
    assert not report["met"].any()
    assert report["first_checkpoint"].tolist() == [None, None]
    lines = learning_sentences(report).splitlines()
    assert lines[0] == "- **Learned:** none of the capabilities measured."
    assert lines[1].startswith("- **Did not learn:** induction head (0.0214 at step64, goal >= 0.3")
    assert "in-context gain (0.01 at step64" in lines[1]


def test_a_goal_met_early_and_lost_is_not_met_but_says_where_it_was():
    curve = _flat(UNIFORM)
    curve[STEPS.index(8)] = 0.35  # a transient head at step8
    report = learning_report(_internal({("induction_score_max", 1): curve}), None)
    head = _row(report, "induction head")
    assert not head["met"] and head["first_checkpoint"] == "step8"
    assert "met at step8, lost by the end" in learning_sentences(report).splitlines()[1]


def test_the_goal_is_the_best_layer_against_the_threshold():
    just_below = _internal({("induction_score_max", 1): _flat(INDUCTION_SCORE_GOAL - 1e-6),
                            ("induction_score_max", 2): _flat(0.1)})
    at_goal = _internal({("induction_score_max", 1): _flat(0.1),
                         ("induction_score_max", 2): _flat(INDUCTION_SCORE_GOAL)})
    assert not learning_report(just_below, None)["met"].item()
    report = learning_report(at_goal, None)
    assert report["met"].item() and report["first_checkpoint"].item() == "step0"


def test_uniform_attention_score_closed_form():
    assert uniform_induction_score(1) == pytest.approx(1 / 2)  # query 1 sees 2 positions
    assert uniform_induction_score(2) == pytest.approx((1 / 3 + 1 / 4) / 2)
    with pytest.raises(ValueError, match="induction_length"):
        uniform_induction_score(0)


# --------------------------------------------------------------------------- tasks

def test_a_family_is_solved_only_with_its_interval_above_zero():
    ramp = [0.0, 0.0, 0.1, 0.4, 0.8, 0.95, 0.95, 0.96]
    tasks = _tasks({
        "yesno": (ramp, _from(32, 0.0, 0.6), _from(32, -0.2, 0.1)),   # solved from step32
        "count": (ramp, _from(32, 0.0, 0.6), _from(32, -0.2, -0.05)),  # 0.6 but its interval reaches below 0
        "copy": (_flat(0.5), _flat(0.0), _flat(-0.2)),                 # format not followed
    })
    report = learning_report(None, tasks)
    assert _row(report, "yesno: solving")["met"] and _row(report, "yesno: solving")["first_checkpoint"] == "step32"
    count = _row(report, "count: solving")
    assert not count["met"] and count["first_checkpoint"] is None and count["value_final"] == pytest.approx(0.6)
    assert count["ci_low"] == pytest.approx(-0.05)
    following = _row(report, "yesno: format following")
    assert following["met"] and following["first_checkpoint"] == "step16"  # 0.95 >= FOLLOWING_GOAL first there
    assert FOLLOWING_GOAL <= 0.95
    assert not _row(report, "copy: format following")["met"]
    text = learning_sentences(report)
    assert "- **Task families solved:** 1 of 3 (yesno); the goal of 2 solved families is not met." in text
    learned, not_learned = text.splitlines()[:2]
    assert "yesno: solving" in learned and "count: solving" in not_learned and "count: solving" not in learned


def test_two_solved_families_meet_the_goal_and_few_shot_picks_the_rows():
    zero_shot = _tasks({"yesno": (_flat(1.0), _flat(0.0), _flat(-0.1)), "count": (_flat(1.0), _flat(0.0), _flat(-0.1))})
    two_shot = _tasks({"yesno": (_flat(1.0), _flat(0.7), _flat(0.4)), "count": (_flat(1.0), _flat(0.55), _flat(0.2))},
                      few_shot=2)
    tasks = pd.concat([zero_shot, two_shot], ignore_index=True)
    assert not learning_report(None, tasks, few_shot=0)["met"][lambda m: m.index % 2 == 1].any()
    report = learning_report(None, tasks, few_shot=2)
    assert report["met"].all()
    assert report["measure"].str.endswith("(2-shot)").all()
    assert "the goal of 2 solved families is met" in learning_sentences(report)
    with pytest.raises(ValueError, match="few_shot=5"):
        learning_report(None, tasks, few_shot=5)


def test_no_compliant_answer_leaves_solving_undefined_and_unmet():
    tasks = _tasks({"copy": (_flat(0.0), _flat(np.nan), _flat(np.nan))})
    report = learning_report(None, tasks)
    solving = _row(report, "copy: solving")
    assert not solving["met"] and np.isnan(solving["value_final"])
    assert "copy: solving (undefined (no compliant answers) at step64" in learning_sentences(report)


# --------------------------------------------------------------------------- latent-state probes

def test_latent_probe_rise_is_the_selectivity_against_the_first_checkpoint():
    internal = _internal({
        ("probe_location_accuracy", 1): _flat(0.30),
        ("probe_location_accuracy", 2): [0.25, 0.25, 0.26, 0.3, 0.36, 0.4, 0.45, 0.55],  # best at the end
        ("probe_location_accuracy_control", 1): _flat(0.2),
        ("probe_location_accuracy_control", 2): _flat(0.2),  # selectivity 0.10 at step0 -> 0.35: +0.25
        ("probe_tension_r2", 1): _flat(0.1),
        ("probe_tension_r2", 2): [0.12] * 7 + [0.5],  # the score rises by 0.38 ...
        ("probe_tension_r2_control", 1): _flat(0.05),
        ("probe_tension_r2_control", 2): [0.1] * 7 + [0.47],  # ... but so does the control: selectivity +0.01
        ("probe_pos_accuracy", 1): _flat(0.9),  # not a latent-state probe: no row
        ("probe_location_chance", 1): _flat(0.2),
        ("probe_location_chance", 2): _flat(0.2),
    })
    report = learning_report(internal, None)
    assert report["capability"].tolist() == ["latent state: location", "latent state: tension"]
    location, tension = report.itertuples()
    assert location.value_final == pytest.approx(0.25) and location.met
    # selectivity at the best layer: 0.10 (layer 1) until step4, 0.16 at step8 (layer 2): +0.06 first there
    assert location.first_checkpoint == "step8" and PROBE_RISE_GOAL <= 0.06
    assert "minus at step0" in location.measure
    assert tension.value_final == pytest.approx(0.01) and not tension.met and tension.first_checkpoint is None
    # without the control task the selectivity is undefined: never met
    no_control = internal[~internal["measure"].str.endswith("_control")]
    assert not learning_report(no_control, None)["met"].any()
    # a score below the majority class reads no state, however much the control falls (selectivity rises)
    below = internal.copy()
    below.loc[below["measure"] == "probe_location_chance", "value"] = 0.6
    assert not learning_report(below, None).set_index("capability").loc["latent state: location", "met"]


# --------------------------------------------------------------------------- missing data, bad input

def test_missing_tables_give_no_rows_and_say_what_was_not_measured():
    empty = learning_report(None, None)
    assert empty.empty and list(empty.columns) == REPORT_COLUMNS
    text = learning_sentences(empty)
    assert text.splitlines()[-1] == "- **Not measured:** " + "; ".join(KINDS.values()) + "."
    only_induction = learning_report(_internal({("induction_score_max", 1): _flat(0.5)}), None)
    not_measured = learning_sentences(only_induction).splitlines()[-1]
    assert "03_downstream_tasks" in not_measured and "latent-state probes" in not_measured
    assert "induction head" not in not_measured and "in-context loss gain" in not_measured


def test_bad_input_is_a_clear_error():
    two = pd.concat([_internal({("icl_loss_gain", -1): _flat(0.0)}, series=name) for name in ("a", "b")])
    with pytest.raises(ValueError, match="internal_df must hold one series"):
        learning_report(two, None)
    with pytest.raises(ValueError, match="report must be a learning_report table"):
        learning_sentences(pd.DataFrame({"capability": ["x"]}))


# --------------------------------------------------------------------------- the figure

def _log() -> pd.DataFrame:
    steps = np.arange(0, 65)
    return pd.DataFrame({"step": steps, "tokens_seen": TOKENS_PER_STEP * steps,
                         "train_loss": np.where(steps > 0, 6.0 - np.log1p(steps), np.nan),
                         "heldout_loss": [6.2 - np.log1p(s) if s in STEPS else np.nan for s in steps],
                         "checkpoint": np.isin(steps, STEPS)})


def test_glance_figure_draws_every_panel_on_one_axis():
    internal = _internal({("induction_score_max", 1): _from(16, UNIFORM, 0.45),
                          ("icl_loss_gain", -1): _from(16, 0.0, -0.6),
                          ("probe_location_accuracy", 1): _flat(0.4),
                          ("probe_location_accuracy_control", 1): _flat(0.3)})
    solving = _from(32, 0.0, 0.6)
    tasks = _tasks({"yesno": (_flat(1.0), solving, _flat(0.1)), "count": (_flat(0.9), _flat(0.0), _flat(-0.1))})
    fig = plot_learning_at_a_glance(_log(), internal, tasks, unigram_entropy=5.0)
    assert len(fig.axes) == len(GLANCE_PANELS) == 5
    loss_ax, induction_ax, icl_ax, task_ax, probe_ax = fig.axes
    assert tier_label("embedded") in fig._suptitle.get_text()
    # (a) train loss, held-out loss, one tick per checkpoint (step0 at half the first positive tokens seen)
    ticks = next(line for line in loss_ax.get_lines() if line.get_label().startswith("checkpoints"))
    expected_x = [STEP0_POSITION * TOKENS_PER_STEP] + [TOKENS_PER_STEP * s for s in STEPS[1:]]
    assert ticks.get_xdata().tolist() == pytest.approx(expected_x)
    assert loss_ax.get_lines()[1].get_xdata()[0] == pytest.approx(STEP0_POSITION * TOKENS_PER_STEP)
    # (b) the induction curve, uniform reference and goal
    assert induction_ax.get_lines()[0].get_ydata().tolist() == pytest.approx(_from(16, UNIFORM, 0.45))
    assert sorted(line.get_ydata()[0] for line in induction_ax.get_lines()[1:]) == pytest.approx(
        [UNIFORM, INDUCTION_SCORE_GOAL])
    assert icl_ax.get_lines()[0].get_ydata().tolist() == pytest.approx(_from(16, 0.0, -0.6))
    # (d) two curves per family (following dashed, solving solid) and the two goal lines
    curves = {line.get_label(): line for line in task_ax.get_lines() if not line.get_label().startswith("_")}
    assert sorted(curves) == ["count: format following", "count: solving", "yesno: format following",
                              "yesno: solving"]
    assert len(task_ax.get_lines()) == 4 + 2
    assert curves["yesno: solving"].get_ydata().tolist() == pytest.approx(solving)
    assert curves["yesno: format following"].get_linestyle() == "--"
    assert len(task_ax.collections) == 2  # one CI band per family
    # (e) the probe and its control task
    assert [line.get_label() for line in probe_ax.get_lines()] == ["probe_location_accuracy (best layer)",
                                                                 "probe_location_accuracy control task"]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)


def test_glance_figure_says_what_was_not_computed():
    fig = plot_learning_at_a_glance(None, _internal({("lm_loss_heldout", -1): _flat(3.0)}), None, tier="real")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["induction score: not computed", "in-context gain: not computed",
                     "downstream tasks: not computed", "latent-state probes: not computed"]
    assert fig.axes[0].get_lines()[0].get_ydata().tolist() == _flat(3.0)  # held-out loss from the table
    assert tier_label("real") in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_learning_at_a_glance(None, None, None)
