"""A local OpenAI-compatible server for a model of this package, that always stops.

``transformers serve`` (transformers' own server, FastAPI + uvicorn) answers
``/v1/chat/completions`` like vLLM does, and runs on a CPU. It loads a model
*directory*, so ``LocalServer`` first saves the model and its processor
(``config.json``, ``model.safetensors``, tokenizer, image processor, chat
template), then runs it in a child process on 127.0.0.1:

>>> with LocalServer("tiny") as server:          # ~3 s to save, ~8-12 s to start on 2 CPU cores
...     answer = chat(server.base_url, reference_messages, server.model)

``transformers serve DIR`` pins the server to that model and answers 400 to any
other name, so it is launched from DIR's parent with DIR's relative name: the
name clients send is a short ``anatomy-tiny``, not a temporary path.

The child runs in its own process group, under a watchdog (``watchdog.py``) that
kills it and removes its scratch folder (the temporary model copy and the server's own
temporary files) when this process dies, even by SIGKILL (a Jupyter kernel restart) or
SIGTERM (a CI cancel); ``stop`` (called on every
exit of the ``with``, exceptions included, and at interpreter exit) kills the whole
group. A copy left by an owner that died with its watchdog (``anatomy-serve-PID-*``
in the temporary directory) is swept at the next start.

A request can leave the server stuck while its process runs: ``transformers serve``
fetches an http image URL with no timeout, and generates up to 1024 new tokens when
a request sets no ``max_tokens`` (``chat`` sends 128 by default). ``responsive()``
tells (a one-token request with a timeout), ``restart()`` clears it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from transformers.utils import logging as transformers_logging

from anatomy.model import Specimen
from anatomy.processes import stop_group
from anatomy.serving.client import ServingError, post_chat
from anatomy.serving.payload import chat_payload
from anatomy.sources import load

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SCRATCH_PREFIX = "anatomy-serve-"  # + the owner's pid + "-": a copy whose owner is dead can be swept
WATCHDOG = Path(__file__).with_name("watchdog.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def save_for_serving(source: str | Specimen, directory: str | os.PathLike) -> Path:
    """Save a model and its processor to ``directory``, the layout ``transformers serve`` loads.

    ``source`` is anything ``anatomy.load`` takes (``"tiny"``, ``"toy"``, a checkpoint
    directory) or an already loaded ``Specimen``.
    """
    specimen = source if isinstance(source, Specimen) else load(source)
    if not specimen.has_weights:
        raise ValueError(f"source {specimen.source!r} is a {specimen.kind} without weights; nothing to serve")
    directory = Path(directory)
    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar: noise, frozen in a notebook
    try:
        specimen.model.save_pretrained(directory)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
    specimen.processor.save_pretrained(directory)
    return directory


def served_name(source: str | Specimen) -> str:
    """The model name clients send: ``anatomy-<source>``, e.g. ``"anatomy-tiny"``."""
    name = source.source if isinstance(source, Specimen) else str(source)
    return "anatomy-" + re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name)


def serve_command(model_dir: str, host: str, port: int) -> list[str]:
    """``transformers serve`` pinned to one model directory, on the CPU, at ``host:port``."""
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir,
            "--device", "cpu", "--host", host, "--port", str(port)]  # fmt: skip


def sweep_orphans(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the model copies (``anatomy-serve-PID-*``) of owners that no longer run; return them."""
    swept = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        owner = path.name.removeprefix(SCRATCH_PREFIX).split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            swept.append(path)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


class LocalServer:
    """``transformers serve`` for one model, in a child process on a loopback address.

    Attributes (once started): ``base_url`` (``http://127.0.0.1:PORT``), ``model`` (the
    name to send, e.g. ``"anatomy-tiny"``), ``pid`` (its watchdog's, also the process group id),
    ``running`` (the process lives; ``responsive()``: it also answers),
    ``save_seconds`` and ``startup_seconds`` (launch until ``/health`` answers 200).
    ``source`` is anything ``anatomy.load`` takes, or a loaded ``Specimen``; a checkpoint is
    loaded and saved again, so the server gets exactly the model and processor ``load`` gives.
    """

    def __init__(self, source: str | Specimen = "tiny", *, host: str = "127.0.0.1", port: int | None = None,
                 directory: str | os.PathLike | None = None, startup_timeout: float = 180.0):  # fmt: skip
        if host not in LOOPBACK:
            raise ValueError(
                f"host={host!r}: LocalServer binds a loopback address only, one of {LOOPBACK}. "
                f"0.0.0.0 would let any machine on the network send requests (and images) to it."
            )
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be an int in 1..65535 or None (a free one), got {port!r}")
        self.source, self.host, self.port = source, host, port
        self.directory, self.startup_timeout = directory, startup_timeout
        self.model = served_name(source)
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None  # of the last launched server, kept after stop() to check it is gone
        self._scratch: str | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> LocalServer:
        """Save the model, launch the server, wait until it answers; stop it again if anything fails."""
        if self.process is not None:
            raise RuntimeError(f"this server already runs (pid {self.pid}); stop() it first")
        atexit.register(self.stop)
        try:
            root = self._root()
            start = time.perf_counter()
            save_for_serving(self.source, root / self.model)
            self.save_seconds = time.perf_counter() - start
            self._launch(root)
            self._wait_until_ready()
        except BaseException:  # KeyboardInterrupt too: never leave a half-started server behind
            self.stop()
            raise
        return self

    def _root(self) -> Path:
        """Where the model is saved: ``directory``, else the scratch folder, made here in either case: it
        also holds the server's own temporary files (its ``TMPDIR``), so they go when it goes."""
        sweep_orphans()
        self._scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        return Path(self.directory) if self.directory is not None else Path(self._scratch)

    def _launch(self, root: Path) -> None:
        self.port = self.port or free_port(self.host)
        self.log_path = root / "server.log"
        tmp = Path(self._scratch) / "tmp"  # multiprocessing's pymp-* folders, which a killed server leaves
        tmp.mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}  # no hub
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the handle
            watched = [sys.executable, "-I", str(WATCHDOG), str(os.getpid()), self._scratch]  # -I: stdlib only
            self.process = subprocess.Popen(
                watched + serve_command(self.model, self.host, self.port),  # relative: the name clients send
                cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,  # own group
            )  # fmt: skip
        self.pid = self.process.pid
        self.launched_at = time.perf_counter()

    def _wait_until_ready(self) -> None:
        deadline = self.launched_at + self.startup_timeout
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no answer from {self.base_url}/health in {self.startup_timeout} s:\n"
                                   f"{self.log_tail()}")  # fmt: skip
            time.sleep(0.2)
        self.startup_seconds = time.perf_counter() - self.launched_at

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def responsive(self, timeout: float = 10.0) -> bool:
        """Whether the server answers a one-token chat request within ``timeout`` s (False: down or stuck)."""
        if not self.running:
            return False
        try:
            post_chat(self.base_url, chat_payload(self.model, [{"role": "user", "content": "Hi"}], max_tokens=1),
                      timeout=timeout)
            return True
        except (ServingError, ConnectionError, ValueError):  # down, stuck, an error status, or no JSON reply
            return False

    def restart(self) -> LocalServer:
        """Stop the server (stuck or not) and start it again on the same port."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote (stdout and stderr)."""
        path = getattr(self, "log_path", None)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace`` s. Idempotent.

        Returns once no process of the group is left, zombies included (``anatomy.processes.stop_group``);
        one that survives is a ``RuntimeError`` naming it.
        """
        atexit.unregister(self.stop)
        try:
            if self.process is not None:
                process, self.process = self.process, None
                stop_group(process, grace)
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.running else "stopped"
        return f"LocalServer(model={self.model!r}, base_url={self.base_url!r}, {state})"
