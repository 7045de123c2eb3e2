import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from triphase.models.organism import OrganismConfig, complete_steps, run_dir, run_info, train_organism, training_log


def test_tiny_run_has_pythia_schedule_and_log(tiny_organism):
    cfg = OrganismConfig.preset("tiny")
    assert [c.step for c in tiny_organism.checkpoints] == cfg.checkpoint_steps == [0, 1, 2, 4, 8, 16, 20, 40, 60]
    assert [c.tokens_seen for c in tiny_organism.checkpoints] == [s * cfg.batch_size * cfg.context_length
                                                                 for s in cfg.checkpoint_steps]
    log = training_log("tiny")
    assert list(log["step"]) == list(range(0, cfg.max_steps + 1))
    assert log.loc[log["checkpoint"], "step"].tolist() == cfg.checkpoint_steps
    # only checkpoint rows have a held-out loss
    assert log.loc[log["checkpoint"], "heldout_loss"].notna().all()
    assert log.loc[~log["checkpoint"], "heldout_loss"].isna().all()


def test_training_lowers_heldout_loss(tiny_organism):
    held = training_log("tiny").dropna(subset=["heldout_loss"])
    start, end = held["heldout_loss"].iloc[0], held["heldout_loss"].iloc[-1]
    vocab = run_info("tiny")["corpus"]["vocab_size"]
    assert start == pytest.approx(np.log(vocab), rel=0.1)  # an untrained model is near uniform
    assert end < start - 1.0


def test_checkpoints_load_as_hugging_face_models(tiny_organism):
    from triphase.models.loading import load_checkpoint

    model, tok = load_checkpoint(tiny_organism.final, device="cpu")
    assert model.config.model_type == "gpt_neox"
    assert model.config.intermediate_size == OrganismConfig.preset("tiny").intermediate_size
    text = "Anna walks into the kitchen. She is happy."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE round-trips exactly
    enc = tok(text, return_offsets_mapping=True)
    words = [text[a:b].strip() for a, b in enc["offset_mapping"]]
    assert "".join(words) == text.replace(" ", "")  # offsets cover the text without the spaces


def test_completed_run_is_reused_not_retrained(tiny_organism):
    path = run_dir("tiny")
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert train_organism("tiny", progress=False) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_interrupted_training_resumes_to_identical_weights(tiny_organism, fresh_home):
    # fresh home: the same config trains again from scratch, stopped after step 20
    path = train_organism("tiny", progress=False, stop_at_step=20)
    assert complete_steps(path) == [0, 1, 2, 4, 8, 16, 20]
    assert not (path / "run.json").exists()
    # a half-written checkpoint (as left by a kill during save) must be ignored
    (path / ".step40.abc.tmp").mkdir()
    train_organism("tiny", progress=False)
    assert complete_steps(path) == [0, 1, 2, 4, 8, 16, 20, 40, 60]
    resumed = load_file(path / "step60" / "model.safetensors")
    reference = load_file(tiny_organism.final.source + "/model.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5)
    log = pd.read_parquet(path / "training_log.parquet")
    assert list(log["step"]) == list(range(61))


def test_config_validation_names_the_field():
    good = OrganismConfig.preset("tiny").to_dict()
    with pytest.raises(ValueError, match="unknown field"):
        OrganismConfig.from_dict({**good, "layers": 3})
    with pytest.raises(ValueError, match="hidden_size .* divisible"):
        OrganismConfig.from_dict({**good, "hidden_size": 33})
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        OrganismConfig.from_dict({**good, "batch_size": 0})
    with pytest.raises(ValueError, match="unknown organism config 'huge'"):
        OrganismConfig.preset("huge")


def test_untrained_series_says_how_to_train(fresh_home):
    from triphase.models.series import get_series

    with pytest.raises(FileNotFoundError, match="triphase train --config tiny"):
        get_series("organism-tiny")
