"""Exercises of notebooks 09 and 11: activation patching written with plain forward hooks, checked against
``anatomy.causal``'s ``patch`` through ``intervene`` on the toy; and experiments to run (predict, then verify),
each checked against the same experiment run by the package on the objects the notebook names."""

from __future__ import annotations

import random

import numpy as np
import torch

from anatomy.causal import answer_logits, intervene, knock_out, patch, record, zero
from anatomy.lab.exercises import Case, Exercise
from anatomy.toy.experiments import counterfactual, toy_batch
from anatomy.toy.encode import encode
from anatomy.toy.task import sample


def _patch_cases(rng: random.Random, specimen) -> list[Case]:
    layers = specimen.config.text_config.num_hidden_layers
    held_out = [sample(0, "test", i) for i in range(300)]
    by_question: dict[str, list] = {}
    for s in held_out:
        by_question.setdefault(s.question, []).append(s)
    paired = [group for group in by_question.values() if len(group) > 1]  # a question asked of two pictures
    cases = []
    for layer, position in ((layers - 1, -1), (0, -1), (rng.randrange(layers), -rng.randint(2, 6))):
        asked, other = rng.sample(rng.choice(paired), 2)
        batch, source = (_inputs(specimen, s) for s in (asked, other))  # the same question about two pictures
        site = f"decoder.layers.{layer}.output"
        with torch.no_grad(), intervene(specimen, [patch(site, record(specimen, source, site), positions=[position])]):
            expected = specimen.model(**batch).logits[:, -1].float()
        cases.append(Case(f"layer {layer}, position {position} ({asked.kind} question)",
                          (specimen, batch, source, layer, position), expected))
    return cases


def _inputs(specimen, asked) -> dict[str, torch.Tensor]:
    """The model's keyword arguments for one toy question (its label left out)."""
    return {k: v for k, v in encode([asked], specimen.processor).items() if k != "labels"}


def _hooks_left(specimen) -> list[str]:
    return [name or "the model" for name, module in specimen.model.named_modules()
            if module._forward_hooks or module._forward_pre_hooks]


def _patch_mistakes(got, case: Case) -> str | None:
    """A hook left behind is reported, and removed so that the notebook's next cells run the plain model."""
    model = case.args[0].model
    if left := _hooks_left(case.args[0]):
        for module in model.modules():
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()
        return f"your function left a hook on {left[0]} (removed now): remove every hook it adds (try/finally)"
    return None


PATCH_BY_HAND = Exercise(
    "patch_by_hand",
    "a function patch_by_hand(specimen, batch, source, layer, position) -> (1, vocab) logits at the last position",
    _patch_cases,
    diagnose=_patch_mistakes,
    needs=("specimen",),
)


def _cell(asked) -> list[tuple[int, int]]:
    """The asked object's (row, column) cell."""
    thing = asked.scene.things[asked.target[0]]
    return [(thing.row, thing.col)]


def _word(specimen, logits: torch.Tensor) -> str:
    return specimen.processor.tokenizer.decode(logits.argmax(-1)).strip()


def _zeroed_case(rng: random.Random, specimen, asked) -> list[Case]:
    logits = answer_logits(specimen, toy_batch(specimen, [asked]), [zero("vision.merger.output", cells=_cell(asked))])
    return [Case("the where question with its object's cell zeroed", (), _word(specimen, logits))]


def _blocked_case(rng: random.Random, specimen, asked) -> list[Case]:
    batch = toy_batch(specimen, [asked])
    layers = range(specimen.config.text_config.num_hidden_layers)
    logits = answer_logits(specimen, batch, [knock_out(layers, keys="image", cells=_cell(asked))])
    return [Case("the colour question with its object's cell hidden", (),
                 torch.softmax(logits.float(), -1)[0, batch["labels"][0]].item())]


def _patched_case(rng: random.Random, specimen, asked) -> list[Case]:
    site = f"decoder.layers.{specimen.config.text_config.num_hidden_layers - 1}.output"
    other = toy_batch(specimen, [counterfactual(asked)])
    source = record(specimen, {k: v for k, v in other.items() if k != "labels"}, site)
    logits = answer_logits(specimen, toy_batch(specimen, [asked]), [patch(site, source, positions=[-1])])
    return [Case("the colour question with its answer position patched", (), _word(specimen, logits))]


def _word_compare(got, expected: str) -> str | None:
    if not isinstance(got, str):
        return "{yours} " + f"{type(got).__name__}; expected a word (a string)"
    return None if got.strip() == expected else "{yours} " + f"{got!r}, which is not what the model answers"


def _probability_compare(got, expected: float) -> str | None:
    if isinstance(got, bool) or not isinstance(got, (int, float)) or not 0 <= got <= 1:
        return "{yours} " + f"{got!r}; expected a probability, a float from 0 to 1"
    return None if abs(got - expected) <= 5e-3 else "{yours} " + f"{got!r}, which is not it (3 decimals are enough)"


ZEROED_WHERE = Exercise("zeroed_where", "a string", _zeroed_case, compare=_word_compare, function=False,
                        needs=("specimen", "asked"))
BLOCKED_COLOUR = Exercise("blocked_colour", "a float", _blocked_case, compare=_probability_compare,
                          function=False, needs=("specimen", "asked"))
PATCHED_ANSWER = Exercise("patched_answer", "a string", _patched_case, compare=_word_compare, function=False,
                          needs=("specimen", "asked"))


def _erased_case(rng: random.Random, specimen, edit) -> list[Case]:
    from anatomy.toy.editor import patch_back, site_label

    erased = patch_back(specimen, edit, alone=False)
    return [Case("the erased cross patched back", (),
                 site_label(erased.effects.sites[int(np.flatnonzero(erased.restored < 0.5)[0])]))]


def _together_case(rng: random.Random, specimen, contrast, metric, cells) -> list[Case]:
    from anatomy.causal import Groups, patching_sweep

    both = Groups("cell", contrast.pairs[0].grid, (tuple(cells),), ("both",))
    together = patching_sweep(specimen, contrast, metric, sites=["vision.blocks.3.output"], cells=both)
    return [Case("both moved cells patched back together", (), float(together.effects[0, 0, 0]))]


def _circle_case(rng: random.Random, specimen, asked) -> list[Case]:
    from anatomy.toy import Sample
    from anatomy.toy.editor import Edit, patch_back, site_label

    circle = Sample(asked.scene, "colour", "What colour is the circle?", "red", (3,))
    back = patch_back(specimen, Edit(circle, (0, 1), "green", (0, 1)), alone=False)
    return [Case("the circle recoloured and patched back", (),
                 site_label(back.effects.sites[int(np.flatnonzero(back.restored > 0.5).max())]))]


def _site_compare(got, expected: str) -> str | None:
    if not isinstance(got, str):
        return "{yours} " + f"{type(got).__name__}; expected a site name as site_label writes it, e.g. 'vis 2 out'"
    return None if got.strip() == expected else "{yours} " + f"{got!r}, which is not it"


def _effect_compare(got, expected: float) -> str | None:
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return "{yours} " + f"{got!r}; expected a float"
    return None if abs(got - expected) <= 0.02 else "{yours} " + f"{got!r}, which is not it (two decimals are enough)"


ERASED_STOPS = Exercise("erased_stops", "a string", _erased_case, compare=_site_compare, function=False,
                        needs=("specimen", "edit"))
MOVED_TOGETHER = Exercise("moved_together", "a float", _together_case, compare=_effect_compare, function=False,
                          needs=("specimen", "contrast", "metric", "cells"))
CIRCLE_LAST_SITE = Exercise("circle_last_site", "a string", _circle_case, compare=_site_compare, function=False,
                            needs=("specimen", "asked"))
