"""Activation patching over (site, image cell): which cell, at which depth, carries the answer.

For each clean question a counterfactual picture changes its answer (``batches.counterfactual``).
The clean run is repeated once per (site, cell); in each copy one cell's activation at one site
is replaced by the counterfactual run's. The effect is how far that moves the answer's logit
difference ``LD = logit(clean answer) - logit(counterfactual answer)`` toward the counterfactual:

    effect = (LD_clean - LD_patched) / (LD_clean - LD_counterfactual)     0: no change, 1: fully flipped

Sites run along the residual stream: every vision block's output (a cell = its 2x2 patches), then
every decoder layer's input (layer 0's is the merger output) and the last layer's output. Besides
the 16 cells, one more column patches the answer position itself (decoder sites only).

>>> sweep = patching_sweep(spec, [sample(0, "test", i) for i in range(0, 24, 3)])
>>> sweep.effects.shape              # (questions, sites, cells + 1)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.causal.batches import (
    answer_logits,
    chunks,
    counterfactual,
    image_tokens,
    model_inputs,
    take,
    toy_batch,
    with_image_tokens,
)
from anatomy.causal.edits import Recording, patch, record
from anatomy.causal.sweeps import residual_sites
from anatomy.lab.figures import drawable, label_fonts
from anatomy.processor import one_line
from anatomy.toy.kernels import fast_training
from anatomy.toy.shapes import GRID
from anatomy.toy.task import Sample


@dataclass
class Sweep:
    """Patching effects of a sweep.

    Attributes:
        effects: ``(questions, sites, 17)``: 16 cells in raster order, then the answer position
            (NaN at vision sites).
        sites: the site names, in data-flow order.
        samples: the clean questions; ``counterfactuals`` the pictures patched from.
        clean_ld, corrupted_ld: ``(questions,)`` logit differences of the two unpatched runs.
        forward_passes: model calls the sweep made; seconds: its wall time.
    """

    effects: np.ndarray
    sites: list[str]
    samples: list[Sample]
    counterfactuals: list[Sample]
    clean_ld: np.ndarray
    corrupted_ld: np.ndarray
    forward_passes: int
    seconds: float

    @functools.cached_property
    def changed(self) -> np.ndarray:
        """``(questions, 16)`` bool: the cells where each clean picture and its counterfactual differ."""
        return np.stack([changed_cells(s, c) for s, c in zip(self.samples, self.counterfactuals)])

    def on(self, region: str) -> np.ndarray:
        """``(questions, sites)``: mean effect on the ``"changed"`` cells (where the two pictures differ),
        the ``"other"`` cells, or the ``"answer"`` position."""
        if region == "answer":
            return self.effects[:, :, -1]
        chosen = self.changed if region == "changed" else ~self.changed
        cells = self.effects[:, :, :-1]
        return (cells * chosen[:, None]).sum(-1) / chosen.sum(-1)[:, None]


def short_site(name: str) -> str:
    """A site's name for a crowded axis: ``decoder.layers.1.input`` -> ``dec 1.input``, ``vision.blocks.2.output``
    -> ``vis 2.output``."""
    return name.replace("decoder.layers.", "dec ").replace("vision.blocks.", "vis ")


def changed_cells(clean: Sample, corrupted: Sample) -> np.ndarray:
    """``(16,)`` bool, raster order: the cells whose content differs between the two pictures."""
    def content(s: Sample) -> dict:
        return {(t.row, t.col): (t.shape, t.colour) for t in s.scene.things}

    a, b = content(clean), content(corrupted)
    return np.array([a.get((r, c)) != b.get((r, c)) for r in range(GRID) for c in range(GRID)])


def patching_sweep(spec, samples: list[Sample], sites: list[str] | None = None, batch_size: int = 512) -> Sweep:
    """Patch every (site, cell) and the answer position from each counterfactual into its clean run, batched.

    Rows of one forward pass are copies of clean questions, each with its own patch. Copies that
    patch a decoder site reuse the clean pictures' image tokens (the vision tower runs once per
    picture, not once per copy); every pass uses the toy's exact vision shortcuts (``fast_training``).
    """
    start = time.perf_counter()
    sites = sites or residual_sites(spec)
    columns = [("cell", (r, c)) for r in range(GRID) for c in range(GRID)] + [("answer", -1)]
    variants = [(q, s, k) for q in range(len(samples)) for s in range(len(sites)) for k in range(len(columns))
                if not (columns[k][0] == "answer" and sites[s].startswith("vision."))]
    effects = np.full((len(samples), len(sites), len(columns)), np.nan)
    with fast_training(spec.model):
        base = _baseline(spec, samples, sites)
        passes = _BASELINE_PASSES
        for in_vision in (True, False):
            group = [v for v in variants if sites[v[1]].startswith("vision.") == in_vision]
            for part in chunks(len(group), batch_size):
                chosen = [group[i] for i in part]
                rows = [q for q, _, _ in chosen]
                inputs = take(base.clean, rows) if in_vision else with_image_tokens(base.clean, base.images, rows)
                edits = _edits(chosen, sites, columns, base.source.take(rows))
                effect = base.effect(rows, answer_logits(spec, inputs, edits))
                for (q, s, k), value in zip(chosen, effect):
                    effects[q, s, k] = value
                passes += 1
    return Sweep(effects, sites, samples, base.corrupted, base.clean_ld, base.bad_ld, passes,
                 time.perf_counter() - start)


def _edits(chosen, sites, columns, source) -> list:
    """One patch per (site, column) present in this chunk, on the rows that want it."""
    rows: dict[tuple[int, int], list[int]] = {}
    for row, (_, s, k) in enumerate(chosen):
        rows.setdefault((s, k), []).append(row)
    edits = []
    for (s, k), where in rows.items():
        kind, value = columns[k]
        selection = {"cells": [value]} if kind == "cell" else {"positions": [value]}
        edits.append(patch(sites[s], source, rows=where, **selection))
    return edits


_BASELINE_PASSES = 4  # the counterfactual recording, the two unpatched runs, the clean pictures' image tokens


@dataclass
class _Baseline:
    """What every patched copy is measured against: the clean batch (with its pictures' image tokens), the
    counterfactual run recorded at the patched sites, and both unpatched logit differences."""

    corrupted: list[Sample]
    clean: dict
    images: torch.Tensor
    source: Recording
    clean_ids: torch.Tensor
    bad_ids: torch.Tensor
    clean_ld: np.ndarray
    bad_ld: np.ndarray

    def effect(self, rows: list[int], logits: torch.Tensor) -> np.ndarray:
        """The effect of each patched copy (``logits`` row i is a copy of clean question ``rows[i]``)."""
        ld = _ld(logits, self.clean_ids[rows], self.bad_ids[rows])
        return (self.clean_ld[rows] - ld) / (self.clean_ld[rows] - self.bad_ld[rows])


def _baseline(spec, samples: list[Sample], sites) -> _Baseline:
    """The clean and counterfactual runs of ``samples`` (``_BASELINE_PASSES`` forward passes)."""
    corrupted = [counterfactual(s) for s in samples]
    clean, bad = toy_batch(spec, samples), toy_batch(spec, corrupted)
    if clean["input_ids"].shape != bad["input_ids"].shape:
        raise ValueError("clean and counterfactual prompts differ in length; ask the same questions")
    clean_ids, bad_ids = clean["labels"], bad["labels"]
    source = record(spec, model_inputs(bad), sites)
    clean_ld = _ld(answer_logits(spec, clean), clean_ids, bad_ids)
    bad_ld = _ld(answer_logits(spec, bad), clean_ids, bad_ids)
    return _Baseline(corrupted, clean, image_tokens(spec, clean), source, clean_ids, bad_ids, clean_ld, bad_ld)


def _ld(logits: torch.Tensor, good: torch.Tensor, bad: torch.Tensor) -> np.ndarray:
    """``(B,)`` logit(good) - logit(bad)."""
    rows = torch.arange(len(logits))
    return (logits[rows, good.to(logits.device)] - logits[rows, bad.to(logits.device)]).cpu().numpy()


def sweep_figure(sweep: Sweep, question: int = 0) -> Figure:
    """One question: the picture, then a 4x4 heatmap of the effect per site; the answer column in the titles."""
    sample, sites = sweep.samples[question], sweep.sites
    figure = Figure(figsize=(2.0 * (len(sites) + 2), 2.6), layout="constrained")
    axes = figure.subplots(1, len(sites) + 2)
    source = sweep.counterfactuals[question]
    panels = ((axes[0], sample, f"clean: {sample.answer}"), (axes[1], source, f"patched from: {source.answer}"))
    for ax, s, title in panels:
        ax.imshow(s.scene.pixels())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax, name, effect in zip(axes[2:], sites, sweep.effects[question]):
        shown = ax.imshow(effect[:-1].reshape(GRID, GRID), cmap="RdBu_r", vmin=-1, vmax=1)
        answer = "" if np.isnan(effect[-1]) else f"\nanswer pos. {effect[-1]:+.2f}"
        ax.set_title(f"{short_site(name)}{answer}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(shown, ax=axes[-1], label="effect (1 = flipped)")
    figure.suptitle(f"{sample.question!r}: patching one cell at one site", fontsize=9)
    return figure


def profile_figure(sweeps: dict[str, Sweep]) -> Figure:
    """Per question type, mean effect along the residual stream: changed cells, other cells, answer position."""
    figure = Figure(figsize=(4.2 * len(sweeps), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(sweeps), sharey=True))
    for ax, (kind, sweep) in zip(axes, sweeps.items()):
        x = np.arange(len(sweep.sites))
        for region, style in (("changed", "-o"), ("other", "-s")):
            ax.plot(x, sweep.on(region).mean(0), style, label=f"{region} cells")
        decoder = [i for i, name in enumerate(sweep.sites) if name.startswith("decoder.")]
        ax.plot(x[decoder], sweep.on("answer")[:, decoder].mean(0), "-^", label="answer position")
        ax.set_xticks(x, [short_site(n) for n in sweep.sites],
                      rotation=60, fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{kind} questions ({len(sweep.samples)})", fontsize=9)
    axes[0].set_ylabel("patching effect (1 = answer flipped)")
    axes[0].legend(fontsize=7)
    return figure



def handoff(sweep: Sweep) -> dict[str, np.ndarray]:
    """Per decoder layer i, mean over questions: the patching effect on the changed cells entering layer i
    (``cell in``) and leaving it (``cell out``), and at the answer position entering and leaving it.

    The layer that moves the answer from the cells to the answer position is the one where
    ``answer out - answer in`` jumps (and ``cell in - cell out`` with it).
    """
    decoder = [i for i, name in enumerate(sweep.sites) if name.startswith("decoder.")]  # inputs, then last output
    cells, answer = sweep.on("changed")[:, decoder].mean(0), sweep.on("answer")[:, decoder].mean(0)
    return {"cell in": cells[:-1], "cell out": cells[1:], "answer in": answer[:-1], "answer out": answer[1:]}


@dataclass
class PositionSweep:
    """Patching effect of every prompt position at one decoder site: ``effects`` ``(questions, L)`` (NaN on
    padding), ``tokens`` ``(questions, L)`` each position's decoded token (image tokens as ``img r,c``)."""

    site: str
    effects: np.ndarray
    tokens: list[list[str]]
    samples: list[Sample]


def position_sweep(spec, samples: list[Sample], site: str, batch_size: int = 512) -> PositionSweep:
    """Patch each prompt position of ``site`` (a decoder site) from each counterfactual into its clean run."""
    with fast_training(spec.model):
        base = _baseline(spec, samples, site)
        length = base.clean["input_ids"].shape[1]
        real = base.clean["attention_mask"].bool().cpu().numpy()
        variants = [(q, p) for q in range(len(samples)) for p in range(length) if real[q, p]]
        effects = np.full((len(samples), length), np.nan)
        for part in chunks(len(variants), batch_size):
            chosen = [variants[i] for i in part]
            rows = [q for q, _ in chosen]
            by_position: dict[int, list[int]] = {}
            for row, (_, p) in enumerate(chosen):
                by_position.setdefault(p, []).append(row)
            taken = base.source.take(rows)
            edits = [patch(site, taken, positions=[p], rows=where) for p, where in by_position.items()]
            effect = base.effect(rows, answer_logits(spec, with_image_tokens(base.clean, base.images, rows), edits))
            for (q, p), value in zip(chosen, effect):
                effects[q, p] = value
    return PositionSweep(site, effects, _tokens(spec, base.clean["input_ids"]), samples)


def _tokens(spec, input_ids: torch.Tensor) -> list[list[str]]:
    """Each position's token, decoded; image tokens named by their cell (raster order)."""
    decode = spec.processor.tokenizer.decode
    rows = []
    for ids in input_ids.tolist():
        cells = iter(range(GRID * GRID))
        rows.append([f"img {divmod(next(cells), GRID)}" if i == spec.config.image_token_id else decode([i])
                     for i in ids])
    return rows


def position_figure(sweep: PositionSweep, question: int = 0) -> Figure:
    """One question's effect per prompt position (padding left out), each bar labelled with its token."""
    keep = ~np.isnan(sweep.effects[question])
    effects = sweep.effects[question][keep]
    labels = [t for t, k in zip(sweep.tokens[question], keep) if k]
    figure = Figure(figsize=(max(6.0, 0.26 * len(labels)), 4.2), layout="constrained")
    axis = figure.subplots()
    colours = ["tab:orange" if label.startswith("img") else "tab:blue" for label in labels]
    axis.bar(np.arange(len(labels)), effects, color=colours)
    ticks = [drawable(one_line(label), 16) for label in labels]
    axis.set_xticks(np.arange(len(labels)), ticks, rotation=90, fontsize=8, fontfamily=label_fonts())
    axis.set_xlim(-0.7, len(labels) - 0.3)
    axis.set_ylabel("effect (1 = flipped)")
    axis.set_title(f"{sweep.samples[question].question!r}: patching one position at {sweep.site} "
                   f"(orange: image tokens)", fontsize=9)
    return figure
