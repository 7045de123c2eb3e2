"""Word features: windowed hidden states equal full-context forward passes; the cache is hit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from triphase.models.checkpoints import Checkpoint
from triphase.models.features import cached_story_features, last_token_of_words, plan_windows, tokenize_words, tokens_processed, word_char_spans, word_hidden_states

torch.set_num_threads(1)

WORDS = ("the fox saw a little bird near the river and the bird sang a song "
         "while the fox slept under an old tree by the water").split()
N_LAYERS = 2
HIDDEN = 16


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=256,
                           rotary_pct=0.25)
    return GPTNeoXForCausalLM(config).eval(), tokenizer


def _full_pass(model, ids):
    with torch.inference_mode():
        hidden = model(input_ids=torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states
    return torch.stack(hidden)[:, 0].numpy()  # (layers, tokens, hidden)


def test_shape_and_equality_with_single_full_context_pass(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids, last = tokenize_words(tokenizer, WORDS)
    assert len(ids) > len(WORDS) // 2  # sanity: the story is tokenised
    features = word_hidden_states(model, tokenizer, WORDS, context=len(ids) + 4)
    assert features.shape == (N_LAYERS + 1, len(WORDS), HIDDEN)
    assert features.dtype == np.float32
    full = _full_pass(model, ids)
    np.testing.assert_allclose(features, full[:, last], rtol=1e-5, atol=1e-5)
    # The last token of each word decodes to the end of that word.
    for word, token in zip(WORDS, last):
        assert word.endswith(tokenizer.decode([int(ids[token])]).strip())


def test_windowed_states_equal_forward_pass_over_their_window(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    context = 8
    ids, last = tokenize_words(tokenizer, WORDS)
    assert len(ids) > 3 * context  # several windows
    features = word_hidden_states(model, tokenizer, WORDS, context=context, batch_size=3)
    windows, token_window = plan_windows(len(ids), context)
    for i, token in enumerate(last):
        window = windows[token_window[token]]
        left_context = token - window.start
        assert left_context >= context // 2 or token < context
        assert window.stop - window.start <= context
        reference = _full_pass(model, ids[window.start: token + 1])[:, -1]
        np.testing.assert_allclose(features[:, i], reference, rtol=1e-5, atol=1e-5)
    # Layer selection returns the same rows.
    chosen = word_hidden_states(model, tokenizer, WORDS, context=context, layers=[0, N_LAYERS])
    np.testing.assert_allclose(chosen, features[[0, N_LAYERS]], atol=1e-6)
    # Short context truly differs from full context for late words (the windows matter).
    full = word_hidden_states(model, tokenizer, WORDS, context=len(ids))
    assert not np.allclose(full[-1, -1], features[-1, -1], atol=1e-4)


def test_plan_windows_cover_every_token_with_half_context():
    for n_tokens, context in [(1, 4), (5, 4), (100, 16), (101, 17), (1000, 128)]:
        windows, which = plan_windows(n_tokens, context)
        stride = context // 2
        starts = np.array([windows[k].start for k in which])
        stops = np.array([windows[k].stop for k in which])
        t = np.arange(n_tokens)
        assert np.all((starts <= t) & (t < stops))
        assert np.all((t - starts >= stride) | (t < context))
        assert all(w.stop - w.start <= context for w in windows)
        # Overhead: about 2x the tokens (target <= 2.1x for long stories).
        if n_tokens >= 10 * context:
            assert tokens_processed(n_tokens, context) <= 2.1 * n_tokens


def test_words_map_to_tokens_without_spaces():
    # Japanese-style text joined with "": a token spanning two words is the last token of the first.
    text, spans = word_char_spans(["ab", "cd", "e"], join="")
    assert text == "abcde"
    offsets = np.array([[0, 1], [1, 3], [3, 4], [4, 5]])  # tokens "a", "bc", "d", "e"
    assert last_token_of_words(offsets, spans).tolist() == [1, 2, 3]
    # Special tokens with empty offsets are skipped.
    offsets = np.array([[0, 0], [0, 2], [2, 4], [4, 5], [0, 0]])
    assert last_token_of_words(offsets, spans).tolist() == [1, 2, 3]


def test_bad_input_is_named(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="no words"):
        word_hidden_states(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        word_hidden_states(model, tokenizer, WORDS, context=512)
    with pytest.raises(ValueError, match="out of range"):
        word_hidden_states(model, tokenizer, WORDS, context=16, layers=[7])
    with pytest.raises(ValueError, match="no token"):
        last_token_of_words(np.array([[0, 2]]), np.array([[0, 2], [3, 3]]), ["ab", ""])


def test_cache_hit_recomputes_nothing(model_and_tokenizer, fresh_home, tmp_path):
    model, tokenizer = model_and_tokenizer
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    checkpoint = Checkpoint("unit", "step0", 0, 0, str(folder))
    calls = {"load": 0, "forward": 0}
    handle = model.register_forward_hook(lambda *args: calls.__setitem__("forward", calls["forward"] + 1))

    def loader():
        calls["load"] += 1
        return model, tokenizer

    try:
        first = cached_story_features(checkpoint, "sim", "story-a", WORDS, 8, loader)
        assert calls["load"] == 1 and calls["forward"] >= 1
        forwards = calls["forward"]
        again = cached_story_features(checkpoint, "sim", "story-a", WORDS, 8, loader)
        assert calls == {"load": 1, "forward": forwards}  # nothing loaded, nothing run
        np.testing.assert_array_equal(first, again)
        # A different context is a different key.
        cached_story_features(checkpoint, "sim", "story-a", WORDS, 16, loader)
        assert calls["load"] == 2
    finally:
        handle.remove()
    cached = list((fresh_home / "features").rglob("*.npy"))
    assert len(cached) == 2 and not list((fresh_home / "features").rglob("*.tmp"))
