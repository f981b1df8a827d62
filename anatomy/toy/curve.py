"""Reading the learning curve (``training.Log.curve``, shipped as ``curve.json``): when did the toy start to look?

>>> curve = read_curve()                              # doctest: +SKIP
>>> snap(curve)                                       # the check where attention jumped most, and by how much
{'step': 1100, 'layer': 1, 'before': 1.3, 'after': 6.0, ...}
>>> reached(curve, "count", 0.95)                     # first at 95%, and at 95% or more from then on
(1900, 1900)
"""

from __future__ import annotations

import numpy as np
import torch

from anatomy.model import lm_head
from anatomy.processor import token_text
from anatomy.toy.encode import answer_tokens
from anatomy.toy.task import ANSWERS, QUESTION_TYPES

REPEATED = "where, repeated shape"  # the series of "where" questions about a shape the picture has twice or more


def ratios(curve: list[dict]) -> np.ndarray:
    """Target / distractor attention per cell at each check, ``(checks, layers)``."""
    return np.array([e["ratios"] for e in curve])


def snap(curve: list[dict]) -> dict:
    """The check with the largest jump of the ratio (in any layer) over the previous check: ``step``, ``layer``,
    ``before`` and ``after`` (the ratios), ``previous_step``, and the accuracy per type before and after."""
    if len(curve) < 2:
        raise ValueError(f"need at least two checks to find a jump, got {len(curve)}")
    r = np.log(ratios(curve))
    jumps = r[1:] - r[:-1]  # (checks - 1, layers)
    i, layer = np.unravel_index(np.argmax(jumps), jumps.shape)
    before, after = curve[i], curve[i + 1]
    return {"step": after["step"], "previous_step": before["step"], "layer": int(layer),
            "before": before["ratios"][layer], "after": after["ratios"][layer],
            "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"]}  # fmt: skip


def plateau(curve: list[dict], ratio: float = 2.0) -> list[dict]:
    """The checks before the answer position first puts ``ratio`` times more attention per cell on the target
    than on the distractors, in any layer: the model has not begun to look yet."""
    looked = [i for i, e in enumerate(curve) if max(e["ratios"]) >= ratio]
    return curve[: looked[0]] if looked else list(curve)


def series(curve: list[dict], name: str) -> np.ndarray:
    """One validation accuracy per check: of a question type (``"colour"``, ``"where"``, ``"count"``) or of
    ``REPEATED``, "where" about a repeated shape."""
    if name == REPEATED:
        return np.array([e["where_by_case"]["shape repeated"] for e in curve])
    if name not in QUESTION_TYPES:
        raise ValueError(f"series {name!r}; expected one of {[*QUESTION_TYPES, REPEATED]}")
    return np.array([e["accuracy"][name] for e in curve])


def reached(curve: list[dict], name: str, level: float) -> tuple[int | None, int | None]:
    """(the first step whose accuracy is at least ``level``, the step from which it stays there to the end of
    the curve) for the series ``name``; None where there is none.

    >>> reached([{"step": 100, "accuracy": {"count": 0.9}}, {"step": 200, "accuracy": {"count": 0.8}},
    ...          {"step": 300, "accuracy": {"count": 0.95}}], "count", 0.9)
    (100, 300)
    """
    steps, above = [e["step"] for e in curve], series(curve, name) >= level
    first = steps[int(np.argmax(above))] if above.any() else None
    below = np.nonzero(~above)[0]
    stays = None if not above[-1] else steps[int(below[-1]) + 1 if len(below) else 0]
    return first, stays


def prior_state(unembedding: torch.Tensor, answers: list[int], allowed: list[int], steps: int = 300) -> torch.Tensor:
    """``(width,)``: the answer state that best matches a prior spread evenly over ``allowed``, under a loss over
    ``answers`` only (the cross-entropy of ``unembedding[answers] @ state`` against that prior), fitted by Adam
    from zero. Its loss approaches the prior's entropy, ``log(len(allowed))``."""
    if not set(allowed) <= set(answers):
        raise ValueError(f"allowed {allowed} are not all among the answers {answers}")
    target = torch.tensor([1.0 / len(allowed) if i in allowed else 0.0 for i in answers])
    state = torch.zeros(unembedding.shape[1], requires_grad=True)
    optimiser = torch.optim.Adam([state], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            loss = -(target * (unembedding[answers].detach() @ state).log_softmax(-1)).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return state.detach()


def prior_ranks(specimen, steps: int = 300) -> dict[str, tuple[int, str]]:
    """Where answering by the prior alone puts each question type's answers among all the tokens.

    Before it looks, the best the toy can do is its answer prior: the same score for every answer a question
    allows (six colours; the two sides a "where" question names; the counts). Its loss ranks the 13 answers
    against each other only. For each type, ``prior_state`` fits the answer state that does so through the
    tied unembedding ``E``, which training never moves; every token of the vocabulary is then scored,
    ``E @ state``. Returns ``{type: (rank of its best allowed answer, 0 = first; the top token)}``. The check's
    accuracy takes the argmax over the whole vocabulary: a type whose answers rank below 0 is answered with
    another token, however good a guess the prior is.
    """
    unembedding = lm_head(specimen.model).weight.detach().float()  # (vocabulary, width)
    ids = answer_tokens(specimen.processor)
    allowed = {"colour": ANSWERS["colour"], "where": ("left", "right"), "count": ANSWERS["count"]}
    ranks = {}
    for kind, words in allowed.items():
        chosen = [ids[w] for w in words]
        scores = unembedding @ prior_state(unembedding, sorted(ids.values()), chosen, steps)  # (vocabulary,)
        best = float(scores[chosen].max())
        ranks[kind] = (int((scores > best).sum()), token_text(specimen.processor.tokenizer, int(scores.argmax())))
    return ranks
