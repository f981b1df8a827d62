"""video_plan and encode_video against the processor and qwen-vl-utils' video rules."""

import pytest
import torch
from qwen_vl_utils import vision_process as qwen_vl_utils

from anatomy.vision.patches import normalise, patchify
from anatomy.vision.video import encode_video, moving_square, sampled_frame_count, temporal_patch_figure, video_plan

VIDEO_PAD = 151656
CLIPS = [  # frames, fps, height, width, sample_fps
    (20, 10.0, 112, 140, 2.0),
    (9, 10.0, 56, 56, 2.0),  # odd and short: the minimum of 4 frames
    (24, 4.0, 28, 84, 2.0),
    (30, 10.0, 64, 48, 4.0),
]


@pytest.mark.parametrize("frames, fps, height, width, sample_fps", CLIPS)
def test_plan_matches_the_processor(tiny, frames, fps, height, width, sample_fps):
    clip = moving_square(frames, fps, height, width, side=20)
    plan = video_plan(frames, fps, height, width, sample_fps)
    batch = encode_video(tiny, clip, sample_fps=sample_fps)
    assert batch["video_grid_thw"].tolist() == [list(plan.grid_thw)]
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([plan.second_per_grid_t])
    assert int((batch["input_ids"] == VIDEO_PAD).sum()) == plan.tokens
    chosen = torch.from_numpy(clip.frames[plan.frame_indices]).permute(0, 3, 1, 2)  # (n, 3, H, W) uint8
    rows = patchify(normalise(chosen, plan.resized))
    torch.testing.assert_close(rows, batch["pixel_values_videos"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames, fps, sample_fps", [
    (20, 10.0, 2.0), (9, 10.0, 2.0), (301, 29.97, 2.0), (30000, 30.0, 2.0), (50, 25.0, 1.0), (3, 10.0, 2.0),
])
def test_frame_count_matches_qwen_vl_utils(frames, fps, sample_fps):
    expected = qwen_vl_utils.smart_nframes({"fps": sample_fps}, total_frames=frames, video_fps=fps)
    assert sampled_frame_count(frames, fps, sample_fps) == expected


@pytest.mark.parametrize("frames, fps, height, width", [
    (20, 10.0, 112, 140), (60, 30.0, 1080, 1920), (3000, 30.0, 480, 640), (40, 2.0, 5, 1000),
])
def test_frame_size_matches_qwen_vl_utils(frames, fps, height, width):
    n = qwen_vl_utils.smart_nframes({"fps": qwen_vl_utils.FPS}, total_frames=frames, video_fps=fps)
    min_pixels = qwen_vl_utils.VIDEO_MIN_TOKEN_NUM * 28 * 28
    budget = qwen_vl_utils.MODEL_SEQ_LEN * 28 * 28 * 0.9
    per_frame = budget / n * qwen_vl_utils.FRAME_FACTOR
    max_pixels = max(min(qwen_vl_utils.VIDEO_MAX_TOKEN_NUM * 28 * 28, per_frame), int(min_pixels * 1.05))
    expected = qwen_vl_utils.smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert video_plan(frames, fps, height, width).resized == expected


def test_bad_inputs_are_named(tiny):
    with pytest.raises(ValueError, match="frames=1"):
        moving_square(frames=1)
    with pytest.raises(ValueError, match="fps=0"):
        moving_square(fps=0)
    with pytest.raises(ValueError, match="side=200"):
        moving_square(side=200)
    with pytest.raises(ValueError, match="num_frames=1"):
        video_plan(1, 10.0, 56, 56)
    with pytest.raises(ValueError, match="sample_fps=-1"):
        video_plan(10, 10.0, 56, 56, sample_fps=-1)
    with pytest.raises(TypeError, match="ndarray"):
        encode_video(tiny, moving_square().frames)


def test_temporal_patch_figure_pairs_the_sampled_frames_by_temporal_patch():
    clip = moving_square()
    plan = video_plan(clip.num_frames, clip.fps, clip.height, clip.width)
    axes = temporal_patch_figure(clip, plan).axes
    assert len(axes) == 2 * plan.grid_thw[0]  # two frames per temporal patch
    shown = [axis.images[0].get_array() for axis in axes]  # row-major: first frames of each patch, then the seconds
    for k, index in enumerate(plan.frame_indices):
        assert (shown[(k % 2) * plan.grid_thw[0] + k // 2] == clip.frames[index]).all()
