"""Figure helpers shared by the lessons. Figures are built without pyplot.

Nothing global changes, nothing is shown twice in a notebook, and
``figure.savefig`` works headless. Each lesson draws its own figures; the
pieces several of them need live here.

>>> principal_rgb(torch.arange(24.0).reshape(2, 4, 3)).shape     # (rows, cols, 3) colours in [0, 1]
(2, 4, 3)
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from matplotlib import font_manager, ft2font
from matplotlib.patches import Rectangle
from PIL import Image


@functools.cache
def _default_font() -> ft2font.FT2Font:
    return ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))


def drawable(text: str, limit: int | None = None) -> str:
    """``text`` with each character that matplotlib's default font lacks written as its ``\\uXXXX`` escape;
    at most ``limit`` characters once written, cut between characters (never inside an escape).

    A token's text can be in any script; a missing glyph would be drawn as an empty box.

    >>> drawable(" red"), drawable("\u533a")      # a Chinese character the default font (DejaVu) lacks
    (' red', '\\\\u533a')
    >>> drawable("\u533a\u533a", limit=8), drawable("yellow", limit=4)
    ('\\\\u533a', 'yell')
    """
    font = _default_font()
    written = ""
    for c in text:
        piece = c if c.isascii() or font.get_char_index(ord(c)) else f"\\u{ord(c):04x}"
        if limit is not None and len(written) + len(piece) > limit:
            break
        written += piece
    return written


def principal_rgb(grid: torch.Tensor) -> np.ndarray:
    """Each cell's first 3 principal components as colours in [0, 1]: (rows, cols, D) -> (rows, cols, 3)."""
    if grid.ndim != 3 or grid.shape[-1] < 3:
        raise ValueError(f"grid of shape {tuple(grid.shape)}; expected (rows, cols, D) with D >= 3")
    vectors = grid.reshape(-1, grid.shape[-1]).double()
    vectors = vectors - vectors.mean(0)
    _, _, right = torch.linalg.svd(vectors, full_matrices=False)
    scores = vectors @ right[:3].T  # (cells, 3)
    low, high = scores.min(0).values, scores.max(0).values
    return ((scores - low) / (high - low).clamp_min(1e-12)).reshape(*grid.shape[:2], 3).numpy()


def top_cells(cells: torch.Tensor, share: float = 0.5) -> list[tuple[int, int]]:
    """The fewest (row, col) cells of ``cells`` (rows, cols) that together hold ``share`` of its sum, largest first.

    >>> top_cells(torch.tensor([[0.1, 0.6], [0.3, 0.0]]))
    [(0, 1)]
    """
    if not 0 < share <= 1:
        raise ValueError(f"share={share}; expected a fraction in (0, 1]")
    flat = cells.flatten().double()
    order = flat.argsort(descending=True)
    needed = int((flat[order].cumsum(0) < share * flat.sum()).sum()) + 1
    return [divmod(int(k), cells.shape[1]) for k in order[:needed]]


def outline_cells(axis, cells: torch.Tensor, step: float, share: float = 0.5, colour: str = "cyan") -> None:
    """Outline on a picture the cells of ``cells`` (rows, cols, ``step`` px each) that hold ``share`` of its sum.

    The picture keeps its own colours: attention is never painted over it as a tint.
    """
    for row, col in top_cells(cells, share):
        axis.add_patch(Rectangle((col * step - 0.5, row * step - 0.5), step, step, fill=False, ec=colour, lw=2))


def draw_picture(axis, picture: Image.Image, title: str = "") -> None:
    """The picture as it is, without ticks."""
    axis.imshow(picture)
    axis.set(title=title, xticks=[], yticks=[])


def draw_cells(axis, cells: torch.Tensor, title: str = "", vmax: float | None = None, cmap: str = "inferno"):
    """``cells`` (rows, cols) as a heat map from 0 to ``vmax``, integer ticks, light lines between cells.

    Returns the image, for a colour bar.
    """
    shown = axis.imshow(cells.numpy(), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    rows, cols = cells.shape
    axis.set_xticks(range(cols))
    axis.set_yticks(range(rows))
    axis.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    axis.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    axis.grid(which="minor", color="0.6", lw=0.5)
    axis.tick_params(which="both", length=0, labelsize=7)
    axis.set_title(title, fontsize=9)
    return shown


def grid_lines(axis, shape: tuple[int, int], step: int, width: float = 0.6) -> None:
    """Lines every ``step`` px over a picture of ``shape`` (height, width) px, dark with a light edge.

    Drawn twice (a wider white line under a dark one), they show on dark and light pictures alike.
    """
    height, wide = shape
    for colour, line in (("white", 2.2 * width), ("0.15", width)):
        axis.vlines(np.arange(step, wide, step) - 0.5, -0.5, height - 0.5, colors=colour, linewidth=line)
        axis.hlines(np.arange(step, height, step) - 0.5, -0.5, wide - 0.5, colors=colour, linewidth=line)
