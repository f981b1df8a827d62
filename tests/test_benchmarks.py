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

from anatomy.processes import stop_group, wait_for

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
    parsed = scripts("suite_stability").parse(done.stdout + done.stderr, "sample")
    assert done.returncode == 1
    assert parsed["parts"]["sample"]["counts"].startswith("1 failed, 2 passed")
    assert parsed["parts"]["sample"]["slowest"][0].endswith("call test_sample.py::test_slow")
    assert parsed["left"] == 1 and parsed["left_names"].endswith("stray.txt") and parsed["check_seconds"] >= 0


def test_suite_stability_names_parts_that_end_out_of_order(scripts, tmp_path):
    """`make test` runs its parts side by side and prints each whole when it ends: a real make -j2
    --output-sync run of two parts, the first to start the last to end, each read under its own name."""
    (tmp_path / "test_slow.py").write_text("import time\ndef test_slow(): time.sleep(1.5)\n")
    (tmp_path / "test_quick.py").write_text("def test_quick(): pass\ndef test_wrong(): assert False\n")
    pytest_run = f"{sys.executable} -m pytest -q -p no:cacheprovider --durations=10"
    (tmp_path / "Makefile").write_text(textwrap.dedent(f"""\
        slow:
        \t@echo "== part: slow =="
        \t{pytest_run} test_slow.py
        quick:
        \t@echo "== part: quick =="
        \t{pytest_run} test_quick.py
    """))
    done = subprocess.run(["make", "--no-print-directory", "-k", "-j2", "--output-sync=target", "slow", "quick"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    parsed = scripts("suite_stability").parse(log)
    assert log.index("== part: quick ==") < log.index("== part: slow ==")  # out of order, each part whole
    assert list(parsed["parts"]) == ["quick", "slow"]
    assert parsed["parts"]["quick"]["counts"].startswith("1 failed, 1 passed")
    assert parsed["parts"]["slow"]["counts"] == "1 passed"
    assert parsed["parts"]["slow"]["slowest"][0].endswith("call test_slow.py::test_slow")
    assert parsed["left"] is None


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc: Linux only")
def test_the_suites_memory_counts_every_process_under_it(scripts, tmp_path):
    """``tree_pss`` against what was allocated: a child that holds nothing itself, under it a grandchild
    holding 300 MiB written page by page; the tree counts the grandchild, the child's own PSS does not."""
    ready = tmp_path / "ready"
    grandchild = (f"import pathlib, time; b = bytearray(300 * 2**20); pathlib.Path({str(ready)!r}).touch(); "
                  "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                              f"{grandchild!r}])"], start_new_session=True)
    try:
        wait_for(ready.exists, 60, "the grandchild to allocate its 300 MiB")
        tree = scripts("suite_stability").tree_pss(child.pid)
        rollup = Path(f"/proc/{child.pid}/smaps_rollup").read_text()
        child_only = sum(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    finally:
        stop_group(child)
    assert 300 * 2**20 <= tree < 300 * 2**20 + 100 * 2**20
    assert child_only < 50 * 2**20
