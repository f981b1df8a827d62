"""Faults a class or CI meets with retrained toys (issue 13, items 3-6, 8, 9): each gives one clear message,
keeps the previous good model, and leaves no process, lock holder or partial directory behind.

Subprocesses run ``python -m anatomy toy ...`` as a user would; every wait is bounded in time.
Read-only and full file systems are small tmpfs mounts where the tests run as root, else permissions.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import anatomy
import anatomy.toy.load as toy_load
from anatomy.processor import offline_processor
from anatomy.toy import CACHE_ENV, CacheError, Recipe, cache_dir, load_toy, toy_config, train
from anatomy.toy.cache import cache_root, locked, verify
from anatomy.toy.load import ensure_trained
from anatomy.toy.training import Log
from anatomy.toy.weights import write_model

TINY = Recipe(scenes=2, warmup=1, check_every=1, check_samples=3, check_accuracy=0.0, cooldown=1, max_steps=5)
REPO = Path(__file__).resolve().parents[2]
WAIT = 240  # seconds: the longest any test waits for a subprocess (a busy 2-core machine starts python slowly)


@pytest.fixture(scope="module")
def trained():
    """A model from a few steps of training: what the faults below must keep or restore."""
    return train(toy_config(), TINY, offline_processor(), progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


def _env(root: Path) -> dict:
    return {**os.environ, CACHE_ENV: str(root), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _start(args: list[str], root: Path, log: Path) -> subprocess.Popen:
    """``python args...`` with ``root`` as the cache, stderr to ``log``; SIGINT behaves as in a terminal."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=_env(root), stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _wait_for(log: Path, text: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT
    while text not in log.read_text():
        assert process.poll() is None, f"exited {process.returncode} before {text!r}: {log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} within {WAIT} s: {log.read_text()}"
        time.sleep(0.2)


def _messages(log: Path) -> list[str]:
    """The lines the CLI printed for people (progress bars aside)."""
    return [line for line in log.read_text().replace("\r", "\n").splitlines() if line.startswith("anatomy toy:")]


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


@contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` with ``options`` (root only), unmounted on exit."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_retrain_keeps_the_previous_model_and_says_so_in_one_line(cache, trained, tmp_path, signum):
    directory = cache_dir(Recipe())
    write_model(trained, directory, Recipe(), Log())
    before = (directory / "manifest.json").read_text()
    log = tmp_path / "stderr.txt"
    process = _start(["-m", "anatomy", "toy", "train"], cache, log)
    _wait_for(log, "training the toy", process)
    process.send_signal(signum)
    assert process.wait(timeout=WAIT) == 130
    (line,) = _messages(log)
    assert "interrupted" in line and str(directory) in line and "Traceback" not in log.read_text()
    assert (directory / "manifest.json").read_text() == before and verify(directory)
    assert _leftovers(cache) == []


DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "a list": lambda text: json.dumps([json.loads(text)]),
    "without files": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "files"}),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_manifest_is_reported_set_aside_and_the_model_restored(cache, trained, damage):
    directory = cache_dir(TINY)
    write_model(trained, directory, TINY, Log())
    manifest = directory / "manifest.json"
    manifest.write_text(DAMAGES[damage](manifest.read_text()))
    with pytest.raises(CacheError, match="manifest.json") as error:
        load_toy(recipe=TINY)
    assert "set aside as" in str(error.value) and "\n" not in str(error.value)
    assert not directory.exists() and len(list(cache.glob(f"{directory.name}.damaged-*"))) == 1
    write_model(trained, directory, TINY, Log())  # damaged once more, now met by ensure_trained
    manifest.write_text(DAMAGES[damage](manifest.read_text()))
    with pytest.warns(UserWarning, match="set aside as .* retraining"):
        ensure_trained(TINY, progress=False)
    verify(directory)
    load_toy(recipe=TINY)


def test_a_cache_that_is_a_file_fails_before_training(tmp_path):
    root = tmp_path / "not-a-directory"
    root.write_text("x")
    log = tmp_path / "stderr.txt"
    process = _start(["-m", "anatomy", "toy", "train"], root, log)
    assert process.wait(timeout=WAIT) == 2
    (line,) = _messages(log)
    assert "is a file" in line and str(root) in line and "training the toy" not in log.read_text()


def test_a_read_only_cache_fails_before_training(tmp_path):
    log = tmp_path / "stderr.txt"
    if os.geteuid() == 0:  # root writes through permissions: a read-only file system
        with _tmpfs(tmp_path / "ro", "ro,size=1m") as root:
            code = _start(["-m", "anatomy", "toy", "train"], root, log).wait(timeout=WAIT)
    else:
        root = tmp_path / "ro"
        root.mkdir(mode=0o555)
        code = _start(["-m", "anatomy", "toy", "train"], root, log).wait(timeout=WAIT)
    (line,) = _messages(log)
    assert code == 2 and "not writable" in line and "training the toy" not in log.read_text()


def test_a_full_cache_fails_before_training(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        with _tmpfs(tmp_path / "small", "size=8m") as root:
            log = tmp_path / "stderr.txt"
            code = _start(["-m", "anatomy", "toy", "train"], root, log).wait(timeout=WAIT)
            (line,) = _messages(log)
            assert code == 2 and "MiB free" in line and "training the toy" not in log.read_text()
            assert list(root.iterdir()) == []
    else:
        import anatomy.toy.cache

        monkeypatch.setenv(CACHE_ENV, str(tmp_path))
        monkeypatch.setattr(anatomy.toy.cache, "free_bytes", lambda root: 1 << 20)
        monkeypatch.setattr(toy_load, "train", pytest.fail)
        with pytest.raises(CacheError, match="1 MiB free"):
            ensure_trained(TINY)


SHORT = Recipe(scenes=2, warmup=1, check_every=5, check_samples=3, check_accuracy=0.0, cooldown=5, max_steps=20)


@pytest.mark.parametrize("command", ["ensure", "train"])
def test_concurrent_runs_train_once_and_the_others_load_it(cache, tmp_path, command):
    script = (f"import torch; torch.set_num_threads(1); from anatomy.toy import Recipe; "
              f"from anatomy.toy.load import ensure_trained; "
              f"print(ensure_trained({SHORT!r}, retrain={command == 'train'}))")  # fmt: skip
    directory = cache_dir(SHORT)
    directory.parent.mkdir(parents=True)
    logs = [tmp_path / f"stderr{i}.txt" for i in range(2)]
    with locked(directory):  # held here until both wait for it
        processes = [_start(["-c", script], cache, log) for log in logs]
        for process, log in zip(processes, logs):
            _wait_for(log, "waiting for another process", process)
    outputs = [process.communicate(timeout=WAIT)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0] and outputs == [str(directory)] * 2
    assert sum("training the toy" in log.read_text() for log in logs) == 1
    verify(directory)
    assert _leftovers(cache) == []


def test_leftovers_of_killed_saves_are_swept_and_a_half_swapped_model_put_back(cache, trained, monkeypatch):
    directory = cache_dir(TINY)
    write_model(trained, directory, TINY, Log())
    partial = directory.parent / f".{directory.name}.partial-k1ll3d"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 1000)
    directory.rename(directory.parent / f".{directory.name}.previous-4242")  # killed between the two renames
    monkeypatch.setattr(toy_load, "train", pytest.fail)  # nothing to train: the model is put back
    assert ensure_trained(TINY, progress=False) == directory
    verify(directory)
    assert _leftovers(cache) == []


def test_a_relative_cache_is_resolved_once(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CACHE_ENV, "models")
    assert cache_root() == tmp_path / "models" and os.environ[CACHE_ENV] == str(tmp_path / "models")
    monkeypatch.chdir(tmp_path / "notebooks")  # a kernel started later, elsewhere, inherits the absolute path
    assert cache_root() == tmp_path / "models"


@pytest.mark.parametrize("source", ["tiny", "toy"])
def test_a_negative_seed_is_refused_alike_by_every_source(source):
    with pytest.raises(ValueError, match=r"seed=-1; expected a non-negative integer"):
        anatomy.load(source, seed=-1)


def test_the_cli_prints_warnings_as_one_line_without_a_source_line(monkeypatch, capsys):
    import anatomy.toy.cli
    from anatomy.toy.load import _warn

    monkeypatch.setattr(anatomy.toy.cli, "ensure_trained", lambda *args, **kwargs: _warn("cache damaged") or "dir")
    assert anatomy.toy.cli.main_toy(["ensure"]) == 0
    err = capsys.readouterr().err
    assert err == "anatomy toy: warning: cache damaged\n"


def test_the_progress_bar_shows_no_eta_before_the_length_is_known(capsys):
    """Until a check passes, the end is unknown: the bar counts steps (``4it``), with no total (``/4``)."""
    never = Recipe(scenes=2, check_every=2, check_samples=3, check_accuracy=1.0, max_steps=4)
    train(toy_config(), never, offline_processor(), progress=True)
    err = capsys.readouterr().err
    assert "4it" in err and "/4" not in err
    train(toy_config(), TINY, offline_processor(), progress=True)  # passes at step 1: 2 steps in all
    err = capsys.readouterr().err
    assert "2/2" in err and "(cool-down)" in err
    train(toy_config(), replace(TINY, cooldown=0), offline_processor(), progress=True)  # no stage 2: not named
    err = capsys.readouterr().err
    assert "1/1" in err and "cool-down" not in err


def test_load_never_trains(cache, monkeypatch):
    monkeypatch.setattr(toy_load, "train", pytest.fail)
    with pytest.raises(CacheError, match="python -m anatomy toy train --seed 4"):
        anatomy.load("toy", seed=4)
    assert torch.is_tensor(next(anatomy.load("toy").model.parameters()))  # the shipped toy
