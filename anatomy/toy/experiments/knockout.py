"""Attention knockout per decoder layer: may the answer position look at the image there?

Each condition forbids the answer position (the last prompt token) from attending to every image
token in some decoder layers: none (the baseline), each layer alone, then all layers. Reported per
question type: accuracy, and how far the right answer's logit falls from the baseline. On any contrast and
metric, one layer or cell group at a time: ``anatomy.causal.knockout_sweep``.

>>> result = knockout_by_layer(spec, [sample(0, "test", i) for i in range(60)])
>>> result.accuracy["colour"]          # (conditions,): none, layer 0, ..., all layers
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.causal import knock_out
from anatomy.causal.batches import answer_logits, chunks, image_tokens, with_image_tokens
from anatomy.kernels import fast_vision
from anatomy.model import decoder_layers
from anatomy.toy.experiments.contrasts import toy_batch
from anatomy.toy.task import QUESTION_TYPES, Sample


@dataclass
class KnockoutResult:
    """``accuracy`` and ``logit_drop``: question type -> ``(conditions,)``; ``conditions`` their names."""

    conditions: list[str]
    accuracy: dict[str, np.ndarray]
    logit_drop: dict[str, np.ndarray]
    n: int


def knockout_by_layer(spec, samples: list[Sample], batch_size: int = 512) -> KnockoutResult:
    """Knock out answer -> image attention in no layer, each layer, and all layers; the pictures are seen once."""
    count = len(decoder_layers(spec))
    layer_sets = [()] + [(i,) for i in range(count)] + [tuple(range(count))]
    names = ["none"] + [f"layer {i}" for i in range(count)] + ["all layers"]
    batch = toy_batch(spec, samples)
    with fast_vision(spec.model):
        images = image_tokens(spec, batch)
    variants = [(c, q) for c in range(len(layer_sets)) for q in range(len(samples))]
    right = np.zeros((len(layer_sets), len(samples)))
    correct = np.zeros((len(layer_sets), len(samples)))
    labels = batch["labels"]
    for part in chunks(len(variants), batch_size):
        chosen = [variants[i] for i in part]
        rows = [q for _, q in chosen]
        edits = [knock_out(layer_sets[c], queries=[-1], keys="image",
                           rows=[i for i, (v, _) in enumerate(chosen) if v == c])
                 for c in sorted({c for c, _ in chosen}) if layer_sets[c]]
        logits = answer_logits(spec, with_image_tokens(batch, images, rows), edits)
        truth = labels[rows].to(logits.device)
        hit = (logits.argmax(-1) == truth).cpu().numpy()
        value = logits[torch.arange(len(rows)), truth].cpu().numpy()
        for (c, q), h, v in zip(chosen, hit, value):
            right[c, q], correct[c, q] = h, v
    kinds = np.array([s.kind for s in samples])
    accuracy = {k: right[:, kinds == k].mean(1) for k in QUESTION_TYPES}
    drop = {k: (correct[0] - correct)[:, kinds == k].mean(1) for k in QUESTION_TYPES}
    return KnockoutResult(names, accuracy, drop, len(samples))


def knockout_figure(result: KnockoutResult) -> Figure:
    """Accuracy and logit drop per condition, one group of bars per question type."""
    figure = Figure(figsize=(10.5, 3.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    width = 0.8 / len(result.conditions)
    for i, name in enumerate(result.conditions):
        x = np.arange(len(QUESTION_TYPES)) + i * width
        left.bar(x, [result.accuracy[k][i] for k in QUESTION_TYPES], width, label=name)
        right.bar(x, [result.logit_drop[k][i] for k in QUESTION_TYPES], width, label=name)
    for axis, label in ((left, "accuracy"), (right, "drop of the right answer's logit")):
        axis.set_xticks(np.arange(len(QUESTION_TYPES)) + 0.4 - width / 2, QUESTION_TYPES)
        axis.set_ylabel(label)
    right.legend(title="answer -> image\nblocked in", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.suptitle(f"attention knockout, {result.n} held-out questions", fontsize=9)
    return figure


def knockout_queries(spec, samples: list[Sample], positions: list[int], layers) -> tuple[np.ndarray, np.ndarray]:
    """Block question i's query ``positions[i]`` (a position in its own prompt, as ``positions`` reports them)
    from every image token in ``layers``.

    Returns ``(right, logit_drop)``, each ``(questions,)``: answered right, and the fall of the right
    answer's logit from the unedited run.
    """
    batch = toy_batch(spec, samples)
    lengths = batch["attention_mask"].sum(1).tolist()  # each prompt's own length: the batch pads on the left
    edits = [knock_out(layers, queries=[p - length], keys="image", rows=[i])
             for i, (p, length) in enumerate(zip(positions, lengths))]  # fmt: skip
    plain, blocked = answer_logits(spec, batch), answer_logits(spec, batch, edits)
    rows, truth = torch.arange(len(samples)), batch["labels"].to(plain.device)
    drop = (plain - blocked)[rows, truth].cpu().numpy()
    return (blocked.argmax(-1) == truth).cpu().numpy(), drop
