"""Lanczos downsampling, z-scoring, trimming and FIR delays against closed forms."""
from __future__ import annotations

import numpy as np
import pytest

from triphase.brain.timeseries import ConstantColumnWarning, check_rows, lanczos_downsample, lanczos_kernel, make_delayed, stack_design, story_design, trim, zscore

TR = 2.0


def _reference_lanczos(values, old_times, new_times, window=3):
    """Loop form of the reference lanczosinterp2D (unnormalised), written independently."""
    cutoff = 1.0 / np.mean(np.diff(new_times))
    out = np.zeros((len(new_times), values.shape[1]))
    for i, t_new in enumerate(new_times):
        for j, t_old in enumerate(old_times):
            x = (t_new - t_old) * cutoff
            if x == 0:
                w = 1.0
            elif abs(x) > window:
                w = 0.0
            else:
                w = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi**2 * x**2)
            out[i] += w * values[j]
    return out


def test_kernel_closed_form_values():
    # x = t * cutoff; L(0)=1, L(+-0.5)=6/pi^2, L(+-1.5)=-4/(3 pi^2), zero at integers and beyond the window
    t = np.array([0.0, 1.0, -1.0, 3.0, -3.0, 2.0, 6.0, 7.0])
    got = lanczos_kernel(t, cutoff=0.5, window=3)
    expected = [1.0, 6 / np.pi**2, 6 / np.pi**2, -4 / (3 * np.pi**2), -4 / (3 * np.pi**2), 0.0, 0.0, 0.0]
    np.testing.assert_allclose(got, expected, atol=1e-15)


def test_hand_computed_example():
    new_times = np.array([0.0, 2.0, 4.0])
    old_times = np.array([1.0, 3.0, 10.0])  # the word at 10 s is >= 3 lobes from every TR
    values = np.array([[1.0], [2.0], [100.0]])
    got = lanczos_downsample(values, old_times, new_times)
    pi2 = np.pi**2
    expected = np.array([[(6 - 8 / 3) / pi2], [18 / pi2], [(12 - 4 / 3) / pi2]])
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_matches_loop_reference_on_irregular_times():
    rng = np.random.default_rng(0)
    old_times = np.sort(rng.uniform(0, 60, 150))
    new_times = np.arange(30) * TR + 1.0
    values = rng.standard_normal((150, 4))
    np.testing.assert_allclose(
        lanczos_downsample(values, old_times, new_times), _reference_lanczos(values, old_times, new_times), atol=1e-10
    )


def test_samples_on_the_tr_grid_are_returned_unchanged():
    times = np.arange(12) * TR
    values = np.random.default_rng(1).standard_normal((12, 3))
    np.testing.assert_allclose(lanczos_downsample(values, times, times), values, atol=1e-12)


def test_constant_stays_constant_in_the_interior():
    # Unnormalised (as the reference): a constant c sampled every dt becomes c * sum_k L(k dt / TR),
    # the same for every interior TR and close to c * TR / dt (the kernel integrates to 1).
    dt = TR / 8
    old_times = np.arange(0, 100, dt)
    new_times = np.arange(0, 100, TR)
    c = 3.0
    out = lanczos_downsample(np.full((len(old_times), 1), c), old_times, new_times)[:, 0]
    interior = out[3:-3]  # 3 lobes of 1 TR each from the edges
    np.testing.assert_allclose(interior, interior[0], rtol=1e-12)
    np.testing.assert_allclose(interior[0], c * TR / dt, rtol=0.02)
    assert out[0] < interior[0]  # the edge sees only half the kernel


def test_sinusoid_below_cutoff_is_preserved_and_above_is_removed():
    dt = 0.1
    old_times = np.arange(0, 400, dt)
    new_times = np.arange(0, 400, TR)
    gain = TR / dt  # unnormalised kernel: sum of weights per TR
    low = np.sin(2 * np.pi * 0.05 * old_times)[:, None]  # 0.05 Hz, well below 1 / (2 TR) = 0.25 Hz
    out = lanczos_downsample(low, old_times, new_times)[:, 0] / gain
    truth = np.sin(2 * np.pi * 0.05 * new_times)
    interior = slice(5, -5)
    assert np.max(np.abs(out[interior] - truth[interior])) < 0.01
    high = np.sin(2 * np.pi * 0.45 * old_times)[:, None]  # above the cutoff: must not alias through
    out_high = lanczos_downsample(high, old_times, new_times)[:, 0] / gain
    assert np.max(np.abs(out_high[interior])) < 0.02


def test_cutoff_mult_widens_the_kernel():
    old = np.array([1.0])
    new = np.array([0.0, 2.0, 4.0])
    default = lanczos_downsample(np.ones((1, 1)), old, new)[:, 0]
    half = lanczos_downsample(np.ones((1, 1)), old, new, cutoff_mult=0.5)[:, 0]
    np.testing.assert_allclose(half[0], lanczos_kernel(np.array([1.0]), cutoff=0.25)[0])
    assert not np.allclose(default, half)


def test_downsample_shape_errors():
    with pytest.raises(ValueError, match="old_times"):
        lanczos_downsample(np.ones((5, 2)), np.arange(4.0), np.arange(3.0))
    with pytest.raises(ValueError, match="increasing"):
        lanczos_downsample(np.ones((5, 2)), np.arange(5.0), np.array([0.0, 2.0, 1.0]))


def test_make_delayed_exact():
    x = np.arange(1, 13, dtype=float).reshape(6, 2)
    out = make_delayed(x, delays=(1, 2, 3, 4))
    assert out.shape == (6, 8)
    for k, d in enumerate((1, 2, 3, 4)):
        block = out[:, 2 * k:2 * k + 2]
        np.testing.assert_array_equal(block[:d], 0.0)
        np.testing.assert_array_equal(block[d:], x[:-d])
    neg = make_delayed(x, delays=(-2, 0))
    np.testing.assert_array_equal(neg[:4, :2], x[2:])
    np.testing.assert_array_equal(neg[4:, :2], 0.0)
    np.testing.assert_array_equal(neg[:, 2:], x)
    # A delay longer than the story leaves a zero block rather than failing.
    np.testing.assert_array_equal(make_delayed(x, delays=(7,)), 0.0)


def test_stack_design_does_not_leak_across_stories():
    a = np.ones((5, 2))
    b = 2 * np.ones((4, 2))
    stacked = stack_design({"a": a, "b": b}, delays=(1, 2))
    assert stacked.shape == (9, 4)
    # Story b starts at row 5: its first row has no delayed input (zeros), not story a's last rows.
    np.testing.assert_array_equal(stacked[5, :], 0.0)
    np.testing.assert_array_equal(stacked[6, :2], 2.0)
    np.testing.assert_array_equal(stacked[6, 2:], 0.0)
    with pytest.raises(ValueError, match="feature counts"):
        stack_design([a, np.ones((3, 3))])


def test_zscore_and_constant_columns():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3)) * 4 + 7
    x[:, 1] = 5.0
    with pytest.warns(ConstantColumnWarning, match="1 of 3"):
        z, constant = zscore(x, return_constant=True)
    np.testing.assert_array_equal(constant, [False, True, False])
    np.testing.assert_array_equal(z[:, 1], 0.0)
    np.testing.assert_allclose(z[:, [0, 2]].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 2]].std(0), 1.0, atol=1e-12)
    assert not np.isnan(z).any()


def test_trim():
    np.testing.assert_array_equal(trim(np.arange(20), 10, 5), np.arange(10, 15))
    np.testing.assert_array_equal(trim(np.arange(5), 1, 0), np.arange(1, 5))
    with pytest.raises(ValueError, match="leaves nothing"):
        trim(np.arange(5), 3, 2)


def test_story_design_pipeline_and_errors():
    rng = np.random.default_rng(3)
    tr_times = np.arange(40) * TR + 1.0
    word_times = np.sort(rng.uniform(0, 80, 200))
    feats = rng.standard_normal((200, 6))
    design = story_design(feats, word_times, tr_times, trim_rows=(10, 5), story="s")
    expected = zscore(trim(lanczos_downsample(feats, word_times, tr_times), 10, 5))
    np.testing.assert_allclose(design, expected)
    assert design.shape == (25, 6)
    with pytest.raises(ValueError, match="'empty' has no words"):
        story_design(np.zeros((0, 6)), np.zeros(0), tr_times, story="empty")
    with pytest.raises(ValueError, match="'s'.*200 feature rows but 199"):
        story_design(feats, word_times[:-1], tr_times, story="s")


def test_check_rows_names_story_and_counts():
    check_rows("ok", 12, 12)
    with pytest.raises(ValueError, match=r"'wheretheressmoke'.*291.*290"):
        check_rows("wheretheressmoke", 291, 290)
