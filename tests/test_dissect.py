"""The headless job, end to end on the tiny model and on the toy."""

import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

import anatomy
from anatomy.__main__ import main
from anatomy.capture import capture
from anatomy.decoder.generation import generate_traced
from anatomy.dissect import ANSWER_TOKENS, SITES, answer, dissect, job_bytes
from anatomy.inputs import demo_image, encode
from anatomy.model import block_kinds
from anatomy.toy.example import QUESTION, running_example
from anatomy.vision.attention import record_attention


def test_dissect_prints_the_anatomy_and_writes_figures(tmp_path, capsys):
    image = tmp_path / "picture.png"
    demo_image(336, 448).save(image)
    assert main(["dissect", str(image), "--model", "tiny", "--out", str(tmp_path / "figures")]) == 0
    report = capsys.readouterr().out
    assert re.search(r"image tokens \(<\|image_pad\|>\)\s+192\n", report)  # (336/28) * (448/28) = 12 * 16
    assert re.search(r"vision patches \(14x14 px\)\s+768\n", report)  # (336/14) * (448/14)
    assert "vision.merger.output" in report and "(192, 128)" in report
    captured = re.findall(r"^((?:vision|decoder)\.\S+)\s+\(", report, flags=re.MULTILINE)
    expected = ["vision.patch_embed", "vision.rotary.cos", *(f"vision.blocks.{i}.output" for i in range(4)),
                "vision.merger.output", *(f"decoder.layers.{i}.output" for i in range(4))]
    assert captured == expected  # only what the report and the figures read, not every site
    names = ("resize_grid", "patch_embeddings", "vision_rotary", "windows", "vision_attention_block1",
             "merged_tokens", "residual_norms", "answer_attention")
    assert sorted(path.stem for path in (tmp_path / "figures").iterdir()) == sorted(names)
    for name in names:
        with Image.open(tmp_path / "figures" / f"{name}.png") as figure:
            assert figure.width > 500


def test_dissect_refuses_a_bad_image_with_one_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "anatomy", "dissect", str(tmp_path / "missing.jpg"), "--model", "tiny"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    missing = str(tmp_path / "missing.jpg")
    assert result.stderr.strip().splitlines() == [f"anatomy dissect: image {missing!r} does not exist or is not a file"]


def test_on_the_toy_it_asks_the_running_question_and_prints_the_generated_answer(tmp_path, capsys):
    example = running_example()
    image = tmp_path / "cross.png"
    Image.fromarray(example.picture).save(image)
    assert main(["dissect", str(image)]) == 0  # the toy is the default model
    report = capsys.readouterr().out
    toy = anatomy.load("toy")
    prompt = encode(toy, example.picture, QUESTION)
    with torch.no_grad():
        generated = toy.model.generate(**prompt, max_new_tokens=1, do_sample=False)[0, -1:]
    said = toy.processor.tokenizer.decode(generated)
    assert f"question: {QUESTION}\nanswer:   {said}\n" in report
    assert said == example.answer  # and the trained toy gets it right


def test_on_the_toy_another_question_is_asked_with_a_warning(tmp_path):
    image = tmp_path / "cross.png"
    Image.fromarray(running_example().picture).save(image)
    with pytest.warns(UserWarning, match="answers only its task's questions"):
        report = dissect(image, "toy", text="What is the text in the illustrate?")
    assert "question: What is the text in the illustrate?\nanswer:   " in report


def test_answers_are_decoded_for_people(tiny):
    prompt = encode(tiny, demo_image(56, 84), "Describe the picture.")
    with torch.no_grad():
        generated = tiny.model.generate(**prompt, max_new_tokens=ANSWER_TOKENS, do_sample=False)
    new = generated[0, prompt["input_ids"].shape[1]:]
    text = answer(tiny, generate_traced(tiny, prompt, ANSWER_TOKENS, keep=()))
    assert text == tiny.processor.tokenizer.decode(new, skip_special_tokens=True)
    raw = "".join(tiny.processor.tokenizer.convert_ids_to_tokens(new.tolist()))
    assert "Ġ" in raw and "Ġ" not in text  # the byte-level symbol for a space is gone once decoded


def test_job_estimate_is_what_the_capture_and_the_recording_hold(tiny):
    """``job_bytes`` (checked against the budget before the run) against a direct count after it."""
    prompt = encode(tiny, demo_image(336, 448))
    full = block_kinds(tiny.config.vision_config).index("full")
    parts = job_bytes(tiny.config, prompt, full)
    with torch.no_grad(), capture(tiny, list(SITES)) as cache, record_attention(tiny, prompt, [full]) as maps:
        tiny.model(**prompt)
    held = sum(r.tensor.numel() * r.tensor.element_size() for records in cache.records.values() for r in records)
    assert parts["captured activations"] == held
    assert parts[f"vision attention map (block {full})"] == maps.estimate_bytes >= maps.captured_bytes
