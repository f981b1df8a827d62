"""The vision tower's 2D rotary embedding against the formula of docs/FACTS.md and the model's own cos/sin."""

import pytest
import torch

import anatomy
from anatomy import run
from anatomy.vision.rotary import axis_of_dimension, inverse_frequencies, rotation_angles


@pytest.fixture(scope="module")
def cache(tiny, batch):
    return run(tiny, batch, ["vision.position_ids", "vision.rotary.cos", "vision.rotary.sin"])


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
