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
PR_SET_PDEATHSIG = 1  # prctl option (Linux): the signal a process gets when its parent dies


def _die_with_parent() -> None:
    """In the command, before it runs: SIGKILL it when this watchdog dies, however it dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(command: subprocess.Popen, scratch: str) -> None:
    command.kill()
    command.wait()
    if scratch != "-":
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str]) -> int:
    owner, scratch, command = int(argv[0]), argv[1], argv[2:]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop() raises KeyboardInterrupt below
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
