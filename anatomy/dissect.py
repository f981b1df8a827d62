"""The headless job: the anatomy of one forward pass on one image.

    python -m anatomy dissect photo.jpg --out figures/

prints the question and the model's answer (decoded), the token counts, one
line per captured component with its shape, and the parameter table, and writes
the figures it drew to ``--out``.

The toy answers only the questions of its task, so on the toy the default
question is one of them ("What colour is the cross?"), and any other question
is asked with a warning. Other models get the reference request's question.

It stays within a memory budget: a picture above ``max_pixels`` (``--max-pixels``,
default 1,003,520 = 1280 image tokens) is scaled down first, and the report says
so; a job whose estimate (captured activations and attention map) is still above
``budget_gib`` (``--budget-gib``, default 8) is refused before the model runs.
A bad ``--out`` (a file, read-only, empty) is refused before anything runs.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from anatomy.capture.budget import FLOAT_BYTES, check_job_budget
from anatomy.capture.hooks import capture
from anatomy.decoder.generation import Trace, generate_traced, traced_answer_figure
from anatomy.inputs import DEFAULT_MAX_PIXELS, REFERENCE_QUESTION, encode, fit_pixels, load_image
from anatomy.model import IMAGE, block_kinds
from anatomy.overview.parameters import count_parameters
from anatomy.overview.residuals import residual_norms_figure
from anatomy.processor import resize_plan
from anatomy.sources import load
from anatomy.toy.example import QUESTION as TOY_QUESTION
from anatomy.toy.example import is_toy_question
from anatomy.vision.attention import estimate_bytes, patch_attention_figure, record_attention
from anatomy.vision.merger import token_map_figure
from anatomy.vision.patches import embedding_figure
from anatomy.vision.resize import grid_figure
from anatomy.vision.rotary import rotary_figure
from anatomy.vision.windows import window_figure

# Only what the report and the figures read: the whole "*" would hold every vision activation
# (about 8 GB for a 1080p image on the 7B).
SITES = ("vision.patch_embed", "vision.rotary.cos", "vision.blocks.*.output", "vision.merger.output",
         "decoder.layers.*.output")
ANSWER_TOKENS = 32  # the most new tokens generated for the answer (the toy answers in one token, then ends its turn)
DEFAULT_BUDGET_GIB = 8.0


def token_counts(prompt) -> dict[str, int]:
    """Tokens of the prompt by kind: total, image placeholders, patches before the 2x2 merge."""
    image = int((prompt.kinds == IMAGE).sum())
    return {
        "prompt tokens": len(prompt.kinds),
        "image tokens (<|image_pad|>)": image,
        "text and special tokens": len(prompt.kinds) - image,
        "vision patches (14x14 px)": int(prompt.grid_thw.prod(-1).sum()),
    }


def question_for(specimen, text: str | None) -> str:
    """The question to ask: ``text``, or the default for this model; warns when the toy cannot answer ``text``."""
    if specimen.kind != "toy":
        return REFERENCE_QUESTION if text is None else text
    if text is None:
        return TOY_QUESTION
    if not is_toy_question(text):
        warnings.warn(f"the toy answers only its task's questions, such as {TOY_QUESTION!r}; "
                      f"its answer to {text!r} means nothing", stacklevel=3)
    return text


def answer(specimen, trace: Trace) -> str:
    """The greedy answer ``generate_traced`` produced, decoded for people (no byte-level symbols, no special
    tokens such as the ``<|im_end|>`` that ends the turn)."""
    return specimen.processor.tokenizer.decode(trace.sequence[0, trace.prompt_length:], skip_special_tokens=True)


def dissect(image, source: str = "toy", out: str | Path | None = None, text: str | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, budget_gib: float = DEFAULT_BUDGET_GIB) -> str:  # fmt: skip
    """Run one captured forward pass; return the report, and save figures under ``out``.

    ``text``: the question (None: the toy's running question on the toy, the reference request's otherwise).

    Refused before the model runs: a bad ``out`` (``checked_out``), a bad image, and a job
    whose ``job_bytes`` estimate is above ``budget_gib`` GiB after the ``max_pixels`` cap.
    """
    out = checked_out(out)
    picture, note = fit_pixels(load_image(image, max_pixels=None), max_pixels)
    specimen = load(source)
    if not specimen.has_weights:
        raise ValueError(f"model {source!r} is a skeleton without weights; dissect needs one that runs")
    question = question_for(specimen, text)
    prompt = encode(specimen, picture, question, max_pixels=None)
    full_block = block_kinds(specimen.config.vision_config).index("full")
    check_job_budget(job_bytes(specimen.config, prompt, full_block), budget_gib,
                     "pass a smaller max_pixels (--max-pixels) or a larger budget_gib (--budget-gib)")
    recording = record_attention(specimen, prompt, [full_block])
    with torch.no_grad(), capture(specimen, list(SITES)) as cache, recording as maps:
        specimen.model(**prompt)
    trace = generate_traced(specimen, prompt, ANSWER_TOKENS, keep=("attention",))  # one generation: answer and figure
    drawn = vision_figures(specimen, prompt, cache, maps) | {
        "residual_norms": residual_norms_figure(cache),
        "answer_attention": traced_answer_figure(specimen, prompt, trace),
    }
    lines = [repr(specimen), *([note] if note else []), "", f"question: {question}",
             f"answer:   {answer(specimen, trace)}", ""]
    lines += [f"{key:<30} {value}" for key, value in token_counts(prompt).items()]
    lines += ["", cache.summary(), "", str(count_parameters(specimen))]
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


def job_bytes(config, prompt, full_block: int) -> dict[str, int]:
    """Estimated bytes the job holds: the ``SITES`` it captures (float32) and the recorded attention map.

    Vision: per patch the embedding, the rotary cos, one output per block; per merged token the
    merger output; decoder: one output per layer and token.
    """
    vision, text = config.vision_config, config.text_config
    patches, seq = int(prompt.grid_thw.prod(-1).sum()), prompt["input_ids"].shape[1]
    head_dim = vision.hidden_size // vision.num_heads
    vision_values = patches * ((vision.depth + 1) * vision.hidden_size + head_dim)
    vision_values += patches // vision.spatial_merge_size**2 * vision.out_hidden_size
    decoder_values = seq * text.num_hidden_layers * text.hidden_size
    attention = estimate_bytes(prompt.grid_thw, vision, [full_block], 1)  # head mean + one head's scores
    return {"captured activations": FLOAT_BYTES * (vision_values + decoder_values),
            f"vision attention map (block {full_block})": attention}  # fmt: skip


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
