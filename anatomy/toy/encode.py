"""Samples of the toy task -> model inputs, as the real processor makes them, fast enough to train on.

``encode(samples, processor)`` returns exactly what
``processor(text=..., images=..., padding=True, padding_side="left")`` returns
for the chat of each sample (``messages``), but tokenises each distinct
question once: the full processor call costs ~10 ms a sample, which would
dominate training. The pictures still go through the real image processor.
``encode_conversations`` does the same for training conversations: one
picture, several questions, each answered before the next is asked.

>>> batch = encode([sample(0, "train", i) for i in range(2)], processor)   # doctest: +SKIP
>>> batch["input_ids"].shape, batch["pixel_values"].shape
(torch.Size([2, 47]), torch.Size([128, 1176]))
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from anatomy.toy.shapes import IMAGE_SIZE
from anatomy.toy.task import ANSWERS, Sample, Scene

STOP = "<|im_end|>"


def messages(question: str) -> list[dict]:
    """The chat for one question: a user turn with the picture first, then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def prompt_text(processor, question: str) -> str:
    """The chat template applied to ``messages(question)``, ending in ``<|im_start|>assistant\\n``."""
    return processor.apply_chat_template(messages(question), add_generation_prompt=True, tokenize=False)


def answer_token(processor, answer: str) -> int:
    """The id of ``answer`` as the first token after ``<|im_start|>assistant\\n``; fails unless it is one token."""
    prefix = processor.tokenizer("<|im_start|>assistant\n").input_ids
    ids = processor.tokenizer(f"<|im_start|>assistant\n{answer}<|im_end|>").input_ids
    if ids[: len(prefix)] != prefix or len(ids) != len(prefix) + 2:
        raise ValueError(f"answer {answer!r} is not one token after the prompt: {ids[len(prefix) :]}")
    return ids[len(prefix)]


@functools.lru_cache(maxsize=4)
def answer_tokens(processor) -> dict[str, int]:
    """Every answer of the task -> its token id, e.g. ``{"red": 1151, ..., "left": 2359, ...}``."""
    return {a: answer_token(processor, a) for answers in ANSWERS.values() for a in answers}


def conversation(asked: list[Sample]) -> list[dict]:
    """One chat about one picture: ``messages`` of the first question, then each answer and the next question.

    It ends on the last question, so that the chat template's generation prompt asks for its answer.
    """
    chat = messages(asked[0].question)
    for previous, current in zip(asked, asked[1:]):
        chat += [
            {"role": "assistant", "content": [{"type": "text", "text": previous.answer}]},
            {"role": "user", "content": [{"type": "text", "text": current.question}]},
        ]
    return chat


def encode_conversations(chats: list[list[Sample]], processor, answered: bool = False) -> dict[str, torch.Tensor]:
    """``processor(...)`` of each ``conversation(asked)``, left-padded, built from cached pieces.

    Besides the processor's keys: ``labels`` ``(B, K)``, the K answers' token ids, and
    ``answer_positions`` ``(B, K)``, the positions whose logits predict them. ``answered=True``
    appends the last answer's token too, so that every answer is followed by a position
    (``answer_positions + 1``) whose next token is ``<|im_end|>``.
    """
    if not chats or len({len(asked) for asked in chats}) != 1 or not chats[0]:
        raise ValueError(f"need conversations of one common, non-zero length, got lengths {[len(c) for c in chats]}")
    rows = [_conversation_ids(processor, asked, answered) for asked in chats]
    batch = _left_padded([(ids, kinds) for ids, kinds, _ in rows], processor)
    length = batch["input_ids"].shape[1]
    batch["answer_positions"] = torch.tensor([[length - len(ids) + i for i in at] for ids, _, at in rows])
    batch["labels"] = torch.tensor([[answer_tokens(processor)[s.answer] for s in asked] for asked in chats])
    return {**batch, **pictures([asked[0].scene for asked in chats], processor)}


def encode(samples: list[Sample], processor) -> dict[str, torch.Tensor]:
    """Model inputs for a batch, left-padded, one picture per sample; plus ``labels``, the answer ids ``(B,)``.

    Shapes: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` ``(B, L)``;
    ``pixel_values`` ``(B * 64, 1176)``; ``image_grid_thw`` ``(B, 3)``, each ``[1, 8, 8]``.
    """
    return {**prompts(samples, processor), **pictures([s.scene for s in samples], processor)}


def prompts(samples: list[Sample], processor) -> dict[str, torch.Tensor]:
    """The text side of ``encode``: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` ``(B, L)``, ``labels``."""
    if not samples:
        raise ValueError("need at least one sample, got an empty list")
    batch = _left_padded([_prompt(processor, s.question) for s in samples], processor)
    return {**batch, "labels": torch.tensor([answer_tokens(processor)[s.answer] for s in samples])}


def _left_padded(rows: list[tuple[list[int], list[int]]], processor) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` ``(B, L)`` of ``(ids, kinds)`` rows, padded
    on the left as the processor pads with ``padding_side="left"``."""
    length = max(len(ids) for ids, _ in rows)
    pad = processor.tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([[pad] * (length - len(ids)) + list(ids) for ids, _ in rows]),
        "attention_mask": torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids, _ in rows]),
        "mm_token_type_ids": torch.tensor([[0] * (length - len(kinds)) + list(kinds) for _, kinds in rows]),
    }


def pictures(scenes: list[Scene], processor) -> dict[str, torch.Tensor]:
    """The image side of ``encode``, through the real image processor: ``pixel_values``, ``image_grid_thw``."""
    images = [torch.from_numpy(s.pixels()).permute(2, 0, 1) for s in scenes]  # (3, 112, 112) each
    return dict(processor.image_processor(images=images, return_tensors="pt"))


@functools.lru_cache(maxsize=256)
def _prompt(processor, question: str) -> tuple[list[int], list[int]]:
    """``input_ids`` and ``mm_token_type_ids`` of one question's chat, from the full processor."""
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    out = processor(text=[prompt_text(processor, question)], images=[blank])
    return list(out["input_ids"][0]), list(out["mm_token_type_ids"][0])


def _conversation_ids(processor, asked: list[Sample], answered: bool) -> tuple[list[int], list[int], list[int]]:
    """``input_ids``, ``mm_token_type_ids`` and answer positions of ``conversation(asked)``, unpadded;
    ``answered``: followed by the last answer's token."""
    ids, kinds = map(list, _prompt(processor, asked[0].question))
    positions = [len(ids) - 1]
    for previous, current in zip(asked, asked[1:]):
        turn = [answer_tokens(processor)[previous.answer]] + _turn(processor, current.question)
        ids += turn
        kinds += [0] * len(turn)
        positions.append(len(ids) - 1)
    if answered:
        ids.append(answer_tokens(processor)[asked[-1].answer])
        kinds.append(0)
    return ids, kinds, positions


def stop_token(processor) -> int:
    """The id of ``<|im_end|>``, which ends a turn (the toy learns to say it after its answer: see ``training``)."""
    return processor.tokenizer.convert_tokens_to_ids(STOP)


@functools.lru_cache(maxsize=256)
def _turn(processor, question: str) -> list[int]:
    """Token ids that close an answer and ask ``question``: ``<|im_end|>\n<|im_start|>user\n...assistant\n``."""
    text = f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return processor.tokenizer(text).input_ids
