"""Solutions to the notebooks' "implement it" exercises (teachers only: not shipped to students).

Each function is what a student writes in the notebook's stub; ``anatomy.exercises.check_answer(name, function)``
accepts it. ``tests/lab/test_exercises.py`` imports this file by path and checks every solution, and a wrong
answer beside each. ``exercises.md`` explains them.
"""

import math

import torch


def attention_parameters(hidden, heads, kv_heads):
    """01: q_proj (hidden -> hidden) and o_proj (hidden -> hidden), k_proj and v_proj (hidden -> kv_heads x
    head_dim); q, k and v have a bias, o has none."""
    kv_width = kv_heads * (hidden // heads)
    return 2 * hidden * hidden + 2 * hidden * kv_width + hidden + 2 * kv_width


def chat_prompt(question, images):
    """02: the default system message, the user turn with one vision block per image then the question, and the
    generation prompt."""
    picture = "<|vision_start|><|image_pad|><|vision_end|>"
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{picture * images}{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def smart_resize(height, width, min_pixels, max_pixels):
    """03: round each side to 28; scale down (floor) above max_pixels, up (ceil) below min_pixels."""
    factor = 28
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(image):
    """03: (3, H, W) -> (H/14 * W/14, 1176): two identical frames, 2x2 groups of patches together, each row
    (channel, frame, y, x)."""
    c, h, w = image.shape
    frames = torch.stack([image, image], dim=1)  # (3, 2, H, W)
    x = frames.reshape(c, 2, h // 28, 2, 14, w // 28, 2, 14)  # (c, frame, bh, mh, y, bw, mw, x)
    x = x.permute(2, 5, 3, 6, 0, 1, 4, 7)  # (bh, bw, mh, mw, c, frame, y, x)
    return x.reshape(-1, c * 2 * 14 * 14)


def rotation_angles(position_ids, head_dim, theta):
    """04: head_dim/4 frequencies theta^(-2i / (head_dim/2)); the row's angles, then the column's."""
    half = head_dim // 2
    frequencies = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float) / half)  # (head_dim/4,)
    ids = position_ids.float()
    return torch.cat([ids[:, :1] * frequencies, ids[:, 1:] * frequencies], dim=-1)


def window_ids(rows, cols, side):
    """04: windows numbered row by row, a cut window at the right edge counted too."""
    across = -(-cols // side)
    return (torch.arange(rows)[:, None] // side) * across + torch.arange(cols)[None, :] // side


def merge(merger, patches):
    """05: RMSNorm each patch, read 4 consecutive patches as one row, the MLP."""
    normed = merger.ln_q(patches)  # (patches, D)
    grouped = normed.reshape(-1, 4 * patches.shape[-1])  # (patches / 4, 4 D)
    return merger.mlp[2](merger.mlp[1](merger.mlp[0](grouped)))


def mrope_ids(input_ids, image_grid_thw):
    """06: text tokens count up on all three axes; a picture's tokens share the time id and lie on their merged
    grid from the next id; the text after it resumes at that id + max(rows, cols)."""
    ids, next_id, picture, i = [], 0, 0, 0
    while i < len(input_ids):
        if input_ids[i] == 151655:
            _, rows, cols = (int(v) // m for v, m in zip(image_grid_thw[picture], (1, 2, 2)))
            for r in range(rows):
                for c in range(cols):
                    ids.append((next_id, next_id + r, next_id + c))
            next_id += max(rows, cols)
            picture, i = picture + 1, i + rows * cols
        else:
            ids.append((next_id, next_id, next_id))
            next_id, i = next_id + 1, i + 1
    return torch.tensor(ids).T


def attention_probs(q, k):
    """07: softmax(q k^T / sqrt(d)) with a causal mask; query head h reads key/value head h // (H / KV)."""
    heads, seq, dim = q.shape
    keys = k.repeat_interleave(heads // k.shape[0], dim=0)  # (H, S, d)
    scores = q @ keys.transpose(1, 2) / math.sqrt(dim)  # (H, S, S)
    scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(dim=-1)


def per_area(attention, regions):
    """08: each region's attention summed over its cells, divided by its cells (0 for a region without any)."""
    onehot = torch.nn.functional.one_hot(regions, 3).float()  # (B, cells, 3)
    mass = torch.einsum("lbc,bcr->lbr", attention, onehot)
    return mass / onehot.sum(1).clamp(min=1)


def patch_by_hand(specimen, batch, source, layer, position):
    """09: record the layer's output on the source, then run the batch with that one position replaced."""
    block = specimen.model.model.language_model.layers[layer]
    kept = {}

    def keep(module, args, output):
        kept["source"] = output[0] if isinstance(output, tuple) else output

    def replace(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, position] = kept["source"][:, position]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with torch.no_grad():
        handle = block.register_forward_hook(keep)
        try:
            specimen.model(**source)
        finally:
            handle.remove()
        handle = block.register_forward_hook(replace)
        try:
            return specimen.model(**batch).logits[:, -1].float()
        finally:
            handle.remove()


def attribution_by_hand(specimen, one, metric, layer):
    """11: two runs with a zero probe added to decoder layer ``layer``'s input; on each image token, the clean minus
    the corrupted activation times the metric's gradient on the corrupted run, summed over the hidden size, divided
    by metric(clean) - metric(corrupted); the tokens run row by row over the cells."""
    block = specimen.model.model.language_model.layers[layer]

    def run(inputs):
        kept = {}

        def probe(module, args):
            kept["activation"], kept["probe"] = args[0].detach(), torch.zeros_like(args[0], requires_grad=True)
            return (args[0] + kept["probe"], *args[1:])

        handle = block.register_forward_pre_hook(probe)
        try:
            with torch.enable_grad():
                value = metric(specimen.model(**inputs).logits)[0]
                return value.detach(), kept["activation"], torch.autograd.grad(value, kept["probe"])[0]
        finally:
            handle.remove()

    clean_value, clean, _ = run(one.clean)
    value, corrupted, grad = run(one.corrupted)
    change = ((clean - corrupted) * grad).sum(-1)[0]  # (S,): the first-order change of the metric per token
    image = one.corrupted["input_ids"][0] == specimen.config.image_token_id
    return change[image].view(one.grid) / (clean_value - value)


def lens_top(specimen, stream):
    """10: the final norm, lm_head, softmax; the top token and its probability per layer."""
    with torch.no_grad():
        logits = specimen.model.lm_head(specimen.model.model.language_model.norm(stream))
    top = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    return top.indices, top.values
