"""The module tree: what ``print(model)`` shows, then and now.

The reference note printed the 7B as transformers 4.49 laid it out
(``overview/qwen2_5_vl_7b_transformers_4_49.txt``). Today's transformers nests the vision tower
and the decoder under ``model``, merges the attention classes and drops the
per-layer rotary module. This module parses both trees into the same form and
maps one onto the other without hard-wiring either layout: the vision tower is
found by ``anatomy.model.tower_paths``, the rule every lesson uses.

>>> old = parse_tree(reference_tree_text())
>>> old["visual.blocks.7.attn.qkv"]
TreeNode(path='visual.blocks.7.attn.qkv', cls='Linear', args='in_features=1280, out_features=3840, bias=True')
>>> today = model_tree(anatomy.load("7B"))
>>> row = counterparts(old, today)[1]   # one row per 4.49 module: where it lives now, what changed
>>> row.old.path, row.new.path, row.change
('visual', 'model.visual', 'moved')
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass
from html import escape
from importlib import resources

from anatomy.lab.tables import Table
from anatomy.model import join, tower_paths, unwrap

# Why a class name changed between transformers 4.49 and today; keyed by (4.49 class, today's class).
CLASS_NOTES = {
    ("Qwen2_5_VLSdpaAttention", "Qwen2_5_VLAttention"): "one attention class; config._attn_implementation picks "
    "the kernel (eager, sdpa, flash_attention_2)",
    ("Qwen2_5_VLVisionSdpaAttention", "Qwen2_5_VLVisionAttention"): "one vision attention class; the kernel is "
    "picked by config._attn_implementation",
    ("Qwen2RMSNorm", "Qwen2_5_VLRMSNorm"): "the same RMSNorm, now defined in the Qwen2.5-VL file",
    ("SiLU", "SiLUActivation"): "transformers' own SiLU wrapper (ACT2FN['silu']), same function",
    ("Qwen2_5_VisionRotaryEmbedding", "Qwen2_5_VLVisionRotaryEmbedding"): "renamed, same 2D rotary table",
    ("Qwen2_5_VLModel", "Qwen2_5_VLTextModel"): "the decoder; the name Qwen2_5_VLModel now means the wrapper of "
    "vision tower + decoder",
}
# Why a module exists on one side only; keyed by its class.
ONE_SIDED_NOTES = {
    "Qwen2_5_VLRotaryEmbedding": "gone from every layer: the decoder's one rotary_emb computes cos/sin once per "
    "forward and hands them to all layers",
    "Qwen2_5_VLModel": "new wrapper under `model`: holds `visual` and `language_model`, inserts image features "
    "into the token embeddings",
}


@dataclass(frozen=True)
class TreeNode:
    """One module as ``print(model)`` shows it: ``(path): cls(args)``."""

    path: str  # dotted path, "" for the root: "visual.blocks.7.attn.qkv"
    cls: str  # class name: "Linear"
    args: str  # what the class prints in its brackets: "in_features=1280, out_features=3840, bias=True"


def reference_tree_text() -> str:
    """The reference note's ``print(model)`` of the 7B under transformers 4.49 (shipped beside this module)."""
    return (resources.files("anatomy") / "overview" / "qwen2_5_vl_7b_transformers_4_49.txt").read_text()


def tree_text(model, depth: int | None = None) -> str:
    """``print(model)`` as a string; with ``depth``, modules below that depth are folded to ``Class(...)``.

    >>> print(tree_text(anatomy.load("tiny"), depth=1))
    Qwen2_5_VLForConditionalGeneration(
      (model): Qwen2_5_VLModel(...)
      (lm_head): Linear(in_features=128, out_features=151936, bias=False)
    )
    """
    if depth is not None and (not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth={depth!r}; expected None or an integer >= 0")
    lines = repr(unwrap(model, qwen=False)).splitlines()
    if depth is None:
        return "\n".join(lines)
    kept = []
    for line in lines:
        level = (len(line) - len(line.lstrip())) // 2
        if level < depth or (level == depth and line.strip() != ")"):
            kept.append(line + "...)" if level == depth and line.endswith("(") else line)
    return "\n".join(kept)


_CHILD = re.compile(r"^\s*\((?P<key>[^)]+)\): (?:\d+ x )?(?P<cls>\w+)\((?P<rest>.*)$")


def parse_tree(text: str) -> dict[str, TreeNode]:
    """Parse ``print(model)`` text into ``{path: TreeNode}``; ``(0-31): 32 x Block`` expands to 32 paths.

    >>> parse_tree("M(\\n  (0-1): 2 x Linear(in_features=2, out_features=2, bias=True)\\n)")["1"].cls
    'Linear'
    """
    if not isinstance(text, str) or not re.match(r"^\w+\($", text.splitlines()[0] if text else ""):
        raise ValueError(f"expected print(model) text starting with 'ClassName(', got {str(text)[:40]!r}")
    lines = text.splitlines()
    nodes = {"": TreeNode("", lines[0][:-1], "")}
    stack = [[""]]  # the paths of the module whose children are being read; several for a "(0-31)" range
    for line in lines[1:]:
        if line.strip() == ")":
            stack.pop()
            continue
        match = _CHILD.match(line)
        if match is None:
            raise ValueError(f"cannot read line {line!r}; expected '(name): ClassName(...)' or ')'")
        paths = [join(parent, key) for parent in stack[-1] for key in _keys(match["key"])]
        opens = match["rest"] == ""
        for path in paths:
            nodes[path] = TreeNode(path, match["cls"], "" if opens else match["rest"][:-1])
        if opens:
            stack.append(paths)
    return nodes


def _keys(key: str) -> list[str]:
    """``"0-31"`` -> ``["0", ..., "31"]``; any other key stays as it is."""
    first, dash, last = key.partition("-")
    if dash and first.isdigit() and last.isdigit():
        return [str(i) for i in range(int(first), int(last) + 1)]
    return [key]


def model_tree(model) -> dict[str, TreeNode]:
    """``{path: TreeNode}`` straight from ``named_modules()``: what ``parse_tree(repr(model))`` should give."""
    return {
        path: TreeNode(path, type(module).__name__, module.extra_repr())
        for path, module in unwrap(model, qwen=False).named_modules()
    }


@dataclass(frozen=True)
class Counterpart:
    """A module of the old tree and its counterpart in the new one (``None`` on the side it is missing)."""

    old: TreeNode | None
    new: TreeNode | None

    @property
    def change(self) -> str:
        """``"same"``, ``"removed"``, ``"added"`` or any of ``"moved"``, ``"class renamed"``, ``"reshaped"``."""
        if self.old is None or self.new is None:
            return "added" if self.old is None else "removed"
        differs = {
            "moved": self.old.path != self.new.path,
            "class renamed": self.old.cls != self.new.cls,
            "reshaped": self.old.args != self.new.args,
        }
        return ", ".join(name for name, flag in differs.items() if flag) or "same"

    @property
    def note(self) -> str:
        if self.old is not None and self.new is not None:
            return CLASS_NOTES.get((self.old.cls, self.new.cls), "")
        return ONE_SIDED_NOTES.get((self.old or self.new).cls, "")


def counterparts(old: dict[str, TreeNode], new: dict[str, TreeNode]) -> list[Counterpart]:
    """Pair every module of ``old`` with the module at its translated path in ``new``.

    Paths move with their tower: everything under the old vision tower moves under
    the new one, the same for the decoder; other paths (``lm_head``) stay. Modules of
    ``new`` that nothing maps to come last, as ``"added"``.

    >>> rows = counterparts(parse_tree(reference_tree_text()), model_tree(anatomy.load("7B")))
    >>> [(r.old.path, r.new.path) for r in rows if r.old and r.old.path == "model.norm"]
    [('model.norm', 'model.language_model.norm')]
    """
    if not (isinstance(old, dict) and isinstance(new, dict)):
        kinds = f"{type(old).__name__}, {type(new).__name__}"
        raise TypeError(f"expected two trees from parse_tree/model_tree, got {kinds}")
    moves = [(before, tower_paths(new)[tower]) for tower, before in tower_paths(old).items()]
    rows = [Counterpart(node, new.get(_translate(node.path, moves))) for node in old.values()]
    matched = {row.new.path for row in rows if row.new is not None}
    return rows + [Counterpart(None, node) for path, node in new.items() if path not in matched]


def _translate(path: str, moves: list[tuple[str, str]]) -> str:
    """``"model.norm"`` with ``[("model", "model.language_model")]`` -> ``"model.language_model.norm"``."""
    for before, after in moves:
        if path == before or path.startswith(before + "."):
            return after + path[len(before) :]
    return path


def counterpart_table(rows: list[Counterpart], only_changes: bool = False) -> Table:
    """One line per distinct module (layer indices folded to ``{i}``), with what changed and why."""
    if not isinstance(rows, list) or not all(isinstance(row, Counterpart) for row in rows):
        raise TypeError(f"expected the list that counterparts(old, new) returns, got {type(rows).__name__}")
    lines: dict[tuple, list] = {}
    for row in rows:
        if only_changes and row.change == "same":
            continue
        old, new = row.old or TreeNode("", "", ""), row.new or TreeNode("", "", "")
        key = (_fold(old.path), _fold(new.path), row.change)
        lines.setdefault(key, [key[0], old.cls, key[1], new.cls, row.change, 0, row.note])[5] += 1
    columns = ["4.49 path", "4.49 class", "today's path", "today's class", "change", "modules", "why"]
    return Table(columns, list(lines.values()), title="Seed tree (transformers 4.49) -> today's tree")


def _fold(path: str) -> str:
    """``"visual.blocks.7.attn"`` -> ``"visual.blocks.{i}.attn"``."""
    return re.sub(r"\.\d+(?=\.|$)", ".{i}", path)


_TAG_COLOURS = {"=": "", "~": "#fff3c4", "-": "#ffd7d7", "+": "#d7f5d7"}


@dataclass
class SideBySide:
    """Two trees line by line. ``rows`` holds ``(tag, left, right)``; tag ``=`` same line,
    ``~`` changed, ``-`` only on the left, ``+`` only on the right."""

    rows: list[tuple[str, str, str]]
    titles: tuple[str, str]

    def __str__(self) -> str:
        lines = [("|", *self.titles), *self.rows]
        width = max(len(left) for _, left, _ in lines)
        return "\n".join(f"{left:<{width}} {tag} {right}".rstrip() for tag, left, right in lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cell = "<td style='font-family:monospace;white-space:pre;text-align:left;background:{}'>{}</td>"
        body = "".join(
            "<tr>" + "".join(cell.format(_TAG_COLOURS[tag], escape(text)) for text in (left, right)) + "</tr>"
            for tag, left, right in self.rows
        )
        head = "".join(f"<th style='text-align:left'>{escape(title)}</th>" for title in self.titles)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def side_by_side(left: str, right: str, titles: tuple[str, str] = ("transformers 4.49", "today")) -> SideBySide:
    """Align two ``print(model)`` texts line by line, ignoring indentation when matching.

    >>> side_by_side("A(\\n  (x): SiLU()\\n)", "A(\\n  (x): SiLUActivation()\\n)").rows[1]
    ('~', '  (x): SiLU()', '  (x): SiLUActivation()')
    """
    if not (isinstance(left, str) and isinstance(right, str)):
        raise TypeError(f"expected two print(model) strings, got {type(left).__name__} and {type(right).__name__}")
    a, b = left.splitlines(), right.splitlines()
    matcher = difflib.SequenceMatcher(None, [line.strip() for line in a], [line.strip() for line in b], autojunk=False)
    rows = [
        (_tag(op, x, y), x, y)
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
        for x, y in itertools.zip_longest(a[i1:i2], b[j1:j2], fillvalue="")  # a replace may pair n lines with m
    ]
    return SideBySide(rows, titles)


def _tag(op: str, left: str, right: str) -> str:
    """``"="`` same line, ``"~"`` changed, ``"-"`` only on the left, ``"+"`` only on the right."""
    if op == "equal":
        return "="
    if left and right:
        return "~"
    return "-" if left else "+"

