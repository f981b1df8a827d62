"""The three orders a vision token can be in, and the permutations between them.

A 4x4-patch image (grid_thw = (1, 4, 4), merge 2) numbered in raster order
(row by row over the image)::

    raster        processor (2x2 groups)     window (groups of merged tokens)
     0  1  2  3     0  1  4  5
     4  5  6  7     2  3  6  7               same as processor order here: the
     8  9 10 11     8  9 12 13               4x4 patches fit in one 8x8 window
    12 13 14 15    10 11 14 15

- processor order: how ``pixel_values`` rows arrive; each 2x2 group that will
  merge into one token is contiguous (``Qwen2VLImageProcessor``).
- window order: the merged groups permuted by ``window_index`` so that every
  112-px window is contiguous, how the vision blocks and the merger compute.
- raster order: what a person reads; the default of every capture.

Each ``*_to_raster`` returns ``perm`` with ``raster = tensor[perm]``.
"""

from __future__ import annotations

import torch
from transformers.vision_utils import get_vision_window_index


def _grids(grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
    if grid_thw.ndim != 2 or grid_thw.shape[-1] != 3:
        raise ValueError(f"grid_thw has shape {tuple(grid_thw.shape)}; expected (num_images, 3)")
    return [tuple(int(v) for v in row) for row in grid_thw.tolist()]


def processor_to_raster(grid_thw: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """Patch permutation from processor order to raster order.

    >>> processor_to_raster(torch.tensor([[1, 2, 4]])).tolist()
    [0, 1, 4, 5, 2, 3, 6, 7]
    """
    perms, offset = [], 0
    for t, h, w in _grids(grid_thw):
        index = torch.arange(t * h * w).reshape(t, h // merge, w // merge, merge, merge)  # (t, bh, bw, mh, mw)
        perms.append(index.permute(0, 1, 3, 2, 4).reshape(-1) + offset)  # (t, bh, mh, bw, mw) = raster
        offset += t * h * w
    return torch.cat(perms)


def _window_index(grid_thw: torch.Tensor, vision_config) -> tuple[torch.Tensor, torch.Tensor]:
    return get_vision_window_index(
        grid_thw.cpu(),
        spatial_merge_size=vision_config.spatial_merge_size,
        window_size=vision_config.window_size,
        patch_size=vision_config.patch_size,
    )


def window_index(grid_thw: torch.Tensor, vision_config) -> torch.Tensor:
    """transformers' own window permutation of merged tokens (``get_vision_window_index``)."""
    return _window_index(grid_thw, vision_config)[0]


def window_lengths(grid_thw: torch.Tensor, vision_config) -> list[int]:
    """Patches in every window, in window order (the windows' ``cu_seqlens`` differences)."""
    cu = _window_index(grid_thw, vision_config)[1]
    return (cu[1:] - cu[:-1]).tolist()


def processor_to_window(grid_thw: torch.Tensor, vision_config) -> torch.Tensor:
    """Patch permutation from processor order to window order: ``window = tensor[perm]``.

    Each merged token's patches stay together: merged token ``m`` of the window order
    brings processor rows ``4 m' .. 4 m' + 3`` with ``m' = window_index[m]``.
    """
    unit = vision_config.spatial_merge_size**2
    merged = window_index(grid_thw, vision_config)
    return (merged[:, None] * unit + torch.arange(unit)).reshape(-1)  # (patches,)


def window_to_raster(grid_thw: torch.Tensor, vision_config) -> torch.Tensor:
    """Patch permutation from window order (vision blocks) to raster order."""
    window_of_processor = torch.argsort(processor_to_window(grid_thw, vision_config))
    return window_of_processor[processor_to_raster(grid_thw, vision_config.spatial_merge_size)]


def merged_window_to_raster(grid_thw: torch.Tensor, vision_config) -> torch.Tensor:
    """Merged-token permutation from window order (merger output) to raster order."""
    return torch.argsort(window_index(grid_thw, vision_config))


def merge_groups(grid_thw, merge: int = 2) -> torch.Tensor:
    """Raster indices of the patches that form each merged token: (tokens, merge*merge), one image or video.

    >>> merge_groups(torch.tensor([1, 2, 4])).tolist()
    [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    t, rows, cols = (int(v) for v in torch.as_tensor(grid_thw).reshape(-1))
    if rows % merge or cols % merge:
        raise ValueError(f"grid {t}x{rows}x{cols} is not divisible by merge={merge}")
    raster_of_processor = torch.argsort(processor_to_raster(torch.tensor([[t, rows, cols]]), merge))
    return raster_of_processor.reshape(-1, merge * merge)
