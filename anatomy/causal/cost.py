"""What a (site x cell) patching sweep costs, from a model's config: forward rows, tokens, FLOPs, GPU time.

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

H200_BF16_FLOPS = 989e12  # dense bf16 peak, FLOP/s (the H100's is the same)


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


def vision_flops(config, patches: int) -> float:
    """FLOPs of one picture of ``patches`` patches through the vision tower and the merger."""
    v = config.vision_config
    width, merged = v.hidden_size, v.hidden_size * v.spatial_merge_size**2
    window = (v.window_size // v.patch_size) ** 2  # patches per attention window
    per_patch = 2 * 3 * v.temporal_patch_size * v.patch_size**2 * width  # the patch embedding
    per_patch += v.depth * 2 * (4 * width * width + 3 * width * v.intermediate_size)  # qkv, proj, SwiGLU
    full = len(v.fullatt_block_indexes)
    attention = 4 * patches * width * (full * patches + (v.depth - full) * min(window, patches))
    merger = (patches // v.spatial_merge_size**2) * 2 * (merged * merged + merged * v.out_hidden_size)
    return patches * per_patch + attention + merger


def decoder_flops(config, tokens: int) -> float:
    """FLOPs of one prompt of ``tokens`` tokens through the decoder, logits at the last position only."""
    t = getattr(config, "text_config", config)
    width, head_dim = t.hidden_size, t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    per_token = t.num_hidden_layers * 2 * (2 * width * width + 2 * width * kv + 3 * width * t.intermediate_size)
    attention = t.num_hidden_layers * 4 * t.num_attention_heads * head_dim * tokens * (tokens + 1) / 2  # causal
    return tokens * per_token + attention + 2 * width * t.vocab_size


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
