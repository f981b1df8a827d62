"""The causal experiments, each against a reference: direct counts, one unbatched run per condition, numpy."""

import numpy as np
import pytest
import torch
from torch import nn

import anatomy
from anatomy.causal import intervene, knock_out, patch, record, zero
from anatomy.causal.ablation import head_ablation
from anatomy.causal.batches import counterfactual, toy_batch
from anatomy.causal.cost import decoder_flops, sweep_cost, vision_flops
from anatomy.causal.knockout import knockout_by_layer
from anatomy.causal.lens import image_lens
from anatomy.causal.patching import changed_cells, patching_sweep
from anatomy.causal.probes import cell_labels, ridge_accuracy
from anatomy.toy import sample, untrained_toy
from anatomy.toy.shapes import GRID
from anatomy.toy.task import COLOURS


@pytest.fixture(scope="module")
def toy():
    """The toy architecture at its random initialisation: the experiments' mechanics need no training."""
    return untrained_toy()


def _truth(s) -> str:
    """The answer of a sample read off its scene directly."""
    thing = s.scene.things[s.target[0]]
    if s.kind == "colour":
        return thing.colour
    if s.kind == "count":
        return str(s.scene.count(s.scene.things[0].shape))
    if "left" in s.question:
        return "left" if thing.col < GRID // 2 else "right"
    return "top" if thing.row < GRID // 2 else "bottom"


@pytest.mark.parametrize("index", range(30))
def test_counterfactual_changes_the_answer_and_nothing_else_asked(index):
    clean = sample(0, "test", index)
    corrupted = counterfactual(clean)
    assert corrupted.question == clean.question and corrupted.answer != clean.answer
    assert _truth(corrupted) == corrupted.answer and _truth(clean) == clean.answer
    assert len({t.colour for t in corrupted.scene.things}) == len(corrupted.scene.things)  # colours stay distinct
    assert len({(t.row, t.col) for t in corrupted.scene.things}) == len(corrupted.scene.things)
    assert 1 <= changed_cells(clean, corrupted).sum() <= 2


def _ld(spec, batch, good, bad, edits=()):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad(), intervene(spec, list(edits)):
        logits = spec.model(**inputs).logits[0, -1]
    return float(logits[good] - logits[bad])


def test_sweep_effects_equal_one_unbatched_patch_each(toy):
    clean = sample(0, "test", 0)
    sites = ["vision.blocks.1.output", "decoder.layers.1.input"]
    sweep = patching_sweep(toy, [clean], sites, batch_size=7)  # several chunks
    corrupted = counterfactual(clean)
    a, b = toy_batch(toy, [clean]), toy_batch(toy, [corrupted])
    good, bad = int(a["labels"][0]), int(b["labels"][0])
    source = record(toy, {k: v for k, v in b.items() if k != "labels"}, sites)
    base, flipped = _ld(toy, a, good, bad), _ld(toy, b, good, bad)
    for s, site in enumerate(sites):
        for k, selection in [(5, {"cells": [(1, 1)]}), (12, {"cells": [(3, 0)]}), (16, {"positions": [-1]})]:
            if k == 16 and site.startswith("vision"):
                assert np.isnan(sweep.effects[0, s, k])
                continue
            patched = _ld(toy, a, good, bad, [patch(site, source, **selection)])
            expected = (base - patched) / (base - flipped)
            assert sweep.effects[0, s, k] == pytest.approx(expected, abs=1e-3)
    assert sweep.forward_passes == 4 + int(np.ceil(16 * 1 / 7)) + int(np.ceil(17 / 7))


def test_knockout_by_layer_equals_one_run_per_condition(toy):
    samples = [sample(0, "test", i) for i in range(6)]
    result = knockout_by_layer(toy, samples, batch_size=10)
    batch = toy_batch(toy, samples)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        plain = toy.model(**inputs).logits[:, -1]
        with intervene(toy, [knock_out([1], queries=[-1], keys="image")]):
            knocked = toy.model(**inputs).logits[:, -1]
    rows = torch.arange(len(samples))
    drop = (plain - knocked)[rows, batch["labels"]].numpy()
    hits = (knocked.argmax(-1) == batch["labels"]).numpy()
    kinds = np.array([s.kind for s in samples])
    for kind in ("colour", "where", "count"):
        assert result.logit_drop[kind][2] == pytest.approx(drop[kinds == kind].mean(), abs=1e-4)
        assert result.accuracy[kind][2] == hits[kinds == kind].mean()
        assert result.logit_drop[kind][0] == 0


def test_head_ablation_equals_one_run_per_head(toy):
    samples = [sample(0, "test", i) for i in range(6)]
    result = head_ablation(toy, samples, batch_size=25)
    batch = toy_batch(toy, samples)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    kinds = np.array([s.kind for s in samples])
    for layer, head in [(0, 3), (1, 7)]:
        with torch.no_grad(), intervene(toy, [zero(f"decoder.layers.{layer}.self_attn", heads=[head])]):
            hits = (toy.model(**inputs).logits[:, -1].argmax(-1) == batch["labels"]).numpy()
        for kind in ("colour", "where", "count"):
            assert result.accuracy[kind][layer, head] == hits[kinds == kind].mean()


def test_ridge_probe_matches_numpy_least_squares():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=300)
    x = 3 * rng.normal(size=(4, 12))[y] + rng.normal(size=(300, 12))  # 4 well separated clusters
    assert ridge_accuracy(torch.tensor(x[:200]), y[:200], torch.tensor(x[200:]), y[200:], ridge=1e-6) > 0.9
    noise = rng.integers(0, 4, size=300)
    assert ridge_accuracy(torch.tensor(x[:200]), noise[:200], torch.tensor(x[200:]), noise[200:]) < 0.45
    mean, std = x[:200].mean(0), x[:200].std(0) + 1e-6  # the same probe, fitted by numpy's lstsq
    design = np.hstack([(x[:200] - mean) / std, np.ones((200, 1))])
    weights = np.linalg.lstsq(design, np.eye(4)[y[:200]], rcond=None)[0]
    by_numpy = (np.hstack([(x[200:] - mean) / std, np.ones((100, 1))]) @ weights).argmax(1)
    ours = ridge_accuracy(torch.tensor(x[:200]), y[:200], torch.tensor(x[200:]), y[200:], ridge=1e-9)
    assert ours == pytest.approx((by_numpy == y[200:]).mean())


def test_cell_labels_are_a_direct_reading_of_the_scene():
    s = sample(0, "test", 4)
    labels = cell_labels([s])
    assert labels["present"].sum() == len(s.scene.things)
    for t in s.scene.things:
        assert labels["colour"][0, t.row * GRID + t.col] == list(COLOURS).index(t.colour)
    assert (labels["colour"][0][labels["present"][0] == 0] == -1).all()


def test_image_lens_reads_the_hidden_states_transformers_returns(toy):
    samples = [sample(0, "test", i) for i in range(3)]
    lens = image_lens(toy, samples)
    batch = {k: v for k, v in toy_batch(toy, samples).items() if k != "labels"}
    with torch.no_grad():
        hidden = toy.model(**batch, output_hidden_states=True).hidden_states[1]  # after decoder layer 0
        image = batch["input_ids"] == toy.config.image_token_id
        logits = toy.model.lm_head(toy.model.model.language_model.norm(hidden[image]))  # (pictures * 16, vocab)
    decode = toy.processor.tokenizer.decode
    assert lens.top[0].reshape(-1).tolist() == [decode([int(i)]) for i in logits.argmax(-1)]


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("source", ["toy", "7B"])
def test_flops_count_every_linear_weight_of_the_model(source):
    spec = untrained_toy() if source == "toy" else anatomy.load("7B")
    config, model = spec.config, spec.model.model
    text = config.text_config
    layers = _linear_weights(model.language_model.layers)
    no_attention = decoder_flops(config, 1) - 4 * text.num_hidden_layers * text.hidden_size
    assert no_attention == 2 * layers + 2 * _linear_weights(spec.model.lm_head)
    vision = config.vision_config
    blocks, merger = _linear_weights(model.visual.blocks), _linear_weights(model.visual.merger)
    embed = model.visual.patch_embed.proj.weight.numel()
    patches = 4  # one merged token, a window of one patch group: attention 4 * patches^2 * width per block
    attention = 4 * patches * patches * vision.hidden_size * vision.depth
    assert vision_flops(config, patches) == 2 * patches * (blocks + embed) + 2 * merger + attention


def test_sweep_cost_counts_rows_from_the_config():
    config = anatomy.load("7B").config
    plan = sweep_cost(config, image_side=448, text_tokens=30)
    assert (plan.patches, plan.image_tokens, plan.prompt_tokens) == (1024, 256, 286)
    assert plan.vision_rows == 32 * 256 and plan.decoder_rows == 29 * 257
    assert sweep_cost(config, image_side=448, vision_sites=1, questions=3).vision_rows == 3 * 256
