"""Rows of a batch for experiments: pick and repeat prompts, reuse their pictures' image tokens, read the answer.

A batch here is the model's keyword arguments for prompts of one layout with one picture each, all of one
size (``Contrast.batch``, or any processor output of that shape), optionally with ``"labels"``.

>>> repeated = take(batch, [0, 0, 1])                        # rows (and their pictures) picked and repeated
>>> images = image_tokens(spec, batch)                       # the merger's output, once per picture
>>> logits = answer_logits(spec, with_image_tokens(batch, images, [0, 0, 1]), edits)   # (3, vocab)
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from anatomy.causal.interventions import intervene
from anatomy.model import multimodal


def take(batch: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """``batch`` with its rows (and each row's one picture) picked in the order of ``rows``."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    per_picture = batch["pixel_values"].shape[0] // len(batch["image_grid_thw"])  # one picture per row
    patches = (index[:, None] * per_picture + torch.arange(per_picture)).reshape(-1)
    return {key: value[(patches if key == "pixel_values" else index).to(value.device)] for key, value in batch.items()}


def image_tokens(spec, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The merger's output for each picture of ``batch``: one ``(tokens, D)`` tensor per picture."""
    with torch.no_grad():
        return multimodal(spec).get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output


def with_image_tokens(batch: dict[str, torch.Tensor], images: tuple[torch.Tensor, ...], rows) -> dict:
    """``take(batch, rows)`` with the pictures' image tokens given (``mm_encoder_outputs``) instead of pixels,
    so that the model skips its vision tower."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    picked = {key: value[index.to(value.device)] for key, value in batch.items() if key != "pixel_values"}
    pooled = BaseModelOutputWithPooling(pooler_output=[images[r] for r in index.tolist()])
    return {**picked, "mm_encoder_outputs": {"image": pooled}}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch without its ``"labels"``: the model's keyword arguments."""
    return {k: v for k, v in batch.items() if k != "labels"}


def answer_logits(spec, batch: dict[str, torch.Tensor], edits=()) -> torch.Tensor:
    """``(B, vocab)`` float32 logits at the last position (the answer's), with ``edits`` applied."""
    with torch.no_grad(), intervene(spec, list(edits)):
        return spec.model(**model_inputs(batch), logits_to_keep=1, use_cache=False).logits[:, -1].float()


def chunks(count: int, size: int) -> list[np.ndarray]:
    """``range(count)`` cut into consecutive index arrays of at most ``size``."""
    return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]
