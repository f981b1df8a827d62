"""Head ablation per decoder attention head, for any contrast: zero, mean or patch one head at a time.

>>> ld = logit_diff(spec, "red", "blue")
>>> result = head_sweep(spec, contrast, ld)                        # each head's output zeroed in turn
>>> result = head_sweep(spec, contrast, ld, ablation="patch")      # ... or taken from the corrupted run
>>> result.effects.shape                                           # (pairs, layers, heads)

A head's output is its slice of the input of its layer's ``o_proj``, ``(B, L, heads * head_dim)``.
Each copy runs a pair's clean prompt with one head's output replaced at every position:

    zero   by zeros: ``zero("decoder.layers.i.self_attn", heads=[h])`` applied by ``intervene``
    mean   by its mean over the corrupted prompt's positions (one vector at every position)
    patch  by its output in the corrupted run, position by counterpart (``Pair.counterpart``); a position
           without one keeps the clean value

``intervene`` takes ``heads=`` with zero ablation only, so mean and patch are written one step later: the
layer's attention output (``decoder.layers.i.self_attn``) is patched with ``o_proj`` applied to the clean
run's head outputs, head h replaced. Nothing before the layer changes, so that is the ablated copy's own
attention output. Effects are normalised as in ``anatomy.causal.knockouts``: 1 = nothing lost.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.causal.batches import image_tokens, with_image_tokens
from anatomy.causal.calls import head_calls
from anatomy.causal.edits import Layout, Recording, patch, zero
from anatomy.causal.interventions import intervene
from anatomy.causal.knockouts import layer_job
from anatomy.causal.sweeps import DEFAULT_BUDGET_GIB, Job, normalised
from anatomy.lab.figures import drawable
from anatomy.model import decoder_layers, text_config, unwrap

ABLATIONS = ("zero", "mean", "patch")


@dataclass
class Heads:
    """Effects of ablating each (decoder layer, head): ``(pairs, layers, heads)``.

    Attributes:
        ablation: ``"zero"``, ``"mean"`` or ``"patch"``; layers: the decoder layers swept.
        values: the metric of each ablated copy; effects: ``(values - corrupted) / (clean - corrupted)``.
        clean, corrupted: ``(pairs,)`` the metric of the two unedited runs.
        forward_passes, batch_size, seconds: what it cost (model calls, copies per call, wall time).
    """

    metric: str
    ablation: str
    layers: list[int]
    values: np.ndarray
    effects: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    forward_passes: int
    batch_size: int
    seconds: float


@contextlib.contextmanager
def head_outputs(model, layers: list[int]):
    """Inside the block, a forward pass keeps the head outputs of decoder ``layers`` (each the input of its
    ``o_proj``, ``(B, L, heads * head_dim)``); yields ``{layer: tensor}``, filled as the layers run."""
    kept, handles = {}, []

    def keep(layer: int):
        def hook(module, args):
            kept[layer] = args[0].detach()
        return hook

    try:
        for layer in layers:
            handles.append(decoder_layers(model)[layer].self_attn.o_proj.register_forward_pre_hook(keep(layer)))
        yield kept
    finally:
        for handle in handles:
            handle.remove()


def head_job(spec, contrast, metric, layers, ablation: str) -> tuple[Job, list[int]]:
    """``layer_job``'s job and layers, once ``ablation`` is known."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation={ablation!r}; expected one of {ABLATIONS}")
    return layer_job(spec, contrast, metric, layers)


def head_sweep(spec, contrast, metric, layers=None, ablation: str = "zero",
               budget_gib: float = DEFAULT_BUDGET_GIB) -> Heads:  # fmt: skip
    """Ablate each head of ``layers`` (None: all) in turn, one (layer, head) per copy of each pair's clean prompt.
    Every refusal happens before the model runs."""
    start = time.perf_counter()
    job, chosen = head_job(spec, contrast, metric, layers, ablation)
    heads = text_config(spec.config).num_attention_heads
    size = head_calls(job, len(chosen), ablation).batch_size(budget_gib)
    values = np.zeros((len(job.pairs), len(chosen), heads))
    base, passes, bare = {"clean": np.zeros(len(job.pairs)), "corrupted": np.zeros(len(job.pairs))}, 0, unwrap(spec)
    recorded = chosen if ablation != "zero" else []
    for rows in job.contrast.groups:
        sides, keep, local = job.sides(rows), job.metric.span(rows, len(rows)), list(range(len(rows)))
        target = sides["clean"]
        with torch.no_grad(), head_outputs(bare, recorded) as source:
            base["corrupted"][rows] = job.read(bare(**sides["corrupted"], logits_to_keep=keep,
                                                    use_cache=False).logits, rows)  # fmt: skip
        with torch.no_grad(), head_outputs(bare, recorded) as own:
            images = image_tokens(bare, target)
            base["clean"][rows] = job.read(bare(**with_image_tokens(target, images, local),
                                                logits_to_keep=keep, use_cache=False).logits, rows)  # fmt: skip
        passes += 3
        copies = [(p, h) for p in local for h in range(heads)]
        for i, layer in enumerate(chosen):
            wanted = replacement(job, rows, ablation, source[layer], own[layer]) if recorded else None
            for first in range(0, len(copies), size):
                chunk = copies[first : first + size]
                inputs = with_image_tokens(target, images, [p for p, _ in chunk])
                edits = _edits(bare, layer, chunk, inputs, own.get(layer), wanted)
                with torch.no_grad(), intervene(bare, edits):
                    read = job.read(bare(**inputs, logits_to_keep=keep, use_cache=False).logits,
                                    [rows[p] for p, _ in chunk])  # fmt: skip
                for (p, h), value in zip(chunk, read):
                    values[rows[p], i, h] = value
                passes += 1
    return Heads(job.metric.name, ablation, chosen, values, normalised(values, base["clean"], base["corrupted"]),
                 base["clean"], base["corrupted"], passes, size, time.perf_counter() - start)  # fmt: skip


def replacement(job: Job, rows: list[int], ablation: str, source: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``(B, L_clean, heads * head_dim)``: what every head's output becomes at each clean position. ``source`` and
    ``own``: the corrupted and clean runs' head outputs of one layer, answers appended as the metric wants."""
    if ablation == "mean":
        length = job.pairs[rows[0]].corrupted["input_ids"].shape[1]  # the corrupted prompt, answers not appended
        return source[:, :length].mean(1, keepdim=True).expand_as(own)
    where = job.moved(rows, own.shape[1]).to(own.device)  # (B, L_clean): the corrupted position, -1 none
    moved = source[torch.arange(len(rows), device=own.device)[:, None], where.clamp(min=0)]
    return torch.where((where >= 0)[..., None], moved, own)


def _edits(bare, layer: int, chunk: list[tuple[int, int]], inputs: dict, own, wanted) -> list:
    """Zero: one ``zero(heads=[h])`` per head in the chunk. Mean, patch: one patch of the layer's attention output,
    ``o_proj`` of the clean head outputs with each copy's head replaced by ``wanted``."""
    site = f"decoder.layers.{layer}.self_attn"
    if wanted is None:
        return [zero(site, heads=[h], rows=[k for k, (_, g) in enumerate(chunk) if g == h])
                for h in sorted({h for _, h in chunk})]  # fmt: skip
    pairs = torch.tensor([p for p, _ in chunk], device=own.device)
    heads = text_config(bare.config).num_attention_heads
    mixed = own[pairs].view(*own[pairs].shape[:-1], heads, -1).clone()  # (copies, L, heads, head_dim)
    chosen = torch.tensor([h for _, h in chunk], device=own.device)
    copies = torch.arange(len(chunk), device=own.device)
    mixed[copies, :, chosen] = wanted[pairs].view(mixed.shape)[copies, :, chosen]
    output = decoder_layers(bare)[layer].self_attn.o_proj(mixed.flatten(-2))  # (copies, L, hidden)
    return [patch(site, Recording({site: output}, Layout.of(inputs), bare))]


def heads_figure(result: Heads, pair: int = 0) -> Figure:
    """One pair: what ablating each (layer, head) lost, ``1 - effect``, as a heat map."""
    lost = 1 - result.effects[pair]  # (layers, heads)
    figure = Figure(figsize=(max(4.0, 0.3 * lost.shape[1] + 2), max(2.5, 0.3 * lost.shape[0] + 1.2)),
                    layout="constrained")  # fmt: skip
    axis = figure.subplots()
    shown = axis.imshow(lost, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    if lost.size <= 64:
        for (i, h), value in np.ndenumerate(lost):
            axis.text(h, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    axis.set_xticks(range(lost.shape[1]))
    axis.set_yticks(range(lost.shape[0]), [str(layer) for layer in result.layers])
    axis.set(xlabel="head", ylabel="decoder layer")
    figure.colorbar(shown, ax=axis, label="lost: 1 - effect (0 = nothing)")
    axis.set_title(f"{result.ablation} ablation, one head at a time\n{drawable(result.metric, 60)}", fontsize=9)
    return figure
