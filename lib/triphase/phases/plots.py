"""Plots of phase fits: the curve, its piecewise-linear fit, segments coloured by label, breakpoint intervals.
"""
from __future__ import annotations

import numpy as np

from triphase.phases.inference import PhaseResult
from triphase.phases.piecewise import SEGMENT_COLOURS
from triphase.plotting import tier_label

#: Most breakpoints the model search considers by default (the design's 0-4).


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
        stats_line += f", bootstrap share {100 * result.pattern_share:.0f}%"
    if result.n_null:
        stats_line += f", p(monotone) = {result.p_monotone:.3g}"
    lines = [heading, stats_line] + ([tier_label(tier)] if tier is not None else [])
    ax.set_title("\n".join(lines), fontsize=9)
    ax.set_xlabel("log10 tokens seen")
    ax.legend(frameon=False, fontsize=7)
    return ax
