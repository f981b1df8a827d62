"""The headless job: the anatomy of one forward pass on one image.

    python -m anatomy dissect photo.jpg --out figures/

prints the token counts, one line per captured component with its shape,
and the parameter table, and writes the figures it drew to ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anatomy.capture.hooks import capture
from anatomy.decoder.generation import answer_attention_figure
from anatomy.inputs import REFERENCE_QUESTION, encode, load_image
from anatomy.model import block_kinds
from anatomy.overview.parameters import count_parameters
from anatomy.overview.residuals import residual_norms_figure
from anatomy.processor import resize_plan
from anatomy.sources import load
from anatomy.vision.attention import patch_attention_figure, record_attention
from anatomy.vision.merger import token_map_figure
from anatomy.vision.patches import embedding_figure
from anatomy.vision.resize import grid_figure
from anatomy.vision.rotary import rotary_figure
from anatomy.vision.windows import window_figure

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
# Only what the report and the figures read: the whole "*" would hold every vision activation
# (about 8 GB for a 1080p image on the 7B).
SITES = ("vision.patch_embed", "vision.rotary.cos", "vision.blocks.*.output", "vision.merger.output",
         "decoder.layers.*.output")


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


def dissect(image, source: str = "toy", out: str | Path | None = None, text: str = REFERENCE_QUESTION) -> str:
    """Run one captured forward pass; return the report, and save figures under ``out``."""
    specimen = load(source)
    if not specimen.has_weights:
        raise ValueError(f"model {source!r} is a skeleton without weights; dissect needs one that runs")
    picture = load_image(image)
    prompt = encode(specimen, picture, text)
    full_block = block_kinds(specimen.config.vision_config).index("full")
    recording = record_attention(specimen, prompt, [full_block])
    with torch.no_grad(), capture(specimen, list(SITES)) as cache, recording as maps:
        specimen.model(**prompt)
    drawn = vision_figures(specimen, prompt, cache, maps) | {
        "residual_norms": residual_norms_figure(cache),
        "answer_attention": answer_attention_figure(specimen, prompt),
    }
    lines = [repr(specimen), ""] + [f"{key:<30} {value}" for key, value in token_counts(specimen, prompt).items()]
    lines += ["", cache.summary(), ""] + _parameter_lines(specimen)
    if out is not None:
        lines += ["", *save_figures(drawn, out)]
    return "\n".join(lines)


def vision_figures(specimen, prompt, cache, maps) -> dict:
    """The image's path through the vision tower, one figure per stage."""
    config, picture, grid = specimen.config.vision_config, prompt.image, prompt.grid_thw
    processor = specimen.processor.image_processor
    plan = resize_plan(picture.height, picture.width, processor.size["shortest_edge"], processor.size["longest_edge"])
    rows, cols = plan.patch_grid
    block = next(iter(maps.blocks))
    return {
        "resize_grid": grid_figure(picture, processor.size["shortest_edge"], processor.size["longest_edge"]),
        "patch_embeddings": embedding_figure(cache, picture, plan),
        "vision_rotary": rotary_figure(cache["vision.rotary.cos"], grid[0], config),
        "windows": window_figure(picture, grid[0], config),
        f"vision_attention_block{block}": patch_attention_figure(maps, prompt, block, rows // 2, cols // 2),
        "merged_tokens": token_map_figure(cache["vision.merger.output"], prompt, "merger output, 3 principal axes"),
    }


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
