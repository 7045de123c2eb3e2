"""Summaries of the internal-states table: probes against their control task and baselines.

A probe's score means little alone: the control task (one random label per
word type, Hewitt & Liang 2019) says how much of it memorising word types
gives, the embedding layer (layer 0) how much the token identity gives at the
same checkpoint, and the first checkpoint (step0, an untrained model) how
much a random network gives at the same layer.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: Row sentinel of the internal table for measures that are not per head.
NO_HEAD = -1
#: Suffixes of a probe's score measures (classification / regression).
PROBE_SCORES = ("_accuracy", "_r2")
SUMMARY_COLUMNS = ["series", "probe", "checkpoint", "step", "tokens_seen", "layer", "score", "control",
                   "selectivity", "layer0_score", "step0_score", "gain_over_layer0", "gain_over_step0"]


def probe_measures(table: pd.DataFrame) -> list[str]:
    """Names of the probe score measures in an internal table (not their controls).

    Examples
    --------
    >>> t = pd.DataFrame({"measure": ["probe_pos_accuracy", "probe_pos_accuracy_control", "probe_pos_chance"]})
    >>> probe_measures(t)
    ['probe_pos_accuracy']
    """
    return sorted(m for m in set(table["measure"]) if m.startswith("probe_") and m.endswith(PROBE_SCORES))


def probe_baselines(table: pd.DataFrame, layer="best") -> pd.DataFrame:
    """Each probe per checkpoint: score, control, selectivity, and the layer-0 and first-checkpoint baselines.

    Parameters
    ----------
    table : DataFrame
        ``internal.parquet`` rows.
    layer : "best" or int
        The layer reported per checkpoint: the one with the highest score at
        that checkpoint ("best") or a fixed one.

    Returns
    -------
    DataFrame
        Columns :data:`SUMMARY_COLUMNS`: ``layer0_score`` is the probe on the
        embeddings at the same checkpoint, ``step0_score`` the probe at the
        same layer of the series' first checkpoint (NaN when that layer or
        checkpoint is absent); ``gain_over_*`` are the score minus them.

    Examples
    --------
    >>> rows = [{"series": "s", "checkpoint": f"step{s}", "step": s, "tokens_seen": 10 * s, "layer": layer,
    ...          "head": -1, "measure": m, "value": v}
    ...         for s in (0, 5) for layer in (0, 1)
    ...         for m, v in (("probe_pos_accuracy", 0.5 + 0.1 * s * layer), ("probe_pos_accuracy_control", 0.4))]
    >>> out = probe_baselines(pd.DataFrame(rows))
    >>> out[["checkpoint", "layer", "score", "selectivity", "gain_over_layer0", "gain_over_step0"]].round(2).values.tolist()
    [['step0', 0, 0.5, 0.1, 0.0, 0.0], ['step5', 1, 1.0, 0.6, 0.5, 0.5]]
    """
    rows = table[table["head"] == NO_HEAD] if "head" in table else table
    probes = probe_measures(rows)
    if not probes:
        raise ValueError("the internal table has no probe measures (probe_*_accuracy / probe_*_r2)")
    if layer != "best" and not (rows["layer"] == layer).any():
        raise ValueError(f"layer={layer!r} is not in the internal table")
    out = []
    for (series, probe), group in rows[rows["measure"].isin(probes)].groupby(["series", "measure"], sort=True):
        values = group.set_index(["checkpoint", "layer"])["value"]
        others = rows[(rows["series"] == series)].set_index(["measure", "checkpoint", "layer"])["value"]
        checkpoints = group[["checkpoint", "step", "tokens_seen"]].drop_duplicates().sort_values("step")
        first = checkpoints["checkpoint"].iloc[0]
        for ckpt in checkpoints.itertuples(index=False):
            here = group[group["checkpoint"] == ckpt.checkpoint]
            chosen = int(here.loc[here["value"].idxmax(), "layer"]) if layer == "best" else int(layer)
            score = values.get((ckpt.checkpoint, chosen), np.nan)
            control = others.get((f"{probe}_control", ckpt.checkpoint, chosen), np.nan)
            layer0 = values.get((ckpt.checkpoint, 0), np.nan)
            step0 = values.get((first, chosen), np.nan)
            out.append({"series": series, "probe": probe, "checkpoint": ckpt.checkpoint, "step": ckpt.step,
                        "tokens_seen": ckpt.tokens_seen, "layer": chosen, "score": score, "control": control,
                        "selectivity": score - control, "layer0_score": layer0, "step0_score": step0,
                        "gain_over_layer0": score - layer0, "gain_over_step0": score - step0})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)
