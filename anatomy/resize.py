"""Resizing: the size an image is resized to, and what that size costs.

Qwen2.5-VL never crops or pads. It resizes every image so that each side is a
multiple of 28 px (one merged token = 2x2 patches of 14 px) and the area lies
within [min_pixels, max_pixels] (transformers' ``smart_resize``)::

    640 x 480 (W x H)  -> round each side to 28:   644 x 476
                       -> 46 x 34 patches of 14 px = 1564 rows of pixel_values
                       -> 23 x 17 merged tokens    =  391 <|image_pad|> tokens

>>> plan = resize_plan(480, 640)
>>> plan.resized, plan.patch_grid, plan.tokens
((476, 644), (34, 46), 391)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from anatomy.inputs import demo_image
from anatomy.processor import MAX_PIXELS, MERGE_SIZE, MIN_PIXELS, PATCH_SIZE, TEMPORAL_PATCH_SIZE

MAX_ASPECT_RATIO = 200  # smart_resize refuses anything longer and thinner
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: the side of one merged token, in pixels
ROW_VALUES = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176 values per pixel_values row


@dataclass(frozen=True)
class ResizePlan:
    """What the image processor does to an H x W image.

    Attributes:
        original: (H, W) in pixels.
        resized: (H', W'), multiples of 28 with min_pixels <= H'W' <= max_pixels.
        patch_grid: (H'/14, W'/14): rows and columns of 14-px patches.
        token_grid: (H'/28, W'/28): rows and columns of merged tokens.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    patch_grid: tuple[int, int]
    token_grid: tuple[int, int]

    @property
    def patches(self) -> int:
        """Rows of ``pixel_values``: one per 14-px patch."""
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def tokens(self) -> int:
        """``<|image_pad|>`` tokens the decoder sees: one per 28-px cell."""
        return self.token_grid[0] * self.token_grid[1]


def check_size(height, width) -> None:
    """Refuse a size that is not two positive integers, or whose aspect ratio is above 200."""
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in (height, width)):
        raise ValueError(f"image size height={height!r}, width={width!r}; expected two positive integers")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of {height} x {width} px (H x W) has aspect ratio {max(height, width) / min(height, width):.1f}; "
            f"Qwen2.5-VL's smart_resize refuses an aspect ratio above {MAX_ASPECT_RATIO}"
        )


def _check_bounds(min_pixels, max_pixels) -> None:
    if not (isinstance(min_pixels, int) and isinstance(max_pixels, int) and 0 < min_pixels <= max_pixels):
        raise ValueError(f"need integers 0 < min_pixels <= max_pixels, got min_pixels={min_pixels!r}, max_pixels={max_pixels!r}")


def resize_plan(height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> ResizePlan:
    """Where an H x W image goes: transformers' ``smart_resize`` with factor 28, then the grids.

    >>> resize_plan(20, 20).resized     # too small: scaled up until the area reaches 3136 = 56 x 56
    (56, 56)
    >>> resize_plan(1080, 1920, max_pixels=1280 * 28 * 28).tokens    # too big: scaled down to 728 x 1316 px
    1222
    """
    check_size(height, width)
    _check_bounds(min_pixels, max_pixels)
    new_h, new_w = smart_resize(height, width, FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    patch_grid = (new_h // PATCH_SIZE, new_w // PATCH_SIZE)
    token_grid = (new_h // FACTOR, new_w // FACTOR)
    return ResizePlan((height, width), (new_h, new_w), patch_grid, token_grid)


@dataclass(frozen=True)
class Budget:
    """Memory an image costs, in bytes. ``pixel_values`` is exact; the rest are estimates.

    Attributes:
        pixel_values: patches x 1176 float32 values, as the processor returns them.
        residual_per_block: patches x hidden x bytes: one copy of the vision residual
            stream (every block reads and writes one; the MLP's hidden layer is ~2.7x wider).
        eager_full_attention: heads x patches^2 x bytes: the probabilities an eager
            full-attention block would hold at once (sdpa and flash kernels never do).
        kv_cache_per_decoder_layer: tokens x 2 x kv_heads x head_dim x bytes in the decoder.
    """

    pixel_values: int
    residual_per_block: int
    eager_full_attention: int
    kv_cache_per_decoder_layer: int


def token_budget(plan: ResizePlan, vision_config=None, text_config=None, bytes_per_value: int = 2) -> Budget:
    """Estimated memory of one image (defaults: the released vision tower, 7B decoder, bf16).

    >>> token_budget(resize_plan(1080, 1920)).pixel_values    # 10764 patches x 1176 x 4 bytes
    50633856
    """
    if not isinstance(plan, ResizePlan):
        raise TypeError(f"plan is a {type(plan).__name__}; expected a ResizePlan from resize_plan()")
    if bytes_per_value not in (1, 2, 4):
        raise ValueError(f"bytes_per_value={bytes_per_value!r}; expected 1, 2 (bf16) or 4 (float32)")
    hidden, heads = (vision_config.hidden_size, vision_config.num_heads) if vision_config else (1280, 16)
    kv_heads, head_dim = (4, 128) if text_config is None else (
        text_config.num_key_value_heads, text_config.hidden_size // text_config.num_attention_heads)
    kv_width = 2 * kv_heads * head_dim  # a key and a value per kv head
    return Budget(
        pixel_values=plan.patches * ROW_VALUES * 4,
        residual_per_block=plan.patches * hidden * bytes_per_value,
        eager_full_attention=heads * plan.patches**2 * bytes_per_value,
        kv_cache_per_decoder_layer=plan.tokens * kv_width * bytes_per_value,
    )


def resize_image(image: Image.Image, plan: ResizePlan) -> Image.Image:
    """The image at the plan's size (bicubic, like the processor), for drawing."""
    if not isinstance(image, Image.Image) or image.size != plan.original[::-1]:
        size = getattr(image, "size", None)
        raise ValueError(f"image of size {size} (W x H) does not match the plan's original {plan.original[::-1]} (W x H)")
    return image.resize(plan.resized[::-1], Image.Resampling.BICUBIC)


def grid_figure(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Figure:
    """The resized image with its 14-px patch grid (thin) and 28-px merged-token grid (thick)."""
    plan = resize_plan(image.height, image.width, min_pixels, max_pixels)
    height, width = plan.resized
    figure = Figure(figsize=(7, 7 * height / width + 0.6), layout="constrained")
    axis = figure.subplots()
    axis.imshow(resize_image(image, plan), extent=(0, width, height, 0))
    for step, line in ((PATCH_SIZE, 0.4), (FACTOR, 1.4)):
        axis.vlines(np.arange(0, width + 1, step), 0, height, colors="white", linewidth=line, alpha=0.8)
        axis.hlines(np.arange(0, height + 1, step), 0, width, colors="white", linewidth=line, alpha=0.8)
    axis.set(xlim=(0, width), ylim=(height, 0), xlabel="x (px)", ylabel="y (px)")
    (rows, cols), (token_rows, token_cols) = plan.patch_grid, plan.token_grid
    axis.set_title(
        f"{plan.original[1]}x{plan.original[0]} -> {width}x{height} px (W x H)\n"
        f"{rows}x{cols} patches of 14 px (thin), {token_rows}x{token_cols} = {plan.tokens} tokens of 28 px (thick)"
    )
    return figure


def budget_figure(height: int, width: int, max_pixels: int, min_pixels: int = MIN_PIXELS) -> Figure:
    """What ``max_pixels`` does to an H x W image (the demo picture at that size): left, the resized picture with
    its 28-px token grid; right, its memory (``token_budget``: released vision tower, 7B decoder, bf16)."""
    plan = resize_plan(height, width, min_pixels, max_pixels)
    budget = token_budget(plan)
    new_h, new_w = plan.resized
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    picture, bars = figure.subplots(1, 2, width_ratios=(1.4, 1))
    picture.imshow(resize_image(demo_image(width, height), plan), extent=(0, new_w, new_h, 0))
    picture.vlines(np.arange(0, new_w + 1, FACTOR), 0, new_h, colors="black", linewidth=0.5, alpha=0.6)
    picture.hlines(np.arange(0, new_h + 1, FACTOR), 0, new_w, colors="black", linewidth=0.5, alpha=0.6)
    picture.set(xlim=(0, new_w), ylim=(new_h, 0), xlabel="x (px)", ylabel="y (px)",
                title=f"max_pixels = {max_pixels // FACTOR**2}·28·28: {height}x{width} -> {new_h}x{new_w} px (H x W)\n"
                      f"{plan.token_grid[0]}x{plan.token_grid[1]} = {plan.tokens} tokens, {plan.patches} patches")
    mib = {name.replace("_", " "): value / 2**20 for name, value in vars(budget).items()}
    bars.barh(list(mib), list(mib.values()), color="tab:blue")
    for y, value in enumerate(mib.values()):
        bars.text(value, y, f" {value:,.1f} MiB", va="center", fontsize=8)
    bars.set(xscale="log", xlim=(0.01, 1e5), xlabel="MiB (log scale)", title="memory of this one image")
    bars.invert_yaxis()
    return figure
