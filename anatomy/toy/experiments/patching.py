"""Activation patching of toy questions over (site, image cell) and the answer position: which cell, at which
depth, carries the answer. A thin adapter over ``anatomy.causal.patching_sweep`` and ``position_sweep``.

Each question's clean run is patched, one (site, cell) per copy, from its counterfactual's run (noising,
``"corrupted->clean"``), and the toy reports how much of the answer that flipped, on the logit difference
``LD = logit(clean answer) - logit(counterfactual answer)``:

    flipped = 1 - effect = (LD_clean - LD_patched) / (LD_clean - LD_counterfactual)    0: no change, 1: flipped

Vision sites are patched by cell (``patching_sweep``, a cell = its 2x2 patches). Decoder sites are
patched by position (``position_sweep``) over each image token and the answer position (the prompt's
last), the only text position aligned (``answer_only``): at a decoder site, patching a cell's token
is patching that cell. Every pass runs with the exact vision shortcuts of ``anatomy.kernels.fast_vision``.

>>> questions = contrasts(spec, [sample(0, "test", i) for i in range(0, 24, 3)])
>>> sweep = patching(spec, questions)
>>> sweep.effects.shape              # (questions, sites, cells + 1): the answer position last
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from anatomy.causal import CellEffects, Contrast, cell_groups, patching_sweep, position_sweep
from anatomy.causal.sweeps import cells_changed, processed_pictures, residual_sites, short_site
from anatomy.kernels import fast_vision
from anatomy.lab.figures import drawable, label_fonts
from anatomy.processor import one_line
from anatomy.toy.experiments.contrasts import Questions, answer_only
from anatomy.toy.task import Sample

NOISING = "corrupted->clean"


@dataclass
class Sweep:
    """Patching effects of toy questions.

    Attributes:
        effects: ``(questions, sites, cells + 1)`` flipped: the cells in raster order, then the answer
            position (NaN at vision sites).
        sites: the site names, as given (data-flow order by default).
        questions: the questions and their counterfactuals (``contrasts``).
        cells: the same cells as ``anatomy.causal.CellEffects`` (noising effects, 1 = nothing lost), every site.
        forward_passes: model calls the sweep made; seconds: its wall time.
    """

    effects: np.ndarray
    sites: list[str]
    questions: Questions
    cells: CellEffects
    forward_passes: int
    seconds: float

    @property
    def samples(self) -> list[Sample]:
        return self.questions.samples

    @property
    def changed(self) -> np.ndarray:
        """``(questions, cells)`` bool: the cells whose pixels differ between each picture and its counterfactual."""
        return self.cells.changed.reshape(len(self.effects), -1)

    def on(self, region: str) -> np.ndarray:
        """``(questions, sites)``: mean flipped on the ``"changed"`` cells (where the two pictures differ),
        the ``"other"`` cells, or the ``"answer"`` position."""
        if region == "answer":
            return self.effects[:, :, -1]
        chosen = self.changed if region == "changed" else ~self.changed
        cells = self.effects[:, :, :-1]
        return (cells * chosen[:, None]).sum(-1) / chosen.sum(-1)[:, None]


def patching(spec, questions: Questions, sites: list[str] | None = None) -> Sweep:
    """Patch every (site, cell) and, at decoder sites, the answer position, from each counterfactual into its
    clean run; ``sites`` default to ``residual_sites``, vision sites before decoder sites."""
    start = time.perf_counter()
    sites = list(sites or residual_sites(spec))
    vision = [s for s in sites if s.startswith("vision.")]
    decoder = [s for s in sites if not s.startswith("vision.")]
    pairs = questions.contrast.pairs
    groups = cell_groups(spec, pairs[0].grid, "cell")
    noising = np.full((len(pairs), len(sites), len(groups) + 1), np.nan)  # the general effects, 1 = nothing lost
    runs = []
    with fast_vision(spec.model):
        if vision:
            runs.append(patching_sweep(spec, questions.contrast, questions.metric, vision, direction=NOISING))
            noising[:, [sites.index(s) for s in vision], :-1] = runs[-1].effects
        if decoder:
            answer = Contrast([answer_only(p) for p in pairs])
            runs.append(position_sweep(spec, answer, questions.metric, decoder, direction=NOISING))
            for i, p in enumerate(pairs):
                image = (p.clean["input_ids"][0] == spec.config.image_token_id).nonzero()[:, 0].tolist()
                last = p.clean["input_ids"].shape[1] - 1
                noising[i, [sites.index(s) for s in decoder]] = runs[-1].effects[i][:, image + [last]]
    passes, seconds = sum(r.forward_passes for r in runs), time.perf_counter() - start
    cells = CellEffects("activation patching", questions.metric.name, NOISING, sites, groups, noising[:, :, :-1],
                        runs[0].clean, runs[0].corrupted, cells_changed(pairs), processed_pictures(pairs), passes,
                        max(r.batch_size for r in runs), seconds)  # fmt: skip
    return Sweep(1 - noising, sites, questions, cells, passes, seconds)


def handoff(sweep: Sweep) -> dict[str, np.ndarray]:
    """Per decoder layer i, mean over questions: the flipped share on the changed cells entering layer i
    (``cell in``) and leaving it (``cell out``), and at the answer position entering and leaving it.

    The layer that moves the answer from the cells to the answer position is the one where
    ``answer out - answer in`` jumps (and ``cell in - cell out`` with it).
    """
    decoder = [i for i, name in enumerate(sweep.sites) if name.startswith("decoder.")]  # inputs, then last output
    cells, answer = sweep.on("changed")[:, decoder].mean(0), sweep.on("answer")[:, decoder].mean(0)
    return {"cell in": cells[:-1], "cell out": cells[1:], "answer in": answer[:-1], "answer out": answer[1:]}


def sweep_figure(sweep: Sweep, question: int = 0) -> Figure:
    """One question: the picture, its counterfactual, then a heatmap of the cells per site; the answer position in
    the titles."""
    sample, sites = sweep.samples[question], sweep.sites
    rows, cols = sweep.cells.grid
    figure = Figure(figsize=(2.0 * (len(sites) + 2), 2.6), layout="constrained")
    axes = figure.subplots(1, len(sites) + 2)
    source = sweep.questions.counterfactuals[question]
    panels = ((axes[0], sample, f"clean: {sample.answer}"), (axes[1], source, f"patched from: {source.answer}"))
    for ax, s, title in panels:
        ax.imshow(s.scene.pixels())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax, name, effect in zip(axes[2:], sites, sweep.effects[question]):
        shown = ax.imshow(effect[:-1].reshape(rows, cols), cmap="RdBu_r", vmin=-1, vmax=1)
        answer = "" if np.isnan(effect[-1]) else f"\nanswer pos. {effect[-1]:+.2f}"
        ax.set_title(f"{short_site(name)}{answer}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(shown, ax=axes[-1], label="flipped (1 = answer flipped)")
    figure.suptitle(f"{sample.question!r}: patching one cell at one site", fontsize=9)
    return figure


def profile_figure(sweeps: dict[str, Sweep]) -> Figure:
    """Per question type, mean flipped along the residual stream: changed cells, other cells, answer position."""
    figure = Figure(figsize=(4.2 * len(sweeps), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(sweeps), sharey=True))
    for ax, (kind, sweep) in zip(axes, sweeps.items()):
        x = np.arange(len(sweep.sites))
        for region, style in (("changed", "-o"), ("other", "-s")):
            ax.plot(x, sweep.on(region).mean(0), style, label=f"{region} cells")
        decoder = [i for i, name in enumerate(sweep.sites) if name.startswith("decoder.")]
        ax.plot(x[decoder], sweep.on("answer")[:, decoder].mean(0), "-^", label="answer position")
        ax.set_xticks(x, [short_site(n) for n in sweep.sites], rotation=60, fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{kind} questions ({len(sweep.samples)})", fontsize=9)
    axes[0].set_ylabel("patching: share flipped (1 = answer flipped)")
    axes[0].legend(fontsize=7)
    return figure


@dataclass
class Positions:
    """Flipped share of patching every prompt position at one decoder site: ``effects`` ``(questions, L)`` (NaN past
    a shorter prompt's end), ``tokens[q]`` question q's tokens, decoded (image tokens as ``img r,c``)."""

    site: str
    effects: np.ndarray
    tokens: list[list[str]]
    samples: list[Sample]


def positions(spec, questions: Questions, site: str) -> Positions:
    """Patch each prompt position of ``site`` (a decoder site) from each counterfactual into its clean run."""
    with fast_vision(spec.model):
        found = position_sweep(spec, questions.contrast, questions.metric, [site], direction=NOISING)
    return Positions(site, 1 - found.effects[:, 0], found.tokens, questions.samples)


def position_figure(sweep: Positions, question: int = 0) -> Figure:
    """One question's flipped share per prompt position, each bar labelled with its token."""
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
    axis.set_ylabel("flipped (1 = answer flipped)")
    axis.set_title(f"{sweep.samples[question].question!r}: patching one position at {sweep.site} "
                   f"(orange: image tokens)", fontsize=9)  # fmt: skip
    return figure
