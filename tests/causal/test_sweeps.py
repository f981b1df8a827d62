"""Cell groups and patching sweeps, each against a reference: transformers' window index, a pixel mask, one
unbatched ``intervene(patch(...))`` forward per copy, the effect computed by hand, a hand-written hook."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from anatomy.capture import capture
from anatomy.causal import (
    Contrast,
    as_metric,
    cell_groups,
    intervene,
    log_prob,
    logit_diff,
    pair,
    patch,
    patching_sweep,
    position_sweep,
    record,
)
from anatomy.causal.sweeps import cells_figure, positions_figure
from anatomy.model import decoder_layers, shipped_config, vision_tower
from anatomy.processor import token_text
from anatomy.vision.windows import windows

QUESTION = "What colour is the house?"
LONGER = "Is the house red, or is the house blue?"
SITES = ["vision.blocks.1.output", "decoder.layers.0.input", "decoder.layers.2.output"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two(tiny, painted):
    """One question about two pictures of 2 x 3 cells; the right two thirds blacked out in the corrupted one."""
    return pair(tiny, painted(), QUESTION, corrupted_image=painted(box=(0, 56, 28, 84)))


@pytest.fixture(scope="module")
def longer(tiny, painted):
    """The same picture, asked in a longer question: the two prompts have different layouts."""
    return pair(tiny, painted(), QUESTION, corrupted_question=LONGER)


def last_logits_all(spec, batch, edits=()) -> torch.Tensor:
    """``(B, S, vocab)``: every position's logits of one forward pass with ``edits``."""
    with torch.no_grad(), intervene(spec, list(edits)):
        return spec.model(**batch).logits


def last_logits(spec, batch, edits=()) -> torch.Tensor:
    return last_logits_all(spec, batch, edits)[:, -1]


@pytest.fixture(scope="module")
def spread(tiny, two):
    """logit(a) - logit(b) for the two tokens the pictures move most apart: a metric with room to move."""
    moved = last_logits(tiny, two.clean)[0] - last_logits(tiny, two.corrupted)[0]
    good, bad = int(moved.argmax()), int(moved.argmin())
    return as_metric(lambda logits: logits[:, good] - logits[:, bad], "spread")


# --- groups ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, grid", [("tiny", (6, 9)), ("tiny", (2, 3)), ("toy", (4, 4)), ("7B", (5, 7))])
def test_window_groups_equal_the_vision_windows(source, grid):
    config = shipped_config(source)
    merge = config.vision_config.spatial_merge_size
    spec = SimpleNamespace(config=config)  # groups read the config only: no weights needed
    window = windows((1, grid[0] * merge, grid[1] * merge), config.vision_config).window[0, ::merge, ::merge]
    expected = {frozenset(map(tuple, np.argwhere(window == w).tolist())) for w in np.unique(window)}
    groups = cell_groups(spec, grid, "window")
    assert {frozenset(cells) for cells in groups.members} == expected
    for cells in cell_groups(spec, grid, "2x2").members:  # 2x2 groups: never across a window's edge
        assert len({window[r, c] for r, c in cells}) == 1 and len(cells) <= 4


def test_2x2_and_cell_groups_equal_a_hand_tiling(tiny):
    rows, cols = 6, 9  # windows of 4 x 4 cells: the 2x2 blocks of the grid, cut at the edges
    by_hand: dict[tuple, list] = {}
    for r in range(rows):
        for c in range(cols):
            by_hand.setdefault((r // 2, c // 2), []).append((r, c))
    assert cell_groups(tiny, (rows, cols), "2x2").members == tuple(tuple(cells) for cells in by_hand.values())
    single = cell_groups(tiny, (rows, cols), "cell")
    assert single.members == tuple(((r, c),) for r in range(rows) for c in range(cols))


@pytest.mark.parametrize("box", [(0, 0, 30, 10), (28, 28, 56, 56), (27.5, 0, 28.5, 56), (0, 0, 84, 56),
                                 (83, 55, 84, 56)])  # fmt: skip
def test_box_groups_equal_a_pixel_mask(tiny, box):
    x0, y0, x1, y1 = box
    covered = np.zeros((56 * 4, 84 * 4), bool)  # a quarter-pixel raster: fractional boxes are drawn exactly
    covered[round(y0 * 4) : round(y1 * 4), round(x0 * 4) : round(x1 * 4)] = True
    cells = covered.reshape(2, 28 * 4, 3, 28 * 4).any((1, 3))
    (found,) = cell_groups(tiny, (2, 3), [box]).members
    assert sorted(found) == sorted(map(tuple, np.argwhere(cells).tolist()))


def test_paint_shows_the_strongest_overlapping_group(tiny):
    groups = cell_groups(tiny, (2, 3), [(0, 0, 56, 56), (28, 0, 84, 28)])  # overlap in cell (0, 1)
    painted = groups.paint([0.5, -0.9])
    assert painted[0, 1] == -0.9 and painted[1, 1] == 0.5 and painted[0, 2] == -0.9 and np.isnan(painted[1, 2])


# --- patching sweeps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["clean->corrupted", "corrupted->clean"])
def test_sweep_equals_one_unbatched_patch_per_copy(tiny, two, spread, direction):
    sweep = patching_sweep(tiny, two, spread, SITES, direction=direction, budget_gib=0.005)
    groups = cell_groups(tiny, two.grid, "cell")
    assert sweep.groups == groups and sweep.grid == (2, 3) and 1 < sweep.batch_size < len(groups)  # several passes per site, several copies each
    assert sweep.forward_passes == 3 + len(SITES) * -(-len(groups) // sweep.batch_size)  # 3: the unpatched runs
    source, target = (two.clean, two.corrupted) if direction == "clean->corrupted" else (two.corrupted, two.clean)
    recorded = record(tiny, source, SITES)
    clean, corrupted = (float(spread(last_logits(tiny, p))[0]) for p in (two.clean, two.corrupted))
    assert sweep.clean[0] == pytest.approx(clean, abs=1e-5) and sweep.corrupted[0] == pytest.approx(corrupted, abs=1e-5)
    for s, site in enumerate(SITES):
        for g, cells in enumerate(groups.members):
            patched = float(spread(last_logits(tiny, target, [patch(site, recorded, cells=cells)]))[0])
            assert sweep.effects[0, s, g] == pytest.approx((patched - corrupted) / (clean - corrupted), abs=1e-4)


def test_teacher_forced_sweep_equals_one_unbatched_patch_per_copy(tiny, two, painted):
    metric = log_prob(tiny, ["a red circle", "blue"])  # 3 tokens and 1: the shorter answer reads from the prompt's end
    other = pair(tiny, painted(box=(0, 28, 0, 28)), QUESTION, corrupted_image=painted())
    pairs, site = [two, other], "decoder.layers.1.input"
    sweep = patching_sweep(tiny, pairs, metric, [site], cells=[(0, 0, 40, 56), (30, 10, 84, 40)], budget_gib=0.02)
    for i, p in enumerate(pairs):
        one = log_prob(tiny, metric.answers[0].texts[i])
        clean, corrupted = (one.extend(q) for q in (p.clean, p.corrupted))
        recorded = record(tiny, clean, [site])
        values = [float(one(last_logits_all(tiny, b))[0]) for b in (clean, corrupted)]
        for g, cells in enumerate(sweep.groups.members):  # two boxes of 4 cells each, sharing column 1
            patched = float(one(last_logits_all(tiny, corrupted, [patch(site, recorded, cells=cells)]))[0])
            expected = (patched - values[1]) / (values[0] - values[1])
            assert sweep.effects[i, 0, g] == pytest.approx(expected, abs=2e-4)


def hand_patched(spec, target, layer: int, writes: dict[int, torch.Tensor], metric) -> float:
    """The metric of ``target`` with decoder layer ``layer``'s input overwritten at positions ``writes`` by hand."""

    def overwrite(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        for position, value in writes.items():
            hidden[:, position] = value
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    handle = decoder_layers(spec)[layer].register_forward_pre_hook(overwrite, with_kwargs=True)
    try:
        return float(metric(last_logits(spec, target))[0])
    finally:
        handle.remove()


def test_prompts_of_other_layouts_patch_by_counterpart(tiny, longer):
    metric, site = logit_diff(tiny, "red", "blue"), "decoder.layers.1.input"
    with torch.no_grad(), capture(tiny, site) as cache:
        tiny.model(**longer.clean)
    clean_run = cache[site][0]  # (L_clean, D)
    clean, corrupted = (float(metric(last_logits(tiny, p))[0]) for p in (longer.clean, longer.corrupted))
    image = tiny.config.image_token_id
    here = (longer.clean["input_ids"][0] == image).nonzero()[:, 0]
    there = (longer.corrupted["input_ids"][0] == image).nonzero()[:, 0]
    sweep = patching_sweep(tiny, longer, metric, [site])
    for g, (cell,) in enumerate(sweep.groups.members):
        k = cell[0] * longer.grid[1] + cell[1]
        patched = hand_patched(tiny, longer.corrupted, 1, {int(there[k]): clean_run[here[k]]}, metric)
        assert sweep.effects[0, 0, g] == pytest.approx((patched - corrupted) / (clean - corrupted), abs=1e-4)
    positions = position_sweep(tiny, longer, metric, [site])
    length = longer.corrupted["input_ids"].shape[1]
    source = {int(longer.counterpart[p]): p for p in range(len(longer.counterpart)) if longer.counterpart[p] >= 0}
    assert positions.effects.shape == (1, 1, length)
    assert np.isnan(positions.effects[0, 0]).tolist() == [q not in source for q in range(length)]
    for q in [q for q in source if longer.corrupted["input_ids"][0, q] != image][-8:]:  # the question's end
        patched = hand_patched(tiny, longer.corrupted, 1, {q: clean_run[source[q]]}, metric)
        assert positions.effects[0, 0, q] == pytest.approx((patched - corrupted) / (clean - corrupted), abs=1e-4)


def test_position_tokens_are_decoded_and_figures_drawn(tiny, longer, two, spread):
    positions = position_sweep(tiny, longer, logit_diff(tiny, "red", "blue"), ["decoder.layers.3.output"])
    ids = longer.corrupted["input_ids"][0].tolist()
    tokenizer, image = tiny.processor.tokenizer, tiny.config.image_token_id
    expected = [token_text(tokenizer, i) for i in ids if i != image]
    assert [t for t in positions.tokens[0] if not t.startswith("img ")] == expected and " blue" in expected
    assert [t for t in positions.tokens[0] if t.startswith("img ")] == ["img 0,0", "img 0,1", "img 0,2", "img 1,0",
                                                                        "img 1,1", "img 1,2"]  # fmt: skip
    assert positions.effects[0, 0, -1] == pytest.approx(1.0, abs=1e-4)  # the last output at the end: all the answer
    assert not np.any(np.abs(positions.effects[0, 0, :-1]) > 1e-4)  # elsewhere it reaches no logit read
    figure = positions_figure(positions)
    labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert isinstance(figure, Figure) and len(labels) == len(ids) and not any("Ġ" in label for label in labels)
    sweep = patching_sweep(tiny, two, spread, SITES, cells="window")
    assert isinstance(cells_figure(sweep), Figure) and sweep.effects.shape == (1, len(SITES), 1)


# --- refusals --------------------------------------------------------------------------------------------------


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("bad, message", [
    (lambda t, p, m, draw: patching_sweep(t, p, m, ["decoder.layers.9.input"]), r"index 9 is out of range.*4 layers"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, ["decoder.position_ids"]), r"'decoder.position_ids' is not an activation"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, cells=[(0, 0, 90, 10)]), r"box \(0, 0, 90, 10\) is not inside.*84 x 56"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, cells=[(10, 0, 10, 5)]), r"0 <= x0 < x1 <= 84"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, cells="3x3"), r"cells='3x3'; expected one of"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, cells=cell_groups(t, (4, 4), "cell")), r"made for a 4 x 4 grid.*2 x 3"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, budget_gib=1e-6), r"above budget_gib=1e-06.*fewer sites"),
    (lambda t, p, m, draw: patching_sweep(t, p, as_metric(lambda x: x.sum(), "sum")), r"returned \(\); expected .*\(1,\)"),
    (lambda t, p, m, draw: patching_sweep(t, p, as_metric(lambda x: x[:, 0] * np.nan, "nan")), r"returned NaN"),
    (lambda t, p, m, draw: patching_sweep(t, p, logit_diff(t, ["red", "blue"], "green")), r"2 answers.*for 1 rows"),
    (lambda t, p, m, draw: patching_sweep(t, p, m, direction="both"), r"direction='both'"),
    (lambda t, p, m, draw: position_sweep(t, p, m, ["vision.blocks.0.output"]), r"vision tower, which has no prompt"),
    (lambda t, p, m, draw: patching_sweep(t, Contrast([p, pair(t, draw(56, 56), QUESTION)]), m), r"grids \[\(2, 2\), \(2, 3"),
])  # fmt: skip
def test_bad_input_is_refused_before_the_model_runs(tiny, two, painted, bad, message):
    before, calls = hooks(tiny.model), []
    handles = [module.register_forward_pre_hook(lambda *args: calls.append(1))
               for module in (tiny.model, vision_tower(tiny))]  # fmt: skip
    try:
        with pytest.raises((ValueError, MemoryError), match=message):
            bad(tiny, two, logit_diff(tiny, "red", "blue"), painted)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [] and hooks(tiny.model) == before
