"""Logit lens: read each decoder layer's residual stream through the final norm and lm_head.

The model only unembeds after its last layer. Applying the same final RMSNorm
and ``lm_head`` to the residual stream after layer i shows what the model
"would say" at that depth; after the last layer it is the model's own logits.

>>> lens = logit_lens(specimen, prompt, positions=[-1], top_k=3)
>>> lens[-1][0]        # last layer, first chosen position: [(token, probability), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from anatomy.capture.hooks import run
from anatomy.lab.figures import drawable, label_fonts
from anatomy.lab.widgets import LiveFigure
from anatomy.model import decoder, decoder_layers, lm_head
from anatomy.processor import one_line, token_texts


def _positions(positions, seq: int) -> list[int]:
    chosen = [positions] if isinstance(positions, int) else list(positions)
    bad = [p for p in chosen if not isinstance(p, int) or not -seq <= p < seq]
    if bad or not chosen:
        raise ValueError(f"position {bad or chosen} out of range; the prompt has {seq} tokens (-{seq} to {seq - 1})")
    return [p % seq for p in chosen]


def residuals(specimen, batch, positions) -> torch.Tensor:
    """(layers, positions, D) residual stream after every decoder layer at ``positions``."""
    positions = _positions(positions, batch["input_ids"].shape[1])
    cache = run(specimen, batch, "decoder.layers.*.output", device=None)
    count = len(decoder_layers(specimen.model))
    return torch.stack([cache[f"decoder.layers.{i}.output"][0, positions] for i in range(count)])


def lens_logits(specimen, stream: torch.Tensor) -> torch.Tensor:
    """(..., vocab) logits of a residual stream (..., D) through the final norm and lm_head."""
    with torch.no_grad():
        return lm_head(specimen)(decoder(specimen).norm(stream))


def logit_lens(specimen, batch, positions=-1, top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
    """Top ``top_k`` (token, probability) per layer and position: [layer][position][rank]."""
    probs = torch.softmax(lens_logits(specimen, residuals(specimen, batch, positions)).float(), dim=-1)
    top = torch.topk(probs, top_k, dim=-1)  # (layers, positions, k)
    tokenizer = specimen.processor.tokenizer
    return [[list(zip(token_texts(tokenizer, ids), values.tolist())) for ids, values in zip(*pair)]
            for pair in zip(top.indices, top.values)]


def lens_table(lens, labels: list[str]) -> str:
    """Text table: one line per layer, the top token and its probability at each position."""
    lines = ["layer  " + "  ".join(f"{one_line(label)[:18]:<26}" for label in labels)]
    for layer, row in enumerate(lens):
        lines.append(f"{layer:>5}  " + "  ".join(f"{one_line(top[0][0])[:18]:<18} {top[0][1]:.4f}" for top in row))
    return "\n".join(lines)


def lens_figure(lens, labels: list[str]) -> Figure:
    """Grid layer x position: colour is the top token's probability, text the token."""
    probs = np.array([[top[0][1] for top in row] for row in lens])  # (layers, positions)
    figure = Figure(figsize=(1.8 + 1.6 * len(labels), 1 + 0.6 * len(lens)), layout="constrained")
    axis = figure.subplots()
    shown = axis.imshow(probs, cmap="Blues", aspect="auto", vmin=0)
    for (layer, position), value in np.ndenumerate(probs):
        ink = "white" if value > probs.max() / 2 else "black"  # readable on dark cells too
        label = drawable(one_line(lens[layer][position][0][0]), 14, wrap=18)
        axis.text(position, layer, label, ha="center", va="center", fontsize=8, color=ink, fontfamily=label_fonts())
    axis.set_xticks(np.arange(len(labels)), [drawable(one_line(label), 12) for label in labels], rotation=30,
                    fontfamily=label_fonts())
    axis.set_yticks(np.arange(len(lens)))
    axis.set(xlabel="position", ylabel="decoder layer", title="logit lens: top token after each layer")
    figure.colorbar(shown, ax=axis, label="probability")
    return figure


@dataclass
class LensSteps:
    """The logit lens through generation: for new token j, the row that chose it, read after every layer.

    Attributes:
        tokens: the new tokens, decoded, (steps,).
        lens: top (token, probability) pairs, ``[step][layer][rank]``.
    """

    tokens: list[str]
    lens: list[list[list[tuple[str, float]]]]


def lens_steps(specimen, batch, max_new_tokens: int = 4, top_k: int = 3) -> LensSteps:
    """Greedy generation, then the lens of every row that chose a new token (prompt's last row, then each new one).

    The rows are read in one forward pass over prompt + new tokens: the same rows ``generate`` computed
    one call at a time with its KV cache.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected at least 1")
    with torch.no_grad():
        sequence = specimen.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)  # (1, prompt + n)
    prompt = batch["input_ids"].shape[1]
    whole = {**batch, "input_ids": sequence, "attention_mask": torch.ones_like(sequence)}
    if "mm_token_type_ids" in batch:  # (1, seq): 0 for text, so the new tokens add zeros
        added = sequence.shape[1] - prompt
        whole["mm_token_type_ids"] = torch.nn.functional.pad(batch["mm_token_type_ids"], (0, added))
    table = logit_lens(specimen, whole, list(range(prompt - 1, sequence.shape[1] - 1)), top_k)  # [layer][step][rank]
    steps = [[layer[j] for layer in table] for j in range(sequence.shape[1] - prompt)]
    return LensSteps(token_texts(specimen.processor.tokenizer, sequence[0, prompt:]), steps)


def steps_figure(steps: LensSteps, step: int) -> Figure:
    """Layer x step grid of the top token (text) and its probability (colour), up to ``step`` (outlined).

    Every step of the slider shares one colour scale, from 0 to the largest top-token probability of any step;
    the columns not generated yet are left empty, their token greyed in the x labels.
    """
    if not 0 <= step < len(steps.tokens):
        raise ValueError(f"step={step}; expected 0 to {len(steps.tokens) - 1}")
    layers = len(steps.lens[0])
    tops = np.array([[steps.lens[j][layer][0][1] for j in range(len(steps.tokens))] for layer in range(layers)])
    probs = np.where(np.arange(len(steps.tokens)) <= step, tops, np.nan)  # (layers, steps): only those taken
    figure = Figure(figsize=(3 + 2.2 * len(steps.tokens), 2.2 + 0.7 * layers), layout="constrained")
    axis = figure.subplots()
    shown = axis.imshow(probs, cmap="Blues", aspect="auto", vmin=0, vmax=tops.max())
    for j in range(step + 1):
        for layer in range(layers):
            token, value = steps.lens[j][layer][0]
            axis.text(j, layer, f"'{drawable(one_line(token), 16, wrap=18)}'", ha="center", va="center", fontsize=9,
                      color="white" if value > tops.max() / 2 else "black", fontfamily=label_fonts())
    axis.add_patch(Rectangle((step - 0.5, -0.5), 1, layers, fill=False, ec="tab:red", lw=2))
    axis.set_xticks(np.arange(len(steps.tokens)), [f"{j}: '{drawable(one_line(t), 16)}'" for j, t in enumerate(steps.tokens)],
                    fontfamily=label_fonts())
    for j, label in enumerate(axis.get_xticklabels()):
        label.set_color("black" if j <= step else "0.6")
    axis.set_yticks(np.arange(layers))
    said = "".join(steps.tokens[: step + 1])
    axis.set(xlabel="generation step: the token it chose (grey: not generated yet)", ylabel="decoder layer")
    axis.set_title(f"logit lens, step {step}: the top token after each layer\ngenerated so far: "
                   f"'{drawable(one_line(said))}'", fontfamily=label_fonts())
    figure.colorbar(shown, ax=axis, label="probability of the top token")
    return figure


def lens_stepper(steps: LensSteps, start: int = 0) -> LiveFigure:
    """A slider over generation steps: the lens of the row that chose each new token (``steps_figure``)."""
    import ipywidgets as widgets

    if not 0 <= start < len(steps.tokens):
        raise ValueError(f"start={start}; expected 0 to {len(steps.tokens) - 1}")
    slider = widgets.IntSlider(value=start, min=0, max=len(steps.tokens) - 1, description="step")
    return LiveFigure(lambda step: steps_figure(steps, step), {"step": slider}, dpi=110)
