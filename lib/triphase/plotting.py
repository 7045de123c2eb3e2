"""Shared plotting helpers: tier labels and the organism's training curve."""
from __future__ import annotations

TIER_LABELS = {
    "embedded": "embedded tier: model organism / simulated participant",
    "real": "real tier: public checkpoints / recorded fMRI",
}


def tier_label(tier: str) -> str:
    """The text every figure carries to say which tier produced it.

    Examples
    --------
    >>> tier_label("embedded")
    'embedded tier: model organism / simulated participant'
    """
    if tier not in TIER_LABELS:
        raise ValueError(f"tier must be one of {', '.join(TIER_LABELS)}, got {tier!r}")
    return TIER_LABELS[tier]


def stamp_tier(fig, tier: str) -> None:
    """Write the tier label in the figure's lower right corner."""
    fig.text(0.995, 0.005, tier_label(tier), ha="right", va="bottom", fontsize=8, color="0.35")


def plot_training_curve(log, unigram_entropy: float | None = None, ax=None, tier: str = "embedded"):
    """Train and held-out loss against tokens seen (log x).

    Parameters
    ----------
    log : DataFrame
        Columns ``tokens_seen``, ``train_loss``, ``heldout_loss`` (see
        :func:`triphase.organism.training_log`).
    unigram_entropy : float, optional
        Drawn as a horizontal reference (nats/token).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    seen = log[log["tokens_seen"] > 0]
    ax.plot(seen["tokens_seen"], seen["train_loss"], lw=0.8, alpha=0.6, label="train loss (batch)")
    held = seen.dropna(subset=["heldout_loss"])
    ax.plot(held["tokens_seen"], held["heldout_loss"], "o-", ms=4, label="held-out loss (checkpoints)")
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, color="0.3", ls="--", lw=1, label=f"unigram entropy ({unigram_entropy:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"Training curve ({tier_label(tier)})", fontsize=10)
    ax.legend(frameon=False)
    return ax
