"""Which attention kernel runs, and exact faster kernels for the vision tower on a CPU.

- ``eager``: switch a model to eager attention (the one kernel that can return its weights) for a
  ``with`` block, then give it and each sub-model back its own kernel.
- ``fast_vision``: swap two exact shortcuts into the vision tower for a ``with`` block:
  ``windows_as_batch``: transformers' sdpa path of the vision attention calls the kernel once per
  window (260 small calls for 26 toy pictures); when all windows hold the same number of patches,
  one batched call computes the same thing. ``conv_as_matmul``: the patch embedding is a ``Conv3d``
  whose kernel equals its stride, i.e. a matrix product of each flattened patch with the flattened
  kernel, which the CPU does several times faster.

The weights stay those of the stock modules, and on exit every module has its class's own forward
again; ``tests/test_kernels.py`` checks values and gradients against the stock path.

>>> with fast_vision(specimen.model):          # doctest: +SKIP
...     logits = specimen.model(**batch).logits
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

from anatomy.model import vision_tower


@contextmanager
def eager(model):
    """Switch ``model`` to eager attention (which can return its weights); on exit, give the model and each
    of its sub-models (vision, text) back its own kernel, e.g. vision eager + text sdpa."""
    before = {"": model.config._attn_implementation}
    before |= {key: getattr(model.config, key)._attn_implementation for key in model.config.sub_configs}
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


@contextmanager
def fast_vision(model):
    """Swap in ``windows_as_batch`` and ``conv_as_matmul`` on ``model``'s vision tower; restore on exit.

    Re-entrant: a module already swapped (by an enclosing block) is left to the block that swapped it.
    """
    visual = vision_tower(model)
    wanted = [(block.attn, windows_as_batch) for block in visual.blocks] + [(visual.patch_embed, conv_as_matmul)]
    swapped = [(module, forward) for module, forward in wanted if "forward" not in vars(module)]
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
