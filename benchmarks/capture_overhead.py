"""Capture overhead: a forward pass with every site captured, as a ratio to a plain one.

Both are timed in the same run, interleaved, on the same inputs; the ratio of
medians is the figure of merit (target: at most 1.10). Two models of the real
classes, each taking well over 100 ms per forward pass on a 2-core CPU:

- ``tiny`` (decoder width 128, 4 layers): the worst case, since copying its
  (tokens x 151,936) logits costs about as much as computing them;
- ``wider`` (decoder width 512, 8 layers; vision width 256, 8 blocks): closer to
  the balance of the released models, whose decoder is 2048-8192 wide.

    python benchmarks/capture_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import anatomy
from anatomy import capture
from anatomy.inputs import demo_image, encode
from anatomy.sources import Specimen, config_path
from results import write_section

WIDER_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, max_window_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
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


def median_seconds(specimen, batch, repeats: int) -> tuple[float, float, int]:
    """Median seconds of a plain and a fully captured forward pass, interleaved; and the site count."""

    def plain():
        with torch.no_grad():
            specimen.model(**batch)

    def captured():
        with torch.no_grad(), capture(specimen, "*") as cache:
            specimen.model(**batch)
        return len(cache)

    sites = captured()
    plain()  # warm-up
    pairs = []
    for _ in range(repeats):
        start = time.perf_counter()
        plain()
        middle = time.perf_counter()
        captured()
        pairs.append((middle - start, time.perf_counter() - middle))
    return statistics.median(p for p, _ in pairs), statistics.median(c for _, c in pairs), sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for name, specimen in (("tiny", anatomy.load("tiny")), ("wider", wider())):
        batch = encode(specimen, demo_image(448, 336))
        base, full, sites = median_seconds(specimen, batch, args.repeats)
        rows.append(f"| {name} | {sites} | {base:.3f} | {full:.3f} | **{full / base:.3f}** |")
    body = (
        f"One 448x336 image (768 patches, 221 prompt tokens), float32, CPU; median of {args.repeats} "
        "interleaved runs; capture of every site, copies to the CPU.\n\n"
        "| model | sites | plain forward (s) | forward + capture (s) | overhead ratio |\n|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\nTarget: ratio <= 1.10."
    )
    write_section("Capture overhead", body)
    print(body)


if __name__ == "__main__":
    main()
