"""The editor against references: answer probabilities against ``anatomy.causal.probability`` and a forward pass
on the toy's own encoder; patching back against ``record`` and ``patch`` run by hand; its controls; bad input."""

import numpy as np
import pytest
import torch

import anatomy
from anatomy.causal import intervene, pair, patch, probability, record
from anatomy.toy.edit import free_cells, move, recolour
from anatomy.toy.editor import ERASED, Edit, answer_words, editor, patch_back, probabilities, word_ids
from anatomy.toy.encode import encode
from anatomy.toy.example import running_example
from anatomy.toy.task import Sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return anatomy.load("toy")


@pytest.fixture(scope="module")
def example():
    return running_example()


def test_probabilities_are_what_causal_probability_and_a_plain_forward_measure(toy, example):
    edited = recolour(example.sample.scene, example.cell, "green")
    words = answer_words(example.sample)
    got = probabilities(toy, edited.pixels(), example.question, words)
    one = pair(toy, edited.pixels(), example.question, system=None)
    for word, value in zip(words, got):
        assert value == pytest.approx(one.check(probability(toy, word)).clean[0], abs=1e-6)
    batch = encode([Sample(edited, "colour", example.question, "green", example.sample.target)], toy.processor)
    batch.pop("labels")
    with torch.no_grad():
        plain = toy.model(**batch).logits[0, -1].softmax(-1)
    assert np.allclose(got, plain[word_ids(toy, words)].numpy(), atol=1e-6)


def test_word_ids_refuse_a_word_of_several_tokens(toy):
    pieces = [toy.processor.tokenizer.decode([t]) for t in toy.processor.tokenizer("yellowish").input_ids]
    assert len(pieces) > 1
    with pytest.raises(ValueError, match=f"'yellowish' is {len(pieces)} tokens .*'{pieces[-1]}'"):
        word_ids(toy, ["yellow", "yellowish"])
    with pytest.raises(ValueError, match="answer word 3 is 0 tokens"):
        word_ids(toy, [3])


def test_an_edit_is_its_scene_edits(example):
    scene, cell = example.sample.scene, example.cell
    both = Edit(example.sample, cell, "green", (3, 3))
    assert both.edited == move(recolour(scene, cell, "green"), cell, (3, 3)) and both.changed == [cell, (3, 3)]
    assert str(both) == f"the yellow cross in {cell} recoloured green and moved to (3, 3)"
    assert len(Edit(example.sample, cell, ERASED, cell).edited.things) == len(scene.things) - 1
    with pytest.raises(ValueError, match=r"cell \(1, 1\) is empty"):
        Edit(example.sample, (1, 1), "green", (1, 1)).edited


def test_the_controls_offer_only_valid_edits_and_redraw(toy, example):
    live = editor(toy, example.sample)
    others = {t.colour for t in example.sample.scene.things} - {example.answer}
    colours = [value for _, value in live.live.controls["colour"].options]
    assert set(colours) == ({"red", "green", "blue", "yellow", "purple", "orange"} - others) | {ERASED}
    assert [value for _, value in live.live.controls["to"].options] == [example.cell] + free_cells(example.sample.scene)
    assert live.edit == Edit(example.sample, example.cell, "green", example.cell)  # starts recoloured
    before = live.live.image.value
    live.live.controls["to"].value = free_cells(example.sample.scene)[0]
    assert live.live.image.value != before and live.edit.to == free_cells(example.sample.scene)[0]
    with pytest.raises(TypeError, match="expected an anatomy.toy.Sample"):
        editor(toy, example.question)


def effect_by_hand(toy, example, site: str) -> float:
    """The recoloured cross's cell patched back at ``site`` with ``record`` and ``patch``, logits read directly."""
    clean = pair(toy, example.picture, example.question, system=None).clean
    edited = pair(toy, recolour(example.sample.scene, example.cell, "green").pixels(), example.question,
                  system=None).clean  # fmt: skip
    yellow, green = word_ids(toy, ["yellow", "green"])

    def diff(batch, edits=()):
        with torch.no_grad(), intervene(toy, list(edits)):
            logits = toy.model(**batch).logits[0, -1]
        return float(logits[yellow] - logits[green])

    source = record(toy, dict(clean), site)
    patched = diff(dict(edited), [patch(site, source, cells=[example.cell])])
    return (patched - diff(dict(edited))) / (diff(dict(clean)) - diff(dict(edited)))


def test_patch_back_matches_patching_by_hand(toy, example):
    back = patch_back(toy, Edit(example.sample, example.cell, "green", example.cell))
    assert back.answers == ("yellow", "green")
    for site in ("vision.blocks.1.output", "decoder.layers.1.input", "decoder.layers.1.output"):
        assert back.restored[back.effects.sites.index(site)] == pytest.approx(effect_by_hand(toy, example, site),
                                                                               abs=1e-4)  # fmt: skip
    assert back.elsewhere.shape == (len(back.effects.sites),)


def test_patch_back_of_a_move_patches_both_cells_together(toy, example):
    moved = Edit(example.sample, example.cell, "green", (3, 3))
    back = patch_back(toy, moved, sites=["decoder.layers.0.input"], alone=False)
    assert back.effects.groups.members == ((example.cell, (3, 3)),)
    with pytest.raises(ValueError, match="no other cell was patched"):
        back.elsewhere


def test_patch_back_refuses_an_edit_that_keeps_the_answer(toy, example):
    with pytest.raises(ValueError, match="leaves the likeliest answer 'yellow'"):
        patch_back(toy, Edit(example.sample, example.cell, "yellow", (3, 3)))
