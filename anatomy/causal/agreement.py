"""Attention against causal effect: does the answer look at the cells it depends on?

``answer_attention`` is where the answer position (each pair's last prompt token) looks, heads
averaged, one share per image cell: recorded by the budgeted decoder attention recorder
(``anatomy.decoder.attention.record_attention``), which recomputes only that row while the model
keeps its own kernel. A patching sweep (``CellEffects``, one cell per group) says how much each cell
matters. ``agreement`` compares both on the cells whose pixels differ between the two pictures of
each pair: their share of the image attention, and their share of the positive effect (how far
patching a cell moves the metric toward the run patched from, ``CellEffects.moved``).

>>> effects = patching_sweep(spec, contrast, ld, direction="corrupted->clean")
>>> attention = answer_attention(spec, contrast)              # (pairs, layers, rows, cols)
>>> agreement(effects, attention, layer=1)                    # at decoder layer 1 and its input
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.causal.contrast import SIDES, Contrast
from anatomy.causal.sweeps import CellEffects
from anatomy.decoder.attention import image_map, record_attention
from anatomy.model import check_layers, unwrap


def answer_attention(spec, contrast: Contrast, layers=None, side: str = "clean",
                     budget_bytes: int | None = None) -> np.ndarray:  # fmt: skip
    """``(pairs, layers, rows, cols)``: the last prompt position's attention to each image cell of ``side``'s
    prompt, mean over heads, in decoder ``layers`` (None: all); one recorded forward pass per pair, each
    checked against ``budget_bytes`` before it runs."""
    if side not in SIDES:
        raise ValueError(f"side={side!r}; expected one of {SIDES}")
    chosen = check_layers(spec.config, layers)
    maps = []
    for p in contrast.pairs:
        prompt = getattr(p, side)
        with torch.no_grad(), record_attention(spec, prompt, chosen, reduce="mean", budget_bytes=budget_bytes) as rec:
            unwrap(spec)(**prompt, logits_to_keep=1, use_cache=False)
        rows = rec.result()
        maps.append(torch.stack([image_map(rows, prompt, layer=layer) for layer in chosen]))
    return torch.stack(maps).numpy()


@dataclass
class Agreement:
    """Per pair: the changed cells' share of the image attention and of the positive patching effect;
    ``area``: their share of the cells, what attention or effect spread evenly would give."""

    attention_share: np.ndarray
    effect_share: np.ndarray
    area: np.ndarray


def agreement(effects: CellEffects, attention: np.ndarray, layer: int) -> Agreement:
    """Compare decoder ``layer``'s attention (``answer_attention`` over all layers) with the effect of patching
    each cell at that layer's input (``effects``: single cells, a site ``decoder.layers.{layer}.input``)."""
    site = f"decoder.layers.{layer}.input"
    if effects.groups.resolution != "cell":
        raise ValueError(f"agreement compares cells one by one; these effects are over {effects.groups.resolution!r} "
                         f"groups: sweep with cells='cell'")  # fmt: skip
    if site not in effects.sites:
        raise ValueError(f"the sweep did not patch {site!r}; its sites are {effects.sites}")
    pairs, cells = len(effects.effects), int(np.prod(effects.grid))
    if attention.shape[0] != pairs or attention.shape[2:] != tuple(effects.grid) or layer >= attention.shape[1]:
        raise ValueError(f"attention of shape {attention.shape}; expected (pairs {pairs}, layers > {layer}, "
                         f"{effects.grid[0]}, {effects.grid[1]}) from answer_attention over all layers")  # fmt: skip
    order = [r * effects.grid[1] + c for (r, c), in effects.groups.members]  # each group's cell, raster index
    changed = effects.changed.reshape(pairs, cells)[:, order]  # (pairs, cells), in the groups' order
    look = attention[:, layer].reshape(pairs, cells)[:, order]
    look = look / look.sum(-1, keepdims=True)
    moved = np.clip(effects.moved[:, effects.sites.index(site)], 0, None)
    moved = moved / np.maximum(moved.sum(-1, keepdims=True), 1e-9)
    return Agreement((look * changed).sum(-1), (moved * changed).sum(-1), changed.mean(-1))


def agreement_figure(results: dict[str, Agreement], layer: int) -> Figure:
    """Per set of pairs (e.g. a kind of question): the changed cells' share of attention and of effect, against an
    even spread."""
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    axis = figure.subplots()
    x = np.arange(len(results))
    for offset, (label, values) in enumerate((("attention", [r.attention_share for r in results.values()]),
                                              ("causal effect", [r.effect_share for r in results.values()]),
                                              ("even spread", [r.area for r in results.values()]))):  # fmt: skip
        axis.bar(x + 0.27 * offset, [v.mean() for v in values], 0.27, label=label)
    axis.set_xticks(x + 0.27, list(results))
    axis.set_ylabel("share on the cells that changed")
    axis.set_title(f"decoder layer {layer}: attention vs patching effect", fontsize=9)
    axis.legend(fontsize=7)
    return figure
