"""Processes that always stop: one meaning of "gone", bounded waits, and a suite's leftovers.

"Gone" means no process of the group is left, zombies included: a zombie still holds its
pid and its group until its parent collects it, and ``os.killpg(pgid, 0)`` still finds it.
Everything here is standard library; reading other processes' groups, parents and
environments uses Linux's ``/proc`` (elsewhere only the group test ``killpg(pgid, 0)`` works).

>>> wait_for(lambda: 3, timeout=1, what="a number")
3
>>> wait_for(lambda: None, timeout=0.2, what="nothing at all")
Traceback (most recent call last):
...
TimeoutError: waited 0.2 s for nothing at all

``python -m anatomy.processes suite -- COMMAND...`` runs a test suite (``make test`` does) and
then proves that it left nothing: every process it started carries ``ANATOMY_SUITE=<run id>``
in its environment, and every temporary file goes to a fresh ``TMPDIR`` of the run (so suites
run side by side do not count each other's). Whatever is left is killed or removed, and named
in one failing line.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARK = "ANATOMY_SUITE"  # the run id of the suite that started a process, inherited by all it starts
KEPT_IN_TMP = (  # not leftovers:
    "pytest-of-",  # pytest's own root, where it keeps its last few runs
    "torchinductor_",  # torch's compile cache, made (empty) when transformers' model classes are imported
)
KEPT_RUNS = 3  # suite runs whose TMPDIR (and pytest's root in it) is kept, this one included
PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    parent: int
    group: int
    state: str  # "R", "S", ... ; "Z" for a zombie
    command: str

    def __str__(self) -> str:
        zombie = ", zombie" if self.state == "Z" else ""
        return f"pid {self.pid} ({self.command}{zombie})"


def wait_for(condition, timeout: float, what, poll: float = 0.1):
    """Poll ``condition()`` until it returns something truthy and return that; after ``timeout`` s, one
    ``TimeoutError`` that says what was waited for. Bounded in time and in count.

    ``what`` is a string, or a function called at the deadline that describes what is found then.
    """
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / poll) + 2):
        if value := condition():
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    raise TimeoutError(f"waited {timeout:g} s for {what() if callable(what) else what}")


def processes() -> list[Process]:
    """Every process of this machine from ``/proc`` (Linux), zombies included."""
    found = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # it ended while being read
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        found.append(Process(int(stat.parent.name), int(rest[1]), int(rest[2]), rest[0], cmdline or f"[{name}]"))
    return found


def group_members(pgid: int) -> list[Process]:
    """The processes of group ``pgid``, zombies included (empty: the group is gone)."""
    if PROC.is_dir():
        return [p for p in processes() if p.group == pgid]
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    return [Process(pgid, 0, pgid, "?", f"group {pgid}")]


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is already empty


def stop_group(process: subprocess.Popen, grace: float = 10.0, limit: float = 15.0) -> None:
    """Stop the process group that ``process`` leads (started with ``start_new_session=True``).

    SIGTERM, up to ``grace`` s for the leader to exit, SIGKILL to whatever is left, reap the leader,
    then wait up to ``limit`` s until no process of the group is left, zombies included. Something
    still there is one ``RuntimeError`` that names it. Idempotent.
    """
    signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(process.pid, signal.SIGKILL)  # the leader if it hung, and anything it started
    process.wait()  # reap the leader: it is ours
    try:
        wait_for(lambda: not group_members(process.pid), limit, f"process group {process.pid} to end")
    except TimeoutError:
        left = ", ".join(map(str, group_members(process.pid)))
        raise RuntimeError(f"process group {process.pid} still has {left} {limit:g} s after SIGKILL") from None


def marked(run: str) -> list[Process]:
    """Processes whose environment holds ``ANATOMY_SUITE=run`` (Linux), but not this one or its parents."""
    mine, pid = set(), os.getpid()
    table = {p.pid: p for p in processes()}
    while pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid].parent
    needle = f"{MARK}={run}".encode()
    found = []
    for p in table.values():
        try:
            environ = (PROC / str(p.pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if p.pid not in mine and needle in environ:
            found.append(p)
    return found


def leftovers(run: str, tmp: Path) -> list[str]:
    """What a finished suite left: its processes (killed here) and files in its TMPDIR (removed here)."""
    left = []
    for p in marked(run):
        left.append(str(p))
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for path in sorted(tmp.iterdir()):
        if not path.name.startswith(KEPT_IN_TMP):
            left.append(f"file {path}")
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return left


def suite_tmp(run: str, root: str | os.PathLike | None = None, keep: int = KEPT_RUNS) -> Path:
    """A fresh TMPDIR for suite run ``run``: ``anatomy-suite-<uid>/<run>`` in the usual one. pytest's own root
    lives in it (its last runs kept there, with their logs and screenshots); anything else there is a leftover.
    Of the earlier runs' folders, the newest ``keep - 1`` stay, as pytest keeps its last few runs."""
    parent = Path(root or tempfile.gettempdir()) / f"anatomy-suite-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    earlier = sorted(parent.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in earlier[keep - 1:]:
        shutil.rmtree(old, ignore_errors=True)
    tmp = parent / run
    tmp.mkdir(mode=0o700)
    return tmp


def run_suite(command: list[str], tmp: Path | None = None) -> int:
    """Run ``command`` marked as one suite run with a TMPDIR of its own, then fail on anything it left."""
    if not command:
        raise ValueError("run_suite needs a command, e.g. ['make', 'unit']")
    run = secrets.token_hex(6)
    tmp = tmp or suite_tmp(run)
    code = subprocess.call(command, env={**os.environ, MARK: run, "TMPDIR": str(tmp)})
    start = time.monotonic()
    left = leftovers(run, tmp) if PROC.is_dir() else []
    if PROC.is_dir():
        print(f"leftover check: {len(left)} processes or files left by the suite (run {run}, "
              f"{time.monotonic() - start:.1f} s)", flush=True)
    else:
        print("leftover check skipped: needs Linux's /proc", flush=True)
    if left:
        print("the suite left (now killed or removed): " + "; ".join(left), file=sys.stderr, flush=True)
    return code or (1 if left else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anatomy.processes")
    verbs = parser.add_subparsers(dest="verb", required=True)
    suite = verbs.add_parser("suite", help="run a test command, then fail on processes or files it left")
    suite.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run_suite(command)


if __name__ == "__main__":
    sys.exit(main())
