"""What a (site x cell) patching sweep costs, from a model's config: forward rows, tokens, FLOPs, GPU time, memory.

``vision_flops`` and ``decoder_flops`` count one prompt's pass; ``anatomy.causal.plan`` adds them up
over the passes of any sweep. ``sweep_cost`` is the quick estimate for a square picture.
``pass_bytes`` and ``graph_bytes`` bound what one model call holds at its peak (see "Memory" below).

A sweep over ``questions`` questions patches each of ``cells`` image cells at every residual site:
each vision block's output (the row runs the vision tower and the decoder) and each decoder layer's
input plus the last output (the row reuses the picture's image tokens, decoder only), plus the
answer position at each decoder site. FLOPs count 2 per multiply-add of every linear layer and of
attention (q k^T and the weighted sum), windowed where the vision tower is; lm_head only at the
answer position. Time assumes a GPU running at ``utilisation`` of its dense bf16 peak.

>>> plan = sweep_cost(shipped_config("7B"), image_side=448, text_tokens=30)
>>> plan.rows, plan.flops, plan.seconds

Memory. Counted from transformers' Qwen2.5-VL code, tensor by tensor, as an upper bound of what is alive
at the peak of a call (``benchmarks/plan_memory.py`` measures it). The vision tower runs before the decoder
and frees its activations, so a pass holds the larger of the two, not their sum, plus what lives across
both (pixels, image tokens). Attention scores exist only under ``eager`` attention: sdpa and flash kernels
never hold the (queries x keys) matrix; the vision tower attends one picture (or window) at a time, so its
eager scores are one picture's, whatever the batch. Norms, rotary and softmax compute in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anatomy.capture.orders import window_lengths
from anatomy.model import text_config

H200_BF16_FLOPS = 989e12  # dense bf16 peak, FLOP/s (the H100's is the same)
PEAK_FLOPS = {"H100": H200_BF16_FLOPS, "H200": H200_BF16_FLOPS, "A100": 312e12}  # dense bf16 peaks, FLOP/s
PIXEL_VALUES = 3 * 2 * 14 * 14  # values per patch in pixel_values (float32 from the processor)
FLOAT32 = 4
# Bytes per token of a call's int64 ids, attention mask, token types and the rotary's three position ids, the
# image tokens' boolean masks and a recording's ids taken for the copies: 58, counted tensor by tensor in a
# decoder-only call of tiny (a position sweep's 128 copies of a 1,051-token prompt), rounded up.
BOOKKEEPING = 64


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


def size_text(size: float) -> str:
    """Bytes for people: GiB with two decimals, MiB below 1 GiB. ``size_text(3 * 2**29) == '1.50 GiB'``."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"


def kernel(config) -> str:
    """The decoder's attention kernel (``attn_implementation``): ``"eager"``, ``"sdpa"``, a flash kernel..."""
    return text_config(config)._attn_implementation or "eager"


def vision_row_bytes(config, patches: int, itemsize: int) -> int:
    """Peak bytes one picture of ``patches`` patches holds in a forward pass of the vision tower, without gradients:
    its pixels (the caller's float32, and their cast to the model's dtype, alive throughout), then the widest stage
    of a block: attention (residual, normed input, fused qkv, q and k rotated in float32 through four temporaries,
    the rotary tables; after it the outputs, their concatenation and projection) or the SwiGLU MLP (residual,
    normed input, act(gate), up, their product); eager scores apart."""
    v = config.vision_config
    dim, inner, head = v.hidden_size, v.intermediate_size, v.hidden_size // v.num_heads
    pixels = PIXEL_VALUES * (FLOAT32 + (itemsize if itemsize != FLOAT32 else 0))
    rotary = 5 * dim * itemsize + 6 * dim * FLOAT32 + 4 * head * FLOAT32
    attention = max(rotary, 10 * dim * itemsize)
    mlp = (2 * dim + 3 * inner) * itemsize
    embed = (PIXEL_VALUES + dim) * itemsize  # the convolution's working copy and its output
    return patches * (pixels + max(attention, mlp, embed))


def decoder_row_bytes(config, tokens: int, keep: int, itemsize: int, masked: bool = False,
                      softmax: bool = True) -> int:  # fmt: skip
    """Peak bytes one prompt of ``tokens`` tokens holds in a forward pass of the decoder, without gradients: the
    input embeddings, the residual and an edited copy of it, the rotary's cosines and sines (alive through every
    layer), ``BOOKKEEPING`` bytes per token, then the widest stage of a layer: attention (normed input, q/k/v,
    the rotary's products, the output and its projection; keys and values repeated to every head under eager or
    a mask, and eager's scores and float32 softmax) or the MLP, or after the last layer the ``keep`` positions'
    logits, their float32 copy (the metric reads float32: none when they are) and the metric's float32 softmax
    of them (``softmax``), whichever is larger. ``masked``: the kernel gets a dense mask (attention knockout). No
    KV cache: the sweeps call the model with ``use_cache=False``."""
    t = text_config(config)
    width, inner, heads = t.hidden_size, t.intermediate_size, t.num_attention_heads
    kv = t.num_key_value_heads * width // heads
    eager = kernel(config) == "eager"
    attention = (width + 4 * width + 2 * kv + (2 * width if eager or masked else 0)) * itemsize
    if eager:  # each query's row of the causal mask, its scores and their float32 softmax
        attention += tokens * itemsize + heads * tokens * (itemsize + max(itemsize, FLOAT32))
    mlp = (width + 3 * inner) * itemsize
    rotary = 2 * (width // heads) * itemsize
    held = tokens * (3 * width * itemsize + rotary + BOOKKEEPING)
    logits = keep * t.vocab_size * (itemsize + (FLOAT32 if itemsize != FLOAT32 else 0) + (FLOAT32 if softmax else 0))
    return int(held + max(tokens * max(attention, mlp), logits))


def eager_vision_bytes(config, grid: tuple[int, int], itemsize: int) -> int:
    """Under eager attention, one picture's scores in a full-attention block (and their float32 softmax): the
    tower attends one picture at a time, so this is held once per pass, whatever its rows. 0 for other kernels."""
    v = config.vision_config
    if (v._attn_implementation or "eager") != "eager":
        return 0
    patches = grid[0] * grid[1]
    return int(v.num_heads * patches * patches * (itemsize + max(itemsize, FLOAT32)))


def pass_bytes(config, rows: int, tokens: int, patches: int, grid: tuple[int, int], keep: int, vision: bool,
               decoder: bool, itemsize: int, masked: bool = False, softmax: bool = True) -> int:  # fmt: skip
    """Peak bytes of one forward pass without gradients over ``rows`` prompts: the tower's peak or the decoder's,
    whichever is larger, with what the tower hands the decoder (pixels, its last hidden states, image tokens), or
    without the tower (image tokens given) the image tokens the model concatenates. ``softmax``: the metric makes
    a float32 softmax of the logits (``anatomy.causal.metrics.Metric.copies_logits``)."""
    v, width = config.vision_config, text_config(config).hidden_size
    tower = 0
    if vision:
        tower = rows * vision_row_bytes(config, patches, itemsize) + eager_vision_bytes(config, grid, itemsize)
        handed = rows * patches * (PIXEL_VALUES * FLOAT32 + (v.hidden_size + width) * itemsize)
    else:
        handed = rows * patches // v.spatial_merge_size**2 * width * itemsize
    text = rows * decoder_row_bytes(config, tokens, keep, itemsize, masked, softmax) if decoder else 0
    return max(tower, text + handed)


def graph_bytes(config, tokens: int, patches: int, grid: tuple[int, int], keep: int, vision: bool,
                itemsize: int) -> int:  # fmt: skip
    """Bytes one prompt's forward pass keeps for its backward, parameters requiring gradients (every linear layer
    keeps its input): per decoder layer and token the two norms' float32 inputs and outputs, the attention's
    q/k/v, output and o_proj input, the MLP's input, gate, act, up and product; the vision tower's likewise
    (its pixels too) when it is in the graph (``vision``); eager attention's probabilities (float32, and their
    cast); the logits and their softmax; then one layer's gradients during the backward (a forward pass's widest
    stage)."""
    t, v = text_config(config), config.vision_config
    width, inner = t.hidden_size, t.intermediate_size
    kv = t.num_key_value_heads * width // t.num_attention_heads
    norms = 2 * (FLOAT32 + itemsize)
    probabilities = FLOAT32 + (itemsize if itemsize != FLOAT32 else 0)  # per query and key, under eager
    scores = t.num_attention_heads * tokens * probabilities if kernel(config) == "eager" else 0
    layer = width * norms + (5 * width + 2 * kv + width + 4 * inner) * itemsize + scores
    decoder = t.num_hidden_layers * tokens * layer + tokens * width * 4 * itemsize + 3 * keep * t.vocab_size * FLOAT32
    block = v.hidden_size * norms + (8 * v.hidden_size + v.hidden_size + 4 * v.intermediate_size) * itemsize
    tower = v.depth * patches * block + patches * PIXEL_VALUES * (FLOAT32 + itemsize) if vision else 0
    if vision and (v._attn_implementation or "eager") == "eager":  # every window's probabilities, every block
        full = len(v.fullatt_block_indexes)
        windows = sum(n * n for n in window_lengths(torch.tensor([[1, *grid]]), v))
        tower += v.num_heads * (full * patches * patches + (v.depth - full) * windows) * probabilities
    backward = max(vision_row_bytes(config, patches, itemsize) if vision else 0,
                   decoder_row_bytes(config, tokens, keep, itemsize))  # fmt: skip
    return decoder + tower + backward
