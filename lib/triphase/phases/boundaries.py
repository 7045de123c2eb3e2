"""Phase boundaries of each perspective: brain curves and their phases, instruction-following onset, task accuracy phases, internal change points.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from triphase.internal.change_points import OUTPUT_COLUMNS as _CHANGE_POINT_COLUMNS
from triphase.internal.change_points import internal_change_points as _internal_change_points
from triphase.phases.inference import PhaseResult, detect_phases
from triphase.phases.piecewise import (
    DEFAULT_CI_LEVEL,
    DEFAULT_N_BOOT,
    FLAT,
    MIN_CURVE_POINTS,
    NO_CHANGE,
    RISING,
    log_tokens,
)

#: Task metrics that measure solving, not format: chance-corrected accuracy among compliant answers,
#: and log-likelihood multiple-choice accuracy minus chance.
SOLVING_METRICS = ("solving", "mc_above_chance")
#: Smallest slope of interest of a task curve (share per log10 token): a segment whose slope interval
#: lies inside +-this bound is "flat"; otherwise a non-rising segment has "no evidence of change".
TASK_FLAT_BOUND = 0.05
#: Name of the pooled row over all tasks.
OVERALL_TASK = "all"
#: Perspective names used in the alignment table.
BRAIN, INSTRUCTION, SOLVING, INTERNAL = "brain", "instruction_following", "task_solving", "internal"
JOIN_COLUMNS = ["series", "checkpoint", "step", "tokens_seen", "tier"]


# --------------------------------------------------------------------------- tables

def _require(table: pd.DataFrame, columns, name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} table lacks column(s) {missing}; it has {list(table.columns)}")


def _one_tier(rows: pd.DataFrame, name: str) -> str:
    tiers = sorted(set(rows["tier"]))
    if len(tiers) != 1:
        raise ValueError(f"{name} rows of one series must share one tier, found {tiers}")
    return tiers[0]


def _axis(*tables: pd.DataFrame) -> pd.DataFrame:
    """Checkpoints of all tables (one series) with a common x from :func:`log_tokens`."""
    frames = [t[["checkpoint", "step", "tokens_seen"]] for t in tables if t is not None and len(t)]
    axis = pd.concat(frames).drop_duplicates().sort_values(["step", "tokens_seen"]).reset_index(drop=True)
    if axis["checkpoint"].duplicated().any():
        dup = axis.loc[axis["checkpoint"].duplicated(), "checkpoint"].tolist()
        raise ValueError(f"checkpoint(s) {dup[:5]} appear with different step/tokens_seen across tables")
    axis["x"] = log_tokens(axis["tokens_seen"].to_numpy(), axis["step"].to_numpy())
    return axis


def _nearest_checkpoint(axis: pd.DataFrame, x: float) -> dict:
    if not np.isfinite(x):
        return {"checkpoint": None, "step": np.nan, "tokens_seen": np.nan}
    row = axis.iloc[int(np.argmin(np.abs(axis["x"].to_numpy() - x)))]
    return {"checkpoint": row["checkpoint"], "step": row["step"], "tokens_seen": row["tokens_seen"]}


def _wilson(successes: float, n: float, level: float) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def _pooled_tasks(rows: pd.DataFrame, ci_level: float) -> pd.DataFrame:
    """Per checkpoint, the item-weighted mean over tasks with a Wilson interval.

    Where ``n_items`` is missing the mean of the values and of the CI bounds is
    used (averaging bounds gives an interval at least as wide as the mean's).
    """
    out = []
    for checkpoint, group in rows[rows["value"].notna()].groupby("checkpoint", sort=False):
        first = group.iloc[0]
        has_counts = "n_items" in group and group["n_items"].notna().all() and group["n_items"].sum() > 0
        if has_counts and first["metric"] in SOLVING_METRICS:
            # not a share: item-weighted means of the values and of the interval bounds
            n_items = group["n_items"].sum()
            weights = group["n_items"] / n_items
            value, low, high = ((group[c] * weights).sum() for c in ("value", "ci_low", "ci_high"))
        elif has_counts:
            n_items = group["n_items"].sum()
            value = float((group["value"] * group["n_items"]).sum() / n_items)
            low, high = _wilson(value * n_items, n_items, ci_level)
        else:
            n_items = np.nan
            value, low, high = group["value"].mean(), group["ci_low"].mean(), group["ci_high"].mean()
        out.append({"series": first["series"], "checkpoint": checkpoint, "step": first["step"],
                    "tokens_seen": first["tokens_seen"], "tier": first["tier"], "task": OVERALL_TASK,
                    "metric": first["metric"], "value": value, "ci_low": low, "ci_high": high,
                    "n_items": n_items})
    return pd.DataFrame(out)


def _task_curves(tasks_df: pd.DataFrame, metric: str, ci_level: float, include_overall: bool = True):
    """Yield (series, task, rows sorted by step) for one metric, plus the pooled task."""
    _require(tasks_df, JOIN_COLUMNS + ["task", "metric", "value", "ci_low", "ci_high"], "tasks")
    rows = tasks_df[tasks_df["metric"] == metric]
    if "few_shot" in rows and rows["few_shot"].nunique() > 1:
        raise ValueError(f"tasks table mixes few_shot counts {sorted(rows['few_shot'].unique().tolist())}; "
                         f"restrict it to one before building curves")
    if rows.empty:
        raise ValueError(f"tasks table has no rows with metric {metric!r}; metrics present: "
                         f"{sorted(tasks_df['metric'].unique())}")
    for series, srows in rows.groupby("series", sort=True):
        tasks = sorted(set(srows["task"]))
        for task in tasks:
            yield series, task, srows[srows["task"] == task].sort_values("step")
        if include_overall and OVERALL_TASK not in tasks:
            pooled = _pooled_tasks(srows[srows["task"] != OVERALL_TASK].sort_values("step"), ci_level)
            yield series, OVERALL_TASK, pooled.sort_values("step")


def instruction_following_onset(tasks_df: pd.DataFrame, threshold: float = 0.5,
                                metric: str = "instruction_following",
                                ci_level: float = DEFAULT_CI_LEVEL) -> pd.DataFrame:
    """First checkpoint whose compliance CI lies above ``threshold``, per task and pooled.

    The onset lies between the previous checkpoint and that one: ``x`` is the
    onset checkpoint's position, ``ci_low`` the previous checkpoint's
    (checkpoint resolution, no bootstrap). The pooled row (task ``"all"``) uses
    the item-weighted share over tasks with a Wilson interval at
    ``ci_level``.

    Parameters
    ----------
    tasks_df : DataFrame
        ``tasks.parquet`` rows (series, checkpoint, step, tokens_seen, task,
        metric, value, ci_low, ci_high, n_items, tier).
    threshold : float
        Compliance level the CI's lower bound must exceed.
    metric : str
        The metric holding compliance.

    Returns
    -------
    DataFrame
        One row per series x task: series, tier, task, metric, threshold,
        found, checkpoint, step, tokens_seen, x, ci_low, ci_high.

    Examples
    --------
    >>> t = pd.DataFrame({"series": "s", "checkpoint": ["step0", "step1", "step2"], "step": [0, 1, 2],
    ...                   "tokens_seen": [0, 10, 20], "tier": "embedded", "task": "copy",
    ...                   "metric": "instruction_following", "value": [0.0, 0.5, 0.9],
    ...                   "ci_low": [0.0, 0.3, 0.8], "ci_high": [0.1, 0.7, 1.0], "n_items": 50})
    >>> instruction_following_onset(t)[["task", "checkpoint"]].values.tolist()
    [['copy', 'step2'], ['all', 'step2']]
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a share in [0, 1], got {threshold}")
    out = []
    for series, task, rows in _task_curves(tasks_df, metric, ci_level):
        axis = _axis(tasks_df[tasks_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        xs = np.array([x_of[c] for c in rows["checkpoint"]])
        above = np.flatnonzero(rows["ci_low"].to_numpy() > threshold)
        base = {"series": series, "tier": _one_tier(tasks_df[tasks_df["series"] == series], "tasks"),
                "task": task, "metric": metric, "threshold": threshold}
        if above.size == 0:
            out.append({**base, "found": False, "checkpoint": None, "step": np.nan, "tokens_seen": np.nan,
                        "x": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            continue
        i = int(above[0])
        row = rows.iloc[i]
        out.append({**base, "found": True, "checkpoint": row["checkpoint"], "step": row["step"],
                    "tokens_seen": row["tokens_seen"], "x": xs[i], "ci_low": xs[max(i - 1, 0)], "ci_high": xs[i]})
    return pd.DataFrame(out)


def _item_metric(compliant: np.ndarray, correct: np.ndarray, mc_correct: np.ndarray, chance: float,
                 mc_chance: float, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A task metric and its item count per checkpoint from outcome counts summed over (resampled) items.

    Arrays hold per-checkpoint sums (any leading shape); returns (value, n_items).
    """
    compliant, correct = np.asarray(compliant, float), np.asarray(correct, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "solving":
            given = correct / compliant
            return (given - chance) / (1 - chance), compliant
        if metric == "mc_above_chance":
            mc_sum, mc_n = mc_correct
            return mc_sum / mc_n - mc_chance, mc_n
    raise ValueError(f"metric {metric!r} has no item-level replicates; use one of {SOLVING_METRICS} or "
                     f"'instruction_following'")


def _item_matrix(rows: pd.DataFrame, column: str, checkpoints: list) -> np.ndarray:
    """One task's item outcomes as an (n_items, n_checkpoints) array, checkpoints in the given order."""
    table = rows.pivot_table(index="item", columns="checkpoint", values=column, aggfunc="first")
    missing = [c for c in checkpoints if c not in table.columns]
    if missing:
        raise ValueError(f"tasks_items lacks checkpoint(s) {missing[:5]} for task {rows['task'].iloc[0]!r}")
    return table[checkpoints].to_numpy(dtype=float)


def _defined_sums(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums of the defined (finite) item values and of the weights of defined items."""
    return weights @ np.nan_to_num(values), weights @ np.isfinite(values).astype(float)


def item_replicates(items: pd.DataFrame, checkpoints, metric: str, n_boot: int, rng,
                    task: str | None = None) -> np.ndarray:
    """Replicate curves of a task metric from items resampled *jointly* across checkpoints.

    The same resampled item set (drawn with replacement, per task) is scored
    at every checkpoint, so the replicates keep the dependence that sharing
    items creates between checkpoints. The pooled task (``task`` None or
    ``"all"``) is the item-weighted mean over tasks, as in the tasks table.
    A replicate undefined at a checkpoint (no compliant resampled item for
    ``solving``) takes the point value there.

    Parameters
    ----------
    items : DataFrame
        ``tasks_items.parquet`` rows of one series and few-shot count:
        checkpoint, task, item, compliant, correct, mc_correct, chance
        (``mc_chance`` used for ``mc_above_chance`` when present).
    checkpoints : sequence of str
        The curve's checkpoints, in order.
    metric : {"instruction_following", "solving", "mc_above_chance"}

    Returns
    -------
    numpy.ndarray, shape (n_boot, n_checkpoints)

    Examples
    --------
    >>> items = pd.DataFrame({"checkpoint": ["a"] * 4 + ["b"] * 4, "task": "t", "item": [0, 1, 2, 3] * 2,
    ...                       "compliant": [1, 1, 0, 0, 1, 1, 1, 1], "correct": [1, 0, 0, 0, 1, 1, 1, 0],
    ...                       "mc_correct": 1.0, "chance": 0.5})
    >>> item_replicates(items, ["a", "b"], "instruction_following", 3, np.random.default_rng(0)).shape
    (3, 2)
    """
    _require(items, ["checkpoint", "task", "item", "compliant", "correct", "chance"], "tasks_items")
    checkpoints = list(checkpoints)
    rows = items if task in (None, OVERALL_TASK) else items[items["task"] == task]
    if rows.empty:
        raise ValueError(f"tasks_items has no rows for task {task!r}")
    value_sum, weight_sum, point_sum, point_weight = 0.0, 0.0, 0.0, 0.0
    for _, trows in rows.groupby("task", sort=True):
        compliant, correct = _item_matrix(trows, "compliant", checkpoints), _item_matrix(trows, "correct", checkpoints)
        chance = float(trows["chance"].iloc[0])
        mc_chance = float(trows["mc_chance"].iloc[0]) if "mc_chance" in trows else chance
        mc = (_item_matrix(trows, "mc_correct", checkpoints) if "mc_correct" in trows
              else np.full_like(compliant, np.nan))
        n_items = compliant.shape[0]
        index = rng.integers(0, n_items, size=(n_boot, n_items))
        counts = np.stack([np.bincount(row, minlength=n_items) for row in index]).astype(float)  # (n_boot, items)
        mc_rep, mc_point = _defined_sums(mc, counts), _defined_sums(mc, np.ones((1, n_items)))
        if metric == "instruction_following":
            rep_value, rep_n = (counts @ compliant) / n_items, np.full((n_boot, len(checkpoints)), n_items)
            point_value, point_n = compliant.mean(axis=0)[None], np.full((1, len(checkpoints)), n_items)
        else:
            rep_value, rep_n = _item_metric(counts @ compliant, counts @ (compliant * correct), mc_rep, chance,
                                            mc_chance, metric)
            point_value, point_n = _item_metric(compliant.sum(axis=0)[None], (compliant * correct).sum(axis=0)[None],
                                                mc_point, chance, mc_chance, metric)
        value_sum = value_sum + np.nan_to_num(rep_value) * rep_n
        weight_sum = weight_sum + np.where(np.isfinite(rep_value), rep_n, 0.0)
        point_sum = point_sum + np.nan_to_num(point_value) * point_n
        point_weight = point_weight + np.where(np.isfinite(point_value), point_n, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = point_sum / point_weight
        replicate = value_sum / weight_sum
    return np.where(np.isfinite(replicate), replicate, np.broadcast_to(point, replicate.shape))


def solving_phases(tasks_df: pd.DataFrame, metric: str = "solving", tasks=None, replicates: str = "items",
                   items_df: pd.DataFrame | None = None, onset_x=None, flat_bound: float | None = TASK_FLAT_BOUND,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0, return_results: bool = False, **detect_kwargs):
    """Stagnation and consolidation of solving, after the first rise and after instruction-following onset.

    The curve of ``metric`` (default ``solving``, chance-corrected accuracy
    among compliant answers; or ``mc_above_chance``) is split by
    :func:`detect_phases`. *Stagnation* is the first segment that is not
    rising (``"flat"`` within ``+-flat_bound``, or ``"no evidence of change"``;
    the ``plateau`` column says which) that comes after a rising segment, ends
    after the onset ``onset_x`` of instruction following, and is followed by a
    rising segment (*consolidation*). A floor before any rise (a checkpoint-0
    model at zero) is therefore never stagnation. Boundaries reported:
    ``stagnation_start`` (the breakpoint opening the plateau) and
    ``consolidation_onset`` (the breakpoint closing it), each with its
    bootstrap CI; without such a plateau one row with ``found == False``.
    Checkpoints where the metric is undefined (``solving`` before any
    compliant answer) are left out of the curve.

    Parameters
    ----------
    tasks_df : DataFrame
        ``tasks.parquet`` rows of one few-shot count.
    metric : str
        ``"solving"`` or ``"mc_above_chance"`` (other metrics are accepted, e.g.
        ``"accuracy"``, but rise with format-following alone).
    replicates : {"items", "residual"}
        ``"items"``: items resampled jointly across checkpoints
        (:func:`item_replicates`, needs ``items_df``); ``"residual"``: the AR(1)
        bootstrap of :func:`detect_phases`. ``"items"`` without ``items_df``
        falls back to ``"residual"`` (the ``replicates`` column says which).
    items_df : DataFrame, optional
        ``tasks_items.parquet`` rows (same series and few-shot count).
    onset_x : float or dict, optional
        Instruction-following onset (x), or ``{series: x}``; NaN / None: no constraint.
    flat_bound : float, optional
        Smallest slope of interest (share per log10 token), :data:`TASK_FLAT_BOUND`.
    n_boot, seed, **detect_kwargs
        Passed to :func:`detect_phases` (``n_null`` defaults to 0 here).
    return_results : bool
        Also return ``{(series, task): PhaseResult}``.

    Returns
    -------
    DataFrame (and dict if ``return_results``)
        Rows: series, tier, task, metric, boundary, found, plateau, x, ci_low, ci_high, replicates.
    """
    if replicates not in ("items", "residual"):
        raise ValueError(f"replicates must be 'items' or 'residual', got {replicates!r}")
    detect_kwargs.setdefault("n_null", 0)
    rng = np.random.default_rng(seed)
    rows_out, results = [], {}
    for series, task, rows in _task_curves(tasks_df, metric, DEFAULT_CI_LEVEL):
        if tasks is not None and task not in tasks:
            continue
        rows = rows[rows["value"].notna()]
        base = {"series": series, "tier": _one_tier(tasks_df[tasks_df["series"] == series], "tasks"),
                "task": task, "metric": metric}
        if len(rows) < MIN_CURVE_POINTS:
            rows_out.append({**base, "boundary": "consolidation_onset", "found": False, "plateau": None,
                             "x": np.nan, "ci_low": np.nan, "ci_high": np.nan, "replicates": "none"})
            continue
        axis = _axis(tasks_df[tasks_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        x = np.array([x_of[c] for c in rows["checkpoint"]])
        source, reps = "residual", None
        if replicates == "items" and items_df is not None and n_boot > 0:
            series_items = items_df[items_df["series"] == series] if "series" in items_df else items_df
            reps = item_replicates(series_items, rows["checkpoint"].tolist(), metric, n_boot, rng, task)
            source = "items"
        result = detect_phases(x, rows["value"].to_numpy(dtype=float), replicates=reps, n_boot=n_boot,
                               seed=seed, flat_bound=flat_bound, **detect_kwargs)
        results[(series, task)] = result
        base["replicates"] = source
        onset = onset_x.get(series) if isinstance(onset_x, dict) else onset_x
        onset = -np.inf if onset is None or not np.isfinite(onset) else float(onset)
        labels = result.segments["label"].tolist()
        first_rise = next((i for i, label in enumerate(labels) if label == RISING), None)
        pair = None if first_rise is None else next(
            (i for i in range(first_rise + 1, len(labels) - 1)
             if labels[i] in (FLAT, NO_CHANGE) and labels[i + 1] == RISING and result.breakpoints[i] > onset), None)
        if pair is None:
            rows_out.append({**base, "boundary": "consolidation_onset", "found": False, "plateau": None,
                             "x": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            continue
        for boundary, j in (("stagnation_start", pair - 1), ("consolidation_onset", pair)):
            rows_out.append({**base, "boundary": boundary, "found": True, "plateau": labels[pair],
                             "x": result.breakpoints[j], "ci_low": result.breakpoint_ci[j, 0],
                             "ci_high": result.breakpoint_ci[j, 1]})
    frame = pd.DataFrame(rows_out)
    return (frame, results) if return_results else frame


def internal_change_points(internal_df: pd.DataFrame, layer=None, measures=None, **kwargs) -> pd.DataFrame:
    """Change points of internal measures on the phase analysis' axis, with p-values and intervals.

    A thin wrapper of :func:`triphase.internal.change_points.internal_change_points`
    (largest change between checkpoints tested against the curve's usual step,
    onsets of induction measures, bootstrap intervals; constant curves are never
    found; per-head rows never mixed with layer means) that puts each series'
    checkpoints on this module's axis (:func:`_axis`).

    Returns
    -------
    DataFrame
        Rows: series, tier, measure, layer, head, boundary, found, x, ci_low,
        ci_high, p_value, statistic, n_checkpoints, reason.
    """
    _require(internal_df, JOIN_COLUMNS + ["layer", "head", "measure", "value"], "internal")
    frames = []
    for series, srows in internal_df.groupby("series", sort=True):
        axis = _axis(srows)
        frames.append(_internal_change_points(srows, layer=layer, measures=measures,
                                              x_of=dict(zip(axis["checkpoint"], axis["x"])), **kwargs))
    if not frames:  # an empty internal table (no chosen checkpoint had internal rows): no change points
        return pd.DataFrame(columns=_CHANGE_POINT_COLUMNS + ["reason"])
    return pd.concat(frames, ignore_index=True)


def brain_curve(brain_df: pd.DataFrame, score: str = "score_mean", region: str = "all", layer=None,
                features: str = "model") -> pd.DataFrame:
    """The brain-score curve of one (series, dataset, subject): one row per checkpoint, sorted by step.

    With ``layer=None`` the layer is picked per checkpoint by ``cv_score_mean``
    (cross-validated on training stories, so the test score is not inflated)
    when that column exists; otherwise one fixed layer is used, the one with
    the highest mean ``score`` over checkpoints (stated in the ``layer``
    column).
    """
    _require(brain_df, JOIN_COLUMNS + ["layer", "region", "features", score], "brain")
    rows = brain_df[(brain_df["region"] == region) & (brain_df["features"] == features)]
    if rows.empty:
        raise ValueError(f"brain table has no rows with region={region!r}, features={features!r}")
    if layer is not None:
        rows = rows[rows["layer"] == layer]
        if rows.empty:
            raise ValueError(f"brain table has no rows for layer {layer!r}")
    elif "cv_score_mean" in rows and rows["cv_score_mean"].notna().all():
        rows = rows.loc[rows.groupby("checkpoint", sort=False)["cv_score_mean"].idxmax()]
    else:
        best = rows.groupby("layer")[score].mean().idxmax()
        rows = rows[rows["layer"] == best]
    if rows["checkpoint"].duplicated().any():
        raise ValueError("brain rows are not unique per checkpoint; filter to one dataset and subject")
    return rows.sort_values("step").reset_index(drop=True)


def joint_brain_replicates(replicates_df: pd.DataFrame, curve: pd.DataFrame, score: str = "score_mean",
                           region: str = "all", features: str = "model") -> np.ndarray:
    """Joint replicate curves (n_replicates, n_checkpoints) of a brain curve from ``brain_replicates.parquet``.

    Replicate ``b`` of every checkpoint was computed on the same resampled
    test blocks, so a row is one replicate *curve* that keeps the dependence
    between checkpoints. Each checkpoint uses the layer ``curve`` chose.
    """
    _require(replicates_df, ["checkpoint", "layer", "region", "features", "replicate", score], "brain_replicates")
    rows = replicates_df[(replicates_df["region"] == region) & (replicates_df["features"] == features)]
    for column in ("series", "dataset", "subject"):
        if column in rows and column in curve and curve[column].nunique() == 1:
            rows = rows[rows[column] == curve[column].iloc[0]]
    keys = pd.DataFrame({"checkpoint": curve["checkpoint"], "layer": curve["layer"]})
    picked = keys.merge(rows, on=["checkpoint", "layer"], how="left")
    wide = picked.pivot_table(index="replicate", columns="checkpoint", values=score, aggfunc="first")
    missing = [c for c in curve["checkpoint"] if c not in wide.columns]
    if missing or wide.isna().any().any():
        raise ValueError(f"brain_replicates lacks replicates for checkpoint(s) {missing[:5] or 'some'} at the "
                         f"chosen layers")
    return wide[curve["checkpoint"].tolist()].to_numpy(dtype=float)


def brain_phases(brain_df: pd.DataFrame, score: str = "score_mean", region: str = "all", layer=None,
                 replicates: str = "ci", n_boot: int = DEFAULT_N_BOOT, seed: int = 0, x=None,
                 replicates_df: pd.DataFrame | None = None, **detect_kwargs) -> PhaseResult:
    """:func:`detect_phases` on a brain-score curve (one series, dataset, subject).

    Parameters
    ----------
    replicates : {"joint", "ci", "residual"}
        ``"joint"``: the stored joint replicate curves (``replicates_df``,
        :func:`joint_brain_replicates`), which also give the monotone null its
        noise (``null_noise="replicates"``); ``"ci"``: replicate curves drawn
        independently per checkpoint from a normal with the sd implied by the
        95% bootstrap CI (ignores the dependence between checkpoints: kept for
        tables without joint replicates); ``"residual"``: the AR(1) bootstrap
        of the fit.
    x : array-like, optional
        Positions of the curve's checkpoints (default: :func:`log_tokens` of them).
    replicates_df : DataFrame, optional
        ``brain_replicates.parquet`` rows (needed for ``"joint"``).
    """
    if replicates not in ("joint", "ci", "residual"):
        raise ValueError(f"replicates must be 'joint', 'ci' or 'residual', got {replicates!r}")
    curve = brain_curve(brain_df, score=score, region=region, layer=layer)
    if x is None:
        x = log_tokens(curve["tokens_seen"].to_numpy(), curve["step"].to_numpy())
    reps = None
    if replicates == "joint":
        if replicates_df is None:
            raise ValueError("replicates='joint' needs replicates_df (brain_replicates.parquet)")
        reps = joint_brain_replicates(replicates_df, curve, score=score, region=region)
        detect_kwargs.setdefault("null_noise", "replicates")
    elif replicates == "ci" and n_boot > 0:
        _require(curve, ["ci_low", "ci_high"], "brain")
        z = stats.norm.ppf(0.5 + DEFAULT_CI_LEVEL / 2)
        sd = (curve["ci_high"] - curve["ci_low"]).to_numpy(dtype=float) / (2 * z)
        if not np.all(np.isfinite(sd)):
            raise ValueError("brain ci_low/ci_high must be finite to draw replicates (use replicates='residual')")
        rng = np.random.default_rng(seed)
        reps = curve[score].to_numpy(dtype=float)[None, :] + rng.normal(size=(n_boot, len(curve))) * sd[None, :]
    return detect_phases(x, curve[score].to_numpy(dtype=float), replicates=reps, n_boot=n_boot, seed=seed,
                         **detect_kwargs)
