"""The notebooks' exercises: every solution of the teachers' guide passes its check, a plausible wrong answer to
each is rejected with a hint that does not give the answer away, answers of the wrong type or shape get a hint
(never a traceback), and an untouched stub is "not answered yet"."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from anatomy.exercises import EXERCISES, exercise, judge
from anatomy.lab.exercises import NOT_ANSWERED, Case, Exercise, check, same_tensor, verdict

GUIDE = Path(__file__).parents[2] / "docs" / "teachers" / "solutions.py"
spec = importlib.util.spec_from_file_location("solutions", GUIDE)
solutions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(solutions)

NEEDS_SPECIMEN = {"mrope_ids", "lens_top"}
FUNCTIONS = sorted(name for name, e in EXERCISES.items() if e.function)


@pytest.fixture(scope="module")
def tiny():
    from anatomy.model import tiny

    torch.set_num_threads(1)
    return tiny()


def context(name, tiny):
    return {"specimen": tiny} if name in NEEDS_SPECIMEN else {}


def _off_by_one_resize(height, width, min_pixels, max_pixels):
    h, w = solutions.smart_resize(height, width, min_pixels, max_pixels)
    return w, h  # height and width swapped


def _floor_resize(height, width, min_pixels, max_pixels):
    return height // 28 * 28, width // 28 * 28  # floors instead of rounding, and ignores the bounds


def _raster_patchify(image):
    c, h, w = image.shape
    x = image.reshape(c, h // 14, 14, w // 14, 14).permute(1, 3, 0, 2, 4)  # (rows, cols, c, y, x): raster order
    return torch.stack([x, x], dim=3).reshape(-1, 1176)


def _interleaved_probs(q, k):
    keys = k[torch.arange(q.shape[0]) % k.shape[0]]  # head h reads kv head h % KV
    scores = (q @ keys.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(
        torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


# (exercise, a plausible wrong answer, words its hint must contain)
WRONG = {
    "attention_parameters": (lambda h, q, kv: 4 * h * h + 3 * h, "narrower"),  # GQA ignored
    "chat_prompt": (lambda question, images: solutions.chat_prompt(question, images).split("<|im_start|>user")[0][:0]
                    + "<|im_start|>user\n" + solutions.chat_prompt(question, images).split("<|im_start|>user\n")[1],
                    "system message"),
    "smart_resize": (_off_by_one_resize, "swapped"),
    "patchify": (_raster_patchify, "2 x 2 group"),
    "rotation_angles": (lambda ids, d, theta: torch.cat([solutions.rotation_angles(ids, d, theta)[:, d // 4:],
                                                         solutions.rotation_angles(ids, d, theta)[:, :d // 4]], -1),
                        "swapped"),
    "window_ids": (lambda rows, cols, side: solutions.window_ids(rows, cols, side).T.contiguous()
                   if rows == cols else solutions.window_ids(cols, rows, side).T, "column by column"),
    "merge": (lambda merger, patches: merger.mlp(patches.reshape(-1, 4 * patches.shape[-1])), "ln_q"),
    "mrope_ids": (lambda ids, grid: solutions.mrope_ids(ids, grid[:, [0, 2, 1]]), "id at token"),  # h/w swapped
    "attention_probs": (_interleaved_probs, "h % "),
    "per_area": (lambda a, r: torch.einsum("lbc,bcr->lbr", a, torch.nn.functional.one_hot(r.long(), 3).float()),
                 "divide by the number of cells"),
    "lens_top": (lambda spec, stream: tuple(torch.softmax(spec.model.lm_head(stream).float(), -1).max(-1))[::-1],
                 "final norm"),  # the norm skipped
}


def test_every_function_exercise_has_a_solution_and_a_wrong_answer():
    assert set(FUNCTIONS) <= set(WRONG) and all(hasattr(solutions, name) for name in FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_solution_passes(name, tiny):
    for seed in (0, 1):
        result = judge(name, getattr(solutions, name), seed=seed, **context(name, tiny))
        assert result.status == "right", result


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_wrong_answer_gets_a_hint_without_the_answer(name, tiny):
    wrong, words = WRONG[name]
    result = judge(name, wrong, seed=0, **context(name, tiny))
    assert result.status == "not right yet" and words in result.hint, result
    cases = exercise(name).cases(__import__("random").Random(0), **context(name, tiny))
    first_wrong = next(c for c in cases if exercise(name)._one(wrong, c))
    assert f"on {first_wrong.label}," in result.hint  # the hint names the input that failed
    expected = first_wrong.expected
    shown = [expected] if not isinstance(expected, torch.Tensor) else []
    shown += [str(v) for v in expected.flatten()[:8].tolist()] if isinstance(expected, torch.Tensor) else []
    hidden = result.hint.split(f"on {first_wrong.label},")[1]
    for value in shown:
        if isinstance(value, str) and len(value) < 4:
            continue
        assert str(value) not in hidden, (value, result.hint)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_an_untouched_stub_is_not_answered_yet(name, tiny):
    def stub(*args):
        ...  # your code

    def raising(*args):
        raise NotImplementedError

    for answer in (stub, raising, None):
        assert judge(name, answer, seed=0, **context(name, tiny)).status == NOT_ANSWERED


@pytest.mark.parametrize("answer, words", [
    (42, "expected a function"),
    (lambda *args: "a string", "str"),
    (lambda *args: {"a": 1}, "dict"),
    (lambda *args: torch.zeros(1, 2, 3, 4, 5), "dimensions"),
    (lambda *args: 1 / 0, "ZeroDivisionError"),
])
def test_wrong_types_and_shapes_get_a_hint_not_a_traceback(answer, words):
    for name in ("patchify", "smart_resize", "attention_parameters", "per_area"):
        result = judge(name, answer, seed=0)
        assert result.status == "not right yet" and result.hint, result
    assert words in judge("patchify", answer, seed=0).hint


def test_a_wrong_shape_names_the_dimension_not_the_size():
    hint = judge("patchify", lambda image: solutions.patchify(image)[:-1], seed=0).hint
    assert "dimension 0 is not right" in hint and "(3, 28, 28)" in hint


def test_the_patching_exercise_on_the_toy_catches_a_hook_left_behind():
    import anatomy

    toy = anatomy.load("toy")
    assert judge("patch_by_hand", solutions.patch_by_hand, seed=0, specimen=toy).status == "right"

    def leaky(specimen, batch, source, layer, position):
        specimen.model.model.language_model.layers[0].register_forward_hook(lambda *args: None)
        return solutions.patch_by_hand(specimen, batch, source, layer, position)

    result = judge("patch_by_hand", leaky, seed=0, specimen=toy)
    assert "left a hook" in result.hint
    assert not any(m._forward_hooks for m in toy.model.modules())  # and the check removed it
    unpatched = judge("patch_by_hand", lambda s, b, src, layer, p: s.model(**b).logits[:, -1], seed=0, specimen=toy)
    assert unpatched.status == "not right yet"


def test_the_patching_exercise_draws_its_cases_for_any_seed():
    """A notebook's check draws fresh random cases each run: every draw must be a valid pair (the same question,
    two pictures), or the check cell fails now and then (it did: 1 in about 11 draws found no second picture).
    The draws of 300 seeds; the cases they become, for 2 of them."""
    import random

    import anatomy
    from anatomy.exercises.causal import patch_draws

    for seed in range(300):
        for layer, position, asked, other in patch_draws(random.Random(seed), layers=2):
            assert asked.question == other.question and asked.scene != other.scene, seed
            assert 0 <= layer < 2 and -6 <= position <= -1, seed
    toy = anatomy.load("toy")
    for seed in range(2):
        for case in exercise("patch_by_hand").cases(random.Random(seed), specimen=toy):
            batch, source = case.args[1], case.args[2]
            assert torch.equal(batch["input_ids"], source["input_ids"]), seed
            assert not torch.equal(batch["pixel_values"], source["pixel_values"]), seed


def test_the_experiments_of_notebook_09_are_checked_against_the_model():
    """The patched answer against the teachers' plain-hook patch; a colour word the model does not give, a
    probability off by 0.1, and answers of the wrong type are refused with a hint."""
    import anatomy
    from anatomy.toy import QUESTION_TYPES, sample
    from anatomy.toy.experiments import counterfactual, toy_batch

    toy = anatomy.load("toy")
    by_type = {kind: [sample(0, "test", i) for i in range(k, 9, 3)] for k, kind in enumerate(QUESTION_TYPES)}
    asked = by_type["colour"][2]
    inputs = [{k: v for k, v in toy_batch(toy, [s]).items() if k != "labels"} for s in (asked, counterfactual(asked))]
    last = toy.config.text_config.num_hidden_layers - 1
    word = toy.processor.tokenizer.decode(solutions.patch_by_hand(toy, *inputs, last, -1).argmax(-1)).strip()
    assert judge("patched_answer", word, specimen=toy, asked=asked).status == "right"
    assert judge("patched_answer", f" {word}", specimen=toy, asked=asked).status == "right"
    other = next(c for c in ("red", "green", "blue", "yellow", "purple", "orange") if c != word)
    assert "not what the model answers" in judge("patched_answer", other, specimen=toy, asked=asked).hint
    assert "a string" in judge("patched_answer", 3, specimen=toy, asked=asked).hint
    colour = by_type["colour"][1]
    right = exercise("blocked_colour").cases(None, specimen=toy, asked=colour)[0].expected
    assert judge("blocked_colour", round(right, 3), specimen=toy, asked=colour).status == "right"
    wrong = judge("blocked_colour", min(right + 0.1, 1.0) if right < 0.9 else right - 0.1, specimen=toy, asked=colour)
    assert wrong.status == "not right yet" and f"{right:.3f}" not in wrong.hint
    assert "from 0 to 1" in judge("blocked_colour", "0.5", specimen=toy, asked=colour).hint
    assert judge("zeroed_where", None, specimen=toy, asked=by_type["where"][0]).status == NOT_ANSWERED


def test_the_experiments_of_notebook_11_are_checked_against_the_model():
    """The erased cross against a patch-back read independently (the first site, in data-flow order, where less
    than half comes back); site names and effects of the wrong type or value are refused with a hint."""
    import anatomy
    from anatomy.toy.editor import Edit, patch_back, site_label
    from anatomy.toy.example import running_example

    toy = anatomy.load("toy")
    example = running_example()
    erase = Edit(example.sample, example.cell, "erased", example.cell)
    back = patch_back(toy, erase, alone=False)
    first = next(site for site, restored in zip(back.effects.sites, back.restored) if restored < 0.5)
    assert judge("erased_stops", site_label(first), specimen=toy, edit=erase).status == "right"
    others = [site_label(s) for s in back.effects.sites if s != first]
    assert "not it" in judge("erased_stops", others[0], specimen=toy, edit=erase).hint
    assert "site name" in judge("erased_stops", 3, specimen=toy, edit=erase).hint
    assert "expected a float" in exercise("moved_together").compare("0.5", 0.5)
    assert exercise("moved_together").compare(0.51, 0.5) is None
    assert "not it" in exercise("moved_together").compare(0.6, 0.5)


def test_value_exercises_compare_with_what_the_package_computes():
    rows = type("Rows", (), {"layers": [0, 1], "heads": [0, 1, 2]})()
    on_cell = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.1, 0.0]])  # layer 1, head 0 holds the most
    assert judge("busiest_head", (1, 0), rows=rows, on_cell=on_cell).status == "right"
    wrong = judge("busiest_head", (0, 2), rows=rows, on_cell=on_cell)
    assert wrong.hint == "your answer is (0, 2): item 0 is not right"
    assert judge("busiest_head", None, rows=rows, on_cell=on_cell).status == NOT_ANSWERED
    wrong_type = judge("busiest_head", 5, rows=rows, on_cell=on_cell)
    assert wrong_type.hint == "your answer is an int; expected a tuple of 2 items"
    from anatomy.vision.resize import memory_ratio

    ratio = memory_ratio(1080, 1920, 1024 * 28 * 28, 256 * 28 * 28)
    assert judge("memory_ratio", round(ratio, 2)).status == "right"
    assert judge("memory_ratio", ratio ** 0.5).status == "not right yet"  # linear in tokens: a plausible guess
    assert "number" in judge("memory_ratio", "16").hint


def test_an_exercise_refuses_a_missing_notebook_object():
    with pytest.raises(ValueError, match="specimen"):
        judge("mrope_ids", solutions.mrope_ids)
    with pytest.raises(ValueError, match="no exercise 'patchfy'"):
        exercise("patchfy")


def test_the_framework_on_a_small_exercise(capsys):
    double = Exercise("double", "double(x)", lambda rng: [Case("x = 1", (1,), 2), Case("x = 5", (5,), 10)])
    double.check(lambda x: 2 * x)
    double.check(lambda x: x + 1)
    assert capsys.readouterr().out.splitlines() == [
        "exercise double: right: checked on 2 inputs",
        "exercise double: not right yet: on x = 5, your function returns 6, which is not it",
    ]
    assert same_tensor(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])).endswith("check the order")


def test_exercise_verdicts():
    assert verdict(None, 3) == "not answered yet"
    assert verdict(3, 3) == "right" and verdict(4, 3).startswith("not right")
    assert verdict(0.9995, 1.0, tolerance=1e-3) == "right"
    assert verdict("::1", "127.0.0.1", alternatives=("::1",)) == "right"
    assert verdict(True, 1, tolerance=0.5) == "right"  # a bool is compared as an answer, not as a number


def test_check_prints_the_numbered_verdict(capsys):
    check(2, 5, 5)
    check(3, None, 5)
    assert capsys.readouterr().out == "exercise 2: right\nexercise 3: not answered yet\n"


@pytest.fixture(scope="module")
def toy():
    import anatomy

    torch.set_num_threads(1)
    return anatomy.load("toy")


@pytest.fixture(scope="module")
def attribution_cases(toy):
    """Seed 0's cases of notebook 11's exercise: three recoloured pictures, the package's attribution for each."""
    import random

    return exercise("attribution_by_hand").cases(random.Random(0), specimen=toy)


def _attribution(specimen, one, metric, layer, sign=1, activation="difference", gradient="corrupted", scale=True,
                 order="rows"):
    """Attribution at decoder layer ``layer``'s input written apart from the solution, with one mistake switched on:
    the sign, an activation instead of the difference, the clean run's gradient, no scale, or column order."""
    block = specimen.model.model.language_model.layers[layer]
    runs, kept = {}, {}

    def probe(module, args):
        kept.update(a=args[0].detach(), p=torch.zeros_like(args[0], requires_grad=True))
        return (args[0] + kept["p"], *args[1:])

    for side in ("clean", "corrupted"):
        handle = block.register_forward_pre_hook(probe)
        try:
            with torch.enable_grad():
                value = metric(specimen.model(**getattr(one, side)).logits)[0]
                runs[side] = value.detach(), kept["a"], torch.autograd.grad(value, kept["p"])[0]
        finally:
            handle.remove()
    (clean_value, clean, clean_grad), (value, corrupted, grad) = runs["clean"], runs["corrupted"]
    moved = {"difference": clean - corrupted, "clean": clean, "corrupted": corrupted}[activation]
    change = sign * (moved * (grad if gradient == "corrupted" else clean_grad)).sum(-1)[0]
    cells = change[one.corrupted["input_ids"][0] == specimen.config.image_token_id].view(one.grid)
    cells = cells / (clean_value - value) if scale else cells
    return cells if order == "rows" else cells.T


@pytest.mark.parametrize("mistake, words", [
    ({"sign": -1}, "sign flipped"),
    ({"activation": "corrupted"}, "corrupted activation alone"),
    ({"activation": "clean"}, "clean activation alone"),
    ({"gradient": "clean"}, "gradient taken on the clean run"),
    ({"scale": False}, "not normalised"),
    ({"order": "columns"}, "column by column"),
])
def test_attribution_by_hand_names_each_typical_mistake(mistake, words, toy, attribution_cases):
    hints = [exercise("attribution_by_hand")._one(lambda *a: _attribution(*a, **mistake), c) for c in attribution_cases]
    assert any(h and words in h for h in hints), hints  # caught, with its own hint, on at least one picture


def test_attribution_by_hand_accepts_the_solution_and_an_independent_implementation(toy, attribution_cases):
    """The teachers' solution passes the whole check; an implementation written apart from it (above) agrees with
    anatomy.causal.attribution on every case, at both decoder layers; a stub is "not answered yet"."""
    one = exercise("attribution_by_hand")._one
    assert {c.args[3] for c in attribution_cases} == {0, 1}
    for answer in (solutions.attribution_by_hand, _attribution):
        assert all(one(answer, c) is None for c in attribution_cases)
    assert one(lambda *a: None, attribution_cases[0]) == NOT_ANSWERED
    assert "1 dimensions, expected 2" in one(lambda s, pair, m, layer: torch.zeros(16), attribution_cases[0])

    def leaky(specimen, pair, metric, layer):
        specimen.model.model.language_model.layers[layer].register_forward_pre_hook(lambda *args: None)
        return solutions.attribution_by_hand(specimen, pair, metric, layer)

    assert "left a hook" in one(leaky, attribution_cases[0])
    assert not any(m._forward_pre_hooks for m in toy.model.modules())  # and the check removed it


def test_attribution_by_hand_draws_valid_edits_for_any_seed():
    """Every draw: three different held-out colour questions, the running example first, each asked object
    recoloured to a colour that is neither its own nor any other object's (so the answer changes)."""
    import itertools
    import random

    from anatomy.exercises.causal import colour_edits
    from anatomy.toy.example import running_example

    for seed in range(200):
        edits = colour_edits(random.Random(seed), 3)
        assert edits[0][0] == running_example().sample, seed
        assert all(a.scene != b.scene for (a, *_), (b, *_) in itertools.combinations(edits, 2)), seed
        for asked, (row, col), colour in edits:
            assert asked.kind == "colour", seed
            others = [t.colour for t in asked.scene.things if (t.row, t.col) != (row, col)]
            assert colour != asked.answer and colour not in others, seed


@pytest.fixture(scope="module")
def request_parts():
    """Notebook 00's request: the processor, the toy's first held-out question and its 112 x 112 picture."""
    from anatomy.inputs import load_image
    from anatomy.processor import offline_processor
    from anatomy.toy import sample

    asked = sample(0, "test", 0)
    return {"processor": offline_processor(), "question": asked.question, "image": load_image(asked.scene.pixels())}


def _hf_count(processor, question, images):
    """prompt tokens straight from the processor: the chat template with the default system message, then the
    processor's expansion of each picture, apart from anatomy.serving."""
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]
    messages = [{"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
                {"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=list(images), return_tensors="pt")["input_ids"].shape[1]


def test_notebook_00_counts_are_checked_with_a_hint_that_names_the_mistake(request_parts):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    processor, question, image = request_parts.values()
    one = _hf_count(processor, question, [image])
    bigger = _hf_count(processor, question, [Image.new("RGB", (224, 224))])
    twice = _hf_count(processor, question, [image, image])
    height, width = smart_resize(1080, 1920, factor=28, min_pixels=56 * 56, max_pixels=1003520)
    capped = (height // 28) * (width // 28)
    text, cells = one - 16, 64  # the 112 x 112 picture is 4 x 4 cells, the 224 x 224 one 8 x 8
    answers = {  # exercise: (right answer, {wrong answer: words of its hint})
        "bigger_picture": (bigger, {cells: "chat template's text", text + 4 * cells: "2 x 2 patches", one: "112 x 112",
                                    bigger + 1: "too big", bigger - 1: "too small", 224 * 224: "pixels"}),
        "picture_twice": (twice, {twice - 2: "<|vision_start|>", 2 * one: "sent once", one: "sends it twice",
                                  twice + 1: "too big"}),
        "capped_screenshot": (capped, {1280: "rounded down", 4 * capped: "2 x 2 patches", capped - 1: "too small",
                                       (1080 // 28) * (1920 // 28): "scales both sides", height * width: "pixels"}),
    }
    for name, (right, wrong) in answers.items():
        context = request_parts if name != "capped_screenshot" else {}
        assert judge(name, None, **context).status == NOT_ANSWERED
        (case,) = exercise(name).cases(None, **context)  # counted once; each answer compared with it below
        assert exercise(name)._one(right, case) is None, name
        assert "whole number" in exercise(name)._one(str(right), case)
        for answer, words in wrong.items():
            hint = exercise(name)._one(answer, case)
            assert words in hint and str(right) not in hint.replace(str(answer), ""), (name, answer, hint)


def test_the_seed_exercise_of_notebook_08_compares_the_retrained_step():
    """The retraining itself takes minutes (it ran once by hand: see the teachers' guide); here its comparison, on
    steps written out, and the prediction left as None, which trains nothing."""
    from anatomy.exercises.toy import Retrained

    compare = exercise("seed_passes").compare
    assert compare("earlier", Retrained(1100, 3000, 1800)) is None
    assert compare(" later", Retrained(2100, 3000, 1800)) is None
    assert compare("same", Retrained(1800, 3000, 1800)) is None
    assert compare("later", Retrained(None, 3000, 1800)) is None  # no check passed in 3000 steps: later than 1800
    assert "not it" in compare("later", Retrained(1100, 3000, 1800))
    assert "more steps" in compare("later", Retrained(None, 2, 1800))
    assert "expected one of" in compare("soon", Retrained(1100, 3000, 1800))
    assert "expected one of" in compare(1, Retrained(1100, 3000, 1800))
    assert judge("seed_passes", None, toy_seed=1, steps=3000).status == NOT_ANSWERED
