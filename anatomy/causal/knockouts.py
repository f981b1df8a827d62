"""Attention knockout per decoder layer, for any contrast: may the answer position look at the image there?

>>> ld = logit_diff(spec, "red", "blue")
>>> result = knockout_sweep(spec, contrast, ld)                   # all image tokens, one layer at a time
>>> result = knockout_sweep(spec, contrast, ld, cells="2x2")      # one group of cells at a time
>>> result.effects.shape                                          # (pairs, layers, groups)

Each copy runs a pair's clean prompt with the answer position (the prompt's last token, and the
positions of a teacher-forced answer) forbidden to attend to one group of image tokens in one decoder
layer: ``knock_out`` applied by ``intervene``. The metric is normalised like noising in
``anatomy.causal.sweeps``:

    effect = (knocked out - corrupted) / (clean - corrupted)       1 = nothing lost, 0 = as the corrupted run

``cells``: ``"image"`` (every image token at once: one group), or any groups of ``anatomy.causal.groups``.
Copies of one layer run together, as many as fit ``budget_gib`` by the plan's count
(``anatomy.causal.calls.knockout_calls``), on the pictures' image tokens computed once. Attention
knockout edits the attention mask: the model's kernel must be eager or sdpa.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from anatomy.causal import sweeps
from anatomy.causal.attention_mask import checked
from anatomy.causal.batches import image_tokens, with_image_tokens
from anatomy.causal.calls import knockout_calls
from anatomy.causal.edits import knock_out
from anatomy.causal.groups import Groups, cell_groups, draw
from anatomy.causal.interventions import intervene
from anatomy.causal.sweeps import DEFAULT_BUDGET_GIB, Job, normalised
from anatomy.lab.figures import drawable
from anatomy.model import check_layers, unwrap

IMAGE = "image"  # cells="image": every image token, one group


@dataclass
class Knockouts:
    """Effects of blocking answer -> image attention per (decoder layer, cell group): ``(pairs, layers, groups)``.

    Attributes:
        layers: the decoder layers knocked out, one at a time; groups: the cell groups (``"image"``: one, all cells).
        values: the metric of each knocked-out copy; effects: ``(values - corrupted) / (clean - corrupted)``.
        clean, corrupted: ``(pairs,)`` the metric of the two unedited runs.
        changed, pictures, forward_passes, batch_size, seconds: as in ``anatomy.causal.sweeps.CellEffects``.
    """

    metric: str
    layers: list[int]
    groups: Groups
    values: np.ndarray
    effects: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    changed: np.ndarray
    pictures: list[tuple[Image.Image, Image.Image]]
    forward_passes: int
    batch_size: int
    seconds: float


def knockout_groups(spec, grid: tuple[int, int], cells) -> Groups:
    """``cells="image"``: one group of every cell of the ``grid``; anything else as ``cell_groups`` takes it."""
    if isinstance(cells, str) and cells == IMAGE:
        every = tuple((r, c) for r in range(grid[0]) for c in range(grid[1]))
        return Groups(IMAGE, tuple(grid), (every,), ("all image tokens",))
    return cell_groups(spec, grid, cells)


def layer_job(spec, contrast, metric, layers) -> tuple[Job, list[int]]:
    """The checked contrast and metric with the clean prompt as the one edited (``corrupted->clean``), and the
    decoder ``layers`` (None: all) as indices."""
    chosen = check_layers(spec.config, layers)
    sites = [f"decoder.layers.{layer}.self_attn" for layer in chosen]
    return sweeps.plan(spec, contrast, metric, sites, "corrupted->clean", vision=False), chosen


def knockout_job(spec, contrast, metric, layers, cells) -> tuple[Job, list[int], Groups]:
    """``layer_job``'s job and layers, once the model's attention kernel is known to take a dense mask, and the cell
    groups knocked out."""
    job, chosen = layer_job(spec, contrast, metric, layers)
    checked(unwrap(job.spec), knock_out(chosen))
    return job, chosen, knockout_groups(spec, job.pairs[0].grid, cells)


def knockout_sweep(spec, contrast, metric, layers=None, cells=IMAGE,
                   budget_gib: float = DEFAULT_BUDGET_GIB) -> Knockouts:  # fmt: skip
    """Block the answer position from each group of image tokens in each of ``layers``, one (layer, group) per
    copy of each pair's clean prompt. Every refusal happens before the model runs."""
    start = time.perf_counter()
    job, chosen, groups = knockout_job(spec, contrast, metric, layers, cells)
    size = knockout_calls(job, len(chosen), len(groups)).batch_size(budget_gib)
    values = np.zeros((len(job.pairs), len(chosen), len(groups)))
    base, passes = {"clean": np.zeros(len(job.pairs)), "corrupted": np.zeros(len(job.pairs))}, 0
    bare = unwrap(spec)
    for rows in job.contrast.groups:
        sides, keep = job.sides(rows), job.metric.span(rows, len(rows))
        target = sides["clean"]
        with torch.no_grad():
            base["corrupted"][rows] = job.read(bare(**sides["corrupted"], logits_to_keep=keep,
                                                    use_cache=False).logits, rows)  # fmt: skip
            images = image_tokens(bare, target)
            local = list(range(len(rows)))  # each call's logits read at once: none kept into the next call
            base["clean"][rows] = job.read(bare(**with_image_tokens(target, images, local),
                                                logits_to_keep=keep, use_cache=False).logits, rows)  # fmt: skip
        passes += 3
        copies = [(p, g) for p in local for g in range(len(groups))]
        for i, layer in enumerate(chosen):
            for first in range(0, len(copies), size):
                chunk = copies[first : first + size]
                edits = [knock_out([layer], queries=list(range(-keep, 0)), keys=IMAGE, cells=groups.members[g],
                                   rows=[k for k, (_, h) in enumerate(chunk) if h == g])
                         for g in sorted({g for _, g in chunk})]  # fmt: skip
                inputs = with_image_tokens(target, images, [p for p, _ in chunk])
                with torch.no_grad(), intervene(bare, edits):
                    read = job.read(bare(**inputs, logits_to_keep=keep, use_cache=False).logits,
                                    [rows[p] for p, _ in chunk])  # fmt: skip
                for (p, g), value in zip(chunk, read):
                    values[rows[p], i, g] = value
                passes += 1
    effects = normalised(values, base["clean"], base["corrupted"])
    return Knockouts(job.metric.name, chosen, groups, values, effects, base["clean"], base["corrupted"],
                     sweeps.cells_changed(job.pairs), sweeps.processed_pictures(job.pairs), passes, size,
                     time.perf_counter() - start)  # fmt: skip


def knockout_figure(result: Knockouts, pair: int = 0) -> Figure:
    """One pair. One group: the effect per layer as a line. Several: per layer, the effects over the clean picture."""
    if len(result.groups) == 1:
        figure = Figure(figsize=(max(4.0, 0.25 * len(result.layers) + 2), 3.0), layout="constrained")
        axis = figure.subplots()
        axis.plot(result.layers, result.effects[pair, :, 0], marker="o")
        axis.axhline(1.0, color="grey", lw=0.8, ls="--")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set(xlabel="decoder layer knocked out", ylabel="effect (1 = nothing lost)")
        axis.set_title(f"answer -> all image tokens blocked\n{drawable(result.metric, 60)}", fontsize=9)
        return figure
    columns = min(len(result.layers), 7)
    rows = -(-len(result.layers) // columns)
    figure = Figure(figsize=(2.3 * columns + 1, 2.5 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    clean = result.pictures[pair][0]
    for axis, (i, layer) in zip(axes, enumerate(result.layers)):
        lost = 1 - result.effects[pair, i]
        shown = draw(axis, clean, result.groups, lost, result.changed[pair], title=f"layer {layer}")
    for axis in axes[len(result.layers) :]:
        axis.set_visible(False)
    figure.colorbar(shown, ax=axes[: len(result.layers)].tolist(), label="lost: 1 - effect (0 = nothing)")
    figure.suptitle(f"answer -> image cells blocked, {result.groups.resolution}: {drawable(result.metric, 80)}",
                    fontsize=9)  # fmt: skip
    return figure
