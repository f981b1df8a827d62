"""The layout of a toy batch, computed once: what makes training fast besides ``anatomy.kernels.fast_vision``.

- ``Layouts``: the forward derives, from the layout of a batch alone, the
  decoder's 3-D rotary positions (``get_rope_index``, a Python loop over rows
  and token groups) and the vision tower's windows and patch positions. Toy
  batches repeat a few layouts, so these are computed once per layout, by the
  same functions, and passed in as the precomputed inputs transformers accepts.

``tests/toy/test_training.py`` checks values and gradients against the stock path.

>>> layouts = Layouts(model)            # doctest: +SKIP
>>> with fast_vision(model):            # doctest: +SKIP
...     hidden = layouts.model(**batch, **layouts(batch)).last_hidden_state
"""

from __future__ import annotations

import torch
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from anatomy.model import multimodal, vision_tower


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
