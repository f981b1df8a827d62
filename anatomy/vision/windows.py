"""Window attention in the vision tower: which patches see each other.

The released vision tower cuts the image into 112x112-px windows (8x8
patches = 4x4 merged tokens; smaller at the bottom edge when the rows do not
divide into whole windows, at the right edge when the columns do not). Blocks
7, 15, 23 and 31 attend over the whole image, the other 28 only inside a
window. The partition is read off the window order (``anatomy.capture.orders``),
which is transformers' own ``get_vision_window_index``.

For a 336 x 448 image (height x width: 24 x 32 patches) the windows form a 3x4 grid:

>>> from anatomy.model import shipped_config
>>> parts = windows((1, 24, 32), shipped_config("7B").vision_config)
>>> parts.window[0, ::8, ::8].tolist(), parts.lengths.tolist()[:4]
([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], [64, 64, 64, 64])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from anatomy.capture.orders import window_lengths, window_to_raster
from anatomy.inputs import resized
from anatomy.lab.figures import grid_lines
from anatomy.processor import PATCH_SIZE as PATCH


def _one_grid(grid_thw) -> tuple[int, int, int]:
    grid = torch.as_tensor(grid_thw).reshape(-1)
    if grid.numel() != 3:
        raise ValueError(f"grid_thw {grid_thw!r} is not one (t, h, w) row; pass image_grid_thw[i]")
    return tuple(int(v) for v in grid)


@dataclass
class Windows:
    """The window partition of one image, in raster order over its patches.

    Attributes:
        window: window id of every patch, ``(t, rows, cols)``.
        window_order: position of every patch in the order the blocks compute, ``(t, rows, cols)``.
        boxes: pixel box ``(x0, y0, x1, y1)`` of every window in the resized image, ``(windows, 4)``.
        lengths: patches in every window, ``(windows,)``.
    """

    window: np.ndarray
    window_order: np.ndarray
    boxes: np.ndarray
    lengths: np.ndarray


def windows(grid_thw, vision_config) -> Windows:
    """The window partition of one image or video (``grid_thw`` = one (t, h, w) row).

    Read off the window order of ``anatomy.capture.orders`` (transformers' ``get_vision_window_index``).
    """
    t, rows, cols = _one_grid(grid_thw)
    grid = torch.tensor([[t, rows, cols]])
    lengths = np.array(window_lengths(grid, vision_config))  # patches per window, in window order
    window_order = window_to_raster(grid, vision_config).numpy()  # raster patch -> its window-order position
    window = np.repeat(np.arange(len(lengths)), lengths)[window_order]
    shape = (t, rows, cols)
    window = window.reshape(shape)
    return Windows(window, window_order.reshape(shape), _boxes(window[0]), lengths)


def cut_edges(grid_thw, vision_config) -> list[str]:
    """The edges whose windows are cut short: ``"bottom"`` if the patch rows do not divide into whole windows,
    ``"right"`` if the columns do not.

    >>> from anatomy.model import shipped_config
    >>> vision = shipped_config("7B").vision_config                 # windows of 8 x 8 patches
    >>> cut_edges((1, 20, 26), vision), cut_edges((1, 24, 26), vision), cut_edges((1, 24, 32), vision)
    (['bottom', 'right'], ['right'], [])
    """
    _, rows, cols = _one_grid(grid_thw)
    side = vision_config.window_size // PATCH  # patches per window side
    return [edge for edge, count in (("bottom", rows), ("right", cols)) if count % side]


def _boxes(window: np.ndarray) -> np.ndarray:
    """Pixel box of every window of one frame: (windows, 4) as x0, y0, x1, y1."""
    boxes = []
    for w in np.unique(window):
        ys, xs = np.nonzero(window == w)
        boxes.append((xs.min() * PATCH, ys.min() * PATCH, (xs.max() + 1) * PATCH, (ys.max() + 1) * PATCH))
    return np.array(boxes)


def window_figure(image: Image.Image, grid_thw, vision_config) -> Figure:
    """The resized image with 14-px patches, 28-px merged tokens and 112-px windows drawn over it."""
    parts = windows(grid_thw, vision_config)
    picture = resized(image, grid_thw)
    figure = Figure(figsize=(8, 8 * picture.height / picture.width + 0.6), layout="constrained")
    axis = figure.subplots()
    axis.imshow(picture)
    grid_lines(axis, (picture.height, picture.width), PATCH, width=0.6, style="dotted")
    grid_lines(axis, (picture.height, picture.width), PATCH * vision_config.spatial_merge_size, width=1.2)
    for w, (x0, y0, x1, y1) in enumerate(parts.boxes):
        axis.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=2.2, zorder=3))
        axis.text(x0 + 4, y0 + 4, f"w{w}: {parts.lengths[w]}", color="red", va="top", fontsize=8,
                  bbox=dict(fc="white", alpha=0.7, lw=0, pad=1))
    axis.set(title=f"{len(parts.boxes)} windows of up to {vision_config.window_size} px (label: window id: patches)\n"
                   f"dotted lines: 14-px patches, solid: 28-px merged tokens")
    return figure
