"""Grouped-query attention: several query heads read the same key/value head.

The 7B has 28 query heads and 4 key/value heads: query head ``h`` uses
key/value head ``h // 7`` (transformers' ``repeat_kv`` copies each key/value
head 7 times, in order). The tiny model: 4 query heads, 2 key/value heads.

>>> from anatomy.model import shipped_config
>>> kv_head_of(shipped_config("tiny"))      # query heads 0, 1 -> kv 0; 2, 3 -> kv 1
tensor([0, 0, 1, 1])
>>> kv_head_of(shipped_config("7B")).bincount().tolist()   # 28 query heads, 7 per key/value head
[7, 7, 7, 7]
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.model import text_config


def kv_head_of(config) -> torch.Tensor:
    """(query_heads,) the key/value head each query head reads."""
    text = text_config(config)
    group = text.num_attention_heads // text.num_key_value_heads
    return torch.arange(text.num_attention_heads) // group


def sharing_matrix(config) -> torch.Tensor:
    """(query_heads, kv_heads) 1 where a query head reads a key/value head."""
    kv = kv_head_of(config)
    return torch.nn.functional.one_hot(kv, int(kv.max()) + 1)


def split_heads(cache, layer: int, config) -> dict[str, torch.Tensor]:
    """Captured q/k/v projections of ``layer`` split into heads: q (H, S, d), k and v (KV, S, d).

    Needs ``decoder.layers.{layer}.self_attn.{q,k,v}_proj`` in the cache (batch of 1).
    """
    text = text_config(config)
    head_dim = text.hidden_size // text.num_attention_heads
    split = {}
    for name in ("q", "k", "v"):
        projection = cache[f"decoder.layers.{layer}.self_attn.{name}_proj"][0]  # (S, heads * d)
        split[name] = projection.view(projection.shape[0], -1, head_dim).transpose(0, 1)  # (heads, S, d)
    return split


def sharing_figure(config, split: dict[str, torch.Tensor] | None = None) -> Figure:
    """Which query head reads which key/value head; with ``split``, the captured shapes in the title."""
    matrix = sharing_matrix(config).numpy()
    figure = Figure(figsize=(3 + matrix.shape[1] * 0.6, 1.5 + matrix.shape[0] * 0.3), layout="constrained")
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues", vmin=0, vmax=1.3, aspect="auto")
    axis.set_xticks(np.arange(matrix.shape[1]))
    axis.set_yticks(np.arange(matrix.shape[0]))
    axis.set(xlabel="key/value head", ylabel="query head", title="grouped-query attention")
    if split is not None:
        axis.set_title(f"q {tuple(split['q'].shape)}, k/v {tuple(split['k'].shape)}\n(heads, tokens, head_dim)")
    return figure
