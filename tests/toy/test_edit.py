"""Scene edits against scenes built by hand and pixels drawn by ``render`` directly; bad edits refused; the
notebook's committed pictures against the toy's generator."""

import doctest
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anatomy.toy import edit
from anatomy.toy.edit import changed_cells, erase, example_pictures, free_cells, free_colours, move, recolour
from anatomy.toy.example import running_example
from anatomy.toy.shapes import CELL, background, render
from anatomy.toy.task import COLOURS, Scene, Thing

PICTURES = Path(__file__).parents[2] / "notebooks" / "pictures"
SCENE = Scene((Thing("circle", "red", 0, 1, (1, 0)), Thing("cross", "yellow", 3, 0, (-2, 2)),
               Thing("square", "blue", 2, 2)))  # fmt: skip


def drawn(*things) -> np.ndarray:
    """The picture of ``things`` (shape, colour name, row, col, offset), straight from ``render``."""
    return render([(shape, COLOURS[colour], row, col, offset) for shape, colour, row, col, offset in things])


def outside(picture: np.ndarray, other: np.ndarray, cells) -> bool:
    """Whether the two pictures agree everywhere outside ``cells``."""
    keep = np.ones(picture.shape[:2], bool)
    for r, c in cells:
        keep[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = False
    return bool((picture[keep] == other[keep]).all())


def test_recolour_is_the_scene_drawn_with_the_new_colour():
    edited = recolour(SCENE, (3, 0), "green")
    expected = drawn(("circle", "red", 0, 1, (1, 0)), ("cross", "green", 3, 0, (-2, 2)), ("square", "blue", 2, 2, (0, 0)))
    assert (edited.pixels() == expected).all()
    assert outside(edited.pixels(), SCENE.pixels(), [(3, 0)]) and changed_cells(SCENE, edited) == [(3, 0)]


def test_move_keeps_shape_colour_and_offset_in_the_new_cell():
    edited = move(SCENE, (3, 0), (1, 3))
    expected = drawn(("circle", "red", 0, 1, (1, 0)), ("cross", "yellow", 1, 3, (-2, 2)), ("square", "blue", 2, 2, (0, 0)))
    assert (edited.pixels() == expected).all()
    assert changed_cells(SCENE, edited) == [(1, 3), (3, 0)]
    assert (edited.pixels()[3 * CELL :, :CELL] == background()[3 * CELL :, :CELL]).all()  # the old cell is empty


def test_erase_leaves_the_background_in_its_cell():
    edited = erase(SCENE, (0, 1))
    assert (edited.pixels() == drawn(("cross", "yellow", 3, 0, (-2, 2)), ("square", "blue", 2, 2, (0, 0)))).all()
    assert (edited.pixels()[:CELL, CELL : 2 * CELL] == background()[:CELL, CELL : 2 * CELL]).all()
    assert changed_cells(SCENE, edited) == [(0, 1)]


def test_free_cells_and_colours_are_counted_directly():
    taken = {(t.row, t.col) for t in SCENE.things}
    assert free_cells(SCENE) == [(r, c) for r in range(4) for c in range(4) if (r, c) not in taken]
    assert free_colours(SCENE, (3, 0)) == [c for c in COLOURS if c not in ("red", "blue")]


@pytest.mark.parametrize("call, named", [
    (lambda: recolour(SCENE, (1, 1), "green"), "cell (1, 1) is empty"),
    (lambda: recolour(SCENE, (4, 0), "green"), "cell=(4, 0)"),
    (lambda: recolour(SCENE, (True, 0), "green"), "cell=(True, 0)"),
    (lambda: recolour(SCENE, (3, 0), "pink"), "colour='pink'"),
    (lambda: recolour(SCENE, (3, 0), "red"), "colour 'red' is the red circle's"),
    (lambda: move(SCENE, (3, 0), (0, 1)), "cell (0, 1) holds the red circle"),
    (lambda: move(SCENE, (3, 0), (0, -1)), "to=(0, -1)"),
    (lambda: erase(SCENE, "a1"), "cell='a1'"),
])  # fmt: skip
def test_bad_edits_are_refused_naming_the_value(call, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_docstring_examples():
    assert doctest.testmod(edit, raise_on_error=False).failed == 0


def test_the_notebook_pictures_are_the_toy_example_edited(tmp_path):
    example = running_example()
    thing = example.sample.scene.things[example.sample.target[0]]
    others = [t for t in example.sample.scene.things if t is not thing]
    as_tuple = [(t.shape, t.colour, t.row, t.col, t.offset) for t in others]
    expected = [
        example.picture,
        drawn(*as_tuple, (thing.shape, "green", thing.row, thing.col, thing.offset)),  # green: the first colour free
        drawn(*as_tuple, (thing.shape, thing.colour, thing.row, 3 - thing.col, thing.offset)),
    ]
    assert "green" not in {t.colour for t in others} and "red" in {t.colour for t in others}
    written = example_pictures(tmp_path)
    for name, path, picture in zip(edit.EXAMPLE_FILES, written, expected):
        assert (np.array(Image.open(PICTURES / name)) == picture).all(), name  # as committed
        assert (np.array(Image.open(path)) == picture).all(), name  # as written again
