"""The synthesis of a run: read the tables of every model, put them on one axis, fit and summarise.

The synthesis chapter (``04_phases``) works on *model records*: one dict per
(series, dataset, subject) with the keys ``series``, ``dataset``, ``subject``,
``folder`` and one table per perspective (``brain``, ``internal``, ``tasks``;
None when missing). The steps below fill in further keys, in this order:

1. :func:`read_run_tables` reads the tables (``status_lines`` says what was found);
2. :func:`prepare_model` restricts them to the chosen checkpoints, few-shot count and
   internal measures, and sets ``axis`` (checkpoints with their x = log10 tokens) and ``tier``;
3. :func:`fit_brain_phases` sets ``raw_curve``, ``curve``, ``x`` and ``result`` (the
   :class:`~triphase.phases.inference.PhaseResult` of the brain score);
4. :func:`write_phases_table` sets ``phases`` (the alignment table, also written as ``phases.parquet``);
5. :func:`cross_model_table` and :func:`summary_markdown` report across models.

The three-panel figure of one record is :func:`triphase.phases.plots.plot_three_perspectives`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from triphase._home import results_dir
from triphase._io import write_parquet
from triphase.brain.sweep import BRAIN_TABLE, best_layers
from triphase.internal.sweep import INTERNAL_TABLE
from triphase.models.checkpoints import Checkpoint, select_checkpoints
from triphase.phases.boundaries import (
    BRAIN,
    INSTRUCTION,
    OVERALL_TASK,
    SOLVING,
    SOLVING_METRICS,
    TASK_FLAT_BOUND,
    brain_curve,
    brain_phases,
)
from triphase.phases.piecewise import MIN_CURVE_POINTS, log_tokens
from triphase.phases.table import DEFAULT_N_SHIFTS, alignment_table, boundary_agreement, table_overlap_chance
from triphase.phases.text import describe_phases
from triphase.plotting import tier_label
from triphase.tasks.scoring import wilson_interval
from triphase.tasks.sweep import RESULTS_FILE as TASKS_TABLE

#: The table file of each perspective in a results folder.
TABLE_FILES = {"brain": BRAIN_TABLE, "internal": INTERNAL_TABLE, "tasks": TASKS_TABLE}
#: Joint replicate tables (contracts of the brain and task chapters): replicate curves of the brain score
#: from one set of resampled test blocks, and per-item task outcomes to resample items jointly.
REPLICATE_FILES = {"brain_replicates": "brain_replicates.parquet", "tasks_items": "tasks_items.parquet"}
#: The cross-perspective table written beside them.
PHASES_FILE = "phases.parquet"
#: brain.parquet's ci_low / ci_high are block-bootstrap intervals of this column only.
BRAIN_CI_MEASURE = "score_mean"
#: Columns of the phases table the chapter shows.
SHOW_COLUMNS = ["perspective", "source", "boundary", "found", "plateau", "x", "ci_low", "ci_high", "checkpoint",
                "tokens_seen", "overlaps_brain", "replicates"]


# --------------------------------------------------------------------------- parameters

def as_list(value) -> list:
    """A notebook parameter that may be one name or a list of names, as a list.

    Examples
    --------
    >>> as_list("organism"), as_list(("a", "b"))
    (['organism'], ['a', 'b'])
    """
    return [value] if isinstance(value, str) else list(value)


def layer_choice(layer) -> int | None:
    """The ``layer`` parameter as the ``layer`` argument of :func:`brain_curve`: None for ``"best"``.

    Examples
    --------
    >>> layer_choice("best") is None, layer_choice(3)
    (True, 3)
    """
    if layer != "best" and not (isinstance(layer, (int, np.integer)) and not isinstance(layer, bool)):
        raise ValueError(f"parameter layer must be 'best' or a hidden-state index (int), got {layer!r}")
    return None if layer == "best" else int(layer)


def layer_description(layer: int | None) -> str:
    """How the layer of the brain score was chosen, in words.

    Examples
    --------
    >>> layer_description(None)
    'best layer per checkpoint by cross-validated training score'
    >>> layer_description(2)
    'layer 2'
    """
    return ("best layer per checkpoint by cross-validated training score" if layer is None
            else f"layer {layer}")


def check_threshold(threshold: float) -> None:
    """Reject an instruction-following threshold outside [0, 1]."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"parameter threshold_following must be a share in [0, 1], got {threshold}")


def brain_replicates(brain_measure: str, has_joint: bool = False) -> str:
    """Where the replicate curves of a brain measure come from: ``"joint"`` or ``"residual"``.

    Only :data:`BRAIN_CI_MEASURE` has stored joint replicates
    (``brain_replicates.parquet``: every checkpoint scored on the same
    resampled test blocks); without them, or for other measures, the AR(1)
    bootstrap of the fit keeps the dependence between checkpoints instead.

    Examples
    --------
    >>> brain_replicates("score_mean", has_joint=True), brain_replicates("score_top10", has_joint=True)
    ('joint', 'residual')
    """
    return "joint" if has_joint and brain_measure == BRAIN_CI_MEASURE else "residual"


def replicates_note(brain_measure: str, has_joint: bool = False) -> str | None:
    """The sentence printed when the brain curve has no joint replicates (None when it has)."""
    if brain_replicates(brain_measure, has_joint) == "joint":
        return None
    if brain_measure != BRAIN_CI_MEASURE:
        return (f"brain_measure={brain_measure!r} has no stored joint replicates (only {BRAIN_CI_MEASURE} has): "
                f"its replicates and monotone null use AR(1) noise fitted to the residuals")
    return (f"{REPLICATE_FILES['brain_replicates']} not found: the brain replicates and monotone null use AR(1) "
            f"noise fitted to the residuals instead of the joint test-block replicates")


# --------------------------------------------------------------------------- reading

def read_table(folder, kind: str) -> pd.DataFrame | None:
    """One perspective's table (``kind`` a key of :data:`TABLE_FILES`) from a results folder, or None."""
    path = folder / TABLE_FILES[kind]
    return pd.read_parquet(path) if path.exists() else None


def read_run_tables(series, dataset: str, subjects) -> tuple[list[dict], pd.DataFrame]:
    """The model records of every (series, subject) of a run, and a status frame of what was found.

    Returns
    -------
    models : list of dict
        Keys ``series``, ``dataset``, ``subject``, ``folder``, ``brain``, ``internal``, ``tasks``.
    status : DataFrame
        One row per model; per perspective ``"missing"`` or ``"<n> rows"``.

    Examples
    --------
    >>> models, status = read_run_tables(["organism"], "simulated", ["sim01"])  # doctest: +SKIP
    """
    models, status_rows = [], []
    for name in as_list(series):
        for subject in as_list(subjects):
            folder = results_dir(name, dataset, subject, create=False)
            tables = {kind: read_table(folder, kind) for kind in TABLE_FILES}
            joint = {kind: (pd.read_parquet(folder / file) if (folder / file).exists() else None)
                     for kind, file in REPLICATE_FILES.items()}
            models.append({"series": name, "dataset": dataset, "subject": subject, "folder": folder, **tables,
                           **joint})
            status_rows.append({"series": name, "dataset": dataset, "subject": subject,
                                **{kind: "missing" if t is None else f"{len(t)} rows" for kind, t in tables.items()}})
    return models, pd.DataFrame(status_rows)


def status_lines(status: pd.DataFrame, n_series: int, n_subjects: int, dataset: str) -> list[str]:
    """The lines that say which tables exist (one per model, after a count).

    Examples
    --------
    >>> status = pd.DataFrame([{"series": "s", "dataset": "d", "subject": "x", "brain": "3 rows",
    ...                         "internal": "missing", "tasks": "missing"}])
    >>> status_lines(status, 1, 1, "d")[1]
    '- s / d-x: found brain (3 rows); not computed: internal, tasks'
    """
    lines = [f"{len(status)} model(s) = {n_series} series x {n_subjects} subject(s) of dataset {dataset!r}"]
    for row in status.to_dict("records"):
        missing = [kind for kind in TABLE_FILES if row[kind] == "missing"]
        found = [f"{kind} ({row[kind]})" for kind in TABLE_FILES if row[kind] != "missing"]
        lines.append(f"- {row['series']} / {row['dataset']}-{row['subject']}: found {', '.join(found) or 'no table'}"
                     + (f"; not computed: {', '.join(missing)}" if missing else ""))
    return lines


# --------------------------------------------------------------------------- the axis

def checkpoint_rows(tables) -> pd.DataFrame:
    """The checkpoints of some tables (None entries skipped), one row each, in training order."""
    frames = [t[["series", "checkpoint", "step", "tokens_seen", "tier"]] for t in tables if t is not None]
    return pd.concat(frames).drop_duplicates(["checkpoint", "step", "tokens_seen"]).sort_values("step")


def chosen_checkpoints(tables, spec) -> list[str]:
    """Names of the checkpoints of some tables chosen by ``spec`` (as in :func:`select_checkpoints`)."""
    rows = checkpoint_rows(tables)
    ckpts = [Checkpoint(r.series, r.checkpoint, int(r.step), int(r.tokens_seen), "table", None, r.tier)
             for r in rows.itertuples()]
    return [c.name for c in select_checkpoints(ckpts, spec)]


def prepare_model(model: dict, checkpoints="all", few_shot: int = 0, solving_metric: str = "solving",
                  internal_measures=()) -> list[str]:
    """Restrict a model record's tables and put its checkpoints on the x axis (in place); return notes.

    The tables are restricted to ``checkpoints``, the tasks table to one
    ``few_shot`` count, the internal table to ``internal_measures`` summarised
    over layers (``head = -1``). Sets ``model["axis"]`` (checkpoints with
    ``x = log_tokens(tokens_seen, step)`` over the union of the three tables) and
    ``model["tier"]`` ("embedded" only if the checkpoints and the brain data
    are); both None when the record has no table.

    Returns
    -------
    list of str
        Notes for the summary (metrics or measures the tables lack).

    Raises
    ------
    ValueError
        When the tasks table lacks the requested ``few_shot`` count.
    """
    notes = []
    for kind in REPLICATE_FILES:
        model.setdefault(kind, None)
    tables = [model[kind] for kind in TABLE_FILES]
    if all(t is None for t in tables):
        model["axis"], model["tier"] = None, None
        return notes
    if checkpoints != "all":
        keep = set(chosen_checkpoints(tables, checkpoints))
        for kind in (*TABLE_FILES, *REPLICATE_FILES):
            if model[kind] is not None:
                model[kind] = model[kind][model[kind]["checkpoint"].isin(keep)]
    if model["tasks"] is not None:
        t = model["tasks"]
        if "few_shot" in t.columns:
            available = sorted(t["few_shot"].dropna().unique().tolist())
            if few_shot not in available:
                raise ValueError(f"parameter few_shot={few_shot!r}: {model['series']} tasks.parquet has few_shot "
                                 f"{available}")
            t = t[t["few_shot"] == few_shot]
        metrics = set(t["metric"])
        for metric in ("instruction_following", solving_metric):
            if metric not in metrics:
                notes.append(f"the tasks table has no metric {metric!r} (it has {', '.join(sorted(metrics))})")
        model["tasks"] = t
        items = model["tasks_items"]
        if items is None:
            notes.append(f"{REPLICATE_FILES['tasks_items']} not found: task replicates use AR(1) noise fitted to "
                         f"the residuals instead of items resampled jointly across checkpoints")
        elif "few_shot" in items.columns:
            model["tasks_items"] = items[items["few_shot"] == few_shot]
    if model["internal"] is not None:
        i = model["internal"]
        absent = [x for x in internal_measures if x not in set(i["measure"])]
        if absent:
            notes.append(f"internal measure(s) {', '.join(absent)} not in internal.parquet")
        model["internal"] = i[i["measure"].isin(internal_measures) & (i["head"] == -1 if "head" in i else True)]
    axis = checkpoint_rows([model[kind] for kind in TABLE_FILES]).reset_index(drop=True)
    # a figure is "embedded" only if both the checkpoints and the brain data are (as in the brain chapter)
    tiers = set(axis["tier"])
    if model["brain"] is not None and "dataset_tier" in model["brain"].columns:
        tiers |= set(model["brain"]["dataset_tier"].dropna())
    model["tier"] = "embedded" if tiers == {"embedded"} else "real"
    axis["x"] = log_tokens(axis["tokens_seen"].to_numpy(), axis["step"].to_numpy())
    model["axis"] = axis
    return notes


def axis_lines(model: dict, notes) -> list[str]:
    """What :func:`prepare_model` did to a record, in words (nothing for a record without tables)."""
    if model["axis"] is None:
        return []
    axis = model["axis"]
    return ([f"{model['series']} / {model['subject']}: {len(axis)} checkpoints on the axis "
             f"(x from {axis['x'].min():.2f} to {axis['x'].max():.2f}); "
             + ", ".join(f"{kind} {0 if model[kind] is None else len(model[kind])} rows" for kind in TABLE_FILES)]
            + [f"   note: {note}" for note in notes])


# --------------------------------------------------------------------------- brain phases

def brain_points(brain: pd.DataFrame, brain_measure: str = "score_mean", region: str = "all",
                 layer: int | None = None) -> pd.DataFrame:
    """The brain-score curve (:func:`brain_curve`), checked to use the brain chapter's layer per checkpoint."""
    curve = brain_curve(brain, score=brain_measure, region=region, layer=layer)
    if layer is None and "cv_score_mean" in brain.columns:
        # the phase curve uses the same layer per checkpoint as the brain chapter's best_layers
        picks = best_layers(brain, by="cv_score_mean", region=region).set_index("checkpoint")["layer"]
        chosen = curve.set_index("checkpoint")["layer"]
        assert (picks.loc[chosen.index] == chosen).all(), "brain_curve and best_layers chose different layers"
    return curve


def fit_brain_phases(model: dict, notes: list, brain_measure: str = "score_mean", region: str = "all",
                     layer: int | None = None, n_boot: int = 200, seed: int = 0, n_null: int = 999,
                     max_breakpoints: int = 4) -> str:
    """Fit the phases of a record's brain score (in place) and return the line that reports it.

    Sets ``raw_curve`` (the curve, or None without a brain table), ``curve`` and
    ``x`` (None when too few checkpoints) and ``result`` (the
    :func:`brain_phases` result, or None). Replicates come from the stored
    joint replicates or the AR(1) bootstrap (:func:`brain_replicates`; a note says which). A curve with
    fewer than ``MIN_CURVE_POINTS`` points adds a note to ``notes``.
    """
    model["result"], model["curve"], model["raw_curve"] = None, None, None
    if model["brain"] is None:
        return f"{model['series']} / {model['subject']}: brain score not computed (no brain.parquet); no phases"
    curve = brain_points(model["brain"], brain_measure, region, layer)
    model["raw_curve"] = curve
    if len(curve) < MIN_CURVE_POINTS:
        notes.append(
            f"only {len(curve)} checkpoints have a brain score; phase detection needs at least {MIN_CURVE_POINTS}")
        return f"{model['series']} / {model['subject']}: {len(curve)} checkpoints, too few for phase detection"
    x_of = dict(zip(model["axis"]["checkpoint"], model["axis"]["x"]))
    x = np.array([x_of[c] for c in curve["checkpoint"]])
    model["curve"], model["x"] = curve, x
    joint = model.get("brain_replicates")
    replicates = brain_replicates(brain_measure, joint is not None)
    note = replicates_note(brain_measure, joint is not None)
    if note:
        notes.append(note)
    model["result"] = brain_phases(model["brain"], score=brain_measure, region=region, layer=layer, n_boot=n_boot,
                                   seed=seed, x=x, n_null=n_null, max_breakpoints=max_breakpoints,
                                   replicates=replicates, replicates_df=joint if replicates == "joint" else None)
    return (f"{model['series']} / {model['subject']}: curve of {len(curve)} checkpoints "
            f"(layers {sorted(set(curve['layer'].astype(int)))}), x shape {x.shape}")


# --------------------------------------------------------------------------- the phases table

def write_phases_table(model: dict, threshold: float = 0.5, brain_measure: str = "score_mean",
                       region: str = "all", layer: int | None = None, solving_metrics=SOLVING_METRICS,
                       n_boot: int = 200, n_null: int = 999, seed: int = 0, max_breakpoints: int = 4,
                       flat_bound: float = TASK_FLAT_BOUND, n_shifts: int = DEFAULT_N_SHIFTS) -> str:
    """Build a record's cross-perspective table (:func:`alignment_table`), write it, return the report line.

    Sets ``model["phases"]`` (None without brain-score phases, and then nothing
    is written). The table is written atomically as :data:`PHASES_FILE` in the
    record's folder, with the run's settings as columns. Sets ``model["overlap"]``, the
    chance comparison of the overlaps (:func:`~triphase.phases.table.table_overlap_chance`).
    """
    model["phases"] = None
    if model["result"] is None:
        return f"{model['series']} / {model['subject']}: phases.parquet not written (no brain-score phases)"
    joint = model.get("brain_replicates")
    replicate_options = ({"brain_replicates_df": joint} if brain_replicates(brain_measure, joint is not None) == "joint"
                         else {"replicates": "residual"})
    table = alignment_table(model["brain"], tasks_df=model["tasks"], internal_df=model["internal"],
                            threshold=threshold, score=brain_measure, region=region, layer=layer,
                            solving_metrics=solving_metrics, n_boot=n_boot, n_null=n_null, seed=seed,
                            max_breakpoints=max_breakpoints, items_df=model.get("tasks_items"),
                            flat_bound=flat_bound, **replicate_options)
    # the table's brain rows come from the same fit as the figure
    brain_x = table.loc[(table["perspective"] == BRAIN) & table["found"], "x"].to_numpy()
    assert np.allclose(brain_x, model["result"].breakpoints), (brain_x, model["result"].breakpoints)
    table["dataset"] = model["dataset"]
    table["subject"] = model["subject"]
    table["brain_measure"] = brain_measure
    table["brain_layer"] = "best" if layer is None else str(layer)
    table["n_boot"] = n_boot
    table["n_null"] = n_null
    table["flat_bound"] = flat_bound
    model["overlap"] = table_overlap_chance(table, (model["axis"]["x"].min(), model["axis"]["x"].max()), n_shifts)
    path = write_parquet(table, model["folder"] / PHASES_FILE)
    model["phases"] = table
    return f"{model['series']} / {model['subject']}: {table.shape[0]} boundaries x {table.shape[1]} columns -> {path}"


# --------------------------------------------------------------------------- task curves for the figure

def pooled_task_curve(tasks: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A task metric pooled over task families per checkpoint, with a 95% Wilson interval.

    Families are pooled item-weighted (``n_items``); without item counts the
    values and their interval bounds are averaged. Solving metrics (not shares)
    are pooled as item-weighted means of the values and of the bounds.

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": ["a", "a"], "step": [1, 1], "metric": "accuracy",
    ...                   "value": [0.5, 1.0], "n_items": [10, 10], "ci_low": 0.0, "ci_high": 1.0})
    >>> pooled_task_curve(t, "accuracy")["value"].tolist()
    [0.75]
    """
    rows = tasks[(tasks["metric"] == metric) & tasks["value"].notna()]
    out = []
    for (checkpoint, step), group in rows.groupby(["checkpoint", "step"], sort=False):
        n = group["n_items"].sum() if "n_items" in group and group["n_items"].notna().all() else 0
        if n > 0 and metric in SOLVING_METRICS:
            # not a share: item-weighted mean of the values and of their interval bounds
            weights = group["n_items"] / n
            out.append((checkpoint, step, (group["value"] * weights).sum(), (group["ci_low"] * weights).sum(),
                        (group["ci_high"] * weights).sum()))
        elif n > 0:
            k = float(np.rint((group["value"] * group["n_items"]).sum()))
            low, high = wilson_interval(k, int(n))
            out.append((checkpoint, step, k / n, low, high))
        else:
            out.append((checkpoint, step, group["value"].mean(), group["ci_low"].mean(), group["ci_high"].mean()))
    return pd.DataFrame(out, columns=["checkpoint", "step", "value", "ci_low", "ci_high"]).sort_values("step")


# --------------------------------------------------------------------------- across models

def boundary_text(rows: pd.DataFrame) -> str:
    """Boundaries as ``x [ci_low, ci_high]``, ``"; "``-joined (``"none"`` when empty).

    Examples
    --------
    >>> boundary_text(pd.DataFrame({"x": [4.2], "ci_low": [4.0], "ci_high": [4.5]}))
    '4.20 [4.00, 4.50]'
    """
    return "; ".join(f"{r.x:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in rows.itertuples()) or "none"


def cross_model_table(models: list[dict], solving_metric: str = "solving") -> pd.DataFrame:
    """One row per model: brain breakpoints and segments, the pattern test, the task boundaries, the overlaps."""
    cross_rows = []
    for m in models:
        base = {"series": m["series"], "dataset": m["dataset"], "subject": m["subject"]}
        if m["result"] is None:
            cross_rows.append({**base, "tier": m["tier"], "brain phases": "not computed"})
            continue
        result, phases = m["result"], m["phases"]
        others = phases[(phases["perspective"] != BRAIN) & phases["found"]]
        onset = phases[(phases["perspective"] == INSTRUCTION) & (phases["source"] == OVERALL_TASK) & phases["found"]]
        consolidation = phases[(phases["perspective"] == SOLVING) & phases["found"]
                               & (phases["source"] == f"{OVERALL_TASK} ({solving_metric})")
                               & (phases["boundary"] == "consolidation_onset")]
        overlap = m.get("overlap") or {}
        cross_rows.append({
            **base, "tier": m["tier"], "brain phases": "computed",
            "checkpoints": len(m["curve"]), "breakpoints": result.n_breakpoints,
            "breakpoints x [CI]": boundary_text(phases[(phases["perspective"] == BRAIN) & phases["found"]]),
            "segments": " / ".join(result.segments["label"]),
            "pattern": result.pattern, "pattern stability": result.pattern_stability,
            "p monotone": result.p_monotone, "triple": result.triple,
            "IF onset x": onset["x"].iloc[0] if len(onset) else np.nan,
            f"{solving_metric} consolidation x": consolidation["x"].iloc[0] if len(consolidation) else np.nan,
            "boundaries meeting a brain CI": f"{int(others['overlaps_brain'].fillna(False).sum())} of {len(others)}",
            "chance rate of meeting": overlap.get("chance_rate", np.nan),
            "p (overlap vs shifts)": overlap.get("p_value", np.nan),
        })
    return pd.DataFrame(cross_rows)


def summary_markdown(models: list[dict], notes: dict, brain_measure: str = "score_mean", region: str = "all",
                     layer: int | None = None, threshold: float = 0.5, solving_metric: str = "solving") -> str:
    """The chapter's summary, every sentence generated from the records' numbers (Markdown).

    ``notes`` maps ``(series, subject)`` to the notes gathered by
    :func:`prepare_model` and :func:`fit_brain_phases`.
    """
    lines = []
    tiers = sorted({m["tier"] for m in models if m["tier"]})
    for tier in tiers:
        lines.append(f"**{tier_label(tier)}.**")
    if "embedded" in tiers:
        lines.append("The embedded results below come from the model organism and the simulated participant; "
                     "they test the pipeline and show what the method finds on a small model, not the paper's "
                     "claims, which concern 7B-class models and recorded fMRI (Nakagi et al. 2025).")
    layer_text = layer_description(layer)
    for m in models:
        key = (m["series"], m["subject"])
        head = f"**{m['series']}, {m['dataset']} {m['subject']}.**"
        missing = [kind for kind in TABLE_FILES if m[kind] is None]
        if m["result"] is None:
            reason = "no brain table" if m["brain"] is None else "too few checkpoints with a brain score"
            lines.append(f"{head} No phase analysis ({reason}). "
                         + (f"Not computed: {', '.join(missing)}." if missing else "All three tables were found.")
                         + "".join(f" Note: {n}." for n in notes.get(key, [])))
            continue
        text = [describe_phases(m["result"], name=f"the {brain_measure} ({region}, {layer_text})")]
        phases = m["phases"]
        for r in phases[(phases["perspective"] == INSTRUCTION) & (phases["source"] == OVERALL_TASK)].itertuples():
            text.append(f"Instruction following (pooled over tasks) first has its 95% CI above {threshold:g} at "
                        f"{r.checkpoint} (x = {r.x:.2f}, between {r.ci_low:.2f} and {r.ci_high:.2f})." if r.found else
                        f"Instruction following (pooled over tasks) never has its 95% CI above {threshold:g}.")
        solving_rows = phases[phases["perspective"] == SOLVING]
        for metric in dict.fromkeys(source.rsplit(" (", 1)[-1].rstrip(")") for source in solving_rows["source"]):
            rows = solving_rows[solving_rows["source"] == f"{OVERALL_TASK} ({metric})"]
            found_rows = rows[rows["found"]]
            if len(found_rows):
                where = "; ".join(f"{r.boundary.replace('_', ' ')} at x = {r.x:.2f} (CI {r.ci_low:.2f} to "
                                  f"{r.ci_high:.2f})" for r in found_rows.itertuples())
                plateau = found_rows["plateau"].iloc[0]
                kind = ("flat within the smallest slope of interest" if plateau == "flat"
                        else "not shown flat: no evidence of change")
                text.append(f"Pooled {metric}, after the first rise and the onset of instruction following: "
                            f"{where}; the plateau is {kind}.")
            elif len(rows):
                text.append(f"Pooled {metric} shows no plateau followed by a rise after its first rise and the "
                            f"onset of instruction following.")
        found = phases[(phases["perspective"] != BRAIN) & phases["found"]]
        overlap = m.get("overlap") or {}
        if len(found) and m["result"].n_breakpoints:
            meet = found[found["overlaps_brain"].fillna(False).astype(bool)]
            per = ", ".join(f"{perspective.replace('_', ' ')} {int(g['overlaps_brain'].fillna(False).sum())} "
                            f"of {len(g)}" for perspective, g in found.groupby("perspective", sort=False))
            sentence = (f"{len(meet)} of {len(found)} boundaries of the other perspectives have an interval that "
                        f"meets a brain breakpoint's interval ({per})")
            if np.isfinite(overlap.get("chance_rate", np.nan)):
                sentence += (f"; shifting all boundaries circularly along the axis, {100 * overlap['chance_rate']:.0f}% "
                             f"meet one by chance (p = {overlap['p_value']:.2g} for at least the observed count), "
                             + ("so the overlaps are more than chance would give."
                                if overlap["p_value"] <= 0.05 else "so the overlaps are no more than chance gives."))
            else:
                sentence += "."
            text.append(sentence)
        if missing:
            text.append(f"Not computed: {', '.join(missing)}.")
        text += [f"Note: {n}." for n in notes.get(key, [])]
        lines.append(head + " " + " ".join(text))
    if not any(m["result"] is not None for m in models):
        lines.append("No model has a brain-score table with enough checkpoints, so no phases were detected.")
    return "\n\n".join(lines)


def agreement_across_models(models: list[dict]) -> tuple[pd.DataFrame | None, str]:
    """Which boundaries agree across the series of this run (e.g. seeds), per subject, and a sentence saying so.

    Models are compared across series within one subject (the task and internal
    rows do not depend on the subject, so comparing subjects would agree by
    construction), with :func:`triphase.phases.table.boundary_agreement`;
    ``(None, reason)`` when no subject has two series with a phases table.
    """
    frames, lines = [], []
    subjects = sorted({m["subject"] for m in models})
    for subject in subjects:
        tables = [m["phases"] for m in models if m["subject"] == subject and m.get("phases") is not None]
        if len(tables) < 2:
            continue
        agreement = boundary_agreement(pd.concat(tables, ignore_index=True), by="series")
        agreement.insert(0, "subject", subject)
        frames.append(agreement)
        agreeing = agreement[agreement["agree"]]
        named = "; ".join(f"{r.perspective} {r.source}: {r.boundary} (common interval {r.common_low:.2f} to "
                          f"{r.common_high:.2f})" for r in agreeing.itertuples())
        lines.append(f"{subject}: {len(agreeing)} of {len(agreement)} boundaries are found by all {len(tables)} "
                     f"series with intervals sharing a point" + (f": {named}." if named else "."))
    if not frames:
        return None, ("Fewer than two series per subject in this run: agreement across models (such as training "
                      "seeds) needs two or more.")
    return pd.concat(frames, ignore_index=True), " ".join(lines)
