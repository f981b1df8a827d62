"""Decoder attention probabilities for chosen rows, while the model keeps its own kernel.

sdpa and flash kernels never materialise softmax(q k^T); ``output_attentions``
switches the whole model to eager and materialises every layer's
(heads, seq, seq) matrix. Here a hook on each chosen ``self_attn`` recomputes
only the requested query rows and heads from the module's own inputs
(hidden states, position embeddings, attention mask, KV cache):

>>> with record_attention(specimen, prompt, layers=[1], rows=None) as recorder:   # None: the last row
...     specimen.model(**prompt)
>>> recorder.result().probs.shape          # (layers, heads, rows, keys)
torch.Size([1, 4, 1, 221])
>>> image_attention_figure(recorder.result(), prompt)      # the rows' attention over the image

The vision recorder (``anatomy.vision.attention``) takes the same keywords:
``heads`` (None: all, or indices), ``reduce`` (``"none"`` or ``"mean"`` over the
chosen heads) and ``budget_bytes``. Memory is bounded by the selection and
estimated from the prompt before the run (``estimate_bytes``); an estimate above
``budget_bytes`` raises ``AttentionBudgetExceeded`` before any hook is attached.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from anatomy.capture.budget import FLOAT_BYTES, check_budget, check_reduce
from anatomy.inputs import resized
from anatomy.lab.figures import draw_cells, draw_picture, drawable, label_fonts, outline_cells
from anatomy.lab.widgets import LiveFigure, dropdowns
from anatomy.model import IMAGE, TEXT, check_heads, check_layers, decoder_layers
from anatomy.processor import one_line


@dataclass
class AttentionRows:
    """Attention probabilities of selected query rows.

    Attributes:
        probs: (layers, heads, rows, keys) float32; heads is 1 when averaged over heads.
            Keys a row could not see yet (later tokens, during generation) hold 0.
        layers: decoder layer of each entry along the first axis.
        heads: query head of each entry along the second axis (``["mean"]`` when averaged).
        positions: (rows,) absolute sequence position of each query row.
    """

    probs: torch.Tensor
    layers: list[int]
    heads: list
    positions: torch.Tensor


def estimate_bytes(keys: int, rows: int, layers: int, heads: int, reduce: str = "none", calls: int = 1) -> int:
    """Peak bytes a capture materialises: rows kept over ``calls`` forward calls + one layer's transient scores.

    >>> estimate_bytes(keys=1000, rows=1, layers=1, heads=4, reduce="mean")   # 1*1*1000*4 + 2*4*1000*4
    36000
    """
    kept_heads = 1 if reduce == "mean" else heads
    kept = layers * kept_heads * rows * keys * FLOAT_BYTES
    transient = 2 * heads * (rows // calls or 1) * keys * FLOAT_BYTES  # scores and probabilities of one layer
    return kept + transient


class AttentionRecorder:
    """Collects recomputed rows, layer by layer, call by call (prefill, then each generated token)."""

    def __init__(self, layers: list[int], heads: list[int], rows, reduce: str):
        self.layers, self.heads, self.rows, self.reduce = layers, heads, rows, reduce
        self.parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}

    def keep(self, layer: int, positions: torch.Tensor, probs: torch.Tensor) -> None:
        """Store (rows,) positions and (heads, rows, keys) probabilities of one call."""
        probs = probs.mean(0, keepdim=True) if self.reduce == "mean" else probs
        self.parts[layer].append((positions, probs))

    def result(self) -> AttentionRows:
        """Every call's rows, keys padded with zeros to the longest call: ``AttentionRows``."""
        if not self.parts[self.layers[0]]:
            raise RuntimeError("no attention was recorded: run the model inside the `with record_attention(...)` block")
        keys = max(probs.shape[-1] for parts in self.parts.values() for _, probs in parts)
        stacked = [
            torch.cat([torch.nn.functional.pad(p, (0, keys - p.shape[-1])) for _, p in self.parts[layer]], dim=1)
            for layer in self.layers
        ]  # each (heads, rows, keys)
        positions = torch.cat([pos for pos, _ in self.parts[self.layers[0]]])
        heads = ["mean"] if self.reduce == "mean" else list(self.heads)
        return AttentionRows(torch.stack(stacked), list(self.layers), heads, positions)


def _query_rows(rows, q_len: int) -> torch.Tensor:
    """Row indices of this call: ``None`` is the last row; ints may be negative."""
    if rows is None:
        return torch.tensor([q_len - 1])
    chosen = torch.as_tensor(list(rows)) % q_len
    return chosen


def _keys(module, kwargs: dict, hidden: torch.Tensor) -> torch.Tensor:
    """Rotated keys this call attended to: (1, kv_heads, keys, head_dim), from the cache when there is one.

    transformers passes the KV cache to ``self_attn`` as ``cache`` (``None`` without one); if that keyword
    ever disappears, recomputing the keys from this call alone would silently drop the past, so it is an error.
    """
    if "cache" not in kwargs:
        raise RuntimeError(
            f"self_attn was called without a 'cache' keyword (got {sorted(kwargs)}); this transformers version "
            "passes the KV cache under another name, and anatomy.decoder.attention must be updated to read it"
        )
    cache = kwargs["cache"]
    if cache is not None:
        return cache.layers[module.layer_idx].keys
    cos, sin = kwargs["position_embeddings"]
    keys = module.k_proj(hidden).view(1, hidden.shape[1], -1, module.head_dim).transpose(1, 2)  # (1, kv, S, d)
    return apply_rotary_pos_emb(keys, keys, cos, sin)[1]


def _mask_rows(mask, rows: torch.Tensor, past: int, keys: int) -> torch.Tensor:
    """Additive (rows, keys) mask: the model's own mask when it passed one, else causal."""
    if mask is None:
        allowed = torch.arange(keys)[None, :] <= (past + rows)[:, None]
        return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    mask = mask[0, 0, rows.to(mask.device), :keys].cpu()
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    return mask.float()


def recompute_rows(module, kwargs: dict, rows, heads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) for ``rows`` and ``heads`` of one call: positions (R,), probs (H', R, keys)."""
    hidden = kwargs["hidden_states"]  # (1, q_len, D)
    q_len = hidden.shape[1]
    index = _query_rows(rows, q_len)
    cos, sin = (part[:, index.to(part.device)] for part in kwargs["position_embeddings"])  # (1, R, d)
    query = module.q_proj(hidden[:, index.to(hidden.device)]).view(1, len(index), -1, module.head_dim).transpose(1, 2)
    query = apply_rotary_pos_emb(query, query, cos, sin)[0]  # (1, H, R, d)
    keys = _keys(module, kwargs, hidden)  # (1, kv, K, d)
    past = keys.shape[2] - q_len
    mask = _mask_rows(kwargs.get("attention_mask"), index, past, keys.shape[2])
    group = module.num_key_value_groups
    probs = [
        torch.softmax((query[0, h] @ keys[0, h // group].T).float().cpu() * module.scaling + mask, dim=-1)
        for h in heads
    ]  # each (R, K)
    return index + past, torch.stack(probs)


def _hook(recorder: AttentionRecorder, layer: int):
    def on_output(module, args, kwargs, output):
        kwargs = dict(kwargs, hidden_states=args[0] if args else kwargs["hidden_states"])
        with torch.no_grad():
            recorder.keep(layer, *recompute_rows(module, kwargs, recorder.rows, recorder.heads))

    return on_output


@contextlib.contextmanager
def record_attention(specimen, prompt, layers=None, heads=None, rows=None, reduce: str = "none",
                     budget_bytes: int | None = None, new_tokens: int = 0):
    """Hook the chosen layers' ``self_attn`` for the block; yield an ``AttentionRecorder``.

    Args:
        prompt: what the model will run on (``encode``'s result, batch of 1); its length sizes the estimate.
        layers: decoder layer indices (None: all). heads: query heads (None: all).
        rows: query rows of every forward call (None: the last row, i.e. the row that
            predicts the next token; during ``generate`` one row per generated token).
        reduce: ``"none"`` keeps every chosen head, ``"mean"`` averages over them.
        budget_bytes: the most the capture may materialise; checked against ``estimate_bytes`` before
            any hook is set (``AttentionBudgetExceeded``).
        new_tokens: tokens ``generate`` will add (each adds a forward call and a key).
    """
    model = specimen.model
    layers, heads = check_layers(model.config, layers), check_heads(model.config, heads)
    check_reduce(reduce)
    if prompt["input_ids"].shape[0] != 1:
        raise ValueError(f"attention rows need a batch of 1 prompt; got {prompt['input_ids'].shape[0]}")
    calls = max(1, new_tokens)
    count = (1 if rows is None else len(list(rows))) * calls
    estimate = estimate_bytes(prompt["input_ids"].shape[1] + new_tokens, count, len(layers), len(heads), reduce, calls)
    check_budget(estimate, budget_bytes, "choose fewer layers, heads or rows, or reduce='mean'")
    recorder = AttentionRecorder(layers, heads, rows, reduce)
    modules = decoder_layers(model)
    handles = []
    try:
        for layer in layers:
            handles.append(modules[layer].self_attn.register_forward_hook(_hook(recorder, layer), with_kwargs=True))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def attention_rows(specimen, prompt, layers=None, heads=None, rows=None, reduce: str = "none",
                   budget_bytes: int | None = None) -> tuple[AttentionRows, object]:
    """One forward pass over ``prompt`` (batch of 1): the chosen rows and the model's output.

    ``rows`` are positions in the prompt (None: the last one). The estimate is checked
    against ``budget_bytes`` before the model runs.
    """
    with torch.no_grad(), record_attention(specimen, prompt, layers, heads, rows, reduce, budget_bytes) as recorder:
        output = specimen.model(**prompt)
    return recorder.result(), output


def shares(attention: AttentionRows, prompt) -> dict[str, torch.Tensor]:
    """Share of attention, per layer, on vision tokens, on text tokens after the first, and on the first token.

    Averaged over heads and rows; the three (layers,) tensors sum to 1. Keys past the prompt
    (generated tokens) count as text.
    """
    probs = attention.probs.mean(dim=(1, 2))  # (layers, keys)
    kinds = torch.nn.functional.pad(prompt.kinds, (0, max(0, probs.shape[-1] - len(prompt.kinds))))[: probs.shape[-1]]
    first = probs[:, 0]
    vision = probs[:, kinds != TEXT].sum(-1)
    return {"image": vision, "text": probs.sum(-1) - vision - first, "first": first}


def image_cells(probs: torch.Tensor, kinds: torch.Tensor, image_grid_thw: torch.Tensor, image: int = 0,
                merge: int = 2) -> torch.Tensor:
    """Attention mass (keys,) on the tokens of image ``image``, laid out (grid_t, grid_h/merge, grid_w/merge).

    Image tokens come in raster order over the merged grid: token k sits at
    row k // (grid_w/merge), column k % (grid_w/merge).
    """
    if not 0 <= image < len(image_grid_thw):
        raise ValueError(f"image index {image} out of range; the prompt has {len(image_grid_thw)} images")
    t, h, w = (int(v) for v in image_grid_thw[image])
    sizes = [int(g.prod()) // merge**2 for g in image_grid_thw]
    positions = torch.nonzero(kinds[: probs.shape[-1]] == IMAGE).flatten()
    start = sum(sizes[:image])
    return probs[positions[start : start + sizes[image]]].reshape(t, h // merge, w // merge)  # (t, h', w')


def cell_rows(attentions, input_ids: torch.Tensor, config, row: int = -1) -> torch.Tensor:
    """``(layers, B, cells)``: position ``row``'s attention to each image cell (raster order), mean over heads, from
    a batch's ``output_attentions`` (one picture per prompt, all of one size).

    ``attentions``: one ``(B, heads, L', L')`` tensor per decoder layer, whose first ``L`` keys are ``input_ids``
    ``(B, L)``. The same cells as ``image_cells`` lays out from a recorder's rows; ``output_attentions`` keeps
    every layer's whole matrix, so for long prompts record rows instead (``record_attention``, budgeted).
    """
    is_image = input_ids == config.image_token_id  # (B, L), in raster order
    keys = input_ids.shape[1]
    return torch.stack([a[:, :, row, :keys].mean(1)[is_image].view(len(input_ids), -1) for a in attentions])


def image_map(attention: AttentionRows, prompt, layer: int | None = None, head=None,
              row: int | None = None, image: int = 0) -> torch.Tensor:
    """(grid_h/2, grid_w/2) attention on one image for a layer, head and row (None: the mean), mean over time."""
    pick_layer = slice(None) if layer is None else [attention.layers.index(_known(layer, attention.layers, "layer"))]
    pick_head = slice(None) if head is None else [attention.heads.index(_known(head, attention.heads, "head"))]
    pick_row = slice(None) if row is None else [_known(row, list(range(attention.probs.shape[2])), "row")]
    probs = attention.probs[pick_layer][:, pick_head][:, :, pick_row].mean(dim=(0, 1, 2))  # (keys,)
    return image_cells(probs, prompt.kinds, prompt.grid_thw, image).mean(0)


def _known(value, captured: list, what: str):
    if value not in captured:
        raise ValueError(f"{what} {value!r} was not captured; captured {what}s: {captured}")
    return value


def image_attention_figure(attention: AttentionRows, prompt, layer=None, head=None, row=None,
                           row_label: str | None = None) -> Figure:
    """The picture, its cells holding half the attention outlined, beside the attention map on its merged grid.

    ``layer``/``head``/``row`` pick what is drawn (None: averaged); ``row_label`` names the chosen row in the title
    (a decoded token), by default its index. The picture keeps its colours.
    """
    cells = image_map(attention, prompt, layer, head, row)
    figure = Figure(figsize=(8.4, 4.0), layout="constrained")
    left, right = figure.subplots(1, 2)
    shown_row = row if row_label is None or row is None else f"'{drawable(one_line(row_label))}'"
    where = ", ".join(f"{name} {'mean' if value is None else value}"
                      for name, value in (("layer", layer), ("head", head), ("token", shown_row)))
    picture = resized(prompt.image, prompt.grid_thw[0])
    draw_picture(left, picture, "the picture; outlined: cells holding\nhalf of this attention")
    outline_cells(left, cells, picture.height / cells.shape[0])
    shown = draw_cells(right, cells, f"attention on the image (sum {cells.sum():.3f})\n{where}")
    right.title.set_fontfamily(label_fonts())
    right.set(xlabel="token column", ylabel="token row")
    figure.colorbar(shown, ax=right, shrink=0.8, label="probability")
    return figure


def heads_figure(attention: AttentionRows, prompt, columns: int = 4) -> Figure:
    """Small multiples on one colour scale: the picture, then one panel per captured (layer, head), ``columns`` a row.

    Each title gives the layer, the head and the head's total attention on the image.
    """
    panels = [(layer, head) for layer in attention.layers for head in attention.heads]
    maps = [image_map(attention, prompt, layer, None if head == "mean" else head) for layer, head in panels]
    vmax = max(float(cells.max()) for cells in maps)
    rows = -(-(len(panels) + 1) // columns)
    figure = Figure(figsize=(2.3 * columns + 0.8, 2.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    draw_picture(axes[0], resized(prompt.image, prompt.grid_thw[0]), "the picture")
    for axis, (layer, head), cells in zip(axes[1:], panels, maps):
        shown = draw_cells(axis, cells, f"layer {layer} head {head} ({cells.sum():.2f})", vmax=vmax)
    for axis in axes[len(panels) + 1 :]:
        axis.set_visible(False)
    figure.colorbar(shown, ax=axes.tolist(), shrink=0.6, label="probability (one scale for all panels)")
    return figure


def cell_attention(attention: AttentionRows, prompt, cell: tuple[int, int], image: int = 0) -> torch.Tensor:
    """(layers, heads) attention on the merged token at ``cell`` (row, column) of image ``image``, mean over rows."""
    probs = attention.probs.mean(dim=2)  # (layers, heads, keys)
    grids = [image_cells(keys, prompt.kinds, prompt.grid_thw, image).mean(0) for keys in probs.flatten(0, 1)]
    row, col = cell
    if not (0 <= row < grids[0].shape[0] and 0 <= col < grids[0].shape[1]):
        raise ValueError(f"cell {cell} is outside the image's {grids[0].shape[0]} x {grids[0].shape[1]} merged tokens")
    return torch.stack([grid[row, col] for grid in grids]).reshape(probs.shape[:2])


def shares_figure(split: dict[str, torch.Tensor], layers: list[int]) -> Figure:
    """Stacked bars by layer: share of attention on image tokens, text tokens and the first token."""
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    axis = figure.subplots()
    bottom = np.zeros(len(layers))
    for name, colour in (("first", "tab:gray"), ("text", "tab:blue"), ("image", "tab:orange")):
        values = split[name].numpy()
        label = f"{name} token{'s' if name != 'first' else ''}"
        axis.bar(np.arange(len(layers)), values, bottom=bottom, color=colour, label=label)
        bottom += values
    axis.set_xticks(np.arange(len(layers)), [str(layer) for layer in layers])
    axis.set(xlabel="decoder layer", ylabel="share of attention", ylim=(0, 1), title="where the attention goes")
    axis.legend(loc="upper right", fontsize=8)
    return figure


def explorer(attention: AttentionRows, prompt, labels: list[str] | None = None) -> LiveFigure:
    """Layer, head and answer-token dropdowns over ``image_attention_figure`` (display it as a cell's last value).

    ``labels`` name the captured rows (decoded answer tokens, ``Step.text``); by default their positions.

    >>> explorer(trace.attention, prompt, labels=[step.text for step in trace.steps])  # doctest: +SKIP
    """
    rows = attention.probs.shape[2]
    labels = labels or [f"position {int(p)}" for p in attention.positions]
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} captured rows; expected one label per row")
    choices = {
        "layer": [(str(layer), layer) for layer in attention.layers],
        "head": [(str(head), head) for head in attention.heads if head != "mean"],
        "token": [(repr(label), i) for i, label in enumerate(labels)],
    }

    def draw(layer, head, token):
        return image_attention_figure(attention, prompt, layer, head, token,
                                      row_label=None if token is None else labels[token])

    return dropdowns(draw, choices)
