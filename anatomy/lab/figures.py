"""Figure helpers shared by the lessons. Figures are built without pyplot.

Nothing global changes, nothing is shown twice in a notebook, and
``figure.savefig`` works headless. Each lesson draws its own figures; the
pieces several of them need live here.

>>> principal_rgb(torch.arange(24.0).reshape(2, 4, 3)).shape     # (rows, cols, 3) colours in [0, 1]
(2, 4, 3)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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


def draw_over_image(axis, picture: Image.Image, cells: torch.Tensor, title: str = "") -> None:
    """Draw ``cells`` (h', w') as a heat map over ``picture`` (the resized image), stretched to cover it."""
    axis.imshow(picture)
    axis.imshow(cells.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest",
                extent=(0, picture.width, picture.height, 0))
    axis.set(title=title, xticks=[], yticks=[])


def grid_lines(axis, size: tuple[int, int], step: int, style: dict) -> None:
    """Vertical and horizontal lines every ``step`` px over a (width, height) picture."""
    width, height = size
    for x in range(step, width, step):
        axis.axvline(x - 0.5, **style)
    for y in range(step, height, step):
        axis.axhline(y - 0.5, **style)
