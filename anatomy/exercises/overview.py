"""Exercises of notebooks 01 and 02: one decoder layer's attention parameters, the chat template by hand.

Each expected result comes from the real thing: transformers' own ``Qwen2_5_VLAttention`` built on the
meta device (shapes, no weights), and the Qwen2.5-VL processor's ``apply_chat_template``.
"""

from __future__ import annotations

import random
from functools import lru_cache

import torch
from transformers import Qwen2_5_VLTextConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLAttention

from anatomy.lab.exercises import Case, Exercise
from anatomy.model import shipped_config
from anatomy.processor import offline_processor

RELEASED = ("3B", "7B", "32B", "72B")


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
