"""The vision tower's attention probabilities, while the model keeps its own kernel.

sdpa and flash attention never materialise ``softmax(q k^T / sqrt(d))``, and
transformers' ``output_attentions`` on the vision tower returns attention
*outputs*. Here a hook on each chosen block's ``attn`` recomputes the
probabilities from the module's own inputs (its normed hidden states, the
rotary cos/sin and the ``cu_seqlens`` that delimit windows), one head at a
time, keeping only the heads and reduction asked for. The model itself runs
unchanged on its configured kernel.

>>> maps = vision_attention(specimen, prompt, blocks=[0], reduce="mean")
>>> maps.estimate_bytes                     # known before the run
>>> maps[0].segments[3].shape               # window 3 of block 0: (1, 64, 64) for 8x8 patches

The keywords are those of the decoder's recorder: ``heads`` (None: all, or
indices), ``reduce`` (``"mean"`` over the chosen heads, or ``"none"``) and
``budget_bytes`` (``AttentionBudgetExceeded`` before any hook is set).
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
from transformers.vision_utils import get_vision_cu_seqlens

from anatomy.capture.budget import FLOAT_BYTES, check_budget, check_reduce
from anatomy.capture.orders import window_lengths, window_to_raster
from anatomy.inputs import resized
from anatomy.lab.figures import draw_cells, draw_picture, outline_cells
from anatomy.lab.widgets import LiveFigure
from anatomy.model import block_kinds, select, unwrap, vision_blocks
from anatomy.vision.windows import PATCH, windows


@dataclass
class BlockAttention:
    """Attention probabilities of one vision block, one matrix per attention segment.

    Attributes:
        block: block index. kind: ``"window"`` or ``"full"``.
        heads: the heads chosen. reduce: ``"mean"`` (one map averaged over them) or ``"none"``.
        segments: per window (or per frame, for full blocks), a float32 tensor
            ``(heads kept, n, n)``; rows are queries, columns keys, in the order
            the block computes (window order).
        starts: first window-order position of every segment.
    """

    block: int
    kind: str
    heads: list[int]
    reduce: str = "mean"
    segments: list[torch.Tensor] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def head_name(self, head: int = 0) -> str:
        """What map ``head`` (an index into the kept maps) shows, for a figure title."""
        return "head mean" if self.reduce == "mean" else f"head {self.heads[head]}"


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
        _, rows, cols = (int(v) for v in self.grid_thw[image])
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"patch ({row}, {col}) is outside the {rows}x{cols} patch grid")
        window_order = window_to_raster(self.grid_thw[image : image + 1], self.vision_config)[: rows * cols]
        offset = int(self.grid_thw[:image].prod(-1).sum())
        position = offset + int(window_order[row * cols + col])
        attention = self[block]
        segment = max(i for i, start in enumerate(attention.starts) if start <= position)
        probabilities = attention.segments[segment][head, position - attention.starts[segment]]
        order = window_order + offset  # window position of each patch of the first frame
        inside = (order >= attention.starts[segment]) & (order < attention.starts[segment] + len(probabilities))
        result = torch.zeros(rows * cols)
        result[inside] = probabilities[order[inside] - attention.starts[segment]]
        return result.reshape(rows, cols).numpy()


def segment_lengths(grid_thw: torch.Tensor, vision_config, kind: str) -> list[int]:
    """Patches per attention segment: windows for ``"window"`` blocks, frames for ``"full"`` ones."""
    if kind == "window":
        return window_lengths(grid_thw, vision_config)
    cu = get_vision_cu_seqlens(grid_thw)
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


def vision_attention(specimen, prompt, blocks=None, heads=None, reduce: str = "mean",
                     budget_bytes: int | None = None) -> VisionAttention:
    """Run the model on ``prompt`` and return the chosen blocks' attention probabilities.

    Args:
        specimen: a Specimen or a bare Qwen2.5-VL model, on any attention kernel.
        prompt: ``encode``'s result (or the batch), with ``pixel_values`` and ``image_grid_thw``.
        blocks: vision block indices (None: all). heads: heads (None: all).
        reduce: ``"mean"`` (one map averaged over the chosen heads) or ``"none"`` (every chosen head).
        budget_bytes: refuse to run (``AttentionBudgetExceeded``) when ``estimate_bytes`` exceeds it.
    """
    with torch.no_grad(), record_attention(specimen, prompt, blocks, heads, reduce, budget_bytes) as maps:
        unwrap(specimen)(**prompt)
    return maps


@contextlib.contextmanager
def record_attention(specimen, prompt, blocks=None, heads=None, reduce: str = "mean", budget_bytes: int | None = None):
    """Hook the chosen blocks for the forward passes on ``prompt``'s images; yield the maps they fill.

    The keywords are the decoder recorder's (``anatomy.decoder.attention.record_attention``); the memory
    estimate is checked against ``budget_bytes`` before any hook is set.
    """
    model = unwrap(specimen)
    if "image_grid_thw" not in prompt or "pixel_values" not in prompt:
        raise ValueError("the prompt has no image (pixel_values and image_grid_thw); encode a prompt with an image")
    vision_config = model.config.vision_config
    blocks = select(blocks, vision_config.depth, "block")
    heads = select(heads, vision_config.num_heads, "head")
    check_reduce(reduce)
    grid = prompt["image_grid_thw"].cpu()
    estimate = estimate_bytes(grid, vision_config, blocks, 1 if reduce == "mean" else len(heads))
    check_budget(estimate, budget_bytes, "choose fewer blocks or heads, or reduce='mean'")
    kinds = block_kinds(vision_config)
    chosen = {b: BlockAttention(b, kinds[b], heads, reduce) for b in blocks}
    maps = VisionAttention(chosen, grid, vision_config, estimate)
    blocks_of = vision_blocks(model)
    handles = []
    try:
        for index, attention in maps.blocks.items():
            module = blocks_of[index].attn
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
            attention.segments.append(_segment(module, query[start:end], key[start:end], attention))
            attention.starts.append(start)

    return record


def _rotated_query_key(module, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's own q and k after the 2D rotary embedding, each (patches, heads, head_dim)."""
    patches = hidden.shape[0]
    qkv = module.qkv(hidden).reshape(patches, 3, module.num_heads, -1).permute(1, 0, 2, 3)
    cos, sin = position_embeddings
    return apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)


def _segment(module, query: torch.Tensor, key: torch.Tensor, attention: BlockAttention) -> torch.Tensor:
    """softmax(q k^T * scale) for one segment, head by head: (kept heads, n, n) float32."""
    mean, kept = attention.reduce == "mean", []
    for head in attention.heads:
        scores = query[:, head].float() @ key[:, head].float().T * module.scaling  # (n, n)
        probabilities = scores.softmax(dim=-1)
        if mean and kept:
            kept[0].add_(probabilities)
        else:
            kept.append(probabilities)
    return (kept[0] / len(attention.heads))[None] if mean else torch.stack(kept)


def patch_attention_figure(maps: VisionAttention, prompt, block: int, row: int, col: int, head: int = 0) -> Figure:
    """Where one patch looks in ``block``, drawn over the prompt's first image, resized as the model saw it."""
    grid = maps.grid_thw[0]
    probabilities = maps.patch_map(block, row, col, head)
    picture = resized(prompt.image, grid)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    draw_picture(left, picture, f"block {block} ({maps[block].kind} attention), {maps[block].head_name(head)}: "
                                f"patch ({row}, {col})\n"
                                "(cyan); orange: the patches holding half of its attention")
    outline_cells(left, torch.as_tensor(probabilities), 14, colour="orange")
    left.add_patch(_patch_box(row, col))
    shown = draw_cells(right, torch.as_tensor(probabilities), "the probabilities on the patch grid", cmap="magma")
    right.set(xlabel="patch column", ylabel="patch row")
    _sparse_ticks(right, probabilities.shape)
    figure.colorbar(shown, ax=right, shrink=0.8, label="probability")
    return figure


def _sparse_ticks(axis, shape: tuple[int, int], most: int = 14) -> None:
    """Integer ticks on a (rows, cols) grid, at most ``most`` a side."""
    for setter, size in ((axis.set_yticks, shape[0]), (axis.set_xticks, shape[1])):
        setter(range(0, size, -(-size // most)))


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
    axis.set(title=f"block {block}, {what} {segment}: {matrix.shape[0]} patches",
             xlabel="key patch", ylabel="query patch")
    figure.colorbar(shown, ax=axis, shrink=0.8)
    return figure


def patch_picker_figure(maps: VisionAttention, prompt, window_block: int, full_block: int, row: int,
                        col: int) -> Figure:
    """One patch followed through the tower: the prompt's first image with the patch (cyan) and its window (red),
    then where the patch looks in ``window_block`` and in ``full_block``, each on the patch grid beside it."""
    grid = maps.grid_thw[0]
    looks = {block: maps.patch_map(block, row, col) for block in (window_block, full_block)}  # checks row and col
    parts = windows(grid, maps.vision_config)
    window = int(parts.window[0, row, col])
    x0, y0, x1, y1 = parts.boxes[window]
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    picture, *heat = figure.subplots(1, 3)
    picture.imshow(resized(prompt.image, grid))
    picture.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=2))
    picture.add_patch(_patch_box(row, col))
    picture.set(title=f"patch ({row}, {col}) in window {window}", xticks=[], yticks=[])
    for axis, (block, probabilities) in zip(heat, looks.items()):
        shown = axis.imshow(probabilities, cmap="magma", vmin=0)
        axis.add_patch(Rectangle((x0 / PATCH - 0.5, y0 / PATCH - 0.5), (x1 - x0) / PATCH, (y1 - y0) / PATCH,
                                 fill=False, ec="red", lw=1.5))
        axis.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
        axis.set(title=f"block {block} ({maps[block].kind} attention, {maps[block].head_name()})",
                 xlabel="patch column", ylabel="patch row")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        figure.colorbar(shown, ax=axis, shrink=0.8, label="probability")
    return figure


def patch_picker(maps: VisionAttention, prompt, window_block: int, full_block: int, row: int = 0,
                 col: int = 0) -> LiveFigure:
    """Row and column sliders over the patch grid: ``patch_picker_figure`` of each patch (``maps`` must hold
    both blocks)."""
    import ipywidgets as widgets

    _, rows, cols = (int(v) for v in maps.grid_thw[0])
    controls = {
        "row": widgets.IntSlider(value=row, min=0, max=rows - 1, description="patch row"),
        "col": widgets.IntSlider(value=col, min=0, max=cols - 1, description="patch column"),
    }
    return LiveFigure(lambda row, col: patch_picker_figure(maps, prompt, window_block, full_block, row, col), controls)
