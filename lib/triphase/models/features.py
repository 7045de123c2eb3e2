"""Word-level language-model features: every layer's hidden state at each word.

For each word of a story the feature of layer ``l`` is the hidden state of
layer ``l`` (``0`` = the embedding output, as in ``output_hidden_states=True``)
at the word's **last** token, computed with up to ``C`` tokens of left context.
A story longer than ``C`` tokens is cut into overlapping windows of ``C`` tokens
with stride ``S = C // 2``:

* window ``k`` covers tokens ``[k S, k S + C)``;
* token ``t`` is read from window ``0`` when ``t < C``, else from window
  ``k = floor(t / S) - 1``, in which it sits at position ``t - k S`` in
  ``[S, C)``: every token (and so every word) has at least ``S = C / 2`` tokens
  of left context, except those in the first ``C / 2`` tokens of the story.

Each window ends at its last assigned token, so the tokens processed are at
most ``C + 2 S (n_windows - 1)``, about twice the story's tokens. One forward
pass per window serves every layer; windows of equal length are batched, and
everything runs under :func:`torch.inference_mode`.

Speed: only the backbone runs (``model.base_model`` with
``output_hidden_states=True`` and no key/value cache), so the LM head and its
``batch x C x vocabulary`` logits are never computed; each layer's hidden states
are indexed at the batch's word positions before the layers are stacked, and
the result crosses from the device to the CPU once per batch.

Document start (:func:`document_start_ids`): every window begins with the
token(s) the model saw at the start of a document in training, followed by up
to ``C - n_start`` story tokens. The first position of a sequence draws a large
share of attention in a trained transformer (the "attention sink"); without a
start token that role falls on whatever story token opens the window. The
convention is the model's own:

* ``"tokenizer"`` (default of :func:`word_hidden_states`): the special tokens
  the tokenizer itself puts before a text (``add_special_tokens=True``): BOS for
  Llama-architecture models (Amber, LLM-jp), nothing for GPT-NeoX Pythia, whose
  training data carry no document separator;
* ``"eos"``: the end-of-text token, for the organism, which is trained on
  documents each followed by ``<|endoftext|>`` (:mod:`triphase.models.organism`),
  so a document starts right after it (:func:`checkpoint_document_start` picks
  it for embedded-tier checkpoints);
* ``"bos"`` (the tokenizer's ``bos_token``) or ``"none"``.

Tokens are mapped to words through character offsets
(``return_offsets_mapping``) of the text ``join.join(words)``; ``join=""``
supports scripts written without spaces (Japanese), where one token may span two
words (it then serves as the last token of the first one).

Examples
--------
>>> import torch
>>> from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> from transformers import PreTrainedTokenizerFast
>>> tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
>>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
>>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
>>> _ = torch.manual_seed(0)
>>> model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=3, hidden_size=8, num_hidden_layers=2,
...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)).eval()
>>> word_hidden_states(model, tokenizer, ["a", "b", "a"], context=4).shape
(3, 3, 8)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from triphase._home import cache_dir
from triphase._io import atomic_path, stable_hash
from triphase._progress import tqdm
from triphase.models.hub import ensure_available, hub_load_kwargs

#: Default left context in tokens (Huth-lab style feature extraction uses a few
#: hundred tokens; capped by the model's maximum position embeddings).
DEFAULT_CONTEXT = 256
#: Windows per forward pass.
DEFAULT_BATCH_SIZE = 8
#: Version of the feature cache layout; bump when the extraction changes.
#: 2: windows begin with the model's document-start token(s).
FEATURE_CACHE_VERSION = 2
#: Document-start conventions (see the module docstring).
DOCUMENT_START_CONVENTIONS = ("tokenizer", "eos", "bos", "none")
#: Convention of the cached features of a hub (real-tier) checkpoint, and of the organism (embedded tier).
HUB_DOCUMENT_START, ORGANISM_DOCUMENT_START = "tokenizer", "eos"
#: Text whose tokenisation with and without special tokens reveals what a tokenizer adds before a text.
SPECIAL_TOKEN_PROBE = "a"


# --------------------------------------------------------------------------- word <-> token
def word_char_spans(words: Sequence[str], join: str = " ") -> tuple[str, np.ndarray]:
    """The text ``join.join(words)`` and each word's (start, end) character span.

    Examples
    --------
    >>> word_char_spans(["ab", "c"])
    ('ab c', array([[0, 2],
           [3, 4]]))
    """
    words = [str(w) for w in words]
    spans = np.zeros((len(words), 2), dtype=np.int64)
    position = 0
    for i, word in enumerate(words):
        if i:
            position += len(join)
        spans[i] = (position, position + len(word))
        position += len(word)
    return join.join(words), spans


def last_token_of_words(offsets: np.ndarray, spans: np.ndarray, words: Sequence[str] | None = None) -> np.ndarray:
    """Index of the last token overlapping each word's character span.

    Parameters
    ----------
    offsets : int array (n_tokens, 2)
        Character (start, end) of every token (``return_offsets_mapping``);
        empty spans (special tokens) are ignored.
    spans : int array (n_words, 2)
        Character (start, end) of every word (:func:`word_char_spans`).
    words : sequence of str, optional
        Only used in error messages.

    Returns
    -------
    int array (n_words,)

    Examples
    --------
    >>> last_token_of_words(np.array([[0, 1], [1, 2], [3, 4]]), np.array([[0, 2], [3, 4]]))
    array([1, 2])
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    real = np.flatnonzero(offsets[:, 1] > offsets[:, 0])
    tok_start, tok_end = offsets[real, 0], offsets[real, 1]
    # Tokens are in text order, so their ends are non-decreasing: the last token
    # overlapping [s, e) is the last one that starts before e, provided it ends after s.
    candidate = np.searchsorted(tok_start, spans[:, 1], side="left") - 1
    ok = (candidate >= 0) & (spans[:, 1] > spans[:, 0])
    ok[ok] &= tok_end[candidate[ok]] > spans[ok, 0]
    if not ok.all():
        bad = np.flatnonzero(~ok)
        shown = [repr(words[i]) if words is not None else str(i) for i in bad[:5]]
        raise ValueError(
            f"{len(bad)} word(s) have no token (empty word or not covered by the tokenizer's offsets), "
            f"first: {', '.join(shown)} at word index {bad[0]}"
        )
    return real[candidate]


# --------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    """One context window: tokens ``[start, stop)`` of the story."""

    start: int
    stop: int


def plan_windows(n_tokens: int, context: int) -> tuple[list[Window], np.ndarray]:
    """Overlapping windows (stride ``context // 2``) and the window each token is read from.

    Returns
    -------
    windows : list of Window
    token_window : int array (n_tokens,)
        Index into ``windows`` of the window that serves each token.

    Examples
    --------
    >>> windows, which = plan_windows(10, 4)
    >>> [(w.start, w.stop) for w in windows]
    [(0, 4), (2, 6), (4, 8), (6, 10)]
    >>> which.tolist()
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    """
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    if n_tokens < 1:
        raise ValueError("a story with no tokens has no features")
    stride = context // 2
    token = np.arange(n_tokens)
    token_window = np.where(token < context, 0, token // stride - 1)
    n_windows = int(token_window[-1]) + 1
    windows = []
    for k in range(n_windows):
        start = k * stride
        stop = min(start + context, n_tokens)
        windows.append(Window(start, stop))
    return windows, token_window


def _model_max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_context(model, context: int | None) -> int:
    """``context`` checked against the model's maximum positions (``None``: min(default, max))."""
    max_positions = _model_max_positions(model)
    if context is None:
        return min(DEFAULT_CONTEXT, max_positions) if max_positions else DEFAULT_CONTEXT
    context = int(context)
    if max_positions and context > max_positions:
        raise ValueError(
            f"context={context} tokens exceeds the model's max_position_embeddings={max_positions}; "
            f"use context <= {max_positions}"
        )
    return context


# --------------------------------------------------------------------------- extraction
def tokenize_words(tokenizer, words: Sequence[str], join: str = " ") -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``join.join(words)`` and each word's last-token index.

    Returns
    -------
    ids : int array (n_tokens,)
    last_token : int array (n_words,)
    """
    words = list(words)
    if not words:
        raise ValueError("no words given: a story needs at least one word to have features")
    text, spans = word_char_spans(words, join)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if ids.shape[0] != offsets.shape[0]:
        raise ValueError(f"tokenizer returned {ids.shape[0]} ids but {offsets.shape[0]} offsets")
    return ids, last_token_of_words(offsets, spans, words)


def document_start_ids(tokenizer, convention: str = "tokenizer") -> list[int]:
    """Token ids the model saw at the start of a document in training (see the module docstring).

    Parameters
    ----------
    tokenizer : transformers tokenizer
    convention : {"tokenizer", "eos", "bos", "none"}
        ``"tokenizer"``: the special tokens the tokenizer adds before a text with
        ``add_special_tokens=True`` (empty when it adds none).

    Returns
    -------
    list of int

    Examples
    --------
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<eos>": 0, "a": 1}, unk_token="<eos>")),
    ...                               eos_token="<eos>")
    >>> document_start_ids(tok), document_start_ids(tok, "eos")
    ([], [0])
    """
    if convention not in DOCUMENT_START_CONVENTIONS:
        raise ValueError(f"document_start={convention!r}; expected one of {DOCUMENT_START_CONVENTIONS}")
    if convention == "none":
        return []
    if convention in ("eos", "bos"):
        token_id = getattr(tokenizer, f"{convention}_token_id", None)
        if token_id is None:
            raise ValueError(f"document_start={convention!r} but the tokenizer has no {convention}_token")
        return [int(token_id)]
    with_special = list(tokenizer(SPECIAL_TOKEN_PROBE, add_special_tokens=True)["input_ids"])
    without = list(tokenizer(SPECIAL_TOKEN_PROBE, add_special_tokens=False)["input_ids"])
    # What precedes the text's own tokens (a tokenizer may also append an end token: not a start).
    for offset in range(len(with_special) - len(without) + 1):
        if with_special[offset:offset + len(without)] == without:
            return [int(i) for i in with_special[:offset]]
    raise ValueError("the tokenizer's special-token template does not contain the text's own tokens; "
                     "pass document_start='bos', 'eos' or 'none' explicitly")


def checkpoint_document_start(checkpoint) -> str:
    """The document-start convention of a checkpoint: ``"eos"`` for the organism (embedded tier), else ``"tokenizer"``."""
    return ORGANISM_DOCUMENT_START if getattr(checkpoint, "tier", None) == "embedded" else HUB_DOCUMENT_START


def backbone(model):
    """The model without its LM head (``model.base_model``; the model itself when it is already a base model)."""
    return getattr(model, "base_model", model)


def word_hidden_states(
    model,
    tokenizer,
    words: Sequence[str],
    context: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    layers: Sequence[int] | None = None,
    join: str = " ",
    progress: bool = False,
    document_start: str = "tokenizer",
) -> np.ndarray:
    """Hidden states of every layer at each word's last token, with windowed left context.

    Parameters
    ----------
    model : transformers causal LM (eval mode)
    tokenizer : fast tokenizer (must return offsets)
    words : sequence of str
    context : int or None
        Maximum tokens per window ``C``, document-start tokens included (story
        tokens per window ``C - n_start``, stride half of that); None =
        min(:data:`DEFAULT_CONTEXT`, the model's max positions).
    batch_size : int
        Windows per forward pass.
    layers : sequence of int or None
        Indices into ``hidden_states`` (0 = embeddings, ``n_layers`` = last
        block); None = all ``n_layers + 1``.
    join : str
        Separator between words in the text given to the tokenizer
        (``""`` for text without spaces).
    progress : bool
        Show a progress bar over batches.
    document_start : {"tokenizer", "eos", "bos", "none"}
        Token(s) each window begins with (:func:`document_start_ids`).

    Returns
    -------
    array (n_selected_layers, n_words, hidden_size), float32
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    context = resolve_context(model, context)
    start_ids = document_start_ids(tokenizer, document_start)
    n_start = len(start_ids)
    story_context = context - n_start
    if story_context < 2:
        raise ValueError(f"context={context} leaves {story_context} story tokens per window after "
                         f"{n_start} document-start token(s); use context >= {n_start + 2}")
    ids, last_token = tokenize_words(tokenizer, words, join)
    windows, token_window = plan_windows(len(ids), story_context)
    word_window = token_window[last_token]
    # Position of each word's last token in its window, after the document-start tokens.
    word_position = last_token - np.array([windows[k].start for k in word_window]) + n_start
    # Words grouped by window (one sort instead of a scan of all words per window).
    word_order = np.argsort(word_window, kind="stable")
    bounds = np.searchsorted(word_window[word_order], np.arange(len(windows) + 1))

    net = backbone(model)
    device = next(model.parameters()).device
    out = None
    layer_index = None
    # Windows with the same length share a batch (only the last one can be shorter), so no padding is needed.
    by_length: dict[int, list[int]] = {}
    for k, w in enumerate(windows):
        if bounds[k + 1] > bounds[k]:
            by_length.setdefault(w.stop - w.start, []).append(k)
    batches = [ks[i:i + batch_size] for ks in by_length.values() for i in range(0, len(ks), batch_size)]
    if progress:
        batches = tqdm(batches, desc="feature windows", leave=False)
    start_row = np.asarray(start_ids, dtype=np.int64)
    with torch.inference_mode():
        for ks in batches:
            batch_ids = np.stack([np.concatenate([start_row, ids[windows[k].start:windows[k].stop]]) for k in ks])
            words_here = np.concatenate([word_order[bounds[k]:bounds[k + 1]] for k in ks])
            rows_here = np.concatenate([np.full(bounds[k + 1] - bounds[k], b) for b, k in enumerate(ks)])
            hidden = net(input_ids=torch.as_tensor(batch_ids, device=device), output_hidden_states=True,
                         use_cache=False).hidden_states
            if out is None:
                n_states = len(hidden)
                layer_index = list(range(n_states)) if layers is None else [int(i) for i in layers]
                bad = [i for i in layer_index if not -n_states <= i < n_states]
                if bad:
                    raise ValueError(f"layers {bad} out of range: the model has {n_states} hidden states (0..{n_states - 1})")
                out = np.zeros((len(layer_index), len(last_token), hidden[0].shape[-1]), dtype=np.float32)
            batch_rows = torch.as_tensor(rows_here, device=device)
            positions = torch.as_tensor(word_position[words_here], device=device)
            # Index the word positions first, then stack: (layers, words in batch, hidden), one copy to the CPU.
            picked = torch.stack([hidden[i][batch_rows, positions] for i in layer_index])
            out[:, words_here] = picked.float().cpu().numpy()
    return out


def tokens_processed(n_tokens: int, context: int, n_start: int = 0) -> int:
    """Tokens the windowed extraction runs through the model (for the overhead ratio).

    ``n_start`` document-start tokens open every window of ``context`` tokens
    (see :func:`word_hidden_states`).

    Examples
    --------
    >>> tokens_processed(10, 4), tokens_processed(10, 5, n_start=1)
    (16, 20)
    """
    windows, _ = plan_windows(n_tokens, context - n_start)
    return int(sum(w.stop - w.start + n_start for w in windows))


# --------------------------------------------------------------------------- cache
def model_config_hash(checkpoint) -> str:
    """Hash of a checkpoint's model configuration, read without loading weights."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers import AutoConfig


    ensure_available(checkpoint)  # offline and not cached: CheckpointMissingError naming the fetch command
    config = AutoConfig.from_pretrained(checkpoint.source, **hub_load_kwargs(checkpoint)).to_dict()
    # Fields that describe the saving software, not the model.
    for volatile in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    return stable_hash(config)


def feature_cache_path(checkpoint, dataset_name: str, story: str, words: Sequence[str], context: int,
                       join: str = " ", config_hash: str | None = None, document_start: str | None = None) -> Path:
    """Cache file of one story's features at one checkpoint (all layers, float32 .npy).

    ``document_start`` None = :func:`checkpoint_document_start` (part of the key).
    """
    key = {
        "version": FEATURE_CACHE_VERSION,
        "document_start": document_start or checkpoint_document_start(checkpoint),
        "series": checkpoint.series,
        "checkpoint": checkpoint.name,
        "source": str(checkpoint.source),
        "revision": checkpoint.revision,
        "dataset": dataset_name,
        "story": story,
        "context": int(context),
        "join": join,
        "words": stable_hash(list(map(str, words)), length=16),
        "model_config": config_hash or model_config_hash(checkpoint),
    }
    safe_story = "".join(c if c.isalnum() or c in "-_." else "_" for c in story)
    return (cache_dir("features") / checkpoint.series / checkpoint.name / dataset_name
            / f"{safe_story}-c{int(context)}-{stable_hash(key)}.npy")


def cached_story_features(
    checkpoint,
    dataset_name: str,
    story: str,
    words: Sequence[str],
    context: int,
    model_loader: Callable[[], tuple[object, object]],
    join: str = " ",
    batch_size: int = DEFAULT_BATCH_SIZE,
    config_hash: str | None = None,
    document_start: str | None = None,
) -> np.ndarray:
    """Word features of one story at one checkpoint, from the cache or computed and cached.

    Parameters
    ----------
    checkpoint : triphase.models.checkpoints.Checkpoint
    dataset_name, story : str
        Part of the cache key.
    words : sequence of str
    context : int
        Window length in tokens (must be explicit: it is part of the key).
    model_loader : callable () -> (model, tokenizer)
        Called only on a cache miss (so a full cache hit never loads weights);
        may return the same objects every call.
    join : str
    batch_size : int
    config_hash : str, optional
        Precomputed :func:`model_config_hash`.
    document_start : str, optional
        Document-start convention (:func:`document_start_ids`); None = the
        checkpoint's own (:func:`checkpoint_document_start`).

    Returns
    -------
    array (n_layers + 1, n_words, hidden_size), float32

    Notes
    -----
    The key holds the cache version, the document-start convention, the series,
    checkpoint name, source and revision, dataset, story, context, separator, a
    hash of the words and of the model configuration; the file is written
    atomically.
    """
    document_start = document_start or checkpoint_document_start(checkpoint)
    path = feature_cache_path(checkpoint, dataset_name, story, words, context, join, config_hash, document_start)
    if path.exists():
        features = np.load(path)
        if features.shape[1] != len(words):
            raise ValueError(f"cached features {path} have {features.shape[1]} words, expected {len(words)}")
        return features
    model, tokenizer = model_loader()
    features = word_hidden_states(model, tokenizer, words, context=context, batch_size=batch_size, join=join,
                                  document_start=document_start)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, features)
    meta = path.with_suffix(".json")
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({"story": story, "checkpoint": checkpoint.name, "context": int(context),
                                   "document_start": document_start, "shape": list(features.shape)}))
    return features
