"""Head ablation: accuracy per question type with one decoder attention head zeroed.

A head's output (its slice of the ``o_proj`` input) is set to zero at every position, one
(layer, head) at a time; each copy of a question is one row of a batch, the pictures seen once. On any
contrast and metric, with zero, mean or patch ablation: ``anatomy.causal.head_sweep``.

>>> result = head_ablation(spec, [sample(0, "test", i) for i in range(60)])
>>> result.accuracy["count"]           # (layers, heads)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from anatomy.causal import zero
from anatomy.causal.batches import answer_logits, chunks, image_tokens, with_image_tokens
from anatomy.kernels import fast_vision
from anatomy.model import decoder_layers, text_config
from anatomy.toy.experiments.contrasts import toy_batch
from anatomy.toy.task import QUESTION_TYPES, Sample


@dataclass
class Ablation:
    """``accuracy``: question type -> ``(layers, heads)``; ``baseline``: question type -> accuracy unablated."""

    accuracy: dict[str, np.ndarray]
    baseline: dict[str, float]
    n: int


def head_ablation(spec, samples: list[Sample], batch_size: int = 512) -> Ablation:
    """Zero each decoder head in turn; accuracy per question type."""
    layers, heads = len(decoder_layers(spec)), text_config(spec.config).num_attention_heads
    conditions = [None] + [(layer, head) for layer in range(layers) for head in range(heads)]
    batch = toy_batch(spec, samples)
    with fast_vision(spec.model):
        images = image_tokens(spec, batch)
    variants = [(c, q) for c in range(len(conditions)) for q in range(len(samples))]
    hits = np.zeros((len(conditions), len(samples)))
    for part in chunks(len(variants), batch_size):
        chosen = [variants[i] for i in part]
        rows = [q for _, q in chosen]
        edits = []
        for c in sorted({c for c, _ in chosen} - {0}):
            layer, head = conditions[c]
            where = [i for i, (v, _) in enumerate(chosen) if v == c]
            edits.append(zero(f"decoder.layers.{layer}.self_attn", heads=[head], rows=where))
        logits = answer_logits(spec, with_image_tokens(batch, images, rows), edits)
        hit = (logits.argmax(-1).cpu() == batch["labels"][rows].cpu()).numpy()
        for (c, q), h in zip(chosen, hit):
            hits[c, q] = h
    kinds = np.array([s.kind for s in samples])
    accuracy = {k: hits[1:, kinds == k].mean(1).reshape(layers, heads) for k in QUESTION_TYPES}
    baseline = {k: float(hits[0, kinds == k].mean()) for k in QUESTION_TYPES}
    return Ablation(accuracy, baseline, len(samples))


def ablation_figure(result: Ablation) -> Figure:
    """One heatmap per question type: accuracy with each (layer, head) zeroed; the baseline in the title."""
    figure = Figure(figsize=(4.6 * len(QUESTION_TYPES), 2.8), layout="constrained")
    axes = figure.subplots(1, len(QUESTION_TYPES))
    for axis, kind in zip(axes, QUESTION_TYPES):
        grid = result.accuracy[kind]
        shown = axis.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (layer, head), value in np.ndenumerate(grid):
            axis.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=9,
                      color="black" if value > 0.5 else "white")
        axis.set(xlabel="head", ylabel="decoder layer", title=f"{kind} (unablated {result.baseline[kind]:.2f})")
        axis.set_xticks(range(grid.shape[1]))
        axis.set_yticks(range(grid.shape[0]))
    figure.colorbar(shown, ax=axes[-1], label="accuracy")
    return figure
