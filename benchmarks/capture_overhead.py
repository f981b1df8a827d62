"""Capture overhead: a forward pass with every site captured, as a ratio to a plain one.

Both are timed in the same run, interleaved, on the same inputs; the ratio of
medians is the figure of merit (target: at most 1.10). The tiny model on a
448x336 image (768 patches, 221 prompt tokens) takes well over 100 ms per
forward pass on a 2-core CPU.

    python benchmarks/capture_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results import write_section

import anatomy
from anatomy import capture
from anatomy.inputs import demo_image, encode


def timed(run, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    specimen = anatomy.load("tiny")
    batch = encode(specimen, demo_image(448, 336))

    def plain():
        with torch.no_grad():
            return specimen.model(**batch)

    def captured():
        with torch.no_grad(), capture(specimen, "*") as cache:
            specimen.model(**batch)
        return cache

    sites = len(captured())
    plain(), captured()  # warm-up
    pairs = [(timed(plain, 1)[0], timed(captured, 1)[0]) for _ in range(args.repeats)]
    base, full = statistics.median(p for p, _ in pairs), statistics.median(c for _, c in pairs)
    body = (
        f"Tiny model, one 448x336 image ({batch['image_grid_thw'].prod().item()} patches, "
        f"{batch['input_ids'].shape[1]} prompt tokens), float32, CPU; median of {args.repeats} interleaved runs.\n\n"
        f"| run | median seconds |\n|---|---|\n| plain forward | {base:.3f} |\n"
        f"| forward + capture of all {sites} sites (copies to CPU) | {full:.3f} |\n\n"
        f"**Overhead ratio: {full / base:.3f}** (target <= 1.10)"
    )
    write_section("Capture overhead", body)
    print(body)


if __name__ == "__main__":
    main()
