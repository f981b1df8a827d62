"""The headless job: the anatomy of one forward pass on one image.

    python -m anatomy dissect photo.jpg --out figures/

prints the token counts, one line per captured component with its shape,
and the parameter table, and writes the figures it drew to ``--out``.

It stays within a memory budget: a picture above ``max_pixels`` (``--max-pixels``,
default 1,003,520 = 1280 image tokens) is scaled down first, and the report says
so; a job whose estimate (captured activations and attention maps) is still above
``budget_gib`` (``--budget-gib``, default 8) is refused before the model runs.
A bad ``--out`` (a file, read-only, empty) is refused before anything runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from anatomy import figures
from anatomy.activations import capture
from anatomy.generation import answer_attention_figure
from anatomy.inputs import DEFAULT_MAX_PIXELS, SEED_QUESTION, encode, fit_pixels, load_image
from anatomy.merger import token_map_figure
from anatomy.parameters import count_parameters
from anatomy.patches import embedding_figure
from anatomy.resize import grid_figure, resize_plan
from anatomy.sources import load
from anatomy.vision_attention import estimate_bytes, patch_attention_figure, recording
from anatomy.vision_rotary import rotary_figure
from anatomy.windows import block_kinds, window_figure

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
DEFAULT_BUDGET_GIB = 8.0


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


def dissect(image, source: str = "toy", out: str | Path | None = None, text: str = SEED_QUESTION,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, budget_gib: float = DEFAULT_BUDGET_GIB) -> str:  # fmt: skip
    """Run one captured forward pass; return the report, and save figures under ``out``.

    Refused before the model runs: a bad ``out`` (``checked_out``), a bad image, and a job
    whose ``job_bytes`` estimate is above ``budget_gib`` GiB after the ``max_pixels`` cap.
    """
    out = checked_out(out)
    picture, note = fit_pixels(load_image(image, max_pixels=None), max_pixels)
    specimen = load(source)
    if not specimen.has_weights:
        raise ValueError(f"model {source!r} is a skeleton without weights; dissect needs one that runs")
    batch = encode(specimen, picture, text, max_pixels=None)
    grid = batch["image_grid_thw"]
    full_block = block_kinds(specimen.config.vision_config).index("full")
    check_budget(job_bytes(specimen.config, batch, full_block), budget_gib)
    with torch.no_grad(), capture(specimen, "*") as cache, recording(specimen, grid, full_block) as maps:
        specimen.model(**batch)
    drawn = vision_figures(specimen, picture, grid, cache, maps) | {
        "residual_norms": figures.residual_norms(cache),
        "answer_attention": answer_attention_figure(specimen, picture, batch),
    }
    lines = [repr(specimen), *([note] if note else []), ""]
    lines += [f"{key:<30} {value}" for key, value in token_counts(specimen, batch).items()]
    lines += ["", cache.summary(), ""] + _parameter_lines(specimen)
    if out is not None:
        lines += ["", *save_figures(drawn, out)]
    return "\n".join(lines)


def checked_out(out: str | Path | None) -> Path | None:
    """``out`` as a Path, once it is known that figures can be written there (a probe file, removed)."""
    if out is None:
        return None
    if not str(out).strip():
        raise ValueError(f"out={str(out)!r} names no directory; expected a directory for the figures, e.g. figures/")
    path = Path(out)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise ValueError(f"out={str(out)!r}: {str(existing)!r} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"out={str(out)!r}: cannot write in {str(existing)!r} ({os.strerror(error.errno)})") from None
    return path


def job_bytes(config, batch, full_block: int) -> dict[str, int]:
    """Estimated bytes the job holds: the captured activations (float32) and the recorded attention map.

    Vision: per block input, norms, qkv (3x), attention, MLP, output, ~9 x hidden per patch;
    decoder: per layer ~9 x hidden + 2 x key/value width per token, and the logits (vocab per token).
    """
    vision, text = config.vision_config, config.text_config
    patches, seq = int(batch["image_grid_thw"].prod(-1).sum()), batch["input_ids"].shape[1]
    kv_width = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    vision_values = patches * (vision.depth * 9 * vision.hidden_size + 1176 + 4 * vision.hidden_size)
    decoder_values = seq * (text.num_hidden_layers * (9 * text.hidden_size + kv_width) + 3 * text.hidden_size
                            + text.vocab_size)  # fmt: skip
    attention = estimate_bytes(batch["image_grid_thw"].cpu(), vision, [full_block], 1)  # head mean + one head's scores
    return {"captured activations": 4 * (vision_values + decoder_values),
            f"vision attention map (block {full_block})": attention}  # fmt: skip


def check_budget(parts: dict[str, int], budget_gib: float) -> None:
    """Refuse the job (MemoryError) when the parts add up to more than ``budget_gib`` GiB."""
    total = sum(parts.values())
    if total > budget_gib * 2**30:
        detail = ", ".join(f"{name} {size / 2**30:.1f} GiB" for name, size in parts.items())
        raise MemoryError(f"this job would hold about {total / 2**30:.1f} GiB ({detail}), above "
                          f"budget_gib={budget_gib:g}; pass a smaller max_pixels (--max-pixels) or a larger "
                          f"budget_gib (--budget-gib)")  # fmt: skip


def vision_figures(specimen, picture, grid, cache, maps) -> dict:
    """The image's path through the vision tower, one figure per stage."""
    config = specimen.config.vision_config
    processor = specimen.processor.image_processor
    plan = resize_plan(picture.height, picture.width, processor.size["shortest_edge"], processor.size["longest_edge"])
    rows, cols = plan.patch_grid
    block = next(iter(maps.blocks))
    return {
        "resize_grid": grid_figure(picture, processor.size["shortest_edge"], processor.size["longest_edge"]),
        "patch_embeddings": embedding_figure(cache, picture, plan),
        "vision_rotary": rotary_figure(cache["vision.rotary.cos"], grid[0], config),
        "windows": window_figure(picture, grid[0], config),
        f"vision_attention_block{block}": patch_attention_figure(maps, picture, block, rows // 2, cols // 2),
        "merged_tokens": token_map_figure(cache["vision.merger.output"], picture, grid[0], "merger output: first 3 principal components"),
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
