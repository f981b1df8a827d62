"""Exercises of notebooks 00, 01 and 02: prompt tokens of a request, one decoder layer's attention parameters, the
chat template by hand.

Each expected result comes from the real thing: the processor's count of a request's tokens (``anatomy.serving.
bridge``) and its resize rule (``resize_plan``), transformers' own ``Qwen2_5_VLAttention`` built on the meta device
(shapes, no weights), and the Qwen2.5-VL processor's ``apply_chat_template``. A wrong token count gets a hint
that names the mistake it matches (a 14-px patch counted as a token, the text left out, ...), or says whether it is
too big or too small, never the count.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import Qwen2_5_VLTextConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLAttention

from anatomy.lab.exercises import Case, Exercise
from anatomy.model import shipped_config
from anatomy.processor import offline_processor, resize_plan

RELEASED = ("3B", "7B", "32B", "72B")
CELL, PATCH = 28, 14  # px: one image token per 28 x 28 cell, four 14 x 14 patches merged 2 x 2
PATCHES = "one token per 14-px patch: the merger joins 2 x 2 patches, so it is one token per 28 x 28-px cell"


@dataclass(frozen=True)
class Count:
    """A token count, and the counts that typical mistakes give, each with its hint."""

    value: int
    mistakes: tuple[tuple[int, str], ...]


def count_hint(got, expected: Count) -> str | None:
    """None when ``got`` is the count; else the hint of the mistake it matches, or a factor of 4 (patches for
    cells), or whether it is too big or too small.

    >>> count_hint(91, Count(91, ())), count_hint(64, Count(91, ((64, "the image alone"),)))
    (None, '{yours} 64: the image alone')
    >>> count_hint(100, Count(91, ()))
    '{yours} 100: too big'
    """
    if isinstance(got, float) and got.is_integer():
        got = int(got)
    if isinstance(got, bool) or not isinstance(got, int):
        return "{yours} " + f"{got!r}; expected a whole number (a count of tokens)"
    if got == expected.value:
        return None
    hint = next((words for value, words in expected.mistakes if value == got), None)
    if hint is None and got == 4 * expected.value:
        hint = f"4 times too many: {PATCHES}"
    if hint is None and 4 * got == expected.value:
        hint = "4 times too few: the merger joins 2 x 2 patches of 14 px, and each 28 x 28-px cell is one token"
    return "{yours} " + f"{got}: " + (hint or ("too big" if got > expected.value else "too small"))


def _served(processor, question: str, images: list) -> tuple[int, list[int]]:
    """The prompt tokens of a request (one user message: ``images``, then ``question``) and each image's tokens."""
    from anatomy import serving

    counted = serving.bridge(processor, serving.chat_messages(question, images=images))
    return counted.local_tokens, counted.image_tokens


def _bigger_case(rng: random.Random, processor, question: str, image) -> list[Case]:
    from anatomy.serving import sample_image

    before, (old,) = _served(processor, question, [image])
    total, (new,) = _served(processor, question, [sample_image(size=(224, 224))])
    text, side = total - new, 224 // CELL
    mistakes = (
        (new, "the image's tokens alone: prompt_tokens counts the whole prompt, the chat template's text too"),
        (text + new * 4, PATCHES),
        (before, "the 112 x 112 picture's count: the bigger picture has more cells"),
        (before + new, "the new picture's tokens added to the old count, which already holds the old picture's"),
        (text + side, "one side's cells only: a picture has rows x columns cells"),
        (text + 2 * old, "twice the side is 4 times the area: tokens grow with rows x columns"),
        (224 * 224, "a count of pixels, not of tokens (one per 28 x 28-px cell)"),
        (text + 224 * 224, "pixels, not tokens: one image token per 28 x 28-px cell"),
    )
    return [Case("a 224 x 224 picture", (), Count(total, mistakes))]


def _twice_case(rng: random.Random, processor, question: str, image) -> list[Case]:
    once, (tokens,) = _served(processor, question, [image])
    total, _ = _served(processor, question, [image, image])
    mistakes = (
        (once + tokens, "the second picture's <|vision_start|> and <|vision_end|> left out: each picture has its own"),
        (2 * once, "the whole prompt doubled: the system message, the question and the template are sent once"),
        (once, "one picture's count: this request sends it twice"),
        (total + 6 * tokens, PATCHES),
    )
    return [Case("the picture twice", (), Count(total, mistakes))]


def _capped_case(rng: random.Random) -> list[Case]:
    height, width, cap = 1080, 1920, 1003520
    plan = resize_plan(height, width, max_pixels=cap)
    scale = math.sqrt(height * width / cap)
    rounded = round(height / scale / CELL) * round(width / scale / CELL)
    mistakes = (
        (cap // (CELL * CELL), "the cap itself: each side is rounded down to a multiple of 28 px, so it ends below"),
        (rounded, "each side rounded to the nearest multiple of 28 px: above max_pixels the processor rounds down"),
        (resize_plan(height, width).tokens, "the screenshot without the cap: max_pixels scales it down first"),
        ((height // CELL) * (width // CELL), "not scaled down: max_pixels scales both sides by one factor first"),
        (plan.resized[0] * plan.resized[1], "a count of pixels, not of tokens (one per 28 x 28-px cell)"),
    )
    return [Case("a 1080 x 1920 screenshot under max_pixels=1003520", (), Count(plan.tokens, mistakes))]


BIGGER_PICTURE = Exercise("bigger_picture", "an int", _bigger_case, compare=count_hint, function=False,
                          needs=("processor", "question", "image"))
PICTURE_TWICE = Exercise("picture_twice", "an int", _twice_case, compare=count_hint, function=False,
                         needs=("processor", "question", "image"))
CAPPED_SCREENSHOT = Exercise("capped_screenshot", "an int", _capped_case, compare=count_hint, function=False)


def _attention_count(hidden: int, heads: int, kv_heads: int) -> int:
    """Parameters of transformers' decoder attention at these sizes, counted on the meta device."""
    config = Qwen2_5_VLTextConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads)
    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2_5_VLAttention(config, layer_idx=0).parameters())


def _attention_cases(rng: random.Random) -> list[Case]:
    sizes = []
    for name in RELEASED:
        text = shipped_config(name).text_config
        sizes.append((f"the {name}", text.hidden_size, text.num_attention_heads, text.num_key_value_heads))
    for _ in range(3):
        kv_heads, group, head_dim = rng.choice([1, 2, 4]), rng.choice([1, 2, 3, 7]), rng.choice([16, 32, 64])
        heads = kv_heads * group
        sizes.append((f"width {heads * head_dim}, {heads} query heads, {kv_heads} key/value heads",
                      heads * head_dim, heads, kv_heads))
    return [Case(f"{label} (hidden={h}, heads={q}, kv_heads={kv})", (h, q, kv), _attention_count(h, q, kv))
            for label, h, q, kv in sizes]


def _attention_mistakes(got, case: Case) -> str | None:
    hidden, heads, kv_heads = case.args
    kv_width = kv_heads * (hidden // heads)
    if not isinstance(got, int) or got == case.expected or heads == kv_heads:
        return None
    if got in (4 * hidden * hidden + 3 * hidden, 4 * hidden * hidden + 4 * hidden, 4 * hidden * hidden):
        return (f"{{yours}} {got}: k_proj and v_proj are as wide as q_proj in your count; with {kv_heads} "
                f"key/value heads for {heads} query heads they are narrower")
    if got in (case.expected - hidden - 2 * kv_width, case.expected + hidden):
        return f"{{yours}} {got}: check the biases (which of q_proj, k_proj, v_proj, o_proj has one?)"
    return None


ATTENTION_PARAMETERS = Exercise(
    "attention_parameters",
    "a function attention_parameters(hidden, heads, kv_heads) -> int",
    _attention_cases,
    diagnose=_attention_mistakes,
)

WORDS = ("what", "colour", "is", "the", "circle", "where", "text", "how", "many", "picture", "left", "sign")


@lru_cache(maxsize=1)
def _processor():
    return offline_processor()


def _template(question: str, images: int) -> str:
    """What the Qwen2.5-VL chat template writes for one user turn: ``images`` images, then the question."""
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    return _processor().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _prompt_cases(rng: random.Random) -> list[Case]:
    cases = []
    for images in (1, 0, 2, 3):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))).capitalize() + "?"
        cases.append(Case(f"question={question!r}, images={images}", (question, images), _template(question, images)))
    return cases


def _prompt_mistakes(got, case: Case) -> str | None:
    if not isinstance(got, str) or got == case.expected:
        return None
    if "<|im_start|>system" not in got:
        return "{yours} a prompt without a system message: the template puts a default one first when there is none"
    if not got.endswith("<|im_start|>assistant\n"):
        return "{yours} a prompt that does not end on the assistant's turn: add the generation prompt"
    return None


def same_text(got, expected: str) -> str | None:
    """A hint naming where ``got`` first differs from ``expected`` (and what ``got`` has there), or None."""
    if not isinstance(got, str):
        return f"{{yours}} a {type(got).__name__}; expected a str"
    if got == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    line = got.count("\n", 0, at) + 1
    return (f"{{yours}} a prompt that goes wrong at character {at} (line {line}): yours has "
            f"{got[at:at + 30]!r} there" + (" (it ends there, too early)" if at == len(got) else ""))


CHAT_PROMPT = Exercise(
    "chat_prompt",
    "a function chat_prompt(question, images) -> str",
    _prompt_cases,
    compare=same_text,
    diagnose=_prompt_mistakes,
)
