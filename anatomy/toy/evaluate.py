"""Has the toy model learned to look? Held-out accuracy, and where the answer's attention goes.

The *answer position* is the last prompt token (the ``\\n`` after
``<|im_start|>assistant``): its output is the answer. At every decoder layer
we take its attention to the 16 image tokens (mean over heads) and split it
by what each token's 28x28-px cell holds: the *target* (the object(s) the
question is about), the *distractors* (the other objects), the *background*.
Each share is divided by the number of cells it covers, so the three numbers
are attention per unit of area (one cell), comparable however many objects
a picture holds. A model that looks has target >> distractors.

>>> report = evaluate(load("toy"), n=100)            # doctest: +SKIP
>>> report.accuracy                                  # {"colour": 1.0, "where": 0.99, "count": 0.98}
>>> report.per_area[:, 0] / report.per_area[:, 1]    # target / distractor, one ratio per layer
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anatomy.decoder.attention import cell_rows
from anatomy.kernels import eager
from anatomy.toy.encode import encode, stop_token
from anatomy.toy.task import QUESTION_TYPES, Sample, sample

REGIONS = ("target", "distractors", "background")
WHERE_CASES = ("shape once", "shape repeated")  # does the shape named in a "where" question occur once?


@dataclass
class Report:
    """Evaluation of one model on ``n`` held-out samples.

    Attributes:
        accuracy: question type -> fraction answered right (argmax over the full vocabulary).
        per_area: ``(layers, 3)``: mean attention per cell of the answer position on
            target / distractors / background, averaged over the samples.
        n: number of samples.
        per_area_by_kind: question type -> its own ``(layers, 3)`` average.
        stops: fraction of samples where, given the right answer, the model's next token is
            ``<|im_end|>``: it ends its turn, as a chat model does.
        where_by_case: accuracy on "where" questions whose named shape occurs once in the
            picture, or more than once (then only the colour tells the asked object from the
            other shapes like it); a case without samples is left out.
    """

    accuracy: dict[str, float]
    per_area: np.ndarray
    n: int
    per_area_by_kind: dict[str, np.ndarray]
    stops: float
    where_by_case: dict[str, float]

    @property
    def ratios(self) -> np.ndarray:
        """Target over distractor attention per cell, one number per decoder layer ``(layers,)``."""
        return self.per_area[:, 0] / self.per_area[:, 1]

    def ratios_by_kind(self) -> dict[str, np.ndarray]:
        """``ratios`` of each question type alone."""
        return {kind: area[:, 0] / area[:, 1] for kind, area in self.per_area_by_kind.items()}


def held_out(n: int, seed: int = 0) -> list[Sample]:
    """The first ``n`` samples of the test split: never seen in training (that uses the train split)."""
    if n < len(QUESTION_TYPES):
        raise ValueError(f"n={n}: need at least {len(QUESTION_TYPES)} samples, one per question type")
    return [sample(seed, "test", i) for i in range(n)]


def evaluate(specimen, n: int = 300, seed: int = 0, batch_size: int = 50) -> Report:
    """Accuracy per question type and attention per area on ``n`` held-out samples, with eager attention."""
    return score(specimen.model, specimen.processor, held_out(n, seed), batch_size)


def score(model, processor, samples: list[Sample], batch_size: int = 50) -> Report:
    """``evaluate`` on any ``samples``: one forward pass per batch over each prompt and its right answer."""
    hits, shares, stops = [], [], []
    with eager(model), torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch = encode(chunk, processor)
            labels = batch.pop("labels")
            # one pass over prompt + right answer: the causal mask keeps the prompt's rows as they were
            out = model(**_with_answer(batch, labels), output_attentions=True, logits_to_keep=2)
            answer, after = out.logits.argmax(-1).unbind(1)  # predicted at the prompt's end, after the answer
            hits += (answer == labels).tolist()
            stops += (after == stop_token(processor)).tolist()
            shares.append(region_attention(out.attentions, batch["input_ids"], chunk, model.config, row=-2))
    hits, kinds = np.array(hits), np.array([s.kind for s in samples])
    accuracy = {k: float(np.mean(hits[kinds == k])) for k in QUESTION_TYPES}
    shares = np.concatenate(shares, axis=1)  # (layers, n, 3)
    by_kind = {k: shares[:, kinds == k].mean(axis=1) for k in QUESTION_TYPES}
    cases = np.array([where_case(s) for s in samples])
    where = {c: float(np.mean(hits[cases == c])) for c in WHERE_CASES if (cases == c).any()}
    return Report(accuracy, shares.mean(axis=1), len(samples), by_kind, float(np.mean(stops)), where)


def where_case(asked: Sample) -> str | None:
    """Which of ``WHERE_CASES`` a "where" sample is; ``None`` for the other question types."""
    if asked.kind != "where":
        return None
    return WHERE_CASES[asked.scene.count(asked.scene.things[asked.target[0]].shape) > 1]


def _with_answer(batch: dict, answers: torch.Tensor) -> dict:
    """``batch`` with each row's answer token appended, as the next step of generation would see it."""
    ones = torch.ones_like(answers)[:, None]
    return {
        **batch,
        "input_ids": torch.cat([batch["input_ids"], answers[:, None]], dim=1),
        "attention_mask": torch.cat([batch["attention_mask"], ones], dim=1),
        "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"], 0 * ones], dim=1),
    }


def region_attention(attentions, input_ids: torch.Tensor, samples: list[Sample], config, row: int = -1) -> np.ndarray:
    """Attention per cell of position ``row`` (default: the last) on each region, ``(layers, B, 3)``.

    ``attentions``: one ``(B, heads, L', L')`` tensor per decoder layer; ``input_ids`` ``(B, L)``, the
    prompt, whose image tokens are the first ``L`` keys.
    """
    per_cell = cell_rows(attentions, input_ids, config, row)
    regions = torch.from_numpy(np.stack([region_map(s) for s in samples]))  # (B, 16): 0, 1 or 2
    onehot = torch.nn.functional.one_hot(regions, len(REGIONS)).float()  # (B, 16, 3)
    mass = torch.einsum("lbc,bcr->lbr", per_cell.float(), onehot)  # (layers, B, 3)
    return (mass / onehot.sum(1).clamp(min=1)).numpy()


def region_map(s: Sample) -> np.ndarray:
    """What each cell holds, raster order ``(16,)``: 0 target, 1 distractor, 2 background.

    >>> region_map(sample(0, "train", 0)).reshape(4, 4)     # doctest: +SKIP
    """
    cells = s.scene.cells().reshape(-1)
    return np.where(cells < 0, 2, np.where(np.isin(cells, s.target), 0, 1))
