"""Exercises of notebook 08: the attention per unit of area on target, distractors and background, the measure the
learning curve tracks, checked against ``anatomy.toy.evaluate.region_attention`` on held-out pictures with random
attention maps in place of the model's; and a prediction (does another seed's check pass earlier or later than the
shipped toy's?) verified by retraining."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import torch

from anatomy.lab.exercises import Case, Exercise
from anatomy.model import shipped_config
from anatomy.toy.evaluate import region_attention, region_map
from anatomy.toy.task import sample
from anatomy.toy.weights import SHIPPED

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


WHEN = ("earlier", "later", "same")


@dataclass(frozen=True)
class Retrained:
    """When a retrained toy's check passed (None: not in ``steps``) and when the shipped toy's did."""

    passed_at: int | None
    steps: int
    shipped: int


def _retrained_case(rng: random.Random, toy_seed: int, steps: int) -> list[Case]:
    """Train a toy with the shipped recipe but ``toy_seed``, at most ``steps`` steps, no cool-down (it begins only
    after the check passed): minutes on a CPU."""
    from anatomy.processor import offline_processor
    from anatomy.toy.training import Log, Recipe, toy_config, train

    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    log = Log()
    recipe = Recipe(**{**manifest["recipe"], "seed": toy_seed, "cooldown": 0, "max_steps": steps})
    train(toy_config(), recipe, offline_processor(), log=log)
    return [Case(f"seed {toy_seed}", (), Retrained(log.passed_at, steps, manifest["passed_at"]))]


def _when_compare(got, expected: Retrained) -> str | None:
    if not isinstance(got, str) or got.strip() not in WHEN:
        return "{yours} " + f"{got!r}; expected one of {WHEN}"
    if expected.passed_at is None and expected.steps < expected.shipped:
        return (f"no check passed in {expected.steps} steps, fewer than the shipped toy took "
                f"({expected.shipped}): give it more steps")  # fmt: skip
    passed = expected.steps + 1 if expected.passed_at is None else expected.passed_at  # not in steps: later
    truth = WHEN[0] if passed < expected.shipped else WHEN[1] if passed > expected.shipped else WHEN[2]
    if got.strip() == truth:
        return None
    ran = f"its check passed at step {passed}" if expected.passed_at else f"no check passed in {expected.steps} steps"
    return "{yours} " + f"{got!r}, which is not it: {ran}, the shipped toy's at step {expected.shipped}"


SEED_PASSES = Exercise("seed_passes", "a string", _retrained_case, compare=_when_compare, function=False,
                       needs=("toy_seed", "steps"))
