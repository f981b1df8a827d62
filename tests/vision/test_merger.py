"""The merger recomputed by hand against the model's own output; its widths against the released 7B; regions of
the demo picture against its pixels, and their similarity against means and cosines taken by hand."""

import numpy as np
import pytest
import torch

import anatomy
from anatomy import run
from anatomy.capture.orders import merge_groups
from anatomy.lab.figures import principal_rgb
from anatomy.inputs import resized
from anatomy.vision.merger import (DEMO_REGIONS, cell_regions, merge_by_hand, merger_shapes, nearest_regions,
                                   region_similarity, token_map_figure)


@pytest.fixture(scope="module")
def cache(tiny, batch):
    return run(tiny, batch, ["vision.merger.input", "vision.merger.output"])


def test_merger_by_hand_equals_the_model(tiny, cache):
    merger = tiny.model.model.visual.merger
    with torch.no_grad():
        by_hand = merge_by_hand(merger, cache.get("vision.merger.input", order="model"))
    assert torch.equal(by_hand, cache.get("vision.merger.output", order="model"))


def test_merge_groups_name_the_patches_of_each_raster_token(tiny, batch, cache):
    groups = torch.as_tensor(merge_groups(batch["image_grid_thw"][0]))
    patches = cache["vision.merger.input"][groups.reshape(-1)]  # raster order, regrouped 2x2
    with torch.no_grad():
        tokens = merge_by_hand(tiny.model.model.visual.merger, patches)
    torch.testing.assert_close(tokens, cache["vision.merger.output"], atol=1e-5, rtol=0)
    image_pads = int((batch["input_ids"] == 151655).sum())
    assert len(groups) == image_pads == int(batch["image_grid_thw"].prod()) // 4
    with pytest.raises(ValueError, match="not divisible by merge=2"):
        merge_groups(torch.tensor([1, 3, 4]))


def test_released_merger_widths():
    config = anatomy.load("7B").config.vision_config
    merger = anatomy.load("7B").model.model.visual.merger
    assert merger.mlp[0].in_features == 4 * 1280 == 5120 and merger.mlp[2].out_features == 3584
    assert merger_shapes(config)[-1] == ("mlp.2 Linear", "(tokens, 3584)")


def test_token_map_shows_each_token_at_its_cell(tiny, batch, cache):
    picture, tokens = token_map_figure(cache["vision.merger.output"], batch, "merged").axes
    _, rows, cols = batch["image_grid_thw"][0].tolist()
    expected = principal_rgb(cache["vision.merger.output"].reshape(rows // 2, cols // 2, -1))
    assert (tokens.images[0].get_array() == expected).all()  # token k of the raster at row k // (cols/2)
    assert picture.images[0].get_array().shape[:2] == (rows * 14, cols * 14)


def test_every_demo_region_is_found_where_its_colour_covers_most_of_a_cell(picture, batch):
    shown = resized(picture, batch["image_grid_thw"][0])
    regions = cell_regions(shown, DEMO_REGIONS, rest="sky")
    assert set(regions.reshape(-1)) == {"sky", *DEMO_REGIONS}  # every colour demo_image paints, and sky
    pixels = np.asarray(shown).astype(int)
    for (row, col), name in np.ndenumerate(regions):
        cell = pixels[row * 28 : (row + 1) * 28, col * 28 : (col + 1) * 28]
        shares = {n: float((np.abs(cell - np.array(c)) <= 10).all(-1).mean()) for n, c in DEMO_REGIONS.items()}
        assert shares.get(name, 0.0) > 0.5 if name != "sky" else max(shares.values()) <= 0.5


def test_region_similarity_is_the_cosine_of_each_regions_mean_token(picture, batch, cache):
    tokens = cache["vision.merger.output"]
    regions = cell_regions(resized(picture, batch["image_grid_thw"][0]), DEMO_REGIONS, rest="sky")
    names, similar = region_similarity(tokens, regions)
    means = {n: tokens[torch.from_numpy(regions.reshape(-1) == n)].mean(0) for n in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            expected = torch.dot(means[a], means[b]) / (means[a].norm() * means[b].norm())
            assert float(similar[i, j]) == pytest.approx(float(expected), abs=1e-5)
    nearest = nearest_regions(names, similar)
    for i, a in enumerate(names):
        others = {b: float(similar[i, j]) for j, b in enumerate(names) if b != a}
        assert nearest[a] == (max(others, key=others.get), round(max(others.values()), 2))
    with pytest.raises(ValueError, match="tokens for a"):
        region_similarity(tokens[:-1], regions)
