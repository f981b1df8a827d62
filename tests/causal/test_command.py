"""``python -m anatomy patch|knockout|heads``, each against a reference: the library function run directly on the
same pictures (its numbers equal the JSON's), the model calls counted (none before a refusal, one for a plan),
and the files written (PNG signatures)."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

import anatomy
from anatomy.__main__ import main
from anatomy.causal import Contrast, attribution, logit_diff, pair, patching_sweep
from anatomy.causal import command as command_module
from anatomy.causal.calls import least_budget
from anatomy.causal.command import random_weights_model
from anatomy.causal.heads import head_sweep
from anatomy.causal.knockouts import knockout_sweep
from anatomy.causal.plan import countable, plan
from anatomy.inputs import demo_image
from anatomy.toy import sample
from anatomy.toy.experiments import counterfactual

QUESTION = "What colour is the house?"
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny):
    """The models the commands load, loaded once: ``anatomy.load`` of the same names gives the same weights."""
    return {"tiny": tiny, "toy": anatomy.load("toy"), "7B": anatomy.load("7B")}


@pytest.fixture(autouse=True)
def loaded_once(monkeypatch, models):
    monkeypatch.setattr(command_module, "load", lambda source, **options: models[source])


@pytest.fixture
def calls(monkeypatch, tiny):
    """Every model call (whole model, or the vision tower alone) made while a test runs."""
    made = []
    for cls in (Qwen2_5_VLForConditionalGeneration, type(tiny.model.model.visual)):
        forward = cls.forward

        def counted(self, *args, _forward=forward, _name=cls.__name__, **kwargs):
            made.append(_name)
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted)
    return made


@pytest.fixture(scope="module")
def house(tmp_path_factory):
    """A demo picture (2 x 3 cells) and the same with its right two thirds black, as PNG files."""
    folder = tmp_path_factory.mktemp("house")
    clean = np.array(demo_image(56, 84))
    corrupted = clean.copy()
    corrupted[:, 28:] = 0
    Image.fromarray(clean).save(folder / "clean.png")
    Image.fromarray(corrupted).save(folder / "corrupt.png")
    Image.fromarray(np.array(demo_image(84, 84))).save(folder / "square.png")
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return folder


@pytest.fixture(scope="module")
def cross():
    """The toy's first test question ("What colour is the cross?", yellow) and its counterfactual (green)."""
    clean = sample(0, "test", 0)
    return clean, counterfactual(clean)


@pytest.fixture(scope="module")
def toy_pictures(tmp_path_factory, cross):
    folder = tmp_path_factory.mktemp("toy")
    for name, one in zip(("clean", "corrupt"), cross):
        Image.fromarray(one.scene.pixels()).save(folder / f"{name}.png")
    return folder


def run(verb, pictures, *options, answers=("red", "blue"), question=QUESTION) -> int:
    return main([verb, str(pictures / "clean.png"), str(pictures / "corrupt.png"), "--question", question,
                 "--answers", *answers, *options])  # fmt: skip


def written(out, verb: str, figures: list[str]) -> dict:
    """The JSON the command wrote, once each figure is checked to be a PNG of some size."""
    for name in figures:
        path = out / f"{name}.png"
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    numbers = json.loads((out / f"{verb}.json").read_text())
    assert numbers["figures"] == [f"{name}.png" for name in figures]
    return numbers


def same(listed, array) -> None:
    np.testing.assert_allclose(np.array(listed, dtype=float), array, rtol=1e-6, atol=1e-6)  # None -> NaN


def test_patch_writes_the_sweeps_own_numbers(tiny, house, tmp_path, capsys):
    assert run("patch", house, "--model", "tiny", "--cells", "2x2", "--out", str(tmp_path)) == 0
    printed = capsys.readouterr().out
    contrast = Contrast([pair(tiny, house / "clean.png", QUESTION, corrupted_image=house / "corrupt.png")])
    metric = logit_diff(tiny, "red", "blue")
    reference = patching_sweep(tiny, contrast, metric, cells="2x2")
    check = contrast.check(metric)
    numbers = written(tmp_path, "patch", ["cells", "sites"])
    same(numbers["effects"], reference.effects[0])
    assert numbers["sites"] == reference.sites and numbers["groups"]["labels"] == list(reference.groups.labels)
    assert numbers["clean"] == {"metric": pytest.approx(reference.clean[0]), "answer": check.clean_answers[0]}
    assert numbers["corrupted"]["metric"] == pytest.approx(reference.corrupted[0])
    assert numbers["forward_passes"] == reference.forward_passes == numbers["plan"]["forward_passes"]
    assert f"answer '{check.clean_answers[0]}'" in printed and "top (site, cell group)" in printed
    assert "Ġ" not in printed and "plan: patching on tiny" in printed


def test_patch_approx_writes_attributions_cells_and_positions(tiny, house, tmp_path):
    assert run("patch", house, "--model", "tiny", "--approx", "--sites", "decoder", "--out", str(tmp_path)) == 0
    contrast = Contrast([pair(tiny, house / "clean.png", QUESTION, corrupted_image=house / "corrupt.png")])
    sites = [f"decoder.layers.{i}.input" for i in range(4)] + ["decoder.layers.3.output"]
    reference = attribution(tiny, contrast, logit_diff(tiny, "red", "blue"), sites)
    numbers = written(tmp_path, "patch", ["cells", "sites", "positions"])
    assert numbers["method"] == "attribution patching" and numbers["sites"] == sites
    same(numbers["effects"], reference.cells.effects[0])
    same(numbers["positions"]["effects"], reference.positions.effects[0])
    assert numbers["positions"]["tokens"] == reference.positions.tokens[0]


def test_knockout_on_the_toys_pictures_writes_the_sweeps_numbers(models, toy_pictures, cross, tmp_path, capsys):
    clean, corrupted = cross
    assert run("knockout", toy_pictures, "--cells", "2x2", "--out", str(tmp_path), question=clean.question,
               answers=(clean.answer, corrupted.answer)) == 0  # fmt: skip
    toy = models["toy"]
    contrast = Contrast([pair(toy, clean.scene.pixels(), clean.question, corrupted_image=corrupted.scene.pixels())])
    reference = knockout_sweep(toy, contrast, logit_diff(toy, clean.answer, corrupted.answer), cells="2x2")
    numbers = written(tmp_path, "knockout", ["knockout"])
    same(numbers["values"], reference.values[0])
    same(numbers["effects"], reference.effects[0])
    assert numbers["layers"] == [0, 1] and numbers["changed_cells"] == [[3, 0]]  # the cross's cell
    assert numbers["clean"]["answer"] == clean.answer and numbers["corrupted"]["answer"] == corrupted.answer
    assert "top (layer, cells)" in capsys.readouterr().out


def test_heads_on_the_toys_pictures_writes_the_sweeps_numbers(models, toy_pictures, cross, tmp_path):
    clean, corrupted = cross
    assert run("heads", toy_pictures, "--ablation", "patch", "--layers", "1", "--out", str(tmp_path),
               question=clean.question, answers=(clean.answer, corrupted.answer)) == 0  # fmt: skip
    toy = models["toy"]
    contrast = Contrast([pair(toy, clean.scene.pixels(), clean.question, corrupted_image=corrupted.scene.pixels())])
    reference = head_sweep(toy, contrast, logit_diff(toy, clean.answer, corrupted.answer), [1], "patch")
    numbers = written(tmp_path, "heads", ["heads"])
    same(numbers["values"], reference.values[0])
    assert numbers["ablation"] == "patch" and numbers["layers"] == [1]


def test_plan_prints_the_plan_and_runs_one_timing_pass(house, calls, capsys):
    assert run("knockout", house, "--model", "tiny", "--plan") == 0
    # the tower, then the model on its image tokens (decoder only): knockout's copies
    assert calls == ["Qwen2_5_VisionTransformerPretrainedModel", "Qwen2_5_VLForConditionalGeneration"]
    assert "plan: knockout on tiny" in capsys.readouterr().out


@pytest.mark.parametrize("options", [["--model", "7B"], ["--model", "7B", "--random-weights", "--device", "cpu"]])
def test_plan_of_the_7B_runs_nothing(house, calls, capsys, options):
    assert run("patch", house, "--plan", "--cells", "window", *options) == 0
    printed = capsys.readouterr().out
    assert not calls and "plan: patching on 7B (skeleton" in printed and "an H100 at 40%" in printed


BAD = [
    (["--model", "tiny", "--out", "{out}", "--missing"], "is not a file"),
    (["--model", "tiny", "--out", "{out}", "--video"], "is a video file"),
    (["--model", "tiny", "--out", "{out}", "--square"], "aspect ratios differ"),
    (["--model", "tiny", "--out", "{out}", "--answers", "dark red", "blue"], "needs a one-token answer"),
    (["--model", "tiny", "--out", "{out}", "--answers", "", "blue"], "is empty"),
    (["--model", "tiny", "--out", "{out}", "--sites", "decoder.layers.9.input"], "out of range"),
    (["--model", "tiny", "--out", "{out}", "--sites", "decoder.nonsense"], "unknown site"),
    (["--model", "tiny", "--out", "{out}", "--budget-gib", "0.0001"], "above --budget-gib 0.0001"),
    (["--model", "7B", "--out", "{out}"], "skeleton without weights"),
    (["--model", "7B", "--random-weights", "--device", "cpu", "--out", "{out}"], "run it on a GPU"),
    (["--model", "tiny"], "--out DIR is needed"),
]


@pytest.mark.parametrize("options, message", BAD)
def test_bad_input_is_one_line_and_status_2_before_the_model_runs(house, tmp_path, calls, capsys, options, message):
    options = [o.replace("{out}", str(tmp_path / "out")) for o in options]
    clean, corrupt = house / "clean.png", house / "corrupt.png"
    pictures = {"--missing": house / "missing.png", "--video": house / "clip.mp4", "--square": house / "square.png"}
    for flag, picture in pictures.items():
        if flag in options:
            options.remove(flag)
            corrupt = picture
    answers = ["--answers", "red", "blue"] if "--answers" not in options else []
    code = main(["patch", str(clean), str(corrupt), "--question", QUESTION, *answers, *options])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("anatomy patch: ") and message in error
    assert not calls and not (tmp_path / "out").exists()


def test_a_refusal_names_the_budget_that_the_plan_runs_with(models, house, calls, capsys):
    """``--approx`` on the 7B, over budget: the least ``--budget-gib`` the message names is the plan's peak at that
    budget (the weights apart), rounded up as printed; with it the command plans the sweep."""
    assert run("patch", house, "--model", "7B", "--approx", "--plan", "--budget-gib", "0.01") == 2
    printed, error = capsys.readouterr()
    suggested = float(re.search(r"the least that runs it is --budget-gib ([0-9.e+-]+);", error).group(1))
    contrast = Contrast([pair(countable(models["7B"]), house / "clean.png", QUESTION,
                              corrupted_image=house / "corrupt.png")])  # fmt: skip
    planned = plan(models["7B"], contrast, sweep="attribution", device="H100", budget_gib=suggested)
    held = planned.peak_bytes - planned.memory["weights"]
    assert planned.refusal is None and suggested == least_budget(held) >= held / 2**30 and not calls
    assert f"{suggested:g} GiB of it beside the weights" in printed  # the refused plan's peak, as printed
    assert run("patch", house, "--model", "7B", "--approx", "--plan", "--budget-gib", f"{suggested:g}") == 0
    assert "plan: attribution on 7B" in capsys.readouterr().out


def test_an_unknown_layer_is_refused_by_knockout(house, calls, capsys):
    assert run("knockout", house, "--model", "tiny", "--layers", "0,9", "--plan") == 2
    assert "layer [9] out of range" in capsys.readouterr().err and not calls


def test_random_weights_build_the_shipped_configuration(tiny):
    built = random_weights_model("tiny", "cpu")
    shapes = {name: p.shape for name, p in built.model.named_parameters()}
    assert shapes == {name: p.shape for name, p in tiny.model.named_parameters()}
    assert built.model.dtype == torch.bfloat16 and built.kind == "untrained"
    state = torch.random.get_rng_state()
    random_weights_model("tiny", "cpu")
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator left as it was
