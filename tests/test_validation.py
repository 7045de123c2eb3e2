"""The validation chapter's report card (05_validation): one table from the library's own checks."""
from __future__ import annotations

import pandas as pd
import pytest

from triphase.brain.validation import VALIDATION_COLUMNS
from triphase.phases.validation import ValidationSettings, internal_checks, phase_checks, validation_summary, \
    validation_table

TINY = ValidationSettings(schedules=("organism",), phis=(0.0,), power_noise_sds=(0.05, 0.2), n_sim=6, n_boot=9,
                          n_null=19, coverage_sims=4, coverage_boot=9, brain_phis=(0.0,), brain_voxels=500,
                          cka_sims=4, probe_sims=1)


def test_phase_rows_cover_every_null_shape_and_mark_power_curves():
    rows = phase_checks(TINY)
    assert list(rows.columns) == VALIDATION_COLUMNS
    settings = " ".join(rows["setting"])
    assert all(f"{shape} curve" in settings for shape in ("monotone", "plateau", "peak", "rise-fall-rise"))
    power = rows[rows["statistic"].str.startswith("power")]
    at_other_noise = power["setting"].str.contains("noise sd 0.2")
    assert power.loc[at_other_noise, "passed"].isna().all()        # the power curve has no goal there
    assert power.loc[~at_other_noise, "passed"].notna().all()      # the goal holds at the book's noise
    assert rows["value"].between(0, 1).all()


def test_internal_rows_judge_the_debiased_cka_only():
    rows = internal_checks(TINY)
    biased = rows[rows["statistic"].str.contains("biased\\)") & ~rows["statistic"].str.contains("debiased")]
    assert biased["passed"].isna().all() and (biased["value"] > 0.05).all()
    assert rows[rows["statistic"].str.contains("debiased")]["passed"].all()


def test_table_and_summary_name_what_fails():
    table = validation_table(TINY, sections=("brain", "internal"))
    assert set(table["section"]) == {"brain", "internal"}
    summary = validation_summary(table)
    assert summary.startswith(f"{int(table['passed'].dropna().astype(bool).sum())} of {table['passed'].notna().sum()}")
    broken = table.copy()
    broken.loc[0, "passed"] = False
    assert f"Not met: {broken.loc[0, 'statistic']} ({broken.loc[0, 'setting']})" in validation_summary(broken)


def test_unknown_section_is_named():
    with pytest.raises(ValueError, match="unknown validation section"):
        validation_table(TINY, sections=("brains",))


def test_summary_without_failures_has_no_list():
    table = pd.DataFrame({"section": ["x"], "statistic": ["a"], "setting": ["s"], "passed": [True]})
    assert validation_summary(table) == "1 of 1 checks meet their goal."
