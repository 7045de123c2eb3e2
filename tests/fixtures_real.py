"""Fixture builders for the real tier, writing files in the exact on-disk formats.

* :func:`write_hub_revision` - a Hugging Face hub cache as the hub lays it out:
  ``models--<org>--<name>/blobs/<sha256>``, ``snapshots/<commit>/<file>``
  (symlinks into blobs) and ``refs/<revision>`` holding the commit hash.
* :func:`sharded_checkpoint_folder` - a sharded checkpoint's files (config,
  weight index, shards) for the cache's completeness checks.
* :func:`tiny_model_folder` - a small random GPTNeoX causal LM saved with
  ``save_pretrained`` plus a BPE tokenizer trained with ``tokenizers``.
* :func:`write_lebel_story` - ds003020 files: ``derivative/respdict.json``,
  ``derivative/TextGrids/<story>.TextGrid`` (Praat long format, tier 1 phones,
  tier 2 words) and ``derivative/preprocessed_data/<subject>/<story>.hf5``
  (dataset ``data``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

ENGLISH_TEXT = ("the cat sat on the mat and the dog ran to the park . a bird sang in the tree while "
                "the children played near the old house by the river .")


def train_bpe_tokenizer(texts, vocab_size: int = 120, byte_level: bool = True):
    """A fast BPE tokenizer trained on ``texts`` (byte-level for English; plain BPE for Japanese)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if byte_level:
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        # No pre-tokenizer: merges may cross word boundaries, as SentencePiece does for Japanese.
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        alphabet = sorted(set("".join(texts)))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<|endoftext|>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>")


def tiny_model(vocab_size: int, seed: int, hidden: int = 16, layers: int = 2):
    """A random GPTNeoX causal LM (eval mode)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                           rotary_pct=0.25)
    return GPTNeoXForCausalLM(config).eval()


def tiny_model_folder(folder, seed: int, texts=(ENGLISH_TEXT,), tokenizer=None) -> Path:
    """Save a random tiny GPTNeoX + tokenizer in Hugging Face format (config, safetensors, tokenizer)."""
    folder = Path(folder)
    tokenizer = tokenizer or train_bpe_tokenizer(list(texts))
    model = tiny_model(len(tokenizer), seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_hub_revision(cache_dir, repo_id: str, revision: str, source_folder, commit: str | None = None,
                       use_blobs: bool = True) -> str:
    """Put a Hugging Face folder into a hub cache as revision ``revision`` of ``repo_id``.

    Returns the commit hash written to ``refs/<revision>`` (derived from the
    revision and the file contents unless given).
    """
    source_folder = Path(source_folder)
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in source_folder.iterdir() if p.is_file())
    if commit is None:
        digest = hashlib.sha1(revision.encode())
        for path in files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = snapshot / path.name
        if use_blobs:
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                shutil.copyfile(path, blob)
            if not target.exists():
                os.symlink(os.path.relpath(blob, snapshot), target)
        else:
            shutil.copyfile(path, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def sharded_checkpoint_folder(folder, n_shards: int = 2, kind: str = "safetensors") -> Path:
    """A checkpoint folder as a sharded upload lays it out: ``config.json``, the weight index and its shards.

    ``kind`` is ``"safetensors"`` (``model.safetensors.index.json``,
    ``model-0000i-of-0000n.safetensors``) or ``"bin"`` (``pytorch_model.bin.index.json``,
    ``pytorch_model-0000i-of-0000n.bin``). The shards hold distinct placeholder
    bytes (enough for the cache's completeness check, not for loading).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem, index_name = (("model", "model.safetensors.index.json") if kind == "safetensors"
                        else ("pytorch_model", "pytorch_model.bin.index.json"))
    shards = [f"{stem}-{i:05d}-of-{n_shards:05d}.{kind}" for i in range(1, n_shards + 1)]
    weight_map = {f"layers.{i}.weight": shard for i, shard in enumerate(shards)}
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": 8 * n_shards}, "weight_map": weight_map}))
    for shard in shards:
        (folder / shard).write_bytes(shard.encode())
    return folder


# --------------------------------------------------------------------------- ds003020
def long_textgrid(tiers, xmax: float) -> str:
    """Praat long-format TextGrid text of interval tiers [(name, [(xmin, xmax, text), ...]), ...]."""
    from triphase.datasets.textgrid import format_textgrid

    return format_textgrid(tiers, 0.0, xmax)


def phones_for(words_tier):
    """A phone tier: each word interval split in two halves labelled with fake phones."""
    phones = []
    for start, stop, text in words_tier:
        mid = (start + stop) / 2
        if text.strip() in ("", "sp"):
            phones.append((start, stop, text))
        else:
            phones.append((start, mid, "AH0"))
            phones.append((mid, stop, "T"))
    return phones


def write_lebel_story(root, story: str, word_intervals, n_acquired: int, responses: dict | None = None):
    """Write one ds003020 story: TextGrid (long format), respdict entry and response files.

    Parameters
    ----------
    word_intervals : list of (xmin, xmax, text), contiguous, as an aligner writes the word tier
    n_acquired : int
        N for respdict.json.
    responses : dict subject -> array (rows x voxels), written to ``<subject>/<story>.hf5`` key ``data``
    """
    import h5py

    derivative = Path(root) / "derivative"
    (derivative / "TextGrids").mkdir(parents=True, exist_ok=True)
    xmax = max(stop for _, stop, _ in word_intervals)
    text = long_textgrid([("phone", phones_for(word_intervals)), ("word", word_intervals)], xmax)
    (derivative / "TextGrids" / f"{story}.TextGrid").write_text(text)
    respdict_path = derivative / "respdict.json"
    respdict = json.loads(respdict_path.read_text()) if respdict_path.exists() else {}
    respdict[story] = int(n_acquired)
    respdict_path.write_text(json.dumps(respdict))
    for subject, data in (responses or {}).items():
        folder = derivative / "preprocessed_data" / subject
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / f"{story}.hf5", "w") as handle:
            handle.create_dataset("data", data=np.asarray(data, dtype=np.float32))


def speech_intervals(rng, duration: float, words=("alpha", "beta", "gamma", "delta", "echo")):
    """Contiguous word-tier intervals with bursts of speech and pauses ("sp"), plus markers.

    Returns the intervals; real words are drawn from ``words``.
    """
    intervals = [(0.0, 0.3, "sentence_start")]
    t = 0.3
    while t < duration - 1.0:
        if rng.random() < 0.35:  # a pause of 2-10 s
            stop = min(t + rng.uniform(2.0, 10.0), duration)
            intervals.append((t, stop, rng.choice(["sp", "{BR}", "", "{NS}"])))
        else:  # a burst of 3-15 words of 0.15-0.5 s
            stop = t
            for _ in range(int(rng.integers(3, 16))):
                w_stop = min(stop + rng.uniform(0.15, 0.5), duration)
                intervals.append((stop, w_stop, str(rng.choice(words))))
                stop = w_stop
                if stop >= duration:
                    break
        t = stop
    if t < duration:
        intervals.append((t, duration, "sp"))
    return [(round(a, 4), round(b, 4), c) for a, b, c in intervals if b > a]


# --------------------------------------------------------------------------- a small ds003020
LEBEL_TR = 2.0
LEBEL_MARKERS = {"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp", ""}


def planted_word_rate(intervals, n_acquired: int) -> np.ndarray:
    """Word count per response row, computed from first principles (not with the adapter's code).

    Response row j of a ds003020 story is grid TR j + 10 (trim [10:-5]); grid TR k
    spans audio time [2k - 10, 2k - 8) s (audio starts 10 s after the first trigger).
    """
    words = [(a + b) / 2 for a, b, text in intervals if text.lower().strip("{}").strip() not in LEBEL_MARKERS]
    n_rows = n_acquired - 20
    counts = np.zeros(n_rows)
    for j in range(n_rows):
        start = LEBEL_TR * (j + 10) - 10.0
        counts[j] = sum(start <= m < start + LEBEL_TR for m in words)
    return counts


def write_ds003020(root, delay_trs: int = 2, seed: int = 0) -> dict:
    """Three stories for UTS03 (incl. the test story), one for UTS01; responses = delayed word rate.

    Returns ``{story: (intervals, n_acquired, delayed word rate)}``.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    for story, n_acquired in (("alternateithicatom", 140), ("souls", 120), ("wheretheressmoke", 130)):
        duration = (n_acquired - 5) * LEBEL_TR - 10.0 - 4.0  # the audio ends before the last TRs
        intervals = speech_intervals(rng, duration)
        rate = planted_word_rate(intervals, n_acquired)
        delayed = np.concatenate([np.zeros(delay_trs), rate[:-delay_trs]])
        voxels = np.stack([delayed + 0.1 * rng.standard_normal(len(rate)),  # a word-rate voxel
                           rng.standard_normal(len(rate))], axis=1)          # a noise voxel
        subjects = {"UTS03": voxels}
        if story == "souls":
            subjects["UTS01"] = voxels
        write_lebel_story(root, story, intervals, n_acquired, subjects)
        truth[story] = (intervals, n_acquired, delayed)
    return truth
