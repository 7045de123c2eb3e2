"""Greedy continuations of a prompt along a checkpoint series (what the model says as it learns).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from triphase.models.checkpoints import Checkpoint
from triphase.models.loading import load_checkpoint, release

#: Pythia's dense early schedule: step0 then powers of two up to 512.


def greedy_continuations(checkpoints: Sequence[Checkpoint], prompt: str, max_new_tokens: int = 30,
                         device: str = "auto") -> "pd.DataFrame":
    """Greedy continuation of one prompt at each checkpoint (one model in memory at a time).

    Returns a DataFrame with the join columns and ``prompt``, ``continuation``.
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    rows = []
    for ckpt in checkpoints:
        model, tokenizer = load_checkpoint(ckpt, device=device)
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        rows.append({**ckpt.columns(), "prompt": prompt, "continuation": text})
        release(model)
    return pd.DataFrame(rows)
