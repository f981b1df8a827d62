"""The suite's stability: its verdicts repeated, beside one busy process, with what each run took and left.

    .venv/bin/python benchmarks/suite_stability.py browser --runs 10        # the browser test, 10 times in a row
    .venv/bin/python benchmarks/suite_stability.py suite --runs 2           # `make test` from a fresh clone, twice
    .venv/bin/python benchmarks/suite_stability.py suite --runs 1 --idle    # once alone: the time of each part

Every run is one marked suite run (``python -m anatomy.processes suite``: its processes carry a run id, its
files go to a TMPDIR of its own, and its last step names whatever it left) beside one CPU-bound Python
process (``while True: pass``), unless ``--idle``. A ``suite`` run clones this repository's HEAD into a
temporary folder and runs ``make venv`` (pip reuses its cache), then ``make test``. For each run it keeps
the verdict (exit status and pytest's counts), the wall time, each part's time (unit, doctests, notebooks,
browser: pytest's own summary; the leftover check: its own line), the ten slowest test phases of each part
(``--durations``), and what the run left behind. Rows go to ``suite_stability.jsonl`` beside this script
(an interrupted series keeps what it measured); the sections *Suite stability* and *Time of make test* of
``RESULTS.md`` are written from that file. A red run's whole output is kept in ``suite-stability-logs/`` of the
system's temporary directory, and its row's ``log`` names the file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from results import write_section

from anatomy.processes import PROC, processes, stop_group

REPO = Path(__file__).resolve().parents[1]
ROWS = Path(__file__).with_name("suite_stability.jsonl")
BROWSER = ["-m", "anatomy.processes", "suite", "--", sys.executable, "-m", "pytest", "-q", "--durations=10",
           "tests/browser"]
PART = re.compile(r"^== part: (\w+) ==$", re.M)  # the line each part of `make test` starts its report with
DURATION = re.compile(r"^(\d+\.\d+)s (setup|call|teardown)\s+(\S.*?)\s*$", re.M)  # "...::Cell 6" too
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|error|errors|skipped|xfailed|deselected)\b.*?) in ([\d.]+)s", re.M)
LEFT = re.compile(r"^leftover check: (\d+) processes or files left by the suite \(run \w+, ([\d.]+) s\)", re.M)
LEFT_NAMES = re.compile(r"^the suite left \(now killed or removed\): (.*)$", re.M)


def parse(log: str, name: str = "pytest") -> dict:
    """What a run's output says: each part's pytest counts, time and ten slowest phases, and the leftover check's
    count, names and time. A part is named by the ``== part: NAME ==`` line its report starts with (`make test`'s
    parts end in any order); a run without those lines is one part, ``name``."""
    marks = list(PART.finditer(log))
    sections = ([(mark.group(1), mark.end(), marks[i + 1].start() if i + 1 < len(marks) else len(log))
                 for i, mark in enumerate(marks)] if marks else [(name, 0, len(log))])
    parts = {}
    for part, start, end in sections:
        summary = SUMMARY.search(log, start, end)
        if summary is None:  # the part never reached pytest's summary (it crashed, or was cut off)
            parts[part] = {"counts": "no summary", "seconds": 0.0, "slowest": []}
            continue
        slowest = sorted(((float(s), f"{phase} {test}") for s, phase, test in DURATION.findall(log, start,
                                                                                             summary.start())),
                         reverse=True)
        parts[part] = {"counts": summary.group(1), "seconds": float(summary.group(2)),
                       "slowest": [f"{seconds:.1f} s {what}" for seconds, what in slowest[:10]]}
    left, named = LEFT.search(log), LEFT_NAMES.search(log)
    return {"parts": parts, "left": None if left is None else int(left.group(1)),
            "left_names": named.group(1) if named else "",
            "check_seconds": None if left is None else float(left.group(2))}


def tree_pss(root: int) -> int:
    """Bytes of memory that ``root`` and every process under it hold: the sum of their proportional set sizes
    (PSS: a page shared by n processes counts 1/n in each, so torch's libraries are not counted per process)."""
    table = processes()
    tree, grew = {root}, True
    while grew:
        below = {p.pid for p in table if p.parent in tree} - tree
        tree, grew = tree | below, bool(below)
    total = 0
    for pid in tree:
        try:
            rollup = (PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue  # it ended while being read, or a zombie
        total += sum(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def timed(command: list[str], cwd: Path, log: Path, env: dict) -> tuple[int, float, float, str]:
    """Run ``command`` with its output in ``log``: (exit status, seconds, peak GiB of its process tree sampled
    every second, output)."""
    start, peak = time.perf_counter(), 0
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            peak = max(peak, tree_pss(process.pid))
            time.sleep(1.0)
    return (process.returncode, round(time.perf_counter() - start, 1), round(peak / 2**30, 2),
            log.read_text(errors="replace"))


def browser_run(folder: Path, env: dict) -> dict:
    code, seconds, peak, log = timed([sys.executable, *BROWSER], REPO, folder / "browser.log", env)
    return {"code": code, "seconds": seconds, "peak_gib": peak, **parse(log, "browser")}


def suite_run(folder: Path, env: dict) -> dict:
    """``make venv`` then ``make test`` in a fresh clone of HEAD."""
    clone = folder / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    code, install, _, log = timed(["make", "venv"], clone, folder / "install.log", env)
    if code == 0:
        code, seconds, peak, log = timed(["make", "test"], clone, folder / "test.log", env)
    else:
        seconds, peak = 0.0, 0.0
    return {"code": code, "commit": commit, "install_seconds": install, "seconds": seconds, "peak_gib": peak,
            **parse(log)}


KEPT = Path(tempfile.gettempdir()) / "suite-stability-logs"  # the output of every red run


def measure(kind: str, runs: int, idle: bool) -> list[dict]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")}
    measured = []
    for index in range(runs):
        with tempfile.TemporaryDirectory(prefix="suite-stability-") as root:
            load = os.getloadavg()[0]
            busy = None if idle else subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                                      start_new_session=True)
            try:
                row = (browser_run if kind == "browser" else suite_run)(Path(root), env)
                if row["code"] != 0:  # a red run's whole output is the evidence: kept beside the temporary root
                    kept = KEPT / f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.log"
                    kept.parent.mkdir(exist_ok=True)
                    logs = sorted(Path(root).glob("*.log"))
                    kept.write_text("".join(log.read_text(errors="replace") for log in logs))
                    row["log"] = str(kept)
            finally:
                if busy is not None:
                    stop_group(busy)
        row = {"kind": kind, "run": index + 1, "idle": idle, "load_average": round(load, 2),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **row}
        print(json.dumps(row), flush=True)
        with ROWS.open("a") as rows:
            rows.write(json.dumps(row) + "\n")
        measured.append(row)
    return measured


def verdict(row: dict) -> str:
    counts = "; ".join(f"{name}: {part['counts']}" for name, part in row["parts"].items())
    return f"{'green' if row['code'] == 0 else 'RED (exit ' + str(row['code']) + ')'} ({counts or 'no summary'})"


def render_stability(rows: list[dict]) -> str:
    """One line per run of the latest series of each kind beside a busy process; "" before any."""
    if not any(not row["idle"] for row in rows):
        return ""
    lines = ["Each run beside one busy process (`python -c 'while True: pass'`) on the same 2 cores; "
             "`left` is what the run's final leftover check found (processes marked with its run id, files in "
             "its TMPDIR outside pytest's own root). Written by `benchmarks/suite_stability.py`.", ""]
    for kind, title in (("browser", "The browser test, in a row"), ("suite", "`make test` from a fresh clone")):
        series = latest_series([row for row in rows if row["kind"] == kind and not row["idle"]])
        if not series:
            continue
        green = sum(row["code"] == 0 for row in series)
        lines += [f"### {title}: {green} of {len(series)} green, {sum(row['left'] or 0 for row in series)} "
                  "leftovers in all", "",
                  "| run | date | verdict | time (s) | left | load before |", "|---|---|---|---|---|---|"]
        lines += [f"| {row['run']} | {row['date']} | {verdict(row)} | {row['seconds']:.0f}"
                  f"{' (+ install ' + str(round(row['install_seconds'])) + ')' if 'install_seconds' in row else ''}"
                  f" | {row['left']}{': ' + row['left_names'] if row['left_names'] else ''} | "
                  f"{row['load_average']} |" for row in series]
        slowest = max(series, key=lambda row: row["seconds"])
        lines += ["", f"Slowest ten of the slowest run (run {slowest['run']}):", ""]
        lines += [f"- {name}: {', '.join(part['slowest']) or 'none'}" for name, part in slowest["parts"].items()]
        lines.append("")
    return "\n".join(lines)


def render_time(rows: list[dict]) -> str:
    """The latest idle `make test`: each part's time and its ten slowest test phases."""
    idle = [row for row in rows if row["kind"] == "suite" and row["idle"]]
    if not idle:
        return ""
    row = idle[-1]
    total = row["seconds"]
    lines = [f"`make test` alone on the machine, from a fresh clone of {row['commit']} after `make venv` "
             f"({row['install_seconds']:.0f} s, pip's cache warm), {row['date']}; load average before "
             f"{row['load_average']}. Verdict: {verdict(row)}.", "",
             "| part | pytest's counts | time (s) |", "|---|---|---|"]
    lines += [f"| {name} | {part['counts']} | {part['seconds']:.0f} |" for name, part in row["parts"].items()]
    lines += [f"| leftover check | {row['left']} left | {row['check_seconds']} |",
              f"| **make test, in all** (the browser finder and make's own steps included) | | **{total:.0f}** "
              f"({total / 60:.1f} min) |", ""]
    if "peak_gib" in row:
        lines += [f"Memory: at its peak, the processes of `make test` held {row['peak_gib']:.1f} GiB (the sum of "
                  "their proportional set sizes, sampled every second).", ""]
    added = sum(part["seconds"] for part in row["parts"].values())
    if added > total:
        lines += [f"The parts ran side by side (`make test` runs them `PARTS` at a time): their times add up to "
                  f"{added:.0f} s, more than the whole run.", ""]
    for name, part in row["parts"].items():
        slowest = part["slowest"] or ["not timed (no --durations)"]
        lines += [f"Ten slowest of {name}:", ""] + [f"- {line}" for line in slowest]
        lines.append("")
    lines += ["Every idle run so far, red ones included:", "",
              "| date | commit | verdict | time (s) |", "|---|---|---|---|"]
    lines += [f"| {r['date']} | {r['commit']} | {verdict(r)} | {r['seconds']:.0f} |" for r in idle]
    return "\n".join(lines)


def latest_series(rows: list[dict]) -> list[dict]:
    """The rows from the last run numbered 1 onwards."""
    starts = [index for index, row in enumerate(rows) if row["run"] == 1]
    return rows[starts[-1]:] if starts else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("browser", "suite", "report"), help="what to run ('report': write only)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--idle", action="store_true", help="no busy process beside the runs")
    args = parser.parse_args()
    if args.kind != "report":
        measure(args.kind, args.runs, args.idle)
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []
    if stability := render_stability(rows):
        write_section("Suite stability", stability)
    if timing := render_time(rows):
        write_section("Time of make test", timing)
    print(stability or "no run beside a busy process yet", timing, sep="\n\n")


if __name__ == "__main__":
    main()
