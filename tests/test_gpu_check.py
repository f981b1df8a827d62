"""benchmarks/gpu_check.py on the tiny model, a small picture and the CPU, so that the GPU script cannot rot.

Each check runs as the script runs it on the 7B, and again with the thing it guards broken (a recorder
off by 1e-3, edits that are not applied...), to show that its verdict can fail.
"""

import contextlib
import importlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as modeling

import anatomy.decoder.attention
import anatomy.vision.attention
from anatomy.causal import intervene, patch, record
from anatomy.inputs import encode

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
HEIGHT, WIDTH = 140, 196  # 10 x 14 patches, 5 x 7 cells: 2 x 2 vision windows, the right and bottom ones partial
SMALL = ["--model", "tiny", "--height", str(HEIGHT), "--width", str(WIDTH), "--batch-rows", "5"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (its ``main`` is not run on import), as tests/test_benchmarks.py imports it."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def spec(gpu_check):
    return gpu_check.random_model("tiny", "cpu", torch.float32)  # the 7B's builder, on the tiny config


@pytest.fixture(scope="module")
def prompts(gpu_check, spec):
    """(clean, corrupted): the demo picture and the same with the house painted grey."""
    return tuple(encode(spec, p, gpu_check.QUESTION, max_pixels=None) for p in gpu_check.pictures(HEIGHT, WIDTH))


@pytest.fixture(scope="module")
def plain(gpu_check, spec, prompts):
    return gpu_check.logits(spec, prompts[0])


def versions(found: dict):
    """A stand-in for ``importlib.metadata.version`` that knows only ``found``."""
    def version(name):
        if name not in found:
            raise metadata.PackageNotFoundError(name)
        return found[name]

    return version


def test_missing_names_each_package_that_is_absent_or_older(gpu_check):
    assert gpu_check.missing(versions({"torch": "2.4.0", "transformers": "5.0.0.dev0"})) == []
    assert gpu_check.missing(versions({"torch": "2.3.1+cu121", "transformers": "5.25.0"})) == [
        "torch 2.3.1+cu121 is older than 2.4"]
    assert gpu_check.missing(versions({"transformers": "4.49.0"})) == [
        "torch is not installed", "transformers 4.49.0 is older than 5.0"]


def test_an_older_transformers_stops_the_script_with_one_line(tmp_path):
    """A transformers 4.49 found first on the path, as on a GPU machine with old packages and no network."""
    found = tmp_path / "transformers-4.49.0.dist-info"
    found.mkdir()
    (found / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.49.0\n")
    done = subprocess.run([sys.executable, str(SCRIPT), *SMALL], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        "gpu_check needs torch>=2.4 and transformers>=5.0: transformers 4.49.0 is older than 5.0"]


def test_a_missing_dependency_stops_the_script_with_one_line(tmp_path):
    """numpy, the first of the imports: the script stops before torch is imported."""
    (tmp_path / "numpy.py").write_text("raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n")
    done = subprocess.run([sys.executable, str(SCRIPT), *SMALL], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == ["gpu_check cannot import what the anatomy package needs (No module named "
                                        "'numpy'); pip install -e . in the checkout"]


def test_capture_check_compares_the_logits_exactly(gpu_check, spec, prompts, plain):
    check = gpu_check.capture_check(spec, prompts[0], plain)
    assert check.passed is True
    assert check.numbers == {"sites captured": "10/10", "max abs logit diff": 0.0}  # 2 + 4 blocks + 4 layers
    nudged = plain.clone()
    nudged[0, -1, 0] = torch.nextafter(nudged[0, -1, 0], torch.tensor(float("inf")))  # one float32 step: not equal
    assert gpu_check.capture_check(spec, prompts[0], nudged).passed is False


def test_attention_check_agrees_with_eager_attention(gpu_check, spec, prompts):
    check = gpu_check.attention_check(spec, prompts[0])
    assert check.passed is True
    assert float(check.numbers["vision max abs diff"]) <= 1e-5
    assert float(check.numbers["decoder max abs diff"]) <= 1e-5
    assert "5 segments" in check.note  # block 0: 4 windows; block 1 (full attention): the whole picture


def shifted(function, index=None):
    """``function`` with 1e-3 added to what it returns (to its ``index``-th item when a tuple)."""
    def wrong(*args, **kwargs):
        result = function(*args, **kwargs)
        if index is None:
            return result + 1e-3
        return (*result[:index], result[index] + 1e-3, *result[index + 1:])

    return wrong


@pytest.mark.parametrize("module, name, index, number", [
    (anatomy.vision.attention, "_segment", None, "vision max abs diff"),
    (anatomy.decoder.attention, "recompute_rows", 1, "decoder max abs diff"),
    (modeling, "eager_attention_forward", 1, "vision max abs diff"),  # transformers' own: the reference moves
])
def test_attention_check_fails_when_a_recorder_or_the_reference_is_off(gpu_check, spec, prompts, monkeypatch,
                                                                        module, name, index, number):
    monkeypatch.setattr(module, name, shifted(getattr(module, name), index))
    check = gpu_check.attention_check(spec, prompts[0])
    assert check.passed is False
    assert float(check.numbers[number]) == pytest.approx(1e-3, rel=1e-2)


def test_identity_check_is_exact_and_its_edits_are_applied(gpu_check, spec, prompts, plain):
    clean, corrupted = prompts
    cells = gpu_check.window_groups(clean["image_grid_thw"], spec.config.vision_config)[0]
    check = gpu_check.identity_check(spec, clean, corrupted, plain, cells)
    assert check.passed is True
    assert check.numbers["max abs logit diff"] == 0.0
    assert float(check.numbers["control (from the other picture)"]) > 0.01


def test_identity_check_fails_on_edits_not_applied_or_not_identity(gpu_check, spec, prompts, plain, monkeypatch):
    clean, corrupted = prompts
    cells = gpu_check.window_groups(clean["image_grid_thw"], spec.config.vision_config)[0]
    with monkeypatch.context() as patched:
        patched.setattr(gpu_check, "identity_edits", lambda *args: [])
        skipped = gpu_check.identity_check(spec, clean, corrupted, plain, cells)
    assert skipped.passed is False
    assert float(skipped.numbers["control (from the other picture)"]) == 0
    monkeypatch.setattr(gpu_check, "record", lambda model, batch, sites: record(model, corrupted, sites))
    assert gpu_check.identity_check(spec, clean, corrupted, plain, cells).passed is False


def test_window_groups_are_the_112_px_windows(gpu_check, spec, prompts):
    groups = gpu_check.window_groups(prompts[0]["image_grid_thw"], spec.config.vision_config)
    rows, cols = HEIGHT // 28, WIDTH // 28  # cells; a window is 4 x 4 cells (112 px)
    expected = [[(r, c) for r in range(rows) if r // 4 == i for c in range(cols) if c // 4 == j]
                for i in range(-(-rows // 4)) for j in range(-(-cols // 4))]
    assert groups == expected


def test_the_painted_groups_are_those_whose_pixels_differ(gpu_check, spec, prompts):
    clean, corrupted = prompts
    grid = clean["image_grid_thw"]
    groups = gpu_check.window_groups(grid, spec.config.vision_config)
    cols = int(grid[0, 2]) // 2
    patches = (clean["pixel_values"] != corrupted["pixel_values"]).any(-1)  # processor order: 2x2 patches a cell
    changed = patches.reshape(-1, 4).any(-1)  # cells, raster order
    expected = [any(changed[r * cols + c] for r, c in group) for group in groups]
    assert gpu_check.painted(groups, grid, 2).tolist() == expected
    assert any(expected) and not all(expected)


def test_a_batched_copy_is_the_whole_model_patched_alone(gpu_check, spec, prompts):
    """Decoder-only copies, several to a batch, against the full model (pixels included) with one patch."""
    clean, corrupted = prompts
    sites = gpu_check.sweep_sites(spec)
    groups = gpu_check.window_groups(clean["image_grid_thw"], spec.config.vision_config)
    inputs, _ = gpu_check.decoder_inputs(spec, clean)
    source = record(spec, corrupted, sites)
    variants = [(sites[1], 2), (sites[0], 0), (sites[2], 3)]
    rows = gpu_check.patched_last(spec, inputs, source, variants, groups)
    for row, (site, group) in zip(rows, variants):
        with intervene(spec, [patch(site, source, cells=groups[group])]):
            alone = gpu_check.logits(spec, clean)[0, -1]
        torch.testing.assert_close(row, alone, rtol=0, atol=1e-4)
    assert len({float(row.sum()) for row in rows}) == len(variants)  # three different patches, three answers


def test_sweep_check_passes_and_fails_when_its_patches_do_nothing(gpu_check, spec, prompts, monkeypatch):
    check = gpu_check.sweep_check(spec, *prompts, batch_rows=5)
    assert check.passed is True, check.note
    assert check.numbers["copies"] == "3 sites x 4 window groups = 12, 5 per pass"
    assert check.note.count(": yes") == 4
    monkeypatch.setattr(gpu_check, "intervene", lambda *args: contextlib.nullcontext())
    broken = gpu_check.sweep_check(spec, *prompts, batch_rows=5)
    assert broken.passed is False
    assert "whole decoder.layers.0.output patched = corrupted run: NO" in broken.note


def test_in_bfloat16_the_exact_checks_stay_exact_and_the_recorders_within_tolerance(gpu_check):
    """The 7B's dtype: the bit-identical checks and the stated bf16 tolerance, on the tiny model."""
    half = gpu_check.random_model("tiny", "cpu", torch.bfloat16)
    clean, corrupted = (encode(half, p, gpu_check.QUESTION, max_pixels=None)
                        for p in gpu_check.pictures(HEIGHT, WIDTH))
    plain = gpu_check.logits(half, clean)
    cells = gpu_check.window_groups(clean["image_grid_thw"], half.config.vision_config)[0]
    assert gpu_check.capture_check(half, clean, plain).passed is True
    assert gpu_check.identity_check(half, clean, corrupted, plain, cells).passed is True
    attention = gpu_check.attention_check(half, clean)
    assert attention.passed is True
    assert attention.numbers["tolerance"] == "1e-02"
    assert 0 < float(attention.numbers["decoder max abs diff"]) <= 1e-2  # bf16 rounding shows, within the bound


def test_main_writes_every_row_with_the_versions_it_ran_on(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main([*SMALL, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    header = result["header"]
    assert (header["device"], header["dtype"]) == ("CPU", "float32")
    assert (header["torch"], header["transformers"]) == (torch.__version__, metadata.version("transformers"))
    verdicts = {check["name"]: check["passed"] for check in result["checks"]}
    assert list(verdicts.values()) == [True, True, True, True, True]
    table = capsys.readouterr().out
    assert table == gpu_check.markdown(result)
    assert "| attribution patching | pass |" in table and "peak within the plan's: yes" in table


@pytest.mark.parametrize("arguments, message", [
    (["--model", "7B", "--device", "cpu"], "--model 7B needs a CUDA GPU"),
    ([*SMALL, "--batch-rows", "0"], "--batch-rows 0: expected at least 1"),
])
def test_main_refuses_what_it_cannot_run_before_building_a_model(gpu_check, capsys, arguments, message):
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(arguments)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
