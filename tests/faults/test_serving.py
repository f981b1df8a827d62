"""Fault suite (issue 13), serving: a hung request, a stuck server, an owner killed mid-request.

One real ``transformers serve`` (tiny model) is owned by a separate Python process, the
way a notebook kernel owns it, so that the owner can be killed with real signals. The
OS is the reference for "nothing is left": no live process in the server's process
group (/proc), no temporary model copy on disk. Every wait is bounded.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

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


def _live(pgid: int | None = None, ppid: int | None = None) -> list[int]:
    """Pids of live (not zombie) processes in process group ``pgid`` or with parent ``ppid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended while being read
        if state != "Z" and (int(group) == pgid or int(parent) == ppid):
            found.append(int(stat.parent.name))
    return found


def _wait_for(condition, limit: float = GONE_LIMIT) -> bool:
    deadline = time.monotonic() + limit
    for _ in range(int(limit / 0.1) + 1):  # bounded in count and in time
        if condition() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return condition()


def _gone(info: dict) -> bool:
    return not _live(pgid=info["pid"]) and not Path(info["scratch"]).exists()


@pytest.fixture(scope="module")
def owner():
    """A Python process that started a LocalServer and waits for commands; killed at the end in any case."""
    process = _owner()
    try:
        yield process, _read(process)
    finally:
        process.kill()
        process.wait()


def test_hung_image_fetch_is_a_bounded_timeout_and_the_server_is_seen_stuck(owner, silent_url):
    """The server fetches an http image from a socket that never answers: it blocks every later request."""
    process, info = owner
    start = time.monotonic()
    with pytest.raises(ServerTimeoutError, match="no answer within 2 s"):
        messages = chat_messages(REFERENCE_QUESTION, images=[f"{silent_url}/qwen.png"])
        chat(info["base_url"], messages, info["model"], timeout=2)
    assert time.monotonic() - start < 30
    assert _live(pgid=info["pid"])  # its process still runs: `running` alone cannot tell
    assert _ask(process, "responsive")["responsive"] is False


def test_stuck_server_restarts_and_answers_within_the_default_max_tokens(owner):
    process, info = owner
    restarted = _ask(process, "restart")
    assert restarted["responsive"] is True
    assert restarted["pid"] != info["pid"] and _wait_for(lambda: not _live(pgid=info["pid"]))
    answer = chat(restarted["base_url"], chat_messages(REFERENCE_QUESTION, images=[sample_image()]), restarted["model"])
    assert 1 <= answer.usage["completion_tokens"] <= DEFAULT_MAX_TOKENS
    owner[1].update(restarted)


def test_owner_killed_by_sigkill_mid_request_leaves_no_process_and_no_copy(owner, silent_url):
    """A Jupyter kernel restart: SIGKILL while the server works on a request (a hung image fetch)."""
    process, info = owner
    assert Path(info["scratch"]).is_dir() and _live(pgid=info["pid"])
    messages = chat_messages(REFERENCE_QUESTION, images=[f"{silent_url}/qwen.png"])
    errors = []
    request = threading.Thread(target=_record, args=(errors, chat, info["base_url"], messages, info["model"]))
    request.start()
    time.sleep(1.0)  # the request is in the server
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=GONE_LIMIT)
    assert _wait_for(lambda: _gone(info)), f"left: processes {_live(pgid=info['pid'])}, copy {info['scratch']}"
    request.join(timeout=GONE_LIMIT)
    assert not request.is_alive() and len(errors) == 1 and isinstance(errors[0], ServingError)


def _record(errors: list, function, *args) -> None:
    try:
        function(*args, timeout=30)
    except ServingError as error:
        errors.append(error)


def test_owner_stopped_by_sigterm_during_start_leaves_no_process_and_no_copy():
    """A CI cancel: SIGTERM while the server loads (Python's default: die without running atexit)."""
    process = _owner()
    try:
        def logs():
            return list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}{process.pid}-*/server.log"))

        assert _wait_for(lambda: logs() and _live(ppid=process.pid), START_LIMIT), "the server was never launched"
        watchdog, scratch = _live(ppid=process.pid)[0], logs()[0].parent
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=GONE_LIMIT)
        assert _wait_for(lambda: _gone({"pid": watchdog, "scratch": scratch}))
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
