"""Image cells in groups, each patched or attributed as one: a merged cell, 2x2 cells, a vision window, or boxes.

A cell is one merged image token, (row, col) of the picture's ``rows x cols`` grid, covering
``patch_size * spatial_merge_size`` = 28 x 28 px of the processed picture. ``cells=`` picks the groups:

    "cell"    every cell alone                                         rows * cols groups
    "2x2"     2 x 2 cells, cut inside each vision window, so that no group spans two windows
    "window"  the cells of one vision window (``window_size`` px a side: 4 x 4 cells on the released
              models and tiny, 2 x 2 on the toy), counted from the top left, smaller at the right and
              bottom edges, as transformers' ``get_vision_window_index`` cuts them
    boxes     ``[(x0, y0, x1, y1), ...]``: pixel boxes of the processed picture (half-open, x to the
              right, y down); a box's group is every cell it overlaps; boxes may overlap each other
    Groups    groups made before (``top_cells``), for this grid

Groups come in raster order of their first cell. On a 2 x 3 grid (a 56 x 84 px picture, tiny model):

>>> cell_groups(spec, (2, 3), "2x2").members
(((0, 0), (0, 1), (1, 0), (1, 1)), ((0, 2), (1, 2)))
>>> cell_groups(spec, (2, 3), [(0, 0, 30, 10)]).members       # 30 px wide: columns 0 and 1
(((0, 0), (0, 1)),)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from anatomy.causal.edits import Cell

RESOLUTIONS = ("cell", "2x2", "window")


@dataclass(frozen=True)
class Groups:
    """Cell groups of one grid: ``members[g]`` the (row, col) cells of group g, ``labels[g]`` its name."""

    resolution: str
    grid: tuple[int, int]
    members: tuple[tuple[Cell, ...], ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.members)

    def matrix(self) -> np.ndarray:
        """``(groups, rows * cols)`` 0/1: row g marks group g's cells (raster order), to sum cell values by group."""
        rows, cols = self.grid
        chosen = np.zeros((len(self), rows * cols))
        for g, cells in enumerate(self.members):
            chosen[g, [r * cols + c for r, c in cells]] = 1
        return chosen

    def paint(self, values) -> np.ndarray:
        """``(rows, cols)``: each cell the value of its group, of the largest ``|value|`` where groups overlap;
        NaN in cells no group holds. ``values``: ``(groups,)``."""
        values = np.asarray(values, dtype=float)
        painted = np.full(self.grid, np.nan)
        for g in np.argsort(np.nan_to_num(np.abs(values), nan=-1.0), kind="stable"):  # the largest painted last
            for r, c in self.members[g]:
                painted[r, c] = values[g]
        return painted

    def subset(self, chosen) -> Groups:
        """The groups ``chosen`` (indices), in that order."""
        chosen = [int(g) for g in chosen]
        return Groups(f"{len(chosen)} of {self.resolution}", self.grid, tuple(self.members[g] for g in chosen),
                      tuple(self.labels[g] for g in chosen))  # fmt: skip


def cell_groups(spec, grid: tuple[int, int], cells="cell") -> Groups:
    """The groups ``cells`` names (see the module docstring) on a ``grid`` of (rows, cols) cells."""
    rows, cols = grid
    if isinstance(cells, Groups):
        if tuple(cells.grid) != (rows, cols):
            raise ValueError(f"these groups were made for a {cells.grid[0]} x {cells.grid[1]} grid of cells; "
                             f"the pictures here have {rows} x {cols}: make them for this grid")  # fmt: skip
        return cells
    if isinstance(cells, str):
        if cells not in RESOLUTIONS:
            raise ValueError(f"cells={cells!r}; expected one of {RESOLUTIONS} or a list of (x0, y0, x1, y1) "
                             f"pixel boxes")  # fmt: skip
        return _by_key(cells, grid, _key(spec.config.vision_config, cells))
    return _boxes(spec.config.vision_config, grid, cells)


def _key(vision, resolution: str):
    """(row, col) -> the key of its group at ``resolution``; cells of one key form one group."""
    side = vision.window_size // vision.patch_size // vision.spatial_merge_size  # cells per window side
    if side < 1:
        raise ValueError(f"window_size {vision.window_size} px is below one cell "
                         f"({vision.patch_size * vision.spatial_merge_size} px); the config is not a Qwen2.5-VL's")
    if resolution == "cell":
        return lambda r, c: (r, c)
    if resolution == "window":
        return lambda r, c: (r // side, c // side)
    return lambda r, c: (r // side, c // side, r % side // 2, c % side // 2)  # 2x2 inside each window


def _by_key(resolution: str, grid: tuple[int, int], key) -> Groups:
    found: dict[tuple, list[Cell]] = {}
    for r in range(grid[0]):
        for c in range(grid[1]):
            found.setdefault(key(r, c), []).append((r, c))
    members = tuple(tuple(cells) for cells in found.values())
    names = [_span(cells) for cells in members]
    if resolution == "window":
        names = [f"window {w} {name}" for w, name in enumerate(names)]
    return Groups(resolution, grid, members, tuple(names))


def _span(cells) -> str:
    """``(2, 3)`` for one cell, ``(0-1, 2-3)`` for the rows and columns of several."""
    rows, cols = sorted({r for r, _ in cells}), sorted({c for _, c in cells})
    return "({}, {})".format(*(f"{x[0]}" if len(x) == 1 else f"{x[0]}-{x[-1]}" for x in (rows, cols)))


def _boxes(vision, grid: tuple[int, int], boxes) -> Groups:
    """Pixel boxes of the processed picture -> the cells each overlaps; anything malformed or outside is refused."""
    step = vision.patch_size * vision.spatial_merge_size
    height, width = grid[0] * step, grid[1] * step
    if not isinstance(boxes, (list, tuple)) or not boxes:
        raise ValueError(f"cells={boxes!r:.80}; expected one of {RESOLUTIONS}, or a non-empty list of "
                         f"(x0, y0, x1, y1) pixel boxes of the {width} x {height} px processed picture")  # fmt: skip
    members = []
    for box in boxes:
        numbers = isinstance(box, (list, tuple)) and len(box) == 4 and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in box)
        if not numbers or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
            raise ValueError(f"box {box!r} is not inside the processed picture: expected (x0, y0, x1, y1) with "
                             f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (pixels; the picture is "
                             f"{width} x {height} px, {grid[0]} x {grid[1]} cells of {step} px)")  # fmt: skip
        x0, y0, x1, y1 = box
        members.append(tuple((r, c) for r in range(int(y0 // step), int(np.ceil(y1 / step)))
                             for c in range(int(x0 // step), int(np.ceil(x1 / step)))))  # fmt: skip
    return Groups("boxes", grid, tuple(members), tuple(f"box {i} {_span(m)}" for i, m in enumerate(members)))


def draw(axis, picture: Image.Image, groups: Groups, values, changed=None, vmax: float = 1.0, title: str = ""):
    """``values`` ``(groups,)`` painted over the processed ``picture``, groups outlined unless single cells,
    ``changed`` cells (``(rows, cols)`` bool) dashed green. Returns the image, for a colour bar."""
    rows, cols = groups.grid
    step_y, step_x = picture.height / rows, picture.width / cols
    axis.imshow(picture)
    extent = (-0.5, picture.width - 0.5, picture.height - 0.5, -0.5)
    shown = axis.imshow(groups.paint(values), cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=0.7, extent=extent,
                        interpolation="nearest")  # fmt: skip
    outlined = [] if groups.resolution == "cell" else groups.members
    for cells in outlined:
        (r0, c0), (r1, c1) = np.min(cells, 0), np.max(cells, 0)
        axis.add_patch(Rectangle((c0 * step_x - 0.5, r0 * step_y - 0.5), (c1 - c0 + 1) * step_x,
                                 (r1 - r0 + 1) * step_y, fill=False, ec="black", lw=1.2))  # fmt: skip
    for r, c in np.argwhere(changed) if changed is not None else []:
        axis.add_patch(Rectangle((c * step_x + 1, r * step_y + 1), step_x - 3, step_y - 3, fill=False, ec="lime",
                                 lw=1.5, ls="--"))  # fmt: skip
    axis.set(title=title, xticks=[], yticks=[])
    return shown
