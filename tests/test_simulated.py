"""The simulated participant: shapes, determinism, timing model, ground truth and its recovery."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from triphase.brain.statistics import noise_ceiling
from triphase.brain.sweep import BrainData, evaluate_design
from triphase.brain.timeseries import story_design
from triphase.datasets import get_dataset
from triphase.datasets.simulated import (
    NO_REGION,
    SimulatedParticipant,
    leaky_integrate,
    load_participant_params,
    participant_presets,
)

SUBJECT = "sim01"


def small_params(resolution_mm: int = 16, **stimuli) -> dict:
    """The tiny preset with coarser voxels (fast tests)."""
    params = copy.deepcopy(participant_presets()["tiny"])
    params["space"]["resolution_mm"] = resolution_mm
    params["stimuli"].update(stimuli)
    return params


@pytest.fixture(scope="module")
def participant(tmp_path_factory):
    import os

    previous = os.environ.get("TRIPHASE_HOME")
    os.environ["TRIPHASE_HOME"] = str(tmp_path_factory.mktemp("sim_home"))
    ds = SimulatedParticipant(small_params())
    ds.responses(SUBJECT, ds.test_story)  # generate once for the module
    yield ds
    if previous is None:
        os.environ.pop("TRIPHASE_HOME", None)
    else:
        os.environ["TRIPHASE_HOME"] = previous


def test_presets_are_complete_and_registered():
    presets = participant_presets()
    assert {"default", "tiny"} <= set(presets)
    for name in presets:
        load_participant_params(name)  # validates
    ds = get_dataset("simulated", preset="tiny")
    assert ds.name == "simulated" and ds.tier == "embedded" and "sim01" in ds.subjects
    default = load_participant_params("default")
    assert 10 <= default["stimuli"]["n_train_stories"] <= 20
    assert default["timing"]["tr_s"] == 2.0


def test_shapes_rows_and_repeats_agree(participant):
    ds = participant
    train, test = ds.split(SUBJECT)
    assert len(test) == 1 and len(train) == ds.params["stimuli"]["n_train_stories"]
    n_voxels = ds.n_voxels
    mask = ds.voxel_space(SUBJECT).mask_img
    assert int((mask.get_fdata() > 0).sum()) == n_voxels
    for story in train + test:
        y = ds.responses(SUBJECT, story)
        timings = ds.word_timings(story)
        assert y.dtype == np.float32 and y.shape == (timings.n_rows, n_voxels)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)  # runs are z-scored
        assert len(timings.words) == len(ds.stimuli[story].words) > 0
        assert ds.story_text(story) == " ".join(timings.words)
    repeats = ds.repeats(SUBJECT, test[0])
    n_rep = ds.params["stimuli"]["n_test_repeats"]
    assert repeats.shape == (n_rep, ds.word_timings(test[0]).n_rows, n_voxels)
    np.testing.assert_allclose(ds.responses(SUBJECT, test[0]), repeats.mean(0), atol=1e-6)
    assert ds.repeats(SUBJECT, train[0]) is None
    # Repeats share the signal but not the noise.
    assert not np.allclose(repeats[0], repeats[1])
    regions = ds.voxel_space(SUBJECT).regions
    assert regions.shape == (n_voxels,) and {"HG", "STG", "IFG", "AG"} <= set(regions)


def test_timing_model_speaking_rate_length_and_pauses(participant):
    ds = participant
    corr, pause, gap = [], [], []
    for story in ds.stimuli.values():
        t = story.timings
        duration = t.offsets - t.onsets
        letters = np.array([len(f) for f in story.forms])
        corr.append(np.corrcoef(letters, duration)[0, 1])
        following_gap = t.onsets[1:] - t.offsets[:-1]
        ends = story.sentence[1:] != story.sentence[:-1]
        pause.append(following_gap[ends].mean())
        gap.append(following_gap[~ends].mean())
        assert t.onsets[0] == pytest.approx(ds.params["timing"]["lead_silence_s"])
        assert np.all(np.diff(t.onsets) > 0)
        # The TR grid covers the audio plus the tail; mid-TR times.
        assert t.tr_times[-1] + 1.0 >= t.offsets[-1] + ds.params["timing"]["tail_silence_s"] - 1e-9
        np.testing.assert_allclose(np.diff(t.tr_times), 2.0)
    words_per_minute = ds.describe()["words_per_minute"]
    assert 130 <= words_per_minute <= 200  # conversational / narrative English
    assert np.mean(corr) > 0.5  # longer words last longer
    assert np.mean(pause) > 5 * np.mean(gap)  # pauses at sentence ends


def test_determinism_and_subjects_differ(participant, fresh_home):
    other = SimulatedParticipant(small_params())  # regenerated in a new home
    story = participant.split(SUBJECT)[0][0]
    np.testing.assert_array_equal(other.responses(SUBJECT, story), participant.responses(SUBJECT, story))
    np.testing.assert_array_equal(other.word_timings(story).onsets, participant.word_timings(story).onsets)
    second = other.subjects[1]
    assert not np.allclose(other.responses(second, story), participant.responses(SUBJECT, story))
    # Stimuli are shared by subjects (as in a real experiment).
    np.testing.assert_array_equal(other.word_timings(story).tr_times, participant.word_timings(story).tr_times)


def test_ground_truth_noise_only_voxels_and_estimated_ceiling(participant):
    ds = participant
    truth = ds.ground_truth(SUBJECT)
    outside = truth.regions == NO_REGION
    assert outside.any() and (~outside).any()
    assert np.all(truth.explainable_variance[outside] == 0) and np.all(truth.snr[outside] == 0)
    assert np.all(truth.explainable_variance[~outside] > 0)
    n_rep = truth.n_repeats
    ev = truth.explainable_variance
    # CC_max and EV follow from the same signal variance: var = EV / (1 - EV).
    var = ev / (1 - ev)
    np.testing.assert_allclose(truth.cc_max, np.sqrt(var / (var + 1 / n_rep)), atol=1e-9)
    estimate = noise_ceiling(ds.repeats(SUBJECT, ds.test_story))
    assert abs(np.nanmean(estimate.explainable_variance[outside])) < 0.1
    assert np.corrcoef(estimate.explainable_variance, ev)[0, 1] > 0.5
    # The realised perfect-model r tracks the expected ceiling.
    ok = ~outside
    assert np.corrcoef(truth.r_perfect[ok], truth.cc_max[ok])[0, 1] > 0.8


def test_leaky_integrator_matches_closed_form():
    # Constant input from t=0: s(t) = 1 - exp(-t / tau) sampled at word times (first word resets).
    times = np.arange(0.0, 10.0, 0.5)
    values = np.ones((len(times), 1))
    out = leaky_integrate(values, times, tau=3.0).ravel()
    # First word: full weight on itself (no history); afterwards the exact recursion.
    expected = [1.0]
    for gap in np.diff(times):
        a = np.exp(-gap / 3.0)
        expected.append(a * expected[-1] + (1 - a))
    np.testing.assert_allclose(out, expected)
    step = np.r_[np.zeros(10), np.ones(10)][:, None]
    stepped = leaky_integrate(step, times, tau=2.0).ravel()
    np.testing.assert_allclose(stepped[10:], 1 - np.exp(-(times[10:] - times[9]) / 2.0), atol=1e-12)


def test_ground_truth_recovery_with_the_true_features(fresh_home):
    """Encoding with each voxel's true feature family recovers voxelwise predictivity.

    Each family's true word features (the participant's own generative features)
    are fitted as a design; every voxel is scored with the design of the family
    that drives it (noise-only voxels with all families together).
    """
    # about 2,000 training TRs and a long test story (~540 TRs) so that the voxel r are precise
    ds = SimulatedParticipant(small_params(resolution_mm=12, n_train_stories=16, sentences_per_story=70,
                                           test_sentences=300))
    data = BrainData(ds, SUBJECT)
    families = list(ds.params["families"])

    def oracle(story, chosen):
        t = ds.word_timings(story)
        words = np.concatenate([ds.true_word_features(story, f) for f in chosen], axis=1)
        return story_design(words, t.midpoints, t.tr_times, t.trim, story=story)

    truth = ds.ground_truth(SUBJECT)
    rows, r = evaluate_design(data, {s: oracle(s, families) for s in data.stories}, n_perm=1000, n_boot=200)
    for family in families:
        _, r_family = evaluate_design(data, {s: oracle(s, [family]) for s in data.stories}, n_perm=10, n_boot=10)
        members = truth.families == family
        # within a family, voxel r tracks the true noise-free predictivity closely
        assert np.corrcoef(r_family[members], truth.cc_max[members])[0, 1] >= 0.9, family
        r = np.where(members, r_family, r)
    ok = np.isfinite(r)
    assert ok.all()
    assert np.corrcoef(r, truth.cc_max)[0, 1] >= 0.9  # all voxels
    inside = truth.regions != NO_REGION
    # pooled over families the slow (semantic, narrative) features are recovered less completely from
    # finite data than the fast ones, which lowers the pooled correlation below the per-family one
    assert np.corrcoef(r[inside], truth.cc_max[inside])[0, 1] >= 0.8  # voxels with signal
    assert abs(r[~inside].mean()) < 0.02  # noise-only voxels are not predicted
    # Below the ceiling (finite data, FIR delays miss the HRF undershoot) but most of it.
    assert 0.5 * truth.cc_max[inside].mean() < r[inside].mean() < truth.cc_max[inside].mean()
    whole = rows.set_index("region").loc["all"]
    assert whole["frac_significant"] > 0.5 * inside.mean()


def test_bad_input_is_named(participant):
    ds = participant
    with pytest.raises(ValueError, match="unknown subject 'nobody'.*sim01"):
        ds.responses("nobody", ds.test_story)
    with pytest.raises(ValueError, match="unknown story 'nope'"):
        ds.word_timings("nope")
    with pytest.raises(ValueError, match="unknown participant preset 'huge'"):
        SimulatedParticipant("huge")
    bad = small_params()
    bad["families"]["lexical"] = ["loudness"]
    with pytest.raises(ValueError, match="unknown feature.*loudness"):
        SimulatedParticipant(bad)
    bad = small_params()
    bad["stimuli"]["n_test_repeats"] = 1
    with pytest.raises(ValueError, match="n_test_repeats"):
        SimulatedParticipant(bad)


def test_identity_is_the_generator_not_the_files(fresh_home):
    ds = SimulatedParticipant(small_params())
    first = ds.identity(SUBJECT)
    assert "stimuli" not in ds.__dict__  # cheap: no stimulus is built, nothing generated
    assert not (fresh_home / "datasets" / "simulated").exists()
    assert SimulatedParticipant(small_params()).identity(SUBJECT) == first
    assert first["generator_version"] >= 1 and first["seed"] == small_params()["subjects"][SUBJECT]
    other = next(s for s in ds.subjects if s != SUBJECT)
    assert ds.identity(other) != first
    assert SimulatedParticipant(small_params(n_test_repeats=3)).identity(SUBJECT) != first
    with pytest.raises(ValueError, match="unknown subject"):
        ds.identity("nobody")
