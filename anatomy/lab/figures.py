"""Figure helpers shared by the lessons. Figures are built without pyplot.

Nothing global changes, nothing is shown twice in a notebook, and
``figure.savefig`` works headless. Each lesson draws its own figures; the
pieces several of them need live here.

>>> principal_rgb(torch.arange(24.0).reshape(2, 4, 3)).shape     # (rows, cols, 3) colours in [0, 1]
(2, 4, 3)
"""

from __future__ import annotations

import functools
import textwrap
import unicodedata
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import font_manager, ft2font
from matplotlib.patches import Rectangle
from PIL import Image


@functools.cache
def _fonts() -> tuple[tuple[str, frozenset[int]], ...]:
    """(family, the code points it has) of each font labels are drawn with: matplotlib's default font first,
    then each font installed on the system that has characters the ones before it lack.

    matplotlib's other bundled fonts are left out: its math fonts put symbols where letters should be, and its
    last-resort font has a placeholder box for every character.
    """
    default = font_manager.findfont(font_manager.FontProperties())
    bundled = Path(matplotlib.get_data_path())
    installed = {}  # family -> one of its files
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda entry: entry.fname):
        if not Path(entry.fname).is_relative_to(bundled):
            installed.setdefault(entry.name, entry.fname)
    fonts, covered = [], set()
    for path in [default, *installed.values()]:
        try:
            font = ft2font.FT2Font(path)
        except (OSError, RuntimeError):  # a font file FreeType cannot read: draw without it
            continue
        points = frozenset(font.get_charmap())
        if font.family_name not in dict(fonts) and not points <= covered:
            fonts.append((font.family_name, points))
            covered |= points
    return tuple(fonts)


def label_fonts() -> list[str]:
    """The font families every label is drawn with (``fontfamily=label_fonts()``), default first.

    matplotlib falls back along the list character by character, so a token in a script an installed font
    covers is drawn in that font; ``drawable`` names the characters none of them has.
    """
    return [family for family, _ in _fonts()]


def _written(c: str) -> str:
    """One character as a label shows it: itself if a label font has it, else ``[its Unicode name U+code]``."""
    if any(ord(c) in points for _, points in _fonts()):
        return c
    code = f"U+{ord(c):04X}"
    name = unicodedata.name(c, "")
    if name.endswith(f"-{ord(c):04X}"):  # "CJK UNIFIED IDEOGRAPH-63D0" carries its code point already
        return f"[{name}]"
    return f"[{name} {code}]" if name else f"[{code}]"


def drawable(text: str, limit: int | None = None, wrap: int | None = None) -> str:
    r"""``text`` as a figure can draw it: each character that no label font has written as its Unicode name and
    code point; at most ``limit`` characters once written, cut between characters (never inside a name, never
    to nothing); lines of about ``wrap`` characters, broken at spaces. Draw it with ``fontfamily=label_fonts()``.

    A token's text can be in any script, and a missing glyph would be drawn as an empty box. With only
    DejaVu Sans installed, ``drawable("\uc73c")`` is ``"[HANGUL SYLLABLE EU U+C73C]"``; with a Korean font
    installed it is the character itself, drawn in that font.

    >>> drawable(" red"), drawable("yellow", limit=4), drawable("a b c", wrap=3)
    (' red', 'yell', 'a b\nc')
    """
    written = ""
    for c in text:
        piece = _written(c)
        if written and limit is not None and len(written) + len(piece) > limit:
            break
        written += piece
    if wrap is None or len(written) <= wrap:
        return written
    return textwrap.fill(written, wrap, break_long_words=False, break_on_hyphens=False)


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


def grid_lines(axis, shape: tuple[int, int], step: int, width: float = 0.6, style: str = "solid") -> None:
    """Lines every ``step`` px over a picture of ``shape`` (height, width) px, dark with a light edge.

    Drawn twice (a wider white line under a dark one), they show on dark and light pictures alike; ``style``
    (``"solid"``, ``"dotted"``, ...) sets two grids of one picture apart.
    """
    height, wide = shape
    for colour, line in (("white", 2.2 * width), ("0.15", width)):
        axis.vlines(np.arange(step, wide, step) - 0.5, -0.5, height - 0.5, colors=colour, linewidth=line, linestyles=style)
        axis.hlines(np.arange(step, height, step) - 0.5, -0.5, wide - 0.5, colors=colour, linewidth=line, linestyles=style)
