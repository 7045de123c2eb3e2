"""What a model learned and what it did not: issue 14's goals checked against the internal and task tables.

:func:`learning_report` reads a model's internal-states table (``internal.parquet``) and its task
table (``tasks.parquet``) and checks one goal per capability at the final checkpoint: an induction
head, an in-context loss gain, format following and solving of each task family, and a rise of the
latent-state probes over training. :func:`learning_sentences` turns the report into plain language
("learned: ...; did not learn: ...; not measured: ..."), generated from the table. The goals are
descriptive rules for the default organism (issue 14), not statistical tests.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from triphase.internal.summary import SUMMARY_COLUMNS, probe_baselines
from triphase.internal.sweep import DEFAULT_INDUCTION_LENGTH, LATENT_PROBES, NO_HEAD, PROBES

# The goals issue 14 sets for the default organism (its point 5: the organism chapter says plainly what the
# organism learned and what it did not). Descriptive thresholds, checked at the final checkpoint.
#: Induction head: best prefix-matching score (max over layers of ``induction_score_max``) at the final
#: checkpoint at least this (uniform causal attention scores about 0.02, :func:`uniform_induction_score`).
INDUCTION_SCORE_GOAL = 0.3
#: In-context learning: loss on the second repeat minus the first (``icl_loss_gain``, nats/token) at most this.
ICL_GAIN_GOAL = -0.3
#: A task family is solved: chance-corrected accuracy among compliant answers (``solving``) at least this...
SOLVING_GOAL = 0.5
#: ... with the lower end of its interval above this (better than chance, not by luck of the items).
SOLVING_CI_LOW_ABOVE = 0.0
#: Issue 14 asks for this many solved task families.
SOLVED_FAMILIES_GOAL = 2
#: Formats followed: share of answers in the asked format (``instruction_following``) at least this.
FOLLOWING_GOAL = 0.9
#: A latent-state probe "rises": its selectivity (score minus the per-type control task, at the best layer
#: of each checkpoint) at the final checkpoint minus the same at the series' first checkpoint at least
#: this. Selectivity, not the raw score: better separated word types raise the score and the control
#: together, without any tracking of the story. A descriptive rule chosen for this report (issue 14 names
#: no number).
PROBE_RISE_GOAL = 0.05
#: The latent-state probe measures (the story world's protagonist location and narrative tension).
LATENT_PROBE_MEASURES = tuple(f"probe_{name}_{'accuracy' if PROBES[name][0] == 'classification' else 'r2'}"
                              for name in LATENT_PROBES)

#: Kinds of capability a report has rows for, and the words that name them when none was measured.
KINDS = {
    "induction": "an induction head (induction_score_max in internal.parquet, notebook 02_internal_states)",
    "icl": "an in-context loss gain (icl_loss_gain in internal.parquet, notebook 02_internal_states)",
    "following": "format following (instruction_following in tasks.parquet, notebook 03_downstream_tasks)",
    "solving": "task solving (solving in tasks.parquet, notebook 03_downstream_tasks)",
    "latent_probe": ("the latent-state probes (" + " / ".join(LATENT_PROBE_MEASURES)
                     + " in internal.parquet, notebook 02_internal_states)"),
}
REPORT_COLUMNS = ["capability", "kind", "measure", "checkpoint_final", "value_final", "ci_low", "ci_high", "goal",
                  "met", "first_checkpoint"]


def uniform_induction_score(induction_length: int = DEFAULT_INDUCTION_LENGTH) -> float:
    """The prefix-matching score of uniform causal attention on two repeats of ``induction_length`` tokens.

    A query at position ``q`` of the second repeat spreads its attention over
    ``q + 1`` positions, one of them the induction target: the score is the
    mean of ``1 / (q + 1)`` over the second repeat.

    Examples
    --------
    >>> round(uniform_induction_score(32), 4)
    0.0214
    """
    if int(induction_length) < 1:
        raise ValueError(f"induction_length must be a positive integer, got {induction_length!r}")
    queries = np.arange(induction_length, 2 * induction_length)
    return float(np.mean(1.0 / (queries + 1)))


# --------------------------------------------------------------------------- curves

def _one_series(table: pd.DataFrame, name: str) -> None:
    if "series" in table and table["series"].nunique() > 1:
        raise ValueError(f"{name} must hold one series, got {sorted(table['series'].unique())}")


def _model_rows(internal_df: pd.DataFrame) -> pd.DataFrame:
    return internal_df[internal_df["head"] == NO_HEAD] if "head" in internal_df else internal_df


def induction_curve(internal_df: pd.DataFrame) -> pd.DataFrame:
    """Best prefix-matching score per checkpoint: the max over layers of ``induction_score_max``.

    Returns
    -------
    DataFrame
        Columns ``checkpoint``, ``step``, ``tokens_seen``, ``value``, ``layer``
        (the best layer), in training order; empty when the measure is absent.

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": ["step0", "step0", "step9", "step9"], "step": [0, 0, 9, 9],
    ...                   "tokens_seen": [0, 0, 90, 90], "layer": [1, 2, 1, 2], "head": -1,
    ...                   "measure": "induction_score_max", "value": [0.02, 0.03, 0.4, 0.1]})
    >>> induction_curve(t)[["checkpoint", "layer", "value"]].values.tolist()
    [['step0', 2, 0.03], ['step9', 1, 0.4]]
    """
    rows = _model_rows(internal_df)
    rows = rows[(rows["measure"] == "induction_score_max") & rows["value"].notna()]
    columns = ["checkpoint", "step", "tokens_seen", "value", "layer"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    best = rows.loc[rows.groupby("step")["value"].idxmax()]
    return best[columns].sort_values("step").reset_index(drop=True)


def model_curve(internal_df: pd.DataFrame, measure: str) -> pd.DataFrame:
    """A model-wide measure (layer -1, e.g. ``icl_loss_gain``, ``lm_loss_heldout``) per checkpoint.

    Returns
    -------
    DataFrame
        Columns ``checkpoint``, ``step``, ``tokens_seen``, ``value``, in training order.

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": ["step9", "step0"], "step": [9, 0], "tokens_seen": [90, 0],
    ...                   "layer": -1, "head": -1, "measure": "icl_loss_gain", "value": [-0.5, 0.0]})
    >>> model_curve(t, "icl_loss_gain")["value"].tolist()
    [0.0, -0.5]
    """
    rows = _model_rows(internal_df)
    rows = rows[rows["measure"] == measure]
    # one value per checkpoint (the measure is model-wide); a mean guards against duplicated rows
    curve = rows.groupby(["checkpoint", "step", "tokens_seen"], as_index=False)["value"].mean()
    return curve.sort_values("step").reset_index(drop=True)


def icl_curve(internal_df: pd.DataFrame) -> pd.DataFrame:
    """In-context loss gain per checkpoint (``icl_loss_gain``, nats/token; negative: context helps).

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": ["step0", "step9"], "step": [0, 9], "tokens_seen": [0, 90],
    ...                   "layer": -1, "head": -1, "measure": "icl_loss_gain", "value": [0.0, -0.5]})
    >>> icl_curve(t)["value"].tolist()
    [0.0, -0.5]
    """
    return model_curve(internal_df, "icl_loss_gain")


def latent_probe_curves(internal_df: pd.DataFrame) -> pd.DataFrame:
    """The latent-state probes per checkpoint at their best layer, with the rise of their selectivity.

    Returns
    -------
    DataFrame
        :func:`~triphase.internal.summary.probe_baselines` rows of the
        measures in :data:`LATENT_PROBE_MEASURES` (``probe``, ``checkpoint``,
        ``step``, ``tokens_seen``, ``layer``, ``score``, ``control``,
        ``selectivity``, ``gain_over_step0``, ...) plus ``selectivity_gain``
        (selectivity minus that of the series' first checkpoint, named in
        ``first_checkpoint``); empty when none was measured.

    Examples
    --------
    >>> rows = [{"series": "s", "checkpoint": f"step{s}", "step": s, "tokens_seen": 10 * s, "layer": 1,
    ...          "head": -1, "measure": "probe_tension_r2", "value": 0.1 + 0.02 * s} for s in (0, 5)]
    >>> latent_probe_curves(pd.DataFrame(rows))["gain_over_step0"].round(2).tolist()
    [0.0, 0.1]
    """
    rows = _model_rows(internal_df)
    if not rows["measure"].isin(LATENT_PROBE_MEASURES).any():
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    # the probes and their control tasks only: probe_baselines reports every probe it is given
    picked = rows[rows["measure"].isin([*LATENT_PROBE_MEASURES, *(f"{m}_control" for m in LATENT_PROBE_MEASURES)])]
    if "series" not in picked:
        picked = picked.assign(series="")
    curves = probe_baselines(picked).sort_values(["probe", "step"]).reset_index(drop=True)
    first = curves.groupby("probe")["selectivity"].transform("first")
    # chance level of each probe's score: the majority-class share (classification) or R^2 = 0 (regression)
    chance_rows = rows[rows["measure"].str.endswith("_chance")]
    chance_of = chance_rows.groupby(["measure", "checkpoint"])["value"].first().to_dict()
    chance = [chance_of.get((probe.rsplit("_", 1)[0] + "_chance", checkpoint), np.nan)
              if probe.endswith("_accuracy") else 0.0
              for probe, checkpoint in zip(curves["probe"], curves["checkpoint"])]
    return curves.assign(selectivity_gain=curves["selectivity"] - first,
                         first_checkpoint=curves.groupby("probe")["checkpoint"].transform("first"),
                         chance=np.asarray(chance, dtype=float))


def task_curves(tasks_df: pd.DataFrame, metric: str, few_shot: int = 0) -> pd.DataFrame:
    """One metric of every task family per checkpoint, at one few-shot count, in training order.

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": "step0", "step": 0, "tokens_seen": 0, "task": ["copy", "copy"],
    ...                   "few_shot": [0, 2], "metric": "solving", "value": [0.1, 0.2], "ci_low": 0.0,
    ...                   "ci_high": 0.3})
    >>> task_curves(t, "solving", few_shot=2)["value"].tolist()
    [0.2]
    """
    rows = tasks_df[(tasks_df["metric"] == metric) & (tasks_df["few_shot"] == few_shot)]
    columns = ["task", "checkpoint", "step", "tokens_seen", "value", "ci_low", "ci_high"]
    return rows[columns].sort_values(["task", "step"]).reset_index(drop=True)


# --------------------------------------------------------------------------- the report

def _first_met(curve: pd.DataFrame, met: np.ndarray):
    """Name of the first checkpoint (training order) where ``met`` holds, else None."""
    hits = np.flatnonzero(met)
    return str(curve["checkpoint"].iloc[hits[0]]) if hits.size else None


def _row(capability, kind, measure, curve, met, goal, value_column="value", ci=True) -> dict:
    last = curve.iloc[-1]
    return {"capability": capability, "kind": kind, "measure": measure, "checkpoint_final": str(last["checkpoint"]),
            "value_final": float(last[value_column]),
            "ci_low": float(last["ci_low"]) if ci else np.nan, "ci_high": float(last["ci_high"]) if ci else np.nan,
            "goal": goal, "met": bool(met[-1]), "first_checkpoint": _first_met(curve, met)}


def _internal_rows(internal_df: pd.DataFrame, induction_length: int) -> list[dict]:
    rows = []
    induction = induction_curve(internal_df)
    if len(induction):
        met = induction["value"].to_numpy() >= INDUCTION_SCORE_GOAL
        uniform = uniform_induction_score(induction_length)
        rows.append(_row("induction head", "induction", "induction_score_max (best layer)", induction, met,
                         f">= {INDUCTION_SCORE_GOAL:g} (uniform attention {uniform:.2g})", ci=False))
    icl = icl_curve(internal_df)
    if len(icl):
        met = icl["value"].to_numpy() <= ICL_GAIN_GOAL
        rows.append(_row("in-context gain", "icl", "icl_loss_gain (nats/token)", icl, met,
                         f"<= {ICL_GAIN_GOAL:g} nats/token", ci=False))
    probes = latent_probe_curves(internal_df)
    for probe, curve in probes.groupby("probe", sort=True):
        curve = curve.reset_index(drop=True)
        # a rise of selectivity, and a score above chance: a probe below the majority class reads no state
        # however much its control falls (NaN: no control task or no chance level, compares False)
        met = ((curve["selectivity_gain"].to_numpy() >= PROBE_RISE_GOAL)
               & (curve["score"].to_numpy() > curve["chance"].to_numpy()))
        name = probe.removeprefix("probe_").rsplit("_", 1)[0]
        first = curve["first_checkpoint"].iloc[0]
        rows.append(_row(f"latent state: {name}", "latent_probe",
                         f"{probe} selectivity (best layer) minus at {first}", curve, met,
                         f"selectivity rise >= {PROBE_RISE_GOAL:g} over {first}, score above chance",
                         value_column="selectivity_gain",
                         ci=False))
    return rows


def _task_rows(tasks_df: pd.DataFrame, few_shot: int) -> list[dict]:
    rows = []
    following = task_curves(tasks_df, "instruction_following", few_shot)
    solving = task_curves(tasks_df, "solving", few_shot)
    for family in sorted(set(following["task"]) | set(solving["task"])):
        curve = following[following["task"] == family].reset_index(drop=True)
        if len(curve):
            met = curve["value"].to_numpy() >= FOLLOWING_GOAL  # NaN compares False: not met
            rows.append(_row(f"{family}: format following", "following",
                             f"instruction_following ({few_shot}-shot)", curve, met, f">= {FOLLOWING_GOAL:g}"))
        curve = solving[solving["task"] == family].reset_index(drop=True)
        if len(curve):
            met = ((curve["value"].to_numpy() >= SOLVING_GOAL)
                   & (curve["ci_low"].to_numpy() > SOLVING_CI_LOW_ABOVE))
            rows.append(_row(f"{family}: solving", "solving", f"solving ({few_shot}-shot)", curve, met,
                             f">= {SOLVING_GOAL:g} with CI low > {SOLVING_CI_LOW_ABOVE:g}"))
    return rows


def learning_report(internal_df: pd.DataFrame | None, tasks_df: pd.DataFrame | None, few_shot: int = 0,
                    induction_length: int = DEFAULT_INDUCTION_LENGTH) -> pd.DataFrame:
    """One row per capability: its value at the final checkpoint, issue 14's goal, and whether it is met.

    Capabilities (rows absent when their table or measure is absent):

    * ``induction head``: best prefix-matching score over layers
      (``induction_score_max``) >= :data:`INDUCTION_SCORE_GOAL`;
    * ``in-context gain``: ``icl_loss_gain`` <= :data:`ICL_GAIN_GOAL` nats/token;
    * ``<family>: format following``: ``instruction_following`` >= :data:`FOLLOWING_GOAL`;
    * ``<family>: solving``: ``solving`` >= :data:`SOLVING_GOAL` and its ``ci_low`` > 0;
    * ``latent state: <probe>``: the probe's selectivity (score minus control
      task, best layer) at the final checkpoint minus at the first checkpoint
      >= :data:`PROBE_RISE_GOAL`, with the score above chance (majority class;
      R^2 = 0).

    Parameters
    ----------
    internal_df : DataFrame or None
        ``internal.parquet`` of one series (notebook ``02_internal_states``).
    tasks_df : DataFrame or None
        ``tasks.parquet`` of one series (notebook ``03_downstream_tasks``).
    few_shot : int
        Which few-shot count of the task table is judged.
    induction_length : int
        Length of one repeat of the random sequences the induction score was
        measured on (only for the uniform-attention reference in ``goal``).

    Returns
    -------
    DataFrame
        Columns :data:`REPORT_COLUMNS`: ``kind`` is a key of :data:`KINDS`;
        ``value_final`` the value at the table's last checkpoint
        (``checkpoint_final``); ``ci_low``/``ci_high`` its interval (task rows;
        NaN otherwise); ``met`` whether the goal holds there;
        ``first_checkpoint`` the first checkpoint in training order where it
        holds (None if never; it may hold early and be lost by the end).

    Examples
    --------
    >>> internal = pd.DataFrame({"checkpoint": ["step0", "step9"], "step": [0, 9], "tokens_seen": [0, 90],
    ...                          "layer": 1, "head": -1, "measure": "induction_score_max", "value": [0.02, 0.45]})
    >>> report = learning_report(internal, None)
    >>> report[["capability", "value_final", "met", "first_checkpoint"]].values.tolist()
    [['induction head', 0.45, True, 'step9']]
    """
    rows = []
    if internal_df is not None and len(internal_df):
        _one_series(internal_df, "internal_df")
        rows += _internal_rows(internal_df, induction_length)
    if tasks_df is not None and len(tasks_df):
        _one_series(tasks_df, "tasks_df")
        if few_shot not in set(tasks_df["few_shot"]):
            raise ValueError(f"few_shot={few_shot} is not in the tasks table (it has {sorted(set(tasks_df['few_shot']))})")
        rows += _task_rows(tasks_df, few_shot)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    report["met"] = report["met"].astype(bool)
    # None, not NaN, where a goal is never met (pandas would turn the missing names into NaN)
    report["first_checkpoint"] = pd.Series([row["first_checkpoint"] for row in rows], index=report.index,
                                           dtype=object)
    return report


# --------------------------------------------------------------------------- sentences

def _number(value: float) -> str:
    return "undefined (no compliant answers)" if not np.isfinite(value) else f"{value:.3g}"


def _phrase(row) -> str:
    """'induction head (0.45 at step9, goal >= 0.3; first met at step9)'."""
    interval = (f" [{row.ci_low:.2f}, {row.ci_high:.2f}]"
                if np.isfinite(row.ci_low) and np.isfinite(row.ci_high) else "")
    text = f"{row.capability} ({_number(row.value_final)}{interval} at {row.checkpoint_final}, goal {row.goal}"
    if row.first_checkpoint is not None:
        text += f"; first met at {row.first_checkpoint}" if row.met else f"; met at {row.first_checkpoint}, lost by the end"
    return text + ")"


def learning_sentences(report: pd.DataFrame) -> str:
    """What the model learned and what it did not, in plain language, generated from :func:`learning_report`.

    Parameters
    ----------
    report : DataFrame
        :func:`learning_report` output.

    Returns
    -------
    str
        Markdown: a "Learned" line (goals met at the final checkpoint), a
        "Did not learn" line (goals not met), a count of solved task families
        against issue 14's goal of :data:`SOLVED_FAMILIES_GOAL`, and a "Not
        measured" line naming the capabilities without rows and the notebook
        that measures them.

    Examples
    --------
    >>> internal = pd.DataFrame({"checkpoint": ["step0", "step9"], "step": [0, 9], "tokens_seen": [0, 90],
    ...                          "layer": 1, "head": -1, "measure": "induction_score_max", "value": [0.02, 0.05]})
    >>> text = learning_sentences(learning_report(internal, None))
    >>> print(text.splitlines()[1])
    - **Did not learn:** induction head (0.05 at step9, goal >= 0.3 (uniform attention 0.021)).
    """
    missing = [c for c in REPORT_COLUMNS if c not in report]
    if missing:
        raise ValueError(f"report must be a learning_report table; missing columns {missing}")
    met = report[report["met"]]
    unmet = report[~report["met"]]
    lines = [
        "- **Learned:** " + ("; ".join(_phrase(r) for r in met.itertuples()) if len(met)
                             else "none of the capabilities measured") + ".",
        "- **Did not learn:** " + ("; ".join(_phrase(r) for r in unmet.itertuples()) if len(unmet)
                                   else "nothing: every measured goal is met") + ".",
    ]
    solving = report[report["kind"] == "solving"]
    if len(solving):
        solved = solving.loc[solving["met"], "capability"].str.removesuffix(": solving").tolist()
        verdict = "met" if len(solved) >= SOLVED_FAMILIES_GOAL else "not met"
        lines.append(f"- **Task families solved:** {len(solved)} of {len(solving)}"
                     + (f" ({', '.join(solved)})" if solved else "")
                     + f"; the goal of {SOLVED_FAMILIES_GOAL} solved families is {verdict}.")
    absent = [text for kind, text in KINDS.items() if kind not in set(report["kind"])]
    if absent:
        lines.append("- **Not measured:** " + "; ".join(absent) + ".")
    return "\n".join(lines)
