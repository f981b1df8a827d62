"""Attribution patching: every (site, cell group) and (site, position) estimated from one gradient.

Patching the source run's activation ``a_s`` into the target run (whose activation is ``a_t``)
moves the metric by about its first-order change, summed over the group's tokens and features:

    delta ~ (a_s - a_t) . d metric / d a_t          effect ~ (target + delta - corrupted) / (clean - corrupted)

normalised like exact patching (``anatomy.causal.sweeps``, same directions). Two forward passes
and one backward give it for every site, group and position at once: the source prompt with its
activations captured; the target prompt with a zero probe added at each site (``a + p``, p = 0
requiring gradients, so the values stay the model's own); one backward from the metric to the
probes. Pairs run together, as many as fit ``budget_gib`` by the plan's count of the forward graph
(``anatomy.causal.calls.attribution_calls``); a job over budget with one pair is refused before the
model runs. The estimate is exact where the metric is linear in the activation, and drifts where
attention patterns, norms or a saturated softmax bend it;
``compare`` measures the drift against exact patching per site: rank correlation (Spearman) and
top-k overlap. The workflow:

>>> estimate = attribution(spec, contrast, ld)                                # everything, at once
>>> exact = patching_sweep(spec, contrast, ld, cells=top_cells(estimate.cells, 4))   # then 4 groups exactly
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.capture.cache import to_raster
from anatomy.capture.sites import MERGED_WINDOW, NONE, Site
from anatomy.causal.batches import image_tokens, with_image_tokens
from anatomy.causal.calls import attribution_calls
from anatomy.causal.groups import Groups, cell_groups, draw
from anatomy.causal.sweeps import (
    DEFAULT_BUDGET_GIB,
    CellEffects,
    Job,
    PositionEffects,
    cells_changed,
    decoded_tokens,
    normalised,
    plan,
    processed_pictures,
    short_site,
)
from anatomy.model import unwrap

QUIET = 1e-4  # a site where no exact patch shifts the effect by this much moves nothing: no ranking to agree with


@dataclass
class Attribution:
    """The estimates: ``cells`` over (site, group), ``positions`` over (decoder site, position), one run."""

    cells: CellEffects
    positions: PositionEffects


@contextlib.contextmanager
def probes(model, sites: list[Site]):
    """Inside the block, a forward pass adds a zero probe requiring gradients to each site's activation; yields
    ``{site: (probe, activation)}``, filled as the sites run (activation detached, in the model's order)."""
    bare, made, handles = unwrap(model), {}, []

    def probed(site: Site, value: torch.Tensor) -> torch.Tensor:
        probe = torch.zeros_like(value, requires_grad=True)
        made[site.name] = probe, value.detach()
        return value + probe

    def before(site):
        def hook(module, args, kwargs):
            if args:
                return (probed(site, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": probed(site, kwargs["hidden_states"])}
        return hook

    def after(site):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                return probed(site, output)
            part = site.part or 0
            return (*output[:part], probed(site, output[part]), *output[part + 1 :])
        return hook

    try:
        for site in sites:
            module = bare.get_submodule(site.module)
            if site.hook == "input":
                handles.append(module.register_forward_pre_hook(before(site), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(after(site)))
        yield made
    finally:
        for handle in handles:
            handle.remove()


def attribution(spec, contrast, metric, sites=None, cells="cell", direction: str = "clean->corrupted",
                budget_gib: float = DEFAULT_BUDGET_GIB) -> Attribution:  # fmt: skip
    """Estimate every (site, cell group) and (decoder site, position) of ``patching_sweep`` and ``position_sweep``
    (same arguments, same effects) from two forward passes and one backward per batch of pairs."""
    start = time.perf_counter()
    job = plan(spec, contrast, metric, sites, direction)
    groups = cell_groups(spec, job.pairs[0].grid, cells)
    size = attribution_calls(job, len(groups)).batch_size(budget_gib)
    cell_delta = np.zeros((len(job.pairs), len(job.sites), np.prod(job.pairs[0].grid)))
    length = max(getattr(p, job.target)["input_ids"].shape[1] for p in job.pairs)
    position_delta = np.full((len(job.pairs), len(job.sites), length), np.nan)
    base, passes = {"clean": np.zeros(len(job.pairs)), "corrupted": np.zeros(len(job.pairs))}, 0
    for layout in job.contrast.groups:
        for first in range(0, len(layout), size):
            rows = layout[first : first + size]
            (base[job.source][rows], base[job.target][rows]) = _estimate(job, rows, cell_delta, position_delta)
            passes += 2
    target = base[job.target][:, None, None]
    cell_effects = normalised(target + cell_delta @ groups.matrix().T, base["clean"], base["corrupted"])
    decoder = [s for s, site in enumerate(job.sites) if site.order == NONE]
    position_effects = normalised(target + position_delta[:, decoder], base["clean"], base["corrupted"])
    seconds, names = time.perf_counter() - start, [s.name for s in job.sites]
    return Attribution(
        CellEffects("attribution patching", job.metric.name, direction, names, groups, cell_effects, base["clean"],
                    base["corrupted"], cells_changed(job.pairs), processed_pictures(job.pairs), passes, size,
                    seconds),
        PositionEffects("attribution patching", job.metric.name, direction, [names[s] for s in decoder],
                        position_effects, *decoded_tokens(job), base["clean"], base["corrupted"], passes, size,
                        seconds),
    )  # fmt: skip


def _estimate(job: Job, rows: list[int], cell_delta: np.ndarray, position_delta: np.ndarray):
    """Pairs ``rows``: record the source, run the target probed, one backward; fill each site's first-order change
    per cell (``cell_delta``) and per position with a counterpart (``position_delta``). Returns both sides' metric.

    Without a vision site the target's image tokens are computed apart, without gradients: no graph for the tower.
    """
    bare, sides = unwrap(job.spec), job.sides(rows)
    keep = job.metric.span(rows, len(rows))
    measured, source = job.record(rows, sides, keep)
    target = inputs = sides[job.target]
    if all(site.order == NONE for site in job.sites):
        inputs = with_image_tokens(target, image_tokens(bare, target), list(range(len(rows))))
    with torch.enable_grad(), probes(bare, job.sites) as made:
        value = job.metric(bare(**inputs, logits_to_keep=keep, use_cache=False).logits, rows)
        grads = torch.autograd.grad(value.sum(), [made[s.name][0] for s in job.sites])
    image = target["input_ids"] == job.spec.config.image_token_id  # (B, L): each row's cells, raster order
    length = getattr(job.pairs[rows[0]], job.target)["input_ids"].shape[1]  # the prompt, answers not appended
    where = job.moved(rows, length).to(image.device)
    for s, (site, grad) in enumerate(zip(job.sites, grads)):
        change = (source[site.name].float() - made[site.name][1].float()) * grad.float()
        change = change.sum(-1).double()  # (B, L) decoder, (N,) vision in the model's order
        if site.order == NONE:
            cell_delta[rows, s] = change[image].view(len(rows), -1).cpu().numpy()
            position_delta[rows, s, :length] = torch.where(where >= 0, change[:, :length], torch.nan).cpu().numpy()
        else:
            cell_delta[rows, s] = _by_cell(job, site, change, target["image_grid_thw"]).cpu().numpy()
    return measured, value.detach().double().cpu().numpy()


def _by_cell(job: Job, site: Site, change: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """``(N,)`` per vision token (model order, every picture) -> ``(B, rows * cols)`` summed per cell."""
    vision = job.spec.config.vision_config
    raster = change[to_raster(site.order, grid_thw.cpu(), vision).to(change.device)]
    rows, cols = job.pairs[0].grid
    unit = 1 if site.order == MERGED_WINDOW else vision.spatial_merge_size  # tokens per cell side at this site
    per_picture = raster.view(len(grid_thw), rows, unit, cols, unit)  # (B, rows, unit, cols, unit), t = 1
    return per_picture.sum((2, 4)).reshape(len(grid_thw), rows * cols)


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank: ``[10, 30, 20, 20] -> [1, 4, 2.5, 2.5]``."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def spearman(a, b) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks; NaN when either is constant."""
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class RankAgreement:
    """How an estimate ranks the groups against exact patching, per pair and site, ``(pairs, sites)`` each; NaN where
    exact patching moves nothing at the site (every ``shift`` below ``QUIET``).

    Attributes:
        spearman: rank correlation of the two effects over the groups.
        top_k: the share of the estimate's ``k`` groups of largest ``shift`` among exact patching's ``k``.
        first: 1.0 where both give their largest ``shift`` to the same group, else 0.0.
    """

    sites: list[str]
    k: int
    spearman: np.ndarray
    top_k: np.ndarray
    first: np.ndarray

    def table(self) -> str:
        """One line per site: the three numbers' means over the pairs."""
        lines = [f"{'site':<28} spearman  top-{self.k}  same first"]
        for s, site in enumerate(self.sites):
            rho, top, first = (np.nanmean(x[:, s]) if not np.isnan(x[:, s]).all() else np.nan
                               for x in (self.spearman, self.top_k, self.first))  # fmt: skip
            lines.append(f"{site:<28} {rho:8.3f}  {top:5.2f}  {first:10.2f}")
        return "\n".join(lines)


def compare(estimate: CellEffects, exact: CellEffects, k: int = 3) -> RankAgreement:
    """Rank agreement of ``estimate`` (attribution) with ``exact`` (patching) at each site both hold."""
    if estimate.groups.members != exact.groups.members or estimate.direction != exact.direction:
        raise ValueError("compare needs effects over the same cell groups and direction; got "
                         f"{estimate.groups.resolution}/{estimate.direction} and {exact.groups.resolution}/"
                         f"{exact.direction}")  # fmt: skip
    if estimate.effects.shape[0] != exact.effects.shape[0] or estimate.metric != exact.metric:
        raise ValueError("compare needs effects of the same pairs and metric")
    if not 1 <= k <= len(exact.groups):
        raise ValueError(f"k={k}; expected 1 to {len(exact.groups)} (the number of groups)")
    sites = [s for s in exact.sites if s in estimate.sites]
    if not sites:
        raise ValueError(f"no site in common: {estimate.sites} and {exact.sites}")
    shape = (exact.effects.shape[0], len(sites))
    rho, top, first = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for s, name in enumerate(sites):
        for p in range(shape[0]):
            i, j = estimate.sites.index(name), exact.sites.index(name)
            if np.nanmax(exact.shift[p, j]) < QUIET:
                continue
            largest_a = np.argsort(-estimate.shift[p, i], kind="stable")
            largest_b = np.argsort(-exact.shift[p, j], kind="stable")
            rho[p, s] = spearman(estimate.effects[p, i], exact.effects[p, j])
            top[p, s] = len(set(largest_a[:k]) & set(largest_b[:k])) / k
            first[p, s] = float(largest_a[0] == largest_b[0])
    return RankAgreement(sites, k, rho, top, first)


def top_cells(effects: CellEffects, k: int, pairs=None, sites=None) -> Groups:
    """The ``k`` groups that move the metric most: each scored by its largest mean ``shift`` over ``pairs`` at any of
    ``sites`` (default: all), best first; feed them to ``patching_sweep(cells=...)``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(effects.groups):
        raise ValueError(f"k={k!r}; expected an int from 1 to {len(effects.groups)} (the number of groups)")
    chosen = [effects.sites.index(s) for s in sites] if sites is not None else list(range(len(effects.sites)))
    picked = effects.shift[slice(None) if pairs is None else list(pairs)][:, chosen]  # (pairs, sites, groups)
    score = np.nan_to_num(picked.mean(0), nan=-1.0).max(0)
    return effects.groups.subset(np.argsort(-score, kind="stable")[:k])


def compare_figure(estimate: CellEffects, exact: CellEffects, pair: int = 0, sites=None) -> Figure:
    """One pair, side by side per site: the estimate's effects (top row) and exact patching's (bottom row)."""
    names = list(sites) if sites is not None else [s for s in exact.sites if s in estimate.sites]
    agreement = compare(estimate, exact, k=1)
    figure = Figure(figsize=(2.3 * len(names) + 1, 5.2), layout="constrained")
    axes = figure.subplots(2, len(names), squeeze=False)
    clean, corrupted = exact.pictures[pair]
    picture = corrupted if exact.direction == "clean->corrupted" else clean
    for column, name in enumerate(names):
        rho = agreement.spearman[pair, agreement.sites.index(name)]
        for axis, result in zip(axes[:, column], (estimate, exact)):
            shown = draw(axis, picture, result.groups, result.effects[pair, result.sites.index(name)],
                         result.changed[pair], title=f"{short_site(name)}"
                         + (f"\nSpearman {rho:+.2f}" if result is estimate and not np.isnan(rho) else ""))  # fmt: skip
    axes[0, 0].set_ylabel(estimate.method)
    axes[1, 0].set_ylabel(exact.method)
    figure.colorbar(shown, ax=axes[:, -1], label="effect (1 = clean)")
    figure.suptitle(f"{estimate.direction}: {estimate.metric}", fontsize=9)
    return figure
