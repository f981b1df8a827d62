"""Linear probes on each image cell of the toy's pictures, layer by layer, against a random-init control.

The toy's adapter over ``anatomy.causal.probes``: for every cell of every picture and every depth (each vision
block's output at the cell's 2x2 patches, side by side as the merger takes them; the merger output; each
decoder layer's output at the cell's image token), probes read three properties off the scene: is an object
there, its colour, its shape (the last two on object cells only). Pictures never trained on; the first 3/4
train the probes, the rest score them. The same probes on the untrained model are the control: what a random
network's features already make linearly readable from the pixels.

>>> result = probe_layers(load("toy"), untrained_toy(), pictures=200)
>>> result.accuracy["colour"]          # (sites,) held-out accuracy, trained model
"""

from __future__ import annotations

import numpy as np

from anatomy.causal.probes import Probes, probe, probe_figure, probe_sites
from anatomy.inputs import Prompt, encode, request_messages
from anatomy.toy.shapes import GRID, SHAPES
from anatomy.toy.task import COLOURS, Sample, sample

PROPERTIES = ("present", "colour", "shape")
ProbeResult = Probes  # the general result: ``accuracy``, ``control``, ``chance`` per property, ``sites``

__all__ = ["PROPERTIES", "ProbeResult", "cell_labels", "probe_figure", "probe_layers", "toy_prompts"]


def toy_prompts(spec, samples: list[Sample]) -> list[Prompt]:
    """Each sample's picture and question, encoded by ``anatomy.encode`` without a system message (as the toy
    was trained)."""
    return [encode(spec, messages=request_messages(s.scene.pixels(), s.question, system=None)) for s in samples]


def cell_labels(samples: list[Sample]) -> dict[str, np.ndarray]:
    """``property -> (pictures, 16)`` class indices, raster order; -1 where the property does not apply (no object)."""
    labels = {p: np.full((len(samples), GRID * GRID), -1) for p in PROPERTIES}
    labels["present"][:] = 0
    colours, shapes = list(COLOURS), list(SHAPES)
    for i, s in enumerate(samples):
        for t in s.scene.things:
            cell = t.row * GRID + t.col
            labels["present"][i, cell] = 1
            labels["colour"][i, cell] = colours.index(t.colour)
            labels["shape"][i, cell] = shapes.index(t.shape)
    return labels


def probe_layers(spec, control_spec, pictures: int = 240, seed: int = 0) -> Probes:
    """Probes at every ``probe_sites`` site of ``spec`` and of ``control_spec``; the first 3/4 of the pictures
    train, the last 1/4 score."""
    samples = [sample(seed, "valid", i) for i in range(pictures)]  # pictures never trained on
    labels = {p: [np.array([None if v < 0 else int(v) for v in row], dtype=object).reshape(GRID, GRID)
                  for row in indices] for p, indices in cell_labels(samples).items()}  # fmt: skip
    return probe(spec, toy_prompts(spec, samples), labels, probe_sites(spec), pool="cell", control=control_spec,
                 test=0.25, seed=None)  # fmt: skip
