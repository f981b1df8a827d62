"""Grouped-query attention against transformers' own repeat_kv."""

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import repeat_kv

from anatomy import capture
from anatomy.decoder.gqa import kv_head_of, sharing_figure, sharing_matrix, split_heads


def test_query_heads_read_the_kv_head_repeat_kv_gives_them(tiny, batch):
    with torch.no_grad(), capture(tiny, "decoder.layers.0.self_attn.*_proj") as cache:
        tiny.model(**batch)
    split = split_heads(cache, 0, tiny.config)
    assert split["q"].shape[0] == 4 and split["k"].shape[0] == 2
    repeated = repeat_kv(split["k"][None], 2)[0]  # (query heads, S, d), transformers' own expansion
    for head, kv in enumerate(kv_head_of(tiny.config).tolist()):
        assert torch.equal(repeated[head], split["k"][kv])
    assert sharing_matrix(tiny.config).sum(0).tolist() == [2, 2]


def test_sharing_figure_draws_the_sharing_matrix(tiny):
    axis = sharing_figure(tiny.config).axes[0]
    assert (axis.images[0].get_array() == sharing_matrix(tiny.config).numpy()).all()
