"""Generic dataset (events TSV + responses + sidecar), including Japanese text without spaces."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
from fixtures_real import tiny_model, train_bpe_tokenizer

from triphase.datasets import get_dataset
from triphase.models.features import word_hidden_states

JAPANESE = {
    "story1": ["昔々", "ある", "村", "に", "おじいさん", "と", "おばあさん", "が", "住んで", "いました"],
    "story2": ["おじいさん", "は", "山", "へ", "しば刈り", "に", "行きました"],
    "story3": ["おばあさん", "は", "川", "へ", "洗濯", "に", "行きました"],
}
TR = 1.5


def write_generic(root, stories, sidecar, n_rows=12, fmt="npy"):
    (root / "stimuli").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for story, words in stories.items():
        lines = ["onset\tduration\tword"]
        for i, word in enumerate(words):
            lines.append(f"{1.0 + 0.6 * i:.3f}\t0.5\t{word}")
        lines.append(f"{1.0 + 0.6 * len(words):.3f}\t0.4\t")  # an empty event (e.g. a pause) is dropped
        (root / "stimuli" / f"{story}_events.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        folder = root / "responses" / "sub01"
        folder.mkdir(parents=True, exist_ok=True)
        data = rng.standard_normal((n_rows, 4)).astype(np.float32)
        if fmt == "npy":
            np.save(folder / f"{story}.npy", data)
        else:
            with h5py.File(folder / f"{story}.hf5", "w") as handle:
                handle.create_dataset("data", data=data)
    (root / "dataset.json").write_text(json.dumps(sidecar, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def japanese(tmp_path):
    root = tmp_path / "jp"
    write_generic(root, JAPANESE, {"name": "jpstories", "tr": TR, "split": {"test": ["story3"]}, "trim": [2, 1],
                                   "word_join": "", "language": "ja"})
    return root


def test_timings_grid_split_and_rows(japanese):
    ds = get_dataset("generic", root=japanese)
    assert ds.name == "jpstories" and ds.subjects == ["sub01"]
    assert ds.split("sub01") == (["story1", "story2"], ["story3"])
    timings = ds.word_timings("story1")
    assert timings.words == tuple(JAPANESE["story1"])
    np.testing.assert_allclose(timings.onsets[:2], [1.0, 1.6])
    np.testing.assert_allclose(timings.offsets[:2], [1.5, 2.1])
    # 12 response rows + trim 2 + 1 = 15 grid rows at mid-volume (i + 0.5) * TR
    np.testing.assert_allclose(timings.tr_times, (np.arange(15) + 0.5) * TR)
    assert timings.n_rows == 12 and ds.responses("sub01", "story1").shape == (12, 4)
    assert ds.story_text("story2") == "おじいさんは山へしば刈りに行きました"


def test_japanese_tokens_map_back_to_words_by_character_offsets(japanese):
    ds = get_dataset("generic", root=japanese)
    corpus = ["".join(words) for words in JAPANESE.values()] * 20
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=60, byte_level=False)
    model = tiny_model(len(tokenizer), seed=0)
    words = list(ds.word_timings("story1").words)
    text = ds.story_text("story1")
    features = word_hidden_states(model, tokenizer, words, join=ds.word_join, context=64)
    assert features.shape == (3, len(words), 16)

    # Independent reference: one forward pass over the whole text; a word's token is the last
    # token starting before the word's last character ends.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    ends = np.cumsum([len(w) for w in words])
    expected_index = [max(i for i, (start, _) in enumerate(offsets) if start < end) for end in ends]
    starts = np.concatenate([[0], ends[:-1]])
    crossing = [i for i, (s, e) in enumerate(offsets) if any(s < b < e for b in starts[1:])]
    assert crossing, "the tokenizer should merge across a word boundary for this test to mean something"
    with torch.inference_mode():
        hidden = model(torch.tensor([encoded["input_ids"]]), output_hidden_states=True).hidden_states
    reference = np.stack([h[0, expected_index].numpy() for h in hidden])
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-6)


def test_brain_data_with_hf5_responses(tmp_path):
    from triphase.brain.sweep import BrainData

    english = {"a": ["the", "cat", "sat"], "b": ["a", "dog", "ran"], "c": ["birds", "sang", "loudly"]}
    root = tmp_path / "en"
    write_generic(root, english, {"tr": 2.0, "split": {"train": ["a", "b"], "test": ["c"]}}, n_rows=8, fmt="hf5")
    data = BrainData(get_dataset("generic", root=root), "sub01")
    assert data.word_join == " " and data.test == ["c"]
    assert data.responses["a"].shape == (8, 4)


def test_sidecar_and_file_errors(tmp_path, japanese):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        get_dataset("generic", root=tmp_path / "nothing")
    sidecar = japanese / "dataset.json"
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    for field, value, pattern in (("tr", 0, "field 'tr'"), ("trim", [1], "field 'trim'"),
                                  ("split", {"train": ["x"]}, "field 'split'"), ("TR", 2, "unknown field")):
        sidecar.write_text(json.dumps({**meta, field: value}), encoding="utf-8")
        with pytest.raises(ValueError, match=pattern):
            get_dataset("generic", root=japanese)
    sidecar.write_text(json.dumps({**meta, "trim": [3, 1]}), encoding="utf-8")
    ds = get_dataset("generic", root=japanese)
    assert ds.word_timings("story1").n_rows == 12  # the grid grows with the trim; rows still agree
    sidecar.write_text(json.dumps(meta), encoding="utf-8")
    (japanese / "stimuli" / "story2_events.tsv").write_text("onset\tword\n1.0\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column 'duration'"):
        get_dataset("generic", root=japanese).word_timings("story2")
    np.save(japanese / "responses" / "sub01" / "story1.npy", np.zeros((12, 4, 1)))
    with pytest.raises(ValueError, match="2-D"):
        get_dataset("generic", root=japanese).responses("sub01", "story1")


def _rewrite_keeping_size(path, write):
    """Rewrite a file with other content of the same size; its mtime moves on (timestamps can be coarser
    than the pace of a test, so it is set explicitly)."""
    before = path.stat()
    write(path)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))


def test_identity_changes_with_the_subjects_files_and_not_otherwise(japanese):
    ds = get_dataset("generic", root=japanese)
    first = ds.identity("sub01")
    assert first["dataset"] == "jpstories" and first["subject"] == "sub01"
    assert [entry[0] for entry in first["files"]] == [
        "dataset.json", "responses/sub01/story1.npy", "responses/sub01/story2.npy", "responses/sub01/story3.npy",
        "stimuli/story1_events.tsv", "stimuli/story2_events.tsv", "stimuli/story3_events.tsv"]
    # reading the data, or opening the dataset again, changes nothing
    ds.responses("sub01", "story1")
    ds.word_timings("story2")
    assert ds.identity("sub01") == first
    assert get_dataset("generic", root=japanese).identity("sub01") == first
    # a response file rewritten under the same root (same shape, same size)
    response = japanese / "responses" / "sub01" / "story1.npy"
    _rewrite_keeping_size(response, lambda p: np.save(p, np.ones((12, 4), dtype=np.float32)))
    second = ds.identity("sub01")
    assert second != first
    assert [e for e in second["files"] if e not in first["files"]][0][0] == "responses/sub01/story1.npy"
    # an events file rewritten, a repeats file added
    events = japanese / "stimuli" / "story2_events.tsv"
    _rewrite_keeping_size(events, lambda p: p.write_text(p.read_text(encoding="utf-8").replace("0.5", "0.4"),
                                                         encoding="utf-8"))
    third = ds.identity("sub01")
    assert third != second
    np.save(japanese / "responses" / "sub01" / "story3_repeats.npy", np.zeros((2, 12, 4), dtype=np.float32))
    fourth = ds.identity("sub01")
    assert fourth != third and "responses/sub01/story3_repeats.npy" in [e[0] for e in fourth["files"]]
    # a file that is not the data's (a note beside the dataset) changes nothing
    (japanese / "README.txt").write_text("notes")
    assert ds.identity("sub01") == fourth
