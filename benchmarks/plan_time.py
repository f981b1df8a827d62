"""The plan's time estimate against the measured time: plan_memory.py's cases (tiny at 448 x 448 and 896 x 896,
seven sweep shapes), each timed on this CPU.

Each case runs in a fresh subprocess, one torch thread, as a user's session would: ``plan(...)`` with
``device=None`` (its one timing pass runs here, the process's first), then ``Plan.run()`` timed
by ``time.perf_counter()``, without the profiler that plan_memory.py measures memory with (it slows a run).
The run's CPU time (``time.process_time()``) is reported beside its wall time: with one thread, a gap between
the two is time the machine gave to other processes.

Target: the planned seconds within 2x of the measured ones, either way (ratio = planned / measured in
[0.5, 2]). A plan is for deciding whether a sweep takes seconds, minutes or hours, and where to run it; its
timing pass on a shared CPU varies by more than 10% from one run to the next, so a tighter target would test
the machine's load, not the estimate.

    python benchmarks/plan_time.py
"""

from __future__ import annotations

import os

from plan_memory import SHAPES, SIZES, run
from results import write_section

TARGET = 2.0


def measure(size: int, sweep: str, options: dict) -> dict:
    """One case in this process: the plan (timed here), then the run's wall and CPU seconds."""
    import time

    import torch

    import anatomy
    from anatomy.causal.plan import plan

    torch.set_num_threads(1)
    spec = anatomy.load("tiny")
    start = time.perf_counter()
    planned = plan(spec, sweep=sweep, image_size=(size, size), **options)
    planning = time.perf_counter() - start
    wall, cpu = time.perf_counter(), time.process_time()
    planned.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"planned": planned.seconds, "wall": wall, "cpu": cpu, "planning": planning, "timing": planned.timing,
            "passes": planned.forward_passes, "batch": planned.batch_size}  # fmt: skip


def main() -> None:
    import torch

    torch.set_num_threads(1)  # as in every case's process, for the machine line
    rows, ratios, loads = [], [], [os.getloadavg()[0]]
    for size in SIZES:
        for name, (sweep, options) in SHAPES.items():
            case = run(size, sweep, options, module="plan_time")
            loads.append(os.getloadavg()[0])
            ratios.append(case["planned"] / case["wall"])
            timed = case["timing"].replace(" measured on cpu", "").removeprefix("one forward pass of ")
            timed = timed.replace("one forward and backward pass of ", "forward and backward, ")
            rows.append(f"| {size} x {size} | {name} | {case['batch']:,} | {case['passes']} | {timed} | "
                        f"{case['planning']:.2f} | **{case['planned']:.2f}** | **{case['wall']:.2f}** | "
                        f"{case['cpu']:.2f} | **{ratios[-1]:.2f}** |")  # fmt: skip
            print(rows[-1], flush=True)
    verdict = "met" if 1 / TARGET <= min(ratios) and max(ratios) <= TARGET else "NOT met"
    body = (
        f"The tiny model (float32, sdpa), the cases of *Plan memory against the measured peak* (one pair of demo "
        f"pictures, a box blacked out in the corrupted one; default budget). Each case in a fresh subprocess, one "
        f"torch thread: `plan(...)` with `device=None`, whose one timing pass (the process's first: the sweep's "
        f"heaviest kind of call as the sweep makes it, the vision tower on the pictures, then the decoder on their "
        f"image tokens; attribution's with its probes and its backward) gives the seconds per FLOP in the tower "
        f"and in the decoder; then `Plan.run()` timed by `time.perf_counter()`, without the profiler. Planned = "
        f"`Plan.seconds`; ratio = planned / measured wall time. `plan()` s is the plan's own wall time, its timing "
        f"pass included. The run's CPU time is beside its wall time (one thread: a gap is time given to other "
        f"processes). The machine's 1-minute load average: {min(loads):.1f} to {max(loads):.1f} on "
        f"{os.cpu_count()} cores during the run (read before and after each case).\n\n"
        f"| picture | sweep | copies per pass | forward passes | timing pass: rows, seconds (in the tower) | "
        f"plan() s | planned s | measured s | run CPU s | ratio |\n|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        f"Ratios {min(ratios):.2f} to {max(ratios):.2f}: target (within {TARGET:g}x either way) **{verdict}**."
    )
    write_section("Plan time against the measured time", body)
    print(body)


if __name__ == "__main__":
    main()
