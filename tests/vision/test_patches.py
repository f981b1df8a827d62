"""patchify, the row layout and Conv3d-as-Linear against the processor and the tiny model."""

import numpy as np
import pytest
import torch

from anatomy import capture
from anatomy.inputs import demo_image, load_image
from anatomy.lab.figures import principal_rgb
from anatomy.processor import offline_processor, resize_plan
from anatomy.vision.patches import (
    conv_as_linear,
    conv_linear_gap,
    embedding_figure,
    embedding_grid,
    normalised_image,
    patchify,
    row_position,
)

SIZES = [(224, 224), (480, 640), (28, 28), (20, 20), (5, 1000)]  # (height, width)


@pytest.fixture(scope="module")
def processor():
    return offline_processor()


@pytest.mark.parametrize("height, width", SIZES)
def test_patchify_reproduces_pixel_values(processor, height, width):
    image = load_image(demo_image(height, width)) if min(height, width) > 20 else load_image(
        np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    )
    expected = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    rows = patchify(normalised_image(image, resize_plan(height, width)))
    assert rows.shape == expected.shape
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=0)


def test_patchify_equals_transformers_patchify_exactly(processor):
    image = torch.randn(1, 3, 56, 84)
    expected, _, _ = processor.image_processor.patchify(image, patch_size=14, merge_size=2, temporal_patch_size=2)
    assert torch.equal(patchify(image[0]), expected[0])


@pytest.mark.parametrize("frames", [4, 3])
def test_patchify_of_frames_equals_the_video_processor(processor, frames):
    video = torch.randn(1, frames, 3, 56, 28)
    patchify_like_transformers = processor.video_processor.patchify
    expected, grid_t, _, _ = patchify_like_transformers(video, patch_size=14, merge_size=2, temporal_patch_size=2)
    assert torch.equal(patchify(video[0]), expected[0])
    assert grid_t == (frames + 1) // 2


def test_row_position_reads_the_processor_layout(processor):
    values = torch.arange(2 * 3 * 28 * 28, dtype=torch.float32).reshape(1, 2, 3, 28, 28)  # (B, T, C, H, W)
    rows, _, _, _ = processor.video_processor.patchify(values, patch_size=14, merge_size=2, temporal_patch_size=2)
    patch = 3  # the bottom-right patch of the 2x2 group: y, x offset 14
    for k in (0, 1, 14, 195, 196, 392, 1175):
        channel, frame, y, x = row_position(k)
        assert rows[0, patch, k] == values[0, frame, channel, 14 + y, 14 + x]


@pytest.mark.parametrize("k", [-1, 1176, 2.0])
def test_row_position_refuses(k):
    with pytest.raises(ValueError, match=f"k={k!r}"):
        row_position(k)


def test_patchify_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, 30, 28\)"):
        patchify(torch.zeros(3, 30, 28))
    with pytest.raises(ValueError, match=r"\(4, 28, 28\)"):
        patchify(torch.zeros(4, 28, 28))


def test_conv3d_is_one_linear(tiny, batch):
    patch_embed = tiny.model.model.visual.patch_embed
    assert conv_linear_gap(patch_embed, batch["pixel_values"]) < 1e-5
    with capture(tiny, ["vision.patch_embed"]) as cache, torch.no_grad():
        tiny.model(**batch)
        linear = conv_as_linear(patch_embed)(batch["pixel_values"])
    torch.testing.assert_close(linear, cache.get("vision.patch_embed", order="model"), atol=1e-5, rtol=0)


def test_conv_as_linear_refuses_other_modules():
    with pytest.raises(TypeError, match="Linear"):
        conv_as_linear(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"\(5, 1000\)"):
        conv_linear_gap(torch.nn.Conv3d(3, 4, 2, 2), torch.zeros(5, 1000))


def test_embedding_grid_and_figure(tiny, batch, picture):
    with capture(tiny, ["vision.patch_embed"]) as cache, torch.no_grad():
        tiny.model(**batch)
    plan = resize_plan(picture.height, picture.width)
    grid = embedding_grid(cache)
    assert tuple(grid.shape) == (*plan.patch_grid, tiny.config.vision_config.hidden_size)
    torch.testing.assert_close(grid.reshape(-1, grid.shape[-1]), cache["vision.patch_embed"])
    colours = principal_rgb(grid)
    assert colours.shape == (*plan.patch_grid, 3) and colours.min() == 0 and colours.max() == 1
    left, pcs, norms = embedding_figure(cache, picture, plan).axes[:3]
    assert left.images[0].get_array().shape[:2] == plan.resized  # the image as the model saw it
    assert left.get_title() == f"resized input, {plan.resized[0]} x {plan.resized[1]} px (height x width)"
    assert (pcs.images[0].get_array() == colours).all()
    torch.testing.assert_close(torch.as_tensor(norms.images[0].get_array().data), grid.norm(dim=-1))
    with pytest.raises(ValueError, match="patch grid"):
        embedding_figure(cache, demo_image(56, 56), resize_plan(56, 56))
