"""The benchmark scripts stay runnable: `make bench` is not part of `make test`, so a change of the package's
API that breaks a script (as ``encode`` returning a read-only ``Prompt`` once broke attention_memory.py)
is caught here, without timing anything."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py"))


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their sibling ``results``
    return importlib.import_module


def test_the_make_bench_scripts_are_all_here():
    make = (BENCHMARKS.parent / "Makefile").read_text()
    listed = {stem for stem in SCRIPTS if f"benchmarks/{stem}.py" in make}
    by_hand = {  # not in `make bench`: run by hand
        "results",  # the sibling the scripts write RESULTS.md with
        "toy_seeds",  # trains for half an hour
        "suite_stability",  # runs the browser test 10 times and `make test` twice: over an hour
        "gpu_check",  # the 7B on a GPU
    }
    assert listed == set(SCRIPTS) - by_hand


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports(scripts, name):
    assert callable(getattr(scripts(name), "main" if name != "results" else "write_section"))


def test_attention_memory_prompt_appends_the_answer_after_the_image_prompt(scripts, tiny):
    bench = scripts("attention_memory")
    batch, rows = bench.prompt(tiny)
    answer = tiny.processor.tokenizer(bench.ANSWER)["input_ids"]
    ids = batch["input_ids"][0]
    assert ids[[row + 1 for row in rows]].tolist() == answer  # each row predicts the next answer token
    assert rows[-1] + 1 == len(ids) - 1
    assert batch["attention_mask"].shape == batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    assert int((ids == tiny.config.image_token_id).sum()) == 1040  # 1120x728 px: 40 x 26 merged cells
    assert torch.equal(batch["mm_token_type_ids"][0] == 1, ids == tiny.config.image_token_id)


def test_suite_stability_reads_a_real_suite_runs_verdict_durations_and_leftovers(scripts, tmp_path):
    """The log parser on the output of a real suite run: pytest under ``anatomy.processes suite``, with one
    failed test, one slow one and a file left in its TMPDIR."""
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import os, time
        def test_slow(): time.sleep(0.5)
        def test_fast(): pass
        def test_leaves_a_file(): open(os.path.join(os.environ["TMPDIR"], "stray.txt"), "w").close(); assert False
    """))
    pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10", str(tmp_path)]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the inner run's TMPDIR inside this test's own
    done = subprocess.run([sys.executable, "-m", "anatomy.processes", "suite", "--", *pytest_run], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    parsed = scripts("suite_stability").parse(done.stdout + done.stderr, ("sample",))
    assert done.returncode == 1
    assert parsed["parts"]["sample"]["counts"].startswith("1 failed, 2 passed")
    assert parsed["parts"]["sample"]["slowest"][0].endswith("call test_sample.py::test_slow")
    assert parsed["left"] == 1 and parsed["left_names"].endswith("stray.txt") and parsed["check_seconds"] >= 0
