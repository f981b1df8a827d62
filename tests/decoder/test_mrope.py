"""M-RoPE ids against the ids the model itself uses (captured) and against the formulas, image and video."""

import numpy as np
import pytest
import torch

from anatomy import capture
from anatomy.decoder.mrope import frequency_axes, position_ids_figure, position_table, rope_index
from anatomy.inputs import demo_image, encode
from anatomy.vision.video import Clip, encode_video


def used_ids(specimen, batch):
    """The (3, batch, seq) ids the model's rotary embedding received in a forward pass."""
    with torch.no_grad(), capture(specimen, "decoder.position_ids") as cache:
        specimen.model(**batch)
    return cache["decoder.position_ids"]


@pytest.fixture(scope="module")
def two_images(tiny):
    content = [{"type": "image", "image": demo_image(84, 112)}, {"type": "image", "image": demo_image(112, 56)}]
    return encode(tiny, messages=[{"role": "user", "content": content + [{"type": "text", "text": "Same?"}]}])


@pytest.fixture(scope="module")
def clip_batch(tiny):
    clip = np.stack([np.asarray(demo_image(56, 56).rotate(10 * i)) for i in range(8)])
    return encode_video(tiny, Clip(clip, fps=1.0), sample_fps=1.0, max_pixels=56 * 56)


def test_image_ids_equal_the_models_own_and_lie_on_the_grid(tiny, batch):
    ids, deltas = rope_index(tiny, batch)
    assert torch.equal(ids, used_ids(tiny, batch))
    image = batch["input_ids"][0] == tiny.config.image_token_id
    start = int(torch.nonzero(image)[0])
    h, w = (int(v) // 2 for v in batch["image_grid_thw"][0, 1:])  # merged grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    assert torch.equal(ids[0, 0, image], torch.full((h * w,), start))
    assert torch.equal(ids[1, 0, image], start + rows.flatten())
    assert torch.equal(ids[2, 0, image], start + cols.flatten())
    assert int(deltas) == int(ids.max()) + 1 - batch["input_ids"].shape[1]


def test_text_tokens_carry_equal_ids_and_resume_after_the_image(tiny, batch):
    ids, _ = rope_index(tiny, batch)
    text = batch["input_ids"][0] != tiny.config.image_token_id
    assert torch.equal(ids[0, 0, text], ids[1, 0, text]) and torch.equal(ids[0, 0, text], ids[2, 0, text])
    image = torch.nonzero(~text).flatten()
    start, after = int(image[0]), int(image[-1]) + 1
    _, h, w = batch["image_grid_thw"][0].tolist()
    assert int(ids[0, 0, after]) == start + max(h, w) // 2


def test_two_images_equal_the_models_own(tiny, two_images):
    ids, _ = rope_index(tiny, two_images)
    assert len(two_images["image_grid_thw"]) == 2
    assert torch.equal(ids, used_ids(tiny, two_images))


def test_video_time_ids_step_by_tokens_per_second_times_seconds_per_grid(tiny, clip_batch):
    ids, _ = rope_index(tiny, clip_batch)
    assert torch.equal(ids, used_ids(tiny, clip_batch))
    seconds = 2 / 1.0  # temporal_patch_size frames per grid, sampled at 1 frame per second
    assert clip_batch["second_per_grid_ts"].tolist() == [seconds]
    t, h, w = clip_batch["video_grid_thw"][0].tolist()
    video = clip_batch["input_ids"][0] == tiny.config.video_token_id
    start = int(torch.nonzero(video)[0])
    step = tiny.config.vision_config.tokens_per_second * seconds
    expected = torch.tensor([start + int(g * step) for g in range(t)]).repeat_interleave(h * w // 4)
    assert t == 4 and torch.equal(ids[0, 0, video], expected)


def test_missing_mm_token_type_ids_is_caught(tiny, batch):
    stripped = {key: value for key, value in batch.items() if key != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        rope_index(tiny, stripped)


def test_frequency_axes_follow_mrope_section(tiny):
    section = tiny.model.model.language_model.rotary_emb.mrope_section
    expected = torch.cat([torch.full((size,), axis) for axis, size in enumerate(section)])
    assert torch.equal(frequency_axes(tiny), expected)


def test_position_table_rows(tiny, batch):
    table = position_table(tiny, batch)
    assert len(table) == batch["input_ids"].shape[1]
    assert table[0]["kind"] == "text"
    assert sum(row["kind"] == "image" for row in table) == int(batch["image_grid_thw"].prod()) // 4


@pytest.mark.parametrize("which", ["batch", "clip_batch"])
def test_position_ids_legend_names_only_the_token_kinds_present(tiny, which, request):
    batch = request.getfixturevalue(which)
    ids = batch["input_ids"][0]
    present = [f"{kind} tokens" for kind, token in (("image", tiny.config.image_token_id),
                                                    ("video", tiny.config.video_token_id)) if (ids == token).any()]
    legend = position_ids_figure(tiny, batch).axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["time", "height", "width", *present]
    assert len(present) == 1
