"""Patches: how the processor turns pixels into rows of 1176 values, and the patch embedding.

Each row of ``pixel_values`` is one 14x14 patch over 2 frames and 3 channels,
flattened channel-major: ``3 x 2 x 14 x 14 = 1176`` values. A still image is
repeated to 2 frames. Rows come in processor order: the 4 patches of each
2x2 group (one future merged token) are contiguous::

    patch grid (raster numbers)     rows of pixel_values
     0  1  2  3                      0 1 4 5  2 3 6 7
     4  5  6  7           ->         \\_____/  \\_____/
                                    token 0   token 1

The patch embedding is a Conv3d with kernel = stride = (2, 14, 14), so on these
rows it is exactly one matrix product: ``Linear(1176, hidden, bias=False)``.

>>> from anatomy.inputs import demo_image
>>> from anatomy.processor import resize_plan
>>> image = demo_image(224, 224)
>>> rows = patchify(normalised_image(image, resize_plan(image.height, image.width)))
>>> rows.shape                          # 224 x 224 px -> 16 x 16 patches
torch.Size([256, 1176])
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as tvF

from anatomy.inputs import resized
from anatomy.lab.figures import principal_rgb
from anatomy.processor import (
    CLIP_MEAN,
    CLIP_STD,
    FACTOR,
    MERGE_SIZE,
    PATCH_SIZE,
    ROW_VALUES,
    TEMPORAL_PATCH_SIZE,
    ResizePlan,
)

ROW_SHAPE = (3, TEMPORAL_PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)  # (channel, frame, y, x) of one row's 1176 values


def normalise(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 (..., 3, H, W) pixels to ``size`` = (H', W') and normalise: (..., 3, H', W') float32.

    Bicubic and antialiased on uint8, as the processor does; then scaled to [0, 1] and
    normalised per channel with the CLIP mean and std: a mid-grey 128 becomes
    (128/255 - 0.481) / 0.269 = 0.077 in red.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim < 3 or pixels.shape[-3] != 3:
        raise ValueError(
            f"pixels of shape {tuple(pixels.shape)} and dtype {pixels.dtype}; expected uint8 (..., 3, H, W)"
        )
    resized = tvF.resize(pixels, list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (resized.float() / 255 - mean) / std


def normalised_image(image: Image.Image, plan: ResizePlan) -> torch.Tensor:
    """The image as the processor sees it before patchify: (3, H', W') float32."""
    plan.check(image)
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)  # (3, H, W) uint8
    return normalise(pixels, plan.resized)


def patchify(frames: torch.Tensor) -> torch.Tensor:
    """Rows of ``pixel_values`` from (T, 3, H, W) frames or one (3, H, W) image.

    An odd frame count is padded by repeating the last frame, so a still image
    becomes 2 identical frames. H and W must be multiples of 28.
    Returns (T/2 * H/14 * W/14, 1176) in processor order: temporal patch, then 2x2
    group in raster order, then the patch inside its group.
    """
    shape = tuple(frames.shape)
    frames = frames[None] if frames.ndim == 3 else frames
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] % FACTOR or frames.shape[3] % FACTOR:
        raise ValueError(f"frames of shape {shape}; expected (T, 3, H, W) or (3, H, W), H and W multiples of {FACTOR}")
    if pad := -frames.shape[0] % TEMPORAL_PATCH_SIZE:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = frames.shape
    p, m, tp = PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE
    x = frames.reshape(t // tp, tp, c, h // p // m, m, p, w // p // m, m, p)  # (gt, tp, c, bh, mh, py, bw, mw, px)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, bh, bw, mh, mw, c, tp, py, px)
    return x.reshape(-1, c * tp * p * p)  # (gt * gh * gw, 1176)


def row_position(k: int) -> tuple[int, int, int, int]:
    """Which pixel value ``k`` of a row holds: (channel, frame, y, x) inside the patch.

    >>> row_position(0), row_position(14), row_position(196), row_position(392)
    ((0, 0, 0, 0), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0))
    """
    if not isinstance(k, (int, np.integer)) or not 0 <= k < ROW_VALUES:
        raise ValueError(f"k={k!r}; expected an integer in [0, {ROW_VALUES})")
    return tuple(int(i) for i in np.unravel_index(k, ROW_SHAPE))


def conv_as_linear(patch_embed: nn.Module) -> nn.Linear:
    """The patch embedding's Conv3d as the Linear(1176, hidden) it is on flattened rows.

    The Conv3d weight (hidden, 3, 2, 14, 14) flattens to (hidden, 1176) in the same
    (channel, frame, y, x) order as a row.
    """
    conv = getattr(patch_embed, "proj", patch_embed)
    if not isinstance(conv, nn.Conv3d) or conv.kernel_size != conv.stride:
        raise TypeError(f"expected the vision patch_embed (a Conv3d with kernel = stride), got {type(conv).__name__}")
    linear = nn.Linear(ROW_VALUES, conv.out_channels, bias=conv.bias is not None,
                       dtype=conv.weight.dtype, device=conv.weight.device)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(conv.out_channels, ROW_VALUES))  # (hidden, 1176)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear


def conv_linear_gap(patch_embed: nn.Module, pixel_values: torch.Tensor) -> float:
    """Max |Conv3d(rows) - Linear(rows)| over ``pixel_values`` (patches, 1176)."""
    if pixel_values.ndim != 2 or pixel_values.shape[1] != ROW_VALUES:
        raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}; expected (patches, {ROW_VALUES})")
    linear = conv_as_linear(patch_embed)
    rows = pixel_values.to(linear.weight)
    with torch.no_grad():
        return (patch_embed(rows) - linear(rows)).abs().max().item()


def embedding_grid(cache, site: str = "vision.patch_embed") -> torch.Tensor:
    """A captured patch-level site of one image as (rows, cols, D), raster order, float32."""
    if len(cache.grid_thw) != 1 or cache.grid_thw[0].shape[0] != 1:
        raise ValueError(f"expected a cache of one image, got grids {cache.grid_thw}")
    t, rows, cols = cache.grid_thw[0][0].tolist()
    return cache[site].float().reshape(t, rows, cols, -1)[0]  # first temporal patch


def embedding_figure(cache, image: Image.Image, plan: ResizePlan, site: str = "vision.patch_embed") -> Figure:
    """The resized image, its patch vectors' first 3 principal components as RGB, and their norms."""
    grid = embedding_grid(cache, site)
    if tuple(grid.shape[:2]) != plan.patch_grid:
        raise ValueError(f"the cache's patch grid {tuple(grid.shape[:2])} is not the plan's {plan.patch_grid}")
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    axes = figure.subplots(1, 3)
    axes[0].imshow(resized(image, plan))
    axes[0].set_title(f"resized input, {plan.resized[0]} x {plan.resized[1]} px (height x width)")
    axes[1].imshow(principal_rgb(grid))
    axes[1].set_title("principal components 1-3 as RGB")
    shown = axes[2].imshow(grid.norm(dim=-1).numpy(), cmap="viridis")
    axes[2].set_title("L2 norm per patch")
    figure.suptitle(f"{site}, one vector per 14-px patch, raster order")
    figure.colorbar(shown, ax=axes[2], shrink=0.8)
    for axis in axes[1:]:
        axis.set(xlabel=f"patch column (of {plan.patch_grid[1]})", ylabel=f"patch row (of {plan.patch_grid[0]})")
    return figure
