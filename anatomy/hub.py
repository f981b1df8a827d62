"""``make class``: JupyterHub for a class on this machine, one system user per student, stopped whole.

    python -m anatomy.hub --students 3 --password 'a class password' --port 8000 \\
        --proxy .class/node_modules/.bin/configurable-http-proxy --notebooks notebooks --state .class/state

What it does, in order:

1. checks, each failing with one line that says what to do: Linux, root (it creates users), ``node`` and the
   proxy installed, the port free, a password of at least 8 characters;
2. one system user per student (``student1``, ``student2``, ...; their comment field says ``anatomy class``, and
   a user of that name made by anyone else is refused), home folder mode 0700, the notebooks copied in as
   ``~/notebooks`` the first time (by the student's own user, so a later run never overwrites their work);
3. the Python the students run: this one if a student can run it, else (this one lives where students cannot
   read, like ``/root``) a venv (``--python-dir``) of the system's Python of the same version that reads this
   one's packages;
4. JupyterHub (its shared-password authenticator, the local process spawner: each student's server and kernels
   run as that student), its proxy (``configurable-http-proxy``), all marked ``ANATOMY_CLASS=<run id>`` in
   their environment; each kernel's torch on one thread, idle kernels culled after ``CULL`` s;
5. a memory watchdog (a thread here): every ``POLL`` s it adds up the resident memory of each kernel and what the
   kernel started; one over the cap is killed (the cgroup-free way: ``RLIMIT_AS`` breaks torch's import and the
   spawner ignores ``mem_limit``). The student sees JupyterLab's "kernel appears to have died" and a file
   ``~/notebooks/MEMORY_LIMIT.txt`` saying why; this process prints one line;
6. on Ctrl-C or SIGTERM: the hub stopped (it stops the proxy and the students' servers), then every process still
   marked is killed, and it waits until none is left. The users and their homes stay, with the students' work.

The shared password lets whoever knows it log in as any student: it keeps a class out, not one student from
another's account. Each student's files and kernels are theirs (mode 0700, their own uid).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from anatomy.processes import PROC, Process, processes, stop_group, wait_for

MARK = "ANATOMY_CLASS"  # the run id, in the environment of every process the hub starts
TAG = "anatomy class"  # the comment field of the users make class creates
MESSAGE = "MEMORY_LIMIT.txt"  # in the student's notebook folder when the watchdog killed a kernel
POLL = 0.5  # s between two memory checks
CAP_GIB = 3.5  # default cap on a kernel with what it started: above every notebook's, 00's kernel with its model
# server included (2.97 GiB; benchmarks/RESULTS.md, Kernel memory and CPU)
CULL = 1800  # s after which an idle kernel is shut down: a student holds one kernel per open notebook
GIB = 2**30


class ClassError(RuntimeError):
    """A reason ``make class`` cannot start, in one line that says what to do."""


@dataclass(frozen=True)
class Student:
    name: str
    uid: int
    gid: int
    home: Path


def check(port: int, proxy: Path, password: str) -> None:
    """Everything that must hold before anything is created or started; ``ClassError`` otherwise."""
    if not sys.platform.startswith("linux") or not PROC.is_dir():
        raise ClassError("needs Linux (useradd, /proc): run it on a Linux server")
    if os.geteuid() != 0:
        raise ClassError("needs root, to create one system user per student: run `sudo make class`")
    if not shutil.which("node"):
        raise ClassError("needs node for JupyterHub's proxy: install Node.js (`apt-get install nodejs "
                         "npm` on Debian), then run make class again")
    if not os.access(proxy, os.X_OK):
        raise ClassError(f"no configurable-http-proxy at {proxy}: run `make class`, which installs it with npm")
    if len(password) < 8:
        raise ClassError(f"the class password has {len(password)} characters, JupyterHub needs at least 8: "
                         "choose a longer PASSWORD")
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            raise ClassError(f"port {port} is taken: stop what listens there, or choose another, e.g. "
                             f"`make class PORT={port + 1}`") from None


def _as(student: Student, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` as ``student`` (``runuser``), with their permissions and nothing of root's."""
    return subprocess.run(["runuser", "-u", student.name, "--", *command], capture_output=True, text=True,
                          check=False, **kwargs)


def students(count: int, prefix: str, homes: Path, notebooks: Path) -> list[Student]:
    """``count`` system users ``<prefix>1``..., created if missing (homes 0700), each with the notebooks."""
    if count < 1:
        raise ClassError(f"STUDENTS={count}: a class needs at least 1 student")
    made = []
    for index in range(1, count + 1):
        name = f"{prefix}{index}"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--home-dir", str(homes / name), "--comment", TAG,
                            "--shell", "/bin/bash", "--user-group", name], check=True, capture_output=True)
            entry = pwd.getpwnam(name)
        if entry.pw_gecos != TAG:
            raise ClassError(f"user {name} exists and was not created by make class: choose another "
                             f"STUDENT_PREFIX (now {prefix!r})")
        student = Student(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
        os.chmod(student.home, 0o700)
        if not (student.home / "notebooks").exists():
            copied = _as(student, ["cp", "-r", str(notebooks), str(student.home / "notebooks")])
            if copied.returncode:
                raise ClassError(f"could not copy {notebooks} for {name}: {copied.stderr.strip()}")
        made.append(student)
    return made


def student_python(student: Student, venv: Path) -> str:
    """A Python the students can run with the package, JupyterHub and ipykernel: this one, or a venv at ``venv``
    of the system's Python of the same version that reads this one's packages."""
    probe = ["-c", "import anatomy, ipykernel, jupyterhub.singleuser"]
    if _as(student, [sys.executable, *probe]).returncode == 0:
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin")
    if system and not (venv / "bin" / "python").exists():
        subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        site = subprocess.run([str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        ours = next(path for path in sys.path if path.endswith("site-packages") and path.startswith(sys.prefix))
        Path(site, "anatomy-class.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        for shared in ("etc", "share"):  # Jupyter's configuration, JupyterLab and the kernel specs, by sys.prefix
            (venv / shared).symlink_to(Path(sys.prefix, shared))
    if system and _as(student, [str(venv / "bin" / "python"), *probe]).returncode == 0:
        return str(venv / "bin" / "python")
    raise ClassError(f"students cannot run {sys.executable} (its folders are not readable by other users) and no "
                     f"system {version} can stand in: install the repository where every user can read it")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hub_config(names: list[str], password: str, port: int, ip: str, proxy: Path, python: str, state: Path,
               run: str, lab_args: list[str]) -> dict:
    """JupyterHub's configuration (traitlets JSON): shared password, local processes, our proxy, one state dir."""
    environment = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", MARK: run}
    environment.update({key: os.environ[key] for key in ("ANATOMY_SUITE",) if key in os.environ})
    return {
        "JupyterHub": {"ip": ip, "port": port, "hub_ip": "127.0.0.1", "hub_port": free_port(),
                       "authenticator_class": "shared-password", "spawner_class": "localprocess",
                       "db_url": f"sqlite:///{state / 'jupyterhub.sqlite'}",
                       "cookie_secret_file": str(state / "jupyterhub_cookie_secret"), "cleanup_servers": True},
        "ConfigurableHTTPProxy": {"command": [str(proxy)], "api_url": f"http://127.0.0.1:{free_port()}",
                                  "auth_token": secrets.token_hex(32)},
        "SharedPasswordAuthenticator": {"user_password": password},
        "Authenticator": {"allowed_users": names},
        "Spawner": {"cmd": [python, "-m", "jupyterhub.singleuser"], "default_url": "/lab",
                    "notebook_dir": "~/notebooks", "environment": environment, "start_timeout": 180,
                    "http_timeout": 180,
                    "args": [f"--MappingKernelManager.cull_idle_timeout={CULL}",
                             "--MappingKernelManager.cull_interval=60", *lab_args]},
    }


def environment() -> dict[str, str]:
    """This process's environment, less the class password."""
    return {key: value for key, value in os.environ.items() if key != "PASSWORD"}


def marked(run: str) -> list[Process]:
    """The processes whose environment holds ``ANATOMY_CLASS=run``."""
    needle, found = f"{MARK}={run}".encode(), []
    for process in processes():
        try:
            if needle in (PROC / str(process.pid) / "environ").read_bytes().split(b"\0"):
                found.append(process)
        except OSError:
            continue
    return found


def resident(pid: int) -> int:
    """``VmRSS`` of ``pid`` in bytes (0 once it is gone)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")), 0)


def tree(root: int, table: list[Process]) -> list[int]:
    """``root`` and every process below it, by parent."""
    below, grown = {root}, True
    while grown:
        more = {p.pid for p in table if p.parent in below} - below
        below, grown = below | more, bool(more)
    return sorted(below)


class MemoryWatch(threading.Thread):
    """Kill any kernel of class ``run`` whose tree holds more than ``cap`` bytes, and tell its student."""

    def __init__(self, run: str, cap: int):
        super().__init__(daemon=True, name="memory watch")
        self.run_id, self.cap, self.stopped, self.killed = run, cap, threading.Event(), []

    def run(self) -> None:
        while not self.stopped.wait(POLL):
            self.check()

    def check(self) -> None:
        table = processes()
        for kernel in (p for p in marked(self.run_id) if "ipykernel_launcher" in p.command):
            pids = tree(kernel.pid, table)
            used = sum(resident(pid) for pid in pids)
            if used > self.cap:
                self.kill(kernel, pids, used)

    def kill(self, kernel: Process, pids: list[int], used: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        user = pwd.getpwuid((PROC / str(kernel.pid)).stat().st_uid) if (PROC / str(kernel.pid)).exists() else None
        said = (f"{time.strftime('%H:%M:%S')}: a kernel of yours used {used / GIB:.2f} GiB, over this class's limit "
                f"of {self.cap / GIB:.2f} GiB per kernel, and was stopped. JupyterLab restarts it: run the notebook's "
                "cells again, and shut down the kernels of notebooks you have finished (Kernel > Shut Down All "
                "Kernels).\n")
        if user:  # written as the student: root never follows a link a student planted
            subprocess.run(["runuser", "-u", user.pw_name, "--", "tee", "-a", str(Path(user.pw_dir, "notebooks",
                                                                                        MESSAGE))],
                           input=said, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        self.killed.append(kernel.pid)
        print(f"memory cap: killed kernel pid {kernel.pid} of {user.pw_name if user else '?'} "
              f"({used / GIB:.2f} GiB > {self.cap / GIB:.2f} GiB)", flush=True)


def stop(hub: subprocess.Popen, run: str, limit: float = 30.0) -> None:
    """Stop the hub (it stops the proxy and the servers), then kill whatever of the class is left, and verify."""
    stop_group(hub, grace=limit, limit=limit)
    for process in marked(run):
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        wait_for(lambda: not marked(run), limit, "the class's processes to end")
    except TimeoutError:
        raise RuntimeError(f"still running after stop: {', '.join(map(str, marked(run)))}") from None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m anatomy.hub", description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--password", default=os.environ.get("PASSWORD", ""), help="the class password (at least "
                        "8 characters; default $PASSWORD, kept off command lines that every user can read); "
                        "empty: one is generated and printed")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ip", default="", help="the address students connect to; empty: every interface")
    parser.add_argument("--prefix", default="student", help="students' user names: <prefix>1, <prefix>2, ...")
    parser.add_argument("--homes", type=Path, default=Path("/home"), help="where new students' homes go")
    parser.add_argument("--memory-gib", type=float, default=CAP_GIB, help="the cap on each kernel's resident memory")
    parser.add_argument("--proxy", type=Path, required=True, help="configurable-http-proxy")
    parser.add_argument("--notebooks", type=Path, required=True, help="the folder each student gets a copy of")
    parser.add_argument("--state", type=Path, required=True, help="JupyterHub's database, secrets and log")
    parser.add_argument("--python-dir", type=Path, required=True, help="where to make the students' Python, "
                        "if they cannot run this one (a folder every user can reach)")
    parser.add_argument("--lab-arg", action="append", default=[], help="one more argument for each student's "
                        "server (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    password = args.password or secrets.token_urlsafe(9)
    try:
        check(args.port, args.proxy.resolve(), password)
        args.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = args.state.resolve()
        class_ = students(args.students, args.prefix, args.homes.resolve(), args.notebooks.resolve())
        python = student_python(class_[0], args.python_dir.resolve())
    except ClassError as reason:
        print(f"make class: {reason}", file=sys.stderr)
        return 2
    run = secrets.token_hex(6)
    config = state / "jupyterhub_config.json"
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:  # the password
        json.dump(hub_config([s.name for s in class_], password, args.port, args.ip, args.proxy.resolve(), python,
                             state, run, args.lab_arg), file, indent=1)
    path = f"{Path(shutil.which('node')).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=state,
                           env={**environment(), MARK: run, "PATH": path}, start_new_session=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    watch = MemoryWatch(run, int(args.memory_gib * GIB))
    watch.start()
    print(f"make class: {len(class_)} students ({class_[0].name} ... {class_[-1].name}), password "
          f"{password if not args.password else '(as given)'}, at http://{args.ip or '<this machine>'}:{args.port}/ "
          f"; each kernel capped at {args.memory_gib:g} GiB; Ctrl-C stops everything", flush=True)
    while not stopping.is_set() and hub.poll() is None:
        stopping.wait(1.0)
    watch.stopped.set()
    watch.join()
    code = hub.returncode
    stop(hub, run)
    print("make class: stopped; nothing of the class is left running", flush=True)
    return 0 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
