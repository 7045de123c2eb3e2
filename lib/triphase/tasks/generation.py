"""Model calls for downstream tasks: greedy decoding and option log-likelihoods.

Two ways of asking a causal language model a task question:

- :func:`greedy_generate` decodes greedily (batched, left padding) until a stop
  string, an end-of-sequence token or ``max_new_tokens``; the answer is the
  text before the first stop string, stripped (:func:`cut_at_stop`).
- :func:`option_loglikelihoods` scores each option as the continuation
  ``" " + option`` of the prompt: the sum of its tokens' log-probabilities. The
  tokenisation and left truncation follow lm-evaluation-harness's Hugging Face
  model exactly (trailing context spaces move to the continuation; the pair is
  encoded whole and split at the context's token count; inputs longer than the
  model's context keep their last tokens), so both give the same choices.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np

from triphase._progress import tqdm

#: lm-evaluation-harness's separator between a prompt and a scored option.
TARGET_DELIMITER = " "
#: Context length assumed when neither the model config nor the tokenizer states one
#: (lm-evaluation-harness's default as well).
DEFAULT_MAX_LENGTH = 2048
#: Config attributes that carry a context length, in the order lm-evaluation-harness reads them.
_SEQLEN_CONFIG_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
#: Tokenizers report "no limit" with a huge number.
_TOKENIZER_NO_LIMIT = 10**12


def cut_at_stop(text: str, stop: Sequence[str] = ("\n",)) -> str:
    """The answer in a generation: text before the first stop string, stripped.

    Parameters
    ----------
    text : str
        Generated continuation.
    stop : sequence of str
        Stop strings; the earliest occurrence of any of them ends the answer.

    Examples
    --------
    >>> cut_at_stop(" yes\\nQuestion: ...", stop=("\\n",))
    'yes'
    >>> cut_at_stop(" B. because", stop=(".", "\\n"))
    'B'
    """
    if isinstance(stop, str):
        stop = (stop,)
    end = len(text)
    for s in stop:
        if not s:
            raise ValueError("stop strings must be non-empty")
        pos = text.find(s)
        if pos != -1:
            end = min(end, pos)
    return text[:end].strip()


def model_max_length(model, tokenizer=None) -> int:
    """Context length of a model, read as lm-evaluation-harness reads it.

    ``n_positions``, ``max_position_embeddings`` or ``n_ctx`` of the config
    (a nested ``text_config`` first), else the tokenizer's ``model_max_length``,
    else :data:`DEFAULT_MAX_LENGTH`.
    """
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        if cfg is None:
            continue
        for attr in _SEQLEN_CONFIG_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _TOKENIZER_NO_LIMIT:
        return limit
    return DEFAULT_MAX_LENGTH


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16,
                    stop: Sequence[str] = ("\n",), batch_size: int = 16, progress: bool = False,
                    return_raw: bool = False):
    """Greedy continuations of prompts, batched with left padding, cut at stop strings.

    Prompts longer than the model's context keep their last
    ``max_length - max_new_tokens`` tokens (left truncation, as lm-evaluation-harness).
    Decoding of a sequence ends at the first stop string (checked on the decoded
    text), at the end-of-sequence token, or after ``max_new_tokens``.

    Parameters
    ----------
    model : transformers causal LM, in eval mode
    tokenizer : matching tokenizer
    prompts : sequence of str
    max_new_tokens : int
        At most this many new tokens per prompt.
    stop : sequence of str
        Stop strings. The returned answers are cut before the first one.
    batch_size : int
        Prompts per forward pass.
    progress : bool
        Show a tqdm bar over batches.
    return_raw : bool
        Also return the raw decoded continuations (before cutting) and the number of
        new tokens decoded per prompt.

    Returns
    -------
    answers : list of str
        One per prompt: the continuation before the first stop string, stripped.
    raw : list of str, only with ``return_raw``
    n_new_tokens : list of int, only with ``return_raw``

    Examples
    --------
    >>> answers = greedy_generate(model, tokenizer, ["Is the cat black? Answer:"])  # doctest: +SKIP
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    prompts = list(prompts)
    pad_id = _pad_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    keep = max(1, model_max_length(model, tokenizer) - max_new_tokens)
    device = next(model.parameters()).device
    raw: list[str] = [""] * len(prompts)
    n_new: list[int] = [0] * len(prompts)
    # longest prompts first: batches hold similar lengths, so little padding
    lengths = []
    encoded = []
    for p, ids in zip(prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"]):
        ids = ids[-keep:]
        if not ids:
            raise ValueError(f"prompt {p!r} encodes to no tokens")
        encoded.append(ids)
        lengths.append(len(ids))
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="greedy decoding", disable=not progress, leave=False):
        width = max(lengths[i] for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - lengths[i]:] = torch.tensor(encoded[i])
            attention[row, width - lengths[i]:] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        texts, counts = _greedy_batch(model, tokenizer, input_ids, attention, max_new_tokens, stop, eos_id)
        for row, i in enumerate(batch):
            raw[i], n_new[i] = texts[row], counts[row]
    answers = [cut_at_stop(t, stop) for t in raw]
    if return_raw:
        return answers, raw, n_new
    return answers


def _cache_argument(model) -> str:
    """Name of the key-value cache argument: ``cache`` (transformers >= 5.x) or ``past_key_values``."""

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _logits_argument(model) -> str | None:
    """Name of the argument that limits the LM head to the last positions, or None where the model has none.

    ``logits_to_keep`` (transformers >= 4.50) or ``num_logits_to_keep`` (4.45-4.49). Scoring needs the
    logits of a few positions only; the full ``(batch, length, vocabulary)`` tensor costs an LM head
    over every position and a copy that, for a real model's vocabulary, is larger than the model's
    hidden states.
    """
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None)


def _greedy_batch(model, tokenizer, input_ids, attention, max_new_tokens, stop, eos_id):
    """Greedy loop with a key-value cache; positions count real tokens only (left padding)."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    batch = input_ids.shape[0]
    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    past = None
    cache_arg = _cache_argument(model)
    # left padding: every row's next token is predicted at the last position
    keep_argument = _logits_argument(model)
    last_only = {keep_argument: 1} if keep_argument else {}
    step_ids = input_ids
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=attention, position_ids=position_ids,
                        use_cache=True, **{cache_arg: past}, **last_only)
            past = out[cache_arg] if cache_arg in out else out.past_key_values
            next_ids = out.logits[:, -1, :].argmax(-1)
            for row in range(batch):
                if done[row]:
                    continue
                token = int(next_ids[row])
                if eos_id is not None and token == eos_id:
                    done[row] = True
                    continue
                new_tokens[row].append(token)
                # decoding the whole continuation each step handles stop strings that span tokens
                text = tokenizer.decode(new_tokens[row], skip_special_tokens=True)
                if any(s in text for s in stop):
                    done[row] = True
            if all(done):
                break
            step_ids = next_ids.unsqueeze(-1)
            attention = torch.cat([attention, attention.new_ones((batch, 1))], dim=-1)
            position_ids = position_ids[:, -1:] + 1
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens]
    return texts, [len(t) for t in new_tokens]


def _split_spaces(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing spaces to the continuation (lm-evaluation-harness's rule)."""
    if not context:
        raise ValueError("the context of a log-likelihood request must be non-empty")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a (context, continuation) pair, split as lm-evaluation-harness splits them.

    Trailing spaces of the context move to the continuation; the concatenation is
    encoded whole and split after the context's own token count, so the tokens at
    the boundary are those the model would read in running text.

    Examples
    --------
    >>> ctx, cont = encode_pair(tokenizer, "Answer:", " yes")  # doctest: +SKIP
    """
    context, continuation = _split_spaces(context, continuation)
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


def option_loglikelihoods(model, tokenizer, contexts: Sequence[str], options: Sequence[Sequence[str]],
                          batch_size: int = 32, progress: bool = False) -> list[np.ndarray]:
    """Total log-likelihood of each option as the continuation ``" " + option``.

    Parameters
    ----------
    model, tokenizer : causal LM and its tokenizer
    contexts : sequence of str
        One prompt per item.
    options : sequence of sequences of str
        The options of each item.
    batch_size : int
        (context, option) pairs per forward pass.
    progress : bool
        Show a tqdm bar over batches.

    Returns
    -------
    list of numpy arrays
        ``out[i][j]`` = sum of log p(token) over the tokens of option j of item i.

    Examples
    --------
    >>> ll = option_loglikelihoods(model, tok, ["Q? Answer:"], [["yes", "no"]])  # doctest: +SKIP
    >>> int(np.argmax(ll[0]))  # doctest: +SKIP
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    if len(contexts) != len(options):
        raise ValueError(f"got {len(contexts)} contexts but {len(options)} option lists")
    max_length = model_max_length(model, tokenizer)
    device = next(model.parameters()).device
    pairs = []  # (item, option index, context, continuation) after moving trailing spaces
    for i, (context, opts) in enumerate(zip(contexts, options)):
        if not opts:
            raise ValueError(f"item {i} has no options to score")
        for j, opt in enumerate(opts):
            pairs.append((i, j, *_split_spaces(context, TARGET_DELIMITER + opt)))
    # one batched tokenizer call for the contexts and one for the whole strings (as encode_pair)
    unique_contexts = sorted({p[2] for p in pairs})
    context_ids = dict(zip(unique_contexts, tokenizer(unique_contexts, add_special_tokens=False)["input_ids"]))
    wholes = tokenizer([p[2] + p[3] for p in pairs], add_special_tokens=False)["input_ids"]
    requests = []  # (item, option index, input ids, continuation ids)
    for (i, j, context, continuation), whole in zip(pairs, wholes):
        ctx_ids = context_ids[context]
        cont_ids = whole[len(ctx_ids):]
        if not cont_ids:
            raise ValueError(f"item {i}: option {options[i][j]!r} encodes to no tokens")
        if len(cont_ids) > max_length:
            raise ValueError(f"item {i}: option {options[i][j]!r} is longer than the model context ({max_length})")
        # the model reads all but the last token; left truncation keeps the end
        inp = (ctx_ids + cont_ids)[-(max_length + 1):][:-1]
        requests.append((i, j, inp, cont_ids))
    out = [np.full(len(opts), np.nan) for opts in options]
    # Options of one token share the model input (the context): one forward pass serves all of them.
    readers: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
    for i, j, inp, cont in requests:
        readers.setdefault(tuple(inp), []).append((i, j, cont))
    inputs = list(readers)
    order = sorted(range(len(inputs)), key=lambda k: -len(inputs[k]))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    pad_id = _pad_id(tokenizer)
    keep_argument = _logits_argument(model)
    with torch.inference_mode():
        for batch in tqdm(batches, desc="option log-likelihoods", disable=not progress, leave=False):
            width = max(len(inputs[k]) for k in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, k in enumerate(batch):
                inp = inputs[k]
                ids[row, :len(inp)] = torch.tensor(inp)  # right padding: real positions unchanged
                mask[row, :len(inp)] = 1
            # logits at position t predict token t+1: the continuation's tokens are predicted by the last
            # n_cont positions of the (unpadded) input; the LM head runs from the first such position on
            first_needed = min(len(inputs[k]) - max(len(cont) for _, _, cont in readers[inputs[k]]) for k in batch)
            kept = width - first_needed if keep_argument else width
            keep = {keep_argument: kept} if keep_argument else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **keep).logits
            logprobs = torch.log_softmax(logits[:, -kept:].float(), dim=-1).cpu()
            offset = width - kept  # position t of the input is row t - offset of the kept logits
            for row, k in enumerate(batch):
                n_inp = len(inputs[k])
                for i, j, cont in readers[inputs[k]]:
                    n_cont = len(cont)
                    positions = torch.arange(n_inp - n_cont, n_inp) - offset
                    picked = logprobs[row, positions, torch.tensor(cont)]
                    out[i][j] = float(picked.sum())
    return out
