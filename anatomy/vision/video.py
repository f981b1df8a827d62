"""Video: frames sampled, pairs of frames folded into one temporal patch, and the token count.

A clip of T frames at ``fps`` lasts T/fps seconds. The processor samples
``sample_fps`` (2.0) frames per second, rounded down to an even count (at least
4, at most 768), resizes every frame with the video pixel bounds (128 to 768
tokens' worth), and folds each pair of frames into one temporal patch::

    20 frames at 10 fps = 2.0 s -> 4 frames sampled (0, 5, 10, 15)
                                -> grid_t = 2 temporal patches, each 1.0 s
                                -> second_per_grid_ts = 2 / 2.0 = 1.0

>>> clip = moving_square(frames=20, fps=10.0)
>>> plan = video_plan(clip.num_frames, clip.fps, clip.height, clip.width)
>>> plan.frame_indices, plan.grid_thw, plan.second_per_grid_t, plan.tokens
([0, 5, 10, 15], (2, 22, 26), 1.0, 286)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize
from transformers.video_utils import VideoMetadata

from anatomy.processor import (
    FACTOR,
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VIDEO_FPS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    check_size,
)

MIN_FRAMES, MAX_FRAMES = 4, 768  # sampled frame count bounds (qwen-vl-utils FPS_MIN_FRAMES, FPS_MAX_FRAMES)
VIDEO_TOKEN_BUDGET = int(128000 * FACTOR * FACTOR * 0.9)  # pixels all frames may share: 90% of a 128k context


@dataclass(frozen=True)
class Clip:
    """A video as the processor takes it: ``frames`` (T, H, W, 3) uint8 shown at ``fps``."""

    frames: np.ndarray
    fps: float

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    def metadata(self) -> VideoMetadata:
        """What the processor needs to sample by time: frame count and fps."""
        return VideoMetadata(total_num_frames=self.num_frames, fps=self.fps, height=self.height, width=self.width)


def moving_square(frames: int = 20, fps: float = 10.0, height: int = 112, width: int = 140, side: int = 28) -> Clip:
    """A red square sliding left to right over a blue-to-green background, one step per frame."""
    if not (isinstance(frames, int) and frames >= 2):
        raise ValueError(f"frames={frames!r}; expected an integer >= 2")
    if not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps={fps!r}; expected a positive number")
    if not (isinstance(side, int) and 0 < side < min(height, width)):
        raise ValueError(f"side={side!r}; expected a positive integer below min(height, width) = {min(height, width)}")
    check_size(height, width)
    ramp = np.linspace(0, 1, width)[None, :, None]  # (1, W, 1)
    background = (1 - ramp) * np.array([40, 80, 200]) + ramp * np.array([40, 180, 80])  # (1, W, 3)
    clip = np.repeat(np.broadcast_to(background, (height, width, 3))[None], frames, axis=0).astype(np.uint8)
    top = (height - side) // 2
    for t, left in enumerate(np.linspace(0, width - side, frames).round().astype(int)):
        clip[t, top : top + side, left : left + side] = (220, 30, 30)
    return Clip(clip, float(fps))


@dataclass(frozen=True)
class VideoPlan:
    """What the processor does to a clip.

    Attributes:
        frame_indices: the frames sampled (transformers: ``arange(0, T, T / n)``).
        resized: (H', W') of every frame, multiples of 28.
        grid_thw: (frames / 2, H'/14, W'/14): temporal patches and the patch grid.
        second_per_grid_t: seconds one temporal patch spans (2 / the sampled fps).
    """

    frame_indices: list[int]
    resized: tuple[int, int]
    grid_thw: tuple[int, int, int]
    second_per_grid_t: float

    @property
    def patches(self) -> int:
        """Rows of ``pixel_values_videos``."""
        return math.prod(self.grid_thw)

    @property
    def tokens(self) -> int:
        """``<|video_pad|>`` tokens: one per 2x2 patches per temporal patch."""
        return self.patches // MERGE_SIZE**2


def sampled_frame_count(num_frames: int, fps: float, sample_fps: float = VIDEO_FPS) -> int:
    """Frames kept: duration x sample_fps, clamped to [4, min(768, T)], floored to even.

    >>> sampled_frame_count(20, 10.0), sampled_frame_count(300, 30.0), sampled_frame_count(5, 10.0)
    (4, 20, 4)
    """
    if not (isinstance(num_frames, int) and num_frames >= TEMPORAL_PATCH_SIZE):
        raise ValueError(f"num_frames={num_frames!r}; expected an integer >= {TEMPORAL_PATCH_SIZE}")
    if not (fps > 0 and sample_fps > 0):
        raise ValueError(f"fps={fps!r}, sample_fps={sample_fps!r}; expected positive numbers")
    most = min(MAX_FRAMES, num_frames) // TEMPORAL_PATCH_SIZE * TEMPORAL_PATCH_SIZE
    wanted = min(max(num_frames / fps * sample_fps, MIN_FRAMES), most, num_frames)
    return math.floor(wanted / TEMPORAL_PATCH_SIZE) * TEMPORAL_PATCH_SIZE


def video_plan(
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    sample_fps: float = VIDEO_FPS,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
) -> VideoPlan:
    """Sampled frames, frame size, grid and seconds per temporal patch of a T x H x W clip at ``fps``."""
    check_size(height, width)
    n = sampled_frame_count(num_frames, fps, sample_fps)
    indices = torch.arange(0, num_frames, num_frames / n).int().tolist()
    per_frame = max(min(max_pixels, VIDEO_TOKEN_BUDGET * TEMPORAL_PATCH_SIZE // n), int(min_pixels * 1.05))
    new_h, new_w = smart_resize(height, width, FACTOR, min_pixels=min_pixels, max_pixels=per_frame)
    sampled_fps = n / num_frames * fps
    grid = (n // TEMPORAL_PATCH_SIZE, new_h // PATCH_SIZE, new_w // PATCH_SIZE)
    return VideoPlan(indices, (new_h, new_w), grid, TEMPORAL_PATCH_SIZE / sampled_fps)


def encode_video(specimen, clip: Clip, text: str = "What moves in this video?", sample_fps: float = VIDEO_FPS,
                 max_pixels: int | None = None):
    """The chat template and the video processor on ``clip``, sampling ``sample_fps`` frames a second.

    ``max_pixels`` caps each frame's area (and lowers the floor to 4 merged tokens),
    to keep a demonstration small. Returns a ``BatchFeature`` on the model's device:
    ``input_ids`` (1, S), ``pixel_values_videos`` (patches, 1176), ``video_grid_thw`` (1, 3),
    ``second_per_grid_ts`` (1,) = temporal_patch_size / sampled fps, ``mm_token_type_ids`` (1, S).
    """
    if not isinstance(clip, Clip):
        raise TypeError(f"clip is a {type(clip).__name__}; expected a Clip (e.g. moving_square())")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = specimen.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    size = {} if max_pixels is None else {"size": {"shortest_edge": FACTOR * FACTOR * 4, "longest_edge": max_pixels}}
    batch = specimen.processor(
        text=[prompt],
        videos=[clip.frames],
        video_metadata=[clip.metadata()],
        do_sample_frames=True,
        fps=sample_fps,
        cap_pixels_per_frame=True,  # the per-frame cap of qwen-vl-utils
        return_tensors="pt",
        **size,
    )
    return batch.to(specimen.device)


def temporal_patch_figure(clip: Clip, plan: VideoPlan) -> Figure:
    """The sampled frames, two per column: each column is one temporal patch (one grid_t step)."""
    grid_t = plan.grid_thw[0]
    figure = Figure(figsize=(2.6 * grid_t, 4.6), layout="constrained")
    axes = figure.subplots(TEMPORAL_PATCH_SIZE, grid_t, squeeze=False)
    for k, index in enumerate(plan.frame_indices):
        axis = axes[k % TEMPORAL_PATCH_SIZE, k // TEMPORAL_PATCH_SIZE]
        axis.imshow(clip.frames[index])
        axis.set_title(f"frame {index} (t = {index / clip.fps:.2f} s)", fontsize=9)
        axis.set_axis_off()
    for t in range(grid_t):
        axes[0, t].text(0.5, 1.25, f"temporal patch {t}", transform=axes[0, t].transAxes, ha="center", weight="bold")
    shown = f"{len(plan.frame_indices)} of {clip.num_frames} frames"
    figure.suptitle(f"{shown}; {plan.second_per_grid_t:g} s per temporal patch")
    return figure
