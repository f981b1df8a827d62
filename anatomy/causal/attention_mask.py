"""Attention knockout as an edit of the attention mask: chosen queries may not attend to chosen keys.

A pre-hook on a decoder layer's ``self_attn`` rewrites the mask its kernel receives: sdpa's boolean
mask (True: may attend) loses the forbidden pairs, eager's additive float mask gets the dtype's
minimum there, and a missing mask (sdpa without padding: causal only) is built as a boolean causal
mask first. Flash attention takes no dense mask, so knockout refuses it.
"""

from __future__ import annotations

import torch
from torch import nn

from anatomy.causal import select
from anatomy.causal.edits import Knockout, Layout
from anatomy.model import check_layers

KERNELS = ("eager", "sdpa")


def checked(model: nn.Module, knock: Knockout) -> Knockout:
    """``knock`` with its layers checked against ``model``, whose attention kernel must take a dense mask."""
    check_layers(model.config, list(knock.layers))
    kernel = model.config.text_config._attn_implementation
    if kernel not in KERNELS:
        raise ValueError(f"attention knockout edits the attention mask: it needs attn_implementation in "
                         f"{KERNELS}, this model uses {kernel!r}")
    return knock


def forbidden(knock: Knockout, layout: Layout, config) -> torch.Tensor:
    """``(B, L, L)``: True where query row i may not attend to key j."""
    queries = select.decoder_mask(layout, config, positions=knock.queries, rows=knock.rows)
    if knock.keys == "image":
        keys = (layout.input_ids == config.image_token_id) & select.decoder_mask(layout, config, rows=knock.rows)
        if knock.cells is not None:
            keys = select.decoder_mask(layout, config, cells=knock.cells, rows=knock.rows)
    else:
        keys = select.decoder_mask(layout, config, positions=knock.keys, rows=knock.rows)
    return queries[:, :, None] & keys[:, None, :]


def mask_hook(call, layer: int):
    """Pre-hook on decoder ``layer``'s ``self_attn``: add its knockouts (``call.forbid[layer]``, built once per
    prompt) to its attention mask (prefill only)."""

    def before(module, args, kwargs):
        if not call.active:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        forbid = call.forbid[layer].to(hidden.device)[:, None]  # (B, 1, L, L)
        if mask is None:  # sdpa without padding: causal only
            length = hidden.shape[1]
            mask = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()[None, None]
        if mask.dtype == torch.bool:
            mask = mask & ~forbid
        else:
            mask = mask.masked_fill(forbid, torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": mask}

    return before
