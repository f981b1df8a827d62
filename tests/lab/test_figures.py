"""Figure helpers: principal components against numpy's eigen-decomposition, outlines and maps against the data,
labels against unicodedata and the fonts' own character maps."""

import io
import unicodedata
import warnings

import numpy as np
import pytest
import torch
from matplotlib import font_manager, ft2font
from matplotlib.figure import Figure
from PIL import Image

from anatomy.lab import figures
from anatomy.lab.figures import (draw_cells, draw_picture, drawable, grid_lines, label_fonts, outline_cells,
                                 principal_rgb, top_cells)

NAMED = "\u306a\u63d0\uc73c\u0e08"  # hiragana, CJK, Hangul, Thai: top tokens of the toy's logit lens


@pytest.fixture
def ascii_only(monkeypatch):
    """Label fonts that have printable ASCII and nothing else."""
    monkeypatch.setattr(figures, "_fonts", lambda: (("Plain", frozenset(range(32, 127))),))


def test_a_character_no_label_font_has_is_written_as_its_unicode_name_and_code_point(ascii_only):
    expected = "a" + "".join(f"[{unicodedata.name(c)}]" if unicodedata.name(c).endswith(f"{ord(c):04X}")
                             else f"[{unicodedata.name(c)} U+{ord(c):04X}]" for c in NAMED)
    assert drawable("a" + NAMED) == expected
    assert "[HANGUL SYLLABLE EU U+C73C]" in expected and "[CJK UNIFIED IDEOGRAPH-63D0]" in expected
    assert drawable("\ue000") == "[U+E000]"  # a private-use character has no name


def test_a_character_an_installed_font_has_is_kept_and_that_font_is_a_label_font(monkeypatch):
    fonts = (("Plain", frozenset(range(32, 127))), ("Some CJK font", frozenset({0x63D0})))
    monkeypatch.setattr(figures, "_fonts", lambda: fonts)
    assert drawable("a\u63d0\u306a") == "a\u63d0[HIRAGANA LETTER NA U+306A]"
    assert label_fonts() == ["Plain", "Some CJK font"]


def test_limit_cuts_between_characters_never_inside_a_name_nor_to_nothing(ascii_only):
    assert drawable("yellow", limit=4) == "yell"
    assert drawable("\u306a\u306a", limit=8) == "[HIRAGANA LETTER NA U+306A]"
    assert drawable("ab\u306a", limit=8) == "ab"
    assert drawable("[HIRAGANA LETTER NA U+306A]" + "x", wrap=12) == "[HIRAGANA\nLETTER NA\nU+306A]x"


def test_the_label_fonts_start_with_the_default_and_draw_every_kept_character():
    fonts = figures._fonts()
    default = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))
    assert label_fonts()[0] == default.family_name
    kept = [c for c in NAMED if drawable(c) == c]
    assert all(any(ord(c) in points for _, points in fonts) for c in kept)
    figure = Figure()
    figure.text(0.5, 0.5, drawable(NAMED + " red"), fontfamily=label_fonts())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" is a UserWarning
        figure.savefig(io.BytesIO(), format="png")


def test_principal_rgb_is_the_first_three_principal_components_scaled():
    vectors = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    colours = principal_rgb(vectors).reshape(-1, 3)
    flat = vectors.reshape(-1, 8).numpy()
    centred = flat - flat.mean(0)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    for k in range(3):
        scores = centred @ eigenvectors[:, -1 - k]
        scaled = (scores - scores.min()) / (scores.max() - scores.min())
        flipped = 1 - scaled  # a component's sign is arbitrary
        assert min(np.abs(colours[:, k] - scaled).max(), np.abs(colours[:, k] - flipped).max()) < 1e-9


def test_top_cells_are_the_fewest_that_hold_the_share():
    cells = torch.rand(5, 7, generator=torch.Generator().manual_seed(1))
    chosen = top_cells(cells, 0.5)
    held = sum(float(cells[r, c]) for r, c in chosen)
    assert held >= 0.5 * float(cells.sum())
    assert held - min(float(cells[r, c]) for r, c in chosen) < 0.5 * float(cells.sum())  # one fewer is not enough
    assert min(float(cells[r, c]) for r, c in chosen) >= max(
        float(v) for k, v in enumerate(cells.flatten()) if divmod(k, 7) not in chosen)


def test_outline_cells_draws_boxes_and_leaves_the_picture_untouched():
    axis = Figure().subplots()
    draw_picture(axis, Image.new("RGB", (84, 56), (200, 30, 30)), "title")
    outline_cells(axis, torch.tensor([[0.0, 0.9, 0.0], [0.1, 0.0, 0.0]]), 28)
    assert len(axis.images) == 1 and np.all(axis.images[0].get_array()[..., 0] == 200)
    (box,) = axis.patches
    assert box.get_xy() == (27.5, -0.5) and (box.get_width(), box.get_height()) == (28, 28)
    assert axis.get_title() == "title"


def test_draw_cells_uses_the_given_scale_and_integer_ticks():
    axis = Figure().subplots()
    shown = draw_cells(axis, torch.rand(2, 3), vmax=4.0)
    assert shown.get_clim() == (0, 4.0)
    assert list(axis.get_xticks()) == [0, 1, 2] and list(axis.get_yticks()) == [0, 1]


def test_grid_lines_fall_between_pixels_every_step():
    axis = Figure().subplots()
    grid_lines(axis, (28, 56), 14)  # (height, width)
    vertical, horizontal = axis.collections[-2:]  # the dark lines, drawn over the light ones
    assert [float(segment[0][0]) for segment in vertical.get_segments()] == [13.5, 27.5, 41.5]
    assert [float(segment[0][1]) for segment in horizontal.get_segments()] == [13.5]


def test_grid_lines_take_a_style_for_both_the_light_and_the_dark_line():
    axis = Figure().subplots()
    grid_lines(axis, (28, 56), 14, style="dotted")
    assert all(collection.get_linestyle()[0][1] is not None for collection in axis.collections)  # dashed pattern
    grid_lines(axis, (28, 56), 14)
    assert all(collection.get_linestyle()[0][1] is None for collection in axis.collections[4:])  # solid
