"""What a sweep costs, from a config: FLOPs against a direct count of the model's weights, rows from the config."""

import pytest
from torch import nn

import anatomy
from anatomy.causal.cost import decoder_flops, sweep_cost, vision_flops
from anatomy.toy import untrained_toy


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("source", ["toy", "7B"])
def test_flops_count_every_linear_weight_of_the_model(source):
    spec = untrained_toy() if source == "toy" else anatomy.load("7B")
    config, model = spec.config, spec.model.model
    text = config.text_config
    layers = _linear_weights(model.language_model.layers)
    no_attention = decoder_flops(config, 1) - 4 * text.num_hidden_layers * text.hidden_size
    assert no_attention == 2 * layers + 2 * _linear_weights(spec.model.lm_head)
    vision = config.vision_config
    blocks, merger = _linear_weights(model.visual.blocks), _linear_weights(model.visual.merger)
    embed = model.visual.patch_embed.proj.weight.numel()
    patches = 4  # one merged token, a window of one patch group: attention 4 * patches^2 * width per block
    attention = 4 * patches * patches * vision.hidden_size * vision.depth
    assert vision_flops(config, patches) == 2 * patches * (blocks + embed) + 2 * merger + attention


def test_sweep_cost_counts_rows_from_the_config():
    config = anatomy.load("7B").config
    plan = sweep_cost(config, image_side=448, text_tokens=30)
    assert (plan.patches, plan.image_tokens, plan.prompt_tokens) == (1024, 256, 286)
    assert plan.vision_rows == 32 * 256 and plan.decoder_rows == 29 * 257
    assert sweep_cost(config, image_side=448, vision_sites=1, questions=3).vision_rows == 3 * 256
