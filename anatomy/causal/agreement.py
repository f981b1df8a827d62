"""Attention against causal effect: does the answer look at the cells it depends on?

``cell_attention`` is where the answer position's attention goes (eager attention, heads averaged),
one share per image cell; a patching ``Sweep`` says how much each cell matters. For each question
both are compared on the cells whose content the counterfactual changed (the asked object's cell,
or the counted objects' cells): their share of the image attention and their share of the effect.

>>> attention = cell_attention(spec, sweep.samples)          # (layers, questions, 16)
>>> agreement(sweep, attention, layer=1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.causal.batches import model_inputs, toy_batch
from anatomy.causal.patching import Sweep
from anatomy.toy.evaluate import cell_rows, eager
from anatomy.toy.kernels import fast_training
from anatomy.toy.task import Sample


def cell_attention(spec, samples: list[Sample]) -> np.ndarray:
    """``(layers, questions, 16)``: the answer position's attention to each image cell, mean over heads."""
    batch = model_inputs(toy_batch(spec, samples))
    with torch.no_grad(), eager(spec.model), fast_training(spec.model):
        attentions = spec.model(**batch, output_attentions=True, logits_to_keep=1).attentions
    return cell_rows(attentions, batch["input_ids"], spec.config).float().cpu().numpy()


@dataclass
class Agreement:
    """Per question: the changed cells' share of the image attention and of the (positive) patching effect;
    ``area``: their share of the 16 cells, what attention or effect spread evenly would give."""

    attention_share: np.ndarray
    effect_share: np.ndarray
    area: np.ndarray


def agreement(sweep: Sweep, attention: np.ndarray, layer: int) -> Agreement:
    """Compare decoder ``layer``'s attention with the effect of patching each cell at that layer's input."""
    site = sweep.sites.index(f"decoder.layers.{layer}.input")
    changed = sweep.changed  # (Q, 16)
    look = attention[layer] / attention[layer].sum(-1, keepdims=True)
    effect = np.clip(sweep.effects[:, site, :-1], 0, None)
    effect = effect / np.maximum(effect.sum(-1, keepdims=True), 1e-9)
    return Agreement((look * changed).sum(-1), (effect * changed).sum(-1), changed.mean(-1))


def agreement_figure(results: dict[str, Agreement], layer: int) -> Figure:
    """Per question type: the changed cells' share of attention and of effect, against an even spread."""
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    axis = figure.subplots()
    x = np.arange(len(results))
    for offset, (label, values) in enumerate((("attention", [r.attention_share for r in results.values()]),
                                              ("causal effect", [r.effect_share for r in results.values()]),
                                              ("even spread", [r.area for r in results.values()]))):
        axis.bar(x + 0.27 * offset, [v.mean() for v in values], 0.27, label=label)
    axis.set_xticks(x + 0.27, list(results))
    axis.set_ylabel("share on the cells that changed")
    axis.set_title(f"decoder layer {layer}: attention vs patching effect", fontsize=9)
    axis.legend(fontsize=7)
    return figure
