"""Hub series: presets, revision patterns, the offline cache (through the real loading code), integrity."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fixtures_real import (
    ENGLISH_TEXT,
    sharded_checkpoint_folder,
    tiny_model_folder,
    train_bpe_tokenizer,
    write_hub_revision,
)

from triphase.models import hub, integrity
from triphase.models.series import get_series, models_table

REPO = "EleutherAI/pythia-14m"


def test_pythia_and_amber_patterns_are_generated():
    pythia = get_series("pythia-160m")
    names = [c.name for c in pythia.checkpoints]
    assert len(names) == 154
    assert names[:12] == ["step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64", "step128",
                          "step256", "step512", "step1000"]
    assert names[-1] == "step143000"
    assert pythia.checkpoints[-1].tokens_seen == 143000 * 2097152
    assert {c.tier for c in pythia.checkpoints} == {"real"}
    amber = get_series("amber")
    assert [c.name for c in amber.checkpoints][:2] == ["ckpt_000", "ckpt_001"] and len(amber) == 360
    assert amber.final.name == "ckpt_359"


def test_models_table_lists_every_family():
    table = models_table().set_index("name")
    for name in ["pythia-14m", "pythia-12b", "pythia-70m-deduped", "pythia-12b-deduped", "olmo-2-1124-7b",
                 "olmo-7b-0724", "amber", "llm-jp-3-1.8b"]:
        assert name in table.index, name
    assert table.loc["pythia-160m", "checkpoints"] == 154
    assert table.loc["pythia-160m", "tokens_per_step"] == 2097152
    assert table.loc["pythia-1b", "bf16_weights_gb"] == pytest.approx(2 * 1011781632 / 1e9, abs=0.05)
    assert table.loc["olmo-2-1124-7b", "checkpoints"] == "online"
    assert table.loc["amber", "revisions"] == "verified"
    assert "ja" in table.loc["llm-jp-3-13b", "languages"]


def test_online_only_lists_need_the_cache_or_an_explicit_list(fresh_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not known offline.*revisions"):
        get_series("olmo-2-1124-7b")
    # What list_branches stores after reading list_repo_refs online:
    path = hub.refs_cache_path("allenai/OLMo-2-1124-7B")
    path.write_text(json.dumps({"repo": "allenai/OLMo-2-1124-7B", "branches": [
        "main", "stage1-step2000-tokens9B", "stage1-step1000-tokens5B", "step150-tokens1B",
        "stage2-ingredient1-step1000-tokens5B"]}))
    series = get_series("olmo-2-1124-7b")
    assert [(c.name, c.step) for c in series.checkpoints] == [
        ("step150-tokens1B", 150), ("stage1-step1000-tokens5B", 1000), ("stage1-step2000-tokens9B", 2000)]
    assert series.checkpoints[1].tokens_seen == 1000 * 4194304
    inline = get_series({"name": "mine", "repo": "org/m", "revisions": ["stage1-step20-tokens1B", "ckpt_7"],
                         "tokens_per_step": 10})
    assert [(c.name, c.step, c.tokens_seen) for c in inline.checkpoints] == [
        ("ckpt_7", 7, 70), ("stage1-step20-tokens1B", 20, 200)]


def test_integrity_flags_planted_cases():
    flags = integrity.integrity_flags([
        {"checkpoint": "step0", "fingerprint": "a"},
        {"checkpoint": "step1", "fingerprint": "a"},      # step0 == step1 (a known Pythia report)
        {"checkpoint": "step2", "fingerprint": None},     # missing branch
        {"checkpoint": "step4", "fingerprint": "a"},      # equal to the previous *loaded* one
        {"checkpoint": "step8", "fingerprint": "z"},      # serves the final weights
        {"checkpoint": "step16", "fingerprint": "b"},
        {"checkpoint": "step143000", "fingerprint": "z"},
    ]).set_index("checkpoint")
    assert flags["same_as_previous"].to_dict() == {"step0": False, "step1": True, "step2": False, "step4": True,
                                                   "step8": False, "step16": False, "step143000": False}
    assert flags["same_as_final"].to_dict() == {"step0": False, "step1": False, "step2": False, "step4": False,
                                                "step8": True, "step16": False, "step143000": False}
    assert flags.loc["step2", "missing"] and "missing" in flags.loc["step2", "flag"]
    assert flags.loc["step16", "flag"] == ""


def test_offline_missing_revision_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = get_series("pythia-160m").checkpoints[5]
    with pytest.raises(hub.CheckpointMissingError) as err:
        hub.ensure_available(ckpt)
    message = str(err.value)
    assert "EleutherAI/pythia-160m@step16" in message
    assert "triphase fetch model pythia-160m --checkpoints step16" in message
    assert str(tmp_path / "hf" / "hub") in message
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        from triphase.runs.fetch import fetch_model

        fetch_model("pythia-160m", ["step0"])


def _snapshot(cache, revision):
    repo = cache / "models--EleutherAI--pythia-14m"
    return repo / "snapshots" / (repo / "refs" / revision).read_text()


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_incomplete_sharded_checkpoint_is_not_a_cached_snapshot(tmp_path, monkeypatch, kind):
    """Index present but a shard gone (file missing, or a snapshot link whose blob was deleted): missing offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf" / "hub"
    source = sharded_checkpoint_folder(tmp_path / "src", n_shards=3, kind=kind)
    shard = sorted(p.name for p in source.glob(f"*-of-*.{kind}"))[1]
    for rev in ("step0", "step1", "step2"):
        write_hub_revision(cache, REPO, rev, source, commit=f"{int(rev[-1]) + 1:040x}")
    ckpts = {c.name: c for c in get_series("pythia-14m").checkpoints}

    # complete: the index and every shard it names
    assert hub.cached_snapshot(REPO, "step0") == _snapshot(cache, "step0")
    assert hub.missing_weight_files(_snapshot(cache, "step0")) == []
    hub.ensure_available(ckpts["step0"])

    # a shard's snapshot link removed (an interrupted download)
    (_snapshot(cache, "step1") / shard).unlink()
    assert hub.cached_snapshot(REPO, "step1") is None
    with pytest.raises(hub.CheckpointMissingError, match=f"pythia-14m@step1 is incomplete .*lacks {shard}") as err:
        hub.ensure_available(ckpts["step1"])
    assert err.value.missing_files == [shard]
    assert "triphase fetch model pythia-14m --checkpoints step1" in str(err.value)

    # a dangling link: the snapshot file is there, its blob is not (step0 and step2 share the blobs)
    link = _snapshot(cache, "step2") / shard
    assert link.is_symlink()
    os.unlink(link.resolve())
    assert link.is_symlink() and not link.exists()
    assert hub.cached_snapshot(REPO, "step2") is None
    assert hub.cached_snapshot(REPO, "step0") is None  # its link dangles too now
    with pytest.raises(hub.CheckpointMissingError, match="step2"):
        hub.ensure_available(ckpts["step2"])

    # the same checks on a plain copy (no blobs), and an unreadable index
    write_hub_revision(cache, REPO, "step4", source, commit="4" * 40, use_blobs=False)
    assert hub.cached_snapshot(REPO, "step4") == _snapshot(cache, "step4")
    index = next(_snapshot(cache, "step4").glob("*.index.json"))
    index.write_text("{not json")
    assert hub.cached_snapshot(REPO, "step4") is None
    assert hub.missing_weight_files(_snapshot(cache, "step4")) == [index.name]


def test_single_file_weights_and_no_weights(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert hub.missing_weight_files(folder) is None
    (folder / "model.safetensors").write_bytes(b"x")
    assert hub.missing_weight_files(folder) == []
    os.symlink(tmp_path / "gone", folder / "pytorch_model.bin")  # a dangling extra file does not matter
    assert hub.missing_weight_files(folder) == []
    (folder / "model.safetensors").unlink()
    assert hub.missing_weight_files(folder) is None


def test_snapshot_fetch_refetches_an_incomplete_checkpoint(tmp_path, monkeypatch):
    """Online: a complete cached revision is skipped; an incomplete one goes to snapshot_download again."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    cache = tmp_path / "hub"
    source = sharded_checkpoint_folder(tmp_path / "src", n_shards=2)
    for rev in ("step0", "step1"):
        write_hub_revision(cache, REPO, rev, source, commit=f"{int(rev[-1]) + 1:040x}")
    shard = sorted(p.name for p in source.glob("*-of-*.safetensors"))[0]
    (_snapshot(cache, "step1") / shard).unlink()
    calls = []

    def fake_download(repo_id, revision, allow_patterns, cache_dir, max_workers):
        # what the hub client does for a missing file: fetch it into the snapshot
        calls.append((repo_id, revision))
        write_hub_revision(cache_dir, repo_id, revision, source, commit=f"{int(revision[-1]) + 1:040x}")
        return str(_snapshot(Path(cache_dir), revision))

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    out = hub.snapshot_fetch(REPO, ["step0", "step1"], cache_dir=cache, progress=False)
    assert calls == [(REPO, "step1")]
    assert out == {"step0": _snapshot(cache, "step0"), "step1": _snapshot(cache, "step1")}
    assert hub.cached_snapshot(REPO, "step1", cache) is not None

    # a download that stays incomplete is an error naming the shard, not a silent success
    (_snapshot(cache, "step1") / shard).unlink()
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, revision, **kw: str(_snapshot(cache, revision)))
    with pytest.raises(FileNotFoundError, match=f"step1: the download is incomplete.*{shard}"):
        hub.snapshot_fetch(REPO, ["step1"], cache_dir=cache, progress=False)


def test_fingerprint_is_dtype_stable_and_weight_sensitive():
    import torch
    from fixtures_real import tiny_model

    a, b = tiny_model(50, seed=0), tiny_model(50, seed=1)
    assert integrity.weight_fingerprint(a) != integrity.weight_fingerprint(b)
    assert integrity.weight_fingerprint(a) == integrity.weight_fingerprint(a.to(torch.bfloat16))
    with torch.no_grad():
        next(iter(a.parameters()))[0, 0] += 1.0  # the first tensor is always sampled, from element 0
    assert integrity.weight_fingerprint(a) != integrity.weight_fingerprint(b.to(torch.float32))


# --------------------------------------------------------------------------- offline end to end
SWEEP_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from triphase.models import integrity
    from triphase.models.checkpoints import select_checkpoints
    from triphase.models.features import word_hidden_states
    from triphase.models.series import get_series

    words = sys.argv[2].split()
    series = get_series("pythia-14m")                      # the preset, as a user names it
    chosen = select_checkpoints(series.checkpoints, ["step0", "step1", "step2", "step4", "step8", "step16",
                                                     "step143000"])
    rows, skipped = [], {}
    for item in integrity.iter_loaded(chosen, device="cpu"):
        if not item.ok:
            skipped[item.checkpoint.name] = item.reason
            rows.append({"checkpoint": item.checkpoint.name, **item.identity})
            continue
        feats = word_hidden_states(item.model, item.tokenizer, words, context=16)
        np.save(f"{sys.argv[1]}/{item.checkpoint.name}.npy", feats)
        rows.append({"checkpoint": item.checkpoint.name, **item.identity, "step": item.checkpoint.step,
                     "tokens_seen": item.checkpoint.tokens_seen})
    flags = integrity.integrity_flags(rows)
    print(json.dumps({"rows": rows, "skipped": skipped, "flags": flags.to_dict(orient="list")}))
""")


@pytest.fixture(scope="module")
def weight_folders(tmp_path_factory):
    """Three different tiny GPTNeoX checkpoints sharing one tokenizer."""
    base = tmp_path_factory.mktemp("weights")
    tokenizer = train_bpe_tokenizer([ENGLISH_TEXT])
    return [tiny_model_folder(base / f"w{i}", seed=i, tokenizer=tokenizer) for i in range(3)]


def test_offline_sweep_through_the_hub_cache(weight_folders, tmp_path):
    """A hub cache laid out as the hub does, HF_HUB_OFFLINE=1, the user's calls; no mock of from_pretrained."""
    hf_home = tmp_path / "hf"
    cache = hf_home / "hub"
    w0, w1, w2 = weight_folders
    # step1 == step2 (consecutive identical), step8 == final, step16 missing.
    planted = {"step0": w0, "step1": w1, "step2": w1, "step4": w0, "step8": w2, "step143000": w2}
    commits = {rev: write_hub_revision(cache, REPO, rev, folder) for rev, folder in planted.items()}
    assert (cache / "models--EleutherAI--pythia-14m" / "refs" / "step0").read_text() == commits["step0"]
    out = tmp_path / "features"
    out.mkdir()
    words = ENGLISH_TEXT.split()[:12]
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRIPHASE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT, str(out), " ".join(words)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["checkpoint"]: r for r in result["rows"]}

    # The missing branch is reported by name with the fetch command, and the sweep went on.
    assert list(result["skipped"]) == ["step16"]
    assert "triphase fetch model pythia-14m --checkpoints step16" in result["skipped"]["step16"]
    assert rows["step143000"]["fingerprint"] is not None
    # Commits resolved from refs/<revision>.
    for rev, commit in commits.items():
        assert rows[rev]["commit"] == commit, rev
    # Planted duplicates are flagged, nothing else (step143000 follows step8, the last *loaded* one).
    flags = dict(zip(result["flags"]["checkpoint"], zip(result["flags"]["same_as_previous"],
                                                        result["flags"]["same_as_final"])))
    assert flags == {"step0": (False, False), "step1": (False, False), "step2": (True, False),
                     "step4": (False, False), "step8": (False, True), "step16": (False, False),
                     "step143000": (True, False)}
    assert rows["step4"]["tokens_seen"] == 4 * 2097152

    # The features come from the planted weights: compare with a direct load of the source folder.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from triphase.models.features import word_hidden_states

    for rev, folder in (("step0", w0), ("step2", w1), ("step143000", w2)):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        expected = word_hidden_states(model, AutoTokenizer.from_pretrained(folder), words, context=16)
        got = np.load(out / f"{rev}.npy")
        assert got.shape == (3, len(words), 16)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.load(out / "step0.npy"), np.load(out / "step1.npy"))


def _run_offline(script: str, hf_home, home) -> dict:
    """Run ``script`` in a fresh offline process on the hub cache ``hf_home``; its last stdout line is JSON."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRIPHASE_HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PIPELINES_SCRIPT = textwrap.dedent("""
    import json, warnings
    import pandas as pd
    from triphase import results_dir
    from triphase.brain.sweep import brain_alignment
    from triphase.internal.sweep import internal_states
    from triphase.models.integrity import MissingCheckpointWarning, load_flags
    from triphase.tasks.sweep import downstream_tasks

    chosen = ["step0", "step1", "step2", "step16", "step143000"]
    tiny = {"preset": "tiny"}
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = {
            "brain": brain_alignment("pythia-14m", checkpoints=chosen, dataset="simulated", subject="sim01",
                                     dataset_options=tiny, n_perm=20, n_boot=20, controls=[], device="cpu",
                                     progress=False),
            "internal": internal_states("pythia-14m", checkpoints=chosen, dataset="simulated", subject="sim01",
                                        dataset_options=tiny, n_stories=2, token_budget=64, probe_splits=2,
                                        induction_sequences=2, induction_length=8, device="cpu", progress=False),
            "tasks": downstream_tasks("pythia-14m", checkpoints=chosen, tasks=["yesno"], n_items=3, few_shot=0,
                                      device="cpu", progress=False),
        }
    folder = results_dir("pythia-14m", "simulated", "sim01")
    for name, table in tables.items():
        ids = table[["checkpoint", "commit", "fingerprint", "integrity_flag"]].drop_duplicates()
        out[name] = {"identity": ids.to_dict(orient="records"),
                     "flags": load_flags(folder, name)[["checkpoint", "missing", "flag"]].to_dict(orient="records"),
                     "on_disk": sorted(pd.read_parquet(folder / {"brain": "brain.parquet", "internal": "internal.parquet",
                                                                  "tasks": "tasks.parquet"}[name])["checkpoint"].unique())}
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, MissingCheckpointWarning)]
    print(json.dumps(out))
""")


def test_every_pipeline_skips_a_missing_branch_and_flags_duplicates(weight_folders, tmp_path):
    """brain, internal states and tasks through the offline hub cache: identity columns, flags, skip by name."""
    hf_home = tmp_path / "hf"
    w0, w1, w2 = weight_folders
    # step1 == step2 (consecutive identical weights); step16 is missing from the cache.
    planted = {"step0": w0, "step1": w1, "step2": w1, "step143000": w2}
    commits = {rev: write_hub_revision(hf_home / "hub", REPO, rev, folder) for rev, folder in planted.items()}
    result = _run_offline(PIPELINES_SCRIPT, hf_home, tmp_path / "home")
    loaded = ["step0", "step1", "step2", "step143000"]
    for name in ("brain", "internal", "tasks"):
        part = result[name]
        assert part["on_disk"] == sorted(loaded), name
        identity = {r["checkpoint"]: r for r in part["identity"]}
        assert sorted(identity) == sorted(loaded), name
        for rev in loaded:
            assert identity[rev]["commit"] == commits[rev], (name, rev)
        assert identity["step1"]["fingerprint"] == identity["step2"]["fingerprint"] != identity["step0"]["fingerprint"]
        assert identity["step2"]["integrity_flag"] == "identical weights to the previous checkpoint step1", name
        assert [identity[r]["integrity_flag"] for r in ("step0", "step1", "step143000")] == ["", "", ""], name
        flags = {r["checkpoint"]: r for r in part["flags"]}
        assert list(flags) == ["step0", "step1", "step2", "step16", "step143000"], name
        assert flags["step16"]["missing"] and flags["step16"]["flag"].startswith("missing: "), name
        assert "triphase fetch model pythia-14m --checkpoints step16" in flags["step16"]["flag"], name
    # each pipeline warned once, by name
    assert len(result["warnings"]) == 3
    assert all("skipped checkpoint step16" in w for w in result["warnings"])


FINAL_MISSING_SCRIPT = textwrap.dedent("""
    import json, warnings
    import numpy as np
    import pandas as pd
    from triphase import cache_dir, results_dir
    from triphase.internal import measures
    from triphase.internal.sweep import internal_states
    from triphase.models.integrity import MissingCheckpointWarning, load_flags

    chosen = ["step0", "step1", "step2", "step16", "step143000"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = internal_states("pythia-14m", checkpoints=chosen, dataset="simulated", subject="sim01",
                                dataset_options={"preset": "tiny"}, n_stories=2, token_budget=64, probe_splits=2,
                                induction_sequences=2, induction_length=8, device="cpu", progress=False)
    folder = results_dir("pythia-14m", "simulated", "sim01")
    cka = table.query("measure == 'cka_final'")
    # CKA recomputed from the cached subsampled states, against each candidate reference
    states = {name: np.load(next((cache_dir("internal") / "pythia-14m" / name).glob("states-*.npy"))).astype(float)
              for name in ("step0", "step1", "step2")}
    recomputed = {ref: {name: [measures.linear_cka(s[i], states[ref][i]) for i in range(len(s))]
                        for name, s in states.items()} for ref in states}
    print(json.dumps({
        "checkpoints": sorted(table["checkpoint"].unique()),
        "cka_final": {name: g.sort_values("layer")["value"].tolist() for name, g in cka.groupby("checkpoint")},
        "recomputed": recomputed,
        "integrity_flag": table.drop_duplicates("checkpoint").set_index("checkpoint")["integrity_flag"].to_dict(),
        "on_disk": sorted(pd.read_parquet(folder / "internal.parquet")["checkpoint"].unique()),
        "flags": load_flags(folder, "internal")[["checkpoint", "missing", "flag"]].to_dict(orient="records"),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, MissingCheckpointWarning)],
    }))
""")


def test_internal_sweep_goes_on_when_the_final_checkpoint_is_missing(weight_folders, tmp_path):
    """The final branch (step143000) missing: the last available checkpoint is CKA's reference, flagged by name."""
    hf_home = tmp_path / "hf"
    w0, w1, w2 = weight_folders
    for rev, folder in {"step0": w0, "step1": w1, "step2": w2}.items():  # step16 and step143000 missing
        write_hub_revision(hf_home / "hub", REPO, rev, folder)
    result = _run_offline(FINAL_MISSING_SCRIPT, hf_home, tmp_path / "home")
    loaded = ["step0", "step1", "step2"]
    assert result["checkpoints"] == result["on_disk"] == loaded

    # the reference is step2, the last available checkpoint: CKA 1 to itself, and every value is CKA to step2
    assert np.allclose(result["cka_final"]["step2"], 1.0, atol=1e-6)
    for name in loaded:
        np.testing.assert_allclose(result["cka_final"][name], result["recomputed"]["step2"][name], rtol=1e-9)
        assert not np.allclose(result["recomputed"]["step1"][name], result["recomputed"]["step2"][name])
    assert max(result["cka_final"]["step0"]) < 1 - 1e-3

    # flagged by name: in the table (integrity_flag), the integrity file and a warning
    note = ("cka_final reference: the final checkpoint step143000 is missing, so cka_final compares with step2 "
            "(the last available checkpoint)")
    assert result["integrity_flag"] == {"step0": "", "step1": "", "step2": note}
    flags = {r["checkpoint"]: r for r in result["flags"]}
    assert list(flags) == ["step0", "step1", "step2", "step16", "step143000"]
    assert flags["step2"]["flag"] == note and not flags["step2"]["missing"]
    assert flags["step143000"]["missing"]
    assert "triphase fetch model pythia-14m --checkpoints step143000" in flags["step143000"]["flag"]
    warned = result["warnings"]
    assert sum("skipped checkpoint step143000" in w for w in warned) == 1
    assert sum("skipped checkpoint step16" in w for w in warned) == 1
    assert any("final checkpoint step143000 is missing; cka_final compares with step2" in w for w in warned)
