"""Activation patching over (site, cell group) and over (site, prompt position), for any contrast and metric.

>>> contrast = Contrast([pair(spec, red_car, "What colour is the car?", corrupted_image=blue_car)])
>>> ld = logit_diff(spec, "red", "blue")
>>> sweep = patching_sweep(spec, contrast, ld, cells="window")    # every residual site, one window at a time
>>> sweep.effects.shape                                            # (pairs, sites, groups)
>>> positions = position_sweep(spec, contrast, ld)                 # every decoder residual site, every position

Direction. ``"clean->corrupted"`` (the default; denoising): the corrupted prompt runs, and one
group's activation at one site is replaced by the clean run's. ``"corrupted->clean"`` (noising):
the clean prompt runs with the corrupted run's activation. Either way

    effect = (patched - corrupted) / (clean - corrupted)

with ``clean`` and ``corrupted`` the metric of the two unpatched runs. Denoising: 0 = nothing
restored, 1 = the clean metric restored. Noising: 1 = nothing lost, 0 = all of it lost. A pair
whose two runs measure the same has no scale: its effects are NaN, with a warning.

Batching. Copies of the patched prompt run together, each with its own patch (rows repeated, as
``anatomy.causal.batches``); a batch holds copies of one site, and copies that patch a
decoder site take the pictures' image tokens computed once instead of running the vision tower.
The batch size is the largest whose peak memory, as ``anatomy.causal.plan`` counts it
(``anatomy.causal.calls``), fits ``budget_gib`` (the weights apart); a job that one copy per pass
does not fit is refused before the model runs (``MemoryError``, naming the least budget that runs it).

Alignment. Image cells align cell by cell (the pairs' pictures share one grid). Text follows
``Pair.counterpart``: before patching, the source run's decoder activations are moved to the
counterpart positions of the patched prompt, so prompts of different layouts (another question,
another length) patch too: a cell into that cell's token wherever it sits, a position into its
counterpart. A position without a counterpart is not patched (NaN). Vision sites need no moving.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from anatomy.capture import capture
from anatomy.capture.sites import NONE, Site, resolve
from anatomy.causal.batches import image_tokens, take, with_image_tokens
from anatomy.causal.calls import patching_calls
from anatomy.causal.contrast import SIDES, Contrast, Pair
from anatomy.causal.edits import Layout, Recording, patch
from anatomy.causal.groups import Groups, cell_groups, draw
from anatomy.causal.interventions import intervene
from anatomy.causal.metrics import Metric, as_metric
from anatomy.inputs import resized
from anatomy.lab.figures import drawable
from anatomy.model import decoder_layers, lm_head, unwrap
from anatomy.processor import one_line, token_text

DIRECTIONS = ("clean->corrupted", "corrupted->clean")
DEFAULT_BUDGET_GIB = 4.0


def residual_sites(spec) -> list[str]:
    """The residual stream in data-flow order: each vision block's output, each decoder layer's input, the last
    layer's output."""
    last = len(decoder_layers(spec)) - 1
    patterns = ["vision.blocks.*.output", "decoder.layers.*.input", f"decoder.layers.{last}.output"]
    return [site.name for site in resolve(spec, patterns)]


@dataclass
class Job:
    """A checked contrast, metric, sites and direction: what a sweep or an attribution runs (``plan``)."""

    spec: object
    contrast: Contrast
    metric: Metric
    sites: list[Site]
    source: str  # the side whose activations are written ("clean" for clean->corrupted)
    target: str  # the side that runs patched

    @property
    def pairs(self) -> list[Pair]:
        return self.contrast.pairs

    def sides(self, rows: list[int]) -> dict[str, dict]:
        """Both sides' batches of pairs ``rows`` (one layout), each row's answer appended when teacher-forced."""
        return {side: self.metric.extend(self.contrast.batch(rows, side), rows) for side in SIDES}

    def record(self, rows: list[int], sides: dict[str, dict], keep: int) -> tuple[np.ndarray, Recording]:
        """Run the source side of pairs ``rows``: its metric, and its activations at the sites, decoder sites moved
        to the target's positions (``moved``; zeros where a target position has no counterpart, never patched)."""
        bare = unwrap(self.spec)
        with torch.no_grad(), capture(bare, [s.name for s in self.sites], device=None, order="model") as cache:
            logits = bare(**sides[self.source], logits_to_keep=keep, use_cache=False).logits
        where = self.moved(rows, sides[self.target]["input_ids"].shape[1]).to(logits.device)
        batch = torch.arange(len(rows), device=logits.device)[:, None]
        tensors = {}
        for site in self.sites:
            tensor = cache.get(site.name)
            if site.order == NONE:  # (B, L_source, ...) -> (B, L_target, ...)
                tensor = tensor[batch, where.clamp(min=0)] * (where >= 0).view(*where.shape, *[1] * (tensor.ndim - 2))
            tensors[site.name] = tensor
        return self.read(logits, rows), Recording(tensors, Layout.of(sides[self.target]), bare)

    def moved(self, rows: list[int], length: int) -> torch.Tensor:
        """``(B, length)``: for each position of the target prompts (answers appended), the source position whose
        activation goes there; -1 for none (no counterpart, or an appended answer token)."""
        return torch.stack([_padded(source_positions(self.pairs[r], self.target), length) for r in rows])

    def read(self, logits: torch.Tensor, rows: list[int]) -> np.ndarray:
        """The metric of each row from the last ``keep`` positions' logits (answers appended to the longest in the
        run; a row reads from the prompt's end, the first of them)."""
        return self.metric(logits[:, : self.metric.span(rows, len(rows))], rows).double().cpu().numpy()


def plan(spec, contrast, metric, sites, direction: str, vision: bool = True) -> Job:
    """Check everything before the model runs: the pairs (one specimen, one grid), the metric (one answer per pair,
    a ``(B,)`` value on probe logits), the sites (``vision=False``: decoder sites only) and the direction."""
    contrast = contrast if isinstance(contrast, Contrast) else Contrast([contrast] if isinstance(contrast, Pair)
                                                                       else contrast)  # fmt: skip
    if unwrap(contrast.spec) is not unwrap(spec):
        raise ValueError("the contrast's pairs were encoded for another specimen; pair() them with this one")
    grids = sorted({p.grid for p in contrast.pairs})
    if len(grids) > 1:
        raise ValueError(f"the pairs' pictures have grids {grids} of cells; a sweep compares cells on one grid: "
                         f"sweep each grid's pairs apart")  # fmt: skip
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; expected one of {DIRECTIONS}")
    metric = as_metric(metric)
    metric.check_rows(len(contrast.pairs))
    span = metric.span([0], 1)
    probe = torch.linspace(-1.0, 1.0, lm_head(spec).out_features).expand(1, span, -1)  # any logits: shape, NaN
    metric(probe, [0])
    chosen = resolve(spec, sites if sites is not None else residual_sites(spec) if vision else _decoder_residual(spec))
    for site in chosen:
        if site.hook.startswith("arg:") or ".rotary" in site.name or site.name == "logits":
            raise ValueError(f"site {site.name!r} is not an activation that patches by cell or position; "
                             f"pick residual, attention or MLP sites (anatomy.capture.sites)")  # fmt: skip
        if not vision and site.order != NONE:
            raise ValueError(f"site {site.name!r} is in the vision tower, which has no prompt positions; position "
                             f"sweeps take decoder sites (patch vision sites by cell: patching_sweep)")  # fmt: skip
    source, target = direction.split("->")
    return Job(spec, contrast, metric, chosen, source, target)


def _decoder_residual(spec) -> list[str]:
    return [name for name in residual_sites(spec) if name.startswith("decoder.")]


def source_positions(p: Pair, target: str) -> torch.Tensor:
    """``(S_target,)``: the other prompt's position aligned with each position of ``p``'s ``target`` prompt, -1 none
    (``Pair.counterpart`` itself, or its inverse; where an explicit map sends two positions to one, either)."""
    if target == "clean":
        return p.counterpart.clone()
    inverse = torch.full((p.corrupted["input_ids"].shape[1],), -1)
    known = (p.counterpart >= 0).nonzero()[:, 0]
    inverse[p.counterpart[known]] = known
    return inverse


def _padded(positions: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([positions, torch.full((length - len(positions),), -1)])


def patched_values(job: Job, variants: list[tuple[int, int, tuple]], size: int) -> tuple[np.ndarray, dict]:
    """The metric of every patched copy. ``variants``: (pair, site index, (``"cells"`` or ``"positions"``, value)).

    Returns the values ``(variants,)`` and the unpatched runs: ``{"clean": (pairs,), "corrupted": (pairs,),
    "passes": model calls}``.
    """
    values, base = np.full(len(variants), np.nan), {side: np.zeros(len(job.pairs)) for side in SIDES}
    bare, passes = unwrap(job.spec), 0
    for rows in job.contrast.groups:
        sides, keep = job.sides(rows), job.metric.span(rows, len(rows))
        base[job.source][rows], source = job.record(rows, sides, keep)
        target = sides[job.target]
        images = image_tokens(bare, target)
        with torch.no_grad():
            base[job.target][rows] = job.read(bare(**with_image_tokens(target, images, list(range(len(rows)))),
                                                   logits_to_keep=keep, use_cache=False).logits, rows)  # fmt: skip
        passes += 3
        local = {r: i for i, r in enumerate(rows)}
        for s, site in enumerate(job.sites):
            mine = [v for v, (p, si, _) in enumerate(variants) if si == s and p in local]
            one = Recording({site.name: source[site.name]}, source.layout, bare)
            for start in range(0, len(mine), size):
                chosen = mine[start : start + size]
                copies = [local[variants[v][0]] for v in chosen]
                edits = _edits([variants[v][2] for v in chosen], site.name, one.take(copies))
                inputs = take(target, copies) if site.order != NONE else with_image_tokens(target, images, copies)
                with torch.no_grad(), intervene(bare, edits):  # the logits read at once: none kept into the next call
                    values[chosen] = job.read(bare(**inputs, logits_to_keep=keep, use_cache=False).logits,
                                              [rows[c] for c in copies])  # fmt: skip
                passes += 1
    return values, {**base, "passes": passes}


def _edits(selections: list[tuple], site: str, source: Recording) -> list:
    """One patch per distinct selection, on the copies (rows) that want it."""
    rows: dict[tuple, list[int]] = {}
    for row, selection in enumerate(selections):
        rows.setdefault(selection, []).append(row)
    return [patch(site, source, rows=where, **{kind: value}) for (kind, value), where in rows.items()]


def normalised(values: np.ndarray, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """``(values - corrupted) / (clean - corrupted)`` over the pairs axis (the first); NaN where clean == corrupted."""
    scale = (clean - corrupted).reshape(-1, *[1] * (values.ndim - 1))
    flat = np.flatnonzero(scale == 0)
    if len(flat):
        warnings.warn(f"pairs {flat.tolist()} measure the same clean and corrupted: their effects are NaN",
                      stacklevel=3)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale == 0, np.nan, (values - corrupted.reshape(scale.shape)) / scale)


@dataclass
class CellEffects:
    """Effects of each (site, cell group) on one grid: ``effects`` ``(pairs, sites, groups)``.

    Attributes:
        method: ``"activation patching"``, or ``"attribution patching"`` (its gradient estimate).
        metric, direction: the metric's name; ``"clean->corrupted"`` or ``"corrupted->clean"``.
        sites: site names, in data-flow order; groups: the cell groups (``groups.members[g]``: group g's cells).
        effects: ``(patched - corrupted) / (clean - corrupted)`` per pair, site and group.
        clean, corrupted: ``(pairs,)`` the metric of the two unpatched runs.
        changed: ``(pairs, rows, cols)`` bool, cells whose pixels differ; pictures: per pair the processed
            (clean, corrupted) pictures.
        forward_passes, batch_size, seconds: what it cost (model calls, copies per call, wall time).
    """

    method: str
    metric: str
    direction: str
    sites: list[str]
    groups: Groups
    effects: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    changed: np.ndarray
    pictures: list[tuple[Image.Image, Image.Image]]
    forward_passes: int
    batch_size: int
    seconds: float

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the pictures' cells."""
        return self.groups.grid

    @property
    def moved(self) -> np.ndarray:
        """``effect - unpatched``, signed toward the run patched from: 0 = not moved, 1 = all the way to the source's
        metric (the unpatched run's effect is 0 when denoising, 1 when noising; noising reads ``1 - effect``)."""
        return self.effects if self.direction == "clean->corrupted" else 1 - self.effects

    @property
    def shift(self) -> np.ndarray:
        """``|moved|``: how far each patch moved the metric, 0 = not at all; what ``top_cells`` and ``compare`` rank
        by."""
        return np.abs(self.moved)


@dataclass
class PositionEffects:
    """Effects of each (decoder site, position of the patched prompt): ``effects`` ``(pairs, sites, length)``, NaN
    where nothing was patched (no counterpart, past a shorter prompt's end); ``tokens[i]`` the patched prompt's
    tokens of pair i, decoded (image tokens as ``img r,c``), ``sources[i]`` the token patched from, or ``""``.
    Other attributes as in ``CellEffects``."""

    method: str
    metric: str
    direction: str
    sites: list[str]
    effects: np.ndarray
    tokens: list[list[str]]
    sources: list[list[str]]
    clean: np.ndarray
    corrupted: np.ndarray
    forward_passes: int
    batch_size: int
    seconds: float


def patching_sweep(spec, contrast, metric, sites=None, cells="cell", direction: str = "clean->corrupted",
                   budget_gib: float = DEFAULT_BUDGET_GIB) -> CellEffects:  # fmt: skip
    """Patch every (site, cell group), one per copy; ``sites`` default to ``residual_sites``, ``cells`` as in
    ``anatomy.causal.groups``. Every refusal happens before the model runs."""
    start = time.perf_counter()
    job = plan(spec, contrast, metric, sites, direction)
    groups = cell_groups(spec, job.pairs[0].grid, cells)
    size = patching_calls(job, len(groups)).batch_size(budget_gib)
    variants = [(p, s, ("cells", cells)) for s in range(len(job.sites)) for p in range(len(job.pairs))
                for cells in groups.members]  # fmt: skip
    values, base = patched_values(job, variants, size)
    shape = (len(job.sites), len(job.pairs), len(groups))
    effects = normalised(values.reshape(shape).transpose(1, 0, 2), base["clean"], base["corrupted"])
    return CellEffects("activation patching", job.metric.name, direction, [s.name for s in job.sites], groups,
                       effects, base["clean"], base["corrupted"], cells_changed(job.pairs),
                       processed_pictures(job.pairs), base["passes"], size, time.perf_counter() - start)  # fmt: skip


def position_sweep(spec, contrast, metric, sites=None, direction: str = "clean->corrupted",
                   budget_gib: float = DEFAULT_BUDGET_GIB) -> PositionEffects:  # fmt: skip
    """Patch every (decoder site, position of the patched prompt that has a counterpart), one per copy; ``sites``
    default to the decoder's residual sites. Every refusal happens before the model runs."""
    start = time.perf_counter()
    job = plan(spec, contrast, metric, sites, direction, vision=False)
    size = patching_calls(job, None).batch_size(budget_gib)
    aligned = [source_positions(p, job.target) for p in job.pairs]
    length = max(len(a) for a in aligned)
    variants = [(p, s, ("positions", (q,))) for s in range(len(job.sites)) for p, a in enumerate(aligned)
                for q in (a >= 0).nonzero()[:, 0].tolist()]  # fmt: skip
    values, base = patched_values(job, variants, size)
    patched = np.full((len(job.pairs), len(job.sites), length), np.nan)
    for (p, s, (_, (q,))), value in zip(variants, values):
        patched[p, s, q] = value
    return PositionEffects("activation patching", job.metric.name, direction, [s.name for s in job.sites],
                           normalised(patched, base["clean"], base["corrupted"]), *decoded_tokens(job), base["clean"],
                           base["corrupted"], base["passes"], size, time.perf_counter() - start)  # fmt: skip


def cells_changed(pairs: list[Pair]) -> np.ndarray:
    """``(pairs, rows, cols)`` bool: the cells whose processed pixels differ in each pair."""
    return np.stack([p.changed for p in pairs])


def processed_pictures(pairs: list[Pair]) -> list[tuple[Image.Image, Image.Image]]:
    """Each pair's two pictures as the processor resized them."""
    return [(resized(p.clean.image, p.clean.grid_thw[0]), resized(p.corrupted.image, p.corrupted.grid_thw[0]))
            for p in pairs]  # fmt: skip


def decoded_tokens(job: Job) -> tuple[list[list[str]], list[list[str]]]:
    """Per pair, the patched prompt's tokens and the tokens their activations come from (``""``: none), decoded."""
    named, sources = [], []
    for p in job.pairs:
        target, source = _decoded(job, getattr(p, job.target)), _decoded(job, getattr(p, job.source))
        named.append(target)
        sources.append([source[i] if i >= 0 else "" for i in source_positions(p, job.target).tolist()])
    return named, sources


def _decoded(job: Job, prompt) -> list[str]:
    """The prompt's tokens for people (``' red'``, not ``'Ġred'``); image tokens as ``img row,col``."""
    tokenizer, image, cols = job.spec.processor.tokenizer, job.spec.config.image_token_id, job.pairs[0].grid[1]
    ids = prompt["input_ids"][0].tolist()
    cell = np.cumsum([i == image for i in ids]) - 1  # raster index of each image token
    return [f"img {cell[k] // cols},{cell[k] % cols}" if i == image else token_text(tokenizer, i)
            for k, i in enumerate(ids)]  # fmt: skip


def cells_figure(result: CellEffects, pair: int = 0, sites=None) -> Figure:
    """One pair: its two processed pictures, then per site the effects painted over the picture patched into."""
    names = list(sites) if sites is not None else result.sites
    figure = Figure(figsize=(2.3 * (len(names) + 2), 2.9), layout="constrained")
    axes = figure.subplots(1, len(names) + 2)
    clean, corrupted = result.pictures[pair]
    patched = corrupted if result.direction == "clean->corrupted" else clean
    for axis, picture, title in ((axes[0], clean, "clean"), (axes[1], corrupted, "corrupted")):
        axis.imshow(picture)
        axis.set(title=title, xticks=[], yticks=[])
    for axis, name in zip(axes[2:], names):
        shown = draw(axis, patched, result.groups, result.effects[pair, result.sites.index(name)],
                     result.changed[pair], title=short_site(name))  # fmt: skip
    figure.colorbar(shown, ax=axes[-1], label="effect (1 = clean)")
    figure.suptitle(f"{result.method}, {result.direction}, {result.groups.resolution}: {drawable(result.metric, 80)}",
                    fontsize=9)  # fmt: skip
    return figure


def positions_figure(result: PositionEffects, pair: int = 0) -> Figure:
    """One pair: the effect of each (site, position) as a heat map, each column labelled with its token."""
    length = len(result.tokens[pair])
    effects = result.effects[pair][:, :length]
    labels = [drawable(one_line(t if s in ("", t) else f"{s}->{t}"), 14)
              for t, s in zip(result.tokens[pair], result.sources[pair])]  # fmt: skip
    figure = Figure(figsize=(max(6.0, 0.2 * length + 2), 1.2 + 0.35 * len(result.sites)), layout="constrained")
    axis = figure.subplots()
    shown = axis.imshow(np.ma.masked_invalid(effects), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                        interpolation="nearest")  # fmt: skip
    axis.set_xticks(np.arange(length), labels, rotation=90, fontsize=6)
    axis.set_yticks(np.arange(len(result.sites)), [short_site(s) for s in result.sites], fontsize=7)
    figure.colorbar(shown, ax=axis, label="effect (1 = clean)")
    axis.set_title(f"{result.method}, {result.direction}: one position at a time (blank: not patched)", fontsize=9)
    return figure


def short_site(name: str) -> str:
    """``decoder.layers.1.input`` -> ``dec 1.input``, ``vision.blocks.2.output`` -> ``vis 2.output``."""
    return name.replace("decoder.layers.", "dec ").replace("vision.blocks.", "vis ")
