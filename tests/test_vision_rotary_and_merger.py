"""2D rotary against the formula of QWEN25VL_FACTS.md; the merger against the model's own output."""

import pytest
import torch

import anatomy
from anatomy import capture
from anatomy.exercises import verdict
from anatomy.merger import merge_by_hand, merge_groups, merger_shapes
from anatomy.vision_rotary import axis_of_dimension, inverse_frequencies, rotation_angles


@pytest.fixture(scope="module")
def cache(tiny, batch):
    sites = ["vision.position_ids", "vision.rotary.cos", "vision.rotary.sin", "vision.merger.input", "vision.merger.output"]
    with torch.no_grad(), capture(tiny, sites) as captured:
        tiny.model(**batch)
    return captured


def test_rotary_is_row_then_column_with_shared_frequencies(tiny, cache):
    config = tiny.config.vision_config
    angles = rotation_angles(cache["vision.position_ids"].float(), config)
    torch.testing.assert_close(cache["vision.rotary.cos"], torch.cat([angles.cos()] * 2, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["vision.rotary.sin"], torch.cat([angles.sin()] * 2, -1), atol=1e-6, rtol=0)


def test_released_rotary_layout():
    config = anatomy.load("7B").config.vision_config
    frequencies = inverse_frequencies(config)  # head_dim 80: 20 angles per axis pair half
    assert len(frequencies) == 80 // 4 and frequencies[0] == 1.0
    torch.testing.assert_close(frequencies[1], torch.tensor(10000.0 ** (-2 / 40)))
    assert axis_of_dimension(config)[:20] == ["row"] * 20 and axis_of_dimension(config)[20:40] == ["col"] * 20


def test_rotation_angles_checks_its_input(tiny):
    with pytest.raises(ValueError, match=r"shape \(5,\); expected \(patches, 2\)"):
        rotation_angles(torch.zeros(5), tiny.config.vision_config)


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


def test_exercise_verdicts():
    assert verdict(None, 3) == "not answered yet"
    assert verdict(3, 3) == "right" and verdict(4, 3).startswith("not right")
    assert verdict(0.9995, 1.0, tolerance=1e-3) == "right"
