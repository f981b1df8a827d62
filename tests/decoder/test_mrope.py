"""M-RoPE ids against the ids the model itself uses (captured) and against the formulas, image and video."""

import numpy as np
import pytest
import torch

from anatomy import capture
from anatomy.decoder.mrope import (bands_figure, frequency_axes, position_ids_figure, position_table, rope_index,
                                   video_time_steps, vision_grid_figure)
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


def test_vision_grid_of_an_image_names_its_one_time_id_and_draws_no_colour_bar(tiny, batch):
    ids, _ = rope_index(tiny, batch)
    times = ids[0, 0, batch["input_ids"][0] == tiny.config.image_token_id].unique().tolist()
    figure = vision_grid_figure(tiny, batch)
    assert len(times) == 1 and len(figure.axes) == 1  # a bar over one value would show a made-up range
    assert figure.axes[0].get_title().endswith(f"share time id {times[0]}")


def test_vision_grid_of_a_video_labels_its_colour_bar_with_the_time_ids(tiny, clip_batch):
    ids, _ = rope_index(tiny, clip_batch)
    times = ids[0, 0, clip_batch["input_ids"][0] == tiny.config.video_token_id].unique().tolist()
    bar = vision_grid_figure(tiny, clip_batch).axes[1]
    assert [label.get_text() for label in bar.get_yticklabels()] == [str(t) for t in times]


def test_bands_figure_draws_the_rotary_frequencies_as_frequencies(tiny):
    axis = bands_figure(tiny).axes[0]
    heights = sorted(bar.get_height() for bar in axis.patches)
    inv_freq = tiny.model.model.language_model.rotary_emb.inv_freq  # radians per position id
    assert np.allclose(heights, sorted(inv_freq.tolist()))
    assert axis.get_ylabel() == "frequency (radians per id)"


@pytest.mark.parametrize("frames, fps, sample_fps", [(8, 1.0, 1.0), (8, 1.0, 2.0), (32, 4.0, 2.0)])
def test_video_time_steps_are_tokens_per_second_times_the_seconds_per_temporal_patch(tiny, frames, fps, sample_fps):
    clip = np.stack([np.asarray(demo_image(56, 56).rotate(2.5 * i)) for i in range(frames)])
    video = encode_video(tiny, Clip(clip, fps=fps), sample_fps=sample_fps, max_pixels=56 * 56)
    spans = video["second_per_grid_ts"][0].item()  # the processor's: it never samples more frames than there are
    assert video_time_steps(tiny, video) == [tiny.config.vision_config.tokens_per_second * spans]
    with pytest.raises(ValueError, match="no <\\|video_pad\\|> token"):
        video_time_steps(tiny, encode(tiny, demo_image(56, 56)))
