"""The logit lens on image tokens: what each cell's state would say, read through the final norm and lm_head.

After each decoder layer, each image token's residual stream goes through the model's final
RMSNorm and ``lm_head`` (``anatomy.decoder.logit_lens.lens_logits``). On an object's cell, is the object's
colour word the likeliest of the six colour words? Chance is 1/6.

>>> lens = image_lens(spec, [sample(0, "test", i) for i in range(60)])
>>> lens.colour_hits                  # (layers,) fraction of object cells whose top colour word is right
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.decoder.logit_lens import lens_logits
from anatomy.lab.figures import drawable, label_fonts
from anatomy.model import decoder_layers
from anatomy.processor import one_line
from anatomy.toy.encode import answer_tokens
from anatomy.toy.experiments.contrasts import toy_batch
from anatomy.toy.experiments.probes import cell_features
from anatomy.toy.shapes import GRID
from anatomy.toy.task import COLOURS, Sample


@dataclass
class ImageLens:
    """``top``: ``(layers, pictures, 16)`` likeliest token per cell (decoded); ``colour_hits``: ``(layers,)``."""

    top: np.ndarray
    colour_hits: np.ndarray
    samples: list[Sample]


def image_lens(spec, samples: list[Sample]) -> ImageLens:
    """Read every image token after every decoder layer through the lens."""
    sites = [f"decoder.layers.{i}.output" for i in range(len(decoder_layers(spec)))]
    features = cell_features(spec, toy_batch(spec, samples), sites)
    colour_ids = torch.tensor([answer_tokens(spec.processor)[c] for c in COLOURS])
    decode = spec.processor.tokenizer.decode
    tops, hits = [], []
    for site in sites:
        logits = lens_logits(spec, features[site].to(spec.model.device)).float().cpu()  # (pictures, 16, vocab)
        ids = logits.argmax(-1)
        tops.append(np.array([[decode([int(t)]) for t in row] for row in ids]))
        best_colour = logits[..., colour_ids].argmax(-1)  # (pictures, 16): index into COLOURS
        right = [best_colour[i, t.row * GRID + t.col] == list(COLOURS).index(t.colour)
                 for i, s in enumerate(samples) for t in s.scene.things]
        hits.append(float(np.mean(right)))
    return ImageLens(np.stack(tops), np.array(hits), samples)


def lens_figure(lens: ImageLens, picture: int = 0) -> Figure:
    """One picture, then one 4x4 grid per decoder layer with each cell's likeliest token."""
    layers = len(lens.top)
    figure = Figure(figsize=(4.4 * (layers + 1), 4.0), layout="constrained")
    axes = figure.subplots(1, layers + 1)
    axes[0].imshow(lens.samples[picture].scene.pixels())
    axes[0].set_title("picture", fontsize=8)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    for layer, axis in enumerate(axes[1:]):
        axis.set_xlim(-0.5, GRID - 0.5)
        axis.set_ylim(GRID - 0.5, -0.5)
        for cell, token in enumerate(lens.top[layer, picture]):
            shown = drawable(one_line(token.strip() or token), 10, wrap=12)
            axis.text(cell % GRID, cell // GRID, shown, ha="center", va="center", fontsize=7, fontfamily=label_fonts())
        axis.set_title(f"after decoder layer {layer}\ncolour word right on {lens.colour_hits[layer]:.0%} of objects",
                       fontsize=8)
        axis.grid(False)
        for edge in range(GRID + 1):
            axis.axhline(edge - 0.5, color="grey", lw=0.5)
            axis.axvline(edge - 0.5, color="grey", lw=0.5)
    return figure
