"""Vision attention probabilities against transformers' eager kernel; windows against get_vision_window_index."""

import pytest
import torch
import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as modeling
from transformers.vision_utils import get_vision_window_index

import anatomy
from anatomy import capture
from anatomy.inputs import demo_image, encode
from anatomy.vision_attention import estimate_bytes, recording, vision_attention
from anatomy.windows import block_kinds, windows


@pytest.fixture(scope="module")
def edge_batch(tiny):
    return encode(tiny, demo_image(364, 280))  # 20x26 patches: windows cut at the right and bottom


def eager_probabilities(batch, monkeypatch):
    """The probabilities transformers' own eager kernel computes in every vision block."""
    eager = anatomy.load("tiny", attn_implementation="eager")
    seen, original = [], modeling.eager_attention_forward

    def recorded(module, *args, **kwargs):
        output = original(module, *args, **kwargs)
        if isinstance(module, modeling.Qwen2_5_VLVisionAttention):
            seen.append((module, output[1][0]))  # (heads, n, n)
        return output

    monkeypatch.setattr(modeling, "eager_attention_forward", recorded)
    with torch.no_grad():
        eager.model(**batch)
    blocks = list(eager.model.model.visual.blocks)
    return {i: [w for m, w in seen if m is block.attn] for i, block in enumerate(blocks)}


def test_equal_to_eager_for_window_and_full_blocks(tiny, edge_batch, monkeypatch):
    assert tiny.config._attn_implementation == "sdpa" and block_kinds(tiny.config.vision_config)[:2] == ["window", "full"]
    reference = eager_probabilities(edge_batch, monkeypatch)
    every = vision_attention(tiny, edge_batch, blocks=[0, 1], heads=None)
    mean = vision_attention(tiny, edge_batch, blocks=[0, 1], heads="mean")
    some = vision_attention(tiny, edge_batch, blocks=1, heads=[2])
    for block in (0, 1):
        assert len(every[block].segments) == len(reference[block]) == (12 if block == 0 else 1)
        for mine, eager, averaged in zip(every[block].segments, reference[block], mean[block].segments):
            torch.testing.assert_close(mine, eager, atol=1e-5, rtol=0)
            torch.testing.assert_close(averaged[0], eager.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(some[1].segments[0][0], reference[1][0][2], atol=1e-5, rtol=0)


def test_recording_leaves_the_logits_unchanged(tiny, edge_batch):
    with torch.no_grad():
        plain = tiny.model(**edge_batch).logits
        with recording(tiny, edge_batch["image_grid_thw"], [0, 1, 2, 3], None) as maps:
            recorded = tiny.model(**edge_batch).logits
    assert torch.equal(plain, recorded) and len(maps[3].segments) == 1


def test_estimate_is_exact_for_what_is_kept_and_bounds_it(tiny, edge_batch):
    config = tiny.config.vision_config
    grid = edge_batch["image_grid_thw"]
    _, cu = get_vision_window_index(grid, 2, config.window_size, config.patch_size)
    windows_squared = int(((cu[1:] - cu[:-1]) ** 2).sum())
    patches = int(grid.prod())
    maps = vision_attention(tiny, edge_batch, blocks=[0, 1], heads="mean")
    assert maps.captured_bytes == 4 * (windows_squared + patches**2)
    assert maps.estimate_bytes == maps.captured_bytes + 2 * 4 * patches**2  # plus one head's scores and softmax
    assert estimate_bytes(grid, config, [0], 4) == 4 * 4 * windows_squared + 2 * 4 * 64**2


def test_a_budget_refuses_before_running(tiny, edge_batch):
    with pytest.raises(MemoryError, match=r"needs about .* MiB, over budget_bytes=1000"):
        vision_attention(tiny, edge_batch, blocks=1, heads=None, budget_bytes=1000)


@pytest.mark.parametrize("kwargs, message", [
    (dict(blocks=4), r"blocks=\[4\]: expected vision block indexes in 0..3"),
    (dict(blocks=0, heads=[7]), r"heads=\[7\]: expected 'mean', None \(all\) or head indexes in 0..3"),
])
def test_bad_selections_are_named(tiny, edge_batch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        vision_attention(tiny, edge_batch, **kwargs)


def test_a_prompt_without_image_is_refused(tiny):
    with pytest.raises(ValueError, match="batch has no image"):
        vision_attention(tiny, encode(tiny, None, "Hello"), blocks=0)


def test_patch_map_stays_inside_its_window(tiny, edge_batch):
    maps = vision_attention(tiny, edge_batch, blocks=[0, 1], heads="mean")
    parts = windows(edge_batch["image_grid_thw"][0], tiny.config.vision_config)
    local = maps.patch_map(0, row=19, col=25)  # bottom-right corner: the 4x2-patch window
    assert local.sum() == pytest.approx(1.0, abs=1e-5)
    assert (local[parts.window[0] != parts.window[0, 19, 25]] == 0).all()
    assert (parts.window[0] == parts.window[0, 19, 25]).sum() == 8
    assert maps.patch_map(1, row=0, col=0).min() > 0  # full attention reaches every patch
    with pytest.raises(ValueError, match=r"patch \(20, 0\) is outside the 20x26 patch grid"):
        maps.patch_map(0, 20, 0)


def test_window_partition_matches_the_models_own_order(tiny, edge_batch):
    config = tiny.config.vision_config
    parts = windows(edge_batch["image_grid_thw"][0], config)
    with torch.no_grad(), capture(tiny, "vision.blocks.0.input") as cache:
        tiny.model(**edge_batch)
    raster, model_order = cache["vision.blocks.0.input"], cache.get("vision.blocks.0.input", order="model")
    assert torch.equal(model_order[torch.as_tensor(parts.window_order.reshape(-1))], raster)
    assert parts.lengths.tolist() == [64, 64, 64, 16] * 2 + [32, 32, 32, 8]
    assert parts.boxes[3].tolist() == [336, 0, 364, 112] and parts.boxes[-1].tolist() == [336, 224, 364, 280]


def test_released_blocks_7_15_23_31_attend_over_the_whole_image():
    kinds = block_kinds(anatomy.load("7B").config.vision_config)
    assert [i for i, kind in enumerate(kinds) if kind == "full"] == [7, 15, 23, 31]
