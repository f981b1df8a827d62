"""The plan's peak-memory estimate against the measured peak: tiny at 448 x 448 and 896 x 896, seven sweep shapes.

Each case runs in a fresh subprocess, one torch thread: ``plan(...)`` (on an H100's numbers, so no timing pass
runs), then ``Plan.run()`` measured by ``anatomy.causal.plan.measured_peak``: the largest running sum of torch's
CPU allocations and frees during the run (torch's profiler, every tensor the allocator hands out, to the byte).
Not the resident set: the CPU allocator keeps no peak statistics (``torch.cuda.max_memory_allocated`` has no
CPU twin), tracemalloc does not see it, and the resident high-water mark misreads a run both ways (lower where
the run reuses memory freed before it, higher by the profiler's own records and the runtime's one-time buffers).

The estimate compared is the plan's peak less the weights (loaded before the measure starts):
target: never under the measured peak, at most 1.5x over it.

    python benchmarks/plan_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from results import write_section

SIZES = (448, 896)
SHAPES = {  # sweep, its options: each kind of call the tests' plans make (tests/causal/test_plan.py's CASES)
    "cell patching": ("patching", {"sites": ["vision.blocks.1.output", "decoder.layers.2.input"], "cells": "window"}),
    "positions": ("positions", {"sites": ["decoder.layers.2.input"]}),
    "attribution": ("attribution", {}),
    "attribution (decoder sites)": ("attribution", {"sites": ["decoder.layers.0.input", "decoder.layers.2.output"]}),
    "knockout": ("knockout", {"cells": "window"}),
    "heads (patch)": ("heads", {"ablation": "patch"}),
    "heads (zero)": ("heads", {"ablation": "zero"}),
}
TARGET = 1.5


def measure(size: int, sweep: str, options: dict) -> dict:
    """One case in this process: the plan's parts and the run's peak of torch allocations."""
    import torch

    import anatomy
    from anatomy.causal.plan import measured_peak, plan

    torch.set_num_threads(1)
    spec = anatomy.load("tiny")
    planned = plan(spec, sweep=sweep, image_size=(size, size), device="H100", **options)
    _, peak = measured_peak(planned.run, "cpu")
    return {"memory": planned.memory, "torch": peak, "passes": planned.forward_passes,
            "batch": planned.batch_size, "shape": planned.shape}  # fmt: skip


def run(size: int, sweep: str, options: dict, module: str = "plan_memory") -> dict:
    """One case in a fresh subprocess: ``module.measure(size, sweep, options)`` (plan_time measures the same cases)."""
    script = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); from {module} import measure; "
              f"print(json.dumps(measure({size}, {sweep!r}, {options!r})))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{sweep} at {size} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    torch.set_num_threads(1)  # as in every case's process, for the machine line
    mib, rows, ratios = 2**20, [], []
    for size in SIZES:
        for name, (sweep, options) in SHAPES.items():
            case = run(size, sweep, options)
            estimate = sum(bytes_ for part, bytes_ in case["memory"].items() if part != "weights")
            measured = case["torch"]
            ratios.append(estimate / measured)
            parts = ", ".join(f"{part} {bytes_ / mib:.1f}" for part, bytes_ in case["memory"].items()
                              if part != "weights")  # fmt: skip
            rows.append(f"| {size} x {size} | {name} | {case['batch']:,} | {case['passes']} | {parts} | "
                        f"**{estimate / mib:.1f}** | {case['torch'] / mib:.1f} | "
                        f"**{estimate / measured:.2f}** |")  # fmt: skip
            print(rows[-1], flush=True)
    weights = case["memory"]["weights"] / mib
    verdict = "met" if min(ratios) >= 1 and max(ratios) <= TARGET else "NOT met"
    body = (
        f"The tiny model (float32, sdpa), one pair of demo pictures (a box blacked out in the corrupted one), "
        f"default budget (4 GiB). Each case in a fresh subprocess: `plan(...)` then `Plan.run()`. Measured: the "
        f"peak of torch's CPU allocations during the run (`anatomy.causal.plan.measured_peak`: torch's profiler, "
        f"`profile_memory`, every allocation and free to the byte; the CPU allocator keeps no peak statistics). "
        f"Not the resident set, which misreads a run both ways: lower where the run reuses memory freed before it, "
        f"higher by the profiler's records and the runtime's buffers outside torch's allocator (oneDNN's "
        f"convolution scratch, not in this estimate either). Estimate = the plan's peak less the weights "
        f"({weights:.1f} MiB, loaded before the measure starts); ratio = estimate / measured. Sizes in MiB. "
        f"Other processes shared the machine's 2 cores during the run (memory does not depend on it).\n\n"
        f"| picture | sweep | copies per pass | forward passes | estimate's parts | estimate | measured | "
        f"ratio |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Ratios {min(ratios):.2f} to {max(ratios):.2f}: target (never under, at most {TARGET}x over) **{verdict}**. "
        f"Before this estimate was counted tensor by tensor (`anatomy.causal.cost.pass_bytes`, `graph_bytes`), the "
        f"plan reported what the sweeps size their batches by: 1.2x to 7.7x the peak of these shapes, measured "
        f"the same way at commit 5abb3ef (heads with zero ablation): "
        f"it counted attention scores that sdpa never holds (per copy, and the vision tower's full attention "
        f"for every copy although the tower attends one picture at a time), added the vision tower's peak to the "
        f"decoder's although one runs after the other, took 1,176 values per patch for every vision site, and "
        f"missed the sweep's own batches of pixels (both sides, float32). The sweeps sized their batches by that "
        f"looser count until they took this one: now a sweep runs the most copies per pass whose estimate fits "
        f"its budget (`anatomy.causal.calls.Calls.batch_size`), and the table's batches are those."
    )
    write_section("Plan memory against the measured peak", body)
    print(body)


if __name__ == "__main__":
    main()
