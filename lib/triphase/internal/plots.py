"""Plots of the internal-states table: measures along training, induction heads, the brain score beside them.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from triphase.internal.sweep import NO_HEAD, NO_LAYER
from triphase.plotting import log_positions, tier_label

#: Bump when any measure's computation changes (keys the per-checkpoint cache).


# --------------------------------------------------------------------------- plots
def _tier(table: pd.DataFrame) -> str:
    tiers = sorted(set(table["tier"]))
    return tiers[0] if len(tiers) == 1 else "real"


def plot_measures(table: pd.DataFrame, measures: Sequence[str], col_wrap: int = 3, height: float = 2.6,
                  controls: bool = True, references: dict[str, float] | None = None):
    """Each measure against tokens seen (log x; step0 at the left edge), one line per layer.

    Parameters
    ----------
    table : DataFrame
        ``internal.parquet`` rows.
    measures : sequence of str
        One panel each (measures absent from the table are skipped).
    col_wrap, height : int, float
        Panels per row and panel height (inches).
    controls : bool
        Draw a probe's control task (``<measure>_control``: one random label
        per word type, averaged over layers) in the same panel as a grey
        dashed line.
    references : dict, optional
        measure -> value drawn as a dark grey dashed horizontal line in that
        measure's panel (e.g. the induction score of uniform attention).

    Returns
    -------
    seaborn FacetGrid
        Its suptitle says the tier (:func:`triphase.plotting.tier_label`).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"measure": "cka_final", "head": -1, "layer": [1, 1], "tier": "embedded",
    ...                   "tokens_seen": [0, 100], "value": [0.2, 1.0]})
    >>> grid = plot_measures(t, ["cka_final"], references={"cka_final": 0.5})
    >>> grid.figure._suptitle.get_text()
    'embedded tier: model organism / simulated participant'
    """

    rows = table[table["measure"].isin(measures) & (table["head"] == NO_HEAD)].copy()
    if rows.empty:
        raise ValueError(f"none of the measures {list(measures)} is in the table")
    rows["tokens seen"] = log_positions(rows["tokens_seen"].to_numpy())
    hue_order = ["model" if v == NO_LAYER else f"layer {v}" for v in sorted(rows["layer"].unique())]
    rows["layer"] = rows["layer"].map(lambda v: "model" if v == NO_LAYER else f"layer {v}")
    order = [m for m in measures if m in set(rows["measure"])]
    grid = sns.relplot(data=rows, x="tokens seen", y="value", hue="layer", hue_order=hue_order, col="measure",
                       col_order=order,
                       kind="line", marker="o", markersize=4, col_wrap=min(col_wrap, len(order)), height=height,
                       aspect=1.3, facet_kws={"sharey": False}, palette="viridis")
    grid.set(xscale="log")
    grid.set_titles("{col_name}")
    if controls:
        for measure, ax in grid.axes_dict.items():
            control = table[(table["measure"] == f"{measure}_control") & (table["head"] == NO_HEAD)]
            if control.empty:
                continue
            mean = control.groupby("tokens_seen", as_index=False)["value"].mean()
            ax.plot(log_positions(mean["tokens_seen"].to_numpy()), mean["value"], ls="--", color="0.5", lw=1,
                    label="control task")
            ax.legend(frameon=False, fontsize=7, loc="best")
    grid.figure.suptitle(tier_label(_tier(table)), y=1.02, fontsize=10)
    for measure, value in (references or {}).items():
        if measure in grid.axes_dict:
            grid.axes_dict[measure].axhline(value, color="0.4", ls="--", lw=0.8)
    return grid


def plot_induction_heatmap(table: pd.DataFrame, measure: str = "induction_score", ax=None):
    """Heatmap of a per-head measure: checkpoints (rows, training order) x layer/head (columns).

    Parameters
    ----------
    table : DataFrame
        ``internal.parquet`` rows with per-head values (``head >= 0``).
    measure : str
        The per-head measure drawn.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
        Its title says the tier.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"measure": "induction_score", "head": [0, 1], "layer": 1, "tier": "embedded",
    ...                   "step": 0, "checkpoint": "step0", "tokens_seen": 0, "value": [0.1, 0.4]})
    >>> [label.get_text() for label in plot_induction_heatmap(t).get_xticklabels()]
    ['L1H0', 'L1H1']
    """


    rows = table[(table["measure"] == measure) & (table["head"] != NO_HEAD)]
    if rows.empty:
        raise ValueError(f"no per-head rows of {measure!r} in the table")
    grid = rows.pivot_table(index=["step", "checkpoint"], columns=["layer", "head"], values="value").sort_index()
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.45 * grid.shape[1], 0.9 + 0.28 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(grid.shape[0]), [c for _, c in grid.index], fontsize=7)
    ax.set_xticks(range(grid.shape[1]), [f"L{layer}H{head}" for layer, head in grid.columns], fontsize=7, rotation=90)
    ax.set_xlabel("layer / head")
    ax.set_ylabel("checkpoint")
    ax.figure.colorbar(image, ax=ax, label=measure)
    ax.set_title(f"{measure} per head\n{tier_label(_tier(table))}", fontsize=10)
    return ax


def plot_head_maps(table: pd.DataFrame, measures: Sequence[str] = ("induction_score", "attention_entropy")):
    """Per-head measures side by side: one :func:`plot_induction_heatmap` panel per measure.

    Parameters
    ----------
    table : DataFrame
        ``internal.parquet`` rows with per-head values (``head >= 0``).
    measures : sequence of str
        Per-head measures, one panel each.

    Returns
    -------
    matplotlib Figure
        Every panel's title says the tier.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"measure": "induction_score", "head": 0, "layer": 1, "tier": "embedded",
    ...                   "step": range(6), "checkpoint": [f"step{s}" for s in range(6)], "tokens_seen": 0,
    ...                   "value": 0.1})
    >>> fig = plot_head_maps(t, ["induction_score"])
    >>> fig.axes[0].get_title().splitlines()
    ['induction_score per head', 'embedded tier: model organism / simulated participant']
    """
    fig, axes = plt.subplots(1, len(measures), figsize=(6.5 * len(measures), 0.9 + 0.3 * table["checkpoint"].nunique()),
                             squeeze=False)
    for ax, measure in zip(axes[0], measures):
        plot_induction_heatmap(table, measure, ax=ax)
    fig.tight_layout()
    return fig


def plot_with_brain_score(table: pd.DataFrame, brain_best: pd.DataFrame, measures: Sequence[str], axes=None,
                          layer_summary: str = "mean"):
    """Internal measures (summarised over layers) with the whole-brain brain score on a twin axis.

    Parameters
    ----------
    table : DataFrame
        ``internal.parquet``.
    brain_best : DataFrame
        Best layer per checkpoint (:func:`triphase.brain.sweep.best_layers`), columns
        ``checkpoint``, ``tokens_seen``, ``score_mean``.
    measures : list of str
    layer_summary : {"mean", "max"}
        How per-layer measures are summarised per checkpoint.

    Returns
    -------
    array of matplotlib Axes
        One per measure; the figure's suptitle says the tier.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"measure": "cka_final", "head": -1, "layer": 1, "tier": "embedded",
    ...                   "step": [0, 1], "tokens_seen": [0, 100], "value": [0.2, 1.0]})
    >>> brain = pd.DataFrame({"checkpoint": ["step0", "step1"], "tokens_seen": [0, 100], "score_mean": [0.0, 0.1]})
    >>> axes = plot_with_brain_score(t, brain, ["cka_final"])
    >>> axes[0].get_lines()[0].get_ydata().tolist()
    [0.2, 1.0]
    """


    if axes is None:
        _, axes = plt.subplots(1, len(measures), figsize=(3.8 * len(measures), 3.2), squeeze=False)
        axes = axes[0]
    brain = brain_best.sort_values("tokens_seen")
    for ax, measure in zip(axes, measures):
        rows = table[(table["measure"] == measure) & (table["head"] == NO_HEAD)]
        summary = rows.groupby(["step", "tokens_seen"], as_index=False)["value"].agg(layer_summary)
        x = log_positions(summary["tokens_seen"].to_numpy())
        ax.plot(x, summary["value"], "o-", ms=3, color="C0", label=measure)
        ax.set_xscale("log")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(f"{measure} ({layer_summary} over layers)" if (rows["layer"] != NO_LAYER).any() else measure,
                      color="C0", fontsize=8)
        twin = ax.twinx()
        tokens = np.concatenate([summary["tokens_seen"].to_numpy(), brain["tokens_seen"].to_numpy()])
        xb = log_positions(tokens)[len(summary):]
        twin.plot(xb, brain["score_mean"], "s--", ms=3, color="C3", label="brain score")
        twin.set_ylabel("whole-brain mean r (best layer)", color="C3", fontsize=8)
    axes[0].figure.suptitle(f"Internal measures and brain score - {tier_label(_tier(table))}", fontsize=10)
    axes[0].figure.tight_layout()
    return axes
