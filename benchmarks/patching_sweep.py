"""Patching sweep: the time of a full (residual site x image cell) sweep over a batch of toy questions.

Every held-out question's clean run is patched at each of the toy's residual sites (4 vision block
outputs, 2 decoder layer inputs, the last output) in each of its 16 cells, and at the answer
position at the decoder sites: 115 patched copies per question, run as rows of a few batched
forward passes (target: under 30 s on a 2-core CPU), by the toy's adapter over the general sweeps
(``anatomy.toy.experiments.patching``). In the same run, a few copies are timed one forward pass
each, as a sweep without batching would run them, and extrapolated to the sweep.

    python benchmarks/patching_sweep.py [--questions 12]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from results import write_section

import anatomy
from anatomy.causal import intervene, patch, record
from anatomy.causal.sweeps import residual_sites
from anatomy.kernels import fast_vision
from anatomy.toy import sample
from anatomy.toy.experiments import contrasts, patching, toy_batch


def one_row_seconds(spec, question, sites: list[str], repeats: int = 6) -> float:
    """Median seconds of one patched copy run alone (one forward pass per (site, cell))."""
    batch = {k: v for k, v in toy_batch(spec, [question]).items() if k != "labels"}
    source = record(spec, batch, sites)
    times = []
    with fast_vision(spec.model):
        for i in range(repeats):
            edit = patch(sites[i % len(sites)], source, cells=[(i % 4, i // 4)])
            start = time.perf_counter()
            with torch.no_grad(), intervene(spec, [edit]):
                spec.model(**batch, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12)
    args = parser.parse_args()
    spec = anatomy.load("toy")
    questions = [sample(0, "test", i) for i in range(args.questions)]
    patching(spec, contrasts(spec, questions[:1]))  # warm-up: caches, thread pools
    asked = contrasts(spec, questions)
    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    sweep = patching(spec, asked)
    load, cpu = (load_before + os.getloadavg()[0]) / 2, time.process_time() - cpu_before
    rows = int(np.isfinite(sweep.effects).sum())
    single = one_row_seconds(spec, questions[0], residual_sites(spec))
    body = (
        f"{args.questions} held-out toy questions (colour, where, count), {len(sweep.sites)} residual sites x 16 cells "
        f"+ the answer position at {sum(not s.startswith('vision') for s in sweep.sites)} decoder sites: "
        f"{rows} patched copies.\n\n"
        f"| | value |\n|---|---|\n"
        f"| sweep wall time (batched) | {sweep.seconds:.1f} s (target < 30 s) |\n"
        f"| sweep CPU time, all threads | {cpu:.1f} s |\n"
        f"| forward passes | {sweep.forward_passes} (per prompt layout and sweep: the source recording, the "
        f"unpatched run, image tokens once, then the batched copies of each site) |\n"
        f"| one copy alone, median | {single * 1000:.0f} ms |\n"
        f"| the same sweep one forward pass per copy (extrapolated) | {single * rows:.0f} s, "
        f"{rows + 3} forward passes |\n"
        f"| speed-up of batching | {single * rows / sweep.seconds:.1f}x |\n"
        f"\nThe machine's 1-minute load average during the sweep: {load:.1f} on {os.cpu_count()} cores "
        f"(other jobs share it; times scale with it).\n"
    )
    print(body)
    write_section("Patching sweep", body)


if __name__ == "__main__":
    main()
