"""Exact shortcuts that make the toy train faster on a CPU; used only while training.

- ``windows_as_batch``: transformers' sdpa path of the vision attention calls
  the kernel once per window (260 small calls a step for 26 toy pictures). When
  all windows hold the same number of patches, as they do for the toy's
  112x112 pictures, one batched call computes the same thing.
- ``conv_as_matmul``: the patch embedding is a ``Conv3d`` whose kernel equals
  its stride, i.e. a matrix product of each flattened patch with the
  flattened kernel, which the CPU does several times faster.

Both are swapped in on the model's modules for the duration of a ``with``
block and removed on exit; the weights stay those of the stock modules, so the
trained model is saved and loaded as a plain ``Qwen2_5_VLForConditionalGeneration``.

- ``Layouts``: the forward derives, from the layout of a batch alone, the
  decoder's 3-D rotary positions (``get_rope_index``, a Python loop over rows
  and token groups) and the vision tower's windows and patch positions. Toy
  batches repeat a few layouts, so these are computed once per layout, by the
  same functions, and passed in as the precomputed inputs transformers accepts.

``tests/toy/test_training.py`` checks values and gradients against the stock path.

>>> layouts = Layouts(model)            # doctest: +SKIP
>>> with fast_training(model):          # doctest: +SKIP
...     hidden = layouts.model(**batch, **layouts(batch)).last_hidden_state
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from anatomy.model import multimodal, vision_tower


@contextmanager
def fast_training(model):
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


class Layouts:
    """``layouts(batch)``: the keyword arguments that spare ``layouts.model(**batch)`` (the ``Qwen2_5_VLModel``)
    recomputing its layout.

    ``position_ids`` ``(3, B, L)``: the decoder's rotary positions, 0 on padding, from
    ``get_rope_index`` of each unpadded row, cached by the row's token types and picture grid;
    ``image_*``: the vision tower's patch positions, attention and window boundaries, cached by
    the batch's ``image_grid_thw``; ``use_cache=False``: no key/value cache while training.
    Batches must hold one picture per row, as the toy's do.
    """

    def __init__(self, model):
        self.model = multimodal(model)
        self.rows: dict[tuple, torch.Tensor] = {}
        self.vision: dict[tuple, dict[str, torch.Tensor]] = {}

    def __call__(self, batch: dict) -> dict:
        kinds, grid = batch["mm_token_type_ids"], batch["image_grid_thw"]
        if grid.shape[0] != kinds.shape[0]:
            raise ValueError(f"{grid.shape[0]} pictures for {kinds.shape[0]} rows; expected one picture per row")
        keep = batch["attention_mask"].bool()
        position_ids = torch.zeros(3, *kinds.shape, dtype=torch.long)
        for i, (row, thw) in enumerate(zip(kinds, grid)):
            position_ids[:, i, keep[i]] = self._row(row[keep[i]], thw)
        return {"position_ids": position_ids, **self._vision(grid), "use_cache": False}

    def _row(self, kinds: torch.Tensor, thw: torch.Tensor) -> torch.Tensor:
        key = (tuple(kinds.tolist()), tuple(thw.tolist()))
        if key not in self.rows:
            ids = torch.zeros(1, len(kinds), dtype=torch.long)  # get_rope_index reads only the shape of input_ids
            self.rows[key] = self.model.get_rope_index(ids, kinds[None], image_grid_thw=thw[None])[0][:, 0]
        return self.rows[key]

    def _vision(self, grid: torch.Tensor) -> dict[str, torch.Tensor]:
        key = tuple(map(tuple, grid.tolist()))
        if key not in self.vision:
            visual = vision_tower(self.model)
            window_index, cu_window_seqlens = get_vision_window_index(
                grid, visual.spatial_merge_size, visual.window_size, visual.patch_size
            )
            self.vision[key] = {
                "image_position_ids": get_vision_position_ids(grid, visual.spatial_merge_size),
                "image_cu_seqlens": get_vision_cu_seqlens(grid),
                "image_window_index": window_index,
                "image_cu_window_seqlens": cu_window_seqlens,
            }
        return self.vision[key]
