"""The synthesis notebook (04_phases) on fabricated, clearly synthetic result tables.

The tables are written by this test into a temporary data home: a series
``synthetic-a`` whose best layer (by cross-validated score) carries a planted
rise-fall-rise brain-score curve, while another layer with higher test scores at
the dip rises monotonically; its tasks and internal tables carry boundaries at
known checkpoints. ``synthetic-b`` has a brain table only, and subject ``sim02``
has no table at all. The task tables are possible data: they are computed from
per-item outcomes (``tasks_items.parquet``, also written) in which a correct
answer is always compliant; solving (chance-corrected accuracy among compliant
answers) is undefined before any answer is compliant, then rises, stagnates and
consolidates at the brain's second breakpoint. ``synthetic-a`` also has joint
brain replicates (``brain_replicates.parquet``); ``synthetic-b`` has none, so it
falls back to AR(1) replicates with a note. The notebook must find the planted
boundaries, write ``phases.parquet`` with the contract columns, and report the
missing tables in words instead of failing.
"""
from __future__ import annotations

import os

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT
from triphase.phases.piecewise import log_tokens
from triphase.tasks.scoring import wilson_interval

NOTEBOOK = REPO_ROOT / "notebooks" / "04_phases.ipynb"
DATASET = "simulated"
STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384])
TOKENS_PER_STEP = 1000
X = log_tokens(STEPS * TOKENS_PER_STEP, STEPS)
#: Planted brain-score breakpoints (log10 tokens): rise until 4.2, fall until 5.7, rise again.
PLANTED_BREAKS = (4.2, 5.7)
NOISE_SD = 0.002
#: Tolerance on recovered breakpoints (log10 tokens): half a checkpoint spacing (0.3) plus a margin.
BREAK_TOLERANCE = 0.35
ITEMS = 200
CONTRACT_COLUMNS = ["series", "checkpoint", "step", "tokens_seen", "tier", "dataset", "subject", "perspective",
                    "source", "boundary", "found", "x", "ci_low", "ci_high", "overlaps_brain", "pattern",
                    "pattern_stability", "p_monotone", "triple", "plateau", "replicates"]
PARAMETERS = dict(series=["synthetic-a", "synthetic-b"], dataset=DATASET, subjects=["sim01", "sim02"],
                  checkpoints="all", device="cpu", seed=0, dataset_options={}, n_boot=60, n_null=199)
#: Chance level of the fabricated task families, and the joint brain replicates written.
CHANCE = 0.5
N_REPLICATES = 60
#: AR(1) coefficient of the replicates' deviations across checkpoints (they share test blocks).
REPLICATE_PHI = 0.5


def _join(series: str) -> pd.DataFrame:
    return pd.DataFrame({"series": series, "checkpoint": [f"step{s}" for s in STEPS], "step": STEPS,
                         "tokens_seen": STEPS * TOKENS_PER_STEP, "tier": "embedded"})


def _rise_fall_rise(x: np.ndarray) -> np.ndarray:
    first, second = PLANTED_BREAKS
    return np.interp(x, [X[0], first, second, X[-1]], [0.02, 0.065, 0.02, 0.08])


def brain_table(series: str, subject: str, planted: bool, rng) -> pd.DataFrame:
    frames = []
    curves = {1: _rise_fall_rise(X) if planted else 0.01 + 0.015 * (X - X[0]),
              0: 0.05 + 0.02 * (X - X[0])}                      # monotone; higher test scores at the dip
    cv_scores = {1: 0.2, 0: 0.1}                                 # layer 1 wins on the training stories
    for layer, curve in curves.items():
        for region, scale in (("all", 1.0), ("HG", 3.0)):
            score = scale * curve + rng.normal(0, NOISE_SD, X.size)
            frame = _join(series).assign(dataset=DATASET, subject=subject, layer=layer, features="model",
                                         region=region, score_mean=score, ci_low=score - 2 * NOISE_SD,
                                         ci_high=score + 2 * NOISE_SD, cv_score_mean=cv_scores[layer],
                                         score_top10=2 * score, frac_significant=0.5)
            frames.append(frame)
    control = frames[0].iloc[[-1]].assign(features="random", score_mean=0.0, ci_low=-0.004, ci_high=0.004,
                                          cv_score_mean=0.9)        # a control must never be picked
    return pd.concat(frames + [control], ignore_index=True)


def _solving_curve() -> np.ndarray:
    """Planted solving: a first rise from the onset (step16), a plateau, consolidation at the second brain break."""
    return np.interp(X, [X[0], X[5], X[7], PLANTED_BREAKS[1], X[-1]], [0.0, 0.0, 0.35, 0.35, 0.95])


def items_table(series: str) -> pd.DataFrame:
    """Per-item outcomes (``tasks_items.parquet`` contract): correct answers are always compliant."""
    rng = np.random.default_rng(11)
    frames = []
    for few_shot in (0, 2):
        compliance = np.where(STEPS >= 16, 0.9, 0.0) if few_shot == 0 else np.full(X.size, 0.95)
        for task in ("yesno", "choice"):
            u, v, w = rng.uniform(size=(3, ITEMS))
            for i, c in enumerate(_join(series).itertuples()):
                p_correct = CHANCE + (1 - CHANCE) * _solving_curve()[i]
                compliant = u < compliance[i]
                frames.append(pd.DataFrame({
                    "series": series, "checkpoint": c.checkpoint, "step": c.step, "task": task,
                    "few_shot": few_shot, "item": np.arange(ITEMS), "compliant": compliant,
                    "correct": compliant & (v < p_correct), "mc_correct": (w < p_correct).astype(float),
                    "chance": CHANCE}))
    return pd.concat(frames, ignore_index=True)


def tasks_table(series: str) -> pd.DataFrame:
    """The tasks table implied by :func:`items_table` (shares with Wilson intervals, solving mapped from its share)."""
    rows = []
    items = items_table(series)
    for (few_shot, task, checkpoint), group in items.groupby(["few_shot", "task", "checkpoint"], sort=False):
        base = {**_join(series).set_index("checkpoint").loc[checkpoint].to_dict(), "checkpoint": checkpoint,
                "task": task, "few_shot": few_shot}
        n_compliant = int(group["compliant"].sum())
        counts = {"instruction_following": (n_compliant, ITEMS), "accuracy": (int(group["correct"].sum()), ITEMS),
                  "mc_accuracy": (int(group["mc_correct"].sum()), ITEMS)}
        for metric, (k, n) in counts.items():
            low, high = wilson_interval(k, n)
            rows.append({**base, "metric": metric, "value": k / n, "ci_low": low, "ci_high": high, "n_items": n})
        k_mc = counts["mc_accuracy"][0]
        low, high = wilson_interval(k_mc, ITEMS)
        rows.append({**base, "metric": "mc_above_chance", "value": k_mc / ITEMS - CHANCE, "ci_low": low - CHANCE,
                     "ci_high": high - CHANCE, "n_items": ITEMS})
        if n_compliant:
            k = int(group["correct"].sum())
            low, high = wilson_interval(k, n_compliant)
            value, low, high = ((q - CHANCE) / (1 - CHANCE) for q in (k / n_compliant, low, high))
        else:
            value, low, high = np.nan, np.nan, np.nan          # solving is undefined without compliant answers
        rows.append({**base, "metric": "solving", "value": value, "ci_low": low, "ci_high": high,
                     "n_items": n_compliant})
    return pd.DataFrame(rows)


def replicates_table(brain: pd.DataFrame, rng) -> pd.DataFrame:
    """Joint replicates (``brain_replicates.parquet`` contract): one AR(1) deviation curve per replicate."""
    frames = []
    model = brain[brain["features"] == "model"]
    for (layer, region), rows in model.groupby(["layer", "region"], sort=True):
        rows = rows.sort_values("step")
        deviation = np.zeros((N_REPLICATES, len(rows)))
        deviation[:, 0] = rng.normal(0, NOISE_SD, N_REPLICATES)
        for t in range(1, len(rows)):
            deviation[:, t] = (REPLICATE_PHI * deviation[:, t - 1]
                               + np.sqrt(1 - REPLICATE_PHI**2) * rng.normal(0, NOISE_SD, N_REPLICATES))
        for b in range(N_REPLICATES):
            frames.append(rows[["series", "checkpoint", "step", "dataset", "subject", "layer", "region", "features"]]
                          .assign(replicate=b, score_mean=rows["score_mean"].to_numpy() + deviation[b]))
    return pd.concat(frames, ignore_index=True)


def internal_table(series: str, rng) -> pd.DataFrame:
    rows = []
    for layer in (0, 1):
        cka = np.where(STEPS == 128, 0.5, 0.99)
        rows.append(_join(series).assign(layer=layer, head=-1, measure="cka_previous", value=cka))
        induction = np.where(STEPS >= 256, 0.8, 0.02)
        rows.append(_join(series).assign(layer=layer, head=-1, measure="induction_score_max", value=induction))
        # per-head rows and an unchosen measure: the notebook must leave them out
        rows.append(_join(series).assign(layer=layer, head=0, measure="induction_score",
                                         value=rng.uniform(0, 1, X.size)))
        rows.append(_join(series).assign(layer=layer, head=-1, measure="anisotropy", value=rng.uniform(0, 1, X.size)))
    rows.append(_join(series).assign(layer=-1, head=-1, measure="lm_loss_heldout", value=6 - 0.5 * (X - X[0])))
    return pd.concat(rows, ignore_index=True)


def _write(home, series, subject, name, table):
    folder = home / "results" / series / f"{DATASET}-{subject}"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / name, index=False)
    return folder


def _write_tables(home):
    rng = np.random.default_rng(7)
    brain = brain_table("synthetic-a", "sim01", True, rng)
    _write(home, "synthetic-a", "sim01", "brain.parquet", brain)
    _write(home, "synthetic-a", "sim01", "brain_replicates.parquet", replicates_table(brain, rng))
    _write(home, "synthetic-a", "sim01", "tasks.parquet", tasks_table("synthetic-a"))
    _write(home, "synthetic-a", "sim01", "tasks_items.parquet", items_table("synthetic-a"))
    _write(home, "synthetic-a", "sim01", "internal.parquet", internal_table("synthetic-a", rng))
    _write(home, "synthetic-b", "sim01", "brain.parquet", brain_table("synthetic-b", "sim01", False, rng))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    import papermill as pm

    home = tmp_path_factory.mktemp("synthesis_home")
    _write_tables(home)
    out = home / "04_phases.ipynb"
    previous = os.environ.get("TRIPHASE_HOME")
    os.environ["TRIPHASE_HOME"] = str(home)   # the kernel inherits it
    try:
        pm.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", parameters=PARAMETERS,
                            cwd=str(REPO_ROOT / "notebooks"), progress_bar=False)
    finally:
        if previous is None:
            os.environ.pop("TRIPHASE_HOME", None)
        else:
            os.environ["TRIPHASE_HOME"] = previous
    return home, nbformat.read(out, as_version=4)


def _outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def _phases(home, series, subject="sim01"):
    return pd.read_parquet(home / "results" / series / f"{DATASET}-{subject}" / "phases.parquet")


def test_parameters_cell_declares_the_run_parameters():
    import papermill as pm

    declared = pm.inspect_notebook(str(NOTEBOOK))
    for name in ("series", "dataset", "subjects", "checkpoints", "device", "seed", "dataset_options",
                 "threshold_following", "n_boot", "n_null", "brain_measure", "layer"):
        assert name in declared, name
    assert declared["series"]["default"].startswith("[") and declared["subjects"]["default"].startswith("[")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "stored outputs"


@pytest.mark.slow
def test_writes_phases_tables_with_contract_columns(executed):
    home, _ = executed
    for series in ("synthetic-a", "synthetic-b"):
        table = _phases(home, series)
        missing = [c for c in CONTRACT_COLUMNS if c not in table.columns]
        assert not missing, missing
        assert set(table["series"]) == {series}
        assert set(table["tier"]) == {"embedded"}
        assert set(table["dataset"]) == {DATASET} and set(table["subject"]) == {"sim01"}
        found = table[table["found"]]
        # every found boundary names the checkpoint nearest to it, with its step and tokens
        assert found["checkpoint"].notna().all() and np.isfinite(found["tokens_seen"].astype(float)).all()
    assert not (home / "results" / "synthetic-a" / f"{DATASET}-sim02" / "phases.parquet").exists()
    assert not (home / "results" / "synthetic-b" / f"{DATASET}-sim02" / "phases.parquet").exists()
    # synthetic-b has no tasks or internal table: only brain rows
    assert set(_phases(home, "synthetic-b")["perspective"]) == {"brain"}


@pytest.mark.slow
def test_finds_the_planted_boundaries(executed):
    home, _ = executed
    table = _phases(home, "synthetic-a")
    brain = table[(table["perspective"] == "brain") & table["found"]]
    # the best layer (by cv score) carries the pattern; the monotone layer would not show it
    assert brain["pattern"].all()
    assert (brain["p_monotone"] <= 0.05).all()
    for planted in PLANTED_BREAKS:
        assert np.min(np.abs(brain["x"] - planted)) < BREAK_TOLERANCE, (planted, brain["x"].tolist())
    assert brain["triple"].all() and set(brain["replicates"]) == {"supplied"}     # the joint replicates
    onset = table[(table["perspective"] == "instruction_following") & (table["source"] == "all")].iloc[0]
    # few_shot=0 rows cross at step16; the few_shot=2 rows (0.95 from step0) must have been left out
    assert onset["found"] and onset["checkpoint"] == "step16"
    x_of = dict(zip([f"step{s}" for s in STEPS], X))
    solving = table[(table["perspective"] == "task_solving") & (table["source"] == "all (solving)")
                    & table["found"]].set_index("boundary")
    assert abs(solving.loc["consolidation_onset", "x"] - PLANTED_BREAKS[1]) < BREAK_TOLERANCE
    # stagnation starts at the end of the first rise (X[7]), after the onset: never the floor before it
    assert abs(solving.loc["stagnation_start", "x"] - X[7]) < BREAK_TOLERANCE
    assert set(solving["replicates"]) == {"items"}
    internal = table[table["perspective"] == "internal"]
    assert not internal["source"].str.startswith(("anisotropy", "induction_score ")).any()
    cka = internal[internal["source"].str.startswith("cka_previous")].iloc[0]
    assert cka["x"] == pytest.approx((x_of["step64"] + x_of["step128"]) / 2)
    induction = internal[internal["source"].str.startswith("induction_score_max") & (internal["boundary"] == "onset")]
    assert induction.iloc[0]["ci_high"] == pytest.approx(x_of["step256"])
    # the dip of the brain score (between the planted breaks) contains the cka change: its CI meets a brain CI
    assert bool(cka["overlaps_brain"]) == bool(
        ((brain["ci_low"] <= x_of["step128"]) & (brain["ci_high"] >= x_of["step64"])).any())


@pytest.mark.slow
def test_reports_missing_tables_in_words(executed):
    _, notebook = executed
    text = _outputs_text(notebook)
    assert "synthetic-b / simulated-sim01: found brain" in text
    assert "not computed: internal, tasks" in text
    assert "synthetic-a / sim02: brain score not computed (no brain.parquet)" in text
    assert "No phase analysis (no brain table)" in text
    assert "embedded tier: model organism / simulated participant" in text
    assert "shows the triple phase pattern" in text          # generated by describe_phases for synthetic-a
    assert "brain_replicates.parquet not found" in text      # synthetic-b falls back to AR(1) replicates, said
    assert "meet one by chance" in text                      # overlaps against circular shifts
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert images == 2                                       # one three-panel figure per model with tables


# ----------------------------------------------------------------------------- the library steps of the notebook

SETTINGS = dict(brain_measure="score_mean", region="all", layer=None)
FIT = dict(n_boot=30, seed=0, n_null=29, max_breakpoints=4)


@pytest.fixture()
def run_home(tmp_path, monkeypatch):
    """The fixture tables of the notebook test in a fresh data home."""
    monkeypatch.setenv("TRIPHASE_HOME", str(tmp_path))
    _write_tables(tmp_path)
    return tmp_path


def _analysed(internal_measures=("cka_previous", "induction_score_max", "lm_loss_heldout")):
    from triphase.phases.synthesis import fit_brain_phases, prepare_model, read_run_tables, write_phases_table

    models, status = read_run_tables(["synthetic-a", "synthetic-b"], DATASET, ["sim01", "sim02"])
    notes = {}
    for m in models:
        key = (m["series"], m["subject"])
        notes[key] = prepare_model(m, "all", few_shot=0, internal_measures=list(internal_measures))
        fit_brain_phases(m, notes[key], **SETTINGS, **FIT)
        write_phases_table(m, threshold=0.5, **SETTINGS, n_boot=FIT["n_boot"], n_null=FIT["n_null"], seed=0,
                           max_breakpoints=4)
    return models, status, notes


def test_parameter_helpers():
    from triphase.phases.synthesis import (as_list, brain_replicates, check_threshold, layer_choice,
                                           layer_description, replicates_note)

    assert as_list("a") == ["a"] and as_list(["a", "b"]) == ["a", "b"]
    assert layer_choice("best") is None and layer_choice(np.int64(2)) == 2
    for bad in (True, "2", 1.5):
        with pytest.raises(ValueError, match="layer must be 'best'"):
            layer_choice(bad)
    with pytest.raises(ValueError, match=r"share in \[0, 1\]"):
        check_threshold(1.5)
    check_threshold(0.0)
    assert layer_description(3) == "layer 3"
    assert brain_replicates("score_mean", has_joint=True) == "joint"
    assert replicates_note("score_mean", has_joint=True) is None
    assert brain_replicates("score_mean") == "residual" and "not found" in replicates_note("score_mean")
    assert brain_replicates("score_top10", has_joint=True) == "residual"
    assert replicates_note("score_top10").startswith("brain_measure='score_top10' has no stored joint replicates")


def test_read_run_tables_and_status_lines(run_home):
    from triphase.phases.synthesis import read_run_tables, status_lines

    models, status = read_run_tables(["synthetic-a", "synthetic-b"], DATASET, ["sim01", "sim02"])
    assert [(m["series"], m["subject"]) for m in models] == [
        ("synthetic-a", "sim01"), ("synthetic-a", "sim02"), ("synthetic-b", "sim01"), ("synthetic-b", "sim02")]
    assert models[0]["folder"] == run_home / "results" / "synthetic-a" / f"{DATASET}-sim01"
    assert len(models[0]["brain"]) == len(brain_table("synthetic-a", "sim01", True, np.random.default_rng(0)))
    assert models[1]["brain"] is None and models[2]["tasks"] is None
    assert status.loc[2, ["brain", "internal", "tasks"]].tolist()[1:] == ["missing", "missing"]
    lines = status_lines(status, 2, 2, DATASET)
    assert lines[0] == "4 model(s) = 2 series x 2 subject(s) of dataset 'simulated'"
    assert lines[2] == "- synthetic-a / simulated-sim02: found no table; not computed: brain, internal, tasks"
    assert lines[3].startswith("- synthetic-b / simulated-sim01: found brain (")
    assert lines[3].endswith("; not computed: internal, tasks")


def test_prepare_model_restricts_tables_and_builds_the_axis(run_home):
    from triphase.phases.synthesis import axis_lines, chosen_checkpoints, prepare_model, read_run_tables

    models, _ = read_run_tables("synthetic-a", DATASET, ["sim01", "sim02"])
    a, empty = models
    notes = prepare_model(a, "all", few_shot=2, solving_metric="accuracy_given_compliance",
                          internal_measures=["cka_previous", "intrinsic_dimension"])
    assert set(a["tasks"]["few_shot"]) == {2} and set(a["tasks_items"]["few_shot"]) == {2}
    assert notes == ["the tasks table has no metric 'accuracy_given_compliance' (it has accuracy, "
                     "instruction_following, mc_above_chance, mc_accuracy, solving)",
                     "internal measure(s) intrinsic_dimension not in internal.parquet"]
    assert set(a["internal"]["measure"]) == {"cka_previous"} and set(a["internal"]["head"]) == {-1}
    np.testing.assert_allclose(a["axis"]["x"], X)
    assert a["tier"] == "embedded"
    lines = axis_lines(a, notes)
    assert lines[0].startswith(f"synthetic-a / sim01: {len(STEPS)} checkpoints on the axis (x from {X[0]:.2f}")
    assert lines[1] == f"   note: {notes[0]}"
    assert prepare_model(empty) == [] and empty["axis"] is None and axis_lines(empty, []) == []
    # N checkpoints: log-spaced among those of the tables, every table restricted to them
    models, _ = read_run_tables("synthetic-a", DATASET, "sim01")
    keep = chosen_checkpoints([models[0][k] for k in ("brain", "internal", "tasks")], 5)
    prepare_model(models[0], 5)
    assert len(keep) == 5 and models[0]["axis"]["checkpoint"].tolist() == keep
    assert set(models[0]["brain"]["checkpoint"]) == set(keep) == set(models[0]["tasks"]["checkpoint"])
    with pytest.raises(ValueError, match=r"few_shot=1: synthetic-a tasks.parquet has few_shot \[0, 2\]"):
        prepare_model(read_run_tables("synthetic-a", DATASET, "sim01")[0][0], few_shot=1)


def test_brain_phases_and_the_phases_table(run_home):
    from triphase.phases.boundaries import brain_phases
    from triphase.phases.synthesis import PHASES_FILE, brain_points, fit_brain_phases, prepare_model, read_run_tables

    models, _, notes = _analysed()
    a, no_table = models[0], models[1]
    assert a["result"].n_breakpoints >= 2
    for planted in PLANTED_BREAKS:
        assert np.min(np.abs(a["result"].breakpoints - planted)) < BREAK_TOLERANCE
    # the best layer by cross-validated score (layer 1) carries the curve
    assert set(a["curve"]["layer"]) == {1}
    np.testing.assert_allclose(a["x"], X)
    expected = brain_phases(a["brain"], x=a["x"], replicates="joint", replicates_df=a["brain_replicates"], **FIT)
    np.testing.assert_allclose(a["result"].breakpoints, expected.breakpoints)
    assert no_table["result"] is None and no_table["raw_curve"] is None and no_table["phases"] is None
    written = pd.read_parquet(a["folder"] / PHASES_FILE)
    shown = ["perspective", "source", "boundary", "found", "x", "ci_low", "ci_high", "checkpoint", "tokens_seen"]
    pd.testing.assert_frame_equal(written[shown], a["phases"][shown].reset_index(drop=True), check_dtype=False)
    assert list(written.columns) == list(a["phases"].columns)
    assert set(written["brain_layer"]) == {"best"} and set(written["n_boot"]) == {FIT["n_boot"]}
    assert not (no_table["folder"] / PHASES_FILE).exists()
    # a fixed layer: the monotone layer 0 shows no dip
    assert set(brain_points(a["brain"], layer=0)["layer"]) == {0}
    # too few checkpoints: a note, no result
    models, _ = read_run_tables("synthetic-b", DATASET, "sim01")
    prepare_model(models[0], 3)
    note = []
    line = fit_brain_phases(models[0], note, **SETTINGS, **FIT)
    assert line == "synthetic-b / sim01: 3 checkpoints, too few for phase detection"
    assert note == ["only 3 checkpoints have a brain score; phase detection needs at least 4"]
    assert models[0]["result"] is None and len(models[0]["raw_curve"]) == 3


def test_pooled_task_curve_weights_families_by_items():
    from triphase.phases.synthesis import pooled_task_curve

    tasks = tasks_table("synthetic-a")
    tasks = tasks[tasks["few_shot"] == 0]
    pooled = pooled_task_curve(tasks, "instruction_following")
    assert pooled["step"].tolist() == sorted(STEPS)
    row = pooled[pooled["checkpoint"] == "step64"].iloc[0]
    families = tasks[(tasks["metric"] == "instruction_following") & (tasks["checkpoint"] == "step64")]
    k = float(np.rint((families["value"] * families["n_items"]).sum()))    # compliant answers over both families
    assert row["value"] == pytest.approx(k / (2 * ITEMS))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(k, 2 * ITEMS))
    # without item counts: plain means of the values and bounds
    unweighted = pooled_task_curve(tasks.drop(columns="n_items"), "accuracy")
    first = tasks[(tasks["metric"] == "accuracy") & (tasks["step"] == 0)]
    assert unweighted.iloc[0]["ci_low"] == pytest.approx(first["ci_low"].mean())
    # solving is not a share: item-weighted means (here over compliant answers), undefined checkpoints left out
    solving = pooled_task_curve(tasks, "solving")
    assert solving["step"].min() == 16
    rows = tasks[(tasks["metric"] == "solving") & (tasks["step"] == 1024)]
    assert solving.set_index("step").loc[1024, "value"] == pytest.approx(
        np.average(rows["value"], weights=rows["n_items"]))


def test_cross_model_table_and_summary(run_home):
    from triphase.phases.synthesis import boundary_text, cross_model_table, summary_markdown

    models, _, notes = _analysed()
    cross = cross_model_table(models)
    assert cross["brain phases"].tolist() == ["computed", "not computed", "computed", "not computed"]
    a = cross.iloc[0]
    phases = models[0]["phases"]
    assert a["IF onset x"] == pytest.approx(phases.loc[(phases["perspective"] == "instruction_following")
                                                     & (phases["source"] == "all"), "x"].iloc[0])
    assert a["breakpoints x [CI]"] == boundary_text(phases[(phases["perspective"] == "brain") & phases["found"]])
    assert a["checkpoints"] == len(STEPS) and a["segments"] == " / ".join(models[0]["result"].segments["label"])
    assert boundary_text(phases.iloc[:0]) == "none"
    text = summary_markdown(models, notes)
    paragraphs = text.split("\n\n")
    assert paragraphs[0] == "**embedded tier: model organism / simulated participant.**"
    assert paragraphs[1].startswith("The embedded results below come from the model organism")
    assert paragraphs[2].startswith("**synthetic-a, simulated sim01.** For the score_mean (all, best layer per "
                                    "checkpoint by cross-validated training score), BIC selects")
    assert "Instruction following (pooled over tasks) first has its 95% CI above 0.5 at step16" in paragraphs[2]
    assert "Pooled solving, after the first rise and the onset of instruction following" in paragraphs[2]
    assert 0 <= a["chance rate of meeting"] <= 1 and 0 < a["p (overlap vs shifts)"] <= 1
    assert paragraphs[3] == ("**synthetic-a, simulated sim02.** No phase analysis (no brain table). "
                             "Not computed: brain, internal, tasks.")
    assert "Not computed: internal, tasks." in paragraphs[4]
    assert paragraphs[4].endswith("instead of the joint test-block replicates.")    # the fallback, said
    assert "No model has a brain-score table" not in text
