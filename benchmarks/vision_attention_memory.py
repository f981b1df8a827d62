"""Memory of capturing vision attention: measured peak against the estimate printed before the run.

One full-attention block, head-mean probabilities, a 1024x1024 image on the
tiny model. Each variant runs in a fresh process; the extra memory is the
difference of peak resident set sizes (ru_maxrss) between the process that
captured and the one that only ran the forward pass.

    python benchmarks/vision_attention_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from results import write_section

SIZE = 1024


def run(mode: str) -> dict:
    """Load the tiny model, run one forward pass (``plain``) or one with capture (``capture``)."""
    import torch

    import anatomy
    from anatomy.inputs import demo_image, encode
    from anatomy.model import block_kinds
    from anatomy.vision.attention import record_attention

    spec = anatomy.load("tiny")
    batch = encode(spec, demo_image(SIZE, SIZE))
    block = block_kinds(spec.config.vision_config).index("full")
    report = {"patches": int(batch["image_grid_thw"].prod()), "block": block}
    with torch.no_grad():
        if mode == "plain":
            spec.model(**batch)
        else:
            with record_attention(spec, batch, block, reduce="mean") as maps:
                spec.model(**batch)
            report.update(estimate=maps.estimate_bytes, kept=maps.captured_bytes)
    report["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


def measured(mode: str) -> dict:
    output = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    plain, captured = measured("plain"), measured("capture")
    extra = captured["peak_rss"] - plain["peak_rss"]
    mib = 2**20
    body = (
        f"Tiny model, {SIZE}x{SIZE} image ({captured['patches']} patches), block {captured['block']} "
        f"(full attention), head-mean probabilities; peak RSS of fresh processes.\n\n"
        f"| quantity | MiB |\n|---|---|\n"
        f"| estimate printed before the run | {captured['estimate'] / mib:.1f} |\n"
        f"| maps kept | {captured['kept'] / mib:.1f} |\n"
        f"| peak RSS, forward only | {plain['peak_rss'] / mib:.1f} |\n"
        f"| peak RSS, forward + capture | {captured['peak_rss'] / mib:.1f} |\n"
        f"| **measured extra** | **{extra / mib:.1f}** |\n\n"
        f"Measured extra / estimate = {extra / captured['estimate']:.2f} (within the estimate when <= 1)."
    )
    write_section("Vision attention memory", body)
    print(body)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run(sys.argv[1])))
    else:
        main()
