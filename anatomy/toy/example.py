"""The running example: one held-out toy picture and one question, followed from pixels to answer.

Notebooks 03-07, 10 and 11 all follow the same object: the cross of the first
held-out picture whose question is "What colour is the cross?". It is picked
by that rule, not by looking, and depends only on the task's seed (not on
any model).

>>> example = running_example()
>>> example.question
'What colour is the cross?'
>>> example.picture.shape                 # (height, width, RGB)
(112, 112, 3)
>>> example.patches == [(2 * example.cell[0] + dy, 2 * example.cell[1] + dx) for dy in (0, 1) for dx in (0, 1)]
True

``is_toy_question`` tells whether a question is one of the three kinds the toy
was trained on, word for word:

>>> is_toy_question("What colour is the cross?"), is_toy_question("What is the text in the illustrate?")
(True, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from anatomy.toy.shapes import CELL, GRID, SHAPES
from anatomy.toy.task import COLOURS, PLURALS, Sample, sample

QUESTION = "What colour is the cross?"
SEARCHED = 1000  # test samples searched for the first one asking QUESTION
PATCH = 14  # px per patch side: a cell of 28 px is 2 x 2 patches


@dataclass(frozen=True)
class RunningExample:
    """The picture, the question, its answer, and where the asked object sits.

    ``cell`` is the object's (row, column) on the 4 x 4 grid of 28-px cells: one merged image token;
    ``patches`` its four (row, column) 14-px patches on the 8 x 8 patch grid, in raster order.
    """

    sample: Sample
    index: int  # position in the test split

    @property
    def picture(self) -> np.ndarray:
        """uint8 of shape (112, 112, 3): (height, width, RGB)."""
        return self.sample.scene.pixels()

    @property
    def question(self) -> str:
        return self.sample.question

    @property
    def answer(self) -> str:
        return self.sample.answer

    @property
    def cell(self) -> tuple[int, int]:
        thing = self.sample.scene.things[self.sample.target[0]]
        return thing.row, thing.col

    @property
    def token(self) -> int:
        """Index of the object's merged token among the image's tokens (raster order over the 4 x 4 grid)."""
        row, col = self.cell
        return row * GRID + col

    @property
    def patches(self) -> list[tuple[int, int]]:
        merge = CELL // PATCH
        row, col = self.cell
        return [(merge * row + dy, merge * col + dx) for dy in range(merge) for dx in range(merge)]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The object's cell in pixels: (top, left, height, width)."""
        row, col = self.cell
        return row * CELL, col * CELL, CELL, CELL


def running_example(seed: int = 0) -> RunningExample:
    """The first sample of the test split (never trained on) that asks ``QUESTION``."""
    for index in range(SEARCHED):
        candidate = sample(seed, "test", index)
        if candidate.question == QUESTION:
            return RunningExample(candidate, index)
    raise LookupError(f"no test sample of seed {seed} asks {QUESTION!r} among the first {SEARCHED}")


_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
TOY_QUESTIONS = (
    rf"What colour is the ({_SHAPE})\?",
    rf"Is the ({_COLOUR}) ({_SHAPE}) on the left or the right\?",
    rf"Is the ({_COLOUR}) ({_SHAPE}) at the top or the bottom\?",
    rf"How many ({'|'.join(PLURALS.values())}) are there\?",
)


def is_toy_question(text: str) -> bool:
    """Whether ``text`` is, word for word, a question of the toy task (the only ones the toy can answer)."""
    return any(re.fullmatch(pattern, text) for pattern in TOY_QUESTIONS)
