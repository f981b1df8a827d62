"""What one student costs a class server: each notebook's kernel, its peak memory and CPU seconds.

    .venv/bin/python benchmarks/kernel_memory.py                # every notebook, one at a time
    .venv/bin/python benchmarks/kernel_memory.py --only 07 09   # some of them (RESULTS.md is not written)

Each notebook runs as ``jupyter nbconvert --execute`` in a subprocess of its own, in the notebooks' folder, as
``make html`` runs them. Every ``POLL`` s this script reads, from Linux's ``/proc``, each process below that
subprocess: the kernel (``ipykernel_launcher``) and whatever the kernel started (notebook 00's model server, its
watchdog and workers). Of each process it keeps the last ``VmHWM`` read (the kernel's own peak resident memory,
which only grows) and its CPU seconds (``utime + stime``); a process that lives less than ``POLL`` s may be missed,
and each process's last ``POLL`` s of CPU may be. The floor row is a kernel's floor: ``import torch, transformers``
and ``anatomy.load("toy")`` in a plain Python process. Other processes share the cores, so CPU seconds compare,
wall times do not. Writes the section *Kernel memory and CPU* of ``RESULTS.md``, with a sizing rule for a class.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from results import write_section

from anatomy.hub import CAP_GIB

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
POLL = 0.25  # seconds between two reads of /proc
GIB = 2**30
TICK = os.sysconf("SC_CLK_TCK")
TARGET_GIB = 1.5  # issue 22: every kernel under 1.5 GiB
SERVER_GIB = 0.25  # a student's Jupyter server, rounded up from the 0.16 GiB seen in tests/hub
FLOOR = "import torch, transformers, anatomy; anatomy.load('toy'); print(open('/proc/self/status').read())"


@dataclass
class Seen:
    """One process as last read: its command, peak resident bytes and CPU seconds."""

    command: str
    peak: int = 0
    cpu: float = 0.0


@dataclass
class Watch:
    """Every process below ``root`` (a pid), read every ``POLL`` s by a thread until ``stop`` is set."""

    root: int
    seen: dict[int, Seen] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        table = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                stat = (entry / "stat").read_text()
                status = (entry / "status").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue  # it ended while read
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ... (fields 3 on of proc(5))
            peak = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")), 0)
            table[int(entry.name)] = (int(fields[1]), command, peak, (int(fields[11]) + int(fields[12])) / TICK)
        below = {self.root}
        for _ in range(len(table)):  # close over parent -> child until nothing is added
            grown = below | {pid for pid, row in table.items() if row[0] in below}
            if grown == below:
                break
            below = grown
        for pid in below - {self.root}:
            parent, command, peak, cpu = table[pid]
            self.parents[pid] = parent
            record = self.seen.setdefault(pid, Seen(command))
            record.peak, record.cpu = max(record.peak, peak), max(record.cpu, cpu)

    def run(self) -> None:
        while not self.stop.is_set():
            self.read()
            time.sleep(POLL)


@dataclass
class Row:
    name: str
    kernel_gib: float
    kernel_cpu: float
    others: list[tuple[str, float, float]]  # (command, peak GiB, CPU s) of what the kernel started
    wall: float
    error: str | None


def short(command: str) -> str:
    """What a process of notebook 00's server is (``... -m transformers serve ...`` -> ``transformers serve``)."""
    for marker, name in (("watchdog.py", "server watchdog"), ("resource_tracker", "multiprocessing tracker"),
                         ("spawn_main", "server worker"), ("serve", "transformers serve")):
        if marker in command:
            return name
    words = command.split()
    return Path(words[0]).name if words else "?"


def execute(notebook: Path, out: Path) -> Row:
    """Run ``notebook`` through nbconvert in a subprocess while a thread watches everything below it."""
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.timeout=600", "--ExecutePreprocessor.kernel_name=python3",
               "--output-dir", str(out), str(notebook)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=notebook.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True)
    watch = Watch(process.pid)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    _, errors = process.communicate()
    watch.stop.set()
    thread.join()
    kernels = [pid for pid, seen in watch.seen.items() if "ipykernel_launcher" in seen.command]
    if len(kernels) != 1:
        raise RuntimeError(f"{notebook.name}: expected one kernel below nbconvert, saw {len(kernels)}")
    kernel = watch.seen[kernels[0]]
    others = [(short(seen.command), seen.peak / GIB, seen.cpu) for pid, seen in watch.seen.items()
              if pid != kernels[0] and _below(watch.parents, pid, kernels[0])]
    error = errors.strip().splitlines()[-1] if process.returncode else None
    return Row(notebook.stem, kernel.peak / GIB, kernel.cpu, others, time.perf_counter() - start, error)


def _below(parents: dict[int, int], pid: int, ancestor: int) -> bool:
    for _ in range(len(parents) + 1):
        pid = parents.get(pid, 0)
        if pid == ancestor:
            return True
        if pid == 0:
            return False
    return False


def floor() -> tuple[float, float]:
    """(peak GiB, CPU s) of a plain process that imports torch and transformers and loads the toy."""
    start = os.times()
    done = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak = next(int(line.split()[1]) * 1024 for line in done.stdout.splitlines() if line.startswith("VmHWM"))
    used = os.times()
    return peak / GIB, used.children_user + used.children_system - start.children_user - start.children_system


def table(rows: list[Row], floor_gib: float, floor_cpu: float) -> str:
    lines = [("| notebook | kernel peak RSS (GiB) | kernel CPU (s) | what the kernel started: peak RSS (GiB), "
              "CPU (s) | wall (s) |"), "|---|---:|---:|---|---:|",
             f"| floor: torch + transformers + the toy, no notebook | {floor_gib:.2f} | {floor_cpu:.1f} | | |"]
    for row in rows:
        started = "; ".join(f"{name} {gib:.2f}, {cpu:.1f}" for name, gib, cpu in row.others if gib > 0.01 or cpu > 1)
        over = " **over**" if row.kernel_gib > TARGET_GIB else ""
        failed = f" (failed: {row.error})" if row.error else ""
        lines.append(f"| {row.name}{failed} | {row.kernel_gib:.2f}{over} | {row.kernel_cpu:.1f} | {started} "
                     f"| {row.wall:.0f} |")
    return "\n".join(lines)


def sizing(rows: list[Row], students: int = 30, wait: float = 60.0) -> str:
    """The rule for a class of ``students`` on one server, from the measured rows."""
    kernel = max(rows, key=lambda row: row.kernel_gib)
    started = max(rows, key=lambda row: sum(gib for _, gib, _ in row.others))
    extra = sum(gib for _, gib, _ in started.others)
    busiest = max(rows, key=lambda row: row.kernel_cpu)
    mean_cpu = sum(row.kernel_cpu for row in rows) / len(rows)
    gib = students * (kernel.kernel_gib + SERVER_GIB) + 4
    return (
        f"Sizing rule for a class of {students} on one server, from the table. Memory: each student holds one "
        f"kernel at a time (JupyterLab keeps a kernel per open notebook until it is shut down, so tell students to "
        f"use *Kernel > Shut Down All Kernels* when they move on; `make class` culls kernels idle for 30 minutes); "
        f"the heaviest kernel, {kernel.name}'s, peaks at {kernel.kernel_gib:.2f} GiB, plus {SERVER_GIB} GiB for the "
        f"student's own Jupyter server (0.16 GiB measured in `tests/hub`): {students} x "
        f"({kernel.kernel_gib:.2f} + {SERVER_GIB}) GiB + 4 GiB for the hub, its launcher, the proxy and the system = "
        f"**{gib:.0f} GiB**, and {extra:.1f} GiB more for each student who starts {started.name}'s model server "
        f"(a teacher may rather show that one from the front). `make class` caps each kernel with what it started at "
        f"{CAP_GIB:g} GiB (`MEMORY_GIB`), above {started.name}'s "
        f"{started.kernel_gib + extra:.2f} GiB: a runaway kernel is stopped before it starves the others. "
        f"Cores: a kernel uses {mean_cpu:.0f} CPU s per notebook on average and {busiest.kernel_cpu:.0f} s for the "
        f"busiest ({busiest.name}). If the whole class presses *Run All* on it within the same minute and "
        f"each should finish within about {wait:.0f} s, that takes {students} x {busiest.kernel_cpu:.0f} / "
        f"{wait:.0f} = **{students * busiest.kernel_cpu / wait:.0f} cores**; a class that reads while it runs "
        f"(minutes per notebook, `docs/teaching.md`) needs far fewer, about one core per "
        f"{max(1, round(60 * 10 / mean_cpu)):.0f} students at one notebook per 10 minutes. "
        f"Each kernel should run torch on one thread (`make class` sets `OMP_NUM_THREADS=1`): more threads than "
        f"cores make everyone slower."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="notebook name prefixes; RESULTS.md is written only for all")
    args = parser.parse_args(argv)
    if not Path("/proc/self/status").exists():
        parser.error("needs Linux's /proc to read each kernel's peak memory")
    chosen = sorted(path for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                    if not args.only or path.name.startswith(tuple(args.only)))
    floor_gib, floor_cpu = floor()
    print(f"floor: {floor_gib:.2f} GiB, {floor_cpu:.1f} CPU s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernel-memory-") as out:
        for notebook in chosen:
            rows.append(execute(notebook, Path(out)))
            row = rows[-1]
            print(f"{row.name}: kernel {row.kernel_gib:.2f} GiB, {row.kernel_cpu:.1f} CPU s, started {row.others}, "
                  f"{row.wall:.0f} s{' FAILED ' + row.error if row.error else ''}", flush=True)
    print(table(rows, floor_gib, floor_cpu))
    if not args.only:
        write(rows, floor_gib, floor_cpu)
    return 0


def write(rows: list[Row], floor_gib: float, floor_cpu: float) -> None:
    """The section *Kernel memory and CPU* of RESULTS.md: how it was measured, the table, the sizing rule."""
    over = [row.name for row in rows if row.kernel_gib > TARGET_GIB]
    write_section("Kernel memory and CPU", "\n\n".join([
        (f"Each notebook executed alone by `jupyter nbconvert --execute` (`benchmarks/kernel_memory.py`); peak "
        f"resident memory (`VmHWM`) and CPU seconds of its kernel, and of every process the kernel started, read "
        f"from `/proc` every {POLL} s. Resident memory counts the shared libraries' pages in every process that maps "
        f"them, so a sum over kernels overstates what they need together. Target: every kernel under "
        f"{TARGET_GIB} GiB; over it: {', '.join(over) or 'none'}."), table(rows, floor_gib, floor_cpu), sizing(rows)]))


if __name__ == "__main__":
    sys.exit(main())
