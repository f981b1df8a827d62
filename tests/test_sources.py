"""load(): every source, checked against the released configurations (docs/FACTS.md)."""


import pytest
import torch
from transformers import GPT2Config

import anatomy

# The released config.json values (docs/FACTS.md, "Published configurations"), typed here as the reference.
RELEASED = {
    "3B": (2048, 11008, 36, 16, 2, 151936, True, 3420, 2048),
    "7B": (3584, 18944, 28, 28, 4, 152064, False, 3420, 3584),
    "32B": (5120, 27648, 64, 40, 8, 152064, False, 3456, 5120),
    "72B": (8192, 29568, 80, 64, 8, 152064, False, 3456, 8192),
}
VISION = dict(depth=32, hidden_size=1280, num_heads=16, patch_size=14, temporal_patch_size=2,
              spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
              tokens_per_second=2, in_channels=3, hidden_act="silu")


@pytest.mark.parametrize("size", list(RELEASED))
def test_skeletons_have_the_released_configuration(size):
    spec = anatomy.load(size)
    text, vision = spec.config.text_config, spec.config.vision_config
    hidden, inter, layers, heads, kv, vocab, tied, v_inter, v_out = RELEASED[size]
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (hidden, inter, layers)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (heads, kv, vocab)
    assert spec.config.tie_word_embeddings is tied
    assert (spec.model.lm_head.weight is spec.model.get_input_embeddings().weight) is tied
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and text.rope_parameters["rope_theta"] == 1e6
    assert (text.rms_norm_eps, text.max_position_embeddings) == (1e-6, 128000)
    assert (vision.intermediate_size, vision.out_hidden_size) == (v_inter, v_out)
    assert {key: getattr(vision, key) for key in VISION} == VISION
    assert spec.kind == "skeleton" and spec.device.type == "meta" and spec.model.dtype == torch.bfloat16


def test_tiny_has_every_component_at_small_size(tiny):
    vision, text = tiny.config.vision_config, tiny.config.text_config
    assert tiny.model.model.visual.patch_embed.proj.kernel_size == (2, 14, 14)
    assert 0 < len(vision.fullatt_block_indexes) < vision.depth  # windowed and full-attention blocks
    assert text.num_key_value_heads < text.num_attention_heads  # grouped-query attention
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    assert type(tiny.model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_tiny_is_seeded():
    first, again, other = anatomy.load("tiny"), anatomy.load("tiny"), anatomy.load("tiny", seed=1)
    weight = lambda spec: spec.model.model.visual.blocks[0].attn.qkv.weight  # noqa: E731
    assert torch.equal(weight(first), weight(again)) and not torch.equal(weight(first), weight(other))


def test_a_saved_directory_loads_through_the_real_path(tiny, tmp_path, batch):
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = anatomy.load(str(tmp_path), dtype="float32")
    assert loaded.kind == "pretrained"
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch).logits, tiny.model(**batch).logits)
    assert loaded.processor.tokenizer("Hello world").input_ids == [9707, 1879]
    mapped = anatomy.load(str(tmp_path), dtype="float32", device_map="auto")  # accelerate places it (the CPU here)
    with torch.no_grad():
        assert torch.equal(mapped.model(**batch).logits, tiny.model(**batch).logits)


def test_a_hub_id_missing_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"Qwen/Qwen2.5-VL-7B-Instruct.*HF_HUB_OFFLINE=1.*hf download"):
        anatomy.load("Qwen/Qwen2.5-VL-7B-Instruct")


def test_a_model_that_is_not_qwen25vl_is_refused(tmp_path):
    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a 'gpt2' model; anatomy dissects Qwen2.5-VL"):
        anatomy.load(str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(attn_implementation="fast"), "attn_implementation='fast'"),
    (dict(dtype="float33"), "dtype='float33'"),
    (dict(device="cpu", device_map="auto"), "not both"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        anatomy.load("tiny", **kwargs)


def test_offline_processor_uses_the_released_preprocessing(tiny):
    """docs/FACTS.md, "Preprocessing": the released preprocessor_config.json values, typed here."""
    images = tiny.processor.image_processor
    assert (images.size["shortest_edge"], images.size["longest_edge"]) == (3136, 12845056)
    assert (images.patch_size, images.temporal_patch_size, images.merge_size) == (14, 2, 2)
    assert list(images.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert list(images.image_std) == [0.26862954, 0.26130258, 0.27577711]
    assert (images.resample, images.rescale_factor) == (3, 1 / 255)  # PIL bicubic, 1/255
