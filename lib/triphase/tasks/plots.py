"""Plots of the tasks table: instruction following and accuracy along training.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from triphase.plotting import log_positions, stamp_tier

#: Lowest y shown: solving can be below 0 (worse than the best constant answer).
Y_FLOOR = -0.02
Y_CEILING = 1.02

# --------------------------------------------------------------------------- figures
#: Metrics drawn on the same axes per family, and their styles.
PLOT_METRICS = {
    "instruction_following": {"color": "tab:blue", "marker": "o", "label": "instruction following"},
    "accuracy": {"color": "tab:red", "marker": "s", "label": "accuracy"},
    "solving": {"color": "tab:purple", "marker": "D", "label": "solving (chance-corrected)"},
    "mc_accuracy": {"color": "tab:green", "marker": "^", "label": "log-likelihood MC accuracy"},
}


def plot_task_metrics(table: pd.DataFrame, few_shot: int = 0, metrics: Sequence[str] = tuple(PLOT_METRICS),
                      tasks: Sequence[str] | None = None, chance: bool = True):
    """Instruction following and accuracy against tokens seen (log x), one panel per task, with 95% CIs.

    Parameters
    ----------
    table : DataFrame
        ``tasks.parquet`` rows (:func:`downstream_tasks`).
    few_shot : int
        Which few-shot count to draw.
    metrics : sequence of str
        Metrics to draw on the same axes.
    tasks : sequence of str, optional
        Panels (default: all tasks in the table).
    chance : bool
        Draw the multiple-choice chance level (``mc_chance``) as a dashed line.

    Returns
    -------
    matplotlib Figure (stamped with the tier).

    Examples
    --------
    >>> t = pd.DataFrame({"series": "organism", "task": "yesno", "few_shot": 0, "metric": "accuracy",
    ...                   "tier": "embedded", "tokens_seen": [0, 100], "value": [0.2, 0.6],
    ...                   "ci_low": [0.1, 0.5], "ci_high": [0.3, 0.7]})
    >>> fig = plot_task_metrics(t)
    >>> fig.axes[0].get_title(), fig.texts[-1].get_text()
    ('yesno (0-shot)', 'embedded tier: model organism / simulated participant')
    """


    sel = table[table["few_shot"] == few_shot]
    if sel.empty:
        raise ValueError(f"no rows with few_shot={few_shot}; available: {sorted(table['few_shot'].unique())}")
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(sel["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), sharey=True, squeeze=False)
    drawn = sel[sel["metric"].isin(list(metrics))]
    low = min(Y_FLOOR, float(drawn["ci_low"].min()) - 0.02) if drawn["ci_low"].notna().any() else Y_FLOOR
    for ax, task in zip(axes[0], tasks):
        rows = sel[sel["task"] == task].sort_values("tokens_seen")
        for metric in metrics:
            m = rows[rows["metric"] == metric]
            if m.empty:
                continue
            style = PLOT_METRICS.get(metric, {"label": metric})
            x = log_positions(m["tokens_seen"].to_numpy())
            ax.plot(x, m["value"], marker=style.get("marker", "o"), ms=4, color=style.get("color"),
                    label=style["label"])
            ax.fill_between(x, m["ci_low"], m["ci_high"], color=style.get("color"), alpha=0.15, lw=0)
        c = rows[rows["metric"] == "mc_chance"]
        if chance and not c.empty:
            ax.axhline(float(c["value"].mean()), color="0.4", ls="--", lw=1, label="MC chance")
        ax.set_xscale("log")
        ax.set_ylim(low, Y_CEILING)
        ax.axhline(0, color="0.8", lw=0.8)
        ax.set_title(f"{task} ({few_shot}-shot)")
        ax.set_xlabel("tokens seen (step0 at left edge)")
    axes[0, 0].set_ylabel("share of items (solving: 0 = chance)")
    axes[0, -1].legend(fontsize=7, loc="best")
    tier = str(sel["tier"].iloc[0])
    fig.suptitle(f"Downstream tasks: {sel['series'].iloc[0]}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    stamp_tier(fig, tier)
    return fig
