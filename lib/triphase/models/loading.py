"""Loading one checkpoint's weights: device and dtype choice, load, release.

Local folders (the organism) and hub revisions go through the same
``from_pretrained`` call; at most one model is held at a time.
"""
from __future__ import annotations

import gc


from triphase.models.checkpoints import Checkpoint
from triphase.models.hub import ensure_weights, hub_load_kwargs

#: Pythia's dense early schedule: step0 then powers of two up to 512.


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


def load_checkpoint(checkpoint: Checkpoint, device: str = "auto", dtype=None, **kwargs):
    """Load one checkpoint's causal LM and tokenizer, in eval mode.

    Local folders and hub revisions go through the same
    ``AutoModelForCausalLM.from_pretrained(source, revision=...)`` call; for hub
    checkpoints ``HF_HOME``/``HF_HUB_OFFLINE`` are read at call time, and an
    offline checkpoint missing from the cache raises
    :class:`triphase.models.hub.CheckpointMissingError` naming the fetch command.

    Returns
    -------
    model, tokenizer
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging


    # one "Loading weights" bar per checkpoint would bury the notebooks' own progress bars
    transformers_logging.disable_progress_bar()

    ensure_weights(checkpoint)  # offline: not cached, incomplete, or its weights deleted once results were cached
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    extra = hub_load_kwargs(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.source, dtype=torch_dtype, **extra, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.source, **extra)
    model.to(device).eval()
    return model, tokenizer


def release(model) -> None:
    """Free a model's memory before the next checkpoint is loaded."""
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
