"""Loading one checkpoint's weights: device and dtype choice, load, release, and reuse within a unit.

Local folders (the organism) and hub revisions go through the same
``from_pretrained`` call; at most one model is held at a time. Inside
:func:`one_load_per_checkpoint` (a unit of work: the three sweeps of one
checkpoint) repeated loads of the same checkpoint return the model already
loaded; outside it every call loads.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from triphase.models.checkpoints import Checkpoint
from triphase.models.hub import ensure_weights, hub_load_kwargs

#: the attention implementations ``transformers`` can switch a loaded model between
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; other values pass through."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype, device: str):
    """Default dtype: bfloat16 on GPU, float32 on CPU; strings like ``"bf16"`` accepted."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16"}
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        name = aliases.get(dtype, dtype)
        if not hasattr(torch, name):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype (try 'float32', 'bfloat16', 'float16')")
        return getattr(torch, name)
    return dtype


def attention_implementation(model) -> str | None:
    """The attention implementation a loaded model runs (``"sdpa"``, ``"eager"``, ...), or None if unknown."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def switch_attention(model, implementation: str) -> None:
    """Make a loaded model run ``implementation`` (same weights, so the same outputs as a load with it).

    Only eager attention returns attention weights (``transformers`` 5 returns
    an empty ``attentions`` tuple from SDPA / flash attention), so the
    internal-states sweep switches to ``"eager"``.

    Raises
    ------
    ValueError
        ``implementation`` is not one of :data:`ATTENTION_IMPLEMENTATIONS`.
    RuntimeError
        The model runs another implementation and cannot switch.

    Examples
    --------
    >>> from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    >>> model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1,
    ...                                          num_attention_heads=2, intermediate_size=8,
    ...                                          attn_implementation="sdpa"))
    >>> switch_attention(model, "eager"); attention_implementation(model)
    'eager'
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, "
                         f"got {implementation!r}")
    if attention_implementation(model) in (implementation, None):
        return
    if not hasattr(model, "set_attn_implementation"):
        raise RuntimeError(f"the model does not use {implementation} attention and cannot be switched; "
                           f"load it with attn_implementation={implementation!r}")
    model.set_attn_implementation(implementation)


def _from_pretrained(checkpoint: Checkpoint, device: str, torch_dtype, kwargs: dict):
    """One read of the weights: causal LM (on ``device``, eval mode) and tokenizer."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = hub_load_kwargs(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.source, dtype=torch_dtype, **extra, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.source, **extra)
    model.to(device).eval()
    return model, tokenizer


@dataclass
class _SharedLoad:
    """The checkpoint a scope keeps loaded, the attention it was loaded with, and how many callers hold it."""

    key: tuple
    model: object
    tokenizer: object
    loaded_attention: str | None
    holders: int = 0


class _CheckpointReuse:
    """One :func:`one_load_per_checkpoint` scope: at most one shared checkpoint, evicted by the next key."""

    def __init__(self):
        self.current: _SharedLoad | None = None

    def load(self, checkpoint: Checkpoint, device: str, torch_dtype, kwargs: dict):
        kwargs = dict(kwargs)
        attention = kwargs.pop("attn_implementation", None)
        # the weights' identity, where they go, and every other load option (they change what is loaded)
        key = (checkpoint.source, checkpoint.revision, device, str(torch_dtype), repr(sorted(kwargs.items())))
        if self.current is None or self.current.key != key:
            self.evict()
            # loaded with the default attention; a caller asking for another gets it switched below
            model, tokenizer = _from_pretrained(checkpoint, device, torch_dtype, kwargs)
            self.current = _SharedLoad(key, model, tokenizer, attention_implementation(model))
        shared = self.current
        wanted = attention or shared.loaded_attention
        if wanted is not None and attention_implementation(shared.model) != wanted:
            if (shared.holders or wanted not in ATTENTION_IMPLEMENTATIONS
                    or not hasattr(shared.model, "set_attn_implementation")):
                # switching would change what another caller computes (or cannot be done): a copy of its own
                return _from_pretrained(checkpoint, device, torch_dtype,
                                        {**kwargs, "attn_implementation": wanted})
            switch_attention(shared.model, wanted)
        shared.holders += 1
        return shared.model, shared.tokenizer

    def release(self, model) -> bool:
        """Note that a caller is done with ``model``; True if it is the shared model (then it stays loaded)."""
        if self.current is None or model is not self.current.model:
            return False
        self.current.holders = max(0, self.current.holders - 1)
        return True

    def evict(self) -> None:
        if self.current is not None:
            self.current = None  # the last reference this scope holds, so the collection below frees it
            _collect_freed_memory()


#: the scope the running code is in (per thread and task, so two units in one process never share a model)
_REUSE: ContextVar[_CheckpointReuse | None] = ContextVar("triphase_checkpoint_reuse", default=None)


@contextmanager
def one_load_per_checkpoint():
    """Within this scope, :func:`load_checkpoint` reads each checkpoint's weights once.

    A repeated load of the same checkpoint (source and revision), resolved
    device, dtype and load options returns the same model and tokenizer;
    :func:`release` leaves that model loaded until the scope ends, another
    checkpoint is loaded (one shared checkpoint at a time, so memory stays
    bounded), or the scope exits. A load asking for another
    ``attn_implementation`` gets the shared model switched to it
    (:func:`switch_attention`; same weights, same outputs), and a load without
    one gets the implementation the model was first loaded with. Outside the
    scope nothing is kept: the notebooks loop over many checkpoints in one
    process. Nested scopes share the outermost one.

    Examples
    --------
    >>> with one_load_per_checkpoint():  # doctest: +SKIP
    ...     model, tokenizer = load_checkpoint(ckpt, device="cpu")
    ...     release(model)  # still loaded
    ...     again, _ = load_checkpoint(ckpt, device="cpu", attn_implementation="eager")
    ...     assert again is model
    """
    if _REUSE.get() is not None:
        yield
        return
    scope = _CheckpointReuse()
    token = _REUSE.set(scope)
    try:
        yield
    finally:
        _REUSE.reset(token)
        scope.evict()


def load_checkpoint(checkpoint: Checkpoint, device: str = "auto", dtype=None, **kwargs):
    """Load one checkpoint's causal LM and tokenizer, in eval mode.

    Local folders and hub revisions go through the same
    ``AutoModelForCausalLM.from_pretrained(source, revision=...)`` call; for hub
    checkpoints ``HF_HOME``/``HF_HUB_OFFLINE`` are read at call time, and an
    offline checkpoint missing from the cache raises
    :class:`triphase.models.hub.CheckpointMissingError` naming the fetch command.
    Inside :func:`one_load_per_checkpoint` a checkpoint already loaded is
    returned instead of read again.

    Returns
    -------
    model, tokenizer
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers.utils import logging as transformers_logging

    # one "Loading weights" bar per checkpoint would bury the notebooks' own progress bars
    transformers_logging.disable_progress_bar()

    ensure_weights(checkpoint)  # offline: not cached, incomplete, or its weights deleted once results were cached
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    scope = _REUSE.get()
    if scope is not None:
        return scope.load(checkpoint, device, torch_dtype, kwargs)
    return _from_pretrained(checkpoint, device, torch_dtype, kwargs)


def _collect_freed_memory() -> None:
    """Collect unreachable models (reference cycles included) and hand their GPU memory back."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release(model) -> None:
    """Free a model's memory before the next checkpoint is loaded.

    Inside :func:`one_load_per_checkpoint` the shared model stays loaded until
    the scope ends or another checkpoint is loaded.
    """
    scope = _REUSE.get()
    if scope is not None and scope.release(model):
        return
    del model
    _collect_freed_memory()
