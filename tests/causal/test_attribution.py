"""Attribution patching, against references: torch.autograd through a hand-made leaf at one site, exact patching
on the toy's colour questions, the changed cell of each counterfactual, and rank statistics worked by hand."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import anatomy
from anatomy.capture import capture
from anatomy.capture.orders import window_to_raster
from anatomy.causal import (
    CellEffects,
    as_metric,
    attribution,
    cell_groups,
    compare,
    logit_diff,
    pair,
    patching_sweep,
    top_cells,
)
from anatomy.causal.attribution import compare_figure, ranks, spearman
from anatomy.model import decoder_layers, vision_blocks, vision_tower
from anatomy.toy import sample
from anatomy.toy.experiments import counterfactual

QUESTION = "What colour is the house?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two(tiny, painted):
    return pair(tiny, painted(), QUESTION, corrupted_image=painted(box=(0, 56, 28, 84)))


@pytest.fixture(scope="module")
def spread(tiny, two):
    """logit(a) - logit(b) for the two tokens the pictures move most apart: a metric with room to move."""
    with torch.no_grad():
        moved = tiny.model(**two.clean).logits[0, -1] - tiny.model(**two.corrupted).logits[0, -1]
    good, bad = int(moved.argmax()), int(moved.argmin())
    return as_metric(lambda logits: logits[:, good] - logits[:, bad], "spread")


def leaf_gradient(spec, prompt, module, on_input: bool, metric) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``module``'s input (or output) replaced by a leaf tensor; the leaf, d metric / d leaf, and the metric."""
    kept = {}

    def leaf(value: torch.Tensor) -> torch.Tensor:
        kept["leaf"] = value.detach().clone().requires_grad_(True)
        return kept["leaf"]

    if on_input:
        handle = module.register_forward_pre_hook(lambda m, args: (leaf(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(lambda m, args, output: leaf(output))
    try:
        with torch.enable_grad():
            value = metric(spec.model(**prompt).logits[:, -1])[0]
            (grad,) = torch.autograd.grad(value, kept["leaf"])
    finally:
        handle.remove()
    return kept["leaf"].detach(), grad, float(value.detach())


@pytest.mark.parametrize("direction", ["clean->corrupted", "corrupted->clean"])
def test_gradient_path_equals_torch_autograd_by_hand(tiny, two, spread, direction):
    sites = ["vision.blocks.2.output", "decoder.layers.1.input"]
    found = attribution(tiny, two, spread, sites, direction=direction)
    source, target = (two.clean, two.corrupted) if direction == "clean->corrupted" else (two.corrupted, two.clean)
    with torch.no_grad(), capture(tiny, sites, order="model") as cache:
        tiny.model(**source)
    clean, corrupted = (float(spread(tiny.model(**p).logits[:, -1].detach())[0]) for p in (two.clean, two.corrupted))
    rows, cols = two.grid

    def effect(delta):  # the first-order value of the target, normalised
        return (leaf_value + delta - corrupted) / (clean - corrupted)

    x, grad, leaf_value = leaf_gradient(tiny, target, vision_blocks(tiny)[2], False, spread)
    per_patch = ((cache[sites[0]] - x) * grad).sum(-1)[window_to_raster(two.clean.grid_thw, tiny.config.vision_config)]
    by_cell = per_patch.reshape(rows, 2, cols, 2).sum((1, 3)).reshape(-1)  # (cells,) raster
    np.testing.assert_allclose(found.cells.effects[0, 0], effect(by_cell.numpy()), rtol=1e-4, atol=1e-4)

    x, grad, leaf_value = leaf_gradient(tiny, target, decoder_layers(tiny)[1], True, spread)
    per_position = ((cache[sites[1]] - x) * grad).sum(-1)[0]  # (L,): the two prompts share one layout
    image = (target["input_ids"][0] == tiny.config.image_token_id).cpu()
    np.testing.assert_allclose(found.cells.effects[0, 1], effect(per_position[image].numpy()), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(found.positions.effects[0, 0], effect(per_position.numpy()), rtol=1e-4, atol=1e-4)
    assert found.positions.sites == sites[1:] and found.cells.forward_passes == 2
    assert found.cells.clean[0] == pytest.approx(clean, abs=1e-5) and leaf_value == pytest.approx(
        clean if direction == "corrupted->clean" else corrupted, abs=1e-5)  # fmt: skip


def test_prompts_of_other_layouts_take_the_counterpart_activation(tiny, painted):
    longer = pair(tiny, painted(), QUESTION, corrupted_question="Is the house red, or is the house blue?")
    metric, site = logit_diff(tiny, "red", "blue"), "decoder.layers.2.input"
    found = attribution(tiny, longer, metric, [site]).positions
    with torch.no_grad(), capture(tiny, site) as cache:
        tiny.model(**longer.clean)
    clean = float(metric(tiny.model(**longer.clean).logits[:, -1].detach())[0])
    x, grad, corrupted = leaf_gradient(tiny, longer.corrupted, decoder_layers(tiny)[2], True, metric)
    source = {int(longer.counterpart[p]): p for p in range(len(longer.counterpart)) if longer.counterpart[p] >= 0}
    for q in range(x.shape[1]):
        if q not in source:
            assert np.isnan(found.effects[0, 0, q])
            continue
        delta = float(((cache[site][0, source[q]] - x[0, q]) * grad[0, q]).sum())
        assert found.effects[0, 0, q] == pytest.approx(delta / (clean - corrupted), rel=1e-4, abs=1e-4)


def colour_pairs(toy, count: int):
    samples = [sample(0, "test", i) for i in range(0, 3 * count, 3)]  # question types cycle colour, where, count
    assert {s.kind for s in samples} == {"colour"}
    flipped = [counterfactual(s) for s in samples]
    pairs = [pair(toy, s.scene.pixels(), s.question, corrupted_image=c.scene.pixels(), system=None)
             for s, c in zip(samples, flipped)]  # fmt: skip
    return pairs, logit_diff(toy, [s.answer for s in samples], [c.answer for c in flipped])


def test_on_the_toys_colour_questions_both_rank_the_changed_cell_first():
    toy = anatomy.load("toy")
    pairs, metric = colour_pairs(toy, 6)
    sites = ["decoder.layers.0.input", "decoder.layers.1.input", "decoder.layers.1.output"]  # every decoder site
    exact = patching_sweep(toy, pairs, metric, sites)
    estimate = attribution(toy, pairs, metric, sites).cells
    changed = np.array([np.flatnonzero(p.changed) for p in pairs])  # (pairs, 1): one cell recoloured
    for s in range(2):
        assert exact.shift[:, s].argmax(1).tolist() == changed[:, 0].tolist()
        assert estimate.shift[:, s].argmax(1).tolist() == changed[:, 0].tolist()
    # The last layer's output at a cell feeds only that cell's own logits, never the answer's: nothing to rank.
    assert np.abs(exact.effects[:, 2]).max() < 1e-4 and np.abs(estimate.effects[:, 2]).max() < 1e-4
    agreement = compare(estimate, exact, k=1)
    assert (agreement.first[:, :2] == 1).all() and np.isnan(agreement.spearman[:, 2]).all()


def test_ranks_and_spearman_equal_hand_computations():
    assert ranks(np.array([10, 30, 20, 20])).tolist() == [1, 4, 2.5, 2.5]
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # scipy's own example
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1) and np.isnan(spearman([1, 2, 3], [4, 4, 4]))


def made_up(tiny, values, direction="clean->corrupted") -> CellEffects:
    """Effects ``(1 pair, sites, 4 groups)`` of a 1 x 4 grid, for statistics checked by hand."""
    values = np.asarray(values, float)[None]
    return CellEffects("made up", "m", direction, [f"site {i}" for i in range(values.shape[1])],
                       cell_groups(tiny, (1, 4), "cell"), values, np.ones(1), np.zeros(1), np.zeros((1, 1, 4), bool),
                       [], 0, 0, 0.0)  # fmt: skip


def test_compare_and_top_cells_equal_hand_rankings(tiny):
    estimate = made_up(tiny, [[0.1, 0.9, 0.3, -0.5], [0.0, 0.2, 0.1, 0.3]])
    exact = made_up(tiny, [[0.2, 0.8, -0.6, 0.1], [0.0, 0.0, 0.0, 0.0]])  # site 1: nothing moves
    found = compare(estimate, exact, k=2)
    # ranks [2, 4, 3, 1] and [3, 4, 1, 2]: d = (-1, 0, 2, -1), rho = 1 - 6 * 6 / (4 * 15) = 0.4
    assert found.spearman[0, 0] == pytest.approx(0.4) and found.top_k[0, 0] == 0.5 and found.first[0, 0] == 1
    assert np.isnan([found.spearman[0, 1], found.top_k[0, 1], found.first[0, 1]]).all()
    noising = compare(made_up(tiny, [[1.0, 0.2, 0.9, 0.95]], "corrupted->clean"),
                      made_up(tiny, [[0.97, 0.1, 1.0, 0.95]], "corrupted->clean"), k=1)  # fmt: skip
    assert noising.first[0, 0] == 1  # ranked by how far from 1 (nothing lost): group 1 in both, not by size
    assert top_cells(estimate, 2).members == (((0, 1),), ((0, 3),))  # largest |effect| at any site: 0.9, then 0.5


def test_top_cells_feed_an_exact_sweep(tiny, two, spread):
    sites = ["vision.blocks.3.output", "decoder.layers.1.input"]
    estimate = attribution(tiny, two, spread, sites).cells
    top = top_cells(estimate, 2)
    by_hand = np.argsort(-np.abs(estimate.effects[0]).max(0), kind="stable")[:2]  # one pair: its largest |effect|
    assert top.members == tuple(estimate.groups.members[g] for g in by_hand)
    exact, full = patching_sweep(tiny, two, spread, sites, cells=top), patching_sweep(tiny, two, spread, sites)
    assert exact.groups == top
    np.testing.assert_allclose(exact.effects, full.effects[:, :, by_hand], atol=1e-5)
    figure = compare_figure(estimate, full)
    assert isinstance(figure, Figure) and len(figure.axes) == 2 * len(sites) + 1  # two rows of sites, a colour bar


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arguments, message", [
    (dict(sites=["vision.blocks.7.output"]), r"index 7 is out of range; this model has 4 blocks"),
    (dict(cells=[(0, 60, 10, 70)]), r"box \(0, 60, 10, 70\) is not inside.*0 <= y0 < y1 <= 56"),
    (dict(budget_gib=1e-4), r"above budget_gib=0.0001.*attribute fewer sites"),
    (dict(metric=as_metric(lambda x: x[:, :2], "two")), r"returned \(1, 2\); expected a tensor of shape \(1,\)"),
    (dict(direction="clean"), r"direction='clean'"),
])  # fmt: skip
def test_bad_input_is_refused_before_the_model_runs(tiny, two, arguments, message):
    before, calls = hooks(tiny.model), []
    handles = [module.register_forward_pre_hook(lambda *args: calls.append(1))
               for module in (tiny.model, vision_tower(tiny))]  # fmt: skip
    arguments = {"metric": logit_diff(tiny, "red", "blue"), **arguments}
    try:
        with pytest.raises((ValueError, MemoryError), match=message):
            attribution(tiny, two, **arguments)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [] and hooks(tiny.model) == before
