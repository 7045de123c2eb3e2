"""Plots of the model organism's training.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from triphase.models.organism import copy_warmup_end
from triphase.plotting import tier_label


def plot_training_curve(log, unigram_entropy: float | None = None, ax=None, tier: str = "embedded"):
    """Train and held-out loss against tokens seen (log x), every checkpoint marked by a tick at the bottom.

    Parameters
    ----------
    log : DataFrame
        Columns ``tokens_seen``, ``train_loss``, ``heldout_loss`` and, optionally,
        a boolean ``checkpoint`` (see :func:`triphase.models.organism.training_log`);
        without it the rows with a held-out loss are the checkpoints.
    unigram_entropy : float, optional
        Drawn as a horizontal reference (nats/token).
    ax : matplotlib Axes, optional
    tier : {"embedded", "real"}
        Written in the title (:func:`triphase.plotting.tier_label`).

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import pandas as pd
    >>> log = pd.DataFrame({"tokens_seen": [0, 100, 200], "train_loss": [6.0, 4.0, 3.0],
    ...                     "heldout_loss": [6.1, None, 3.2]})
    >>> ax = plot_training_curve(log, unigram_entropy=4.5)
    >>> ax.get_lines()[1].get_ydata().tolist(), ax.get_title()
    ([3.2], 'Training curve (embedded tier: model organism / simulated participant)')
    >>> ax.get_lines()[2].get_xdata().tolist()  # the checkpoint ticks
    [200]
    """

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    seen = log[log["tokens_seen"] > 0]
    ax.plot(seen["tokens_seen"], seen["train_loss"], lw=0.8, alpha=0.6, label="train loss (batch)")
    held = seen.dropna(subset=["heldout_loss"])
    ax.plot(held["tokens_seen"], held["heldout_loss"], "o-", ms=4, label="held-out loss (checkpoints)")
    marked = seen[seen["checkpoint"].astype(bool)] if "checkpoint" in seen else held
    # ticks in axes coordinates along the bottom: visible whatever the loss range (step 0 is off this log axis)
    ax.plot(marked["tokens_seen"], [0.0] * len(marked), "|", ms=10, color="k", transform=ax.get_xaxis_transform(),
            label=f"checkpoints ({len(marked)} after step 0)")
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, color="0.3", ls="--", lw=1, label=f"unigram entropy ({unigram_entropy:.2f})")
    warmup = copy_warmup_end(seen)
    if warmup is not None:  # an organism with a copy curriculum
        ax.axvspan(seen["tokens_seen"].min(), warmup, color="0.85", zorder=0,
                   label="copy warm-up (synthetic data, not stories)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"Training curve ({tier_label(tier)})", fontsize=10)
    ax.legend(frameon=False)
    return ax
