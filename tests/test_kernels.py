"""The kernels, against the stock modules: values and gradients equal, every module's own forward and attention
kernel back on exit."""

import numpy as np
import pytest
import torch

from anatomy.kernels import eager, fast_vision
from anatomy.processor import offline_processor
from anatomy.toy import Recipe, toy_config, untrained_toy
from anatomy.toy.training import _batch, initial_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processor():
    return offline_processor()


def test_fast_vision_computes_what_the_stock_modules_compute(processor):
    """Vision tower output and every gradient, with and without the shortcuts; the stock forwards come back."""
    model = initial_model(toy_config(), 0).train()
    batch = _batch(Recipe(scenes=3), 0, processor)
    visual = model.model.visual

    def run():
        visual.zero_grad()
        out = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in visual.parameters()]

    stock = run()
    with fast_vision(model):
        assert "forward" in vars(visual.patch_embed) and "forward" in vars(visual.blocks[0].attn)
        fast = run()
    assert torch.allclose(fast[0], stock[0], rtol=1e-5, atol=1e-5)
    for ours, reference in zip(fast[1], stock[1]):
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6 * reference.abs().max())
    assert "forward" not in vars(visual.patch_embed) and not any("forward" in vars(b.attn) for b in visual.blocks)


def test_fast_vision_leaves_unequal_windows_to_the_stock_loop(processor):
    """A 140x112 picture has windows of 16 and 8 patches: the shortcut must not batch them."""
    model = initial_model(toy_config(), 0).eval()
    pixels = processor.image_processor(images=[np.zeros((112, 140, 3), np.uint8)], return_tensors="pt")
    with torch.no_grad():
        stock = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
        with fast_vision(model):
            fast = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
    assert torch.allclose(fast, stock, atol=1e-5)


def test_fast_vision_nests_and_the_outer_block_restores():
    """An experiment inside another (a sweep's helper inside the sweep) keeps the shortcuts until the outer exit."""
    model = initial_model(toy_config(), 0)
    visual = model.model.visual
    modules = [visual.patch_embed, *(block.attn for block in visual.blocks)]
    with fast_vision(model):
        with fast_vision(model):
            pass
        assert all("forward" in vars(module) for module in modules)  # the inner exit left them swapped
    assert not any("forward" in vars(module) for module in modules)  # the outer exit restored the stock forwards


def test_eager_gives_each_sub_model_its_own_kernel_back():
    model = untrained_toy().model
    model.set_attn_implementation({"vision_config": "eager", "text_config": "sdpa"})
    with eager(model):
        assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "sdpa"
