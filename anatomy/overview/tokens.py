"""Tokens: the special ones, a prompt token by token, and what an image costs.

Qwen2.5-VL's tokenizer is the Qwen2.5 byte-level BPE (151,643 ordinary tokens)
plus 22 added tokens, ids 151643-151664; the first 14 are special. An image
becomes one ``<|image_pad|>`` per 28x28 pixel cell of the resized image (a 2x2
group of 14 px patches, merged into one token), between ``<|vision_start|>``
and ``<|vision_end|>``.

>>> specimen = anatomy.load("tiny")
>>> image_token_count(specimen, 480, 640)   # resized to 476 x 644: 17 x 23 cells of 28 px
391
>>> token_runs(specimen, [151652, 151655, 151655, 151655, 151653])
[TokenRun(id=151652, text='<|vision_start|>', count=1, special=True),
 TokenRun(id=151655, text='<|image_pad|>', count=3, special=True),
 TokenRun(id=151653, text='<|vision_end|>', count=1, special=True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import torch

from anatomy.lab.tables import Table
from anatomy.model import image_processor_of, tokenizer_of
from anatomy.processor import check_size, resize_plan

ROLES = {  # what each added token is for
    "<|endoftext|>": "end of a document in pre-training; the pad token",
    "<|im_start|>": "opens a chat turn; the role (system, user, assistant) follows",
    "<|im_end|>": "closes a chat turn; the eos token, generation stops here",
    "<|object_ref_start|>": "opens a phrase naming an object (grounding)",
    "<|object_ref_end|>": "closes a phrase naming an object (grounding)",
    "<|box_start|>": "opens box coordinates (grounding)",
    "<|box_end|>": "closes box coordinates (grounding)",
    "<|quad_start|>": "opens a quadrilateral, 4 corner points (text regions)",
    "<|quad_end|>": "closes a quadrilateral",
    "<|vision_start|>": "opens an image or a video",
    "<|vision_end|>": "closes an image or a video",
    "<|vision_pad|>": "reserved vision placeholder; the processor does not use it",
    "<|image_pad|>": "one per 28x28 px cell of an image; replaced by a vision feature",
    "<|video_pad|>": "one per 2 frames x 28x28 px of a video; replaced by a vision feature",
    "<tool_call>": "opens a function call the model writes (tool use)",
    "</tool_call>": "closes a function call",
    "<|fim_prefix|>": "fill-in-the-middle: the code before the gap",
    "<|fim_middle|>": "fill-in-the-middle: the gap the model writes",
    "<|fim_suffix|>": "fill-in-the-middle: the code after the gap",
    "<|fim_pad|>": "fill-in-the-middle: padding",
    "<|repo_name|>": "repository-level code: the repository's name follows",
    "<|file_sep|>": "repository-level code: a new file starts",
}


def special_tokens(specimen) -> Table:
    """The added tokens, read from the tokenizer: id, content, special flag, what it is set as, role.

    All added tokens are matched whole, never split by the BPE; ``decode(ids,
    skip_special_tokens=True)`` drops the special ones and keeps the others
    (``<tool_call>``, ``<|fim_prefix|>``...) in the text.
    """
    tokenizer = tokenizer_of(specimen)
    named = {tokenizer.eos_token: "eos_token", tokenizer.pad_token: "pad_token"}
    rows = [
        [str(i), t.content, "yes" if t.special else "no", named.get(t.content, ""), ROLES.get(t.content, "")]
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
    ]
    return Table(["id", "content", "special", "set as", "role"], rows, title="Added tokens")


@dataclass(frozen=True)
class TokenRun:
    """One token, or a run of one special token repeated ``count`` times."""

    id: int
    text: str  # the token as text: "<|image_pad|>", " world", "\n"
    count: int
    special: bool


def token_runs(specimen, tokens) -> list[TokenRun]:
    """Tokenize ``tokens`` (text, or ids: a list or a (seq,) / (1, seq) tensor) and fold
    repeated special tokens into runs: 391 ``<|image_pad|>`` -> one run of count 391."""
    tokenizer = tokenizer_of(specimen)
    ids = _ids(tokenizer, tokens)
    special = set(tokenizer.all_special_ids)
    runs: list[TokenRun] = []
    for i in ids:
        if runs and runs[-1].id == i and i in special:
            runs[-1] = TokenRun(i, runs[-1].text, runs[-1].count + 1, True)
        else:
            runs.append(TokenRun(i, _text(tokenizer, i), 1, i in special))
    return runs


def _ids(tokenizer, tokens) -> list[int]:
    """Text -> ids; a list of ids or a (seq,) / (1, seq) tensor -> a list of ids."""
    if isinstance(tokens, str):
        return tokenizer(tokens).input_ids
    if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) and tokens.dim() == 1 else tokens
    if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < len(tokenizer) for i in ids):
        expected = f"expected text, or ids in [0, {len(tokenizer)}) as a list or a 1-row tensor"
        raise ValueError(f"tokens={tokens!r:.80}; {expected}")
    return ids


def _text(tokenizer, i: int) -> str:
    """The token's text; a piece of a multi-byte character shows as its byte-level form (``Ã¤``)."""
    text = tokenizer.decode([i])
    return tokenizer.convert_ids_to_tokens(i) if "\ufffd" in text else text


PALETTE = ("#dbeafe", "#fde68a", "#bbf7d0", "#fbcfe8")  # ordinary tokens cycle through these
SPECIAL_STYLE = "background:#1f2937;color:#f9fafb;font-weight:bold"
BOX = "border-radius:3px;padding:1px 1px;margin:0 1px;white-space:pre"


def token_html(specimen, tokens) -> str:
    """Tokens as coloured boxes (HTML); special tokens dark, a run of one shown once with ``×count``.

    Hover a box for its id. A newline token shows as ``↵`` and breaks the line.
    Display in a notebook with ``IPython.display.HTML(token_html(specimen, ids))``.
    """
    runs = token_runs(specimen, tokens)
    boxes = []
    for k, run in enumerate(runs):
        style = SPECIAL_STYLE if run.special else f"background:{PALETTE[k % len(PALETTE)]}"
        label = escape(run.text.replace("\n", "↵")) + (f" ×{run.count}" if run.count > 1 else "")
        title = f"id {run.id}" + (f", {run.count} times" if run.count > 1 else "")
        boxes.append(f"<span title='{title}' style='{style};{BOX}'>{label}</span>" + "<br>" * run.text.count("\n"))
    total = sum(run.count for run in runs)
    head = f"<div style='margin-bottom:4px'><b>{total} tokens</b>, special ones dark, repeats folded (×n)</div>"
    return f"{head}<div style='font-family:monospace;line-height:2.2'>{''.join(boxes)}</div>"


def resized_size(specimen, height: int, width: int) -> tuple[int, int]:
    """(H', W'): the size the image processor resizes an H x W image to (multiples of 28, area in range).

    >>> resized_size(specimen, 480, 640)
    (476, 644)
    """
    ip = image_processor_of(specimen)
    return resize_plan(height, width, ip.size["shortest_edge"], ip.size["longest_edge"]).resized


def image_token_count(specimen, height: int, width: int) -> int:
    """How many ``<|image_pad|>`` tokens an H x W image costs: its 14 px patches / (2x2 merge).

    >>> image_token_count(specimen, 1080, 1920)   # 1092 x 1932 px -> 39 x 69 tokens
    2691
    """
    check_size(height, width)
    ip = image_processor_of(specimen)
    return ip.get_number_of_image_patches(height, width) // ip.merge_size**2


def image_cost_table(specimen, sizes) -> Table:
    """Token cost of each (height, width) in ``sizes``: resized size, patches, tokens."""
    pairs = isinstance(sizes, (list, tuple)) and all(isinstance(s, (list, tuple)) and len(s) == 2 for s in sizes)
    if not sizes or not pairs:
        raise ValueError(f"sizes={sizes!r}; expected a list of (height, width) pairs, e.g. [(480, 640)]")
    merge = image_processor_of(specimen).merge_size
    rows = []
    for height, width in sizes:
        tokens = image_token_count(specimen, height, width)
        new_h, new_w = resized_size(specimen, height, width)
        rows.append([f"{height} x {width}", f"{new_h} x {new_w}", tokens * merge**2, tokens])
    columns = ["image (H x W)", "resized (H' x W')", "14 px patches", "<|image_pad|> tokens"]
    return Table(columns, rows, title="What an image costs")
