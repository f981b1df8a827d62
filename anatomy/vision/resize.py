"""Resizing: the size an image is resized to, and what that size costs.

Qwen2.5-VL never crops or pads. It resizes every image so that each side is a
multiple of 28 px (one merged token = 2x2 patches of 14 px) and the area lies
within [min_pixels, max_pixels] (transformers' ``smart_resize``)::

    480 x 640 (height x width) -> round each side to 28:   476 x 644
                               -> 34 x 46 patches of 14 px = 1564 rows of pixel_values
                               -> 17 x 23 merged tokens    =  391 <|image_pad|> tokens

>>> plan = resize_plan(480, 640)
>>> plan.resized, plan.patch_grid, plan.tokens
((476, 644), (34, 46), 391)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from anatomy.inputs import demo_image, resized
from anatomy.lab.figures import grid_lines
from anatomy.lab.widgets import LiveFigure
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


def memory_ratio(height: int, width: int, max_pixels: int, smaller_max_pixels: int,
                 part: str = "eager_full_attention") -> float:
    """How many times less memory ``part`` of ``token_budget`` takes for a height x width image when
    ``max_pixels`` is lowered to ``smaller_max_pixels``.

    >>> round(memory_ratio(1080, 1920, 1024 * 28 * 28, 512 * 28 * 28, "pixel_values"), 2)   # 4032 -> 1920 rows
    2.1
    """
    if part not in Budget.__dataclass_fields__:
        raise ValueError(f"part={part!r}; expected one of {list(Budget.__dataclass_fields__)}")
    before, after = (getattr(token_budget(resize_plan(height, width, max_pixels=m)), part)
                     for m in (max_pixels, smaller_max_pixels))
    return before / after


def grid_figure(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Figure:
    """The resized image with its 14-px patch grid (dotted lines) and 28-px merged-token grid (solid lines)."""
    plan = resize_plan(image.height, image.width, min_pixels, max_pixels)
    height, width = plan.resized
    figure = Figure(figsize=(7, 7 * height / width + 0.6), layout="constrained")
    axis = figure.subplots()
    axis.imshow(resized(image, plan))
    grid_lines(axis, (height, width), PATCH_SIZE, width=0.6, style="dotted")
    grid_lines(axis, (height, width), FACTOR, width=1.4)
    axis.set(xlabel="x (px)", ylabel="y (px)")
    (rows, cols), (token_rows, token_cols) = plan.patch_grid, plan.token_grid
    axis.set_title(
        f"{plan.original[0]} x {plan.original[1]} -> {height} x {width} px (height x width)\n"
        f"dotted: {rows} x {cols} patches of 14 px; solid: {token_rows} x {token_cols} = {plan.tokens} tokens of 28 px"
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
    picture.imshow(resized(demo_image(height, width), plan), extent=(0, new_w, new_h, 0))
    picture.vlines(np.arange(0, new_w + 1, FACTOR), 0, new_h, colors="black", linewidth=0.5, alpha=0.6)
    picture.hlines(np.arange(0, new_h + 1, FACTOR), 0, new_w, colors="black", linewidth=0.5, alpha=0.6)
    picture.set(xlim=(0, new_w), ylim=(new_h, 0), xlabel="x (px)", ylabel="y (px)",
                title=f"max_pixels = {max_pixels // FACTOR**2}·28·28: {height}x{width} -> {new_h}x{new_w} px "
                      f"(H x W)\n"
                      f"{plan.token_grid[0]}x{plan.token_grid[1]} = {plan.tokens} tokens, {plan.patches} patches")
    mib = {name.replace("_", " "): value / 2**20 for name, value in vars(budget).items()}
    bars.barh(list(mib), list(mib.values()), color="tab:blue")
    for y, value in enumerate(mib.values()):
        bars.text(value, y, f" {value:,.1f} MiB", va="center", fontsize=8)
    bars.set(xscale="log", xlim=(0.01, 1e5), xlabel="MiB (log scale)", title="memory of this one image")
    bars.invert_yaxis()
    return figure


def budget_slider(height: int = 1080, width: int = 1920, budgets=(4, 16, 64, 256, 1024, 4096, 16384),
                  start: int = 16384) -> LiveFigure:
    """A slider over ``max_pixels`` = tokens x 28 x 28 for an H x W image: ``budget_figure`` of each choice."""
    import ipywidgets as widgets

    if start not in budgets:
        raise ValueError(f"start={start} is not one of the budgets {budgets}")
    if max(budgets) * FACTOR**2 > MAX_PIXELS:
        raise ValueError(f"budgets up to {max(budgets)} tokens exceed the released max_pixels "
                         f"({MAX_PIXELS // FACTOR**2} tokens)")
    slider = widgets.SelectionSlider(options=[(f"{b} tokens", b * FACTOR**2) for b in budgets],
                                     value=start * FACTOR**2, description="max_pixels",
                                     style={"description_width": "initial"}, layout=widgets.Layout(width="480px"))
    return LiveFigure(lambda max_pixels: budget_figure(height, width, max_pixels), {"max_pixels": slider})
