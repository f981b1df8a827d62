"""Site names: module paths from print(model), wildcards, and unknown names with the closest valid ones."""

import pytest
import torch

from anatomy import capture, run
from anatomy.capture.sites import resolve, site_table


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_every_short_name_points_at_a_module_print_model_shows(tiny):
    modules = dict(tiny.model.named_modules())
    table = site_table(tiny.model)
    assert all(site.module in modules for site in table.values())
    depth, layers = tiny.config.vision_config.depth, tiny.config.text_config.num_hidden_layers
    assert sum(name.endswith(".output") and name.startswith("vision.blocks") for name in table) == depth
    assert sum(name.endswith(".output") and name.startswith("decoder.layers") for name in table) == layers
    assert [s.name for s in resolve(tiny.model, ["logits", "vision.patch_embed"])] == ["vision.patch_embed", "logits"]


def test_module_paths_from_print_model_work(tiny, batch):
    path = "model.visual.blocks.1.attn.qkv"
    assert f"({path.rsplit('.', 1)[1]}): Linear" in str(tiny.model)
    cache = run(tiny, batch, [path, "vision.blocks.1.attn.qkv"])
    assert torch.equal(cache[path], cache["vision.blocks.1.attn.qkv"])


def test_wildcards_select_families(tiny, batch):
    cache = run(tiny, batch, "vision.blocks.*.output")
    assert list(cache) == [f"vision.blocks.{i}.output" for i in range(tiny.config.vision_config.depth)]


def test_unknown_site_names_the_closest(tiny):
    before = hook_count(tiny.model)
    with pytest.raises(ValueError, match="closest valid names.*decoder.layers.0.output"):
        with capture(tiny, "decoder.layers.0.ouptut"):
            pass
    with pytest.raises(ValueError, match="index 99 is out of range; this model has 4 layers"):
        with capture(tiny, "decoder.layers.99.output"):
            pass
    assert hook_count(tiny.model) == before
