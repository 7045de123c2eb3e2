"""Internal states (perspective 2): what changes inside the model across training.

:func:`internal_states` measures every chosen checkpoint x layer of a series and
writes the tidy table ``internal.parquet`` to :func:`triphase.results_dir`.
The measures themselves are pure functions in :mod:`triphase.internal`; this
module runs the forward passes and tabulates them.

Texts
-----
* **analysis text** (``text_source``): ``"heldout"`` = ``n_stories`` story-world
  stories from the held-out stream (:func:`triphase.models.storyworld.stimulus_stories`
  with seed ``seed + INTERNAL_STORY_SEED_OFFSET``, so neither training text nor
  the simulated participant's stimuli), which carry gold part-of-speech and
  syntactic-depth labels; or ``"stimulus"`` = the dataset's stories (any text;
  no gold grammar labels). It is plain English, so real models run on it too.
* the **other** text only gives its LM loss (a logits-only pass).
* **repeated random tokens** for the induction measures.

Forward passes
--------------
One pass per window serves everything: the analysis text is cut into the same
overlapping windows as the brain-alignment features
(:func:`triphase.models.features.plan_windows`: context ``C``, stride ``C / 2``) and
each window's single forward pass (``output_hidden_states`` and
``output_attentions``, eager attention) gives the next-token loss of the tokens
it serves, every layer's hidden state at the last token of each word it serves,
and the attention entropy of those query rows. The repeated sequences take one
batched pass. Weights are loaded one checkpoint at a time and released.

Measures (``measure`` column)
-----------------------------
``layer`` is the hidden-state index (0 = embeddings, ``l`` = output of block
``l``); the attention of block ``l`` is reported at ``layer = l``.
``layer = -1`` marks checkpoint-level measures, ``head = -1`` measures that are
not per head. See :data:`MEASURES` for the full list.

Representation measures use the word-level states (last token of each word,
the states the brain-alignment features use) of every analysis word except
each story's first (it has no context and, in many models, an outlier norm).
TwoNN, PCA and CKA use a seeded subsample of ``token_budget`` of those words,
the same words at every checkpoint; anisotropy, norm and probes use all.

Memory and caching
------------------
Per checkpoint the word states of all chosen layers are held once
(``n_layers x n_words x d``), then reduced to measures and to the subsample,
which is cached on disk (float16, ``n_layers x token_budget x d``; about 1 GB
per 7B checkpoint with the default budget). CKA is computed afterwards from
the cache, holding the final checkpoint's, the previous and the current
subsample only. Per-checkpoint rows are cached too (keyed by everything that
determines them), so a re-run recomputes nothing.

Examples
--------
>>> table = internal_states("organism-tiny", checkpoints=3, n_stories=4,
...                         dataset_options={"preset": "tiny"})  # doctest: +SKIP
>>> table.query("measure == 'intrinsic_dimension'")[["checkpoint", "layer", "value"]]  # doctest: +SKIP
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pandas as pd
from wordfreq import zipf_frequency

from triphase._home import cache_dir, results_dir
from triphase._io import atomic_path, stable_hash, write_parquet
from triphase._progress import tqdm
from triphase.datasets import get_dataset
from triphase.internal import measures as internal
from triphase.models.checkpoints import select_checkpoints
from triphase.models.features import model_config_hash, plan_windows, resolve_context, tokenize_words
from triphase.models.hub import ensure_available, hub_load_kwargs
from triphase.models.integrity import (
    MissingCheckpointWarning,
    SweepLog,
    attach_identity,
    checkpoint_flags,
    missing_reason,
    remember_identity,
    write_flags,
)
from triphase.models.loading import load_checkpoint, release, switch_attention
from triphase.models.series import CheckpointSeries, get_series
from triphase.models.storyworld import LATENT_NAMES, PLACES, stimulus_stories

#: Bump when any measure's computation changes (keys the per-checkpoint cache).
INTERNAL_RESULTS_VERSION = 3
INTERNAL_TABLE = "internal.parquet"
#: Seed offset of the held-out analysis stories: distinct from the simulated
#: participant's stimuli and from the organism's held-out-loss stories.
INTERNAL_STORY_SEED_OFFSET = 2_000_029
#: Seed offsets so the subsample, the random sequences and the control-task labels draw independent numbers.
SUBSAMPLE_STREAM, INDUCTION_STREAM, CONTROL_STREAM = 11, 12, 13
DEFAULT_N_STORIES = 8
DEFAULT_TOKEN_BUDGET = 2048
DEFAULT_INDUCTION_LENGTH = 32
DEFAULT_INDUCTION_SEQUENCES = 16
DEFAULT_PROBES = ("pos", "depth", "frequency", "position", "location", "tension")
#: Probes of wider models see this many top principal components of the word states.
DEFAULT_PROBE_COMPONENTS = 256
#: Punctuation that ends a sentence (for the position-in-sentence label of any text).
SENTENCE_END = (".", "!", "?")
#: Row sentinel for checkpoint-level measures (layer) and non-head measures (head).
NO_LAYER = NO_HEAD = -1
#: Probes: label kind and which text can supply it.
PROBES = {
    "pos": ("classification", "part of speech (story-world gold label)"),
    "depth": ("regression", "depth of the word in the parse tree (story-world gold label)"),
    "frequency": ("regression", "word frequency, Zipf scale (wordfreq)"),
    "position": ("regression", "position of the word in its sentence (0 = first)"),
    # the story world's latent state: not written in the word, it has to be tracked through the story
    "location": ("classification", "where the story's protagonist is (story-world latent state)"),
    "tension": ("regression", "narrative tension, a leaky integral of dramatic events (story-world latent state)"),
}
#: Probes of the story world's latent state (held-out text only).
LATENT_PROBES = ("location", "tension")
#: Every measure of the table: name -> (level, description).
MEASURES = {
    "lm_loss_heldout": ("checkpoint", "next-token cross-entropy (nats/token) on held-out story-world stories"),
    "lm_loss_stimulus": ("checkpoint", "next-token cross-entropy (nats/token) on the dataset's stimulus stories"),
    "icl_loss_first": ("checkpoint", "loss on the first repeat of repeated random token sequences"),
    "icl_loss_second": ("checkpoint", "loss on the second repeat of the same sequences"),
    "icl_loss_gain": ("checkpoint", "in-context loss gain: icl_loss_second - icl_loss_first (negative = copying)"),
    "intrinsic_dimension": ("layer", "TwoNN intrinsic dimension (linear fit, 10% largest ratios discarded)"),
    "participation_ratio": ("layer", "PCA participation ratio (sum lambda)^2 / sum lambda^2"),
    "n_components_90": ("layer", "principal components needed for 90% of the variance"),
    "anisotropy": ("layer", "mean pairwise cosine similarity of word representations"),
    "mean_norm": ("layer", "mean Euclidean norm of word representations"),
    "cka_final": ("layer", "debiased linear CKA to the same layer of the series' final checkpoint (if that is "
                           "missing: of the last available one, named in integrity_flag)"),
    "cka_previous": ("layer", "debiased linear CKA to the same layer of the previous chosen checkpoint"),
    "attention_entropy": ("layer / head", "mean attention entropy (nats); head -1 = mean over heads"),
    "induction_score": ("head", "prefix-matching score on repeated random tokens"),
    "induction_score_max": ("layer", "largest prefix-matching score over the heads of the layer"),
    **{f"probe_{name}_{'accuracy' if kind == 'classification' else 'r2'}{suffix}": ("layer", f"{what}: {text}")
       for name, (kind, text) in PROBES.items()
       for suffix, what in (("", "linear probe"),
                            ("_control", "the same probe on the control task (one random label per word type, "
                                         "Hewitt & Liang 2019)"),
                            ("_selectivity", "probe score minus control-task score"))},
    **{f"probe_{name}_chance": ("layer", f"majority-class share of the labels: {text}")
       for name, (kind, text) in PROBES.items() if kind == "classification"},
}
TABLE_COLUMNS = ["series", "checkpoint", "step", "tokens_seen", "tier", "layer", "head", "measure", "value"]


# --------------------------------------------------------------------------- texts
@dataclass
class TextSet:
    """Stories to analyse: words, the separator that joins them, and word labels.

    ``labels[name]`` is an array over all words of all stories (concatenated in
    story order); ``story_index`` gives each word's story.
    """

    name: str
    stories: list[str]
    words: list[list[str]]
    join: str = " "
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.stories) != len(self.words) or not self.stories:
            raise ValueError(f"text {self.name!r}: need one word list per story, got {len(self.stories)} "
                             f"stories and {len(self.words)} word lists")
        n = self.n_words
        for key, values in self.labels.items():
            if len(values) != n:
                raise ValueError(f"text {self.name!r}: label {key!r} has {len(values)} values for {n} words")

    @property
    def n_words(self) -> int:
        return sum(len(w) for w in self.words)

    @property
    def types(self) -> np.ndarray:
        """Word type of every word (:func:`word_form`), the unit of the probes' control task."""
        return np.array([word_form(w) for ws in self.words for w in ws])

    @property
    def story_index(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.words)), [len(w) for w in self.words])

    @property
    def first_word(self) -> np.ndarray:
        """True for each story's first word."""
        out = np.zeros(self.n_words, dtype=bool)
        out[np.cumsum([0] + [len(w) for w in self.words[:-1]])] = True
        return out

    def fingerprint(self) -> str:
        return stable_hash({"stories": self.stories, "join": self.join,
                            "words": [stable_hash(w, 16) for w in self.words]})


def word_form(word: str) -> str:
    """Lower-case word without surrounding punctuation (for frequency look-ups).

    Examples
    --------
    >>> word_form('"Castle."')
    'castle'
    """
    return word.strip(".,;:!?\"'()[]{}").lower()


def sentence_positions(words: Sequence[str]) -> np.ndarray:
    """Position of each word in its sentence; a sentence ends with a word ending in . ! or ?.

    Examples
    --------
    >>> sentence_positions(["Tom", "runs.", "He", "is", "fast."]).tolist()
    [0, 1, 0, 1, 2]
    """
    out = np.zeros(len(words), dtype=np.int64)
    position = 0
    for i, word in enumerate(words):
        out[i] = position
        position = 0 if word.rstrip("\"')]").endswith(SENTENCE_END) else position + 1
    return out


def word_frequencies(forms: Sequence[str], language: str = "en") -> np.ndarray:
    """Zipf frequency (wordfreq) of each word form, looked up once per distinct form."""

    table = {form: zipf_frequency(form, language) for form in set(forms)}
    return np.array([table[f] for f in forms], dtype=np.float64)


def heldout_text(n_stories: int = DEFAULT_N_STORIES, seed: int = 0, language: str = "en") -> TextSet:
    """Held-out story-world stories with gold labels (pos, depth), frequency/position labels and the latent state.

    ``location`` (where the protagonist is) and ``tension`` come from the
    story world's latent state (:attr:`triphase.models.storyworld.Story.latent`):
    no word spells them out, so a probe reads them only from a representation
    that tracks the story.

    Examples
    --------
    >>> text = heldout_text(2)
    >>> sorted(text.labels)
    ['depth', 'frequency', 'location', 'pos', 'position', 'tension']
    """

    if n_stories < 1:
        raise ValueError(f"n_stories must be >= 1, got {n_stories}")
    stories = stimulus_stories(n_stories, seed=seed + INTERNAL_STORY_SEED_OFFSET)
    words = [[w.text for w in s.words] for s in stories]
    flat = [w for s in stories for w in s.words]
    latent = np.concatenate([s.latent for s in stories]).astype(np.float64)
    labels = {
        "pos": np.array([w.pos for w in flat]),
        "depth": np.array([w.depth for w in flat], dtype=np.float64),
        "frequency": word_frequencies([w.form for w in flat], language),
        "position": np.array([w.position for w in flat], dtype=np.float64),
        # the world state known after each word's sentence so far (Story.latent): one place per story step
        "location": np.array(PLACES)[np.argmax(latent[:, :len(PLACES)], axis=1)],
        "tension": latent[:, LATENT_NAMES.index("tension")],
    }
    return TextSet("heldout", [s.story_id for s in stories], words, " ", labels)


def stimulus_text(data, subject: str, language: str | None = None) -> TextSet:
    """The dataset's stories (all of the subject's, training and test) with frequency/position labels."""
    stories = list(data.stories(subject))
    words = [list(data.word_timings(s).words) for s in stories]
    flat = [w for ws in words for w in ws]
    language = language or getattr(data, "language", None) or "en"
    labels = {
        "frequency": word_frequencies([word_form(w) for w in flat], language),
        "position": np.concatenate([sentence_positions(ws) for ws in words]).astype(np.float64),
    }
    return TextSet("stimulus", stories, words, getattr(data, "word_join", " "), labels)


# --------------------------------------------------------------------------- forward passes
def use_eager_attention(model) -> None:
    """Switch a model to eager attention, the only implementation that returns attention weights.

    transformers 5 returns an empty ``attentions`` tuple (with a warning) from
    SDPA / flash attention when ``output_attentions=True``.
    """
    switch_attention(model, "eager")


def _n_blocks(model) -> int:
    n = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ValueError("the model config has no integer num_hidden_layers")
    return n


def _resolve_layers(layers, n_blocks: int) -> list[int]:
    n_states = n_blocks + 1
    if layers is None:
        return list(range(n_states))
    chosen = sorted({int(layer) % n_states if -n_states <= int(layer) < n_states else int(layer) for layer in layers})
    bad = [layer for layer in chosen if not 0 <= layer < n_states]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {n_states} hidden states (0..{n_states - 1})")
    return chosen


@dataclass
class TextPass:
    """What one windowed pass over a text yields."""

    loss_sum: float
    n_targets: int
    states: np.ndarray | None  # (n_layers, n_words, d) float32
    entropy: np.ndarray | None  # (n_blocks, n_heads) mean attention entropy of the served query rows

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n_targets


def text_pass(model, tokenizer, text: TextSet, context: int, layers: Sequence[int] | None = None,
              batch_size: int = 8, hidden: bool = True, attention: bool = True, progress: bool = False) -> TextPass:
    """One forward pass per window over every story: loss, word states and attention entropy.

    Parameters
    ----------
    model, tokenizer
        A causal LM (eval mode) and its fast tokenizer.
    text : TextSet
    context : int
        Window length ``C`` (stride ``C // 2``, as :func:`triphase.models.features.plan_windows`).
    layers : list of int or None
        Hidden-state indices to keep (None = all).
    batch_size : int
        Windows per forward pass.
    hidden, attention : bool
        Keep word states / attention entropy (False for a loss-only pass).

    Returns
    -------
    TextPass

    Notes
    -----
    Token ``t`` (``t >= 1``) is predicted from position ``t - 1`` of the window
    that serves it; every served token but the story's first has its previous
    token in the same window, so each target is scored exactly once. The
    entropy of block ``b`` head ``h`` is the mean over served query rows.
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch


    if attention:
        use_eager_attention(model)
    device = next(model.parameters()).device
    n_blocks = _n_blocks(model)
    layer_index = _resolve_layers(layers, n_blocks)
    states = None
    entropy_sum = None
    n_queries = 0
    loss_sum, n_targets = 0.0, 0
    word_offset = 0
    iterator = list(zip(text.stories, text.words))
    if progress:
        iterator = tqdm(iterator, desc=f"{text.name} stories", leave=False)
    with torch.inference_mode():
        for story, words in iterator:
            ids, last_token = tokenize_words(tokenizer, words, text.join)
            windows, token_window = plan_windows(len(ids), context)
            word_window = token_window[last_token]
            by_length: dict[int, list[int]] = {}
            for k, w in enumerate(windows):
                by_length.setdefault(w.stop - w.start, []).append(k)
            for length, ks in by_length.items():
                for i in range(0, len(ks), batch_size):
                    chunk = ks[i:i + batch_size]
                    batch = torch.as_tensor(np.stack([ids[windows[k].start:windows[k].stop] for k in chunk]),
                                            device=device)
                    out = model(input_ids=batch, output_hidden_states=hidden, output_attentions=attention)
                    if attention and (out.attentions is None or len(out.attentions) != n_blocks):
                        raise RuntimeError(f"the model returned {0 if out.attentions is None else len(out.attentions)} "
                                           f"attention maps for {n_blocks} blocks: load it with "
                                           "attn_implementation='eager'")
                    for b, k in enumerate(chunk):
                        start = windows[k].start
                        served = np.flatnonzero(token_window == k)
                        local = served - start
                        # targets: served tokens with a previous token (all but the story's token 0)
                        has_prev = local >= 1
                        tgt_local = torch.as_tensor(local[has_prev], device=device)
                        tgt_ids = batch[b, tgt_local]
                        log_probs = torch.log_softmax(out.logits[b, tgt_local - 1].float(), dim=-1)
                        loss_sum -= float(log_probs.gather(1, tgt_ids[:, None]).sum())
                        n_targets += int(has_prev.sum())
                        if attention:
                            rows = torch.as_tensor(local, device=device)
                            ent = torch.stack([torch.special.entr(a[b][:, rows].float()).sum(-1).sum(-1)
                                               for a in out.attentions])  # (blocks, heads)
                            entropy_sum = ent.double().cpu().numpy() + (0 if entropy_sum is None else entropy_sum)
                            n_queries += len(local)
                        if hidden:
                            mine = np.flatnonzero(word_window == k)
                            if mine.size == 0:
                                continue
                            if states is None:
                                states = np.zeros((len(layer_index), text.n_words, out.hidden_states[0].shape[-1]),
                                                  dtype=np.float32)
                            pos = torch.as_tensor(last_token[mine] - start, device=device)
                            rows = torch.stack([out.hidden_states[layer][b, pos] for layer in layer_index])
                            states[:, word_offset + mine] = rows.float().cpu().numpy()
            word_offset += len(words)
    if n_targets == 0:
        raise ValueError(f"text {text.name!r} has no token to predict (every story is a single token)")
    entropy = entropy_sum / n_queries if attention else None
    return TextPass(loss_sum, n_targets, states, entropy)


@dataclass
class InductionPass:
    """Induction measures of one checkpoint."""

    scores: np.ndarray  # (n_blocks, n_heads) prefix-matching score
    loss_first: float
    loss_second: float

    @property
    def loss_gain(self) -> float:
        return self.loss_second - self.loss_first


def induction_tokens(model, tokenizer, n_sequences: int, length: int, seed: int = 0) -> np.ndarray:
    """Repeated random token sequences over the model's ordinary (non-special) token ids."""
    vocab_size = min(len(tokenizer), int(getattr(model.config, "vocab_size", len(tokenizer))))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocabulary = [i for i in range(vocab_size) if i not in special]
    return internal.repeated_random_tokens(n_sequences, length, vocabulary, seed)


def induction_pass(model, tokens: np.ndarray, batch_size: int = 16) -> InductionPass:
    """Prefix-matching scores per block and head, and the loss on each repeat.

    Parameters
    ----------
    model : causal LM
    tokens : int array (n_sequences, 2 * length)
        From :func:`induction_tokens` / :func:`triphase.internal.measures.repeated_random_tokens`.
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    use_eager_attention(model)
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] % 2:
        raise ValueError(f"tokens must be (n_sequences, 2 * length), got shape {tokens.shape}")
    length = tokens.shape[1] // 2
    device = next(model.parameters()).device
    n_blocks = _n_blocks(model)
    score_parts, loss_parts = [], []
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            chunk = tokens[start:start + batch_size]
            batch = torch.as_tensor(chunk, device=device)
            out = model(input_ids=batch, output_attentions=True)
            if out.attentions is None or len(out.attentions) != n_blocks:
                raise RuntimeError("the model returned no attention maps: load it with attn_implementation='eager'")
            scores = np.stack([internal.prefix_matching_score(a.float().cpu().numpy(), chunk)
                               for a in out.attentions])
            score_parts.append((scores, len(chunk)))
            log_probs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
            token_loss = -log_probs.gather(2, batch[:, 1:, None])[..., 0]
            loss_parts.append(token_loss.cpu().numpy())
    weights = np.array([n for _, n in score_parts], dtype=float)
    scores = sum(s * n for s, n in score_parts) / weights.sum()
    first, second = internal.repeat_losses(np.concatenate(loss_parts), length)
    return InductionPass(scores, first, second)


# --------------------------------------------------------------------------- one checkpoint
def subsample_words(text: TextSet, budget: int, seed: int) -> np.ndarray:
    """Indices of the words whose states enter TwoNN, PCA and CKA (the same at every checkpoint).

    Each story's first word is left out; at most ``budget`` words, seeded, sorted.
    """
    if budget < 3:
        raise ValueError(f"token_budget must be >= 3, got {budget}")
    eligible = np.flatnonzero(~text.first_word)
    if eligible.size <= budget:
        return eligible
    rng = np.random.default_rng([seed, SUBSAMPLE_STREAM])
    return np.sort(rng.choice(eligible, size=budget, replace=False))


def layer_measures(x_all: np.ndarray, x_sub: np.ndarray, labels: dict[str, np.ndarray], groups: np.ndarray,
                   probes: Sequence[str], probe_splits: int, seed: int,
                   probe_components: int | None = None, types: np.ndarray | None = None) -> dict[str, float]:
    """Every per-layer representation measure of one layer's word states.

    ``x_all``: all analysis words but each story's first (anisotropy, norm,
    probes); ``x_sub``: the subsample (TwoNN, participation ratio, components).
    ``probe_components``: probes see the top principal components of
    ``x_all`` when the states are wider than that (None: all dimensions).
    ``types``: word type of each row of ``x_all`` for the control task
    (:func:`triphase.internal.measures.control_task_labels`); None: no probes.

    Each probe comes with its control task (``<probe>_control``: one random
    label per word type, seeded, the same at every checkpoint and layer) and
    ``<probe>_selectivity`` = score - control. The control replaces the earlier
    shuffled-label control: shuffling across words only showed that the
    probe does not fit noise (it sits at chance whatever the states hold),
    while in the story world word identity alone determines part of speech,
    so a representation that merely tells word types apart scores high; only
    a per-type control exposes that (see
    :func:`triphase.internal.measures.probe_selectivity_random_embedding`).
    """
    out = {
        "intrinsic_dimension": internal.twonn_dimension(x_sub),
        "participation_ratio": internal.participation_ratio(x_sub),
        "n_components_90": float(internal.n_components_for_variance(x_sub, internal.VARIANCE_SHARE)),
        "anisotropy": internal.anisotropy(x_all),
        "mean_norm": internal.mean_norm(x_all),
    }
    targets, scored = {}, []
    chosen = [name for name in probes if name in labels]
    if chosen and types is None:
        raise ValueError("types (the word type of each row) are needed for the probes' control task")
    for k, name in enumerate(chosen):
        kind = PROBES[name][0]
        score = f"probe_{name}_{'accuracy' if kind == 'classification' else 'r2'}"
        targets[score] = (kind, labels[name])
        control_seed = int(np.random.SeedSequence([seed, CONTROL_STREAM, k]).generate_state(1)[0])
        targets[f"{score}_control"] = (kind, internal.control_task_labels(labels[name], types, control_seed))
        scored.append(score)
        if kind == "classification":
            out[f"probe_{name}_chance"] = internal.chance_accuracy(labels[name])
    if targets:
        # wide models: probe the top principal components (unsupervised, labels unseen) to bound the cost
        x_probe = internal.principal_components(x_all, probe_components, seed) if probe_components else x_all
        out.update(internal.ridge_probes(x_probe, targets, groups, probe_splits))
        for score in scored:
            out[f"{score}_selectivity"] = out[score] - out[f"{score}_control"]
    return out


def _rows(ckpt, measures: dict, layer: int = NO_LAYER, head: int = NO_HEAD) -> list[dict]:
    return [{**ckpt.columns(), "layer": int(layer), "head": int(head), "measure": m, "value": float(v)}
            for m, v in measures.items()]


def checkpoint_measures(model, tokenizer, ckpt, text: TextSet, other: TextSet | None, settings: dict,
                        progress: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """All measures of one loaded checkpoint except CKA, and its subsampled word states.

    Returns
    -------
    rows : DataFrame (tidy, see :data:`TABLE_COLUMNS`)
    subsample : float16 array (n_layers, n_subsample, d)
    """
    context, layers = settings["context"], settings["layers"]
    main = text_pass(model, tokenizer, text, context, layers, settings["batch_size"], progress=progress)
    losses = {f"lm_loss_{text.name}": main.loss}
    if other is not None:
        losses[f"lm_loss_{other.name}"] = text_pass(model, tokenizer, other, context, None, settings["batch_size"],
                                                    hidden=False, attention=False).loss
    tokens = induction_tokens(model, tokenizer, settings["induction_sequences"], settings["induction_length"],
                              seed=int(np.random.SeedSequence([settings["seed"], INDUCTION_STREAM]).generate_state(1)[0]))
    induction = induction_pass(model, tokens, settings["batch_size"])
    rows = _rows(ckpt, {**losses, "icl_loss_first": induction.loss_first, "icl_loss_second": induction.loss_second,
                        "icl_loss_gain": induction.loss_gain})

    layer_index = _resolve_layers(layers, _n_blocks(model))
    keep = ~text.first_word
    subsample = np.asarray(settings["subsample"])
    groups = text.story_index[keep]
    labels = {name: values[keep] for name, values in text.labels.items()}
    types = text.types[keep]
    iterator = list(enumerate(layer_index))
    if progress:
        iterator = tqdm(iterator, desc="layer measures", leave=False)
    for i, layer in iterator:
        x = main.states[i]
        rows += _rows(ckpt, layer_measures(x[keep], x[subsample], labels, groups, settings["probes"],
                                           settings["probe_splits"], settings["seed"],
                                           settings["probe_components"], types), layer)
        if layer >= 1:  # block layer - 1 produced this hidden state; its attention is reported here
            block = layer - 1
            rows += _rows(ckpt, {"attention_entropy": main.entropy[block].mean(),
                                 "induction_score_max": induction.scores[block].max()}, layer)
            for head in range(main.entropy.shape[1]):
                rows += _rows(ckpt, {"attention_entropy": main.entropy[block, head],
                                     "induction_score": induction.scores[block, head]}, layer, head)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), main.states[:, subsample].astype(np.float16)


# --------------------------------------------------------------------------- cache
def _cache_paths(ckpt, settings: dict) -> tuple:
    key = stable_hash({"version": INTERNAL_RESULTS_VERSION, "checkpoint": ckpt.to_dict(),
                       "model_config": model_config_hash(ckpt),
                       **{k: v for k, v in settings.items() if k != "subsample"},
                       "subsample": stable_hash(np.asarray(settings["subsample"]).tolist())})
    folder = cache_dir("internal") / ckpt.series / ckpt.name
    return folder / f"measures-{key}.parquet", folder / f"states-{key}.npy"


def cached_checkpoint(ckpt, text: TextSet, other: TextSet | None, settings: dict, device="auto", dtype=None,
                      progress: bool = False) -> tuple[pd.DataFrame, object]:
    """Rows and the path of the subsampled states of one checkpoint, from the cache or computed.

    The model is loaded (eager attention) only on a cache miss and released after.
    """

    rows_path, states_path = _cache_paths(ckpt, settings)
    if rows_path.exists() and states_path.exists():
        return pd.read_parquet(rows_path), states_path
    model, tokenizer = load_checkpoint(ckpt, device=device, dtype=dtype, attn_implementation="eager")
    try:
        remember_identity(ckpt, model)
        rows, states = checkpoint_measures(model, tokenizer, ckpt, text, other, settings, progress=progress)
    finally:
        release(model)
    with atomic_path(states_path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, states)
    write_parquet(rows, rows_path)
    return rows, states_path


def cka_rows(checkpoints, states_paths: dict, final, layer_index: Sequence[int]) -> list[dict]:
    """CKA of each chosen checkpoint to the reference and to the previous chosen one, per layer.

    ``final`` is the reference of ``cka_final``: the series' final checkpoint,
    or the last available one when that is missing (:func:`cka_reference`).
    Holds at most three subsamples: the reference's, the previous and the current.
    """
    final_states = np.load(states_paths[final.name]).astype(np.float64)
    rows, previous = [], None
    for ckpt in checkpoints:
        current = np.load(states_paths[ckpt.name]).astype(np.float64)
        if current.shape != final_states.shape:
            raise ValueError(f"subsampled states of {ckpt.name} have shape {current.shape}, the CKA reference "
                             f"{final.name}'s {final_states.shape}: checkpoints of one series must share hidden "
                             "size and text")
        for i, layer in enumerate(layer_index):
            values = {"cka_final": internal.linear_cka(current[i], final_states[i])}
            if previous is not None:
                values["cka_previous"] = internal.linear_cka(current[i], previous[i])
            rows += _rows(ckpt, values, layer)
        previous = current
    return rows


def cka_reference(todo, final, log: SweepLog):
    """The reference of ``cka_final``: the final checkpoint, else the last one of ``todo`` that was not skipped.

    A missing final checkpoint is reported (a :class:`~triphase.models.integrity.MissingCheckpointWarning`
    naming both) and the sweep goes on with the last available checkpoint.
    """
    if final.name not in log.skipped:
        return final
    available = [c for c in todo if c.name not in log.skipped]
    if not available:
        raise FileNotFoundError(f"{log.what}: every checkpoint is missing: "
                                + "; ".join(f"{k}: {v}" for k, v in log.skipped.items()))
    reference = max(available, key=lambda c: c.step)
    warnings.warn(f"{log.what}: the final checkpoint {final.name} is missing; cka_final compares with "
                  f"{reference.name}, the last available checkpoint", MissingCheckpointWarning, stacklevel=3)
    return reference


def flag_cka_reference(flags: pd.DataFrame, reference, final) -> pd.DataFrame:
    """``flags`` with the stand-in CKA reference flagged by name (its row's ``flag``, hence ``integrity_flag``).

    Examples
    --------
    >>> flags = pd.DataFrame({"checkpoint": ["step0", "step8"], "flag": ["", ""]})
    >>> ref = SimpleNamespace(name="step8")
    >>> note = flag_cka_reference(flags, ref, SimpleNamespace(name="step16"))["flag"].tolist()[1]
    >>> print(note)  # doctest: +NORMALIZE_WHITESPACE
    cka_final reference: the final checkpoint step16 is missing, so cka_final compares with step8
    (the last available checkpoint)
    """
    flags = flags.copy()
    note = (f"cka_final reference: the final checkpoint {final.name} is missing, so cka_final compares with "
            f"{reference.name} (the last available checkpoint)")
    row = flags["checkpoint"] == reference.name
    flags.loc[row, "flag"] = [f"{old}; {note}" if old else note for old in flags.loc[row, "flag"]]
    return flags


def _first_config(auto_config, candidates):
    """The model config of the first candidate checkpoint that is available (a missing branch is passed over)."""
    errors = []
    for ckpt in candidates:
        try:
            ensure_available(ckpt)
            return auto_config.from_pretrained(ckpt.source, **hub_load_kwargs(ckpt))
        except Exception as exc:  # noqa: BLE001 - only a missing branch is passed over, anything else re-raised
            if missing_reason(exc, ckpt) is None:
                raise
            errors.append(exc)
    raise errors[0]  # every checkpoint is missing: the final checkpoint's error names it and how to fetch it


# --------------------------------------------------------------------------- pipeline
def internal_states(
    series="organism",
    checkpoints="all",
    dataset="simulated",
    subject: str = "sim01",
    layers: Sequence[int] | None = None,
    text_source: str = "heldout",
    n_stories: int = DEFAULT_N_STORIES,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    probes: Sequence[str] = DEFAULT_PROBES,
    probe_splits: int = internal.PROBE_SPLITS,
    probe_components: int | None = DEFAULT_PROBE_COMPONENTS,
    induction_length: int = DEFAULT_INDUCTION_LENGTH,
    induction_sequences: int = DEFAULT_INDUCTION_SEQUENCES,
    context: int | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype=None,
    batch_size: int = 8,
    dataset_options: dict | None = None,
    language: str = "en",
    write: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Internal-state measures of every chosen checkpoint x layer, written to ``internal.parquet``.

    Parameters
    ----------
    series : str or CheckpointSeries
    checkpoints : "all", int or list
        See :func:`triphase.models.checkpoints.select_checkpoints`. CKA to the final
        checkpoint always uses the series' last checkpoint (computed even when
        not chosen); "previous" is the previous *chosen* checkpoint. When the
        final checkpoint's branch is missing, the last available chosen
        checkpoint is the reference instead: a ``MissingCheckpointWarning``
        says so, and that checkpoint's ``integrity_flag`` (table) and ``flag``
        (``internal_integrity.parquet``) name it as the ``cka_final`` reference.
    dataset : str, Dataset or None
        Names the results folder; its stories give ``lm_loss_stimulus`` (and
        the analysis text when ``text_source="stimulus"``). None: no stimulus
        loss, results under ``dataset="none"``.
    subject : str
    layers : list of int or None
        Hidden-state indices (0 = embeddings); None = all.
    text_source : {"heldout", "stimulus"}
        Text of the representation, attention and probe measures (module docstring).
    n_stories : int
        Held-out story-world stories (groups of the probes' cross-validation).
    token_budget : int
        Words subsampled (seeded, same at every checkpoint) for TwoNN, PCA and CKA.
    probes : sequence of {"pos", "depth", "frequency", "position", "location", "tension"}
        Probes to fit (gold grammar labels exist only for the held-out story-world text).
    probe_splits : int
        Cross-validation folds; stories are held out together.
    probe_components : int or None
        Probes use the top principal components of the word states when the
        model is wider than this (cost control for 7B-class models; the
        organism's 128 dimensions are used in full). None: all dimensions.
    induction_length, induction_sequences : int
        Length of one repeat and number of repeated random sequences.
    context : int or None
        Window length in tokens (None: min(256, the model's max positions)).
    seed : int
        Stories, subsample, random sequences and label shuffles.
    device, dtype
        Passed to :func:`triphase.models.loading.load_checkpoint`.
    batch_size : int
        Windows (or sequences) per forward pass.
    dataset_options : dict, optional
        Passed to :func:`triphase.datasets.get_dataset` when ``dataset`` is a name.
    language : str
        wordfreq language of the frequency probe.
    write : bool
        Write ``internal.parquet`` (atomically) to the results folder.
    progress : bool

    Returns
    -------
    DataFrame
        Columns :data:`TABLE_COLUMNS`; one row per checkpoint x layer x measure
        (x head for per-head measures), ``layer = -1`` for checkpoint-level
        measures, ``head = -1`` for measures that are not per head.
        ``attrs["seconds"]`` holds the wall time.
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers import AutoConfig

    started = time.perf_counter()
    series_obj = series if isinstance(series, CheckpointSeries) else get_series(series)
    chosen = select_checkpoints(series_obj.checkpoints, checkpoints)
    final = series_obj.final
    if text_source not in ("heldout", "stimulus"):
        raise ValueError(f"text_source must be 'heldout' or 'stimulus', got {text_source!r}")
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probes {unknown}; available: {', '.join(PROBES)}")

    data = None
    if dataset is not None:
        if isinstance(dataset, str):
            data = get_dataset(dataset, **dict(dataset_options or {}))
        else:
            data = dataset
        data.check_subject(subject)
    heldout = heldout_text(n_stories, seed, language)
    stimulus = stimulus_text(data, subject, language) if data is not None else None
    if text_source == "heldout":
        text, other = heldout, stimulus
    else:
        if stimulus is None:
            raise ValueError("text_source='stimulus' needs a dataset")
        text, other = stimulus, heldout
    missing = [p for p in probes if p not in text.labels]
    if missing and progress:
        print(f"probes {missing} need gold labels the {text.name!r} text does not have; skipped")



    todo = list(chosen) + ([final] if final.name not in {c.name for c in chosen} else [])
    config = _first_config(AutoConfig, todo[::-1])  # the final checkpoint's, else the last available one's
    layer_index = _resolve_layers(layers, int(config.num_hidden_layers))
    max_positions = getattr(config, "max_position_embeddings", None)
    context = resolve_context(SimpleNamespace(config=config), context)
    if max_positions and 2 * induction_length > max_positions:
        raise ValueError(f"induction_length={induction_length}: two repeats exceed the model's "
                         f"max_position_embeddings={max_positions}; use <= {max_positions // 2}")
    settings = {
        "text": text.fingerprint(), "other": other.fingerprint() if other is not None else None,
        "context": int(context), "layers": layer_index, "batch_size": int(batch_size),
        "token_budget": int(token_budget), "subsample": subsample_words(text, token_budget, seed),
        "probes": [p for p in probes if p in text.labels], "probe_splits": int(probe_splits),
        "probe_components": None if probe_components is None else int(probe_components),
        "induction_length": int(induction_length), "induction_sequences": int(induction_sequences),
        "seed": int(seed), "dtype": str(dtype),
    }
    if len(settings["subsample"]) < 3:
        raise ValueError(f"the {text.name!r} text has only {len(settings['subsample'])} words for TwoNN/CKA")

    todo_iter = tqdm(todo, desc=f"internal states {series_obj.name}", unit="checkpoint", disable=not progress)
    frames, states_paths = [], {}
    chosen_names = {c.name for c in chosen}
    log = SweepLog("internal states")
    for ckpt in todo_iter:
        todo_iter.set_postfix_str(ckpt.name)
        with log.skip_if_missing(ckpt):  # a missing final checkpoint: the last available one is CKA's reference
            rows, path = cached_checkpoint(ckpt, text, other, settings, device, dtype)
            states_paths[ckpt.name] = path
            if ckpt.name in chosen_names:
                frames.append(rows)
    log.check_any_done(chosen)
    loaded = [c for c in chosen if c.name not in log.skipped]
    reference = cka_reference(todo, final, log)
    frames.append(pd.DataFrame(cka_rows(loaded, states_paths, reference, layer_index), columns=TABLE_COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["step", "measure", "layer", "head"], kind="stable").reset_index(drop=True)
    for column in ("step", "tokens_seen", "layer", "head"):
        table[column] = table[column].astype(np.int64)
    flags = checkpoint_flags(chosen, log, device=device, dtype=dtype)
    if reference.name != final.name:
        flags = flag_cka_reference(flags, reference, final)
    table = attach_identity(table, flags)
    if write:
        dataset_name = data.name if data is not None else "none"
        out = results_dir(series_obj.name, dataset_name, subject)
        write_flags(flags, out, "internal")
        write_parquet(table, out / INTERNAL_TABLE)
    table.attrs["seconds"] = time.perf_counter() - started
    return table


def load_internal(series: str, dataset: str = "simulated", subject: str = "sim01") -> pd.DataFrame:
    """Read ``internal.parquet`` of a run (written by :func:`internal_states`)."""
    path = results_dir(series, dataset, subject, create=False) / INTERNAL_TABLE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run internal_states({series!r}, dataset={dataset!r}, "
                                f"subject={subject!r}) first")
    return pd.read_parquet(path)
