"""Loading checkpoints: one read of the weights per checkpoint inside ``one_load_per_checkpoint``, a fresh read
per call outside it, and eager attention switched on a loaded model giving what an eager load gives."""
from __future__ import annotations

import pytest

from triphase.models.loading import (
    attention_implementation,
    load_checkpoint,
    one_load_per_checkpoint,
    release,
    switch_attention,
)


def _forward(model, tokens):
    """Logits, every hidden state and every attention map of one batch."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True,
                    output_attentions=attention_implementation(model) == "eager")
    return out


def _tokens(model, n_sequences=2, length=24):
    import numpy as np

    return np.random.default_rng(0).integers(0, model.config.vocab_size, size=(n_sequences, length))


def test_outside_the_scope_every_load_reads_the_weights(tiny_organism, weight_reads):
    ckpt = tiny_organism.final
    first, _ = load_checkpoint(ckpt, device="cpu")
    second, _ = load_checkpoint(ckpt, device="cpu")
    assert first is not second and weight_reads == [ckpt.source, ckpt.source]
    release(first)
    release(second)


def test_inside_the_scope_a_checkpoint_is_read_once_and_freed_at_the_end(tiny_organism, weight_reads):
    import weakref

    final, first = tiny_organism.final, tiny_organism.checkpoints[0]
    with one_load_per_checkpoint():
        model, tokenizer = load_checkpoint(final, device="cpu")
        release(model)  # kept: the next sweep of the unit asks for it again
        again, tokenizer_again = load_checkpoint(final, device="cpu", dtype="float32")  # the same resolved dtype
        assert again is model and tokenizer_again is tokenizer
        release(again)
        with one_load_per_checkpoint():  # nested: the outer scope's model
            assert load_checkpoint(final, device="cpu")[0] is model
            release(model)
        assert weight_reads == [final.source]
        gone = weakref.ref(model)
        del model, again, tokenizer, tokenizer_again
        other, _ = load_checkpoint(first, device="cpu")  # another checkpoint evicts the first: one held at a time
        assert gone() is None
        release(other)
        assert load_checkpoint(first, device="cpu", dtype="bfloat16")[0] is not other  # another dtype: a new read
        assert weight_reads == [final.source, first.source, first.source]
        kept = weakref.ref(other)
        del other
        assert kept() is None  # the bfloat16 load evicted it
        last = weakref.ref(load_checkpoint(first, device="cpu")[0])
    assert last() is None  # freed when the scope ends
    assert len(weight_reads) == 4
    load_checkpoint(final, device="cpu")
    assert len(weight_reads) == 5  # after the scope: loads read again


def test_the_shared_model_switches_attention_as_each_load_asks(tiny_organism, weight_reads):
    ckpt = tiny_organism.final
    with one_load_per_checkpoint():
        model, _ = load_checkpoint(ckpt, device="cpu")
        loaded_with = attention_implementation(model)
        assert loaded_with == "sdpa"  # what a plain load picks here, so the switch below is a real one
        release(model)
        eager, _ = load_checkpoint(ckpt, device="cpu", attn_implementation="eager")
        assert eager is model and attention_implementation(model) == "eager"
        release(eager)
        load_checkpoint(ckpt, device="cpu")
        assert attention_implementation(model) == loaded_with  # a plain load gets what a fresh plain load gets
        # the model is held (not released): switching it would change what its holder computes
        own, _ = load_checkpoint(ckpt, device="cpu", attn_implementation="eager")
        assert own is not model and attention_implementation(own) == "eager"
        assert attention_implementation(model) == loaded_with
        release(own)
        release(model)
    assert len(weight_reads) == 2


def test_switching_to_eager_gives_the_outputs_and_attentions_of_an_eager_load(tiny_organism):
    import torch

    ckpt = tiny_organism.final
    switched, _ = load_checkpoint(ckpt, device="cpu")
    assert attention_implementation(switched) == "sdpa"
    loaded, _ = load_checkpoint(ckpt, device="cpu", attn_implementation="eager")
    tokens = _tokens(loaded)
    plain = _forward(switched, tokens)
    switch_attention(switched, "eager")
    a, b = _forward(switched, tokens), _forward(loaded, tokens)
    assert len(a.attentions) == loaded.config.num_hidden_layers and a.attentions[0].shape[-1] == tokens.shape[1]
    for x, y in zip(a.attentions, b.attentions):
        assert torch.equal(x, y)
        assert torch.allclose(x.sum(-1), torch.ones(()))  # rows of an attention map: probabilities
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    # and back: the sdpa outputs of before the switch
    switch_attention(switched, "sdpa")
    assert torch.equal(_forward(switched, tokens).logits, plain.logits)
    release(switched)
    release(loaded)


def test_switch_attention_names_the_implementations(tiny_organism):
    with pytest.raises(ValueError, match="implementation must be one of eager, sdpa.*got 'fast'"):
        switch_attention(object(), "fast")
    with pytest.raises(RuntimeError, match="cannot be switched; load it with attn_implementation='eager'"):
        switch_attention(type("Model", (), {"config": type("Config", (), {"_attn_implementation": "sdpa"})()})(),
                         "eager")
