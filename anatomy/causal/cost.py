"""What a (site x cell) patching sweep costs, from a model's config: forward rows, tokens, FLOPs, GPU time.

``vision_flops`` and ``decoder_flops`` count one prompt's pass; ``anatomy.causal.plan`` adds them up
over the passes of any sweep. ``sweep_cost`` is the quick estimate for a square picture.

A sweep over ``questions`` questions patches each of ``cells`` image cells at every residual site:
each vision block's output (the row runs the vision tower and the decoder) and each decoder layer's
input plus the last output (the row reuses the picture's image tokens, decoder only), plus the
answer position at each decoder site. FLOPs count 2 per multiply-add of every linear layer and of
attention (q k^T and the weighted sum), windowed where the vision tower is; lm_head only at the
answer position. Time assumes a GPU running at ``utilisation`` of its dense bf16 peak.

>>> plan = sweep_cost(shipped_config("7B"), image_side=448, text_tokens=30)
>>> plan.rows, plan.flops, plan.seconds
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anatomy.capture.budget import check_gib, check_job_budget
from anatomy.capture.orders import window_lengths

H200_BF16_FLOPS = 989e12  # dense bf16 peak, FLOP/s (the H100's is the same)
PEAK_FLOPS = {"H100": H200_BF16_FLOPS, "H200": H200_BF16_FLOPS, "A100": 312e12}  # dense bf16 peaks, FLOP/s


@dataclass(frozen=True)
class SweepCost:
    """The sweep's size and cost; ``seconds`` at ``utilisation`` of ``peak_flops``."""

    patches: int
    image_tokens: int
    prompt_tokens: int
    vision_rows: int
    decoder_rows: int
    vision_flops: float  # one picture through the vision tower
    decoder_flops: float  # one prompt through the decoder
    peak_flops: float
    utilisation: float

    @property
    def rows(self) -> int:
        return self.vision_rows + self.decoder_rows

    @property
    def flops(self) -> float:
        return self.vision_rows * (self.vision_flops + self.decoder_flops) + self.decoder_rows * self.decoder_flops

    @property
    def seconds(self) -> float:
        return self.flops / (self.peak_flops * self.utilisation)


def vision_flops(config, patches: int, grid: tuple[int, int] | None = None) -> float:
    """FLOPs of one picture of ``patches`` patches through the vision tower and the merger.

    ``grid``: the picture's (rows, cols) of patches, to count its attention windows as transformers cuts them
    (smaller at the right and bottom edges); without it every window is taken as full.
    """
    v = config.vision_config
    width, merged = v.hidden_size, v.hidden_size * v.spatial_merge_size**2
    per_patch = 2 * 3 * v.temporal_patch_size * v.patch_size**2 * width  # the patch embedding
    per_patch += v.depth * 2 * (4 * width * width + 3 * width * v.intermediate_size)  # qkv, proj, SwiGLU
    full = len(v.fullatt_block_indexes)
    if grid is None:
        windowed = patches * min((v.window_size // v.patch_size) ** 2, patches)  # sum over windows of size^2
    else:
        windowed = sum(n * n for n in window_lengths(torch.tensor([[1, *grid]]), v))
    attention = 4 * width * (full * patches * patches + (v.depth - full) * windowed)
    merger = (patches // v.spatial_merge_size**2) * 2 * (merged * merged + merged * v.out_hidden_size)
    return patches * per_patch + attention + merger


def decoder_flops(config, tokens: int, keep: int = 1, dense_layers: int = 0) -> float:
    """FLOPs of one prompt of ``tokens`` tokens through the decoder, logits at the last ``keep`` positions.

    Causal attention counts the scores at and below the diagonal; ``dense_layers`` of the layers count
    every query against every key, as kernels do when given a dense mask (attention knockout) and as eager
    attention always does.
    """
    t = getattr(config, "text_config", config)
    width, head_dim = t.hidden_size, t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    per_token = t.num_hidden_layers * 2 * (2 * width * width + 2 * width * kv + 3 * width * t.intermediate_size)
    causal = (t.num_hidden_layers - dense_layers) * tokens * (tokens + 1) / 2 + dense_layers * tokens * tokens
    attention = 4 * t.num_attention_heads * head_dim * causal  # q k^T and the weighted sum, per scored pair
    return tokens * per_token + attention + 2 * width * t.vocab_size * keep


def sweep_cost(config, image_side: int = 448, text_tokens: int = 30, questions: int = 1,
               peak_flops: float = H200_BF16_FLOPS, utilisation: float = 0.4,
               vision_sites: int | None = None) -> SweepCost:
    """The cost of ``patching_sweep`` on ``questions`` questions about square pictures of ``image_side`` px.

    ``vision_sites``: how many vision blocks' outputs are patched (default: every block).
    """
    v = config.vision_config
    side = image_side // v.patch_size
    patches, cells = side * side, side * side // v.spatial_merge_size**2
    tokens = cells + text_tokens
    layers = getattr(config, "text_config", config).num_hidden_layers
    vision_rows = questions * (v.depth if vision_sites is None else vision_sites) * cells
    decoder_rows = questions * (layers + 1) * (cells + 1)
    return SweepCost(patches, cells, tokens, vision_rows, decoder_rows, vision_flops(config, patches),
                     decoder_flops(config, tokens), peak_flops, utilisation)


def copies_per_pass(fixed: dict[str, int], copy: int, least: int, budget_gib: float, advice: str) -> int:
    """How many copies of ``copy`` bytes fit in one pass beside the ``fixed`` parts (bytes each) within
    ``budget_gib`` GiB. A job whose fixed parts and its smallest necessary pass (one copy, or ``least`` bytes: an
    unpatched run of every pair) exceed the budget is refused (``MemoryError`` naming the parts, ending in
    ``advice``).

    >>> copies_per_pass({"recorded activations": 2**29}, 2**28, 2**28, 1.0, "use fewer sites")
    2
    """
    check_gib(budget_gib)
    check_job_budget({**fixed, "largest pass": max(copy, least)}, budget_gib, advice)
    return int((budget_gib * 2**30 - sum(fixed.values())) // copy)
