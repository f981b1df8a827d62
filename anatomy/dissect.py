"""The headless job: the anatomy of one forward pass on one image.

    python -m anatomy dissect photo.jpg --model tiny --out figures/

prints the token counts, one line per captured component with its shape,
and the parameter table, and writes the figures it drew to ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anatomy import figures
from anatomy.capture import capture
from anatomy.inputs import SEED_QUESTION, encode, load_image
from anatomy.parameters import count_parameters
from anatomy.sources import load

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


def token_counts(specimen, batch) -> dict[str, int]:
    """Tokens of the prompt by kind: total, image placeholders, patches before the 2x2 merge."""
    ids = batch["input_ids"][0]
    image_id = specimen.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    return {
        "prompt tokens": int(ids.numel()),
        "image tokens (<|image_pad|>)": int((ids == image_id).sum()),
        "text and special tokens": int((ids != image_id).sum()),
        "vision patches (14x14 px)": int(batch["image_grid_thw"].prod(-1).sum()),
    }


def dissect(image, source: str = "toy", out: str | Path | None = None, text: str = SEED_QUESTION) -> str:
    """Run one captured forward pass; return the report, and save figures under ``out``."""
    specimen = load(source)
    if not specimen.has_weights:
        raise ValueError(f"model {source!r} is a skeleton without weights; dissect needs one that runs")
    picture = load_image(image)
    batch = encode(specimen, picture, text)
    with torch.no_grad(), capture(specimen, "*") as cache:
        specimen.model(**batch)
    drawn = {"patch_norms": figures.patch_norm_map(cache, picture), "residual_norms": figures.residual_norms(cache)}
    lines = [repr(specimen), ""] + [f"{key:<30} {value}" for key, value in token_counts(specimen, batch).items()]
    lines += ["", cache.summary(), ""] + _parameter_lines(specimen)
    if out is not None:
        lines += ["", *save_figures(drawn, out)]
    return "\n".join(lines)


def _parameter_lines(specimen) -> list[str]:
    return [str(count_parameters(specimen))]


def save_figures(drawn: dict, out: str | Path) -> list[str]:
    """Write each figure as ``out/NAME.png``; return one line per file written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in drawn.items():
        path = out / f"{name}.png"
        figure.savefig(path, dpi=110)
        written.append(f"wrote {path}")
    return written
