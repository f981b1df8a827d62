"""The logit lens on the toy's image tokens: does an object's cell say its colour?

The toy's adapter over ``anatomy.causal.lens``: each picture read through the lens with the six colour
words; on an object's cell, is the object's colour word the likeliest of the six? Chance is 1/6.

>>> lens = image_lens(spec, [sample(0, "test", i) for i in range(60)])
>>> lens.colour_hits                  # (layers,) fraction of object cells whose top colour word is right
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from anatomy.causal.lens import image_lens as read_lens
from anatomy.lab.figures import drawable, label_fonts
from anatomy.processor import one_line
from anatomy.toy.experiments.probes import toy_prompts
from anatomy.toy.shapes import GRID
from anatomy.toy.task import COLOURS, Sample


@dataclass
class ImageLens:
    """``top``: ``(layers, pictures, 16)`` likeliest token per cell (decoded); ``colour_hits``: ``(layers,)``."""

    top: np.ndarray
    colour_hits: np.ndarray
    samples: list[Sample]


def image_lens(spec, samples: list[Sample]) -> ImageLens:
    """Read every image token after every decoder layer through the lens, with the colour words."""
    colours = list(COLOURS)
    lenses = [read_lens(spec, prompt, colours) for prompt in toy_prompts(spec, samples)]
    top = np.stack([lens.top.reshape(len(lens.sites), -1) for lens in lenses], 1)  # (layers, pictures, cells)
    best = np.stack([lens.probability.argmax(-1).reshape(len(lens.sites), -1) for lens in lenses], 1)  # colour index
    right = [best[:, i, t.row * GRID + t.col] == colours.index(t.colour)
             for i, s in enumerate(samples) for t in s.scene.things]  # (objects,) of (layers,)
    return ImageLens(top, np.mean(right, 0), samples)


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
