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
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
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

    @classmethod
    def from_dict(cls, values: dict, where: str = "organism config") -> "OrganismConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(known)}")
        missing = sorted(set(known) - set(values))
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
        return stable_hash({"config": self.to_dict(), "version": TRAINING_FORMAT_VERSION,
                            "corpus_generator": _corpus_generator_hash()})

    @property
    def checkpoint_steps(self) -> list[int]:
        return pythia_steps(self.max_steps, self.checkpoint_every)


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
    pass over ``max_steps`` batches), ``data/heldout_tokens.npy`` and
    ``data/corpus.json`` (sizes, unigram entropy) under the run folder.
    """

    cfg = _as_config(config)
    data = run_dir(cfg) / "data"
    if (data / "corpus.json").exists():
        return data
    needed = cfg.max_steps * cfg.tokens_per_step + cfg.context_length
    with atomic_dir(data) as tmp:
        # documents are generated lazily and tokenised in chunks until enough tokens exist
        docs = storyworld.training_documents(cfg.corpus_seed, n_documents=10**9, task_fraction=cfg.task_fraction)
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


def _batch(tokens: np.ndarray, order: np.ndarray, step: int, cfg: OrganismConfig):
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    n_seq = len(order)
    idx = order[(step * cfg.batch_size + np.arange(cfg.batch_size)) % n_seq]
    starts = idx * cfg.context_length
    rows = np.stack([tokens[s: s + cfg.context_length] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


def _heldout_loss(model, heldout: np.ndarray, cfg: OrganismConfig) -> float:
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch
    x = torch.from_numpy(heldout.astype(np.int64).reshape(cfg.heldout_sequences, cfg.context_length))
    model.eval()
    with torch.inference_mode():
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


def train_organism(config="default", progress: bool = True, stop_at_step: int | None = None) -> Path:
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

    model = _new_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    log_rows: list[dict] = []
    start = 0
    done = [s for s in complete_steps(path) if (path / f"step{s}" / TRAINER_STATE_FILE).exists()]
    if done:
        start = done[-1]
        state = torch.load(path / f"step{start}" / TRAINER_STATE_FILE, weights_only=False)

        model = GPTNeoXForCausalLM.from_pretrained(path / f"step{start}", dtype=torch.float32)
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
        heldout_loss = _heldout_loss(model, heldout, cfg)
        log_rows.append({"step": step, "tokens_seen": step * cfg.tokens_per_step,
                         "train_loss": train_loss, "heldout_loss": heldout_loss, "checkpoint": True})
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
        batch = _batch(tokens, order, step, cfg)
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
                             "train_loss": value, "heldout_loss": float("nan"), "checkpoint": False})
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
