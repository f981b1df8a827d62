"""Exercises of notebooks 09 and 11: activation patching written with plain forward hooks, checked against
``anatomy.causal``'s ``patch`` through ``intervene`` on the toy; attribution patching by hand for one decoder site,
checked against ``anatomy.causal.attribution``; and experiments to run (predict, then verify), each checked against
the same experiment run by the package on the objects the notebook names."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch

from anatomy.causal import (
    Contrast,
    answer_logits,
    attribution,
    intervene,
    knock_out,
    logit_diff,
    pair,
    patch,
    record,
    zero,
)
from anatomy.lab.exercises import Case, Exercise, same_tensor
from anatomy.toy.edit import free_colours, recolour
from anatomy.toy.encode import encode
from anatomy.toy.example import running_example
from anatomy.toy.experiments import counterfactual, toy_batch
from anatomy.toy.task import Sample, sample


@functools.cache
def _asked_twice() -> tuple[tuple[Sample, ...], ...]:
    """The held-out pictures grouped by question, the questions asked of two pictures or more."""
    by_question: dict[str, list] = {}
    for s in (sample(0, "test", i) for i in range(300)):
        by_question.setdefault(s.question, []).append(s)
    return tuple(tuple(group) for group in by_question.values() if len(group) > 1)


def patch_draws(rng: random.Random, layers: int) -> list[tuple[int, int, Sample, Sample]]:
    """The check's random draws: ``(layer, position, asked, other)`` three times, ``other`` a second held-out
    picture asked the same question (the last layer, the first, then a random layer and an earlier position)."""
    paired = _asked_twice()
    return [(layer, position, *rng.sample(rng.choice(paired), 2))
            for layer, position in ((layers - 1, -1), (0, -1), (rng.randrange(layers), -rng.randint(2, 6)))]


def _patch_cases(rng: random.Random, specimen) -> list[Case]:
    cases = []
    for layer, position, asked, other in patch_draws(rng, specimen.config.text_config.num_hidden_layers):
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


def colour_edits(rng: random.Random, count: int) -> list[tuple]:
    """``count`` held-out colour questions, each with its object recoloured to a colour no other object has:
    ``(sample, cell, colour)``, the running example's cross first."""
    example = running_example()
    chosen = [example.sample]
    while len(chosen) < count:
        asked = sample(0, "test", 3 * rng.randrange(100))  # index % 3 == 0: a colour question
        if all(asked.scene != c.scene for c in chosen):
            chosen.append(asked)
    edits = []
    for asked in chosen:
        thing = asked.scene.things[asked.target[0]]
        cell = (thing.row, thing.col)
        edits.append((asked, cell, rng.choice([c for c in free_colours(asked.scene, cell) if c != asked.answer])))
    return edits


def _layer_input(specimen, inputs, metric, layer: int) -> tuple[torch.Tensor, ...]:
    """One run: the metric (a 0-d tensor), decoder layer ``layer``'s input (1, S, D), and the metric's gradient there
    (1, S, D), through a zero probe added to the input."""
    kept = {}

    def hook(module, args):
        kept["activation"], kept["probe"] = args[0].detach(), torch.zeros_like(args[0], requires_grad=True)
        return (args[0] + kept["probe"], *args[1:])

    handle = specimen.model.model.language_model.layers[layer].register_forward_pre_hook(hook)
    try:
        with torch.enable_grad():
            value = metric(specimen.model(**inputs).logits)[0]
            grad = torch.autograd.grad(value, kept["probe"])[0]
    finally:
        handle.remove()
    return value.detach(), kept["activation"], grad


@dataclass(frozen=True)
class Attributed:
    """The package's estimate ``(rows, cols)``, and the typical wrong answers computed from the two runs."""

    effect: torch.Tensor
    mistakes: tuple[tuple[torch.Tensor, str], ...]


DIFFERENCE = "multiply it by the difference of the two runs' activations (clean - corrupted)"
WRONG_SIGN = ("the sign flipped: patching puts the clean activation into the corrupted run, so the difference is "
              "clean - corrupted, and the scale metric(clean) - metric(corrupted)")
CLEAN_GRADIENT = ("the gradient taken on the clean run: take it on the corrupted run, the one the clean activation is "
                  "patched into")
NOT_NORMALISED = ("an estimate not normalised: divide by metric(clean) - metric(corrupted), so that 1 means the clean "
                  "answer fully back")


def _attribution_cases(rng: random.Random, specimen) -> list[Case]:
    cases = []
    for (asked, cell, colour), layer in zip(colour_edits(rng, 3), (rng.randrange(2), 0, 1)):
        one = pair(specimen, asked.scene.pixels(), asked.question, system=None,
                   corrupted_image=recolour(asked.scene, cell, colour).pixels())
        metric = logit_diff(specimen, asked.answer, colour)
        site = f"decoder.layers.{layer}.input"
        effect = attribution(specimen, Contrast([one]), metric, sites=[site]).cells.effects[0, 0]
        expected = Attributed(torch.from_numpy(effect).view(one.grid), _wrong_ones(specimen, one, metric, layer))
        cases.append(Case(f"{asked.question!r} with the {asked.answer} object {colour}, layer {layer}",
                          (specimen, one, metric, layer), expected))
    return cases


def _wrong_ones(specimen, one, metric, layer: int) -> tuple[tuple[torch.Tensor, str], ...]:
    """Typical mistakes, each with its hint: computed with plain hooks, apart from ``attribution``."""
    clean_value, clean, clean_grad = _layer_input(specimen, one.clean, metric, layer)
    value, corrupted, grad = _layer_input(specimen, one.corrupted, metric, layer)
    image = one.corrupted["input_ids"][0] == specimen.config.image_token_id  # (S,) raster order over the cells

    def per_cell(change: torch.Tensor, scale=clean_value - value) -> torch.Tensor:
        return (change.sum(-1)[0, image] / scale).view(one.grid).double()  # (rows, cols)

    right = per_cell((clean - corrupted) * grad)
    return (
        (-right, WRONG_SIGN),
        (per_cell(corrupted * grad), f"the gradient times the corrupted activation alone: {DIFFERENCE}"),
        (per_cell(clean * grad), f"the gradient times the clean activation alone: {DIFFERENCE}"),
        (per_cell((clean - corrupted) * clean_grad), CLEAN_GRADIENT),
        (per_cell((clean - corrupted) * grad, 1.0), NOT_NORMALISED),
        (right.T, "the cells column by column: image tokens run row by row (raster order)"),
    )


def _attribution_compare(got, expected: Attributed) -> str | None:
    """None when right; else the hint of the first typical mistake ``got`` matches, else what differs."""
    hint = same_tensor(got, expected.effect)
    if hint is None or not isinstance(got, torch.Tensor) or got.shape != expected.effect.shape:
        return hint
    for wrong, words in expected.mistakes:
        if same_tensor(got, wrong) is None and same_tensor(wrong, expected.effect) is not None:
            return "{yours} " + words
    return hint


ATTRIBUTION_BY_HAND = Exercise(
    "attribution_by_hand",
    "a function attribution_by_hand(specimen, one, metric, layer) -> (rows, cols) tensor",
    _attribution_cases,
    compare=_attribution_compare,
    diagnose=_patch_mistakes,  # a hook left behind
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
