"""Capture overhead: a forward pass with every site captured, as a ratio to a plain one.

All three runs are timed in the same process, interleaved, on the same
inputs; the ratio of medians is the figure of merit (target: at most 1.10).
On a CPU model capture keeps detached references (the default); with
``copy=True`` it copies every tensor, which is what moving a GPU model's
activations to the CPU costs. Two models of the real classes (about 0.1 s
and 0.4 s per forward pass on an idle 2-core CPU):

- ``tiny`` (decoder width 128, 4 layers): the worst case for copies, since
  copying its (tokens x 151,936) logits costs about as much as computing them;
- ``wider`` (decoder width 512, 8 layers; vision width 256, 8 blocks): closer to
  the balance of the released models, whose decoder is 2048-8192 wide.

    python benchmarks/capture_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from results import write_section
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import anatomy
from anatomy import capture
from anatomy.inputs import demo_image, encode
from anatomy.model import Specimen, config_path

WIDER_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, max_window_layers=8,
                  num_attention_heads=8, num_key_value_heads=2,
                  rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
WIDER_VISION = dict(hidden_size=256, intermediate_size=1024, depth=8, num_heads=4, out_hidden_size=512,
                    fullatt_block_indexes=[3, 7])


def wider() -> Specimen:
    """The tiny model's complete config with the widths and depths above; random weights."""
    values = json.loads(config_path("tiny").read_text())
    values.update(WIDER_TEXT)
    values["vision_config"].update(WIDER_VISION)
    config = Qwen2_5_VLConfig(**values)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Specimen(Qwen2_5_VLForConditionalGeneration(config).eval(), "wider", "tiny")


def median_seconds(specimen, batch, repeats: int) -> tuple[list[float], int]:
    """Median seconds of a plain, a captured and a captured-with-copies forward pass; and the site count."""

    def plain():
        with torch.no_grad():
            specimen.model(**batch)

    def captured(copy: bool = False):
        with torch.no_grad(), capture(specimen, "*", copy=copy) as cache:
            specimen.model(**batch)
        return len(cache)

    runs = (plain, captured, lambda: captured(copy=True))
    sites = captured()
    plain()  # warm-up
    seconds = [[] for _ in runs]
    for _ in range(repeats):
        for run, kept in zip(runs, seconds):
            start = time.perf_counter()
            run()
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in seconds], sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rows, load_before = [], os.getloadavg()[0]
    for name, specimen in (("tiny", anatomy.load("tiny")), ("wider", wider())):
        batch = encode(specimen, demo_image(336, 448))
        (base, kept, copied), sites = median_seconds(specimen, batch, args.repeats)
        rows.append(f"| {name} | {sites} | {base:.3f} | {kept:.3f} | **{kept / base:.3f}** "
                    f"| {copied:.3f} | {copied / base:.3f} |")
    body = (
        f"One 448x336 image (768 patches, 221 prompt tokens), float32, CPU; median of {args.repeats} "
        "interleaved runs; capture of every site.\n\n"
        "| model | sites | plain forward (s) | + capture (s) | overhead ratio | + capture, copy=True (s) | ratio |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nTarget: overhead ratio <= 1.10. "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the runs "
        "(above 0 means other processes shared the cores; interleaving keeps the ratio fair)."
    )
    write_section("Capture overhead", body)
    print(body)


if __name__ == "__main__":
    main()
