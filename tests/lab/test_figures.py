"""Figure helpers: principal components against numpy's eigen-decomposition, overlays against the picture."""

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from anatomy.lab.figures import draw_over_image, grid_lines, principal_rgb


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


def test_draw_over_image_stretches_the_cells_over_the_picture():
    axis = Figure().subplots()
    draw_over_image(axis, Image.new("RGB", (84, 56)), torch.rand(2, 3), "title")
    picture, cells = axis.images
    assert picture.get_array().shape[:2] == (56, 84) and cells.get_extent() == [0, 84, 56, 0]
    assert axis.get_title() == "title"


def test_grid_lines_fall_between_pixels_every_step():
    axis = Figure().subplots()
    grid_lines(axis, (56, 28), 14, {})
    xs = sorted(line.get_xdata()[0] for line in axis.lines if line.get_xdata()[0] == line.get_xdata()[1])
    assert xs == [13.5, 27.5, 41.5] and len(axis.lines) == 3 + 1  # and one horizontal line at y = 13.5
