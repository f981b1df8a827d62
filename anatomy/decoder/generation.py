"""Generation, one token at a time: what the model looked at and weighed for each new token.

``generate`` calls the model once per new token: first over the whole prompt
(prefill), then over the last token with the KV cache. The last row of call j
predicts new token j. Hooks keep, per call, only what was asked for:

>>> trace = generate_traced(specimen, prompt, max_new_tokens=4, keep=("positions", "attention", "top"))
>>> trace.steps[0]        # Step(token=..., text=..., position_ids=..., image_share=..., top=[...])
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from anatomy.decoder.attention import AttentionRows, image_attention_figure, record_attention
from anatomy.lab.figures import drawable, label_fonts
from anatomy.model import decoder, lm_head, multimodal, token_kinds
from anatomy.processor import one_line, token_texts

KEEP = ("positions", "attention", "top")


@dataclass
class Step:
    """One new token: its id and text, the (time, height, width) ids it is fed back with,
    the share of attention its predicting row gave image tokens per captured layer, and the top candidates."""

    token: int
    text: str
    position_ids: list[int] | None = None
    image_share: list[float] | None = None
    top: list[tuple[str, float]] | None = None


@dataclass
class Trace:
    """``steps`` (one per new token), the full ``sequence`` (1, prompt + new) and the attention rows."""

    steps: list[Step]
    sequence: torch.Tensor
    attention: AttentionRows | None = None
    prompt_length: int = 0


def _hook_positions(specimen, kept: list) -> torch.utils.hooks.RemovableHandle:
    """Keep the (3,) ids of the last row of every call: (3, batch, q) -> (3,)."""
    def on_input(module, args, kwargs):
        ids = args[1] if len(args) > 1 else kwargs["position_ids"]
        kept.append(ids.expand(3, -1, -1)[:, 0, -1].tolist())

    return decoder(specimen).rotary_emb.register_forward_pre_hook(on_input, with_kwargs=True)


def _hook_top(specimen, kept: list, top_k: int) -> torch.utils.hooks.RemovableHandle:
    """Keep the ``top_k`` (ids, probabilities) of the last row of every call, not the (vocab,) logits."""
    def on_output(module, args, output):
        probs = torch.softmax(output[0, -1].float(), dim=-1)
        kept.append(torch.topk(probs, top_k))

    return lm_head(specimen).register_forward_hook(on_output)


def _check_keep(keep) -> tuple[str, ...]:
    unknown = [item for item in keep if item not in KEEP]
    if unknown:
        raise ValueError(f"keep={unknown!r} unknown; expected a subset of {KEEP}")
    return tuple(keep)


def generate_traced(specimen, prompt, max_new_tokens: int = 8, keep=KEEP, layers=None, heads=None,
                    reduce: str = "mean", top_k: int = 5, budget_bytes: int | None = None) -> Trace:
    """Greedy ``generate`` with hooks that keep, per new token, only the items of ``keep``.

    Args:
        keep: any of "positions" (M-RoPE ids), "attention" (rows of ``layers``/``heads``,
            averaged over heads when ``reduce="mean"``), "top" (``top_k`` candidates).
        budget_bytes: the most the attention rows may take (estimated before generating).
    """
    keep = _check_keep(keep)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected at least 1")
    positions, tops = [], []
    attend = record_attention(specimen, prompt, layers, heads, None, reduce, budget_bytes, new_tokens=max_new_tokens)
    with contextlib.ExitStack() as stack, torch.no_grad():
        recorder = stack.enter_context(attend) if "attention" in keep else None
        for wanted, hook in (("positions", lambda: _hook_positions(specimen, positions)),
                             ("top", lambda: _hook_top(specimen, tops, top_k))):
            if wanted in keep:
                stack.callback(hook().remove)
        sequence = specimen.model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False)
    attention = recorder.result() if recorder is not None else None
    return _trace(specimen, prompt["input_ids"].shape[1], sequence, positions, tops, attention)


def _trace(specimen, prompt: int, sequence, positions, tops, attention) -> Trace:
    new = sequence[0, prompt:].tolist()
    tokenizer = specimen.processor.tokenizer
    image = _image_shares(specimen, sequence, attention) if attention is not None else None
    steps = [
        Step(token, token_texts(tokenizer, [token])[0],
             position_ids=(positions[j + 1] if j + 1 < len(positions) else _next_ids(specimen, prompt + j))
             if positions else None,
             image_share=image[j] if image is not None else None,
             top=list(zip(token_texts(tokenizer, tops[j].indices), tops[j].values.tolist())) if tops else None)
        for j, token in enumerate(new)
    ]
    return Trace(steps, sequence, attention, prompt)


def _next_ids(specimen, index: int) -> list[int]:
    """Ids transformers gives a text token at sequence ``index`` after the prompt: index + rope_deltas on all axes."""
    return [index + int(multimodal(specimen).rope_deltas[0, 0])] * 3


def _image_shares(specimen, sequence, attention: AttentionRows) -> list[list[float]]:
    """(new tokens, layers) share of each predicting row's attention on vision tokens."""
    kinds = token_kinds(specimen.config, sequence)
    vision = (kinds != 0)[: attention.probs.shape[-1]]
    return attention.probs[..., vision].sum(-1).mean(1).T.tolist()  # (layers, heads, rows) -> (rows, layers)


def answer_attention_figure(specimen, prompt, max_new_tokens: int = 4, layers=None) -> Figure:
    """Attention of the rows that produced the answer on the image, averaged over layers, heads and answer tokens."""
    return traced_answer_figure(specimen, prompt, generate_traced(specimen, prompt, max_new_tokens,
                                                                  keep=("attention",), layers=layers))


def traced_answer_figure(specimen, prompt, trace: Trace) -> Figure:
    """``answer_attention_figure`` of an answer already generated with ``keep=("attention",)``."""
    figure = image_attention_figure(trace.attention, prompt)
    answer = specimen.processor.tokenizer.decode(trace.sequence[0, trace.prompt_length:])
    figure.suptitle(f"answer '{drawable(one_line(answer), 40)}': where its tokens looked", fontsize=9,
                    fontfamily=label_fonts())
    return figure
