"""Exercise of notebook 09: activation patching written with plain forward hooks, checked against
``anatomy.causal``'s ``patch`` through ``intervene`` on the toy."""

from __future__ import annotations

import random

import torch

from anatomy.causal import intervene, patch, record
from anatomy.lab.exercises import Case, Exercise
from anatomy.toy.encode import encode
from anatomy.toy.task import sample


def _patch_cases(rng: random.Random, specimen) -> list[Case]:
    layers = specimen.config.text_config.num_hidden_layers
    cases = []
    for layer, position in ((layers - 1, -1), (0, -1), (rng.randrange(layers), -rng.randint(2, 6))):
        asked = sample(0, "test", rng.randrange(300))
        other = next(s for i in range(300) if (s := sample(0, "test", i)).question == asked.question and s != asked)
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
