"""Brain alignment (perspective 1): encoding models of every checkpoint and layer.

:func:`brain_alignment` runs the whole pipeline for one (series, dataset,
subject): for each checkpoint (loaded one at a time, released before the next)
it extracts word features of every story (:mod:`triphase.models.features`, cached),
builds the TR-level design per layer (:mod:`triphase.brain.timeseries`: Lanczos
downsampling, trimming, z-scoring, FIR delays), fits a voxelwise ridge model
with leave-stories-out cross-validation (:mod:`triphase.brain.encoding`), predicts
the held-out test story and scores it (Pearson r per voxel; whole-brain,
top-10% and per-region means; a noise-ceiling normalised score over voxels
chosen on independent repeats), with a circular-shift test, Benjamini-Hochberg
FDR and a block-bootstrap CI whose draws are shared by every checkpoint
(:mod:`triphase.brain.statistics`; the block length comes from the test
responses' autocorrelation). For the final checkpoint it also scores controls:

* ``shuffled-stories``: each story gets the TR-level design of another story
  (cyclic shift of the story list, tiled/cropped to the right length), i.e.
  features misaligned in time; expected score ~0;
* ``random``: a Gaussian TR-level design of the same shape; expected ~0;
* ``random-words`` (optional): a Gaussian vector per *word*, then the usual
  downsampling. Not a null: the Lanczos sum carries word rate, so it measures
  what word timing alone predicts, a useful baseline beside step0.

Results: ``brain.parquet`` (one row per checkpoint x layer x region x
features) in :func:`triphase.results_dir`, and the voxelwise r of every fit in
``voxel_r/<checkpoint>.npz`` beside it (keys ``layer<l>_<features>``, and
``p_layer<l>_<features>`` for the voxelwise p-values), with ``brain_voxels.npz``
(region labels, noise ceiling per voxel, the independently chosen ceiling
voxels), and the bootstrap replicates in ``brain_replicates.parquet`` (columns
:data:`REPLICATE_COLUMNS`: one row per checkpoint x layer x region x features
x replicate; replicate ``i`` uses the same resampled test blocks at every
checkpoint, so differences and fits across checkpoints use joint replicates). Per-checkpoint results are cached, keyed
by everything that determines them, so a re-run recomputes nothing.

Examples
--------
>>> df = brain_alignment("organism-tiny", checkpoints=2, dataset="simulated",
...                      subject="sim01", dataset_options={"preset": "tiny"})  # doctest: +SKIP
>>> df.query("region == 'all' and features == 'model'")[["checkpoint", "layer", "score_mean"]]  # doctest: +SKIP
"""
from __future__ import annotations

import time
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from triphase._home import cache_dir, results_dir
from triphase._io import atomic_dir, atomic_path, stable_hash, write_parquet
from triphase._progress import tqdm
from triphase.brain.baseline import baseline_design, dataset_phone_times, unique_variance
from triphase.brain.encoding import (
    ALL_REGIONS,
    DEFAULT_ALPHAS,
    DEFAULT_N_SPLITS,
    brain_scores,
    fit_encoding_model,
    score_voxels,
)
from triphase.brain.statistics import (
    MIN_BLOCK,
    MIN_BLOCKS,
    MIN_SPLIT_REPEATS,
    BootstrapCI,
    SplitHalfCeiling,
    bootstrap_block_counts,
    bootstrap_region_scores,
    choose_block_length,
    circular_shift_test,
    fdr_bh,
    noise_ceiling,
    split_half_ceiling,
)
from triphase.brain.timeseries import DEFAULT_DELAYS, check_rows, make_delayed, story_design
from triphase.datasets import get_dataset
from triphase.models.checkpoints import select_checkpoints
from triphase.models.features import DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT, cached_story_features, model_config_hash
from triphase.models.hub import ensure_available, hub_load_kwargs
from triphase.models.integrity import SweepLog, attach_identity, checkpoint_flags, remember_identity, write_flags
from triphase.models.loading import load_checkpoint, release, resolve_device
from triphase.models.series import get_series

#: Bump when the scores' computation changes (keys the per-checkpoint cache).
#: 5: a voxel constant over a bootstrap replicate's rows is left out of that replicate (was: r of rounding noise).
BRAIN_RESULTS_VERSION = 5
#: Control feature sets (label -> description), besides the model's own features ("model").
CONTROLS = {
    "shuffled-stories": "TR-level design of another story (misaligned in time)",
    "random": "Gaussian TR-level design of the same shape",
    "random-words": "Gaussian vector per word, downsampled (word-rate baseline, not a null)",
}
MODEL_FEATURES = "model"
#: What the low-level baseline and the banded ridge add to the best layer's rows (region means over voxels).
UNIQUE_COLUMNS = ("r_baseline", "r_joint", "r2_baseline", "r2_joint", "r2_unique")
#: FDR level for the fraction of significant voxels.
DEFAULT_FDR_Q = 0.05
#: Region label of voxels outside every region (not given a row of their own).
NO_REGION = "none"
BRAIN_TABLE = "brain.parquet"
#: Bootstrap replicates of every score (the contract read by the phase analysis).
REPLICATES_TABLE = "brain_replicates.parquet"
REPLICATE_COLUMNS = ["series", "checkpoint", "step", "dataset", "subject", "layer", "region", "features",
                     "replicate", "score_mean"]
VOXEL_FILE = "brain_voxels.npz"
#: Seed offsets so that each control draws independent random numbers.
RANDOM_DESIGN_STREAM, RANDOM_WORDS_STREAM = 101, 102


# --------------------------------------------------------------------------- data
class BrainData:
    """Responses, timings, split, ceiling and regions of one (dataset, subject).

    Loaded once and reused for every checkpoint.
    """

    def __init__(self, dataset, subject: str):
        dataset.check_subject(subject)
        self.dataset = dataset
        self.subject = subject
        self.train, self.test = dataset.split(subject)
        if len(self.train) < 2:
            raise ValueError(f"dataset {dataset.name!r} subject {subject!r}: need >= 2 training stories, "
                             f"got {len(self.train)}")
        if not self.test:
            raise ValueError(f"dataset {dataset.name!r} subject {subject!r}: no test story")
        self.stories = list(self.train) + list(self.test)
        self.timings = {s: dataset.word_timings(s) for s in self.stories}
        self.responses = {}
        for story in self.stories:
            y = np.asarray(dataset.responses(subject, story), dtype=np.float32)
            if y.ndim != 2:
                raise ValueError(f"story {story!r}: responses must be 2-D (TRs x voxels), got shape {y.shape}")
            check_rows(story, self.timings[story].n_rows, y.shape[0])
            self.responses[story] = y
        widths = {y.shape[1] for y in self.responses.values()}
        if len(widths) != 1:
            raise ValueError(f"stories have different voxel counts: {sorted(widths)}")
        self.n_voxels = widths.pop()
        self.y_test = np.concatenate([self.responses[s] for s in self.test])
        self.block = self._block_length()
        repeats = self._repeats()
        self.ceiling = None if repeats is None else noise_ceiling(repeats).cc_max
        self.split_ceiling = self._split_ceiling(repeats)
        space = dataset.voxel_space(subject)
        regions = space.regions
        if regions is not None:
            regions = np.asarray(regions).astype(str)
            if regions.shape != (self.n_voxels,):
                raise ValueError(f"voxel_space regions have shape {regions.shape}, expected ({self.n_voxels},)")
        self.regions = regions
        self.space = space
        self.word_join = getattr(dataset, "word_join", " ")
        self.fingerprint = getattr(dataset, "fingerprint", None) or stable_hash(
            [(s, list(self.responses[s].shape), float(np.nansum(self.responses[s], dtype=np.float64)))
             for s in self.stories])

    def _block_length(self) -> int:
        """Block length (TRs) from the test responses' autocorrelation (the same for every checkpoint)."""
        n_trs = self.y_test.shape[0]
        # A very short test story cannot hold MIN_BLOCKS blocks of MIN_BLOCK TRs: shorter blocks then.
        shortest = max(1, min(MIN_BLOCK, n_trs // MIN_BLOCKS))
        return choose_block_length(self.y_test, min_block=shortest)

    def _repeats(self) -> np.ndarray | None:
        repeats = [self.dataset.repeats(self.subject, s) for s in self.test]
        if any(r is None for r in repeats):
            return None
        counts = {r.shape[0] for r in repeats}
        if len(counts) != 1:
            warnings.warn(f"test stories have different numbers of repeats {sorted(counts)}; no noise ceiling")
            return None
        stacked = np.concatenate([np.asarray(r, dtype=float) for r in repeats], axis=1)
        if stacked.shape[1:] != self.y_test.shape:
            raise ValueError(f"repeats have shape {stacked.shape[1:]} but the test responses {self.y_test.shape}")
        return stacked

    def _split_ceiling(self, repeats: np.ndarray | None) -> SplitHalfCeiling | None:
        """Ceiling voxels chosen on the even repeats, their ceiling from the odd ones (None: < 4 repeats)."""
        if repeats is None or repeats.shape[0] < MIN_SPLIT_REPEATS:
            return None
        return split_half_ceiling(repeats, q=DEFAULT_FDR_Q, min_shift=self.block)

    def region_masks(self) -> dict[str, np.ndarray]:
        masks = {ALL_REGIONS: np.ones(self.n_voxels, dtype=bool)}
        if self.regions is not None:
            for label in pd.unique(self.regions):
                if label != NO_REGION:
                    masks[str(label)] = self.regions == label
        return masks


# --------------------------------------------------------------------------- one fit
def _ceiling_voxels(data: BrainData, region_valid: np.ndarray) -> np.ndarray | None:
    """The region's valid voxels chosen on independent repeats for the ceiling, or None without a split."""
    return None if data.split_ceiling is None else region_valid & data.split_ceiling.selected


def _ceiling_columns(row: dict, voxel_r: np.ndarray, chosen: np.ndarray | None, data: BrainData,
                     boot: BootstrapCI | None) -> None:
    """Normalised score over the independently chosen ceiling voxels of a region (in place).

    ``boot`` is the bootstrap of the mean r over ``chosen`` (None when no voxel is chosen).
    """
    nan = float("nan")
    row.update(n_ceiling_voxels=0, score_ceiling_voxels=nan, ceiling_mean=nan, score_ceiling_normalised=nan,
               ci_low_ceiling_normalised=nan, ci_high_ceiling_normalised=nan)
    if chosen is None:
        return
    row["n_ceiling_voxels"] = int(chosen.sum())
    if not chosen.any():
        return
    ceiling_mean = float(data.split_ceiling.cc_max[chosen].mean())
    row["score_ceiling_voxels"] = float(voxel_r[chosen].mean())
    row["ceiling_mean"] = ceiling_mean
    row["score_ceiling_normalised"] = row["score_ceiling_voxels"] / ceiling_mean
    # The denominator comes from the other half of the repeats and is held fixed: the interval is the
    # paired bootstrap interval of the numerator, scaled.
    row["ci_low_ceiling_normalised"] = boot.ci_low / ceiling_mean
    row["ci_high_ceiling_normalised"] = boot.ci_high / ceiling_mean


def evaluate_design(
    data: BrainData,
    design: dict[str, np.ndarray],
    alphas=DEFAULT_ALPHAS,
    delays: Sequence[int] = DEFAULT_DELAYS,
    n_splits: int = DEFAULT_N_SPLITS,
    n_perm: int = 1000,
    n_boot: int = 1000,
    seed: int = 0,
    block: int | None = None,
    q: float = DEFAULT_FDR_Q,
    backend: str = "numpy",
    return_details: bool = False,
):
    """Fit, predict the test story and summarise one TR-level design (before delays).

    Parameters
    ----------
    data : BrainData
    design : dict story -> array (n_rows, n_features)
        Undelayed design; rows must match the responses story by story.
    n_perm : int
        Largest number of circular shifts of the significance test (all allowed shifts when fewer).
    n_boot, seed : int
        Bootstrap replicates and their seed: with the test TRs and the block length they fix the draws
        (:func:`triphase.brain.statistics.bootstrap_block_counts`), the same for every design.
    block : int or None
        Block length and smallest circular shift (TRs); None = ``data.block`` (from the data's autocorrelation).
    return_details : bool
        Also return a dict with ``pvalues`` (voxelwise) and ``replicates`` (region -> array (n_boot,)).

    Returns
    -------
    rows : DataFrame, one row per region (``all`` first)
    voxel_r : array (n_voxels,), NaN for excluded voxels
    details : dict, only if ``return_details``
    """
    for story in data.stories:
        check_rows(story, design[story].shape[0], data.responses[story].shape[0])
    block = data.block if block is None else int(block)
    X = {s: make_delayed(np.asarray(design[s], dtype=np.float32), delays) for s in data.stories}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bad voxels are counted in the table instead
        model = fit_encoding_model(X, data.responses, data.train, alphas=alphas, n_splits=n_splits, backend=backend)
    prediction = np.concatenate([model.predict(X[s]) for s in data.test])
    fit_seconds = time.perf_counter() - start
    voxel_r = score_voxels(data.y_test, prediction)
    scores = brain_scores(voxel_r, model.cv_scores_, data.regions, data.ceiling).to_frame()
    test = circular_shift_test(data.y_test, np.nan_to_num(prediction), min_shift=block, n_shifts=n_perm)
    pvalues = np.where(np.isfinite(voxel_r), test.pvalues, np.nan)
    significant, _ = fdr_bh(pvalues, q)  # corrected over the whole brain
    # One set of draws for every region and design (and, through the seed, every checkpoint): paired replicates.
    counts = bootstrap_block_counts(data.y_test.shape[0], block, n_boot, seed)
    region_masks = data.region_masks()
    valid_of = {region: mask & np.isfinite(voxel_r) for region, mask in region_masks.items()}
    chosen_of = {region: _ceiling_voxels(data, valid) for region, valid in valid_of.items()}
    # Every region and its ceiling voxels in one pass over the draws (each voxel's replicate r is computed once).
    boot_sets = {("score", region): valid for region, valid in valid_of.items() if valid.any()}
    boot_sets.update({("ceiling", region): chosen for region, chosen in chosen_of.items()
                      if chosen is not None and chosen.any()})
    boots = bootstrap_region_scores(data.y_test, prediction, boot_sets, counts, block=block) if boot_sets else {}
    rows, replicates = [], {}
    for region, mask in region_masks.items():
        valid = valid_of[region]
        row = scores.loc[scores["region"] == region].iloc[0].to_dict()
        boot = boots.get(("score", region))
        if boot is not None:
            row["ci_low"], row["ci_high"] = boot.ci_low, boot.ci_high
            replicates[region] = boot.replicates
        else:
            row["ci_low"] = row["ci_high"] = float("nan")
        _ceiling_columns(row, voxel_r, chosen_of[region], data, boots.get(("ceiling", region)))
        row["frac_significant"] = float(significant[valid].mean()) if valid.any() else float("nan")
        row["n_significant"] = int(significant[valid].sum())
        cv = model.cv_scores_[valid]
        row["cv_score_mean"] = float(np.nanmean(cv)) if np.isfinite(cv).any() else float("nan")
        row["n_excluded"] = int(mask.sum() - valid.sum())
        row["alpha_median"] = float(np.nanmedian(model.best_alphas_[mask])) if np.isfinite(
            model.best_alphas_[mask]).any() else float("nan")
        row["n_features"] = int(model.n_features_in_)
        row["model_kind"] = model.kind
        row["n_train_trs"] = int(model.n_samples_)
        row["n_test_trs"] = int(data.y_test.shape[0])
        row["n_excluded_train"] = int(model.n_excluded_)
        row["block_trs"] = block
        row["n_shifts"] = test.n_shifts
        row["n_boot"] = int(counts.shape[0])
        row["fit_seconds"] = fit_seconds
        rows.append(row)
    if return_details:
        return pd.DataFrame(rows), voxel_r, {"pvalues": pvalues, "replicates": replicates}
    return pd.DataFrame(rows), voxel_r


def _tile_rows(x: np.ndarray, n_rows: int) -> np.ndarray:
    """``x`` repeated from its start (or cropped) to ``n_rows`` rows."""
    reps = int(np.ceil(n_rows / x.shape[0]))
    return np.concatenate([x] * reps)[:n_rows]


def control_design(kind: str, data: BrainData, model_design: dict[str, np.ndarray], seed: int,
                   word_dim: int | None = None) -> dict[str, np.ndarray]:
    """TR-level design of a control (see module docstring), same shape as ``model_design``."""
    stories = data.stories
    if kind == "shuffled-stories":
        # Cyclic shift: every story (the test story included) gets another story's features.
        donors = stories[1:] + stories[:1]
        return {s: _tile_rows(model_design[d], model_design[s].shape[0]) for s, d in zip(stories, donors)}
    if kind == "random":
        rng = np.random.default_rng([seed, RANDOM_DESIGN_STREAM])
        return {s: rng.standard_normal(model_design[s].shape) for s in stories}
    if kind == "random-words":
        rng = np.random.default_rng([seed, RANDOM_WORDS_STREAM])
        width = word_dim or model_design[stories[0]].shape[1]
        out = {}
        for s in stories:
            t = data.timings[s]
            words = rng.standard_normal((len(t.words), width))
            out[s] = story_design(words, t.midpoints, t.tr_times, t.trim, story=s)
        return out
    raise ValueError(f"unknown control {kind!r}; available: {', '.join(CONTROLS)}")


# --------------------------------------------------------------------------- per checkpoint
def _resolve_context(checkpoint, context: int | None) -> int:


    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers import AutoConfig
    ensure_available(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint.source, **hub_load_kwargs(checkpoint))
    max_positions = getattr(config, "max_position_embeddings", None)
    if context is None:
        return min(DEFAULT_CONTEXT, max_positions) if max_positions else DEFAULT_CONTEXT
    if max_positions and context > max_positions:
        raise ValueError(f"context={context} exceeds max_position_embeddings={max_positions} of {checkpoint.name}")
    return int(context)


class _LazyModel:
    """Loads a checkpoint on first use (so a full feature-cache hit never loads weights)."""

    def __init__(self, checkpoint, device, dtype):
        self.checkpoint, self.device, self.dtype = checkpoint, device, dtype
        self.loaded = None

    def __call__(self):
        if self.loaded is None:


            self.loaded = load_checkpoint(self.checkpoint, device=self.device, dtype=self.dtype)
            remember_identity(self.checkpoint, self.loaded[0])
        return self.loaded

    def release(self):
        if self.loaded is not None:
            model, _ = self.loaded
            self.loaded = None
            release(model)


def checkpoint_features(checkpoint, data: BrainData, context: int, device="auto", dtype=None,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
    """Word features (n_states, n_words, hidden) of every story at one checkpoint (cached)."""
    config_hash = model_config_hash(checkpoint)
    loader = _LazyModel(checkpoint, device, dtype)
    try:
        return {
            s: cached_story_features(checkpoint, data.dataset.name, s, data.timings[s].words, context, loader,
                                     join=data.word_join, batch_size=batch_size, config_hash=config_hash)
            for s in data.stories
        }
    finally:
        loader.release()


def _checkpoint_key(checkpoint, data, settings) -> str:
    return stable_hash({
        "version": BRAIN_RESULTS_VERSION, "checkpoint": checkpoint.to_dict(),
        "model_config": model_config_hash(checkpoint), "dataset": data.dataset.name,
        "subject": data.subject, "data": data.fingerprint, **settings,
    })


def _with_unique_variance(table: pd.DataFrame, data: BrainData, features: dict, settings: dict,
                          on_fit=None) -> pd.DataFrame:
    """Add the low-level baseline's and the model's unique variance at the checkpoint's best layer (in place).

    The layer is the model layer with the best whole-brain cross-validated r on
    the training stories (the rule of :func:`best_layers`); its rows get the
    region means of :data:`UNIQUE_COLUMNS` (NaN on every other row).
    """
    model_rows = table[(table["features"] == MODEL_FEATURES) & (table["region"] == ALL_REGIONS)]
    for column in UNIQUE_COLUMNS:
        table[column] = np.nan
    scored = model_rows.dropna(subset=["cv_score_mean"])
    if scored.empty:  # no layer has a cross-validated score: nothing to choose, the columns stay NaN
        table["n_baseline_features"] = 0
        return table
    layer = int(scored.loc[scored["cv_score_mean"].idxmax(), "layer"])
    if on_fit is not None:
        on_fit(f"baseline and banded ridge: layer {layer}")
    design = {s: story_design(features[s][layer], data.timings[s].midpoints, data.timings[s].tr_times,
                              data.timings[s].trim, story=s) for s in data.stories}
    baseline = baseline_design(data.timings, dataset_phone_times(data.dataset, data.stories))
    result = unique_variance(data.responses, data.train, data.test, baseline, design, data.region_masks(),
                             delays=settings["delays"], n_splits=settings["n_splits"], backend=settings["backend"])
    means = result.regions.set_index("region")
    chosen = (table["features"] == MODEL_FEATURES) & (table["layer"] == layer)
    for column in UNIQUE_COLUMNS:
        table.loc[chosen, column] = table.loc[chosen, "region"].map(means[column]).to_numpy(dtype=float)
    table["n_baseline_features"] = result.n_baseline_features
    return table


def score_checkpoint(checkpoint, data: BrainData, settings: dict, controls: Sequence[str] = (),
                     device="auto", dtype=None, on_fit=None) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """All layers (and controls) of one checkpoint: result rows, voxel maps and bootstrap replicates, cached.

    ``on_fit(message)`` is called before each fit (progress reporting).

    Returns
    -------
    table : DataFrame
        One row per layer x region x features.
    voxel_maps : dict
        ``layer<l>_<features>`` -> voxelwise r, ``p_layer<l>_<features>`` -> voxelwise p.
    replicates : DataFrame
        :data:`REPLICATE_COLUMNS`, one row per layer x region x features x replicate.
    """
    key = _checkpoint_key(checkpoint, data, {**settings, "controls": sorted(controls)})
    folder = cache_dir("brain") / checkpoint.series / checkpoint.name / key
    if (folder / "rows.parquet").exists():
        with np.load(folder / "voxel_r.npz") as stored:
            return (pd.read_parquet(folder / "rows.parquet"), {k: stored[k] for k in stored.files},
                    pd.read_parquet(folder / "replicates.parquet"))

    features = checkpoint_features(checkpoint, data, settings["context"], device, dtype, settings["batch_size"])
    n_states = next(iter(features.values())).shape[0]
    layers = list(range(n_states)) if settings["layers"] is None else list(settings["layers"])
    bad = [layer for layer in layers if not 0 <= layer < n_states]
    if bad:
        raise ValueError(f"layers {bad} out of range for {checkpoint.name}: hidden states 0..{n_states - 1}")
    fit_kwargs = {k: settings[k] for k in ("alphas", "delays", "n_splits", "n_perm", "n_boot", "seed", "block", "q",
                                            "backend")}
    frames, voxel_r, replicate_frames = [], {}, []
    jobs = [(layer, MODEL_FEATURES) for layer in layers] + [(layer, c) for c in controls for layer in layers]
    for i, (layer, kind) in enumerate(jobs):
        if on_fit is not None:
            on_fit(f"fit {i + 1}/{len(jobs)}: layer {layer}, {kind}")
        design = {s: story_design(features[s][layer], data.timings[s].midpoints, data.timings[s].tr_times,
                                  data.timings[s].trim, story=s) for s in data.stories}
        if kind != MODEL_FEATURES:
            design = control_design(kind, data, design, settings["seed"] + layer, features[data.stories[0]].shape[2])
        rows, r, details = evaluate_design(data, design, **fit_kwargs, return_details=True)
        rows.insert(0, "features", kind)
        rows.insert(0, "layer", layer)
        rows["n_layers"] = n_states - 1
        frames.append(rows)
        voxel_r[f"layer{layer}_{kind}"] = r.astype(np.float32)
        voxel_r[f"p_layer{layer}_{kind}"] = details["pvalues"]
        for region, values in details["replicates"].items():
            replicate_frames.append(pd.DataFrame({
                "layer": layer, "region": region, "features": kind,
                "replicate": np.arange(values.size, dtype=np.int64), "score_mean": values}))
    table = pd.concat(frames, ignore_index=True)
    if settings.get("baseline", False):
        table = _with_unique_variance(table, data, features, settings, on_fit)
    for name, value in reversed(list(checkpoint.columns().items())):
        table.insert(0, name, value)
    table.insert(5, "dataset", data.dataset.name)
    table.insert(6, "subject", data.subject)
    table["dataset_tier"] = data.dataset.tier
    table["context"] = settings["context"]
    replicates = pd.concat(replicate_frames, ignore_index=True)
    for name, value in (("subject", data.subject), ("dataset", data.dataset.name), ("step", checkpoint.step),
                        ("checkpoint", checkpoint.name), ("series", checkpoint.series)):
        replicates.insert(0, name, value)
    replicates = replicates[REPLICATE_COLUMNS]
    with atomic_dir(folder) as tmp:
        table.to_parquet(tmp / "rows.parquet", index=False)
        replicates.to_parquet(tmp / "replicates.parquet", index=False)
        np.savez(tmp / "voxel_r.npz", **voxel_r)
    return table, voxel_r, replicates


# --------------------------------------------------------------------------- the pipeline
def brain_alignment(
    series="organism",
    checkpoints="all",
    dataset="simulated",
    subject: str = "sim01",
    context: int | None = None,
    layers: Sequence[int] | None = None,
    alphas=DEFAULT_ALPHAS,
    n_perm: int = 1000,
    n_boot: int = 1000,
    seed: int = 0,
    controls: Sequence[str] = ("shuffled-stories", "random"),
    device: str = "auto",
    dtype=None,
    delays: Sequence[int] = DEFAULT_DELAYS,
    n_splits: int = DEFAULT_N_SPLITS,
    block: int | None = None,
    q: float = DEFAULT_FDR_Q,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    dataset_options: dict | None = None,
    baseline: bool = True,
    write: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Brain scores of every chosen checkpoint x layer x region, written to ``brain.parquet``.

    Parameters
    ----------
    series : str or CheckpointSeries
        A series name (``"organism"``, ``"pythia-160m"``, ...) or object.
    checkpoints : "all", int or list
        See :func:`triphase.models.checkpoints.select_checkpoints`.
    dataset : str or Dataset
        ``"simulated"``, ``"lebel2023"``, ... or an adapter instance.
    subject : str
    context : int or None
        Feature context in tokens (None: min(256, the model's max positions)).
    layers : list of int or None
        Hidden-state indices (0 = embeddings); None = all.
    alphas : array
        Ridge penalties (log grid).
    n_perm, n_boot : int
        Largest number of circular shifts of the significance test, and bootstrap replicates.
    seed : int
    controls : sequence of str
        Controls scored for the final checkpoint (:data:`CONTROLS`).
    device, dtype : str
        Where and in which dtype the checkpoints run.
    delays, n_splits, block, q :
        FIR delays (TRs), CV folds, block length (TRs; None = from the test responses' autocorrelation,
        :func:`triphase.brain.statistics.choose_block_length`), FDR level.
    backend : str
        himalaya backend; ``"auto"`` = ``torch_cuda`` when the device is a GPU, else ``numpy``.
    batch_size : int
        Windows per forward pass.
    dataset_options : dict, optional
        Passed to :func:`triphase.datasets.get_dataset` (e.g. ``{"preset": "tiny"}``).
    baseline : bool
        At each checkpoint's best layer (cross-validated on the training stories), fit the low-level
        baseline (word rate, word length, phoneme rate where the dataset has phones) alone and jointly
        with the layer (banded ridge, :func:`triphase.brain.baseline.unique_variance`): the columns
        :data:`UNIQUE_COLUMNS`, ``r2_unique`` being the variance the model explains beyond the baseline.
    write : bool
        Write ``brain.parquet``, ``brain_replicates.parquet``, ``voxel_r/`` and ``brain_voxels.npz`` to the
        results folder.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        One row per checkpoint x layer x region x features with the join
        columns (series, checkpoint, step, tokens_seen, tier), dataset,
        subject, layer, region, features, score_mean, score_top10,
        score_ceiling_normalised (over ``n_ceiling_voxels`` voxels chosen on
        independent repeats), ci_low, ci_high, frac_significant, block_trs,
        n_voxels, n_excluded, alpha_median, the baseline columns (:data:`UNIQUE_COLUMNS`, best layer
        only) and more (see the methods page).
    """


    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown control(s) {unknown}; available: {', '.join(CONTROLS)}")
    ser = get_series(series) if isinstance(series, (str, dict)) else series
    chosen = select_checkpoints(ser.checkpoints, checkpoints)
    ds = get_dataset(dataset, **(dataset_options or {})) if isinstance(dataset, str) else dataset
    data = BrainData(ds, subject)
    if block is not None and int(block) < 1:
        raise ValueError(f"block must be None (from the data) or >= 1 TR, got {block}")
    block = data.block if block is None else int(block)
    if backend == "auto":
        backend = "torch_cuda" if resolve_device(device).startswith("cuda") else "numpy"
    settings = dict(
        context=None, layers=None if layers is None else [int(x) for x in layers],
        alphas=[float(a) for a in np.asarray(alphas, dtype=float)], delays=[int(d) for d in delays],
        n_splits=int(n_splits), n_perm=int(n_perm), n_boot=int(n_boot), seed=int(seed), block=int(block),
        q=float(q), backend=backend, batch_size=int(batch_size), baseline=bool(baseline),
    )
    frames, voxel_maps, replicate_frames = [], {}, []
    final = ser.checkpoints[-1].name
    log = SweepLog("brain alignment")
    bar = tqdm(chosen, desc="brain alignment", unit="checkpoint", disable=not progress)
    for ckpt in bar:
        ckpt_controls = list(controls) if ckpt.name == final else []

        def report(message, name=ckpt.name):
            bar.set_postfix_str(f"{name} {message}", refresh=True)

        with log.skip_if_missing(ckpt):
            settings["context"] = _resolve_context(ckpt, context)
            table, voxel_r, replicates = score_checkpoint(ckpt, data, settings, ckpt_controls, device, dtype, report)
            frames.append(table)
            replicate_frames.append(replicates)
            voxel_maps[ckpt.name] = voxel_r
    log.check_any_done(chosen)
    flags = checkpoint_flags(chosen, log, device=device, dtype=dtype)
    result = attach_identity(pd.concat(frames, ignore_index=True), flags)
    if write:
        out = results_dir(ser.name, ds.name, subject)
        write_flags(flags, out, "brain")
        for name, maps in voxel_maps.items():
            with atomic_path(out / "voxel_r" / f"{name}.npz") as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **maps)
        with atomic_path(out / VOXEL_FILE) as tmp:
            with open(tmp, "wb") as handle:
                split = data.split_ceiling
                np.savez(handle, regions=np.asarray(data.regions if data.regions is not None else []).astype(str),
                         cc_max=np.asarray(data.ceiling if data.ceiling is not None else []),
                         ceiling_voxels=np.asarray(split.selected if split is not None else [], dtype=bool),
                         cc_max_split=np.asarray(split.cc_max if split is not None else []))
        write_parquet(pd.concat(replicate_frames, ignore_index=True), out / REPLICATES_TABLE)
        write_parquet(result, out / BRAIN_TABLE)
    return result


def load_voxel_r(series: str, dataset: str, subject: str, checkpoint: str, layer: int,
                 features: str = MODEL_FEATURES, _prefix: str = "") -> np.ndarray:
    """Voxelwise test r written by :func:`brain_alignment` (array (n_voxels,))."""
    path = results_dir(series, dataset, subject, create=False) / "voxel_r" / f"{checkpoint}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run brain_alignment for checkpoint {checkpoint!r} first")
    with np.load(path) as maps:
        key = f"{_prefix}layer{layer}_{features}"
        if key not in maps.files:
            raise KeyError(f"{path} has no {key!r}; available: {', '.join(maps.files)}")
        return maps[key]


def load_voxel_p(series: str, dataset: str, subject: str, checkpoint: str, layer: int,
                 features: str = MODEL_FEATURES) -> np.ndarray:
    """Voxelwise p-values (circular-shift test) written by :func:`brain_alignment` (array (n_voxels,))."""
    return load_voxel_r(series, dataset, subject, checkpoint, layer, features, _prefix="p_")


def load_replicates(series: str, dataset: str, subject: str) -> pd.DataFrame:
    """Bootstrap replicates written by :func:`brain_alignment` (columns :data:`REPLICATE_COLUMNS`)."""
    path = results_dir(series, dataset, subject, create=False) / REPLICATES_TABLE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run brain_alignment first")
    return pd.read_parquet(path)


def best_layers(table: pd.DataFrame, by: str = "cv_score_mean", region: str = ALL_REGIONS) -> pd.DataFrame:
    """Per checkpoint, the row of the layer with the highest ``by`` (model features, one region).

    The default picks the layer by its cross-validated score on the *training*
    stories, so the test score of the chosen layer is not inflated by the choice.

    Examples
    --------
    >>> t = pd.DataFrame({"checkpoint": ["a", "a"], "step": [0, 0], "layer": [0, 1], "region": "all",
    ...                   "features": "model", "cv_score_mean": [0.1, 0.3]})
    >>> best_layers(t)["layer"].tolist()
    [1]
    """
    rows = table[(table["region"] == region) & (table["features"] == MODEL_FEATURES)]
    index = rows.groupby("checkpoint", sort=False)[by].idxmax().dropna()
    return rows.loc[index].sort_values("step").reset_index(drop=True)
