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


def forbid(into: dict[int, torch.Tensor], knock: Knockout, layout: Layout, config, device) -> None:
    """Add ``knock``'s forbidden pairs to ``into`` (decoder layer -> ``(B, L, L)``, True where query row i may not
    attend to key j; created on ``device`` at a layer's first knockout). Only the knockout's own rows are written:
    a sweep's copies each knock out their own cells, and ORing whole ``(B, L, L)`` masks would cost their number
    times the batch."""
    queries = select.decoder_mask(layout, config, positions=knock.queries, rows=knock.rows)
    if knock.keys == "image":
        keys = (layout.input_ids == config.image_token_id) & select.decoder_mask(layout, config, rows=knock.rows)
        if knock.cells is not None:
            keys = select.decoder_mask(layout, config, cells=knock.cells, rows=knock.rows)
    else:
        keys = select.decoder_mask(layout, config, positions=knock.keys, rows=knock.rows)
    rows = (queries.any(1) & keys.any(1)).nonzero().squeeze(1)
    pairs = (queries[rows, :, None] & keys[rows, None, :]).to(device)
    rows = rows.to(device)
    batch, length = layout.input_ids.shape
    for layer in knock.layers:
        if layer not in into:
            into[layer] = torch.zeros(batch, length, length, dtype=torch.bool, device=device)
        into[layer][rows] |= pairs


def mask_hook(call, layer: int):
    """Pre-hook on decoder ``layer``'s ``self_attn``: add its knockouts (``call.forbid[layer]``, built once per
    prompt) to its attention mask (prefill only)."""

    def before(module, args, kwargs):
        if not call.active:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        forbidden = call.forbid[layer].to(hidden.device)[:, None]  # (B, 1, L, L)
        if mask is None:  # sdpa without padding: causal only
            length = hidden.shape[1]
            mask = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()[None, None]
        if mask.dtype == torch.bool:
            mask = mask & ~forbidden
        else:
            mask = mask.masked_fill(forbidden, torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": mask}

    return before
