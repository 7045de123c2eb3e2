"""Figures of brain alignment: score curves, layer x checkpoint maps, glass brains, ceilings.

Every figure carries the tier that produced it (:func:`triphase.plotting.tier_label`).

Examples
--------
>>> import pandas as pd
>>> t = pd.DataFrame({"checkpoint": ["step0", "step1"], "step": [0, 1], "tokens_seen": [0, 10],
...                   "layer": 1, "region": "all", "features": "model", "tier": "embedded",
...                   "score_mean": [0.01, 0.05], "cv_score_mean": [0.01, 0.05],
...                   "ci_low": [0.0, 0.04], "ci_high": [0.02, 0.06]})
>>> ax = plot_brain_score(t)
>>> ax.get_xscale()
'log'
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
import pandas as pd
from nilearn.masking import unmask
from nilearn.plotting import plot_glass_brain

from triphase.brain.encoding import ALL_REGIONS
from triphase.brain.statistics import fdr_bh
from triphase.brain.sweep import DEFAULT_FDR_Q, MODEL_FEATURES, UNIQUE_COLUMNS, best_layers
from triphase.plotting import log_positions, tier_label

CONTROL_MARKERS = {"shuffled-stories": "s", "random": "D", "random-words": "^"}
#: Interval columns of the scores that have one.
INTERVAL_COLUMNS = {"score_mean": ("ci_low", "ci_high"),
                    "score_ceiling_normalised": ("ci_low_ceiling_normalised", "ci_high_ceiling_normalised")}
#: Colour map of voxel maps (diverging: negative r in blue).
MAP_CMAP = "RdBu_r"
#: Percentile of |r| over the drawn voxels that sets the default colour range.
VMAX_PERCENTILE = 99.5


def _tier(table: pd.DataFrame) -> str:
    tiers = sorted(set(table["tier"])) if "tier" in table else ["embedded"]
    return tiers[0] if len(tiers) == 1 else "real"


def plot_brain_score(table: pd.DataFrame, region: str = ALL_REGIONS, score: str = "score_mean",
                     by: str = "cv_score_mean", layer: int | None = None, controls: bool = True, ax=None,
                     label: str | None = None, title: str | None = None):
    """Brain score against tokens seen (log x) for the best layer, with its bootstrap CI and controls.

    Parameters
    ----------
    table : DataFrame
        ``brain.parquet`` rows.
    region : str
        ``"all"`` (whole brain) or a region label.
    score : str
        Column plotted (``score_mean``, ``score_top10``, ``score_ceiling_normalised``).
    by : str
        Column that picks the layer per checkpoint (training CV score by default), if ``layer`` is None.
    layer : int, optional
        A fixed layer instead of the best one per checkpoint.
    controls : bool
        Draw the control rows (final checkpoint) as markers right of the curve.
    ax : matplotlib Axes, optional
    label : str, optional
        Legend label of the curve.
    title : str, optional
        Replaces the default title ("Brain score through training" and the table's tier);
        it should carry a tier label (:func:`triphase.plotting.tier_label`) itself.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    See the module's example.
    """

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    model_rows = table[(table["region"] == region) & (table["features"] == MODEL_FEATURES)]
    if layer is None:
        curve = best_layers(table, by=by, region=region)
        desc = f"best layer per checkpoint (by {by})"
    else:
        curve = model_rows[model_rows["layer"] == layer].sort_values("step")
        desc = f"layer {layer}"
    if not np.isfinite(curve[score].to_numpy(dtype=float)).any():
        raise ValueError(f"column {score!r} has no finite value for region {region!r} (e.g. "
                         "score_ceiling_normalised without repeats of the test story); nothing to plot")
    x = log_positions(curve["tokens_seen"].to_numpy())
    ax.plot(x, curve[score], "o-", ms=4, label=label or f"model, {desc}")
    bounds = INTERVAL_COLUMNS.get(score)
    if bounds is not None and set(bounds) <= set(curve):
        ax.fill_between(x, curve[bounds[0]], curve[bounds[1]], alpha=0.25, lw=0, label="95% bootstrap CI")
    if (curve["tokens_seen"] == 0).any():
        ax.annotate("step0", (x[curve["tokens_seen"].to_numpy() == 0][0], curve[score].iloc[0]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    if controls:
        ctrl = table[(table["region"] == region) & (table["features"] != MODEL_FEATURES)]
        x_right = x.max() * 1.6 if len(x) else 1.0
        for i, (kind, rows) in enumerate(ctrl.groupby("features")):
            # Same layer choice as the curve at the final checkpoint where possible.
            final_layer = curve["layer"].iloc[-1] if len(curve) else rows["layer"].iloc[0]
            row = rows[rows["layer"] == final_layer]
            row = row.iloc[0] if len(row) else rows.iloc[0]
            xi = x_right * (1.35 ** i)
            yerr = None
            if bounds is not None and set(bounds) <= set(row.index):
                yerr = [[row[score] - row[bounds[0]]], [row[bounds[1]] - row[score]]]
            ax.errorbar([xi], [row[score]], yerr=yerr, fmt=CONTROL_MARKERS.get(kind, "x"), color="0.4",
                        ms=5, capsize=2, label=f"control: {kind} (final ckpt, layer {int(row['layer'])})")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen (step0 drawn at the left edge)")
    ax.set_ylabel(f"{score} ({region})")
    ax.set_title(title or f"Brain score through training\n{tier_label(_tier(table))}", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_brain_score_per_region(table: pd.DataFrame, tier: str | None = None, ax=None):
    """Mean r within each region (not the whole brain) against tokens seen, for the best layer per checkpoint.

    The layer per checkpoint is the whole-brain best layer (:func:`best_layers`,
    by cross-validated training score), the same in every region.

    Parameters
    ----------
    table : DataFrame
        ``brain.parquet`` rows.
    tier : {"embedded", "real"}, optional
        The tier written in the title (default: the table's ``tier`` column).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    ValueError
        When the table has no region other than the whole brain.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [{"checkpoint": f"step{s}", "step": s, "tokens_seen": 10 * s, "layer": 1, "region": region,
    ...          "features": "model", "tier": "embedded", "score_mean": score, "cv_score_mean": 0.1}
    ...         for s in (0, 1) for region, score in (("all", 0.01 * s), ("HG", 0.02 * s))]
    >>> ax = plot_brain_score_per_region(pd.DataFrame(rows))
    >>> [line.get_label() for line in ax.get_lines()][:1], ax.get_lines()[0].get_ydata().tolist()
    (['HG'], [0.0, 0.02])
    """
    regions = [r for r in table["region"].unique() if r != ALL_REGIONS]
    if not regions:
        raise ValueError("this dataset defines no regions")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    picks = best_layers(table)[["checkpoint", "layer"]]
    per_region = table[table["features"] == MODEL_FEATURES].merge(picks, on=["checkpoint", "layer"])
    for region in regions:
        rows = per_region[per_region["region"] == region].sort_values("step")
        x = log_positions(rows["tokens_seen"].to_numpy())
        ax.plot(x, rows["score_mean"], "o-", ms=3, label=region)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen (step0 at the left edge)")
    ax.set_ylabel("mean r in region (best layer)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.set_title(f"Brain score per region\n{tier_label(tier or _tier(table))}", fontsize=10)
    return ax


def plot_layer_heatmap(table: pd.DataFrame, score: str = "score_mean", region: str = ALL_REGIONS, ax=None,
                       cmap: str = "viridis"):
    """Layer x checkpoint map of a score (model features, one region).

    Returns
    -------
    matplotlib Axes
        Its title says the table's tier.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"checkpoint": ["step0", "step1"], "step": [0, 1], "layer": 1, "region": "all",
    ...                   "features": "model", "tier": "embedded", "score_mean": [0.01, 0.05]})
    >>> ax = plot_layer_heatmap(t)
    >>> ax.images[0].get_array().tolist()
    [[0.01, 0.05]]
    """

    rows = table[(table["region"] == region) & (table["features"] == MODEL_FEATURES)]
    grid = rows.pivot_table(index="layer", columns="step", values=score, aggfunc="mean").sort_index(ascending=False)
    names = rows.drop_duplicates("step").set_index("step")["checkpoint"]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 1.5 + 0.4 * grid.shape[1]), 1.2 + 0.45 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xticklabels([names[s] for s in grid.columns], rotation=70, fontsize=7)
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels([("emb" if layer == 0 else str(layer)) for layer in grid.index], fontsize=8)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("layer (0 = embeddings)")
    ax.figure.colorbar(image, ax=ax, label=f"{score} ({region})")
    ax.set_title(f"{score} by layer and checkpoint\n{tier_label(_tier(table))}", fontsize=10)
    return ax


def plot_glass_brain_maps(maps: dict[str, np.ndarray], mask_img, tier: str = "embedded", vmax: float | None = None,
                          threshold: float | None = None, figure=None, pvalues: dict[str, np.ndarray] | None = None,
                          q: float = DEFAULT_FDR_Q, thresholded: bool = True):
    """Glass-brain maps of voxelwise r, one row per entry of ``maps`` (label -> r per mask voxel).

    By default each map is **thresholded at FDR**: only voxels significant
    under Benjamini-Hochberg at ``q`` (over the map's valid voxels, from
    ``pvalues``) are drawn, so noise maxima do not show. ``thresholded=False``
    gives the unthresholded view. Uses :func:`nilearn.masking.unmask` and
    :func:`nilearn.plotting.plot_glass_brain` (``plot_abs=False``: negative r in
    blue); one shared, labelled colour bar. NaN r (excluded voxels) are drawn as 0.

    Parameters
    ----------
    maps : dict label -> array (n_voxels,)
    mask_img : Nifti image
    tier : str
    vmax : float, optional
        Colour range ``[-vmax, vmax]`` (default: the 99.5th percentile of |r| over the drawn voxels).
    threshold : float, optional
        Unthresholded view only: hide |r| below this value.
    figure : matplotlib Figure, optional
    pvalues : dict label -> array (n_voxels,), optional
        Voxelwise p-values of each map (required when ``thresholded``).
    q : float
        FDR level of the threshold.
    thresholded : bool

    Returns
    -------
    matplotlib Figure
        Stamped with ``tier`` in its lower right corner.

    Examples
    --------
    >>> fig = plot_glass_brain_maps({"final": r}, space.mask_img, pvalues={"final": p})  # doctest: +SKIP
    """

    if mask_img is None:
        raise ValueError("this dataset has no voxel space (mask image): glass-brain maps need one")
    arrays = {k: np.nan_to_num(np.asarray(v, dtype=float)) for k, v in maps.items()}
    titles = dict.fromkeys(arrays, "")
    if thresholded:
        if pvalues is None or set(pvalues) != set(arrays):
            raise ValueError("pvalues: thresholded maps need one p-value array per map (or thresholded=False)")
        for label in arrays:
            significant, _ = fdr_bh(np.asarray(pvalues[label], dtype=float), q)
            arrays[label] = np.where(significant, arrays[label], 0.0)
            titles[label] = f" ({int(significant.sum())} voxels at FDR q < {q:g})"
        # Anything non-zero is significant: hide exactly the zeros.
        threshold = np.finfo(np.float32).tiny
    drawn = np.concatenate([a[a != 0] for a in arrays.values()])
    if vmax is None:
        vmax = float(np.percentile(np.abs(drawn), VMAX_PERCENTILE)) if drawn.size else 1.0
        vmax = vmax or 1.0
    fig = figure or plt.figure(figsize=(10, 3.0 * len(arrays)))
    for i, (label, r) in enumerate(arrays.items()):
        axes = fig.add_axes([0.0, 1.0 - (i + 1) / len(arrays), 0.9, 1.0 / len(arrays)])
        plot_glass_brain(unmask(r.astype(np.float32), mask_img), display_mode="lzr", plot_abs=False,
                         colorbar=False, vmax=vmax, vmin=-vmax, threshold=threshold, cmap=MAP_CMAP,
                         title=label + titles[label], axes=axes, figure=fig)
    colorbar_axes = fig.add_axes([0.92, 0.15, 0.015, 0.7])
    what = f"FDR q < {q:g}" if thresholded else "unthresholded"
    fig.colorbar(ScalarMappable(Normalize(-vmax, vmax), MAP_CMAP), cax=colorbar_axes,
                 label=f"test r per voxel ({what})")
    fig.text(0.995, 0.0, tier_label(tier), ha="right", va="bottom", fontsize=8, color="0.35")
    return fig


def plot_ceiling_vs_truth(estimated: np.ndarray, true: np.ndarray, regions: np.ndarray | None = None,
                          quantity: str = "explainable variance", ax=None, tier: str = "embedded",
                          xlabel: str | None = None, ylabel: str | None = None):
    """Estimated (from repeats) against true per-voxel explainable variance (simulated participant).

    Parameters
    ----------
    estimated, true : array-like
        One value per voxel.
    regions : array-like, optional
        Region label per voxel (one colour each; ``"none"`` in grey).
    quantity : str
        What is compared (axis labels).
    ax : matplotlib Axes, optional
    tier : {"embedded", "real"}
        Written in the title.
    xlabel, ylabel : str, optional
        Replace the default axis labels (``"true <quantity>"``, ``"estimated <quantity> (from repeats)"``).

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> ax = plot_ceiling_vs_truth(np.array([0.1, 0.2, 0.3, 0.5]), np.array([0.1, 0.25, 0.3, 0.4]))
    >>> ax.get_title().splitlines()[1]
    '(embedded tier: model organism / simulated participant)'
    """

    estimated, true = np.asarray(estimated, float), np.asarray(true, float)
    if estimated.shape != true.shape:
        raise ValueError(f"estimated has shape {estimated.shape} but true has {true.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ok = np.isfinite(estimated) & np.isfinite(true)
    if regions is None:
        ax.scatter(true[ok], estimated[ok], s=4, alpha=0.4)
    else:
        regions = np.asarray(regions).astype(str)
        for label in sorted(set(regions[ok]), key=lambda s: (s == "none", s)):
            sel = ok & (regions == label)
            ax.scatter(true[sel], estimated[sel], s=4, alpha=0.3 if label == "none" else 0.6, label=label,
                       color="0.7" if label == "none" else None)
        ax.legend(frameon=False, fontsize=7, markerscale=3)
    top = float(max(true[ok].max(), estimated[ok].max())) if ok.any() else 1.0
    ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="identity")
    r = np.corrcoef(true[ok], estimated[ok])[0, 1] if ok.sum() > 2 else float("nan")
    ax.set_xlabel(xlabel or f"true {quantity}")
    ax.set_ylabel(ylabel or f"estimated {quantity} (from repeats)")
    ax.set_title(f"Noise ceiling vs ground truth, r = {r:.2f}\n({tier_label(tier)})", fontsize=9)
    return ax


#: Curves of :func:`plot_unique_variance`: column -> (label, colour, line style).
UNIQUE_CURVES = {"r2_joint": ("baseline + model (banded ridge)", "tab:blue", "-"),
                 "r2_baseline": ("low-level baseline alone", "0.4", "--"),
                 "r2_unique": ("model beyond the baseline (unique)", "tab:red", "-")}


def plot_unique_variance(table: pd.DataFrame, region: str = ALL_REGIONS, ax=None, title: str | None = None):
    """Test R^2 of the baseline, of baseline + model and the model's unique variance, per checkpoint.

    Uses the rows that carry :data:`triphase.brain.sweep.UNIQUE_COLUMNS` (each
    checkpoint's best layer).

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": ["step0", "step1"], "step": [0, 1], "tokens_seen": [0, 10], "layer": 1,
    ...                   "region": "all", "features": "model", "tier": "embedded", "r_baseline": 0.1,
    ...                   "r_joint": [0.1, 0.2], "r2_baseline": 0.01, "r2_joint": [0.01, 0.04], "r2_unique": [0.0, 0.03]})
    >>> [line.get_label() for line in plot_unique_variance(t).get_lines()][:3]
    ['baseline + model (banded ridge)', 'low-level baseline alone', 'model beyond the baseline (unique)']
    """
    missing = [c for c in UNIQUE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the brain table has no baseline columns {missing}: it was computed with baseline=False")
    rows = table[(table["features"] == MODEL_FEATURES) & (table["region"] == region) & table["r2_unique"].notna()]
    if rows.empty:
        raise ValueError(f"no rows with the baseline columns for region {region!r}")
    rows = rows.sort_values("step")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    x = log_positions(rows["tokens_seen"].to_numpy())
    for column, (label, colour, style) in UNIQUE_CURVES.items():
        ax.plot(x, rows[column], style, color=colour, marker="o", ms=3, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen (step 0 drawn at half the first checkpoint)")
    ax.set_ylabel(f"test R$^2$ (mean over voxels, {region})")
    ax.set_title(title or "what the model adds to a low-level baseline (word rate, word length)")
    ax.legend(fontsize=8)
    ax.figure.text(0.995, 0.005, tier_label(_tier(table)), ha="right", va="bottom", fontsize=8, color="0.35")
    return ax
