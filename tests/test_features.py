"""Word features: windowed hidden states equal full-context forward passes; the cache is hit.

The extraction runs the backbone only, indexes word positions before stacking
layers and opens each window with the model's document-start token(s); it is
checked against the former full-model path (the causal LM with its head,
``output_hidden_states=True``, all layers stacked, then indexed) on a tiny random
GPT-NeoX and a tiny random Llama.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from triphase.models.checkpoints import Checkpoint
from triphase.models.features import (
    FEATURE_CACHE_VERSION,
    cached_story_features,
    checkpoint_document_start,
    document_start_ids,
    feature_cache_path,
    last_token_of_words,
    plan_windows,
    tokenize_words,
    tokens_processed,
    word_char_spans,
    word_hidden_states,
)

torch.set_num_threads(1)

WORDS = ("the fox saw a little bird near the river and the bird sang a song "
         "while the fox slept under an old tree by the water").split()
N_LAYERS = 2
HIDDEN = 16


def _bpe(special_tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 3, trainer=trainer)
    return tok


def _tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_bpe(["<|endoftext|>"]), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def _llama_tokenizer():
    """A tokenizer of the Llama class that, like Llama's, adds BOS before every text."""
    from tokenizers import processors
    from transformers import LlamaTokenizer

    tok = _bpe(["<s>", "</s>"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]),
    ])
    return LlamaTokenizer(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", add_bos_token=True)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=256,
                           rotary_pct=0.25)
    return GPTNeoXForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def llama_and_tokenizer():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _llama_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def _former_full_model_path(model, tokenizer, words, context, start_ids=()):
    """The extraction before the backbone-only rewrite: the causal LM (head included) per window,
    every layer stacked, then indexed; optional document-start ids before each window."""
    ids, last = tokenize_words(tokenizer, words)
    windows, token_window = plan_windows(len(ids), context - len(start_ids))
    out = None
    with torch.inference_mode():
        for k, window in enumerate(windows):
            mine = np.flatnonzero(token_window[last] == k)
            if not len(mine):
                continue
            batch = torch.as_tensor(np.concatenate([np.asarray(start_ids, dtype=np.int64),
                                                    ids[window.start:window.stop]]))[None]
            stacked = torch.stack(model(input_ids=batch, output_hidden_states=True).hidden_states)[:, 0]
            if out is None:
                out = np.zeros((stacked.shape[0], len(words), stacked.shape[-1]), dtype=np.float32)
            out[:, mine] = stacked[:, last[mine] - window.start + len(start_ids)].numpy()
    return out


def _lm_head_calls(model):
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("which", ["gpt_neox", "llama"])
def test_backbone_features_equal_the_former_full_model_path_and_skip_the_lm_head(
        which, model_and_tokenizer, llama_and_tokenizer):
    model, tokenizer = model_and_tokenizer if which == "gpt_neox" else llama_and_tokenizer
    context = 10
    calls, handle = _lm_head_calls(model)
    try:
        # batch_size 3: several windows of equal length share a forward pass.
        features = word_hidden_states(model, tokenizer, WORDS, context=context, batch_size=3, document_start="none")
        with_start = word_hidden_states(model, tokenizer, WORDS, context=context, batch_size=3)
    finally:
        handle.remove()
    assert calls == []  # the LM head never ran
    assert features.shape == (N_LAYERS + 1, len(WORDS), HIDDEN)
    np.testing.assert_allclose(features, _former_full_model_path(model, tokenizer, WORDS, context),
                               rtol=1e-5, atol=1e-5)
    start_ids = document_start_ids(tokenizer)
    np.testing.assert_allclose(with_start, _former_full_model_path(model, tokenizer, WORDS, context, start_ids),
                               rtol=1e-5, atol=1e-5)
    if which == "llama":
        # The start token is there and changes every layer past the embeddings.
        assert not np.allclose(with_start[1:], features[1:], atol=1e-4)
        np.testing.assert_allclose(with_start[0], features[0], atol=1e-6)


def test_document_start_follows_the_model_convention(model_and_tokenizer, llama_and_tokenizer):
    _, neox_tokenizer = model_and_tokenizer
    _, llama_tokenizer = llama_and_tokenizer
    bos = llama_tokenizer.bos_token_id
    # Llama's tokenizer adds BOS by itself: the default convention prepends it; GPT-NeoX (Pythia) adds nothing.
    assert llama_tokenizer("fox", add_special_tokens=True)["input_ids"][0] == bos
    assert document_start_ids(llama_tokenizer) == [bos]
    assert document_start_ids(neox_tokenizer) == []
    # The organism separates documents with its end-of-text token.
    eos = neox_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert document_start_ids(neox_tokenizer, "eos") == [eos]
    assert document_start_ids(llama_tokenizer, "none") == []
    organism = Checkpoint("organism", "step0", 0, 0, "/nowhere")
    pythia = Checkpoint("pythia-14m", "step0", 0, 0, "EleutherAI/pythia-14m", revision="step0", tier="real")
    assert checkpoint_document_start(organism) == "eos" and checkpoint_document_start(pythia) == "tokenizer"
    with pytest.raises(ValueError, match="document_start='first'"):
        document_start_ids(llama_tokenizer, "first")


def test_start_token_is_read_by_the_model_at_position_zero(llama_and_tokenizer):
    model, tokenizer = llama_and_tokenizer
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        word_hidden_states(model, tokenizer, WORDS, context=10, batch_size=64)
    finally:
        handle.remove()
    assert len(seen) >= 2  # several windows (the last one shorter)
    for batch in seen:
        assert (batch[:, 0] == tokenizer.bos_token_id).all()
        assert batch.shape[1] <= 10  # the start token counts in the context
        assert (batch[:, 1:] != tokenizer.bos_token_id).all()


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
    handle = model.base_model.register_forward_hook(
        lambda *args: calls.__setitem__("forward", calls["forward"] + 1))

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
        # A different document-start convention is a different key, and different features.
        no_start = cached_story_features(checkpoint, "sim", "story-a", WORDS, 8, loader, document_start="none")
        assert calls["load"] == 3
        assert not np.allclose(no_start[1:], first[1:], atol=1e-4)
    finally:
        handle.remove()
    cached = list((fresh_home / "features").rglob("*.npy"))
    assert len(cached) == 3 and not list((fresh_home / "features").rglob("*.tmp"))
    # The embedded-tier checkpoint's own convention (end-of-text first) is in the key, with the cache version.
    path = feature_cache_path(checkpoint, "sim", "story-a", WORDS, 8, config_hash="h")
    assert path != feature_cache_path(checkpoint, "sim", "story-a", WORDS, 8, config_hash="h", document_start="none")
    assert path == feature_cache_path(checkpoint, "sim", "story-a", WORDS, 8, config_hash="h", document_start="eos")
    assert FEATURE_CACHE_VERSION >= 2
