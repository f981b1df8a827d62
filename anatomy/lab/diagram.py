"""Mermaid flowcharts drawn with matplotlib: the course's diagrams on any machine, with no browser and no CDN.

The README keeps the series' diagram as a Mermaid block (code hosts draw it); notebook 00 and the static
site show the same block drawn here. ``parse`` reads the subset of Mermaid's flowchart syntax they use::

    flowchart TD                         top to bottom (TB is the same); no other direction
    id["first line<br/>second line"]     a node: an id and a label in double quotes, <br/> breaks a line
    a --> b["label"]                     an edge (-.-> dotted); either end may define its node
    subgraph id["title"]                 a box around the nodes first defined between it and ``end``
    end

>>> chart = parse('flowchart TD\\n  a["A"] --> b["B<br/>b"]\\n  a -.-> c')
>>> chart.labels, chart.edges
({'a': ['A'], 'b': ['B', 'b'], 'c': ['c']}, [('a', 'b', False), ('a', 'c', True)])
>>> rank(chart)
{'a': 0, 'b': 1, 'c': 1}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.textpath import TextToPath

# The series at a glance: the same block as the README's and notebook 00's (tests/test_pipeline_diagram.py).
PIPELINE = """\
flowchart TD
    request["request: one image and a question<br/>00 serving and chat API"]
    request --> text["chat template and tokens<br/>02 tokens and chat template<br/>site: decoder.embed_tokens"]
    request --> pixels["resize, 14-px patches, rows of pixel_values<br/>03 pixels to patches<br/>sites: vision.pixels, vision.patch_embed"]
    subgraph model["the model: every module and parameter in 01 structure and parameters"]
        pixels --> blocks["2D rotary, windows, vision blocks<br/>04 vision rotary and windows<br/>sites: vision.rotary.cos, vision.blocks.N.output"]
        blocks --> merger["2x2 patches into one token<br/>05 patch merger<br/>site: vision.merger.output"]
        merger --> embeds["image tokens take the image_pad places<br/>site: decoder.inputs_embeds"]
        text --> embeds
        embeds --> decoder["M-RoPE ids, decoder layers, GQA<br/>06 decoder and M-RoPE<br/>sites: decoder.position_ids, decoder.layers.N.output"]
        decoder --> attention["where the answer looks<br/>07 attention maps<br/>site: decoder.layers.N.self_attn"]
        decoder --> answer["final norm, lm_head, generate<br/>10 logit lens and generation<br/>sites: decoder.norm, logits"]
    end
    attention -.-> learned["08 how the toy learned to look"]
    attention -.-> used["09 does it use what it looks at"]
"""

NODE = r'(\w+)(?:\["([^"]*)"\])?'
EDGE = re.compile(rf"{NODE}\s*(-->|-\.->)\s*{NODE}$")
ALONE = re.compile(rf"{NODE}$")
SUBGRAPH = re.compile(rf"subgraph\s+{NODE}$")
FONT, LEADING, PAD, GAP = 9.0, 1.35, 8.0, (24.0, 34.0)  # points: label size, line height, box padding, (x, y) gaps


@dataclass
class Flowchart:
    """A parsed flowchart: ``labels`` {node id: label lines}, ``edges`` [(from, to, dotted)], ``groups``
    {subgraph id: (title, ids of the nodes first defined inside it)}."""

    labels: dict[str, list[str]] = field(default_factory=dict)
    edges: list[tuple[str, str, bool]] = field(default_factory=list)
    groups: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def parse(text: str) -> Flowchart:
    """The flowchart written in ``text`` (the subset in the module docstring); anything else is a ValueError
    naming the line."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1].split() not in (["flowchart", "TD"], ["flowchart", "TB"]):
        raise ValueError(f"first line {lines[0][1] if lines else ''!r}; expected 'flowchart TD' (top to bottom)")
    chart, group = Flowchart(), None

    def node(name: str, label: str | None) -> None:
        if label is not None and chart.labels.get(name, [name]) != [name]:
            raise ValueError(f"node {name!r} is labelled twice")
        if name not in chart.labels and group is not None:
            chart.groups[group][1].append(name)
        if label is not None or name not in chart.labels:
            chart.labels[name] = (label if label is not None else name).split("<br/>")

    for number, line in lines[1:]:
        if match := SUBGRAPH.match(line):
            if group is not None:
                raise ValueError(f"line {number}: {line!r}: a subgraph inside a subgraph is not supported")
            group = match[1]
            chart.groups[group] = (match[2] if match[2] is not None else group, [])
        elif line == "end" and group is not None:
            group = None
        elif match := EDGE.match(line):
            node(match[1], match[2])
            node(match[4], match[5])
            chart.edges.append((match[1], match[4], match[3] == "-.->"))
        elif match := ALONE.match(line):
            node(match[1], match[2])
        else:
            raise ValueError(f"line {number}: {line!r}; expected a node, an edge (--> or -.->), subgraph or end")
    if group is not None:
        raise ValueError(f"subgraph {group!r} has no end")
    return chart


def rank(chart: Flowchart) -> dict[str, int]:
    """Each node's row: the length of the longest edge path that reaches it (the edges must not form a cycle)."""
    rows = dict.fromkeys(chart.labels, 0)
    for _ in range(len(rows)):  # a path is at most as long as the number of nodes
        moved = False
        for a, b, _ in chart.edges:
            if rows[b] < rows[a] + 1:
                rows[b], moved = rows[a] + 1, True
        if not moved:
            return rows
    raise ValueError(f"the edges {chart.edges} form a cycle; a flowchart drawn top to bottom needs none")


def box_size(lines: list[str]) -> tuple[float, float]:
    """(width, height) in points of a box around ``lines`` at the label font."""
    font = FontProperties(size=FONT)
    width = max(TextToPath().get_text_width_height_descent(line, font, ismath=False)[0] for line in lines)
    return width + 2 * PAD, len(lines) * FONT * LEADING + 2 * PAD


def layout(chart: Flowchart) -> dict[str, tuple[float, float, float, float]]:
    """{node id: (centre x, centre y, width, height)} in points, y downwards: rows by ``rank``; in a row, nodes
    near the mean x of the nodes that point to them, in order of that mean and never overlapping."""
    rows, sizes = rank(chart), {name: box_size(lines) for name, lines in chart.labels.items()}
    heights = [max(sizes[n][1] for n in rows if rows[n] == r) for r in range(max(rows.values()) + 1)]
    tops = [sum(heights[:r]) + r * GAP[1] for r in range(len(heights))]
    place = {}
    for r, height in enumerate(heights):
        members = [n for n in chart.labels if rows[n] == r]
        wanted = {n: _mean([place[a][0] for a, b, _ in chart.edges if b == n]) for n in members}
        members.sort(key=lambda n: wanted[n])
        width = sum(sizes[n][0] for n in members) + GAP[0] * (len(members) - 1)
        x = _mean(list(wanted.values())) - width / 2
        for n in members:
            x = max(x, wanted[n] - width / 2)  # a node alone in its row sits under its parents
            place[n] = (x + sizes[n][0] / 2, tops[r] + height / 2, *sizes[n])
            x += sizes[n][0] + GAP[0]
    return place


def _frame(boxes: list[tuple[float, float, float, float]], title: bool = False) -> tuple[float, float, float, float]:
    """(centre x, centre y, width, height) of a rectangle around ``boxes`` with a margin (and room for a title)."""
    x0 = min(x - w / 2 for x, _, w, _ in boxes) - PAD
    x1 = max(x + w / 2 for x, _, w, _ in boxes) + PAD
    y0 = min(y - h / 2 for _, y, _, h in boxes) - PAD - (FONT * LEADING if title else 0)
    y1 = max(y + h / 2 for _, y, _, h in boxes) + PAD
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def draw(text: str) -> Figure:
    """The flowchart written in ``text`` as a Figure, one point of layout to one point of paper."""
    chart = parse(text)
    place = layout(chart)
    frames = {g: _frame([place[n] for n in members], title=True) for g, (_, members) in chart.groups.items()}
    x, y, w, h = _frame([*place.values(), *frames.values()])
    figure = Figure(figsize=(w / 72, h / 72))
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set(xlim=(x - w / 2, x + w / 2), ylim=(y + h / 2, y - h / 2))  # y downwards, as laid out
    axis.axis("off")
    for g, (x, y, w, h) in frames.items():
        axis.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=6",
                                      fc="#f4f1ea", ec="0.6", lw=0.8))
        axis.text(x - w / 2 + PAD, y - h / 2 + PAD / 2, chart.groups[g][0], fontsize=FONT, va="top", style="italic")
    boxes = {}
    for name, (x, y, w, h) in place.items():
        boxes[name] = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=4",
                                     fc="#e8eef8", ec="#3a5a8c", lw=1)
        axis.add_patch(boxes[name])
        axis.text(x, y, "\n".join(chart.labels[name]), fontsize=FONT, ha="center", va="center", linespacing=LEADING)
    for a, b, dotted in chart.edges:
        axis.add_patch(FancyArrowPatch(place[a][:2], place[b][:2], patchA=boxes[a], patchB=boxes[b],
                                       arrowstyle="-|>", mutation_scale=10, lw=1, color="0.25",
                                       linestyle=(0, (3, 2)) if dotted else "solid"))
    return figure
