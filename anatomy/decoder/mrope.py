"""M-RoPE: every decoder token gets three position ids, (time, height, width).

Text tokens carry one id on all three axes, counting up by one. The tokens of
an image share one time id and are laid out on their merged grid (height id =
start + row, width id = start + column); the text after the image resumes at
start + max(rows, cols). Video tokens step in time by
``tokens_per_second * second_per_grid_t`` per temporal grid (absolute time:
at 2 tokens/s one id is half a second). The ids come from transformers' own
``get_rope_index``:

>>> ids, deltas = rope_index(specimen, encode(specimen, demo_image()))
>>> ids.shape, deltas       # (3, batch, seq); deltas = max id + 1 - seq, used during generation
(torch.Size([3, 1, 221]), tensor([[-176]]))
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from anatomy.model import KIND_NAMES, decoder, multimodal, token_kinds
from anatomy.processor import one_line, token_texts

AXES = ("time", "height", "width")


def rope_index(specimen, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``get_rope_index`` on a processed prompt: ids (3, batch, seq), rope_deltas (batch, 1).

    Raises ValueError when a prompt with images or video lacks ``mm_token_type_ids``:
    without them transformers silently falls back to 1D positions.
    """
    has_vision = batch.get("image_grid_thw") is not None or batch.get("video_grid_thw") is not None
    if has_vision and batch.get("mm_token_type_ids") is None:
        raise ValueError(
            "the prompt has images or video but no 'mm_token_type_ids'; transformers would then fall back to "
            "1D positions. Process it with the Qwen2.5-VL processor (anatomy.inputs.encode) and keep that key"
        )
    keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")
    with torch.no_grad():
        return multimodal(specimen).get_rope_index(
            batch["input_ids"], batch.get("mm_token_type_ids", torch.zeros_like(batch["input_ids"])),
            **{key: batch.get(key) for key in keys},
        )


def position_table(specimen, batch, rows: slice | None = None) -> list[dict]:
    """One dict per token: index, token text, kind (text/image/video) and its (time, height, width) ids."""
    ids, _ = rope_index(specimen, batch)
    kinds = token_kinds(specimen.config, batch["input_ids"])
    tokens = token_texts(specimen.processor.tokenizer, batch["input_ids"][0])
    table = [
        {"index": i, "token": token, "kind": KIND_NAMES[int(kinds[i])], **dict(zip(AXES, ids[:, 0, i].tolist()))}
        for i, token in enumerate(tokens)
    ]
    return table[rows] if rows is not None else table


def video_time_steps(specimen, batch) -> list[int]:
    """The distinct steps between consecutive time ids of the batch's video tokens, e.g. ``[4]`` for a clip of
    2 s per temporal patch at ``tokens_per_second`` 2: one step, the same all along the clip."""
    ids, _ = rope_index(specimen, batch)
    video = batch["input_ids"] == specimen.config.video_token_id  # (1, seq)
    if not video.any():
        raise ValueError("the batch has no <|video_pad|> token; encode a clip with anatomy.vision.video.encode_video")
    return sorted(set(np.diff(ids[0][video].unique().cpu().numpy()).tolist()))


def format_table(table: list[dict]) -> str:
    """The rows of ``position_table`` as aligned text."""
    lines = [f"{'index':>5}  {'token':<16} {'kind':<6} {'time':>5} {'height':>6} {'width':>5}"]
    lines += [f"{r['index']:>5}  {one_line(r['token'])[:16]:<16} {r['kind']:<6} "
              f"{r['time']:>5} {r['height']:>6} {r['width']:>5}"
              for r in table]
    return "\n".join(lines)


def frequency_axes(specimen) -> torch.Tensor:
    """(head_dim/2,) which axis (0 time, 1 height, 2 width) each rotary frequency follows.

    Found by feeding the rotary module's own ``recomposition_frequencies`` a tensor
    whose axis-a slice holds a: with mrope_section [16, 24, 24] the first 16
    frequencies follow time, the next 24 height, the last 24 width.
    """
    rotary = decoder(specimen).rotary_emb
    half = rotary.inv_freq.shape[0]
    tagged = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, half)  # (axes, batch, seq, head_dim/2)
    return rotary.recomposition_frequencies(tagged)[0, 0, :half].long()


def bands_figure(specimen) -> Figure:
    """Rotary frequencies by index, coloured by the axis whose position id drives them."""
    axes_of = frequency_axes(specimen).numpy()
    rotary = decoder(specimen).rotary_emb
    inv_freq = rotary.inv_freq.cpu().numpy()
    figure = Figure(figsize=(8, 3), layout="constrained")
    axis = figure.subplots()
    for a, (name, colour) in enumerate(zip(AXES, ("tab:purple", "tab:orange", "tab:green"))):
        chosen = np.nonzero(axes_of == a)[0]
        axis.bar(chosen, inv_freq[chosen], color=colour, label=f"{name} ({len(chosen)} frequencies)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(yscale="log", xlabel="rotary frequency index (of head_dim/2)", ylabel="frequency (radians per id)",
             title=f"mrope_section {rotary.mrope_section}: which axis drives which frequency")
    axis.legend(fontsize=8)
    return figure


def position_ids_figure(specimen, batch) -> Figure:
    """The three position ids along the sequence, vision tokens shaded."""
    ids, deltas = rope_index(specimen, batch)
    kinds = token_kinds(specimen.config, batch["input_ids"]).numpy()
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    axis = figure.subplots()
    for a, (name, style) in enumerate(zip(AXES, ("-", "--", ":"))):
        axis.plot(ids[a, 0].cpu().numpy(), style, label=name, linewidth=1.5)
    for kind, colour in ((1, "tab:orange"), (2, "tab:green")):
        if not (kinds == kind).any():
            continue  # no legend entry for a kind of token the batch does not have
        axis.fill_between(np.arange(len(kinds)), 0, 1, where=kinds == kind, color=colour, alpha=0.15,
                          transform=axis.get_xaxis_transform(), label=f"{KIND_NAMES[kind]} tokens")
    axis.set(xlabel="token index", ylabel="position id", title=f"M-RoPE ids (rope_deltas {int(deltas[0, 0])})")
    for which in (axis.xaxis, axis.yaxis):
        which.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize=8)
    return figure


def vision_grid_figure(specimen, batch) -> Figure:
    """For every vision token: its (height, width) id, coloured by its time id (one colour per id).

    An image's tokens share one time id: it goes in the title, and no colour bar is drawn.
    """
    ids, _ = rope_index(specimen, batch)
    vision = token_kinds(specimen.config, batch["input_ids"]) != 0
    t, h, w = (ids[a, 0, vision].cpu().numpy() for a in range(3))
    times = np.unique(t)
    figure = Figure(figsize=(5, 4), layout="constrained")
    axis = figure.subplots()
    step = np.searchsorted(times, t)  # 0, 1, ...: the time ids in order
    colours = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 1, len(times))))
    shown = axis.scatter(w, h, c=step, cmap=colours, vmin=-0.5, vmax=len(times) - 0.5, s=40, marker="s")
    axis.set_xticks(np.unique(w))
    axis.set_yticks(np.unique(h))
    axis.invert_yaxis()
    title = "vision tokens on their grid"
    if len(times) == 1:
        title += f"\nall {len(t)} share time id {times[0]}"
    else:
        bar = figure.colorbar(shown, ax=axis, label="time id", ticks=np.arange(len(times)))
        bar.ax.set_yticklabels([str(time) for time in times])
    axis.set(xlabel="width id", ylabel="height id", title=title)
    return figure
