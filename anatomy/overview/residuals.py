"""The residual stream across the whole model: its size after every vision block and decoder layer."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def stack_norms(cache, prefix: str) -> np.ndarray:
    """Mean L2 norm per token of each ``{prefix}.{i}.output`` in the cache: (layers,)."""
    names = sorted((n for n in cache if n.startswith(prefix) and n.endswith(".output")),
                   key=lambda n: int(n[len(prefix) + 1:].split(".")[0]))
    return np.array([cache[n].float().norm(dim=-1).mean().item() for n in names])


def residual_norms_figure(cache) -> Figure:
    """Mean norm of the residual stream after every vision block and decoder layer.

    Needs ``vision.blocks.*.output`` and ``decoder.layers.*.output`` in the cache.
    """
    vision, decoder = stack_norms(cache, "vision.blocks"), stack_norms(cache, "decoder.layers")
    if not len(vision) and not len(decoder):
        raise ValueError("the cache holds no vision.blocks.*.output or decoder.layers.*.output to draw")
    figure = Figure(figsize=(10, 3.2), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, norms, stack in ((axes[0], vision, "vision block"), (axes[1], decoder, "decoder layer")):
        axis.plot(np.arange(len(norms)), norms, marker="o")
        axis.set_xticks(np.arange(len(norms)))
        axis.set(title=f"residual stream after each {stack}", xlabel=stack, ylabel="mean L2 norm per token")
        axis.grid(alpha=0.3)
    return figure
