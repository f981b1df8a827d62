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
    two pictures), or the check cell fails now and then (it did: 1 in about 11 draws found no second picture)."""
    import random

    import anatomy

    toy = anatomy.load("toy")
    for seed in range(30):
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
    assert judge("busiest_head", (0, 2), rows=rows, on_cell=on_cell).hint == "your answer is (0, 2): item 0 is not right"
    assert judge("busiest_head", None, rows=rows, on_cell=on_cell).status == NOT_ANSWERED
    assert judge("busiest_head", 5, rows=rows, on_cell=on_cell).hint == "your answer is an int; expected a tuple of 2 items"
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
