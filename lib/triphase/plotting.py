"""Shared plotting helpers: tier labels and the organism's training curve."""
from __future__ import annotations

import numpy as np

#: Where step0 (zero tokens) is drawn on a log axis: this fraction of the first positive tokens_seen.
STEP0_POSITION = 0.5
TIER_LABELS = {
    "embedded": "embedded tier: model organism / simulated participant",
    "real": "real tier: public checkpoints / recorded fMRI",
    "simulation": "simulation: planted ground truth (validation of the methods)",
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


def log_positions(tokens: np.ndarray) -> np.ndarray:
    """x positions on a log axis: step0 (0 tokens) at half the first positive value.

    Examples
    --------
    >>> log_positions(np.array([0, 100, 1000])).tolist()
    [50.0, 100.0, 1000.0]
    """
    tokens = np.asarray(tokens, dtype=float)
    positive = tokens[tokens > 0]
    floor = positive.min() * STEP0_POSITION if positive.size else 1.0
    return np.where(tokens > 0, tokens, floor)
