"""resize_plan and token_budget against the processor, transformers and qwen-vl-utils."""

import numpy as np
import pytest
import torch
from qwen_vl_utils import vision_process as qwen_vl_utils
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from anatomy import capture
from anatomy.inputs import resized
from anatomy.processor import MAX_PIXELS, MIN_PIXELS, ResizePlan, offline_processor, resize_plan
from anatomy.vision.resize import grid_figure, memory_ratio, token_budget

REDUCED = 256 * 28 * 28
SIZES = [(224, 224), (480, 640), (1080, 1920), (28, 28), (20, 20), (5, 1000)]  # (height, width)
CASES = [(h, w, MAX_PIXELS) for h, w in SIZES] + [(1080, 1920, REDUCED), (480, 640, REDUCED)]
IMAGE_PAD = 151655


@pytest.fixture(scope="module")
def processors():
    return {MAX_PIXELS: offline_processor(), REDUCED: offline_processor(max_pixels=REDUCED)}


def _picture(height, width):
    rng = np.random.default_rng(height * 10_000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("height, width, max_pixels", CASES)
def test_plan_matches_the_processor(processors, height, width, max_pixels):
    processor = processors[max_pixels]
    plan = resize_plan(height, width, max_pixels=max_pixels)
    text = "<|vision_start|><|image_pad|><|vision_end|>"
    batch = processor(text=text, images=[_picture(height, width)], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, *plan.patch_grid]]
    assert batch["pixel_values"].shape == (plan.patches, 1176)
    assert int((batch["input_ids"] == IMAGE_PAD).sum()) == plan.tokens
    assert plan.resized == tuple(14 * n for n in plan.patch_grid) == tuple(28 * n for n in plan.token_grid)


@pytest.mark.parametrize("height, width, max_pixels", [c for c in CASES if c[:2] != (5, 1000)])
def test_plan_matches_qwen_vl_utils(height, width, max_pixels):
    reference = qwen_vl_utils.smart_resize(height, width, factor=28, min_pixels=MIN_PIXELS, max_pixels=max_pixels)
    assert resize_plan(height, width, max_pixels=max_pixels).resized == reference


def test_the_strip_is_accepted_and_the_references_disagree():
    """1000 x 5 has aspect ratio exactly 200: both accept it. transformers rounds 5 px to 0
    and scales up from the true area; qwen-vl-utils first clamps each side to >= 28 px."""
    ours = resize_plan(5, 1000).resized
    assert ours == smart_resize(5, 1000, 28, MIN_PIXELS, MAX_PIXELS)
    utils = qwen_vl_utils.smart_resize(5, 1000, factor=28, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert utils[0] == ours[0] == 28 and utils[1] > ours[1]


def test_a_thinner_strip_is_refused_like_transformers():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(5, 1001, 28, MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match=r"5 x 1001 px .* aspect ratio 200.2"):
        resize_plan(5, 1001)


@pytest.mark.parametrize("args, bad", [((0, 10), "height=0"), ((10, 2.5), "width=2.5"), ((True, 10), "height=True")])
def test_bad_sizes_are_named(args, bad):
    with pytest.raises(ValueError, match=bad):
        resize_plan(*args)


def test_bad_bounds_are_named():
    with pytest.raises(ValueError, match="min_pixels=5000, max_pixels=4000"):
        resize_plan(100, 100, min_pixels=5000, max_pixels=4000)


def test_budget_against_what_the_processor_and_model_hold(tiny, batch, picture, reference):
    plan = resize_plan(picture.height, picture.width)
    with capture(tiny, ["vision.patch_embed"]) as cache, torch.no_grad():
        tiny.model(**batch)
    vision, text = tiny.config.vision_config, tiny.config.text_config
    budget = token_budget(plan, vision, text, bytes_per_value=4)
    assert budget.pixel_values == batch["pixel_values"].nbytes
    embeddings = cache["vision.patch_embed"]
    assert budget.residual_per_block == embeddings.nbytes
    assert budget.eager_full_attention == vision.num_heads * embeddings.shape[0] ** 2 * 4
    keys = reference.past_key_values.layers[0].keys  # (batch, kv_heads, seq, head_dim)
    per_token = 2 * keys.nbytes // keys.shape[2]  # keys and values of one token in one layer
    assert budget.kv_cache_per_decoder_layer == plan.tokens * per_token


def test_budget_refuses_what_is_not_a_plan():
    with pytest.raises(TypeError, match="tuple"):
        token_budget((480, 640))
    with pytest.raises(ValueError, match="bytes_per_value=3"):
        token_budget(resize_plan(480, 640), bytes_per_value=3)


def test_grid_figure_draws_every_patch_and_token_line_over_the_resized_image(picture):
    plan = resize_plan(picture.height, picture.width)
    assert resized(picture, plan).size == plan.resized[::-1]
    axis = grid_figure(picture).axes[0]
    (height, width), (rows, cols) = plan.resized, plan.patch_grid
    assert axis.images[0].get_array().shape[:2] == (height, width)
    counts = [len(c.get_segments()) for c in axis.collections]  # per grid: light then dark, vertical then horizontal
    assert counts[:4] == [cols - 1, rows - 1] * 2  # a line between every two 14-px patches
    assert counts[4:] == [plan.token_grid[1] - 1, plan.token_grid[0] - 1] * 2  # and between every two 28-px tokens
    dashes = [c.get_linestyle()[0][1] for c in axis.collections]
    assert all(d is not None for d in dashes[:4]) and all(d is None for d in dashes[4:])  # patches dotted, tokens solid
    with pytest.raises(ValueError, match="does not match"):
        ResizePlan((10, 10), (28, 28), (2, 2), (1, 1)).check(picture)


def test_memory_ratio_follows_the_processors_patch_counts():
    picture = _picture(1080, 1920)
    processors = [offline_processor(max_pixels=m).image_processor for m in (1024 * 28 * 28, 256 * 28 * 28)]
    rows = [p(images=[picture], return_tensors="pt")["pixel_values"].shape[0] for p in processors]  # one per patch
    assert memory_ratio(1080, 1920, 1024 * 28 * 28, 256 * 28 * 28) == (rows[0] / rows[1]) ** 2
    assert memory_ratio(1080, 1920, 1024 * 28 * 28, 256 * 28 * 28, "pixel_values") == rows[0] / rows[1]
    with pytest.raises(ValueError, match="part='weights'"):
        memory_ratio(1080, 1920, 1024 * 28 * 28, 256 * 28 * 28, "weights")
