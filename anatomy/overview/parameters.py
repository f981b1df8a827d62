"""Where the parameters live: counts per component and part, memory, torchinfo.

Every parameter is put in one component, in data-flow order, and in one part of
it. A tensor shared by two modules (the 3B ties ``lm_head.weight`` to the token
embedding) is counted once, where it first appears, and the other module is
shown as tied.

>>> table = count_parameters(anatomy.load("7B"))
>>> table.total                      # == sum(p.numel() for p in model.parameters())
8292166656
>>> table.by_component()["decoder layers"]   # 28 layers: 78.7% of the model
6525618176
"""

from __future__ import annotations

from dataclasses import dataclass

import torchinfo
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from anatomy.lab.tables import Table
from anatomy.model import PUBLISHED_SIZES, head_path, skeleton, tower_paths, unwrap

VISION_COMPONENTS = ("patch embedding", "vision blocks", "merger")
COMPONENTS = (*VISION_COMPONENTS, "token embedding", "decoder layers", "final norm", "lm_head")
BYTES_PER_PARAMETER = {"bfloat16": 2, "float16": 2, "float32": 4, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class PartCount:
    """Parameters of one part of one component."""

    component: str  # one of COMPONENTS: "decoder layers"
    part: str  # "attention q_proj", "MLP", "norms", "ln_q", "" for a one-tensor component
    count: int  # number of parameters; a shared tensor counts in its first module only
    note: str = ""  # "tied to token embedding: same tensor as model.language_model.embed_tokens.weight"


@dataclass(frozen=True)
class ParameterTable:
    """Parameter counts of a model, part by part; prints as text, renders as HTML."""

    source: str  # what was counted: "7B", "tiny", or the model's class name
    rows: tuple[PartCount, ...]

    @property
    def total(self) -> int:
        return sum(row.count for row in self.rows)

    def by_component(self) -> dict[str, int]:
        """``{"patch embedding": 1505280, ...}`` in data-flow order."""
        totals = dict.fromkeys(COMPONENTS, 0)
        for row in self.rows:
            totals[row.component] += row.count
        return totals

    def table(self) -> Table:
        lines = []
        for component, count in self.by_component().items():
            rows = [row for row in self.rows if row.component == component]
            lines.append([component, "", count, _share(count, self.total), " ".join(r.note for r in rows)])
            lines += [["", r.part, r.count, _share(r.count, self.total), ""] for r in rows if r.part]
        lines.append(["total", "", self.total, "100.0%", "shared tensors counted once"])
        return Table(["component", "part", "parameters", "share", "note"], lines, title=f"{self.source}: parameters")

    def __str__(self) -> str:
        return str(self.table())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def _share(count: int, total: int) -> str:
    """``_share(1, 400)`` -> ``"0.25%"``: two decimals below 1%, one above."""
    percent = 100 * count / total
    return f"{percent:.1f}%" if percent >= 1 else f"{percent:.2f}%"


def count_parameters(model) -> ParameterTable:
    """Count the parameters of a Qwen2.5-VL (a ``Specimen`` or the bare model), part by part.

    Works on the meta device: ``numel`` needs no weights.
    """
    source = getattr(model, "source", type(model).__name__)
    model = unwrap(model)
    prefixes = _prefixes(model)
    rows: dict[tuple[str, str], int] = {}
    for path, tensor in model.named_parameters():  # yields a shared tensor once, under its first name
        key = _classify(model, prefixes, path)
        rows[key] = rows.get(key, 0) + tensor.numel()
    ordered = sorted(rows.items(), key=lambda item: COMPONENTS.index(item[0][0]))
    counts = [PartCount(component, part, count) for (component, part), count in ordered]
    return ParameterTable(source, tuple(counts + _tied_rows(model, prefixes)))


def _prefixes(model: nn.Module) -> dict[str, str]:
    """``{component: module path}``, found by structure, not by a hard-wired layout."""
    vision, decoder = tower_paths(model).values()
    head = head_path(model)
    return {
        "patch embedding": f"{vision}.patch_embed",
        "vision blocks": f"{vision}.blocks",
        "merger": f"{vision}.merger",
        "token embedding": f"{decoder}.embed_tokens",
        "decoder layers": f"{decoder}.layers",
        "final norm": f"{decoder}.norm",
        "lm_head": head,
    }


def _classify(model: nn.Module, prefixes: dict[str, str], path: str) -> tuple[str, str]:
    """``"model.language_model.layers.3.self_attn.k_proj.bias"`` -> ``("decoder layers", "attention k_proj")``."""
    for component, prefix in prefixes.items():
        if path.startswith(prefix + "."):
            rest = path[len(prefix) + 1 :].split(".")  # ["3", "self_attn", "k_proj", "bias"]
            if component in ("vision blocks", "decoder layers"):
                return component, _role(model.get_submodule(f"{prefix}.{rest[0]}.{rest[1]}"), rest[2])
            return component, rest[0] if len(rest) > 1 else ""
    raise ValueError(f"parameter {path!r} belongs to no known component; expected one of {COMPONENTS}")


def _role(module: nn.Module, child: str) -> str:
    """The part a child of a block belongs to, read from its class name: ``Qwen2MLP`` -> ``"MLP"``."""
    cls = type(module).__name__
    if "Attention" in cls:
        return f"attention {child}"  # one row per projection: q_proj, k_proj, ... or qkv, proj
    if "MLP" in cls:
        return "MLP"
    return "norms" if "Norm" in cls else cls


def _tied_rows(model: nn.Module, prefixes: dict[str, str]) -> list[PartCount]:
    """A zero row for every tensor that another module already owns (counted there)."""
    rows = []
    for path, owner, _ in shared_tensors(model):
        component, part = _classify(model, prefixes, path)
        owner_component = _classify(model, prefixes, owner)[0]
        rows.append(PartCount(component, part, 0, f"tied to {owner_component}: same tensor as {owner}"))
    return rows


def shared_tensors(model) -> list[tuple[str, str, int]]:
    """``(path, path of its first holder, numel)`` for every parameter that is another one.

    >>> shared_tensors(anatomy.load("3B"))
    [('lm_head.weight', 'model.language_model.embed_tokens.weight', 311164928)]
    """
    owners: dict[int, str] = {}
    shared = []
    for path, tensor in unwrap(model).named_parameters(remove_duplicate=False):
        if id(tensor) in owners:
            shared.append((path, owners[id(tensor)], tensor.numel()))
        owners.setdefault(id(tensor), path)
    return shared


def compare_sizes(sizes=PUBLISHED_SIZES) -> Table:
    """Components side by side for released sizes (default: all four), counted on their skeletons.

    >>> print(compare_sizes(["3B", "7B"]))   # one column per size, one row per component, then the total
    """
    if isinstance(sizes, str) or not sizes or not all(s in PUBLISHED_SIZES for s in sizes):
        raise ValueError(f"sizes={sizes!r}; expected a list of released sizes from {PUBLISHED_SIZES}, e.g. ['7B']")
    tables = [count_parameters(skeleton(size)) for size in sizes]
    rows = [[c, *(t.by_component()[c] for t in tables)] for c in COMPONENTS]
    rows.append(["total", *(t.total for t in tables)])
    vision = [sum(t.by_component()[c] for c in VISION_COMPONENTS) for t in tables]
    rows.append(["vision share", *(_share(v, t.total) for v, t in zip(vision, tables))])
    notes = tuple(f"{t.source}: {r.note}" for t in tables for r in t.rows if r.note)
    return Table(["component", *sizes], rows, title="Parameters by size", notes=notes)


def weight_memory(model_or_count) -> Table:
    """Memory the weights alone take in each dtype (no activations, KV cache or quantisation scales).

    >>> weight_memory(8_292_166_656).rows[0]
    ['bfloat16', 2, 16584333312, '15.45 GiB']
    """
    if isinstance(model_or_count, (bool, float, str)) or model_or_count is None:
        got = f"{type(model_or_count).__name__} {model_or_count!r}"
        raise TypeError(f"expected a model, a Specimen or a parameter count (int), got {got}")
    count = model_or_count if isinstance(model_or_count, int) else count_parameters(model_or_count).total
    if count < 0:
        raise ValueError(f"parameter count {count} is negative; expected a model or a count >= 0")
    sizes = BYTES_PER_PARAMETER.items()
    rows = [[dtype, size, int(count * size), f"{count * size / 2**30:.2f} GiB"] for dtype, size in sizes]
    return Table(["dtype", "bytes/param", "bytes", "size"], rows, title=f"Weights of {count:,} parameters")


@dataclass(frozen=True)
class DoubleCount:
    """torchinfo's total next to the true one. torchinfo adds up every module's own
    parameters, so a tensor owned by two modules (tied embeddings) is added twice."""

    torchinfo_total: int  # torchinfo.summary(model).total_params
    true_total: int  # sum(p.numel() for p in model.parameters()): each tensor once
    shared: tuple[tuple[str, str, int], ...]  # (path, path of the same tensor, numel)

    @property
    def difference(self) -> int:
        return self.torchinfo_total - self.true_total

    def __str__(self) -> str:
        head = f"torchinfo total {self.torchinfo_total:,} - true total {self.true_total:,} = {self.difference:,}"
        if not self.shared:
            return f"{head}: no tensor is shared, the totals agree."
        ties = "; ".join(f"{a} is {b} ({n:,} values)" for a, b, n in self.shared)
        return f"{head}: {ties}. torchinfo counts a shared tensor once per module that holds it."


def double_count(model) -> DoubleCount:
    """Compare torchinfo's parameter total with the true one and name the shared tensors.

    >>> double_count(anatomy.load("3B")).difference   # the tied 151936 x 2048 embedding, counted twice
    311164928
    """
    model = unwrap(model)
    stats = torchinfo.summary(model, depth=1, verbose=0)
    return DoubleCount(stats.total_params, sum(p.numel() for p in model.parameters()), tuple(shared_tensors(model)))


def torchinfo_summary(model, depth: int = 3) -> str:
    """``torchinfo.summary`` of the model with no input (so no shapes, only modules and
    parameter counts), ``depth`` levels deep, followed by the double-count check."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth={depth!r}; expected an integer >= 0")
    model = unwrap(model)
    return f"{torchinfo.summary(model, depth=depth, verbose=0)}\n{double_count(model)}"


FAMILY_COLOURS = {"attention": "#4C72B0", "MLP": "#DD8452", "norm": "#8C8C8C", "embedding": "#55A868"}


def plot_parameters(table: ParameterTable) -> Figure:
    """Horizontal bars, one per component in data-flow order, split into parts coloured by kind
    (attention, MLP, norm, embedding); a dashed line parts the vision tower from the language model."""
    if not isinstance(table, ParameterTable):
        raise TypeError(f"expected the ParameterTable of count_parameters(model), got {type(table).__name__}")
    fig = Figure(figsize=(9, 4.8), layout="constrained")  # no pyplot: shown once in a notebook, nothing global
    ax = fig.subplots()
    biggest = max(table.by_component().values())
    for y, component in enumerate(COMPONENTS):
        _draw_bar(ax, y, [row for row in table.rows if row.component == component], table.total, biggest)
    ax.axhline(len(VISION_COMPONENTS) - 0.5, color="black", linewidth=0.6, linestyle="--")
    ax.set(yticks=range(len(COMPONENTS)), yticklabels=COMPONENTS, ylim=(len(COMPONENTS) - 0.5, -0.5))  # top down
    ax.set(xlim=(0, 1.3 * biggest), xlabel="parameters")
    ax.xaxis.set_major_formatter(lambda x, _: _human(x))
    ax.legend(handles=[Patch(color=c, label=f) for f, c in FAMILY_COLOURS.items()], loc="lower right", fontsize=8)
    ax.set_title(f"{table.source}: where the {_human(table.total)} parameters live (vision above the dashed line)")
    return fig


BAR = 0.56  # bar height, in rows: the space above each bar holds the names of its narrow parts


def _draw_bar(ax, y: int, rows: list[PartCount], total: int, biggest: int) -> None:
    """One component's bar: a segment per part, then its count and share. A wide segment is named inside; a
    narrow one that still shows (q_proj, k_proj, ...) is named above the bar, names side by side left to
    right, each joined to its segment by a line."""
    left, free = 0, 0.0  # free: where the next name above the bar may start
    char = 0.6 * 8 / 72 * 1.3 * biggest / 7.0  # one 8-pt character, in parameters (the axes are ~7 in wide)
    for row in (row for row in rows if row.count):
        ax.barh(y, row.count, BAR, left=left, color=FAMILY_COLOURS[_family(row)], edgecolor="white")
        name, middle = row.part.removeprefix("attention "), left + row.count / 2
        if row.count > 0.06 * biggest:
            ax.text(middle, y, name, ha="center", va="center", fontsize=8, color="white")
        elif name and row.count > 0.003 * biggest:
            start = max(middle - len(name) * char / 2, free)
            ax.text(start, y - BAR / 2 - 0.16, name, ha="left", va="bottom", fontsize=8)
            ax.plot([start + len(name) * char / 2, middle], [y - BAR / 2 - 0.16, y - BAR / 2], color="0.3", lw=0.7)
            free = start + (len(name) + 1) * char
        left += row.count
    tied = " ".join(row.note.split(":")[0] for row in rows if row.note)  # "tied to token embedding"
    ax.text(left, y, f" {_human(left)} ({_share(left, total)}) {tied}", va="center", fontsize=8)


def _family(row: PartCount) -> str:
    """What kind of weight a part is: ``"attention"``, ``"MLP"``, ``"norm"`` or ``"embedding"``."""
    if row.part.startswith("attention"):
        return "attention"
    if row.part.lower() == "mlp":
        return "MLP"
    if "norm" in row.part or "norm" in row.component or row.part == "ln_q":
        return "norm"
    return "embedding"


def _human(count: int) -> str:
    """``_human(8292166656)`` -> ``"8.29 B"``; ``_human(1505280)`` -> ``"1.51 M"``."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return str(count)
