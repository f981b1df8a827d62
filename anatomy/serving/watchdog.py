"""Run a command that must not outlive its owner: ``python watchdog.py OWNER_PID SCRATCH COMMAND...``.

``LocalServer`` starts this small script (standard library only, so it starts in
milliseconds), which starts ``transformers serve``. Whatever happens, no process
and no temporary model copy is left behind:

- the owner is killed (SIGKILL, a Jupyter kernel restart; SIGTERM, a CI cancel):
  this process is re-parented, notices within ``POLL`` s, kills the command with
  SIGKILL (``transformers serve`` would wait for a running generation on SIGTERM),
  removes ``SCRATCH`` (the model copy; ``-`` for none) and exits;
- this process is stopped (SIGTERM from ``LocalServer.stop``): the same, at once;
- this process is killed by SIGKILL: the kernel kills the command too (Linux's
  parent-death signal, set in the command before it runs), and the next
  ``LocalServer`` start sweeps the copy (its directory name holds the owner's pid).

``transformers serve`` starts children of its own (multiprocessing "spawn": a worker and a
resource tracker). On Linux this process is their *subreaper* (``PR_SET_CHILD_SUBREAPER``):
when the command dies they become its children, not PID 1's, and it kills and reaps every
one of them before it exits. So when ``LocalServer.stop`` has reaped this process, no process
of the group is left, not even a zombie waiting for PID 1.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

POLL = 0.2  # seconds between checks that the owner still lives
REAP_LIMIT = 10.0  # seconds to kill and reap every descendant before giving up on one
PR_SET_PDEATHSIG = 1  # prctl options (Linux): the signal a process gets when its parent dies,
PR_SET_CHILD_SUBREAPER = 36  # and "orphaned descendants become my children"
LINUX = sys.platform == "linux"


def _prctl(option: int, value: int) -> None:
    if LINUX:
        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _die_with_parent() -> None:
    """In the command, before it runs: SIGKILL it when this watchdog dies, however it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _descendants() -> list[int]:
    """Live processes of this group other than this one (the command and what it started), from /proc."""
    me, group, found = os.getpid(), os.getpgrp(), []
    for stat in os.scandir("/proc"):
        if not stat.name.isdigit() or int(stat.name) == me:
            continue
        try:
            with open(f"/proc/{stat.name}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and (int(fields[2]) == group or int(fields[1]) == me):
            found.append(int(stat.name))
    return found


def _reap_all() -> None:
    """Kill every descendant and reap every child (orphans come here as subreaper) until none is left."""
    deadline = time.monotonic() + REAP_LIMIT
    while time.monotonic() < deadline:
        for pid in _descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.02)  # children left, none exited yet
        except ChildProcessError:
            return  # no child left: nothing of the command's remains


def _stop(command: subprocess.Popen, scratch: str) -> None:
    command.kill()
    command.wait()
    if LINUX:
        _reap_all()
    if scratch != "-":
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str]) -> int:
    owner, scratch, command = int(argv[0]), argv[1], argv[2:]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop() raises KeyboardInterrupt below
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen(command, preexec_fn=_die_with_parent)
    try:
        while child.poll() is None and os.getppid() == owner:
            time.sleep(POLL)
    except KeyboardInterrupt:
        pass
    code = child.poll()
    _stop(child, scratch if os.getppid() != owner else "-")  # the owner removes its own copy when it lives
    return code if code is not None else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
