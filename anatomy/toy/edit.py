"""Counterfactual scenes: one object of a toy scene recoloured, moved or erased, everything else untouched.

An edit names the object by its cell, (row, col) of the 4 x 4 grid, and returns a new ``Scene``; the
scene's rules still hold after it (one object per cell, no two objects of one colour), and an edit
that would break them is refused, naming the object in the way.

>>> scene = Scene((Thing("circle", "red", 0, 1), Thing("cross", "yellow", 3, 0, (1, -1))))
>>> recolour(scene, (3, 0), "green").things[1]
Thing(shape='cross', colour='green', row=3, col=0, offset=(1, -1))
>>> move(scene, (3, 0), (3, 3)).cells()[3].tolist()
[-1, -1, -1, 1]
>>> erase(scene, (0, 1)).things
(Thing(shape='cross', colour='yellow', row=3, col=0, offset=(1, -1)),)
>>> changed_cells(scene, move(scene, (3, 0), (3, 3)))
[(3, 0), (3, 3)]

``example_pictures`` writes notebook 11's pictures (``notebooks/pictures/``): the running example, its asked
object recoloured (the first colour of no other object), and that object moved across to the mirrored column.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from anatomy.toy.example import running_example
from anatomy.toy.shapes import CELL, GRID
from anatomy.toy.task import COLOURS, Scene, Thing

Cell = tuple[int, int]
EXAMPLE_FILES = ("cross.png", "cross_green.png", "cross_moved.png")  # as drawn, recoloured, moved


def thing_at(scene: Scene, cell: Cell) -> int:
    """The index (into ``scene.things``) of the object in ``cell``; refuses a cell off the grid or empty."""
    _check_cell(cell, "cell")
    found = [i for i, t in enumerate(scene.things) if (t.row, t.col) == tuple(cell)]
    if not found:
        held = ", ".join(f"{_name(t)} {(t.row, t.col)}" for t in scene.things) or "none"
        raise ValueError(f"cell {tuple(cell)} is empty; expected the cell of an object (the objects: {held})")
    return found[0]


def recolour(scene: Scene, cell: Cell, colour: str) -> Scene:
    """``scene`` with the object in ``cell`` painted ``colour``: one of ``COLOURS``, no other object's."""
    i = thing_at(scene, cell)
    if colour not in COLOURS:
        raise ValueError(f"colour={colour!r}; expected one of {tuple(COLOURS)}")
    taken = [t for k, t in enumerate(scene.things) if k != i and t.colour == colour]
    if taken:
        raise ValueError(f"colour {colour!r} is the {_name(taken[0])}'s in {(taken[0].row, taken[0].col)}; "
                         f"expected a colour of no other object: {free_colours(scene, cell)}")  # fmt: skip
    return _replaced(scene, i, colour=colour)


def move(scene: Scene, cell: Cell, to: Cell) -> Scene:
    """``scene`` with the object in ``cell`` moved to the empty cell ``to``, at the same offset inside it."""
    i = thing_at(scene, cell)
    _check_cell(to, "to")
    held = scene.cells()[to[0], to[1]]
    if held >= 0 and held != i:
        raise ValueError(f"cell {tuple(to)} holds the {_name(scene.things[held])}; expected an empty cell: "
                         f"{free_cells(scene)}")  # fmt: skip
    return _replaced(scene, i, row=int(to[0]), col=int(to[1]))


def erase(scene: Scene, cell: Cell) -> Scene:
    """``scene`` without the object in ``cell``."""
    i = thing_at(scene, cell)
    return Scene(scene.things[:i] + scene.things[i + 1 :])


def free_cells(scene: Scene) -> list[Cell]:
    """The empty cells, in raster order."""
    return [(int(r), int(c)) for r, c in np.argwhere(scene.cells() < 0)]


def free_colours(scene: Scene, cell: Cell) -> list[str]:
    """The colours the object in ``cell`` may take: its own and those of no other object, in ``COLOURS`` order."""
    i = thing_at(scene, cell)
    others = {t.colour for k, t in enumerate(scene.things) if k != i}
    return [c for c in COLOURS if c not in others]


def changed_cells(scene: Scene, edited: Scene) -> list[Cell]:
    """The cells whose pixels differ between two scenes, in raster order (computed from the pixels)."""
    differ = (scene.pixels() != edited.pixels()).any(-1)  # (112, 112)
    by_cell = differ.reshape(GRID, CELL, GRID, CELL).any((1, 3))  # (4, 4)
    return [(int(r), int(c)) for r, c in np.argwhere(by_cell)]


def example_pictures(directory) -> tuple[Path, ...]:
    """Write ``EXAMPLE_FILES`` as PNGs in ``directory``: the running example's picture, its asked object recoloured
    to the first colour no other object has (yellow -> green), and moved to the mirrored column (``col -> 3 - col``,
    "left" becomes "right"). Returns their paths."""
    example = running_example()
    scene, (row, col) = example.sample.scene, example.cell
    recoloured = recolour(scene, (row, col), next(c for c in free_colours(scene, (row, col)) if c != example.answer))
    moved = move(scene, (row, col), (row, GRID - 1 - col))
    paths = tuple(Path(directory) / name for name in EXAMPLE_FILES)
    for path, picture in zip(paths, (scene, recoloured, moved)):
        Image.fromarray(picture.pixels()).save(path)
    return paths


def _replaced(scene: Scene, i: int, **changes) -> Scene:
    things = list(scene.things)
    things[i] = dataclasses.replace(things[i], **changes)
    return Scene(tuple(things))


def _check_cell(cell, name: str) -> None:
    ok = isinstance(cell, (tuple, list)) and len(cell) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < GRID for v in cell)
    if not ok:
        raise ValueError(f"{name}={cell!r}; expected (row, col) with each in 0..{GRID - 1}")


def _name(thing: Thing) -> str:
    return f"{thing.colour} {thing.shape}"
