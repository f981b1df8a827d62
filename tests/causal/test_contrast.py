"""Contrasts and metrics, each against a reference: the model's own logits, a loop of forwards, unbatched runs,
a picture resized by hand, raw pixels, and the toy's own encoder, batches and scene cells."""

import numpy as np
import pytest
import torch
from PIL import Image

import anatomy
from anatomy.causal import Contrast, as_metric, log_prob, logit_diff, pair, probability
from anatomy.causal.batches import answer_logits
from anatomy.inputs import encode
from anatomy.toy import sample
from anatomy.toy.encode import answer_token
from anatomy.toy.experiments import counterfactual, toy_batch
from anatomy.vision.video import moving_square

QUESTION = "What colour is the house?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two(tiny, painted):
    """One question about two pictures of one size (2 x 3 cells), differing in a box across cells."""
    return pair(tiny, painted(), QUESTION, corrupted_image=painted(box=(20, 40, 50, 60)))


@pytest.fixture(scope="module")
def toy():
    return anatomy.load("toy")


def forward_logits(spec, prompt) -> torch.Tensor:
    """``(vocab,)`` the model's logits after the prompt, straight from transformers."""
    with torch.no_grad():
        return spec.model(**prompt).logits[0, -1]


def answer_ids(spec, text: str) -> list[int]:
    """The answer's tokens as they follow ``<|im_start|>assistant\\n``, tokenized together with it."""
    prefix = spec.processor.tokenizer("<|im_start|>assistant\n").input_ids
    ids = spec.processor.tokenizer(f"<|im_start|>assistant\n{text}").input_ids
    assert ids[: len(prefix)] == prefix
    return ids[len(prefix):]


def forced_by_loop(spec, prompt, text: str) -> float:
    """Sum of log p(answer token | prompt, earlier answer tokens), one forward pass per token."""
    batch, total = dict(prompt), 0.0
    for token in answer_ids(spec, text):
        with torch.no_grad():
            total += float(torch.log_softmax(spec.model(**batch).logits[0, -1], -1)[token])
        step = torch.tensor([[token]])
        batch["input_ids"] = torch.cat([batch["input_ids"], step], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(step)], 1)
        batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(step)], 1)
    return total


def test_metrics_equal_the_models_own_logits(tiny, two):
    red, blue = answer_token(tiny.processor, "red"), answer_token(tiny.processor, "blue")
    ld, p = two.check(logit_diff(tiny, "red", "blue")), two.check(probability(tiny, "red"))
    mine = two.check(as_metric(lambda x: x[:, 9707] * 2, "twice logit('Hello')"))
    for side, prompt in (("clean", two.clean), ("corrupted", two.corrupted)):
        logits = forward_logits(tiny, prompt)
        assert getattr(ld, side)[0] == pytest.approx(float(logits[red] - logits[blue]), abs=1e-5)
        assert getattr(ld, f"{side}_answers")[0] == tiny.processor.tokenizer.decode([int(logits.argmax())])
        assert getattr(p, side)[0] == pytest.approx(float(torch.softmax(logits, -1)[red]), rel=1e-4)
        assert getattr(mine, side)[0] == pytest.approx(2 * float(logits[9707]), abs=1e-5)
    with torch.no_grad():
        full = tiny.model(**two.clean).logits  # (1, S, vocab): the metric reads the last position
    assert float(logit_diff(tiny, "red", "blue")(full)[0]) == pytest.approx(float(full[0, -1, red] - full[0, -1, blue]))


def test_log_prob_equals_a_loop_of_forwards(tiny, two, painted):
    other = pair(tiny, painted(box=(0, 28, 0, 28)), QUESTION, corrupted_image=painted(box=(28, 56, 28, 84)))
    answers = ["a red circle", "blue"]  # 3 tokens and 1: one batch, the shorter answer padded
    contrast = Contrast([two, other])
    assert contrast.groups == [[0, 1]]
    found = contrast.check(log_prob(tiny, answers))
    for i, (p, text) in enumerate(zip([two, other], answers)):
        assert found.clean[i] == pytest.approx(forced_by_loop(tiny, p.clean, text), abs=1e-4)
        assert found.corrupted[i] == pytest.approx(forced_by_loop(tiny, p.corrupted, text), abs=1e-4)


def test_batches_equal_unbatched_runs(tiny, two, painted):
    longer = pair(tiny, painted(), QUESTION, corrupted_question="Is the house red, or is the house blue?")
    third = pair(tiny, painted(box=(0, 10, 0, 84)), QUESTION, corrupted_image=painted(box=(40, 56, 0, 30)))
    pairs = [two, longer, third]
    assert Contrast(pairs).groups == [[0, 2], [1]]  # `longer`'s corrupted prompt has its own layout
    assert Contrast(pairs, batch_size=1).groups == [[0], [2], [1]]
    metric = logit_diff(tiny, ["red", "blue", "green"], ["blue", "red", "red"])
    together = Contrast(pairs).check(metric)
    for i, p in enumerate(pairs):
        alone = p.check(logit_diff(tiny, metric.answers[0].texts[i], metric.answers[1].texts[i]))
        np.testing.assert_allclose(together.clean[i], alone.clean[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(together.corrupted[i], alone.corrupted[0], rtol=1e-5, atol=1e-5)
        assert together.clean_answers[i] == alone.clean_answers[0]


def test_resize_equals_a_picture_resized_by_hand(tiny, painted):
    small, big = painted(56, 84), painted(112, 168, box=(0, 50, 0, 60))  # 2 x 3 cells and 4 x 6, both 2:3
    with pytest.raises(ValueError, match=r"grids differ.*2 x 3 cells.*4 x 6 cells.*match='resize'.*56 x 84 px"):
        pair(tiny, small, QUESTION, corrupted_image=big)
    matched = pair(tiny, small, QUESTION, corrupted_image=big, match="resize")
    by_hand = encode(tiny, Image.fromarray(big).resize((84, 56), Image.Resampling.BICUBIC), QUESTION)
    assert torch.equal(matched.corrupted["pixel_values"], by_hand["pixel_values"])
    assert torch.equal(matched.corrupted.grid_thw, matched.clean.grid_thw) and matched.resized_from == (112, 168)


@pytest.mark.parametrize("match", [None, "resize"])
def test_different_aspect_ratios_are_refused(tiny, match, painted):
    with pytest.raises(ValueError, match=r"aspect ratios differ.*56 x 84 px.*56 x 112 px"):
        pair(tiny, painted(56, 84), QUESTION, corrupted_image=painted(56, 112), match=match)


@pytest.mark.parametrize("box", [(20, 40, 50, 60), (0, 28, 0, 28), (30, 31, 83, 84), (0, 56, 27, 29)])
def test_changed_cells_equal_a_raw_pixel_comparison(tiny, box, painted):
    clean, corrupted = painted(), painted(box=box)
    reference = (clean != corrupted).reshape(2, 28, 3, 28, 3).any((1, 3, 4))  # (rows, 28 px, cols, 28 px, RGB)
    found = pair(tiny, clean, QUESTION, corrupted_image=corrupted)
    assert found.grid == (2, 3) and np.array_equal(found.changed, reference)


def scene_cells(clean, corrupted) -> np.ndarray:
    """``(16,)`` bool, raster order: the cells whose object (shape, colour) differs, read off the two toy scenes."""
    def content(s) -> dict:
        return {(t.row, t.col): (t.shape, t.colour) for t in s.scene.things}

    a, b = content(clean), content(corrupted)
    return np.array([a.get((r, c)) != b.get((r, c)) for r in range(4) for c in range(4)])


def test_toy_changed_cells_equal_the_scene_cells(toy):
    samples = [sample(0, "test", i) for i in range(5)]
    counterfactuals = [counterfactual(s) for s in samples]
    pairs = [pair(toy, s.scene.pixels(), s.question, corrupted_image=c.scene.pixels(), system=None)
             for s, c in zip(samples, counterfactuals)]
    for s, c, p in zip(samples, counterfactuals, pairs):
        assert np.array_equal(p.changed.reshape(-1), scene_cells(s, c))
        assert torch.equal(p.clean["input_ids"], toy_batch(toy, [s])["input_ids"])  # the toy's own prompt
    found = Contrast(pairs).check(logit_diff(toy, [s.answer for s in samples], [c.answer for c in counterfactuals]))
    good, bad = toy_batch(toy, samples)["labels"], toy_batch(toy, counterfactuals)["labels"]
    for side, chosen in (("clean", samples), ("corrupted", counterfactuals)):
        logits = answer_logits(toy, toy_batch(toy, chosen))  # the toy's way: one left-padded batch
        expected = logits.gather(1, good[:, None]) - logits.gather(1, bad[:, None])
        np.testing.assert_allclose(getattr(found, side), expected[:, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_text_aligns_from_the_end_and_the_picture_by_cell(tiny, painted):
    found = pair(tiny, painted(), QUESTION, corrupted_question="Is it red?")
    clean, corrupted = found.clean["input_ids"][0], found.corrupted["input_ids"][0]
    image = tiny.config.image_token_id
    assert not found.changed.any()
    assert torch.equal(found.counterpart[clean == image], (corrupted == image).nonzero()[:, 0])
    start = int((clean == image).nonzero()[0])
    assert torch.equal(found.counterpart[:start], torch.arange(start))  # the same text before the picture
    tail = torch.arange(len(clean) - 6, len(clean))  # '?', then <|im_end|> \n <|im_start|> assistant \n
    assert torch.equal(corrupted[found.counterpart[tail]], clean[tail])
    assert torch.equal(found.counterpart[tail], tail - len(clean) + len(corrupted))
    shorter = len(clean) - len(corrupted)  # the clean question's first tokens have no counterpart
    after = int((clean == image).nonzero()[-1]) + 1  # <|vision_end|>, then the question
    assert (found.counterpart[after : after + shorter] == -1).all()
    assert (found.counterpart[after + shorter :] >= 0).all()


def test_an_explicit_map_replaces_the_text_alignment(tiny, painted):
    found = pair(tiny, painted(), QUESTION, corrupted_question="Is it red?", positions={-1: -1, 0: 3})
    clean, corrupted = found.clean["input_ids"][0], found.corrupted["input_ids"][0]
    text = clean != tiny.config.image_token_id
    assert found.counterpart[-1] == len(corrupted) - 1 and found.counterpart[0] == 3
    assert (found.counterpart[text] >= 0).sum() == 2
    with pytest.raises(ValueError, match="image token"):
        pair(tiny, painted(), QUESTION, positions={int((~text).nonzero()[0]): 0})
    with pytest.raises(ValueError, match=r"corrupted position 99 is outside"):
        pair(tiny, painted(), QUESTION, positions={0: 99})


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("bad, message", [
    (lambda t, draw: pair(t, draw(56, 84), QUESTION, corrupted_image=draw(56, 112)), r"aspect ratios differ"),
    (lambda t, draw: pair(t, draw(56, 84), QUESTION, corrupted_image=draw(112, 168)), r"grids differ"),
    (lambda t, draw: pair(t, draw(), QUESTION, match="stretch"), r"match='stretch'"),
    (lambda t, draw: logit_diff(t, "a red circle", "blue"), r"'a red circle' is 3 tokens \['a', ' red', ' circle'\]"),
    (lambda t, draw: probability(t, ""), r"answer '' is empty"),
    (lambda t, draw: log_prob(t, ["red", ""]), r"answer '' is empty"),
    (lambda t, draw: pair(t, moving_square(), QUESTION), r"image is a video \(Clip of 20 frames\)"),
    (lambda t, draw: pair(t, draw(), QUESTION, corrupted_image=moving_square().frames), r"shape \(20, 112, 140, 3\)"),
    (lambda t, draw: pair(t, "clip.mp4", QUESTION), r"a video file, 'clip.mp4'"),
    (lambda t, draw: pair(t, draw(), QUESTION).check(logit_diff(t, ["red", "blue"], "green")),
     r"2 answers \['red', 'blue'\] for 1 rows"),
])  # fmt: skip
def test_bad_input_stops_before_the_model_runs(tiny, painted, bad, message):
    before, calls = hooks(tiny.model), []
    handle = tiny.model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message) as error:
            bad(tiny, painted)
    finally:
        handle.remove()
    assert calls == [] and hooks(tiny.model) == before
    assert "Ġ" not in str(error.value)


@pytest.mark.parametrize("metric, message", [
    (lambda x: x.sum(), r"returned \(\); expected a tensor of shape \(1,\)"),
    (lambda x: x[:, :2], r"returned \(1, 2\)"),
    (lambda x: x[:, 0] * float("nan"), r"returned NaN for rows \[0\]"),
])  # fmt: skip
def test_a_metric_of_the_wrong_shape_or_nan_is_refused(tiny, two, metric, message):
    before = hooks(tiny.model)
    with pytest.raises(ValueError, match=message):
        two.check(as_metric(metric, "mine"))
    assert hooks(tiny.model) == before
