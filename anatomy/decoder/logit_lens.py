"""Logit lens: read each decoder layer's residual stream through the final norm and lm_head.

The model only unembeds after its last layer. Applying the same final RMSNorm
and ``lm_head`` to the residual stream after layer i shows what the model
"would say" at that depth; after the last layer it is the model's own logits.

>>> lens = logit_lens(specimen, prompt, positions=[-1], top_k=3)
>>> lens[-1][0]        # last layer, first chosen position: [(token, probability), ...]
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from anatomy.capture.hooks import run
from anatomy.model import decoder, decoder_layers, lm_head


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
    decode = specimen.processor.tokenizer.convert_ids_to_tokens
    return [[list(zip(decode(ids.tolist()), values.tolist())) for ids, values in zip(*pair)]
            for pair in zip(top.indices, top.values)]


def lens_table(lens, labels: list[str]) -> str:
    """Text table: one line per layer, the top token and its probability at each position."""
    lines = ["layer  " + "  ".join(f"{label[:18]:<26}" for label in labels)]
    for layer, row in enumerate(lens):
        lines.append(f"{layer:>5}  " + "  ".join(f"{top[0][0][:18]:<18} {top[0][1]:.4f}" for top in row))
    return "\n".join(lines)


def lens_figure(lens, labels: list[str]) -> Figure:
    """Grid layer x position: colour is the top token's probability, text the token."""
    probs = np.array([[top[0][1] for top in row] for row in lens])  # (layers, positions)
    figure = Figure(figsize=(1.8 + 1.6 * len(labels), 1 + 0.45 * len(lens)), layout="constrained")
    axis = figure.subplots()
    shown = axis.imshow(probs, cmap="Blues", aspect="auto", vmin=0)
    for (layer, position), value in np.ndenumerate(probs):
        ink = "white" if value > probs.max() / 2 else "black"  # readable on dark cells too
        axis.text(position, layer, lens[layer][position][0][0][:10], ha="center", va="center", fontsize=8, color=ink)
    axis.set_xticks(np.arange(len(labels)), [label[:12] for label in labels], rotation=30)
    axis.set_yticks(np.arange(len(lens)))
    axis.set(xlabel="position", ylabel="decoder layer", title="logit lens: top token after each layer")
    figure.colorbar(shown, ax=axis, label="probability")
    return figure
