"""The toy shipped in the package: its hashes, its answers against the task's ground truth, its turn ending,
the same answers and figure on 1 and 2 threads; and a short training that writes nowhere but its own cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

import anatomy
from anatomy.toy import CacheError, sample
from anatomy.toy.cache import verify
from anatomy.toy.embedding import frozen_embedding
from anatomy.toy.encode import answer_token, encode, stop_token
from anatomy.toy.figures import looking_figure
from anatomy.toy.weights import SHIPPED, read_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy():
    return anatomy.load("toy")


def test_the_shipped_files_match_their_hashes_and_stay_small():
    manifest = verify(SHIPPED)
    assert sorted(manifest["files"]) == ["curve.json", "model.safetensors"]
    assert sum((SHIPPED / name).stat().st_size for name in manifest["files"]) < 5e6
    assert manifest["recipe"]["seed"] == manifest["embedding"]["seed"] and manifest["passed_at"] is not None


def test_the_shipped_weights_leave_out_only_the_embedding(toy):
    from safetensors import safe_open

    with safe_open(SHIPPED / "model.safetensors", "pt") as stored:
        names = set(stored.keys())
    everything = set(toy.model.state_dict())
    assert everything - names == {"model.language_model.embed_tokens.weight", "lm_head.weight"}
    assert sum(p.numel() for n, p in toy.model.named_parameters() if n in names) < 1_000_000


def test_a_different_embedding_stream_is_one_clear_error(monkeypatch):
    import anatomy.toy.training as training  # read_model regenerates the embedding through initial_model

    def shifted(*args):
        table = frozen_embedding(*args)
        table[0, 0] = torch.nextafter(table[0, 0], torch.tensor(1.0))  # one value off by one float32 ulp
        return table

    monkeypatch.setattr(training, "frozen_embedding", shifted)
    with pytest.raises(CacheError, match="frozen embedding regenerated from seed 0") as error:
        read_model(SHIPPED)
    assert "\n" not in str(error.value)


def test_damaged_shipped_weights_are_one_error_that_says_how_to_restore(tmp_path, monkeypatch):
    import anatomy.toy.load as toy_load

    copy = tmp_path / "shipped"
    copy.mkdir()
    for path in SHIPPED.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(toy_load, "SHIPPED", copy)
    with pytest.raises(CacheError, match="does not match its sha256.*git checkout -- anatomy/toy/shipped"):
        anatomy.load("toy")


def test_held_out_questions_are_answered_right_and_the_turn_ends(toy):
    """``generate`` (greedy) on held-out questions: the task's answer, then ``<|im_end|>``, where it stops."""
    samples = [sample(0, "test", i) for i in range(1000, 1009)]  # every question type, 3 times
    batch = encode(samples, toy.processor)
    batch.pop("labels")
    with torch.no_grad():
        out = toy.model.generate(**batch, max_new_tokens=4, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    for s, tokens in zip(samples, new.tolist()):
        assert tokens[:2] == [answer_token(toy.processor, s.answer), stop_token(toy.processor)], s.question


def test_one_and_two_threads_give_the_same_answers(toy):
    samples = [sample(0, "test", i) for i in range(30)]
    batch = encode(samples, toy.processor)
    batch.pop("labels")
    threads = torch.get_num_threads()
    logits = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                logits.append(toy.model(**batch, logits_to_keep=1).logits[:, -1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(logits[0].argmax(-1), logits[1].argmax(-1))
    assert torch.allclose(logits[0], logits[1], atol=1e-4, rtol=1e-4)


def test_one_and_two_threads_draw_the_same_figure(toy):
    """The figure notebooks 07 and 08 show of the toy's looking, rendered with 1 and 2 torch threads."""
    samples = [sample(0, "test", i) for i in range(6)]
    threads, pixels = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            canvas = FigureCanvasAgg(looking_figure(toy, samples))
            canvas.draw()
            pixels.append(np.asarray(canvas.buffer_rgba()).astype(int))
    finally:
        torch.set_num_threads(threads)
    assert pixels[0].shape == pixels[1].shape
    differ = np.abs(pixels[0] - pixels[1]).max(-1)
    assert differ.max() <= 1 and (differ > 0).mean() < 1e-3  # a colour-map step at most, on a handful of pixels


SMOKE = """
from anatomy.toy import Recipe
from anatomy.toy.load import ensure_trained
import json, torch
torch.set_num_threads(1)
directory = ensure_trained(Recipe(scenes=4, warmup=5, check_every=10, check_samples=3, check_accuracy=1.0,
                                  max_steps=40), progress=False)
print(json.dumps([entry["loss"] for entry in json.loads((directory / "curve.json").read_text())]))
"""


def test_a_short_training_learns_and_writes_only_into_its_cache(tmp_path):
    home, work, cache = (tmp_path / name for name in ("home", "work", "cache"))
    home.mkdir()
    work.mkdir()
    shipped = {p.name: p.stat().st_mtime_ns for p in SHIPPED.iterdir()}
    env = {**os.environ, "HOME": str(home), "ANATOMY_CACHE": str(cache), "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "MPLCONFIGDIR": str(home / "mpl")}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", SMOKE], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    losses = json.loads(run.stdout.strip().splitlines()[-1])  # mean loss of steps 1-10, 11-20, 21-30, 31-40
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
    assert list(work.iterdir()) == [] and [p.name for p in home.iterdir() if p.name != "mpl"] == []
    written = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(written) == 1 and written[0].startswith("toy-")
    assert {p.name: p.stat().st_mtime_ns for p in SHIPPED.iterdir()} == shipped
