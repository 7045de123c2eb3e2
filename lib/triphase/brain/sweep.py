"""Brain alignment (perspective 1): encoding models of every checkpoint and layer.

:func:`brain_alignment` runs the whole pipeline for one (series, dataset,
subject): for each checkpoint (loaded one at a time, released before the next)
it extracts word features of every story (:mod:`triphase.models.features`, cached),
builds the TR-level design per layer (:mod:`triphase.brain.timeseries`: Lanczos
downsampling, trimming, z-scoring, FIR delays), fits a voxelwise ridge model
with leave-stories-out cross-validation (:mod:`triphase.brain.encoding`), predicts
the held-out test story and scores it (Pearson r per voxel; whole-brain,
top-10% and per-region means; noise-ceiling normalisation), with a
block-permutation test, Benjamini-Hochberg FDR and a block-bootstrap CI
(:mod:`triphase.brain.statistics`). For the final checkpoint it also scores controls:

* ``shuffled-stories``: each story gets the TR-level design of another story
  (cyclic shift of the story list, tiled/cropped to the right length), i.e.
  features misaligned in time; expected score ~0;
* ``random``: a Gaussian TR-level design of the same shape; expected ~0;
* ``random-words`` (optional): a Gaussian vector per *word*, then the usual
  downsampling. Not a null: the Lanczos sum carries word rate, so it measures
  what word timing alone predicts, a useful baseline beside step0.

Results: ``brain.parquet`` (one row per checkpoint x layer x region x
features) in :func:`triphase.results_dir`, and the voxelwise r of every fit in
``voxel_r/<checkpoint>.npz`` beside it, with ``brain_voxels.npz`` (region
labels and noise ceiling per voxel). Per-checkpoint results are cached, keyed
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
from triphase.brain.encoding import (
    ALL_REGIONS,
    DEFAULT_ALPHAS,
    DEFAULT_N_SPLITS,
    brain_scores,
    fit_encoding_model,
    score_voxels,
)
from triphase.brain.statistics import DEFAULT_BLOCK, block_permutation_test, bootstrap_score_ci, fdr_bh, noise_ceiling
from triphase.brain.timeseries import DEFAULT_DELAYS, check_rows, make_delayed, story_design
from triphase.datasets import get_dataset
from triphase.models.checkpoints import select_checkpoints
from triphase.models.features import DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT, cached_story_features, model_config_hash
from triphase.models.hub import ensure_available, hub_load_kwargs
from triphase.models.integrity import SweepLog, attach_identity, checkpoint_flags, remember_identity, write_flags
from triphase.models.loading import load_checkpoint, release, resolve_device
from triphase.models.series import get_series

#: Bump when the scores' computation changes (keys the per-checkpoint cache).
BRAIN_RESULTS_VERSION = 2
#: Control feature sets (label -> description), besides the model's own features ("model").
CONTROLS = {
    "shuffled-stories": "TR-level design of another story (misaligned in time)",
    "random": "Gaussian TR-level design of the same shape",
    "random-words": "Gaussian vector per word, downsampled (word-rate baseline, not a null)",
}
MODEL_FEATURES = "model"
#: FDR level for the fraction of significant voxels.
DEFAULT_FDR_Q = 0.05
#: Region label of voxels outside every region (not given a row of their own).
NO_REGION = "none"
BRAIN_TABLE = "brain.parquet"
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
        self.ceiling = self._ceiling()
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

    def _ceiling(self) -> np.ndarray | None:
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
        return noise_ceiling(stacked).cc_max

    def region_masks(self) -> dict[str, np.ndarray]:
        masks = {ALL_REGIONS: np.ones(self.n_voxels, dtype=bool)}
        if self.regions is not None:
            for label in pd.unique(self.regions):
                if label != NO_REGION:
                    masks[str(label)] = self.regions == label
        return masks


# --------------------------------------------------------------------------- one fit
def evaluate_design(
    data: BrainData,
    design: dict[str, np.ndarray],
    alphas=DEFAULT_ALPHAS,
    delays: Sequence[int] = DEFAULT_DELAYS,
    n_splits: int = DEFAULT_N_SPLITS,
    n_perm: int = 1000,
    n_boot: int = 1000,
    seed: int = 0,
    block: int = DEFAULT_BLOCK,
    q: float = DEFAULT_FDR_Q,
    backend: str = "numpy",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fit, predict the test story and summarise one TR-level design (before delays).

    Parameters
    ----------
    data : BrainData
    design : dict story -> array (n_rows, n_features)
        Undelayed design; rows must match the responses story by story.

    Returns
    -------
    rows : DataFrame, one row per region (``all`` first)
    voxel_r : array (n_voxels,), NaN for excluded voxels
    """
    for story in data.stories:
        check_rows(story, design[story].shape[0], data.responses[story].shape[0])
    X = {s: make_delayed(np.asarray(design[s], dtype=np.float32), delays) for s in data.stories}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bad voxels are counted in the table instead
        model = fit_encoding_model(X, data.responses, data.train, alphas=alphas, n_splits=n_splits, backend=backend)
    prediction = np.concatenate([model.predict(X[s]) for s in data.test])
    fit_seconds = time.perf_counter() - start
    voxel_r = score_voxels(data.y_test, prediction)
    scores = brain_scores(voxel_r, model.cv_scores_, data.regions, data.ceiling).to_frame()
    pvalues = block_permutation_test(data.y_test, prediction, block=block, n_perm=n_perm, seed=seed)
    pvalues = np.where(np.isfinite(voxel_r), pvalues, np.nan)
    significant, _ = fdr_bh(pvalues, q)  # corrected over the whole brain
    rows = []
    for region, mask in data.region_masks().items():
        valid = mask & np.isfinite(voxel_r)
        row = scores.loc[scores["region"] == region].iloc[0].to_dict()
        if valid.sum() >= 1:
            boot = bootstrap_score_ci(data.y_test, prediction, block=block, n_boot=n_boot, seed=seed, voxels=valid)
            row["ci_low"], row["ci_high"] = boot.ci_low, boot.ci_high
        else:
            row["ci_low"] = row["ci_high"] = float("nan")
        row["frac_significant"] = float(significant[valid].mean()) if valid.any() else float("nan")
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
        row["fit_seconds"] = fit_seconds
        rows.append(row)
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


def score_checkpoint(checkpoint, data: BrainData, settings: dict, controls: Sequence[str] = (),
                     device="auto", dtype=None, on_fit=None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """All layers (and controls) of one checkpoint: result rows and voxelwise r, cached on disk.

    ``on_fit(message)`` is called before each fit (progress reporting).
    """
    key = _checkpoint_key(checkpoint, data, {**settings, "controls": sorted(controls)})
    folder = cache_dir("brain") / checkpoint.series / checkpoint.name / key
    if (folder / "rows.parquet").exists():
        with np.load(folder / "voxel_r.npz") as stored:
            return pd.read_parquet(folder / "rows.parquet"), {k: stored[k] for k in stored.files}

    features = checkpoint_features(checkpoint, data, settings["context"], device, dtype, settings["batch_size"])
    n_states = next(iter(features.values())).shape[0]
    layers = list(range(n_states)) if settings["layers"] is None else list(settings["layers"])
    bad = [layer for layer in layers if not 0 <= layer < n_states]
    if bad:
        raise ValueError(f"layers {bad} out of range for {checkpoint.name}: hidden states 0..{n_states - 1}")
    fit_kwargs = {k: settings[k] for k in ("alphas", "delays", "n_splits", "n_perm", "n_boot", "seed", "block", "q",
                                            "backend")}
    frames, voxel_r = [], {}
    jobs = [(layer, MODEL_FEATURES) for layer in layers] + [(layer, c) for c in controls for layer in layers]
    for i, (layer, kind) in enumerate(jobs):
        if on_fit is not None:
            on_fit(f"fit {i + 1}/{len(jobs)}: layer {layer}, {kind}")
        design = {s: story_design(features[s][layer], data.timings[s].midpoints, data.timings[s].tr_times,
                                  data.timings[s].trim, story=s) for s in data.stories}
        if kind != MODEL_FEATURES:
            design = control_design(kind, data, design, settings["seed"] + layer, features[data.stories[0]].shape[2])
        rows, r = evaluate_design(data, design, **fit_kwargs)
        rows.insert(0, "features", kind)
        rows.insert(0, "layer", layer)
        rows["n_layers"] = n_states - 1
        frames.append(rows)
        voxel_r[f"layer{layer}_{kind}"] = r.astype(np.float32)
    table = pd.concat(frames, ignore_index=True)
    for name, value in reversed(list(checkpoint.columns().items())):
        table.insert(0, name, value)
    table.insert(5, "dataset", data.dataset.name)
    table.insert(6, "subject", data.subject)
    table["dataset_tier"] = data.dataset.tier
    table["context"] = settings["context"]
    with atomic_dir(folder) as tmp:
        table.to_parquet(tmp / "rows.parquet", index=False)
        np.savez(tmp / "voxel_r.npz", **voxel_r)
    return table, voxel_r


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
    block: int = DEFAULT_BLOCK,
    q: float = DEFAULT_FDR_Q,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    dataset_options: dict | None = None,
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
        Block permutations and bootstrap replicates.
    seed : int
    controls : sequence of str
        Controls scored for the final checkpoint (:data:`CONTROLS`).
    device, dtype : str
        Where and in which dtype the checkpoints run.
    delays, n_splits, block, q :
        FIR delays (TRs), CV folds, block length (TRs), FDR level.
    backend : str
        himalaya backend; ``"auto"`` = ``torch_cuda`` when the device is a GPU, else ``numpy``.
    batch_size : int
        Windows per forward pass.
    dataset_options : dict, optional
        Passed to :func:`triphase.datasets.get_dataset` (e.g. ``{"preset": "tiny"}``).
    write : bool
        Write ``brain.parquet``, ``voxel_r/`` and ``brain_voxels.npz`` to the results folder.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        One row per checkpoint x layer x region x features with the join
        columns (series, checkpoint, step, tokens_seen, tier), dataset,
        subject, layer, region, features, score_mean, score_top10,
        score_ceiling_normalised, ci_low, ci_high, frac_significant,
        n_voxels, n_excluded, alpha_median, and more (see the methods page).
    """


    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown control(s) {unknown}; available: {', '.join(CONTROLS)}")
    ser = get_series(series) if isinstance(series, (str, dict)) else series
    chosen = select_checkpoints(ser.checkpoints, checkpoints)
    ds = get_dataset(dataset, **(dataset_options or {})) if isinstance(dataset, str) else dataset
    data = BrainData(ds, subject)
    if backend == "auto":
        backend = "torch_cuda" if resolve_device(device).startswith("cuda") else "numpy"
    settings = dict(
        context=None, layers=None if layers is None else [int(x) for x in layers],
        alphas=[float(a) for a in np.asarray(alphas, dtype=float)], delays=[int(d) for d in delays],
        n_splits=int(n_splits), n_perm=int(n_perm), n_boot=int(n_boot), seed=int(seed), block=int(block),
        q=float(q), backend=backend, batch_size=int(batch_size),
    )
    frames, voxel_maps = [], {}
    final = ser.checkpoints[-1].name
    log = SweepLog("brain alignment")
    bar = tqdm(chosen, desc="brain alignment", unit="checkpoint", disable=not progress)
    for ckpt in bar:
        ckpt_controls = list(controls) if ckpt.name == final else []

        def report(message, name=ckpt.name):
            bar.set_postfix_str(f"{name} {message}", refresh=True)

        with log.skip_if_missing(ckpt):
            settings["context"] = _resolve_context(ckpt, context)
            table, voxel_r = score_checkpoint(ckpt, data, settings, ckpt_controls, device, dtype, report)
            frames.append(table)
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
                np.savez(handle, regions=np.asarray(data.regions if data.regions is not None else []).astype(str),
                         cc_max=np.asarray(data.ceiling if data.ceiling is not None else []))
        write_parquet(result, out / BRAIN_TABLE)
    return result


def load_voxel_r(series: str, dataset: str, subject: str, checkpoint: str, layer: int,
                 features: str = MODEL_FEATURES) -> np.ndarray:
    """Voxelwise test r written by :func:`brain_alignment` (array (n_voxels,))."""
    path = results_dir(series, dataset, subject, create=False) / "voxel_r" / f"{checkpoint}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run brain_alignment for checkpoint {checkpoint!r} first")
    with np.load(path) as maps:
        key = f"layer{layer}_{features}"
        if key not in maps.files:
            raise KeyError(f"{path} has no {key!r}; available: {', '.join(maps.files)}")
        return maps[key]


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
