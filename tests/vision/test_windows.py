"""The window partition against the order the vision blocks really compute in (transformers' own)."""

import pytest
import torch

from anatomy import capture
from anatomy.inputs import demo_image, encode
from anatomy.model import shipped_config
from anatomy.vision.windows import cut_edges, window_figure, windows


@pytest.fixture(scope="module")
def edge_batch(tiny):
    return encode(tiny, demo_image(280, 364))  # 20x26 patches: windows cut at the right and bottom


def test_window_partition_matches_the_models_own_order(tiny, edge_batch):
    config = tiny.config.vision_config
    parts = windows(edge_batch["image_grid_thw"][0], config)
    with torch.no_grad(), capture(tiny, "vision.blocks.0.input") as cache:
        tiny.model(**edge_batch)
    raster, model_order = cache["vision.blocks.0.input"], cache.get("vision.blocks.0.input", order="model")
    assert torch.equal(model_order[torch.as_tensor(parts.window_order.reshape(-1))], raster)
    assert parts.lengths.tolist() == [64, 64, 64, 16] * 2 + [32, 32, 32, 8]
    assert parts.boxes[3].tolist() == [336, 0, 364, 112] and parts.boxes[-1].tolist() == [336, 224, 364, 280]


def test_window_figure_outlines_every_window(tiny, edge_batch):
    config = tiny.config.vision_config
    parts = windows(edge_batch["image_grid_thw"][0], config)
    axis = window_figure(edge_batch.image, edge_batch["image_grid_thw"][0], config).axes[0]
    outlined = [(p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height()) for p in axis.patches]
    # pixel x covers x - 0.5 .. x + 0.5 in imshow's coordinates: a box drawn on pixel edges is shifted by half a pixel
    assert outlined == [tuple(v - 0.5 for v in box) for box in parts.boxes.tolist()]
    assert axis.images[0].get_array().shape[:2] == (280, 364)  # the image at the size the model saw it


@pytest.mark.parametrize("grid", [(1, 20, 26), (1, 24, 26), (1, 20, 32), (1, 24, 32), (1, 8, 8)])
@pytest.mark.parametrize("size", ["toy", "7B"])
def test_cut_edges_are_the_edges_whose_windows_are_smaller(grid, size):
    vision = shipped_config(size).vision_config
    boxes = windows(grid, vision).boxes  # (windows, 4): x0, y0, x1, y1 in px
    full = vision.window_size
    smaller = [edge for edge, sides in (("bottom", boxes[:, 3] - boxes[:, 1]), ("right", boxes[:, 2] - boxes[:, 0]))
               if (sides < full).any()]
    assert cut_edges(grid, vision) == smaller
