"""Fault suite (issue 13), serving: a hung request, a stuck server, an owner killed mid-request.

One real ``transformers serve`` (tiny model) is owned by a separate Python process, the
way a notebook kernel owns it, so that the owner can be killed with real signals. The
OS is the reference for "nothing is left": no process in the server's process group,
zombies included (/proc, ``anatomy.processes``), no temporary model copy on disk. Every
wait is bounded and polls for what it needs.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from anatomy.processes import group_members, processes, wait_for
from anatomy.serving import REFERENCE_QUESTION, ServerTimeoutError, ServingError, chat, chat_messages, sample_image
from anatomy.serving.client import DEFAULT_MAX_TOKENS
from anatomy.serving.server import SCRATCH_PREFIX, sweep_orphans

OWNER = """
import json, sys
from anatomy.serving import LocalServer
server = LocalServer("tiny").start()
def report(**extra):
    print(json.dumps({"pid": server.pid, "base_url": server.base_url, "model": server.model,
                      "scratch": server._scratch, **extra}), flush=True)
report()
for line in sys.stdin:
    if line.strip() == "responsive":
        report(responsive=server.responsive(timeout=3))
    elif line.strip() == "restart":
        report(responsive=server.restart().responsive(timeout=30))
"""
START_LIMIT = 180  # seconds a server start may take on a loaded 2-core machine
GONE_LIMIT = 15  # seconds after a kill within which nothing may remain

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fault tests read /proc and prctl: Linux only")


def _owner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def _read(owner: subprocess.Popen, timeout: float = START_LIMIT) -> dict:
    ready, _, _ = select.select([owner.stdout], [], [], timeout)
    assert ready, f"the owner said nothing in {timeout} s"
    return json.loads(owner.stdout.readline())


def _ask(owner: subprocess.Popen, command: str) -> dict:
    owner.stdin.write(command + "\n")
    owner.stdin.flush()
    return _read(owner)


def _children(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.parent == pid and p.state != "Z"]


def _gone(pgid: int, scratch: str) -> bool:
    return not group_members(pgid) and not Path(scratch).exists()


def _left(pgid: int, scratch: str) -> str:
    return f"nothing left; left: processes {[str(p) for p in group_members(pgid)]}, copy {scratch} exists: {Path(scratch).exists()}"


@pytest.fixture(scope="module")
def owner():
    """A Python process that started a LocalServer and waits for commands; killed at the end in any case."""
    process = _owner()
    try:
        yield process, _read(process)
    finally:
        process.kill()
        process.wait()


def test_hung_image_fetch_is_a_bounded_timeout_and_the_server_is_seen_stuck(owner, silent):
    """The server fetches an http image from a socket that never answers: it blocks every later request."""
    process, info = owner
    silent_url, listener = silent
    errors = []
    messages = chat_messages(REFERENCE_QUESTION, images=[f"{silent_url}/qwen.png"])
    request = threading.Thread(target=_record, args=(errors, chat, info["base_url"], messages, info["model"]),
                               kwargs={"timeout": 2})
    request.start()
    request.join(timeout=30)
    assert not request.is_alive(), "chat(timeout=2) had not returned after 30 s"
    assert len(errors) == 1 and isinstance(errors[0], ServerTimeoutError) and "no answer within 2 s" in str(errors[0])
    assert select.select([listener], [], [], 0)[0], "the server never connected to the image's address"
    assert [p for p in group_members(info["pid"]) if p.state != "Z"]  # it still runs: `running` alone cannot tell
    assert _ask(process, "responsive")["responsive"] is False


def test_stuck_server_restarts_and_answers_within_the_default_max_tokens(owner):
    process, info = owner
    restarted = _ask(process, "restart")
    assert restarted["responsive"] is True
    assert restarted["pid"] != info["pid"] and not group_members(info["pid"])  # restart() returns once it is gone
    answer = chat(restarted["base_url"], chat_messages(REFERENCE_QUESTION, images=[sample_image()]), restarted["model"])
    assert 1 <= answer.usage["completion_tokens"] <= DEFAULT_MAX_TOKENS
    owner[1].update(restarted)


def test_owner_killed_by_sigkill_mid_request_leaves_no_process_and_no_copy(owner, silent):
    """A Jupyter kernel restart: SIGKILL while the server works on a request (a hung image fetch)."""
    process, info = owner
    silent_url, listener = silent
    assert Path(info["scratch"]).is_dir() and group_members(info["pid"])
    messages = chat_messages(REFERENCE_QUESTION, images=[f"{silent_url}/qwen.png"])
    errors = []
    request = threading.Thread(target=_record, args=(errors, chat, info["base_url"], messages, info["model"]))
    request.start()
    wait_for(lambda: select.select([listener], [], [], 0)[0], 30, "the server to fetch the request's image")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=GONE_LIMIT)
    wait_for(lambda: _gone(info["pid"], info["scratch"]), GONE_LIMIT, lambda: _left(info["pid"], info["scratch"]))
    request.join(timeout=GONE_LIMIT)
    assert not request.is_alive() and len(errors) == 1 and isinstance(errors[0], ServingError)


def _record(errors: list, function, *args, timeout: float = 30) -> None:
    try:
        function(*args, timeout=timeout)
    except ServingError as error:
        errors.append(error)


def test_owner_stopped_by_sigterm_during_start_leaves_no_process_and_no_copy():
    """A CI cancel: SIGTERM while the server loads (Python's default: die without running atexit)."""
    process = _owner()
    try:
        def logs():
            return list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}{process.pid}-*/server.log"))

        wait_for(lambda: logs() and _children(process.pid), START_LIMIT, "the server to be launched")
        watchdog, scratch = _children(process.pid)[0], logs()[0].parent
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=GONE_LIMIT)
        wait_for(lambda: _gone(watchdog, scratch), GONE_LIMIT, lambda: _left(watchdog, scratch))
    finally:
        process.kill()
        process.wait()


def test_copies_left_by_dead_owners_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    for owner_pid in (dead.pid, os.getpid()):
        (tmp_path / f"{SCRATCH_PREFIX}{owner_pid}-abc123" / "anatomy-tiny").mkdir(parents=True)
    assert sweep_orphans(tmp_path) == [tmp_path / f"{SCRATCH_PREFIX}{dead.pid}-abc123"]
    assert [path.name for path in tmp_path.iterdir()] == [f"{SCRATCH_PREFIX}{os.getpid()}-abc123"]
