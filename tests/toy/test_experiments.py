"""The toy's causal experiments, each against a reference: direct counts of the scene, one unbatched run per
condition or patch, the general sweeps they adapt, numpy."""

import numpy as np
import pytest
import torch

from anatomy.causal import intervene, knock_out, patch, patching_sweep, record, zero
from anatomy.kernels import fast_vision
from anatomy.processor import token_texts
from anatomy.toy import sample, untrained_toy
from anatomy.toy.experiments import (
    contrasts,
    counterfactual,
    head_ablation,
    image_lens,
    knockout_by_layer,
    knockout_queries,
    patching,
    positions,
    toy_batch,
)
from anatomy.toy.experiments.probes import cell_labels
from anatomy.toy.shapes import GRID
from anatomy.toy.task import COLOURS


def changed_cells(clean, corrupted) -> np.ndarray:
    """``(16,)`` bool, raster order: the cells whose object (shape, colour) differs, read off the two scenes."""
    def content(s) -> dict:
        return {(t.row, t.col): (t.shape, t.colour) for t in s.scene.things}

    a, b = content(clean), content(corrupted)
    return np.array([a.get((r, c)) != b.get((r, c)) for r in range(GRID) for c in range(GRID)])


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


def test_patching_equals_one_unbatched_patch_each(toy):
    """Every (site, cell) and the answer position of the adapter, against one run per patch: flipped =
    (LD_clean - LD_patched) / (LD_clean - LD_counterfactual), on the toy's own left-padded batches."""
    samples = [sample(0, "test", i) for i in (0, 1)]  # prompts of two lengths: a colour and a where question
    sites = ["vision.blocks.1.output", "decoder.layers.1.input"]
    sweep = patching(toy, contrasts(toy, samples), sites)
    assert sweep.effects.shape == (2, 2, 17) and np.isnan(sweep.effects[:, 0, 16]).all()
    for q, clean in enumerate(samples):
        corrupted = counterfactual(clean)
        a, b = toy_batch(toy, [clean]), toy_batch(toy, [corrupted])
        good, bad = int(a["labels"][0]), int(b["labels"][0])
        source = record(toy, {k: v for k, v in b.items() if k != "labels"}, sites)
        base, flipped = _ld(toy, a, good, bad), _ld(toy, b, good, bad)
        for s, site in enumerate(sites):
            for k, selection in [(5, {"cells": [(1, 1)]}), (12, {"cells": [(3, 0)]}), (16, {"positions": [-1]})]:
                if k == 16 and site.startswith("vision"):
                    continue
                patched = _ld(toy, a, good, bad, [patch(site, source, **selection)])
                assert sweep.effects[q, s, k] == pytest.approx((base - patched) / (base - flipped), abs=1e-3)
        assert np.array_equal(sweep.changed[q], changed_cells(clean, corrupted))


def test_decoder_cells_by_position_equal_the_general_sweep_by_cell(toy):
    """At a decoder site the adapter patches each cell's token by position; the general sweep by cell agrees."""
    questions = contrasts(toy, [sample(0, "test", i) for i in range(3)])
    site = "decoder.layers.0.input"
    ours = patching(toy, questions, [site]).cells
    with fast_vision(toy.model):  # the image tokens the adapter computes, to the last bit
        general = patching_sweep(toy, questions.contrast, questions.metric, [site], direction="corrupted->clean")
    np.testing.assert_allclose(ours.effects, general.effects, atol=1e-6)
    assert ours.groups == general.groups and np.array_equal(ours.changed, general.changed)


def test_positions_name_each_token_and_patch_it_alone(toy):
    """The flipped share at one position, against one unbatched run that patches only that position."""
    clean = sample(0, "test", 2)
    found = positions(toy, contrasts(toy, [clean]), "decoder.layers.1.input")
    a, b = toy_batch(toy, [clean]), toy_batch(toy, [counterfactual(clean)])
    good, bad = int(a["labels"][0]), int(b["labels"][0])
    source = record(toy, {k: v for k, v in b.items() if k != "labels"}, "decoder.layers.1.input")
    base, flipped = _ld(toy, a, good, bad), _ld(toy, b, good, bad)
    ids = a["input_ids"][0].tolist()
    assert len(found.tokens[0]) == len(ids) and found.tokens[0].count("img 3,0") == 1
    for p in (3, ids.index(toy.config.image_token_id) + 5, len(ids) - 1):
        patched = _ld(toy, a, good, bad, [patch("decoder.layers.1.input", source, positions=[p])])
        assert found.effects[0, p] == pytest.approx((base - patched) / (base - flipped), abs=1e-3)


def test_knockout_queries_block_each_questions_own_position(toy):
    """Positions count in each question's own prompt, also when the batch pads shorter prompts on the left."""
    samples = [sample(0, "test", 0), sample(0, "test", 1)]  # 43 and 48 tokens
    right, drop = knockout_queries(toy, samples, [40, 45], [0, 1])
    for i, (s, p) in enumerate(zip(samples, [40, 45])):
        alone = toy_batch(toy, [s])
        inputs = {k: v for k, v in alone.items() if k != "labels"}
        with torch.no_grad():
            plain = toy.model(**inputs).logits[0, -1]
            with intervene(toy, [knock_out([0, 1], queries=[p], keys="image")]):
                knocked = toy.model(**inputs).logits[0, -1]
        label = int(alone["labels"][0])
        assert drop[i] == pytest.approx(float(plain[label] - knocked[label]), abs=1e-4)
        assert right[i] == (int(knocked.argmax()) == label)


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
    assert lens.top[0].reshape(-1).tolist() == token_texts(toy.processor.tokenizer, logits.argmax(-1))
