"""Selections -> boolean masks over a site's tensor, in the order the model computes it.

A decoder site is ``(B, L, ...)``: its mask is ``(B, L)``. A vision site is ``(N, ...)`` over the
patches (or merged tokens) of every image of the batch, in window or processor order: its mask is
``(N,)``, built in raster order (row by row over each image) and permuted with ``anatomy.capture.orders``.

Image cells are (row, col) of the merged grid: image k with ``image_grid_thw[k] = (1, h, w)`` has
``h/2 x w/2`` cells, its decoder tokens in raster order, cell (r, c) covering patches
(2r..2r+1, 2c..2c+1). The toy's 112-px picture: 8x8 patches, 4x4 cells.
"""

from __future__ import annotations

import torch

from anatomy.capture.cache import to_raster
from anatomy.capture.sites import MERGED_WINDOW, Site
from anatomy.causal.edits import Cell, Layout


def image_tokens(layout: Layout, config) -> list[torch.Tensor]:
    """Flat indices into ``(B * L)`` of each image's decoder tokens, raster order: one tensor per image."""
    flat = (layout.input_ids == config.image_token_id).reshape(-1).nonzero().squeeze(1)
    grids = [] if layout.image_grid_thw is None else layout.image_grid_thw.tolist()
    sizes = [t * h * w // config.vision_config.spatial_merge_size**2 for t, h, w in grids]
    if sum(sizes) != len(flat):
        raise ValueError(f"the prompt has {len(flat)} image tokens but image_grid_thw {grids} makes {sum(sizes)}")
    return list(torch.split(flat, sizes))


def _grid(layout: Layout, k: int, merge: int) -> tuple[int, int, int]:
    t, h, w = layout.image_grid_thw[k].tolist()
    return t, h // merge, w // merge


def _check_cells(cells: tuple[Cell, ...], rows: int, cols: int, what: str, k: int) -> None:
    bad = [c for c in cells if not (0 <= c[0] < rows and 0 <= c[1] < cols)]
    if bad:
        raise ValueError(
            f"{what} {bad[0]} is outside image {k}'s {rows}x{cols} grid (rows 0-{rows - 1}, cols 0-{cols - 1})"
        )


def _cell_index(cells: tuple[Cell, ...], t: int, rows: int, cols: int) -> torch.Tensor:
    """Raster indices of ``cells`` in a ``(t, rows, cols)`` grid, every frame."""
    one = torch.tensor([r * cols + c for r, c in cells], dtype=torch.long)
    return (torch.arange(t)[:, None] * rows * cols + one).reshape(-1)


def decoder_mask(layout: Layout, config, cells=None, positions=None, rows=None) -> torch.Tensor:
    """``(B, L)``: the chosen ``positions`` and image ``cells`` (all tokens when neither), of ``rows``."""
    batch, length = layout.input_ids.shape
    merge = config.vision_config.spatial_merge_size
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if positions is not None:
        bad = [p for p in positions if not -length <= p < length]
        if bad:
            raise ValueError(f"position {bad[0]} is outside the prompt of {length} tokens (-{length} to {length - 1})")
        mask[:, list(positions)] = True
    if cells is not None:
        flat, tokens = mask.view(-1), image_tokens(layout, config)
        grids = [_grid(layout, k, merge) for k in range(len(tokens))]
        for k, (t, h, w) in enumerate(grids):
            if (t, h, w) not in grids[:k]:
                _check_cells(cells, h, w, "cell", k)
        if len(set(grids)) == 1:  # one grid: every image's tokens side by side, (images, tokens per image)
            flat[torch.stack(tokens)[:, _cell_index(cells, *grids[0])].reshape(-1)] = True
        else:
            for k, (t, h, w) in enumerate(grids):
                flat[tokens[k][_cell_index(cells, t, h, w)]] = True
    if positions is None and cells is None:
        mask[:] = True
    return mask & _rows(rows, batch)[:, None]


def _rows(rows, batch: int) -> torch.Tensor:
    """``(batch,)``: True for the chosen ``rows`` (all when None)."""
    chosen = torch.ones(batch, dtype=torch.bool)
    if rows is not None:
        bad = [r for r in rows if not 0 <= r < batch]
        if bad:
            raise ValueError(f"row {bad[0]} is outside the batch of {batch} rows or images (0-{batch - 1})")
        chosen[:] = False
        chosen[list(rows)] = True
    return chosen


def vision_mask(site: Site, grid_thw: torch.Tensor, config, cells=None, patches=None, images=None) -> torch.Tensor:
    """``(N,)`` in ``site``'s model order: the chosen cells or patches of the chosen ``images`` (all by default)."""
    vision = config.vision_config
    merge = vision.spatial_merge_size
    merged = site.order == MERGED_WINDOW
    if patches is not None and merged:
        raise ValueError(f"patches= selects patches; site {site.name!r} holds merged tokens: use cells=")
    chosen = _rows(images, len(grid_thw))
    unit = 1 if merged else merge  # patches per cell side at this site
    parts: dict[tuple[int, int, int], torch.Tensor] = {}  # one mask per distinct grid
    for k, (t, h, w) in enumerate(grid_thw.tolist()):
        if (t, h, w) in parts:
            continue
        h, w = (h // merge, w // merge) if merged else (h, w)
        part = torch.zeros(t * h * w, dtype=torch.bool)
        if cells is not None:
            _check_cells(cells, h // unit, w // unit, "cell", k)
            part[_cell_index(_spread(cells, unit), t, h, w)] = True
        if patches is not None:
            _check_cells(patches, h, w, "patch", k)
            part[_cell_index(patches, t, h, w)] = True
        if cells is None and patches is None:
            part[:] = True
        parts[tuple(grid_thw[k].tolist())] = part
    per_image = [parts[tuple(g)] for g in grid_thw.tolist()]
    raster = torch.cat(per_image) & torch.repeat_interleave(chosen, torch.tensor([len(p) for p in per_image]))
    return _to_model_order(raster, site, grid_thw, vision)


def _spread(cells: tuple[Cell, ...], merge: int) -> tuple[Cell, ...]:
    """Cells of the merged grid -> the ``merge x merge`` patches each covers."""
    return tuple((r * merge + i, c * merge + j) for r, c in cells for i in range(merge) for j in range(merge))


def _to_model_order(raster: torch.Tensor, site: Site, grid_thw: torch.Tensor, vision) -> torch.Tensor:
    """A raster-order mask -> the order ``site`` is computed in (``raster = model[perm]``)."""
    key = (site.order, grid_thw.numpy().tobytes(), vision.spatial_merge_size, vision.window_size, vision.patch_size)
    if key not in _INVERSE:
        if len(_INVERSE) > 64:
            _INVERSE.clear()
        _INVERSE[key] = torch.argsort(to_raster(site.order, grid_thw, vision))  # model[j] = raster[inverse[j]]
    return raster[_INVERSE[key]]


_INVERSE: dict[tuple, torch.Tensor] = {}  # inverse permutations by (order, grids, geometry): a sweep asks many times
