"""Figure helpers: principal components against numpy's eigen-decomposition, outlines and maps against the data."""

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from anatomy.lab.figures import draw_cells, draw_picture, grid_lines, outline_cells, principal_rgb, top_cells


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
