"""Phase results in words: the sentences the synthesis chapter prints, generated from the numbers.
"""
from __future__ import annotations

import numpy as np

from triphase.phases.inference import PhaseResult


def _fmt(value: float, digits: int = 2) -> str:
    return "NaN" if not np.isfinite(value) else f"{value:.{digits}f}"


def describe_phases(result: PhaseResult, name: str = "the curve", x_name: str = "log10 tokens") -> str:
    """A readable paragraph generated from the numbers of a :class:`PhaseResult`.

    Examples
    --------
    >>> from triphase.phases.inference import detect_phases
    >>> x = np.linspace(0, 3, 12)
    >>> text = describe_phases(detect_phases(x, x, n_boot=0, n_null=0), "a line")
    >>> text.startswith("For a line, BIC selects 0 breakpoints")
    True
    """
    level = int(round(100 * result.ci_level))
    parts = [f"For {name}, BIC selects {result.n_breakpoints} breakpoint"
             f"{'' if result.n_breakpoints == 1 else 's'} (of 0-{len(result.bic) - 1} tried)"]
    if result.n_breakpoints:
        where = [f"{_fmt(b)} [{_fmt(lo)}, {_fmt(hi)}] (~{10 ** b:.2g} tokens)"
                 for b, (lo, hi) in zip(result.breakpoints, result.breakpoint_ci)]
        parts[0] += f" at {x_name} " + ", ".join(where)
    parts[0] += "."
    segs = [f"{row.label} (slope {row.slope:.3g}, {level}% CI [{row.slope_ci_low:.3g}, {row.slope_ci_high:.3g}])"
            for row in result.segments.itertuples()]
    parts.append(f"Segments ({result.label_source} intervals): " + "; ".join(segs) + ".")
    verdict = "shows" if result.pattern else "does not show"
    parts.append(f"The point estimate {verdict} the triple phase pattern (rise, significant fall, rise).")
    if result.n_boot:
        parts.append(f"Labelled by the same rule, {100 * result.pattern_stability:.0f}% of {result.n_boot} "
                     f"{result.bootstrap} bootstrap replicates show it (a stability, not a probability that the "
                     f"pattern is real).")
    if result.n_null:
        noise = (f"{result.null_noise} noise, AR(1) coefficient {_fmt(result.noise_phi)}"
                 if result.null_noise == "ar1-gaussian" else f"{result.null_noise} noise")
        parts.append(f"Against a non-decreasing null ({noise}), the largest dip of the smoothed curve "
                     f"({result.monotone_statistic:.3g}) has p = {result.p_monotone:.3g} ({result.n_null} null "
                     f"curves); the triple label (pattern and p <= {1 - result.ci_level:.2g}) is "
                     f"{'given' if result.triple else 'not given'}.")
    return " ".join(parts)
