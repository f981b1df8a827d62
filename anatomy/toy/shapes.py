"""Shapes drawn into the cells of a 4x4 grid: the pixels of the toy task.

Each shape is a boolean stencil of one 28x28-px cell with a margin of at
least 3 px, so a shape shifted by up to 2 px stays inside its cell, and
covers exactly one merged image token. The background is not plain white
but a faint ramp (``background``): the model reads where an object is from
the pixels around it, since nothing else in Qwen2.5-VL gives a token its
absolute position (rotary embeddings encode only offsets).

>>> stencil("square").shape
(28, 28)
>>> render([("circle", (220, 40, 40), 0, 3, (0, 0))]).shape   # a red circle top right
(112, 112, 3)
"""

from __future__ import annotations

import functools

import numpy as np

GRID = 4  # cells per side
CELL = 28  # px per cell: one merged token (2x2 patches of 14 px)
IMAGE_SIZE = GRID * CELL  # 112 px
BACKGROUND_RAMP = 150  # how much red fades left -> right, and green top -> bottom
OUTLINE = (40, 40, 40)  # the colour of every shape's rim
SHAPES = ("circle", "square", "triangle", "cross")


@functools.cache
def stencil(shape: str) -> np.ndarray:
    """The pixels of ``shape`` in one cell, bool of shape ``(28, 28)``, centred, within a 3-px margin."""
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r}; expected one of {SHAPES}")
    y, x = np.mgrid[0:CELL, 0:CELL] + 0.5 - CELL / 2  # pixel centres, origin at the cell centre
    if shape == "circle":
        return x**2 + y**2 <= 10.5**2
    if shape == "square":
        return (abs(x) <= 9) & (abs(y) <= 9)
    if shape == "triangle":  # apex up: half-width grows from 0 at y=-10 to 11 at y=+10
        return (abs(y) <= 10) & (abs(x) <= (y + 10) * 11 / 20)
    return ((abs(x) <= 3) | (abs(y) <= 3)) & (abs(x) <= 11) & (abs(y) <= 11)  # cross


@functools.cache
def background() -> np.ndarray:
    """The empty picture, uint8 ``(112, 112, 3)``: white at the top left, ``BACKGROUND_RAMP`` less red at
    the right edge and less green at the bottom, so that every pixel shows where it is."""
    ramp = np.arange(IMAGE_SIZE) * BACKGROUND_RAMP // (IMAGE_SIZE - 1)
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    image[:, :, 0] -= ramp[None, :].astype(np.uint8)
    image[:, :, 1] -= ramp[:, None].astype(np.uint8)
    image.flags.writeable = False  # shared by every picture
    return image


@functools.cache
def outline(shape: str) -> np.ndarray:
    """The 2-px rim of ``stencil(shape)``, bool ``(28, 28)``: drawn dark, it shows the shape whatever its colour."""
    inner = stencil(shape)
    for _ in range(2):  # erode by one pixel, twice
        inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    return stencil(shape) & ~inner


def render(things: list[tuple[str, tuple[int, int, int], int, int, tuple[int, int]]]) -> np.ndarray:
    """Draw ``(shape, rgb, row, col, (dy, dx))`` items on the ``background``, uint8 ``(112, 112, 3)``."""
    image = background().copy()
    for shape, rgb, row, col, (dy, dx) in things:
        if not (0 <= row < GRID and 0 <= col < GRID):
            raise ValueError(f"cell ({row}, {col}) is outside the {GRID}x{GRID} grid")
        if max(abs(dy), abs(dx)) > 2:
            raise ValueError(f"shift ({dy}, {dx}) would push the shape out of its cell; expected |shift| <= 2")
        cell = image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
        fill, rim = _shifted(shape, dy, dx)
        cell[fill] = rgb
        cell[rim] = OUTLINE
    return image


@functools.cache
def _shifted(shape: str, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """``stencil`` and ``outline`` of ``shape`` shifted by ``(dy, dx)`` px: 4 shapes x 25 shifts, made once."""
    return tuple(np.roll(mask, (dy, dx), axis=(0, 1)) for mask in (stencil(shape), outline(shape)))
