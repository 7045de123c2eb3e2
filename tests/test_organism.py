import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from triphase.models import storyworld
from triphase.models.organism import (COPY_WARMUP_BLOCK, COPY_WARMUP_DATA, CORPUS_DATA, H100_BF16_PEAK_FLOPS,
                                      OrganismConfig, _batch, complete_steps, copy_warmup_batch,
                                      expected_training_seconds, prepare_corpus, run_dir, run_info,
                                      train_organism, training_flops, training_log)


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


# --------------------------------------------------------------------------- optional fields, GPU path
def test_optional_fields_default_to_older_configs_and_keep_their_hash():
    full = OrganismConfig.preset("tiny").to_dict()
    older = {k: v for k, v in full.items()
             if k not in ("repeat_fraction", "task_burst", "corpus_tokens", "dtype", "copy_warmup_steps")}
    assert OrganismConfig.from_dict(older) == OrganismConfig.from_dict(full)
    assert OrganismConfig.from_dict(older).hash == OrganismConfig.preset("tiny").hash
    assert OrganismConfig.from_dict({**full, "dtype": "bfloat16"}).hash != OrganismConfig.preset("tiny").hash
    for field, bad, message in [("dtype", "float16", "dtype must be one of"),
                                ("task_burst", 0, "task_burst must be a positive integer"),
                                ("corpus_tokens", -1, "corpus_tokens must be a non-negative integer"),
                                ("repeat_fraction", 0.97, "repeat_fraction must be in"),
                                ("repeat_fraction", -0.1, "repeat_fraction must be in"),
                                ("copy_warmup_steps", full["max_steps"], "copy_warmup_steps must be an integer"),
                                ("copy_warmup_steps", -1, "copy_warmup_steps must be an integer"),
                                ("copy_warmup_steps", True, "copy_warmup_steps must be an integer")]:
        with pytest.raises(ValueError, match=message):
            OrganismConfig.from_dict({**full, field: bad})


def test_training_flops_closed_form_and_gpu_preset_size():
    # closed form by hand for a 2-layer model: N = L (4 d^2 + 2 d f) + d V, C = 6 N D + 12 L T d D
    cfg = {**OrganismConfig.preset("tiny").to_dict(), "hidden_size": 8, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 300, "context_length": 16,
           "batch_size": 4, "max_steps": 10}
    n = 2 * (4 * 64 + 2 * 8 * 32) + 8 * 300
    d = 10 * 4 * 16
    f = training_flops(cfg)
    assert (f["matmul_parameters"], f["tokens"], f["flops"]) == (n, d, 6 * n * d + 12 * 2 * 16 * 8 * d)
    assert expected_training_seconds(cfg, peak_flops=1e9, utilisation=0.5) == pytest.approx(f["flops"] / 5e8)
    with pytest.raises(ValueError, match="utilisation"):
        expected_training_seconds(cfg, utilisation=0)
    gpu = OrganismConfig.preset("gpu")
    g = training_flops(gpu)
    assert 1e7 <= g["parameters"] < 1e8 and 1e8 <= g["tokens"] < 1e9          # tens of M params, hundreds of M tokens
    assert 15 <= g["tokens"] / g["parameters"] <= 25                         # ~compute-optimal (Hoffmann et al. 2022)
    assert gpu.dtype == "bfloat16" and gpu.tokens_per_step > 10 * OrganismConfig.preset("default").tokens_per_step
    assert gpu.training_tokens / gpu.unique_tokens == 4                     # four epochs over the corpus
    minutes = expected_training_seconds(gpu) / 60
    assert 1 < minutes < 60 and expected_training_seconds(gpu, H100_BF16_PEAK_FLOPS, 1.0) < minutes * 60


def test_learner_preset_is_a_smaller_model_on_more_tokens_within_the_default_compute():
    default, learner = training_flops("default"), training_flops("learner")
    assert learner["flops"] <= default["flops"]
    assert learner["parameters"] < default["parameters"] and learner["tokens"] > default["tokens"]
    # near the compute-optimal ~20 tokens per parameter, where the default has ~3
    assert default["tokens"] / default["parameters"] < 5 < 15 <= learner["tokens"] / learner["parameters"] <= 35
    cfg = OrganismConfig.preset("learner")
    assert cfg.repeat_fraction > 0 and cfg.task_burst > 1 and cfg.num_hidden_layers >= 2
    assert cfg.repeat_fraction + cfg.task_fraction < 1
    assert OrganismConfig.preset("default").repeat_fraction == 0 and OrganismConfig.preset("default").task_burst == 1


def test_learner_corpus_at_tiny_size_is_deterministic_and_mostly_repeat_documents(fresh_home):
    """The learner's corpus options through prepare_corpus, with tiny dims: same tokens twice, spans recur."""
    learner = OrganismConfig.preset("learner").to_dict()
    tiny = OrganismConfig.preset("tiny").to_dict()
    dims = ("tokenizer_documents", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "context_length", "batch_size", "heldout_sequences")
    cfg = OrganismConfig.from_dict({**learner, **{k: tiny[k] for k in dims}, "max_steps": 4, "checkpoint_every": 4})
    first = np.load(prepare_corpus(cfg, progress=False) / "train_tokens.npy")
    again = np.load(prepare_corpus(OrganismConfig.from_dict(cfg.to_dict()), progress=False) / "train_tokens.npy")
    assert np.array_equal(first, again)
    text = AutoTokenizer.from_pretrained(run_dir(cfg) / "data" / "tokenizer").decode(first.tolist())
    frames = sum(text.count(frame + ": ") for frame in storyworld.REPEAT_FRAMES)
    assert frames > 5 * text.count("Instruction:") and frames > 10
    # the held-out loss stays measured on plain stories of the held-out stream: no spans, no tasks
    heldout = np.load(run_dir(cfg) / "data" / "heldout_tokens.npy")
    heldout_text = AutoTokenizer.from_pretrained(run_dir(cfg) / "data" / "tokenizer").decode(heldout.tolist())
    assert not any(frame + ": " in heldout_text for frame in storyworld.REPEAT_FRAMES)
    assert "Instruction:" not in heldout_text
    assert len(heldout) == cfg.heldout_sequences * cfg.context_length


def test_epochs_reshuffle_and_one_pass_keeps_the_old_order():
    cfg = OrganismConfig.from_dict({**OrganismConfig.preset("tiny").to_dict(), "batch_size": 4})
    n_seq = 6
    tokens = np.repeat(np.arange(n_seq), cfg.context_length)  # sequence i is all i
    order = np.random.default_rng([cfg.train_seed, 1]).permutation(n_seq)
    rows = np.concatenate([_batch(tokens, order, step, cfg)[:, 0].numpy() for step in range(6)])  # 4 epochs
    epochs = rows.reshape(4, n_seq)
    assert epochs[0].tolist() == order.tolist()                       # the first epoch: the one-pass order
    assert all(sorted(e) == list(range(n_seq)) for e in epochs)       # every epoch sees each sequence once
    assert len({tuple(e) for e in epochs}) > 1                        # later epochs are reshuffled


def test_gpu_code_path_at_tiny_size_bf16_autocast_on_cpu(fresh_home):
    """The gpu config's fields (bf16 autocast, several epochs, bursty text) with tiny dims, on CPU."""
    gpu = OrganismConfig.preset("gpu").to_dict()
    tiny = OrganismConfig.preset("tiny").to_dict()
    dims = ("tokenizer_documents", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "context_length", "batch_size", "max_steps", "warmup_steps", "learning_rate",
            "checkpoint_every", "heldout_sequences")
    cfg = OrganismConfig.from_dict({**gpu, **{k: tiny[k] for k in dims}, "max_steps": 24, "checkpoint_every": 8,
                                    "corpus_tokens": 6 * tiny["batch_size"] * tiny["context_length"],
                                    "repeat_fraction": 0.2, "task_burst": 3})
    assert cfg.dtype == "bfloat16" and cfg.unique_tokens < cfg.training_tokens
    path = train_organism(cfg, progress=False, device="cpu")
    info = json.loads((path / "run.json").read_text())
    assert info["status"] == "complete" and info["device"] == "cpu" and "estimate" in info["compute_estimate"]
    assert complete_steps(path) == cfg.checkpoint_steps
    tokens = np.load(path / "data" / "train_tokens.npy")
    assert cfg.unique_tokens <= len(tokens) < cfg.training_tokens      # several epochs over a smaller corpus
    log = training_log(cfg).dropna(subset=["heldout_loss"])
    assert np.isfinite(log["heldout_loss"]).all()
    assert log["heldout_loss"].iloc[-1] < log["heldout_loss"].iloc[0] - 0.5
    from triphase.models.loading import load_checkpoint
    from triphase.models.series import organism_series

    series = organism_series("gpu-tiny", cfg)
    model, tok = load_checkpoint(series.final, device="cpu")
    assert model.dtype == torch.float32                                 # mixed precision: float32 weights
    ids = torch.tensor([tok("Anna is in the kitchen.")["input_ids"]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    with pytest.raises(ValueError, match="device must be one of"):
        train_organism(cfg, progress=False, device="tpu")


def _repeated_prefix(row: np.ndarray) -> bool:
    """True when the row starts with a block (of an allowed length) that is repeated right after it."""
    low, high = COPY_WARMUP_BLOCK
    return any(np.array_equal(row[:n], row[n:2 * n]) for n in range(low, min(high, len(row) // 2) + 1))


def test_copy_warmup_rows_are_repeated_random_blocks_seeded_by_step():
    cfg = OrganismConfig.from_dict({**OrganismConfig.preset("tiny").to_dict(), "copy_warmup_steps": 10})
    vocabulary = np.arange(3, 380)
    batch = copy_warmup_batch(4, cfg, vocabulary)
    assert batch.shape == (cfg.tokens_per_step // cfg.context_length, cfg.context_length)  # as many tokens as the corpus
    assert np.isin(batch, vocabulary).all() and all(_repeated_prefix(row) for row in batch)
    np.testing.assert_array_equal(batch, copy_warmup_batch(4, cfg, vocabulary))
    assert not np.array_equal(batch, copy_warmup_batch(5, cfg, vocabulary))
    other_seed = OrganismConfig.from_dict({**cfg.to_dict(), "train_seed": 1})
    assert not np.array_equal(batch, copy_warmup_batch(4, other_seed, vocabulary))
    # the corpus is sized for the steps after the warm-up
    assert cfg.corpus_training_tokens == (cfg.max_steps - 10) * cfg.tokens_per_step == cfg.unique_tokens


def test_copier_preset_and_a_tiny_copy_warmup_run(fresh_home):
    copier = OrganismConfig.preset("copier")
    assert copier.copy_warmup_steps == 400 < copier.max_steps and copier.num_hidden_layers == 2
    from triphase.models.series import load_presets
    from triphase.runs.config import load_run_config

    assert load_presets()["organism-copier"]["config"] == "copier"
    assert load_run_config("copier").series == ["organism-copier"]
    cfg = OrganismConfig.from_dict({**OrganismConfig.preset("tiny").to_dict(), "max_steps": 24,
                                    "checkpoint_every": 8, "copy_warmup_steps": 8})
    path = train_organism(cfg, progress=False, device="cpu")
    log = training_log(cfg)
    assert log.loc[log["step"].between(1, 8), "data"].eq(COPY_WARMUP_DATA).all()
    assert log.loc[log["step"] > 8, "data"].eq(CORPUS_DATA).all()
    tokens = np.load(path / "data" / "train_tokens.npy")
    assert len(tokens) >= cfg.unique_tokens and cfg.unique_tokens == 16 * cfg.tokens_per_step
    assert complete_steps(path) == cfg.checkpoint_steps
