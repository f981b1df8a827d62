"""Capture against transformers' own outputs and against direct computation."""

import numpy as np
import pytest
import torch

import anatomy
from anatomy import capture
from anatomy.inputs import demo_image, encode
from anatomy.processor import CLIP_MEAN, CLIP_STD


def run(specimen, batch, sites, **options):
    with torch.no_grad(), capture(specimen, sites, **options) as cache:
        output = specimen.model(**batch)
    return cache, output


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_full_capture_leaves_logits_bit_identical(tiny, batch, reference):
    cache, output = run(tiny, batch, "*")
    assert len(cache) == len(cache.sites) > 80
    assert torch.equal(output.logits, reference.logits)
    assert torch.equal(cache["logits"], reference.logits)


def test_decoder_layers_equal_output_hidden_states(tiny, batch, reference):
    cache, _ = run(tiny, batch, ["decoder.inputs_embeds", "decoder.layers.*.output", "decoder.norm"])
    layers = tiny.config.text_config.num_hidden_layers
    assert torch.equal(cache["decoder.inputs_embeds"], reference.hidden_states[0])
    for i in range(layers - 1):  # transformers 5 reports the last layer after the final norm
        assert torch.equal(cache[f"decoder.layers.{i}.output"], reference.hidden_states[i + 1])
    assert torch.equal(cache["decoder.norm"], reference.hidden_states[layers])


def test_merger_output_in_raster_order_equals_image_features(tiny, batch):
    cache, _ = run(tiny, batch, "vision.merger.output")
    with torch.no_grad():
        features = tiny.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    assert torch.equal(cache["vision.merger.output"], torch.cat(features))
    assert not torch.equal(cache.get("vision.merger.output", order="window"), torch.cat(features))


def test_pixels_in_raster_order_are_the_normalised_image_patch_by_patch(tiny):
    image = demo_image(224, 224)  # a multiple of 28: the processor does not resize it
    cache, _ = run(tiny, encode(tiny, image), "vision.pixels")
    pixels = (np.asarray(image, dtype=np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    expected = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)  # (3, H, W)
    expected = expected.reshape(3, 16, 14, 16, 14).permute(1, 3, 0, 2, 4)  # (rows, cols, 3, 14, 14)
    patches = cache["vision.pixels"].reshape(16, 16, 3, 2, 14, 14)  # (rows, cols, C, T, 14, 14)
    for frame in range(2):  # a still image is repeated along time
        torch.testing.assert_close(patches[:, :, :, frame], expected, atol=1e-5, rtol=0)


def test_position_ids_and_block_inputs_follow_the_raster(tiny, batch):
    sites = ["vision.position_ids", "vision.patch_embed", "vision.blocks.0.input"]
    cache, _ = run(tiny, batch, sites)
    _, rows, cols = batch["image_grid_thw"][0].tolist()
    grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    assert torch.equal(cache["vision.position_ids"], grid)
    assert torch.equal(cache["vision.blocks.0.input"], cache["vision.patch_embed"])
    window = cache.get("vision.patch_embed", order="window")
    assert torch.equal(window, cache.get("vision.blocks.0.input", order="model"))


def test_decoder_position_ids_are_get_rope_index(tiny, batch):
    cache, _ = run(tiny, batch, "decoder.position_ids")
    expected, _ = tiny.model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    assert torch.equal(cache["decoder.position_ids"], expected)


def test_two_images_of_different_sizes(tiny):
    messages = [{"role": "user", "content": [
        {"type": "image", "image": demo_image(224, 224)},
        {"type": "image", "image": demo_image(336, 448)},
        {"type": "text", "text": "Compare."},
    ]}]
    batch = encode(tiny, messages=messages)
    cache, _ = run(tiny, batch, ["vision.merger.output", "vision.position_ids"])
    with torch.no_grad():
        features = tiny.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    assert torch.equal(cache["vision.merger.output"], torch.cat(features))
    first = cache["vision.position_ids"][: 16 * 16]
    assert first[-1].tolist() == [15, 15]


def test_generate_captures_one_step_per_forward(tiny, batch):
    with torch.no_grad(), capture(tiny, ["vision.merger.output", "decoder.norm", "logits"]) as cache:
        generated = tiny.model.generate(**batch, max_new_tokens=3, do_sample=False)
    steps = cache.steps("decoder.norm")
    assert len(steps) == len(cache.steps("logits")) == generated.shape[1] - batch["input_ids"].shape[1]
    assert steps[0].shape[1] == batch["input_ids"].shape[1] and steps[1].shape[1] == 1
    chosen = [logits[0, -1].argmax() for logits in cache.steps("logits")]
    assert torch.equal(torch.stack(chosen), generated[0, batch["input_ids"].shape[1]:])
    assert cache["vision.merger.output"].shape[0] == (batch["input_ids"] == 151655).sum()
    with pytest.raises(ValueError, match="cache.steps"):
        cache["logits"]


def test_references_hold_the_values_copies_would(tiny, batch):
    """Qwen2.5-VL modifies no activation in place: a kept reference equals a copy taken at the hook."""
    with torch.no_grad():
        with capture(tiny, "*") as kept:
            output = tiny.model(**batch)
        with capture(tiny, "*", copy=True) as copied:
            tiny.model(**batch)
    assert kept["logits"].data_ptr() == output.logits.data_ptr()  # a reference, no copy
    assert copied["logits"].data_ptr() != output.logits.data_ptr()
    for name in copied:
        assert torch.equal(kept.get(name, order="model"), copied.get(name, order="model")), name


def test_copies_are_detached_and_cast(tiny, batch):
    cache, _ = run(tiny, batch, "decoder.layers.0.mlp", dtype=torch.float16, device=None)
    tensor = cache["decoder.layers.0.mlp"]
    assert tensor.dtype == torch.float16 and not tensor.requires_grad


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_hooks_are_removed_on_every_exit(tiny, batch, error):
    before = hook_count(tiny.model)  # transformers keeps hooks of its own
    with pytest.raises(type(error)):
        with capture(tiny, "*"):
            assert hook_count(tiny.model) > before
            raise error
    assert hook_count(tiny.model) == before


def test_refuses_a_model_that_is_not_qwen25vl():
    with pytest.raises(TypeError, match="expected a Qwen2.5-VL model.*Linear"):
        with capture(torch.nn.Linear(2, 2), "*"):
            pass


def test_run_is_the_with_capture_form_in_one_call(tiny, batch):
    cache, _ = run(tiny, batch, ["vision.patch_embed", "decoder.layers.1.output"])
    before = hook_count(tiny.model)
    one_call = anatomy.run(tiny, batch, ["vision.patch_embed", "decoder.layers.1.output"])
    assert list(one_call) == list(cache) and hook_count(tiny.model) == before
    for name in cache:
        assert torch.equal(one_call[name], cache[name])
