"""Reading the learning curve: series and thresholds against the curve's own entries; the answer prior's state
against its definition (its loss is the prior's entropy) and its ranks against a sort of the whole vocabulary."""

import math

import pytest
import torch

import anatomy
from anatomy.model import lm_head
from anatomy.toy.curve import REPEATED, prior_ranks, prior_state, reached, series
from anatomy.toy.encode import answer_tokens
from anatomy.toy.task import ANSWERS
from anatomy.toy.weights import SHIPPED, read_curve


@pytest.fixture(scope="module")
def curve():
    return read_curve(SHIPPED)


@pytest.fixture(scope="module")
def toy():
    return anatomy.load("toy")


def test_series_are_the_curves_own_numbers(curve):
    assert series(curve, "count").tolist() == [e["accuracy"]["count"] for e in curve]
    assert series(curve, REPEATED).tolist() == [e["where_by_case"]["shape repeated"] for e in curve]
    with pytest.raises(ValueError, match="series 'size'"):
        series(curve, "size")


@pytest.mark.parametrize("name", ["colour", "where", "count", REPEATED])
def test_reached_is_the_first_step_at_the_level_and_the_step_it_stays_from(curve, name):
    values, steps = series(curve, name), [e["step"] for e in curve]
    first, stays = reached(curve, name, 0.95)
    assert first == next(s for s, v in zip(steps, values) if v >= 0.95)
    assert all(v >= 0.95 for s, v in zip(steps, values) if s >= stays)
    assert stays == steps[0] or values[steps.index(stays) - 1] < 0.95


def test_reached_says_none_where_the_level_is_never_reached_or_not_kept():
    made_up = [{"step": 100, "accuracy": {"count": 0.9}}, {"step": 200, "accuracy": {"count": 0.5}}]
    assert reached(made_up, "count", 0.95) == (None, None)
    assert reached(made_up, "count", 0.8) == (100, None)
    assert reached(made_up, "count", 0.5) == (100, 100)


def test_the_prior_state_matches_the_prior_and_the_ranks_sort_the_vocabulary(toy):
    unembedding = lm_head(toy.model).weight.detach().float()
    ids = answer_tokens(toy.processor)
    answers = sorted(ids.values())
    for words in (ANSWERS["colour"], ("left", "right")):
        chosen = [ids[w] for w in words]
        state = prior_state(unembedding, answers, chosen)
        loss = -(unembedding[answers] @ state).log_softmax(-1)[[answers.index(i) for i in chosen]].mean()
        assert float(loss) == pytest.approx(math.log(len(words)), abs=0.01)  # the prior's entropy: its best
    ranks = prior_ranks(toy)
    for kind, words in {"colour": ANSWERS["colour"], "where": ("left", "right")}.items():
        chosen = [ids[w] for w in words]
        scores = unembedding @ prior_state(unembedding, answers, chosen)
        order = torch.argsort(scores, descending=True).tolist()
        assert ranks[kind][0] == min(order.index(i) for i in chosen)
    with pytest.raises(ValueError, match="not all among the answers"):
        prior_state(unembedding, answers[:2], answers[2:4])
