"""The simulated participant: a synthetic cortex listening to story-world stories.

Embedded-tier stand-in for an fMRI natural-listening dataset, with a known
ground truth. All parameters come from ``triphase/data/participant.yaml``
(documented there with sources) and are fixed a priori; nothing here is tuned
to any result.

Generative model
----------------
1. **Stimuli.** ``n_train_stories`` stories plus one test story from
   :func:`triphase.models.storyworld.stimulus_stories` (the held-out stream, never the
   organism's training text). Word timings follow a speaking-rate model: word
   ``i`` lasts ``(base + per_letter * letters_i) * exp(sd * z_i - sd^2 / 2)``
   seconds, words are separated by a short gap and sentences by a jittered
   pause. Audio starts after ``lead_silence_s``; the TR grid (mid-TR times)
   covers the audio plus ``tail_silence_s``; rows ``[trim_start:-trim_end]``
   are kept (the LeBel et al. 2023 convention).
2. **Word-level feature families** (word ``i`` at onset ``t_i``):
   auditory = ``word_onset`` (1 per word) and ``speech`` (on while a word is
   spoken); lexical = ``rarity`` (``7 - zipf_frequency(form, "en")``) and
   ``length`` (letters); syntactic = ``depth`` and ``open_nodes`` (grammar
   labels); semantic / narrative = the story's latent state passed through a
   leaky integrator with time constant ``tau`` (short for semantic, long for
   narrative): ``s_i = e^{-dt_i / tau} s_{i-1} + (1 - e^{-dt_i / tau}) x_i``.
   Lexical, syntactic and latent amplitudes are centred on their mean over all
   stimulus words, so they modulate, rather than duplicate, word rate.
3. **Neural drive -> BOLD.** Each feature is an impulse train at word onsets
   (amplitude = feature value; ``speech`` a boxcar) on a ``dt_s`` grid,
   convolved with the canonical HRF (nilearn ``glover_hrf``), sampled at the TR
   times and z-scored over all stimulus TRs.
4. **Voxels.** nilearn's MNI152 brain mask at ``resolution_mm``. Each region
   is a Gaussian blob (FWHM ``blob_fwhm_mm``) at a published coordinate; a
   voxel belongs to the region whose blob weight ``g_v`` is largest if it
   exceeds ``blob_threshold``, else it is noise only. A region voxel's signal
   is a random Gaussian mix of its family's features, scaled to unit variance
   over the stimulus, times ``sqrt(SNR_v)`` with
   ``SNR_v = amplitude_region * g_v * SNR_peak_v`` and ``SNR_peak_v`` log-normal.
5. **Noise.** AR(1) with coefficient ``phi`` and unit marginal variance,
   independent per voxel, story and repeat. Each run (story presentation) is
   z-scored over its kept rows, as in standard preprocessing.

Ground truth (:meth:`SimulatedParticipant.ground_truth`): the noise-free test
signal, the true single-repeat explainable variance
``EV_v = var(s_v) / (var(s_v) + 1)`` and the ceiling of a perfect model on the
mean of ``N`` repeats ``CC_max_v = sqrt(var(s_v) / (var(s_v) + 1 / N))``.

Examples
--------
>>> ds = SimulatedParticipant("tiny")                       # doctest: +SKIP
>>> train, test = ds.split("sim01")                         # doctest: +SKIP
>>> ds.responses("sim01", train[0]).shape[0] == ds.word_timings(train[0]).n_rows  # doctest: +SKIP
True
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from nilearn.datasets import load_mni152_brain_mask
from nilearn.glm.first_level.hemodynamic_models import glover_hrf, spm_hrf
from scipy.signal import lfilter
from wordfreq import zipf_frequency

from triphase._home import cache_dir
from triphase._io import atomic_dir, stable_hash, write_json
from triphase._progress import tqdm
from triphase.datasets._base import Dataset, VoxelSpace, WordTimings
from triphase.models import storyworld

PRESETS_FILE = "participant.yaml"
#: Version of the generator; bump when the generative code changes (it keys the data on disk).
GENERATOR_VERSION = 2
#: Region label of voxels outside every blob.
NO_REGION = "none"
#: Upper end of the Zipf scale (wordfreq's most frequent English words are ~7.7; "the" = 7.73):
#: rarity = ZIPF_REFERENCE - zipf is >= 0 for all but a handful of function words.
ZIPF_REFERENCE = 7.0
#: Random streams (second element of the seed sequence) so that each use draws independent numbers.
TIMING_STREAM, WEIGHT_STREAM, SNR_STREAM, NOISE_STREAM = 11, 12, 13, 14
#: Seed offset of the test story's stream (distinct from the training stories' seed).
TEST_STORY_SEED_OFFSET = 7919
#: Gaussian FWHM = sigma * sqrt(8 ln 2).
FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))
FAMILY_FEATURES = {
    "word_onset": "1 at each word onset",
    "speech": "1 while a word is spoken (word-level value: its duration in s)",
    "rarity": f"{ZIPF_REFERENCE} - wordfreq zipf_frequency(form, 'en')",
    "length": "letters of the word form",
    "depth": "syntactic depth of the word (grammar label)",
    "open_nodes": "open constituents after the word (grammar label)",
    "latent": "story latent state, leaky-integrated with the family's tau",
}
REQUIRED_SECTIONS = ("stimuli", "timing", "hrf", "space", "families", "regions", "noise", "subjects",
                     "tau_semantic_s", "tau_narrative_s")


# --------------------------------------------------------------------------- presets
def participant_presets() -> dict:
    """All presets of ``data/participant.yaml`` (name -> parameter dict)."""
    text = resources.files("triphase").joinpath("data", PRESETS_FILE).read_text()
    return yaml.safe_load(text) or {}


def load_participant_params(preset: str | dict = "default") -> dict:
    """Parameters of a preset name, or a full parameter dict (validated)."""
    if isinstance(preset, str):
        presets = participant_presets()
        if preset not in presets:
            raise ValueError(f"unknown participant preset {preset!r} in data/{PRESETS_FILE}; "
                             f"available: {', '.join(sorted(presets))}")
        params, where = copy.deepcopy(presets[preset]), f"data/{PRESETS_FILE}:{preset}"
    elif isinstance(preset, dict):
        params, where = copy.deepcopy(preset), "participant parameters"
    else:
        raise TypeError(f"preset must be a preset name or a dict, got {type(preset).__name__}")
    missing = [k for k in REQUIRED_SECTIONS if k not in params]
    if missing:
        raise ValueError(f"{where}: missing section(s) {missing}")
    for family, names in params["families"].items():
        unknown = [n for n in names if n not in FAMILY_FEATURES]
        if unknown:
            raise ValueError(f"{where}: family {family!r} uses unknown feature(s) {unknown}; "
                             f"known: {', '.join(FAMILY_FEATURES)}")
    for region in params["regions"]:
        if region["family"] not in params["families"]:
            raise ValueError(f"{where}: region {region['name']!r} has unknown family {region['family']!r}")
        if len(region["centre"]) != 3:
            raise ValueError(f"{where}: region {region['name']!r} centre must be 3 MNI coordinates")
    if params["stimuli"]["n_train_stories"] < 2:
        raise ValueError(f"{where}: stimuli.n_train_stories must be >= 2 (leave-stories-out CV)")
    if params["stimuli"]["n_test_repeats"] < 2:
        raise ValueError(f"{where}: stimuli.n_test_repeats must be >= 2 (noise ceiling)")
    if not 0 <= params["noise"]["ar1_phi"] < 1:
        raise ValueError(f"{where}: noise.ar1_phi must be in [0, 1), got {params['noise']['ar1_phi']}")
    return params


# --------------------------------------------------------------------------- stimuli
@dataclass(frozen=True)
class StimulusStory:
    """One stimulus story with its word annotations and timings."""

    name: str
    words: tuple[str, ...]
    forms: tuple[str, ...]
    depth: np.ndarray
    open_nodes: np.ndarray
    sentence: np.ndarray
    latent: np.ndarray
    timings: WordTimings


def _storyworld_stories(n: int, seed: int, sentences: int | None):
    """Stories from the story world's held-out stream (``sentences`` per story, or its default range)."""

    if sentences is None:
        return storyworld.stimulus_stories(n, seed=seed)
    return storyworld.stimulus_stories(n, seed=seed, n_sentences=int(sentences))


def speaking_times(letters: np.ndarray, sentence_end: np.ndarray, timing: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """Word onsets and offsets (s) from the speaking-rate model (see module docstring).

    Examples
    --------
    >>> t = dict(lead_silence_s=1.0, word_base_s=0.1, per_letter_s=0.05, duration_jitter_sd=0.0,
    ...          word_gap_s=0.0, sentence_pause_s=0.5, pause_jitter_sd=0.0)
    >>> on, off = speaking_times(np.array([2, 4]), np.array([True, False]), t, np.random.default_rng(0))
    >>> on.tolist(), off.tolist()
    ([1.0, 1.7], [1.2, 2.0])
    """
    n = len(letters)
    sd, pause_sd = timing["duration_jitter_sd"], timing["pause_jitter_sd"]
    # Mean-one log-normal jitter keeps the mean speaking rate at the model's value.
    jitter = np.exp(sd * rng.standard_normal(n) - sd**2 / 2)
    pause_jitter = np.exp(pause_sd * rng.standard_normal(n) - pause_sd**2 / 2)
    durations = (timing["word_base_s"] + timing["per_letter_s"] * letters) * jitter
    after = timing["word_gap_s"] + np.where(sentence_end, timing["sentence_pause_s"] * pause_jitter, 0.0)
    onsets = timing["lead_silence_s"] + np.concatenate([[0.0], np.cumsum(durations + after)[:-1]])
    return onsets, onsets + durations


def _tr_grid(audio_end: float, timing: dict) -> np.ndarray:
    tr = timing["tr_s"]
    n_trs = int(math.ceil((audio_end + timing["tail_silence_s"]) / tr))
    return (np.arange(n_trs) + 0.5) * tr  # mid-TR times, as the LeBel reference


def leaky_integrate(values: np.ndarray, times: np.ndarray, tau: float) -> np.ndarray:
    """Leaky integration at word times: ``s_i = a_i s_{i-1} + (1 - a_i) x_i``, ``a_i = exp(-(t_i - t_{i-1}) / tau)``.

    Starts from 0 (nothing heard yet). ``values`` is (n_words, k).

    Examples
    --------
    >>> leaky_integrate(np.ones((3, 1)), np.array([0.0, 1.0, 2.0]), tau=1e-9).ravel().tolist()
    [1.0, 1.0, 1.0]
    """
    values = np.asarray(values, dtype=float)
    out = np.zeros_like(values)
    gaps = np.diff(np.concatenate([[times[0]], times]))
    decay = np.exp(-gaps / tau)
    decay[0] = 0.0  # the first word starts the integration from zero input history
    state = np.zeros(values.shape[1])
    for i in range(len(values)):
        state = decay[i] * state + (1.0 - decay[i]) * values[i]
        out[i] = state
    return out


# --------------------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class GroundTruth:
    """What the simulated participant really computes (one subject).

    Attributes
    ----------
    subject, test_story : str
    signal_test : array (n_rows, n_voxels)
        Noise-free test response (kept rows; the unit is the noise SD).
    explainable_variance : array (n_voxels,)
        True single-repeat explainable variance ``var(s) / (var(s) + 1)``.
    cc_max : array (n_voxels,)
        True ceiling on the mean of the repeats, ``sqrt(var(s) / (var(s) + 1/N))``.
    r_perfect : array (n_voxels,)
        Realised Pearson r of the noise-free signal with the mean of the repeats (NaN for noise-only voxels).
    snr : array (n_voxels,)
        Voxel SNR (signal variance / noise variance over the stimulus), 0 outside regions.
    regions : array of str (n_voxels,)
    families : array of str (n_voxels,)
    blob_weight : array (n_voxels,)
    n_repeats : int
    """

    subject: str
    test_story: str
    signal_test: np.ndarray
    explainable_variance: np.ndarray
    cc_max: np.ndarray
    r_perfect: np.ndarray
    snr: np.ndarray
    regions: np.ndarray
    families: np.ndarray
    blob_weight: np.ndarray
    n_repeats: int


# --------------------------------------------------------------------------- the dataset
class SimulatedParticipant(Dataset):
    """Synthetic fMRI participant listening to story-world stories (embedded tier).

    Parameters
    ----------
    preset : str or dict
        A preset of ``data/participant.yaml`` (``"default"``, ``"tiny"``) or a
        full parameter dict of the same layout.
    progress : bool
        Progress bar while generating a subject's responses.

    Notes
    -----
    Responses and ground truth are generated once per (parameters, subject),
    written atomically under ``<TRIPHASE_HOME>/datasets/simulated/<hash>/`` and
    read back afterwards. See the module docstring for the generative model.
    """

    name = "simulated"
    tier = "embedded"

    def __init__(self, preset: str | dict = "default", progress: bool = False):
        self.preset = preset if isinstance(preset, str) else "custom"
        self.params = load_participant_params(preset)
        self.progress = progress

    # ------------------------------------------------------------ identity
    @cached_property
    def stimuli(self) -> dict[str, StimulusStory]:
        """All stimulus stories (train then test), by name."""
        p = self.params
        stim = p["stimuli"]
        n_train = int(stim["n_train_stories"])
        seed = int(stim["story_seed"])
        stories = list(_storyworld_stories(n_train, seed, stim.get("sentences_per_story")))
        # The test story is longer (a good test needs many TRs); drawn with its own seed, so it is no training story.
        stories += list(_storyworld_stories(1, seed + TEST_STORY_SEED_OFFSET,
                                            stim.get("test_sentences", stim.get("sentences_per_story"))))
        if len(stories) != n_train + 1:
            raise ValueError(f"storyworld returned {len(stories)} stories, expected {n_train + 1}")
        names = [f"story{i + 1:02d}" for i in range(n_train)] + ["test"]
        timing = p["timing"]
        rng = np.random.default_rng([int(p["stimuli"]["story_seed"]), TIMING_STREAM])
        out = {}
        for name, story in zip(names, stories):
            words = story.words
            if not words:
                raise ValueError(f"story-world story for {name!r} has no words")
            texts = tuple(w.text for w in words)
            forms = tuple(w.form for w in words)
            sentence = np.array([w.sentence for w in words])
            sentence_end = np.append(sentence[1:] != sentence[:-1], True)
            letters = np.array([sum(c.isalpha() for c in f) or len(f) for f in forms], dtype=float)
            onsets, offsets = speaking_times(letters, sentence_end, timing, rng)
            tr_times = _tr_grid(offsets[-1], timing)
            timings = WordTimings(name, texts, onsets, offsets, tr_times,
                                  (int(timing["trim_start_trs"]), int(timing["trim_end_trs"])))
            latent = np.asarray(story.latent, dtype=float)
            if latent.ndim != 2 or latent.shape[0] != len(words):
                raise ValueError(f"story {name!r}: latent has shape {latent.shape}, expected ({len(words)}, k)")
            out[name] = StimulusStory(
                name, texts, forms,
                np.array([w.depth for w in words], dtype=float),
                np.array([w.open_nodes for w in words], dtype=float),
                sentence, latent, timings,
            )
        return out

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the parameters, generator version and stimulus words (keys the data on disk)."""
        words = {name: stable_hash(list(s.words), 16) for name, s in self.stimuli.items()}
        return stable_hash({"params": self.params, "version": GENERATOR_VERSION, "words": words})

    @property
    def folder(self) -> Path:
        return cache_dir("datasets") / "simulated" / self.fingerprint

    def identity(self, subject: str) -> dict:
        """What generates the subject's data: the parameters' hash, the generator version and the subject's seed.

        Cheap (no stimulus is built): the responses on disk follow from these
        (and from the library's code, which keys a notebook's result anyway).
        """
        return {"dataset": self.name, "subject": subject, "params": stable_hash(self.params),
                "generator_version": GENERATOR_VERSION, "seed": self._subject_seed(subject)}

    # ------------------------------------------------------------ Dataset interface
    @property
    def subjects(self) -> list[str]:
        return list(self.params["subjects"])

    def tr(self, subject: str) -> float:
        self.check_subject(subject)
        return float(self.params["timing"]["tr_s"])

    def split(self, subject: str) -> tuple[list[str], list[str]]:
        self.check_subject(subject)
        names = list(self.stimuli)
        return names[:-1], names[-1:]

    def stories(self, subject: str) -> list[str]:
        train, test = self.split(subject)
        return train + test

    @property
    def test_story(self) -> str:
        return list(self.stimuli)[-1]

    def _story(self, story: str) -> StimulusStory:
        if story not in self.stimuli:
            raise ValueError(f"unknown story {story!r} in the simulated participant; "
                             f"available: {', '.join(self.stimuli)}")
        return self.stimuli[story]

    def word_timings(self, story: str) -> WordTimings:
        return self._story(story).timings

    def story_text(self, story: str) -> str:
        return " ".join(self._story(story).words)

    def responses(self, subject: str, story: str) -> np.ndarray:
        """Responses (kept TRs x voxels, float32); the test story is the mean of its repeats."""
        self._story(story)
        folder = self._subject_folder(subject)
        if story == self.test_story:
            return np.load(folder / "test_repeats.npy").mean(axis=0).astype(np.float32)
        return np.load(folder / f"{story}.npy")

    def repeats(self, subject: str, story: str) -> np.ndarray | None:
        self._story(story)
        if story != self.test_story:
            return None
        return np.load(self._subject_folder(subject) / "test_repeats.npy")

    def voxel_space(self, subject: str) -> VoxelSpace:
        self.check_subject(subject)
        return VoxelSpace(mask_img=self.mask_img, regions=self.layout["regions"])

    def ground_truth(self, subject: str) -> GroundTruth:
        """The subject's ground truth (see :class:`GroundTruth`)."""
        with np.load(self._subject_folder(subject) / "truth.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return GroundTruth(
            subject=subject, test_story=self.test_story, signal_test=arrays["signal_test"],
            explainable_variance=arrays["explainable_variance"], cc_max=arrays["cc_max"],
            r_perfect=arrays["r_perfect"], snr=arrays["snr"], regions=arrays["regions"].astype(str),
            families=arrays["families"].astype(str), blob_weight=arrays["blob_weight"],
            n_repeats=int(self.params["stimuli"]["n_test_repeats"]),
        )

    # ------------------------------------------------------------ voxel space
    @cached_property
    def mask_img(self):
        return load_mni152_brain_mask(resolution=int(self.params["space"]["resolution_mm"]))

    @cached_property
    def layout(self) -> dict:
        """Voxel MNI coordinates, region / family labels and blob weights (shared by subjects)."""
        mask = np.asarray(self.mask_img.get_fdata()) > 0
        ijk = np.stack(np.nonzero(mask), axis=1)
        xyz = ijk @ self.mask_img.affine[:3, :3].T + self.mask_img.affine[:3, 3]
        space = self.params["space"]
        sigma = float(space["blob_fwhm_mm"]) / FWHM_PER_SIGMA
        regions = self.params["regions"]
        weights = np.stack([
            float(r["amplitude"]) * np.exp(-((xyz - np.asarray(r["centre"], float)) ** 2).sum(1) / (2 * sigma**2))
            for r in regions
        ], axis=1)  # (voxels, blobs)
        shape = np.stack([np.exp(-((xyz - np.asarray(r["centre"], float)) ** 2).sum(1) / (2 * sigma**2))
                          for r in regions], axis=1)
        best = shape.argmax(axis=1)
        inside = shape[np.arange(len(xyz)), best] > float(space["blob_threshold"])
        region_names = np.array([regions[b]["name"] for b in best], dtype=object)
        family_names = np.array([regions[b]["family"] for b in best], dtype=object)
        return {
            "xyz": xyz,
            "regions": np.where(inside, region_names, NO_REGION).astype(str),
            "families": np.where(inside, family_names, NO_REGION).astype(str),
            "blob_weight": np.where(inside, weights[np.arange(len(xyz)), best], 0.0),
        }

    @property
    def n_voxels(self) -> int:
        return int(self.layout["xyz"].shape[0])

    # ------------------------------------------------------------ true features
    @cached_property
    def _word_feature_tables(self) -> dict[str, dict[str, np.ndarray]]:
        """Word-level values of every feature, per story (amplitudes centred over all stimulus words)."""

        raw = {}
        for name, s in self.stimuli.items():
            t = s.timings
            raw[name] = {
                "word_onset": np.ones((len(s.words), 1)),
                "speech": (t.offsets - t.onsets)[:, None],
                "rarity": np.array([ZIPF_REFERENCE - zipf_frequency(f, "en") for f in s.forms])[:, None],
                "length": np.array([len(f) for f in s.forms], dtype=float)[:, None],
                "depth": s.depth[:, None],
                "open_nodes": s.open_nodes[:, None],
                "latent": s.latent,
            }
        centred = ("rarity", "length", "depth", "open_nodes", "latent")
        for key in centred:
            mean = np.concatenate([r[key] for r in raw.values()]).mean(axis=0)
            for r in raw.values():
                r[key] = r[key] - mean
        return raw

    def true_word_features(self, story: str, family: str) -> np.ndarray:
        """Word-level features of one family for one story, array (n_words, n_features).

        The values whose impulses drive that family's voxels (``latent``
        integrated with the family's tau; ``speech`` as each word's duration).
        Use them as an oracle design matrix to check recovery.
        """
        if family not in self.params["families"]:
            raise ValueError(f"unknown family {family!r}; available: {', '.join(self.params['families'])}")
        s = self._story(story)
        table = self._word_feature_tables[story]
        columns = []
        for feature in self.params["families"][family]:
            values = table[feature]
            if feature == "latent":
                values = leaky_integrate(values, s.timings.onsets, self._tau(family))
            columns.append(values)
        return np.concatenate(columns, axis=1)

    def _tau(self, family: str) -> float:
        key = f"tau_{family}_s"
        if key not in self.params:
            raise ValueError(f"family {family!r} uses 'latent' but the parameters have no {key!r}")
        return float(self.params[key])

    def _family_drive(self, family: str) -> dict[str, np.ndarray]:
        """HRF-convolved features of one family at the TR times (untrimmed), per story, not yet scaled."""

        hrf_params = self.params["hrf"]
        tr = float(self.params["timing"]["tr_s"])
        dt = float(hrf_params["dt_s"])
        oversampling = int(round(tr / dt))
        hrf_functions = {"glover": glover_hrf, "spm": spm_hrf}
        if hrf_params["model"] not in hrf_functions:
            raise ValueError(f"hrf.model must be one of {sorted(hrf_functions)}, got {hrf_params['model']!r}")
        hrf = hrf_functions[hrf_params["model"]](tr, oversampling=oversampling, time_length=float(hrf_params["length_s"]))
        out = {}
        for name, s in self.stimuli.items():
            t = s.timings
            n_grid = int(math.ceil((t.tr_times[-1] + tr) / dt)) + 1
            onset_bins = np.minimum(np.round(t.onsets / dt).astype(int), n_grid - 1)
            offset_bins = np.minimum(np.round(t.offsets / dt).astype(int), n_grid - 1)
            word_values = self.true_word_features(name, family)
            columns = []
            col = 0
            for feature in self.params["families"][family]:
                width = self._word_feature_tables[name][feature].shape[1]
                values = word_values[:, col:col + width]
                col += width
                drive = np.zeros((n_grid, width))
                if feature == "speech":
                    # Boxcar while each word is spoken (difference trick: +1 at onset, -1 at offset).
                    edges = np.zeros(n_grid + 1)
                    np.add.at(edges, onset_bins, 1.0)
                    np.add.at(edges, np.maximum(offset_bins, onset_bins + 1), -1.0)
                    drive[:, 0] = np.cumsum(edges)[:n_grid]
                else:
                    np.add.at(drive, onset_bins, values)
                columns.append(drive)
            drive = np.concatenate(columns, axis=1)
            bold = np.apply_along_axis(lambda x: np.convolve(x, hrf)[:n_grid], 0, drive)
            sample = np.minimum(np.round(t.tr_times / dt).astype(int), n_grid - 1)
            out[name] = bold[sample]
        return out

    # ------------------------------------------------------------ generation
    def _subject_seed(self, subject: str) -> int:
        self.check_subject(subject)
        return int(self.params["subjects"][subject])

    def _subject_folder(self, subject: str) -> Path:
        seed = self._subject_seed(subject)
        folder = self.folder / subject
        if not (folder / "truth.npz").exists():
            self._generate(subject, seed, folder)
        return folder

    def _generate(self, subject: str, seed: int, folder: Path) -> None:
        p = self.params
        layout = self.layout
        n_voxels = self.n_voxels
        stories = list(self.stimuli)
        families = list(p["families"])
        timing = p["timing"]
        trim0, trim1 = int(timing["trim_start_trs"]), int(timing["trim_end_trs"])

        def kept(x: np.ndarray) -> np.ndarray:
            return x[trim0: x.shape[0] - trim1]

        # TR-level drive of each family, z-scored over the kept stimulus TRs (a property of the stimulus):
        # the SNR then refers to the rows that are analysed, not to the silences before and after the audio.
        drives = {}
        for family in families:
            per_story = self._family_drive(family)
            stacked = np.concatenate([kept(per_story[s]) for s in stories])
            mean, std = stacked.mean(0), stacked.std(0)
            std = np.where(std > 0, std, 1.0)
            drives[family] = {s: (per_story[s] - mean) / std for s in stories}

        # Voxel weights and SNR.
        weight_rng = np.random.default_rng([seed, WEIGHT_STREAM])
        snr_rng = np.random.default_rng([seed, SNR_STREAM])
        snr_peak = np.exp(np.log(p["noise"]["snr_median"]) + p["noise"]["snr_log_sd"] * snr_rng.standard_normal(n_voxels))
        snr = np.where(layout["families"] != NO_REGION, layout["blob_weight"] * snr_peak, 0.0)
        signal = {s: np.zeros((len(self.stimuli[s].timings.tr_times), n_voxels)) for s in stories}
        for family in families:
            voxels = np.flatnonzero(layout["families"] == family)
            if voxels.size == 0:
                continue
            n_features = drives[family][stories[0]].shape[1]
            weights = weight_rng.standard_normal((n_features, voxels.size))
            mixed = {s: drives[family][s] @ weights for s in stories}
            scale = np.concatenate([kept(m) for m in mixed.values()]).std(0)
            scale = np.where(scale > 0, scale, 1.0)
            for s in stories:
                signal[s][:, voxels] = mixed[s] / scale * np.sqrt(snr[voxels])

        phi = float(p["noise"]["ar1_phi"])
        innovation_sd = math.sqrt(1.0 - phi**2)  # unit marginal variance

        def run(story_index: int, repeat: int, story: str) -> np.ndarray:
            rng = np.random.default_rng([seed, NOISE_STREAM, story_index, repeat])
            n_rows = signal[story].shape[0]
            innovations = innovation_sd * rng.standard_normal((n_rows, n_voxels))
            # Start in the stationary distribution so that the first TR is not special.
            innovations[0] /= innovation_sd
            noise = lfilter([1.0], [1.0, -phi], innovations, axis=0)
            bold = (signal[story] + noise)[trim0: n_rows - trim1]
            bold = (bold - bold.mean(0)) / bold.std(0)
            return bold.astype(np.float32)

        n_repeats = int(p["stimuli"]["n_test_repeats"])

        with atomic_dir(folder) as tmp:
            for i, story in enumerate(tqdm(stories[:-1], desc=f"simulating {subject}", disable=not self.progress)):
                np.save(tmp / f"{story}.npy", run(i, 0, story))
            test = stories[-1]
            repeats = np.stack([run(len(stories) - 1, r, test) for r in range(n_repeats)])
            np.save(tmp / "test_repeats.npy", repeats)
            signal_test = signal[test][trim0: signal[test].shape[0] - trim1]
            var_signal = signal_test.var(0)
            mean_repeats = repeats.mean(0)
            centred_s = signal_test - signal_test.mean(0)
            centred_m = mean_repeats - mean_repeats.mean(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                r_perfect = (centred_s * centred_m).sum(0) / np.sqrt((centred_s**2).sum(0) * (centred_m**2).sum(0))
            r_perfect = np.where(var_signal > 0, r_perfect, np.nan)
            np.savez(
                tmp / "truth.npz",
                signal_test=signal_test.astype(np.float32),
                explainable_variance=var_signal / (var_signal + 1.0),
                cc_max=np.sqrt(var_signal / (var_signal + 1.0 / n_repeats)),
                r_perfect=r_perfect,
                snr=snr,
                regions=layout["regions"].astype(str),
                families=layout["families"].astype(str),
                blob_weight=layout["blob_weight"],
            )
            write_json({"subject": subject, "seed": seed, "params": p, "generator_version": GENERATOR_VERSION,
                        "stories": stories, "n_voxels": n_voxels}, tmp / "info.json")

    # ------------------------------------------------------------ summaries
    def describe(self) -> dict:
        """Sizes of the stimulus and voxel space (for notebooks and reports)."""
        train, test = self.split(self.subjects[0])
        rows = {s: self.stimuli[s].timings.n_rows for s in self.stimuli}
        n_words = sum(len(s.words) for s in self.stimuli.values())
        audio = sum(s.timings.offsets[-1] - s.timings.onsets[0] for s in self.stimuli.values())
        regions = self.layout["regions"]
        return {
            "n_train_stories": len(train),
            "n_train_trs": int(sum(rows[s] for s in train)),
            "n_test_trs": int(rows[test[0]]),
            "n_test_repeats": int(self.params["stimuli"]["n_test_repeats"]),
            "n_voxels": self.n_voxels,
            "n_region_voxels": int((regions != NO_REGION).sum()),
            "words_per_minute": float(60.0 * n_words / audio),
            "tr_s": float(self.params["timing"]["tr_s"]),
        }
