"""Seeds as the unit of replication (series and run presets), and the period-varying induction probe.

The induction-probe tests belong with the other measures (tests/test_internal.py); they are here
because that file is edited by another engineer at the moment.
"""
import numpy as np
import pytest
from safetensors.torch import load_file

from triphase.internal import measures as internal
from triphase.models.organism import OrganismConfig, run_dir, train_organism
from triphase.models.series import get_series, load_presets
from triphase.runs.config import load_run_config

SEED_SERIES = {"organism": ("default", 0), "organism-seed1": ("default-seed1", 1),
               "organism-seed2": ("default-seed2", 2), "organism-tiny": ("tiny", 0),
               "organism-tiny-seed1": ("tiny-seed1", 1), "organism-tiny-seed2": ("tiny-seed2", 2)}


# --------------------------------------------------------------------------- seeds
def test_seed_series_differ_from_their_base_in_the_training_seed_only():
    presets = load_presets()
    for series, (config, seed) in SEED_SERIES.items():
        assert presets[series] ["loader"] == "organism" and presets[series]["config"] == config
        cfg = OrganismConfig.preset(config).to_dict()
        base = OrganismConfig.preset(config.split("-")[0]).to_dict()
        assert cfg["train_seed"] == seed
        assert {k: v for k, v in cfg.items() if k != "train_seed"} == \
            {k: v for k, v in base.items() if k != "train_seed"}
    hashes = {OrganismConfig.preset(c).hash for c, _ in SEED_SERIES.values()}
    assert len(hashes) == len(SEED_SERIES)                          # each seed is a run of its own


@pytest.mark.parametrize("preset, series", [
    ("seeds", ["organism", "organism-seed1", "organism-seed2"]),
    ("seeds_tiny", ["organism-tiny", "organism-tiny-seed1", "organism-tiny-seed2"])])
def test_seed_run_presets_load_with_three_series(preset, series):
    cfg = load_run_config(preset)
    assert cfg.series_names() == series
    assert "04_phases" in cfg.notebooks                              # the synthesis sees the seeds together


def test_tiny_seeds_train_on_identical_corpora_into_different_weights(tiny_organism):
    seed1 = train_organism("tiny-seed1", progress=False)
    seed0 = run_dir("tiny")
    assert np.array_equal(np.load(seed0 / "data" / "train_tokens.npy"), np.load(seed1 / "data" / "train_tokens.npy"))
    assert (seed0 / "data" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (seed1 / "data" / "tokenizer" / "tokenizer.json").read_bytes()
    for step in ("step0", "step60"):
        a = load_file(seed0 / step / "model.safetensors")
        b = load_file(seed1 / step / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a if a[k].numel() > 1 and a[k].std() > 0)
    series = get_series("organism-tiny-seed1")
    assert [c.step for c in series.checkpoints] == [c.step for c in tiny_organism.checkpoints]


# --------------------------------------------------------------------------- induction probe
def _causal_uniform(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def _offset_head(n: int, offset: int) -> np.ndarray:
    """Attend exactly ``offset`` positions back (to position 0 before that): a positional copy."""
    a = np.zeros((n, n))
    for q in range(n):
        a[q, max(q - offset, 0)] = 1.0
    return a


def _induction_head(tokens: np.ndarray) -> np.ndarray:
    """Attend to the token after the previous occurrence of the current token (else to itself)."""
    targets = internal.prefix_matching_targets(tokens)
    batch, n = tokens.shape
    a = np.zeros((batch, n, n))
    for b in range(batch):
        for q in range(n):
            a[b, q, targets[b, q] if targets[b, q] >= 0 else q] = 1.0
    return a


def _scores(tokens: np.ndarray, trained_period: int) -> np.ndarray:
    """Prefix-matching scores of three heads: induction, positional copy of `trained_period`, uniform."""
    batch, n = tokens.shape
    copy_back = trained_period - 1          # the token after the previous occurrence, one period ago
    heads = np.stack([_induction_head(tokens), np.broadcast_to(_offset_head(n, copy_back), (batch, n, n)),
                      np.broadcast_to(_causal_uniform(n), (batch, n, n))], axis=1)
    return internal.prefix_matching_score(heads, tokens)


def test_probe_tokens_repeat_fresh_blocks_at_each_period():
    probe = internal.induction_probe_tokens(6, range(5, 400), seed=3)
    assert sorted(probe) == sorted(internal.INDUCTION_PROBE_PERIODS)
    for period, tokens in probe.items():
        assert tokens.shape == (6, period * internal.INDUCTION_PROBE_REPEATS)
        block = tokens[:, :period]
        assert all(len(set(row)) == period for row in block.tolist())   # distinct within a block
        assert (tokens == np.tile(block, (1, internal.INDUCTION_PROBE_REPEATS))).all()
        assert tokens.min() >= 5
    again = internal.induction_probe_tokens(6, range(5, 400), seed=3)
    assert all(np.array_equal(probe[p], again[p]) for p in probe)
    with pytest.raises(ValueError, match="occur in the training text"):
        internal.induction_probe_tokens(2, range(100), periods=(7, 12), training_periods=(12,))
    with pytest.raises(ValueError, match="two periods"):
        internal.induction_probe_tokens(2, range(100), periods=(7,))


def test_positional_copy_scores_only_at_its_period_and_is_not_induction():
    trained_period = 12
    probe = internal.induction_probe_tokens(4, range(1000), periods=(7, 12, 19, 31), seed=1)
    scores = {p: _scores(t, trained_period) for p, t in probe.items()}
    induction, positional, uniform = (np.array([scores[p][h] for p in probe]) for h in range(3))
    assert np.allclose(induction, 1.0)                                   # planted induction: 1 at every period
    assert positional[list(probe).index(trained_period)] == pytest.approx(1.0)
    assert np.allclose(np.delete(positional, list(probe).index(trained_period)), 0.0)
    robust = internal.period_robust_induction_score(scores)
    assert robust[0] == pytest.approx(1.0) and robust[1] == pytest.approx(0.0)
    assert robust[2] < 0.2                                               # uniform: the closed form below
    # uniform attention's closed form: mean of 1 / (q + 1) over the repeated query positions
    for period, tokens in probe.items():
        n = tokens.shape[1]
        assert scores[period][2] == pytest.approx(np.mean(1.0 / (np.arange(period, n) + 1)))
    # the offset head is what offset_attention_score finds
    n = probe[7].shape[1]
    a = np.broadcast_to(_offset_head(n, trained_period - 1), (1, 1, n, n))
    assert internal.offset_attention_score(a, trained_period - 1)[0] == pytest.approx(1.0)
    # at another offset only query 3 matches (it attends to position 0, clipped): 1 of n - 3 queries
    assert internal.offset_attention_score(a, 3)[0] == pytest.approx(1 / (n - 3))


def test_planted_induction_scores_near_one_with_noise():
    """A noisy induction head (90% on the target, 10% spread uniformly) scores ~0.9 at every period."""
    probe = internal.induction_probe_tokens(3, range(500), seed=2)
    scores = {}
    for period, tokens in probe.items():
        n = tokens.shape[1]
        head = 0.9 * _induction_head(tokens) + 0.1 * _causal_uniform(n)[None]
        scores[period] = internal.prefix_matching_score(head[:, None], tokens)
        assert np.allclose(head.sum(-1), 1.0)
    robust = internal.period_robust_induction_score(scores)
    assert 0.88 < robust[0] < 0.95


def test_periodic_repeat_losses_match_two_repeat_special_case():
    rng = np.random.default_rng(0)
    losses = rng.random((3, 2 * 5 - 1))
    assert internal.periodic_repeat_losses(losses, 5) == internal.repeat_losses(losses, 5)
    three = np.concatenate([np.full((2, 4), 3.0), np.full((2, 10), 0.5)], axis=1)   # period 5, 3 repeats
    assert internal.periodic_repeat_losses(three, 5) == (3.0, 0.5)
    with pytest.raises(ValueError, match="repeats of period 4"):
        internal.periodic_repeat_losses(three, 4)
