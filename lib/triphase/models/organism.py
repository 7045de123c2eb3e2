"""The model organism: a small Pythia-architecture LM trained here from scratch.

The embedded tier needs a real learning trajectory without internet. This module
trains a ``transformers`` GPTNeoX model (Pythia's architecture) on the story-world
corpus (:mod:`triphase.models.storyworld`) with a byte-level BPE tokenizer trained on the
same corpus, and saves checkpoints on Pythia's schedule (step0, 1, 2, 4, ...,
then evenly spaced) in Hugging Face format under
``<data home>/organism/<config hash>/step{N}``.

Every checkpoint is written to a temporary folder and renamed into place; an
interrupted run resumes from its last complete checkpoint and produces the same
weights as an uninterrupted one; a complete run with the same configuration is
reused, never retrained.

The same code path trains on a CUDA GPU when there is one (``device="auto"``)
and, for configs with ``dtype: bfloat16``, under bf16 autocast (float32
weights and optimiser state). :func:`training_flops` and
:func:`expected_training_seconds` give a config's training compute (6 N D plus
attention) and an estimated GPU time, logged when training starts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from contextlib import contextmanager, nullcontext
from dataclasses import MISSING, asdict, dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from triphase._home import cache_dir
from triphase._io import atomic_dir, stable_hash, write_json, write_parquet
from triphase._progress import tqdm
from triphase.models import storyworld
from triphase.models.checkpoints import pythia_steps

#: bump when the training procedure changes in a way that changes the weights
TRAINING_FORMAT_VERSION = 1
EOS_TOKEN = "<|endoftext|>"
TRAINER_STATE_FILE = "trainer_state.pt"
RUN_FILE = "run.json"
LOG_FILE = "training_log.parquet"
HELDOUT_STORY_SEED_OFFSET = 1_000_003  # held-out-loss stories: a seed no stimulus default uses
_STEP_DIR = re.compile(r"^step(\d+)$")
#: compute dtypes of the forward pass: float32 (no autocast) or bfloat16 autocast (weights stay float32)
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
#: Dense bf16 peak of one NVIDIA H100 SXM (989 TFLOP/s, NVIDIA's datasheet; H200: same compute)
H100_BF16_PEAK_FLOPS = 989e12
#: Model FLOPs utilisation assumed for the time estimate: an assumption, not a measurement (small
#: models in eager attention reach well under the 40-50% of large, tuned runs)
ASSUMED_UTILISATION = 0.2
#: FLOPs per parameter and token of a training step: 2 forward + 4 backward (Kaplan et al. 2020)
TRAINING_FLOPS_PER_PARAMETER_TOKEN = 6
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines a trained organism (see ``presets/organism.yaml``)."""

    corpus_seed: int
    task_fraction: float
    tokenizer_documents: int
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    context_length: int
    rotary_pct: float
    train_seed: int
    batch_size: int
    max_steps: int
    learning_rate: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    adam_betas: tuple[float, float]
    grad_clip: float
    checkpoint_every: int
    heldout_sequences: int
    # optional fields (added later): at their defaults they leave the hash of older configs unchanged
    repeat_fraction: float = 0.0   # share of characters in bursty repeat documents (storyworld.repeat_document)
    task_burst: int = 1            # task documents of one family in a row: 1 .. task_burst
    corpus_tokens: int = 0         # unique training tokens (0: one pass, max_steps x tokens per step)
    dtype: str = "float32"         # "bfloat16": bf16 autocast of the forward pass (mixed precision)
    copy_warmup_steps: int = 0     # first steps on repeated random-token blocks (a copy curriculum), then the corpus

    @classmethod
    def from_dict(cls, values: dict, where: str = "organism config") -> "OrganismConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(known)}")
        missing = sorted(name for name in set(known) - set(values) if name not in _OPTIONAL_DEFAULTS)
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        values = dict(values)
        values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    @classmethod
    def preset(cls, name: str) -> "OrganismConfig":
        presets = organism_presets()
        if name not in presets:
            raise ValueError(f"unknown organism config {name!r}; presets: {', '.join(sorted(presets))}")
        return cls.from_dict(presets[name], where=f"presets/organism.yaml:{name}")

    def validate(self, where: str = "organism config") -> None:
        positive_ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size", "context_length", "batch_size", "max_steps",
                         "checkpoint_every", "heldout_sequences", "tokenizer_documents")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{where}: hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if not 0 <= self.task_fraction < 0.5:
            raise ValueError(f"{where}: task_fraction must be in [0, 0.5), got {self.task_fraction}")
        if self.vocab_size < 257:
            raise ValueError(f"{where}: vocab_size must exceed the 256 byte symbols, got {self.vocab_size}")
        # repeat documents are stories too (with recurring spans), so they may make up most of the corpus
        if not 0 <= self.repeat_fraction < 1 or self.task_fraction + self.repeat_fraction >= 1:
            raise ValueError(f"{where}: repeat_fraction must be in [0, 1 - task_fraction), got {self.repeat_fraction}")
        if isinstance(self.task_burst, bool) or not isinstance(self.task_burst, int) or self.task_burst < 1:
            raise ValueError(f"{where}: task_burst must be a positive integer, got {self.task_burst!r}")
        if isinstance(self.corpus_tokens, bool) or not isinstance(self.corpus_tokens, int) or self.corpus_tokens < 0:
            raise ValueError(f"{where}: corpus_tokens must be a non-negative integer, got {self.corpus_tokens!r}")
        if isinstance(self.copy_warmup_steps, bool) or not isinstance(self.copy_warmup_steps, int) \
                or not 0 <= self.copy_warmup_steps < self.max_steps:
            raise ValueError(f"{where}: copy_warmup_steps must be an integer in [0, max_steps), "
                             f"got {self.copy_warmup_steps!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length

    @property
    def hash(self) -> str:
        """Key of the run: the config, the training version and the corpus generator's source.

        The story world's code decides the corpus, so editing it gives a new run
        instead of silently reusing weights trained on another corpus."""
        keyed = {k: v for k, v in self.to_dict().items()
                 if k not in _OPTIONAL_DEFAULTS or v != _OPTIONAL_DEFAULTS[k]}
        return stable_hash({"config": keyed, "version": TRAINING_FORMAT_VERSION,
                            "corpus_generator": _corpus_generator_hash()})

    @property
    def checkpoint_steps(self) -> list[int]:
        return pythia_steps(self.max_steps, self.checkpoint_every)

    @property
    def training_tokens(self) -> int:
        """Tokens seen in training (``max_steps`` x tokens per step)."""
        return self.max_steps * self.tokens_per_step

    @property
    def corpus_training_tokens(self) -> int:
        """Tokens of the corpus seen in training (the steps after the copy warm-up)."""
        return (self.max_steps - self.copy_warmup_steps) * self.tokens_per_step

    @property
    def unique_tokens(self) -> int:
        """Distinct corpus tokens generated: ``corpus_tokens``, or one pass over the corpus steps."""
        corpus = self.corpus_training_tokens
        return min(self.corpus_tokens, corpus) if self.corpus_tokens else corpus


_OPTIONAL_DEFAULTS = {f.name: f.default for f in fields(OrganismConfig) if f.default is not MISSING}


def _corpus_generator_hash() -> str:
    source = resources.files("triphase").joinpath("models", "storyworld.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:16]


def organism_presets() -> dict:
    text = resources.files("triphase").joinpath("presets", "organism.yaml").read_text()
    return yaml.safe_load(text)


def _as_config(config) -> OrganismConfig:
    if isinstance(config, OrganismConfig):
        return config
    if isinstance(config, str):
        return OrganismConfig.preset(config)
    if isinstance(config, dict):
        return OrganismConfig.from_dict(config)
    raise TypeError(f"config must be a preset name, a dict or an OrganismConfig, got {type(config).__name__}")


def run_dir(config) -> Path:
    """Folder of the organism run for ``config`` (not created)."""
    return cache_dir("organism") / _as_config(config).hash


# --------------------------------------------------------------------------- compute
def training_flops(config, vocab_size: int | None = None) -> dict:
    """Expected floating-point operations of training: ``6 N D`` plus attention.

    ``N`` counts the weights of every matrix multiplication a token goes through
    (per block: query/key/value and output projections ``4 d^2``, the MLP
    ``2 d f``; plus the unembedding ``d V``; the input embedding is a lookup),
    ``D`` the training tokens; a training step costs 3 forward passes (forward
    + backward, Kaplan et al. 2020). Attention adds ``4 L T d`` forward FLOPs
    per token (scores and weighted values over the full ``T``-token context, as
    eager attention computes them; Hoffmann et al. 2022, appendix F).

    Parameters
    ----------
    config : str, dict or OrganismConfig
    vocab_size : int, optional
        The tokenizer's size (default: the configured ``vocab_size``).

    Returns
    -------
    dict
        ``matmul_parameters`` (N), ``parameters`` (N plus the input embedding),
        ``tokens`` (D), ``dense_flops`` (6 N D), ``attention_flops`` and ``flops`` (their sum).

    Examples
    --------
    >>> cfg = dict(OrganismConfig.preset("tiny").to_dict(), hidden_size=4, num_hidden_layers=1,
    ...            num_attention_heads=1, intermediate_size=8, vocab_size=300, context_length=2,
    ...            batch_size=1, max_steps=1)
    >>> f = training_flops(cfg)
    >>> f["matmul_parameters"] == 4 * 16 + 2 * 4 * 8 + 4 * 300, f["flops"] == 6 * f["matmul_parameters"] * 2 + 12 * 2 * 4 * 2
    (True, True)
    """
    cfg = _as_config(config)
    vocab = int(vocab_size or cfg.vocab_size)
    d, layers, context = cfg.hidden_size, cfg.num_hidden_layers, cfg.context_length
    per_block = 4 * d * d + 2 * d * cfg.intermediate_size
    matmul = layers * per_block + d * vocab
    tokens = cfg.training_tokens
    dense = TRAINING_FLOPS_PER_PARAMETER_TOKEN * matmul * tokens
    forward_attention_per_token = 4 * layers * context * d
    attention = 3 * forward_attention_per_token * tokens
    return {"matmul_parameters": matmul, "parameters": matmul + d * vocab, "tokens": tokens,
            "dense_flops": dense, "attention_flops": attention, "flops": dense + attention}


def expected_training_seconds(config, peak_flops: float = H100_BF16_PEAK_FLOPS,
                              utilisation: float = ASSUMED_UTILISATION, vocab_size: int | None = None) -> float:
    """Estimated training time on one accelerator: FLOPs / (peak x utilisation). An estimate, not a measurement.

    Examples
    --------
    >>> expected_training_seconds("tiny", peak_flops=1e12, utilisation=0.5) == training_flops("tiny")["flops"] / 5e11
    True
    """
    if peak_flops <= 0 or not 0 < utilisation <= 1:
        raise ValueError(f"need peak_flops > 0 and utilisation in (0, 1], got {peak_flops}, {utilisation}")
    return training_flops(config, vocab_size)["flops"] / (peak_flops * utilisation)


def compute_estimate_line(config, vocab_size: int | None = None) -> str:
    """One line for the training log: parameters, tokens, FLOPs and the estimated time on one H100."""
    f = training_flops(config, vocab_size)
    seconds = expected_training_seconds(config, vocab_size=vocab_size)
    return (f"organism: {f['parameters'] / 1e6:.2f} M parameters ({f['matmul_parameters'] / 1e6:.2f} M in matmuls), "
            f"{f['tokens'] / 1e6:.1f} M training tokens, {f['flops']:.3g} FLOPs (6ND + attention); "
            f"estimate on one GPU at {H100_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 peak and an assumed "
            f"{ASSUMED_UTILISATION:.0%} utilisation: {seconds:.3g} s (an estimate, not a measurement)")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA GPU is available, else ``"cpu"``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return device


# --------------------------------------------------------------------------- data
def _build_tokenizer(documents: list[str], vocab_size: int):
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # offsets exclude the leading space of "Ġword" tokens, so words map to tokens by character span
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def _encode_documents(tokenizer, documents: list[str]) -> np.ndarray:
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    out = []
    for doc in ids:
        out.extend(doc)
        out.append(eos)
    return np.asarray(out, dtype=np.uint16 if len(tokenizer) < 65536 else np.int32)


def prepare_corpus(config, progress: bool = True) -> Path:
    """Generate the training corpus, train the tokenizer and tokenise (cached).

    Writes ``data/tokenizer/``, ``data/train_tokens.npy`` (enough tokens for one
    pass over ``max_steps`` batches, or ``corpus_tokens`` to train for several
    epochs), ``data/heldout_tokens.npy`` and
    ``data/corpus.json`` (sizes, unigram entropy) under the run folder.
    """

    cfg = _as_config(config)
    data = run_dir(cfg) / "data"
    if (data / "corpus.json").exists():
        return data
    needed = cfg.unique_tokens + cfg.context_length
    with atomic_dir(data) as tmp:
        # documents are generated lazily and tokenised in chunks until enough tokens exist
        docs = storyworld.training_documents(cfg.corpus_seed, n_documents=10**9, task_fraction=cfg.task_fraction,
                                             repeat_fraction=cfg.repeat_fraction, task_burst=cfg.task_burst)
        first = [next(docs) for _ in range(cfg.tokenizer_documents)]
        tokenizer = _build_tokenizer(first, cfg.vocab_size)
        tokenizer.save_pretrained(tmp / "tokenizer")
        chunks = [_encode_documents(tokenizer, first)]
        total = len(chunks[0])
        n_docs = len(first)
        bar = _progress(total=needed, desc="corpus tokens", disable=not progress)
        bar.update(min(total, needed))
        while total < needed:
            batch = [next(docs) for _ in range(1000)]
            n_docs += len(batch)
            chunk = _encode_documents(tokenizer, batch)
            chunks.append(chunk)
            total += len(chunk)
            bar.update(min(len(chunk), max(needed - bar.n, 0)))
        bar.close()
        train_tokens = np.concatenate(chunks)
        if cfg.corpus_tokens:  # a corpus for several epochs has the size asked for (one pass keeps every chunk)
            train_tokens = train_tokens[:needed]
        np.save(tmp / "train_tokens.npy", train_tokens)
        heldout_text = [s.text for s in storyworld.stimulus_stories(
            max(4, cfg.heldout_sequences // 4), seed=cfg.corpus_seed + HELDOUT_STORY_SEED_OFFSET)]
        heldout = _encode_documents(tokenizer, heldout_text)
        need_heldout = cfg.heldout_sequences * cfg.context_length
        heldout = np.resize(heldout, need_heldout) if len(heldout) < need_heldout else heldout[:need_heldout]
        np.save(tmp / "heldout_tokens.npy", heldout)
        counts = np.bincount(train_tokens.astype(np.int64), minlength=len(tokenizer)).astype(float)
        p = counts[counts > 0] / counts.sum()
        write_json(
            {
                "documents": n_docs,
                "train_tokens": int(len(train_tokens)),
                "heldout_tokens": int(len(heldout)),
                "vocab_size": len(tokenizer),
                "unigram_entropy_nats": float(-(p * np.log(p)).sum()),
                "characters_per_token": float(sum(len(d) for d in first) / max(len(chunks[0]), 1)),
            },
            tmp / "corpus.json",
        )
    return data


# --------------------------------------------------------------------------- training
def _progress(**kwargs):
    return tqdm(**kwargs)


@contextmanager
def _quiet_save():
    """Silence the "Writing model shards" bar ``save_pretrained`` draws for every checkpoint.

    The switch is global (transformers and huggingface_hub), so both states are restored afterwards.
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers.utils import logging as transformers_logging
    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_off = are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()
        (disable_progress_bars if hub_off else enable_progress_bars)()


def _lr_lambda(cfg: OrganismConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(cfg.max_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return factor


@lru_cache(maxsize=2)
def _epoch_order(train_seed: int, epoch: int, n_seq: int) -> np.ndarray:
    """Order of the training sequences in one epoch (epoch 0: the order of one-pass training)."""
    return np.random.default_rng([train_seed, 1] + ([epoch] if epoch else [])).permutation(n_seq)


def _batch(tokens: np.ndarray, order: np.ndarray, step: int, cfg: OrganismConfig):
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    n_seq = len(order)
    positions = step * cfg.batch_size + np.arange(cfg.batch_size)
    epochs = positions // n_seq
    # a corpus smaller than the training tokens is reshuffled every epoch (one pass: epoch 0 only)
    idx = np.array([(order if e == 0 else _epoch_order(cfg.train_seed, int(e), n_seq))[p % n_seq]
                    for p, e in zip(positions, epochs)])
    starts = idx * cfg.context_length
    rows = np.stack([tokens[s: s + cfg.context_length] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


#: block lengths (inclusive) and repeats (inclusive) of the copy-warm-up sequences
COPY_WARMUP_BLOCK = (8, 32)
COPY_WARMUP_REPEATS = (2, 3)
#: length of a copy-warm-up row (at most the context): in short rows attention is less diluted, so the
#: copy signal is stronger (measured: a head in ~250 steps of 8,192 tokens at 128; none in 450 at 256)
COPY_WARMUP_LENGTH = 128
#: seed stream of the copy warm-up (the corpus order uses 1)
COPY_WARMUP_STREAM = 2
#: values of the training log's ``data`` column (configs with a copy warm-up)
COPY_WARMUP_DATA, CORPUS_DATA = "copy warm-up", "corpus"


def copy_warmup_batch(step: int, cfg: OrganismConfig, vocabulary: np.ndarray) -> np.ndarray:
    """One copy-warm-up batch: rows of random token blocks, each block repeated 2-3 times.

    Blocks have variable lengths (:data:`COPY_WARMUP_BLOCK`), so no fixed
    period predicts a repeat: only matching content in the context does (an
    induction head; Olsson et al. 2022). Seeded by ``(train_seed, step)``;
    the batch holds the same number of tokens as a corpus batch, in rows of
    :data:`COPY_WARMUP_LENGTH` tokens.

    Parameters
    ----------
    step : int
    cfg : OrganismConfig
    vocabulary : array of int
        Token ids to draw from (the tokenizer's ids without special tokens).

    Returns
    -------
    numpy.ndarray of int64, shape (tokens_per_step // row length, row length)

    Examples
    --------
    >>> cfg = OrganismConfig.preset("tiny")
    >>> batch = copy_warmup_batch(0, cfg, np.arange(5, 300))
    >>> batch.shape, bool(np.isin(batch, np.arange(5, 300)).all())
    ((8, 64), True)
    """
    rng = np.random.default_rng([cfg.train_seed, COPY_WARMUP_STREAM, step])
    length = min(COPY_WARMUP_LENGTH, cfg.context_length)
    rows = []
    for _ in range(max(cfg.tokens_per_step // length, 1)):
        row: list[int] = []
        while len(row) < length:
            block = rng.choice(vocabulary, size=int(rng.integers(COPY_WARMUP_BLOCK[0], COPY_WARMUP_BLOCK[1] + 1)))
            row.extend(block.tolist() * int(rng.integers(COPY_WARMUP_REPEATS[0], COPY_WARMUP_REPEATS[1] + 1)))
        rows.append(row[:length])
    return np.asarray(rows, dtype=np.int64)


def copy_warmup_end(log: pd.DataFrame) -> float | None:
    """Tokens seen at the end of a training log's copy warm-up (its ``data`` column), or None without one.

    Examples
    --------
    >>> log = pd.DataFrame({"tokens_seen": [0, 10, 20, 30], "data": ["corpus", COPY_WARMUP_DATA, COPY_WARMUP_DATA,
    ...                                                          CORPUS_DATA]})
    >>> copy_warmup_end(log), copy_warmup_end(log.drop(columns="data"))
    (20.0, None)
    """
    if log is None or "data" not in log:
        return None
    warm = log.loc[log["data"] == COPY_WARMUP_DATA, "tokens_seen"]
    return float(warm.max()) if len(warm) else None


def _data_column(step: int, cfg: OrganismConfig) -> dict:
    """The training log's ``data`` column with a copy warm-up: what the batch ending at ``step`` held."""
    if not cfg.copy_warmup_steps:
        return {}
    return {"data": COPY_WARMUP_DATA if 0 < step <= cfg.copy_warmup_steps else CORPUS_DATA}


def _autocast(cfg: OrganismConfig, device: str):
    """bf16 autocast of the forward pass when the config asks for it (weights and optimiser stay float32)."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return nullcontext()


def _heldout_loss(model, heldout: np.ndarray, cfg: OrganismConfig, device: str = "cpu") -> float:
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    x = torch.from_numpy(heldout.astype(np.int64).reshape(cfg.heldout_sequences, cfg.context_length)).to(device)
    model.eval()
    with torch.inference_mode(), _autocast(cfg, device):
        losses = [model(input_ids=chunk, labels=chunk).loss.item() for chunk in x.split(16)]
    model.train()
    return float(np.mean(losses))


def _new_model(cfg: OrganismConfig, tokenizer):
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model_config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.context_length,
        rotary_pct=cfg.rotary_pct,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(cfg.train_seed)
    return GPTNeoXForCausalLM(model_config)


def complete_steps(path: Path) -> list[int]:
    """Steps whose checkpoint folders are complete (renamed into place), sorted."""
    if not path.exists():
        return []
    steps = []
    for child in path.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / "config.json").exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


def train_organism(config="default", progress: bool = True, stop_at_step: int | None = None,
                   device: str = "auto") -> Path:
    """Train the organism (or reuse / resume an existing run) and return its folder.

    Parameters
    ----------
    config : str, dict or OrganismConfig
        A preset name from ``presets/organism.yaml`` (``"default"``, ``"tiny"``)
        or a full configuration.
    progress : bool
        Show progress bars.
    stop_at_step : int, optional
        Stop after saving this checkpoint step, as an interruption would (the
        next call resumes). Used to train in stages and to test resumption.
    device : {"auto", "cpu", "cuda"}
        Where to train; ``"auto"`` takes a CUDA GPU when there is one. The
        config's ``dtype`` decides bf16 autocast. (Weights trained on another
        device differ in rounding; the run folder records the device.)

    Returns
    -------
    pathlib.Path
        The run folder, holding ``step{N}/`` checkpoints, ``training_log.parquet``
        and ``run.json``.

    Examples
    --------
    >>> path = train_organism("tiny", progress=False)  # doctest: +SKIP
    >>> sorted(p.name for p in path.glob("step*"))[:3]  # doctest: +SKIP
    ['step0', 'step1', 'step16']
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

    cfg = _as_config(config)
    device = resolve_device(device)
    path = run_dir(cfg)
    run_file = path / RUN_FILE
    if run_file.exists() and json.loads(run_file.read_text()).get("status") == "complete":
        return path
    started = time.perf_counter()
    data = prepare_corpus(cfg, progress=progress)
    corpus = json.loads((data / "corpus.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(data / "tokenizer")
    tokens = np.load(data / "train_tokens.npy")
    heldout = np.load(data / "heldout_tokens.npy")
    n_seq = len(tokens) // cfg.context_length
    order = np.random.default_rng([cfg.train_seed, 1]).permutation(n_seq)
    schedule = set(cfg.checkpoint_steps)
    special = set(tokenizer.all_special_ids)
    vocabulary = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    estimate = compute_estimate_line(cfg, len(tokenizer))
    logger.info(estimate)  # the command line shows the triphase logger; a bare library call stays quiet

    model = _new_model(cfg, tokenizer).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    log_rows: list[dict] = []
    start = 0
    done = [s for s in complete_steps(path) if (path / f"step{s}" / TRAINER_STATE_FILE).exists()]
    if done:
        start = done[-1]
        state = torch.load(path / f"step{start}" / TRAINER_STATE_FILE, weights_only=False, map_location="cpu")

        model = GPTNeoXForCausalLM.from_pretrained(path / f"step{start}", dtype=torch.float32).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas,
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if (path / LOG_FILE).exists():
            log_rows = pd.read_parquet(path / LOG_FILE).query("step <= @start").to_dict("records")
    model.train()

    def save(step: int, train_loss: float) -> None:
        heldout_loss = _heldout_loss(model, heldout, cfg, device)
        log_rows.append({"step": step, "tokens_seen": step * cfg.tokens_per_step,
                         "train_loss": train_loss, "heldout_loss": heldout_loss, "checkpoint": True,
                         **_data_column(step, cfg)})
        with atomic_dir(path / f"step{step}") as tmp, _quiet_save():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "step": step}, tmp / TRAINER_STATE_FILE)
        # only the newest checkpoint keeps the optimiser state needed to resume
        for older in complete_steps(path):
            if older < step:
                (path / f"step{older}" / TRAINER_STATE_FILE).unlink(missing_ok=True)
        write_parquet(pd.DataFrame(log_rows), path / LOG_FILE)

    if start == 0 and 0 not in done:
        save(0, float("nan"))
    bar = _progress(total=cfg.max_steps, initial=start, desc=f"training organism {cfg.hash}",
                    disable=not progress)
    for step in range(start, cfg.max_steps):
        if stop_at_step is not None and step >= stop_at_step:
            bar.close()
            return path
        if step < cfg.copy_warmup_steps:
            batch = torch.from_numpy(copy_warmup_batch(step, cfg, vocabulary)).to(device)
        else:
            batch = _batch(tokens, order, step - cfg.copy_warmup_steps, cfg).to(device)
        with _autocast(cfg, device):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
        finished = step + 1
        if finished in schedule:
            save(finished, value)
        else:
            log_rows.append({"step": finished, "tokens_seen": finished * cfg.tokens_per_step,
                             "train_loss": value, "heldout_loss": float("nan"), "checkpoint": False,
                             **_data_column(finished, cfg)})
    bar.close()
    (path / f"step{cfg.max_steps}" / TRAINER_STATE_FILE).unlink(missing_ok=True)
    log = pd.DataFrame(log_rows)
    write_json(
        {
            "status": "complete",
            "config": cfg.to_dict(),
            "config_hash": cfg.hash,
            "checkpoints": complete_steps(path),
            "unigram_entropy_nats": corpus["unigram_entropy_nats"],
            "final_heldout_loss": float(log.dropna(subset=["heldout_loss"])["heldout_loss"].iloc[-1]),
            "train_tokens": corpus["train_tokens"],
            "seconds_last_session": time.perf_counter() - started,
            "device": device,
            "compute_estimate": estimate,
        },
        run_file,
    )
    return path


def training_log(config="default") -> pd.DataFrame:
    """The training log of a run (step, tokens_seen, train_loss, heldout_loss, checkpoint)."""
    path = run_dir(config) / LOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}: train first with `triphase train --config ...`")
    return pd.read_parquet(path)


def run_info(config="default") -> dict:
    path = run_dir(config) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"organism run {path.parent} is not complete: run `triphase train`")
    info = json.loads(path.read_text())
    info["corpus"] = json.loads((path.parent / "data" / "corpus.json").read_text()) if (path.parent / "data" / "corpus.json").exists() else {}
    return info
