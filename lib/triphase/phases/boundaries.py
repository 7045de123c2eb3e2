"""Phase boundaries of each perspective: brain curves and their phases, instruction-following onset, task accuracy phases, internal change points.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from triphase.phases.inference import PhaseResult, detect_phases
from triphase.phases.piecewise import DEFAULT_CI_LEVEL, DEFAULT_N_BOOT, FLAT, RISING, log_tokens

#: Most breakpoints the model search considers by default (the design's 0-4).
#: Name of the pooled row over all tasks.
OVERALL_TASK = "all"
#: Perspective names used in the alignment table.
BRAIN, INSTRUCTION, ACCURACY, INTERNAL = "brain", "instruction_following", "task_accuracy", "internal"
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
    for checkpoint, group in rows.groupby("checkpoint", sort=False):
        first = group.iloc[0]
        if "n_items" in group and group["n_items"].notna().all() and group["n_items"].sum() > 0:
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


def _binomial_replicates(rows: pd.DataFrame, n_boot: int, rng) -> np.ndarray | None:
    """Parametric bootstrap of shares: Binomial(n_items, value) / n_items per checkpoint."""
    if "n_items" not in rows or rows["n_items"].isna().any() or (rows["n_items"] <= 0).any() or n_boot == 0:
        return None
    n_items = rows["n_items"].to_numpy(dtype=int)
    share = np.clip(rows["value"].to_numpy(dtype=float), 0, 1)
    return rng.binomial(n_items[None, :], share[None, :], size=(n_boot, len(rows))) / n_items[None, :]


def accuracy_phases(tasks_df: pd.DataFrame, metric: str = "accuracy", tasks=None, replicates: str = "binomial",
                    n_boot: int = DEFAULT_N_BOOT, seed: int = 0, return_results: bool = False, **detect_kwargs):
    """Stagnation and consolidation of task accuracy from :func:`detect_phases`.

    Stagnation is the first *flat* segment that is immediately followed by a
    *rising* one (consolidation). Boundaries reported: ``stagnation_start``
    (the breakpoint opening the flat segment, absent when it starts at the
    first checkpoint) and ``consolidation_onset`` (the breakpoint between
    them), each with its bootstrap CI. When there is no flat -> rising pair a
    row with ``found == False`` and NaN x says so.

    Parameters
    ----------
    tasks_df : DataFrame
        ``tasks.parquet`` rows.
    metric : str
        Accuracy metric (``"accuracy"``, ``"accuracy_given_compliance"``, ``"mc_accuracy"``).
    tasks : list of str, optional
        Tasks to analyse (default: every task and the pooled ``"all"``).
    replicates : {"binomial", "residual"}
        ``"binomial"``: replicate curves drawn as Binomial(n_items, value) /
        n_items per checkpoint (needs ``n_items``; falls back to residual);
        ``"residual"``: the residual bootstrap of :func:`detect_phases`.
    n_boot, seed, **detect_kwargs
        Passed to :func:`detect_phases` (``n_null`` defaults to 0 here).
    return_results : bool
        Also return ``{(series, task): PhaseResult}``.

    Returns
    -------
    DataFrame (and dict if ``return_results``)
        Rows: series, tier, task, metric, boundary, found, x, ci_low, ci_high.
    """
    if replicates not in ("binomial", "residual"):
        raise ValueError(f"replicates must be 'binomial' or 'residual', got {replicates!r}")
    detect_kwargs.setdefault("n_null", 0)
    rng = np.random.default_rng(seed)
    rows_out, results = [], {}
    for series, task, rows in _task_curves(tasks_df, metric, DEFAULT_CI_LEVEL):
        if tasks is not None and task not in tasks:
            continue
        axis = _axis(tasks_df[tasks_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        x = np.array([x_of[c] for c in rows["checkpoint"]])
        reps = _binomial_replicates(rows, n_boot, rng) if replicates == "binomial" else None
        result = detect_phases(x, rows["value"].to_numpy(dtype=float), replicates=reps, n_boot=n_boot,
                               seed=seed, **detect_kwargs)
        results[(series, task)] = result
        base = {"series": series, "tier": _one_tier(tasks_df[tasks_df["series"] == series], "tasks"),
                "task": task, "metric": metric}
        labels = result.segments["label"].tolist()
        pair = next((i for i in range(len(labels) - 1) if labels[i] == FLAT and labels[i + 1] == RISING), None)
        if pair is None:
            rows_out.append({**base, "boundary": "consolidation_onset", "found": False,
                             "x": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            continue
        if pair > 0:
            rows_out.append({**base, "boundary": "stagnation_start", "found": True,
                             "x": result.breakpoints[pair - 1], "ci_low": result.breakpoint_ci[pair - 1, 0],
                             "ci_high": result.breakpoint_ci[pair - 1, 1]})
        rows_out.append({**base, "boundary": "consolidation_onset", "found": True,
                         "x": result.breakpoints[pair], "ci_low": result.breakpoint_ci[pair, 0],
                         "ci_high": result.breakpoint_ci[pair, 1]})
    frame = pd.DataFrame(rows_out)
    return (frame, results) if return_results else frame


def internal_change_points(internal_df: pd.DataFrame, layer=None, measures=None,
                           change_keyword: str = "previous", onset_keyword: str = "induction") -> pd.DataFrame:
    """Largest changes of internal measures between consecutive checkpoints.

    For each measure (averaged over layers when ``layer`` is None):

    * ``largest_change``: the pair of consecutive checkpoints with the largest
      ``|value_i - value_i-1|``; for measures whose name contains
      ``change_keyword`` (similarities to the previous checkpoint, e.g.
      ``cka_previous``) the value already describes a change, so it is the
      checkpoint where the similarity is lowest.
    * ``onset`` (measures containing ``onset_keyword``, e.g. an induction
      score): the first checkpoint whose value exceeds the midpoint between the
      curve's minimum and maximum.

    The boundary lies between the two checkpoints: ``x`` is their midpoint and
    ``ci_low``/``ci_high`` their positions (checkpoint resolution).

    Returns
    -------
    DataFrame
        Rows: series, tier, measure, layer, boundary, found, x, ci_low, ci_high.
    """
    _require(internal_df, JOIN_COLUMNS + ["layer", "measure", "value"], "internal")
    rows = internal_df if layer is None else internal_df[internal_df["layer"] == layer]
    if rows.empty:
        raise ValueError(f"internal table has no rows for layer {layer!r}; layers: "
                         f"{sorted(internal_df['layer'].dropna().unique().tolist())}")
    out = []
    for series, srows in rows.groupby("series", sort=True):
        axis = _axis(internal_df[internal_df["series"] == series])
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        tier = _one_tier(srows, "internal")
        chosen = sorted(set(srows["measure"])) if measures is None else list(measures)
        for measure in chosen:
            mrows = srows[srows["measure"] == measure]
            if mrows.empty:
                raise ValueError(f"internal table has no measure {measure!r} for series {series!r}")
            curve = (mrows.groupby(["checkpoint", "step"], sort=False)["value"].mean().reset_index()
                     .sort_values("step").dropna(subset=["value"]))
            x = np.array([x_of[c] for c in curve["checkpoint"]])
            value = curve["value"].to_numpy(dtype=float)
            base = {"series": series, "tier": tier, "measure": measure,
                    "layer": "mean" if layer is None else str(layer)}
            if len(value) < 2:
                out.append({**base, "boundary": "largest_change", "found": False, "x": np.nan,
                            "ci_low": np.nan, "ci_high": np.nan})
                continue
            if change_keyword and change_keyword in measure:
                # the value at checkpoint i compares it with checkpoint i-1
                i = int(np.argmin(value[1:])) + 1
            else:
                i = int(np.argmax(np.abs(np.diff(value)))) + 1
            out.append({**base, "boundary": "largest_change", "found": True, "x": (x[i - 1] + x[i]) / 2,
                        "ci_low": x[i - 1], "ci_high": x[i]})
            if onset_keyword and onset_keyword in measure:
                midpoint = (value.min() + value.max()) / 2
                above = np.flatnonzero(value > midpoint)
                found = above.size > 0 and value.max() > value.min()
                j = int(above[0]) if found else 0
                out.append({**base, "boundary": "onset", "found": bool(found),
                            "x": (x[max(j - 1, 0)] + x[j]) / 2 if found else np.nan,
                            "ci_low": x[max(j - 1, 0)] if found else np.nan, "ci_high": x[j] if found else np.nan})
    return pd.DataFrame(out)


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


def brain_phases(brain_df: pd.DataFrame, score: str = "score_mean", region: str = "all", layer=None,
                 replicates: str = "ci", n_boot: int = DEFAULT_N_BOOT, seed: int = 0, x=None,
                 **detect_kwargs) -> PhaseResult:
    """:func:`detect_phases` on a brain-score curve (one series, dataset, subject).

    Parameters
    ----------
    replicates : {"ci", "residual"}
        ``"ci"``: replicate curves drawn independently per checkpoint from a
        normal with the sd implied by the 95% bootstrap CI,
        ``(ci_high - ci_low) / (2 * 1.96)`` (the block bootstrap over test
        blocks of :mod:`triphase.brain.statistics`); ``"residual"``: the residual
        bootstrap of the fit.
    x : array-like, optional
        Positions of the curve's checkpoints (default: :func:`log_tokens` of them).
    """
    if replicates not in ("ci", "residual"):
        raise ValueError(f"replicates must be 'ci' or 'residual', got {replicates!r}")
    curve = brain_curve(brain_df, score=score, region=region, layer=layer)
    if x is None:
        x = log_tokens(curve["tokens_seen"].to_numpy(), curve["step"].to_numpy())
    reps = None
    if replicates == "ci" and n_boot > 0:
        _require(curve, ["ci_low", "ci_high"], "brain")
        z = stats.norm.ppf(0.5 + DEFAULT_CI_LEVEL / 2)
        sd = (curve["ci_high"] - curve["ci_low"]).to_numpy(dtype=float) / (2 * z)
        if not np.all(np.isfinite(sd)):
            raise ValueError("brain ci_low/ci_high must be finite to draw replicates (use replicates='residual')")
        rng = np.random.default_rng(seed)
        reps = curve[score].to_numpy(dtype=float)[None, :] + rng.normal(size=(n_boot, len(curve))) * sd[None, :]
    return detect_phases(x, curve[score].to_numpy(dtype=float), replicates=reps, n_boot=n_boot, seed=seed,
                         **detect_kwargs)
