"""A contrast: a clean and a corrupted prompt that differ in one thing, aligned cell by cell and token by token.

>>> one = pair(spec, "red_circle.png", "What colour is the circle?", corrupted_image="blue_circle.png")
>>> two = pair(spec, photo, "What colour is the car?", corrupted_question="What colour is the bus?")
>>> one.check(logit_diff(spec, "red", "blue"))     # prints both runs: metric, answer, grid, changed cells
>>> Contrast([one, two]).check(logit_diff(spec, ["red", "red"], ["blue", "white"]))   # one answer per pair

Pictures are whatever ``anatomy.inputs.encode`` takes: paths, URLs, PIL images, (H, W, 3) arrays.
A video (a ``Clip``, a (T, H, W, 3) array, a list of frames, a video file) is refused: one still
picture per prompt. The alignment rules:

- Image cells align by (row, col) of the merged-token grid (one decoder token per 28 x 28 px of the
  processed picture). The grids must agree (the same ``image_grid_thw``); when they do, the cells
  align whatever the pictures' original sizes, since the processor resized both to one size.
- Grids that differ are refused, unless ``match="resize"``: the corrupted picture is then resampled
  (bicubic, like the processor) to the clean picture's processed size, so that the grids agree.
- Pictures of different aspect ratios (width / height apart by more than ``ASPECT_TOLERANCE``) and
  different grids are refused, ``match`` or not: resampling one to the other would stretch it.
- Text tokens align from the end: the text after the picture (the question, then
  ``<|im_end|>\\n<|im_start|>assistant\\n``) counts back from the end of the prompt, the text before it
  (system message, user header, ``<|vision_start|>``) counts back from the picture. A position past
  the start of the other prompt's segment has no counterpart. ``positions={clean: corrupted}``
  replaces this with an explicit map of text positions (negative ones count from the end);
  unmapped text positions then have none.

``Pair.counterpart`` holds the result: for each clean position, its corrupted position, or -1.

Batches: pairs run together when their clean prompts share one ``Layout`` and their corrupted prompts
share one (``Layout.same_as``: length, grid, image token positions), one forward pass per side.
Pairs of other layouts form further groups, in the order they first appear; ``batch_size`` cuts a
group into batches of at most that many pairs. Nothing is padded, and every result comes back in
the pairs' order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anatomy.causal.edits import Layout
from anatomy.causal.metrics import as_metric, measure
from anatomy.inputs import DEFAULT_MAX_PIXELS, DEFAULT_SYSTEM, Prompt, encode, request_messages
from anatomy.processor import one_line, token_text
from anatomy.vision.video import Clip

SIDES = ("clean", "corrupted")
MATCHES = (None, "resize")
ASPECT_TOLERANCE = 1.02  # width / height of the two pictures may differ by this factor before resizing is refused
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")


@dataclass(eq=False)
class Pair:
    """Two prompts of one specimen, aligned: ``clean`` and ``corrupted`` (``anatomy.inputs.Prompt``).

    Attributes:
        counterpart: ``(S_clean,)`` long: the corrupted position aligned with each clean position, -1 for none.
        resized_from: the corrupted picture's (height, width) before ``match="resize"`` resampled it, else None.
    """

    spec: object = field(repr=False)
    clean: Prompt
    corrupted: Prompt
    counterpart: torch.Tensor
    resized_from: tuple[int, int] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of merged-token cells, the same in both prompts."""
        _, height, width = self.clean.grid_thw[0].tolist()
        merge = self.spec.config.vision_config.spatial_merge_size
        return height // merge, width // merge

    @property
    def changed(self) -> np.ndarray:
        """``(rows, cols)`` bool: the cells whose processed pixels differ between the two prompts."""
        differ = self.clean["pixel_values"] != self.corrupted["pixel_values"]  # (patches, 1176), processor order:
        rows, cols = self.grid  # each cell's merge x merge patches in a row, cells in raster order
        merge = self.spec.config.vision_config.spatial_merge_size
        differ = differ.reshape(-1, rows, cols, merge * merge * differ.shape[-1])  # (t, rows, cols, a cell's values)
        return differ.any(-1).any(0).cpu().numpy()

    def check(self, metric) -> Check:
        """``Contrast([self]).check(metric)``: print and return both runs' metric and answers, grid, changed cells."""
        return Contrast([self]).check(metric)


def pair(spec, image, question: str, *, corrupted_image=None, corrupted_question: str | None = None,
         match: str | None = None, positions: Mapping[int, int] | None = None, system: str | None = DEFAULT_SYSTEM,
         max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Pair:  # fmt: skip
    """A clean prompt (``image``, ``question``) and a corrupted one: another picture, another question, or both.

    ``corrupted_image`` / ``corrupted_question`` default to the clean ones. ``match="resize"`` resamples a
    corrupted picture of another grid (see the module's rules); ``positions`` maps clean text positions to
    corrupted ones explicitly. ``system=None`` leaves the system message out (as the toy was trained).
    Every refusal happens here, before the model runs.
    """
    corrupted_question = question if corrupted_question is None else corrupted_question
    _check_arguments(image, corrupted_image, question, corrupted_question, match)

    def prompt(picture, text: str) -> Prompt:
        return encode(spec, messages=request_messages(picture, text, system, max_pixels), max_pixels=max_pixels)

    clean = prompt(image, question)
    corrupted = prompt(image if corrupted_image is None else corrupted_image, corrupted_question)
    resized_from = None
    if not torch.equal(clean.grid_thw, corrupted.grid_thw):
        size = _resample_size(spec, clean, corrupted, match)
        resized_from = corrupted.image.height, corrupted.image.width
        corrupted = prompt(corrupted.image.resize(size, Image.Resampling.BICUBIC), corrupted_question)
    image_id = spec.config.image_token_id
    counterpart = _counterpart(clean["input_ids"][0].cpu(), corrupted["input_ids"][0].cpu(), image_id, positions)
    return Pair(spec, clean, corrupted, counterpart, resized_from)


def _check_arguments(image, corrupted_image, question, corrupted_question, match) -> None:
    if match not in MATCHES:
        raise ValueError(f"match={match!r}; expected one of {MATCHES}")
    _check_still(image, "image")
    if corrupted_image is not None:
        _check_still(corrupted_image, "corrupted_image")
    for name, text in (("question", question), ("corrupted_question", corrupted_question)):
        if not isinstance(text, str):
            raise TypeError(f"{name}={text!r}; expected a string")


def _check_still(image, name: str) -> None:
    """Refuse a missing picture, or a video where one still picture is expected."""
    if isinstance(image, Clip):
        what = f"a video (Clip of {image.num_frames} frames)"
    elif isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        what = f"a video: an array of shape {tuple(image.shape)} (frames, height, width, channels)"
    elif isinstance(image, (list, tuple)):
        what = f"a {type(image).__name__} of {len(image)} items (a video's frames, or several pictures)"
    elif isinstance(image, (str, Path)) and (str(image).lower().split("?")[0].endswith(VIDEO_SUFFIXES)
                                             or str(image).startswith("data:video/")):  # fmt: skip
        what = f"a video file, {str(image)[:80]!r}"
    elif image is None:
        what = "None"
    else:
        return
    raise ValueError(f"{name} is {what}; expected one still picture (a path, URL, PIL image or (H, W, 3) array): "
                     f"a contrast compares one picture per prompt")  # fmt: skip


def _resample_size(spec, clean: Prompt, corrupted: Prompt, match: str | None) -> tuple[int, int]:
    """The clean picture's processed (width, height), for PIL, to resample the corrupted one to; or the refusal."""
    (w1, h1), (w2, h2) = clean.image.size, corrupted.image.size
    stretch = (w1 * h2) / (w2 * h1)  # 1 when the aspect ratios agree
    patch, merge = spec.config.vision_config.patch_size, spec.config.vision_config.spatial_merge_size
    (_, rows, cols), (_, other_rows, other_cols) = clean.grid_thw[0].tolist(), corrupted.grid_thw[0].tolist()
    sizes = (f"clean {h1} x {w1} px (width/height {w1 / h1:.3f}, {rows // merge} x {cols // merge} cells), "
             f"corrupted {h2} x {w2} px (width/height {w2 / h2:.3f}, {other_rows // merge} x {other_cols // merge} "
             f"cells)")  # fmt: skip
    if not 1 / ASPECT_TOLERANCE <= stretch <= ASPECT_TOLERANCE:
        raise ValueError(f"the pictures' aspect ratios differ: {sizes}; resampling would stretch one, so their cells "
                         f"cannot align: crop the corrupted picture to width/height {w1 / h1:.3f} "
                         f"(within {ASPECT_TOLERANCE - 1:.0%})")  # fmt: skip
    if match != "resize":
        raise ValueError(f"the pictures' grids differ: {sizes}; cells align on one grid only: pass match='resize' "
                         f"to resample the corrupted picture to {rows * patch} x {cols * patch} px")  # fmt: skip
    return cols * patch, rows * patch


def _counterpart(clean: torch.Tensor, corrupted: torch.Tensor, image_id: int, positions) -> torch.Tensor:
    """``(S_clean,)``: each clean position's corrupted counterpart, -1 for none (rules in the module docstring).

    ``clean`` ``(S_clean,)`` and ``corrupted`` ``(S_corrupted,)`` are the prompts' ids, one picture each.
    """
    here, there = (clean == image_id).nonzero()[:, 0], (corrupted == image_id).nonzero()[:, 0]  # raster order
    counterpart = torch.full(clean.shape, -1)
    counterpart[here] = there  # one grid: cell k <-> cell k
    if positions is not None:
        return _mapped(counterpart, positions, clean, corrupted, image_id)
    before = torch.arange(int(here[0]))  # counted back from the picture
    after = torch.arange(int(here[-1]) + 1, len(clean))  # counted back from the end
    for span, target, first in ((before, before - here[0] + there[0], 0),
                                (after, after - len(clean) + len(corrupted), int(there[-1]) + 1)):  # fmt: skip
        keep = target >= first
        counterpart[span[keep]] = target[keep]
    return counterpart


def _mapped(counterpart: torch.Tensor, positions, clean: torch.Tensor, corrupted: torch.Tensor, image_id: int):
    """``counterpart`` (image cells aligned) with the text positions of the explicit map ``positions``."""
    if not isinstance(positions, Mapping):
        raise TypeError(f"positions={positions!r}; expected a dict {{clean position: corrupted position}}")
    for a, b in positions.items():
        i, j = _position(a, len(clean), "clean"), _position(b, len(corrupted), "corrupted")
        if clean[i] == image_id or corrupted[j] == image_id:
            raise ValueError(f"positions maps {a} -> {b}, an image token; image tokens align by cell, "
                             f"the map is for text positions")  # fmt: skip
        counterpart[i] = j
    return counterpart


def _position(p, length: int, side: str) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or not -length <= p < length:
        raise ValueError(f"{side} position {p!r} is outside the {side} prompt of {length} tokens "
                         f"(-{length} to {length - 1})")  # fmt: skip
    return p % length


@dataclass(frozen=True)
class Check:
    """What ``check`` measured, one entry per pair.

    Attributes:
        metric: the metric's name.
        clean, corrupted: ``(pairs,)`` the metric on each side.
        clean_answers, corrupted_answers: each side's greedy next token, decoded (``' red'``, not ``'Ġred'``).
        grids: (rows, cols) of merged-token cells per pair, the same on both sides.
        changed: ``(rows, cols)`` bool per pair: the cells whose processed pixels differ.
        resized_from: per pair, the corrupted picture's (height, width) before ``match="resize"``, or None.
    """

    metric: str
    clean: np.ndarray
    corrupted: np.ndarray
    clean_answers: tuple[str, ...]
    corrupted_answers: tuple[str, ...]
    grids: tuple[tuple[int, int], ...]
    changed: tuple[np.ndarray, ...]
    resized_from: tuple[tuple[int, int] | None, ...]

    def __str__(self) -> str:
        lines = [f"{self.metric}, {len(self.clean)} pair(s)"]
        for i, (rows, cols) in enumerate(self.grids):
            cells = [tuple(c) for c in np.argwhere(self.changed[i]).tolist()]
            resized = "" if self.resized_from[i] is None else " (corrupted resampled from {} x {} px)".format(
                *self.resized_from[i])
            lines += [f"pair {i}  clean      {self.clean[i]:+.4f}  answer '{one_line(self.clean_answers[i])}'",
                      f"        corrupted  {self.corrupted[i]:+.4f}  answer '{one_line(self.corrupted_answers[i])}'",
                      f"        grid {rows} x {cols} cells on both sides{resized}; cells whose pixels differ: "
                      + (", ".join(map(str, cells)) or "none")]  # fmt: skip
        return "\n".join(lines)


class Contrast:
    """Pairs of one specimen, in batches: ``groups`` lists each batch's pair indices (one layout per side)."""

    def __init__(self, pairs, batch_size: int | None = None):
        self.pairs = list(pairs)
        if not self.pairs or not all(isinstance(p, Pair) for p in self.pairs):
            raise TypeError(f"expected a non-empty list of Pair (anatomy.causal.pair), got {pairs!r:.80}")
        if any(p.spec is not self.pairs[0].spec for p in self.pairs):
            raise ValueError("the pairs were encoded for different specimens; a contrast runs on one")
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size={batch_size!r}; expected a positive int or None (one batch per layout)")
        self.spec = self.pairs[0].spec
        self.groups = [rows[start : start + (batch_size or len(rows))] for rows in self._layouts()
                       for start in range(0, len(rows), batch_size or len(rows))]  # fmt: skip

    def _layouts(self) -> list[list[int]]:
        """Pair indices grouped by (clean layout, corrupted layout), in order of first appearance."""
        image_id, groups = self.spec.config.image_token_id, []
        for i, p in enumerate(self.pairs):
            layouts = Layout.of(p.clean), Layout.of(p.corrupted)
            same = [g for g in groups if all(a.same_as(b, image_id) for a, b in zip(g[0], layouts))]
            if same:
                same[0][1].append(i)
            else:
                groups.append((layouts, [i]))
        return [rows for _, rows in groups]

    def batch(self, rows, side: str) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for pairs ``rows`` (one layout) on ``side``, ``"clean"`` or ``"corrupted"``:
        ``input_ids`` ``(B, S)``, ``pixel_values`` ``(B * patches, 1176)``, ``image_grid_thw`` ``(B, 3)``..."""
        if side not in SIDES:
            raise ValueError(f"side={side!r}; expected one of {SIDES}")
        prompts = [getattr(self.pairs[r], side) for r in rows]
        first, image_id = Layout.of(prompts[0]), self.spec.config.image_token_id
        if not all(Layout.of(p).same_as(first, image_id) for p in prompts):
            raise ValueError(f"pairs {list(rows)} have {side} prompts of different layouts; take rows from one of "
                             f"contrast.groups {self.groups}")  # fmt: skip
        return {key: torch.cat([p[key] for p in prompts]) for key in prompts[0]}

    def check(self, metric) -> Check:
        """Run both sides batch by batch; print and return each pair's metric, greedy answer, grid and changed cells."""
        metric = as_metric(metric)
        metric.check_rows(len(self.pairs))
        values = {side: np.zeros(len(self.pairs)) for side in SIDES}
        answers = {side: [""] * len(self.pairs) for side in SIDES}
        tokenizer = self.spec.processor.tokenizer
        for rows in self.groups:
            for side in SIDES:
                value, greedy = measure(self.spec, self.batch(rows, side), metric, rows)
                values[side][rows] = value.double().cpu().numpy()
                for r, token in zip(rows, greedy.tolist()):
                    answers[side][r] = token_text(tokenizer, token)
        found = Check(metric.name, values["clean"], values["corrupted"], tuple(answers["clean"]),
                      tuple(answers["corrupted"]), tuple(p.grid for p in self.pairs),
                      tuple(p.changed for p in self.pairs), tuple(p.resized_from for p in self.pairs))  # fmt: skip
        print(found)
        return found

    def __repr__(self) -> str:
        return f"Contrast({len(self.pairs)} pairs in {len(self.groups)} batches per side)"
