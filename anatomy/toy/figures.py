"""Figures of the toy's evidence: where the answer looks, on average and picture by picture.

>>> grounding_figure({"trained": evaluate(toy, n=60), "random init": evaluate(untrained_toy(), n=60)})
>>> looking_figure(toy, [sample(0, "test", i) for i in range(6)])
>>> looking_figure(untrained_toy(), pictures, vmax=looking_scale(toy, pictures))      # on the toy's scale
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from anatomy.decoder.attention import attention_rows, image_map
from anatomy.inputs import encode
from anatomy.lab.figures import drawable, label_fonts
from anatomy.processor import one_line
from anatomy.toy.evaluate import REGIONS, Report
from anatomy.toy.shapes import CELL, IMAGE_SIZE
from anatomy.toy.task import Sample

REGION_COLOURS = {"target": "tab:red", "distractors": "tab:blue", "background": "tab:gray"}


def grounding_figure(reports: dict[str, Report]) -> Figure:
    """Attention per cell on target / distractors / background, one panel per model, bars per decoder layer."""
    if not reports:
        raise ValueError("need at least one report, e.g. {'trained': evaluate(toy)}")
    figure = Figure(figsize=(4.2 * len(reports), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(reports), sharey=True))
    for axis, (name, report) in zip(axes, reports.items()):
        layers = np.arange(len(report.per_area))
        for r, region in enumerate(REGIONS):
            axis.bar(layers + (r - 1) * 0.27, report.per_area[:, r], 0.27, color=REGION_COLOURS[region], label=region)
        for layer, ratio in zip(layers, report.ratios):
            axis.annotate(f"x{ratio:.1f}", (layer, report.per_area[layer].max()), ha="center", va="bottom", fontsize=9)
        axis.set(title=f"{name} (n={report.n})", xlabel="decoder layer", xticks=layers)
        axis.margins(y=0.12)
    axes[0].set_ylabel("attention per cell (answer position)")
    axes[0].legend(fontsize=8, loc="upper left")
    return figure


def looking_figure(specimen, samples: list[Sample], layer: int | None = None, columns: int = 3,
                   vmax: float | None = None) -> Figure:
    """Each picture beside the answer position's attention to its 4x4 cells in ``layer`` (default: the last).

    Heads are averaged; the asked-about objects are outlined in green in both panels; the figure's title
    names the model (``specimen.source``), each panel's the question and the model's answer (the argmax
    over the whole vocabulary). Every map shares
    one colour scale, from 0 to ``vmax`` (default: the largest share a cell gets here; pass another
    model's ``looking_scale`` to draw two models on one scale).
    """
    if not samples:
        raise ValueError("need at least one sample, e.g. [sample(0, 'test', 0)]")
    layer = specimen.config.text_config.num_hidden_layers - 1 if layer is None else layer
    looked = [_answer_attention(specimen, s, layer) for s in samples]
    vmax = max(float(cells.max()) for cells, _ in looked) if vmax is None else vmax
    columns = min(columns, len(samples))
    rows = -(-len(samples) // columns)
    figure = Figure(figsize=(4.0 * columns + 1.0, 2.6 * rows + 0.3), layout="constrained")
    grid, scale = figure.subfigures(1, 2, width_ratios=(4.0 * columns, 1.0))
    panels = grid.subfigures(rows, columns, squeeze=False).reshape(-1)
    for panel, s, (cells, answer) in zip(panels, samples, looked):
        mark = "right" if answer.strip() == s.answer else f"wrong, expected {s.answer!r}"
        picture_axis, map_axis = panel.subplots(1, 2)
        picture_axis.imshow(s.scene.pixels())
        shown = map_axis.imshow(cells, cmap="inferno", vmin=0, vmax=vmax, extent=(0, IMAGE_SIZE, IMAGE_SIZE, 0))
        for axis in (picture_axis, map_axis):
            axis.set(xticks=[], yticks=[])
            for i in s.target:
                thing = s.scene.things[i]
                axis.add_patch(Rectangle((thing.col * CELL, thing.row * CELL), CELL, CELL, fill=False, ec="lime", lw=2))
        panel.suptitle(f"{s.question}\n-> '{drawable(one_line(answer))}' ({mark})", fontsize=9, fontfamily=label_fonts())
    scale.colorbar(shown, cax=scale.add_axes((0.15, 0.15, 0.2, 0.7)), label="attention (one scale for all maps)")
    figure.suptitle(f"{specimen.source}: attention of the answer position to the image, decoder layer {layer}, "
                    "heads averaged")
    return figure


def looking_scale(specimen, samples: list[Sample], layer: int | None = None) -> float:
    """The largest share of the answer position's attention that one cell gets in ``looking_figure``'s maps."""
    layer = specimen.config.text_config.num_hidden_layers - 1 if layer is None else layer
    return max(float(_answer_attention(specimen, s, layer)[0].max()) for s in samples)


def _answer_attention(specimen, s: Sample, layer: int) -> tuple[np.ndarray, str]:
    """The answer position's head-mean attention on each cell ``(4, 4)``, and the model's answer token."""
    prompt = encode(specimen, s.scene.pixels(), s.question)
    attention, output = attention_rows(specimen, prompt, layers=[layer], reduce="mean")
    cells = image_map(attention, prompt)
    return cells.float().numpy(), specimen.processor.tokenizer.decode(int(output.logits[0, -1].argmax()))


def curve_figure(curve: list[dict], passed_at: int | None = None) -> Figure:
    """The learning curve: accuracy per question type and ``<|im_end|>`` after the answer (top), target /
    distractor attention per cell of the answer position per layer and the training loss (bottom), against
    the step; ``passed_at`` (the check that started the cool-down) as a dashed line."""
    if not curve:
        raise ValueError("need at least one curve entry, e.g. read_curve()")
    steps = [e["step"] for e in curve]
    figure = Figure(figsize=(8.5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    for kind in curve[0]["accuracy"]:
        top.plot(steps, [e["accuracy"][kind] for e in curve], marker=".", label=kind)
    top.plot(steps, [e["where_by_case"]["shape repeated"] for e in curve], ls=":", label="where, repeated shape")
    top.plot(steps, [e["stops"] for e in curve], color="black", ls="--", label="<|im_end|> after the answer")
    top.set(ylabel="validation accuracy", ylim=(-0.03, 1.03), title="how the toy learned to look")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: never over a curve
    for layer in range(len(curve[0]["ratios"])):
        bottom.plot(steps, [e["ratios"][layer] for e in curve], marker=".", label=f"layer {layer}")
    bottom.axhline(1, color="gray", lw=0.8)
    bottom.set(xlabel="training step", ylabel="target / distractor attention per cell", yscale="log")
    bottom.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10 rather than 10^0, 2x10^0 ...
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.yaxis.set_minor_formatter(NullFormatter())
    loss = bottom.twinx()
    loss.plot(steps, [e["loss"] for e in curve], color="tab:gray", alpha=0.6, label="training loss")
    loss.set_ylabel("training loss (mean since the last check)")
    bottom.legend(fontsize=8, loc="upper left")
    loss.legend(fontsize=8, loc="lower right")
    for axis in (top, bottom):
        if passed_at is not None:
            axis.axvline(passed_at, color="tab:red", ls="--", lw=1)
    if passed_at is not None:
        cooled = steps[-1] > passed_at  # a live run without a cool-down ends at its check
        top.annotate("check passed" + (": cool-down" if cooled else ""), (passed_at, 0.02), color="tab:red",
                     fontsize=8, ha="right")
    return figure
