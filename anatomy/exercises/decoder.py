"""Exercises of notebooks 06, 07 and 10: M-RoPE ids by hand, the video time step and the second picture's ids
(predict, then verify), one layer's attention probabilities with GQA, the busiest head on the cross, a logit-lens
step.

Each expected result comes from transformers' own code (``get_rope_index``, ``eager_attention_forward``) or the
package's (``anatomy.decoder``).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

from anatomy.decoder import mrope
from anatomy.decoder.logit_lens import lens_logits
from anatomy.inputs import demo_image, encode
from anatomy.lab.exercises import Case, Exercise
from anatomy.model import text_config
from anatomy.processor import FACTOR
from anatomy.vision.video import encode_video

IMAGE_PAD = 151655  # <|image_pad|>, the same id in every Qwen2.5-VL
WORDS = ("which", "picture", "has", "more", "red", "the", "first", "second", "is", "bigger")


def _prompt(specimen, sizes: list[tuple[int, int]], rng: random.Random):
    """A user turn with one picture per (height, width) of ``sizes``, text between and after them."""
    content = []
    for height, width in sizes:
        content += [{"type": "image", "image": demo_image(height, width)},
                    {"type": "text", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))}]
    return encode(specimen, messages=[{"role": "user", "content": content or [{"type": "text", "text": "Hi"}]}])


def _mrope_cases(rng: random.Random, specimen) -> list[Case]:
    side = lambda: FACTOR * rng.randint(2, 5)  # a size in pixels, a multiple of 28
    cases = []
    for sizes in ([(56, 84), (112, 56)], [(side(), side()), (side(), side())], [(side(), side())], []):
        prompt = _prompt(specimen, sizes, rng)
        label = " and ".join(f"{h} x {w}" for h, w in sizes) or "no"
        grid = prompt.get("image_grid_thw", torch.zeros(0, 3, dtype=torch.long))
        cases.append(Case(f"a prompt of {prompt['input_ids'].shape[1]} tokens with {label} px pictures",
                          (prompt["input_ids"][0], grid), mrope.rope_index(specimen, prompt)[0][:, 0]))
    return cases


def _mrope_mistakes(got, case: Case) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape or got.is_floating_point():
        return None
    wrong = torch.nonzero(got != case.expected)
    if not len(wrong):
        return None
    axis, token = (int(v) for v in wrong[torch.argmin(wrong[:, 1])])
    input_ids, grid = case.args
    is_image = input_ids == IMAGE_PAD
    starts = torch.nonzero(is_image & ~torch.cat([torch.tensor([False]), is_image[:-1]])).flatten()
    if is_image[token]:
        k = int((starts <= token).sum()) - 1
        rows, cols = (int(v) // 2 for v in grid[k, 1:])
        r, c = divmod(token - int(starts[k]), cols)
        what = f"image token (row {r}, column {c}) of picture {k + 1}, whose grid is {rows} x {cols} tokens"
    else:
        what = "a text token" + (f" after picture {int((starts < token).sum())}" if (starts < token).any() else "")
    return (f"{{yours}} a wrong {mrope.AXES[axis]} id at token {token}, {what}: "
            f"yours is {int(got[axis, token])}")


MROPE_IDS = Exercise(
    "mrope_ids",
    "a function mrope_ids(input_ids, image_grid_thw) -> (3, tokens) tensor of (time, height, width) ids",
    _mrope_cases,
    diagnose=_mrope_mistakes,
    needs=("specimen",),
)


def _time_step_case(rng: random.Random, specimen, clip) -> list[Case]:
    steps = mrope.video_time_steps(specimen, encode_video(specimen, clip, sample_fps=2.0, max_pixels=56 * 56))
    return [Case("the clip sampled at 2 frames per second", (), steps[0])]


VIDEO_TIME_STEP = Exercise("video_time_step", "an int", _time_step_case, function=False, needs=("specimen", "clip"))


def _second_picture_case(rng: random.Random, specimen, prompt) -> list[Case]:
    first_tokens = int(prompt["image_grid_thw"][0].prod()) // 4  # merged tokens of the first picture
    second = int(torch.nonzero(prompt["input_ids"][0] == IMAGE_PAD).flatten()[first_tokens])
    return [Case("the second picture's first token", (), mrope.rope_index(specimen, prompt)[0][:, 0, second].tolist())]


SECOND_PICTURE_IDS = Exercise("second_picture_ids", "a list of 3 ints", _second_picture_case, function=False, needs=("specimen", "prompt"))


def _probs(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """transformers' eager attention probabilities, causal: q (H, S, d), k (KV, S, d) -> (H, S, S)."""
    heads, seq, dim = query.shape
    module = SimpleNamespace(num_key_value_groups=heads // key.shape[0], training=False)
    mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None]  # (1, 1, S, S): no key after the query
    return eager_attention_forward(module, query[None], key[None], key[None], mask, dim**-0.5)[1][0]


def _attention_cases(rng: random.Random) -> list[Case]:
    cases = []
    for heads, kv_heads, seq, dim in ((4, 2, 5, 8), (8, 4, 12, 16), (6, 1, 3, 4), (rng.choice([4, 8]), 2, rng.randint(2, 20), 16)):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        query, key = torch.randn(heads, seq, dim, generator=gen), torch.randn(kv_heads, seq, dim, generator=gen)
        cases.append(Case(f"q of shape {(heads, seq, dim)} and k of shape {(kv_heads, seq, dim)}", (query, key),
                          _probs(query, key)))
    return cases


def _attention_mistakes(got, case: Case) -> str | None:
    query, key = case.args
    if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape:
        return None
    got = got.float()
    heads, kv_heads = query.shape[0], key.shape[0]
    if kv_heads < heads > 1:
        interleaved = key[torch.arange(heads) % kv_heads]  # head h reads kv head h % KV: the wrong sharing
        if torch.allclose(got, _probs(query, interleaved), atol=1e-5) and not torch.allclose(got, case.expected):
            return (f"{{yours}} probabilities where query head h reads key/value head h % {kv_heads}; "
                    f"consecutive query heads share one key/value head")
    if query.shape[1] > 1 and got[:, 0, 1:].abs().sum() > 0:
        return "{yours} probabilities where a query sees keys after it: the attention is causal"
    if not torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-4):
        return "{yours} rows that do not sum to 1: a softmax over the keys"
    return None


ATTENTION_PROBS = Exercise(
    "attention_probs",
    "a function attention_probs(q, k) -> (heads, queries, keys) tensor",
    _attention_cases,
    diagnose=_attention_mistakes,
)


def _busiest_case(rng: random.Random, rows, on_cell) -> list[Case]:
    layer, head = divmod(int(on_cell.argmax()), on_cell.shape[1])
    return [Case("the busiest head", (), (rows.layers[layer], rows.heads[head]))]


BUSIEST_HEAD = Exercise("busiest_head", "a tuple (layer, head)", _busiest_case, function=False, needs=("rows", "on_cell"))


def _lens_cases(rng: random.Random, specimen) -> list[Case]:
    width = text_config(specimen.config).hidden_size
    cases = []
    for layers in (1, 2, rng.randint(3, 6)):
        stream = torch.randn(layers, width, generator=torch.Generator().manual_seed(rng.randrange(2**31))) * 4
        probs = torch.softmax(lens_logits(specimen, stream).float(), dim=-1)
        top = probs.max(dim=-1)
        cases.append(Case(f"a random stream of shape {(layers, width)}", (specimen, stream), (top.indices, top.values)))
    return cases


def _lens_mistakes(got, case: Case) -> str | None:
    if not isinstance(got, tuple) or len(got) != 2 or not isinstance(got[1], torch.Tensor):
        return None
    specimen, stream = case.args
    with torch.no_grad():
        raw = torch.softmax(specimen.model.lm_head(stream).float(), dim=-1).max(dim=-1).values
    if got[1].shape == raw.shape and torch.allclose(got[1].float(), raw, atol=1e-5):
        return "{yours} the probabilities of the raw stream: apply the decoder's final norm before lm_head"
    return None


LENS_TOP = Exercise(
    "lens_top",
    "a function lens_top(specimen, stream) -> (token ids, probabilities), each (layers,)",
    _lens_cases,
    diagnose=_lens_mistakes,
    needs=("specimen",),
)
