"""Linear probes on each image cell's representation, layer by layer, against a random-init control.

For every cell of every picture and every depth (each vision block's output at the cell's 2x2
patches, side by side as the merger takes them; the merger output; each decoder layer's output at the cell's
image token) a ridge-regression probe, fitted in closed form on one set of pictures and scored on others,
reads three properties: is an object there, its colour, its shape (the last two on object cells
only). The same probes on the untrained model are the control: what a random network's features
already make linearly readable from the pixels.

>>> result = probe_layers(load("toy"), untrained_toy(), pictures=200)
>>> result.accuracy["colour"]          # (sites,) held-out accuracy, trained model
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.capture import capture
from anatomy.causal.batches import model_inputs
from anatomy.causal.sweeps import short_site
from anatomy.kernels import fast_vision
from anatomy.model import decoder_layers, vision_blocks
from anatomy.toy.experiments.contrasts import toy_batch
from anatomy.toy.shapes import GRID, SHAPES
from anatomy.toy.task import COLOURS, Sample, sample

PROPERTIES = ("present", "colour", "shape")


@dataclass
class ProbeResult:
    """Held-out accuracy per property: ``accuracy`` (trained) and ``control`` (random init), each ``(sites,)``.

    ``chance``: the accuracy of always guessing the most common class of the training cells.
    """

    sites: list[str]
    accuracy: dict[str, np.ndarray]
    control: dict[str, np.ndarray]
    chance: dict[str, float]
    train_pictures: int
    test_pictures: int


def probe_sites(spec) -> list[str]:
    depth, layers = len(vision_blocks(spec)), len(decoder_layers(spec))
    return ([f"vision.blocks.{i}.output" for i in range(depth)] + ["vision.merger.output"]
            + [f"decoder.layers.{i}.output" for i in range(layers)])


def cell_features(spec, batch: dict, sites: list[str]) -> dict[str, torch.Tensor]:
    """``site -> (pictures, 16, D)``: each cell's representation in ``batch`` (``toy_batch``), raster order."""
    batch = {k: v.to(spec.model.device) for k, v in model_inputs(batch).items()}
    with torch.no_grad(), fast_vision(spec.model), capture(spec, sites) as cache:
        spec.model(**batch, logits_to_keep=1)
    image = batch["input_ids"] == spec.config.image_token_id
    pictures = len(batch["image_grid_thw"])
    features = {}
    for site in sites:
        tensor = cache[site].float()
        if site.startswith("decoder."):
            features[site] = tensor[image].reshape(pictures, GRID * GRID, -1)
        elif site == "vision.merger.output":
            features[site] = tensor.reshape(pictures, GRID * GRID, -1)
        else:  # patches, raster (pictures, 2 GRID, 2 GRID, D) -> each cell's 2x2 patches side by side, as merged
            patches = tensor.reshape(pictures, GRID, 2, GRID, 2, -1).permute(0, 1, 3, 2, 4, 5)
            features[site] = patches.reshape(pictures, GRID * GRID, -1)  # (pictures, 16, 4 D)
    return features


def cell_labels(samples: list[Sample]) -> dict[str, np.ndarray]:
    """``property -> (pictures, 16)`` class indices; -1 where the property does not apply (no object)."""
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


def ridge_accuracy(train_x, train_y, test_x, test_y, ridge: float = 1.0) -> float:
    """Fit one-hot targets by ridge regression in closed form; accuracy of the argmax on the test set.

    ``train_x`` ``(n, D)``, ``train_y`` ``(n,)`` class indices; features standardised with the train statistics.
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    design = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1).double()  # (n, D + 1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    targets = torch.nn.functional.one_hot(torch.as_tensor(train_y), classes).double()  # (n, classes)
    gram = design.T @ design + ridge * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, design.T @ targets)  # (D + 1, classes)
    test = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1).double()
    return float(((test @ weights).argmax(1).numpy() == test_y).mean())


def _scores(spec, batch: dict, samples: list[Sample], sites: list[str], split: int) -> dict[str, np.ndarray]:
    features, labels = cell_features(spec, batch, sites), cell_labels(samples)
    scores = {p: np.zeros(len(sites)) for p in PROPERTIES}
    for p in PROPERTIES:
        y = labels[p]
        train, test = y[:split] >= 0, y[split:] >= 0
        for j, site in enumerate(sites):
            x = features[site]
            scores[p][j] = ridge_accuracy(x[:split][torch.from_numpy(train)], y[:split][train],
                                          x[split:][torch.from_numpy(test)], y[split:][test])
    return scores


def probe_layers(spec, control_spec, pictures: int = 240, seed: int = 0) -> ProbeResult:
    """Probes at every ``probe_sites`` site of ``spec`` and of ``control_spec``; 3/4 of the pictures train."""
    samples = [sample(seed, "valid", i) for i in range(pictures)]  # pictures never trained on
    split = pictures * 3 // 4
    sites = probe_sites(spec)
    batch = toy_batch(spec, samples)  # one encoding for both models: they share the processor
    labels = cell_labels(samples[:split])
    chance = {p: float(np.bincount(labels[p][labels[p] >= 0]).max() / (labels[p] >= 0).sum()) for p in PROPERTIES}
    trained, control = _scores(spec, batch, samples, sites, split), _scores(control_spec, batch, samples, sites, split)
    return ProbeResult(sites, trained, control, chance, split, pictures - split)


def probe_figure(result: ProbeResult) -> Figure:
    """Held-out accuracy by depth, one panel per property: trained (solid), random init (dashed), chance."""
    figure = Figure(figsize=(11, 3.2), layout="constrained")
    axes = figure.subplots(1, len(PROPERTIES), sharey=True)
    x = np.arange(len(result.sites))
    labels = [short_site(s).replace(".output", "").replace("vision.merger", "merger") for s in result.sites]
    for axis, p in zip(axes, PROPERTIES):
        axis.plot(x, result.accuracy[p], "-o", label="trained toy")
        axis.plot(x, result.control[p], "--s", label="random init")
        axis.axhline(result.chance[p], color="grey", lw=0.8, label="majority class")
        axis.set_xticks(x, labels, rotation=60, fontsize=7)
        axis.set_title(p, fontsize=9)
    axes[0].set_ylabel("held-out probe accuracy")
    axes[0].legend(fontsize=7)
    return figure
