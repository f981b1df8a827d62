"""The vision tower's attention probabilities, while the model keeps its own kernel.

sdpa and flash attention never materialise ``softmax(q k^T / sqrt(d))``, and
transformers' ``output_attentions`` on the vision tower returns attention
*outputs*. Here a hook on each chosen block's ``attn`` recomputes the
probabilities from the module's own inputs (its normed hidden states, the
rotary cos/sin and the ``cu_seqlens`` that delimit windows), one head at a
time, keeping only the heads and reduction asked for. The model itself runs
unchanged on its configured kernel.

>>> maps = vision_attention(spec, batch, blocks=[0], heads="mean")
>>> maps.estimate_bytes                     # known before the run
>>> maps[0].segments[3].shape               # window 3 of block 0: (1, 64, 64) for 8x8 patches
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index

from anatomy.activations import bare_model
from anatomy.sites import find_module
from anatomy.windows import PATCH, block_kinds, resized, windows

FLOAT_BYTES = 4


@dataclass
class BlockAttention:
    """Attention probabilities of one vision block, one matrix per attention segment.

    Attributes:
        block: block index. kind: ``"window"`` or ``"full"``.
        heads: the heads kept (``"mean"``: one averaged map).
        segments: per window (or per frame, for full blocks), a float32 tensor
            ``(heads kept, n, n)``; rows are queries, columns keys, in the order
            the block computes (window order).
        starts: first window-order position of every segment.
    """

    block: int
    kind: str
    heads: list[int] | str
    segments: list[torch.Tensor] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)


@dataclass
class VisionAttention:
    """What ``vision_attention`` captured, by block index."""

    blocks: dict[int, BlockAttention]
    grid_thw: torch.Tensor
    vision_config: object
    estimate_bytes: int

    def __getitem__(self, block: int) -> BlockAttention:
        if block not in self.blocks:
            raise KeyError(f"block {block} was not captured; captured blocks: {sorted(self.blocks)}")
        return self.blocks[block]

    @property
    def captured_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for b in self.blocks.values() for s in b.segments)

    def patch_map(self, block: int, row: int, col: int, head: int = 0, image: int = 0) -> np.ndarray:
        """Where the patch at (row, col) of ``image`` looks: probabilities over its frame's patches, (rows, cols)."""
        parts = windows(self.grid_thw[image], self.vision_config)
        rows, cols = parts.window.shape[1:]
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"patch ({row}, {col}) is outside the {rows}x{cols} patch grid")
        offset = int(self.grid_thw[:image].prod(-1).sum())
        position = offset + int(parts.window_order[0, row, col])
        attention = self[block]
        segment = max(i for i, start in enumerate(attention.starts) if start <= position)
        probabilities = attention.segments[segment][head, position - attention.starts[segment]]
        order = torch.as_tensor(parts.window_order[0]).reshape(-1) + offset  # window position of each patch
        inside = (order >= attention.starts[segment]) & (order < attention.starts[segment] + len(probabilities))
        result = torch.zeros(rows * cols)
        result[inside] = probabilities[order[inside] - attention.starts[segment]]
        return result.reshape(rows, cols).numpy()


def segment_lengths(grid_thw: torch.Tensor, vision_config, kind: str) -> list[int]:
    """Patches per attention segment: windows for ``"window"`` blocks, frames for ``"full"`` ones."""
    if kind == "full":
        cu = get_vision_cu_seqlens(grid_thw)
    else:
        _, cu = get_vision_window_index(grid_thw.cpu(), vision_config.spatial_merge_size,
                                        vision_config.window_size, vision_config.patch_size)
    return (cu[1:] - cu[:-1]).tolist()


def estimate_bytes(grid_thw: torch.Tensor, vision_config, blocks: list[int], kept_heads: int) -> int:
    """Peak extra bytes: every kept map, plus the scores and probabilities of the largest segment for one head."""
    kinds = block_kinds(vision_config)
    total, transient = 0, 0
    for block in blocks:
        lengths = segment_lengths(grid_thw, vision_config, kinds[block])
        total += sum(n * n for n in lengths) * kept_heads * FLOAT_BYTES
        transient = max(transient, 2 * max(lengths) ** 2 * FLOAT_BYTES)
    return total + transient


def _checked_selection(vision_config, blocks, heads) -> tuple[list[int], list[int] | str]:
    depth, count = vision_config.depth, vision_config.num_heads
    blocks = [blocks] if isinstance(blocks, int) else list(blocks)
    bad = [b for b in blocks if not isinstance(b, int) or not 0 <= b < depth]
    if not blocks or bad:
        raise ValueError(f"blocks={blocks!r}: expected vision block indexes in 0..{depth - 1}")
    if heads == "mean" or heads is None:
        return blocks, "mean" if heads == "mean" else list(range(count))
    heads = [heads] if isinstance(heads, int) else list(heads)
    if not heads or any(not isinstance(h, int) or not 0 <= h < count for h in heads):
        raise ValueError(f"heads={heads!r}: expected 'mean', None (all) or head indexes in 0..{count - 1}")
    return blocks, heads


def vision_attention(model, batch, blocks, heads="mean", budget_bytes: int | None = None) -> VisionAttention:
    """Run ``model`` on ``batch`` and return the chosen blocks' attention probabilities.

    Args:
        model: a Specimen or a bare Qwen2.5-VL model, on any attention kernel.
        batch: the model's keyword arguments (``encode(...)``), with ``pixel_values``
            and ``image_grid_thw``.
        blocks: a vision block index or a list of them.
        heads: ``"mean"`` (one head-averaged map), ``None`` (every head) or head indexes.
        budget_bytes: refuse to run when ``estimate_bytes`` exceeds it.
    """
    model = bare_model(model)
    if "image_grid_thw" not in batch or "pixel_values" not in batch:
        raise ValueError("batch has no image (pixel_values and image_grid_thw); encode a prompt with an image")
    with torch.no_grad(), recording(model, batch["image_grid_thw"], blocks, heads, budget_bytes) as maps:
        model(**batch)
    return maps


@contextlib.contextmanager
def recording(model, grid_thw: torch.Tensor, blocks, heads="mean", budget_bytes: int | None = None):
    """Hook the chosen blocks for any forward pass on images of ``grid_thw``; yield the maps they fill.

    The memory estimate is checked against ``budget_bytes`` before any hook is set.
    """
    model = bare_model(model)
    vision_config = model.config.vision_config
    blocks, heads = _checked_selection(vision_config, blocks, heads)
    grid = grid_thw.cpu()
    estimate = estimate_bytes(grid, vision_config, blocks, 1 if heads == "mean" else len(heads))
    if budget_bytes is not None and estimate > budget_bytes:
        raise MemoryError(f"capturing blocks {blocks} with heads={heads!r} needs about {estimate / 2**20:.1f} MiB, "
                          f"over budget_bytes={budget_bytes} ({budget_bytes / 2**20:.1f} MiB); ask for fewer blocks or heads='mean'")
    kinds = block_kinds(vision_config)
    maps = VisionAttention({b: BlockAttention(b, kinds[b], heads) for b in blocks}, grid, vision_config, estimate)
    vision = model.get_submodule(find_module(model, "patch_embed", "merger", "blocks"))
    handles = []
    try:
        for index, attention in maps.blocks.items():
            module = vision.blocks[index].attn
            handles.append(module.register_forward_pre_hook(_recorder(module, attention), with_kwargs=True))
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _recorder(module, attention: BlockAttention):
    def record(_, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # (patches, dim), window order
        cu_seqlens = kwargs["cu_seqlens"].tolist()
        query, key = _rotated_query_key(module, hidden, kwargs["position_embeddings"])  # (patches, heads, hd)
        for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
            attention.segments.append(_segment(module, query[start:end], key[start:end], attention.heads))
            attention.starts.append(start)

    return record


def _rotated_query_key(module, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's own q and k after the 2D rotary embedding, each (patches, heads, head_dim)."""
    patches = hidden.shape[0]
    qkv = module.qkv(hidden).reshape(patches, 3, module.num_heads, -1).permute(1, 0, 2, 3)
    cos, sin = position_embeddings
    return apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)


def _segment(module, query: torch.Tensor, key: torch.Tensor, heads) -> torch.Tensor:
    """softmax(q k^T * scale) for one segment, head by head: (kept heads, n, n) float32."""
    chosen = range(module.num_heads) if heads == "mean" else heads
    kept = None
    for head in chosen:
        scores = query[:, head].float() @ key[:, head].float().T * module.scaling  # (n, n)
        probabilities = scores.softmax(dim=-1)
        if heads == "mean":
            kept = probabilities if kept is None else kept.add_(probabilities)
        else:
            kept = [probabilities] if kept is None else kept + [probabilities]
    return (kept / module.num_heads)[None] if heads == "mean" else torch.stack(kept)


def patch_attention_figure(maps: VisionAttention, image, block: int, row: int, col: int, head: int = 0) -> Figure:
    """Where one patch looks in ``block``, drawn over the resized image (first image of the batch)."""
    grid = maps.grid_thw[0]
    probabilities = maps.patch_map(block, row, col, head)
    picture = resized(image, grid)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(picture)
    left.imshow(np.kron(probabilities, np.ones((14, 14))), cmap="magma", alpha=0.65)
    left.add_patch(_patch_box(row, col))
    head_name = "head mean" if maps[block].heads == "mean" else f"head {maps[block].heads[head]}"
    left.set(title=f"block {block} ({maps[block].kind} attention), {head_name}: where patch ({row}, {col}) looks")
    shown = right.imshow(probabilities, cmap="magma")
    right.set(title="the same probabilities on the patch grid", xlabel="patch column", ylabel="patch row")
    figure.colorbar(shown, ax=right, shrink=0.8)
    return figure


def _patch_box(row: int, col: int) -> Rectangle:
    return Rectangle((col * 14 - 0.5, row * 14 - 0.5), 14, 14, fill=False, ec="cyan", lw=2)


def window_matrix_figure(maps: VisionAttention, block: int, segment: int = 0, head: int = 0) -> Figure:
    """One segment's attention matrix (queries x keys), window order."""
    attention = maps[block]
    if not 0 <= segment < len(attention.segments):
        raise ValueError(f"segment={segment}: block {block} has {len(attention.segments)} segments")
    matrix = attention.segments[segment][head].numpy()
    figure = Figure(figsize=(5.2, 4.6), layout="constrained")
    axis = figure.subplots()
    shown = axis.imshow(matrix, cmap="viridis")
    what = "window" if attention.kind == "window" else "frame (full attention)"
    axis.set(title=f"block {block}, {what} {segment}: {matrix.shape[0]} patches", xlabel="key patch", ylabel="query patch")
    figure.colorbar(shown, ax=axis, shrink=0.8)
    return figure


def patch_picker_figure(maps: VisionAttention, image, window_block: int, full_block: int, row: int, col: int) -> Figure:
    """One patch followed through the tower: the picture with the patch (cyan) and its window (red), then where the
    patch looks in ``window_block`` and in ``full_block``, each on the patch grid beside the picture."""
    grid = maps.grid_thw[0]
    looks = {block: maps.patch_map(block, row, col) for block in (window_block, full_block)}  # checks row and col
    parts = windows(grid, maps.vision_config)
    window = int(parts.window[0, row, col])
    x0, y0, x1, y1 = parts.boxes[window]
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    picture, *heat = figure.subplots(1, 3)
    picture.imshow(resized(image, grid))
    picture.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=2))
    picture.add_patch(_patch_box(row, col))
    picture.set(title=f"patch ({row}, {col}) in window {window}", xticks=[], yticks=[])
    for axis, (block, probabilities) in zip(heat, looks.items()):
        shown = axis.imshow(probabilities, cmap="magma", vmin=0)
        axis.add_patch(Rectangle((x0 / PATCH - 0.5, y0 / PATCH - 0.5), (x1 - x0) / PATCH, (y1 - y0) / PATCH,
                                 fill=False, ec="red", lw=1.5))
        axis.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
        heads = "head mean" if maps[block].heads == "mean" else f"head {maps[block].heads[0]}"
        axis.set(title=f"block {block} ({maps[block].kind} attention, {heads})", xlabel="patch column",
                 ylabel="patch row")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        figure.colorbar(shown, ax=axis, shrink=0.8, label="probability")
    return figure
