"""Toy questions -> batches for experiments: counterfactual pictures, repeated rows, answer logits.

>>> clean = sample(0, "test", 0)                          # "What colour is the circle?" -> "red"
>>> corrupted = counterfactual(clean)                     # the same question; the circle is another colour
>>> batch = toy_batch(spec, [clean, corrupted])           # model inputs, left-padded, plus "labels"
>>> repeated = take(batch, [0, 0, 1])                     # rows (and their pictures) picked and repeated
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from anatomy.causal.interventions import intervene
from anatomy.model import multimodal
from anatomy.toy.encode import encode
from anatomy.toy.kernels import fast_training
from anatomy.toy.shapes import GRID
from anatomy.toy.task import COLOURS, Sample, Thing


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


def toy_batch(spec, samples: list[Sample]) -> dict[str, torch.Tensor]:
    """``anatomy.toy.encode.encode`` of ``samples`` on the model's device: inputs plus ``labels`` ``(B,)``."""
    return {k: v.to(spec.model.device) for k, v in encode(samples, spec.processor).items()}


def take(batch: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """``batch`` with its rows (and each row's one picture) picked in the order of ``rows``."""
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    patches = batch["pixel_values"].shape[0] // batch["image_grid_thw"].shape[0]  # one picture per row
    picked = {k: v[rows.to(v.device)] for k, v in batch.items() if k != "pixel_values"}
    index = (rows[:, None] * patches + torch.arange(patches)).reshape(-1)
    return {**picked, "pixel_values": batch["pixel_values"][index.to(batch["pixel_values"].device)]}


def image_tokens(spec, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The merger's output for each picture of ``batch``: one ``(tokens, D)`` tensor per picture."""
    with torch.no_grad(), fast_training(spec.model):
        return multimodal(spec).get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output


def with_image_tokens(batch: dict[str, torch.Tensor], images: tuple[torch.Tensor, ...], rows) -> dict:
    """``take(batch, rows)`` with the pictures' image tokens given (``mm_encoder_outputs``) instead of pixels,
    so that the model skips its vision tower."""
    picked = {k: v[torch.as_tensor(list(rows), device=v.device)] for k, v in batch.items() if k != "pixel_values"}
    pooled = BaseModelOutputWithPooling(pooler_output=[images[r] for r in rows])
    return {**picked, "mm_encoder_outputs": {"image": pooled}}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``toy_batch`` without its ``"labels"``: the model's keyword arguments."""
    return {k: v for k, v in batch.items() if k != "labels"}


def answer_logits(spec, batch: dict[str, torch.Tensor], edits=()) -> torch.Tensor:
    """``(B, vocab)`` logits at the answer position (the last), with ``edits`` applied."""
    with torch.no_grad(), intervene(spec, list(edits)):
        return spec.model(**model_inputs(batch), logits_to_keep=1).logits[:, -1].float()


def chunks(count: int, size: int) -> list[np.ndarray]:
    """``range(count)`` cut into consecutive index arrays of at most ``size``."""
    return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]

