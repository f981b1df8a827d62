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

from anatomy.inputs import resized
from anatomy.processor import FACTOR, MAX_PIXELS, MIN_PIXELS, PATCH_SIZE, ROW_VALUES, ResizePlan, resize_plan


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


def grid_figure(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Figure:
    """The resized image with its 14-px patch grid (thin) and 28-px merged-token grid (thick)."""
    plan = resize_plan(image.height, image.width, min_pixels, max_pixels)
    height, width = plan.resized
    figure = Figure(figsize=(7, 7 * height / width + 0.6), layout="constrained")
    axis = figure.subplots()
    axis.imshow(resized(image, plan), extent=(0, width, height, 0))
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
