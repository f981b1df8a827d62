"""Toy questions as contrasts: each picture beside its counterfactual, the answers as the metric's words.

The toy is one adapter over the general API (``anatomy.causal``): its samples become ``Pair``s made by
``anatomy.causal.pair`` (no system message, as the toy was trained), its answers a per-pair logit difference.

>>> clean = sample(0, "test", 0)                          # "What colour is the circle?" -> "red"
>>> corrupted = counterfactual(clean)                     # the same question; the circle is another colour
>>> questions = contrasts(spec, [clean, ...])             # .contrast, .metric: logit(red) - logit(blue), ...
>>> batch = toy_batch(spec, [clean, corrupted])           # left-padded model inputs, plus "labels"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from anatomy.causal import Contrast, Metric, Pair, logit_diff, pair
from anatomy.toy.encode import encode
from anatomy.toy.shapes import GRID
from anatomy.toy.task import COLOURS, QUESTION_TYPES, Sample, Thing


def counterfactual(clean: Sample) -> Sample:
    """The same question about a picture changed so that its answer changes, every other object kept.

    colour: the asked object gets the first colour not in the picture; where: it moves to the
    mirror cell across the asked axis (or the nearest free cell on the other side); count: one
    counted object is removed (or, for a count of 1, one is added in the first free cell).
    """
    things = list(clean.scene.things)
    i = clean.target[0]
    if clean.kind == "colour":
        unused = [c for c in COLOURS if c not in {t.colour for t in things}]
        things[i] = dataclasses.replace(things[i], colour=unused[0])
        return _with(clean, things, unused[0])
    if clean.kind == "where":
        across = clean.answer in ("left", "right")
        things[i] = _moved(things, i, across)
        flipped = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[clean.answer]
        return _with(clean, things, flipped)
    if len(clean.target) > 1:
        del things[clean.target[-1]]
        return _with(clean, things, str(len(clean.target) - 1))
    free = _free_cells(things)[0]
    colour = next(c for c in COLOURS if c not in {t.colour for t in things})
    things.append(Thing(things[i].shape, colour, *free))
    return _with(clean, things, "2")


def _with(clean: Sample, things: list[Thing], answer: str) -> Sample:
    scene = dataclasses.replace(clean.scene, things=tuple(things))
    target = tuple(k for k, t in enumerate(things) if clean.kind == "count" and t.shape == things[0].shape)
    return dataclasses.replace(clean, scene=scene, answer=answer, target=target or clean.target)


def _free_cells(things: list[Thing]) -> list[tuple[int, int]]:
    taken = {(t.row, t.col) for t in things}
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]


def _moved(things: list[Thing], i: int, across: bool) -> Thing:
    """Object ``i`` moved to the other half of the picture along ``across`` (columns) or rows."""
    t = things[i]
    mirror = (t.row, GRID - 1 - t.col) if across else (GRID - 1 - t.row, t.col)
    free = _free_cells(things)
    other_half = [f for f in free if (f[1] < GRID // 2) != (t.col < GRID // 2)] if across else [
        f for f in free if (f[0] < GRID // 2) != (t.row < GRID // 2)]
    cell = mirror if mirror in free else min(other_half, key=lambda f: abs(f[0] - t.row) + abs(f[1] - t.col))
    return dataclasses.replace(t, row=cell[0], col=cell[1])


@dataclass
class Questions:
    """Toy questions as a contrast: ``samples`` (clean) and their ``counterfactuals`` (corrupted), pair by pair.

    Attributes:
        contrast: one ``Pair`` per sample (picture and question; the counterfactual picture, the same question).
        metric: ``logit(sample's answer) - logit(counterfactual's answer)`` at the answer position, per pair.
    """

    samples: list[Sample]
    counterfactuals: list[Sample]
    contrast: Contrast
    metric: Metric

    def kinds(self) -> dict[str, list[int]]:
        """Question type -> the indices of its pairs, for the types present."""
        found = {kind: [i for i, s in enumerate(self.samples) if s.kind == kind] for kind in QUESTION_TYPES}
        return {kind: rows for kind, rows in found.items() if rows}


def contrasts(spec, samples: list[Sample]) -> Questions:
    """Each sample's picture and question against its ``counterfactual`` picture, and the answers' logit difference."""
    if not samples or not all(isinstance(s, Sample) for s in samples):
        raise TypeError(f"expected a non-empty list of toy Samples (anatomy.toy.sample), got {samples!r:.80}")
    corrupted = [counterfactual(s) for s in samples]
    pairs = [pair(spec, s.scene.pixels(), s.question, corrupted_image=c.scene.pixels(), system=None)
             for s, c in zip(samples, corrupted)]  # fmt: skip
    metric = logit_diff(spec, [s.answer for s in samples], [c.answer for c in corrupted])
    return Questions(list(samples), corrupted, Contrast(pairs), metric)


def answer_only(p: Pair) -> Pair:
    """``p`` with its text aligned at the last position only (the answer position): a position sweep over it
    patches each image token and the answer position, nothing else."""
    counterpart = torch.full_like(p.counterpart, -1)
    keep = p.clean["input_ids"][0].cpu() == p.spec.config.image_token_id
    keep[-1] = True
    counterpart[keep] = p.counterpart[keep]
    return dataclasses.replace(p, counterpart=counterpart)


def toy_batch(spec, samples: list[Sample]) -> dict[str, torch.Tensor]:
    """``anatomy.toy.encode.encode`` of ``samples`` on the model's device: inputs, left-padded, plus ``labels``
    ``(B,)`` (the answers' token ids)."""
    return {k: v.to(spec.model.device) for k, v in encode(samples, spec.processor).items()}
