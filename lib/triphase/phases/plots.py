"""Plots of phase fits: the curve, its piecewise-linear fit, segments coloured by label, breakpoint intervals;
the synthesis chapter's three perspectives of one model on one axis; and what a model learned, at a glance.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from triphase.internal.sweep import DEFAULT_INDUCTION_LENGTH
from triphase.models.organism import copy_warmup_end
from triphase.phases.boundaries import INSTRUCTION, INTERNAL, OVERALL_TASK, SOLVING
from triphase.phases.inference import PhaseResult
from triphase.phases.learning import (
    FOLLOWING_GOAL,
    ICL_GAIN_GOAL,
    INDUCTION_SCORE_GOAL,
    SOLVING_GOAL,
    icl_curve,
    induction_curve,
    latent_probe_curves,
    model_curve,
    task_curves,
    uniform_induction_score,
)
from triphase.phases.piecewise import SEGMENT_COLOURS
from triphase.phases.synthesis import brain_replicates, layer_description, pooled_task_curve
from triphase.plotting import STEP0_POSITION, stamp_tier, tier_label

#: Lowest y of the task panel: chance-corrected solving can fall below 0.
SOLVING_AXIS_FLOOR = -0.3


# --------------------------------------------------------------------------- figure

def plot_phases(ax, x, y, result: PhaseResult, tier: str | None = None, title: str | None = None,
                yerr=None, label: str | None = None):
    """Draw a curve, its piecewise-linear fit, segments shaded by label and breakpoints with CI bands.

    Parameters
    ----------
    ax : matplotlib Axes
    x, y : array-like
        The curve (as passed to :func:`detect_phases`).
    result : PhaseResult
    tier : {"embedded", "real"}, optional
        Written in the title (:func:`triphase.plotting.tier_label`).
    yerr : array-like, shape (2, n_points), optional
        Lower and upper CI bounds of y, drawn as a band.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from triphase.phases.inference import detect_phases
    >>> x = np.linspace(0, 3, 12)
    >>> r = detect_phases(x, x, n_boot=0, n_null=0)
    >>> ax = plot_phases(plt.figure().gca(), x, x, r, tier="embedded")
    >>> "embedded" in ax.get_title()
    True
    """

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    order = np.argsort(x, kind="stable")
    if yerr is not None:
        low, high = np.asarray(yerr, dtype=float)
        ax.fill_between(x[order], low[order], high[order], color="0.8", lw=0, label="CI of each point")
    ax.plot(x[order], y[order], "o", ms=4, color="k", label=label or "observed")
    ax.plot(result.x, result.fitted, "-", color="tab:blue", lw=1.5,
            label=f"piecewise-linear fit ({result.n_breakpoints} breakpoints, BIC)")
    for row in result.segments.itertuples():
        ax.axvspan(row.start_x, row.end_x, color=SEGMENT_COLOURS[row.label], alpha=0.12, lw=0)
        ax.annotate(row.label, ((row.start_x + row.end_x) / 2, 1.0), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8, color=SEGMENT_COLOURS[row.label])
    for b, (lo, hi) in zip(result.breakpoints, result.breakpoint_ci):
        ax.axvline(b, color="tab:blue", ls="--", lw=1)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvspan(lo, hi, color="tab:blue", alpha=0.15, lw=0)
    heading = title or "Phases"
    stats_line = f"pattern: {'yes' if result.pattern else 'no'}"
    if result.n_boot:
        stats_line += f", stability {100 * result.pattern_stability:.0f}%"
    if result.n_null:
        stats_line += f", p(monotone) = {result.p_monotone:.3g}, triple: {'yes' if result.triple else 'no'}"
    lines = [heading, stats_line] + ([tier_label(tier)] if tier is not None else [])
    ax.set_title("\n".join(lines), fontsize=9)
    ax.set_xlabel("log10 tokens seen")
    ax.legend(frameon=False, fontsize=7)
    return ax


# --------------------------------------------------------------------------- three perspectives

def _not_computed(ax, what, keep_ticks=False):
    ax.text(0.5, 0.5, f"{what}: not computed", transform=ax.transAxes, ha="center", va="center", color="0.4")
    if not keep_ticks:
        ax.set_yticks([])


def _mark_brain(ax, result):
    for b in result.breakpoints:
        ax.axvline(b, color="tab:blue", ls="--", lw=0.8)


def _mark_boundary(ax, row, color, label, ls=":"):
    ax.axvline(row.x, color=color, ls=ls, lw=1.5, label=label)
    if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
        ax.axvspan(row.ci_low, row.ci_high, color=color, alpha=0.08, lw=0)


def plot_three_perspectives(model: dict, brain_measure: str = "score_mean", region: str = "all",
                            layer: int | None = None, threshold: float = 0.5, solving_metric: str = "solving",
                            few_shot: int = 0):
    """The three perspectives of one model on its log-tokens axis, in three stacked panels.

    (Top) the brain score with its 95% intervals and its phase fit
    (:func:`plot_phases`); (middle) the internal measures, averaged over layers
    and min-max scaled to [0, 1], with their largest changes; (bottom)
    instruction following and solving pooled over task families
    (:func:`~triphase.phases.synthesis.pooled_task_curve`) with the onset of
    instruction following and the stagnation / consolidation of solving. The brain breakpoints
    are dashed in every panel; a missing perspective says "not computed".

    Parameters
    ----------
    model : dict
        A model record of :mod:`triphase.phases.synthesis` after
        :func:`~triphase.phases.synthesis.prepare_model`,
        :func:`~triphase.phases.synthesis.fit_brain_phases` and
        :func:`~triphase.phases.synthesis.write_phases_table`.
    brain_measure, region, layer, threshold, solving_metric, few_shot
        The settings the record was analysed with (they label the panels).

    Returns
    -------
    matplotlib Figure
        Stamped with the record's tier (:func:`triphase.plotting.stamp_tier`).

    Examples
    --------
    >>> from triphase.phases.synthesis import read_run_tables, prepare_model  # doctest: +SKIP
    >>> models, _ = read_run_tables("organism", "simulated", "sim01")  # doctest: +SKIP
    >>> notes = prepare_model(models[0])  # doctest: +SKIP
    >>> fig = plot_three_perspectives(models[0])  # doctest: +SKIP
    """
    if model.get("axis") is None:
        raise ValueError(f"{model['series']} / {model['subject']} has no table: nothing to plot")
    replicates = brain_replicates(brain_measure)
    layer_text = layer_description(layer)
    m = model
    tier = m["tier"]
    x_of = dict(zip(m["axis"]["checkpoint"], m["axis"]["x"]))
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    result, phases = m.get("result"), m.get("phases")
    if result is not None:
        curve = m["curve"]
        band = (curve["ci_low"], curve["ci_high"]) if replicates == "ci" else None
        plot_phases(axes[0], m["x"], curve[brain_measure], result, tier=tier, yerr=band,
                    title=f"{m['series']} / {m['dataset']}-{m['subject']}: {brain_measure} ({region}), {layer_text}")
        axes[0].set_ylabel(brain_measure)
        axes[0].set_xlabel("")
    else:
        raw_curve = m.get("raw_curve")
        if raw_curve is not None and replicates == "ci":
            xs = [x_of[c] for c in raw_curve["checkpoint"]]
            axes[0].errorbar(xs, raw_curve[brain_measure], yerr=[raw_curve[brain_measure] - raw_curve["ci_low"],
                                                                 raw_curve["ci_high"] - raw_curve[brain_measure]],
                             fmt="o", color="k")
            axes[0].set_ylabel(brain_measure)
        _not_computed(axes[0], "brain-score phases", keep_ticks=raw_curve is not None)
        axes[0].set_title(f"{m['series']} / {m['dataset']}-{m['subject']}\n{tier_label(tier)}", fontsize=9)
    if m["internal"] is not None and len(m["internal"]):
        summary = m["internal"].groupby(["checkpoint", "step", "measure"], as_index=False)["value"].mean()
        for i, (measure, rows) in enumerate(summary.groupby("measure", sort=True)):
            rows = rows.sort_values("step")
            span = np.ptp(rows["value"].to_numpy())
            scaled = (rows["value"] - rows["value"].min()) / (span if span > 0 else 1.0)
            axes[1].plot([x_of[c] for c in rows["checkpoint"]], scaled, "o-", ms=3, color=f"C{i}", label=measure)
            if phases is not None:
                for r in phases[(phases["perspective"] == INTERNAL) & phases["found"]
                                & phases["source"].str.startswith(f"{measure} ")].itertuples():
                    axes[1].axvline(r.x, color=f"C{i}", ls=":", lw=1.2)
        axes[1].set_ylabel("internal measure\n(layer mean, min-max scaled)")
        axes[1].legend(frameon=False, fontsize=7, ncol=2)
    else:
        _not_computed(axes[1], "internal states")
    if m["tasks"] is not None and len(m["tasks"]):
        drawn = False
        for metric, color in (("instruction_following", "tab:purple"), (solving_metric, "tab:orange")):
            rows = pooled_task_curve(m["tasks"], metric)
            if rows.empty:
                continue
            xs = [x_of[c] for c in rows["checkpoint"]]
            axes[2].plot(xs, rows["value"], "o-", ms=3, color=color, label=f"{metric} (all tasks)")
            axes[2].fill_between(xs, rows["ci_low"], rows["ci_high"], color=color, alpha=0.15, lw=0)
            drawn = True
        if phases is not None:
            for r in phases[(phases["perspective"] == INSTRUCTION) & (phases["source"] == OVERALL_TASK)
                            & phases["found"]].itertuples():
                _mark_boundary(axes[2], r, "tab:purple", f"instruction-following onset (CI > {threshold:g})")
            for r in phases[(phases["perspective"] == SOLVING)
                            & (phases["source"] == f"{OVERALL_TASK} ({solving_metric})")
                            & phases["found"]].itertuples():
                _mark_boundary(axes[2], r, "tab:orange", f"{solving_metric} {r.boundary.replace('_', ' ')}",
                               ls=":" if r.boundary == "consolidation_onset" else "-.")
        axes[2].axhline(threshold, color="0.6", lw=0.8)
        axes[2].set_ylim(SOLVING_AXIS_FLOOR, 1.02)
        axes[2].set_ylabel(f"share of items / chance-corrected ({few_shot}-shot)")
        if drawn:
            axes[2].legend(frameon=False, fontsize=7)
        else:
            _not_computed(axes[2], f"instruction following / {solving_metric}")
    else:
        _not_computed(axes[2], "downstream tasks")
    if result is not None:
        for ax in axes[1:]:
            _mark_brain(ax, result)
    axes[2].set_xlabel("log10 tokens seen (step 0 one log spacing before the first checkpoint)")
    stamp_tier(fig, tier)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


#: Colours of the validation plot: goal met, goal not met, shown for contrast.
VALIDATION_COLOURS = {True: "tab:green", False: "tab:red", None: "tab:gray"}
#: Monte-Carlo error bars of the validation plot: +/- this many standard errors.
VALIDATION_ERROR_SE = 2


def plot_validation(table, statistics, goal: float | None = None, title: str | None = None, ax=None):
    """Rates of some validation rows with +/- 2 Monte-Carlo SE, coloured by whether they meet their goal.

    Parameters
    ----------
    table : DataFrame
        :func:`triphase.phases.validation.validation_table` rows.
    statistics : sequence of str
        Which ``statistic`` values to draw (one row of dots each, one dot per setting).
    goal : float, optional
        Draw the goal as a vertical line.
    title : str, optional
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    rows = table[table["statistic"].isin(statistics)]
    if rows.empty:
        raise ValueError(f"no validation rows with statistic in {list(statistics)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.itertuples()):
        colour = VALIDATION_COLOURS[None if r.passed is None or r.passed != r.passed else bool(r.passed)]
        half = VALIDATION_ERROR_SE * r.mc_se if np.isfinite(r.mc_se) else 0.0
        ax.errorbar(r.value, yi, xerr=half, fmt="o", color=colour, ms=4, capsize=2)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.statistic}: {r.setting}" for r in rows.itertuples()], fontsize=7)
    if goal is not None:
        ax.axvline(goal, color="k", ls="--", lw=1, label=f"goal {goal:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"rate (dots: estimate; bars: +/- {VALIDATION_ERROR_SE} Monte-Carlo SE)")
    ax.set_title(title or "validation by simulation")
    stamp_tier(ax.figure, "simulation")
    return ax


# --------------------------------------------------------------------------- what the organism learned

#: Panels of :func:`plot_learning_at_a_glance`, top to bottom.
GLANCE_PANELS = ("loss", "induction", "icl", "tasks", "latent_probes")
#: Legends beside the panels (the curves fill the panels' width).
_GLANCE_LEGEND = {"frameon": False, "fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}


def _glance_positions(*token_arrays):
    """x positions shared by every panel: step0 at :data:`~triphase.plotting.STEP0_POSITION` times the
    smallest positive tokens_seen of all the tables (as :func:`triphase.plotting.log_positions` does per table)."""
    tokens = np.concatenate([np.asarray(t, dtype=float) for t in token_arrays if t is not None])
    positive = tokens[tokens > 0]
    floor = positive.min() * STEP0_POSITION if positive.size else 1.0
    return lambda values: np.where(np.asarray(values, dtype=float) > 0, np.asarray(values, dtype=float), floor)


def _glance_tier(tier, *tables) -> str:
    if tier is not None:
        return tier
    tiers = {t for table in tables if table is not None and "tier" in table for t in table["tier"].unique()}
    return tiers.pop() if len(tiers) == 1 else "embedded"


def _log_checkpoints(log):
    """The training log's checkpoint rows: its ``checkpoint`` flag, else the rows with a held-out loss."""
    if "checkpoint" in log:
        return log[log["checkpoint"].astype(bool)]
    return log.dropna(subset=["heldout_loss"])


def plot_learning_at_a_glance(log, internal_df, tasks_df, few_shot: int = 0, tier: str | None = None,
                              unigram_entropy: float | None = None,
                              induction_length: int = DEFAULT_INDUCTION_LENGTH):
    """What a model learned over training, in five panels sharing a log tokens-seen axis.

    (a) training and held-out loss with every checkpoint marked by a tick at
    the bottom; (b) the best prefix-matching (induction) score over layers with
    the uniform-attention reference and issue 14's goal; (c) the in-context loss
    gain with its goal; (d) per task family, format following (dashed) and
    chance-corrected solving (solid, with its CI band) with their goals; (e) the
    latent-state probes at their best layer (their control task dotted). Step 0
    is drawn at the left edge (half the first positive tokens_seen). A panel
    whose table or measure is missing says "not computed".

    Parameters
    ----------
    log : DataFrame or None
        The organism's training log (:func:`triphase.models.organism.training_log`:
        ``tokens_seen``, ``train_loss``, ``heldout_loss`` and a boolean
        ``checkpoint``); None for a series without one (the held-out loss then
        comes from the internal table's ``lm_loss_heldout``).
    internal_df, tasks_df : DataFrame or None
        ``internal.parquet`` and ``tasks.parquet`` of the series.
    few_shot : int
        Few-shot count of the task curves.
    tier : {"embedded", "real"}, optional
        Written in the title; by default the tables' tier.
    unigram_entropy : float, optional
        Drawn in the loss panel (nats/token).
    induction_length : int
        Repeat length of the induction measure (for the uniform-attention reference).

    Returns
    -------
    matplotlib Figure
        Axes in the order of :data:`GLANCE_PANELS`; the title says the tier.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> log = pd.DataFrame({"tokens_seen": [0, 100, 200], "train_loss": [None, 4.0, 3.0],
    ...                     "heldout_loss": [6.1, 4.2, 3.2], "checkpoint": True})
    >>> fig = plot_learning_at_a_glance(log, None, None, tier="embedded")
    >>> len(fig.axes), fig.axes[0].get_lines()[1].get_ydata().tolist()
    (5, [6.1, 4.2, 3.2])
    """
    internal_df = internal_df if internal_df is not None and len(internal_df) else None
    tasks_df = tasks_df if tasks_df is not None and len(tasks_df) else None
    if log is None and internal_df is None and tasks_df is None:
        raise ValueError("log, internal_df and tasks_df are all missing: nothing to plot")
    tier = _glance_tier(tier, internal_df, tasks_df)
    x_of = _glance_positions(*(t["tokens_seen"] for t in (log, internal_df, tasks_df) if t is not None))
    fig, axes = plt.subplots(len(GLANCE_PANELS), 1, figsize=(11, 13), sharex=True)
    loss_ax, induction_ax, icl_ax, task_ax, probe_ax = axes

    # (a) loss, checkpoints as ticks along the bottom
    if log is not None:
        trained = log.dropna(subset=["train_loss"])
        loss_ax.plot(x_of(trained["tokens_seen"]), trained["train_loss"], lw=0.8, alpha=0.6,
                     label="train loss (batch)")
        held = log.dropna(subset=["heldout_loss"])
        loss_ax.plot(x_of(held["tokens_seen"]), held["heldout_loss"], "o-", ms=3, label="held-out loss")
        marked = _log_checkpoints(log)["tokens_seen"]
    else:
        marked = pd.concat([t["tokens_seen"] for t in (internal_df, tasks_df) if t is not None]).drop_duplicates()
        heldout = model_curve(internal_df, "lm_loss_heldout") if internal_df is not None else None
        if heldout is not None and len(heldout):
            loss_ax.plot(x_of(heldout["tokens_seen"]), heldout["value"], "o-", ms=3,
                         label="held-out loss (lm_loss_heldout)")
        else:
            _not_computed(loss_ax, "training log")
    marked = np.sort(np.unique(np.asarray(marked, dtype=float)))
    loss_ax.plot(x_of(marked), np.zeros(len(marked)), "|", ms=10, color="k",
                 transform=loss_ax.get_xaxis_transform(), label=f"checkpoints ({len(marked)})")
    if unigram_entropy is not None:
        loss_ax.axhline(unigram_entropy, color="0.3", ls="--", lw=1, label=f"unigram entropy ({unigram_entropy:.2f})")
    loss_ax.set_ylabel("cross-entropy\n(nats / token)")
    loss_ax.legend(**_GLANCE_LEGEND)

    # (b) induction head
    induction = induction_curve(internal_df) if internal_df is not None else None
    if induction is not None and len(induction):
        induction_ax.plot(x_of(induction["tokens_seen"]), induction["value"], "o-", ms=3, color="tab:red",
                          label="induction score (best layer)")
        induction_ax.axhline(uniform_induction_score(induction_length), color="0.4", ls="--", lw=0.8,
                             label="uniform attention")
        induction_ax.axhline(INDUCTION_SCORE_GOAL, color="tab:red", ls=":", lw=1,
                             label=f"goal {INDUCTION_SCORE_GOAL:g}")
        induction_ax.set_ylim(0, max(1.1 * INDUCTION_SCORE_GOAL, 1.05 * float(induction["value"].max())))
        induction_ax.legend(**_GLANCE_LEGEND)
    else:
        _not_computed(induction_ax, "induction score")
    induction_ax.set_ylabel("prefix-matching\nscore")

    # (c) in-context gain
    icl = icl_curve(internal_df) if internal_df is not None else None
    if icl is not None and len(icl):
        icl_ax.plot(x_of(icl["tokens_seen"]), icl["value"], "o-", ms=3, color="tab:green",
                    label="in-context loss gain")
        icl_ax.axhline(0.0, color="0.4", ls="--", lw=0.8, label="no gain")
        icl_ax.axhline(ICL_GAIN_GOAL, color="tab:green", ls=":", lw=1, label=f"goal {ICL_GAIN_GOAL:g}")
        icl_ax.legend(**_GLANCE_LEGEND)
    else:
        _not_computed(icl_ax, "in-context gain")
    icl_ax.set_ylabel("second minus first\nrepeat (nats / token)")

    # (d) task families
    if tasks_df is not None:
        following = task_curves(tasks_df, "instruction_following", few_shot)
        solving = task_curves(tasks_df, "solving", few_shot)
        for i, family in enumerate(sorted(set(following["task"]) | set(solving["task"]))):
            rows = following[following["task"] == family]
            task_ax.plot(x_of(rows["tokens_seen"]), rows["value"], "--", lw=1, color=f"C{i}",
                         label=f"{family}: format following")
            rows = solving[solving["task"] == family]
            xs = x_of(rows["tokens_seen"])
            task_ax.plot(xs, rows["value"], "o-", ms=3, color=f"C{i}", label=f"{family}: solving")
            task_ax.fill_between(xs, rows["ci_low"], rows["ci_high"], color=f"C{i}", alpha=0.12, lw=0)
        task_ax.axhline(FOLLOWING_GOAL, color="0.4", ls="--", lw=0.8)
        task_ax.axhline(SOLVING_GOAL, color="0.4", ls=":", lw=0.8)
        task_ax.set_ylim(SOLVING_AXIS_FLOOR, 1.02)
        task_ax.legend(**_GLANCE_LEGEND)
    else:
        _not_computed(task_ax, "downstream tasks")
    task_ax.set_ylabel(f"share / chance-corrected\n({few_shot}-shot; goals grey)")

    # (e) latent-state probes
    probes = latent_probe_curves(internal_df) if internal_df is not None else None
    if probes is not None and len(probes):
        for i, (probe, rows) in enumerate(probes.groupby("probe", sort=True)):
            xs = x_of(rows["tokens_seen"])
            probe_ax.plot(xs, rows["score"], "o-", ms=3, color=f"C{i + 4}", label=f"{probe} (best layer)")
            probe_ax.plot(xs, rows["control"], ":", lw=1, color=f"C{i + 4}", label=f"{probe} control task")
        probe_ax.legend(**_GLANCE_LEGEND)
    else:
        _not_computed(probe_ax, "latent-state probes")
    probe_ax.set_ylabel("probe score\n(accuracy / R²)")

    warmup = copy_warmup_end(log)
    for ax, letter in zip(axes, "abcde"):
        ax.set_xscale("log")
        ax.set_title(f"({letter})", loc="left", fontsize=9)
        if warmup is not None:  # the organism's synthetic copy curriculum: not story text
            ax.axvspan(x_of([0])[0], warmup, color="0.85", zorder=0,
                       label="copy warm-up (synthetic data)" if ax is loss_ax else None)
    if warmup is not None:
        loss_ax.legend(**_GLANCE_LEGEND)
    probe_ax.set_xlabel("tokens seen (log; step 0 at the left edge)")
    fig.suptitle(f"What the model learned, at a glance\n{tier_label(tier)}", fontsize=10)
    fig.tight_layout()
    return fig
