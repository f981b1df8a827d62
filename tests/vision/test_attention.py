"""Vision attention probabilities against transformers' eager kernel; windows against get_vision_window_index."""

import pytest
import torch
import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as modeling
from transformers.vision_utils import get_vision_window_index

import anatomy
from anatomy.capture.budget import AttentionBudgetExceeded
from anatomy.inputs import demo_image, encode
from anatomy.model import block_kinds
from anatomy.vision.attention import (
    estimate_bytes,
    patch_attention_figure,
    patch_picker_figure,
    record_attention,
    vision_attention,
)
from anatomy.vision.windows import windows


@pytest.fixture(scope="module")
def edge_batch(tiny):
    return encode(tiny, demo_image(280, 364))  # 20x26 patches: windows cut at the right and bottom


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
    assert tiny.config._attn_implementation == "sdpa"
    assert block_kinds(tiny.config.vision_config)[:2] == ["window", "full"]
    reference = eager_probabilities(edge_batch, monkeypatch)
    every = vision_attention(tiny, edge_batch, blocks=[0, 1], heads=None, reduce="none")
    mean = vision_attention(tiny, edge_batch, blocks=[0, 1], reduce="mean")
    some = vision_attention(tiny, edge_batch, blocks=1, heads=[2], reduce="none")
    two = vision_attention(tiny, edge_batch, blocks=1, heads=[1, 2], reduce="mean")
    for block in (0, 1):
        assert len(every[block].segments) == len(reference[block]) == (12 if block == 0 else 1)
        for mine, eager, averaged in zip(every[block].segments, reference[block], mean[block].segments):
            torch.testing.assert_close(mine, eager, atol=1e-5, rtol=0)
            torch.testing.assert_close(averaged[0], eager.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(some[1].segments[0][0], reference[1][0][2], atol=1e-5, rtol=0)
    torch.testing.assert_close(two[1].segments[0][0], reference[1][0][1:3].mean(0), atol=1e-5, rtol=0)


def test_recording_leaves_the_logits_unchanged(tiny, edge_batch):
    with torch.no_grad():
        plain = tiny.model(**edge_batch).logits
        with record_attention(tiny, edge_batch, [0, 1, 2, 3], reduce="none") as maps:
            recorded = tiny.model(**edge_batch).logits
    assert torch.equal(plain, recorded) and len(maps[3].segments) == 1


def test_estimate_is_exact_for_what_is_kept_and_bounds_it(tiny, edge_batch):
    config = tiny.config.vision_config
    grid = edge_batch["image_grid_thw"]
    _, cu = get_vision_window_index(grid, 2, config.window_size, config.patch_size)
    windows_squared = int(((cu[1:] - cu[:-1]) ** 2).sum())
    patches = int(grid.prod())
    maps = vision_attention(tiny, edge_batch, blocks=[0, 1], reduce="mean")
    assert maps.captured_bytes == 4 * (windows_squared + patches**2)
    assert maps.estimate_bytes == maps.captured_bytes + 2 * 4 * patches**2  # plus one head's scores and softmax
    assert estimate_bytes(grid, config, [0], 4) == 4 * 4 * windows_squared + 2 * 4 * 64**2


def test_a_budget_refuses_before_running(tiny, edge_batch):
    with pytest.raises(AttentionBudgetExceeded, match=r"about [\d,]+ bytes .*, above budget_bytes=1,000"):
        with record_attention(tiny, edge_batch, blocks=1, reduce="none", budget_bytes=1000):
            raise AssertionError("the block must not be entered")


@pytest.mark.parametrize("kwargs, message", [
    (dict(blocks=4), r"block \[4\] out of range; expected blocks in 0..3"),
    (dict(blocks=0, heads=[7]), r"head \[7\] out of range; expected heads in 0..3"),
    (dict(blocks=0, reduce="max"), r"reduce='max'; expected one of \('none', 'mean'\)"),
])
def test_bad_selections_are_named(tiny, edge_batch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        vision_attention(tiny, edge_batch, **kwargs)


def test_a_prompt_without_image_is_refused(tiny):
    with pytest.raises(ValueError, match="the prompt has no image"):
        vision_attention(tiny, encode(tiny, None, "Hello"), blocks=0)


def test_patch_map_stays_inside_its_window(tiny, edge_batch):
    maps = vision_attention(tiny, edge_batch, blocks=[0, 1], reduce="mean")
    parts = windows(edge_batch["image_grid_thw"][0], tiny.config.vision_config)
    local = maps.patch_map(0, row=19, col=25)  # bottom-right corner: the 4x2-patch window
    assert local.sum() == pytest.approx(1.0, abs=1e-5)
    assert (local[parts.window[0] != parts.window[0, 19, 25]] == 0).all()
    assert (parts.window[0] == parts.window[0, 19, 25]).sum() == 8
    assert maps.patch_map(1, row=0, col=0).min() > 0  # full attention reaches every patch
    with pytest.raises(ValueError, match=r"patch \(20, 0\) is outside the 20x26 patch grid"):
        maps.patch_map(0, 20, 0)


@pytest.mark.parametrize("reduce, name", [("mean", "head mean"), ("none", "head 2")])
def test_figure_titles_name_the_map_drawn(tiny, edge_batch, reduce, name):
    maps = vision_attention(tiny, edge_batch, blocks=[0, 1], heads=[2, 3], reduce=reduce)
    picker = patch_picker_figure(maps, edge_batch, 0, 1, row=3, col=4)
    titles = [axis.get_title() for axis in picker.axes[1:3]]
    assert titles == [f"block {b} ({maps[b].kind} attention, {name})" for b in (0, 1)]
    assert f", {name}: patch (3, 4)" in patch_attention_figure(maps, edge_batch, 0, 3, 4).axes[0].get_title()
