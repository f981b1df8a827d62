"""The patch merger: four neighbouring patches become one decoder token.

RMSNorm over each 1280-wide patch, then the 2x2 group of patches that the
processor put next to each other is read as one 4*1280 = 5120-wide row, and
an MLP (Linear 5120->5120, GELU, Linear 5120->decoder width) maps it to the
decoder. A 24x32-patch image becomes 12x16 = 192 tokens. Which patches form
each token is ``anatomy.capture.orders.merge_groups``.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from anatomy.inputs import resized
from anatomy.lab.figures import principal_rgb
from anatomy.processor import FACTOR

# the flat colours anatomy.inputs.demo_image paints its objects with; everything else in it is sky
DEMO_REGIONS = {"house": (200, 40, 40), "roof": (120, 60, 30), "sun": (250, 210, 40), "sign": (255, 255, 255),
                "grass": (70, 150, 60)}


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
    right.set(xlabel="token column (28 px)", ylabel="token row (28 px)")
    right.set_title(title, wrap=True)
    step = -(-max(rows, cols) // 2 // 16)  # integer ticks, at most 16 a side
    right.set_xticks(range(0, cols // 2, step))
    right.set_yticks(range(0, rows // 2, step))
    return figure


def cell_regions(picture: Image.Image, palette: dict[str, tuple[int, int, int]], rest: str) -> np.ndarray:
    """``(rows, cols)``: for each 28-px cell (one merged token) of the resized ``picture``, the name of the
    palette colour that covers more than half of its pixels (within 10 per channel), else ``rest``.

    >>> picture = Image.new("RGB", (56, 28), (255, 255, 255))       # PIL sizes are (width, height)
    >>> picture.paste((200, 40, 40), (28, 0, 56, 28))
    >>> cell_regions(picture, {"house": (200, 40, 40)}, rest="sky").tolist()
    [['sky', 'house']]
    """
    pixels = np.asarray(picture.convert("RGB")).astype(int)  # (height, width, 3)
    rows, cols = pixels.shape[0] // FACTOR, pixels.shape[1] // FACTOR
    cells = pixels[: rows * FACTOR, : cols * FACTOR].reshape(rows, FACTOR, cols, FACTOR, 3).swapaxes(1, 2)
    names = np.full((rows, cols), rest, dtype=object)
    for name, colour in palette.items():
        covered = (np.abs(cells - np.array(colour)) <= 10).all(-1).mean(axis=(2, 3))  # (rows, cols)
        names[covered > 0.5] = name
    return names


def region_similarity(tokens: torch.Tensor, regions: np.ndarray) -> tuple[list[str], torch.Tensor]:
    """The regions named in ``regions`` (rows, cols) and the cosine similarity of their mean merged tokens,
    ``(regions, regions)``; ``tokens`` is (rows * cols, D) in raster order."""
    names = list(dict.fromkeys(regions.reshape(-1)))  # in reading order
    if tokens.shape[0] != regions.size:
        raise ValueError(f"{tokens.shape[0]} tokens for a {regions.shape} grid of cells; expected {regions.size}")
    flat = regions.reshape(-1)
    means = torch.stack([tokens[torch.from_numpy(flat == name)].float().mean(0) for name in names])  # (regions, D)
    return names, torch.nn.functional.cosine_similarity(means[:, None], means[None], dim=-1)


def nearest_regions(names: list[str], similar: torch.Tensor) -> dict[str, tuple[str, float]]:
    """Each region's most similar other region and their similarity, from ``region_similarity``.

    >>> nearest_regions(["sky", "sign", "sun"], torch.tensor([[1.0, 0.9, 0.3], [0.9, 1.0, 0.6], [0.3, 0.6, 1.0]]))
    {'sky': ('sign', 0.9), 'sign': ('sky', 0.9), 'sun': ('sign', 0.6)}
    """
    found = {}
    for k, name in enumerate(names):
        others = [j for j in range(len(names)) if j != k]
        j = max(others, key=lambda j: float(similar[k, j]))
        found[name] = (names[j], round(float(similar[k, j]), 2))
    return found
