"""The phase method at its nominal levels, by simulation (reduced sizes of the validation chapter's report card).

Every check draws curves with a planted shape at a real checkpoint schedule
(the organism's 23, Pythia's 20 log-spaced), adds Gaussian AR(1) noise
(sd 0.05 on a rise of about 1) and runs the library's defaults. Sizes: 100
draws per rate (Monte-Carlo se 2.2 points at 5 %), 19 bootstrap replicates,
199 null curves; a rate passes when it is within 2 se of its goal
(:mod:`triphase.phases.calibration`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from triphase.phases import calibration
from triphase.phases.inference import detect_phases, detect_phases_many, smoothed_dip
from triphase.phases.noise import ar1_correlation, ar1_noise, estimate_ar1
from triphase.phases.piecewise import (
    FALLING,
    FLAT,
    NO_CHANGE,
    RISING,
    _hinge_design,
    _whitened_rss,
    ar1_whitening,
    has_triple_pattern,
    labels_from_interval,
)
from triphase.phases.table import overlap_chance

N_SIM = 100
N_BOOT = 19
N_NULL = 199
NOISE_SD = 0.05


# ----------------------------------------------------------------------------- building blocks

def test_ar1_noise_has_the_planted_covariance():
    draws = ar1_noise(np.random.default_rng(0), 5, 100_000, 0.6, 0.5)
    np.testing.assert_allclose(np.cov(draws), 0.25 * ar1_correlation(5, 0.6), atol=0.01)


def test_estimate_ar1_corrects_for_the_fit_on_a_long_series():
    rng = np.random.default_rng(1)
    n = 200
    design = np.column_stack([np.ones(n), np.linspace(0, 1, n)])
    estimates = []
    for _ in range(20):
        e = ar1_noise(rng, n, 1, 0.5, 2.0)[:, 0]
        residuals = e - design @ np.linalg.lstsq(design, e, rcond=None)[0]
        estimates.append(estimate_ar1(residuals, design))
    phi, sigma = np.mean(estimates, axis=0)
    assert abs(phi - 0.5) < 0.05 and abs(sigma - 2.0) < 0.15
    assert estimate_ar1(np.zeros(n), design) == (0.0, 0.0)
    with pytest.raises(ValueError, match="min_phi"):
        estimate_ar1(residuals, design, min_phi=1.5)


def test_smoothed_dip_is_largest_under_a_constant_mean():
    """The least-favourable property the monotone null relies on, on every draw (not only on average)."""
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(500, 23))
    rising = np.cumsum(rng.exponential(size=23))           # any non-decreasing mean
    for window in (1, 3, 4):
        assert np.all(smoothed_dip(noise + rising, window) <= smoothed_dip(noise, window) + 1e-12)
    assert smoothed_dip([[0.0, 2.0, 1.0, 3.0]], window=1)[0] == pytest.approx(1.0)


def test_labels_need_the_equivalence_bound_to_be_flat():
    low, high = np.array([-0.01, -0.2]), np.array([0.02, 0.3])
    assert labels_from_interval(low, high).tolist() == [NO_CHANGE, NO_CHANGE]
    assert labels_from_interval(low, high, flat_bound=0.05).tolist() == [FLAT, NO_CHANGE]
    assert has_triple_pattern([RISING, NO_CHANGE, FALLING, FLAT, RISING])
    with pytest.raises(ValueError, match="flat_bound"):
        labels_from_interval(low, high, flat_bound=0)


def test_stability_uses_the_point_estimate_rule():
    """Replicates equal to the curve: every replicate gets the point estimate's labels (stability 0 or 1)."""
    x = np.linspace(0, 4, 21)
    y = np.interp(x, [0, 1.5, 2.5, 4], [0, 1, 0.5, 1.5])
    rng = np.random.default_rng(3)
    replicates = y + rng.normal(0, 0.02, (40, x.size))
    result = detect_phases(x, y, replicates=replicates, n_null=0)
    assert result.pattern and result.pattern_stability > 0.9
    flat = detect_phases(x, x, replicates=x + rng.normal(0, 0.02, (40, x.size)), n_null=0)
    assert not flat.pattern and flat.pattern_stability == 0.0


def test_overlap_chance_matches_the_closed_form():
    # one boundary of width 0.2, one brain interval of width 0.2 on an axis of 10: chance (0.2 + 0.2) / 10
    out = overlap_chance([[3.0, 3.2]], [[7.0, 7.2]], (0.0, 10.0), n_shifts=9_999)
    assert out["observed"] == 0 and out["chance_rate"] == pytest.approx(0.04, abs=0.001)
    assert out["p_value"] == 1.0
    wide = overlap_chance([[3.0, 3.2], [5.0, 5.1]], [[0.5, 9.5]], (0.0, 10.0), n_shifts=999)
    assert wide["observed"] == 2 and wide["chance_rate"] > 0.9 and wide["p_value"] > 0.5


def test_schedules_and_shapes():
    assert calibration.schedule_x("organism").size == 23
    assert calibration.schedule_x("pythia").size == calibration.PYTHIA_CHECKPOINTS
    x = calibration.schedule_x("organism")
    for shape in ("plateau", "peak", "rise-fall-rise"):
        knots = calibration.planted_breakpoints(shape, x)
        assert np.all((knots > x[0]) & (knots < x[-1]))
    assert np.all(np.diff(calibration.shape_values("monotone", x)) > 0)
    with pytest.raises(ValueError, match="shape must be"):
        calibration.shape_values("zigzag", x)
    with pytest.raises(ValueError, match="schedule must be"):
        calibration.schedule_x("gpt")


# ----------------------------------------------------------------------------- nominal levels

@pytest.mark.parametrize("schedule", ["organism", "pythia"])
@pytest.mark.parametrize("phi", [0.0, 0.6])
@pytest.mark.parametrize("shape", ["plateau", "monotone"])
def test_false_positive_rates_at_nominal_level(schedule, phi, shape):
    frame = calibration.false_positive_rate(shape, schedule, phi, NOISE_SD, N_SIM, seed=11, n_boot=N_BOOT,
                                            n_null=N_NULL)
    assert list(frame["statistic"]) == ["monotone test", "triple label"]
    assert frame["passed"].all(), frame.to_string()


def test_triple_label_on_a_single_peak():
    frame = calibration.false_positive_rate("peak", "organism", 0.3, NOISE_SD, N_SIM, seed=12, n_boot=N_BOOT,
                                            n_null=N_NULL)
    assert list(frame["statistic"]) == ["triple label"] and frame["passed"].all(), frame.to_string()


def test_power_on_planted_rise_fall_rise():
    frame = calibration.power("organism", 0.0, NOISE_SD, N_SIM, seed=13, n_boot=N_BOOT, n_null=N_NULL)
    assert frame["passed"].all(), frame.to_string()


def test_breakpoint_coverage():
    frame = calibration.breakpoint_coverage("organism", 0.0, NOISE_SD, N_SIM, seed=14, n_boot=49)
    assert frame["passed"].all(), frame.to_string()


def test_whitening_gives_the_gls_fit_under_ar1_noise():
    """Closed forms: W'W = (1 - phi^2) R^-1, and the whitened RSS is the GLS criterion (y - Xb)' R^-1 (y - Xb)."""
    n, phi = 12, 0.6
    w = ar1_whitening(n, phi)
    np.testing.assert_allclose(w.T @ w, (1 - phi**2) * np.linalg.inv(ar1_correlation(n, phi)), atol=1e-12)
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 3, n))
    curves = rng.normal(size=(n, 4))
    breaks = np.array([[1.0], [1.5], [2.0], [np.nan]])
    got = _whitened_rss(x, curves, breaks, w)
    inverse = np.linalg.inv(ar1_correlation(n, phi))
    for c in range(3):
        design = _hinge_design(x, breaks[c][None])[0]
        coef = np.linalg.solve(design.T @ inverse @ design, design.T @ inverse @ curves[:, c])
        residual = curves[:, c] - design @ coef
        assert got[c] == pytest.approx((1 - phi**2) * residual @ inverse @ residual, rel=1e-10)
    assert got[3] == np.inf
    np.testing.assert_allclose(ar1_whitening(3, 0.0), np.eye(3))
    with pytest.raises(ValueError, match="phi"):
        ar1_whitening(3, 1.0)


def test_ar1_model_choice_does_not_take_slow_noise_for_breakpoints():
    """Under AR(1) noise with phi 0.6 the ordinary BIC adds breakpoints; the AR(1) criterion selects the
    planted number far more often (methods page, 200 draws: 61 % -> 82.5 % on the organism's schedule)."""
    rates = {}
    for selection in ("ols", "ar1"):
        frame = calibration.breakpoint_coverage("organism", 0.6, NOISE_SD, 60, seed=16, n_boot=9,
                                                selection=selection)
        rates[selection] = frame.set_index("statistic").loc["planted number of breakpoints selected", "rate"]
    assert rates["ar1"] >= 0.75 and rates["ar1"] > rates["ols"] + 0.1, rates
    with pytest.raises(ValueError, match="selection must be one of"):
        detect_phases(np.linspace(0, 1, 10), np.linspace(0, 1, 10), n_boot=0, n_null=0, selection="gls")


def test_ar1_model_choice_puts_no_breakpoint_into_an_exact_line():
    """Noise-free lines (large offsets included) are fits of k = 0: the rounding floor scales with the curve."""
    rng = np.random.default_rng(17)
    for schedule in ("organism", "pythia"):
        x = calibration.schedule_x(schedule)
        lines = rng.normal(size=(200, 1)) + rng.normal(size=(200, 1)) * x[None, :]
        for offset in (0.0, 1e8):
            results = detect_phases_many(x, lines + offset, n_boot=0, n_null=0, selection="ar1")
            assert [r.n_breakpoints for r in results] == [0] * 200, (schedule, offset)


def test_a_wrong_method_fails_its_row():
    """The pass/fail column can fail: independent noise assumed under phi = 0.6 over-rejects on plateaus."""
    frame = calibration.false_positive_rate("plateau", "organism", 0.6, NOISE_SD, N_SIM, seed=15, n_boot=0,
                                            n_null=N_NULL, min_phi=0.0, null_noise="fit-gaussian")
    assert not frame.set_index("statistic").loc["monotone test", "passed"], frame.to_string()


def test_summary_sentence_counts_the_rows():
    card = pd.DataFrame({"statistic": ["a", "b", "b"], "passed": [True, False, True]})
    assert calibration.summary_sentence(card) == "2 of 3 checks meet their goal; not met: b."
