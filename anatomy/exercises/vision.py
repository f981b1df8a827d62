"""Exercises of notebooks 03 to 05: smart_resize, patchify, the memory a smaller max_pixels saves, the vision
rotary angles, the window of every patch, the merger by hand.

Each expected result comes from the package's own implementation (``anatomy.processor``,
``anatomy.vision``), or from transformers' merger module itself.
"""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPatchMerger

from anatomy.lab.exercises import Case, Exercise, same
from anatomy.model import shipped_config
from anatomy.processor import FACTOR, MAX_PIXELS, MIN_PIXELS, resize_plan
from anatomy.vision import patches, resize, rotary, windows


def _resize_cases(rng: random.Random) -> list[Case]:
    sizes = [(rng.randint(100, 2000), rng.randint(100, 2000), MIN_PIXELS, MAX_PIXELS),  # ordinary: rounded
             (rng.randint(5, 40), rng.randint(5, 40), MIN_PIXELS, MAX_PIXELS),  # too small: scaled up
             (rng.randint(3000, 6000), rng.randint(3000, 6000), MIN_PIXELS, MAX_PIXELS),  # too big: scaled down
             (1080, 1920, MIN_PIXELS, 256 * 28 * 28),  # a smaller cap
             (rng.randint(400, 900), rng.randint(1000, 3000), MIN_PIXELS, rng.randint(64, 512) * 28 * 28)]
    return [Case(f"a {h} x {w} image (min_pixels={lo}, max_pixels={hi})", (h, w, lo, hi),
                 resize_plan(h, w, lo, hi).resized) for h, w, lo, hi in sizes]


def _resize_mistakes(got, case: Case) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2 or tuple(got) == tuple(case.expected):
        return None
    _height, _width, min_pixels, max_pixels = case.args
    if tuple(got) == tuple(case.expected)[::-1]:
        return "{yours} " + f"{tuple(got)}: height and width are swapped (return (height, width))"
    if any(not isinstance(side, int) or side % FACTOR for side in got):
        return "{yours} " + f"{tuple(got)}: every side must be a whole multiple of {FACTOR}"
    area = got[0] * got[1]
    if not min_pixels <= area <= max_pixels:
        return "{yours} " + f"{tuple(got)}: its area {area} is outside [min_pixels, max_pixels]"
    return None


SMART_RESIZE = Exercise(
    "smart_resize",
    "a function smart_resize(height, width, min_pixels, max_pixels) -> (height, width)",
    _resize_cases,
    diagnose=_resize_mistakes,
)


def _patchify_cases(rng: random.Random) -> list[Case]:
    sizes = [(28, 28), (56, 84), (112, 56), (FACTOR * rng.randint(2, 6), FACTOR * rng.randint(2, 6))]
    cases = []
    for height, width in sizes:
        image = torch.randn(3, height, width, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        cases.append(Case(f"a random (3, {height}, {width}) image", (image,), patches.patchify(image)))
    return cases


def _raster_rows(image: torch.Tensor) -> torch.Tensor:
    """Each patch's 1176 values in the right layout, but the patches in raster order (a common mistake)."""
    _, height, width = image.shape
    x = image.reshape(3, height // 14, 14, width // 14, 14).permute(1, 3, 0, 2, 4)  # (rows, cols, c, y, x)
    return torch.cat([x, x], dim=3).reshape(-1, 1176)  # frame 0 and frame 1 next to each other per channel


def _patchify_mistakes(got, case: Case) -> str | None:
    if isinstance(got, torch.Tensor) and got.shape == case.expected.shape:
        by_frame = got.reshape(-1, 3, 2, 14, 14)
        if not torch.equal(by_frame[:, :, 0], by_frame[:, :, 1]):
            return "{yours} rows whose two frames differ: a still image is repeated to 2 identical frames"
        raster = _raster_rows(case.args[0])
        if torch.equal(got, raster) and not torch.equal(raster, case.expected):
            return ("{yours} the patches in raster order (row by row); the processor puts the 4 patches of each "
                    "2 x 2 group one after another")
    return None


PATCHIFY = Exercise(
    "patchify",
    "a function patchify(image) -> (patches, 1176) tensor",
    _patchify_cases,
    diagnose=_patchify_mistakes,
)


def _ratio_case(rng: random.Random) -> list[Case]:
    return [Case("the 1080 x 1920 screenshot", (), resize.memory_ratio(1080, 1920, 1024 * 28 * 28, 256 * 28 * 28))]


def _close(got, expected: float) -> str | None:
    """Right within 0.01 (two decimals)."""
    if isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - expected) <= 0.01:
        return None
    hint = same(got, expected)
    return hint if hint and "number" in hint else "{yours} " + f"{got!r}, which is not it (two decimals are enough)"


MEMORY_RATIO = Exercise("memory_ratio", "a float", _ratio_case, compare=_close, function=False)


def _rotary_config(head_dim: int, theta: float) -> SimpleNamespace:
    """What ``anatomy.vision.rotary`` reads from a vision config: one head of ``head_dim``, its rope theta."""
    return SimpleNamespace(hidden_size=head_dim, num_heads=1, rope_parameters={"rope_theta": theta})


def _rotary_cases(rng: random.Random) -> list[Case]:
    cases = []
    for head_dim, theta in ((16, 10000.0), (80, 10000.0), (rng.choice([8, 32, 64]), rng.choice([100.0, 10000.0]))):
        rows, cols = 2 * rng.randint(1, 8), 2 * rng.randint(1, 8)
        grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)
        ids = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(rng.randrange(2**31)))]
        expected = rotary.rotation_angles(ids.float(), _rotary_config(head_dim, theta))
        cases.append(Case(f"{len(ids)} patches of a {rows} x {cols} grid, head_dim={head_dim}, theta={theta:g}",
                          (ids, head_dim, theta), expected))
    return cases


def _rotary_mistakes(got, case: Case) -> str | None:
    _ids, head_dim, _theta = case.args
    if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape:
        return None
    quarter = head_dim // 4
    swapped = torch.cat([case.expected[:, quarter:], case.expected[:, :quarter]], dim=-1)
    if torch.allclose(got.float(), swapped, atol=1e-5):
        return "{yours} angles whose row and column halves are swapped: the first half follows the row"
    return None


ROTATION_ANGLES = Exercise(
    "rotation_angles",
    "a function rotation_angles(position_ids, head_dim, theta) -> (patches, head_dim / 2) tensor",
    _rotary_cases,
    diagnose=_rotary_mistakes,
)


def _window_config(side: int):
    """The toy's vision config with windows of ``side`` x ``side`` patches."""
    config = copy.deepcopy(shipped_config("toy").vision_config)
    config.window_size = side * config.patch_size
    return config


def _window_cases(rng: random.Random) -> list[Case]:
    sizes = [(20, 26, 8), (8, 8, 4), (12, 18, 4), (2 * rng.randint(2, 12), 2 * rng.randint(2, 12), rng.choice([4, 8]))]
    return [Case(f"{rows} x {cols} patches in windows of {side} x {side}", (rows, cols, side),
                 torch.from_numpy(windows.windows((1, rows, cols), _window_config(side)).window[0]))
            for rows, cols, side in sizes]


def _window_mistakes(got, case: Case) -> str | None:
    rows, cols, side = case.args
    if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape or got.is_floating_point():
        return None
    across = -(-cols // side)  # windows per row, the last one cut short
    if torch.equal(got, (torch.arange(rows)[:, None] // side) * (cols // side) + torch.arange(cols)[None] // side) \
            and cols % side:  # fmt: skip
        return f"{{yours}} ids that count whole windows only: a cut window at the right edge counts too ({across} per row)"
    down = -(-rows // side)
    if torch.equal(got, (torch.arange(cols)[None] // side) * down + torch.arange(rows)[:, None] // side):
        return "{yours} windows numbered column by column; they are numbered row by row"
    return None


WINDOW_IDS = Exercise(
    "window_ids",
    "a function window_ids(rows, cols, side) -> (rows, cols) tensor of window ids",
    _window_cases,
    diagnose=_window_mistakes,
)


def _merger_cases(rng: random.Random) -> list[Case]:
    cases = []
    for width, out, count in ((64, 128, 16), (16, 24, 4), (rng.choice([8, 32, 80]), rng.choice([8, 40]), 4 * rng.randint(1, 16))):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        merger = Qwen2_5_VLPatchMerger(dim=out, context_dim=width, spatial_merge_size=2)
        with torch.no_grad():
            for parameter in merger.parameters():  # drawn here: the notebook's global random state is left alone
                parameter.copy_(torch.randn(parameter.shape, generator=gen) / parameter.shape[-1] ** 0.5)
        patches_in = torch.randn(count, width, generator=gen)
        with torch.no_grad():
            expected = merger(patches_in)
        cases.append(Case(f"a merger of width {width} -> {out} on {count} patches", (merger, patches_in), expected))
    return cases


def _merger_mistakes(got, case: Case) -> str | None:
    merger, patches_in = case.args
    if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape:
        return None
    with torch.no_grad():
        unnormed = merger.mlp(patches_in.reshape(-1, merger.hidden_size))
    if torch.allclose(got.float(), unnormed, atol=1e-5):
        return "{yours} the MLP of the raw patches: normalise each patch first (ln_q)"
    return None


MERGE = Exercise(
    "merge",
    "a function merge(merger, patches) -> (patches / 4, out) tensor",
    _merger_cases,
    diagnose=_merger_mistakes,
)
