"""The real tier end to end: a run YAML switches the brain chapter to a hub series x LeBel UTS03.

The hub cache holds tiny GPTNeoX weights under ``EleutherAI/pythia-160m`` with
``stepN`` revisions, laid out as the hub lays it out; ds003020's files are
written where ``triphase fetch lebel2023`` puts them; ``HF_HUB_OFFLINE=1``. The
user's command (``triphase run real.yaml``) executes notebook 01 with
papermill through the real loading code; nothing is mocked.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT
from fixtures_real import ENGLISH_TEXT, tiny_model_folder, train_bpe_tokenizer, write_ds003020, write_hub_revision

REPO = "EleutherAI/pythia-160m"
REVISIONS = ("step0", "step1000", "step143000")


@pytest.mark.slow
def test_run_yaml_switches_brain_chapter_to_pythia_and_lebel(tmp_path):
    home = tmp_path / "home"
    hf_home = tmp_path / "hf"
    tokenizer = train_bpe_tokenizer([ENGLISH_TEXT + " alpha beta gamma delta echo"])
    commits = {}
    for seed, revision in enumerate(REVISIONS):
        folder = tiny_model_folder(tmp_path / "weights" / revision, seed=seed, tokenizer=tokenizer)
        commits[revision] = write_hub_revision(hf_home / "hub", REPO, revision, folder)
    write_ds003020(home / "datasets" / "ds003020")

    book = tmp_path / "bookroot"
    book.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, book / name)
    for name in ("book", "notebooks"):
        shutil.copytree(REPO_ROOT / name, book / name, ignore=shutil.ignore_patterns("executed", "_build"))

    run_yaml = tmp_path / "real.yaml"
    run_yaml.write_text(yaml.safe_dump({
        "series": ["pythia-160m"], "checkpoints": list(REVISIONS), "dataset": "lebel2023",
        "subjects": ["UTS03"], "notebooks": ["01_brain_alignment"], "device": "cpu",
    }))
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRIPHASE_HOME=str(home), TRIPHASE_BOOK_ROOT=str(book), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "triphase.cli", "--quiet", "run", str(run_yaml), "--no-build"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])

    table = pd.read_parquet(home / "results" / "pythia-160m" / "lebel2023-UTS03" / "brain.parquet")
    model = table[(table["features"] == "model") & (table["region"] == "all")]
    assert sorted(model["checkpoint"].unique()) == sorted(REVISIONS)
    assert set(table["tier"]) == {"real"} and set(table["dataset"]) == {"lebel2023"}
    assert model.groupby("checkpoint")["layer"].nunique().eq(3).all()  # embeddings + 2 blocks of the tiny model
    assert (model.drop_duplicates("checkpoint").set_index("checkpoint")["commit"] == pd.Series(commits)).all()
    assert model["tokens_seen"].max() == 143000 * 2097152
    assert model["score_ceiling_normalised"].isna().all()  # no repeats of the test story: no ceiling, said so
    assert model["score_mean"].notna().all()

    executed = book / "book" / "executed" / "pythia-160m" / "lebel2023-UTS03" / "01_brain_alignment.ipynb"
    nb = nbformat.read(executed, as_version=4)
    text = "\n".join(o.get("text", "") if o.get("output_type") == "stream" else
                     "".join(o.get("data", {}).get("text/markdown", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "dataset lebel2023 subject UTS03" in text
    assert "Checkpoint integrity: all 3 checkpoints loaded" in text
    assert "no glass-brain maps" in text  # subject-space voxels have no MNI affine; the notebook says why
    assert "real tier" in text.lower()
