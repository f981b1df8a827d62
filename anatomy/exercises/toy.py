"""Exercise of notebook 08: the attention per unit of area on target, distractors and background, the measure the
learning curve tracks. The expected result is ``anatomy.toy.evaluate.region_attention`` on held-out pictures, with
random attention maps in place of the model's."""

from __future__ import annotations

import random

import numpy as np
import torch

from anatomy.lab.exercises import Case, Exercise
from anatomy.model import shipped_config
from anatomy.toy.evaluate import region_attention, region_map
from anatomy.toy.task import sample

IMAGE_PAD = 151655  # <|image_pad|>
CELLS = 16  # a toy picture: 4 x 4 cells, one image token each


def _area_cases(rng: random.Random) -> list[Case]:
    config = shipped_config("toy")
    cases = []
    for layers, pictures in ((2, 1), (1, 3), (rng.randint(2, 4), rng.randint(2, 5))):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        samples = [sample(0, "test", rng.randrange(300)) for _ in range(pictures)]
        keys = CELLS + 4  # two text tokens, the 16 image tokens, two text tokens
        input_ids = torch.full((pictures, keys), 9707)
        input_ids[:, 2 : 2 + CELLS] = IMAGE_PAD
        maps = [torch.rand(pictures, 2, keys, keys, generator=gen).softmax(-1) for _ in range(layers)]  # 2 heads
        on_cells = torch.stack([m[:, :, -1, 2 : 2 + CELLS].mean(1) for m in maps])  # (layers, pictures, 16)
        regions = torch.from_numpy(np.stack([region_map(s) for s in samples]))  # (pictures, 16)
        expected = torch.from_numpy(region_attention(maps, input_ids, samples, config))
        cases.append(Case(f"attention of shape {tuple(on_cells.shape)}", (on_cells, regions), expected))
    return cases


def _area_mistakes(got, case: Case) -> str | None:
    attention, regions = case.args
    if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape:
        return None
    total = torch.einsum("lbc,bcr->lbr", attention, torch.nn.functional.one_hot(regions.long(), 3).float())
    if torch.allclose(got.float(), total, atol=1e-6):
        return "{yours} each region's total attention: divide by the number of cells it covers"
    if torch.isnan(got).any():
        return "{yours} NaN where a region covers no cell: give it 0"
    return None


PER_AREA = Exercise(
    "per_area",
    "a function per_area(attention, regions) -> (layers, pictures, 3) tensor",
    _area_cases,
    diagnose=_area_mistakes,
)
