"""The patch merger: four neighbouring patches become one decoder token.

RMSNorm over each 1280-wide patch, then the 2x2 group of patches that the
processor put next to each other is read as one 4*1280 = 5120-wide row, and
an MLP (Linear 5120->5120, GELU, Linear 5120->decoder width) maps it to the
decoder. A 24x32-patch image becomes 12x16 = 192 tokens. Which patches form
each token is ``anatomy.capture.orders.merge_groups``.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from anatomy.inputs import resized
from anatomy.lab.figures import principal_rgb


def merger_shapes(vision_config) -> list[tuple[str, str]]:
    """Each step of the merger with the width it produces, for this config."""
    width, merge = vision_config.hidden_size, vision_config.spatial_merge_size
    grouped = width * merge * merge
    return [
        ("patches in", f"(patches, {width})"),
        ("ln_q (RMSNorm)", f"(patches, {width})"),
        (f"{merge}x{merge} group -> one row", f"(patches/{merge * merge}, {grouped})"),
        ("mlp.0 Linear + GELU", f"(tokens, {grouped})"),
        ("mlp.2 Linear", f"(tokens, {vision_config.out_hidden_size})"),
    ]


def merge_by_hand(merger, patches: torch.Tensor) -> torch.Tensor:
    """The merger recomputed step by step on window-order patches: (patches, D) -> (patches/4, out)."""
    grouped = merger.ln_q(patches).reshape(-1, merger.hidden_size)  # (tokens, 4*D): 4 consecutive patches
    return merger.mlp[2](merger.mlp[1](merger.mlp[0](grouped)))


def token_map_figure(tokens: torch.Tensor, prompt, title: str) -> Figure:
    """Merged tokens (raster order) of the prompt's first image as an RGB map of their first 3 principal components."""
    grid_thw = prompt.grid_thw[0]
    image = prompt.image
    _, rows, cols = (int(v) for v in grid_thw)
    colours = principal_rgb(tokens[: rows * cols // 4].float().reshape(rows // 2, cols // 2, -1))
    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(resized(image, grid_thw))
    left.set(title="resized input")
    right.imshow(colours, interpolation="nearest")
    right.set(title=title, xlabel="token column (28 px)", ylabel="token row (28 px)")
    return figure
