"""The synthetic task: coloured shapes on a 4x4 grid, and a question about one of them.

A picture is 112x112 px: a 4x4 grid of 28x28-px cells, so that every cell is
exactly one merged image token after the processor's 14-px patches and 2x2
merge. Each object fills one cell; all objects of a picture have different
colours. Three kinds of question, each needing one object (or one kind of
object) to be found:

>>> s = sample(seed=0, split="train", index=0)
>>> s.question, s.answer, s.target      # doctest: +SKIP
('What colour is the circle?', 'red', (2,))

- ``colour``: "What colour is the circle?" (the circle is the only one) -> ``red``;
- ``where``: "Is the red circle on the left or the right?" / "... at the top or
  the bottom?" -> ``left``, ``right``, ``top`` or ``bottom``;
- ``count``: "How many circles are there?" -> ``1``, ``2`` or ``3``.

Every answer is one token of the Qwen2.5 vocabulary as it follows
``<|im_start|>assistant\\n`` (no leading space). A sample depends only on
``(seed, split, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anatomy.toy.shapes import CELL, GRID, SHAPES, render

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 135, 30),
}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
QUESTION_TYPES = ("colour", "where", "count")
SPLITS = ("train", "test", "valid")  # valid: training's own checks; test: evaluation
MAX_COUNT = 3
ANSWERS = {
    "colour": tuple(COLOURS),
    "where": ("left", "right", "top", "bottom"),
    "count": tuple(str(n) for n in range(1, MAX_COUNT + 1)),
}


@dataclass(frozen=True)
class Thing:
    """One object: a shape of a colour in grid cell ``(row, col)``, shifted by ``offset`` px inside it."""

    shape: str
    colour: str
    row: int
    col: int
    offset: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Scene:
    """A picture: its objects, each in its own cell and of its own colour."""

    things: tuple[Thing, ...]

    def pixels(self) -> np.ndarray:
        """The picture, uint8 of shape ``(112, 112, 3)``."""
        return render([(t.shape, COLOURS[t.colour], t.row, t.col, t.offset) for t in self.things])

    def cells(self) -> np.ndarray:
        """Which object covers each grid cell, int of shape ``(4, 4)``: an index into ``things``, or -1."""
        grid = np.full((GRID, GRID), -1)
        for i, t in enumerate(self.things):
            grid[t.row, t.col] = i
        return grid

    def count(self, shape: str) -> int:
        """How many objects are ``shape``s."""
        return sum(t.shape == shape for t in self.things)


@dataclass(frozen=True)
class Sample:
    """A scene, a question about it, and its one-token answer.

    ``target`` holds the indices (into ``scene.things``) of the objects the question is about.
    """

    scene: Scene
    kind: str
    question: str
    answer: str
    target: tuple[int, ...]


def sample(seed: int, split: str, index: int) -> Sample:
    """The ``index``-th sample of ``split`` (``"train"``, ``"test"`` or ``"valid"``), a pure function of its arguments.

    Question types cycle colour, where, count, so any 3 consecutive indices hold one of each.
    """
    rng = _rng(seed, split, index)
    return ask(scene(rng), QUESTION_TYPES[index % len(QUESTION_TYPES)], rng)


def questions(seed: int, split: str, index: int) -> list[Sample]:
    """One question of each type about the ``index``-th scene of ``split``, the first of type ``index % 3``.

    >>> [q.kind for q in questions(0, "train", 4)]
    ['where', 'count', 'colour']
    """
    rng = _rng(seed, split, index)
    pictured = scene(rng)
    first = index % len(QUESTION_TYPES)
    return [ask(pictured, kind, rng) for kind in QUESTION_TYPES[first:] + QUESTION_TYPES[:first]]


def questions_and_repeated_where(seed: int, split: str, index: int) -> list[Sample]:
    """``questions(...)`` and a fourth: "where" about an object whose shape repeats in the picture (then only
    its colour tells it from the others like it), or about any object when no shape repeats.

    The first three are exactly ``questions(seed, split, index)``.
    """
    asked = questions(seed, split, index)
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])  # a stream of its own
    things = asked[0].scene.things
    repeated = [i for i, t in enumerate(things) if asked[0].scene.count(t.shape) > 1] or list(range(len(things)))
    return asked + [_where(asked[0].scene, repeated[rng.integers(len(repeated))], bool(rng.integers(2)))]


def scene(rng: np.random.Generator) -> Scene:
    """1-3 objects of one shape and others of other shapes, with at least one shape that occurs once.

    The first objects are the repeated shape; its count is 1, 2 or 3, equally likely. Half the
    scenes are sparse (0-2 other objects: easy to learn from), half crowded (4 or 5 objects in
    all, whatever the count: counting every object is no shortcut to counting one shape).
    """
    first = SHAPES[rng.integers(len(SHAPES))]
    others = [s for s in SHAPES if s != first]
    count = int(rng.integers(1, MAX_COUNT + 1))
    crowded = bool(rng.integers(2))
    while True:
        extra = int(rng.integers(4, 6)) - count if crowded else int(rng.integers(0, 3))
        shapes = [first] * count + [str(s) for s in rng.choice(others, size=extra)]
        if any(shapes.count(s) == 1 for s in shapes):
            return Scene(_place(rng, shapes))


def ask(pictured: Scene, kind: str, rng: np.random.Generator) -> Sample:
    """A question of type ``kind`` about ``pictured``.

    colour: about a shape that occurs once; where: about any object, named by colour and shape;
    count: about the scene's first (repeated) shape.
    """
    if kind not in QUESTION_TYPES:
        raise ValueError(f"kind={kind!r}; expected one of {QUESTION_TYPES}")
    things = pictured.things
    if kind == "count":
        shape = things[0].shape
        target = tuple(i for i, t in enumerate(things) if t.shape == shape)
        return Sample(pictured, kind, f"How many {PLURALS[shape]} are there?", str(len(target)), target)
    if kind == "colour":
        single = [i for i, t in enumerate(things) if pictured.count(t.shape) == 1]
        i = single[rng.integers(len(single))]
        return Sample(pictured, kind, f"What colour is the {things[i].shape}?", things[i].colour, (i,))
    i = int(rng.integers(len(things)))
    return _where(pictured, i, bool(rng.integers(2)))


def _where(pictured: Scene, i: int, across: bool) -> Sample:
    """Is object ``i`` left or right (``across``), else top or bottom, of the picture's centre?"""
    thing = pictured.things[i]
    name = f"{thing.colour} {thing.shape}"
    if across:
        answer = "left" if thing.col < GRID // 2 else "right"
        return Sample(pictured, "where", f"Is the {name} on the left or the right?", answer, (i,))
    answer = "top" if thing.row < GRID // 2 else "bottom"
    return Sample(pictured, "where", f"Is the {name} at the top or the bottom?", answer, (i,))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample, checked arguments."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if not (isinstance(index, (int, np.integer)) and index >= 0):
        raise ValueError(f"index={index!r}; expected a non-negative integer")
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _place(rng: np.random.Generator, shapes: list[str]) -> tuple[Thing, ...]:
    """Give each shape its own cell, its own colour and a small shift inside the cell."""
    cells = rng.choice(GRID * GRID, size=len(shapes), replace=False)
    colours = rng.choice(list(COLOURS), size=len(shapes), replace=False)
    shifts = rng.integers(-CELL // 14, CELL // 14 + 1, size=(len(shapes), 2))
    return tuple(
        Thing(str(s), str(c), int(cell) // GRID, int(cell) % GRID, (int(dy), int(dx)))
        for s, c, cell, (dy, dx) in zip(shapes, colours, cells, shifts)
    )
