"""The orders of vision tokens: against a direct count, and against the order the model really computes in."""

import torch

from anatomy import run
from anatomy.capture.orders import (
    merge_groups,
    merged_window_to_raster,
    processor_to_raster,
    processor_to_window,
    window_lengths,
    window_to_raster,
)
from anatomy.inputs import demo_image, encode


def test_processor_order_is_2x2_groups_in_raster_order_over_the_merged_grid():
    rows, cols = 4, 6
    direct = [r * cols + c for br in range(rows // 2) for bc in range(cols // 2)
              for r in (2 * br, 2 * br + 1) for c in (2 * bc, 2 * bc + 1)]  # raster patch of each processor row
    perm = processor_to_raster(torch.tensor([[1, rows, cols]]))
    assert torch.argsort(perm).tolist() == direct


def test_merge_groups_are_2x2_blocks_of_the_raster():
    groups = merge_groups(torch.tensor([1, 6, 8]))
    assert groups.shape == (12, 4) and sorted(groups.reshape(-1).tolist()) == list(range(48))
    rows, cols = groups // 8, groups % 8
    assert ((rows // 2).min(1).values == (rows // 2).max(1).values).all()  # one merged row per token
    assert ((cols // 2).min(1).values == (cols // 2).max(1).values).all()


def test_window_lengths_are_a_direct_count_of_8x8_windows(tiny):
    config = tiny.config.vision_config  # window_size 56 px = 4x4 patches in the tiny model
    side = config.window_size // config.patch_size
    rows, cols = 20, 26
    direct = [min(side, rows - r) * min(side, cols - c) for r in range(0, rows, side) for c in range(0, cols, side)]
    assert window_lengths(torch.tensor([[1, rows, cols]]), config) == direct


def test_permutations_are_the_models_own_reordering(tiny):
    prompt = encode(tiny, demo_image(280, 364))  # 20x26 patches: windows cut at the edges
    cache = run(tiny, prompt, ["vision.patch_embed", "vision.blocks.0.input", "vision.merger.input"])
    grid, config = prompt.grid_thw, tiny.config.vision_config
    embedded = cache.get("vision.patch_embed", order="model")  # processor order, as the rows arrive
    in_windows = cache.get("vision.blocks.0.input", order="model")  # what block 0 received
    assert torch.equal(embedded[processor_to_window(grid, config)], in_windows)
    assert torch.equal(in_windows[window_to_raster(grid, config)], embedded[processor_to_raster(grid)])
    merger_in = cache.get("vision.merger.input", order="model").reshape(-1, 4, embedded.shape[-1])  # 4 per token
    window_tokens = merger_in[merged_window_to_raster(grid, config)]  # merged tokens back in raster order
    raster_in = cache["vision.merger.input"]
    assert torch.equal(window_tokens.reshape(-1, embedded.shape[-1]), raster_in[merge_groups(grid[0]).reshape(-1)])
