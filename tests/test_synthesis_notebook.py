"""The synthesis notebook (04_phases) on fabricated, clearly synthetic result tables.

The tables are written by this test into a temporary data home: a series
``synthetic-a`` whose best layer (by cross-validated score) carries a planted
rise-fall-rise brain-score curve, while another layer with higher test scores at
the dip rises monotonically; its tasks and internal tables carry boundaries at
known checkpoints. ``synthetic-b`` has a brain table only, and subject ``sim02``
has no table at all. The notebook must find the planted boundaries, write
``phases.parquet`` with the contract columns, and report the missing tables in
words instead of failing.
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
                    "pattern_share", "p_monotone"]
PARAMETERS = dict(series=["synthetic-a", "synthetic-b"], dataset=DATASET, subjects=["sim01", "sim02"],
                  checkpoints="all", device="cpu", seed=0, dataset_options={}, n_boot=60, n_null=59)


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


def tasks_table(series: str) -> pd.DataFrame:
    rows = []
    consolidation = X >= PLANTED_BREAKS[1]
    for few_shot in (0, 2):
        following = np.where(STEPS >= 64, 0.9, 0.05) if few_shot == 0 else np.full(X.size, 0.95)
        accuracy = np.where(consolidation, 0.1 + 0.5 * (X - PLANTED_BREAKS[1]), 0.1)
        for task in ("yesno", "choice"):
            for metric, value in (("instruction_following", following), ("accuracy", accuracy),
                                  ("mc_chance", np.full(X.size, 0.5))):
                k = np.rint(value * ITEMS)
                frame = _join(series).assign(task=task, few_shot=few_shot, metric=metric, value=k / ITEMS,
                                             n_items=ITEMS)
                bounds = [wilson_interval(int(successes), ITEMS) for successes in k]
                frame["ci_low"], frame["ci_high"] = np.array(bounds).T
                rows.append(frame)
    return pd.concat(rows, ignore_index=True)


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


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    import papermill as pm

    home = tmp_path_factory.mktemp("synthesis_home")
    rng = np.random.default_rng(7)
    _write(home, "synthetic-a", "sim01", "brain.parquet", brain_table("synthetic-a", "sim01", True, rng))
    _write(home, "synthetic-a", "sim01", "tasks.parquet", tasks_table("synthetic-a"))
    _write(home, "synthetic-a", "sim01", "internal.parquet", internal_table("synthetic-a", rng))
    _write(home, "synthetic-b", "sim01", "brain.parquet", brain_table("synthetic-b", "sim01", False, rng))
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
    onset = table[(table["perspective"] == "instruction_following") & (table["source"] == "all")].iloc[0]
    # few_shot=0 rows cross at step64; the few_shot=2 rows (0.95 from step0) must have been left out
    assert onset["found"] and onset["checkpoint"] == "step64"
    x_of = dict(zip([f"step{s}" for s in STEPS], X))
    consolidation = table[(table["perspective"] == "task_accuracy") & (table["source"] == "all (accuracy)")
                          & (table["boundary"] == "consolidation_onset")].iloc[0]
    assert consolidation["found"] and abs(consolidation["x"] - PLANTED_BREAKS[1]) < BREAK_TOLERANCE
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
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert images == 2                                       # one three-panel figure per model with tables
