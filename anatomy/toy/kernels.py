"""Two exact shortcuts that make the toy train faster on a CPU; used only while training.

- ``windows_as_batch``: transformers' sdpa path of the vision attention calls
  the kernel once per window (320 small calls a step for 32 toy pictures). When
  all windows hold the same number of patches, as they do for the toy's
  112x112 pictures, one batched call computes the same thing.
- ``conv_as_matmul``: the patch embedding is a ``Conv3d`` whose kernel equals
  its stride, i.e. a matrix product of each flattened patch with the
  flattened kernel, which the CPU does several times faster.

Both are swapped in on the model's modules for the duration of a ``with``
block and removed on exit; the weights stay those of the stock modules, so the
trained model is saved and loaded as a plain ``Qwen2_5_VLForConditionalGeneration``.
``tests/test_toy.py`` checks values and gradients against the stock modules.

>>> with fast_training(model):          # doctest: +SKIP
...     loss = model(**batch).loss
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision


@contextmanager
def fast_training(model):
    """Swap in ``windows_as_batch`` and ``conv_as_matmul`` on ``model``'s vision tower; restore on exit."""
    visual = model.model.visual
    swapped = [(block.attn, windows_as_batch) for block in visual.blocks] + [(visual.patch_embed, conv_as_matmul)]
    for module, forward in swapped:
        module.forward = types.MethodType(forward, module)
    try:
        yield model
    finally:
        for module, _ in swapped:
            del module.forward  # back to the class's own forward


def windows_as_batch(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings=None, **kwargs):
    """``Qwen2_5_VLVisionAttention.forward`` with equal windows batched; unequal ones go the stock way."""
    lengths = cu_seqlens.diff()
    if (lengths != lengths[0]).any():
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs)
    patches = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(patches, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    query, key = apply_rotary_pos_emb_vision(query, key, *position_embeddings)
    window = int(lengths[0])
    query, key, value = (
        t.reshape(patches // window, window, self.num_heads, -1).transpose(1, 2) for t in (query, key, value)
    )
    out = F.scaled_dot_product_attention(query, key, value, scale=self.scaling)  # (windows, heads, window, head_dim)
    return self.proj(out.transpose(1, 2).reshape(patches, -1))


def conv_as_matmul(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """``Qwen2_5_VisionPatchEmbed.forward`` as ``patches @ kernel.T``: the same numbers, one ``mm``."""
    kernel = self.proj.weight.view(self.embed_dim, -1)  # (embed_dim, 3 * 2 * 14 * 14)
    return hidden_states.to(kernel.dtype).view(-1, kernel.shape[1]) @ kernel.T
