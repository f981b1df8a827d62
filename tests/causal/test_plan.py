"""Plans, each against a reference: the calls and rows the sweep makes (counted by hooks as it runs), torch's own
FLOP counter on an eager forward pass, the peak of torch's allocations as the sweep runs, the sweeps' own batch
sizes and refusals, and a skeleton that must not run."""

import contextlib
import inspect
from collections import Counter

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import anatomy
from anatomy.causal import Contrast, logit_diff, pair, probability
from anatomy.causal.calls import least_budget
from anatomy.causal.cost import PEAK_FLOPS, decoder_flops, vision_flops
from anatomy.causal.plan import SWEEPS, countable, measured_peak, plan, size_text, sweep_calls
from anatomy.inputs import demo_image, encode
from anatomy.model import multimodal, unwrap, vision_tower

QUESTION = "What colour is the house?"
LONGER = "Is the house red, or is the house blue?"
SITES = ["vision.blocks.1.output", "decoder.layers.0.input", "decoder.layers.2.output"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def contrast(tiny, painted):
    """Two pairs of two layouts (a short and a long question): two batches per side."""
    corrupted = painted(box=(0, 56, 28, 84))
    pairs = [pair(tiny, painted(), question, corrupted_image=corrupted) for question in (QUESTION, LONGER)]
    return Contrast(pairs)


@pytest.fixture(scope="module")
def ld(tiny):
    return logit_diff(tiny, "red", "blue")


@contextlib.contextmanager
def calls(model):
    """Every model call inside the block as (kind, rows): ``"full"`` (pixels in), ``"decoder only"`` (image tokens
    in), or ``"vision only"`` (the vision tower called outside a whole-model call)."""
    bare, seen, inside = unwrap(model), [], []

    def enter(module, args, kwargs):
        inside.append(True)
        seen.append(("full" if kwargs.get("pixel_values") is not None else "decoder only", len(kwargs["input_ids"])))

    def leave(module, args, kwargs, output):
        inside.pop()

    def tower(module, args, kwargs):
        if not inside:
            seen.append(("vision only", len(kwargs.get("grid_thw", args[1] if len(args) > 1 else None))))

    handles = [bare.register_forward_pre_hook(enter, with_kwargs=True),
               bare.register_forward_hook(leave, with_kwargs=True),
               vision_tower(bare).register_forward_pre_hook(tower, with_kwargs=True)]  # fmt: skip
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def planned_calls(p) -> Counter:
    """The plan's calls as (kind, rows), each as many times as planned."""
    kinds = Counter()
    for one, count in p.passes.items():
        kind = "full" if one.vision and one.decoder else "vision only" if one.vision else "decoder only"
        kinds[(kind, one.rows)] += count
    return kinds


@pytest.fixture(scope="module")
def eager():
    """The tiny model with eager attention: every product a matmul that torch's FLOP counter sees."""
    return anatomy.load("tiny", attn_implementation="eager")


@pytest.mark.parametrize("height, width", [(56, 84), (112, 168)])  # 112 x 168 px: windows cut at the right edge
def test_flops_equal_torchs_count_of_an_eager_pass(eager, height, width):
    prompt = encode(eager, demo_image(height, width), QUESTION)
    (_, rows, cols), tokens = prompt["image_grid_thw"][0].tolist(), prompt["input_ids"].shape[1]
    with FlopCounterMode(display=False) as whole, torch.no_grad():
        eager.model(**prompt, logits_to_keep=1)
    with FlopCounterMode(display=False) as tower, torch.no_grad():
        multimodal(eager).get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    layers = eager.config.text_config.num_hidden_layers  # eager scores every query against every key
    assert tower.get_total_flops() == vision_flops(eager.config, rows * cols, (rows, cols))
    assert whole.get_total_flops() == vision_flops(eager.config, rows * cols, (rows, cols)) + decoder_flops(
        eager.config, tokens, dense_layers=layers)


CASES = [
    ("patching", {"sites": SITES, "cells": "cell", "budget_gib": 0.006}),
    ("patching", {"sites": SITES, "cells": "2x2", "direction": "corrupted->clean"}),
    ("positions", {"sites": SITES[1:], "budget_gib": 0.03}),
    ("attribution", {"sites": SITES[1:]}),  # decoder sites only: the pictures' image tokens apart
    ("attribution", {"sites": SITES, "budget_gib": 0.01}),
    ("knockout", {"cells": "cell", "layers": [0, 3], "budget_gib": 0.006}),
    ("heads", {"ablation": "patch", "budget_gib": 0.004}),
    ("heads", {"ablation": "zero", "layers": [1]}),
]


@pytest.mark.parametrize("sweep, options", CASES)
def test_plan_counts_every_call_and_row_the_sweep_makes(tiny, contrast, ld, sweep, options):
    planned = plan(tiny, contrast, ld, sweep=sweep, device="H100", **options)
    with calls(tiny) as seen:
        result = planned.run()
    assert Counter(seen) == planned_calls(planned)
    assert len(seen) == planned.forward_passes and sum(rows for _, rows in seen) == planned.rows
    assert planned.refusal is None and planned.batch_size == (result.cells if sweep == "attribution"
                                                                else result).batch_size  # fmt: skip
    if options.get("budget_gib", 4) < 0.01 and sweep != "attribution":  # small budgets: copies cut into passes
        assert max(rows for _, rows in seen) == planned.batch_size < planned.copies // len(contrast.pairs)


@pytest.mark.parametrize("sweep, options", CASES[1:3] + CASES[4:6] + CASES[7:])
def test_the_sweeps_call_the_model_without_a_kv_cache(tiny, contrast, ld, sweep, options):
    """A sweep reads logits only: a KV cache (every layer's keys and values, per row) is memory the plan does not
    count, and on the 7B it outweighs a row's activations."""
    asked = []
    handle = unwrap(tiny).register_forward_pre_hook(lambda m, a, k: asked.append(k.get("use_cache")), with_kwargs=True)
    try:
        plan(tiny, contrast, ld, sweep=sweep, device="H100", **options).run()
    finally:
        handle.remove()
    assert asked and set(asked) == {False}


@pytest.mark.parametrize("kernel", ["tiny", "eager"])  # the fixtures: tiny on sdpa, on eager attention
@pytest.mark.parametrize("sweep, options", CASES)
def test_the_plans_peak_bounds_the_peak_the_sweep_reaches(request, painted, sweep, options, kernel):
    """Torch's allocations during the run (the weights apart) never exceed the plan's estimate; nor does the
    estimate exceed them more than a picture this small allows (one row's logits outweigh its activations)."""
    spec = request.getfixturevalue(kernel)
    corrupted = painted(112, 168, box=(0, 56, 28, 84))
    pairs = [pair(spec, painted(112, 168), question, corrupted_image=corrupted) for question in (QUESTION, LONGER)]
    planned = plan(spec, Contrast(pairs), logit_diff(spec, "red", "blue"), sweep=sweep, device="H100", **options)
    _, peak = measured_peak(planned.run, "cpu")
    estimate = planned.peak_bytes - planned.memory["weights"]
    assert peak <= estimate <= 2 * peak


@pytest.mark.parametrize("kernel", ["tiny", "eager"])
def test_a_softmax_metrics_peak_is_bounded_too(request, painted, kernel):
    """``probability`` makes a float32 softmax of the logits, which ``logit_diff`` does not: on a picture this small
    the logits' stage is a call's peak, and the plan must count the softmax to bound it."""
    spec = request.getfixturevalue(kernel)
    pairs = [pair(spec, painted(112, 168), QUESTION, corrupted_image=painted(112, 168, box=(0, 56, 28, 84)))]
    planned = plan(spec, Contrast(pairs), probability(spec, "red"), sweep="positions", device="H100",
                   sites=SITES[1:], budget_gib=0.03)  # fmt: skip
    _, peak = measured_peak(planned.run, "cpu")
    assert peak <= planned.peak_bytes - planned.memory["weights"] <= 2 * peak


@pytest.mark.parametrize("sweep", ["patching", "attribution", "knockout", "heads"])
def test_a_plan_over_budget_carries_the_sweeps_own_refusal(tiny, contrast, ld, sweep):
    planned = plan(tiny, contrast, ld, sweep=sweep, device="H100", budget_gib=1e-4)
    with calls(tiny) as seen, pytest.raises(MemoryError) as refused:
        planned.run()
    assert str(refused.value) == planned.refusal and not seen
    assert planned.batch_size == 1 and planned.refusal.startswith("this job is above budget_gib=0.0001: ")
    assert planned.refusal in str(planned)
    least = planned.least_budget_gib  # printed in the refusal; the plan at one copy per pass holds at most that
    assert f"the least that runs it is budget_gib={least:g};" in planned.refusal
    assert f", {least:g} GiB of it beside the weights" in str(planned) and least == planned.beside_weights_gib
    held = planned.peak_bytes - planned.memory["weights"]  # one copy per pass: what the sweep would hold
    assert held <= least * 2**30 < held * 1.001
    assert plan(tiny, contrast, ld, sweep=sweep, device="H100", budget_gib=least).refusal is None


SIZING = [  # one option set per sweep, on a contrast whose layouts hold several pairs (attribution's batches)
    ("patching", {"sites": SITES, "cells": "cell"}),
    ("positions", {"sites": SITES[1:]}),
    ("attribution", {"sites": SITES}),
    ("knockout", {"cells": "cell", "layers": [0, 2]}),
    ("heads", {"ablation": "patch", "layers": [1, 2]}),
]


@pytest.fixture(scope="module")
def skeleton():
    return countable(anatomy.load("7B"))


def several(spec, painted) -> Contrast:
    """Three pairs of one layout and one of another: 2 x 3 cells (56 x 84 px)."""
    boxes = [(0, 28, 0, 28), (0, 56, 28, 84), (28, 56, 56, 84)]
    pairs = [pair(spec, painted(), QUESTION, corrupted_image=painted(box=box)) for box in boxes]
    return Contrast(pairs + [pair(spec, painted(), LONGER, corrupted_image=painted(box=boxes[0]))])


def bound(spec, contrast, metric, sweep: str, options: dict) -> dict:
    """The sweep's arguments by name, defaults included, as ``plan`` binds them."""
    arguments = inspect.signature(SWEEPS[sweep]).bind(spec, contrast, metric, **options)
    arguments.apply_defaults()
    return dict(arguments.arguments)


@pytest.mark.parametrize("model", ["tiny", "skeleton"])
@pytest.mark.parametrize("sweep, options", SIZING)
def test_the_batch_size_is_the_largest_whose_planned_peak_fits_the_budget(request, painted, model, sweep, options):
    """Between the peaks of one copy per pass and of all of them, the plan's batch size holds at most the budget
    (the weights apart) by the plan's own count, and one more copy per pass would hold more."""
    spec = request.getfixturevalue(model)
    contrast, metric = several(spec, painted), logit_diff(spec, "red", "blue")
    counted = sweep_calls(sweep, bound(spec, contrast, metric, sweep, options))
    assert counted.most > 2
    budget = (counted.peak(1) + counted.peak(counted.most)) / 2 / 2**30
    planned = plan(spec, contrast, metric, sweep=sweep, device="H100", **{**options, "budget_gib": budget})
    held, size = planned.peak_bytes - planned.memory["weights"], planned.batch_size
    assert planned.refusal is None and 1 <= size < counted.most
    assert held == counted.peak(size) <= budget * 2**30 < counted.peak(size + 1)


@pytest.mark.parametrize("sweep, options", SIZING)
def test_a_sweep_is_refused_below_its_least_budget_before_the_model_runs_and_runs_at_it(tiny, contrast, ld, sweep,
                                                                                      options):  # fmt: skip
    contrast = Contrast(contrast.pairs[:1])  # one pair, one copy per pass: every copy a model call
    options = {**options, "sites": [SITES[-1]]} if "sites" in options else options
    counted = sweep_calls(sweep, bound(tiny, contrast, ld, sweep, options))
    least = counted.peak(1) / 2**30  # GiB, exactly: one copy per pass
    with calls(tiny) as seen, pytest.raises(MemoryError) as refused:
        SWEEPS[sweep](tiny, contrast, ld, **options, budget_gib=least * (1 - 1e-9))
    assert not seen and f"the least that runs it is budget_gib={least_budget(counted.peak(1)):g};" in str(refused.value)
    with calls(tiny) as seen:
        result = SWEEPS[sweep](tiny, contrast, ld, **options, budget_gib=least)
    assert seen and (result.cells if sweep == "attribution" else result).batch_size == 1


def test_the_7B_sweeps_are_refused_before_the_model_runs(skeleton, painted):
    contrast, metric = several(skeleton, painted), logit_diff(skeleton, "red", "blue")
    for sweep, options in SIZING:
        least = sweep_calls(sweep, bound(skeleton, contrast, metric, sweep, options)).least_gib
        with calls(skeleton) as seen, pytest.raises(MemoryError, match=f"budget_gib={least:g};"):
            SWEEPS[sweep](skeleton, contrast, metric, **options, budget_gib=least / 2)
        assert not seen


def test_a_plan_of_the_7B_runs_nothing():
    skeleton = anatomy.load("7B")
    with calls(skeleton) as seen:
        plans = {sweep: plan(skeleton, sweep=sweep, image_size=(448, 448), cells=cells)
                 for sweep, cells in (("patching", "window"), ("knockout", "image"))}  # fmt: skip
        plans["heads"] = plan(skeleton, sweep="heads", image_size=(448, 448))
    assert not seen and all(p.device.type == "meta" for p in skeleton.model.parameters())
    patching = plans["patching"]  # 448 px: 16 x 16 cells in 16 windows; 32 vision blocks, 28 + 1 decoder sites
    assert patching.copies == (32 + 29) * 16 and patching.forward_passes == 3 + 61 * -(-16 // patching.batch_size)
    assert plans["knockout"].copies == 28 and plans["heads"].copies == 28 * 28
    weights = sum(p.numel() for p in skeleton.model.parameters()) * 2
    assert patching.memory["weights"] == weights and "GiB" in str(patching)
    assert patching.seconds == pytest.approx(patching.flops / (PEAK_FLOPS["H100"] * 0.4))
    with pytest.raises(ValueError, match="skeleton"):
        patching.run()


def test_time_comes_from_one_pass_here_or_a_named_gpus_peak(tiny, contrast, ld):
    with calls(tiny) as seen:
        here = plan(tiny, contrast, ld, sites=SITES, cells="2x2")
    heaviest = max(here.passes, key=lambda p: p.flops(tiny.config))
    assert heaviest.vision and seen == [("vision only", heaviest.rows), ("decoder only", heaviest.rows)]
    assert "one forward pass" in here.timing and "measured on cpu" in here.timing and here.seconds > 0
    with calls(tiny) as seen:
        there = plan(tiny, contrast, ld, sites=SITES, cells="2x2", device="A100", utilisation=0.5)
    assert not seen and there.seconds == pytest.approx(there.flops / (312e12 * 0.5))


@pytest.mark.parametrize("sites", [["decoder.layers.0.input", "decoder.layers.2.output"], SITES])
def test_attributions_timing_pass_takes_the_gradients_the_sweep_takes(tiny, contrast, ld, sites, monkeypatch):
    """The timing pass of an attribution is its probed call with its backward: the same probes' gradients as the
    sweep's first call takes (through the tower only when a vision site is probed)."""
    taken, grad = [], torch.autograd.grad

    def recorded(outputs, inputs, *args, **kwargs):
        taken.append([tuple(probe.shape) for probe in inputs])
        return grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recorded)
    with calls(tiny) as seen:
        planned = plan(tiny, contrast, ld, sweep="attribution", sites=sites)
    heaviest = max(planned.passes, key=lambda p: p.flops(tiny.config))
    assert heaviest.backward and seen == [("vision only", heaviest.rows), ("decoder only", heaviest.rows)]
    assert "one forward and backward pass" in planned.timing and len(taken) == 1
    planned.run()
    assert len(taken) == 1 + len(contrast.groups) and taken[1] == taken[0] and len(taken[0]) == len(sites)


def test_a_decoder_only_sweep_is_timed_on_the_pictures_the_sweep_runs_the_tower_on(tiny, contrast, ld):
    """Positions: every copy runs the decoder on its pair's image tokens, computed once; the timing pass runs the
    tower on as many pictures as the sweep's largest call of it (one pair per layout here), not one per copy."""
    with calls(tiny) as seen:
        planned = plan(tiny, contrast, ld, sweep="positions", sites=SITES[1:])
    heaviest = max(planned.passes, key=lambda p: p.flops(tiny.config))
    pictures = max(p.rows for p in planned.passes if p.vision)
    assert not heaviest.vision and pictures < heaviest.rows
    assert seen == [("vision only", pictures), ("decoder only", heaviest.rows)]
    assert f"of {heaviest.rows} rows" in planned.timing and f"on {pictures} picture" in planned.timing


def test_sizes_print_in_gib_or_mib():
    assert (size_text(3 * 2**29), size_text(5 * 2**20), size_text(2**30 - 2**20)) == (
        "1.50 GiB", "5.00 MiB", "1023.00 MiB")


def test_measured_peak_counts_the_runs_own_allocations_at_their_peak():
    def run():
        first = torch.ones(2**20)  # 4 MiB, freed before the second: the peak is 4 + 8 MiB, not 16
        second = torch.ones(2**21)
        del first
        third = torch.ones(2**20)
        return float(second.sum() + third.sum())

    result, peak = measured_peak(run, "cpu")
    assert result == 3 * 2**20 and 12 * 2**20 <= peak < 12 * 2**20 + 64  # and the sums' scalars


def test_bad_options_are_refused_naming_the_sweeps_own(tiny, contrast, ld):
    with pytest.raises(TypeError, match="its options: \\['sites', 'direction', 'budget_gib'\\]"):
        plan(tiny, contrast, ld, sweep="positions", cells="2x2")
    with pytest.raises(ValueError, match="sweep='patch'"):
        plan(tiny, contrast, ld, sweep="patch")
    with pytest.raises(ValueError, match="ablation='half'"):
        plan(tiny, contrast, ld, sweep="heads", ablation="half", device="H100")
