"""LeBel et al. 2023 adapter on files written in ds003020's layout and formats (no network)."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from fixtures_real import long_textgrid, write_ds003020, write_lebel_story

from triphase.brain.timeseries import story_design
from triphase.datasets import get_dataset
from triphase.datasets.lebel2023 import LeBel2023, simulated_tr_times
from triphase.datasets.textgrid import TextGridError, format_textgrid, parse_textgrid, read_textgrid

TR = 2.0
DELAY_TRS = 2


@pytest.fixture
def ds003020(tmp_path):
    """Three stories for UTS03 (incl. the test story), one for UTS01; responses = delayed word rate."""
    root = tmp_path / "ds003020"
    return root, write_ds003020(root, delay_trs=DELAY_TRS)


def _lag_correlations(x, y, lags):
    out = {}
    for lag in lags:
        a = x[:len(x) - lag] if lag >= 0 else x[-lag:]
        b = y[lag:] if lag >= 0 else y[:len(y) + lag]
        out[lag] = float(np.corrcoef(a, b)[0, 1])
    return out


def test_textgrid_long_and_short_formats_agree():
    tiers = [("phone", [(0.0, 0.5, "AH0"), (0.5, 1.25, "")]), ("word", [(0.0, 1.25, 'he said "hi"')])]
    long_grid = parse_textgrid(format_textgrid(tiers, 0.0, 1.25))
    short_grid = parse_textgrid(format_textgrid(tiers, 0.0, 1.25, short=True))
    assert long_grid.tiers == short_grid.tiers
    assert [t.name for t in long_grid.tiers] == ["phone", "word"]
    assert long_grid.tiers[1].intervals[0] == (0.0, 1.25, 'he said "hi"')
    assert long_grid.tiers[0].intervals[1].text == ""
    with pytest.raises(TextGridError, match="not a Praat text file"):
        parse_textgrid('File type = "something"\n')
    with pytest.raises(TextGridError, match="file ends early"):
        parse_textgrid(format_textgrid(tiers, 0.0, 1.25)[:-60])


def test_reads_a_praat_written_textgrid(tmp_path):
    # Praat's long format as written by Praat itself (trailing spaces, 'tiers? <exists>', item []:)
    text = long_textgrid([("phone", [(0, 0.4, "DH"), (0.4, 0.9, "AH0")]), ("word", [(0, 0.9, "the")])], 0.9)
    assert "tiers? <exists> " in text and "item []: " in text and "intervals [1]:" in text
    path = tmp_path / "x.TextGrid"
    path.write_text(text, encoding="utf-16")  # Praat may write UTF-16 with a BOM
    assert read_textgrid(path).tiers[1].intervals == ((0.0, 0.9, "the"),)


def test_markers_dropped_and_words_lowercased(tmp_path):
    root = tmp_path / "ds"
    intervals = [(0.0, 0.5, "sentence_start"), (0.5, 1.0, "{BR}"), (1.0, 1.4, "Hello"), (1.4, 1.6, "sp"),
                 (1.6, 2.0, ""), (2.0, 2.5, "{LG}"), (2.5, 3.0, "World"), (3.0, 3.1, "{ns}"),
                 (3.1, 3.3, "ls"), (3.3, 3.6, "sentence_end"), (3.6, 4.0, "{laugh}")]
    write_lebel_story(root, "wheretheressmoke", intervals, 40, {"UTS03": np.zeros((20, 3))})
    timings = LeBel2023(root).word_timings("wheretheressmoke")
    # Reference: lower-cased; a label is dropped if its lower-cased, brace-stripped form is a marker or empty.
    assert timings.words == ("hello", "world", "{laugh}")
    np.testing.assert_allclose(timings.onsets, [1.0, 2.5, 3.6])
    np.testing.assert_allclose(timings.midpoints, [1.2, 2.75, 3.8])
    assert LeBel2023(root, lowercase=False).word_timings("wheretheressmoke").words[0] == "Hello"


def test_phone_times_are_phone_midpoints_without_silences(tmp_path):
    root = tmp_path / "ds"
    words = [(0.0, 0.6, "the"), (0.6, 1.0, "sp"), (1.0, 1.6, "cat")]
    write_lebel_story(root, "souls", words, 40, {"UTS03": np.zeros((20, 3))})
    phones = [(0.0, 0.2, "DH"), (0.2, 0.6, "AH0"), (0.6, 1.0, "sp"), (1.0, 1.2, "K"), (1.2, 1.3, ""),
              (1.3, 1.4, "{NS}"), (1.4, 1.6, "T")]
    grid = root / "derivative" / "TextGrids" / "souls.TextGrid"
    grid.write_text(long_textgrid([("phone", phones), ("word", words)], 1.6))
    np.testing.assert_allclose(LeBel2023(root).phone_times("souls"), [0.1, 0.4, 1.1, 1.5])


def test_tr_grid_and_trimming_match_the_reference(ds003020):
    root, truth = ds003020
    ds = get_dataset("lebel2023", root=root)
    timings = ds.word_timings("souls")
    n_acquired = truth["souls"][1]
    # TRFile.simulate(N - 5) at 2.0 s, soundstarttime 10 s, mid-TR: t_k = 2k - 10 + 1.
    assert timings.tr_times.shape == (n_acquired - 5,)
    np.testing.assert_allclose(timings.tr_times[:3], [-9.0, -7.0, -5.0])
    np.testing.assert_allclose(np.diff(timings.tr_times), 2.0)
    assert timings.trim == (10, 5)
    assert timings.n_rows == n_acquired - 20
    assert ds.responses("UTS03", "souls").shape == (n_acquired - 20, 2)
    assert ds.tr("UTS03") == 2.0
    np.testing.assert_allclose(simulated_tr_times(10), np.arange(5) * 2.0 - 9.0)


def test_split_and_subjects_are_data_driven(ds003020):
    root, _ = ds003020
    ds = LeBel2023(root)
    assert ds.subjects == ["UTS01", "UTS03"]
    assert ds.split("UTS03") == (["alternateithicatom", "souls"], ["wheretheressmoke"])
    with pytest.raises(FileNotFoundError, match="wheretheressmoke.*triphase fetch lebel2023 --subjects UTS01"):
        ds.split("UTS01")
    with pytest.raises(FileNotFoundError, match="UTS05.*triphase fetch lebel2023 --subjects UTS05"):
        ds.stories("UTS05")
    assert ds.voxel_space("UTS03").mask_img is None
    assert "MNI" in ds.voxel_space("UTS03").reason


def test_planted_word_rate_aligns_at_the_true_delay(ds003020):
    """Responses = word rate delayed by 2 TRs: the adapter's grid recovers lag 2; a shifted grid loses it."""
    root, truth = ds003020
    ds = LeBel2023(root)
    for story in ("alternateithicatom", "souls", "wheretheressmoke"):
        timings = ds.word_timings(story)
        ones = np.ones((len(timings.words), 1))
        rate = story_design(ones, timings.midpoints, timings.tr_times, timings.trim, standardise=False)[:, 0]
        y = ds.responses("UTS03", story)[:, 0]
        assert rate.shape == y.shape
        corr = _lag_correlations(rate, y, range(-4, 7))
        assert max(corr, key=corr.get) == DELAY_TRS, (story, corr)
        assert corr[DELAY_TRS] > 0.8, (story, corr)
        # The same words on a grid misplaced by 3 TRs (e.g. audio onset taken as 4 s instead of 10 s).
        shifted = story_design(ones, timings.midpoints, timings.tr_times + 3 * TR, timings.trim,
                               standardise=False)[:, 0]
        assert _lag_correlations(shifted, y, [DELAY_TRS])[DELAY_TRS] < corr[DELAY_TRS] - 0.3, story


def test_row_mismatch_names_story_and_both_counts(ds003020):
    root, truth = ds003020
    path = root / "derivative" / "preprocessed_data" / "UTS03" / "souls.hf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=np.zeros((101, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"story 'souls'.*101 TRs.*100 rows"):
        LeBel2023(root).responses("UTS03", "souls")


def test_missing_files_name_the_fetch_command(ds003020, tmp_path):
    root, _ = ds003020
    with pytest.raises(FileNotFoundError, match="triphase fetch lebel2023"):
        LeBel2023(tmp_path / "nowhere")
    (root / "derivative" / "TextGrids" / "souls.TextGrid").unlink()
    with pytest.raises(FileNotFoundError, match=r"souls.TextGrid.*triphase fetch lebel2023 --subjects UTS03 --stories souls"):
        LeBel2023(root).word_timings("souls")
    respdict = json.loads((root / "derivative" / "respdict.json").read_text())
    del respdict["alternateithicatom"]
    (root / "derivative" / "respdict.json").write_text(json.dumps(respdict))
    with pytest.raises(KeyError, match="alternateithicatom"):
        LeBel2023(root).word_timings("alternateithicatom")
    with h5py.File(root / "derivative" / "preprocessed_data" / "UTS03" / "wheretheressmoke.hf5", "w") as handle:
        handle.create_dataset("resp", data=np.zeros((110, 2), dtype=np.float32))
    with pytest.raises(KeyError, match="no dataset 'data'"):
        LeBel2023(root).responses("UTS03", "wheretheressmoke")


def test_fetch_offline_gives_the_command_and_the_place(tmp_path, monkeypatch):
    from triphase.runs.fetch import fetch_lebel2023, lebel2023_include_patterns

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError) as err:
        fetch_lebel2023(["UTS03"], ["souls"], root=tmp_path / "ds")
    message = str(err.value)
    assert "openneuro-py download --dataset=ds003020" in message
    assert "--include=derivative/preprocessed_data/UTS03/souls.hf5" in message
    assert str(tmp_path / "ds" / "derivative") in message
    assert lebel2023_include_patterns(["UTS01", "UTS03"]) == [
        "derivative/respdict.json", "derivative/TextGrids/*",
        "derivative/preprocessed_data/UTS01/*", "derivative/preprocessed_data/UTS03/*"]
    with pytest.raises(ValueError, match="UTS9"):
        lebel2023_include_patterns(["UTS9"])


def test_brain_data_accepts_the_adapter(ds003020):
    from triphase.brain.sweep import BrainData

    root, truth = ds003020
    data = BrainData(LeBel2023(root), "UTS03")
    assert data.test == ["wheretheressmoke"]
    assert data.responses["souls"].shape == (truth["souls"][1] - 20, 2)
    assert data.regions is None


def test_identity_changes_with_the_subjects_files_and_not_otherwise(ds003020):
    root, _ = ds003020
    ds = LeBel2023(root)
    first = ds.identity("UTS03")
    names = [entry[0] for entry in first["files"]]
    assert names == ["derivative/TextGrids/alternateithicatom.TextGrid", "derivative/TextGrids/souls.TextGrid",
                     "derivative/TextGrids/wheretheressmoke.TextGrid",
                     "derivative/preprocessed_data/UTS03/alternateithicatom.hf5",
                     "derivative/preprocessed_data/UTS03/souls.hf5",
                     "derivative/preprocessed_data/UTS03/wheretheressmoke.hf5", "derivative/respdict.json"]
    ds.responses("UTS03", "souls")  # reading changes nothing
    assert LeBel2023(root).identity("UTS03") == first
    # another subject's file rewritten: not UTS03's data
    other = root / "derivative" / "preprocessed_data" / "UTS01" / "souls.hf5"
    stat = other.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ds.identity("UTS03") == first
    # one of UTS03's response files replaced under the same root
    path = root / "derivative" / "preprocessed_data" / "UTS03" / "souls.hf5"
    with h5py.File(path, "r") as handle:
        data = handle["data"][...]
    stat = path.stat()
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=data[::-1])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # timestamps may be coarser than the test
    changed = ds.identity("UTS03")
    assert changed != first
    assert [e[0] for e in changed["files"] if e not in first["files"]] == ["derivative/preprocessed_data/UTS03/souls.hf5"]
    # a TextGrid rewritten
    grid = root / "derivative" / "TextGrids" / "souls.TextGrid"
    stat = grid.stat()
    grid.write_bytes(grid.read_bytes())
    os.utime(grid, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ds.identity("UTS03") != changed
